//! The release package: an uncompressed tar of the view, rooted like a
//! registry `rootdirectory` (`docker/registry/v2/...`).
//!
//! - Deterministic: entries in path order (each directory's names sorted
//!   bytewise, a directory before its contents), uid/gid 0, no user or
//!   group names, mtime 0, permission bits kept. The same view gives the same
//!   bytes. `keep_times` keeps real mtimes and numeric owners instead.
//! - File data is streamed from the layer files (no FUSE) in large buffers.
//!   `verify` hashes every blob's data while writing and fails on a digest
//!   mismatch.
//! - Only what the view shows goes in (never hidden history, whiteouts or
//!   regfs's `.regfs-tmp.*` files), and only the `docker/` tree.
//! - Symlinks are never followed. Registries do not create them, so one is
//!   stored (as a symlink) only when its target is relative without `..`,
//!   which keeps any chain of them inside the store; any other is an error.
//!   So are devices, fifos and sockets.
//! - The tar is written to a temporary file beside the target
//!   (`.NAME.XXXXXX.partial`, locked while it is written) and renamed into
//!   place only when complete: no half tar is ever left at the target. The
//!   next export to the target removes what a killed one left.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use sha2::Digest as _;

use crate::bundle::{self, BaseRef, Description, Totals};
use crate::inventory::Inventory;
use crate::layout::{self, Digest};
use crate::store::{self, Layers};
use crate::util::human_bytes;
use crate::view::{Dir, Entry, LayerIdx, Named, Stat, View};

/// Buffer size of the tar writer and of each read from a layer file.
const BUF_BYTES: usize = 1 << 20;

/// The top-level directory of a registry store; nothing else is exported.
const TOP: &str = "docker";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Check every blob's sha256 against its digest while writing.
    pub verify: bool,
    /// Keep real mtimes and numeric owners (not deterministic).
    pub keep_times: bool,
}

/// What a bundle is: its release's name, the base it is cut against
/// (`None`: a full bundle) and the release's lock.
#[derive(Clone, Debug, Default)]
pub struct BundleSpec {
    pub release: String,
    pub base: Option<Base>,
    pub lock: Vec<bundle::Locked>,
}

/// A base: what identifies it, and the blobs it holds that a bundle cut
/// against it leaves out.
#[derive(Clone, Debug)]
pub struct Base {
    pub reference: BaseRef,
    pub blobs: std::collections::BTreeMap<Digest, u64>,
}

impl Base {
    pub fn of(inventory: &Inventory) -> Base {
        Base { reference: inventory.base_ref(), blobs: inventory.blobs.clone() }
    }

    /// The base a bundle was cut against, as far as its description tells:
    /// the blobs it left out. Cutting the same release against it again
    /// gives the same description.
    pub fn recorded(d: &Description) -> Option<Base> {
        let reference = d.base.clone()?;
        let blobs = d.blobs.iter().filter(|b| !b.shipped).map(|b| (b.digest, b.size)).collect();
        Some(Base { reference, blobs })
    }
}

impl BundleSpec {
    /// A full bundle named after its file.
    pub fn full(out: &Path) -> BundleSpec {
        BundleSpec { release: default_release_name(out), base: None, lock: Vec::new() }
    }
}

/// A release's default name: the tar's file name without `.tar`, with
/// anything a release name may not hold replaced by `-`.
pub fn default_release_name(out: &Path) -> String {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".tar").unwrap_or(&name);
    let clean: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._-+".contains(c) { c } else { '-' }).collect();
    let clean = clean.trim_start_matches('.').to_string();
    if bundle::valid_release_name(&clean) { clean } else { "release".to_string() }
}

/// What an export wrote.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExportReport {
    pub path: PathBuf,
    /// The release's name, as the description gives it.
    pub release: String,
    pub images: u64,
    /// Blobs and bytes the release needs, and what this tar carries.
    #[serde(flatten)]
    pub totals: Totals,
    /// The base a delta was cut against.
    pub base: Option<BaseRef>,
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    /// Bytes of file data in the tar.
    pub data_bytes: u64,
    /// Size of the tar itself.
    pub tar_bytes: u64,
    /// Blobs whose digest was checked (with `verify`).
    pub blobs_verified: u64,
    /// Top-level names of the view left out (not part of a registry store).
    pub skipped: Vec<String>,
    pub elapsed_ms: u64,
}

