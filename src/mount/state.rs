//! Where a mount's daemon records itself: the runtime dir, the state,
//! ready and status files keyed by the mountpoint, and the daemon log.

use std::fs::{self};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{Finish, Mode};
use crate::{layout, sys};

/// Where a mount's daemon records itself.
pub(super) struct StateFiles {
    pub(super) state: PathBuf,
    pub(super) ready: PathBuf,
    pub(super) status: PathBuf,
    pub(super) log: PathBuf,
}

pub fn runtime_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("regfs"),
        // Named by the user outside any user namespace: root of `unshare
        // -Urm` is that user, not the machine's root.
        _ => std::env::temp_dir().join(format!("regfs-{}", sys::outer_uid())),
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating runtime dir {}", dir.display()))?;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = fs::metadata(&dir)?;
    if meta.uid() != sys::geteuid() {
        bail!("runtime dir {} belongs to another user; set XDG_RUNTIME_DIR", dir.display());
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

pub(super) fn state_files(mountpoint: &Path) -> Result<StateFiles> {
    let id = layout::Digest::of(mountpoint.as_os_str().as_encoded_bytes());
    let base = runtime_dir()?.join(&id.hex()[..16]);
    let with = |ext: &str| base.with_extension(ext);
    Ok(StateFiles { state: with("json"), ready: with("ready"), status: with("status"), log: with("log") })
}

#[derive(Serialize, Deserialize, Debug)]
pub(super) struct MountState {
    pub(super) pid: u32,
    pub(super) mountpoint: PathBuf,
    pub(super) upper: PathBuf,
    pub(super) lowers: Vec<PathBuf>,
    pub(super) log: PathBuf,
    #[serde(default = "fuse_mode")]
    pub(super) mode: Mode,
    /// What `regfs umount` runs after unmounting a kernel mount (a FUSE
    /// daemon runs it itself).
    #[serde(default)]
    pub(super) finish: Option<Finish>,
}

pub(super) fn fuse_mode() -> Mode {
    Mode::Fuse
}

#[derive(Serialize, Deserialize, Debug)]
pub(super) struct ExitStatus {
    pub(super) code: i32,
    pub(super) message: String,
}

pub(super) use crate::util::write_atomic;

pub(super) fn read_state(path: &Path) -> Option<MountState> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}
