//! `regfs apply`: land bundles into a site's registry rootdirectory.
//!
//! **Preflight, before anything is written.** Each bundle is read once,
//! whole: the tar reader refuses anything but plain files and directories
//! (see [`crate::bundle::tarball`]); every path must be one a registry store
//! holds (`layout::parse_store_path`); every link must hold exactly the
//! digest its path names and name a blob the release needs; every blob's
//! data is hashed as it streams past and must match its digest; the
//! description and the tar must agree; and every blob the release needs
//! must be in the bundle, at the site, or needed by an earlier bundle of
//! the same run. Every problem is collected and listed at once. Blob data
//! the site lacks is staged meanwhile in `.regfs-apply-staging/` at the
//! site's root (same filesystem, outside `docker/`) and thrown away if
//! anything is wrong: the site is then exactly as it was.
//!
//! **Landing**, bundle by bundle: blobs, then `_layers` links, then manifest
//! revisions, then tag history entries, then tags' `current` links, each
//! phase made durable (`syncfs`) before the next, each file staged, synced
//! and renamed into place. So a registry never sees a tag whose image is
//! incomplete, nor a name whose data may not have reached the disk. A
//! killed apply is finished by running it again (what is already in place
//! and verified is not written twice); a second run changes nothing.
//!
//! **Replace** makes the site exactly the last bundle's release: files of
//! the repository tree the bundle does not hold go (tags first), then
//! regfs's GC, over the site as a one-layer view, removes the blobs nothing
//! references. The registry must be stopped for it (its blob cache).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use sha2::Digest as _;

use crate::bundle::tarball::{EntryKind, TarReader};
use crate::bundle::{self, Description};
use crate::layout::{self, Digest, StorePath};
use crate::util::human_bytes;

/// The staging directory at the site's root.
pub const STAGING: &str = ".regfs-apply-staging";

#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyOptions {
    /// Make the site exactly the last bundle's release.
    pub replace: bool,
    /// Check and report; write nothing.
    pub dry_run: bool,
}

/// What one bundle brought (or, in a dry run, would bring).
#[derive(Debug, Default, Serialize)]
pub struct BundleReport {
    pub bundle: PathBuf,
    pub release: String,
    pub delta: bool,
    pub images: usize,
    pub blobs_needed: u64,
    pub blobs_written: u64,
    pub bytes_written: u64,
    /// Blobs the bundle carries that the site already held, verified.
    pub blobs_present: u64,
    pub links_written: u64,
    pub tags_set: u64,
}

/// What `--replace` removed (or would remove).
#[derive(Debug, Default, Serialize)]
pub struct ReplaceReport {
    pub tags: u64,
    pub repositories: u64,
    /// Link files and other files of the repository tree.
    pub files: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct ApplyReport {
    pub site: PathBuf,
    pub dry_run: bool,
    pub replace: bool,
    pub bundles: Vec<BundleReport>,
    pub removed: Option<ReplaceReport>,
    pub elapsed_ms: u64,
}

/// A link file of a bundle, checked.
#[derive(Clone, Debug)]
struct Link {
    rel: String,
    kind: StorePath,
    content: Digest,
    mode: u32,
}

/// One bundle after preflight.
struct Checked {
    path: PathBuf,
    desc: Description,
    /// Blobs staged for the site: digest → (staged file, mode).
    staged: BTreeMap<Digest, (PathBuf, u32)>,
    links: Vec<Link>,
    /// Directories of the tar and their modes.
    dirs: BTreeMap<String, u32>,
    report: BundleReport,
}

/// The site's rootdirectory, locked for this apply.
struct Site {
    root: PathBuf,
    _lock: File,
    /// Directories known to be real directories (never a symlink).
    known_dirs: HashSet<PathBuf>,
    staging: Option<PathBuf>,
    step: u64,
}

impl Site {
    fn open(root: &Path) -> Result<Site> {
        let meta = fs::metadata(root).with_context(|| {
            format!("--to {}: no such directory (create it first; an empty directory is an empty site)", root.display())
        })?;
        if !meta.is_dir() {
            bail!("--to {}: not a directory", root.display());
        }
        let root = fs::canonicalize(root).with_context(|| format!("--to {}", root.display()))?;
        let v2 = root.join(layout::V2);
        let empty = fs::read_dir(&root)?.filter_map(|e| e.ok()).all(|e| e.file_name() == STAGING);
        if !empty && !v2.is_dir() {
            bail!(
                "--to {}: neither empty nor a registry rootdirectory (no {} inside); name the directory the \
                 site's registry has as storage.filesystem.rootdirectory",
                root.display(),
                layout::V2
            );
        }
        for dir in layout::skeleton_dirs().iter().skip(1).chain([&layout::repositories_root()]) {
            if fs::symlink_metadata(root.join(dir)).is_ok_and(|m| !m.is_dir()) {
                bail!(
                    "--to {}: {} is not a directory (a symlink?); apply writes only into real directories of the site",
                    root.display(),
                    dir.display()
                );
            }
        }
        if v2.is_dir() && fs::metadata(&v2)?.dev() != meta.dev() {
            bail!(
                "--to {}: {} is another filesystem than the site's root; apply stages files at the root and \
                 renames them into place",
                root.display(),
                layout::V2
            );
        }
        let lock = File::open(&root).with_context(|| format!("opening {}", root.display()))?;
        if !crate::sys::try_lock_exclusive(&lock)? {
            bail!("--to {}: another regfs apply is landing into this site; wait for it to finish", root.display());
        }
        Ok(Site { root, _lock: lock, known_dirs: HashSet::new(), staging: None, step: 0 })
    }

