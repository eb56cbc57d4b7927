//! The one module with `unsafe` and raw libc: thin, checked wrappers.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::time::SystemTime;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cname(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

pub fn geteuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() }
}

pub fn getegid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getegid() }
}

/// Sets the process umask; the FUSE front end applies the caller's umask itself.
pub fn set_umask(mask: u32) {
    // SAFETY: plain syscall on a value.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// `mknod(path, mode, rdev)`: devices, fifos and the kernel's 0/0 whiteout.
pub fn mknod(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: c is a valid NUL-terminated string.
    check(unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) })
}

pub fn lgetxattr(path: &Path, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    let c = cstr(path)?;
    let n = cname(name)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: buffers are valid for the lengths passed.
        let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(Some(buf));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 16, 0),
            _ => return Err(err),
        }
    }
}

pub fn lsetxattr(path: &Path, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let c = cstr(path)?;
    let n = cname(name)?;
    // SAFETY: pointers valid for the given lengths.
    check(unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) })
}

pub fn lremovexattr(path: &Path, name: &OsStr) -> io::Result<()> {
    let c = cstr(path)?;
    let n = cname(name)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })
}

/// Lists extended attribute names of `path` (not following symlinks).
pub fn llistxattr(path: &Path) -> io::Result<Vec<OsString>> {
    let c = cstr(path)?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: buffer valid for its length.
        let r = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(buf
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| OsString::from_vec(s.to_vec()))
                .collect());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 16, 0),
            _ => return Err(err),
        }
    }
}

/// A time to set with [`utimens`].
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    Omit,
    Now,
    At(SystemTime),
}

fn timespec(t: SetTime) -> libc::timespec {
    match t {
        SetTime::Omit => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        SetTime::Now => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        SetTime::At(t) => {
            let (sec, nsec) = match t.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let mut sec = -(d.as_secs() as i64);
                    let mut nsec = d.subsec_nanos() as i64;
                    if nsec > 0 {
                        sec -= 1;
                        nsec = 1_000_000_000 - nsec;
                    }
                    (sec, nsec)
                }
            };
            libc::timespec { tv_sec: sec as libc::time_t, tv_nsec: nsec as _ }
        }
    }
}

/// `futimens(fd, [atime, mtime])`: the times of an open file.
pub fn futimens(f: &impl AsRawFd, atime: SetTime, mtime: SetTime) -> io::Result<()> {
    let ts = [timespec(atime), timespec(mtime)];
    // SAFETY: an open descriptor and a two-element timespec array.
    check(unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) })
}

/// `utimensat(AT_FDCWD, path, [atime, mtime], AT_SYMLINK_NOFOLLOW)`.
pub fn utimens(path: &Path, atime: SetTime, mtime: SetTime) -> io::Result<()> {
    let c = cstr(path)?;
    let ts = [timespec(atime), timespec(mtime)];
    // SAFETY: valid C string and a two-element timespec array.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}

/// `renameat2` with flags (`RENAME_NOREPLACE`, ...).
pub fn rename_flags(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let f = cstr(from)?;
    let t = cstr(to)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), flags) })
}

pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

pub fn statvfs(path: &Path) -> io::Result<StatFs> {
    let c = cstr(path)?;
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    check(unsafe { libc::statvfs(c.as_ptr(), &mut s) })?;
    Ok(StatFs {
        blocks: s.f_blocks,
        bfree: s.f_bfree,
        bavail: s.f_bavail,
        files: s.f_files,
        ffree: s.f_ffree,
        bsize: s.f_bsize as u32,
        namelen: s.f_namemax as u32,
        frsize: s.f_frsize as u32,
    })
}

/// Takes an exclusive, non-blocking `flock` on an open file or directory.
/// Returns false when another process holds it.
pub fn try_lock_exclusive(f: &impl AsRawFd) -> io::Result<bool> {
    // SAFETY: fd is valid for the lifetime of f.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(false) } else { Err(err) }
}

