//! The progress bar a command shows on a terminal, and the log writer that
//! keeps tracing lines (and regfs's own notes) from printing over it.

use std::io::{self, Write};
use std::sync::Mutex;

use indicatif::ProgressBar;

/// The bar on screen, if any.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn active() -> std::sync::MutexGuard<'static, Option<ProgressBar>> {
    ACTIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes `bar` the one on screen (`None`: none).
pub fn set_active(bar: Option<ProgressBar>) {
    *active() = bar;
}

/// Runs `f` with the bar (if any) taken off the screen, then redrawn.
pub fn above_bar<T>(f: impl FnOnce() -> T) -> T {
    let bar = active().clone();
    match bar {
        Some(b) => b.suspend(f),
        None => f(),
    }
}

/// stderr, written above the bar.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        above_bar(|| io::stderr().write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Stderr;
    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}

/// `eprintln!` above the bar.
#[macro_export]
macro_rules! note {
    ($($t:tt)*) => { $crate::progress::above_bar(|| eprintln!($($t)*)) };
}
