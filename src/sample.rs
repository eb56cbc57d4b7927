//! `regfs sample`: deterministic sample releases written as OCI layouts, for
//! the demo (scripts/demo.sh) and for benchmarks.
//!
//! Release `r` of a product of `images` images writes one OCI layout per
//! repository under the output directory (`DIR/<repo>`, the image's tag
//! `r<r>` as its ref name, which is what `regfs release --from oci:DIR`
//! reads) and `DIR/images.list` naming every image. The bytes depend only on
//! the arguments, so two runs (or two machines) give the same digests:
//! - every image has a shared OS base layer, every other image a shared
//!   runtime layer too, and its own app layer on top;
//! - every fifth image (1, 6, 11, ...) is an OCI index over linux/amd64 and
//!   linux/arm64 (the base layers differ per architecture);
//! - from release 2 on, release `r` gives a new app layer and config to the
//!   images `i` with `(i + r) % changed_every == 0` (about 1 in
//!   `changed_every`); every other image keeps byte-identical manifests
//!   under its new tag;
//! - repositories come in three shapes: `svc-NN`, `team-a/api-NN`,
//!   `team-b/tools/job-NN`.
//!
//! Layers are uncompressed tars of incompressible data (mtime 0, root-owned):
//! push them with `skopeo copy --preserve-digests`, as `regfs release` does.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What to generate.
#[derive(Clone, Debug)]
pub struct SampleSpec {
    /// Release number, from 1.
    pub release: u32,
    /// Images (one repository each).
    pub images: usize,
    /// About one image in this many changes per release (0: none).
    pub changed_every: usize,
    /// Size of the OS base layer in KiB; the runtime layer is half of it,
    /// app layers an eighth (plus a little per image).
    pub base_kib: usize,
}

/// One image written.
#[derive(Clone, Debug, Serialize)]
pub struct SampleImage {
    pub repo: String,
    pub tag: String,
    /// What the tag names: the manifest, or the index.
    pub digest: String,
    pub index: bool,
    /// Whether this release gave the image a new app layer.
    pub changed: bool,
}

/// What `regfs sample` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct SampleReport {
    pub dir: PathBuf,
    pub images_list: PathBuf,
    pub images: Vec<SampleImage>,
    /// Distinct blobs over all layouts (index, manifests, configs, layers).
    pub blobs: usize,
    pub blob_bytes: u64,
}

/// A small, fast, seeded generator (splitmix64): incompressible filler.
struct Filler(u64);

impl Filler {
    fn new(seed: &str) -> Filler {
        let h = Sha256::digest(seed.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h[..8]);
        Filler(u64::from_le_bytes(first))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// A layer tar holding `opt/<name>`: `len` seeded bytes, mode 0644, owner
/// root, mtime 0.
fn layer_tar(name: &str, len: usize) -> Result<Vec<u8>> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(len as u64);
    header.set_mode(0o644);
    for zero in [tar::Header::set_mtime, tar::Header::set_uid, tar::Header::set_gid] {
        zero(&mut header, 0);
    }
    let mut tar = tar::Builder::new(Vec::with_capacity(len + 2048));
    tar.append_data(&mut header, format!("opt/{name}"), Filler::new(name).bytes(len).as_slice())
        .with_context(|| format!("building the layer tar of {name}"))?;
    Ok(tar.into_inner()?)
}

/// An OCI layout being written: blobs by content, one ref per tag.
struct Layout {
    dir: PathBuf,
    refs: Vec<Value>,
}

impl Layout {
    fn create(dir: PathBuf) -> Result<Layout> {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        let marker = dir.join("oci-layout");
        fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .with_context(|| format!("writing {}", marker.display()))?;
        Ok(Layout { dir, refs: Vec::new() })
    }

