//! What every command needs before it touches layers: the layer checks,
//! [`Layers`] (checked, absolute, with their policy), the upper lock, and
//! the path helpers they share. Nothing here mounts anything: `mount`, gc,
//! export, absorb and apply all build on it.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::bundle::{self, layer::TarLayer};
use crate::durability;
use crate::kernel;
use crate::layout;
use crate::sys;
use crate::view::{DirLayer, Layer, Policy, View, XattrNs, policy};

/// Whether one of two absolute, canonical paths lies inside the other (or
/// they are the same): two such places would write into each other.
pub fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Layers checked and made absolute, plus the policy they are seen through.
#[derive(Clone, Debug)]
pub struct Layers {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub policy: Policy,
}

/// Checks the layers and loads the policy. Creates upper if it is missing;
/// never writes anything else.
pub fn check_layers(
    lowers: &[PathBuf],
    upper: &Path,
    keep: Option<&Path>,
    policy_file: Option<&Path>,
) -> Result<Layers> {
    let abs_lowers = check_lowers(lowers, "--lower")?;
    // Resolved before anything is created, so a bad upper writes nothing.
    let up = resolve_maybe_missing(upper).with_context(|| format!("--upper {}: bad path", upper.display()))?;
    for l in &abs_lowers {
        if overlaps(&up, l) {
            bail!(
                "--upper {} and --lower {} overlap: the upper must live outside every lower \
                 (and the other way round), or writes would change the history",
                up.display(),
                l.display()
            );
        }
    }
    if !up.exists() {
        fs::create_dir_all(&up).with_context(|| format!("--upper {}: cannot create", upper.display()))?;
    }
    if !up.is_dir() {
        bail!("--upper {}: not a directory", upper.display());
    }
    let mut policy = match policy_file {
        Some(p) => {
            let text = fs::read_to_string(p).with_context(|| format!("--policy {}: cannot read", p.display()))?;
            policy::parse_policy(&text, &p.display().to_string())?
        }
        None => Policy::default(),
    };
    if let Some(k) = keep {
        let text = fs::read_to_string(k).with_context(|| format!("--keep {}: cannot read", k.display()))?;
        policy.keep = Some(policy::parse_keep(&text, &k.display().to_string())?);
    }
    Ok(Layers { lowers: abs_lowers, upper: up, policy })
}

impl Layers {
    /// The view over these layers: each lower a directory, or a bundle tar
    /// read in place.
    pub fn view(&self) -> Result<View> {
        let mut lowers: Vec<Box<dyn Layer>> = Vec::new();
        for l in &self.lowers {
            if is_bundle_file(l) {
                lowers.push(Box::new(TarLayer::open(l)?));
            } else {
                lowers.push(Box::new(DirLayer::open(l).with_context(|| format!("opening {}", l.display()))?));
            }
        }
        let upper = DirLayer::open(&self.upper).with_context(|| format!("opening {}", self.upper.display()))?;
        Ok(View::of_layers(upper, lowers, self.policy.clone(), XattrNs::for_current_user()))
    }

    /// Whether a lower is a bundle tar (the kernel cannot stack one).
    pub fn has_bundle(&self) -> bool {
        self.lowers.iter().any(|l| is_bundle_file(l))
    }
}

/// Whether a (checked) lower is a bundle tar rather than a directory.
pub fn is_bundle_file(lower: &Path) -> bool {
    fs::metadata(lower).is_ok_and(|m| m.is_file())
}

/// The canonical form of a path whose tail may not exist yet: the deepest
/// existing ancestor is canonicalised and the rest appended.
pub fn resolve_maybe_missing(p: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(p)?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = fs::canonicalize(existing)?;
    out.extend(rest.iter().rev());
    Ok(out)
}

/// Checks each lower is a registry rootdirectory or a bundle tar; returns
/// them canonical. A directory that holds bundle tars and no registry
/// stands for those tars, newest (by mtime) first. Errors name each by
/// `flag` (`--lower`, `--history`), as the user gave it.
pub fn check_lowers(lowers: &[PathBuf], flag: &str) -> Result<Vec<PathBuf>> {
    let mut abs_lowers = Vec::new();
    for l in lowers {
        let c = fs::canonicalize(l).with_context(|| format!("{flag} {}: cannot open", l.display()))?;
        if c.is_file() {
            bundle::read_description(&c).map_err(|e| {
                anyhow::anyhow!(
                    "{flag} {}: not a directory, and not a bundle tar ({e}); a lower is a registry rootdirectory or a bundle tar written by `regfs release` or `regfs export`",
                    l.display()
                )
            })?;
            abs_lowers.push(c);
            continue;
        }
        if !c.is_dir() {
            bail!("{flag} {}: not a directory or a bundle tar", l.display());
        }
        if !c.join(layout::V2).is_dir()
            && let Some(tars) = bundles_in(&c).with_context(|| format!("{flag} {}: cannot list", l.display()))?
        {
            abs_lowers.extend(check_lowers(&tars, flag)?);
            continue;
        }
        if !c.join(layout::V2).is_dir() {
            bail!(
                "{flag} {}: not a registry rootdirectory (no {} inside); pass the directory a \
                 registry's storage.filesystem.rootdirectory names",
                l.display(),
                layout::V2
            );
        }
        // The view never follows a symlink, so it would show one here as a
        // symlink; a registry writing through it would write the history.
        for dir in layout::skeleton_dirs().iter().skip(1) {
            if fs::symlink_metadata(c.join(dir)).is_ok_and(|m| m.file_type().is_symlink()) {
                bail!(
                    "{flag} {}: {} is a symlink; a registry rootdirectory holds real directories \
                     (pass the directory it points to instead)",
                    l.display(),
                    dir.display()
                );
            }
        }
        abs_lowers.push(c);
    }
    Ok(abs_lowers)
}

/// The `*.tar` files of a directory, newest first (mtime, then name);
/// `None` when it holds none.
fn bundles_in(dir: &Path) -> io::Result<Option<Vec<PathBuf>>> {
    let mut tars = Vec::new();
    for de in fs::read_dir(dir)? {
        let de = de?;
        let p = de.path();
        if p.extension().is_some_and(|e| e == "tar") && de.file_type()?.is_file() {
            tars.push((de.metadata()?.modified()?, p));
        }
    }
    tars.sort_by(|a, b| b.cmp(a));
    Ok((!tars.is_empty()).then(|| tars.into_iter().map(|(_, p)| p).collect()))
}

/// Holds an exclusive lock on the upper directory for the life of a mount,
/// so two mounts (or a GC) never write one upper at once.
pub struct UpperLock {
    _dir: File,
}

pub fn lock_upper(upper: &Path, what: &str) -> Result<UpperLock> {
    let dir = File::open(upper).with_context(|| format!("opening upper {}", upper.display()))?;
    if !sys::try_lock_exclusive(&dir)? {
        bail!(
            "upper {} is in use by another regfs process (a mount, gc or export); {what} needs it \
             to itself: unmount that first",
            upper.display()
        );
    }
    check_no_kernel_mount(upper, what)?;
    durability::check(upper)?;
    Ok(UpperLock { _dir: dir })
}

fn check_no_kernel_mount(upper: &Path, what: &str) -> Result<()> {
    if let Some(mp) = kernel::overlay_using_upper(upper) {
        bail!(
            "upper {} is in use by the kernel overlay mounted on {}; {what} needs it to itself: \
             run `regfs umount {}` first",
            upper.display(),
            mp.display(),
            mp.display()
        );
    }
    Ok(())
}
