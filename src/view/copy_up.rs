//! Copy-up: a lower entry (and the directories above it) copied to upper
//! with data, mode, owner, times and user xattrs before it is changed.

use super::*;

impl View {
    /// Makes sure the directory `rel` exists in upper, copying up each
    /// missing ancestor with its mode, owner and times.
    pub(super) fn ensure_upper_dir(&self, rel: &Path, c: &mut CopyUps) -> io::Result<()> {
        if self.stat_in(UPPER, rel)?.is_some_and(|m| m.is_dir()) {
            return Ok(());
        }
        let Some(entry) = self.resolve(rel)? else { return Err(errno(libc::ENOENT)) };
        if !entry.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        let parent = rel.parent();
        if let Some(parent) = parent {
            self.ensure_upper_dir(parent, c)?;
        }
        let parent_meta = parent.map(|p| self.stat_in(UPPER, p)).transpose()?.flatten();
        // A whiteout can't sit where the view shows a directory, but a stale
        // temporary or foreign file could: only a missing name is created.
        self.upper
            .mkdir(rel, 0o700)
            .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })?;
        c.count(true);
        self.copy_attrs(&entry.meta, rel)?;
        if let (Some(p), Some(m)) = (parent, parent_meta) {
            self.restore_times(p, &m)?;
        }
        Ok(())
    }

    /// Copies the entry `e` at `rel` up to upper (data, mode, owner, times,
    /// xattrs) unless upper has it already; returns it fresh.
    pub(super) fn copy_up(&self, rel: &Path, e: &Entry, c: &mut CopyUps) -> io::Result<Entry> {
        let _g = self.lock();
        self.copy_up_locked(rel, e, c)
    }

    pub(super) fn copy_up_locked(&self, rel: &Path, e: &Entry, c: &mut CopyUps) -> io::Result<Entry> {
        // Fresh: a copy-up may have happened since `e` was found.
        let entry = self.stat_stack(rel, &e.layers)?;
        if entry.top() == UPPER {
            return Ok(entry);
        }
        if entry.is_dir() {
            self.ensure_upper_dir(rel, c)?;
            return self.stat_stack(rel, &entry.layers);
        }
        let parent = Self::parent_of(rel)?;
        self.ensure_upper_dir(parent, c)?;
        let parent_meta = self.stat_in(UPPER, parent)?.ok_or_else(|| errno(libc::ENOENT))?;
        let src = self.layer(entry.top());
        let tmp = self.tmp_path(parent);
        let m = &entry.meta;
        let made = match m.kind() {
            FileKind::File => self.copy_file_data(src, rel, &tmp, m.perm()),
            FileKind::Symlink => src.read_link(rel).and_then(|t| self.upper.symlink(&t, &tmp)),
            _ => self.upper.mknod(&tmp, m.mode, m.rdev),
        };
        let finish = made
            .and_then(|_| self.copy_xattrs(src, rel, &tmp))
            .and_then(|_| self.copy_attrs(m, &tmp))
            .and_then(|_| self.upper.rename(&tmp, rel, 0));
        if let Err(e) = finish {
            let _ = self.upper.remove_file(&tmp);
            return Err(e);
        }
        self.restore_times(parent, &parent_meta)?;
        c.count(false);
        self.stat_stack(rel, &entry.layers)
    }

    /// Gives the upper directory `dir` back the times of `before`: copying
    /// up into a directory is no change a user made, so overlayfs keeps its
    /// times (its ctime moves).
    fn restore_times(&self, dir: &Path, before: &Stat) -> io::Result<()> {
        self.upper.set_times(dir, before.atime.into(), before.mtime.into())
    }

    /// The data of the file `rel` of `src` into the new upper file `dst`.
    fn copy_file_data(&self, src: &dyn Layer, rel: &Path, dst: &Path, mode: u32) -> io::Result<()> {
        let (from, len) = src.open(rel, 0)?.into_sequential()?;
        let mut to = self.upper.open_with(dst, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode & 0o7777)?;
        // io::copy uses copy_file_range/sendfile between files where it can.
        let copied = io::copy(&mut io::Read::take(from, len), &mut to)?;
        if copied != len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while it was copied up"));
        }
        Ok(())
    }

    /// Owner (where permitted), mode and times of `meta` onto the upper entry `dst`.
    pub(super) fn copy_attrs(&self, meta: &Stat, dst: &Path) -> io::Result<()> {
        if sys::geteuid() == 0
            && let Err(e) = self.upper.set_owner(dst, Some(meta.uid), Some(meta.gid))
        {
            // In a user namespace, ids outside its map cannot be given
            // (EINVAL): the copy keeps the namespace root's ownership.
            if !(sys::in_user_namespace() && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EPERM))) {
                return Err(e);
            }
        }
        if !meta.is_symlink() {
            self.upper.set_mode(dst, meta.perm())?;
        }
        self.upper.set_times(dst, meta.atime.into(), meta.mtime.into())
    }

    /// User-visible xattrs travel with a copy-up; overlay's own never do.
    fn copy_xattrs(&self, src: &dyn Layer, rel: &Path, dst: &Path) -> io::Result<()> {
        for name in src.xattr_names(rel)? {
            if is_overlay_xattr(&name) {
                continue;
            }
            if let Some(v) = src.xattr(rel, &name)? {
                // Not every namespace is writable by every user: skip, don't fail.
                if let Err(e) = self.upper.set_xattr(dst, &name, &v, 0) {
                    tracing::debug!(path = %dst.display(), ?name, error = %e, "xattr not copied up");
                }
            }
        }
        Ok(())
    }
}
