//! Registry-aware garbage collection of a view: mark, then sweep.
//!
//! GC works on the layers through the view core, without FUSE, so it runs
//! offline, after a crash or after a kernel-mode mount. Every deletion goes
//! through the view: upper files are deleted, lower entries get whiteouts,
//! lowers are never written.
//!
//! **Mark.** Repositories are the directories under `repositories/` that
//! hold a section (`_layers`, `_manifests` or `_uploads`). The roots are
//! every manifest revision of every repository or, with `delete_untagged`,
//! the revisions a tag's `current/link` names. From each root GC follows
//! references recursively (see [`manifest`]): config and layers, child
//! manifests of a list or index (kept even when untagged: the stock tool's
//! `-m` bug of deleting them does not exist here), `subject`, schema1
//! `fsLayers`. A marked foreign layer without data is fine; another marked
//! blob without data is a warning.
//!
//! **Sweep.** Deleted: unmarked blobs (and blob directories without data);
//! `_layers` links whose blob is unmarked or has no data; revisions of
//! unmarked manifests and their tag history entries; tags whose `current`
//! names no kept revision of their repository; repositories left without a
//! revision (stale: not pushed in this release), whole; every `_uploads`;
//! directories left empty, except the store skeleton and the section
//! directories of live repositories.
//!
//! **Safety.** The plan is computed completely before anything is deleted.
//! A link's digest is its directory's name (as distribution takes it): a
//! name that is no digest, a tag's `current/link` that is not exactly
//! `sha256:<64 lowercase hex>`, a manifest that does not parse or does not
//! hash to its digest, a manifest a root or index names whose data is
//! missing, or anything unexpected in the blob store stops GC with an error
//! naming the file by its view path. The content of the other link files is
//! checked by `regfs verify` ([`verify`]), not on every GC.

pub mod manifest;
mod report;
mod scan;
pub mod verify;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

use crate::layout::{self, Digest, Section};
use crate::store::{self, Layers};
use crate::view::{Named, UPPER, View};
pub use report::{KindReport, Report, Tally, human_bytes};
use scan::{BlobData, BlobScan, RepoScan, Scanner};

/// What a GC run may delete beyond garbage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcOptions {
    /// Roots are tagged manifests only: untagged ones (and what only they
    /// reference) go, except children of a kept list or index and
    /// referrers of a kept manifest.
    pub delete_untagged: bool,
    /// Manifests kept as roots, tagged or not: (repository, digest). A
    /// release pins the images it was asked for by digest.
    pub pinned: Vec<(String, Digest)>,
}

/// What one planned deletion removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A blob directory (`blobs/sha256/<xx>/<hex>`).
    Blob,
    /// A `_layers/sha256/<hex>` link directory.
    LayerLink,
    /// A manifest revision (`_manifests/revisions/sha256/<hex>`).
    Manifest,
    /// A tag history entry (`_manifests/tags/<tag>/index/sha256/<hex>`).
    TagHistory,
    /// A whole tag directory.
    Tag,
    /// A section of a stale repository (`_layers`, `_manifests`).
    Repository,
    /// A repository's `_uploads`.
    Upload,
    /// A directory left empty.
    EmptyDir,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Blob,
        Kind::LayerLink,
        Kind::Manifest,
        Kind::TagHistory,
        Kind::Tag,
        Kind::Repository,
        Kind::Upload,
        Kind::EmptyDir,
    ];

    /// The name used in plans and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::LayerLink => "layer_link",
            Kind::Manifest => "manifest",
            Kind::TagHistory => "tag_history",
            Kind::Tag => "tag",
            Kind::Repository => "repository",
            Kind::Upload => "upload",
            Kind::EmptyDir => "empty_dir",
        }
    }

    /// The name used in human reports.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Blob => "blobs",
            Kind::LayerLink => "layer links",
            Kind::Manifest => "manifests (revisions)",
            Kind::TagHistory => "tag history entries",
            Kind::Tag => "tags",
            Kind::Repository => "repositories",
            Kind::Upload => "uploads",
            Kind::EmptyDir => "empty directories",
        }
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

fn lossy<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&p.display())
}