impl ExportReport {
    pub fn summary(&self) -> String {
        let verified =
            if self.blobs_verified > 0 { format!(", {} blobs verified", self.blobs_verified) } else { String::new() };
        let t = &self.totals;
        let kind = if self.base.is_some() { "delta" } else { "full" };
        format!(
            "exported {} ({kind} bundle of {}, {} images; {} tar: {} files, {} directories, {} of data{verified}; \
             ships {} of the {} blobs the release needs, {} of {}) in {} ms",
            self.path.display(),
            self.release,
            self.images,
            human_bytes(self.tar_bytes),
            self.files,
            self.dirs,
            human_bytes(self.data_bytes),
            t.blobs_shipped,
            t.blobs_needed,
            human_bytes(t.bytes_shipped),
            human_bytes(t.bytes_needed),
            self.elapsed_ms
        )
    }
}

/// Checks where a tar may go, before any work: the directory must exist,
/// the target must not be a directory, and it must lie outside every layer
/// (a tar inside upper would end up in the view it is made from). Returns
/// the absolute target.
pub fn check_target(out: &Path, layers: &Layers) -> Result<PathBuf> {
    let name = out.file_name().ok_or_else(|| anyhow!("-o {}: not a file name", out.display()))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = fs::canonicalize(parent).with_context(|| {
        format!("-o {}: directory {} does not exist; create it first", out.display(), parent.display())
    })?;
    if !dir.is_dir() {
        bail!("-o {}: {} is not a directory", out.display(), parent.display());
    }
    let target = dir.join(name);
    if target.is_dir() {
        bail!("-o {}: is a directory; name the tar file to write", out.display());
    }
    for l in layers.lowers.iter().chain([&layers.upper]) {
        if target.starts_with(l) {
            bail!("-o {}: inside layer {}; write the tar outside every layer", out.display(), l.display());
        }
    }
    Ok(target)
}

/// Writes the view as a tar at `out` (atomically). The caller holds the
/// upper lock (`regfs export` takes it; the on-unmount hook runs inside the
/// daemon that does).
pub fn export(view: &View, out: &Path, opts: &ExportOptions, spec: &BundleSpec) -> Result<ExportReport> {
    let started = Instant::now();
    let mut description = bundle::describe::describe(view, &spec.release, &spec.lock)
        .map_err(|e| anyhow!(e))
        .context("describing the view (nothing was written)")?;
    if let Some(base) = &spec.base {
        description.cut_against(base.reference.clone(), |d| base.blobs.get(d).copied()).map_err(|e| anyhow!(e))?;
    }
    let name = out.file_name().ok_or_else(|| anyhow!("{}: not a file name", out.display()))?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut prefix = OsStr::new(".").to_os_string();
    prefix.push(name);
    prefix.push(".");
    remove_stale_partials(dir, &prefix);
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(PARTIAL)
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {} for {}", dir.display(), out.display()))?;
    // Held until the process ends: a later export removes only unlocked ones.
    crate::sys::try_lock_exclusive(tmp.as_file()).with_context(|| format!("locking {}", tmp.path().display()))?;
    let mut report = ExportReport {
        path: out.to_path_buf(),
        release: description.release.clone(),
        images: description.images.len() as u64,
        totals: description.totals(),
        base: description.base.clone(),
        ..ExportReport::default()
    };
    // Two threads: one walks the view, stats, opens and reads small files;
    // the other writes the tar and copies large files. Each keeps one core
    // busy (the copy is most of the kernel time).
    let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(PIECES_IN_FLIGHT);
    let (walked, verified) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_pieces(TarOut::new(tmp.as_file()), rx));
        let mut w = TarWriter {
            view,
            opts: *opts,
            description: &description,
            shipped_prefixes: description.blobs.iter().filter(|b| b.shipped).map(|b| &b.digest.hex()[..2]).collect(),
            headers: tar::Builder::new(Vec::new()),
            batch: Vec::with_capacity(BATCH_BYTES),
            tx,
            report: &mut report,
        };
        let walked = w.write_view().and_then(|()| w.send_batch());
        drop(w);
        let verified = writer.join().unwrap_or_else(|_| Err(anyhow!("the tar writer thread panicked")));
        (walked, verified)
    });
    // The writer's error is the cause when the walk stopped because of it.
    match (walked, verified) {
        (_, Err(e)) => return Err(e),
        (Err(e), Ok(_)) => return Err(e),
        (Ok(()), Ok(n)) => report.blobs_verified = n,
    }
    let f = tmp.as_file();
    f.sync_all().context("syncing the tar")?;
    f.set_permissions(fs::Permissions::from_mode(0o644))?;
    report.tar_bytes = f.metadata()?.len();
    tmp.persist(out).map_err(|e| e.error).with_context(|| format!("renaming the finished tar to {}", out.display()))?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(path = %out.display(), bytes = report.tar_bytes, ms = report.elapsed_ms, "exported");
    Ok(report)
}

