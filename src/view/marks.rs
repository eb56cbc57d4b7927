//! Whiteouts and opaque directories: reading them (a layer's marks) and
//! writing them into upper, in the kernel overlayfs format.

use super::*;

impl View {
    /// Whether `p` (already known to exist with metadata `m`) is a whiteout.
    /// In the bottom layer only the 0/0 device form counts: an xattr
    /// whiteout there would hide nothing (nothing lies below), and skipping
    /// it spares a stat of every history file when listing.
    pub(super) fn is_whiteout(&self, li: LayerIdx, p: &Path, m: &Metadata) -> io::Result<bool> {
        let ft = m.file_type();
        if !self.may_be_whiteout(li, ft) {
            return Ok(false);
        }
        if ft.is_char_device() {
            return Ok(m.rdev() == 0);
        }
        Ok(m.len() == 0 && overlay_mark(p, XattrNs::whiteout, |_| true)?)
    }

    pub(super) fn is_bottom(&self, li: LayerIdx) -> bool {
        li + 1 == self.roots.len()
    }

    /// Whether an entry of type `ft` in layer `li` may be a whiteout (so a
    /// listing must stat it to know): a device, or a file above the bottom
    /// layer (the xattr form).
    pub(super) fn may_be_whiteout(&self, li: LayerIdx, ft: fs::FileType) -> bool {
        ft.is_char_device() || (ft.is_file() && !self.is_bottom(li))
    }

    pub(super) fn is_opaque(&self, dir: &Path) -> io::Result<bool> {
        overlay_mark(dir, XattrNs::opaque, |v| v == b"y")
    }

    pub(super) fn set_opaque(&self, p: &Path) -> io::Result<()> {
        sys::lsetxattr(p, OsStr::new(self.ns.opaque()), b"y", 0)
    }

    /// Puts a whiteout at `rel` in upper: the kernel's 0/0 character device,
    /// or where mknod is refused, the xattr form (Linux 6.7+).
    pub(super) fn make_whiteout(&self, rel: &Path) -> io::Result<()> {
        let p = self.layer_path(UPPER, rel);
        match sys::mknod(&p, libc::S_IFCHR, sys::makedev(0, 0)) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
                File::create(&p)?;
                sys::lsetxattr(&p, OsStr::new(self.ns.whiteout()), b"", 0)?;
                if let Some(parent) = p.parent() {
                    sys::lsetxattr(parent, OsStr::new(self.ns.whiteouts_dir()), b"", 0)?;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Removes `rel` from upper and, where a lower holds it, whites it out.
    pub(super) fn remove_and_whiteout(&self, rel: &Path, entry: &Entry) -> io::Result<()> {
        let up = self.layer_path(UPPER, rel);
        if entry.layers.contains(&UPPER) {
            if entry.is_dir() {
                // The view shows it empty: upper holds only whiteouts and temps.
                fs::remove_dir_all(&up)?;
            } else {
                fs::remove_file(&up)?;
            }
        }
        if self.lower_has(rel)? {
            self.ensure_upper_dir(Self::parent_of(rel)?)?;
            self.make_whiteout(rel)?;
        }
        Ok(())
    }

    /// Hides whatever the lowers hold at `rel` by a mark in upper, as kernel
    /// overlay needs it: a whiteout where upper has nothing, the opaque xattr
    /// on an upper directory. The parent must be visible in the view.
    pub fn hide_in_upper(&self, rel: &Path) -> io::Result<Hidden> {
        let _g = self.lock();
        let up = self.layer_path(UPPER, rel);
        match lstat(&up)? {
            Some(m) if m.is_dir() => {
                if self.is_opaque(&up)? {
                    Ok(Hidden::Already)
                } else {
                    self.set_opaque(&up)?;
                    Ok(Hidden::Opaque)
                }
            }
            // A whiteout or an upper file already covers the lowers.
            Some(_) => Ok(Hidden::Already),
            None => {
                self.ensure_upper_dir(Self::parent_of(rel)?)?;
                self.make_whiteout(rel)?;
                Ok(Hidden::Whiteout)
            }
        }
    }

    /// Whether upper holds a directory at `rel`.
    pub fn upper_has_dir(&self, rel: &Path) -> io::Result<bool> {
        Ok(lstat(&self.layer_path(UPPER, rel))?.is_some_and(|m| m.is_dir()))
    }

    /// Gives the upper directory `rel` the times of the topmost lower one:
    /// a directory copied up only to hold whiteouts then looks unchanged.
    pub fn restore_lower_times(&self, rel: &Path) -> io::Result<()> {
        for li in 1..self.roots.len() {
            if let Some(m) = lstat(&self.layer_path(li, rel))?.filter(|m| m.is_dir()) {
                let atime = m.accessed().map(SetTime::At).unwrap_or(SetTime::Omit);
                let mtime = m.modified().map(SetTime::At).unwrap_or(SetTime::Omit);
                return sys::utimens(&self.layer_path(UPPER, rel), atime, mtime);
            }
        }
        Ok(())
    }
}
