//! The description of a view: its tags and the blobs it holds, read through
//! the view (so hidden history never counts), before the tar is written.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Deserialize;

use super::{BaseRef, Blob, Description, FORMAT, Image, Locked, VERSION};
use crate::layout::{self, Digest};
use crate::view::{Dir, LayerIdx, View};

/// Largest manifest or config read for media type and platforms.
const MAX_DOC_BYTES: u64 = 16 << 20;

/// Why a view cannot be described.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    #[error("{path}: {msg}")]
    Bad { path: String, msg: String },
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn bad(path: &Path, msg: impl Into<String>) -> DescribeError {
    DescribeError::Bad { path: path.display().to_string(), msg: msg.into() }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DescribeError + '_ {
    move |source| DescribeError::Io { path: path.display().to_string(), source }
}

/// Describes the view as a full bundle (every blob shipped) of `release`,
/// with `lock` (its platforms filled in from the view) as its lock.
pub fn describe(view: &View, release: &str, lock: &[Locked]) -> Result<Description, DescribeError> {
    let (blobs, tags) = rayon::join(|| blobs(view), || tags(view));
    let blobs = blobs?;
    let mut images: Vec<Image> =
        tags?.into_par_iter().map(|(repo, tag, digest)| image(view, repo, tag, digest)).collect::<Result<_, _>>()?;
    images.sort();
    let d = Description {
        format: FORMAT.into(),
        version: VERSION,
        release: release.to_string(),
        base: None,
        images,
        lock: Vec::new(),
        blobs,
    };
    let mut lock = lock.to_vec();
    for l in &mut lock {
        l.platforms = image(view, l.repo.clone(), String::new(), l.digest)?.platforms;
        let tags = std::iter::once((&l.repo, l.tag.as_ref(), l.digest))
            .chain(l.attachments.iter().map(|a| (&l.repo, a.tag.as_ref(), a.digest)));
        for (repo, tag, digest) in tags {
            let Some(tag) = tag else { continue };
            let held = d.images.iter().find(|i| i.repo == *repo && i.tag == *tag).map(|i| i.digest);
            if held != Some(digest) {
                let link = layout::tag_current_link(repo, tag);
                let holds = held.map_or("no such tag".to_string(), |h| format!("it names {h}"));
                return Err(bad(&link, format!("the release resolved {repo}:{tag} to {digest}, but {holds}")));
            }
        }
    }
    lock.sort();
    lock.dedup_by(|a, b| a.requested == b.requested);
    let d = Description { lock, ..d };
    for img in &d.images {
        if d.blob(&img.digest).is_none() {
            return Err(bad(
                &layout::tag_current_link(&img.repo, &img.tag),
                format!("names manifest {}, which the view does not hold (run `regfs gc` first)", img.digest),
            ));
        }
    }
    for l in &d.lock {
        for dg in std::iter::once(&l.digest).chain(l.attachments.iter().map(|a| &a.digest)) {
            if d.blob(dg).is_none() {
                return Err(bad(
                    &layout::blob_data(dg),
                    format!("{} needs {dg}, which the view does not hold", l.requested),
                ));
            }
        }
    }
    Ok(d)
}

impl Description {
    /// Marks every blob `base_size` knows as not shipped, and records the
    /// base. A blob the base holds with another size is an error: one of
    /// the two is corrupt.
    pub fn cut_against(&mut self, base: BaseRef, base_size: impl Fn(&Digest) -> Option<u64>) -> Result<(), String> {
        for b in &mut self.blobs {
            if let Some(size) = base_size(&b.digest) {
                if size != b.size {
                    return Err(format!(
                        "blob {} has {} bytes in the release but {size} in the base: one of them is corrupt",
                        b.digest, b.size
                    ));
                }
                b.shipped = false;
            }
        }
        self.base = Some(base);
        Ok(())
    }
}

/// Every blob of the view with data, and its size, sorted by digest.
fn blobs(view: &View) -> Result<Vec<Blob>, DescribeError> {
    let root = layout::blobs_root();
    let Some(e) = view.resolve(&root).map_err(io_err(&root))? else { return Ok(Vec::new()) };
    let prefixes = view.names(e.as_dir(&root)).map_err(io_err(&root))?;
    let per_prefix: Vec<Vec<Blob>> = prefixes
        .into_par_iter()
        .map(|p| {
            let prel = root.join(&p.name);
            if !p.is_dir() {
                return Err(bad(&prel, "not a directory: a blob store holds only blob directories"));
            }
            let mut out = Vec::new();
            for b in view.names(p.as_dir(&prel)).map_err(io_err(&prel))? {
                let brel = prel.join(&b.name);
                let digest = match (p.name.to_str(), b.name.to_str()) {
                    (Some(prefix), Some(hex)) if b.is_dir() => layout::blob_dir_digest(prefix, hex).ok(),
                    _ => None,
                };
                let Some(digest) = digest else {
                    return Err(bad(&brel, "not a blob directory (blobs/sha256/<first two hex>/<64 hex>)"));
                };
                if let Some(size) = data_size(view, &brel, &b.layers)? {
                    out.push(Blob { digest, size, shipped: true });
                }
            }
            Ok(out)
        })
        .collect::<Result<_, _>>()?;
    let mut all: Vec<Blob> = per_prefix.into_iter().flatten().collect();
    all.sort_unstable_by_key(|b| b.digest);
    Ok(all)
}

