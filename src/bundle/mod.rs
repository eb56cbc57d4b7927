//! The release bundle: an uncompressed tar rooted like a registry
//! `rootdirectory` (`docker/registry/v2/...`) whose first entry is one
//! description file, [`DESCRIPTION`], outside `docker/` (a stock registry
//! never looks there, so a full bundle still untars and serves as is).
//!
//! The description names the release, every image (`repo:tag` → manifest
//! digest, media type, platforms), the release's lock (each image as it was
//! requested, the digest it resolved to, its platforms and what is attached
//! to it: signatures, attestations, SBOMs, OCI 1.1 referrers), every blob
//! the release needs (digest, size, whether this tar carries it) and the
//! base the bundle was cut against (an inventory: see `regfs inventory`). A full bundle is a delta against the
//! empty base: one format. The description is written with a fixed key
//! order, one image or blob per line, so the same release over the same
//! base gives the same bytes.
//!
//! - [`describe`]: the description of a view (what export writes);
//! - [`tarball`]: the one reader of bundle tars, strict about what it accepts;
//! - [`layer`]: a bundle tar as a read-only layer of the view, read in place.

pub mod describe;
pub mod layer;
pub mod record;
pub mod tarball;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::layout::{self, Digest};

/// The description's name at the tar's root (and its first entry).
pub const DESCRIPTION: &str = "regfs-bundle.json";
/// `format` of every description.
pub const FORMAT: &str = "regfs-bundle";
/// The description version this regfs writes (it reads this one and 1,
/// which had no lock).
pub const VERSION: u32 = 2;
/// Largest description regfs reads (about two million blobs).
pub const MAX_DESCRIPTION_BYTES: u64 = 256 << 20;

/// What a bundle holds and what the site must hold already.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    pub format: String,
    pub version: u32,
    /// The release's name (`--name`, by default the tar's name without `.tar`).
    pub release: String,
    /// What the bundle was cut against; `None`: the empty base (a full bundle).
    pub base: Option<BaseRef>,
    /// Every tag the bundle holds (attachment tags too), sorted by
    /// repository, then tag.
    pub images: Vec<Image>,
    /// The release's lock: each requested image, sorted by how it was
    /// requested (empty for a bundle `regfs export` made of a view).
    #[serde(default)]
    pub lock: Vec<Locked>,
    /// Every blob the release needs, sorted by digest.
    pub blobs: Vec<Blob>,
}

/// The base a delta was cut against: the digest of its blob list (see
/// [`blob_list_digest`]), so a bundle and a site inventory holding the same
/// blobs are the same base.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseRef {
    pub blobs_digest: Digest,
    pub blobs: u64,
    pub bytes: u64,
}

/// One image of the release: a tag and the manifest it names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub repo: String,
    pub tag: String,
    pub digest: Digest,
    /// The manifest's `mediaType`, when it declares one.
    pub media_type: Option<String>,
    /// `os/architecture[/variant]`: an index's children, or an image's config.
    pub platforms: Vec<String>,
}

/// One image of a release's lock.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locked {
    /// As the images list names it: `repo:tag`, `repo@sha256:…` or `repo:tag@sha256:…`.
    pub requested: String,
    pub repo: String,
    pub tag: Option<String>,
    /// The manifest the reference resolved to at the source.
    pub digest: Digest,
    /// `os/architecture[/variant]`, as for [`Image`].
    pub platforms: Vec<String>,
    /// What the release carries attached to the image or to a child of its
    /// index, in the order they were found (each after its subject).
    pub attachments: Vec<Attachment>,
}

/// A manifest attached to one of an image's manifests.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub kind: AttachmentKind,
    pub digest: Digest,
    /// The manifest it is attached to.
    pub subject: Digest,
    /// The tag it is found by (cosign's `sha256-<hex>.sig`, a referrers
    /// fallback tag); `None` for a referrer known by its `subject` only.
    pub tag: Option<String>,
    /// An OCI 1.1 referrer's `artifactType`, where it declares one.
    pub artifact_type: Option<String>,
}

