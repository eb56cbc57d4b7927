//! Smoke test of the test harness itself: synthetic OCI releases, a real
//! `docker-registry`, skopeo pushes and pulls, and the registry's on-disk layout.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use support::oci::{self, ImageRef, REF_NAME_ANNOTATION, digest_hex, sha256_digest};
use support::registry::{self, Registry};

const IMAGES: usize = 6;
const CHANGED_EVERY: usize = 3;

/// Writes release `n` of the test product under `root`.
fn write_release(root: &Path, n: u32) -> Vec<ImageRef> {
    oci::write_release(root, &oci::release_set(n, IMAGES, CHANGED_EVERY))
}

/// Pushes every image, panicking with skopeo's output on failure.
fn push_all(registry: &Registry, images: &[ImageRef]) -> Vec<registry::CopyOutput> {
    images.iter().map(|image| registry::push_image(registry, image).unwrap()).collect()
}

/// Reads a file that must exist, with the path in the panic message.
fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The registry link file `v2/repositories/<repo>/<rel>` holds exactly `digest`.
fn assert_link(v2: &Path, repo: &str, rel: &str, digest: &str) {
    let path = v2.join("repositories").join(repo).join(rel);
    assert_eq!(String::from_utf8(read(&path)).unwrap(), digest, "{}", path.display());
}

/// `v2/blobs/sha256/<xx>/<hex>/data` exists and hashes to `digest`.
fn assert_blob_data(v2: &Path, digest: &str) {
    let hex = digest_hex(digest);
    let path = v2.join("blobs/sha256").join(&hex[..2]).join(hex).join("data");
    assert_eq!(sha256_digest(&read(&path)), digest, "{}", path.display());
}

/// The registry store under `root` holds every blob, `_layers` link, revision and
/// the tag of a pushed image.
fn assert_stored(root: &Path, image: &ImageRef) {
    let v2 = root.join("docker/registry/v2");
    for digest in image.blob_digests() {
        assert_blob_data(&v2, &digest);
    }
    for digest in image.linked_blob_digests() {
        assert_link(&v2, &image.repo, &format!("_layers/sha256/{}/link", digest_hex(&digest)), &digest);
    }
    for digest in image.manifest_digests() {
        let rel = format!("_manifests/revisions/sha256/{}/link", digest_hex(&digest));
        assert_link(&v2, &image.repo, &rel, &digest);
    }
    assert_link(&v2, &image.repo, &format!("_manifests/tags/{}/current/link", image.tag), &image.digest);
}

/// Pulls `image` back into a fresh layout under `out_root` and checks that the tag
/// names the same digest and every blob came back byte-identical.
fn assert_round_trip(registry: &Registry, image: &ImageRef, out_root: &Path) {
    let out = oci::layout_dir(out_root, &image.repo);
    registry::pull_to_layout(registry, &image.repo, &image.tag, &out).unwrap();
    let index: serde_json::Value = serde_json::from_slice(&read(&out.join("index.json"))).unwrap();
    let named: Vec<&str> = index["manifests"]
        .as_array()
        .expect("index.json has manifests")
        .iter()
        .filter(|m| m["annotations"][REF_NAME_ANNOTATION] == image.tag.as_str())
        .filter_map(|m| m["digest"].as_str())
        .collect();
    assert_eq!(named, [image.digest.as_str()], "pulled {}:{} into {}", image.repo, image.tag, out.display());
    for digest in image.blob_digests() {
        let rel = Path::new("blobs/sha256").join(digest_hex(&digest));
        assert_eq!(read(&out.join(&rel)), read(&image.layout_dir.join(&rel)), "{digest} of {}", image.repo);
    }
}

fn digests(images: &[ImageRef]) -> Vec<&str> {
    images.iter().map(|image| image.digest.as_str()).collect()
}

#[test]
fn release_push_pull_and_blob_reuse() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    fs::create_dir(&store).unwrap();

    let release1 = write_release(&work.path().join("r1"), 1);
    assert_eq!(
        digests(&release1),
        digests(&write_release(&work.path().join("r1-again"), 1)),
        "layouts must be deterministic"
    );
    let single = release1.iter().find(|i| !i.is_index()).expect("release has a single-arch image");
    let index = release1.iter().find(|i| i.is_index()).expect("release has an index");
    assert_eq!(index.child_digests().len(), 2);

    let registry = Registry::start(&store);
    let pushed1 = push_all(&registry, &release1);
    for (image, output) in release1.iter().zip(&pushed1) {
        // Base layers may be mounted from a repo pushed earlier instead of uploaded.
        let (uploaded, skipped) = (output.uploaded_blobs(), output.skipped_blobs());
        assert!(uploaded.is_disjoint(&skipped), "first push of {}:\n{output}", image.repo);
        let handled: BTreeSet<String> = uploaded.union(&skipped).cloned().collect();
        assert_eq!(handled, image.linked_blob_digests(), "first push of {}:\n{output}", image.repo);
        let digest = registry::manifest_digest(&registry, &image.repo, &image.tag);
        assert_eq!(digest.as_deref(), Some(image.digest.as_str()), "tag {}:{}", image.repo, image.tag);
        assert_stored(&store, image);
    }
    let repos: BTreeSet<String> = release1.iter().map(|i| i.repo.clone()).collect();
    assert_eq!(registry::catalog(&registry), repos.into_iter().collect::<Vec<_>>());
    assert_eq!(registry::manifest_digest(&registry, &single.repo, "no-such-tag"), None);

    let pulled = work.path().join("pulled");
    assert_round_trip(&registry, single, &pulled);
    assert_round_trip(&registry, index, &pulled);

    let release2 = write_release(&work.path().join("r2"), 2);
    let changed: Vec<&str> =
        release1.iter().zip(&release2).filter(|(a, b)| a.digest != b.digest).map(|(a, _)| a.repo.as_str()).collect();
    assert_eq!(changed, ["app-00", "app-03"], "release 2 changes every {CHANGED_EVERY}rd image");

    let pushed2 = push_all(&registry, &release2);
    let (mut skipped_total, mut copied_total, mut uploaded_total) = (0, 0, 0);
    for ((old, new), output) in release1.iter().zip(&release2).zip(&pushed2) {
        let shared_layers: BTreeSet<String> = new.layer_digests().intersection(&old.layer_digests()).cloned().collect();
        let new_blobs: BTreeSet<String> =
            new.linked_blob_digests().difference(&old.linked_blob_digests()).cloned().collect();
        assert_eq!(output.skipped_blobs(), shared_layers, "reused layers pushing {}:{}", new.repo, new.tag);
        assert_eq!(output.uploaded_blobs(), new_blobs, "uploads pushing {}:{}", new.repo, new.tag);
        let (skipped, copied) = output.count_skipped();
        assert_eq!((skipped, copied), (shared_layers.len(), new.linked_blob_digests().len() - shared_layers.len()));
        skipped_total += skipped;
        copied_total += copied;
        uploaded_total += new_blobs.len();
        assert_stored(&store, new);
    }
    eprintln!(
        "release 2 push: {skipped_total} blobs skipped (already exist), {copied_total} copied \
         of which {uploaded_total} uploaded (the others are configs already present)"
    );
    assert!(skipped_total > copied_total, "most of release 2 must be reused");
    registry.stop();
}