/// Starts writeback of `len` bytes of `f` at `offset` and, with `wait`,
/// first waits for what is already under writeback there
/// (`sync_file_range(2)`; not a durability point: fsync is).
pub fn write_back(f: &impl AsRawFd, offset: u64, len: u64, wait: bool) -> io::Result<()> {
    let mut flags = libc::SYNC_FILE_RANGE_WRITE;
    if wait {
        flags |= libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    }
    // SAFETY: fd is valid for the lifetime of f; plain syscall on values.
    check(unsafe { libc::sync_file_range(f.as_raw_fd(), offset as i64, len as i64, flags) })
}

/// `syncfs` on the filesystem that holds `f`.
pub fn syncfs(f: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: fd valid for the lifetime of f.
    check(unsafe { libc::syncfs(f.as_raw_fd()) })
}

/// fsync of a directory: makes its entries (names created, renamed,
/// removed in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Whether a process with this pid exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 performs only the permission/existence check.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if r != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    // A zombie still answers signal 0; its state letter follows the ")".
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Sends `sig` to `pid`.
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall on values.
    check(unsafe { libc::kill(pid as libc::pid_t, sig) })
}

/// `umount2(path, flags)`; `lazy` detaches a busy or dead mount.
pub fn umount(path: &Path, lazy: bool) -> io::Result<()> {
    let c = cstr(path)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(c.as_ptr(), flags) })
}

/// `mount(source, target, fstype, 0, data)`.
pub fn mount(source: &str, target: &Path, fstype: &str, data: &str) -> io::Result<()> {
    let s = CString::new(source).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let t = cstr(target)?;
    let f = CString::new(fstype).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let d = CString::new(data).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C strings; data is a NUL-terminated option string.
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, d.as_ptr().cast()) })
}

/// Makes a device number (`makedev`).
pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

/// `lseek(fd, offset, whence)`: SEEK_DATA/SEEK_HOLE pass through.
pub fn lseek(fd: std::os::fd::RawFd, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain syscall on values; a bad fd gives EBADF.
    let r = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as i64) }
}

/// Whether this process runs in a user namespace other than the initial one
/// (its uid map is not the identity over the whole range).
pub fn in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => map.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"],
        Err(_) => false,
    }
}

/// The uid outside every user namespace that this process's effective uid
/// stands for (root of `unshare -Urm` is the user who ran it).
pub fn outer_uid() -> u32 {
    let uid = geteuid();
    let Ok(map) = std::fs::read_to_string("/proc/self/uid_map") else { return uid };
    map.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|v| v.parse::<u64>().ok());
            Some((f.next()??, f.next()??, f.next()??))
        })
        .find(|&(inside, _, count)| (inside..inside + count).contains(&u64::from(uid)))
        .map(|(inside, outside, _)| (outside + u64::from(uid) - inside) as u32)
        .unwrap_or(uid)
}

/// Makes a child process get SIGKILL when the thread that spawned it exits,
/// so a release's registry and skopeo children never outlive regfs even if
/// regfs itself is killed.
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl,
    // which is async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

// ---------------------------------------------------------------------------
// Calls relative to a directory handle (the `*at` family), for layers: a
// view path is never joined onto a layer's root path, so a path near
// PATH_MAX under a long root still resolves.

/// What kind of file an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl FileKind {
    /// The kind in the type bits of `st_mode`.
    pub fn of_mode(mode: u32) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            _ => FileKind::File,
        }
    }
    pub fn is_dir(self) -> bool {
        self == FileKind::Dir
    }
    pub fn is_file(self) -> bool {
        self == FileKind::File
    }
    pub fn is_symlink(self) -> bool {
        self == FileKind::Symlink
    }
}

/// A time as stat(2) gives it: seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileTime {
    pub sec: i64,
    pub nsec: u32,
}

impl FileTime {
    pub fn to_system_time(self) -> SystemTime {
        let nsec = std::time::Duration::from_nanos(self.nsec as u64);
        if self.sec >= 0 {
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(self.sec as u64) + nsec
        } else {
            SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(self.sec.unsigned_abs()) + nsec
        }
    }
}

/// What stat(2) tells of an entry: the fields regfs reads. A layer that is
/// not a directory tree (a tar file) fills it in itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    /// Type and permission bits, as `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub dev: u64,
    pub ino: u64,
    pub rdev: u64,
    pub blksize: u64,
    pub blocks: u64,
    pub atime: FileTime,
    pub mtime: FileTime,
    pub ctime: FileTime,
}

