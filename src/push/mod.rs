//! `regfs push`: a release into any registry that speaks the distribution
//! API. The bundles are served in place (as `regfs serve`, on a private
//! loopback port) and skopeo copies every image of the newest bundle, all
//! platforms and digests preserved; the target skips the blobs it holds.
//!
//! A stack that lacks blobs (a delta pushed without its base) must find
//! them at the target: before anything is pushed, the target is asked for
//! each (a manifest the stack leaves out, or a blob a manifest it carries
//! names) and every one it lacks is listed at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::bundle::Description;
pub use crate::client::Access;
use crate::client::{Kind, Target, TargetRef};
use crate::gc::manifest;
use crate::layout::{self, Digest};
use crate::release::children::{RegistryChild, RegistryOptions, find_registry, find_skopeo, run_skopeo};
use crate::serve::{MountedStack, stack_descriptions};
use crate::store::Layers;
use crate::view::{Policy, View};

/// What `regfs push` was asked.
#[derive(Clone, Debug)]
pub struct PushRequest {
    /// Oldest first; the images of the last are pushed, the others lend blobs.
    pub bundles: Vec<PathBuf>,
    /// `docker://HOST[:PORT][/PREFIX]`.
    pub target: String,
    pub access: Access,
    pub registry_bin: Option<PathBuf>,
    pub json: bool,
}

