//! `regfs release`: the whole release in one command.
//!
//! mount the curated view (only the listed repositories stay visible) →
//! start the stock registry on it → copy every image with skopeo, N at a
//! time → stop the registry → unmount → GC → tar. Children never outlive the
//! command; on Ctrl-C or any failure the upper is left for inspection and no
//! tar is written. The history is only ever read.

mod attach;
pub mod children;
mod images;
mod preflight;
mod rebuild;
mod source;

use std::collections::BTreeSet;
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::mount::{self, Mode};
use crate::store;
use children::{CopyOutcome, RegistryChild, Skopeo};
pub use images::{ImageName, parse_images};

/// What `regfs release` was asked to do.
#[derive(Clone, Debug)]
pub struct ReleaseRequest {
    pub histories: Vec<PathBuf>,
    pub images: PathBuf,
    pub from: String,
    pub output: PathBuf,
    pub workdir: Option<PathBuf>,
    pub jobs: usize,
    pub mode: Mode,
    pub delete_untagged: bool,
    pub json: bool,
    pub registry_bin: Option<PathBuf>,
    pub retries: u32,
    pub src_tls_verify: bool,
    /// What the site holds already: the tar leaves out every blob of these.
    pub bases: Vec<PathBuf>,
    /// The release's name in the bundle (default: the tar's name).
    pub name: Option<String>,
    /// Replace an existing tar at `output`.
    pub force: bool,
    /// Continue a release that did not finish (its kept upper).
    pub resume: bool,
    /// Start over: unmount and remove what a release that did not finish left.
    pub clean: bool,
    /// Copy each image's signatures, attestations, SBOMs and referrers too.
    pub referrers: bool,
    /// Make this recorded release again from the history instead.
    pub rebuild: Option<String>,
}

/// Where the release's images come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `docker://host[:port][/prefix]`: image `docker://host/prefix/repo:tag`.
    Docker(String),
    /// `oci:DIR`: image `repo:tag` is the OCI layout `DIR/repo`, ref name `tag`.
    Oci(PathBuf),
}

pub fn parse_source(s: &str) -> Result<Source> {
    if let Some(rest) = s.strip_prefix("docker://") {
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() {
            bail!("--from {s}: name a registry, e.g. docker://registry.example.com");
        }
        Ok(Source::Docker(rest.to_string()))
    } else if let Some(dir) = s.strip_prefix("oci:") {
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            bail!("--from {s}: {} is not a directory of OCI layouts", dir.display());
        }
        Ok(Source::Oci(dir))
    } else {
        bail!("--from {s}: expected docker://HOST[/PREFIX] or oci:DIR")
    }
}

/// Seconds per phase, in order.
#[derive(Debug, Default, Serialize)]
pub struct Phases(Vec<(String, f64)>);

impl Phases {
    fn add(&mut self, name: &str, since: Instant) {
        self.0.push((name.to_string(), since.elapsed().as_secs_f64()));
    }
}

/// The closing summary (also the `--json` document).
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Always true here; a failure's `--json` document says false.
    pub ok: bool,
    pub images: usize,
    pub copied: usize,
    pub copy_attempts: u32,
    pub mode: String,
    pub blobs: crate::plan::BlobOrigins,
    pub gc: crate::gc::Report,
    pub tar: PathBuf,
    pub tar_bytes: u64,
    pub tar_sha256: String,
    /// The bundle's release name, its base and what it ships.
    pub release: String,
    pub base: Option<crate::bundle::BaseRef>,
    pub bundle: crate::bundle::Totals,
    /// Every tag of the release as the tar holds it: `repo:tag` and digest.
    pub tags: Vec<TagDigest>,
    /// Attachments copied (signatures, attestations, SBOMs, referrers).
    pub attachments: usize,
    /// The release's lock, as the bundle's description holds it: each image
    /// as requested, what it resolved to, its platforms and attachments.
    pub lock: Vec<crate::bundle::Locked>,
    pub upper: PathBuf,
    pub phases: Phases,
}

/// One image of a release: `repo:tag` → manifest digest.
#[derive(Debug, Serialize)]
pub struct TagDigest {
    pub image: String,
    pub digest: crate::layout::Digest,
}

