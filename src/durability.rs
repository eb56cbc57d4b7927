//! `--fsync`: when what a FUSE mount writes reaches the disk.
//!
//! `full` (the default) passes every fsync the registry makes to upper, as
//! the kernel overlay does. `finalize` answers them at once and makes the
//! whole upper durable with one `syncfs` when the mount ends (before the
//! `--export` hook reads it): a push does not wait for the disk once per
//! file. The trade-off: if the machine (not regfs) goes down during the
//! mount, files the registry believed synced may be incomplete.
//!
//! So a `finalize` mount first leaves a marker in upper (hidden from the
//! view like every `.regfs-tmp.*` name) naming the boot it ran in, made
//! durable before anything else is written, and removes it after the
//! closing `syncfs`. Whatever next takes the upper (a mount, gc, export)
//! checks for it: from this boot, the data is all in the page cache, so a
//! `syncfs` settles it; from an earlier boot, the upper cannot be trusted
//! and regfs refuses it, saying what to do.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::sys;

/// The marker's name in upper's root.
pub const MARKER: &str = ".regfs-tmp.unsynced";

/// What a FUSE mount does with the registry's fsyncs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Every fsync reaches upper's disk before it returns.
    #[default]
    Full,
    /// fsyncs return at once; one syncfs of upper when the mount ends.
    Finalize,
}

impl FsyncPolicy {
    /// The name `--fsync` takes.
    pub fn name(self) -> &'static str {
        match self {
            FsyncPolicy::Full => "full",
            FsyncPolicy::Finalize => "finalize",
        }
    }
}

fn marker(upper: &Path) -> PathBuf {
    upper.join(MARKER)
}

fn boot_id() -> Result<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").context("reading the boot id")?;
    Ok(id.trim().to_string())
}

/// Before a `finalize` mount writes anything: the durable marker.
pub fn begin(upper: &Path) -> Result<()> {
    let path = marker(upper);
    let mut f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{}", boot_id()?).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", path.display()))?;
    sys::sync_dir(upper).with_context(|| format!("syncing {}", upper.display()))?;
    Ok(())
}

/// Makes everything in upper's filesystem durable, then drops the marker.
pub fn finish(upper: &Path) -> Result<()> {
    let dir = File::open(upper).with_context(|| format!("opening upper {}", upper.display()))?;
    sys::syncfs(&dir).with_context(|| format!("syncing the filesystem of upper {}", upper.display()))?;
    match fs::remove_file(marker(upper)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("removing {}", marker(upper).display())),
    }
    sys::sync_dir(upper).with_context(|| format!("syncing {}", upper.display()))?;
    Ok(())
}

/// Whoever takes the upper (under its lock) settles a marker a `finalize`
/// mount left: synced now if from this boot, refused if from another.
pub fn check(upper: &Path) -> Result<()> {
    let path = marker(upper);
    let recorded = match fs::read_to_string(&path) {
        Ok(s) => s.trim().to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if recorded == boot_id()? {
        tracing::info!(upper = %upper.display(), "a --fsync finalize mount ended without syncing; syncing upper now");
        return finish(upper);
    }
    bail!(
        "upper {} was written by a `--fsync finalize` mount when the machine went down (boot {}), before \
         regfs could sync it: files the registry wrote then may be incomplete. Start the release again with \
         an empty upper; if you know the upper is intact (e.g. it was copied elsewhere and checked), delete {} \
         to use it",
        upper.display(),
        if recorded.is_empty() { "unknown" } else { &recorded },
        path.display()
    )
}