    /// Stores a blob; returns its descriptor.
    fn blob(&self, media_type: &str, data: &[u8], tally: &mut Tally) -> Result<Value> {
        let hex = hex::encode(Sha256::digest(data));
        let path = self.dir.join("blobs/sha256").join(&hex);
        if !path.exists() {
            fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
        }
        tally.add(&hex, data.len());
        Ok(json!({ "mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len() }))
    }

    fn json_blob(&self, media_type: &str, doc: &Value, tally: &mut Tally) -> Result<Value> {
        self.blob(media_type, &serde_json::to_vec(doc)?, tally)
    }

    fn tag(&mut self, tag: &str, mut descriptor: Value) {
        descriptor["annotations"] = json!({ REF_NAME: tag });
        self.refs.push(descriptor);
    }

    fn finish(self) -> Result<()> {
        let path = self.dir.join("index.json");
        let index = json!({ "schemaVersion": 2, "manifests": self.refs });
        fs::write(&path, serde_json::to_vec(&index)?).with_context(|| format!("writing {}", path.display()))
    }
}

/// Distinct blobs over the whole sample.
#[derive(Default)]
struct Tally {
    seen: std::collections::BTreeSet<String>,
    bytes: u64,
}

impl Tally {
    fn add(&mut self, hex: &str, len: usize) {
        if self.seen.insert(hex.to_string()) {
            self.bytes += len as u64;
        }
    }
}

/// Repository shapes, in turn: a plain name, one and two namespace levels.
const REPO_SHAPES: [&str; 3] = ["svc", "team-a/api", "team-b/tools/job"];

fn repo_name(i: usize) -> String {
    format!("{}-{i:02}", REPO_SHAPES[i % REPO_SHAPES.len()])
}

fn changed(i: usize, release: u32, every: usize) -> bool {
    release >= 2 && every > 0 && (i + release as usize).is_multiple_of(every)
}

/// The app version of image `i` in `release`: the last release `r <= release`
/// that changed it (`(i + r) % every == 0`), or 1.
fn version(i: usize, release: u32, every: usize) -> u32 {
    if every == 0 {
        return 1;
    }
    match (release as usize).checked_sub((i + release as usize) % every) {
        Some(last) if last >= 2 => last as u32,
        _ => 1,
    }
}

/// Writes one platform's config, layers and manifest; returns the manifest's descriptor.
fn platform_manifest(
    layout: &Layout,
    spec: &SampleSpec,
    i: usize,
    repo: &str,
    arch: &str,
    tally: &mut Tally,
) -> Result<Value> {
    let base = spec.base_kib.max(1) * 1024;
    let mut layers = vec![layout.blob(OCI_LAYER, &layer_tar(&format!("os-{arch}"), base)?, tally)?];
    if i.is_multiple_of(2) {
        layers.push(layout.blob(OCI_LAYER, &layer_tar(&format!("runtime-{arch}"), base / 2)?, tally)?);
    }
    let app = format!("{}-{arch}-v{}", repo.replace('/', "_"), version(i, spec.release, spec.changed_every));
    layers.push(layout.blob(OCI_LAYER, &layer_tar(&app, base / 8 + i * 256)?, tally)?);
    let diff_ids: Vec<&Value> = layers.iter().map(|l| &l["digest"]).collect();
    let config = layout.json_blob(
        OCI_CONFIG,
        &json!({
            "architecture": arch,
            "os": "linux",
            "created": "2000-01-01T00:00:00Z",
            "config": { "Labels": { "org.example.app": app } },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }),
        tally,
    )?;
    layout.json_blob(
        OCI_MANIFEST,
        &json!({ "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers }),
        tally,
    )
}

/// Writes release `spec.release` under `dir` (which must be empty or missing).
pub fn write(dir: &Path, spec: &SampleSpec) -> Result<SampleReport> {
    if spec.release == 0 {
        bail!("--release: releases are numbered from 1");
    }
    if spec.images == 0 {
        bail!("--images must be at least 1");
    }
    if fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} is not empty: name a new directory for the sample layouts", dir.display());
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tag = format!("r{}", spec.release);
    let mut tally = Tally::default();
    let mut images = Vec::new();
    for i in 0..spec.images {
        let repo = repo_name(i);
        let mut layout = Layout::create(dir.join(&repo))?;
        let index = i % 5 == 1;
        let top = if index {
            let mut children = Vec::new();
            for arch in ["amd64", "arm64"] {
                let mut child = platform_manifest(&layout, spec, i, &repo, arch, &mut tally)?;
                child["platform"] = json!({ "architecture": arch, "os": "linux" });
                children.push(child);
            }
            layout.json_blob(
                OCI_INDEX,
                &json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children }),
                &mut tally,
            )?
        } else {
            platform_manifest(&layout, spec, i, &repo, "amd64", &mut tally)?
        };
        let digest = top["digest"].as_str().unwrap_or_default().to_string();
        layout.tag(&tag, top);
        layout.finish()?;
        images.push(SampleImage {
            repo,
            tag: tag.clone(),
            digest,
            index,
            changed: changed(i, spec.release, spec.changed_every),
        });
    }
    let images_list = dir.join("images.list");
    let mut list = fs::File::create(&images_list).with_context(|| format!("writing {}", images_list.display()))?;
    writeln!(list, "# regfs sample release {} ({} images)", spec.release, spec.images)?;
    for img in &images {
        writeln!(list, "{}:{}", img.repo, img.tag)?;
    }
    Ok(SampleReport { dir: dir.to_path_buf(), images_list, images, blobs: tally.seen.len(), blob_bytes: tally.bytes })
}

/// `regfs sample`: writes the layouts and prints what it wrote.
pub fn command(dir: &Path, spec: &SampleSpec, json: bool) -> Result<()> {
    let r = write(dir, spec)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let changed = r.images.iter().filter(|i| i.changed).count();
    println!(
        "sample release {}: {} images ({} changed since the last release) as OCI layouts in {}",
        spec.release,
        r.images.len(),
        changed,
        r.dir.display()
    );
    println!("  {} blobs, {}; images list {}", r.blobs, crate::gc::human_bytes(r.blob_bytes), r.images_list.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(release: u32) -> SampleSpec {
        SampleSpec { release, images: 10, changed_every: 5, base_kib: 4 }
    }

    #[test]
    fn same_arguments_same_digests() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ra = write(a.path(), &spec(2)).unwrap();
        let rb = write(b.path(), &spec(2)).unwrap();
        let digests = |r: &SampleReport| r.images.iter().map(|i| i.digest.clone()).collect::<Vec<_>>();
        assert_eq!(digests(&ra), digests(&rb));
        assert_eq!((ra.blobs, ra.blob_bytes), (rb.blobs, rb.blob_bytes));
    }

    #[test]
    fn a_release_changes_about_one_in_changed_every() {
        let dir = tempfile::tempdir().unwrap();
        let r1 = write(&dir.path().join("1"), &spec(1)).unwrap();
        let r2 = write(&dir.path().join("2"), &spec(2)).unwrap();
        let moved: Vec<usize> = (0..10).filter(|&i| r1.images[i].digest != r2.images[i].digest).collect();
        let flagged: Vec<usize> = (0..10).filter(|&i| r2.images[i].changed).collect();
        assert_eq!(moved, flagged);
        assert_eq!(moved, [3, 8]);
        assert!(r1.images.iter().all(|i| !i.changed));
        assert!(r2.images.iter().any(|i| i.index) && r2.images.iter().any(|i| i.repo.contains('/')));
        let list = fs::read_to_string(&r2.images_list).unwrap();
        assert!(list.lines().any(|l| l == "team-b/tools/job-02:r2"), "{list}");
    }

    #[test]
    fn refuses_a_non_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x"), b"").unwrap();
        let e = write(dir.path(), &spec(1)).unwrap_err();
        assert!(format!("{e:#}").contains("not empty"), "{e:#}");
    }
}
