//! Synthetic OCI image layouts, written offline and deterministically.
//!
//! Same inputs give byte-identical blobs, hence identical digests, on every run and
//! every machine: layers are small uncompressed tars (mtime 0, root-owned) filled
//! with a seeded pseudo-random stream, and JSON documents are serialised from
//! `serde_json::json!` values (stable key order).
//!
//! Convention: one OCI layout per repository, at `ROOT/<repo>` (see [`layout_dir`]),
//! with the tag as the `org.opencontainers.image.ref.name` annotation, so skopeo
//! addresses an image as `oci:ROOT/<repo>:<tag>`.
//!
//! Layers use the media type `application/vnd.oci.image.layer.v1.tar` (uncompressed),
//! so a layer's digest is also its `diff_id`. Push them with `--preserve-digests`
//! (see `registry::skopeo_copy`), otherwise skopeo gzips them on the way to a registry
//! and every digest changes.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// Annotation naming an image in a layout's `index.json` (the `oci:DIR:<name>` part).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Architectures of every multi-platform image made by [`release_set`].
pub const INDEX_ARCHES: [&str; 2] = ["amd64", "arm64"];
/// Architecture of single-platform images.
pub const DEFAULT_ARCH: &str = "amd64";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::support::tree::sha256_hex(bytes))
}

/// The 64 hex digits of a `sha256:<hex>` digest (as used in registry store paths).
pub fn digest_hex(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("not a sha256 digest: {digest:?}"));
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "malformed sha256 digest: {digest:?}"
    );
    hex
}

/// The layout directory holding repository `repo` under `root` (`root/<repo>`).
pub fn layout_dir(root: &Path, repo: &str) -> PathBuf {
    root.join(repo)
}

/// `size` pseudo-random bytes, a pure function of `seed` (SHA-256 in counter mode).
fn seeded_bytes(seed: &str, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 32);
    let mut counter: u64 = 0;
    while out.len() < size {
        let mut hasher = Sha256::new();
        hasher.update(seed.as_bytes());
        hasher.update(counter.to_le_bytes());
        out.extend_from_slice(&hasher.finalize());
        counter += 1;
    }
    out.truncate(size);
    out
}

/// A valid, deterministic, uncompressed layer tar holding one regular file of `size`
/// seeded bytes. Equal `(seed, size)` give equal bytes, so a shared base layer is
/// simply the same call made for several images.
pub fn layer_bytes(seed: &str, size: usize) -> Vec<u8> {
    let name: String = seed
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
        .take(80)
        .collect();
    let data = seeded_bytes(seed, size);
    let mut header = tar::Header::new_ustar();
    header.set_path(format!("data/{name}.bin")).unwrap_or_else(|e| panic!("tar path for layer seed {seed:?}: {e}"));
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append(&header, data.as_slice())
        .and_then(|()| builder.into_inner())
        .unwrap_or_else(|e| panic!("building layer tar for seed {seed:?}: {e}"))
}

/// Content of one single-platform image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// Layer tars, bottom first (see [`layer_bytes`]).
    pub layers: Vec<Vec<u8>>,
    /// Makes the config (and so the manifest) unique; lands in a config label.
    pub config_seed: String,
}

/// What a tag names: one manifest, or an index over `(architecture, image)` pairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Single(ImageSpec),
    Index(Vec<(String, ImageSpec)>),
}

/// A tagged image of a repository, not yet written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaggedImage {
    pub repo: String,
    pub tag: String,
    pub content: Content,
}

impl TaggedImage {
    /// Writes the image into the layout `root/<repo>` (see [`layout_dir`]).
    pub fn write(&self, root: &Path) -> ImageRef {
        let dir = layout_dir(root, &self.repo);
        match &self.content {
            Content::Single(spec) => write_image(&dir, &self.repo, &self.tag, spec),
            Content::Index(platforms) => write_index_image(&dir, &self.repo, &self.tag, platforms),
        }
    }
}

/// Digests of one written image manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestRef {
    pub digest: String,
    pub arch: String,
    pub config: String,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
}

