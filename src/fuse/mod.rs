//! The FUSE front end: a `fuser::Filesystem` over the view core.
//!
//! Every request resolves its inode to a view path, calls the view, and maps
//! errors to an errno plus a tracing event. Nothing here may panic.

mod inodes;

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::sys::{self, SetTime};
use crate::view::{AttrChange, Changed, CopyUps, Dir, Entry, FileKind, LayerFile, Stat, UPPER, View};
use inodes::{Inodes, NodeInfo, ROOT};

/// Attribute/entry cache time for entries that live in upper (they change).
const TTL_UPPER: Duration = Duration::from_secs(1);
/// History entries never change while mounted: let the kernel keep them.
const TTL_LOWER: Duration = Duration::from_secs(3600);

type Listing = Vec<(u64, FileType, std::ffi::OsString)>;

enum Handle {
    /// An open file of inode `ino` (the second field).
    File(Arc<File>, u64),
    /// A read-only history file the kernel reads directly (FUSE
    /// passthrough) through the backing shared by every open of `ino`.
    Passthrough(Arc<File>, u64),
    /// A read-only part of a layer's file (a tar member): regfs reads it.
    Part(Arc<LayerFile>),
}

/// What a read goes to: an open file, or a part of one.
enum Source {
    File(Arc<File>),
    Part(Arc<LayerFile>),
}

impl Source {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        match self {
            Source::File(f) => f.read_at(buf, off),
            Source::Part(p) => p.read_at(buf, off),
        }
    }
}

/// The one backing file an inode may have (the kernel allows one per
/// inode), with the number of open handles using it.
struct Backing {
    id: fuser::BackingId,
    users: usize,
}

pub struct RegFs {
    view: Arc<View>,
    inodes: Inodes,
    handles: DashMap<u64, Handle>,
    next_fh: AtomicU64,
    /// Whether new files are chowned to the caller (only root can).
    chown_new: bool,
    /// Set once the session exists; used to drop stale kernel attributes.
    notifier: Arc<OnceLock<fuser::Notifier>>,
    /// The last listing of each directory read, for readdir continuations.
    listings: DashMap<u64, Arc<Listing>>,
    /// Whether the kernel can do without opendir (FUSE_NO_OPENDIR_SUPPORT).
    no_opendir: bool,
    /// Whether reads may use FUSE passthrough (asked for, kernel 6.9+,
    /// CAP_SYS_ADMIN); cleared at the first refusal.
    passthrough: std::sync::atomic::AtomicBool,
    /// Whether passthrough was asked for (`--passthrough`).
    want_passthrough: bool,
    backings: DashMap<u64, Backing>,
    /// `--fsync finalize`: fsyncs are answered without syncing.
    finalize: bool,
}

fn io_errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn kind_of(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

fn ttl_for(e: &Entry) -> Duration {
    if e.layers.contains(&UPPER) { TTL_UPPER } else { TTL_LOWER }
}

/// The attributes of an entry, with the kernel overlay's conventions:
/// a merged directory reports nlink 1, as overlayfs does.
/// A setattr applied to an open file (one no name leads to any more).
fn set_attr_of_file(f: &File, change: &AttrChange) -> io::Result<Stat> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(mode) = change.mode {
        f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    if change.uid.is_some() || change.gid.is_some() {
        std::os::unix::fs::fchown(f, change.uid, change.gid)?;
    }
    if let Some(size) = change.size {
        f.set_len(size)?;
    }
    if change.atime.is_some() || change.mtime.is_some() {
        sys::futimens(f, change.atime.unwrap_or(SetTime::Omit), change.mtime.unwrap_or(SetTime::Omit))?;
    }
    sys::stat_of(f)
}

fn attr(ino: u64, e: &Entry) -> FileAttr {
    let m = &e.meta;
    let nlink = if m.is_dir() && e.layers.len() > 1 { 1 } else { m.nlink as u32 };
    FileAttr {
        ino: INodeNo(ino),
        size: m.size,
        blocks: m.blocks,
        atime: m.atime.to_system_time(),
        mtime: m.mtime.to_system_time(),
        ctime: m.ctime.to_system_time(),
        crtime: m.ctime.to_system_time(),
        kind: kind_of(m.kind()),
        perm: m.perm() as u16,
        nlink,
        uid: m.uid,
        gid: m.gid,
        rdev: m.rdev as u32,
        blksize: m.blksize as u32,
        flags: 0,
    }
}

/// What a write or truncate by a caller without CAP_FSETID leaves of a
/// file's `mode` (the kernel's rule): no set-user-ID, and no set-group-ID
/// where group execute is set or the caller is not in the file's group
/// (`caller_gid`: the primary group; FUSE tells no others). `None` when
/// nothing changes.
fn killed_suidgid(mode: u32, file_gid: u32, caller_gid: u32) -> Option<u32> {
    let mut kill = libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 || file_gid != caller_gid {
        kill |= libc::S_ISGID;
    }
    (mode & kill != 0).then_some(mode & !kill & 0o7777)
}

/// Applies [`killed_suidgid`] to an open file; whether the mode changed.
fn kill_suidgid_of(f: &File, caller_gid: u32) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let meta = f.metadata()?;
    match killed_suidgid(meta.mode(), meta.gid(), caller_gid) {
        Some(mode) => f.set_permissions(std::fs::Permissions::from_mode(mode)).map(|()| true),
        None => Ok(false),
    }
}