    /// Removes what an interrupted apply staged.
    fn clear_staging(&mut self) -> Result<()> {
        let dir = self.root.join(STAGING);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }

    fn staging_dir(&mut self) -> Result<PathBuf> {
        if let Some(d) = &self.staging {
            return Ok(d.clone());
        }
        let d = self.root.join(STAGING);
        fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700))?;
        self.staging = Some(d.clone());
        Ok(d)
    }

    /// Size of the site's data of blob `d`, if it holds a regular file.
    fn blob_size(&self, d: &Digest) -> Option<u64> {
        fs::symlink_metadata(self.root.join(layout::blob_data(d))).ok().filter(|m| m.is_file()).map(|m| m.len())
    }

    /// Whether the site's copy of `d` is whole: its size and its hash.
    fn has_blob(&self, d: &Digest, size: u64) -> Result<bool> {
        if self.blob_size(d) != Some(size) {
            return Ok(false);
        }
        crate::inventory::hashes_to(&self.root.join(layout::blob_data(d)), d)
    }

    /// The digest a link file of the site holds, if it holds one.
    fn link(&self, rel: &str) -> Option<Digest> {
        let p = self.root.join(rel);
        let m = fs::symlink_metadata(&p).ok()?;
        if !m.is_file() || m.len() != layout::LINK_LEN as u64 {
            return None;
        }
        layout::parse_link(&fs::read(&p).ok()?).ok()
    }

    /// Creates the directories of `rel` below the root (modes from `modes`,
    /// else 0755), refusing to pass through anything but a real directory.
    fn make_dirs(&mut self, rel: &Path, modes: &BTreeMap<String, u32>) -> Result<()> {
        let mut cur = PathBuf::new();
        for c in rel.components() {
            cur.push(c);
            if self.known_dirs.contains(&cur) {
                continue;
            }
            let abs = self.root.join(&cur);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => bail!(
                    "{}: not a directory at the site (a symlink or a file); nothing is written through it",
                    abs.display()
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&abs).with_context(|| format!("creating {}", abs.display()))?;
                    let mode = modes.get(cur.to_str().unwrap_or_default()).copied().unwrap_or(0o755);
                    fs::set_permissions(&abs, fs::Permissions::from_mode(mode & 0o777))?;
                }
                Err(e) => return Err(e).with_context(|| format!("stat {}", abs.display())),
            }
            self.known_dirs.insert(cur.clone());
        }
        Ok(())
    }

    /// Renames a staged file into place at `rel`.
    fn place(&mut self, staged: &Path, rel: &Path, modes: &BTreeMap<String, u32>) -> Result<()> {
        self.step += 1;
        crate::testhook::point("apply-step", self.step);
        if let Some(parent) = rel.parent() {
            self.make_dirs(parent, modes)?;
        }
        let dst = self.root.join(rel);
        if fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir()) {
            bail!("{}: a directory at the site where the bundle has a file; remove it and re-run", dst.display());
        }
        fs::rename(staged, &dst).with_context(|| format!("moving {} to {}", staged.display(), dst.display()))
    }

    /// Makes everything written so far durable.
    fn sync(&self) -> Result<()> {
        let f = File::open(&self.root)?;
        crate::sys::syncfs(&f).with_context(|| format!("syncing {}", self.root.display()))
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if self.staging.is_some() {
            let _ = fs::remove_dir_all(self.root.join(STAGING));
        }
    }
}

