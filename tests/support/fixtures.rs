//! Fixtures for the gc and export suites: registry stores built by a real
//! registry or written by hand, the stock garbage collector, and views of
//! the result.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

pub use crate::support::mount::{regfs, text};
use crate::support::oci::{self, ImageRef};
use crate::support::registry::{self, Registry, require_tool};
use crate::support::tree::{self, sha256_hex};

pub const V2: &str = "docker/registry/v2";

/// An empty registry rootdirectory (`docker/registry/v2` only) at `root`.
pub fn empty_root(root: &Path) -> PathBuf {
    fs::create_dir_all(root.join(V2)).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
    root.to_path_buf()
}

/// `--lower L... --upper U` arguments.
pub fn layer_args(lowers: &[&Path], upper: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for l in lowers {
        v.push("--lower".to_string());
        v.push(l.display().to_string());
    }
    v.push("--upper".into());
    v.push(upper.display().to_string());
    v
}

/// `regfs SUB --lower L... --upper U EXTRA...`, asserted to succeed.
pub fn regfs_ok(sub: &str, lowers: &[&Path], upper: &Path, extra: &[&str]) -> Output {
    let out = regfs_layers(sub, lowers, upper, extra);
    assert!(out.status.success(), "regfs {sub} failed:\n{}", text(&out));
    out
}

/// `regfs SUB --lower L... --upper U EXTRA...`.
pub fn regfs_layers(sub: &str, lowers: &[&Path], upper: &Path, extra: &[&str]) -> Output {
    let mut args = vec![sub.to_string()];
    args.extend(layer_args(lowers, upper));
    args.extend(extra.iter().map(|s| s.to_string()));
    regfs(args)
}

/// Pushes `(image, tag)` pairs, in order, through a registry storing at `root`.
pub fn push_store(root: &Path, pushes: &[(&ImageRef, &str)]) {
    let registry = Registry::start(root);
    for (image, tag) in pushes {
        registry::push_layout(&image.layout_dir, &image.tag, &registry, &image.repo, tag)
            .unwrap_or_else(|o| panic!("pushing {}:{tag}:\n{o}", image.repo));
    }
    registry.stop();
}

/// `cp -a src dst`.
pub fn copy_tree(src: &Path, dst: &Path) {
    let st = Command::new("cp").arg("-a").arg(src).arg(dst).status().expect("running cp");
    assert!(st.success(), "cp -a {} {}", src.display(), dst.display());
}