/// The attributes of a negative entry: node id 0 means "no such name".
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
    }
}

impl RegFs {
    /// `notifier` is filled in by the caller once the session is mounted.
    /// `finalize`: fsyncs return at once (`--fsync finalize`; the mount
    /// syncs upper when it ends).
    pub fn new(
        view: Arc<View>,
        notifier: Arc<OnceLock<fuser::Notifier>>,
        passthrough: bool,
        finalize: bool,
    ) -> io::Result<RegFs> {
        let root = view.root()?;
        Ok(RegFs {
            view,
            inodes: Inodes::new(&root),
            handles: DashMap::new(),
            next_fh: AtomicU64::new(1),
            chown_new: sys::geteuid() == 0,
            notifier,
            listings: DashMap::new(),
            no_opendir: false,
            passthrough: std::sync::atomic::AtomicBool::new(false),
            want_passthrough: passthrough,
            backings: DashMap::new(),
            finalize,
        })
    }

    /// After a request on the entry `ino` itself (setattr, open for
    /// writing, xattrs). The kernel takes the entry's new attributes from
    /// the reply or drops them itself; what it cannot know is what a
    /// copy-up changed: a copied-up file's parent gained an upper entry,
    /// and copied-up directories turned into merged ones (nlink 1, upper's
    /// times).
    fn changed(&self, ino: INodeNo, copyups: CopyUps) {
        self.invalidate(ino, copyups, true);
    }

    /// After a request on names in directory `dir` (create, mkdir, unlink,
    /// rmdir, rename, link): the kernel drops `dir`'s attributes itself, so
    /// only directory copy-ups leave it something to learn.
    fn changed_in(&self, dir: INodeNo, copyups: CopyUps) {
        self.invalidate(dir, copyups, false);
    }

    /// Drops the listing cache of `ino` and, after copy-ups, the kernel's
    /// attributes of what they changed (offset -1: no pages). `entry`: `ino`
    /// is the entry a request acted on, not a directory it changed.
    ///
    /// A request copies up the part of its path that upper lacks, which is
    /// always the deepest part: the `dirs` directories it copied up are the
    /// nearest ancestors of the entry (for `changed_in`, the directory and
    /// its nearest ancestors), and the one above the topmost of them gained
    /// an upper entry. Nothing higher changed: invalidating up to the root
    /// made the kernel ask for every ancestor's attributes again after each
    /// copy-up (~1,000 GETATTRs per release push).
    fn invalidate(&self, ino: INodeNo, copyups: CopyUps, entry: bool) {
        self.listings.remove(&ino.0);
        let depth = if copyups.dirs > 0 {
            copyups.dirs + if entry { 2 } else { 1 }
        } else if entry && copyups.others > 0 {
            2
        } else {
            return;
        };
        let mut cur = ino.0;
        for _ in 0..depth {
            self.drop_attrs(cur);
            match self.inodes.parent_of(cur) {
                Some(parent) if cur != ROOT => cur = parent,
                _ => break,
            }
        }
    }