/// One path the sweep removes (with everything below it).
#[derive(Clone, Debug, Serialize)]
pub struct Deletion {
    pub kind: Kind,
    /// View path, relative to the registry root.
    #[serde(serialize_with = "lossy")]
    pub path: PathBuf,
    /// The repository it belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Files removed from upper and their bytes: the space the deletion
    /// frees. History entries are hidden by a whiteout, which frees nothing
    /// (and GC does not read them to size them).
    pub files: u64,
    pub bytes: u64,
    /// Only a lower holds it (a history blob): the sweep hides it with a
    /// whiteout and nothing else.
    #[serde(skip)]
    pub lower_only: bool,
}

/// A complete GC plan: nothing is deleted until it exists.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub delete_untagged: bool,
    /// In sweep order: everything under `repositories/` (links, tags,
    /// sections), then blobs, then empty directories deepest first. So a
    /// sweep cut short (killed, or failed part way) never leaves a link or
    /// revision naming a deleted blob, which the next gc would refuse.
    pub deletions: Vec<Deletion>,
    /// What stays, per kind (repositories: the live ones).
    pub kept: BTreeMap<Kind, Tally>,
    /// Manifests read and parsed while marking.
    pub manifests_read: u64,
    pub warnings: Vec<String>,
}

/// Why GC stopped before deleting anything.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("{path}: {msg}")]
    Bad { path: String, msg: String },
    /// The cause follows in the error chain (`{:#}`), not in this message.
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn bad(path: &Path, msg: impl Into<String>) -> GcError {
    GcError::Bad { path: path.display().to_string(), msg: msg.into() }
}

/// A manifest to read while marking.
#[derive(Clone, Debug)]
struct Pending {
    digest: Digest,
    /// Who names it (a link file or a manifest), for error messages.
    origin: String,
    /// Whether its data must be present (roots and index children).
    required: bool,
}

#[derive(Default)]
struct Marks {
    marked: FxHashSet<Digest>,
    /// Manifests read and parsed.
    read: FxHashSet<Digest>,
    /// The plain blobs each manifest read names (what its repository must
    /// link in `_layers`).
    blobs_of: FxHashMap<Digest, Vec<Digest>>,
    /// The data of every marked blob the store holds.
    data: FxHashMap<Digest, BlobData>,
    /// Marked blobs taken as a manifest sizes them (their directory listed,
    /// not looked into).
    sized: FxHashMap<Digest, u64>,
    /// Marked manifests without data (a subject not in the store).
    absent: FxHashSet<Digest>,
    warnings: Vec<String>,
}

/// The blobs of the store, sorted by digest (so in path order too), and
/// the scanner that finds their data.
struct Store<'s> {
    sc: &'s Scanner<'s>,
    blobs: Vec<BlobScan>,
}

impl<'s> Store<'s> {
    fn new(sc: &'s Scanner<'s>, mut blobs: Vec<BlobScan>) -> Store<'s> {
        // The scan lists them in this order already; sorting is the guard.
        if !blobs.is_sorted_by(|a, b| a.digest < b.digest) {
            blobs.sort_unstable_by_key(|b| b.digest);
        }
        Store { sc, blobs }
    }

    /// Whether the store lists a blob directory for `d`.
    fn lists(&self, d: &Digest) -> bool {
        self.blobs.binary_search_by(|b| b.digest.cmp(d)).is_ok()
    }

    fn data(&self, d: &Digest) -> Result<BlobData, GcError> {
        match self.blobs.binary_search_by(|b| b.digest.cmp(d)) {
            Ok(i) => self.sc.blob_data(&self.blobs[i]),
            Err(_) => Ok(None),
        }
    }

    /// Reads a manifest; also returns what its data lookup found.
    fn read_manifest(&self, p: &Pending) -> Result<(BlobData, Option<manifest::Refs>), GcError> {
        let path = layout::blob_data(&p.digest);
        let data = self.data(&p.digest)?;
        let Some(entry) = &data else {
            if p.required {
                return Err(bad(
                    &path,
                    format!("manifest {} named by {} has no data in the store", p.digest, p.origin),
                ));
            }
            return Ok((data, None));
        };
        let size = entry.meta.size;
        if size > manifest::MAX_MANIFEST_BYTES {
            return Err(bad(&path, format!("{size} bytes: too large to be a manifest (named by {})", p.origin)));
        }
        let bytes = self
            .sc
            .view()
            .open_read(&path, entry, 0)
            .and_then(|f| f.read_all(size))
            .map_err(|source| GcError::Io { path: path.display().to_string(), source })?;
        if Digest::of(&bytes) != p.digest {
            return Err(bad(
                &path,
                format!("the data does not hash to {} (corrupt blob; named by {})", p.digest, p.origin),
            ));
        }
        let refs = manifest::references(&bytes)
            .map_err(|e| bad(&path, format!("manifest named by {} does not parse: {e}", p.origin)))?;
        Ok((data, Some(refs)))
    }
}