/// Progress for a person on a terminal, plain log lines otherwise. On a
/// terminal each phase is a named spinner (or, for the push, a bar of
/// images with those in flight and the bytes upper holds so far); the log
/// is printed above it.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// The phase under way (what a failure names).
    current: String,
    /// Images being copied now (terminal only).
    in_flight: Arc<std::sync::Mutex<BTreeSet<String>>>,
}

/// Spinner: `{prefix}` is the phase.
const SPINNER: &str = "{spinner} {prefix:>8} {msg} {elapsed}";
/// The push: images done of all, then what is in flight.
const PUSH_BAR: &str = "{prefix:>8} [{bar:30}] {pos}/{len} images {elapsed} {msg}";

impl Progress {
    fn new() -> Progress {
        Progress { bar: None, current: "preflight".into(), in_flight: Default::default() }
    }

    fn phase(&mut self, name: &str, total: Option<u64>) {
        self.current = name.to_string();
        self.done();
        if std::io::stderr().is_terminal() {
            let style = |t: &str| indicatif::ProgressStyle::with_template(t);
            let bar = match total {
                Some(n) => indicatif::ProgressBar::new(n).with_style(
                    style(PUSH_BAR).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()).progress_chars("=> "),
                ),
                None => indicatif::ProgressBar::new_spinner()
                    .with_style(style(SPINNER).unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())),
            };
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            crate::progress::set_active(Some(bar.clone()));
            self.bar = Some(bar);
        } else {
            eprintln!("regfs release: {name}...");
        }
    }

    /// One image done.
    fn step(&self, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.inc(1);
                crate::note!("regfs release:   {msg}");
            }
            None => eprintln!("regfs release:   {msg}"),
        }
    }

    /// A handle the copy tasks report their images through.
    fn flight(&self) -> Flight {
        Flight { bar: self.bar.clone(), images: self.in_flight.clone(), upper_bytes: Default::default() }
    }

    fn done(&mut self) {
        crate::progress::set_active(None);
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// The images in flight during the push, and what upper holds, on the bar.
#[derive(Clone)]
struct Flight {
    bar: Option<indicatif::ProgressBar>,
    images: Arc<std::sync::Mutex<BTreeSet<String>>>,
    upper_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl Flight {
    fn start(&self, img: &str) {
        self.images.lock().unwrap_or_else(|p| p.into_inner()).insert(img.to_string());
        self.show();
    }
    fn end(&self, img: &str) {
        self.images.lock().unwrap_or_else(|p| p.into_inner()).remove(img);
        self.show();
    }
    fn set_upper_bytes(&self, n: u64) {
        self.upper_bytes.store(n, std::sync::atomic::Ordering::Relaxed);
        self.show();
    }
    fn show(&self) {
        let Some(bar) = &self.bar else { return };
        let names: Vec<String> = self.images.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        let shown: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
        let more = if names.len() > 3 { format!(" +{}", names.len() - 3) } else { String::new() };
        let bytes = crate::util::human_bytes(self.upper_bytes.load(std::sync::atomic::Ordering::Relaxed));
        bar.set_message(format!("{bytes} written; in flight: {}{more}", shown.join(", ")));
    }
}

/// Bytes of the files under `dir` (what the push has written to upper).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

use crate::workdir::{DONE, KEEP_LIST, RECORD};
pub use crate::workdir::{UpperOrigin, upper_origin};

/// The working directory's layout.
struct Work {
    upper: PathBuf,
    mnt: PathBuf,
    keep: PathBuf,
    dir: PathBuf,
    /// Held for the whole run: a second release on the same work dir is refused.
    _lock: WorkLock,
}

/// The work dir's lock file, flock'ed, with the pid of the release holding it.
struct WorkLock {
    _file: fs::File,
}

/// The lock file in a work dir.
const LOCK: &str = "release.lock";

impl WorkLock {
    fn take(dir: &Path) -> Result<WorkLock> {
        let path = dir.join(LOCK);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if !crate::sys::try_lock_exclusive(&file)? {
            let pid = fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "a release is running with work dir {} (pid {}): wait for it to end, or stop it (kill {}); \
                 two releases never share a work dir",
                dir.display(),
                pid.trim(),
                pid.trim()
            );
        }
        use std::io::Write;
        file.set_len(0)?;
        write!(file, "{}", std::process::id())?;
        Ok(WorkLock { _file: file })
    }
}

/// Makes the work dir of a release that did not finish fit for this run:
/// with `clean`, unmounts its view and removes it; with `resume`, keeps its
/// upper; otherwise refuses, saying which of the two to pass.
fn reclaim_work(req: &ReleaseRequest, dir: &Path, upper: &Path, mnt: &Path) -> Result<()> {
    let mounted = crate::kernel::mounts_under(dir);
    if !mounted.is_empty() {
        if !req.clean {
            bail!(
                "work dir {} still has the view of a release that did not finish mounted on {}: run \
                 `regfs umount {}`, then pass --resume to continue that release or --clean to start over \
                 (or pass --clean now: it unmounts first)",
                dir.display(),
                mounted[0].display(),
                mounted[0].display()
            );
        }
        for mp in &mounted {
            mount::umount(mp, None).with_context(|| format!("--clean: unmounting {}", mp.display()))?;
        }
        let still = crate::kernel::mounts_under(dir);
        if !still.is_empty() {
            bail!("--clean: {} is still mounted; nothing was removed", still[0].display());
        }
    }
    let held = upper.exists() && fs::read_dir(upper).map(|mut d| d.next().is_some()).unwrap_or(true);
    if req.clean {
        // Nothing below the work dir is mounted (checked above): removing
        // it cannot reach through into a view of the history.
        for p in [upper, mnt, &dir.join(KEEP_LIST), &dir.join(DONE), &dir.join(RECORD)] {
            let gone = if p.is_dir() { fs::remove_dir_all(p) } else { fs::remove_file(p) };
            match gone {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("--clean: removing {}", p.display())),
            }
        }
        return Ok(());
    }
    if held && !req.resume {
        bail!(
            "work dir {} holds the upper of an earlier release that did not finish: pass --resume to \
             continue it (only what is missing is copied) or --clean to remove it and start over",
            dir.display()
        );
    }
    if req.resume {
        // This run writes the marker again once its tar is complete.
        let _ = fs::remove_file(dir.join(DONE));
        let _ = fs::remove_file(dir.join(RECORD));
    }
    Ok(())
}