/// What an attachment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachmentKind {
    /// cosign's `sha256-<hex>.sig`.
    Signature,
    /// cosign's `sha256-<hex>.att`.
    Attestation,
    /// cosign's `sha256-<hex>.sbom`.
    Sbom,
    /// The OCI 1.1 referrers fallback tag `sha256-<hex>`: an index of the referrers.
    ReferrersIndex,
    /// An OCI 1.1 referrer: a manifest whose `subject` names the image.
    Referrer,
}

impl AttachmentKind {
    /// The cosign tag suffixes and what each is.
    pub const COSIGN: [(&'static str, AttachmentKind); 3] =
        [("sig", AttachmentKind::Signature), ("att", AttachmentKind::Attestation), ("sbom", AttachmentKind::Sbom)];

    /// The tag an attachment of this kind to `subject` has, if it has one.
    pub fn tag_for(self, subject: &Digest) -> Option<String> {
        match self {
            AttachmentKind::ReferrersIndex => Some(format!("sha256-{}", subject.hex())),
            AttachmentKind::Referrer => None,
            k => Self::COSIGN.iter().find(|(_, c)| *c == k).map(|(s, _)| format!("sha256-{}.{s}", subject.hex())),
        }
    }
}

/// One blob the release needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blob {
    pub digest: Digest,
    pub size: u64,
    /// Whether this tar carries its data (a base holds the others).
    pub shipped: bool,
}

impl Description {
    /// The bytes of the description file: fixed key order, one image or
    /// blob per line.
    pub fn to_bytes(&self) -> Vec<u8> {
        fn line<T: Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap_or_default()
        }
        fn list<T: Serialize>(items: &[T]) -> String {
            if items.is_empty() {
                return "[]".into();
            }
            let lines: Vec<String> = items.iter().map(line).collect();
            format!("[\n{}\n]", lines.join(",\n"))
        }
        let lock = if self.version >= 2 { format!("\"lock\":{},\n", list(&self.lock)) } else { String::new() };
        format!(
            "{{\"format\":{},\"version\":{},\"release\":{},\"base\":{},\n\"images\":{},\n{lock}\"blobs\":{}}}\n",
            line(&self.format),
            self.version,
            line(&self.release),
            line(&self.base),
            list(&self.images),
            list(&self.blobs)
        )
        .into_bytes()
    }

    /// Parses and checks a description: its format and version, sorted
    /// and unique images and blobs, valid names, every image's manifest
    /// among the blobs.
    pub fn parse(bytes: &[u8]) -> Result<Description, String> {
        let d: Description = serde_json::from_slice(bytes).map_err(|e| format!("not a bundle description: {e}"))?;
        if d.format != FORMAT {
            return Err(format!("format {:?}, expected {FORMAT:?}", d.format));
        }
        if d.version == 0 || d.version > VERSION {
            return Err(format!(
                "version {} (this regfs reads versions 1 to {VERSION}; a newer regfs wrote it: upgrade regfs)",
                d.version
            ));
        }
        if d.version == 1 && !d.lock.is_empty() {
            return Err("version 1 has no lock".into());
        }
        if !valid_release_name(&d.release) {
            return Err(format!("release name {:?} is not a plain name", d.release));
        }
        if !d.blobs.windows(2).all(|w| w[0].digest < w[1].digest) {
            return Err("blobs are not sorted by digest, or one is listed twice".into());
        }
        let mut seen = BTreeSet::new();
        for (i, img) in d.images.iter().enumerate() {
            if !layout::valid_repo_name(&img.repo) || !layout::valid_tag(&img.tag) {
                return Err(format!("images[{i}]: {:?}:{:?} is not a repo:tag", img.repo, img.tag));
            }
            if !seen.insert((&img.repo, &img.tag)) || (i > 0 && d.images[i - 1] > *img) {
                return Err(format!("images[{i}]: {}:{} is out of order or listed twice", img.repo, img.tag));
            }
            if d.blob(&img.digest).is_none() {
                return Err(format!(
                    "images[{i}]: {}:{} names {}, which is not among the blobs",
                    img.repo, img.tag, img.digest
                ));
            }
        }
        check_lock(&d)?;
        Ok(d)
    }

    /// The blob entry of `d`, if the release needs it.
    pub fn blob(&self, d: &Digest) -> Option<&Blob> {
        self.blobs.binary_search_by(|b| b.digest.cmp(d)).ok().map(|i| &self.blobs[i])
    }

