//! Namespace operations: create, mkdir, mknod, symlink, link, unlink,
//! rmdir, whole-tree removal and rename, each on a name in a directory.

use super::*;

impl View {
    /// Removes a whiteout (or any non-directory) that upper holds at `rel`,
    /// so a new entry can take its place.
    pub(super) fn clear_upper_slot(&self, rel: &Path) -> io::Result<()> {
        if let Some(m) = self.stat_in(UPPER, rel)? {
            if self.is_whiteout(UPPER, rel, &m)? {
                self.upper.remove_file(rel)?;
            } else {
                return Err(errno(libc::EEXIST));
            }
        }
        Ok(())
    }

    /// Resolves the parent directory of `rel` and names the last component.
    pub(super) fn parent_dir(&self, rel: &Path) -> io::Result<(PathBuf, Entry, OsString)> {
        let parent = Self::parent_of(rel)?;
        let name = rel.file_name().ok_or_else(|| errno(libc::EINVAL))?.to_os_string();
        let e = self.resolve_existing(parent)?;
        if !e.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        Ok((parent.to_path_buf(), e, name))
    }

    /// Prepares upper for a new name in `dir` that does not exist in the
    /// view; returns its path.
    pub(super) fn prepare_new(&self, dir: Dir, name: &OsStr, c: &mut CopyUps) -> io::Result<PathBuf> {
        if self.lookup(dir, name)?.is_some() {
            return Err(errno(libc::EEXIST));
        }
        self.ensure_upper_dir(dir.rel, c)?;
        let rel = dir.rel.join(name);
        self.clear_upper_slot(&rel)?;
        Ok(rel)
    }

    /// Runs `op` (a name operation: `unlink`, `rmdir`, ...) on the name `rel` in its parent,
    /// resolved from the root. (A stack resolved before the lock is taken
    /// is as good as one a front end kept, see [`Dir`].)
    pub fn in_parent<T>(&self, rel: &Path, op: impl FnOnce(Dir, &OsStr) -> io::Result<T>) -> io::Result<T> {
        let (parent, e, name) = self.parent_dir(rel)?;
        op(Dir { rel: &parent, layers: &e.layers }, &name)
    }

    /// A name just created in upper: the only layer it has.
    pub(super) fn new_upper_entry(&self, rel: &Path) -> io::Result<Entry> {
        Ok(Entry { layers: vec![UPPER], meta: self.stat_in(UPPER, rel)?.ok_or_else(|| errno(libc::ENOENT))? })
    }

    /// Makes a new name in `dir` with `make` (given its path in upper) and
    /// returns its entry.
    fn create_with(
        &self,
        dir: Dir,
        name: &OsStr,
        make: impl FnOnce(&Path) -> io::Result<()>,
    ) -> io::Result<Changed<Entry>> {
        let _g = self.lock();
        let mut c = CopyUps::default();
        let rel = self.prepare_new(dir, name, &mut c)?;
        make(&rel)?;
        Ok(Changed::new(self.new_upper_entry(&rel)?, c))
    }

    /// Creates a regular file `name` in `dir` (`O_CREAT|O_EXCL` semantics) and opens it.
    pub fn create_file(
        &self,
        dir: Dir,
        name: &OsStr,
        mode: u32,
        write: bool,
        read: bool,
    ) -> io::Result<Changed<(File, Entry)>> {
        let _g = self.lock();
        let mut c = CopyUps::default();
        let rel = self.prepare_new(dir, name, &mut c)?;
        // open(O_CREAT|O_RDONLY) creates a file too (POSIX).
        let acc = match (read, write) {
            (true, true) => libc::O_RDWR,
            (_, true) => libc::O_WRONLY,
            _ => libc::O_RDONLY,
        };
        let f = self.upper.open_with(&rel, acc | libc::O_CREAT | libc::O_EXCL, mode & 0o7777)?;
        let meta = sys::stat_of(&f)?;
        Ok(Changed::new((f, Entry { layers: vec![UPPER], meta }), c))
    }

    /// Creates a directory `name` in `dir`; opaque where a lower holds the same
    /// name, so nothing hidden below leaks back in (also under kernel overlay).
    pub fn mkdir(&self, dir: Dir, name: &OsStr, mode: u32) -> io::Result<Changed<Entry>> {
        self.create_with(dir, name, |rel| {
            self.upper.mkdir(rel, 0o700)?;
            self.upper.set_mode(rel, mode)?;
            if self.lower_has(rel)? {
                self.set_opaque(rel)?;
            }
            Ok(())
        })
    }