impl Stat {
    pub fn kind(&self) -> FileKind {
        FileKind::of_mode(self.mode)
    }
    pub fn is_dir(&self) -> bool {
        self.kind().is_dir()
    }
    pub fn is_file(&self) -> bool {
        self.kind().is_file()
    }
    pub fn is_symlink(&self) -> bool {
        self.kind().is_symlink()
    }
    /// The permission bits (with set-id and sticky).
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
    /// The same fields from std's metadata (of an open file, say).
    pub fn of_metadata(m: &std::fs::Metadata) -> Stat {
        use std::os::unix::fs::MetadataExt;
        let t = |sec: i64, nsec: i64| FileTime { sec, nsec: nsec as u32 };
        Stat {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            nlink: m.nlink(),
            dev: m.dev(),
            ino: m.ino(),
            rdev: m.rdev(),
            blksize: m.blksize(),
            blocks: m.blocks(),
            atime: t(m.atime(), m.atime_nsec()),
            mtime: t(m.mtime(), m.mtime_nsec()),
            ctime: t(m.ctime(), m.ctime_nsec()),
        }
    }
    // The field widths differ by architecture: the casts are not all no-ops.
    #[allow(clippy::unnecessary_cast)]
    fn of_rustix(s: &rustix::fs::Stat) -> Stat {
        let t = |sec: i64, nsec: u64| FileTime { sec, nsec: nsec as u32 };
        Stat {
            mode: s.st_mode as u32,
            uid: s.st_uid,
            gid: s.st_gid,
            size: s.st_size as u64,
            nlink: s.st_nlink as u64,
            dev: s.st_dev as u64,
            ino: s.st_ino as u64,
            rdev: s.st_rdev as u64,
            blksize: s.st_blksize as u64,
            blocks: s.st_blocks as u64,
            atime: t(s.st_atime as i64, s.st_atime_nsec as u64),
            mtime: t(s.st_mtime as i64, s.st_mtime_nsec as u64),
            ctime: t(s.st_ctime as i64, s.st_ctime_nsec as u64),
        }
    }
}

/// `rel` as the `*at` calls take it: the directory itself is ".".
fn at_path(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() { Path::new(".") } else { rel }
}

fn missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// Opens a directory as a handle for the `*at` calls (`O_PATH`: needs no
/// read permission on it).
pub fn open_dir_handle(path: &Path) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?)
}

/// `fstatat(dir, rel, AT_SYMLINK_NOFOLLOW)`; `None` when nothing is there.
pub fn stat_at(dir: BorrowedFd, rel: &Path) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, at_path(rel), rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(Stat::of_rustix(&s))),
        Err(e) => {
            let e = io::Error::from(e);
            if missing(&e) { Ok(None) } else { Err(e) }
        }
    }
}

/// `fstat` of an open file.
pub fn stat_of(f: &impl AsFd) -> io::Result<Stat> {
    Ok(Stat::of_rustix(&rustix::fs::fstat(f)?))
}

/// `openat(dir, rel, flags | O_CLOEXEC, mode)`.
pub fn open_at(dir: BorrowedFd, rel: &Path, flags: i32, mode: u32) -> io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, at_path(rel), flags, Mode::from_bits_truncate(mode))?;
    Ok(std::fs::File::from(fd))
}

/// A directory's names, each with its kind where the listing tells it.
pub type DirNames = Vec<(OsString, Option<FileKind>)>;