/// Suffix of the temporary tar beside the target.
const PARTIAL: &str = ".partial";

/// Removes the temporary tars (`PREFIX` + tempfile's 6 random characters +
/// `.partial`) that killed exports left in `dir`. One a live export is
/// writing is locked and stays. Best effort: a failure is only logged.
fn remove_stale_partials(dir: &Path, prefix: &OsStr) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let is_ours = name
            .as_encoded_bytes()
            .strip_prefix(prefix.as_encoded_bytes())
            .and_then(|rest| rest.strip_suffix(PARTIAL.as_bytes()))
            .is_some_and(|mid| mid.len() == 6 && mid.iter().all(u8::is_ascii_alphanumeric));
        if !is_ours || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = e.path();
        let stale = File::open(&path).and_then(|f| crate::sys::try_lock_exclusive(&f));
        match stale.and_then(|stale| if stale { fs::remove_file(&path).map(|()| true) } else { Ok(false) }) {
            Ok(true) => tracing::info!(path = %path.display(), "removed the temporary tar of an interrupted export"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the temporary tar of an interrupted export")
            }
        }
    }
}

/// `regfs export`: locks upper, checks the target, reads the bases, writes the tar.
pub fn command(layers: &Layers, out: &Path, opts: &ExportOptions, name: Option<&str>, bases: &[PathBuf]) -> Result<()> {
    let target = check_target(out, layers)?;
    let mut spec = bundle_spec(out, name, bases)?;
    // The upper of a finished release: its bundle again carries its lock.
    if let Some(record) = crate::workdir::finished_record(&layers.upper)? {
        spec.lock = record.description.lock;
    }
    let _lock = store::lock_upper(&layers.upper, "regfs export")?;
    let view = layers.view()?;
    let report = export(&view, &target, opts, &spec)?;
    println!("regfs: {}", report.summary());
    for s in &report.skipped {
        println!("regfs: left out {s:?}: not part of a registry store");
    }
    Ok(())
}

/// The bundle `--name` and `--base` ask for (checked before any work).
pub fn bundle_spec(out: &Path, name: Option<&str>, bases: &[PathBuf]) -> Result<BundleSpec> {
    let release = match name {
        Some(n) if bundle::valid_release_name(n) => n.to_string(),
        Some(n) => {
            bail!("--name {n:?}: a release name is letters, digits, '.', '_', '-' and '+', not starting with '.'")
        }
        None => default_release_name(out),
    };
    let base = if bases.is_empty() { None } else { Some(Base::of(&Inventory::of_bases(bases)?)) };
    Ok(BundleSpec { release, base, lock: Vec::new() })
}

/// The tar file being written: headers and small files (read by the
/// walker, see [`SMALL_FILE`]) gather in a large buffer; larger files go
/// from their layer file to the tar in the kernel (`copy_file_range`, no
/// copy through user space). Writeback is started
/// as the tar grows and waited for one window behind, so the disk writes
/// while regfs reads, the closing fsync finds little left to do, and dirty
/// pages stay few.
struct TarOut<'f> {
    file: &'f File,
    buf: Vec<u8>,
    /// Bytes in the file (the buffer not counted).
    written: u64,
    /// Where the window of writeback not yet started begins.
    flushed_to: u64,
    /// The window started last, waited for when the next one starts.
    in_flight: Option<(u64, u64)>,
}

/// Files up to this size the walker reads into the tar's bytes itself;
/// larger ones go to the writer, which copies them with `copy_file_range`
/// (registry links are 71 bytes: one read each, not a copy's three syscalls).
const SMALL_FILE: u64 = 256 << 10;

