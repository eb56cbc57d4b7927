//! The kernel front end: materialise the policy into upper as overlayfs
//! whiteouts, then let the kernel serve the view at native speed.
//!
//! The FUSE front end hides by policy at lookup time; the kernel knows only
//! whiteouts and opaque directories. Materialising writes one mark per hidden
//! history entry (each `_manifests`, `_uploads` and stale repository), so its
//! cost is proportional to what is hidden, and the marks are the same ones the
//! FUSE front end writes itself: one upper format for both modes.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use std::time::{Duration, Instant};

use crate::layout::{self, Place};
use crate::sys;
use crate::view::{Hidden, View};

/// What materialising did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Materialised {
    pub hidden: usize,
    pub whiteouts: usize,
    pub opaque: usize,
    pub already: usize,
    #[serde(serialize_with = "as_secs")]
    pub elapsed: Duration,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Every path the policy hides in any lower, topmost hidden level only (what
/// lies below a hidden directory needs no mark of its own). Sorted.
pub fn hidden_paths(view: &View) -> io::Result<BTreeSet<PathBuf>> {
    let repos = layout::repositories_root();
    // Work items: the directories directly under each lower's repositories/.
    let mut items = Vec::new();
    for lower in view.lowers() {
        for (name, _) in lower.read_dir(&repos)?.unwrap_or_default() {
            items.push(repos.join(name));
        }
    }
    items.sort();
    items.dedup();
    let found = items
        .par_iter()
        .map(|rel| {
            let mut found = Vec::new();
            collect(view, rel, &mut found).map(|()| found)
        })
        .collect::<io::Result<Vec<Vec<PathBuf>>>>()?;
    let mut hidden: BTreeSet<PathBuf> = found.into_iter().flatten().collect();
    // regfs's own state at a lower's root (a history's release records).
    let state = Path::new(layout::RELEASES);
    for lower in view.lowers() {
        if lower.stat(state)?.is_some() {
            hidden.insert(state.to_path_buf());
        }
    }
    Ok(hidden)
}

/// Collects hidden paths at or below `rel` (under `repositories/`).
fn collect(view: &View, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    if view.policy().hides_lower(rel) {
        out.push(rel.to_path_buf());
        return Ok(());
    }
    // Sections are hidden or visible as a whole: only repository and
    // namespace directories need a look inside.
    if !matches!(layout::classify(rel), Place::RepoOrNamespace { .. }) {
        return Ok(());
    }
    let mut names = BTreeSet::new();
    for lower in view.lowers() {
        // A symlink is no directory to a layer: never walked through.
        for (name, kind) in lower.read_dir(rel)?.unwrap_or_default() {
            if kind.is_dir() {
                names.insert(name);
            }
        }
    }
    for name in names {
        collect(view, &rel.join(name), out)?;
    }
    Ok(())
}

/// Writes a whiteout (or opaque mark) in upper for every hidden history path.
pub fn materialise(view: &View) -> io::Result<Materialised> {
    let start = Instant::now();
    let paths: Vec<PathBuf> = hidden_paths(view)?.into_iter().collect();
    // Directories that exist only to hold marks keep their history times.
    let mut created = BTreeSet::new();
    for p in &paths {
        for a in p.ancestors().skip(1) {
            if !view.upper_has_dir(a)? {
                created.insert(a.to_path_buf());
            }
        }
    }
    let marks = paths
        .par_iter()
        .map(|rel| {
            view.hide_in_upper(rel).map_err(|e| io::Error::new(e.kind(), format!("hiding {}: {e}", rel.display())))
        })
        .collect::<io::Result<Vec<Hidden>>>()?;
    // Deepest first: setting a child's times does not touch its parent's.
    for dir in created.iter().rev() {
        view.restore_lower_times(dir)?;
    }
    let count = |h: Hidden| marks.iter().filter(|&&m| m == h).count();
    Ok(Materialised {
        hidden: paths.len(),
        whiteouts: count(Hidden::Whiteout),
        opaque: count(Hidden::Opaque),
        already: count(Hidden::Already),
        elapsed: start.elapsed(),
    })
}

/// The default work directory: beside upper, so it is on the same filesystem.
pub fn default_workdir(upper: &Path) -> PathBuf {
    let name = upper.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "upper".into());
    upper.with_file_name(format!(".{name}.regfs-work"))
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "work dir {work} is on another filesystem than upper {upper}; overlayfs needs both on one (pass --work DIR next to the upper)"
    )]
    WorkOtherFs { work: PathBuf, upper: PathBuf },
    #[error("work dir {work} lies inside upper {upper}; put it beside the upper")]
    WorkInsideUpper { work: PathBuf, upper: PathBuf },
    /// The cause follows in the error chain (`{:#}`), not in this message.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> KernelError + '_ {
    move |source| KernelError::Io { path: path.to_path_buf(), source }
}