/// Digests (hex) of the blobs with data in a plain store.
pub fn blob_set(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(prefixes) = fs::read_dir(root.join(V2).join("blobs/sha256")) else { return out };
    for p in prefixes {
        for b in fs::read_dir(p.expect("dirent").path()).expect("readdir") {
            let b = b.expect("dirent");
            if b.path().join("data").is_file() {
                out.insert(b.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// A view over the layers through the library (no FUSE).
pub fn view(lowers: &[&Path], upper: &Path, policy: Option<&Path>) -> regfs::view::View {
    let lowers: Vec<PathBuf> = lowers.iter().map(|l| l.to_path_buf()).collect();
    regfs::store::check_layers(&lowers, upper, None, policy).expect("layers").view().expect("view")
}

/// Names in a view directory (empty if it does not exist).
pub fn view_names(v: &regfs::view::View, rel: &Path) -> BTreeSet<String> {
    match v.resolve(rel).expect("resolve") {
        Some(e) if e.is_dir() => {
            v.list(e.as_dir(rel)).expect("list").into_iter().map(|i| i.name.to_string_lossy().into_owned()).collect()
        }
        _ => BTreeSet::new(),
    }
}

/// Digests (hex) of the blobs with data in a view.
pub fn view_blob_set(v: &regfs::view::View) -> BTreeSet<String> {
    let root = Path::new(V2).join("blobs/sha256");
    let mut out = BTreeSet::new();
    for p in view_names(v, &root) {
        for b in view_names(v, &root.join(&p)) {
            if v.resolve(&root.join(&p).join(&b).join("data")).expect("resolve").is_some() {
                out.insert(b);
            }
        }
    }
    out
}

/// Every path (files and directories) of a view below `rel`, relative to the root.
pub fn view_paths(v: &regfs::view::View, rel: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![rel.to_path_buf()];
    while let Some(p) = stack.pop() {
        for n in view_names(v, &p) {
            let c = p.join(n);
            if v.resolve(&c).expect("resolve").is_some_and(|e| e.is_dir()) {
                stack.push(c.clone());
            }
            out.insert(c);
        }
    }
    out
}

/// Runs `docker-registry garbage-collect [-m] [--dry-run] CONFIG` on a
/// plain store; returns the blobs (hex) it deletes or, dry, would delete.
pub fn stock_gc(root: &Path, delete_untagged: bool, dry_run: bool) -> BTreeSet<String> {
    let bin = require_tool("docker-registry");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yml");
    let root_json = serde_json::to_string(&root.to_string_lossy()).expect("json");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {root_json}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n"
        ),
    )
    .expect("writing config");
    let mut cmd = Command::new(bin);
    cmd.arg("garbage-collect");
    if delete_untagged {
        cmd.arg("-m");
    }
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = cmd.arg(&config).output().expect("running docker-registry garbage-collect");
    assert!(out.status.success(), "docker-registry garbage-collect failed:\n{}", text(&out));
    let marker = "blob eligible for deletion: sha256:";
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(marker).map(|(_, hex)| hex.trim().to_string()))
        .collect()
}

/// Hex digests of `sha256:` digests.
pub fn hexes<'a>(digests: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    digests.into_iter().map(|d| oci::digest_hex(d).to_string()).collect()
}

/// Writes registry stores by hand: blobs, links and manifests of any shape
/// (nested indexes, referrers, schema1, foreign layers, bad data).
pub struct StoreWriter {
    pub root: PathBuf,
}

impl StoreWriter {
    pub fn new(root: &Path) -> StoreWriter {
        empty_root(root);
        StoreWriter { root: root.to_path_buf() }
    }

    pub fn v2(&self) -> PathBuf {
        tree::v2(&self.root)
    }

    fn write(&self, rel: &str, data: &[u8]) {
        let p = self.v2().join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir -p");
        fs::write(&p, data).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    }

    /// Stores a blob; returns its hex digest.
    pub fn blob(&self, data: &[u8]) -> String {
        let hex = sha256_hex(data);
        self.write(&format!("blobs/sha256/{}/{hex}/data", &hex[..2]), data);
        hex
    }

    /// A descriptor of a stored blob.
    pub fn desc(&self, media_type: &str, hex: &str) -> Value {
        let size = fs::metadata(self.blob_path(hex)).map(|m| m.len()).unwrap_or(0);
        json!({ "mediaType": media_type, "digest": format!("sha256:{hex}"), "size": size })
    }

    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.v2().join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    /// Writes `content` as the link file `repositories/<repo>/<rel>`.
    pub fn raw_link(&self, repo: &str, rel: &str, content: &[u8]) {
        self.write(&format!("repositories/{repo}/{rel}"), content);
    }

    pub fn layer_link(&self, repo: &str, hex: &str) {
        self.raw_link(repo, &format!("_layers/sha256/{hex}/link"), format!("sha256:{hex}").as_bytes());
    }

    pub fn revision(&self, repo: &str, hex: &str) {
        self.raw_link(repo, &format!("_manifests/revisions/sha256/{hex}/link"), format!("sha256:{hex}").as_bytes());
    }

    pub fn tag(&self, repo: &str, tag: &str, hex: &str) {
        let link = format!("sha256:{hex}");
        self.raw_link(repo, &format!("_manifests/tags/{tag}/current/link"), link.as_bytes());
        self.raw_link(repo, &format!("_manifests/tags/{tag}/index/sha256/{hex}/link"), link.as_bytes());
    }

    /// A manifest blob with its revision link in `repo`.
    pub fn manifest(&self, repo: &str, doc: &Value) -> String {
        let hex = self.blob(&serde_json::to_vec(doc).expect("json"));
        self.revision(repo, &hex);
        hex
    }

    /// An OCI image (config + layers linked in `repo`, manifest revision);
    /// returns (manifest, config, layers) hex digests.
    pub fn image(&self, repo: &str, seed: &str, shared: &[&str]) -> (String, String, Vec<String>) {
        let config = self.blob(format!("{{\"seed\":\"{seed}\"}}").as_bytes());
        let mut layers: Vec<String> = shared.iter().map(|s| s.to_string()).collect();
        layers.push(self.blob(format!("layer of {seed}").as_bytes()));
        for l in layers.iter().chain([&config]) {
            self.layer_link(repo, l);
        }
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": oci::MEDIA_TYPE_MANIFEST,
            "config": self.desc(oci::MEDIA_TYPE_CONFIG, &config),
            "layers": layers.iter().map(|l| self.desc(oci::MEDIA_TYPE_LAYER, l)).collect::<Vec<_>>(),
        });
        (self.manifest(repo, &doc), config, layers)
    }

    /// An uploads leftover in `repo`.
    pub fn upload(&self, repo: &str) {
        self.raw_link(repo, "_uploads/5e1f0c2a-leftover/data", b"half an upload");
        self.raw_link(repo, "_uploads/5e1f0c2a-leftover/startedat", b"2026-01-01T00:00:00Z");
    }
}

