//! Synthetic registry storage trees and exact tree snapshots.
//!
//! `write_store` lays out what a registry leaves on disk (blobs, `_layers`,
//! `_manifests` revisions and tags, `_uploads` leftovers) without running one,
//! so the view tests start in milliseconds. `snapshot` captures a tree to the
//! byte (names, types, modes, sizes, contents, symlink targets, xattrs) to
//! prove lowers were never written.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A repository of the synthetic store and its tags.
pub struct RepoSpec {
    pub name: &'static str,
    pub tags: &'static [&'static str],
}

/// What `write_store` wrote, for assertions.
#[derive(Default, Debug)]
pub struct Store {
    /// digest hex → blob content
    pub blobs: BTreeMap<String, Vec<u8>>,
    /// repo → layer digests linked in `_layers`
    pub layer_links: BTreeMap<String, Vec<String>>,
    /// repo → (tag, manifest digest)
    pub tags: BTreeMap<String, Vec<(String, String)>>,
}

fn write(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().expect("path has a parent")).expect("mkdir -p");
    fs::write(path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

pub fn v2(root: &Path) -> PathBuf {
    root.join("docker/registry/v2")
}

impl Store {
    fn add_blob(&mut self, root: &Path, data: Vec<u8>) -> String {
        let hex = sha256_hex(&data);
        write(&v2(root).join(format!("blobs/sha256/{}/{hex}/data", &hex[..2])), &data);
        self.blobs.insert(hex.clone(), data);
        hex
    }
}

fn link(root: &Path, rel: String, hex: &str) {
    write(&v2(root).join(rel), format!("sha256:{hex}").as_bytes());
}

/// Writes a registry store under `root`: every repo shares one base layer,
/// has its own app layer per tag, a config and a manifest per tag, plus an
/// `_uploads` leftover. `salt` makes different stores differ.
pub fn write_store(root: &Path, repos: &[RepoSpec], salt: &str) -> Store {
    let mut store = Store::default();
    let base = store.add_blob(root, format!("base layer shared by all {salt}").into_bytes());
    for repo in repos {
        for tag in repo.tags {
            let app = store.add_blob(root, format!("app layer {salt} {} {tag}", repo.name).into_bytes());
            let config = store.add_blob(root, format!("{{\"config\":\"{salt} {} {tag}\"}}", repo.name).into_bytes());
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config}"), "size": store.blobs[&config].len()},
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{base}"), "size": store.blobs[&base].len()},
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{app}"), "size": store.blobs[&app].len()},
                ]
            });
            let mhex = store.add_blob(root, serde_json::to_vec(&manifest).expect("json"));
            let r = format!("repositories/{}", repo.name);
            for l in [&base, &app, &config] {
                link(root, format!("{r}/_layers/sha256/{l}/link"), l);
                store.layer_links.entry(repo.name.to_string()).or_default().push(l.clone());
            }
            link(root, format!("{r}/_manifests/revisions/sha256/{mhex}/link"), &mhex);
            link(root, format!("{r}/_manifests/tags/{tag}/current/link"), &mhex);
            link(root, format!("{r}/_manifests/tags/{tag}/index/sha256/{mhex}/link"), &mhex);
            store.tags.entry(repo.name.to_string()).or_default().push((tag.to_string(), mhex));
        }
        let up = v2(root).join(format!("repositories/{}/_uploads/0f4c2b8e-leftover", repo.name));
        write(&up.join("data"), b"half an upload");
        write(&up.join("startedat"), b"2026-01-01T00:00:00Z");
        let links = store.layer_links.get_mut(repo.name).expect("repo has links");
        links.sort();
        links.dedup();
    }
    store
}

/// One entry of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: char,
    pub mode: u32,
    pub size: u64,
    /// sha256 of a file, target of a symlink, rdev of a device.
    pub content: String,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// What [`snapshot`] returns.
pub type Snapshot = BTreeMap<PathBuf, Node>;

/// Every entry below `root` (relative path → node), to the byte.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = xattr_names(p)
        .into_iter()
        .map(|n| {
            let val = regfs::sys::lgetxattr(p, n.as_ref()).ok().flatten().unwrap_or_default();
            (n, val)
        })
        .collect();
    v.sort();
    v
}

fn xattr_names(p: &Path) -> Vec<String> {
    regfs::sys::llistxattr(p).unwrap_or_default().into_iter().map(|n| n.to_string_lossy().into_owned()).collect()
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    let p = root.join(rel);
    let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    let ft = m.file_type();
    let (kind, content) = if ft.is_dir() {
        ('d', String::new())
    } else if ft.is_symlink() {
        ('l', fs::read_link(&p).expect("readlink").display().to_string())
    } else if ft.is_file() {
        ('f', sha256_hex(&fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))))
    } else if ft.is_char_device() {
        ('c', m.rdev().to_string())
    } else {
        ('o', String::new())
    };
    let size = if kind == 'd' { 0 } else { m.size() };
    out.insert(rel.to_path_buf(), Node { kind, mode: m.mode() & 0o7777, size, content, xattrs: xattrs(&p) });
    if kind == 'd' {
        let mut names: Vec<_> = fs::read_dir(&p).expect("readdir").map(|e| e.expect("dirent").file_name()).collect();
        names.sort();
        for n in names {
            walk(root, &rel.join(n), out);
        }
    }
}

/// Panics naming every entry of `root` that differs from `before` (its
/// earlier [`snapshot`]): how a test proves a lower was never written.
pub fn assert_unchanged(root: &Path, before: &Snapshot, when: &str) {
    let after = snapshot(root);
    let changed: Vec<_> = before.keys().chain(after.keys()).filter(|p| before.get(*p) != after.get(*p)).collect();
    assert!(changed.is_empty(), "{when}: {} changed: {changed:#?}", root.display());
}

/// The relative paths of a snapshot with a one-letter kind, for readable asserts.
pub fn shape(snap: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    snap.iter().filter(|(p, _)| !p.as_os_str().is_empty()).map(|(p, n)| format!("{} {}", n.kind, p.display())).collect()
}

/// An `ls -lR`-like listing of a mounted view: one line per entry with kind,
/// mode, nlink, owner, size (not for directories), mtime and content hash or
/// link target. Two views that list the same are the same to a user.
pub fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    list_into(root, Path::new(""), &mut out);
    out
}

fn list_into(root: &Path, rel: &Path, out: &mut Vec<String>) {
    let p = root.join(rel);
    let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    let ft = m.file_type();
    let (kind, extra) = if ft.is_dir() {
        ('d', String::new())
    } else if ft.is_symlink() {
        ('l', format!("-> {}", fs::read_link(&p).expect("readlink").display()))
    } else if ft.is_file() {
        ('-', sha256_hex(&fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))[..12].to_string())
    } else {
        ('?', format!("rdev {}", m.rdev()))
    };
    let size = if kind == 'd' { String::from("-") } else { m.size().to_string() };
    out.push(format!(
        "{kind}{:04o} {} {}:{} {size} {}.{:09} {} {extra}",
        m.mode() & 0o7777,
        m.nlink(),
        m.uid(),
        m.gid(),
        m.mtime(),
        m.mtime_nsec(),
        if rel.as_os_str().is_empty() { ".".into() } else { rel.display().to_string() },
    ));
    if kind == 'd' {
        let mut names: Vec<_> = fs::read_dir(&p).expect("readdir").map(|e| e.expect("dirent").file_name()).collect();
        names.sort();
        for n in names {
            list_into(root, &rel.join(n), out);
        }
    }
}