    /// Creates a special file (fifo, socket, device) `name` in `dir`, in upper.
    /// A 0/0 character device is refused (EPERM), as kernel overlayfs
    /// refuses it: in the upper format it is a whiteout, so the new file
    /// would vanish from the view.
    pub fn mknod(&self, dir: Dir, name: &OsStr, mode: u32, rdev: u64) -> io::Result<Changed<Entry>> {
        if mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
            tracing::warn!(
                path = %dir.rel.join(name).display(),
                "mknod of a 0/0 character device refused (EPERM): upper keeps whiteouts in that form"
            );
            return Err(errno(libc::EPERM));
        }
        self.create_with(dir, name, |rel| self.upper.mknod(rel, mode, rdev))
    }

    /// Creates a symlink `name` in `dir`.
    pub fn symlink(&self, dir: Dir, name: &OsStr, target: &Path) -> io::Result<Changed<Entry>> {
        self.create_with(dir, name, |rel| self.upper.symlink(target, rel))
    }

    /// Hard link of the entry `src` at `src_rel` as `name` in `dir`: the
    /// source is copied up first, as the kernel does.
    pub fn link(&self, src_rel: &Path, src: &Entry, dir: Dir, name: &OsStr) -> io::Result<Changed<Entry>> {
        if src.is_dir() {
            return Err(errno(libc::EPERM));
        }
        let _g = self.lock();
        let mut c = CopyUps::default();
        self.copy_up_locked(src_rel, src, &mut c)?;
        let to = self.prepare_new(dir, name, &mut c)?;
        self.upper.hard_link(src_rel, &to)?;
        Ok(Changed::new(self.new_upper_entry(&to)?, c))
    }

    /// Removes the non-directory `name` of `dir` (a whiteout where a lower holds it).
    pub fn unlink(&self, dir: Dir, name: &OsStr) -> io::Result<Changed<()>> {
        let _g = self.lock();
        let e = self.lookup_existing(dir, name)?;
        if e.is_dir() {
            return Err(errno(libc::EISDIR));
        }
        let mut c = CopyUps::default();
        self.remove_and_whiteout(&dir.rel.join(name), &e, &mut c)?;
        Ok(Changed::new((), c))
    }

    /// Removes the empty directory `name` of `dir` (a whiteout where a lower holds it).
    pub fn rmdir(&self, dir: Dir, name: &OsStr) -> io::Result<Changed<()>> {
        let _g = self.lock();
        let e = self.lookup_existing(dir, name)?;
        if !e.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        let rel = dir.rel.join(name);
        if !self.names(e.as_dir(&rel))?.is_empty() {
            return Err(errno(libc::ENOTEMPTY));
        }
        let mut c = CopyUps::default();
        self.remove_and_whiteout(&rel, &e, &mut c)?;
        Ok(Changed::new((), c))
    }

    /// Removes `rel` and everything below it in one step: the upper part is
    /// deleted and, where a lower holds the name, one whiteout hides the rest.
    /// The same end state as unlinking and rmdir-ing every entry below it,
    /// without visiting them (GC removes whole history repositories this
    /// way, with no mount serving the view: its copy-ups are not told).
    pub fn remove_tree(&self, rel: &Path) -> io::Result<()> {
        if rel.as_os_str().is_empty() {
            return Err(errno(libc::EBUSY));
        }
        let _g = self.lock();
        let Some(e) = self.resolve(rel)? else { return Ok(()) };
        self.remove_and_whiteout(rel, &e, &mut CopyUps::default())
    }

    /// rename(2) of `name` in `from` to `to_name` in `to`. Directories that
    /// have anything in a lower layer give EXDEV, as under kernel overlay
    /// without `redirect_dir`.
    pub fn rename(&self, from: Dir, name: &OsStr, to: Dir, to_name: &OsStr, flags: u32) -> io::Result<Changed<()>> {
        let _g = self.lock();
        if flags & libc::RENAME_EXCHANGE != 0 || flags & libc::RENAME_WHITEOUT != 0 {
            return Err(errno(libc::EINVAL));
        }
        let src = self.lookup_existing(from, name)?;
        let (src_rel, dst_rel) = (from.rel.join(name), to.rel.join(to_name));
        let mut c = CopyUps::default();
        if src_rel == dst_rel {
            return Ok(Changed::new((), c));
        }
        if dst_rel.starts_with(&src_rel) {
            return Err(errno(libc::EINVAL));
        }
        let dst = self.lookup(to, to_name)?;
        if let Some(d) = &dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(errno(libc::EEXIST));
            }
            match (src.is_dir(), d.is_dir()) {
                (true, false) => return Err(errno(libc::ENOTDIR)),
                (false, true) => return Err(errno(libc::EISDIR)),
                _ => {}
            }
        }
        // Before the target's emptiness, as overlayfs checks it.
        if src.is_dir() && !src.upper_only() {
            return Err(errno(libc::EXDEV));
        }
        if let Some(d) = dst.as_ref().filter(|d| src.is_dir() && d.is_dir())
            && !self.names(d.as_dir(&dst_rel))?.is_empty()
        {
            return Err(errno(libc::ENOTEMPTY));
        }
        if !src.is_dir() {
            self.copy_up_locked(&src_rel, &src, &mut c)?;
        }
        self.ensure_upper_dir(to.rel, &mut c)?;
        match &dst {
            // An empty merged or opaque directory in upper holds only whiteouts.
            Some(d) if d.is_dir() && d.layers.contains(&UPPER) => self.upper.remove_all(&dst_rel)?,
            Some(_) => {}
            None => self.clear_upper_slot(&dst_rel)?,
        }
        self.upper.rename(&src_rel, &dst_rel, 0)?;
        if src.is_dir() && self.lower_has(&dst_rel)? {
            self.set_opaque(&dst_rel)?;
        }
        if self.lower_has(&src_rel)? {
            self.make_whiteout(&src_rel)?;
        }
        Ok(Changed::new((), c))
    }
}
