//! What a manifest references: the one place GC reads manifest JSON.
//!
//! Every known shape is followed, whatever the declared media type:
//! - Docker schema2 manifest and OCI image manifest: `config`, `layers`;
//! - Docker manifest list and OCI image index: `manifests` (child manifests);
//! - OCI 1.1 referrers: `subject` (the manifest an artifact is attached to),
//!   and the draft artifact manifest's `blobs`;
//! - Docker schema1 (signed or not): `fsLayers[].blobSum`.
//!
//! An unknown or missing `mediaType` is no reason to stop: the fields above
//! are followed where present, so GC never deletes what a manifest of a new
//! kind names in a known field (keeping too much is safe, too little is not).
//! A document that is not a JSON object, or a known field of the wrong shape
//! or with a digest other than `sha256:<64 lowercase hex>`, is an error.

use serde::Deserialize;

use crate::layout::Digest;

/// Largest manifest GC reads (the registry itself refuses 4 MiB and more).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// A blob or manifest a manifest names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ref {
    pub digest: Digest,
    /// A foreign layer (with `urls`): its data may live elsewhere.
    pub foreign: bool,
    /// The descriptor's `size`, where it gives a whole number.
    pub size: Option<u64>,
}

/// Everything one manifest references.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refs {
    /// The declared media type, if any (for reports).
    pub media_type: Option<String>,
    /// Plain blobs: config, layers, schema1 `fsLayers`, artifact `blobs`.
    pub blobs: Vec<Ref>,
    /// The config blob (also in `blobs`): the one blob a client reads to copy an image.
    pub config: Option<Digest>,
    /// Child manifests of a list or index: their data must be present.
    pub manifests: Vec<Ref>,
    /// The manifest a referrer is attached to (may be absent from the store).
    pub subject: Option<Ref>,
}

impl Refs {
    /// Whether the document named nothing GC knows how to follow.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty() && self.manifests.is_empty() && self.subject.is_none()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("not a JSON manifest: {0}")]
    Json(String),
    #[error("{field}: {msg}")]
    Field { field: String, msg: String },
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "mediaType")]
    media_type: Option<serde_json::Value>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    blobs: Option<Vec<Descriptor>>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<Vec<FsLayer>>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    urls: Option<Vec<String>>,
    /// Any JSON: a size that is no whole number sizes nothing, refuses nothing.
    #[serde(default)]
    size: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct FsLayer {
    #[serde(rename = "blobSum")]
    blob_sum: String,
}

fn digest(field: impl FnOnce() -> String, s: &str) -> Result<Digest, ManifestError> {
    Digest::parse(s).map_err(|e| ManifestError::Field { field: field(), msg: e.to_string() })
}

fn descriptor(field: impl FnOnce() -> String, d: &Descriptor) -> Result<Ref, ManifestError> {
    let foreign = d.urls.as_ref().is_some_and(|u| !u.is_empty());
    Ok(Ref { digest: digest(field, &d.digest)?, foreign, size: d.size.as_ref().and_then(|s| s.as_u64()) })
}

fn list(name: &str, ds: &Option<Vec<Descriptor>>) -> Result<Vec<Ref>, ManifestError> {
    ds.iter().flatten().enumerate().map(|(i, d)| descriptor(|| format!("{name}[{i}].digest"), d)).collect()
}

/// Parses a manifest and lists what it references.
pub fn references(bytes: &[u8]) -> Result<Refs, ManifestError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    if !value.is_object() {
        return Err(ManifestError::Json("the document is not a JSON object".into()));
    }
    let raw: Raw = serde_json::from_value(value).map_err(|e| ManifestError::Json(e.to_string()))?;
    let mut blobs = Vec::new();
    let config = raw.config.as_ref().map(|c| descriptor(|| "config.digest".into(), c)).transpose()?;
    blobs.extend(config);
    blobs.extend(list("layers", &raw.layers)?);
    blobs.extend(list("blobs", &raw.blobs)?);
    for (i, l) in raw.fs_layers.iter().flatten().enumerate() {
        blobs.push(Ref {
            digest: digest(|| format!("fsLayers[{i}].blobSum"), &l.blob_sum)?,
            foreign: false,
            size: None,
        });
    }
    let subject = raw.subject.as_ref().map(|s| descriptor(|| "subject.digest".into(), s)).transpose()?;
    Ok(Refs {
        media_type: raw.media_type.map(|m| m.as_str().map(str::to_string).unwrap_or_else(|| m.to_string())),
        blobs,
        config: config.map(|c| c.digest),
        manifests: list("manifests", &raw.manifests)?,
        subject,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn schema2_and_oci_manifests() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
              "config":{{"digest":"{}","size":1}},
              "layers":[{{"digest":"{}"}},{{"digest":"{}","urls":["https://x"]}}],
              "subject":{{"digest":"{}"}}}}"#,
            d('a'),
            d('b'),
            d('c'),
            d('e')
        );
        let r = references(m.as_bytes()).unwrap();
        assert_eq!(r.blobs.len(), 3);
        assert!(!r.blobs[1].foreign && r.blobs[2].foreign);
        assert_eq!(r.subject.unwrap().digest.to_string(), d('e'));
        assert!(r.manifests.is_empty());
    }

    #[test]
    fn index_and_schema1() {
        let idx = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}"}},{{"digest":"{}"}}]}}"#, d('1'), d('2'));
        assert_eq!(references(idx.as_bytes()).unwrap().manifests.len(), 2);
        let s1 = format!(r#"{{"schemaVersion":1,"fsLayers":[{{"blobSum":"{}"}}],"signatures":[]}}"#, d('3'));
        assert_eq!(references(s1.as_bytes()).unwrap().blobs[0].digest.to_string(), d('3'));
    }

    #[test]
    fn unknown_media_type_still_followed() {
        let m = format!(r#"{{"mediaType":"application/x-new","config":{{"digest":"{}"}}}}"#, d('f'));
        let r = references(m.as_bytes()).unwrap();
        assert_eq!(r.media_type.as_deref(), Some("application/x-new"));
        assert_eq!(r.blobs.len(), 1);
        assert!(references(b"{}").unwrap().is_empty());
    }

    #[test]
    fn bad_documents() {
        assert!(matches!(references(b"\x1f\x8b binary"), Err(ManifestError::Json(_))));
        assert!(matches!(references(b"[1,2]"), Err(ManifestError::Json(_))));
        let bad = r#"{"layers":[{"digest":"sha256:../../etc"}]}"#;
        let e = references(bad.as_bytes()).unwrap_err();
        assert!(e.to_string().starts_with("layers[0].digest:"), "{e}");
        let upper = format!(r#"{{"config":{{"digest":"{}"}}}}"#, d('a').to_uppercase().replace("SHA256", "sha256"));
        assert!(references(upper.as_bytes()).is_err());
        assert!(references(br#"{"layers":{"digest":"x"}}"#).is_err());
    }
}
