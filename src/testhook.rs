//! Crash points for the crash tests (`tests/crash.rs`).
//!
//! `REGFS_TEST_PAUSE=POINT:N` stops the process the N-th time (from 1) it
//! reaches POINT: it prints `regfs: test pause at POINT N (pid P)` on stderr
//! and sleeps, so the test can SIGKILL it at exactly that point instead of
//! racing a timer. Points:
//! - `gc-delete`: before the N-th deletion of a gc sweep (N-1 done);
//! - `export-entry`: before the N-th tar entry of an export is written (the
//!   temporary tar beside the target exists, partly written);
//! - `apply-stage`: before the N-th blob of an apply is staged (nothing
//!   written to the site's registry tree yet);
//! - `apply-step`: before the N-th file an apply renames into place or
//!   removes (N-1 done).
//!
//! Unset, as always outside tests, it costs one environment lookup per
//! process. A pause nobody kills ends the process with status 99 after
//! [`PAUSE_LIMIT`].

use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable that arms a pause.
pub const PAUSE_VAR: &str = "REGFS_TEST_PAUSE";

/// How long a pause waits for its SIGKILL before giving up.
pub const PAUSE_LIMIT: Duration = Duration::from_secs(120);

static PAUSE: OnceLock<Option<(String, u64)>> = OnceLock::new();

fn armed() -> Option<&'static (String, u64)> {
    PAUSE
        .get_or_init(|| {
            let v = std::env::var(PAUSE_VAR).ok()?;
            let (point, n) = v.rsplit_once(':')?;
            Some((point.to_string(), n.parse().ok()?))
        })
        .as_ref()
}

/// Whether [`point`] will pause at `point` and `n` (so the caller can first
/// settle what the pause should show).
pub fn will_pause(point: &str, n: u64) -> bool {
    armed().is_some_and(|(p, at)| p == point && *at == n)
}

/// Pauses here if `REGFS_TEST_PAUSE` names `point` and `n`.
pub fn point(point: &str, n: u64) {
    if will_pause(point, n) {
        eprintln!("regfs: test pause at {point} {n} (pid {})", std::process::id());
        std::thread::sleep(PAUSE_LIMIT);
        eprintln!("regfs: test pause at {point} {n}: nobody killed this process");
        std::process::exit(99);
    }
}
