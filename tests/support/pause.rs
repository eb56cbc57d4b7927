//! Stopping regfs at an exact point (`REGFS_TEST_PAUSE`, see
//! `src/testhook.rs`) and killing it there, for the crash tests.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::mount::regfs_bin;

/// How a run armed with a pause went.
pub enum Paused {
    /// It paused there; kill it with [`kill`].
    At(Child),
    /// It ended first (the point lies past its work), with its stderr.
    Ended(ExitStatus, String),
}

/// Starts `regfs ARGS` with `REGFS_TEST_PAUSE=POINT:N`; panics (after
/// killing it) if it neither pauses nor ends within 30 s.
pub fn run_to_pause<S: AsRef<OsStr>>(args: &[S], point: &str, n: u64) -> Paused {
    let shown: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    let mut child = Command::new(regfs_bin())
        .args(args)
        .env(regfs::testhook::PAUSE_VAR, format!("{point}:{n}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the regfs binary");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let want = format!("regfs: test pause at {point} {n} (pid {})", child.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line == want => return Paused::At(child),
            Ok(line) => seen.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = regfs::sys::kill(child.id(), libc::SIGKILL);
                let _ = child.wait();
                panic!("regfs {} did not pause at {point} {n} within 30 s:\n{}", shown.join(" "), seen.join("\n"));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().expect("waiting for regfs");
                return Paused::Ended(status, seen.join("\n"));
            }
        }
    }
}

/// SIGKILLs a paused child and reaps it.
pub fn kill(mut child: Child) {
    regfs::sys::kill(child.id(), libc::SIGKILL).expect("kill -9 our own child");
    let status = child.wait().expect("waiting for regfs");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "regfs ended by itself ({status}) instead of being killed");
}
