//! Before anything is mounted: every image of the list looked up at the
//! source, and every one that is missing or unreachable reported at once
//! (with the TLS hint where a plain-HTTP source is the cause). An OCI
//! layout is read directly; a registry is asked with `skopeo inspect`, a
//! few at a time.

use std::path::Path;

use anyhow::{Result, bail};

use super::children::Skopeo;
use super::{ImageName, Source};

/// What skopeo's message says went wrong at the source, for a person.
fn explain(message: &str) -> String {
    if message.contains("server gave HTTP response to HTTPS client") {
        return "the source speaks plain HTTP: pass --src-tls-verify false".into();
    }
    for (needle, what) in [
        ("manifest unknown", "no such tag at the source"),
        ("name unknown", "no such repository at the source"),
        ("connection refused", "the source refused the connection (is the registry up? right host and port?)"),
        ("no such host", "no such host"),
        ("unauthorized", "the source wants credentials (log in with `skopeo login` first)"),
    ] {
        if message.contains(needle) {
            return format!("{what} ({})", message.trim());
        }
    }
    message.trim().to_string()
}

/// Why image `img` is not in the OCI layout `dir/repo`, if it is not.
fn oci_problem(dir: &Path, img: &ImageName) -> Option<String> {
    let index = dir.join(&img.repo).join("index.json");
    let text = match std::fs::read_to_string(&index) {
        Ok(t) => t,
        Err(e) => return Some(format!("no OCI layout {}: {e}", index.display())),
    };
    let doc: serde_json::Value = match serde_json::from_str(&text) {
        Ok(d) => d,
        Err(e) => return Some(format!("{}: not JSON: {e}", index.display())),
    };
    let names: Vec<&str> = doc["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    if names.contains(&img.tag.as_str()) {
        return None;
    }
    Some(format!("{} names no tag {:?} (it has: {})", index.display(), img.tag, names.join(", ")))
}

/// Refuses, listing every image the source lacks or cannot give.
pub async fn check_source(skopeo: &Skopeo, source: &Source, images: &[ImageName], jobs: usize) -> Result<()> {
    let mut problems: Vec<(usize, String)> = Vec::new();
    match source {
        Source::Oci(dir) => {
            for (i, img) in images.iter().enumerate() {
                if let Some(p) = oci_problem(dir, img) {
                    problems.push((i, p));
                }
            }
        }
        Source::Docker(_) => {
            let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
            let mut tasks = tokio::task::JoinSet::new();
            for (i, img) in images.iter().enumerate() {
                let (skopeo, reference, limit) = (skopeo.clone(), source.reference(img), limit.clone());
                tasks.spawn(async move {
                    let _permit = limit.acquire().await;
                    (i, skopeo.inspect(&reference).await.err().map(|e| explain(&format!("{e:#}"))))
                });
            }
            while let Some(done) = tasks.join_next().await {
                if let Ok((i, Some(p))) = done {
                    problems.push((i, p));
                }
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    problems.sort();
    let lines: Vec<String> =
        problems.iter().map(|(i, p)| format!("  {}:{}: {p}", images[*i].repo, images[*i].tag)).collect();
    bail!(
        "{} of the {} images cannot be read from the source; nothing was mounted:\n{}",
        problems.len(),
        images.len(),
        lines.join("\n")
    )
}
