//! `regfs mount` / `regfs umount`: the request, the front ends, the daemon.
//!
//! - here: [`MountRequest`] (and its one argv form), mode choice, the
//!   background daemon, the FUSE and kernel mounts;
//! - `state`: the runtime dir and the files a daemon records itself in;
//! - `finish`: the on-unmount gc and export (`--export`);
//! - `umount`: unmounting, waiting for the daemon, dead daemons.
//!
//! A background mount re-executes regfs in the foreground as a daemon (its
//! own process group, output to a log file) and returns once the daemon says
//! the mount is ready. The daemon records itself in a small state file keyed
//! by the mountpoint so `regfs umount` can find it, wait for it to finish
//! (unmount-time work included) and return its exit status.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::durability::{self, FsyncPolicy};
use crate::export;
use crate::fuse::RegFs;
use crate::kernel;
use crate::store::{self, Layers, check_layers, lock_upper};
use crate::sys;

mod finish;
mod state;
mod umount;

use finish::{Finish, release_on_unmount};
pub use state::runtime_dir;
use state::*;
pub use umount::umount;

/// What a mount needs, as given on the command line.
#[derive(Clone, Debug)]
pub struct MountRequest {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub keep: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    pub mountpoint: PathBuf,
    pub threads: usize,
    pub allow_other: bool,
    pub mode: Mode,
    /// overlayfs work dir for kernel mode (default: beside upper).
    pub work: Option<PathBuf>,
    /// On unmount: gc, then export the view to this tar (FUSE mode: the
    /// daemon runs it after the session ends).
    pub export: Option<PathBuf>,
    /// The on-unmount gc deletes untagged manifests too.
    pub delete_untagged: bool,
    /// FUSE passthrough for history reads (needs CAP_SYS_ADMIN).
    pub passthrough: bool,
    /// When the registry's fsyncs reach the disk (FUSE mode).
    pub fsync: FsyncPolicy,
}

impl MountRequest {
    /// The `regfs mount` arguments that ask for exactly this request (what
    /// the daemon is started with). `--ready-file` and `--foreground` are
    /// the daemon's own, added by [`mount_background`].
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["mount".into()];
        a.extend(layer_args(&self.lowers, &self.upper, self.keep.as_deref(), self.policy.as_deref()));
        a.extend(["--threads".into(), self.threads.to_string().into(), "--mode".into(), self.mode.name().into()]);
        a.extend(["--fsync".into(), self.fsync.name().into()]);
        for (flag, on) in [
            ("--allow-other", self.allow_other),
            ("--passthrough", self.passthrough),
            ("--delete-untagged", self.delete_untagged),
        ] {
            if on {
                a.push(flag.into());
            }
        }
        for (flag, path) in [("--work", &self.work), ("--export", &self.export)] {
            if let Some(p) = path {
                a.extend([flag.into(), p.into()]);
            }
        }
        a.push(self.mountpoint.clone().into());
        a
    }
}

/// `--lower L... --upper U [--keep K] [--policy P]`: the layers of a view,
/// as `mount`, `gc` and `export` take them.
pub fn layer_args(lowers: &[PathBuf], upper: &Path, keep: Option<&Path>, policy: Option<&Path>) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    for l in lowers {
        a.extend(["--lower".into(), l.into()]);
    }
    a.extend(["--upper".into(), upper.into()]);
    for (flag, file) in [("--keep", keep), ("--policy", policy)] {
        if let Some(f) = file {
            a.extend([flag.into(), f.into()]);
        }
    }
    a
}

/// A command line to show a person: `regfs` and the arguments, each
/// quoted where a shell would need it.
pub fn shown_command(args: &[OsString]) -> String {
    let mut out = String::from("regfs");
    for a in args {
        let s = a.to_string_lossy();
        out.push(' ');
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=+@,".contains(&b)) {
            out.push_str(&s);
        } else {
            out.push('\'');
            out.push_str(&s.replace('\'', "'\\''"));
            out.push('\'');
        }
    }
    out
}

/// FUSE worker threads when none are asked for: one per CPU, at least 2.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get).max(2)
}

/// Which front end serves the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Kernel overlayfs where this process may mount it, FUSE otherwise.
    #[default]
    Auto,
    /// FUSE (unprivileged, through fusermount3 when not root).
    Fuse,
    /// Native kernel overlayfs: the policy is materialised as whiteouts first.
    Kernel,
}