/// Marks everything reachable from `roots`, level by level; each level's
/// manifests are read in parallel, errors reported in a stable order. Then
/// looks up the data of the marked blobs (in parallel; only marked ones:
/// an unmarked blob goes whole, whatever it holds). A blob a manifest sizes
/// whose directory the store lists is taken as the manifest says, as
/// distribution's GC takes it (`regfs verify` looks inside).
fn mark(store: &Store, roots: Vec<Pending>, marks: &mut Marks) -> Result<(), GcError> {
    let Marks { marked, read, blobs_of, data, sized, absent, warnings } = marks;
    // Blob references to check for data once marking is done, in order.
    let mut referenced: Vec<(String, Digest)> = Vec::new();
    let mut frontier = roots;
    while !frontier.is_empty() {
        let mut level: BTreeMap<Digest, Pending> = BTreeMap::new();
        for p in frontier {
            if read.contains(&p.digest) || (!p.required && absent.contains(&p.digest)) {
                continue;
            }
            let slot = level.entry(p.digest).or_insert_with(|| p.clone());
            slot.required |= p.required;
        }
        let level: Vec<Pending> = level.into_values().collect();
        let results: Vec<_> = level.par_iter().map(|p| store.read_manifest(p)).collect();
        let mut next = Vec::new();
        for (p, result) in level.iter().zip(results) {
            marked.insert(p.digest);
            let (found, refs) = result?;
            data.insert(p.digest, found);
            let Some(refs) = refs else {
                absent.insert(p.digest);
                warnings.push(format!("{}: names subject {}, which is not in the store", p.origin, p.digest));
                continue;
            };
            read.insert(p.digest);
            blobs_of.insert(p.digest, refs.blobs.iter().map(|b| b.digest).collect());
            let at = layout::blob_data(&p.digest).display().to_string();
            if refs.is_empty() {
                warnings.push(format!(
                    "{at}: manifest ({}) references nothing GC knows how to follow",
                    refs.media_type.as_deref().unwrap_or("no mediaType")
                ));
            }
            for b in &refs.blobs {
                if marked.insert(b.digest) && !b.foreign {
                    referenced.push((at.clone(), b.digest));
                }
                if let Some(size) = b.size {
                    sized.entry(b.digest).or_insert(size);
                }
            }
            for m in &refs.manifests {
                next.push(Pending { digest: m.digest, origin: at.clone(), required: true });
            }
            if let Some(s) = refs.subject {
                next.push(Pending { digest: s.digest, origin: at.clone(), required: false });
            }
        }
        frontier = next;
    }
    // Sized by a manifest and listed by the store: no lookup. A manifest
    // read is in `data` already; one named only as a blob is looked up.
    sized.retain(|d, _| !data.contains_key(d) && !read.contains(d) && store.lists(d));
    let unknown: Vec<Digest> =
        marked.iter().filter(|d| !data.contains_key(*d) && !sized.contains_key(*d)).copied().collect();
    let found: Vec<_> = unknown.par_iter().map(|d| store.data(d).map(|x| (*d, x))).collect();
    for f in found {
        let (d, x) = f?;
        data.insert(d, x);
    }
    for (at, d) in referenced {
        if data.get(&d).is_none_or(|x| x.is_none()) && !sized.contains_key(&d) {
            warnings.push(format!("{at}: references blob {d}, which has no data in the store"));
        }
    }
    Ok(())
}

/// Builds the plan; reads the view, writes nothing.
pub fn plan(view: &View, opts: &GcOptions) -> Result<Plan, GcError> {
    let sc = Scanner::new(view);
    let t0 = Instant::now();
    let read_before = storage_read_bytes();
    let prefixes = sc.blob_prefixes()?;
    // Cold when listing the blob store's root had to read the disk.
    let cold = match (read_before, storage_read_bytes()) {
        (Some(before), Some(after)) => after > before,
        _ => t0.elapsed() >= COLD_PROBE,
    };
    let threads = threads_from_env().or(cold.then_some(COLD_SCAN_THREADS));
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, cold, threads, "gc: blob prefixes found");
    match threads.map(|n| rayon::ThreadPoolBuilder::new().num_threads(n).build()) {
        Some(Ok(pool)) => pool.install(|| plan_scan(&sc, opts, &prefixes, t0)),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "gc: no thread pool for the scan; scanning on the default one");
            plan_scan(&sc, opts, &prefixes, t0)
        }
        None => plan_scan(&sc, opts, &prefixes, t0),
    }
}