/// Everything a test needs to know about a written image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub repo: String,
    pub tag: String,
    /// The OCI layout the image was written to.
    pub layout_dir: PathBuf,
    /// Digest of what the tag names: the manifest, or the index.
    pub digest: String,
    /// [`MEDIA_TYPE_MANIFEST`] or [`MEDIA_TYPE_INDEX`].
    pub media_type: &'static str,
    /// The single manifest, or the index's children in platform order.
    pub manifests: Vec<ManifestRef>,
}

impl ImageRef {
    pub fn is_index(&self) -> bool {
        self.media_type == MEDIA_TYPE_INDEX
    }

    /// `oci:<layout_dir>:<tag>`, the skopeo source name of this image.
    pub fn oci_reference(&self) -> String {
        format!("oci:{}:{}", self.layout_dir.display(), self.tag)
    }

    /// Digests of child manifests of an index (empty for a single manifest).
    pub fn child_digests(&self) -> Vec<String> {
        if self.is_index() { self.manifests.iter().map(|m| m.digest.clone()).collect() } else { Vec::new() }
    }

    /// Config digests (one per manifest).
    pub fn config_digests(&self) -> BTreeSet<String> {
        self.manifests.iter().map(|m| m.config.clone()).collect()
    }

    /// Layer digests of all manifests.
    pub fn layer_digests(&self) -> BTreeSet<String> {
        self.manifests.iter().flat_map(|m| m.layers.iter().cloned()).collect()
    }

    /// Configs and layers: the blobs a registry records under `_layers` once pushed.
    pub fn linked_blob_digests(&self) -> BTreeSet<String> {
        let mut set = self.config_digests();
        set.extend(self.layer_digests());
        set
    }

    /// The index (if any) and every manifest: what lands under `_manifests/revisions`.
    pub fn manifest_digests(&self) -> BTreeSet<String> {
        let mut set: BTreeSet<String> = self.manifests.iter().map(|m| m.digest.clone()).collect();
        set.insert(self.digest.clone());
        set
    }

    /// Every blob of the image: index, manifests, configs and layers.
    pub fn blob_digests(&self) -> BTreeSet<String> {
        let mut set = self.linked_blob_digests();
        set.extend(self.manifest_digests());
        set
    }
}

/// An OCI content descriptor of a blob already stored in a layout.
struct Descriptor {
    media_type: &'static str,
    digest: String,
    size: usize,
}

impl Descriptor {
    fn to_json(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }
}

/// Creates the layout skeleton (`oci-layout`, `blobs/sha256/`) if missing.
fn init_layout(layout_dir: &Path) {
    let blobs = layout_dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap_or_else(|e| panic!("creating {}: {e}", blobs.display()));
    let marker = layout_dir.join("oci-layout");
    fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .unwrap_or_else(|e| panic!("writing {}: {e}", marker.display()));
}

/// Stores `bytes` as a blob of the layout (idempotent) and describes it.
fn put_blob(layout_dir: &Path, media_type: &'static str, bytes: &[u8]) -> Descriptor {
    let digest = sha256_digest(bytes);
    let path = layout_dir.join("blobs/sha256").join(digest_hex(&digest));
    if !path.exists() {
        fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing blob {}: {e}", path.display()));
    }
    Descriptor { media_type, digest, size: bytes.len() }
}

/// Stores a JSON document as a blob.
fn put_json(layout_dir: &Path, media_type: &'static str, value: &Value) -> Descriptor {
    let bytes = serde_json::to_vec(value).expect("serialising JSON to memory cannot fail");
    put_blob(layout_dir, media_type, &bytes)
}