    /// Drops the kernel's cached attributes of `ino` (offset -1: no pages).
    fn drop_attrs(&self, ino: u64) {
        let Some(notifier) = self.notifier.get() else { return };
        if let Err(e) = notifier.inval_inode(INodeNo(ino), -1, 0) {
            // ENOENT: the kernel holds no such inode; nothing to drop.
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::debug!(ino, error = %e, "attribute invalidation failed");
            }
        }
    }

    fn node(&self, ino: INodeNo) -> Result<NodeInfo, Errno> {
        self.inodes.get(ino.0).ok_or(Errno::ESTALE)
    }

    /// Resolves `ino` with fresh metadata (upper may have changed).
    fn fresh(&self, ino: INodeNo) -> Result<(PathBuf, Entry), Errno> {
        let info = self.node(ino)?;
        let e = self.view.stat_stack(&info.path, &info.layers).map_err(|err| self.fail("stat", &info.path, &err))?;
        self.inodes.update(ino.0, &e);
        Ok((info.path, e))
    }

    /// Logs a failed request and returns its errno. Expected misses
    /// (ENOENT, EEXIST, ...) are debug events; anything else is a warning.
    /// [`RegFs::fail`] for a request on an open file: the path is looked
    /// up from the inode only when there is something to log.
    fn fail_ino(&self, op: &str, ino: INodeNo, e: &io::Error) -> Errno {
        match self.node(ino) {
            Ok(info) => self.fail(op, &info.path, e),
            Err(_) => self.fail(op, Path::new(&format!("<inode {}>", ino.0)), e),
        }
    }

    fn fail(&self, op: &str, path: &Path, e: &io::Error) -> Errno {
        let code = e.raw_os_error().unwrap_or(libc::EIO);
        match code {
            libc::ENOENT
            | libc::EEXIST
            | libc::ENOTEMPTY
            | libc::EXDEV
            | libc::ENODATA
            | libc::EISDIR
            | libc::ENOTDIR => {
                tracing::debug!(op, path = %path.display(), error = %e, "request failed")
            }
            _ => tracing::warn!(op, path = %path.display(), error = %e, "request failed"),
        }
        io_errno(e)
    }

    /// The parent directory's node and the path of `name` in it.
    fn child_path(&self, parent: INodeNo, name: &OsStr) -> Result<(NodeInfo, PathBuf), Errno> {
        let dir = self.node(parent)?;
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let path = dir.path.join(name);
        Ok((dir, path))
    }

    /// Registers a new entry and replies to a creating request.
    fn created_entry(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        path: &Path,
        reply: ReplyEntry,
        res: io::Result<Changed<Entry>>,
    ) {
        match res.and_then(|c| Ok((self.own(req, path, c.value)?, c.copyups))) {
            Ok((e, copyups)) => {
                let ino = self.inodes.intern(parent.0, name, &e);
                self.changed_in(parent, copyups);
                reply.entry(&ttl_for(&e), &attr(ino, &e), Generation(0));
            }
            Err(err) => reply.error(self.fail("create", path, &err)),
        }
    }

    /// New entries belong to the caller, as on any filesystem (root only).
    fn own(&self, req: &Request, path: &Path, e: Entry) -> io::Result<Entry> {
        if !self.chown_new || (e.meta.uid == req.uid() && e.meta.gid == req.gid()) {
            return Ok(e);
        }
        self.view.chown_upper(path, req.uid(), req.gid())?;
        self.view.stat_stack(path, &e.layers)
    }

    /// The merged listing of directory `ino`, with `.` and `..`.
    fn listing(&self, ino: INodeNo) -> Result<Listing, Errno> {
        let info = self.node(ino)?;
        let items = self.view.names(info.as_dir()).map_err(|err| self.fail("readdir", &info.path, &err))?;
        let parent_ino = self.inodes.parent_of(ino.0).unwrap_or(ROOT);
        let mut listing = Vec::with_capacity(items.len() + 2);
        listing.push((ino.0, FileType::Directory, ".".into()));
        listing.push((parent_ino, FileType::Directory, "..".into()));
        for item in items {
            let kind = kind_of(item.file_type);
            let child = self.inodes.intern_stack(ino.0, &item.name, &item.layers, item.is_dir());
            listing.push((child, kind, item.name));
        }
        Ok(listing)
    }

    fn add_handle(&self, h: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.insert(fh, h);
        FileHandle(fh)
    }

    /// An open file of inode `ino`, if any: what an unlinked but open file
    /// still is (the kernel asks fstat and fchmod by inode, without a handle).
    fn open_file_of(&self, ino: u64) -> Option<Arc<File>> {
        self.handles.iter().find_map(|h| match h.value() {
            Handle::File(f, i) | Handle::Passthrough(f, i) if *i == ino => Some(f.clone()),
            _ => None,
        })
    }

    /// The open file of a handle; EBADF for a read-only part of one.
    fn file(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        match self.handles.get(&fh.0).as_deref() {
            Some(Handle::File(f, _)) | Some(Handle::Passthrough(f, _)) => Ok(f.clone()),
            Some(Handle::Part(..)) | None => Err(Errno::EBADF),
        }
    }

    /// What a handle reads from.
    fn source(&self, fh: FileHandle) -> Result<Source, Errno> {
        match self.handles.get(&fh.0).as_deref() {
            Some(Handle::File(f, _)) | Some(Handle::Passthrough(f, _)) => Ok(Source::File(f.clone())),
            Some(Handle::Part(p)) => Ok(Source::Part(p.clone())),
            None => Err(Errno::EBADF),
        }
    }
}