/// The environment variable that sets GC's scan threads whatever the cache
/// state (a store on a network filesystem; tests of the parallel scan).
pub const THREADS_VAR: &str = "REGFS_GC_THREADS";

fn threads_from_env() -> Option<usize> {
    let v = std::env::var(THREADS_VAR).ok()?;
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Some(n),
        _ => {
            tracing::warn!(value = %v, "{THREADS_VAR} is not a thread count above 0; ignored");
            None
        }
    }
}

/// Threads for a scan that waits on the disk: what they buy is reads in
/// flight, not CPU (cold, a 450k-entry store scans in ~0.3 s with 32, ~0.6 s
/// with one per CPU on 2 CPUs). With the store in the page cache the scan is
/// CPU-bound and idle threads only cost: the default pool (one per CPU) runs it.
const COLD_SCAN_THREADS: usize = 32;

/// Where the kernel does not count a process's storage reads: listing the
/// blob store's root (256 names) this long means it waited on the disk.
const COLD_PROBE: std::time::Duration = std::time::Duration::from_micros(500);

/// Bytes this process has had read from storage (`read_bytes` of
/// `/proc/self/io`); `None` where the kernel does not count them.
fn storage_read_bytes() -> Option<u64> {
    let io = fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|l| l.strip_prefix("read_bytes: "))?.trim().parse().ok()
}