    /// Blobs and bytes the release needs, and those this tar carries.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for b in &self.blobs {
            t.blobs_needed += 1;
            t.bytes_needed += b.size;
            if b.shipped {
                t.blobs_shipped += 1;
                t.bytes_shipped += b.size;
            }
        }
        t
    }
}

/// The lock's rules: sorted and unique requests, valid names, an image's
/// reference agreeing with its fields, every manifest among the blobs.
fn check_lock(d: &Description) -> Result<(), String> {
    for (i, l) in d.lock.iter().enumerate() {
        let at = format!("lock[{i}] ({:?})", l.requested);
        if i > 0 && d.lock[i - 1].requested >= l.requested {
            return Err(format!("{at}: out of order or listed twice"));
        }
        let tag_ok = l.tag.as_deref().is_none_or(layout::valid_tag);
        if !layout::valid_repo_name(&l.repo) || !tag_ok || !l.requested.starts_with(l.repo.as_str()) {
            return Err(format!("{at}: not a valid image reference"));
        }
        let named = |what: &str, dg: &Digest| match d.blob(dg) {
            Some(_) => Ok(()),
            None => Err(format!("{at}: {what} {dg} is not among the blobs")),
        };
        named("manifest", &l.digest)?;
        for a in &l.attachments {
            named("attachment", &a.digest)?;
            if a.tag.as_deref().is_some_and(|t| !layout::valid_tag(t)) {
                return Err(format!("{at}: attachment {}: bad tag", a.digest));
            }
        }
    }
    Ok(())
}

/// Counts of a description's blobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub blobs_needed: u64,
    pub bytes_needed: u64,
    pub blobs_shipped: u64,
    pub bytes_shipped: u64,
}

/// A release name: what goes into the description and the history's
/// records. Letters, digits, `.`, `_`, `-`, `+`; not starting with `.`.
pub fn valid_release_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
}

/// The digest that identifies a set of blobs: sha256 of `<digest> <size>\n`
/// per blob, sorted by digest.
pub fn blob_list_digest<'a>(blobs: impl IntoIterator<Item = (&'a Digest, u64)>) -> Digest {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for (d, size) in blobs {
        h.update(format!("{d} {size}\n").as_bytes());
    }
    Digest::from_sha256(&h.finalize())
}

/// What a stack of bundles (oldest first, as `apply` takes them) lacks: a
/// delta's unshipped blobs must be among the blobs the bundles before it
/// need (which they carry or, in turn, stand on). One line per missing
/// blob, naming its bundle; empty when the stack is whole.
pub fn chain_missing(bundles: &[(std::path::PathBuf, Description)]) -> Vec<String> {
    let mut held: std::collections::BTreeMap<Digest, u64> = std::collections::BTreeMap::new();
    let mut missing = Vec::new();
    for (path, d) in bundles {
        for b in d.blobs.iter().filter(|b| !b.shipped) {
            match held.get(&b.digest) {
                Some(&size) if size == b.size => {}
                _ => missing.push(format!("{}: {} ({} bytes)", path.display(), b.digest, b.size)),
            }
        }
        held.extend(d.blobs.iter().map(|b| (b.digest, b.size)));
    }
    missing
}

/// Reads the description of the bundle at `path`: its first entry.
pub fn read_description(path: &std::path::Path) -> Result<Description, String> {
    let mut r = tarball::TarReader::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let first = r.next_entry().map_err(|e| e.to_string())?;
    match first {
        Some(e) if e.path == DESCRIPTION && e.kind == tarball::EntryKind::File => {
            let bytes = r.read_all(MAX_DESCRIPTION_BYTES).map_err(|e| format!("{DESCRIPTION}: {e}"))?;
            Description::parse(&bytes).map_err(|e| format!("{DESCRIPTION}: {e}"))
        }
        Some(e) => Err(format!(
            "not a regfs bundle: its first entry is {:?}, not {DESCRIPTION} (a tar made by `regfs export` or \
             `regfs release` starts with its description)",
            e.path
        )),
        None => Err("an empty tar, not a regfs bundle".into()),
    }
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