/// The names in the directory `rel` with their kinds (`None` where the
/// filesystem does not tell one in the listing); `.` and `..` left out.
/// `None` when there is no directory there (a symlink is none: it is not
/// followed).
pub fn read_dir_at(dir: BorrowedFd, rel: &Path) -> io::Result<Option<DirNames>> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd = match rustix::fs::openat(
        dir,
        at_path(rel),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => {
            let e = io::Error::from(e);
            return if missing(&e) || e.raw_os_error() == Some(libc::ELOOP) { Ok(None) } else { Err(e) };
        }
    };
    let mut out = Vec::new();
    let mut d = rustix::fs::Dir::new(fd)?;
    while let Some(de) = d.read() {
        let de = de?;
        let name = de.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let kind = match de.file_type() {
            FileType::RegularFile => Some(FileKind::File),
            FileType::Directory => Some(FileKind::Dir),
            FileType::Symlink => Some(FileKind::Symlink),
            FileType::CharacterDevice => Some(FileKind::CharDevice),
            FileType::BlockDevice => Some(FileKind::BlockDevice),
            FileType::Fifo => Some(FileKind::Fifo),
            FileType::Socket => Some(FileKind::Socket),
            FileType::Unknown => None,
        };
        out.push((OsString::from_vec(name.to_vec()), kind));
    }
    Ok(Some(out))
}

/// `readlinkat(dir, rel)`.
pub fn read_link_at(dir: BorrowedFd, rel: &Path) -> io::Result<std::path::PathBuf> {
    let target = rustix::fs::readlinkat(dir, at_path(rel), Vec::new())?;
    Ok(std::path::PathBuf::from(OsString::from_vec(target.into_bytes())))
}

pub fn mkdir_at(dir: BorrowedFd, rel: &Path, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::mkdirat(dir, rel, rustix::fs::Mode::from_bits_truncate(mode))?)
}

/// `mknodat(dir, rel, mode, rdev)`: devices, fifos and the kernel's 0/0 whiteout.
pub fn mknod_at(dir: BorrowedFd, rel: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cstr(rel)?;
    // SAFETY: the descriptor is borrowed for the call and c is a valid
    // NUL-terminated string.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) })
}

pub fn symlink_at(target: &Path, dir: BorrowedFd, rel: &Path) -> io::Result<()> {
    Ok(rustix::fs::symlinkat(target, dir, rel)?)
}

/// `linkat(dir, from, dir, to, 0)`: a second name, not following a symlink.
pub fn link_at(dir: BorrowedFd, from: &Path, to: &Path) -> io::Result<()> {
    Ok(rustix::fs::linkat(dir, from, dir, to, rustix::fs::AtFlags::empty())?)
}

/// `unlinkat(dir, rel, is_dir ? AT_REMOVEDIR : 0)`.
pub fn unlink_at(dir: BorrowedFd, rel: &Path, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { rustix::fs::AtFlags::REMOVEDIR } else { rustix::fs::AtFlags::empty() };
    Ok(rustix::fs::unlinkat(dir, rel, flags)?)
}

/// `renameat2(dir, from, dir, to, flags)`.
pub fn rename_at(dir: BorrowedFd, from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    Ok(rustix::fs::renameat_with(dir, from, dir, to, rustix::fs::RenameFlags::from_bits_retain(flags))?)
}

/// `utimensat(dir, rel, [atime, mtime], AT_SYMLINK_NOFOLLOW)`.
pub fn utimens_at(dir: BorrowedFd, rel: &Path, atime: SetTime, mtime: SetTime) -> io::Result<()> {
    let c = cstr(at_path(rel))?;
    let ts = [timespec(atime), timespec(mtime)];
    // SAFETY: a borrowed descriptor, a valid C string and a two-element
    // timespec array.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}

/// `fchmodat(dir, rel, mode)` (follows a symlink: callers never chmod one).
pub fn chmod_at(dir: BorrowedFd, rel: &Path, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::chmodat(
        dir,
        at_path(rel),
        rustix::fs::Mode::from_bits_truncate(mode),
        rustix::fs::AtFlags::empty(),
    )?)
}

/// `fchownat(dir, rel, uid, gid, AT_SYMLINK_NOFOLLOW)`; `None` keeps an id.
pub fn chown_at(dir: BorrowedFd, rel: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    use rustix::fs::{Gid, Uid};
    let (u, g) = (uid.map(Uid::from_raw), gid.map(Gid::from_raw));
    Ok(rustix::fs::chownat(dir, at_path(rel), u, g, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?)
}

impl From<FileTime> for SetTime {
    fn from(t: FileTime) -> SetTime {
        SetTime::At(t.to_system_time())
    }
}
