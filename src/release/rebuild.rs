//! `regfs release --rebuild NAME`: a recorded release made again from the
//! history alone. The record `regfs absorb` kept (see
//! [`crate::bundle::record`]) says which tags named which manifests and what
//! was attached to them; the history holds every blob. The manifest links a
//! push would have written are laid into a scratch upper, the view is
//! collected and exported as the release did, and the tar is kept only if
//! its sha256 is the recorded one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::bundle::record::Record;
use crate::bundle::{self, Description};
use crate::export::{Base, BundleSpec, ExportOptions};
use crate::layout::{self, Digest};
use crate::store;
use crate::view::View;

use super::ReleaseRequest;

/// What a rebuild made.
#[derive(Debug, Serialize)]
pub struct Rebuilt {
    pub ok: bool,
    pub release: String,
    pub tar: PathBuf,
    pub tar_bytes: u64,
    pub tar_sha256: String,
    /// The history whose record it was made from.
    pub history: PathBuf,
    pub lock: Vec<bundle::Locked>,
}

/// The record of `name` in the first history that has one.
fn find_record(histories: &[PathBuf], name: &str) -> Result<(PathBuf, Record)> {
    let mut known = BTreeSet::new();
    for h in histories.iter().filter(|h| h.is_dir()) {
        if let Some(r) = crate::workdir::read_record(&h.join(layout::release_record(name)))? {
            return Ok((h.clone(), r));
        }
        if let Ok(rd) = fs::read_dir(h.join(layout::RELEASES)) {
            known.extend(
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(str::to_string)),
            );
        }
    }
    let known: Vec<String> = known.into_iter().collect();
    bail!(
        "--rebuild {name}: no history records a release {name:?} ({}); `regfs absorb` records a release when it \
         folds in its upper",
        if known.is_empty() { "they record none".to_string() } else { format!("recorded: {}", known.join(", ")) }
    )
}

/// Reads a manifest from the history, or names what it lacks.
fn history_manifest(view: &View, d: &Digest, of: &str) -> Result<Vec<u8>> {
    let rel = layout::blob_data(d);
    let entry = view
        .resolve(&rel)
        .with_context(|| format!("reading {}", rel.display()))?
        .filter(|e| e.meta.is_file())
        .ok_or_else(|| anyhow!("the history lacks manifest {d} ({of}): it cannot be rebuilt"))?;
    view.open_read(&rel, &entry, 0)
        .and_then(|f| f.read_all(crate::gc::manifest::MAX_MANIFEST_BYTES))
        .with_context(|| format!("reading {}", rel.display()))
}

/// Every manifest each repository of the release holds: its tags', its
/// lock's and attachments', and their children.
fn manifests_by_repo(d: &Description, view: &View) -> Result<BTreeMap<String, BTreeSet<Digest>>> {
    let mut out: BTreeMap<String, BTreeSet<Digest>> = BTreeMap::new();
    let mut todo: Vec<(String, Digest, String)> = Vec::new();
    for i in &d.images {
        todo.push((i.repo.clone(), i.digest, format!("{}:{}", i.repo, i.tag)));
    }
    for l in &d.lock {
        todo.push((l.repo.clone(), l.digest, l.requested.clone()));
        todo.extend(l.attachments.iter().map(|a| (l.repo.clone(), a.digest, format!("attached to {}", l.requested))));
    }
    while let Some((repo, digest, of)) = todo.pop() {
        if !out.entry(repo.clone()).or_default().insert(digest) {
            continue;
        }
        let bytes = history_manifest(view, &digest, &of)?;
        let refs = crate::gc::manifest::references(&bytes)
            .map_err(|e| anyhow!("{}: a manifest that does not parse: {e}", layout::blob_data(&digest).display()))?;
        todo.extend(refs.manifests.iter().map(|m| (repo.clone(), m.digest, format!("a child of {digest}"))));
    }
    Ok(out)
}

/// Every blob the release needs that the history lacks (or holds with
/// another size), one line each.
fn missing_blobs(d: &Description, view: &View) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for b in &d.blobs {
        let rel = layout::blob_data(&b.digest);
        match view.resolve(&rel).with_context(|| format!("reading {}", rel.display()))? {
            Some(e) if e.meta.is_file() && e.meta.size == b.size => {}
            Some(e) if e.meta.is_file() => {
                out.push(format!("{} ({} bytes; the history's has {})", b.digest, b.size, e.meta.size))
            }
            _ => out.push(format!("{} ({} bytes)", b.digest, b.size)),
        }
    }
    Ok(out)
}

/// Writes a link file (`sha256:<hex>`, as the registry does) into `upper`.
fn write_link(upper: &Path, rel: &Path, d: &Digest) -> Result<()> {
    let path = upper.join(rel);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&path, d.to_string()).with_context(|| format!("writing {}", path.display()))
}