/// Reads one bundle whole and checks it (see the module comment); stages
/// the blobs the site lacks unless `dry_run`. Problems go to `problems`.
fn preflight(
    site: &mut Site,
    path: &Path,
    index: usize,
    earlier: &BTreeMap<Digest, u64>,
    dry_run: bool,
    problems: &mut Vec<String>,
) -> Option<Checked> {
    let shown = path.display().to_string();
    let mut report = |msg: String| problems.push(format!("{shown}: {msg}"));
    let desc = match bundle::read_description(path) {
        Ok(d) => d,
        Err(e) => {
            report(e);
            return None;
        }
    };
    // What the site must hold already.
    let mut missing = Vec::new();
    for b in desc.blobs.iter().filter(|b| !b.shipped) {
        let have = earlier.get(&b.digest).copied().or_else(|| site.blob_size(&b.digest));
        match have {
            Some(size) if size == b.size => {}
            Some(size) => missing.push(format!("  {} ({} bytes; the site's copy has {size})", b.digest, b.size)),
            None => missing.push(format!("  {} ({} bytes)", b.digest, b.size)),
        }
    }
    if !missing.is_empty() {
        report(format!(
            "{} blobs release {} needs are neither in the bundle nor at the site (apply the bundle its base stands \
             for first, or cut the delta against an inventory of this site):\n{}",
            missing.len(),
            desc.release,
            missing.join("\n")
        ));
    }
    let stage = missing.is_empty() && !dry_run;
    let mut checked = Checked {
        path: path.to_path_buf(),
        report: BundleReport {
            bundle: path.to_path_buf(),
            release: desc.release.clone(),
            delta: desc.base.is_some(),
            images: desc.images.len(),
            blobs_needed: desc.blobs.len() as u64,
            ..BundleReport::default()
        },
        desc,
        staged: BTreeMap::new(),
        links: Vec::new(),
        dirs: BTreeMap::new(),
    };
    let mut reader = match TarReader::open(path) {
        Ok(r) => r,
        Err(e) => {
            report(format!("cannot read: {e}"));
            return None;
        }
    };
    let mut data_seen = BTreeSet::new();
    let mut tags_seen = BTreeMap::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let entry = match reader.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => {
                report(format!("{e}"));
                return None;
            }
        };
        if entry.path == bundle::DESCRIPTION {
            continue;
        }
        let at = &entry.path;
        let Some(kind) = layout::parse_store_path(at, entry.kind == EntryKind::Dir) else {
            report(format!(
                "{at}: has no place in a registry store (a bundle holds {}/blobs and {}/repositories: blob data, \
                 links and their directories)",
                layout::V2,
                layout::V2
            ));
            continue;
        };
        match kind {
            StorePath::Dir => {
                checked.dirs.insert(entry.path.clone(), entry.mode);
            }
            StorePath::BlobData(d) => {
                data_seen.insert(d);
                match checked.desc.blob(&d) {
                    Some(b) if b.shipped && b.size == entry.size => {}
                    Some(b) if b.shipped => {
                        report(format!("{at}: {} bytes, but the description says {}", entry.size, b.size));
                        continue;
                    }
                    _ => {
                        report(format!("{at}: blob data the description does not list as shipped"));
                        continue;
                    }
                }
                let need = match site.has_blob(&d, entry.size) {
                    Ok(present) => !present,
                    Err(e) => {
                        report(format!("{at}: checking the site's copy: {e:#}"));
                        continue;
                    }
                };
                let target = if stage && need {
                    crate::testhook::point("apply-stage", checked.staged.len() as u64 + 1);
                    match site.staging_dir() {
                        Ok(dir) => Some(dir.join(format!("{index}-{}", d.hex()))),
                        Err(e) => {
                            report(format!("{e:#}"));
                            return None;
                        }
                    }
                } else {
                    None
                };
                match copy_hashed(&mut reader, target.as_deref(), &mut buf) {
                    Ok(got) if got == d => {
                        if need {
                            checked.report.blobs_written += 1;
                            checked.report.bytes_written += entry.size;
                            if let Some(t) = target {
                                checked.staged.insert(d, (t, entry.mode));
                            }
                        } else {
                            checked.report.blobs_present += 1;
                        }
                    }
                    Ok(got) => {
                        if let Some(t) = &target {
                            let _ = fs::remove_file(t);
                        }
                        report(format!("{at}: the data hashes to {got}, not {d}: a corrupt bundle"));
                    }
                    Err(e) => {
                        report(format!("{at}: {e}"));
                        return None;
                    }
                }
            }
            link => {
                let content = match reader.read_all(layout::LINK_LEN as u64) {
                    Ok(bytes) => match layout::parse_link(&bytes) {
                        Ok(d) => d,
                        Err(e) => {
                            report(format!("{at}: not a link ({e})"));
                            continue;
                        }
                    },
                    Err(e) => {
                        report(format!("{at}: not a link ({e})"));
                        continue;
                    }
                };
                if link.link_digest().is_some_and(|d| d != content) {
                    report(format!("{at}: holds {content}, but its path names another digest"));
                    continue;
                }
                if checked.desc.blob(&content).is_none() {
                    report(format!("{at}: names {content}, which is not among the blobs the release needs"));
                    continue;
                }
                if let StorePath::TagCurrentLink { repo, tag } = &link {
                    tags_seen.insert((repo.clone(), tag.clone()), content);
                }
                checked.links.push(Link { rel: entry.path.clone(), kind: link, content, mode: entry.mode });
            }
        }
    }
    for b in checked.desc.blobs.iter().filter(|b| b.shipped && !data_seen.contains(&b.digest)) {
        report(format!("blob {}: the description says the bundle carries it, but it has no data", b.digest));
    }
    let described: BTreeMap<(String, String), Digest> =
        checked.desc.images.iter().map(|i| ((i.repo.clone(), i.tag.clone()), i.digest)).collect();
    for ((repo, tag), d) in &described {
        if tags_seen.get(&(repo.clone(), tag.clone())) != Some(d) {
            report(format!("image {repo}:{tag}: the description names {d}, the bundle's tag link does not"));
        }
    }
    for (repo, tag) in tags_seen.keys().filter(|k| !described.contains_key(*k)) {
        report(format!("tag {repo}:{tag}: in the bundle but not in its description"));
    }
    Some(checked)
}

