//! `regfs absorb`: fold a finished release's new blobs and `_layers` links
//! into the history store, so the next release reuses them, and the
//! release's record (its bundle's description and the tar's digest) into
//! `regfs-releases/`, so `regfs release --rebuild` can make it again.
//!
//! The one command that writes history, on purpose. It only adds: every blob
//! is verified against its digest while it is copied to a temporary file in
//! the history's `v2` directory, and only then renamed into its place; links
//! are checked the same way. Nothing is ever
//! deleted or overwritten with different content, so an interrupted absorb is
//! finished by running it again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::layout::{self, Digest, Section};
use crate::store;

/// What an absorb did.
#[derive(Debug, Default, Serialize)]
pub struct AbsorbReport {
    /// The release recorded (`None`: the upper is not a finished release's).
    pub release: Option<String>,
    /// Whether the history held that record already.
    pub record_present: bool,
    pub blobs_added: u64,
    pub blob_bytes_added: u64,
    pub blobs_present: u64,
    pub links_added: u64,
    pub links_present: u64,
}

/// Prefix of absorb's temporary files, all in the history's `v2` directory.
const TMP_PREFIX: &str = ".regfs-absorb.";

/// Where absorb stages what it adds: temporary files in the history's `v2`
/// directory (one filesystem with every blob and link, so a rename places
/// them), verified before anything is created at the destination. A failed
/// or interrupted absorb leaves nothing under `blobs/` or `repositories/`.
struct Staging {
    tmp: PathBuf,
    _lock: File,
}

