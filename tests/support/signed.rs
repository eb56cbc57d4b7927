//! Signed images, written offline as OCI layouts the way cosign and OCI 1.1
//! tools leave them in a registry: cosign's `sha256-<hex>.sig` / `.att`
//! tags (an image manifest whose layer is the signed payload), OCI 1.1
//! referrers (a manifest with `subject` and `artifactType`), listed by the
//! `sha256-<hex>` fallback tag index or, in a layout, untagged in
//! `index.json`. And a registry store holding the same, written directly (no
//! client could push the fallback index unchanged: skopeo 1.9 rewrites it).

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use super::fixtures::StoreWriter;
use super::oci::{self, ImageRef, ImageSpec, MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, digest_hex};

pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
pub const SPDX: &str = "application/spdx+json";
pub const VULN: &str = "application/vnd.example.vulnerability-report+json";
const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// One attachment written: its digest, what it is attached to, the tag it
/// is found by (if any).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attached {
    pub kind: &'static str,
    pub digest: String,
    pub subject: String,
    pub tag: Option<String>,
}

fn descriptor_of(doc: &Value) -> (String, usize) {
    (doc["digest"].as_str().expect("digest").to_string(), doc["size"].as_u64().expect("size") as usize)
}

/// A cosign signature (or attestation: `suffix` "att") of `subject`, tagged
/// `sha256-<hex>.<suffix>`.
pub fn cosign(layout: &Path, subject: &str, suffix: &str) -> Attached {
    let what = if suffix == "att" { "https://in-toto.io/Statement/v0.1" } else { "cosign container image signature" };
    let payload = json!({ "critical": { "image": { "docker-manifest-digest": subject }, "type": what } });
    let mut layer = oci::put_raw(layout, SIMPLESIGNING, payload.to_string().as_bytes());
    layer["annotations"] =
        json!({ "dev.cosignproject.cosign/signature": format!("MEUCIQ{}", &digest_hex(subject)[..16]) });
    let config = oci::put_document(
        layout,
        MEDIA_TYPE_CONFIG,
        &json!({ "architecture": "", "os": "", "config": {}, "rootfs": { "type": "layers", "diff_ids": [layer["digest"]] } }),
    );
    let manifest = oci::put_document(
        layout,
        MEDIA_TYPE_MANIFEST,
        &json!({ "schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST, "config": config, "layers": [layer] }),
    );
    let tag = format!("sha256-{}.{suffix}", digest_hex(subject));
    oci::list_in_index(layout, Some(&tag), &manifest);
    let kind = if suffix == "att" { "attestation" } else { "signature" };
    Attached { kind, digest: descriptor_of(&manifest).0, subject: subject.to_string(), tag: Some(tag) }
}

/// An OCI 1.1 referrer of `subject` (size `subject_size`) of `artifact_type`;
/// not listed anywhere yet.
pub fn referrer(layout: &Path, subject: &str, subject_size: usize, artifact_type: &'static str, body: &str) -> Value {
    let empty = oci::put_raw(layout, EMPTY_CONFIG, b"{}");
    let layer = oci::put_raw(layout, artifact_type, body.as_bytes());
    let mut d = oci::put_document(
        layout,
        MEDIA_TYPE_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "artifactType": artifact_type,
            "config": empty,
            "layers": [layer],
            "subject": { "mediaType": MEDIA_TYPE_MANIFEST, "digest": subject, "size": subject_size },
        }),
    );
    d["artifactType"] = json!(artifact_type);
    d
}

/// The fallback tag index `sha256-<hex>` of `subject`, listing `referrers`.
pub fn fallback_index(layout: &Path, subject: &str, referrers: &[Value]) -> Attached {
    let index = oci::put_document(
        layout,
        MEDIA_TYPE_INDEX,
        &json!({ "schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": referrers }),
    );
    let tag = format!("sha256-{}", digest_hex(subject));
    oci::list_in_index(layout, Some(&tag), &index);
    Attached { kind: "referrers-index", digest: descriptor_of(&index).0, subject: subject.to_string(), tag: Some(tag) }
}

/// A signed source: `app:v1` signed and attested, with an SBOM referrer
/// (listed by the fallback tag) that is signed too, and an untagged
/// vulnerability report known only by its subject (`untagged_referrer`:
/// OCI layouts only); `multi:v1`, an index signed along with each child;
/// `tool:v1` signed. Returns the images and every attachment.
pub struct SignedSource {
    pub images: Vec<ImageRef>,
    pub attached: Vec<Attached>,
}

fn spec(seed: &str) -> ImageSpec {
    ImageSpec {
        layers: vec![oci::layer_bytes(&format!("{seed}-base"), 4096), oci::layer_bytes(seed, 2048)],
        config_seed: seed.into(),
    }
}