/// Streams the current entry's data to `to` (if any), returning its sha256.
fn copy_hashed<R: io::Read + io::Seek>(
    reader: &mut TarReader<R>,
    to: Option<&Path>,
    buf: &mut [u8],
) -> io::Result<Digest> {
    let mut out = match to {
        Some(p) => Some(OpenOptions::new().write(true).create_new(true).mode(0o600).open(p)?),
        None => None,
    };
    let mut h = sha2::Sha256::new();
    loop {
        let n = reader.read_data(buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        if let Some(f) = &mut out {
            f.write_all(&buf[..n])?;
        }
    }
    Ok(Digest::from_sha256(&h.finalize()))
}

/// The order links land in: layer links, revisions, tag history, tags.
fn phase(kind: &StorePath) -> u8 {
    match kind {
        StorePath::LayerLink { .. } => 0,
        StorePath::RevisionLink { .. } => 1,
        StorePath::TagIndexLink { .. } => 2,
        _ => 3,
    }
}

/// Lands one checked bundle.
fn land(site: &mut Site, c: &mut Checked) -> Result<()> {
    let staged = std::mem::take(&mut c.staged);
    for (d, (file, mode)) in &staged {
        fs::set_permissions(file, fs::Permissions::from_mode(mode & 0o777))?;
        site.place(file, &layout::blob_data(d), &c.dirs)?;
    }
    site.sync()?;
    let staging = site.staging_dir()?;
    for p in 0..4 {
        let mut pending = Vec::new();
        for (i, l) in c.links.iter().filter(|l| phase(&l.kind) == p).enumerate() {
            if site.link(&l.rel) == Some(l.content) {
                continue;
            }
            let tmp = staging.join(format!("link-{p}-{i}"));
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(l.content.to_string().as_bytes())?;
            f.set_permissions(fs::Permissions::from_mode(l.mode & 0o777))?;
            pending.push((tmp, l));
        }
        if pending.is_empty() {
            continue;
        }
        site.sync()?;
        for (tmp, l) in &pending {
            site.place(tmp, Path::new(&l.rel), &c.dirs)?;
            c.report.links_written += 1;
            if p == 3 {
                c.report.tags_set += 1;
            }
        }
        site.sync()?;
    }
    let dirs: Vec<String> = c.dirs.keys().cloned().collect();
    for d in dirs {
        site.make_dirs(Path::new(&d), &c.dirs)?;
    }
    Ok(())
}

/// What of the site's repository tree the release does not hold: files
/// (tags' `current` links first), then directories, deepest first.
fn replace_plan(site: &Site, release: &Checked) -> Result<(Vec<PathBuf>, Vec<PathBuf>, ReplaceReport)> {
    let keep_files: HashSet<PathBuf> = release.links.iter().map(|l| PathBuf::from(&l.rel)).collect();
    let keep_dirs: HashSet<PathBuf> = release.dirs.keys().map(PathBuf::from).collect();
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut stack = vec![layout::repositories_root()];
    while let Some(rel) = stack.pop() {
        let abs = site.root.join(&rel);
        let rd = match fs::read_dir(&abs) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", abs.display())),
        };
        for de in rd {
            let de = de?;
            let child = rel.join(de.file_name());
            if de.file_type()?.is_dir() {
                if !keep_dirs.contains(&child) {
                    dirs.push(child.clone());
                }
                stack.push(child);
            } else if !keep_files.contains(&child) {
                files.push(child);
            }
        }
    }
    let is_tag = |p: &PathBuf| {
        matches!(
            layout::parse_store_path(p.to_str().unwrap_or_default(), false),
            Some(StorePath::TagCurrentLink { .. })
        )
    };
    files.sort_by_key(|p| (!is_tag(p), p.clone()));
    dirs.sort_by_key(|p| (std::cmp::Reverse(p.components().count()), p.clone()));
    let mut r = ReplaceReport {
        tags: files.iter().filter(|p| is_tag(p)).count() as u64,
        files: files.len() as u64,
        ..ReplaceReport::default()
    };
    let kept_repos: BTreeSet<String> = release.desc.images.iter().map(|i| i.repo.clone()).collect();
    let site_repos = layout::repositories_in(&site.root, |_| true)
        .with_context(|| format!("listing the repositories of {}", site.root.display()))?;
    r.repositories = site_repos.iter().filter(|repo| !kept_repos.contains(*repo)).count() as u64;
    Ok((files, dirs, r))
}