/// What a push did.
#[derive(Debug, Default, Serialize)]
pub struct PushReport {
    pub target: String,
    pub release: String,
    pub images: Vec<PushedImage>,
    pub blobs_uploaded: u64,
    pub bytes_uploaded: u64,
    pub blobs_skipped: u64,
    pub elapsed_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct PushedImage {
    pub reference: String,
    pub digest: Digest,
}

/// A view over the stack (nothing hidden, a scratch upper) to read manifests.
fn stack_view(descs: &[(PathBuf, Description)], scratch: &Path) -> Result<View> {
    let layers = Layers {
        lowers: descs.iter().rev().map(|(p, _)| p.clone()).collect(),
        upper: scratch.to_path_buf(),
        policy: Policy::transparent(),
    };
    layers.view()
}

/// The bytes of blob `d` in the stack, if it carries it.
fn blob_bytes(view: &View, d: &Digest) -> Result<Option<Vec<u8>>> {
    let rel = layout::blob_data(d);
    let Some(e) = view.resolve(&rel)? else { return Ok(None) };
    if !e.meta.is_file() {
        return Ok(None);
    }
    Ok(Some(view.open_read(&rel, &e, 0)?.read_all(manifest::MAX_MANIFEST_BYTES)?))
}

/// What the stack leaves out of the images it pushes, found at the target.
#[derive(Default)]
struct Borrowed {
    /// Manifests and configs the stack lacks, fetched from the target:
    /// skopeo reads these from the source even where the target has them,
    /// so they are put into the served view. (Layers it skips unread.)
    documents: BTreeMap<Digest, Vec<u8>>,
    /// What neither the stack nor the target holds.
    missing: Vec<String>,
}

/// Walks `repo`'s image `digest` through the manifests the stack carries or
/// the target gives, noting what must come from the target.
fn walk(view: &View, target: &Target, repo: &str, digest: &Digest, out: &mut Borrowed) -> Result<()> {
    let Some(bytes) = borrow(view, target, repo, Kind::Manifest, digest, out)? else { return Ok(()) };
    let refs = manifest::references(&bytes).with_context(|| format!("manifest {digest} of {repo}"))?;
    for m in &refs.manifests {
        walk(view, target, repo, &m.digest, out)?;
    }
    for b in &refs.blobs {
        if refs.config == Some(b.digest) {
            borrow(view, target, repo, Kind::Blob, &b.digest, out)?;
            continue;
        }
        let rel = layout::blob_data(&b.digest);
        let in_stack = view.resolve(&rel)?.is_some_and(|e| e.meta.is_file());
        if !in_stack && !target.has_blob(repo, &b.digest)? {
            out.missing.push(format!("blob {} of {repo}", b.digest));
        }
    }
    Ok(())
}

/// A document (manifest or config) from the stack, else from the target
/// (then lent to the served view); `None`, noted missing, from neither.
fn borrow(
    view: &View,
    target: &Target,
    repo: &str,
    kind: Kind,
    digest: &Digest,
    out: &mut Borrowed,
) -> Result<Option<Vec<u8>>> {
    if let Some(b) = blob_bytes(view, digest)?.or_else(|| out.documents.get(digest).cloned()) {
        return Ok(Some(b));
    }
    match target.document(repo, kind, digest)? {
        Some(b) => {
            out.documents.insert(*digest, b.clone());
            Ok(Some(b))
        }
        None => {
            let what = if kind == Kind::Blob { "config" } else { "manifest" };
            out.missing.push(format!("{what} {digest} of {repo}"));
            Ok(None)
        }
    }
}

/// What the target must lend the stack; refuses, listing all it lacks.
fn preflight(view: &View, top: &Description, target: &Target, shown: &str) -> Result<Borrowed> {
    let mut out = Borrowed::default();
    for i in &top.images {
        walk(view, target, &i.repo, &i.digest, &mut out)?;
    }
    if !out.missing.is_empty() {
        out.missing.sort();
        out.missing.dedup();
        bail!(
            "refused, nothing was pushed: {} things the bundles leave out are not at {shown} either (push the \
             bundle this delta was cut against first, or name it before the delta):\n  {}",
            out.missing.len(),
            out.missing.join("\n  ")
        );
    }
    Ok(out)
}

/// Puts manifests borrowed from the target into the served view (its
/// scratch upper), so the registry serving the stack has every manifest.
fn lend(root: &Path, borrowed: &Borrowed) -> Result<()> {
    for (d, bytes) in &borrowed.documents {
        let p = root.join(layout::blob_data(d));
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// `regfs push`.
pub fn push(req: &PushRequest) -> Result<PushReport> {
    let started = Instant::now();
    let to = TargetRef::parse(&req.target)?;
    let shown = req.target.trim_end_matches('/').to_string();
    let descs = stack_descriptions(&req.bundles)?;
    let Some((_, top)) = descs.last() else { bail!("no bundle given") };
    let target = Target::new(&to, &req.access)?;
    let scratch = tempfile::tempdir().context("creating a scratch upper")?;
    let view = stack_view(&descs, scratch.path())?;
    let borrowed = if crate::bundle::chain_missing(&descs).is_empty() {
        Borrowed::default()
    } else {
        preflight(&view, top, &target, &shown)?
    };
    let sizes: BTreeMap<Digest, u64> =
        descs.iter().flat_map(|(_, d)| d.blobs.iter().map(|b| (b.digest, b.size))).collect();
    let registry_bin = find_registry(req.registry_bin.as_deref())?;
    let skopeo = find_skopeo()?;
    let stack = MountedStack::mount(&descs)?;
    lend(&stack.root(), &borrowed)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    let mut report = PushReport { target: shown.clone(), release: top.release.clone(), ..PushReport::default() };
    let mut uploaded = BTreeSet::new();
    let mut skipped = BTreeSet::new();
    let pushed: Result<()> = runtime.block_on(async {
        let opts = RegistryOptions { addr: None, read_only: true };
        let mut registry = RegistryChild::start_with(&registry_bin, &stack.root(), stack.scratch(), opts).await?;
        let src_host = registry.addr();
        let mut result = Ok(());
        for i in &top.images {
            let src = format!("docker://{src_host}/{}:{}", i.repo, i.tag);
            let dst = to.reference(&i.repo, &i.tag);
            eprintln!("regfs: pushing {}:{} to {dst}", i.repo, i.tag);
            // What the target holds before the copy is what it skips.
            let mut fresh = Vec::new();
            for d in image_blobs(&view, &borrowed, &i.digest)? {
                if uploaded.contains(&d) || skipped.contains(&d) {
                    continue;
                }
                if target.has_blob(&i.repo, &d)? {
                    skipped.insert(d);
                } else {
                    fresh.push(d);
                }
            }
            match copy(&skopeo, &src, &dst, &req.access).await {
                Ok(()) => {
                    uploaded.extend(fresh);
                    report.images.push(PushedImage { reference: dst, digest: i.digest });
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        registry.stop().await?;
        result
    });
    let unmounted = stack.unmount();
    pushed?;
    unmounted?;
    report.blobs_uploaded = uploaded.len() as u64;
    report.bytes_uploaded = uploaded.iter().filter_map(|d| sizes.get(d)).sum();
    report.blobs_skipped = skipped.len() as u64;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The config and layer blobs of image `digest` (its platforms' too).
fn image_blobs(view: &View, borrowed: &Borrowed, digest: &Digest) -> Result<BTreeSet<Digest>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![*digest];
    while let Some(d) = stack.pop() {
        let Some(bytes) = blob_bytes(view, &d)?.or_else(|| borrowed.documents.get(&d).cloned()) else { continue };
        let refs = manifest::references(&bytes).with_context(|| format!("manifest {d}"))?;
        stack.extend(refs.manifests.iter().map(|m| m.digest));
        out.extend(refs.blobs.iter().map(|b| b.digest));
    }
    Ok(out)
}

/// One `skopeo copy` of an image, all platforms, digests kept.
async fn copy(skopeo: &Path, src: &str, dst: &str, access: &Access) -> Result<()> {
    let mut args: Vec<String> =
        ["--insecure-policy", "copy", "--all", "--preserve-digests", "--src-tls-verify=false"].map(String::from).into();
    args.push(format!("--dest-tls-verify={}", access.tls_verify));
    if let Some(c) = &access.creds {
        args.extend(["--dest-creds".into(), c.clone()]);
    }
    if let Some(f) = &access.authfile {
        args.extend(["--dest-authfile".into(), f.display().to_string()]);
    }
    args.extend([src.to_string(), dst.to_string()]);
    let out = run_skopeo(skopeo, &args).await?;
    if !out.status.success() {
        bail!("skopeo copy {src} {dst}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `regfs push`: runs and prints the report.
pub fn command(req: &PushRequest) -> Result<()> {
    let r = push(req)?;
    if req.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "pushed release {} to {}: {} images; {} blobs uploaded ({}), {} already there",
        r.release,
        r.target,
        r.images.len(),
        r.blobs_uploaded,
        crate::util::human_bytes(r.bytes_uploaded),
        r.blobs_skipped
    );
    for i in &r.images {
        println!("  {}  {}", i.reference, i.digest);
    }
    Ok(())
}
