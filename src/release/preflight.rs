//! Before anything is mounted: every image of the list looked up at the
//! source, and every one that is missing or unreachable reported at once
//! (with the TLS hint where a plain-HTTP source is the cause). An OCI
//! layout is read directly; a registry is asked with `skopeo inspect`, a
//! few at a time. For an OCI source the blobs are sized too, so the push
//! can be checked against the free space where upper lives.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};

use crate::layout::Digest;

use std::sync::Arc;

use super::attach;
use super::children::Skopeo;
use super::source::{OciStore, SourceStore};
use super::{ImageName, Source};
use crate::bundle::Attachment;

/// What skopeo's message says went wrong at the source, for a person.
fn explain(message: &str) -> String {
    if message.contains("server gave HTTP response to HTTPS client") {
        return "the source speaks plain HTTP: pass --src-tls-verify false".into();
    }
    for (needle, what) in [
        ("manifest unknown", "no such tag at the source"),
        ("name unknown", "no such repository at the source"),
        ("connection refused", "the source refused the connection (is the registry up? right host and port?)"),
        ("no such host", "no such host"),
        ("unauthorized", "the source wants credentials (log in with `skopeo login` first)"),
    ] {
        if message.contains(needle) {
            return format!("{what} ({})", message.trim());
        }
    }
    message.trim().to_string()
}

/// The blobs (manifests included) of the image whose top manifest is
/// `top` in the OCI layout `dir/repo`, with their sizes; `None` where the
/// layout cannot say (an unreadable or odd layout: the copy will tell).
fn oci_blobs(dir: &Path, img: &ImageName, top: Digest) -> Option<BTreeMap<Digest, u64>> {
    let layout = dir.join(&img.repo);
    let blob = |d: &Digest| layout.join("blobs/sha256").join(d.hex());
    let mut out = BTreeMap::new();
    let mut stack = vec![top];
    while let Some(d) = stack.pop() {
        let bytes = std::fs::read(blob(&d)).ok()?;
        out.insert(d, bytes.len() as u64);
        let refs = crate::gc::manifest::references(&bytes).ok()?;
        stack.extend(refs.manifests.iter().map(|m| m.digest));
        for b in &refs.blobs {
            out.insert(b.digest, std::fs::metadata(blob(&b.digest)).ok()?.len());
        }
    }
    Some(out)
}

/// The blobs (manifests included) of an image a registry gives, sized by
/// their descriptors; `None` where one gives no size.
async fn docker_blobs(
    skopeo: &Skopeo,
    source: &Source,
    img: &ImageName,
    top: Vec<u8>,
) -> Option<BTreeMap<Digest, u64>> {
    let Source::Docker(prefix) = source else { return None };
    let mut out = BTreeMap::new();
    let mut stack = vec![top];
    while let Some(bytes) = stack.pop() {
        out.insert(Digest::of(&bytes), bytes.len() as u64);
        let refs = crate::gc::manifest::references(&bytes).ok()?;
        for b in &refs.blobs {
            out.insert(b.digest, b.size?);
        }
        for m in &refs.manifests {
            stack.push(skopeo.inspect(&format!("docker://{prefix}/{}@{}", img.repo, m.digest)).await.ok()?);
        }
    }
    Some(out)
}

/// Bytes this user may still write on the filesystem of `path`.
fn free_bytes(path: &Path) -> Result<u64> {
    let fs = crate::sys::statvfs(path)?;
    Ok(fs.bavail.saturating_mul(fs.frsize as u64))
}

/// `data` bytes of blobs, with the link files, directories and upload
/// records the registry writes on top.
fn with_overhead(data: u64) -> u64 {
    data + data / 20 + (1 << 20)
}

/// Whether every blob of the source fits even if the history held none:
/// then the history need not be opened to find which it holds.
pub fn fits_whole(blobs: &BTreeMap<Digest, u64>, upper_fs: &Path) -> Result<bool> {
    Ok(with_overhead(blobs.values().sum()) <= free_bytes(upper_fs)?)
}

/// Refuses a push that cannot fit: the source's blobs the history lacks
/// (`blobs`, sized), against the free space of the filesystem upper lives on.
pub fn check_space(
    blobs: &BTreeMap<Digest, u64>,
    in_history: impl Fn(&Digest) -> bool,
    work: &Path,
    upper_fs: &Path,
) -> Result<()> {
    let (count, need): (u64, u64) =
        blobs.iter().filter(|(d, _)| !in_history(d)).fold((0, 0), |(n, b), (_, s)| (n + 1, b + s));
    let free = free_bytes(upper_fs)?;
    let want = with_overhead(need);
    if want > free {
        use crate::util::human_bytes;
        bail!(
            "the push needs about {} ({count} blobs the history lacks, {} of data) and the filesystem of {} has {} \
             free: free space there, or put the work dir on a larger filesystem (--workdir); nothing was mounted",
            human_bytes(want),
            human_bytes(need),
            work.display(),
            human_bytes(free)
        );
    }
    Ok(())
}

/// Where an image comes from once looked up: the manifest it resolved to,
/// how to copy it, and what is attached to it.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub digest: Digest,
    /// What skopeo copies (the source's manifest by its digest, or an OCI
    /// layout's ref name); `None`: regfs copies it itself (an OCI layout's
    /// untagged manifest, which skopeo cannot name).
    pub copy_from: Option<String>,
    pub attachments: Vec<Attachment>,
}