/// Writes config, layers and manifest of one platform image; returns the manifest's
/// descriptor and digests.
fn put_manifest(layout_dir: &Path, arch: &str, spec: &ImageSpec) -> (Descriptor, ManifestRef) {
    let layers: Vec<Descriptor> =
        spec.layers.iter().map(|layer| put_blob(layout_dir, MEDIA_TYPE_LAYER, layer)).collect();
    // Uncompressed layers: each diff_id is the layer digest itself.
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let config = put_json(
        layout_dir,
        MEDIA_TYPE_CONFIG,
        &json!({
            "architecture": arch,
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": { "Labels": { "regfs.test.seed": spec.config_seed } },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }),
    );
    let manifest = put_json(
        layout_dir,
        MEDIA_TYPE_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": config.to_json(),
            "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        }),
    );
    let digests = ManifestRef {
        digest: manifest.digest.clone(),
        arch: arch.to_string(),
        config: config.digest,
        layers: layers.into_iter().map(|l| l.digest).collect(),
    };
    (manifest, digests)
}

/// Names `top` as `tag` in the layout's `index.json`, replacing an earlier entry of
/// that tag and keeping the others.
fn set_ref(layout_dir: &Path, tag: &str, top: &Descriptor) {
    let path = layout_dir.join("index.json");
    let mut entries: Vec<Value> = match fs::read(&path) {
        Ok(bytes) => {
            let index: Value =
                serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
            index["manifests"].as_array().cloned().unwrap_or_default()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading {}: {e}", path.display()),
    };
    entries.retain(|entry| entry["annotations"][REF_NAME_ANNOTATION] != tag);
    let mut entry = top.to_json();
    entry["annotations"] = json!({ REF_NAME_ANNOTATION: tag });
    entries.push(entry);
    let index = json!({ "schemaVersion": 2, "manifests": entries });
    fs::write(&path, serde_json::to_vec(&index).expect("serialising JSON"))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Writes a single-platform (linux/amd64) image into the OCI layout `layout_dir`
/// (created if needed) and names it `tag`. `repo` is only recorded in the result.
pub fn write_image(layout_dir: &Path, repo: &str, tag: &str, spec: &ImageSpec) -> ImageRef {
    init_layout(layout_dir);
    let (manifest, digests) = put_manifest(layout_dir, DEFAULT_ARCH, spec);
    set_ref(layout_dir, tag, &manifest);
    ImageRef {
        repo: repo.to_string(),
        tag: tag.to_string(),
        layout_dir: layout_dir.to_path_buf(),
        digest: manifest.digest,
        media_type: MEDIA_TYPE_MANIFEST,
        manifests: vec![digests],
    }
}

/// Writes an OCI image index over `(architecture, image)` pairs (all linux), each child
/// a manifest with its own config and layers, and names the index `tag`.
pub fn write_index_image<A: AsRef<str>>(
    layout_dir: &Path,
    repo: &str,
    tag: &str,
    platforms: &[(A, ImageSpec)],
) -> ImageRef {
    assert!(!platforms.is_empty(), "index {repo}:{tag} needs at least one platform");
    init_layout(layout_dir);
    let mut children = Vec::new();
    let mut manifests = Vec::new();
    for (arch, spec) in platforms {
        let arch = arch.as_ref();
        let (manifest, digests) = put_manifest(layout_dir, arch, spec);
        let mut child = manifest.to_json();
        child["platform"] = json!({ "architecture": arch, "os": "linux" });
        children.push(child);
        manifests.push(digests);
    }
    let index = put_json(
        layout_dir,
        MEDIA_TYPE_INDEX,
        &json!({ "schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": children }),
    );
    set_ref(layout_dir, tag, &index);
    ImageRef {
        repo: repo.to_string(),
        tag: tag.to_string(),
        layout_dir: layout_dir.to_path_buf(),
        digest: index.digest,
        media_type: MEDIA_TYPE_INDEX,
        manifests,
    }
}

/// Writes every image of a release (one layout per repo under `root`), in order.
pub fn write_release(root: &Path, images: &[TaggedImage]) -> Vec<ImageRef> {
    images.iter().map(|image| image.write(root)).collect()
}

const OS_BASE_SIZE: usize = 96 * 1024;
const RUNTIME_BASE_SIZE: usize = 48 * 1024;
const APP_LAYER_SIZE: usize = 8 * 1024;

/// Repository of image `i` of a release; the shapes cycle through a plain name and
/// one- and two-level namespaces.
fn release_repo(i: usize) -> String {
    match i % 3 {
        0 => format!("app-{i:02}"),
        1 => format!("team/web-{i:02}"),
        _ => format!("org/tools/cli-{i:02}"),
    }
}

/// Whether image `i` gets a new app layer in `release` (releases 2, 3, … each change
/// a different `1/changed_every` of the images; 0 means never).
fn changed_in(i: usize, release: u32, changed_every: usize) -> bool {
    release >= 2 && changed_every > 0 && i % changed_every == (release as usize - 2) % changed_every
}

/// The app version of image `i` at `release`: the last release that changed it, or 1.
fn app_version(i: usize, release: u32, changed_every: usize) -> u32 {
    (2..=release).rev().find(|&r| changed_in(i, r, changed_every)).unwrap_or(1)
}

/// One platform image of a release: a shared OS base layer, on even images a shared
/// runtime layer, and the image's own app layer. Base layers depend only on `arch`.
fn release_image_spec(i: usize, repo: &str, arch: &str, version: u32) -> ImageSpec {
    let mut layers = vec![layer_bytes(&format!("base-os-{arch}"), OS_BASE_SIZE)];
    if i.is_multiple_of(2) {
        layers.push(layer_bytes(&format!("base-runtime-{arch}"), RUNTIME_BASE_SIZE));
    }
    let app = format!("app-{repo}-{arch}-v{version}");
    layers.push(layer_bytes(&app, APP_LAYER_SIZE + i * 512));
    ImageSpec { layers, config_seed: app }
}

/// Release `release` (1, 2, …) of a product of `n_images` images, one repo each,
/// tagged `r<release>`, deterministically:
/// - repos cycle `app-NN`, `team/web-NN`, `org/tools/cli-NN` (NN = image number);
/// - every image has the shared OS base layer, even ones also the shared runtime layer;
/// - images 1, 9, 17, … are OCI indexes over linux/amd64 and linux/arm64 (the amd64
///   child shares the single-platform images' base layers);
/// - from release 2 on, each release gives a new app layer (and config) to the images
///   `i` with `i % changed_every == (release - 2) % changed_every`; the others keep
///   byte-identical manifests under the new tag.
pub fn release_set(release: u32, n_images: usize, changed_every: usize) -> Vec<TaggedImage> {
    assert!(release >= 1, "releases are numbered from 1");
    (0..n_images)
        .map(|i| {
            let repo = release_repo(i);
            let version = app_version(i, release, changed_every);
            let content = if i % 8 == 1 {
                Content::Index(
                    INDEX_ARCHES
                        .iter()
                        .map(|arch| (arch.to_string(), release_image_spec(i, &repo, arch, version)))
                        .collect(),
                )
            } else {
                Content::Single(release_image_spec(i, &repo, DEFAULT_ARCH, version))
            };
            TaggedImage { repo, tag: format!("r{release}"), content }
        })
        .collect()
}

/// Stores a JSON document as a blob of the layout `layout_dir`; returns its
/// descriptor as JSON (`mediaType`, `digest`, `size`).
pub fn put_document(layout_dir: &Path, media_type: &'static str, value: &Value) -> Value {
    put_json(layout_dir, media_type, value).to_json()
}

/// Stores raw bytes as a blob; returns its descriptor as JSON.
pub fn put_raw(layout_dir: &Path, media_type: &'static str, bytes: &[u8]) -> Value {
    put_blob(layout_dir, media_type, bytes).to_json()
}

/// Lists a manifest (by its descriptor) in the layout's `index.json`, under
/// `tag` or untagged (how an OCI layout holds a referrer known by its subject).
pub fn list_in_index(layout_dir: &Path, tag: Option<&str>, descriptor: &Value) {
    let path = layout_dir.join("index.json");
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut index: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut entry = descriptor.clone();
    if let Some(t) = tag {
        entry["annotations"] = json!({ REF_NAME_ANNOTATION: t });
    }
    let entries = index["manifests"].as_array_mut().unwrap_or_else(|| panic!("{}: no manifests", path.display()));
    entries.push(entry);
    fs::write(&path, serde_json::to_vec(&index).expect("serialising JSON"))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