/// An absolute mountpoint path without touching the mount itself (a dead
/// FUSE mount answers ENOTCONN to stat).
pub fn normalize_mountpoint(mp: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(mp).with_context(|| format!("{}: bad path", mp.display()))?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => {
            let parent =
                fs::canonicalize(parent).with_context(|| format!("{}: parent directory missing", mp.display()))?;
            Ok(parent.join(name))
        }
        _ => Ok(abs),
    }
}

impl Mode {
    /// The name `--mode` takes.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Fuse => "fuse",
            Mode::Kernel => "kernel",
        }
    }
}

/// `regfs mount` without `--foreground`: start the daemon (the same
/// request, [`MountRequest::to_args`], in the foreground; `verbose` times
/// `-v`), wait until it is ready.
pub fn mount_background(req: &MountRequest, verbose: u8) -> Result<()> {
    // Check everything here first, so mistakes come back on the terminal.
    let layers = check_layers(&req.lowers, &req.upper, req.keep.as_deref(), req.policy.as_deref())?;
    if let Some(out) = &req.export {
        export::check_target(out, &layers)?;
    }
    let mp = check_mountpoint(&req.mountpoint)?;
    check_no_overlap(&layers, &mp)?;
    warn_foreign_history(&layers);
    if choose_mode(req, &layers)? == Mode::Kernel {
        match mount_kernel(req, &layers, &mp) {
            Ok(()) => return Ok(()),
            Err(e) if req.mode == Mode::Auto && is_permission_error(&e) => {
                tracing::info!("mode: fuse (kernel overlay not permitted here: {e:#})");
            }
            Err(e) => return Err(e),
        }
    }
    let files = state_files(&mp)?;
    let _ = fs::remove_file(&files.ready);
    let log = File::create(&files.log).with_context(|| format!("creating {}", files.log.display()))?;
    let exe = std::env::current_exe().context("locating the regfs binary")?;
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(exe)
        .args((0..verbose).map(|_| "-v"))
        .args(req.to_args())
        .arg("--foreground")
        .arg("--ready-file")
        .arg(&files.ready)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the regfs daemon")?;
    let start = Instant::now();
    loop {
        if files.ready.exists() {
            crate::note!("regfs: mounted {} (daemon pid {}, log {})", mp.display(), child.id(), files.log.display());
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = fs::read_to_string(&files.log).unwrap_or_default();
            bail!("the regfs daemon exited ({status}) before the mount was ready:\n{}", log.trim_end());
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            bail!("the mount was not ready after 60 s; see {}", files.log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check_mountpoint(mp: &Path) -> Result<PathBuf> {
    let mp = normalize_mountpoint(mp)?;
    let meta = fs::metadata(&mp).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::ENOTCONN) {
            format!(" (a dead FUSE mount: its daemon died; run `regfs umount {}` first)", mp.display())
        } else {
            String::new()
        };
        anyhow::Error::new(e).context(format!("mountpoint {}: cannot open{hint}", mp.display()))
    })?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", mp.display());
    }
    if let Ok(files) = state_files(&mp)
        && let Some(st) = read_state(&files.state)
        && sys::process_alive(st.pid)
    {
        bail!(
            "{} is already mounted by regfs (pid {}); run `regfs umount {}` first",
            mp.display(),
            st.pid,
            mp.display()
        );
    }
    Ok(mp)
}

