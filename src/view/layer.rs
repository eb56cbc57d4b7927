//! Layers: the trees the view stacks. The view asks a layer to stat, list,
//! read and (upper only) write names relative to the layer's root; it never
//! builds a layer's real path. A directory layer answers through `*at` calls
//! on a handle of its root, so a view path near PATH_MAX resolves under a root
//! of any length; a layer backed by something else (a tar file) is one more
//! implementation of [`Layer`].

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::sys::{self, FileKind, SetTime, Stat};

/// What the view reads of a layer. Paths are relative to the layer's root
/// (`""` is the root) and never followed through a final symlink.
pub trait Layer: fmt::Debug + Send + Sync {
    /// Where the layer comes from (its directory), for messages and for
    /// the kernel front end's `lowerdir=`.
    fn source(&self) -> &Path;
    /// What `rel` is; `None` when the layer holds nothing there.
    fn stat(&self, rel: &Path) -> io::Result<Option<Stat>>;
    /// The names in the directory `rel` with their kinds; `None` when the
    /// layer has no directory there.
    fn read_dir(&self, rel: &Path) -> io::Result<Option<Vec<(OsString, FileKind)>>>;
    /// Opens the regular file `rel` for reading with `flags` (access mode
    /// and creation flags are the layer's to set).
    fn open(&self, rel: &Path, flags: i32) -> io::Result<LayerFile>;
    fn read_link(&self, rel: &Path) -> io::Result<PathBuf>;
    /// The extended attribute names of `rel`.
    fn xattr_names(&self, rel: &Path) -> io::Result<Vec<OsString>>;
    /// One extended attribute of `rel`; `None` when it is not set.
    fn xattr(&self, rel: &Path, name: &OsStr) -> io::Result<Option<Vec<u8>>>;
}

/// A layer's regular file, open for reading: a whole file, or a byte range
/// of one (a member of a tar file a layer is backed by).
#[derive(Debug)]
pub struct LayerFile {
    file: File,
    /// (start, length) of the data in `file`; `None`: all of it, however
    /// long it grows (an upper file another handle writes).
    span: Option<(u64, u64)>,
}

impl LayerFile {
    pub fn whole(file: File) -> LayerFile {
        LayerFile { file, span: None }
    }

    /// The `len` bytes of `file` from `start`.
    pub fn range(file: File, start: u64, len: u64) -> LayerFile {
        LayerFile { file, span: Some((start, len)) }
    }

    /// The file itself where the data is all of it (FUSE passthrough,
    /// `lseek` for holes); `None` for a range.
    pub fn whole_file(&self) -> Option<&File> {
        self.span.is_none().then_some(&self.file)
    }

    /// [`LayerFile::whole_file`], by value.
    pub fn into_whole_file(self) -> Result<File, LayerFile> {
        if self.span.is_none() { Ok(self.file) } else { Err(self) }
    }

    /// `pread` of the data at `off` (a short read at its end).
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        match self.span {
            None => self.file.read_at(buf, off),
            Some((start, len)) => {
                let room = len.saturating_sub(off).min(buf.len() as u64) as usize;
                if room == 0 {
                    return Ok(0);
                }
                self.file.read_at(&mut buf[..room], start + off)
            }
        }
    }

    /// The data, up to `max` bytes.
    pub fn read_all(self, max: u64) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let (f, len) = self.into_sequential()?;
        let mut buf = Vec::with_capacity(len.min(max) as usize);
        f.take(len.min(max)).read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// The file positioned at the data's start, and the data's length now:
    /// for readers that go through it once (copy-up, export, GC). Reading
    /// no more than the length stays inside the data; a plain `File` lets
    /// `io::copy` use `copy_file_range`.
    pub fn into_sequential(mut self) -> io::Result<(File, u64)> {
        use std::io::Seek;
        match self.span {
            None => {
                let len = sys::stat_of(&self.file)?.size;
                Ok((self.file, len))
            }
            Some((start, len)) => {
                self.file.seek(io::SeekFrom::Start(start))?;
                Ok((self.file, len))
            }
        }
    }
}

/// A layer that is a directory tree on a local filesystem; upper is one,
/// and so is every lower of a mount.
pub struct DirLayer {
    root: PathBuf,
    fd: OwnedFd,
    /// `/proc/self/fd/N` of `fd`: the xattr calls have no `*at` form, and
    /// this prefix keeps their paths as short as the view's own.
    proc_root: Option<PathBuf>,
}

impl fmt::Debug for DirLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirLayer").field("root", &self.root).finish()
    }
}

impl DirLayer {
    /// Opens the directory `root` as a layer (it must be one).
    pub fn open(root: &Path) -> io::Result<DirLayer> {
        let fd = sys::open_dir_handle(root).map_err(|e| {
            let what = if e.raw_os_error() == Some(libc::ENOTDIR) { "is not a directory" } else { "cannot be opened" };
            io::Error::new(e.kind(), format!("{} {what}: {e}", root.display()))
        })?;
        let proc_root = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        // Without /proc (a bare chroot), xattr calls take the joined path.
        let proc_root = std::fs::metadata(&proc_root).is_ok_and(|m| m.is_dir()).then_some(proc_root);
        Ok(DirLayer { root: root.to_path_buf(), fd, proc_root })
    }