/// `--replace` after landing: the repository tree down to the release's,
/// then GC of the blobs.
fn replace(site: &mut Site, release: &Checked) -> Result<ReplaceReport> {
    let (files, dirs, mut r) = replace_plan(site, release)?;
    for f in &files {
        site.step += 1;
        crate::testhook::point("apply-step", site.step);
        match fs::remove_file(site.root.join(f)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", site.root.join(f).display()));
            }
            _ => {}
        }
    }
    for d in &dirs {
        match fs::remove_dir(site.root.join(d)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {} (left non-empty?)", site.root.join(d).display()));
            }
            _ => {}
        }
    }
    site.sync()?;
    let view = crate::view::View::new(
        site.root.clone(),
        Vec::new(),
        crate::view::Policy::transparent(),
        crate::view::XattrNs::for_current_user(),
    )
    .context("opening the site as a view")?;
    let (plan, _) = crate::gc::run(&view, &crate::gc::GcOptions::default(), false)
        .context("the site's GC after --replace (the release is landed; re-run apply --replace to finish)")?;
    for d in plan.deletions.iter().filter(|d| d.kind == crate::gc::Kind::Blob) {
        r.blobs += 1;
        r.blob_bytes += d.bytes;
    }
    site.sync()?;
    Ok(r)
}

