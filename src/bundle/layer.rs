//! A bundle tar as a read-only layer of the view, served in place: the tar
//! is read once through the strict reader ([`super::tarball`]), which
//! refuses anything but plain files and directories, and each file's data is
//! read at its offset in the tar. Entries are shown as `tar -x` by this
//! user would create them: root keeps the tar's owners, anyone else owns
//! what they extract; directories the tar implies but does not list are
//! 0755.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;

use super::tarball::{EntryKind, TarError, TarReader};
use crate::sys::{self, FileKind, FileTime, Stat};
use crate::view::{Layer, LayerFile};

/// One name of the tar.
#[derive(Debug)]
struct Node {
    stat: Stat,
    /// Where a file's data starts in the tar.
    data_offset: u64,
    /// A directory's entries, in the tar's order.
    children: Vec<(Box<OsStr>, u32)>,
}

/// A bundle tar indexed for reading as a layer.
pub struct TarLayer {
    path: PathBuf,
    file: File,
    /// `/proc/self/fd/N` of `file`: each open gets its own file
    /// description of the very file indexed (a sequential reader seeks).
    reopen: Option<PathBuf>,
    nodes: Vec<Node>,
    /// Relative path (`/`-separated, `""` the root) → node.
    index: FxHashMap<Box<[u8]>, u32>,
}

impl std::fmt::Debug for TarLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarLayer").field("path", &self.path).field("names", &self.nodes.len()).finish()
    }
}

/// Why a tar cannot be a layer.
#[derive(Debug, thiserror::Error)]
pub enum TarLayerError {
    #[error("{path}: cannot read: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}: refused: {source}")]
    Refused { path: String, source: TarError },
}

impl TarLayer {
    /// Reads the index of the bundle at `path`; refuses a tar that is not a
    /// plain bundle, naming the entry.
    pub fn open(path: &Path) -> Result<TarLayer, TarLayerError> {
        let shown = path.display().to_string();
        let io_err = |source| TarLayerError::Io { path: shown.clone(), source };
        let file = File::open(path).map_err(io_err)?;
        let meta = sys::stat_of(&file).map_err(io_err)?;
        let len = meta.size;
        let mut reader = TarReader::new(file.try_clone().map_err(io_err)?, len);
        let root = Stat { mode: libc::S_IFDIR | 0o755, uid: meta.uid, gid: meta.gid, ..dir_stat(meta.mtime) };
        let mut layer = TarLayer {
            path: path.to_path_buf(),
            reopen: None,
            file,
            nodes: vec![Node { stat: root, data_offset: 0, children: Vec::new() }],
            index: FxHashMap::default(),
        };
        layer.index.insert(Box::from(&b""[..]), 0);
        while let Some(e) =
            reader.next_entry().map_err(|source| TarLayerError::Refused { path: shown.clone(), source })?
        {
            let (mode, size, nlink) = match e.kind {
                EntryKind::File => (libc::S_IFREG | e.mode, e.size, 1),
                EntryKind::Dir => (libc::S_IFDIR | e.mode, 0, 2),
            };
            let t = FileTime { sec: e.mtime, nsec: 0 };
            let stat = Stat {
                mode,
                uid: e.uid,
                gid: e.gid,
                size,
                nlink,
                blksize: 4096,
                blocks: size.div_ceil(512),
                atime: t,
                mtime: t,
                ctime: t,
                ..Stat::default()
            };
            let id = layer.node_for(e.path.as_bytes());
            let node = &mut layer.nodes[id as usize];
            node.stat = stat;
            node.data_offset = e.data_offset;
        }
        // Inode numbers are the index's own; a directory's link count is
        // what a filesystem gives it (2 plus one per subdirectory).
        let dev = meta.dev;
        let owner = (sys::geteuid() != 0).then(|| (sys::geteuid(), sys::getegid()));
        let subdirs: Vec<u64> = layer
            .nodes
            .iter()
            .map(|n| n.children.iter().filter(|(_, c)| layer.nodes[*c as usize].stat.is_dir()).count() as u64)
            .collect();
        for (i, n) in layer.nodes.iter_mut().enumerate() {
            n.stat.ino = i as u64 + 1;
            n.stat.dev = dev;
            if let Some((uid, gid)) = owner {
                (n.stat.uid, n.stat.gid) = (uid, gid);
            }
            if n.stat.is_dir() {
                n.stat.nlink = 2 + subdirs[i];
            }
        }
        let proc = PathBuf::from(format!("/proc/self/fd/{}", layer.file.as_raw_fd()));
        layer.reopen = File::open(&proc).is_ok().then_some(proc);
        Ok(layer)
    }

    /// The node of `path`, made (with its parents, as implied directories)
    /// when missing. The reader has checked the path is plain and that no
    /// file lies above it.
    fn node_for(&mut self, path: &[u8]) -> u32 {
        if let Some(&id) = self.index.get(path) {
            return id;
        }
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        let parent = self.node_for(parent);
        let id = self.nodes.len() as u32;
        self.nodes.push(Node { stat: dir_stat(FileTime::default()), data_offset: 0, children: Vec::new() });
        self.nodes[parent as usize].children.push((Box::from(OsStr::from_bytes(name)), id));
        self.index.insert(Box::from(path), id);
        id
    }

    fn node(&self, rel: &Path) -> Option<&Node> {
        // `Path::join("")` leaves a trailing `/`: the same name.
        let mut key = rel.as_os_str().as_bytes();
        while let [rest @ .., b'/'] = key {
            key = rest;
        }
        let id = *self.index.get(key)?;
        self.nodes.get(id as usize)
    }

    /// How many names the tar holds (its directories included).
    pub fn names(&self) -> usize {
        self.nodes.len() - 1
    }
}

/// A directory the tar implies: as `tar -x` makes it.
fn dir_stat(mtime: FileTime) -> Stat {
    Stat { mode: libc::S_IFDIR | 0o755, nlink: 2, blksize: 4096, atime: mtime, mtime, ctime: mtime, ..Stat::default() }
}

impl Layer for TarLayer {
    fn source(&self) -> &Path {
        &self.path
    }

    fn stat(&self, rel: &Path) -> io::Result<Option<Stat>> {
        Ok(self.node(rel).map(|n| n.stat))
    }

    fn read_dir(&self, rel: &Path) -> io::Result<Option<Vec<(OsString, FileKind)>>> {
        let Some(n) = self.node(rel).filter(|n| n.stat.is_dir()) else { return Ok(None) };
        Ok(Some(
            n.children.iter().map(|(name, id)| (name.to_os_string(), self.nodes[*id as usize].stat.kind())).collect(),
        ))
    }

    fn open(&self, rel: &Path, _flags: i32) -> io::Result<LayerFile> {
        let n = self.node(rel).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if n.stat.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        let file = match &self.reopen {
            Some(p) => File::open(p)?,
            None => File::open(&self.path)?,
        };
        Ok(LayerFile::range(file, n.data_offset, n.stat.size))
    }

    fn read_link(&self, _rel: &Path) -> io::Result<PathBuf> {
        // A bundle holds no symlinks.
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn xattr_names(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        self.node(rel).map(|_| Vec::new()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn xattr(&self, rel: &Path, _name: &OsStr) -> io::Result<Option<Vec<u8>>> {
        self.node(rel).map(|_| None).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }
}