    /// The real path of `rel`, for the calls that take only a path.
    fn xattr_path(&self, rel: &Path) -> PathBuf {
        // "." for the root: the l* calls would act on the /proc magic link.
        let base = self.proc_root.as_deref().unwrap_or(&self.root);
        base.join(if rel.as_os_str().is_empty() { Path::new(".") } else { rel })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens `rel` with raw `open(2)` flags and creation mode.
    pub fn open_with(&self, rel: &Path, flags: i32, mode: u32) -> io::Result<File> {
        sys::open_at(self.fd.as_fd(), rel, flags, mode)
    }

    pub fn mkdir(&self, rel: &Path, mode: u32) -> io::Result<()> {
        sys::mkdir_at(self.fd.as_fd(), rel, mode)
    }

    pub fn mknod(&self, rel: &Path, mode: u32, rdev: u64) -> io::Result<()> {
        sys::mknod_at(self.fd.as_fd(), rel, mode, rdev)
    }

    pub fn symlink(&self, target: &Path, rel: &Path) -> io::Result<()> {
        sys::symlink_at(target, self.fd.as_fd(), rel)
    }

    pub fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        sys::link_at(self.fd.as_fd(), from, to)
    }

    pub fn rename(&self, from: &Path, to: &Path, flags: u32) -> io::Result<()> {
        sys::rename_at(self.fd.as_fd(), from, to, flags)
    }

    pub fn remove_file(&self, rel: &Path) -> io::Result<()> {
        sys::unlink_at(self.fd.as_fd(), rel, false)
    }

    /// Removes `rel` and, when it is a directory, everything in it.
    pub fn remove_all(&self, rel: &Path) -> io::Result<()> {
        let Some(st) = self.stat(rel)? else { return Ok(()) };
        if !st.is_dir() {
            return self.remove_file(rel);
        }
        for (name, _) in self.read_dir(rel)?.unwrap_or_default() {
            self.remove_all(&rel.join(name))?;
        }
        sys::unlink_at(self.fd.as_fd(), rel, true)
    }

    pub fn set_times(&self, rel: &Path, atime: SetTime, mtime: SetTime) -> io::Result<()> {
        sys::utimens_at(self.fd.as_fd(), rel, atime, mtime)
    }

    pub fn set_mode(&self, rel: &Path, mode: u32) -> io::Result<()> {
        sys::chmod_at(self.fd.as_fd(), rel, mode & 0o7777)
    }

    pub fn set_owner(&self, rel: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        sys::chown_at(self.fd.as_fd(), rel, uid, gid)
    }

    pub fn set_xattr(&self, rel: &Path, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        sys::lsetxattr(&self.xattr_path(rel), name, value, flags)
    }

    pub fn remove_xattr(&self, rel: &Path, name: &OsStr) -> io::Result<()> {
        sys::lremovexattr(&self.xattr_path(rel), name)
    }

    /// fsync of the directory `rel`: makes the names in it durable.
    pub fn sync_dir(&self, rel: &Path) -> io::Result<()> {
        self.open_with(rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)?.sync_all()
    }
}

impl Layer for DirLayer {
    fn source(&self) -> &Path {
        &self.root
    }

    fn stat(&self, rel: &Path) -> io::Result<Option<Stat>> {
        sys::stat_at(self.fd.as_fd(), rel)
    }

    fn read_dir(&self, rel: &Path) -> io::Result<Option<Vec<(OsString, FileKind)>>> {
        let Some(names) = sys::read_dir_at(self.fd.as_fd(), rel)? else { return Ok(None) };
        names
            .into_iter()
            .filter_map(|(name, kind)| match kind {
                Some(k) => Some(Ok((name, k))),
                // Some filesystems leave the type out of the listing.
                None => match self.stat(&rel.join(&name)) {
                    Ok(Some(st)) => Some(Ok((name, st.kind()))),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                },
            })
            .collect::<io::Result<Vec<_>>>()
            .map(Some)
    }

    fn open(&self, rel: &Path, flags: i32) -> io::Result<LayerFile> {
        let keep = flags & !(libc::O_ACCMODE | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
        self.open_with(rel, libc::O_RDONLY | keep, 0).map(LayerFile::whole)
    }

    fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        sys::read_link_at(self.fd.as_fd(), rel)
    }

    fn xattr_names(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        sys::llistxattr(&self.xattr_path(rel))
    }

    fn xattr(&self, rel: &Path, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
        sys::lgetxattr(&self.xattr_path(rel), name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_range_reads_only_its_bytes_and_a_whole_file_all_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let part = LayerFile::range(File::open(&p).unwrap(), 3, 4);
        let mut buf = [0u8; 8];
        assert_eq!(part.read_at(&mut buf, 0).unwrap(), 4);
        assert_eq!(&buf[..4], b"3456");
        assert_eq!(part.read_at(&mut buf, 2).unwrap(), 2, "short at the range's end");
        assert_eq!(&buf[..2], b"56");
        assert_eq!(part.read_at(&mut buf, 4).unwrap(), 0);
        assert!(part.whole_file().is_none());
        let (mut f, len) = part.into_sequential().unwrap();
        let mut s = String::new();
        (&mut f).take(len).read_to_string(&mut s).unwrap();
        assert_eq!(s, "3456");

        let whole = LayerFile::whole(File::open(&p).unwrap());
        assert_eq!(whole.read_at(&mut buf, 6).unwrap(), 4);
        assert!(whole.whole_file().is_some());
        let (f, len) = whole.into_sequential().unwrap();
        assert_eq!(len, 10);
        assert!(f.metadata().unwrap().is_file());
    }
}