/// What the preflight found: each image resolved (in the list's order)
/// and, where the source tells them all, the sizes of every blob.
pub struct Checked {
    pub images: Vec<Resolved>,
    pub sizes: Option<BTreeMap<Digest, u64>>,
}

/// The manifest image `img` names in an OCI layout, and the ref name to
/// copy it by; or why the layout does not hold it.
fn oci_lookup(store: &OciStore, img: &ImageName) -> Result<(Digest, Option<String>), String> {
    let entries = store.entries(&img.repo).map_err(|e| format!("{e:#}"))?;
    match (&img.tag, &img.digest) {
        (Some(tag), _) => match entries.iter().find(|e| e.ref_name.as_deref() == Some(tag.as_str())) {
            Some(e) => Ok((e.digest, Some(tag.clone()))),
            None => {
                let names: Vec<&str> = entries.iter().filter_map(|e| e.ref_name.as_deref()).collect();
                Err(format!("the layout names no tag {tag:?} (it has: {})", names.join(", ")))
            }
        },
        (None, Some(d)) => match store.manifest(&img.repo, &d.to_string()) {
            Ok(Some(_)) => {
                let named = entries.iter().find(|e| e.digest == *d).and_then(|e| e.ref_name.clone());
                Ok((*d, named))
            }
            Ok(None) => Err(format!("the layout holds no manifest {d}")),
            Err(e) => Err(format!("{e:#}")),
        },
        (None, None) => Err("neither a tag nor a digest".into()),
    }
}

/// A pinned image whose tag names another manifest now.
fn check_pin(img: &ImageName, got: &Digest) -> Result<(), String> {
    match &img.digest {
        Some(want) if want != got => Err(format!(
            "the tag now names {got}, not the pinned {want}: the tag moved at the source (pin the new digest, or \
             find out why it moved); nothing was copied"
        )),
        _ => Ok(()),
    }
}

/// Looks up one image: resolves it, sizes its blobs, finds its attachments.
async fn look_up(
    skopeo: &Skopeo,
    source: &Source,
    store: &Arc<dyn SourceStore>,
    img: &ImageName,
    referrers: bool,
) -> Result<(Resolved, Option<BTreeMap<Digest, u64>>), String> {
    let (digest, bytes, copy_from, sizes) = match source {
        Source::Oci(dir) => {
            let oci = OciStore::new(dir);
            let (digest, named) = oci_lookup(&oci, img)?;
            check_pin(img, &digest)?;
            let bytes = oci.manifest(&img.repo, &digest.to_string()).map_err(|e| format!("{e:#}"))?.unwrap_or_default();
            let from = named.map(|n| format!("oci:{}:{n}", dir.join(&img.repo).display()));
            (digest, bytes, from, oci_blobs(dir, img, digest))
        }
        Source::Docker(prefix) => {
            let reference = match (&img.tag, &img.digest) {
                (Some(t), _) => format!("docker://{prefix}/{}:{t}", img.repo),
                (None, Some(d)) => format!("docker://{prefix}/{}@{d}", img.repo),
                (None, None) => return Err("neither a tag nor a digest".into()),
            };
            let bytes = skopeo.inspect(&reference).await.map_err(|e| explain(&format!("{e:#}")))?;
            let digest = Digest::of(&bytes);
            check_pin(img, &digest)?;
            let sizes = docker_blobs(skopeo, source, img, bytes.clone()).await;
            (digest, bytes, Some(format!("docker://{prefix}/{}@{digest}", img.repo)), sizes)
        }
    };
    let attachments = if referrers {
        let (store, repo) = (store.clone(), img.repo.clone());
        tokio::task::spawn_blocking(move || attach::discover(store.as_ref(), &repo, &digest, &bytes))
            .await
            .map_err(|e| format!("finding attachments: {e}"))?
            .map_err(|e| format!("finding its signatures and referrers: {e:#}"))?
    } else {
        Vec::new()
    };
    Ok((Resolved { digest, copy_from, attachments }, sizes))
}

/// Refuses, listing every image the source lacks or cannot give (or whose
/// pinned tag moved); resolves the others, with their attachments unless
/// `referrers` is off.
pub async fn check_source(
    skopeo: &Skopeo,
    source: &Source,
    store: &Arc<dyn SourceStore>,
    images: &[ImageName],
    jobs: usize,
    referrers: bool,
) -> Result<Checked> {
    let mut problems: Vec<(usize, String)> = Vec::new();
    let mut sizes = Some(BTreeMap::new());
    let mut resolved: Vec<Option<Resolved>> = vec![None; images.len()];
    let limit = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, img) in images.iter().enumerate() {
        let (skopeo, source, store, img, limit) =
            (skopeo.clone(), source.clone(), store.clone(), img.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire().await;
            (i, look_up(&skopeo, &source, &store, &img, referrers).await)
        });
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((i, Ok((r, found)))) => {
                resolved[i] = Some(r);
                match (&mut sizes, found) {
                    (Some(all), Some(f)) => all.extend(f),
                    _ => sizes = None,
                }
            }
            Ok((i, Err(p))) => problems.push((i, p)),
            Err(e) => bail!("looking up the images: {e}"),
        }
    }
    if problems.is_empty() {
        let images = resolved.into_iter().flatten().collect();
        return Ok(Checked { images, sizes });
    }
    problems.sort();
    let lines: Vec<String> = problems.iter().map(|(i, p)| format!("  {}: {p}", images[*i])).collect();
    bail!(
        "{} of the {} images cannot be read from the source; nothing was mounted:\n{}",
        problems.len(),
        images.len(),
        lines.join("\n")
    )
}
