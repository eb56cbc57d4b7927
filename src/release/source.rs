//! The release's source as a store of manifests and blobs, read directly:
//! what the attachments of an image are found and copied from, byte for
//! byte (skopeo rewrites an OCI 1.1 index it does not fully know, and has no
//! way to name an untagged referrer of an OCI layout).
//!
//! - [`OciStore`]: `oci:DIR`, one OCI image layout per repository;
//! - [`DockerStore`]: a registry, over the distribution API.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};

use crate::client::{Access, Target, TargetRef};
use crate::layout::Digest;

use super::Source;

/// Largest attachment blob read (an SBOM, a signature bundle).
pub const MAX_BLOB_BYTES: u64 = 512 << 20;

/// The annotation naming an image in a layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A manifest that names a subject: its digest, and its `artifactType`.
pub type Referrer = (Digest, Option<String>);

/// What the release reads of its source beside skopeo.
pub trait SourceStore: Send + Sync {
    /// The manifest a tag or `sha256:` digest names in `repo`, as stored.
    fn manifest(&self, repo: &str, reference: &str) -> Result<Option<Vec<u8>>>;
    /// A blob's data, checked against its digest.
    fn blob(&self, repo: &str, digest: &Digest) -> Result<Vec<u8>>;
    /// Every tag of `repo`.
    fn tags(&self, repo: &str) -> Result<Vec<String>>;
    /// The manifests whose `subject` is `digest`, where the source can tell
    /// without a tag (the referrers API; an OCI layout's untagged entries).
    fn referrers(&self, repo: &str, digest: &Digest) -> Result<Vec<Referrer>>;
}

impl Source {
    /// The source as a store.
    pub fn store(&self, tls_verify: bool) -> Result<Arc<dyn SourceStore>> {
        Ok(match self {
            Source::Oci(dir) => Arc::new(OciStore::new(dir)),
            Source::Docker(prefix) => {
                let target = TargetRef::parse(&format!("docker://{prefix}"))?;
                let access = Access { tls_verify, ..Access::default() };
                Arc::new(DockerStore { client: Target::new(&target, &access)? })
            }
        })
    }
}

/// The `artifactType` a manifest declares.
pub fn artifact_type(bytes: &[u8]) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    doc["artifactType"].as_str().map(str::to_string)
}

/// One entry of a layout's `index.json`.
#[derive(Clone, Debug)]
pub struct IndexEntry {
    pub digest: Digest,
    pub ref_name: Option<String>,
}

/// What one layout's `index.json` lists, and which of its manifests name a
/// subject (read once per repository).
struct Layout {
    entries: Vec<IndexEntry>,
    /// subject → referrers, over every manifest `index.json` lists.
    by_subject: Option<HashMap<Digest, Vec<Referrer>>>,
}

/// `oci:DIR`: image `repo` is the OCI layout `DIR/repo`.
pub struct OciStore {
    dir: PathBuf,
    layouts: Mutex<HashMap<String, Arc<Mutex<Layout>>>>,
}

impl OciStore {
    pub fn new(dir: &Path) -> OciStore {
        OciStore { dir: dir.to_path_buf(), layouts: Mutex::new(HashMap::new()) }
    }

    fn blob_path(&self, repo: &str, d: &Digest) -> PathBuf {
        self.dir.join(repo).join("blobs/sha256").join(d.hex())
    }

    /// The entries of `DIR/repo/index.json`, or why there are none.
    pub fn entries(&self, repo: &str) -> Result<Vec<IndexEntry>> {
        Ok(self.layout(repo)?.lock().unwrap_or_else(|p| p.into_inner()).entries.clone())
    }