/// Checks the work dir and the tar target against the history, then
/// (`check_source` passing) creates the work dir with an empty upper, a
/// mountpoint and the keep list.
/// Nothing is created before the checks pass, so a work dir or tar placed
/// inside the history never writes there. Returns the work dir and the
/// absolute tar path.
fn prepare_work(
    req: &ReleaseRequest,
    histories: &[PathBuf],
    images: &[ImageName],
    check_source: impl FnOnce() -> Result<preflight::Checked>,
) -> Result<(Work, PathBuf, Vec<preflight::Resolved>)> {
    let output =
        store::resolve_maybe_missing(&req.output).with_context(|| format!("-o {}: bad path", req.output.display()))?;
    if output.is_file() && !req.force {
        bail!(
            "-o {}: already exists; pass --force to replace it (it is replaced only once the new tar is \
             complete), or name another file",
            req.output.display()
        );
    }
    let dir = match &req.workdir {
        Some(d) => store::resolve_maybe_missing(d).with_context(|| format!("--workdir {}: bad path", d.display()))?,
        None => {
            let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "release".into());
            output.with_file_name(format!("{name}.work"))
        }
    };
    for h in histories {
        if store::overlaps(&dir, h) {
            bail!(
                "work dir {} and --history {} overlap: put the work dir (--workdir, default beside the tar) \
                 outside every history",
                dir.display(),
                h.display()
            );
        }
    }
    let upper = dir.join("upper");
    let layers = store::Layers { lowers: histories.to_vec(), upper: upper.clone(), policy: Default::default() };
    let output = crate::export::check_target(&output, &layers)?;
    if output.starts_with(&dir) {
        bail!("-o {}: inside the work dir {}; write the tar somewhere else", req.output.display(), dir.display());
    }
    let mnt = dir.join("mnt");
    // The arguments are good: now the source, before anything is created.
    let preflight::Checked { images: resolved, sizes } = check_source()?;
    let existing = dir.ancestors().find(|a| a.is_dir()).unwrap_or(Path::new("/"));
    // Only a push that might not fit opens the history (a tar history is
    // indexed to open) to leave out what it holds.
    if let Some(sizes) = sizes.filter(|s| !preflight::fits_whole(s, existing).unwrap_or(false)) {
        let scratch = tempfile::tempdir().context("creating a scratch upper")?;
        let history = store::Layers {
            lowers: histories.to_vec(),
            upper: scratch.path().to_path_buf(),
            policy: Default::default(),
        }
        .view()
        .context("opening the history")?;
        let in_history = |d: &crate::layout::Digest| {
            history.resolve(&crate::layout::blob_data(d)).ok().flatten().is_some_and(|e| e.meta.is_file())
        };
        preflight::check_space(&sizes, in_history, &dir, existing)?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = WorkLock::take(&dir)?;
    reclaim_work(req, &dir, &upper, &mnt)?;
    for d in [&dir, &upper, &mnt] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let keep = dir.join(KEEP_LIST);
    let repos: BTreeSet<&str> = images.iter().map(|i| i.repo.as_str()).collect();
    let text: String = repos.iter().map(|r| format!("{r}\n")).collect();
    fs::write(&keep, text).with_context(|| format!("writing {}", keep.display()))?;
    Ok((Work { upper, mnt, keep, dir, _lock: lock }, output, resolved))
}

