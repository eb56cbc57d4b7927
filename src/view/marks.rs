//! Whiteouts and opaque directories: reading them (a layer's marks) and
//! writing them into upper, in the kernel overlayfs format.

use super::*;

impl View {
    /// Whether `rel` in layer `li` (known to exist as `m`) is a whiteout.
    /// In the bottom layer only the 0/0 device form counts: an xattr
    /// whiteout there would hide nothing (nothing lies below), and skipping
    /// it spares a stat of every history file when listing.
    pub(super) fn is_whiteout(&self, li: LayerIdx, rel: &Path, m: &Stat) -> io::Result<bool> {
        let kind = m.kind();
        if !self.may_be_whiteout(li, kind) {
            return Ok(false);
        }
        if kind == FileKind::CharDevice {
            return Ok(m.rdev == 0);
        }
        Ok(m.size == 0 && overlay_mark(self.layer(li), rel, XattrNs::whiteout, |_| true)?)
    }

    pub(super) fn is_bottom(&self, li: LayerIdx) -> bool {
        li + 1 == self.layer_count()
    }

    /// Whether an entry of kind `kind` in layer `li` may be a whiteout (so a
    /// listing must stat it to know): a device, or a file above the bottom
    /// layer (the xattr form).
    pub(super) fn may_be_whiteout(&self, li: LayerIdx, kind: FileKind) -> bool {
        kind == FileKind::CharDevice || (kind.is_file() && !self.is_bottom(li))
    }

    /// Whether the directory `rel` of layer `li` is marked opaque.
    pub(super) fn is_opaque(&self, li: LayerIdx, rel: &Path) -> io::Result<bool> {
        overlay_mark(self.layer(li), rel, XattrNs::opaque, |v| v == b"y")
    }

    pub(super) fn set_opaque(&self, rel: &Path) -> io::Result<()> {
        self.upper.set_xattr(rel, OsStr::new(self.ns.opaque()), b"y", 0)
    }

    /// Puts a whiteout at `rel` in upper: the kernel's 0/0 character device,
    /// or where mknod is refused, the xattr form (Linux 6.7+).
    pub(super) fn make_whiteout(&self, rel: &Path) -> io::Result<()> {
        match self.upper.mknod(rel, libc::S_IFCHR, sys::makedev(0, 0)) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
                self.upper.open_with(rel, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644)?;
                self.upper.set_xattr(rel, OsStr::new(self.ns.whiteout()), b"", 0)?;
                self.upper.set_xattr(Self::parent_of(rel)?, OsStr::new(self.ns.whiteouts_dir()), b"", 0)?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Removes `rel` from upper and, where a lower holds it, whites it out.
    pub(super) fn remove_and_whiteout(&self, rel: &Path, entry: &Entry, c: &mut CopyUps) -> io::Result<()> {
        if entry.layers.contains(&UPPER) {
            if entry.is_dir() {
                // The view shows it empty: upper holds only whiteouts and temps.
                self.upper.remove_all(rel)?;
            } else {
                self.upper.remove_file(rel)?;
            }
        }
        if self.lower_has(rel)? {
            self.ensure_upper_dir(Self::parent_of(rel)?, c)?;
            self.make_whiteout(rel)?;
        }
        Ok(())
    }

    /// Hides `rel`, which only a lower holds (GC's plan says so, offline:
    /// no mount serves the view), by a whiteout; `parent_ready`: its upper
    /// parent directory exists already. Where upper turns out to hold the
    /// name after all, the whole removal runs instead.
    pub fn whiteout_lower_only(&self, rel: &Path, parent_ready: bool) -> io::Result<()> {
        {
            let _g = self.lock();
            if !parent_ready {
                self.ensure_upper_dir(Self::parent_of(rel)?, &mut CopyUps::default())?;
            }
            match self.make_whiteout(rel) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                Err(_) => {}
            }
        }
        self.remove_tree(rel)
    }

    /// Hides whatever the lowers hold at `rel` by a mark in upper, as kernel
    /// overlay needs it: a whiteout where upper has nothing, the opaque xattr
    /// on an upper directory. The parent must be visible in the view. (For
    /// the kernel front end's materialisation: no mount serves the view
    /// meanwhile, so its copy-ups are not told.)
    pub fn hide_in_upper(&self, rel: &Path) -> io::Result<Hidden> {
        let _g = self.lock();
        match self.stat_in(UPPER, rel)? {
            Some(m) if m.is_dir() => {
                if self.is_opaque(UPPER, rel)? {
                    Ok(Hidden::Already)
                } else {
                    self.set_opaque(rel)?;
                    Ok(Hidden::Opaque)
                }
            }
            // A whiteout or an upper file already covers the lowers.
            Some(_) => Ok(Hidden::Already),
            None => {
                self.ensure_upper_dir(Self::parent_of(rel)?, &mut CopyUps::default())?;
                self.make_whiteout(rel)?;
                Ok(Hidden::Whiteout)
            }
        }
    }

    /// Whether upper holds a directory at `rel`.
    pub fn upper_has_dir(&self, rel: &Path) -> io::Result<bool> {
        Ok(self.stat_in(UPPER, rel)?.is_some_and(|m| m.is_dir()))
    }

    /// Gives the upper directory `rel` the times of the topmost lower one:
    /// a directory copied up only to hold whiteouts then looks unchanged.
    pub fn restore_lower_times(&self, rel: &Path) -> io::Result<()> {
        for li in 1..self.layer_count() {
            if let Some(m) = self.stat_in(li, rel)?.filter(|m| m.is_dir()) {
                return self.upper.set_times(rel, m.atime.into(), m.mtime.into());
            }
        }
        Ok(())
    }
}
