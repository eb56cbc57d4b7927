//! The command line: argument parsing and dispatch to the front ends.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::durability::FsyncPolicy;
use crate::export::ExportOptions;
use crate::gc::GcOptions;
use crate::mount::{self, MountRequest};

#[derive(Parser, Debug)]
#[command(
    name = "regfs",
    version,
    max_term_width = 80,
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
    /// Garbage-collect the view, registry-aware, without mounting it
    ///
    /// Unreferenced blobs, dangling links, stale repositories and uploads go
    /// (upper files deleted, history entries whited out, history untouched).
    #[command(
        after_help = "Environment:\n  REGFS_GC_THREADS=N  scan the store on N threads. Default: one per CPU, or 32 when \
the store is not in the page cache (a cold scan waits on directory reads, not on the CPU)."
    )]
    Gc(GcArgs),
    /// Check what GC trusts: every link names the digest it is filed under,
    /// every blob hashes to its digest
    ///
    /// GC takes a link's digest from its path, as distribution does; verify
    /// reads every link file and hashes every blob (in parallel), writes
    /// nothing, and lists every problem. Exit status 1 when there is one.
    Verify(VerifyArgs),
    /// Write the view as the release bundle (a tar), full or a delta
    ///
    /// An uncompressed, deterministic tar rooted like a registry
    /// rootdirectory (docker/registry/v2/...) whose first entry describes it.
    Export(ExportArgs),
    /// The whole release in one command, from images to bundle
    ///
    /// Mount the view, run the stock registry on it, copy every image with
    /// skopeo (and, byte for byte, its signatures, attestations, SBOMs and
    /// OCI 1.1 referrers), unmount, gc, write the bundle. The bundle's
    /// description holds the release's lock: each image as requested, the
    /// digest it resolved to, its platforms and attachments.
    ///
    /// With --rebuild NAME, make a release `regfs absorb` recorded in the
    /// history again, from the history alone: the same bytes.
    #[command(after_help = "Images list (--images), one reference a line, # comments:\n  \
team/app:1.4              the tag, as the source has it now\n  \
team/app@sha256:<hex>     that manifest, untagged in the bundle\n  \
team/app:1.4@sha256:<hex> the tag, refused before anything is copied if it names another manifest now\n\n\
Examples:\n  \
regfs release --history /srv/history --images images.list --from docker://build.example -o r2.tar\n  \
regfs absorb --history /srv/history --upper r2.tar.work/upper\n  \
regfs release --rebuild r2 --history /srv/history -o r2-again.tar")]
    Release(ReleaseArgs),
    /// Show what a view would show and hide, without mounting
    ///
    /// Check a --keep list or policy before a release.
    Plan(PlanArgs),
    /// Fold a finished release's new blobs into the history
    ///
    /// Adds its blobs and _layers links to the history store, so the next
    /// release reuses them. The only command that writes history; it only
    /// adds, verified, and can be re-run.
    Absorb(AbsorbArgs),
    /// Write what a site holds, to send back for the next delta
    ///
    /// Blob digests and sizes, repositories and tags, as a small file.
    #[command(after_help = "PATH is a registry rootdirectory (names and sizes are read, not blob contents, unless \
--verify), a bundle (the site after applying it) or an inventory file; several are one union.\n\n\
Example (at the site):\n  regfs inventory /var/lib/docker-registry -o site.inventory")]
    Inventory(InventoryArgs),
    /// Land bundles into a site's registry rootdirectory, verified
    ///
    /// A full one, then deltas, in order: checked whole first, then blobs
    /// before links before tags, crash-safe.
    #[command(after_help = APPLY_HELP)]
    Apply(ApplyArgs),
    /// Serve bundles in place with the stock registry, read-only
    ///
    /// Mounts the bundle tars (nothing is extracted) and runs the registry on
    /// the view until Ctrl-C.
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// Push a release from its bundles into any registry
    ///
    /// Every image of the last bundle, all platforms, digests kept; only the
    /// blobs the target lacks are uploaded.
    #[command(after_help = PUSH_HELP)]
    Push(PushArgs),
    /// Write a deterministic sample release as OCI layouts plus its images
    /// list, for demos and benchmarks (see README, scripts/demo.sh).
    #[command(hide = true)]
    Sample(SampleArgs),
}

