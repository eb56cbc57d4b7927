//! Mount guards: every mount a test makes is undone when the guard drops,
//! even when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The regfs binary under test (`REGFS_BIN` overrides, for the non-root pass
/// that runs copies of the test binaries).
pub fn regfs_bin() -> PathBuf {
    std::env::var_os("REGFS_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_regfs")))
}

/// Runs `regfs ARGS` and returns its output.
pub fn regfs<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(regfs_bin()).args(args).output().expect("running the regfs binary")
}

/// Runs regfs, which must succeed.
pub fn ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let out = regfs(args);
    assert!(out.status.success(), "regfs {} failed:\n{}", show(args), text(&out));
    out
}

/// Runs regfs, which must fail; returns its stderr.
pub fn refused<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = regfs(args);
    assert!(!out.status.success(), "regfs {} must fail:\n{}", show(args), text(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A command line, for messages.
pub fn show<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

/// A command's stdout as JSON.
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", text(o)))
}

/// The front end the mount-based suites run against: `REGFS_TEST_MODE`
/// (`fuse` or `kernel`), `fuse` by default. scripts/test.sh runs the view
/// suite in both.
pub fn test_mode() -> String {
    std::env::var("REGFS_TEST_MODE").unwrap_or_else(|_| "fuse".into())
}

pub fn is_root() -> bool {
    regfs::sys::geteuid() == 0
}

/// A command's status and output, for failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether `path` is a mountpoint (a dead FUSE mount answers ENOTCONN).
pub fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Err(e) => e.raw_os_error() == Some(libc::ENOTCONN),
        Ok(m) => std::fs::metadata(path.parent().expect("a parent")).expect("stat parent").dev() != m.dev(),
    }
}

/// A mounted regfs view; unmounted on drop.
pub struct Mount {
    pub mountpoint: PathBuf,
    /// What `regfs mount` printed (e.g. "daemon pid N").
    pub stderr: String,
    active: bool,
}

impl Mount {
    /// `regfs mount --lower L... --upper U EXTRA... MP`; panics with regfs's
    /// own message when mounting fails (no FUSE means a failed test).
    pub fn fuse(lowers: &[&Path], upper: &Path, mp: &Path, extra: &[&str]) -> Mount {
        Self::try_fuse(lowers, upper, mp, extra).unwrap_or_else(|e| panic!("regfs mount failed:\n{e}"))
    }

    pub fn try_fuse(lowers: &[&Path], upper: &Path, mp: &Path, extra: &[&str]) -> Result<Mount, String> {
        std::fs::create_dir_all(mp).expect("mkdir mountpoint");
        let mut cmd = Command::new(regfs_bin());
        cmd.arg("mount");
        for l in lowers {
            cmd.arg("--lower").arg(l);
        }
        cmd.arg("--upper").arg(upper);
        if !extra.contains(&"--mode") {
            cmd.arg("--mode").arg(test_mode());
        }
        cmd.args(extra).arg(mp);
        let out = cmd.output().expect("running regfs mount");
        if out.status.success() {
            Ok(Mount {
                mountpoint: mp.to_path_buf(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                active: true,
            })
        } else {
            Err(text(&out))
        }
    }

    /// The FUSE daemon's pid, from `regfs mount`'s "daemon pid N".
    pub fn daemon_pid(&self) -> u32 {
        let pid = self.stderr.split("daemon pid ").nth(1).and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next());
        pid.and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no \"daemon pid N\" in regfs mount's output:\n{}", self.stderr))
    }

    /// `regfs umount`, asserting it succeeds; returns its output.
    pub fn umount(mut self) -> Output {
        self.active = false;
        let out = regfs(["umount".as_ref(), self.mountpoint.as_os_str()]);
        assert!(out.status.success(), "regfs umount failed:\n{}", text(&out));
        out
    }

    /// `regfs umount` without asserting (for failure-path tests).
    pub fn umount_status(mut self) -> Output {
        self.active = false;
        regfs(["umount".as_ref(), self.mountpoint.as_os_str()])
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let out = regfs(["umount".as_ref(), self.mountpoint.as_os_str()]);
        if !out.status.success() {
            detach(&self.mountpoint);
        }
    }
}

/// Last resort: detaches whatever is mounted on `mp` (lazily, busy or dead),
/// so a failed test leaves no mount behind.
pub fn detach(mp: &Path) {
    let _ = Command::new("fusermount3").arg("-uz").arg(mp).status();
    if is_root() {
        let _ = regfs::sys::umount(mp, true);
    }
}

/// A kernel overlayfs mount made by the test itself (needs root).
pub struct KernelOverlay {
    pub mountpoint: PathBuf,
}

impl KernelOverlay {
    /// `mount -t overlay` with `lowerdir=L1:L2..,upperdir=U,workdir=W`.
    pub fn mount(lowers: &[&Path], upper: &Path, work: &Path, mp: &Path) -> KernelOverlay {
        assert!(is_root(), "kernel overlay tests need root (CI runs them as root)");
        for d in [work, mp] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let lowerdir: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
        let data = format!("lowerdir={},upperdir={},workdir={}", lowerdir.join(":"), upper.display(), work.display());
        regfs::sys::mount("overlay", mp, "overlay", &data)
            .unwrap_or_else(|e| panic!("mount -t overlay -o {data}: {e}"));
        KernelOverlay { mountpoint: mp.to_path_buf() }
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        if regfs::sys::umount(&self.mountpoint, false).is_err() {
            let _ = regfs::sys::umount(&self.mountpoint, true);
        }
    }
}