/// [`plan`] on the current thread pool, given the blob prefix directories;
/// `t0` is when planning began.
fn plan_scan(sc: &Scanner, opts: &GcOptions, prefixes: &[Named], t0: Instant) -> Result<Plan, GcError> {
    // Phase times (-v): what a cold run waits for is directory reads.
    let ms = || t0.elapsed().as_secs_f64() * 1e3;
    let (repos, blobs) = rayon::join(
        || sc.repositories().inspect(|_| tracing::debug!(ms = ms(), "gc: repositories listed")),
        || sc.blobs(prefixes).inspect(|_| tracing::debug!(ms = ms(), "gc: blob prefixes listed")),
    );
    let mut repos = repos?;
    let store = Store::new(sc, blobs?);
    // Layer links matter only where manifests are: the rest goes whole.
    let scanned: Vec<_> = repos
        .par_iter_mut()
        .map(|r| {
            let with_layers = r.has(Section::Manifests);
            sc.scan_repo(r, with_layers, opts.delete_untagged)
        })
        .collect();
    scanned.into_iter().collect::<Result<(), _>>()?;
    tracing::debug!(ms = ms(), "gc: repositories scanned");

    let (mut roots, mut others) = (Vec::new(), Vec::new());
    let pinned: FxHashSet<(&str, Digest)> = opts.pinned.iter().map(|(r, d)| (r.as_str(), *d)).collect();
    for r in &repos {
        let tagged: FxHashSet<Digest> = r.tags.iter().filter_map(|t| t.current).collect();
        for rev in r.revisions.iter().filter(|rev| rev.present) {
            let origin = rev.dir.join(layout::LINK).display().to_string();
            let p = Pending { digest: rev.digest, origin, required: true };
            let root = !opts.delete_untagged
                || tagged.contains(&rev.digest)
                || pinned.contains(&(r.name.as_str(), rev.digest));
            if root { roots.push(p) } else { others.push(p) }
        }
    }
    let mut marks = Marks::default();
    mark(&store, roots, &mut marks)?;
    tracing::debug!(ms = ms(), "gc: manifests marked");
    // Revisions that are not roots are read and parsed all the same: a bad
    // one stops GC in both modes, whether or not it would be deleted.
    others.retain(|p| !marks.read.contains(&p.digest));
    let checked: Vec<_> = others.par_iter().map(|p| store.read_manifest(p)).collect();
    let manifests_read = (marks.read.len() + checked.len()) as u64;
    let checked = checked.into_iter().collect::<Result<Vec<_>, _>>()?;
    // A referrer of a kept manifest is kept (a signature, an SBOM), and so
    // in turn are its own referrers: until no more are found.
    let mut unmarked: Vec<(Pending, Digest)> =
        others.into_iter().zip(checked).filter_map(|(p, (_, refs))| Some((p, refs?.subject?.digest))).collect();
    loop {
        let (attached, rest): (Vec<_>, Vec<_>) = unmarked
            .into_iter()
            .partition(|(p, subject)| marks.marked.contains(subject) && !marks.marked.contains(&p.digest));
        if attached.is_empty() {
            break;
        }
        unmarked = rest;
        mark(&store, attached.into_iter().map(|(p, _)| p).collect(), &mut marks)?;
    }
    let mut b = PlanBuilder::default();
    // `marks.data` and `marks.sized` hold marked blobs only: one with data
    // there (or sized by its manifest) is kept.
    let kept_size = |d: &Digest| {
        marks.data.get(d).and_then(|x| x.as_ref()).map(|e| e.meta.size).or_else(|| marks.sized.get(d).copied())
    };
    // Unmarked blobs go whole; what that frees is what upper holds of them.
    let mut doomed = Vec::new();
    for blob in &store.blobs {
        match kept_size(&blob.digest) {
            Some(size) => b.keep(Kind::Blob, size),
            _ => doomed.push(blob),
        }
    }
    let freed: Vec<_> = doomed
        .par_iter()
        .map(|blob| {
            let dir = layout::blob_dir(&blob.digest);
            let in_upper = blob.layers.contains(&UPPER);
            if in_upper { sc.upper_usage(&dir).map(|u| (dir, u, in_upper)) } else { Ok((dir, (0, 0), in_upper)) }
        })
        .collect();
    for f in freed {
        let (dir, usage, in_upper) = f?;
        b.delete(Kind::Blob, dir, None, usage);
        if let Some(last) = b.deletions.last_mut() {
            last.lower_only = !in_upper;
        }
    }
    let has_data = |d: &Digest| kept_size(d).is_some();
    for r in &repos {
        b.repo(r, &marks.marked, &marks.blobs_of, &has_data);
    }
    let PlanBuilder { mut deletions, kept, mut protected } = b;
    protected.extend(layout::skeleton_dirs());

    // What whole directories going away free in upper.
    let sized: Vec<_> = deletions
        .par_iter_mut()
        .filter(|d| matches!(d.kind, Kind::Tag | Kind::Repository | Kind::Upload))
        .map(|d| sc.upper_usage(&d.path).map(|(f, by)| (d.files, d.bytes) = (f, by)))
        .collect();
    sized.into_iter().collect::<Result<(), _>>()?;
    // Bytewise path order: deterministic, and far cheaper than comparing
    // component by component (no deletion lies inside another).
    deletions.sort_by(|a, b| {
        (a.kind == Kind::Blob)
            .cmp(&(b.kind == Kind::Blob))
            .then_with(|| a.path.as_os_str().as_encoded_bytes().cmp(b.path.as_os_str().as_encoded_bytes()))
    });
    tracing::debug!(ms = ms(), "gc: deletions decided");
    let empty = empty_dirs(sc, &deletions, &protected)?;
    tracing::debug!(ms = ms(), "gc: empty directories found");
    deletions.extend(empty);
    Ok(Plan { delete_untagged: opts.delete_untagged, deletions, kept, manifests_read, warnings: marks.warnings })
}

#[derive(Default)]
struct PlanBuilder {
    deletions: Vec<Deletion>,
    kept: BTreeMap<Kind, Tally>,
    /// Directories never removed even when empty.
    protected: FxHashSet<PathBuf>,
}

impl PlanBuilder {
    fn keep(&mut self, kind: Kind, bytes: u64) {
        self.kept.entry(kind).or_default().add(1, bytes);
    }

    fn delete(&mut self, kind: Kind, path: PathBuf, repo: Option<&str>, (files, bytes): (u64, u64)) {
        self.deletions.push(Deletion { kind, path, repo: repo.map(str::to_string), files, bytes, lower_only: false });
    }

