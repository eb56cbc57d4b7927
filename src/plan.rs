//! `regfs plan`: what a view over these lowers would show and hide, without
//! mounting anything, so a policy can be checked before a release.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::layout::{self, Place, Section};
use crate::store;
use crate::view::{UPPER, View};

/// The plan: repositories kept and stale, what policy hides, blobs visible.
#[derive(Debug, Default, Serialize)]
pub struct ViewPlan {
    pub lowers: Vec<PathBuf>,
    pub repos_kept: Vec<String>,
    pub repos_stale: Vec<String>,
    /// Names of the keep list that no lower holds (they will be new).
    pub repos_new: Vec<String>,
    /// `_manifests` (and below, `_uploads`, `_layers`) directories policy
    /// hides in repositories that stay visible; a stale repository is hidden
    /// whole and counted once, in `hidden_repo_dirs`.
    pub hidden_manifests: u64,
    pub hidden_uploads: u64,
    pub hidden_layers: u64,
    /// Hidden repository or namespace directories (marks kernel mode writes).
    pub hidden_repo_dirs: u64,
    pub blobs_visible: u64,
    pub blob_bytes_visible: u64,
}

/// Builds the plan. Reads the lowers only; the view it consults has an
/// empty, temporary upper.
pub fn plan(lowers: &[PathBuf], keep: Option<&Path>, policy: Option<&Path>) -> Result<ViewPlan> {
    let scratch = tempfile::tempdir().context("creating a scratch upper")?;
    let layers = store::check_layers(lowers, scratch.path(), keep, policy)?;
    let view = layers.view()?;
    let mut p = ViewPlan { lowers: layers.lowers.clone(), ..ViewPlan::default() };

    let mut repos = BTreeSet::new();
    let root = layout::repositories_root();
    for lower in view.lowers() {
        let list = |rel: &Path| {
            let names = lower.read_dir(&root.join(rel))?;
            Ok(names.map(|n| {
                n.into_iter().map(|(name, kind)| (name.to_string_lossy().into_owned(), kind.is_dir())).collect()
            }))
        };
        let found = layout::repositories_listed(list, |_| true)
            .with_context(|| format!("listing the repositories of {}", lower.source().display()))?;
        repos.extend(found);
    }
    for repo in &repos {
        if layers.policy.keeps_repo(repo) {
            p.repos_kept.push(repo.clone());
        } else {
            p.repos_stale.push(repo.clone());
        }
    }
    if let Some(k) = &layers.policy.keep {
        p.repos_new = k.repos().filter(|r| !repos.contains(*r)).map(str::to_string).collect();
    }

    for hidden in crate::kernel::hidden_paths(&view).context("walking the history")? {
        match layout::classify(&hidden) {
            Place::InSection { section: Section::Manifests, .. } => p.hidden_manifests += 1,
            Place::InSection { section: Section::Uploads, .. } => p.hidden_uploads += 1,
            Place::InSection { section: Section::Layers, .. } => p.hidden_layers += 1,
            _ => p.hidden_repo_dirs += 1,
        }
    }

    let blobs = blob_origins(&view)?;
    p.blobs_visible = blobs.uploaded + blobs.reused;
    p.blob_bytes_visible = blobs.uploaded_bytes + blobs.reused_bytes;
    Ok(p)
}

/// Where the blobs a view shows keep their data: upper (written in this
/// release) or a history layer (reused).
#[derive(Debug, Default, Serialize)]
pub struct BlobOrigins {
    pub uploaded: u64,
    pub uploaded_bytes: u64,
    pub reused: u64,
    pub reused_bytes: u64,
}

/// Counts the view's blobs (`blobs/sha256/<xx>/<hex>/data`) by origin.
pub fn blob_origins(view: &View) -> io::Result<BlobOrigins> {
    let mut o = BlobOrigins::default();
    let root = layout::blobs_root();
    let Some(blobs) = view.resolve(&root)? else { return Ok(o) };
    for prefix in view.list(blobs.as_dir(&root))? {
        let prel = root.join(&prefix.name);
        for blob in view.list(prefix.entry.as_dir(&prel))? {
            let brel = prel.join(&blob.name);
            let Some(e) = view.lookup(blob.entry.as_dir(&brel), layout::DATA.as_ref())? else {
                continue;
            };
            if e.top() == UPPER {
                o.uploaded += 1;
                o.uploaded_bytes += e.meta.size;
            } else {
                o.reused += 1;
                o.reused_bytes += e.meta.size;
            }
        }
    }
    Ok(o)
}

/// A per-group tally for the human report.
fn tally(names: &[String]) -> String {
    let mut by_ns: BTreeMap<&str, usize> = BTreeMap::new();
    for n in names {
        *by_ns.entry(n.split('/').next().unwrap_or(n)).or_default() += 1;
    }
    let top: Vec<String> = by_ns.iter().take(8).map(|(ns, c)| format!("{ns} ({c})")).collect();
    let more = if by_ns.len() > 8 { format!(", ... {} more groups", by_ns.len() - 8) } else { String::new() };
    format!("{}{more}", top.join(", "))
}

/// `regfs plan`: prints the plan.
pub fn command(lowers: &[PathBuf], keep: Option<&Path>, policy: Option<&Path>, json: bool) -> Result<()> {
    let p = plan(lowers, keep, policy)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(());
    }
    println!("view over {} lower(s):", p.lowers.len());
    println!("  repositories kept    {:>8}  {}", p.repos_kept.len(), tally(&p.repos_kept));
    println!("  repositories stale   {:>8}  {}", p.repos_stale.len(), tally(&p.repos_stale));
    if !p.repos_new.is_empty() {
        println!("  new in this release  {:>8}  {}", p.repos_new.len(), p.repos_new.join(", "));
    }
    println!("  hidden _manifests    {:>8}", p.hidden_manifests);
    println!("  hidden _uploads      {:>8}", p.hidden_uploads);
    if p.hidden_layers > 0 {
        println!("  hidden _layers       {:>8}", p.hidden_layers);
    }
    println!("  hidden repo dirs     {:>8}  (stale repositories and namespaces)", p.hidden_repo_dirs);
    println!(
        "  blobs visible        {:>8}  {} (every one a push can skip)",
        p.blobs_visible,
        crate::gc::human_bytes(p.blob_bytes_visible)
    );
    Ok(())
}