/// The size of a blob directory's `data`, if it holds a regular file.
fn data_size(view: &View, dir: &Path, layers: &[LayerIdx]) -> Result<Option<u64>, DescribeError> {
    let found = view.lookup(Dir { rel: dir, layers }, OsStr::new(layout::DATA)).map_err(io_err(dir))?;
    Ok(found.filter(|e| e.meta.is_file()).map(|e| e.meta.size))
}

/// Every tag of the view's repositories: (repo, tag, the digest `current` names).
fn tags(view: &View) -> Result<Vec<(String, String, Digest)>, DescribeError> {
    let mut out = Vec::new();
    let root = layout::repositories_root();
    let Some(e) = view.resolve(&root).map_err(io_err(&root))? else { return Ok(out) };
    let mut stack: Vec<(PathBuf, Vec<String>, Vec<LayerIdx>)> = vec![(root, Vec::new(), e.layers)];
    while let Some((rel, names, layers)) = stack.pop() {
        for child in view.names(Dir { rel: &rel, layers: &layers }).map_err(io_err(&rel))? {
            if !child.is_dir() {
                continue;
            }
            let Some(name) = child.name.to_str() else { continue };
            let crel = rel.join(name);
            if name == layout::MANIFESTS && !names.is_empty() {
                let repo = names.join("/");
                repo_tags(view, &repo, &mut out)?;
            } else if layout::may_hold_repos(name) {
                let mut n = names.clone();
                n.push(name.to_string());
                stack.push((crel, n, child.layers));
            }
        }
    }
    Ok(out)
}

fn repo_tags(view: &View, repo: &str, out: &mut Vec<(String, String, Digest)>) -> Result<(), DescribeError> {
    let dir = layout::tags_dir(repo);
    let Some(e) = view.resolve(&dir).map_err(io_err(&dir))? else { return Ok(()) };
    for t in view.names(e.as_dir(&dir)).map_err(io_err(&dir))? {
        let tag = t.name.to_string_lossy().into_owned();
        let link = layout::tag_current_link(repo, &tag);
        if !layout::valid_tag(&tag) {
            return Err(bad(&dir.join(&t.name), "not a valid tag name"));
        }
        let Some(bytes) = read_view_file(view, &link, layout::LINK_LEN as u64 + 1)? else {
            return Err(bad(&link, "a tag without its current link (run `regfs gc` first)"));
        };
        let digest = layout::parse_link(&bytes).map_err(|e| bad(&link, format!("bad link: {e}")))?;
        out.push((repo.to_string(), tag, digest));
    }
    Ok(())
}

/// Reads a regular file of the view, up to `max` bytes (more is an error);
/// `None` when it is missing.
fn read_view_file(view: &View, rel: &Path, max: u64) -> Result<Option<Vec<u8>>, DescribeError> {
    let Some(e) = view.resolve(rel).map_err(io_err(rel))? else { return Ok(None) };
    if !e.meta.is_file() {
        return Ok(None);
    }
    if e.meta.size > max {
        return Err(bad(rel, format!("{} bytes: larger than expected ({max} at most)", e.meta.size)));
    }
    view.open_read(rel, &e, 0).and_then(|f| f.read_all(max)).map(Some).map_err(io_err(rel))
}

#[derive(Deserialize)]
struct Doc {
    #[serde(rename = "mediaType")]
    media_type: Option<serde_json::Value>,
    config: Option<Descriptor>,
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: Option<String>,
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    os: Option<String>,
    architecture: Option<String>,
    variant: Option<String>,
}

impl Platform {
    fn name(&self) -> Option<String> {
        let (os, arch) = (self.os.as_deref()?, self.architecture.as_deref()?);
        if os.is_empty() || arch.is_empty() {
            return None;
        }
        Some(match &self.variant {
            Some(v) if !v.is_empty() => format!("{os}/{arch}/{v}"),
            _ => format!("{os}/{arch}"),
        })
    }
}

/// The image a tag names: its manifest's media type and platforms (an
/// index's children, or the config's; unknown ones are left out).
fn image(view: &View, repo: String, tag: String, digest: Digest) -> Result<Image, DescribeError> {
    let path = layout::blob_data(&digest);
    let mut img = Image { repo, tag, digest, media_type: None, platforms: Vec::new() };
    let Some(bytes) = read_view_file(view, &path, MAX_DOC_BYTES)? else { return Ok(img) };
    // A manifest GC can follow but this cannot read gives no platforms.
    let Ok(doc) = serde_json::from_slice::<Doc>(&bytes) else { return Ok(img) };
    img.media_type = doc.media_type.and_then(|m| m.as_str().map(str::to_string));
    if let Some(children) = doc.manifests {
        img.platforms = children.iter().filter_map(|c| c.platform.as_ref()?.name()).collect();
    } else if let Some(config) = doc.config.and_then(|c| c.digest).and_then(|d| Digest::parse(&d).ok())
        && let Some(bytes) = read_view_file(view, &layout::blob_data(&config), MAX_DOC_BYTES)?
        && let Ok(p) = serde_json::from_slice::<Platform>(&bytes)
    {
        img.platforms.extend(p.name());
    }
    img.platforms.sort();
    img.platforms.dedup();
    Ok(img)
}