    /// Decides a repository's links, tags and sections.
    fn repo(
        &mut self,
        r: &RepoScan,
        marked: &FxHashSet<Digest>,
        blobs_of: &FxHashMap<Digest, Vec<Digest>>,
        has_data: &dyn Fn(&Digest) -> bool,
    ) {
        let name = Some(r.name.as_str());
        let kept_revs: FxHashSet<Digest> =
            r.revisions.iter().filter(|l| l.present && marked.contains(&l.digest)).map(|l| l.digest).collect();
        // The blobs this repository's kept manifests name: a link to any
        // other serves no pull of it (a blob another repository keeps is
        // no reason), so the repository's links follow from its manifests.
        let linked: FxHashSet<Digest> = kept_revs.iter().filter_map(|m| blobs_of.get(m)).flatten().copied().collect();
        if r.has(Section::Uploads) {
            self.delete(Kind::Upload, layout::section_dir(&r.name, Section::Uploads), name, (0, 0));
        }
        if kept_revs.is_empty() {
            // Stale: nothing of it was pushed in this release.
            for s in [Section::Layers, Section::Manifests] {
                if r.has(s) {
                    self.delete(Kind::Repository, layout::section_dir(&r.name, s), name, (0, 0));
                }
            }
            return;
        }
        self.protected.extend(layout::live_repo_dirs(&r.name));
        let mut repo_bytes = 0;
        for l in &r.revisions {
            if kept_revs.contains(&l.digest) {
                self.keep(Kind::Manifest, l.bytes);
                repo_bytes += l.bytes;
            } else {
                self.delete(Kind::Manifest, l.dir.clone(), name, l.freed());
            }
        }
        for t in &r.tags {
            if !t.current.is_some_and(|c| kept_revs.contains(&c)) {
                self.delete(Kind::Tag, t.dir.clone(), name, (0, 0));
                continue;
            }
            self.keep(Kind::Tag, t.current_bytes);
            repo_bytes += t.current_bytes;
            for h in &t.history {
                if h.present && marked.contains(&h.digest) {
                    self.keep(Kind::TagHistory, h.bytes);
                    repo_bytes += h.bytes;
                } else {
                    self.delete(Kind::TagHistory, h.dir.clone(), name, h.freed());
                }
            }
        }
        for l in &r.layer_links {
            if l.present && linked.contains(&l.digest) && has_data(&l.digest) {
                self.keep(Kind::LayerLink, l.bytes);
                repo_bytes += l.bytes;
            } else {
                self.delete(Kind::LayerLink, l.dir.clone(), name, l.freed());
            }
        }
        self.keep(Kind::Repository, repo_bytes);
    }
}

/// Directories the deletions leave empty (and ones already empty), deepest
/// first. Only ancestors of deletions and directories the scan found empty
/// are candidates; the skeleton and live repositories' sections stay.
fn empty_dirs(sc: &Scanner, deletions: &[Deletion], protected: &FxHashSet<PathBuf>) -> Result<Vec<Deletion>, GcError> {
    // Keyed by the paths' bytes: every path here is built by joining clean
    // names, so equal bytes are equal paths, and hashing bytes is far
    // cheaper than hashing a Path component by component.
    let protected: FxHashSet<&OsStr> = protected.iter().map(|p| p.as_os_str()).collect();
    let deleted: FxHashSet<&OsStr> = deletions.iter().map(|d| d.path.as_os_str()).collect();
    let found_empty = sc.empty_dirs();
    let mut candidates: FxHashSet<&OsStr> = found_empty.iter().map(|p| p.as_os_str()).collect();
    // Names each directory loses. Deletions come sorted, so siblings mostly
    // follow each other: a run of them costs one lookup (72k blobs share
    // 256 parents).
    let mut lost: FxHashMap<&OsStr, usize> = FxHashMap::default();
    let mut run: Option<(&OsStr, usize)> = None;
    for d in deletions {
        let parent = parent_bytes(d.path.as_os_str());
        if let Some((p, n)) = &mut run
            && *p == parent
        {
            *n += 1;
            continue;
        }
        if let Some((p, n)) = run.replace((parent, 1)) {
            *lost.entry(p).or_default() += n;
        }
        // Its ancestors are candidates (those of one seen before went in then).
        let mut a = parent;
        while !protected.contains(a) && candidates.insert(a) && !a.is_empty() {
            a = parent_bytes(a);
        }
    }
    if let Some((p, n)) = run {
        *lost.entry(p).or_default() += n;
    }
    candidates.retain(|c| !protected.contains(c) && !Path::new(c).ancestors().any(|a| deleted.contains(a.as_os_str())));
    // Deepest first, so a directory is decided after all its subdirectories:
    // it is empty when it loses every name it has, each one deleted or an
    // empty directory itself.
    let mut ordered: Vec<&Path> = candidates.iter().map(Path::new).collect();
    ordered.sort_by_cached_key(|c| (std::cmp::Reverse(c.components().count()), *c));
    let mut out = Vec::new();
    for c in ordered {
        if lost.get(c.as_os_str()).copied().unwrap_or(0) >= sc.name_count(c)? {
            out.push(Deletion {
                kind: Kind::EmptyDir,
                path: c.to_path_buf(),
                repo: None,
                files: 0,
                bytes: 0,
                lower_only: false,
            });
            *lost.entry(parent_bytes(c.as_os_str())).or_default() += 1;
        }
    }
    Ok(out)
}

