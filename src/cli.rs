//! The command line: argument parsing and dispatch to the front ends.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::mount::{self, MountRequest};

#[derive(Parser, Debug)]
#[command(
    name = "regfs",
    version,
    about = "A curated, copy-on-write view of docker registry storage for release builds",
    long_about = "regfs mounts the read-only history of earlier releases (registry storage \
directories) under a per-release writable upper directory. A stock registry run on the mount \
finds every blob shipped before, so pushes skip them; the history's _manifests and _uploads \
(and, with --keep, whole stale repositories) are hidden; every write goes to the upper \
directory and the history is never modified.",
    after_help = "Example:\n  regfs mount --lower /srv/history --upper /srv/release-42 /mnt/release\n  \
docker-registry serve config.yml   # rootdirectory: /mnt/release\n  \
skopeo copy ... docker://127.0.0.1:5000/app:42\n  regfs umount /mnt/release"
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount the curated view of the history with a writable upper layer.
    Mount(MountArgs),
    /// Unmount a regfs view and wait for its daemon to finish.
    Umount(UmountArgs),
}

#[derive(Args, Debug)]
struct MountArgs {
    /// A history registry rootdirectory (holds docker/registry/v2). Repeat for
    /// several; the first is the topmost. Opened read-only, never written.
    #[arg(long = "lower", value_name = "DIR", required = true)]
    lowers: Vec<PathBuf>,
    /// The writable layer for this release (created if missing). Kept in the
    /// kernel overlayfs format: whiteouts are 0/0 character devices.
    #[arg(long, value_name = "DIR")]
    upper: PathBuf,
    /// Keep only these history repositories visible: one `repo` or `repo:tag`
    /// per line, `#` comments. Other history repositories are hidden.
    #[arg(long, value_name = "FILE")]
    keep: Option<PathBuf>,
    /// JSON policy overriding the defaults, e.g.
    /// {"hide_sections": ["_manifests", "_uploads"], "keep": ["team/app"]}
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Stay in the foreground (Ctrl-C or SIGTERM unmounts cleanly).
    #[arg(long)]
    foreground: bool,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4, value_name = "N")]
    threads: usize,
    /// Let other users (e.g. a registry running as another user) use the
    /// mount. Needs `user_allow_other` in /etc/fuse.conf when not root.
    #[arg(long)]
    allow_other: bool,
    /// Front end: `kernel` materialises the policy as overlayfs whiteouts in
    /// upper and mounts overlayfs (root only); `fuse` works unprivileged;
    /// `auto` uses the kernel where permitted and says which it chose.
    #[arg(long, value_enum, default_value_t = mount::Mode::Auto)]
    mode: mount::Mode,
    /// overlayfs work dir for kernel mode; must be on upper's filesystem.
    /// Default: `.<upper name>.regfs-work` beside upper.
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,
    /// Internal: the daemon writes this file once the mount is ready.
    #[arg(long, hide = true, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// Where to mount the view (an existing directory).
    mountpoint: PathBuf,
}

#[derive(Args, Debug)]
struct UmountArgs {
    /// Give up waiting for the daemon after this many seconds (default: wait).
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// The mounted view.
    mountpoint: PathBuf,
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "regfs=info",
        1 => "regfs=debug",
        _ => "regfs=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Mount(a) => {
            let req = MountRequest {
                lowers: a.lowers,
                upper: a.upper,
                keep: a.keep,
                policy: a.policy,
                mountpoint: a.mountpoint,
                threads: a.threads,
                allow_other: a.allow_other,
                mode: a.mode,
                work: a.work,
            };
            if a.foreground {
                mount::mount_foreground(&req, a.ready_file.as_deref())
            } else {
                let args: Vec<_> = std::env::args_os().skip(1).collect();
                mount::mount_background(&req, &args)
            }
        }
        Command::Umount(a) => mount::umount(&a.mountpoint, a.timeout.map(Duration::from_secs)),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("regfs: error: {e:#}");
            1
        }
    }
}