/// `regfs mount --foreground`: mount, serve until unmounted or signalled.
pub fn mount_foreground(req: &MountRequest, ready_file: Option<&Path>) -> Result<()> {
    let layers = check_layers(&req.lowers, &req.upper, req.keep.as_deref(), req.policy.as_deref())?;
    let export_to = req.export.as_deref().map(|out| export::check_target(out, &layers)).transpose()?;
    let mp = check_mountpoint(&req.mountpoint)?;
    check_no_overlap(&layers, &mp)?;
    // Caught before anything is mounted: a SIGTERM the moment the view
    // appears (a kernel mount is visible at once) must unmount it, not end
    // regfs and leave the mount behind.
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP])?;
    if choose_mode(req, &layers)? == Mode::Kernel {
        match mount_kernel(req, &layers, &mp) {
            Ok(()) => {
                if let Some(r) = ready_file {
                    write_atomic(r, b"ready")?;
                }
                return serve_kernel_until_signal(&mp, &mut signals);
            }
            Err(e) if req.mode == Mode::Auto && is_permission_error(&e) => {
                tracing::info!("mode: fuse (kernel overlay not permitted here: {e:#})");
            }
            Err(e) => return Err(e),
        }
    } else {
        tracing::info!("mode: fuse");
    }
    let files = state_files(&mp)?;
    let _lock = lock_upper(&layers.upper, "a mount")?;
    let _ = fs::remove_file(&files.status);
    // The FUSE front end applies each caller's umask itself.
    sys::set_umask(0);
    let finalize = req.fsync == FsyncPolicy::Finalize;
    if finalize {
        durability::begin(&layers.upper)?;
    }
    let view = Arc::new(layers.view()?);
    let notifier = Arc::new(std::sync::OnceLock::new());
    let fs_impl = RegFs::new(Arc::clone(&view), notifier.clone(), req.passthrough, finalize)
        .context("reading the layer roots")?;

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("regfs".into()),
        fuser::MountOption::Subtype("regfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    if req.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(req.threads.max(1));
    config.clone_fd = true;
    let mut session = fuser::Session::new(fs_impl, &mp, &config)
        .with_context(|| format!("mounting {} (is /dev/fuse there, and fusermount3 installed?)", mp.display()))?;

    let _ = notifier.set(session.notifier());
    let state = MountState {
        pid: std::process::id(),
        mountpoint: mp.clone(),
        upper: layers.upper.clone(),
        lowers: layers.lowers.clone(),
        log: files.log.clone(),
        mode: Mode::Fuse,
        finish: None,
    };
    write_atomic(&files.state, &serde_json::to_vec_pretty(&state)?)?;
    if let Some(r) = ready_file {
        write_atomic(r, b"ready")?;
    }
    tracing::info!(mountpoint = %mp.display(), upper = %layers.upper.display(), lowers = layers.lowers.len(), "mounted");

    let mut unmounter = session.unmount_callable();
    let sig_handle = signals.handle();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "signal received: unmounting");
            if let Err(e) = unmounter.unmount() {
                tracing::error!(error = %e, "unmount on signal failed");
            }
        }
    });
    let served = session.run();
    sig_handle.close();
    tracing::info!(mountpoint = %mp.display(), "unmounted");
    // The upper lock is still held: the release work runs without re-locking.
    let served = served.context("serving the FUSE session");
    // Synced even when serving failed: what was written stays.
    let synced = if finalize { durability::finish(&layers.upper) } else { Ok(()) };
    let outcome = served.and(synced).and_then(|()| match &export_to {
        Some(out) => {
            let finish = Finish::of(req).unwrap_or(Finish {
                keep: None,
                policy: None,
                export: out.clone(),
                delete_untagged: false,
            });
            release_on_unmount(&view, &layers, &finish).map(|done| format!("unmounted cleanly; {done}"))
        }
        None => Ok("unmounted cleanly".to_string()),
    });
    let status = match &outcome {
        Ok(message) => ExitStatus { code: 0, message: message.clone() },
        Err(e) => ExitStatus { code: 1, message: format!("{e:#}") },
    };
    write_atomic(&files.status, &serde_json::to_vec(&status)?)?;
    let _ = fs::remove_file(&files.state);
    let _ = fs::remove_file(&files.ready);
    outcome.map(|_| ())
}

fn check_no_overlap(layers: &Layers, mp: &Path) -> Result<()> {
    for l in layers.lowers.iter().chain([&layers.upper]) {
        if store::overlaps(mp, l) {
            bail!("mountpoint {} overlaps layer {}: mount it somewhere else", mp.display(), l.display());
        }
    }
    Ok(())
}