/// Lays into `upper` the manifest links the release's push wrote.
fn lay_manifests(upper: &Path, d: &Description, by_repo: &BTreeMap<String, BTreeSet<Digest>>) -> Result<()> {
    for (repo, digests) in by_repo {
        for m in digests {
            write_link(upper, &layout::revision_link(repo, m), m)?;
        }
    }
    for i in &d.images {
        write_link(upper, &layout::tag_current_link(&i.repo, &i.tag), &i.digest)?;
        write_link(upper, &layout::tag_index_entry_dir(&i.repo, &i.tag, &i.digest).join(layout::LINK), &i.digest)?;
    }
    Ok(())
}

pub fn run(req: &ReleaseRequest, name: &str) -> Result<Rebuilt> {
    if !bundle::valid_release_name(name) {
        bail!("--rebuild {name:?}: not a release name (letters, digits, '.', '_', '-', '+')");
    }
    let histories = store::check_lowers(&req.histories, "--history")?;
    let (history, record) = find_record(&histories, name)?;
    let d = &record.description;
    let output =
        store::resolve_maybe_missing(&req.output).with_context(|| format!("-o {}: bad path", req.output.display()))?;
    if output.is_file() && !req.force {
        bail!("-o {}: already exists; pass --force to replace it, or name another file", req.output.display());
    }
    let dir = output.parent().ok_or_else(|| anyhow!("-o {}: not a file path", req.output.display()))?;
    // Scratch beside the tar (one filesystem: the tar is renamed into place).
    let scratch = tempfile::Builder::new()
        .prefix(&format!(".{name}.rebuild."))
        .tempdir_in(dir)
        .with_context(|| format!("-o {}: creating a scratch directory in {}", req.output.display(), dir.display()))?;
    let upper = scratch.path().join("upper");
    fs::create_dir(&upper).with_context(|| format!("creating {}", upper.display()))?;
    let keep = scratch.path().join("keep.list");
    let repos: BTreeSet<&str> =
        d.images.iter().map(|i| i.repo.as_str()).chain(d.lock.iter().map(|l| l.repo.as_str())).collect();
    fs::write(&keep, repos.iter().map(|r| format!("{r}\n")).collect::<String>())
        .with_context(|| format!("writing {}", keep.display()))?;
    let layers = store::check_layers(&histories, &upper, Some(&keep), None)?;
    let output = crate::export::check_target(&output, &layers)?;
    let view = layers.view()?;

    let missing = missing_blobs(d, &view)?;
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(20).map(String::as_str).collect();
        bail!(
            "--rebuild {name}: the history lacks {} of the {} blobs the release needs; nothing was written:\n  {}{}",
            missing.len(),
            d.blobs.len(),
            shown.join("\n  "),
            if missing.len() > shown.len() {
                format!("\n  ... and {} more", missing.len() - shown.len())
            } else {
                String::new()
            }
        );
    }
    let by_repo = manifests_by_repo(d, &view)?;
    lay_manifests(&upper, d, &by_repo)?;
    let view = layers.view()?;
    let pinned = d.lock.iter().map(|l| (l.repo.clone(), l.digest)).collect();
    crate::gc::run(&view, &crate::gc::GcOptions { delete_untagged: false, pinned }, false)?;

    let spec = BundleSpec { release: d.release.clone(), base: Base::recorded(d), lock: d.lock.clone() };
    let tmp_tar = scratch.path().join(format!("{name}.tar"));
    let report = crate::export::export(&view, &tmp_tar, &ExportOptions { verify: true, keep_times: false }, &spec)
        .with_context(|| format!("--rebuild {name}: writing the bundle"))?;
    let sha = crate::util::sha256_file(&tmp_tar).with_context(|| format!("reading {}", tmp_tar.display()))?;
    if sha.hex() != record.tar_sha256 {
        let made = bundle::read_description(&tmp_tar).map_err(|e| anyhow!("{}: {e}", tmp_tar.display()))?;
        let why = if made != *d {
            "its description differs from the recorded one (the history's links or manifests changed since)"
        } else {
            "the description is the same; the tree around it differs"
        };
        bail!(
            "--rebuild {name}: the bundle made from {} has sha256 {}, not the recorded {}: {why}; nothing was written",
            history.display(),
            sha.hex(),
            record.tar_sha256
        );
    }
    fs::rename(&tmp_tar, &output).with_context(|| format!("moving {} to {}", tmp_tar.display(), output.display()))?;
    Ok(Rebuilt {
        ok: true,
        release: d.release.clone(),
        tar: output,
        tar_bytes: report.tar_bytes,
        tar_sha256: record.tar_sha256.clone(),
        history,
        lock: d.lock.clone(),
    })
}

/// Runs the rebuild and prints what it made.
pub fn command(req: &ReleaseRequest, name: &str) -> Result<()> {
    let r = run(req, name)?;
    if req.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "rebuilt release {} from {}: {} ({} bytes) sha256:{}, the same bytes as the original bundle",
            r.release,
            r.history.display(),
            r.tar.display(),
            r.tar_bytes,
            r.tar_sha256
        );
    }
    Ok(())
}
