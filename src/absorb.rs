//! `regfs absorb`: fold a finished release's new blobs and `_layers` links
//! into the history store, so the next release reuses them.
//!
//! The one command that writes history, on purpose. It only adds: every blob
//! is verified against its digest, written to a temporary file beside its
//! place and renamed in; links are checked the same way. Nothing is ever
//! deleted or overwritten with different content, so an interrupted absorb is
//! finished by running it again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::layout::{self, Digest};
use crate::mount;

/// What an absorb did.
#[derive(Debug, Default, Serialize)]
pub struct AbsorbReport {
    pub blobs_added: u64,
    pub blob_bytes_added: u64,
    pub blobs_present: u64,
    pub links_added: u64,
    pub links_present: u64,
}

/// Copies `src` to `dst` through a temporary file beside `dst`, checking
/// that the copied bytes hash to `want` before the rename.
fn copy_verified(src: &Path, dst: &Path, want: &Digest) -> Result<u64> {
    let dir = dst.parent().context("blob path has a parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".regfs-absorb.{}", std::process::id()));
    let result = (|| -> Result<u64> {
        let mut from = File::open(src).with_context(|| format!("reading {}", src.display()))?;
        let mut to = OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            hasher.update(&buf[..n]);
            to.write_all(&buf[..n])?;
            total += n as u64;
        }
        let got = Digest::from_sha256(&hasher.finalize());
        if got != *want {
            bail!("{} does not match its digest: content is {got}, path says {want}; not absorbed", src.display());
        }
        to.sync_all()?;
        fs::rename(&tmp, dst)?;
        Ok(total)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Lists the sub-directory names of `dir` (none if it is missing).
fn subdirs(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for de in rd {
        let de = de?;
        if de.file_type()?.is_dir() {
            out.push(de.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Folds upper's blobs and layer links into `history`.
pub fn absorb(history: &Path, upper: &Path) -> Result<AbsorbReport> {
    let history = mount::check_lowers(&[history.to_path_buf()])?.remove(0);
    let upper = fs::canonicalize(upper).with_context(|| format!("--upper {}: cannot open", upper.display()))?;
    let _lock = mount::lock_upper(&upper, "regfs absorb")?;
    let mut report = AbsorbReport::default();

    let blobs = layout::blobs_root();
    for prefix in subdirs(&upper.join(&blobs))? {
        for hex in subdirs(&upper.join(&blobs).join(&prefix))? {
            let d = layout::blob_dir_digest(&prefix, &hex)
                .with_context(|| format!("{}: not a blob directory", upper.join(&blobs).join(&prefix).join(&hex).display()))?;
            let rel = layout::blob_data(&d);
            let src = upper.join(&rel);
            if !fs::symlink_metadata(&src).map(|m| m.is_file()).unwrap_or(false) {
                continue;
            }
            let dst = history.join(&rel);
            if dst.exists() {
                report.blobs_present += 1;
                continue;
            }
            report.blob_bytes_added += copy_verified(&src, &dst, &d)?;
            report.blobs_added += 1;
        }
    }

    for repo in repos_with_layers(&upper)? {
        let dir = upper.join(layout::layers_dir(&repo));
        for hex in subdirs(&dir)? {
            let link_path = dir.join(&hex).join(layout::LINK);
            let Ok(content) = fs::read(&link_path) else { continue };
            let d = layout::parse_link(&content).with_context(|| format!("{}: bad link", link_path.display()))?;
            if d.hex() != hex {
                bail!("{}: names {d} but sits under {hex}; not absorbed", link_path.display());
            }
            if !history.join(layout::blob_data(&d)).exists() {
                tracing::warn!(link = %link_path.display(), "link to a blob the history lacks: skipped");
                continue;
            }
            let dst = history.join(layout::layer_link(&repo, &d));
            if dst.exists() {
                report.links_present += 1;
                continue;
            }
            write_link(&dst, &d)?;
            report.links_added += 1;
        }
    }
    Ok(report)
}

fn write_link(dst: &Path, d: &Digest) -> Result<()> {
    let dir = dst.parent().context("link path has a parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".regfs-absorb.{}", std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(d.to_string().as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, dst).with_context(|| format!("writing {}", dst.display()))
}

/// Repositories of a store that have a `_layers` directory.
fn repos_with_layers(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let base = root.join(layout::repositories_root());
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for name in subdirs(&base.join(&rel))? {
            if name == layout::LAYERS {
                out.push(rel.to_string_lossy().into_owned());
            } else if layout::may_hold_repos(&name) {
                stack.push(rel.join(name));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `regfs absorb`: runs and prints the report.
pub fn command(history: &Path, upper: &Path, json: bool) -> Result<()> {
    let r = absorb(history, upper)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "absorbed {} blobs ({} bytes) and {} layer links into {}; {} blobs and {} links were already there",
            r.blobs_added,
            r.blob_bytes_added,
            r.links_added,
            history.display(),
            r.blobs_present,
            r.links_present
        );
    }
    Ok(())
}