/// Serves `root` with a registry and pulls every image as `repo:tag`:
/// the tag must name the image's digest and every blob must come back
/// byte-identical to the layout it was pushed from.
pub fn assert_serves(root: &Path, images: &[&ImageRef], tag: &str, pull_root: &Path) {
    let registry = Registry::start(root);
    for image in images {
        let out = oci::layout_dir(pull_root, &image.repo);
        registry::pull_to_layout(&registry, &image.repo, tag, &out)
            .unwrap_or_else(|o| panic!("pulling {}:{tag} from {}:\n{o}", image.repo, root.display()));
        let index: Value =
            serde_json::from_slice(&fs::read(out.join("index.json")).expect("index.json")).expect("json");
        let named: Vec<&str> = index["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .filter(|m| m["annotations"][oci::REF_NAME_ANNOTATION] == tag)
            .filter_map(|m| m["digest"].as_str())
            .collect();
        assert_eq!(named, [image.digest.as_str()], "{}:{tag}", image.repo);
        for d in image.blob_digests() {
            let rel = Path::new("blobs/sha256").join(oci::digest_hex(&d));
            let (got, want) = (fs::read(out.join(&rel)), fs::read(image.layout_dir.join(&rel)));
            assert!(got.is_ok() && got.ok() == want.ok(), "{d} of {} differs after the pull", image.repo);
        }
    }
    registry.stop();
}

/// `tar -xf TAR -C DIR` (DIR created).
pub fn untar(tar: &Path, dir: &Path) {
    fs::create_dir_all(dir).expect("mkdir");
    let out = Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(dir).output().expect("running tar");
    assert!(out.status.success(), "tar -xf {}:\n{}", tar.display(), text(&out));
}

/// sha256 of a file.
pub fn file_sha(p: &Path) -> String {
    sha256_hex(&fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())))
}

/// A store at `root` holding one tagged image, `app:v1`: returns the writer,
/// the manifest and the layers (hex).
pub fn app_store(root: &Path) -> (StoreWriter, String, Vec<String>) {
    let s = StoreWriter::new(root);
    let (m, _, layers) = s.image("app", "v1", &[]);
    s.tag("app", "v1", &m);
    (s, m, layers)
}
