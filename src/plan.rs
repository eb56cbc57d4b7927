//! `regfs plan`: what a view over these lowers would show and hide, without
//! mounting anything, so a policy can be checked before a release.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::layout::{self, Place, Section};
use crate::mount;
use crate::view::{View, XattrNs};

/// The plan: repositories kept and stale, what policy hides, blobs visible.
#[derive(Debug, Default, Serialize)]
pub struct Plan {
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

/// Every repository of the lowers: directories under `repositories/` that
/// hold a `_layers`, `_manifests` or `_uploads` section.
fn history_repos(lowers: &[PathBuf]) -> io::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for lower in lowers {
        let base = lower.join(layout::repositories_root());
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let rd = match fs::read_dir(base.join(&rel)) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for de in rd {
                let de = de?;
                if !de.file_type()?.is_dir() {
                    continue;
                }
                let name = de.file_name().to_string_lossy().into_owned();
                if Section::from_name(&name).is_some() {
                    out.insert(rel.to_string_lossy().into_owned());
                } else if layout::may_hold_repos(&name) {
                    stack.push(rel.join(name));
                }
            }
        }
    }
    out.remove("");
    Ok(out)
}

/// Builds the plan. Reads the lowers only; the view it consults has an
/// empty, temporary upper.
pub fn plan(lowers: &[PathBuf], keep: Option<&Path>, policy: Option<&Path>) -> Result<Plan> {
    let scratch = tempfile::tempdir().context("creating a scratch upper")?;
    let layers = mount::check_layers(lowers, scratch.path(), keep, policy)?;
    let view =
        View::new(layers.upper.clone(), layers.lowers.clone(), layers.policy.clone(), XattrNs::for_current_user())?;
    let mut p = Plan { lowers: layers.lowers.clone(), ..Plan::default() };

    let repos = history_repos(&layers.lowers).context("listing the history's repositories")?;
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

    let root = layout::blobs_root();
    if let Some(blobs) = view.resolve(&root)? {
        for prefix in view.list(&root, &blobs)? {
            let prel = root.join(&prefix.name);
            for blob in view.list(&prel, &prefix.entry)? {
                if let Some(e) = view.resolve(&prel.join(&blob.name).join(layout::DATA))? {
                    p.blobs_visible += 1;
                    p.blob_bytes_visible += e.meta.len();
                }
            }
        }
    }
    Ok(p)
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
