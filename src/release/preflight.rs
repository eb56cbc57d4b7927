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

use super::children::Skopeo;
use super::{ImageName, Source};

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

/// The top manifest of image `img` in the OCI layout `dir/repo` (`None`
/// where its ref names no valid digest: the copy will tell), or why the
/// layout does not hold the image.
fn oci_top(dir: &Path, img: &ImageName) -> Result<Option<Digest>, String> {
    let index = dir.join(&img.repo).join("index.json");
    let text = std::fs::read_to_string(&index).map_err(|e| format!("no OCI layout {}: {e}", index.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", index.display()))?;
    let refs: Vec<(&str, &serde_json::Value)> = doc["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["annotations"]["org.opencontainers.image.ref.name"].as_str()?, m)))
        .collect();
    match refs.iter().find(|(name, _)| *name == img.tag) {
        Some((_, m)) => Ok(m["digest"].as_str().and_then(|d| Digest::parse(d).ok())),
        None => {
            let names: Vec<&str> = refs.iter().map(|(n, _)| *n).collect();
            Err(format!("{} names no tag {:?} (it has: {})", index.display(), img.tag, names.join(", ")))
        }
    }
}

/// Refuses, listing every image the source lacks or cannot give; returns
/// the sizes of every blob of the images where the source tells them all.
pub async fn check_source(
    skopeo: &Skopeo,
    source: &Source,
    images: &[ImageName],
    jobs: usize,
) -> Result<Option<BTreeMap<Digest, u64>>> {
    let mut problems: Vec<(usize, String)> = Vec::new();
    let mut sizes = Some(BTreeMap::new());
    let mut add = |found: Option<BTreeMap<Digest, u64>>| match (&mut sizes, found) {
        (Some(all), Some(f)) => all.extend(f),
        _ => sizes = None,
    };
    match source {
        Source::Oci(dir) => {
            for (i, img) in images.iter().enumerate() {
                match oci_top(dir, img) {
                    Err(p) => problems.push((i, p)),
                    Ok(top) => add(top.and_then(|t| oci_blobs(dir, img, t))),
                }
            }
        }
        Source::Docker(_) => {
            let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
            let mut tasks = tokio::task::JoinSet::new();
            for (i, img) in images.iter().enumerate() {
                let (skopeo, source, img, limit) = (skopeo.clone(), source.clone(), img.clone(), limit.clone());
                tasks.spawn(async move {
                    let _permit = limit.acquire().await;
                    match skopeo.inspect(&source.reference(&img)).await {
                        Ok(top) => (i, Ok(docker_blobs(&skopeo, &source, &img, top).await)),
                        Err(e) => (i, Err(explain(&format!("{e:#}")))),
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                match done {
                    Ok((_, Ok(found))) => add(found),
                    Ok((i, Err(p))) => problems.push((i, p)),
                    Err(_) => add(None),
                }
            }
        }
    }
    if problems.is_empty() {
        return Ok(sizes);
    }
    problems.sort();
    let lines: Vec<String> =
        problems.iter().map(|(i, p)| format!("  {}:{}: {p}", images[*i].repo, images[*i].tag)).collect();
    bail!(
        "{} of the {} images cannot be read from the source; nothing was mounted:\n{}",
        problems.len(),
        images.len(),
        lines.join("\n")
    )
}