/// The mounted view; unmounted when dropped unless [`Mounted::unmount`]
/// ran, so no early return leaves a mount behind.
struct Mounted<'a> {
    mnt: &'a Path,
    active: bool,
}

impl Mounted<'_> {
    fn unmount(mut self) -> Result<()> {
        self.active = false;
        mount::umount(self.mnt, None)
    }
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        if self.active
            && let Err(e) = mount::umount(self.mnt, None)
        {
            crate::note!("regfs release: failed to unmount {}: {e:#}", self.mnt.display());
        }
    }
}

fn mount_view<'a>(req: &ReleaseRequest, work: &'a Work) -> Result<Mounted<'a>> {
    let mreq = mount::MountRequest {
        lowers: req.histories.clone(),
        upper: work.upper.clone(),
        keep: Some(work.keep.clone()),
        policy: None,
        mountpoint: work.mnt.clone(),
        threads: mount::default_threads(),
        allow_other: false,
        mode: req.mode,
        work: None,
        export: None,
        delete_untagged: false,
        passthrough: false,
        fsync: crate::durability::FsyncPolicy::Full,
    };
    mount::mount_background(&mreq, 0)?;
    Ok(Mounted { mnt: &work.mnt, active: true })
}

/// `regfs release`: the release, or with `--rebuild` a recorded one made again.
pub fn command(req: &ReleaseRequest) -> Result<()> {
    match &req.rebuild {
        Some(name) => rebuild::command(req, name),
        None => run(req).map(|_| ()),
    }
}