impl Staging {
    /// Locks the history against a second absorb and removes temporary files
    /// an interrupted absorb left.
    fn open(history: &Path) -> Result<Staging> {
        let v2 = history.join(layout::V2);
        let lock = File::open(&v2).with_context(|| format!("opening {}", v2.display()))?;
        if !crate::sys::try_lock_exclusive(&lock).with_context(|| format!("locking {}", v2.display()))? {
            bail!("{}: another regfs absorb is adding to this history; wait for it to finish", history.display());
        }
        for de in fs::read_dir(&v2).with_context(|| format!("reading {}", v2.display()))? {
            let de = de?;
            if de.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                fs::remove_file(de.path()).with_context(|| format!("removing the leftover {}", de.path().display()))?;
            }
        }
        let tmp = v2.join(format!("{TMP_PREFIX}{}", std::process::id()));
        Ok(Staging { tmp, _lock: lock })
    }

    /// Moves the staged file to `dst` (its directories created first).
    fn place(&self, dst: &Path) -> Result<()> {
        let dir = dst.parent().context("a store path has a parent")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::rename(&self.tmp, dst).with_context(|| format!("moving {} to {}", self.tmp.display(), dst.display()))
    }

    /// Copies blob data `src` to `dst`, checking that the bytes hash to
    /// `want` before anything is placed.
    fn copy_blob(&self, src: &Path, dst: &Path, want: &Digest) -> Result<u64> {
        let result = (|| -> Result<u64> {
            let mut from = File::open(src).with_context(|| format!("reading {}", src.display()))?;
            let mut to = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&self.tmp)
                .with_context(|| format!("creating {} (is the history writable?)", self.tmp.display()))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).with_context(|| format!("reading {}", src.display())),
                };
                hasher.update(&buf[..n]);
                to.write_all(&buf[..n]).with_context(|| format!("writing {}", self.tmp.display()))?;
                total += n as u64;
            }
            let got = Digest::from_sha256(&hasher.finalize());
            if got != *want {
                bail!(
                    "{} does not match its digest: its content is {got}, its path says {want}; nothing of it \
                     was absorbed (the upper is damaged: do not ship or absorb this release)",
                    src.display()
                );
            }
            to.sync_all().with_context(|| format!("syncing {}", self.tmp.display()))?;
            self.place(dst)?;
            Ok(total)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        result
    }

    /// Writes a small file (a record) at `dst`.
    fn write_file(&self, dst: &Path, bytes: &[u8]) -> Result<()> {
        let result = (|| -> Result<()> {
            let mut f = File::create(&self.tmp).with_context(|| format!("creating {}", self.tmp.display()))?;
            f.write_all(bytes)?;
            f.sync_all()?;
            self.place(dst)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        result.with_context(|| format!("writing {}", dst.display()))
    }

    /// Writes a `_layers` link naming `d` at `dst`.
    fn write_link(&self, dst: &Path, d: &Digest) -> Result<()> {
        self.write_file(dst, d.to_string().as_bytes())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Folds upper's blobs and layer links into `history`.
pub fn absorb(history: &Path, upper: &Path, force: bool) -> Result<AbsorbReport> {
    if !force && crate::workdir::upper_origin(&std::path::absolute(upper)?) == crate::workdir::UpperOrigin::Unfinished {
        bail!(
            "--upper {}: the upper of a release that did not finish (no tar was written; its gc may not have \
             run, so it can hold blobs nothing references). Re-run the release, or pass --force to absorb \
             what it holds anyway",
            upper.display()
        );
    }
    let history = store::check_lowers(&[history.to_path_buf()], "--history")?.remove(0);
    let upper = fs::canonicalize(upper).with_context(|| format!("--upper {}: cannot open", upper.display()))?;
    let _lock = store::lock_upper(&upper, "regfs absorb")?;
    let record = crate::workdir::finished_record(&upper)?;
    let record_dst = record.as_ref().map(|r| history.join(layout::release_record(r.release())));
    let mut report = AbsorbReport::default();
    if let (Some(r), Some(dst)) = (&record, &record_dst)
        && let Some(held) = crate::workdir::read_record(dst)?
    {
        if held != *r {
            bail!(
                "{}: the history records a release {:?} already, with another bundle (tar sha256 {}, this one {}); \
                 nothing was absorbed. Give this release another name (regfs release --name)",
                dst.display(),
                r.release(),
                held.tar_sha256,
                r.tar_sha256
            );
        }
        report.record_present = true;
    }
    let staging = Staging::open(&history)?;

    let blobs = layout::blobs_root();
    for prefix in crate::util::subdir_names(&upper.join(&blobs))? {
        for hex in crate::util::subdir_names(&upper.join(&blobs).join(&prefix))? {
            let d = layout::blob_dir_digest(&prefix, &hex).with_context(|| {
                format!("{}: not a blob directory", upper.join(&blobs).join(&prefix).join(&hex).display())
            })?;
            let rel = layout::blob_data(&d);
            let src = upper.join(&rel);
            if !fs::symlink_metadata(&src).map(|m| m.is_file()).unwrap_or(false) {
                continue;
            }
            let dst = history.join(&rel);
            if dst.exists() {
                report.blobs_present += 1;
                continue;
            }
            report.blob_bytes_added += staging.copy_blob(&src, &dst, &d)?;
            report.blobs_added += 1;
        }
    }

    let repos = layout::repositories_in(&upper, |s| s == Section::Layers)
        .with_context(|| format!("listing the repositories of {}", upper.display()))?;
    for repo in repos {
        let dir = upper.join(layout::layer_links_dir(&repo));
        for hex in crate::util::subdir_names(&dir)? {
            let link_path = dir.join(&hex).join(layout::LINK);
            let Ok(content) = fs::read(&link_path) else { continue };
            let d = layout::parse_link(&content).with_context(|| format!("{}: bad link", link_path.display()))?;
            if d.hex() != hex {
                bail!("{}: names {d} but sits under {hex}; not absorbed", link_path.display());
            }
            if !history.join(layout::blob_data(&d)).exists() {
                tracing::warn!(link = %link_path.display(), "link to a blob the history lacks: skipped");
                continue;
            }
            let dst = history.join(layout::layer_link(&repo, &d));
            if dst.exists() {
                report.links_present += 1;
                continue;
            }
            staging.write_link(&dst, &d)?;
            report.links_added += 1;
        }
    }
    // Last: a record names only what the history now holds.
    if let (Some(r), Some(dst)) = (&record, &record_dst) {
        if !report.record_present {
            staging.write_file(dst, &r.to_bytes())?;
        }
        report.release = Some(r.release().to_string());
    }
    Ok(report)
}

/// `regfs absorb`: runs and prints the report.
pub fn command(history: &Path, upper: &Path, json: bool, force: bool) -> Result<()> {
    let r = absorb(history, upper, force)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "absorbed {} blobs ({} bytes) and {} layer links into {}; {} blobs and {} links were already there",
            r.blobs_added,
            r.blob_bytes_added,
            r.links_added,
            history.display(),
            r.blobs_present,
            r.links_present
        );
        match &r.release {
            Some(name) if r.record_present => println!("release {name} was recorded already"),
            Some(name) => println!("recorded release {name} (regfs release --rebuild {name} makes it again)"),
            None => println!("no release recorded: {} is not the upper of a finished regfs release", upper.display()),
        }
    }
    Ok(())
}
