//! Copy-up: a lower entry (and the directories above it) copied to upper
//! with data, mode, owner, times and user xattrs before it is changed.

use super::*;

impl View {
    /// Makes sure the directory `rel` exists in upper, copying up each
    /// missing ancestor with its mode, owner and times.
    pub(super) fn ensure_upper_dir(&self, rel: &Path) -> io::Result<()> {
        let up = self.layer_path(UPPER, rel);
        if let Some(m) = lstat(&up)?
            && m.is_dir()
        {
            return Ok(());
        }
        let Some(entry) = self.resolve(rel)? else { return Err(errno(libc::ENOENT)) };
        if !entry.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        let parent = rel.parent();
        if let Some(parent) = parent {
            self.ensure_upper_dir(parent)?;
        }
        let parent_up = parent.map(|p| self.layer_path(UPPER, p));
        let parent_meta = parent_up.as_deref().map(fs::symlink_metadata).transpose()?;
        // A whiteout can't sit where the view shows a directory, but a stale
        // temporary or foreign file could: only a missing name is created.
        fs::create_dir(&up).or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })?;
        count_copyup(true);
        copy_attrs(&entry.meta, &up)?;
        if let (Some(p), Some(m)) = (parent_up, parent_meta) {
            restore_times(&p, &m)?;
        }
        Ok(())
    }

    /// Copies a lower entry up to upper (data, mode, owner, times, xattrs).
    pub(super) fn copy_up(&self, rel: &Path) -> io::Result<Entry> {
        let _g = self.lock();
        self.copy_up_locked(rel)
    }

    pub(super) fn copy_up_locked(&self, rel: &Path) -> io::Result<Entry> {
        let entry = self.resolve_existing(rel)?;
        if entry.top() == UPPER {
            return Ok(entry);
        }
        if entry.is_dir() {
            self.ensure_upper_dir(rel)?;
            return self.resolve_existing(rel);
        }
        let parent = Self::parent_of(rel)?;
        self.ensure_upper_dir(parent)?;
        let parent_up = self.layer_path(UPPER, parent);
        let parent_meta = fs::symlink_metadata(&parent_up)?;
        let src = self.real_path(rel, &entry);
        let tmp = self.tmp_path(parent);
        let ft = entry.meta.file_type();
        let made = if ft.is_file() {
            copy_file_data(&src, &tmp, entry.meta.mode())
        } else if ft.is_symlink() {
            fs::read_link(&src).and_then(|t| std::os::unix::fs::symlink(t, &tmp))
        } else {
            sys::mknod(&tmp, entry.meta.mode(), entry.meta.rdev())
        };
        let finish = made
            .and_then(|_| copy_xattrs(&src, &tmp))
            .and_then(|_| copy_attrs(&entry.meta, &tmp))
            .and_then(|_| fs::rename(&tmp, self.layer_path(UPPER, rel)));
        if let Err(e) = finish {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        restore_times(&parent_up, &parent_meta)?;
        count_copyup(false);
        self.resolve_existing(rel)
    }
}

/// Gives `dir` back the times of `before`: copying up into a directory is
/// no change a user made, so overlayfs keeps its times (its ctime moves).
fn restore_times(dir: &Path, before: &Metadata) -> io::Result<()> {
    let at = |t: io::Result<std::time::SystemTime>| t.map(SetTime::At).unwrap_or(SetTime::Omit);
    sys::utimens(dir, at(before.accessed()), at(before.modified()))
}

pub(super) fn copy_file_data(src: &Path, dst: &Path, mode: u32) -> io::Result<()> {
    let mut from = File::open(src)?;
    let mut to = OpenOptions::new().write(true).create_new(true).mode(mode & 0o7777).open(dst)?;
    // io::copy uses copy_file_range/sendfile between files where it can.
    io::copy(&mut from, &mut to)?;
    Ok(())
}

/// Owner (where permitted), mode and times of `meta` onto `dst`.
pub(super) fn copy_attrs(meta: &Metadata, dst: &Path) -> io::Result<()> {
    if sys::geteuid() == 0
        && let Err(e) = std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
    {
        // In a user namespace, ids outside its map cannot be given
        // (EINVAL): the copy keeps the namespace root's ownership.
        if !(sys::in_user_namespace() && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EPERM))) {
            return Err(e);
        }
    }
    if !meta.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    let atime = meta.accessed().map(SetTime::At).unwrap_or(SetTime::Omit);
    let mtime = meta.modified().map(SetTime::At).unwrap_or(SetTime::Omit);
    sys::utimens(dst, atime, mtime)
}

/// User-visible xattrs travel with a copy-up; overlay's own never do.
pub(super) fn copy_xattrs(src: &Path, dst: &Path) -> io::Result<()> {
    for name in sys::llistxattr(src)? {
        if is_overlay_xattr(&name) {
            continue;
        }
        if let Some(v) = sys::lgetxattr(src, &name)? {
            // Not every namespace is writable by every user: skip, don't fail.
            if let Err(e) = sys::lsetxattr(dst, &name, &v, 0) {
                tracing::debug!(path = %dst.display(), ?name, error = %e, "xattr not copied up");
            }
        }
    }
    Ok(())
}