/// The parent of a clean relative path, by its last `/` (what
/// `Path::parent` gives for these, without parsing every component).
fn parent_bytes(p: &OsStr) -> &OsStr {
    let b = p.as_bytes();
    OsStr::from_bytes(&b[..b.iter().rposition(|&c| c == b'/').unwrap_or(0)])
}

/// Carries out a plan through the view. Each deletion is whole (one
/// `remove_tree` or `rmdir`), so a failure part way leaves a consistent
/// view and re-running GC finishes the job.
pub fn sweep(view: &View, plan: &Plan) -> Result<()> {
    let total = plan.deletions.len();
    // The upper directory the last history blob's whiteout went into: the
    // blobs come sorted, so most share it with the one before.
    let mut ready: Option<&Path> = None;
    for (i, d) in plan.deletions.iter().enumerate() {
        crate::testhook::point("gc-delete", i as u64 + 1);
        tracing::debug!(kind = ?d.kind, path = %d.path.display(), "gc: deleting");
        let done = match d.kind {
            Kind::EmptyDir => view.in_parent(&d.path, |dir, name| view.rmdir(dir, name)).map(drop),
            // A history blob: one whiteout, no lookups (the plan knows).
            Kind::Blob if d.lower_only => {
                let parent = d.path.parent();
                let r = view.whiteout_lower_only(&d.path, parent.is_some() && parent == ready);
                if r.is_ok() {
                    ready = parent;
                }
                r
            }
            _ => view.remove_tree(&d.path),
        };
        match done {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow!(
                    "deleting {}: {e}; gc stopped part way ({i} of {total} deletions done, each one whole): \
                     fix the cause and re-run `regfs gc` to finish",
                    d.path.display()
                ));
            }
        }
    }
    Ok(())
}

/// Plans and, unless `dry_run`, sweeps. The caller holds the upper lock
/// (`regfs gc` takes it; the on-unmount hook runs inside the daemon that does).
pub fn run(view: &View, opts: &GcOptions, dry_run: bool) -> Result<(Plan, Report)> {
    let started = Instant::now();
    let plan = plan(view, opts).map_err(|e| {
        anyhow!(e).context("gc stopped before deleting anything (fix or move the named file, then re-run)")
    })?;
    let planned = started.elapsed();
    if !dry_run {
        sweep(view, &plan)?;
    }
    let report = Report::new(&plan, dry_run, planned, started.elapsed() - planned);
    tracing::info!(
        entries = plan.deletions.len(),
        blobs = report.kind(Kind::Blob).deleted.count,
        bytes = report.deleted_bytes(),
        dry_run,
        ms = started.elapsed().as_millis() as u64,
        "gc done"
    );
    Ok((plan, report))
}

/// `regfs gc`: locks upper, runs, prints the plan (dry run) and the report.
pub fn command(layers: &Layers, opts: &GcOptions, dry_run: bool, json: bool) -> Result<()> {
    let _lock = store::lock_upper(&layers.upper, "regfs gc")?;
    let view = layers.view()?;
    let (plan, report) = run(&view, opts, dry_run)?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    if json {
        let doc = serde_json::json!({ "plan": plan.deletions, "report": report });
        serde_json::to_writer_pretty(&mut out, &doc).context("writing the JSON report")?;
        writeln!(out)?;
    } else {
        if dry_run {
            report::write_plan(&mut out, &plan)?;
        }
        report.write_human(&mut out)?;
    }
    out.flush().context("writing the report")?;
    Ok(())
}
