//! Operations on an entry: open, attributes, extended attributes.

use super::*;

impl View {
    /// Opens the file behind `rel` for reading (no copy-up).
    pub fn open_read(&self, rel: &Path, e: &Entry, flags: i32) -> io::Result<LayerFile> {
        self.layer(e.top()).open(rel, flags)
    }

    /// The target of the symlink behind `rel`.
    pub fn read_link(&self, rel: &Path, e: &Entry) -> io::Result<PathBuf> {
        self.layer(e.top()).read_link(rel)
    }

    /// Opens the entry `e` at `rel` for writing: copied up first; O_APPEND
    /// and O_TRUNC honoured.
    pub fn open_write(&self, rel: &Path, e: &Entry, flags: i32) -> io::Result<Changed<(File, Entry)>> {
        let mut c = CopyUps::default();
        let entry = self.copy_up(rel, e, &mut c)?;
        let acc = if flags & libc::O_ACCMODE == libc::O_RDWR { libc::O_RDWR } else { libc::O_WRONLY };
        let f = self.upper.open_with(rel, acc | (flags & !(libc::O_ACCMODE | libc::O_CREAT | libc::O_EXCL)), 0)?;
        Ok(Changed::new((f, entry), c))
    }

    /// chmod/chown/truncate/utimens of the entry `e` at `rel`, through copy-up.
    pub fn set_attr(&self, rel: &Path, e: &Entry, change: &AttrChange) -> io::Result<Changed<Entry>> {
        let mut c = CopyUps::default();
        let e = self.copy_up(rel, e, &mut c)?;
        if let Some(mode) = change.mode {
            self.upper.set_mode(rel, mode)?;
        }
        if change.uid.is_some() || change.gid.is_some() {
            self.upper.set_owner(rel, change.uid, change.gid)?;
        }
        if let Some(size) = change.size {
            self.upper.open_with(rel, libc::O_WRONLY, 0)?.set_len(size)?;
        }
        if change.atime.is_some() || change.mtime.is_some() {
            self.upper.set_times(rel, change.atime.unwrap_or(SetTime::Omit), change.mtime.unwrap_or(SetTime::Omit))?;
        }
        Ok(Changed::new(self.stat_stack(rel, &e.layers)?, c))
    }

    /// Gives a name that exists in upper to `uid`:`gid` (a front end
    /// making a new entry the caller's).
    pub fn chown_upper(&self, rel: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.upper.set_owner(rel, Some(uid), Some(gid))
    }

    /// fsync of the directory `rel` in upper; a directory upper lacks
    /// holds nothing unsynced.
    pub fn sync_upper_dir(&self, rel: &Path) -> io::Result<()> {
        match self.upper.sync_dir(rel) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// Extended attributes a user of the view sees (overlay's own are hidden).
    pub fn list_xattrs(&self, rel: &Path, e: &Entry) -> io::Result<Vec<OsString>> {
        Ok(self.layer(e.top()).xattr_names(rel)?.into_iter().filter(|n| !is_overlay_xattr(n)).collect())
    }

    pub fn get_xattr(&self, rel: &Path, e: &Entry, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
        if is_overlay_xattr(name) {
            return Ok(None);
        }
        self.layer(e.top()).xattr(rel, name)
    }

    pub fn set_xattr(&self, rel: &Path, e: &Entry, name: &OsStr, value: &[u8], flags: i32) -> io::Result<Changed<()>> {
        if is_overlay_xattr(name) {
            return Err(errno(libc::EPERM));
        }
        let mut c = CopyUps::default();
        self.copy_up(rel, e, &mut c)?;
        self.upper.set_xattr(rel, name, value, flags)?;
        Ok(Changed::new((), c))
    }

    pub fn remove_xattr(&self, rel: &Path, e: &Entry, name: &OsStr) -> io::Result<Changed<()>> {
        if is_overlay_xattr(name) {
            return Err(errno(libc::EPERM));
        }
        let mut c = CopyUps::default();
        self.copy_up(rel, e, &mut c)?;
        self.upper.remove_xattr(rel, name)?;
        Ok(Changed::new((), c))
    }
}
