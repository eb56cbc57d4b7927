//! Operations on an entry: open, attributes, extended attributes.

use super::*;

impl View {
    /// Opens the file behind `rel` for reading (no copy-up).
    pub fn open_read(&self, rel: &Path, e: &Entry, flags: i32) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .custom_flags(flags & !(libc::O_ACCMODE | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC))
            .open(self.real_path(rel, e))
    }

    /// Opens `rel` for writing: copied up first; O_APPEND and O_TRUNC honoured.
    pub fn open_write(&self, rel: &Path, flags: i32) -> io::Result<(File, Entry)> {
        let entry = self.copy_up(rel)?;
        let acc = flags & libc::O_ACCMODE;
        let f = OpenOptions::new()
            .read(acc == libc::O_RDWR)
            .write(true)
            .custom_flags(flags & !(libc::O_ACCMODE | libc::O_CREAT | libc::O_EXCL))
            .open(self.layer_path(UPPER, rel))?;
        Ok((f, entry))
    }

    /// chmod/chown/truncate/utimens through copy-up.
    pub fn set_attr(&self, rel: &Path, change: &AttrChange) -> io::Result<Entry> {
        self.copy_up(rel)?;
        let p = self.layer_path(UPPER, rel);
        if let Some(mode) = change.mode {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if change.uid.is_some() || change.gid.is_some() {
            std::os::unix::fs::lchown(&p, change.uid, change.gid)?;
        }
        if let Some(size) = change.size {
            OpenOptions::new().write(true).open(&p)?.set_len(size)?;
        }
        if change.atime.is_some() || change.mtime.is_some() {
            sys::utimens(&p, change.atime.unwrap_or(SetTime::Omit), change.mtime.unwrap_or(SetTime::Omit))?;
        }
        self.resolve_existing(rel)
    }

    /// Extended attributes a user of the view sees (overlay's own are hidden).
    pub fn list_xattrs(&self, rel: &Path, e: &Entry) -> io::Result<Vec<OsString>> {
        Ok(sys::llistxattr(&self.real_path(rel, e))?.into_iter().filter(|n| !is_overlay_xattr(n)).collect())
    }

    pub fn get_xattr(&self, rel: &Path, e: &Entry, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
        if is_overlay_xattr(name) {
            return Ok(None);
        }
        sys::lgetxattr(&self.real_path(rel, e), name)
    }

    pub fn set_xattr(&self, rel: &Path, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        if is_overlay_xattr(name) {
            return Err(errno(libc::EPERM));
        }
        self.copy_up(rel)?;
        sys::lsetxattr(&self.layer_path(UPPER, rel), name, value, flags)
    }

    pub fn remove_xattr(&self, rel: &Path, name: &OsStr) -> io::Result<()> {
        if is_overlay_xattr(name) {
            return Err(errno(libc::EPERM));
        }
        self.copy_up(rel)?;
        sys::lremovexattr(&self.layer_path(UPPER, rel), name)
    }
}
