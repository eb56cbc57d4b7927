//! `regfs serve`: bundles served in place. The bundle tars (a full one, or
//! deltas over the bundles they were cut against) are mounted as the
//! lowers of a FUSE view, nothing hidden, over an empty scratch upper, and
//! the stock registry serves the view read-only until Ctrl-C. Nothing is
//! extracted and nothing is written next to the bundles.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::bundle::{self, Description};
use crate::durability::FsyncPolicy;
use crate::mount::{self, Mode, MountRequest};
use crate::release::children::{RegistryChild, RegistryOptions, find_registry};

/// What `regfs serve` was asked.
#[derive(Clone, Debug)]
pub struct ServeRequest {
    /// Oldest first: a full bundle, then deltas, each over the ones before.
    pub bundles: Vec<PathBuf>,
    pub addr: SocketAddr,
    pub registry_bin: Option<PathBuf>,
}

/// The bundles (canonical) with their descriptions, oldest first.
pub fn stack_descriptions(bundles: &[PathBuf]) -> Result<Vec<(PathBuf, Description)>> {
    if bundles.is_empty() {
        bail!("no bundle given: name a full bundle, then any deltas over it (oldest first)");
    }
    let mut descs = Vec::new();
    for b in bundles {
        let abs = std::fs::canonicalize(b).with_context(|| format!("{}: cannot open", b.display()))?;
        let d = bundle::read_description(&abs).map_err(|e| anyhow::anyhow!("{}: {e}", b.display()))?;
        descs.push((abs, d));
    }
    Ok(descs)
}

/// [`stack_descriptions`]; refuses a stack that lacks blobs (a delta
/// without the bundle it was cut against), listing them all.
pub fn check_stack(bundles: &[PathBuf]) -> Result<Vec<(PathBuf, Description)>> {
    let descs = stack_descriptions(bundles)?;
    let missing = bundle::chain_missing(&descs);
    if !missing.is_empty() {
        bail!(
            "{} blobs are in none of the bundles given (a delta needs the bundles it was cut against, \
             named before it, oldest first):\n  {}",
            missing.len(),
            missing.join("\n  ")
        );
    }
    Ok(descs)
}

/// The mounted stack: unmounted (and its scratch removed) when dropped.
pub struct MountedStack {
    scratch: tempfile::TempDir,
    mounted: bool,
}

impl MountedStack {
    /// Mounts `bundles` (oldest first) with nothing hidden, over an empty
    /// scratch upper.
    pub fn mount(bundles: &[(PathBuf, Description)]) -> Result<MountedStack> {
        let scratch =
            tempfile::Builder::new().prefix("regfs-serve.").tempdir().context("creating a scratch directory")?;
        let policy = scratch.path().join("policy.json");
        std::fs::write(&policy, r#"{"hide_sections": []}"#).context("writing the scratch policy")?;
        let upper = scratch.path().join("upper");
        let mnt = scratch.path().join("mnt");
        for d in [&upper, &mnt] {
            std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let req = MountRequest {
            // The view stacks the newest on top.
            lowers: bundles.iter().rev().map(|(p, _)| p.clone()).collect(),
            upper,
            keep: None,
            policy: Some(policy),
            mountpoint: mnt,
            threads: mount::default_threads(),
            allow_other: false,
            mode: Mode::Fuse,
            work: None,
            export: None,
            delete_untagged: false,
            passthrough: false,
            fsync: FsyncPolicy::Full,
        };
        mount::mount_background(&req, 0)?;
        Ok(MountedStack { scratch, mounted: true })
    }

    pub fn root(&self) -> PathBuf {
        self.scratch.path().join("mnt")
    }

    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    pub fn unmount(mut self) -> Result<()> {
        self.mounted = false;
        mount::umount(&self.root(), None)
    }
}

impl Drop for MountedStack {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = mount::umount(&self.root(), None)
        {
            tracing::warn!(error = %format!("{e:#}"), "unmounting the served bundles");
        }
    }
}

/// `regfs serve`: mounts, serves until SIGINT/SIGTERM, unmounts.
pub fn command(req: &ServeRequest) -> Result<()> {
    let descs = check_stack(&req.bundles)?;
    let registry_bin = find_registry(req.registry_bin.as_deref())?;
    let stack = MountedStack::mount(&descs)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    let served = runtime.block_on(async {
        let opts = RegistryOptions { addr: Some(req.addr), read_only: true };
        let mut registry = RegistryChild::start_with(&registry_bin, &stack.root(), stack.scratch(), opts).await?;
        announce(&descs, registry.addr());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let outcome = tokio::select! {
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
            status = registry.exited() => Err(anyhow::anyhow!("the registry exited ({:?}); its log was in {}", status.ok(), stack.scratch().join("registry.log").display())),
        };
        registry.stop().await?;
        outcome
    });
    let unmounted = stack.unmount();
    served?;
    unmounted?;
    eprintln!("regfs: stopped; the bundles were not changed");
    Ok(())
}

/// What is served: each bundle, then every image of the newest.
fn announce(descs: &[(PathBuf, Description)], addr: SocketAddr) {
    let images: usize = descs.iter().map(|(_, d)| d.images.len()).sum();
    println!("serving {} bundle{} on http://{addr} ({images} tags; Ctrl-C to stop):", descs.len(), plural(descs.len()));
    for (p, d) in descs {
        let kind = if d.base.is_some() { "delta" } else { "full" };
        println!("  {} ({kind}, release {}, {} images)", p.display(), d.release, d.images.len());
    }
    if let Some((_, top)) = descs.last() {
        for i in &top.images {
            println!("  {addr}/{}:{}  {}", i.repo, i.tag, i.digest);
        }
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