/// Writeback is started every this many bytes of tar.
const WRITEBACK_WINDOW: u64 = 64 << 20;

impl<'f> TarOut<'f> {
    fn new(file: &'f File) -> TarOut<'f> {
        TarOut { file, buf: Vec::with_capacity(BUF_BYTES), written: 0, flushed_to: 0, in_flight: None }
    }

    fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= BUF_BYTES { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut f = self.file;
        f.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        self.write_back()
    }

    fn write_back(&mut self) -> io::Result<()> {
        if self.written - self.flushed_to < WRITEBACK_WINDOW {
            return Ok(());
        }
        let window = (self.flushed_to, self.written - self.flushed_to);
        crate::sys::write_back(self.file, window.0, window.1, false)?;
        if let Some((off, len)) = self.in_flight.replace(window) {
            crate::sys::write_back(self.file, off, len, true)?;
        }
        self.flushed_to = self.written;
        Ok(())
    }

    /// Pads the entry just written (`len` data bytes) to a 512-byte block.
    fn pad(&mut self, len: u64) -> io::Result<()> {
        const ZEROS: [u8; 512] = [0; 512];
        let rem = (len % 512) as usize;
        if rem == 0 { Ok(()) } else { self.push(&ZEROS[..512 - rem]) }
    }

    /// Appends `src`'s remaining bytes (positioned at its start) as entry data.
    fn data(&mut self, src: &mut ExactReader) -> io::Result<()> {
        let len = src.remaining;
        if src.hasher.is_some() {
            // Through the buffer: a hashed blob must pass through regfs.
            let mut chunk = vec![0; BUF_BYTES.min(len as usize)];
            loop {
                let n = src.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                self.push(&chunk[..n])?;
            }
        } else {
            self.flush()?;
            let mut f = self.file;
            // A window at a time, so writeback starts while the copy goes on.
            while src.remaining > 0 {
                let step = src.remaining.min(WRITEBACK_WINDOW);
                // std copies File to File with copy_file_range(2) where it can.
                let copied = io::copy(&mut (&src.inner).take(step), &mut f)?;
                if copied != step {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was being exported",
                    ));
                }
                src.remaining -= copied;
                self.written += copied;
                self.write_back()?;
            }
        }
        self.pad(len)
    }

    /// The end-of-archive blocks, and everything to the file.
    fn finish(&mut self) -> io::Result<()> {
        self.push(&[0; 1024])?;
        self.flush()
    }
}

/// What the walker hands the writer, in tar order.
enum Piece {
    /// Headers, small files' data and padding, ready to write.
    Bytes(Vec<u8>),
    /// A large (or hashed) file's data, then its padding.
    File(Box<LargeFile>),
    /// Everything before it is written to the file: answered on the channel.
    Flushed(std::sync::mpsc::SyncSender<()>),
}

struct LargeFile {
    rel: PathBuf,
    real: PathBuf,
    reader: ExactReader,
    blob: Option<Digest>,
}

/// Pieces queued between the two threads (open files among them).
const PIECES_IN_FLIGHT: usize = 64;

/// Bytes gathered before they go to the writer as one piece.
const BATCH_BYTES: usize = 256 << 10;

/// The writer thread: writes pieces until the walker is done, checks
/// hashed blobs; returns how many were verified.
fn write_pieces(mut out: TarOut, rx: std::sync::mpsc::Receiver<Piece>) -> Result<u64> {
    let mut verified = 0;
    for piece in rx {
        match piece {
            Piece::Bytes(b) => out.push(&b).context("writing the tar")?,
            Piece::Flushed(done) => {
                out.flush().context("writing the tar")?;
                let _ = done.send(());
            }
            Piece::File(large) => {
                let LargeFile { rel, real, mut reader, blob } = *large;
                out.data(&mut reader).with_context(|| format!("writing {} ({})", rel.display(), real.display()))?;
                if let (Some(want), Some(hasher)) = (blob, reader.hasher) {
                    let got = Digest::from_sha256(&hasher.finalize());
                    if got != want {
                        bail!(
                            "{}: blob data hashes to {got}, not {want}: the store is corrupt (data at {}); \
                             no tar was written",
                            rel.display(),
                            real.display()
                        );
                    }
                    verified += 1;
                }
            }
        }
    }
    out.finish().context("writing the tar")?;
    Ok(verified)
}