const APPLY_HELP: &str = "Before anything is written, every bundle is checked whole: only regular files and \
directories under docker/registry/v2/, every blob it carries hashes to its digest, and every blob the release \
needs is in a bundle or already at the site. Every problem is listed at once and nothing is written. Then blobs, \
`_layers` links, manifest revisions and tags land in that order, so a registry never sees a tag whose image is \
incomplete; an interrupted apply is finished by running it again.\n\n\
Merge (default): the site keeps what it had and the release's tags are set. --replace makes the site exactly the \
last bundle's release: other repositories and tags go, then regfs's GC removes the blobs nothing references. \
Stop the registry serving the site before --replace (its blob cache goes stale when blobs vanish).\n\n\
Examples:\n  regfs apply release-41.tar --to /var/lib/docker-registry            # a new site\n  \
regfs apply release-42-delta.tar --to /var/lib/docker-registry --replace --dry-run";

const SERVE_HELP: &str = "Give a full bundle, then any deltas over it, oldest first (as for apply): the \
stack must hold every blob its releases need, or it is refused listing the missing ones. Every tag of every \
bundle is served, the newest bundle's winning where they share one (as a site that applied them all). Pushes \
and deletes are refused; the bundles are never written.\n\n\
Example:\n  regfs serve release-41.tar release-42-delta.tar --addr 0.0.0.0:5000\n  \
skopeo copy --src-tls-verify=false docker://HOST:5000/app:42 ...";

const PUSH_HELP: &str = "Give a full bundle, or deltas over bundles named before them, oldest first; the \
images of the last one are pushed, the others only lend their blobs. A delta pushed alone must find what it \
leaves out at the target: the target is asked first, and every missing manifest or blob is listed before \
anything is pushed. TLS and credentials as skopeo: --dest-tls-verify=false for a registry without TLS (or \
with a certificate this host does not trust), --dest-creds USER:PASSWORD or an auth file (--dest-authfile, \
else $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json).\n\n\
Examples:\n  regfs push release-41.tar docker://registry.example.com/product\n  \
regfs push release-42-delta.tar docker://registry.example.com/product   # the target holds release 41";