/// What a replace would remove of the blob store: the site's blobs no
/// bundle's release needs (what GC removes once the tree is the release's).
fn replace_blobs_dry(site: &Site, release: &Checked) -> Result<(u64, u64)> {
    if !site.root.join(layout::V2).is_dir() {
        return Ok((0, 0)); // an empty site holds no blobs
    }
    let (inv, _) = crate::inventory::Inventory::of_rootdir(&site.root, false)?;
    let mut n = (0, 0);
    for (d, size) in &inv.blobs {
        if release.desc.blob(d).is_none() {
            n.0 += 1;
            n.1 += size;
        }
    }
    Ok(n)
}

/// Checks every bundle, then lands them in order (unless `dry_run`).
pub fn apply(bundles: &[PathBuf], to: &Path, opts: &ApplyOptions) -> Result<ApplyReport> {
    let started = Instant::now();
    let mut site = Site::open(to)?;
    if !opts.dry_run {
        site.clear_staging()?;
    }
    let mut problems = Vec::new();
    let mut checked = Vec::new();
    let mut earlier: BTreeMap<Digest, u64> = BTreeMap::new();
    for (i, b) in bundles.iter().enumerate() {
        if let Some(c) = preflight(&mut site, b, i, &earlier, opts.dry_run, &mut problems) {
            earlier.extend(c.desc.blobs.iter().map(|b| (b.digest, b.size)));
            checked.push(c);
        }
    }
    if !problems.is_empty() {
        bail!(
            "refused, nothing was written to {}: {} problem{}:\n{}",
            site.root.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n")
        );
    }
    let mut report =
        ApplyReport { site: site.root.clone(), dry_run: opts.dry_run, replace: opts.replace, ..ApplyReport::default() };
    if opts.dry_run {
        if opts.replace
            && let Some(last) = checked.last()
        {
            let (_, _, mut r) = replace_plan(&site, last)?;
            (r.blobs, r.blob_bytes) = replace_blobs_dry(&site, last)?;
            report.removed = Some(r);
        }
        for c in &mut checked {
            c.report.links_written = c.links.iter().filter(|l| site.link(&l.rel) != Some(l.content)).count() as u64;
            c.report.tags_set = c
                .links
                .iter()
                .filter(|l| matches!(l.kind, StorePath::TagCurrentLink { .. }) && site.link(&l.rel) != Some(l.content))
                .count() as u64;
        }
    } else {
        site.sync()?;
        for c in &mut checked {
            land(&mut site, c).with_context(|| {
                format!("landing {} (stopped part way: re-run the same apply to finish)", c.path.display())
            })?;
        }
        if opts.replace
            && let Some(last) = checked.last()
        {
            report.removed = Some(replace(&mut site, last)?);
        }
    }
    report.bundles = checked.into_iter().map(|c| c.report).collect();
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// `regfs apply`: runs and prints the report.
pub fn command(bundles: &[PathBuf], to: &Path, opts: &ApplyOptions, json: bool) -> Result<()> {
    let report = apply(bundles, to, opts).map_err(|e| anyhow!("apply: {e:#}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let would = if report.dry_run { "would write" } else { "wrote" };
    for b in &report.bundles {
        println!(
            "{} ({} bundle of {}, {} images): {would} {} blobs ({}), {} links, set {} tags; {} blobs already there",
            b.bundle.display(),
            if b.delta { "delta" } else { "full" },
            b.release,
            b.images,
            b.blobs_written,
            human_bytes(b.bytes_written),
            b.links_written,
            b.tags_set,
            b.blobs_present
        );
    }
    if let Some(r) = &report.removed {
        println!(
            "replace: {} {} tags, {} repositories, {} files of the repository tree, {} blobs ({})",
            if report.dry_run { "would remove" } else { "removed" },
            r.tags,
            r.repositories,
            r.files,
            r.blobs,
            human_bytes(r.blob_bytes)
        );
    }
    println!(
        "{} {} in {} ms",
        if report.dry_run { "dry run: nothing written to" } else { "applied to" },
        report.site.display(),
        report.elapsed_ms
    );
    Ok(())
}
