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

use super::tarball::{DUPLICATE, EntryKind, FILE_OVER_DIR, TarError, TarReader, below_file};
use crate::sys::{self, FileKind, FileTime, Stat};
use crate::view::{Layer, LayerFile};

/// One name of the tar, as small as it can be: a tar of a large history
/// holds a few hundred thousand.
#[derive(Debug)]
struct Node {
    name: Box<[u8]>,
    /// Type and permission bits, as `st_mode`.
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    size: u64,
    mtime: i64,
    /// Where a file's data starts in the tar.
    data_offset: u64,
    /// Named by an entry of its own (not only implied by those below it).
    listed: bool,
    /// A directory's entries, in the tar's order.
    children: Vec<u32>,
}

/// A bundle tar indexed for reading as a layer.
pub struct TarLayer {
    path: PathBuf,
    file: File,
    /// `/proc/self/fd/N` of `file`: each open gets its own file
    /// description of the very file indexed (a sequential reader seeks).
    reopen: Option<PathBuf>,
    nodes: Vec<Node>,
    /// (parent, hash of the name) → node; names that share a parent and a
    /// hash go to `collisions`.
    index: FxHashMap<(u32, u64), u32>,
    collisions: FxHashMap<(u32, Box<[u8]>), u32>,
    dev: u64,
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

fn name_hash(name: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    h.write(name);
    h.finish()
}

/// A directory the tar implies: as `tar -x` makes it.
fn implied_dir(name: &[u8], mtime: i64) -> Node {
    Node {
        name: Box::from(name),
        mode: libc::S_IFDIR | 0o755,
        uid: 0,
        gid: 0,
        nlink: 2,
        size: 0,
        mtime,
        data_offset: 0,
        listed: false,
        children: Vec::new(),
    }
}

impl TarLayer {
    /// Reads the index of the bundle at `path`; refuses a tar that is not a
    /// plain bundle, naming the entry.
    pub fn open(path: &Path) -> Result<TarLayer, TarLayerError> {
        let shown = path.display().to_string();
        let io_err = |source| TarLayerError::Io { path: shown.clone(), source };
        let refused = |source| TarLayerError::Refused { path: shown.clone(), source };
        let file = File::open(path).map_err(io_err)?;
        let meta = sys::stat_of(&file).map_err(io_err)?;
        // The names are checked here, against the tree being built, not in
        // the reader's own sets of every path (half the memory).
        let mut reader = TarReader::new(file.try_clone().map_err(io_err)?, meta.size).without_name_checks();
        let mut root = implied_dir(b"", meta.mtime.sec);
        (root.uid, root.gid, root.listed) = (meta.uid, meta.gid, true);
        let mut layer = TarLayer {
            path: path.to_path_buf(),
            reopen: None,
            file,
            nodes: vec![root],
            index: FxHashMap::default(),
            collisions: FxHashMap::default(),
            dev: meta.dev,
        };
        while let Some(e) = reader.next_entry().map_err(refused)? {
            let id = layer.place(&e.path, e.kind).map_err(|msg| refused(TarError { at: e.path.clone(), msg }))?;
            let node = &mut layer.nodes[id as usize];
            let is_dir = e.kind == EntryKind::Dir;
            node.mode = if is_dir { libc::S_IFDIR } else { libc::S_IFREG } | e.mode;
            (node.uid, node.gid, node.mtime) = (e.uid, e.gid, e.mtime);
            node.size = if is_dir { 0 } else { e.size };
            node.data_offset = e.data_offset;
            node.listed = true;
        }
        // A directory's link count is what a filesystem gives it (2 plus
        // one per subdirectory); owners as `tar -x` by this user gives them.
        let owner = (sys::geteuid() != 0).then(|| (sys::geteuid(), sys::getegid()));
        for i in 0..layer.nodes.len() {
            let n = &layer.nodes[i];
            let nlink = if n.mode & libc::S_IFMT == libc::S_IFDIR {
                2 + n.children.iter().filter(|&&c| layer.nodes[c as usize].mode & libc::S_IFMT == libc::S_IFDIR).count()
                    as u32
            } else {
                1
            };
            let n = &mut layer.nodes[i];
            n.nlink = nlink;
            if let Some((uid, gid)) = owner {
                (n.uid, n.gid) = (uid, gid);
            }
        }
        layer.index.shrink_to_fit();
        let proc = PathBuf::from(format!("/proc/self/fd/{}", layer.file.as_raw_fd()));
        layer.reopen = File::open(&proc).is_ok().then_some(proc);
        Ok(layer)
    }