#[derive(Args, Debug)]
struct PushArgs {
    /// Bundles, oldest first, then the target: docker://HOST[:PORT][/PREFIX].
    #[arg(required = true, num_args = 2.., value_name = "BUNDLE... TARGET")]
    args: Vec<String>,
    /// Verify the target's TLS certificate (false also allows plain HTTP).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    dest_tls_verify: bool,
    /// Credentials for the target.
    #[arg(long, value_name = "USER:PASSWORD")]
    dest_creds: Option<String>,
    /// An auth file with the target's credentials (containers-auth.json format).
    #[arg(long, value_name = "FILE")]
    dest_authfile: Option<PathBuf>,
    /// The registry binary that serves the bundles to skopeo.
    #[arg(long, value_name = "FILE")]
    registry_bin: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Bundles to serve, oldest first (a full one, then deltas over it).
    #[arg(required = true, value_name = "BUNDLE")]
    bundles: Vec<PathBuf>,
    /// Address the registry listens on.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:5000")]
    addr: std::net::SocketAddr,
    /// The registry binary (default: `registry` or `docker-registry` on PATH).
    #[arg(long, value_name = "FILE")]
    registry_bin: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct InventoryArgs {
    /// Registry rootdirectories, bundles or inventory files (their union).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Write the inventory file here (atomically).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print the inventory itself (JSON) instead of its summary.
    #[arg(long)]
    json: bool,
    /// Hash every blob of a rootdirectory; corrupt ones are left out and named.
    #[arg(long)]
    verify: bool,
}

#[derive(Args, Debug)]
struct ApplyArgs {
    /// Bundles to land, in order (a full one, then deltas over it).
    #[arg(required = true, value_name = "BUNDLE")]
    bundles: Vec<PathBuf>,
    /// The site's registry rootdirectory (an existing directory; may be empty).
    #[arg(long, value_name = "ROOTDIR")]
    to: PathBuf,
    /// Make the site exactly the last bundle's release (stop its registry first).
    #[arg(long)]
    replace: bool,
    /// Check everything and print what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct SampleArgs {
    /// Release number (1, 2, ...): release N changes about one image in
    /// --changed-every since release N-1.
    #[arg(long, default_value_t = 1, value_name = "N")]
    release: u32,
    /// Images (one repository each).
    #[arg(long, default_value_t = 20, value_name = "N")]
    images: usize,
    /// About one image in this many changes per release (0: none).
    #[arg(long, default_value_t = 10, value_name = "K")]
    changed_every: usize,
    /// OS base layer size in KiB (runtime layer half, app layers an eighth).
    #[arg(long, default_value_t = 1024, value_name = "KIB")]
    base_kib: usize,
    /// Print what was written as JSON.
    #[arg(long)]
    json: bool,
    /// A new (or empty) directory for the layouts: DIR/<repo>, DIR/images.list.
    dir: PathBuf,
}

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  regfs release --history /srv/history --images images.list \\\n    \
--from oci:/build/layouts -o release-42.tar --jobs 8")]
struct ReleaseArgs {
    /// A history: a registry rootdirectory, a bundle tar, or a directory of
    /// bundle tars (repeatable, first is topmost).
    #[arg(long = "history", value_name = "DIR|TAR", required = true)]
    histories: Vec<PathBuf>,
    /// The release: one image reference per line (`repo:tag`,
    /// `repo@sha256:<hex>`, `repo:tag@sha256:<hex>`), `#` comments. Only
    /// these repositories of the history stay visible.
    #[arg(long, value_name = "FILE", required_unless_present = "rebuild")]
    images: Option<PathBuf>,
    /// Where images come from: `docker://HOST[/PREFIX]` (image
    /// docker://HOST/PREFIX/repo:tag) or `oci:DIR` (the OCI layout DIR/repo,
    /// tag as its ref name).
    #[arg(long, value_name = "SOURCE", required_unless_present = "rebuild")]
    from: Option<String>,
    /// Leave each image's signatures, attestations, SBOMs and referrers
    /// behind (by default they travel with it).
    #[arg(long)]
    no_referrers: bool,
    /// Make release NAME again from what the history recorded of it (see
    /// `regfs absorb`): no source, no registry; the same bytes as the
    /// original bundle, or an error naming what the history lacks.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["images", "from", "bases", "resume", "clean", "name"])]
    rebuild: Option<String>,
    /// The release tar to write.
    #[arg(short = 'o', long = "output", value_name = "FILE.tar")]
    output: PathBuf,
    /// Where upper, mountpoint and logs go (default: FILE.tar.work beside
    /// the tar). Kept after the run for inspection.
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Image copies at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    jobs: usize,
    /// Front end for the view (see `regfs mount --help`).
    #[arg(long, value_enum, default_value_t = mount::Mode::Auto)]
    mode: mount::Mode,
    /// GC roots are tagged manifests only.
    #[arg(long)]
    delete_untagged: bool,
    /// Print the closing summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// The registry binary (default: `registry` or `docker-registry` on PATH).
    #[arg(long, value_name = "PATH")]
    registry_bin: Option<PathBuf>,
    /// Retries of a failed image copy before the release fails.
    #[arg(long, default_value_t = 2, value_name = "N")]
    retries: u32,
    /// Verify TLS of a docker:// source (off for a plain-HTTP loopback registry).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    src_tls_verify: bool,
    /// What the site holds already (a bundle, a registry rootdirectory or an
    /// inventory file; repeatable): the tar leaves out their blobs (a delta).
    #[arg(long = "base", value_name = "BASE")]
    bases: Vec<PathBuf>,
    /// The release's name in the bundle (default: the tar's name without .tar).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Replace an existing -o FILE.tar (refused otherwise).
    #[arg(long)]
    force: bool,
    /// Continue a release that did not finish: its kept upper is mounted
    /// again and only what is missing is copied.
    #[arg(long, conflicts_with = "clean")]
    resume: bool,
    /// Start over where a release did not finish: unmount its view if still
    /// mounted, then remove its work dir (never through a mount).
    #[arg(long)]
    clean: bool,
}

#[derive(Args, Debug)]
struct PlanArgs {
    /// A history: a registry rootdirectory, a bundle tar, or a directory of
    /// bundle tars (repeatable, first is topmost).
    #[arg(long = "lower", value_name = "DIR|TAR", required = true)]
    lowers: Vec<PathBuf>,
    /// Keep list, as for `regfs mount --keep`.
    #[arg(long, value_name = "FILE")]
    keep: Option<PathBuf>,
    /// Policy file, as for `regfs mount --policy`.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct AbsorbArgs {
    /// The history store to add to (a registry rootdirectory).
    #[arg(long, value_name = "DIR")]
    history: PathBuf,
    /// The finished release's upper (after its gc; no mount may use it).
    #[arg(long, value_name = "DIR")]
    upper: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Absorb the upper of a release that did not finish (refused otherwise).
    #[arg(long)]
    force: bool,
}

/// The layers of a view: what mount, gc and export take.
#[derive(Args, Debug)]
struct LayerArgs {
    /// A history registry rootdirectory (holds docker/registry/v2), a bundle
    /// tar read in place (FUSE mode), or a directory of bundle tars (newest
    /// first). Repeat for several; the first is the topmost. Opened
    /// read-only, never written. `mount` needs one; gc and export of a single
    /// store take it as --upper alone.
    #[arg(long = "lower", value_name = "DIR|TAR")]
    lowers: Vec<PathBuf>,
    /// The writable layer for this release (mount creates it if missing; gc
    /// and export need one no mount is using). Kept in the kernel overlayfs
    /// format: whiteouts are 0/0 character devices.
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
}

impl LayerArgs {
    fn check(&self) -> anyhow::Result<crate::store::Layers> {
        if !self.upper.is_dir() {
            anyhow::bail!(
                "--upper {}: no such directory (gc and export work on the upper of an earlier mount)",
                self.upper.display()
            );
        }
        crate::store::check_layers(&self.lowers, &self.upper, self.keep.as_deref(), self.policy.as_deref())
    }
}

#[derive(Args, Debug)]
struct GcArgs {
    #[command(flatten)]
    layers: LayerArgs,
    /// Roots are tagged manifests only: untagged ones go too (children of a
    /// kept manifest list or index always stay).
    #[arg(long)]
    delete_untagged: bool,
    /// Print every path that would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the plan and report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    layers: LayerArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ExportArgs {
    #[command(flatten)]
    layers: LayerArgs,
    /// The tar to write (atomically: a temporary file beside it is renamed).
    #[arg(short = 'o', long = "output", value_name = "FILE.tar")]
    output: PathBuf,
    /// Check every blob's sha256 against its digest while writing.
    #[arg(long)]
    verify: bool,
    /// Keep real mtimes and owners (the tar is then not reproducible).
    #[arg(long)]
    keep_times: bool,
    /// What the site holds already (a bundle, a registry rootdirectory or an
    /// inventory file; repeatable): the tar leaves out their blobs (a delta).
    /// Links and manifests of the release are always all in it.
    #[arg(long = "base", value_name = "BASE")]
    bases: Vec<PathBuf>,
    /// The release's name in the bundle (default: the tar's name without .tar).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

#[derive(Args, Debug)]
struct MountArgs {
    #[command(flatten)]
    layers: LayerArgs,
    /// Stay in the foreground (Ctrl-C or SIGTERM unmounts cleanly).
    #[arg(long)]
    foreground: bool,
    /// FUSE worker threads (default: one per CPU, at least 2).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Let other users (e.g. a registry running as another user) use the
    /// mount. Needs `user_allow_other` in /etc/fuse.conf when not root.
    #[arg(long)]
    allow_other: bool,
    /// Front end: `kernel` materialises the policy as overlayfs whiteouts in
    /// upper and mounts overlayfs (root only); `fuse` works unprivileged;
    /// `auto` uses the kernel where permitted and says which it chose.
    #[arg(long, value_enum, default_value_t = mount::Mode::Auto)]
    mode: mount::Mode,
    /// Let the kernel read history files directly (FUSE passthrough, Linux
    /// 6.9+, needs CAP_SYS_ADMIN; ignored otherwise). While a history file
    /// is open this way, opening the same file for writing fails (EIO), so
    /// it is off by default.
    #[arg(long)]
    passthrough: bool,
    /// When the registry's fsyncs reach the disk. `full`: each one, before
    /// it returns (as the kernel overlay). `finalize` (FUSE only; `auto`
    /// then picks FUSE): they return at once and one syncfs of upper makes
    /// everything durable when the mount ends, before `--export` runs. If
    /// the machine goes down meanwhile, regfs later refuses that upper
    /// (its files may be incomplete) and says so; a crash of regfs alone
    /// loses nothing.
    #[arg(long, value_enum, default_value_t = FsyncPolicy::Full, value_name = "POLICY")]
    fsync: FsyncPolicy,
    /// overlayfs work dir for kernel mode; must be on upper's filesystem.
    /// Default: `.<upper name>.regfs-work` beside upper.
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,
    /// On unmount, garbage-collect the view and export it to this tar (as
    /// `regfs gc` then `regfs export -o FILE.tar`); `regfs umount` reports
    /// the outcome. The directory must exist.
    #[arg(long, value_name = "FILE.tar")]
    export: Option<PathBuf>,
    /// With --export: the on-unmount gc deletes untagged manifests too.
    #[arg(long, requires = "export")]
    delete_untagged: bool,
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

/// The log: on a terminal only warnings unless `-v` (the progress bar says
/// what is going on), written above the bar; elsewhere the plain log.
fn init_tracing(verbose: u8) {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let default = match verbose {
        0 if tty => "regfs=warn",
        0 => "regfs=info",
        1 => "regfs=debug",
        _ => "regfs=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(tty)
        .with_writer(crate::progress::Stderr)
        .try_init();
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Mount(a) if a.layers.lowers.is_empty() => Err(anyhow::anyhow!(
            "regfs mount needs at least one --lower DIR (the history the view shows under --upper); \
             to gc or export a single store, give it as --upper alone"
        )),
        Command::Mount(a) => {
            let req = MountRequest {
                lowers: a.layers.lowers,
                upper: a.layers.upper,
                keep: a.layers.keep,
                policy: a.layers.policy,
                mountpoint: a.mountpoint,
                threads: a.threads.unwrap_or_else(mount::default_threads),
                allow_other: a.allow_other,
                mode: a.mode,
                work: a.work,
                export: a.export,
                delete_untagged: a.delete_untagged,
                passthrough: a.passthrough,
                fsync: a.fsync,
            };
            if a.foreground {
                mount::mount_foreground(&req, a.ready_file.as_deref())
            } else {
                mount::mount_background(&req, cli.verbose)
            }
        }
        Command::Umount(a) => mount::umount(&a.mountpoint, a.timeout.map(Duration::from_secs)),
        Command::Verify(a) => a.layers.check().and_then(|layers| crate::gc::verify::command(&layers, a.json)),
        Command::Gc(a) => a.layers.check().and_then(|layers| {
            crate::gc::command(
                &layers,
                &GcOptions { delete_untagged: a.delete_untagged, ..Default::default() },
                a.dry_run,
                a.json,
            )
        }),
        Command::Export(a) => a.layers.check().and_then(|layers| {
            crate::export::command(
                &layers,
                &a.output,
                &ExportOptions { verify: a.verify, keep_times: a.keep_times },
                a.name.as_deref(),
                &a.bases,
            )
        }),
        Command::Release(a) => crate::release::command(&crate::release::ReleaseRequest {
            histories: a.histories,
            images: a.images.unwrap_or_default(),
            from: a.from.unwrap_or_default(),
            output: a.output,
            workdir: a.workdir,
            jobs: a.jobs,
            mode: a.mode,
            delete_untagged: a.delete_untagged,
            json: a.json,
            registry_bin: a.registry_bin,
            retries: a.retries,
            src_tls_verify: a.src_tls_verify,
            bases: a.bases,
            name: a.name,
            force: a.force,
            resume: a.resume,
            clean: a.clean,
            referrers: !a.no_referrers,
            rebuild: a.rebuild,
        }),
        Command::Plan(a) => crate::plan::command(&a.lowers, a.keep.as_deref(), a.policy.as_deref(), a.json),
        Command::Inventory(a) => crate::inventory::command(&a.paths, a.output.as_deref(), a.json, a.verify),
        Command::Apply(a) => crate::apply::command(
            &a.bundles,
            &a.to,
            &crate::apply::ApplyOptions { replace: a.replace, dry_run: a.dry_run },
            a.json,
        ),
        Command::Absorb(a) => crate::absorb::command(&a.history, &a.upper, a.json, a.force),
        Command::Push(mut a) => {
            let target = a.args.pop().unwrap_or_default();
            crate::push::command(&crate::push::PushRequest {
                bundles: a.args.into_iter().map(PathBuf::from).collect(),
                target,
                access: crate::push::Access {
                    tls_verify: a.dest_tls_verify,
                    creds: a.dest_creds,
                    authfile: a.dest_authfile,
                },
                registry_bin: a.registry_bin,
                json: a.json,
            })
        }
        Command::Serve(a) => crate::serve::command(&crate::serve::ServeRequest {
            bundles: a.bundles,
            addr: a.addr,
            registry_bin: a.registry_bin,
        }),
        Command::Sample(a) => crate::sample::command(
            &a.dir,
            &crate::sample::SampleSpec {
                release: a.release,
                images: a.images,
                changed_every: a.changed_every,
                base_kib: a.base_kib,
            },
            a.json,
        ),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("regfs: error: {e:#}");
            1
        }
    }
}
