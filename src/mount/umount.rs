//! `regfs umount`: unmount, wait for the daemon, report its status; a dead
//! daemon's mount is detached.

use std::fs::{self};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::state::*;
use std::process::Command;

use super::finish::release_on_unmount;
use super::{Mode, normalize_mountpoint};
use crate::store::{check_layers, lock_upper};
use crate::sys;

/// `regfs umount MOUNTPOINT`: unmount, wait for the daemon, report its status.
pub fn umount(mountpoint: &Path, timeout: Option<Duration>) -> Result<()> {
    let mp = normalize_mountpoint(mountpoint)?;
    let files = state_files(&mp)?;
    let state = read_state(&files.state);
    if let Some(st) = state.as_ref().filter(|st| st.mode == Mode::Kernel) {
        sys::umount(&mp, false).map_err(|e| unmount_error(&mp, e))?;
        let _ = fs::remove_file(&files.state);
        let Some(finish) = &st.finish else {
            crate::note!("regfs: unmounted kernel overlay {} (upper {})", mp.display(), st.upper.display());
            return Ok(());
        };
        // No daemon in kernel mode: the release work runs here, the same way.
        let layers = check_layers(&st.lowers, &st.upper, finish.keep.as_deref(), finish.policy.as_deref())?;
        let _lock = lock_upper(&layers.upper, "the on-unmount gc and export")?;
        let view = layers.view()?;
        let done = release_on_unmount(&view, &layers, finish)
            .with_context(|| format!("{}: unmounted, but the release work failed", mp.display()))?;
        crate::note!("regfs: {}: unmounted cleanly; {done}", mp.display());
        return Ok(());
    }
    if let Some(pid) = dead_daemon(&mp, state.as_ref()) {
        return detach_dead(&mp, pid, &files);
    }
    unmount_path(&mp)?;
    let Some(state) = state else {
        crate::note!("regfs: unmounted {} (no regfs daemon was recorded for it)", mp.display());
        return Ok(());
    };
    let start = Instant::now();
    while sys::process_alive(state.pid) {
        if timeout.is_some_and(|t| start.elapsed() > t) {
            bail!("daemon pid {} still running after unmount; see {}", state.pid, state.log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status: Option<ExitStatus> = fs::read(&files.status).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let _ = fs::remove_file(&files.status);
    match status {
        Some(s) if s.code == 0 => {
            crate::note!("regfs: {}: {}", mp.display(), s.message);
            // A clean run's log has nothing left to tell: keep the runtime
            // dir from filling up (a failed run's log stays, named above).
            let _ = fs::remove_file(&state.log);
            Ok(())
        }
        Some(s) => Err(anyhow!("{}: the daemon failed: {} (log: {})", mp.display(), s.message, state.log.display())),
        None => Err(anyhow!(
            "{}: the daemon (pid {}) ended without a status (killed?); the upper is intact, see {}",
            mp.display(),
            state.pid,
            state.log.display()
        )),
    }
}

/// The pid of the daemon recorded for a FUSE mount if it is gone: the mount
/// answers ENOTCONN (its daemon ended without unmounting), or the recorded
/// process no longer exists. Checked before unmounting, so a pid reused
/// since by another process is never waited for.
pub(super) fn dead_daemon(mp: &Path, state: Option<&MountState>) -> Option<u32> {
    let state = state?;
    let enotconn = fs::metadata(mp).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN));
    (enotconn || !sys::process_alive(state.pid)).then_some(state.pid)
}

/// `regfs umount` after the daemon died (SIGKILL, OOM, crash): the mount
/// can serve nothing any more, so it is detached even if busy, the stale
/// state is removed, and the error says what happened and how to go on.
pub(super) fn detach_dead(mp: &Path, pid: u32, files: &StateFiles) -> Result<()> {
    let still_mounted = match fs::metadata(mp) {
        Err(e) => e.raw_os_error() == Some(libc::ENOTCONN),
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            mp.parent().and_then(|p| fs::metadata(p).ok()).is_some_and(|parent| parent.dev() != m.dev())
        }
    };
    let detached = if !still_mounted {
        Ok(())
    } else if sys::geteuid() == 0 {
        sys::umount(mp, true).with_context(|| format!("detaching {}", mp.display()))
    } else {
        match Command::new("fusermount3").arg("-uz").arg(mp).status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(anyhow!("fusermount3 -uz {} failed ({s})", mp.display())),
            Err(e) => Err(anyhow::Error::new(e).context("running fusermount3 (install the fuse3 package)")),
        }
    };
    detached?;
    for f in [&files.state, &files.ready, &files.status] {
        let _ = fs::remove_file(f);
    }
    bail!(
        "{}: the regfs daemon (pid {pid}) had died (killed or crashed) without unmounting; the dead mount is \
         detached. The upper is intact: everything written before the daemon died is there, and a write it \
         was serving may be cut short, so re-run what was writing (e.g. the push), after mounting the same \
         upper again. No on-unmount gc or export ran. Daemon log: {}",
        mp.display(),
        files.log.display()
    )
}

/// Unmounts a FUSE mount: umount2 as root, `fusermount3 -u` otherwise; a
/// dead mount (ENOTCONN) is detached lazily.
pub(super) fn unmount_path(mp: &Path) -> Result<()> {
    if sys::geteuid() == 0 {
        return match sys::umount(mp, false) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                sys::umount(mp, true).with_context(|| format!("detaching dead mount {}", mp.display()))
            }
            Err(e) => Err(unmount_error(mp, e)),
        };
    }
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(mp)
        .output()
        .context("running fusermount3 (install the fuse3 package)")?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr);
    if msg.contains("not connected") {
        let lazy = Command::new("fusermount3").arg("-uz").arg(mp).status()?;
        if lazy.success() {
            return Ok(());
        }
    }
    bail!("fusermount3 -u {} failed: {}", mp.display(), msg.trim())
}

pub(super) fn unmount_error(mp: &Path, e: io::Error) -> anyhow::Error {
    match e.raw_os_error() {
        Some(libc::EINVAL) => anyhow!("{} is not mounted", mp.display()),
        Some(libc::EBUSY) => {
            anyhow!("{} is busy (a process has a file or its cwd there); stop it and retry", mp.display())
        }
        _ => anyhow::Error::new(e).context(format!("unmounting {}", mp.display())),
    }
}