    fn is_dir(&self, id: u32) -> bool {
        self.nodes[id as usize].mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// The child `name` of node `parent`.
    fn child(&self, parent: u32, name: &[u8]) -> Option<u32> {
        let id = *self.index.get(&(parent, name_hash(name)))?;
        if *self.nodes[id as usize].name == *name {
            return Some(id);
        }
        self.collisions.get(&(parent, Box::from(name))).copied()
    }

    fn add_child(&mut self, parent: u32, node: Node) -> u32 {
        let id = self.nodes.len() as u32;
        match self.index.entry((parent, name_hash(&node.name))) {
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collisions.insert((parent, node.name.clone()), id);
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(id);
            }
        }
        self.nodes.push(node);
        self.nodes[parent as usize].children.push(id);
        id
    }

    /// The node for an entry at `path`: made, with the directories it
    /// implies, or an implied directory now listed. Refuses, in the strict
    /// reader's words, a name listed twice, a file where a directory is,
    /// and anything below a file.
    fn place(&mut self, path: &str, kind: EntryKind) -> Result<u32, String> {
        let mut cur = 0u32;
        let mut comps = path.split('/').peekable();
        let mut walked = 0;
        while let Some(comp) = comps.next() {
            let last = comps.peek().is_none();
            let name = comp.as_bytes();
            walked += comp.len() + 1;
            match self.child(cur, name) {
                Some(id) if last => {
                    let n = &self.nodes[id as usize];
                    if n.listed {
                        return Err(DUPLICATE.into());
                    }
                    if kind == EntryKind::File {
                        return Err(FILE_OVER_DIR.into());
                    }
                    return Ok(id);
                }
                Some(id) if !self.is_dir(id) => return Err(below_file(&path[..walked - 1])),
                Some(id) => cur = id,
                None => {
                    let node = implied_dir(name, 0);
                    cur = self.add_child(cur, node);
                    if last {
                        return Ok(cur);
                    }
                }
            }
        }
        Ok(cur)
    }

    /// The node of `rel`, walked name by name from the root.
    fn node(&self, rel: &Path) -> Option<u32> {
        let mut cur = 0;
        for comp in rel.as_os_str().as_bytes().split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            if !self.is_dir(cur) {
                return None;
            }
            cur = self.child(cur, comp)?;
        }
        Some(cur)
    }

    fn stat_of(&self, id: u32) -> Stat {
        let n = &self.nodes[id as usize];
        let t = FileTime { sec: n.mtime, nsec: 0 };
        Stat {
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            size: n.size,
            nlink: n.nlink as u64,
            dev: self.dev,
            ino: id as u64 + 1,
            rdev: 0,
            blksize: 4096,
            blocks: n.size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
        }
    }

    /// How many names the tar holds (its directories included).
    pub fn names(&self) -> usize {
        self.nodes.len() - 1
    }
}

impl Layer for TarLayer {
    fn source(&self) -> &Path {
        &self.path
    }

    fn stat(&self, rel: &Path) -> io::Result<Option<Stat>> {
        Ok(self.node(rel).map(|id| self.stat_of(id)))
    }

    fn read_dir(&self, rel: &Path) -> io::Result<Option<Vec<(OsString, FileKind)>>> {
        let Some(id) = self.node(rel).filter(|&id| self.is_dir(id)) else { return Ok(None) };
        Ok(Some(
            self.nodes[id as usize]
                .children
                .iter()
                .map(|&c| {
                    let n = &self.nodes[c as usize];
                    (OsStr::from_bytes(&n.name).to_os_string(), FileKind::of_mode(n.mode))
                })
                .collect(),
        ))
    }

    fn open(&self, rel: &Path, _flags: i32) -> io::Result<LayerFile> {
        let id = self.node(rel).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if self.is_dir(id) {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        let file = match &self.reopen {
            Some(p) => File::open(p)?,
            None => File::open(&self.path)?,
        };
        let n = &self.nodes[id as usize];
        Ok(LayerFile::range(file, n.data_offset, n.size))
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