impl Filesystem for RegFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> io::Result<()> {
        self.no_opendir = config.capabilities().contains(fuser::InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        if self.no_opendir {
            let _ = config.add_capabilities(fuser::InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        }
        // Lookups and readdirs of one directory may run in parallel: they
        // only read, and the view serialises what changes the namespace.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        // The kernel then leaves clearing set-user/group-ID bits on writes
        // to regfs (a flag on the few writes that need it), instead of
        // asking for `security.capability` before every write.
        if config.add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2).is_ok() {
            tracing::debug!("FUSE_HANDLE_KILLPRIV_V2 enabled");
        }
        // Passthrough needs CAP_SYS_ADMIN for the backing ids; without it
        // (an ordinary user) reads go through regfs, as before.
        if self.want_passthrough
            && self.chown_new
            && !sys::in_user_namespace()
            && config.add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.store(true, Ordering::Relaxed);
            tracing::info!("FUSE passthrough enabled for reads");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (dir, dir_layers) = match self.node(parent) {
            Ok(n) => (n.path, n.layers),
            Err(e) => return reply.error(e),
        };
        if name.len() > 255 {
            return reply.error(Errno::ENAMETOOLONG);
        }
        match self.view.lookup(Dir { rel: &dir, layers: &dir_layers }, name) {
            Ok(Some(e)) => {
                let ino = self.inodes.intern(parent.0, name, &e);
                reply.entry(&ttl_for(&e), &attr(ino, &e), Generation(0));
            }
            // A negative entry the kernel may keep: a name can only appear
            // through this mount (upper is locked to it, lowers never
            // change), and the kernel drops the entry when it creates one.
            // Registries probe for many names before creating them.
            Ok(None) => reply.entry(&TTL_LOWER, &negative_attr(), Generation(0)),
            Err(err) => reply.error(self.fail("lookup", &dir.join(name), &err)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        // An open handle answers for itself (an unlinked file still has attributes).
        if let Some(f) = fh.and_then(|fh| self.file(fh).ok())
            && let (Ok(meta), Ok(info)) = (sys::stat_of(&*f), self.node(ino))
        {
            let e = Entry { layers: info.layers, meta };
            return reply.attr(&ttl_for(&e), &attr(ino.0, &e));
        }
        match self.fresh(ino) {
            Ok((_, e)) => reply.attr(&ttl_for(&e), &attr(ino.0, &e)),
            // Unlinked while open: the open file answers (nlink 0).
            Err(e) if e == Errno::ENOENT => match self.open_file_of(ino.0).map(|f| sys::stat_of(&*f)) {
                Some(Ok(meta)) => {
                    let e = Entry { layers: vec![UPPER], meta };
                    reply.attr(&ttl_for(&e), &attr(ino.0, &e))
                }
                _ => reply.error(e),
            },
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let info = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let path = info.path.clone();
        // ftruncate on an open (already copied-up) handle goes to that file.
        if let (Some(size), Some(f)) = (size, fh.and_then(|fh| self.file(fh).ok()))
            && let Err(e) = f.set_len(size)
        {
            return reply.error(self.fail("ftruncate", &path, &e));
        }
        // A truncate by a caller without CAP_FSETID drops set-user/group-ID
        // bits (the kernel leaves this to regfs, see `init`).
        let mode = match mode {
            None if size.is_some() && req.uid() != 0 => match self.fresh(ino) {
                Ok((_, e)) if e.meta.is_file() => killed_suidgid(e.meta.mode, e.meta.gid, req.gid()),
                Ok(_) => None,
                Err(e) => return reply.error(e),
            },
            m => m,
        };
        let change = AttrChange {
            mode,
            uid,
            gid,
            size: if fh.is_some() { None } else { size },
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        let res = if change.mode.is_none()
            && change.uid.is_none()
            && change.gid.is_none()
            && change.size.is_none()
            && change.atime.is_none()
            && change.mtime.is_none()
        {
            self.fresh(ino).map(|(_, e)| (e, CopyUps::default())).map_err(|e| io::Error::from_raw_os_error(e.code()))
        } else {
            self.view
                .stat_stack(&path, &info.layers)
                .and_then(|e| self.view.set_attr(&path, &e, &change))
                .map(|c| (c.value, c.copyups))
        };
        // Unlinked while open (fchmod, futimens, ...): the open file takes it.
        let res = match res {
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => match self.open_file_of(ino.0) {
                Some(f) => {
                    set_attr_of_file(&f, &change).map(|meta| (Entry { layers: vec![UPPER], meta }, CopyUps::default()))
                }
                None => Err(err),
            },
            r => r,
        };
        match res {
            Ok((e, copyups)) => {
                self.inodes.update(ino.0, &e);
                self.changed(ino, copyups);
                reply.attr(&ttl_for(&e), &attr(ino.0, &e))
            }
            Err(err) => reply.error(self.fail("setattr", &path, &err)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let (path, e) = match self.fresh(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.view.read_link(&path, &e) {
            Ok(t) => reply.data(t.as_os_str().as_encoded_bytes()),
            Err(err) => reply.error(self.fail("readlink", &path, &err)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let (dir, path) = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let res = self.view.mknod(dir.as_dir(), name, mode & !umask, rdev as u64);
        self.created_entry(req, parent, name, &path, reply, res);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let (dir, path) = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let res = self.view.mkdir(dir.as_dir(), name, mode & !umask);
        self.created_entry(req, parent, name, &path, reply, res);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (dir, path) = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.view.unlink(dir.as_dir(), name) {
            Ok(c) => {
                self.inodes.detach(parent.0, name);
                self.changed_in(parent, c.copyups);
                reply.ok()
            }
            Err(err) => reply.error(self.fail("unlink", &path, &err)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (dir, path) = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.view.rmdir(dir.as_dir(), name) {
            Ok(c) => {
                self.inodes.detach(parent.0, name);
                self.changed_in(parent, c.copyups);
                reply.ok()
            }
            Err(err) => reply.error(self.fail("rmdir", &path, &err)),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (dir, path) = match self.child_path(parent, link_name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let res = self.view.symlink(dir.as_dir(), link_name, target);
        self.created_entry(req, parent, link_name, &path, reply, res);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let dirs = self.child_path(parent, name).and_then(|(a, _)| Ok((a, self.child_path(newparent, newname)?.0)));
        let (from_dir, to_dir) = match dirs {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.view.rename(from_dir.as_dir(), name, to_dir.as_dir(), newname, flags.bits()) {
            Ok(c) => {
                self.inodes.rename(parent.0, name, newparent.0, newname);
                if let Some(ino) = self.inodes.find(newparent.0, newname)
                    && let Ok(Some(e)) = self.view.lookup(to_dir.as_dir(), newname)
                {
                    self.inodes.update(ino, &e);
                }
                self.invalidate(parent, c.copyups, false);
                self.invalidate(newparent, c.copyups, false);
                reply.ok()
            }
            Err(err) => reply.error(self.fail("rename", &from_dir.path.join(name), &err)),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let found = self.fresh(ino).and_then(|src| Ok((src, self.child_path(newparent, newname)?)));
        let ((from, src), (dir, to)) = match found {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.view.link(&from, &src, dir.as_dir(), newname) {
            Ok(Changed { value: e, copyups }) => {
                if let Ok(src) = self.view.stat_stack(&from, &src.layers) {
                    self.inodes.update(ino.0, &src);
                }
                let new_ino = self.inodes.intern(newparent.0, newname, &e);
                self.invalidate(ino, copyups, true);
                self.invalidate(newparent, copyups, false);
                reply.entry(&ttl_for(&e), &attr(new_ino, &e), Generation(0));
            }
            Err(err) => reply.error(self.fail("link", &to, &err)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (path, e) = match self.fresh(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let flags = flags.0;
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let res = if writes {
            self.view.open_write(&path, &e, flags).map(|Changed { value: (f, e), copyups }| {
                self.inodes.update(ino.0, &e);
                self.changed(ino, copyups);
                LayerFile::whole(f)
            })
        } else {
            self.view.open_read(&path, &e, flags)
        };
        // A part of a layer's file (a tar member) is read through regfs.
        let res = res.map(|f| f.into_whole_file());
        match res {
            Ok(Err(part)) => reply.opened(self.add_handle(Handle::Part(Arc::new(part))), FopenFlags::FOPEN_KEEP_CACHE),
            // Only history files: they never change, so one backing per
            // inode serves every reader.
            Ok(Ok(f)) if !writes && e.top() != UPPER && self.passthrough.load(Ordering::Relaxed) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                let shared = match self.backings.entry(ino.0) {
                    dashmap::Entry::Occupied(mut b) => {
                        b.get_mut().users += 1;
                        reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b.get().id);
                        Ok(())
                    }
                    dashmap::Entry::Vacant(v) => match reply.open_backing(&f) {
                        Ok(id) => {
                            reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                            v.insert(Backing { id, users: 1 });
                            Ok(())
                        }
                        Err(err) => Err((err, reply)),
                    },
                };
                match shared {
                    Ok(()) => {
                        self.handles.insert(fh, Handle::Passthrough(Arc::new(f), ino.0));
                    }
                    Err((err, reply)) => {
                        tracing::info!(error = %err, "FUSE passthrough refused: reads go through regfs");
                        self.passthrough.store(false, Ordering::Relaxed);
                        self.handles.insert(fh, Handle::File(Arc::new(f), ino.0));
                        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
                    }
                }
            }
            Ok(Ok(f)) => {
                // History files never change: the kernel may keep their pages.
                let fopen =
                    if !writes && e.top() != UPPER { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
                reply.opened(self.add_handle(Handle::File(Arc::new(f), ino.0)), fopen)
            }
            Err(err) => reply.error(self.fail("open", &path, &err)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let f = match self.source(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(self.fail_ino("read", ino, &e)),
            }
        }
        reply.data(&buf[..done]);
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        // The writer may not keep set-user/group-ID bits (no CAP_FSETID):
        // regfs, which writes upper as root, clears them as the kernel would.
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            match kill_suidgid_of(&f, req.gid()) {
                // The kernel's cached mode still has the bits.
                Ok(true) => self.drop_attrs(ino.0),
                Ok(false) => {}
                Err(e) => return reply.error(self.fail_ino("write", ino, &e)),
            }
        }
        match f.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(self.fail_ino("write", ino, &e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Writes reach upper synchronously, so a close has nothing to
        // report; ENOSYS makes the kernel stop sending FLUSH at all (one
        // round trip less per close).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some((_, Handle::Passthrough(_, ino))) = self.handles.remove(&fh.0)
            && let dashmap::Entry::Occupied(mut b) = self.backings.entry(ino)
        {
            b.get_mut().users -= 1;
            if b.get().users == 0 {
                // Dropping the id closes the backing file in the kernel.
                b.remove();
            }
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        if self.finalize {
            // Upper is synced once when the mount ends; ENOSYS makes the
            // kernel answer every later fsync itself (no round trip).
            return reply.error(Errno::ENOSYS);
        }
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let res = if datasync { f.sync_data() } else { f.sync_all() };
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail_ino("fsync", ino, &e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            // The kernel then stops sending opendir/releasedir and caches
            // listings (FOPEN_KEEP_CACHE|FOPEN_CACHE_DIR) on its own.
            return reply.error(Errno::ENOSYS);
        }
        match self.node(ino) {
            Ok(n) if !n.dir => reply.error(Errno::ENOTDIR),
            // Every change to a directory goes through this filesystem, and
            // the kernel drops its cached listing on each: it may keep it.
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        // A read from the start lists afresh; later pages continue the same
        // listing, so a directory read in several calls is consistent.
        let cached = if offset == 0 { None } else { self.listings.get(&ino.0).map(|l| l.clone()) };
        let listing = match cached {
            Some(l) => l,
            None => match self.listing(ino) {
                Ok(l) => {
                    let l = Arc::new(l);
                    self.listings.insert(ino.0, l.clone());
                    l
                }
                Err(e) => return reply.error(e),
            },
        };
        let mut full = false;
        for (i, (ino, kind, name)) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                full = true;
                break;
            }
        }
        if !full {
            // The reader got the end: keep no copy of a listing nobody reads.
            self.listings.remove(&ino.0);
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        if self.finalize {
            // As fsync: the syncfs at the end covers directories too.
            return reply.error(Errno::ENOSYS);
        }
        let path = match self.node(ino) {
            Ok(n) => n.path,
            Err(e) => return reply.error(e),
        };
        // Only upper changes.
        match self.view.sync_upper_dir(&path) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("fsyncdir", &path, &e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match sys::statvfs(self.view.upper_root()) {
            Ok(s) => reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize),
            Err(e) => reply.error(self.fail("statfs", self.view.upper_root(), &e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (path, e) = match self.fresh(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.view.set_xattr(&path, &e, name, value, flags) {
            Ok(c) => {
                self.changed(ino, c.copyups);
                reply.ok()
            }
            Err(err) => reply.error(self.fail("setxattr", &path, &err)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let (path, e) = match self.fresh(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.view.get_xattr(&path, &e, name) {
            Ok(Some(v)) => reply_xattr(reply, &v, size),
            Ok(None) => reply.error(Errno::ENODATA),
            Err(err) => reply.error(self.fail("getxattr", &path, &err)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (path, e) = match self.fresh(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.view.list_xattrs(&path, &e) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(n.as_encoded_bytes());
                    buf.push(0);
                }
                reply_xattr(reply, &buf, size)
            }
            Err(err) => reply.error(self.fail("listxattr", &path, &err)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (path, e) = match self.fresh(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match self.view.remove_xattr(&path, &e, name) {
            Ok(c) => {
                self.changed(ino, c.copyups);
                reply.ok()
            }
            Err(err) => reply.error(self.fail("removexattr", &path, &err)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // `default_permissions`: the kernel has already checked.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (dir, path) = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let acc = flags & libc::O_ACCMODE;
        let res = self
            .view
            .create_file(dir.as_dir(), name, mode & !umask, acc != libc::O_RDONLY, acc != libc::O_WRONLY)
            .and_then(|Changed { value: (f, e), copyups }| Ok((f, self.own(req, &path, e)?, copyups)));
        match res {
            Ok((f, e, copyups)) => {
                let ino = self.inodes.intern(parent.0, name, &e);
                self.changed_in(parent, copyups);
                let fh = self.add_handle(Handle::File(Arc::new(f), ino));
                reply.created(&ttl_for(&e), &attr(ino, &e), Generation(0), fh, FopenFlags::empty());
            }
            Err(err) => reply.error(self.fail("create", &path, &err)),
        }
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: fuser::ReplyLseek) {
        use std::os::fd::AsRawFd;
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        match sys::lseek(f.as_raw_fd(), offset, whence) {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(io_errno(&e)),
        }
    }
}

fn reply_xattr(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
