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
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use sha2::Digest as _;

use crate::gc::human_bytes;
use crate::layout::{self, Digest};
use crate::mount::{self, Layers};
use crate::view::{Entry, View};

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

/// What an export wrote.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExportReport {
    pub path: PathBuf,
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
        format!(
            "exported {} ({} tar: {} files, {} directories, {} of data{verified}) in {} ms",
            self.path.display(),
            human_bytes(self.tar_bytes),
            self.files,
            self.dirs,
            human_bytes(self.data_bytes),
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
pub fn export(view: &View, out: &Path, opts: &ExportOptions) -> Result<ExportReport> {
    let started = Instant::now();
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
    let mut report = ExportReport { path: out.to_path_buf(), ..ExportReport::default() };
    {
        let mut w = TarWriter {
            view,
            opts: *opts,
            builder: tar::Builder::new(BufWriter::with_capacity(BUF_BYTES, tmp.as_file())),
            report: &mut report,
        };
        w.write_view()?;
        let buf = w.builder.into_inner().context("finishing the tar")?;
        buf.into_inner().map_err(|e| e.into_error()).context("writing the tar")?;
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

/// `regfs export`: locks upper, checks the target, writes the tar.
pub fn command(layers: &Layers, out: &Path, opts: &ExportOptions) -> Result<()> {
    let target = check_target(out, layers)?;
    let _lock = mount::lock_upper(&layers.upper, "regfs export")?;
    let view = layers.view()?;
    let report = export(&view, &target, opts)?;
    println!("regfs: {}", report.summary());
    for s in &report.skipped {
        println!("regfs: left out {s:?}: not part of a registry store");
    }
    Ok(())
}

struct TarWriter<'a, W: Write> {
    view: &'a View,
    opts: ExportOptions,
    builder: tar::Builder<W>,
    report: &'a mut ExportReport,
}

impl<W: Write> TarWriter<'_, W> {
    fn write_view(&mut self) -> Result<()> {
        let root = self.view.root().context("reading the layer roots")?;
        let mut found = false;
        for item in self.sorted(Path::new(""), &root)? {
            if item.0 == OsStr::new(TOP) && item.1.is_dir() {
                found = true;
                self.walk(Path::new(TOP), &item.1)?;
            } else {
                self.report.skipped.push(item.0.to_string_lossy().into_owned());
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

    fn sorted(&self, rel: &Path, e: &Entry) -> Result<Vec<(std::ffi::OsString, Entry)>> {
        let mut items: Vec<_> = self
            .view
            .list(rel, e)
            .with_context(|| format!("listing {}", shown(rel)))?
            .into_iter()
            .map(|i| (i.name, i.entry))
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(items)
    }

    fn header(&self, meta: &Metadata, ty: tar::EntryType, size: u64) -> tar::Header {
        // ustar: paths up to 255 bytes fit the header (name + prefix); longer
        // ones get a GNU long-name entry, which GNU tar and Go read.
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(ty);
        h.set_size(size);
        h.set_mode(meta.mode() & 0o7777);
        if self.opts.keep_times {
            h.set_mtime(meta.mtime().max(0) as u64);
            h.set_uid(meta.uid().into());
            h.set_gid(meta.gid().into());
        } else {
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
        }
        h
    }

    fn walk(&mut self, rel: &Path, e: &Entry) -> Result<()> {
        crate::testhook::point("export-entry", self.report.dirs + self.report.files + self.report.symlinks + 1);
        let ft = e.meta.file_type();
        if ft.is_dir() {
            let mut h = self.header(&e.meta, tar::EntryType::Directory, 0);
            self.builder.append_data(&mut h, rel, io::empty()).with_context(|| format!("writing {}", rel.display()))?;
            self.report.dirs += 1;
            for (name, child) in self.sorted(rel, e)? {
                self.walk(&rel.join(name), &child)?;
            }
        } else if ft.is_file() {
            self.file(rel, e)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(self.view.real_path(rel, e))
                .with_context(|| format!("reading symlink {}", rel.display()))?;
            if !stays_inside(&target) {
                bail!(
                    "{}: symlink to {} leads out of the store; registries never create symlinks: remove it, \
                     or replace it with what it points to, and re-run",
                    rel.display(),
                    target.display()
                );
            }
            let mut h = self.header(&e.meta, tar::EntryType::Symlink, 0);
            self.builder.append_link(&mut h, rel, &target).with_context(|| format!("writing {}", rel.display()))?;
            self.report.symlinks += 1;
        } else {
            bail!("{}: a {:?} has no place in a registry store; remove it and re-run", rel.display(), ft);
        }
        Ok(())
    }

    fn file(&mut self, rel: &Path, e: &Entry) -> Result<()> {
        let real = self.view.real_path(rel, e);
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&real)
            .with_context(|| format!("opening {} ({})", rel.display(), real.display()))?;
        let meta = f.metadata().with_context(|| format!("stat {}", real.display()))?;
        let blob = if self.opts.verify { layout::blob_of_data_path(rel) } else { None };
        let mut reader = ExactReader { inner: f, remaining: meta.len(), hasher: blob.map(|_| sha2::Sha256::new()) };
        let mut h = self.header(&meta, tar::EntryType::Regular, meta.len());
        self.builder
            .append_data(&mut h, rel, &mut reader)
            .with_context(|| format!("writing {} ({})", rel.display(), real.display()))?;
        if let (Some(want), Some(hasher)) = (blob, reader.hasher) {
            let got = Digest::from_sha256(&hasher.finalize());
            if got != want {
                bail!(
                    "{}: blob data hashes to {got}, not {want}: the store is corrupt (data at {}); no tar was written",
                    rel.display(),
                    real.display()
                );
            }
            self.report.blobs_verified += 1;
        }
        self.report.files += 1;
        self.report.data_bytes += meta.len();
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