/// Runs the release; prints the summary. Returns the summary for tests.
/// With `--json` a failure is a JSON document on stdout too:
/// `{"ok": false, "phase": ..., "error": ...}`, the phase it failed in
/// (`preflight` before anything was mounted).
pub fn run(req: &ReleaseRequest) -> Result<Summary> {
    let mut progress = Progress::new();
    let result = run_with(req, &mut progress);
    progress.done();
    if let Err(e) = &result
        && req.json
    {
        let doc = serde_json::json!({ "ok": false, "phase": progress.current, "error": format!("{e:#}") });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    result
}

fn run_with(req: &ReleaseRequest, progress: &mut Progress) -> Result<Summary> {
    let images = parse_images(
        &fs::read_to_string(&req.images).with_context(|| format!("--images {}: cannot read", req.images.display()))?,
        &req.images,
    )?;
    let source = parse_source(&req.from)?;
    if req.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    // Fail before mounting when the tools are missing or the tar cannot go
    // where asked (a bad -o found after the push would waste the push).
    let registry_bin = children::find_registry(req.registry_bin.as_deref())?;
    let skopeo = Skopeo::find(req.src_tls_verify)?;
    // Where the mount records itself: a problem there surfaces now, not after mounting.
    mount::runtime_dir()?;
    let histories = store::check_lowers(&req.histories, "--history")?;
    let spec = crate::export::bundle_spec(&req.output, req.name.as_deref(), &req.bases)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let store = source.store(req.src_tls_verify)?;
    let (work, output, resolved) = prepare_work(req, &histories, &images, || {
        runtime.block_on(preflight::check_source(&skopeo, &source, &store, &images, req.jobs, req.referrers))
    })?;
    let plan = CopyPlan { images: &images, resolved: &resolved, store };
    let interrupts = Interrupts::install(&runtime)?;
    let summary =
        release_in(req, &runtime, &interrupts, &work, &output, &spec, &plan, &registry_bin, &skopeo, progress)
            .with_context(|| format!("release failed: no tar written; upper kept in {}", work.upper.display()))?;
    print_summary(&summary, req.json)?;
    Ok(summary)
}

/// The release once its work dir is ready: mount, push, unmount, gc, tar.
#[allow(clippy::too_many_arguments)]
fn release_in(
    req: &ReleaseRequest,
    runtime: &tokio::runtime::Runtime,
    interrupts: &Interrupts,
    work: &Work,
    output: &Path,
    spec: &crate::export::BundleSpec,
    plan: &CopyPlan,
    registry_bin: &Path,
    skopeo: &Skopeo,
    progress: &mut Progress,
) -> Result<Summary> {
    let mut phases = Phases::default();
    let t = Instant::now();
    progress.phase("mount", None);
    let mounted = mount_view(req, work)?;
    phases.add("mount", t);
    interrupts.check("mounting")?;
    let mode = if crate::kernel::overlay_using_upper(&work.upper).is_some() { "kernel" } else { "fuse" };

    let pushed = runtime.block_on(push_all(req, registry_bin, skopeo, plan, work, interrupts, &mut phases, progress));
    progress.done();
    if pushed.is_ok() {
        progress.current = "unmount".into();
    }
    // Unmount whatever happened; a failed push keeps upper for inspection.
    let t = Instant::now();
    let unmounted = mounted.unmount();
    phases.add("unmount", t);
    let attempts = match pushed {
        Ok(a) => a,
        Err(e) => {
            if let Err(u) = unmounted {
                crate::note!("regfs release: also failed to unmount {}: {u:#}", work.mnt.display());
            }
            return Err(e);
        }
    };
    unmounted?;

    interrupts.check("the push")?;
    let layers = store::check_layers(&req.histories, &work.upper, Some(&work.keep), None)?;
    let _lock = store::lock_upper(&layers.upper, "the release GC")?;
    let view = layers.view()?;
    let t = Instant::now();
    progress.phase("gc", None);
    let gc_opts = crate::gc::GcOptions { delete_untagged: req.delete_untagged, pinned: plan.pinned() };
    let (_, gc_report) = crate::gc::run(&view, &gc_opts, false)?;
    phases.add("gc", t);
    let blobs = crate::plan::blob_origins(&view)?;
    interrupts.check("the gc")?;
    let t = Instant::now();
    progress.phase("export", None);
    let spec = crate::export::BundleSpec { lock: plan.lock(), ..spec.clone() };
    let tar = crate::export::export(&view, output, &crate::export::ExportOptions::default(), &spec)
        .with_context(|| format!("writing {}", output.display()))?;
    let tar_sha256 = sha256_file(output)?;
    phases.add("export", t);
    progress.done();
    if let Err(e) = interrupts.check("the export") {
        let _ = fs::remove_file(output);
        return Err(e);
    }
    let described = crate::bundle::read_description(output)
        .map_err(|e| anyhow::anyhow!("{}: reading back its description: {e}", output.display()))?;
    let tags = described
        .images
        .iter()
        .map(|i| TagDigest { image: format!("{}:{}", i.repo, i.tag), digest: i.digest })
        .collect();
    let done = serde_json::json!({ "tar": output, "sha256": tar_sha256 });
    let record = crate::bundle::record::Record::new(&described, &tar_sha256, tar.tar_bytes);
    crate::util::write_atomic(&work.dir.join(RECORD), &record.to_bytes())
        .with_context(|| format!("writing the release's record into {}", work.dir.display()))?;
    crate::util::write_atomic(&work.dir.join(DONE), done.to_string().as_bytes())
        .with_context(|| format!("marking {} finished", work.dir.display()))?;

    Ok(Summary {
        ok: true,
        images: plan.images.len(),
        copied: plan.images.len(),
        attachments: plan.resolved.iter().map(|r| r.attachments.len()).sum(),
        lock: described.lock.clone(),
        copy_attempts: attempts,
        mode: mode.to_string(),
        blobs,
        gc: gc_report,
        tar: output.to_path_buf(),
        tar_bytes: tar.tar_bytes,
        tar_sha256,
        release: tar.release.clone(),
        base: tar.base.clone(),
        bundle: tar.totals,
        tags,
        upper: work.upper.clone(),
        phases,
    })
}

/// Ctrl-C, SIGTERM (a cancelled CI job) and SIGHUP, caught for the whole
/// release: the push stops at once (every skopeo child killed, the registry
/// stopped, the view unmounted); mount, gc and export stop when their phase
/// ends (a tar just exported is removed), so neither a mount, a child nor a
/// tar is left behind.
struct Interrupts {
    caught: tokio::sync::watch::Receiver<Option<&'static str>>,
}

impl Interrupts {
    fn install(runtime: &tokio::runtime::Runtime) -> Result<Interrupts> {
        use tokio::signal::unix::{SignalKind, signal};
        let _context = runtime.enter();
        let mut int = signal(SignalKind::interrupt()).context("catching SIGINT")?;
        let mut term = signal(SignalKind::terminate()).context("catching SIGTERM")?;
        let mut hup = signal(SignalKind::hangup()).context("catching SIGHUP")?;
        let (tx, caught) = tokio::sync::watch::channel(None);
        runtime.spawn(async move {
            let name = tokio::select! {
                _ = int.recv() => "Ctrl-C",
                _ = term.recv() => "SIGTERM",
                _ = hup.recv() => "SIGHUP",
            };
            crate::note!("regfs release: {name}: stopping (no tar will be written)");
            let _ = tx.send(Some(name));
        });
        Ok(Interrupts { caught })
    }

    /// Fails if a signal came during `phase`.
    fn check(&self, phase: &str) -> Result<()> {
        match *self.caught.borrow() {
            Some(name) => bail!("interrupted ({name}) during {phase}"),
            None => Ok(()),
        }
    }

    /// Waits for a signal; names it.
    async fn wait(&self) -> &'static str {
        let mut caught = self.caught.clone();
        match caught.wait_for(Option::is_some).await {
            Ok(name) => name.unwrap_or("a signal"),
            // The catcher is gone (runtime shutting down): never fires.
            Err(_) => std::future::pending().await,
        }
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    let d = crate::util::sha256_file(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(d.hex().to_string())
}

#[allow(clippy::too_many_arguments)]
async fn push_all(
    req: &ReleaseRequest,
    registry_bin: &Path,
    skopeo: &Skopeo,
    plan: &CopyPlan<'_>,
    work: &Work,
    interrupts: &Interrupts,
    phases: &mut Phases,
    progress: &mut Progress,
) -> Result<u32> {
    let t = Instant::now();
    progress.phase("registry", None);
    let mut registry = RegistryChild::start(registry_bin, &work.mnt, &work.dir).await?;
    phases.add("registry start", t);

    let t = Instant::now();
    progress.phase("push", Some(plan.images.len() as u64));
    let outcome = tokio::select! {
        r = copy_images(req, skopeo, plan, registry.addr(), &work.upper, progress) => r,
        sig = interrupts.wait() => Err(anyhow!("interrupted ({sig}): copies stopped")),
    };
    phases.add("push", t);
    let t = Instant::now();
    let stopped = registry.stop().await;
    phases.add("registry stop", t);
    // A write that failed in the registry shows only as a 5xx to skopeo:
    // the registry's log says why.
    let attempts = outcome.map_err(|e| match registry.write_failure(&work.upper) {
        Some(cause) => e.context(cause),
        None => e,
    })?;
    stopped?;
    Ok(attempts)
}

/// Copies every image, `--jobs` at a time. The first copy that fails for
/// good (after its retries) stops the release: copies not started are not
/// started, running ones are killed; the release fails as a whole anyway.
async fn copy_images(
    req: &ReleaseRequest,
    skopeo: &Skopeo,
    plan: &CopyPlan<'_>,
    dest: std::net::SocketAddr,
    upper: &Path,
    progress: &Progress,
) -> Result<u32> {
    let limit = Arc::new(tokio::sync::Semaphore::new(req.jobs));
    let mut set = tokio::task::JoinSet::new();
    let flight = progress.flight();
    let registry = crate::client::TargetRef { host: dest.to_string(), prefix: String::new() };
    let client = Arc::new(crate::client::Target::new(&registry, &crate::client::Access::default())?);
    for (img, resolved) in plan.images.iter().zip(plan.resolved) {
        let (limit, skopeo, img, flight) = (limit.clone(), skopeo.clone(), img.clone(), flight.clone());
        let (store, client, resolved) = (plan.store.clone(), client.clone(), resolved.clone());
        let dst = format!("docker://{dest}/{}", img.dest_reference(&resolved.digest));
        let retries = req.retries;
        let attached_count = resolved.attachments.len();
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let name = img.to_string();
            flight.start(&name);
            let start = Instant::now();
            let mut outcome = match &resolved.copy_from {
                Some(src) => skopeo.copy_with_retries(src, &dst, retries).await,
                None => {
                    let (store, client, repo, tag) = (store.clone(), client.clone(), img.repo.clone(), img.tag.clone());
                    let d = resolved.digest;
                    blocking_with_retries(retries, start, move || {
                        attach::copy_raw(store.as_ref(), &client, &repo, &d, tag.as_deref())
                    })
                    .await
                }
            };
            if let CopyOutcome::Copied { attempts, .. } = outcome
                && !resolved.attachments.is_empty()
            {
                let repo = img.repo.clone();
                let attached = blocking_with_retries(retries, start, move || {
                    for a in &resolved.attachments {
                        attach::copy_raw(store.as_ref(), &client, &repo, &a.digest, a.tag.as_deref())?;
                    }
                    Ok(())
                })
                .await;
                outcome = match attached {
                    CopyOutcome::Copied { attempts: more, seconds } => {
                        CopyOutcome::Copied { attempts: attempts + more - 1, seconds }
                    }
                    CopyOutcome::Failed { attempts: more, message } => CopyOutcome::Failed {
                        attempts: attempts + more,
                        message: format!("copying its signatures and referrers: {message}"),
                    },
                };
            }
            flight.end(&name);
            (img, outcome, attached_count)
        });
    }
    // What upper holds so far, twice a second (on a terminal only).
    let watcher = flight.bar.is_some().then(|| {
        let (flight, upper) = (flight.clone(), upper.to_path_buf());
        tokio::spawn(async move {
            loop {
                let dir = upper.clone();
                if let Ok(n) = tokio::task::spawn_blocking(move || tree_bytes(&dir)).await {
                    flight.set_upper_bytes(n);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    });
    let result = collect_copies(&mut set, plan.images.len(), progress).await;
    if let Some(w) = watcher {
        w.abort();
    }
    result
}

/// Runs a blocking copy (regfs's own client) up to `retries` more times.
async fn blocking_with_retries(
    retries: u32,
    start: Instant,
    copy: impl Fn() -> Result<()> + Send + Sync + 'static,
) -> CopyOutcome {
    let copy = Arc::new(copy);
    let mut last = String::new();
    for attempt in 1..=retries + 1 {
        let c = copy.clone();
        match tokio::task::spawn_blocking(move || c()).await {
            Ok(Ok(())) => return CopyOutcome::Copied { attempts: attempt, seconds: start.elapsed().as_secs_f64() },
            Ok(Err(e)) => last = format!("{e:#}"),
            Err(e) => last = format!("the copy task failed: {e}"),
        }
        tracing::warn!(attempt, error = %last, "copy failed");
        if attempt <= retries {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
    }
    CopyOutcome::Failed { attempts: retries + 1, message: last }
}

/// What the push copies: each image as listed, what it resolved to at the
/// source, and the source read directly (for attachments).
struct CopyPlan<'a> {
    images: &'a [ImageName],
    resolved: &'a [preflight::Resolved],
    store: Arc<dyn source::SourceStore>,
}

impl CopyPlan<'_> {
    /// Every image's manifest, kept by GC whether tagged or not.
    fn pinned(&self) -> Vec<(String, crate::layout::Digest)> {
        self.images.iter().zip(self.resolved).map(|(i, r)| (i.repo.clone(), r.digest)).collect()
    }

    /// The release's lock (platforms are filled in from the view).
    fn lock(&self) -> Vec<crate::bundle::Locked> {
        self.images
            .iter()
            .zip(self.resolved)
            .map(|(i, r)| crate::bundle::Locked {
                requested: i.to_string(),
                repo: i.repo.clone(),
                tag: i.tag.clone(),
                digest: r.digest,
                platforms: Vec::new(),
                attachments: r.attachments.clone(),
            })
            .collect()
    }
}

/// Waits for the copies; the first that fails for good stops the rest.
async fn collect_copies(
    set: &mut tokio::task::JoinSet<(ImageName, CopyOutcome, usize)>,
    total: usize,
    progress: &Progress,
) -> Result<u32> {
    let mut attempts = 0;
    let mut copied = 0;
    while let Some(joined) = set.join_next().await {
        let (img, outcome, attached) = joined.context("an image copy task failed")?;
        match outcome {
            CopyOutcome::Copied { attempts: a, seconds } => {
                attempts += a;
                copied += 1;
                let with = match attached {
                    0 => String::new(),
                    1 => ", with 1 attachment".to_string(),
                    n => format!(", with {n} attachments"),
                };
                progress.step(&format!(
                    "{img} ({seconds:.1} s{with}{})",
                    if a > 1 { format!(", {a} attempts") } else { String::new() }
                ));
            }
            CopyOutcome::Failed { attempts: a, message } => {
                progress.step(&format!("{img} FAILED"));
                set.abort_all();
                let tries = if a == 1 { "1 attempt".to_string() } else { format!("{a} attempts") };
                bail!(
                    "copying {img} failed ({tries}; {copied} of {total} images were copied, the rest stopped):\n  {message}"
                );
            }
        }
    }
    Ok(attempts)
}

fn print_summary(s: &Summary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    use crate::util::human_bytes;
    println!("release {} ({} mode)", s.tar.display(), s.mode);
    println!(
        "  images copied   {}/{} ({} copy runs), with {} attachments (signatures, attestations, SBOMs, referrers)",
        s.copied, s.images, s.copy_attempts, s.attachments
    );
    println!(
        "  blobs           {} uploaded ({}), {} reused from history ({})",
        s.blobs.uploaded,
        human_bytes(s.blobs.uploaded_bytes),
        s.blobs.reused,
        human_bytes(s.blobs.reused_bytes)
    );
    println!("  gc              {}", s.gc.summary());
    println!("  tar             {} sha256:{}", human_bytes(s.tar_bytes), s.tar_sha256);
    let kind = match &s.base {
        Some(b) => format!("delta of {} against a base of {} blobs ({})", s.release, b.blobs, human_bytes(b.bytes)),
        None => format!("full bundle of {}", s.release),
    };
    println!(
        "  bundle          {kind}: ships {} of the {} blobs the release needs ({} of {})",
        s.bundle.blobs_shipped,
        s.bundle.blobs_needed,
        human_bytes(s.bundle.bytes_shipped),
        human_bytes(s.bundle.bytes_needed)
    );
    let phases: Vec<String> = s.phases.0.iter().map(|(n, t)| format!("{n} {t:.1}s")).collect();
    println!("  time            {}", phases.join(", "));
    println!("  upper           {}", s.upper.display());
    Ok(())
}