    fn layout(&self, repo: &str) -> Result<Arc<Mutex<Layout>>> {
        let mut all = self.layouts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = all.get(repo) {
            return Ok(l.clone());
        }
        let index = self.dir.join(repo).join("index.json");
        let text = std::fs::read_to_string(&index).map_err(|e| anyhow!("no OCI layout {}: {e}", index.display()))?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow!("{}: not JSON: {e}", index.display()))?;
        let mut entries = Vec::new();
        for (i, m) in doc["manifests"].as_array().into_iter().flatten().enumerate() {
            let digest = m["digest"]
                .as_str()
                .and_then(|d| Digest::parse(d).ok())
                .ok_or_else(|| anyhow!("{}: manifests[{i}]: no sha256 digest", index.display()))?;
            let ref_name = m["annotations"][REF_NAME].as_str().map(str::to_string);
            entries.push(IndexEntry { digest, ref_name });
        }
        let l = Arc::new(Mutex::new(Layout { entries, by_subject: None }));
        all.insert(repo.to_string(), l.clone());
        Ok(l)
    }

    fn read(&self, repo: &str, d: &Digest, limit: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(repo, d);
        let size =
            std::fs::metadata(&path).with_context(|| format!("{}: missing from the layout", path.display()))?.len();
        if size > limit {
            bail!("{}: {size} bytes, more than the {limit} regfs reads", path.display());
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if Digest::of(&bytes) != *d {
            bail!("{}: the data does not hash to {d} (a damaged layout)", path.display());
        }
        Ok(bytes)
    }
}

impl SourceStore for OciStore {
    fn manifest(&self, repo: &str, reference: &str) -> Result<Option<Vec<u8>>> {
        let digest = match Digest::parse(reference) {
            Ok(d) => d,
            Err(_) => match self.entries(repo)?.into_iter().find(|e| e.ref_name.as_deref() == Some(reference)) {
                Some(e) => e.digest,
                None => return Ok(None),
            },
        };
        if !self.blob_path(repo, &digest).exists() {
            return Ok(None);
        }
        self.read(repo, &digest, crate::gc::manifest::MAX_MANIFEST_BYTES).map(Some)
    }

    fn blob(&self, repo: &str, digest: &Digest) -> Result<Vec<u8>> {
        self.read(repo, digest, MAX_BLOB_BYTES)
    }

    fn tags(&self, repo: &str) -> Result<Vec<String>> {
        Ok(self.entries(repo)?.into_iter().filter_map(|e| e.ref_name).collect())
    }

    fn referrers(&self, repo: &str, digest: &Digest) -> Result<Vec<Referrer>> {
        let layout = self.layout(repo)?;
        let mut l = layout.lock().unwrap_or_else(|p| p.into_inner());
        if l.by_subject.is_none() {
            let mut by: HashMap<Digest, Vec<Referrer>> = HashMap::new();
            for e in &l.entries {
                let Ok(bytes) = self.read(repo, &e.digest, crate::gc::manifest::MAX_MANIFEST_BYTES) else { continue };
                let Ok(refs) = crate::gc::manifest::references(&bytes) else { continue };
                if let Some(s) = refs.subject {
                    by.entry(s.digest).or_default().push((e.digest, artifact_type(&bytes)));
                }
            }
            l.by_subject = Some(by);
        }
        Ok(l.by_subject.as_ref().and_then(|b| b.get(digest)).cloned().unwrap_or_default())
    }
}

/// `docker://HOST[/PREFIX]`.
pub struct DockerStore {
    client: Target,
}

impl SourceStore for DockerStore {
    fn manifest(&self, repo: &str, reference: &str) -> Result<Option<Vec<u8>>> {
        self.client.manifest(repo, reference)
    }

    fn blob(&self, repo: &str, digest: &Digest) -> Result<Vec<u8>> {
        self.client.blob(repo, digest, MAX_BLOB_BYTES)?.ok_or_else(|| anyhow!("{repo}: the source lacks blob {digest}"))
    }

    fn tags(&self, repo: &str) -> Result<Vec<String>> {
        self.client.tags(repo)
    }

    fn referrers(&self, repo: &str, digest: &Digest) -> Result<Vec<Referrer>> {
        let Some(bytes) = self.client.referrers(repo, digest)? else { return Ok(Vec::new()) };
        let doc: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{repo}: the referrers of {digest} are not JSON"))?;
        Ok(doc["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let d = Digest::parse(m["digest"].as_str()?).ok()?;
                Some((d, m["artifactType"].as_str().map(str::to_string)))
            })
            .collect())
    }
}