/// `auto` picks the kernel where this process may mount overlayfs (root, or
/// root of a user namespace); a refusal then falls back to FUSE.
/// `auto`: the kernel where root may mount it, except that `--fsync
/// finalize` asks for what only the FUSE front end does.
/// Warns when a history directory belongs to another user that this one
/// may not write into: the view shows the history's owners and modes, so a
/// registry running as this user would get EACCES on every write there.
fn warn_foreign_history(layers: &Layers) {
    use std::os::unix::fs::MetadataExt;
    let me = sys::geteuid();
    if me == 0 {
        return;
    }
    for lower in layers.lowers.iter().filter(|l| !store::is_bundle_file(l)) {
        let v2 = lower.join(crate::layout::V2);
        let Ok(m) = fs::metadata(&v2) else { continue };
        let others_write = m.mode() & 0o002 != 0;
        let group_write = m.mode() & 0o020 != 0 && m.gid() == sys::getegid();
        if m.uid() != me && !others_write && !group_write {
            crate::note!(
                "regfs: warning: --lower {} belongs to uid {}, and the view shows its owners and modes: a registry \
                 running as uid {me} gets EACCES writing into its directories. Mount as that user (or root), or \
                 give this user write access to the history",
                lower.display(),
                m.uid()
            );
        }
    }
}

/// The front end a mount uses: the kernel where it may (root, `--fsync
/// full`) and every lower is a directory; FUSE otherwise.
fn choose_mode(req: &MountRequest, layers: &Layers) -> Result<Mode> {
    let bundle = layers.lowers.iter().find(|l| store::is_bundle_file(l));
    Ok(match (req.mode, bundle) {
        (Mode::Kernel, Some(tar)) => bail!(
            "--mode kernel: --lower {} is a bundle tar, and kernel overlayfs stacks only directories;              use --mode fuse (or auto), or extract it",
            tar.display()
        ),
        (Mode::Auto, Some(tar)) => {
            tracing::info!(lower = %tar.display(), "mode: fuse (a lower is a bundle tar)");
            Mode::Fuse
        }
        (Mode::Auto, None) if sys::geteuid() == 0 && req.fsync == FsyncPolicy::Full => Mode::Kernel,
        (Mode::Auto, None) => Mode::Fuse,
        (m, _) => m,
    })
}

fn is_permission_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .and_then(|e| e.raw_os_error())
            .is_some_and(|c| c == libc::EPERM || c == libc::EACCES)
    })
}

/// Materialises the policy into upper and mounts kernel overlayfs.
fn mount_kernel(req: &MountRequest, layers: &Layers, mp: &Path) -> Result<()> {
    // Held only while materialising: the kernel keeps no lock of its own
    // beyond the mountinfo entry that check_no_kernel_mount reads.
    if req.fsync == FsyncPolicy::Finalize {
        bail!("--fsync finalize needs the FUSE front end (--mode fuse): a kernel overlay passes every fsync to upper");
    }
    let _lock = lock_upper(&layers.upper, "a kernel mount")?;
    let work = req.work.clone().unwrap_or_else(|| kernel::default_workdir(&layers.upper));
    let work = kernel::prepare_workdir(&layers.upper, &work)?;
    let view = layers.view()?;
    let done = kernel::materialise(&view).context("materialising the policy as whiteouts in upper")?;
    tracing::info!(
        hidden = done.hidden,
        whiteouts = done.whiteouts,
        opaque = done.opaque,
        seconds = done.elapsed.as_secs_f64(),
        "policy materialised"
    );
    kernel::mount_overlay(&layers.lowers, &layers.upper, &work, mp).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EBUSY) => " (upper or work dir is in use by another mount)",
            Some(libc::EPERM) => " (needs CAP_SYS_ADMIN: run as root or use --mode fuse)",
            _ => "",
        };
        anyhow::Error::new(e).context(format!("mount -t overlay on {}{hint}", mp.display()))
    })?;
    tracing::info!("mode: kernel overlayfs");
    let files = state_files(mp)?;
    let state = MountState {
        pid: std::process::id(),
        mountpoint: mp.to_path_buf(),
        upper: layers.upper.clone(),
        lowers: layers.lowers.clone(),
        log: files.log.clone(),
        mode: Mode::Kernel,
        finish: Finish::of(req),
    };
    write_atomic(&files.state, &serde_json::to_vec_pretty(&state)?)?;
    crate::note!("regfs: mounted {} (kernel overlayfs, upper {})", mp.display(), layers.upper.display());
    Ok(())
}

/// `--foreground` in kernel mode: the kernel serves; wait for a signal, then unmount.
fn serve_kernel_until_signal(mp: &Path, signals: &mut signal_hook::iterator::Signals) -> Result<()> {
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "signal received: unmounting");
    }
    umount(mp, None)
}
