//! The registry storage grammar: the only module that knows registry path shapes.
//!
//! Modelled on distribution's `registry/storage/paths.go`. Every path here is
//! relative to a registry `rootdirectory`; a [`Digest`] is validated before it
//! ever becomes part of a path. The tree, and the function that builds each
//! path (each from its parent):
//!
//! ```text
//! docker/registry/v2/                                     V2
//!   blobs/sha256/                                         blobs_root
//!     <hex[0:2]>/<hex>/                                   blob_dir
//!       data                                              blob_data
//!   repositories/                                         repositories_root
//!     <name>/                                             repo_dir (name: a/b/c)
//!       _layers/                                          section_dir(Layers)
//!         sha256/                                         layer_links_dir
//!           <hex>/                                        layer_link_dir
//!             link                                        layer_link
//!       _manifests/                                       section_dir(Manifests)
//!         revisions/                                      revisions_dir
//!           sha256/                                       revision_links_dir
//!             <hex>/                                      revision_dir
//!               link                                      revision_link
//!         tags/                                           tags_dir
//!           <tag>/                                        tag_dir
//!             current/link                                tag_current_link
//!             index/sha256/                               tag_index_dir
//!               <hex>/                                    tag_index_entry_dir
//!                 link
//!       _uploads/<uuid>/{data,startedat,hashstates/...}   uploads_dir (section_dir(Uploads))
//! regfs-releases/                                         RELEASES (a history's, beside docker/)
//!   <release>.json                                        release_record
//! ```
//!
//! `regfs-releases/` is regfs's own, outside the registry tree: the record
//! of every release `regfs absorb` folded into a history. No view shows
//! it, whatever the policy ([`is_regfs_state`]).
//!
//! Names: `*_root` is one of the two top directories, `*_dir` a directory,
//! `*s_dir` / `*_links_dir` the directory of every entry of a kind, a bare
//! noun (`blob_data`, `layer_link`) the file.
//!
//! [`parse_store_path`] reads the same grammar back (what a bundle may hold);
//! [`classify`] says where a path sits for the view's policy.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// A history's release records, at its root beside `docker/`.
pub const RELEASES: &str = "regfs-releases";

/// The record of release `name` in a history (`name` a valid release name).
pub fn release_record(name: &str) -> PathBuf {
    Path::new(RELEASES).join(format!("{name}.json"))
}

/// Whether `rel` is regfs's own state in a layer, which no view shows.
pub fn is_regfs_state(rel: &Path) -> bool {
    rel == Path::new(RELEASES)
}

/// `<root>/docker/registry/v2`, relative to the root.
pub const V2: &str = "docker/registry/v2";
/// The directory names a registry keeps under one repository.
pub const LAYERS: &str = "_layers";
pub const MANIFESTS: &str = "_manifests";
pub const UPLOADS: &str = "_uploads";