/// Creates the work dir if needed and checks it can serve `upper`.
pub fn prepare_workdir(upper: &Path, work: &Path) -> Result<PathBuf, KernelError> {
    fs::create_dir_all(work).map_err(io_at(work))?;
    let work = fs::canonicalize(work).map_err(io_at(work))?;
    if work.starts_with(upper) || upper.starts_with(&work) {
        return Err(KernelError::WorkInsideUpper { work, upper: upper.to_path_buf() });
    }
    if fs::metadata(&work).map_err(io_at(&work))?.dev() != fs::metadata(upper).map_err(io_at(upper))?.dev() {
        return Err(KernelError::WorkOtherFs { work, upper: upper.to_path_buf() });
    }
    Ok(work)
}

/// The overlay mount data string. Lowers are listed topmost first, as
/// overlayfs expects; `:` and `,` in paths are escaped.
pub fn overlay_options(lowers: &[PathBuf], upper: &Path, work: &Path, userxattr: bool) -> String {
    let esc = |p: &Path| p.display().to_string().replace('\\', "\\\\").replace(':', "\\:").replace(',', "\\,");
    let lowerdir: Vec<String> = lowers.iter().map(|l| esc(l)).collect();
    // redirect_dir and metacopy off: renaming a merged directory gives EXDEV
    // and copy-up copies data, exactly as the FUSE front end does, so both
    // modes read and write one upper format. `userxattr` already implies
    // redirect_dir=nofollow (creates no redirects) and refuses `off`.
    let mut data = format!("lowerdir={},upperdir={},workdir={}", lowerdir.join(":"), esc(upper), esc(work));
    if userxattr {
        data.push_str(",userxattr,metacopy=off,index=off");
    } else {
        data.push_str(",redirect_dir=off,metacopy=off,index=off");
    }
    data
}

/// Mounts the overlay; the caller has materialised the policy first.
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, mountpoint: &Path) -> io::Result<()> {
    let data = overlay_options(lowers, upper, work, sys::in_user_namespace());
    sys::mount("regfs", mountpoint, "overlay", &data)
}

/// The mountpoint of a kernel overlay mount that uses `upper` as its
/// upperdir, from /proc/self/mountinfo. overlayfs itself only warns about a
/// shared upper with `index=off`, so regfs checks before every use.
pub fn overlay_using_upper(upper: &Path) -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("upperdir={}", upper.display());
    info.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mut post = post.split(' ');
        if post.next()? != "overlay" {
            return None;
        }
        let opts = post.nth(1)?;
        let uses = opts.split(',').any(|o| unescape_mountinfo(o) == want);
        if !uses {
            return None;
        }
        Some(PathBuf::from(unescape_mountinfo(pre.split(' ').nth(4)?)))
    })
}

/// Every mountpoint at or below `dir`, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    info.lines()
        .filter_map(|line| line.split(' ').nth(4).map(|mp| PathBuf::from(unescape_mountinfo(mp))))
        .filter(|mp| mp.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