struct TarWriter<'a> {
    view: &'a View,
    opts: ExportOptions,
    description: &'a Description,
    /// The blob prefix directories (`<xx>`) holding a blob this tar ships.
    shipped_prefixes: std::collections::BTreeSet<&'a str>,
    /// Encodes headers (with GNU long-name entries where a path needs one):
    /// entries are appended with empty data and the bytes taken out.
    headers: tar::Builder<Vec<u8>>,
    /// Bytes not yet sent to the writer.
    batch: Vec<u8>,
    tx: std::sync::mpsc::SyncSender<Piece>,
    report: &'a mut ExportReport,
}

impl TarWriter<'_> {
    fn write_view(&mut self) -> Result<()> {
        // The description first: a reader knows what the bundle holds and
        // needs before any data.
        let bytes = self.description.to_bytes();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        self.put_header(&mut h, Path::new(bundle::DESCRIPTION), None)?;
        self.batch.extend_from_slice(&bytes);
        self.batch.resize(self.batch.len().next_multiple_of(512), 0);
        let root = self.view.root().context("reading the layer roots")?;
        let mut found = false;
        for item in self.sorted(Path::new(""), &root.layers)? {
            if item.name == OsStr::new(TOP) && item.is_dir() {
                found = true;
                self.walk(Path::new(TOP), &item)?;
            } else {
                self.report.skipped.push(item.name.to_string_lossy().into_owned());
            }
        }
        if !found {
            bail!(
                "the view has no {} directory: nothing to export (are the layers registry rootdirectories?)",
                layout::V2
            );
        }
        Ok(())
    }

    fn sorted(&self, rel: &Path, layers: &[LayerIdx]) -> Result<Vec<Named>> {
        let mut items = self.view.names(Dir { rel, layers }).with_context(|| format!("listing {}", shown(rel)))?;
        items.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(items)
    }

    fn header(&self, meta: &Stat, ty: tar::EntryType, size: u64) -> tar::Header {
        // ustar: paths up to 255 bytes fit the header (name + prefix); longer
        // ones get a GNU long-name entry, which GNU tar and Go read.
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(ty);
        h.set_size(size);
        h.set_mode(meta.perm());
        if self.opts.keep_times {
            h.set_mtime(meta.mtime.sec.max(0) as u64);
            h.set_uid(meta.uid.into());
            h.set_gid(meta.gid.into());
        } else {
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
        }
        h
    }

    /// Writes the header(s) of an entry at `rel`; `link` for a symlink.
    fn put_header(&mut self, h: &mut tar::Header, rel: &Path, link: Option<&Path>) -> Result<()> {
        let done = match link {
            Some(target) => self.headers.append_link(h, rel, target),
            None => self.headers.append_data(h, rel, io::empty()),
        };
        done.with_context(|| format!("writing {}", rel.display()))?;
        let bytes = self.headers.get_mut();
        self.batch.extend_from_slice(bytes);
        bytes.clear();
        if self.batch.len() >= BATCH_BYTES { self.send_batch() } else { Ok(()) }
    }

    fn send(&mut self, piece: Piece) -> Result<()> {
        // A closed channel means the writer failed; its error is reported.
        self.tx.send(piece).map_err(|_| anyhow!("the tar writer stopped"))
    }

    fn send_batch(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_BYTES));
        self.send(Piece::Bytes(full))
    }

    fn walk(&mut self, rel: &Path, item: &Named) -> Result<()> {
        // The description is the tar's first entry: this one is the n-th.
        let n = self.report.dirs + self.report.files + self.report.symlinks + 2;
        if crate::testhook::will_pause("export-entry", n) {
            // What a pause there shows: every earlier entry in the file.
            self.send_batch()?;
            let (done, wait) = std::sync::mpsc::sync_channel(1);
            self.send(Piece::Flushed(done))?;
            let _ = wait.recv();
        }
        crate::testhook::point("export-entry", n);
        let ft = item.file_type;
        let real = self.view.place_of(item.layers[0], rel);
        let parent = rel.parent().unwrap_or(Path::new(""));
        let entry = || self.view.entry_of(parent, item).with_context(|| format!("stat {}", real.display()));
        if ft.is_dir() {
            let meta = entry()?.meta;
            let mut h = self.header(&meta, tar::EntryType::Directory, 0);
            self.put_header(&mut h, rel, None)?;
            self.report.dirs += 1;
            for child in self.sorted(rel, &item.layers)? {
                let child_rel = rel.join(&child.name);
                if self.ships(&child_rel) {
                    self.walk(&child_rel, &child)?;
                }
            }
        } else if ft.is_file() {
            self.file(rel, &entry()?, &real)?;
        } else if ft.is_symlink() {
            let e = entry()?;
            let meta = e.meta;
            let target = self.view.read_link(rel, &e).with_context(|| format!("reading symlink {}", rel.display()))?;
            if !stays_inside(&target) {
                bail!(
                    "{}: symlink to {} leads out of the store; registries never create symlinks: remove it, \
                     or replace it with what it points to, and re-run",
                    rel.display(),
                    target.display()
                );
            }
            let mut h = self.header(&meta, tar::EntryType::Symlink, 0);
            self.put_header(&mut h, rel, Some(&target))?;
            self.report.symlinks += 1;
        } else {
            bail!("{}: a {:?} has no place in a registry store; remove it and re-run", rel.display(), ft);
        }
        Ok(())
    }

    /// Whether a delta carries the blob store entry `rel`: a blob directory
    /// unless the base holds the blob, a prefix directory only when one of
    /// its blobs ships. A full bundle carries everything.
    fn ships(&self, rel: &Path) -> bool {
        let d = self.description;
        if d.base.is_none() {
            return true;
        }
        if let Some(blob) = layout::blob_of_dir_path(rel) {
            return d.blob(&blob).is_none_or(|b| b.shipped);
        }
        match layout::blob_prefix_of_path(rel) {
            Some(prefix) => self.shipped_prefixes.contains(prefix),
            None => true,
        }
    }

    fn file(&mut self, rel: &Path, e: &Entry, real: &Path) -> Result<()> {
        let f = self
            .view
            .open_read(rel, e, libc::O_NOFOLLOW)
            .with_context(|| format!("opening {} ({})", rel.display(), real.display()))?;
        // The size written is the open file's: one stat, of what is read.
        let (f, size) = f.into_sequential().with_context(|| format!("stat {}", real.display()))?;
        let meta = Stat { size, ..e.meta };
        let blob = if self.opts.verify { layout::blob_of_data_path(rel) } else { None };
        let mut reader = ExactReader { inner: f, remaining: meta.size, hasher: blob.map(|_| sha2::Sha256::new()) };
        let mut h = self.header(&meta, tar::EntryType::Regular, meta.size);
        self.put_header(&mut h, rel, None)?;
        if blob.is_none() && meta.size <= SMALL_FILE {
            let start = self.batch.len();
            self.batch.resize(start + meta.size as usize, 0);
            reader
                .read_exact(&mut self.batch[start..])
                .with_context(|| format!("reading {} ({})", rel.display(), real.display()))?;
            self.batch.resize(self.batch.len().next_multiple_of(512), 0);
        } else {
            self.send_batch()?;
            self.send(Piece::File(Box::new(LargeFile {
                rel: rel.to_path_buf(),
                real: real.to_path_buf(),
                reader,
                blob,
            })))?;
        }
        self.report.files += 1;
        self.report.data_bytes += meta.size;
        Ok(())
    }
}

fn shown(rel: &Path) -> String {
    if rel.as_os_str().is_empty() { "the view root".into() } else { rel.display().to_string() }
}

/// Reads exactly `remaining` bytes: a file that shrinks while being
/// written is an error, one that grows is cut at the size in its header.
struct ExactReader {
    inner: File,
    remaining: u64,
    hasher: Option<sha2::Sha256>,
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let max = buf.len().min(self.remaining.min(BUF_BYTES as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while it was being exported"));
        }
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Whether a symlink target stays inside the store: relative and without
/// `..`, so every hop descends, even through a chain of such symlinks.
fn stays_inside(target: &Path) -> bool {
    target.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_containment() {
        assert!(stays_inside(Path::new("y")));
        assert!(stays_inside(Path::new("./a/b")));
        assert!(!stays_inside(Path::new("../docker")));
        assert!(!stays_inside(Path::new("a/../../etc")));
        assert!(!stays_inside(Path::new("/etc/passwd")));
    }
}
