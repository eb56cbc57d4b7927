//! What travels with an image: for the image's manifest and each child of
//! its index, cosign's tags (`sha256-<hex>.sig`, `.att`, `.sbom`) and its
//! OCI 1.1 referrers (the referrers API where the source has one, the
//! `sha256-<hex>` fallback tag index, an OCI layout's untagged entries), and
//! in turn theirs (a signature of an SBOM). They are copied byte for byte
//! with regfs's own client, children and blobs first, so every digest a
//! signature names still holds at the site.

use std::collections::{BTreeSet, VecDeque};

use anyhow::{Context, Result, anyhow, bail};

use crate::bundle::{Attachment, AttachmentKind};
use crate::client::Target;
use crate::gc::manifest;
use crate::layout::Digest;

use super::source::{SourceStore, artifact_type};

/// The children of an index, recursively (an index of indexes).
fn children(store: &dyn SourceStore, repo: &str, bytes: &[u8]) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    let mut stack: Vec<Digest> = refs(bytes)?.manifests.iter().map(|m| m.digest).collect();
    while let Some(d) = stack.pop() {
        out.push(d);
        let child = store
            .manifest(repo, &d.to_string())?
            .ok_or_else(|| anyhow!("{repo}: the source lacks child manifest {d}"))?;
        stack.extend(refs(&child)?.manifests.iter().map(|m| m.digest));
    }
    Ok(out)
}

fn refs(bytes: &[u8]) -> Result<manifest::Refs> {
    manifest::references(bytes).map_err(|e| anyhow!("a manifest that does not parse: {e}"))
}

/// Everything attached to image `top` of `repo` (whose manifest is
/// `top_bytes`) or to a child of it, each after its subject.
pub fn discover(store: &dyn SourceStore, repo: &str, top: &Digest, top_bytes: &[u8]) -> Result<Vec<Attachment>> {
    let tags: BTreeSet<String> = store.tags(repo)?.into_iter().collect();
    let mut subjects: VecDeque<Digest> = VecDeque::from([*top]);
    subjects.extend(children(store, repo, top_bytes)?);
    let mut seen: BTreeSet<Digest> = subjects.iter().copied().collect();
    let mut out = Vec::new();
    while let Some(subject) = subjects.pop_front() {
        let mut found = |a: Attachment, subjects: &mut VecDeque<Digest>| {
            if seen.insert(a.digest) {
                subjects.push_back(a.digest);
                out.push(a);
            }
        };
        let kinds = AttachmentKind::COSIGN.iter().map(|(_, k)| *k).chain([AttachmentKind::ReferrersIndex]);
        for kind in kinds {
            let Some(tag) = kind.tag_for(&subject).filter(|t| tags.contains(t)) else { continue };
            let bytes = store
                .manifest(repo, &tag)?
                .ok_or_else(|| anyhow!("{repo}:{tag}: listed among the tags, but the source has no manifest for it"))?;
            let digest = Digest::of(&bytes);
            // Refused now, not half way through the push.
            let parsed = refs(&bytes).with_context(|| format!("{repo}:{tag} ({digest})"))?;
            let artifact_type = artifact_type(&bytes);
            found(Attachment { kind, digest, subject, tag: Some(tag.clone()), artifact_type }, &mut subjects);
            if kind == AttachmentKind::ReferrersIndex && parsed.manifests.is_empty() {
                bail!("{repo}:{tag}: a referrers fallback tag that is no index (it lists no manifests)");
            }
            if kind == AttachmentKind::ReferrersIndex {
                let index: serde_json::Value =
                    serde_json::from_slice(&bytes).with_context(|| format!("{repo}:{tag}: not JSON"))?;
                for m in index["manifests"].as_array().into_iter().flatten() {
                    let Some(d) = m["digest"].as_str().and_then(|d| Digest::parse(d).ok()) else {
                        bail!("{repo}:{tag}: a referrer without a sha256 digest");
                    };
                    if store.manifest(repo, &d.to_string())?.is_none() {
                        bail!("{repo}:{tag}: lists referrer {d}, which the source does not hold");
                    }
                    let artifact_type = m["artifactType"].as_str().map(str::to_string);
                    let a = Attachment { kind: AttachmentKind::Referrer, digest: d, subject, tag: None, artifact_type };
                    found(a, &mut subjects);
                }
            }
        }
        for (digest, artifact_type) in store.referrers(repo, &subject)? {
            let a = Attachment { kind: AttachmentKind::Referrer, digest, subject, tag: None, artifact_type };
            found(a, &mut subjects);
        }
    }
    Ok(out)
}

/// The media type a manifest is stored with: its own, else by its shape.
fn media_type(bytes: &[u8], refs: &manifest::Refs) -> String {
    match &refs.media_type {
        Some(m) => m.clone(),
        None if !refs.manifests.is_empty() => "application/vnd.oci.image.index.v1+json".into(),
        None => match serde_json::from_slice::<serde_json::Value>(bytes).ok().and_then(|v| v["schemaVersion"].as_u64())
        {
            Some(1) => "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
            _ => "application/vnd.oci.image.manifest.v1+json".into(),
        },
    }
}

/// Copies manifest `digest` of `repo` (its blobs, then its child
/// manifests, then itself, under `tag` or its digest) from the source into
/// `dest`, byte for byte.
pub fn copy_raw(store: &dyn SourceStore, dest: &Target, repo: &str, digest: &Digest, tag: Option<&str>) -> Result<()> {
    let bytes = store
        .manifest(repo, &digest.to_string())?
        .ok_or_else(|| anyhow!("{repo}: the source lacks manifest {digest}"))?;
    if Digest::of(&bytes) != *digest {
        bail!("{repo}@{digest}: the source's manifest does not hash to its digest");
    }
    let refs = refs(&bytes).with_context(|| format!("{repo}@{digest}"))?;
    for b in refs.blobs.iter().filter(|b| !b.foreign) {
        let data = store.blob(repo, &b.digest)?;
        dest.put_blob(repo, &b.digest, &data)
            .with_context(|| format!("copying blob {} of {repo}@{digest}", b.digest))?;
    }
    for m in &refs.manifests {
        copy_raw(store, dest, repo, &m.digest, None)?;
    }
    let reference = tag.map_or_else(|| digest.to_string(), str::to_string);
    dest.put_manifest(repo, &reference, &media_type(&bytes, &refs), &bytes)
        .with_context(|| format!("copying {repo}@{digest}"))
}