pub fn signed_source(root: &Path, untagged_referrer: bool, version: &str) -> SignedSource {
    let mut attached = Vec::new();
    let app_dir = oci::layout_dir(root, "app");
    let app = oci::write_image(&app_dir, "app", version, &spec(&format!("app-{version}")));
    attached.push(cosign(&app_dir, &app.digest, "sig"));
    attached.push(cosign(&app_dir, &app.digest, "att"));
    let app_size =
        fs::metadata(app_dir.join("blobs/sha256").join(digest_hex(&app.digest))).expect("app manifest").len();
    let sbom = referrer(
        &app_dir,
        &app.digest,
        app_size as usize,
        SPDX,
        &format!("{{\"spdxVersion\":\"SPDX-2.3\",\"name\":\"app-{version}\"}}"),
    );
    let (sbom_digest, _) = descriptor_of(&sbom);
    attached.push(fallback_index(&app_dir, &app.digest, std::slice::from_ref(&sbom)));
    attached.push(Attached { kind: "referrer", digest: sbom_digest.clone(), subject: app.digest.clone(), tag: None });
    attached.push(cosign(&app_dir, &sbom_digest, "sig"));
    if untagged_referrer {
        let report = referrer(
            &app_dir,
            &app.digest,
            app_size as usize,
            VULN,
            &format!("{{\"findings\":[],\"of\":\"app-{version}\"}}"),
        );
        oci::list_in_index(&app_dir, None, &report);
        attached.push(Attached {
            kind: "referrer",
            digest: descriptor_of(&report).0,
            subject: app.digest.clone(),
            tag: None,
        });
    }

    let multi_dir = oci::layout_dir(root, "multi");
    let platforms: Vec<(String, ImageSpec)> =
        ["amd64", "arm64"].iter().map(|a| (a.to_string(), spec(&format!("multi-{version}-{a}")))).collect();
    let multi = oci::write_index_image(&multi_dir, "multi", version, &platforms);
    attached.push(cosign(&multi_dir, &multi.digest, "sig"));
    for child in multi.child_digests() {
        attached.push(cosign(&multi_dir, &child, "sig"));
    }

    let tool_dir = oci::layout_dir(root, "tool");
    let tool = oci::write_image(&tool_dir, "tool", version, &spec(&format!("tool-{version}")));
    attached.push(cosign(&tool_dir, &tool.digest, "sig"));
    SignedSource { images: vec![app, multi, tool], attached }
}

/// Every manifest a layout's `index.json` lists, with its children: the
/// documents a registry holding the layout holds.
fn layout_manifests(layout: &Path) -> Vec<(Option<String>, String)> {
    let index: Value = serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index.json")).expect("JSON");
    let mut out = Vec::new();
    for m in index["manifests"].as_array().expect("manifests") {
        let tag = m["annotations"][oci::REF_NAME_ANNOTATION].as_str().map(str::to_string);
        out.push((tag, m["digest"].as_str().expect("digest").to_string()));
    }
    out
}

/// Writes what the layouts under `root` hold (`repos`) into the registry
/// store `store`, as a registry that was pushed them holds it: blobs, layer
/// links, every manifest a revision (children and referrers too), tags.
pub fn store_from_layouts(root: &Path, repos: &[&str], store: &Path) {
    let w = StoreWriter::new(store);
    for repo in repos {
        let layout = oci::layout_dir(root, repo);
        let blob = |d: &str| fs::read(layout.join("blobs/sha256").join(digest_hex(d))).expect("layout blob");
        let mut todo: Vec<String> = Vec::new();
        for (tag, digest) in layout_manifests(&layout) {
            if let Some(t) = &tag {
                w.tag(repo, t, digest_hex(&digest));
            }
            todo.push(digest);
        }
        let mut seen = BTreeSet::new();
        while let Some(d) = todo.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            let bytes = blob(&d);
            assert_eq!(w.blob(&bytes), digest_hex(&d));
            w.revision(repo, digest_hex(&d));
            let doc: Value = serde_json::from_slice(&bytes).expect("a manifest");
            for c in doc["manifests"].as_array().into_iter().flatten() {
                todo.push(c["digest"].as_str().expect("digest").to_string());
            }
            let blobs = doc["layers"].as_array().into_iter().flatten().chain(std::iter::once(&doc["config"]));
            for b in blobs.filter(|b| b.is_object()) {
                let bd = b["digest"].as_str().expect("digest");
                w.blob(&blob(bd));
                w.layer_link(repo, digest_hex(bd));
            }
        }
    }
}