/// A validated `sha256:<64 lowercase hex>` content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 64]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest must start with 'sha256:' (other algorithms are not supported): {0:?}")]
    Algorithm(String),
    #[error("digest hex must be 64 lowercase hex characters: {0:?}")]
    Hex(String),
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`, nothing more and nothing less.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| DigestError::Algorithm(truncate(s)))?;
        Digest::from_hex(hex).map_err(|_| DigestError::Hex(truncate(s)))
    }

    /// Parses the bare 64-character lowercase hex form used in directory names.
    pub fn from_hex(hex: &str) -> Result<Digest, DigestError> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::Hex(truncate(hex)));
        }
        let mut out = [0u8; 64];
        out.copy_from_slice(bytes);
        Ok(Digest(out))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_sha256(sha2::Sha256::digest(data).as_slice())
    }

    /// Builds a digest from a raw 32-byte sha256 output.
    pub fn from_sha256(raw: &[u8]) -> Digest {
        let hex = hex::encode(raw);
        let mut out = [0u8; 64];
        out.copy_from_slice(hex.as_bytes());
        Digest(out)
    }

    pub fn hex(&self) -> &str {
        // Only ASCII hex is ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(100).collect()
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Exact length of a link file: `sha256:` plus 64 hex, no newline.
pub const LINK_LEN: usize = 71;

/// Parses the content of a `link` file. It must hold exactly one digest and
/// nothing else: no newline, no other algorithm, no path tricks.
pub fn parse_link(content: &[u8]) -> Result<Digest, DigestError> {
    let text =
        std::str::from_utf8(content).map_err(|_| DigestError::Hex(String::from_utf8_lossy(content).into_owned()))?;
    Digest::parse(text)
}

/// The path of a blob's data file.
pub fn blob_data(d: &Digest) -> PathBuf {
    blob_dir(d).join("data")
}

/// The directory that holds a blob's data file.
pub fn blob_dir(d: &Digest) -> PathBuf {
    // One allocation, with room for blob_data's `/data`: GC names tens of
    // thousands of these.
    let hex = d.hex();
    let mut p = String::with_capacity(V2.len() + "/blobs/sha256/xx/".len() + hex.len() + "/data".len());
    for part in [V2, "/blobs/sha256/", &hex[..2], "/", hex] {
        p.push_str(part);
    }
    PathBuf::from(p)
}

/// `docker/registry/v2/blobs/sha256`
pub fn blobs_root() -> PathBuf {
    Path::new(V2).join("blobs/sha256")
}

/// `docker/registry/v2/repositories`
pub fn repositories_root() -> PathBuf {
    Path::new(V2).join("repositories")
}

/// `repositories/<name>`
pub fn repo_dir(repo: &str) -> PathBuf {
    repositories_root().join(repo)
}

/// A section directory of a repository (`<repo>/_layers`, ...).
pub fn section_dir(repo: &str, section: Section) -> PathBuf {
    repo_dir(repo).join(section.name())
}

/// `<repo>/_layers/sha256`: the directory of every layer link.
pub fn layer_links_dir(repo: &str) -> PathBuf {
    section_dir(repo, Section::Layers).join("sha256")
}

/// `<repo>/_layers/sha256/<hex>`: the directory of one layer link.
pub fn layer_link_dir(repo: &str, d: &Digest) -> PathBuf {
    layer_links_dir(repo).join(d.hex())
}

pub fn layer_link(repo: &str, d: &Digest) -> PathBuf {
    layer_link_dir(repo, d).join(LINK)
}

/// `<repo>/_manifests/revisions`.
pub fn revisions_dir(repo: &str) -> PathBuf {
    section_dir(repo, Section::Manifests).join("revisions")
}

/// `<repo>/_manifests/revisions/sha256`: the directory of every revision link.
pub fn revision_links_dir(repo: &str) -> PathBuf {
    revisions_dir(repo).join("sha256")
}

/// `<repo>/_manifests/revisions/sha256/<hex>`: the directory of one revision link.
pub fn revision_dir(repo: &str, d: &Digest) -> PathBuf {
    revision_links_dir(repo).join(d.hex())
}

pub fn revision_link(repo: &str, d: &Digest) -> PathBuf {
    revision_dir(repo, d).join(LINK)
}

/// `<repo>/_manifests/tags`.
pub fn tags_dir(repo: &str) -> PathBuf {
    section_dir(repo, Section::Manifests).join("tags")
}

/// `<repo>/_manifests/tags/<tag>`.
pub fn tag_dir(repo: &str, tag: &str) -> PathBuf {
    tags_dir(repo).join(tag)
}

/// `<repo>/_manifests/tags/<tag>/current/link`: the tag's digest.
pub fn tag_current_link(repo: &str, tag: &str) -> PathBuf {
    tag_dir(repo, tag).join("current").join(LINK)
}

/// `<repo>/_manifests/tags/<tag>/index/sha256`: the tag's history.
pub fn tag_index_dir(repo: &str, tag: &str) -> PathBuf {
    tag_dir(repo, tag).join("index/sha256")
}

/// `<repo>/_manifests/tags/<tag>/index/sha256/<hex>`: one entry of a tag's history.
pub fn tag_index_entry_dir(repo: &str, tag: &str, d: &Digest) -> PathBuf {
    tag_index_dir(repo, tag).join(d.hex())
}

/// `<repo>/_uploads`.
pub fn uploads_dir(repo: &str) -> PathBuf {
    section_dir(repo, Section::Uploads)
}

/// The file that holds a link's digest, in every link directory.
pub const LINK: &str = "link";
/// The file that holds a blob's bytes, in every blob directory.
pub const DATA: &str = "data";

/// The digest a blob directory `blobs/sha256/<prefix>/<hex>` stands for:
/// `hex` must be a valid digest and `prefix` its first two characters.
pub fn blob_dir_digest(prefix: &str, hex: &str) -> Result<Digest, DigestError> {
    let d = Digest::from_hex(hex)?;
    if prefix != &d.hex()[..2] {
        return Err(DigestError::Hex(format!("{prefix}/{hex}: not filed under its first two hex digits")));
    }
    Ok(d)
}

/// The blob whose data file `rel` is (`docker/registry/v2/blobs/sha256/<xx>/<hex>/data`), if it is one.
pub fn blob_of_data_path(rel: &Path) -> Option<Digest> {
    let rest = rel.strip_prefix(blobs_root()).ok()?;
    let mut comps = rest.components().map(|c| c.as_os_str().to_str());
    let (Some(Some(prefix)), Some(Some(hex)), Some(Some(DATA)), None) =
        (comps.next(), comps.next(), comps.next(), comps.next())
    else {
        return None;
    };
    blob_dir_digest(prefix, hex).ok()
}

/// Whether a directory under `repositories/` may be (or hold) a repository:
/// the registry's walk skips every `_`-name that is not a section.
pub fn may_hold_repos(name: &str) -> bool {
    !name.starts_with('_')
}

/// The directories every registry store has, whatever it holds: the root,
/// `docker`, `docker/registry`, `v2`, `blobs`, `blobs/sha256`, `repositories`.
pub fn skeleton_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut p = PathBuf::new();
    out.push(p.clone());
    for c in Path::new(V2).components() {
        p.push(c);
        out.push(p.clone());
    }
    out.push(Path::new(V2).join("blobs"));
    out.push(blobs_root());
    out.push(repositories_root());
    out
}

/// The directories of a repository that stay, even empty, while it has
/// manifests: `_layers`, `_manifests`, `_manifests/revisions`, `_manifests/tags`.
pub fn live_repo_dirs(repo: &str) -> [PathBuf; 4] {
    [section_dir(repo, Section::Layers), section_dir(repo, Section::Manifests), revisions_dir(repo), tags_dir(repo)]
}

/// The repositories of the store directory `root` (one layer, read
/// directly): directories under `repositories/` holding a section `wanted`
/// accepts. Walks as the registry does (other `_` names are not descended);
/// a missing `repositories/` is an empty store.
pub fn repositories_in(root: &Path, wanted: impl Fn(Section) -> bool) -> std::io::Result<BTreeSet<String>> {
    let base = root.join(repositories_root());
    repositories_listed(
        |rel| match std::fs::read_dir(base.join(rel)) {
            Ok(rd) => rd
                .map(|de| {
                    let de = de?;
                    Ok((de.file_name().to_string_lossy().into_owned(), de.file_type()?.is_dir()))
                })
                .collect::<std::io::Result<Vec<_>>>()
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        },
        wanted,
    )
}

/// [`repositories_in`] over any tree: `list(rel)` gives the names below
/// `repositories/` at `rel` with whether each is a directory (`None`: no
/// directory there).
pub fn repositories_listed(
    mut list: impl FnMut(&Path) -> std::io::Result<Option<Vec<(String, bool)>>>,
    wanted: impl Fn(Section) -> bool,
) -> std::io::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Some(names) = list(&rel)? else { continue };
        for (name, is_dir) in names {
            if !is_dir {
                continue;
            }
            match Section::from_name(&name) {
                // A section directly under repositories/ belongs to no repository.
                Some(section) if wanted(section) && !rel.as_os_str().is_empty() => {
                    out.insert(rel.to_string_lossy().into_owned());
                }
                Some(_) => {}
                None if may_hold_repos(&name) => stack.push(rel.join(name)),
                None => {}
            }
        }
    }
    Ok(out)
}

/// The parts of a repository directory a registry keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Layers,
    Manifests,
    Uploads,
}

impl Section {
    pub fn from_name(name: &str) -> Option<Section> {
        match name {
            LAYERS => Some(Section::Layers),
            MANIFESTS => Some(Section::Manifests),
            UPLOADS => Some(Section::Uploads),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Section::Layers => LAYERS,
            Section::Manifests => MANIFESTS,
            Section::Uploads => UPLOADS,
        }
    }
}

/// Where a relative path sits in the registry tree, as far as policy cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Place<'a> {
    /// Not under `docker/registry/v2/repositories/` (blobs, the root, ...).
    Outside,
    /// `repositories/` itself.
    RepositoriesRoot,
    /// A directory under `repositories/` above any section: a repository or
    /// a namespace such as `team` of `team/app`. `prefix` are its components.
    RepoOrNamespace { prefix: Vec<&'a str> },
    /// Inside (or at) a section of repository `repo`.
    InSection { repo: Vec<&'a str>, section: Section },
}

/// Classifies a path relative to the registry root. Non-UTF-8 components
/// under `repositories/` are treated as plain names (they never match a
/// section or a kept repository).
pub fn classify(rel: &Path) -> Place<'_> {
    let mut comps = rel.components().filter_map(|c| match c {
        Component::Normal(s) => Some(s),
        _ => None,
    });
    for expected in ["docker", "registry", "v2", "repositories"] {
        match comps.next() {
            Some(c) if c == expected => {}
            _ => return Place::Outside,
        }
    }
    let mut prefix = Vec::new();
    for c in comps {
        let name = c.to_str().unwrap_or("\u{fffd}");
        if let Some(section) = Section::from_name(name) {
            return Place::InSection { repo: prefix, section };
        }
        prefix.push(name);
    }
    if prefix.is_empty() { Place::RepositoriesRoot } else { Place::RepoOrNamespace { prefix } }
}

/// Whether no child of directory `dir` can lie in the repository tree
/// (`blobs/...`, say): [`classify`] puts every one of them `Outside`.
pub fn children_outside_repositories(dir: &Path) -> bool {
    let root = repositories_root();
    !(dir.starts_with(&root) || root.starts_with(dir))
}

/// A repository name in its usual `a/b/c` form.
pub fn repo_name(components: &[&str]) -> String {
    components.join("/")
}

/// Validates a repository name as a registry would accept it, so it can be
/// joined into a path safely: lowercase alphanumerics and separators, no `..`.
pub fn valid_repo_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && !part.starts_with('_')
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        })
}

/// A registry tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// What a path of a registry store is, judged by its shape alone: the
/// grammar a bundle (and so `regfs apply`) accepts. Everything a registry
/// needs to serve an image, nothing in flight (an `_uploads` directory but
/// nothing in it), nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorePath {
    /// A directory on the way to one of the files below.
    Dir,
    /// `blobs/sha256/<xx>/<hex>/data`.
    BlobData(Digest),
    /// `repositories/<repo>/_layers/sha256/<hex>/link`.
    LayerLink { repo: String, digest: Digest },
    /// `repositories/<repo>/_manifests/revisions/sha256/<hex>/link`.
    RevisionLink { repo: String, digest: Digest },
    /// `repositories/<repo>/_manifests/tags/<tag>/current/link`.
    TagCurrentLink { repo: String, tag: String },
    /// `repositories/<repo>/_manifests/tags/<tag>/index/sha256/<hex>/link`.
    TagIndexLink { repo: String, tag: String, digest: Digest },
}

impl StorePath {
    /// The digest a link's path says it holds (a tag's `current` says none).
    pub fn link_digest(&self) -> Option<Digest> {
        match self {
            StorePath::LayerLink { digest, .. }
            | StorePath::RevisionLink { digest, .. }
            | StorePath::TagIndexLink { digest, .. } => Some(*digest),
            _ => None,
        }
    }

    /// Whether this is a link file (its content is one digest).
    pub fn is_link(&self) -> bool {
        !matches!(self, StorePath::Dir | StorePath::BlobData(_))
    }
}

/// Classifies `rel` (relative to the root, `/`-separated, no trailing `/`)
/// as a directory (`is_dir`) or a file of a registry store; `None` when it
/// has no place in one.
pub fn parse_store_path(rel: &str, is_dir: bool) -> Option<StorePath> {
    let comps: Vec<&str> = if rel.is_empty() { Vec::new() } else { rel.split('/').collect() };
    let v2: Vec<&str> = V2.split('/').collect();
    let n = comps.len().min(v2.len());
    if comps[..n] != v2[..n] {
        return None;
    }
    if comps.len() <= v2.len() {
        return is_dir.then_some(StorePath::Dir);
    }
    let rest = &comps[v2.len()..];
    match rest {
        ["blobs"] | ["blobs", "sha256"] | ["repositories"] if is_dir => Some(StorePath::Dir),
        ["blobs", "sha256", prefix] if is_dir && prefix.len() == 2 && Digest::from_hex(&prefix.repeat(32)).is_ok() => {
            Some(StorePath::Dir)
        }
        ["blobs", "sha256", prefix, hex] if is_dir => blob_dir_digest(prefix, hex).ok().map(|_| StorePath::Dir),
        ["blobs", "sha256", prefix, hex, DATA] if !is_dir => blob_dir_digest(prefix, hex).ok().map(StorePath::BlobData),
        ["repositories", repo_rest @ ..] => parse_repo_path(repo_rest, is_dir),
        _ => None,
    }
}

fn parse_repo_path(comps: &[&str], is_dir: bool) -> Option<StorePath> {
    let at = comps.iter().position(|c| c.starts_with('_'));
    let (repo_comps, rest) = comps.split_at(at.unwrap_or(comps.len()));
    let repo = repo_comps.join("/");
    if !repo_comps.is_empty() && !valid_repo_name(&repo) {
        return None;
    }
    let Some((section, rest)) = rest.split_first() else { return is_dir.then_some(StorePath::Dir) };
    if repo_comps.is_empty() {
        return None;
    }
    let hex = |h: &str| Digest::from_hex(h).ok();
    let dir = |ok: bool| (is_dir && ok).then_some(StorePath::Dir);
    match (*section, rest) {
        // An empty `_uploads` is left by every push; nothing in it belongs in a store's copy.
        (LAYERS, [] | ["sha256"])
        | (MANIFESTS, [] | ["revisions"] | ["revisions", "sha256"] | ["tags"])
        | (UPLOADS, []) => dir(true),
        (LAYERS, ["sha256", h]) | (MANIFESTS, ["revisions", "sha256", h]) => dir(hex(h).is_some()),
        (MANIFESTS, ["tags", tag] | ["tags", tag, "current" | "index"] | ["tags", tag, "index", "sha256"]) => {
            dir(valid_tag(tag))
        }
        (MANIFESTS, ["tags", tag, "index", "sha256", h]) => dir(valid_tag(tag) && hex(h).is_some()),
        _ if is_dir => None,
        (LAYERS, ["sha256", h, LINK]) => hex(h).map(|digest| StorePath::LayerLink { repo, digest }),
        (MANIFESTS, ["revisions", "sha256", h, LINK]) => hex(h).map(|digest| StorePath::RevisionLink { repo, digest }),
        (MANIFESTS, ["tags", tag, "current", LINK]) if valid_tag(tag) => {
            Some(StorePath::TagCurrentLink { repo, tag: tag.to_string() })
        }
        (MANIFESTS, ["tags", tag, "index", "sha256", h, LINK]) if valid_tag(tag) => {
            hex(h).map(|digest| StorePath::TagIndexLink { repo, tag: tag.to_string(), digest })
        }
        _ => None,
    }
}

/// The prefix of a blob prefix directory `blobs/sha256/<xx>`, if `rel` is one.
pub fn blob_prefix_of_path(rel: &Path) -> Option<&str> {
    let rest = rel.strip_prefix(blobs_root()).ok()?;
    let mut comps = rest.components().map(|c| c.as_os_str().to_str());
    let (Some(Some(prefix)), None) = (comps.next(), comps.next()) else { return None };
    (prefix.len() == 2).then_some(prefix)
}

/// The blob a blob directory `blobs/sha256/<xx>/<hex>` stands for, if `rel` is one.
pub fn blob_of_dir_path(rel: &Path) -> Option<Digest> {
    let rest = rel.strip_prefix(blobs_root()).ok()?;
    let mut comps = rest.components().map(|c| c.as_os_str().to_str());
    let (Some(Some(prefix)), Some(Some(hex)), None) = (comps.next(), comps.next(), comps.next()) else {
        return None;
    };
    blob_dir_digest(prefix, hex).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digest_roundtrip_and_paths() {
        let d = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
        assert_eq!(blob_data(&d), PathBuf::from(format!("docker/registry/v2/blobs/sha256/01/{HEX}/data")));
        assert_eq!(
            layer_link("team/app", &d),
            PathBuf::from(format!("docker/registry/v2/repositories/team/app/_layers/sha256/{HEX}/link"))
        );
    }

    #[test]
    fn links_are_strict() {
        let good = format!("sha256:{HEX}");
        assert!(parse_link(good.as_bytes()).is_ok());
        assert_eq!(good.len(), LINK_LEN);
        for bad in [
            format!("{good}\n"),
            good.to_uppercase(),
            format!("sha512:{HEX}"),
            "sha256:../../etc/passwd".to_string(),
            format!("sha256:{}", &HEX[..63]),
            String::new(),
        ] {
            assert!(parse_link(bad.as_bytes()).is_err(), "{bad:?} must be rejected");
        }
        assert!(parse_link(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn classify_paths() {
        assert_eq!(classify(Path::new("docker/registry/v2/blobs")), Place::Outside);
        assert_eq!(classify(Path::new("")), Place::Outside);
        assert_eq!(classify(Path::new("docker/registry/v2/repositories")), Place::RepositoriesRoot);
        assert_eq!(
            classify(Path::new("docker/registry/v2/repositories/team/app")),
            Place::RepoOrNamespace { prefix: vec!["team", "app"] }
        );
        assert_eq!(
            classify(Path::new("docker/registry/v2/repositories/team/app/_manifests/tags")),
            Place::InSection { repo: vec!["team", "app"], section: Section::Manifests }
        );
    }

    #[test]
    fn blob_paths() {
        let d = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        assert_eq!(blob_dir_digest("01", HEX), Ok(d));
        assert!(blob_dir_digest("02", HEX).is_err());
        assert!(blob_dir_digest("01", &HEX.to_uppercase()).is_err());
        assert_eq!(blob_of_data_path(&blob_data(&d)), Some(d));
        assert_eq!(blob_of_data_path(&blob_dir(&d)), None);
        assert_eq!(blob_of_data_path(&blob_dir(&d).join("data/x")), None);
        assert_eq!(blob_of_data_path(&layer_link("a", &d)), None);
        assert_eq!(
            tag_index_entry_dir("a", "v1", &d),
            PathBuf::from(format!("docker/registry/v2/repositories/a/_manifests/tags/v1/index/sha256/{HEX}"))
        );
        assert_eq!(
            revision_dir("a", &d),
            PathBuf::from(format!("docker/registry/v2/repositories/a/_manifests/revisions/sha256/{HEX}"))
        );
        assert!(skeleton_dirs().contains(&PathBuf::from("docker/registry")));
        assert!(skeleton_dirs().contains(&PathBuf::new()));
    }

    #[test]
    fn repo_names() {
        assert!(valid_repo_name("team/app-1.x_y"));
        for bad in ["", "Team", "a//b", "../x", "a/_layers", "a/./b"] {
            assert!(!valid_repo_name(bad), "{bad}");
        }
    }

    #[test]
    fn store_path_grammar() {
        let d = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        let f = |p: &str| parse_store_path(p, false);
        let dir = |p: &str| parse_store_path(p, true);
        for ok in [
            "",
            "docker",
            "docker/registry/v2",
            "docker/registry/v2/blobs/sha256/01",
            &format!("docker/registry/v2/blobs/sha256/01/{HEX}"),
            "docker/registry/v2/repositories/team",
            "docker/registry/v2/repositories/team/app/_manifests/tags/v1/index/sha256",
            &format!("docker/registry/v2/repositories/a/_layers/sha256/{HEX}"),
        ] {
            assert_eq!(dir(ok), Some(StorePath::Dir), "{ok}");
        }
        for bad in [
            "x",
            "docker/x",
            "docker/registry/v2/blobs/sha256/zz",
            &format!("docker/registry/v2/blobs/sha256/02/{HEX}"),
            "docker/registry/v2/repositories/a/_uploads/u",
            "docker/registry/v2/repositories/_layers",
            "docker/registry/v2/repositories/A",
            "docker/registry/v2/repositories/a/_manifests/tags/-x",
        ] {
            assert_eq!(dir(bad), None, "{bad}");
        }
        assert_eq!(f(&format!("docker/registry/v2/blobs/sha256/01/{HEX}/data")), Some(StorePath::BlobData(d)));
        assert_eq!(
            f(&format!("docker/registry/v2/repositories/t/a/_layers/sha256/{HEX}/link")),
            Some(StorePath::LayerLink { repo: "t/a".into(), digest: d })
        );
        assert_eq!(
            f("docker/registry/v2/repositories/a/_manifests/tags/v1/current/link"),
            Some(StorePath::TagCurrentLink { repo: "a".into(), tag: "v1".into() })
        );
        assert_eq!(
            f(&format!("docker/registry/v2/repositories/a/_manifests/tags/v1/index/sha256/{HEX}/link")),
            Some(StorePath::TagIndexLink { repo: "a".into(), tag: "v1".into(), digest: d })
        );
        for bad in [
            "docker",
            "docker/registry/v2/blobs/sha256/01/x/data",
            "docker/registry/v2/repositories/a/_uploads/u/data",
            "docker/registry/v2/repositories/a/_layers/sha256/x/link",
            "docker/registry/v2/repositories/a/_manifests/tags/v1/current/data",
        ] {
            assert_eq!(f(bad), None, "{bad}");
        }
        assert_eq!(blob_of_dir_path(&blob_dir(&d)), Some(d));
        assert_eq!(blob_of_dir_path(&blob_data(&d)), None);
    }
}
