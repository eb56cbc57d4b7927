//! The view core: layers, policy, whiteouts, merged directories and copy-up.
//!
//! Every front end (FUSE, kernel materialisation, GC, export) goes through
//! this module, so they all see the same tree. Paths are relative to the
//! registry root (`""` is the root). Layer 0 is upper; 1.. are the lowers,
//! topmost first. Lowers are only ever read.
//!
//! A layer is a [`Layer`]: something the view asks to stat, list, open and
//! read xattrs of names relative to its root (`layer`: a directory through
//! `*at` calls on a handle of its root; upper, a [`DirLayer`], is also
//! written). Nothing here joins a path onto a layer's root.
//!
//! One file per concern, as the kernel's `fs/overlayfs/`: `namei` (lookup),
//! `readdir` (merged listings), `marks` (whiteouts, opaque directories),
//! `copy_up`, `dir` (namespace operations on a name in a directory), `inode`
//! (open, attributes, xattrs), `policy` (what the history hides).
//!
//! Upper is kept in the kernel overlayfs format (0/0 char-device whiteouts,
//! `overlay.opaque` xattrs) so a kernel overlay mount of the same upper shows
//! the same tree.

mod copy_up;
mod dir;
mod inode;
pub mod layer;
mod marks;
mod namei;
pub mod policy;
mod readdir;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rustc_hash::FxHashMap;

use crate::sys::{self, SetTime};
pub use crate::sys::{FileKind, FileTime, Stat};
pub use layer::{DirLayer, Layer, LayerFile};
pub use policy::Policy;

/// Index of a layer: 0 is upper, 1.. the lowers from the top.
pub type LayerIdx = usize;
pub const UPPER: LayerIdx = 0;

/// What a changing operation copied up besides the entry it named: a front
/// end that caches attributes learns which entries changed under it (a
/// file's parent gains an upper entry; a copied-up directory turns into a
/// merged one, and so may every ancestor).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyUps {
    pub dirs: u64,
    pub others: u64,
}

impl CopyUps {
    fn count(&mut self, dir: bool) {
        if dir { self.dirs += 1 } else { self.others += 1 }
    }
}

/// The result of an operation that changes the view, with its copy-ups.
#[derive(Debug)]
pub struct Changed<T> {
    pub value: T,
    pub copyups: CopyUps,
}

impl<T> Changed<T> {
    fn new(value: T, copyups: CopyUps) -> Changed<T> {
        Changed { value, copyups }
    }
}

/// Names regfs uses for its own temporary files in upper; never shown.
const TMP_PREFIX: &str = ".regfs-tmp.";

/// Which xattr namespace marks whiteouts and opaque directories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrNs {
    /// `trusted.overlay.*`: what a root kernel overlay mount reads.
    Trusted,
    /// `user.overlay.*`: what an overlay mount with `userxattr` reads.
    User,
}

impl XattrNs {
    /// The namespace the current process can write: trusted needs
    /// CAP_SYS_ADMIN in the initial user namespace; root of a user namespace
    /// writes user.* (what overlay with `userxattr` reads there).
    pub fn for_current_user() -> XattrNs {
        if sys::geteuid() == 0 && !sys::in_user_namespace() { XattrNs::Trusted } else { XattrNs::User }
    }
    fn opaque(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.opaque",
            XattrNs::User => "user.overlay.opaque",
        }
    }
    fn whiteout(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.whiteout",
            XattrNs::User => "user.overlay.whiteout",
        }
    }
    fn whiteouts_dir(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.whiteouts",
            XattrNs::User => "user.overlay.whiteouts",
        }
    }
}

const ALL_NS: [XattrNs; 2] = [XattrNs::Trusted, XattrNs::User];

/// Whether an xattr name belongs to overlayfs (hidden from the view's users).
fn is_overlay_xattr(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b"trusted.overlay.") || b.starts_with(b"user.overlay.")
}

/// What one path is in the view.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The layers that contribute, topmost first. A non-directory has exactly
    /// one; a merged directory several; an opaque directory cuts the list.
    pub layers: Vec<LayerIdx>,
    /// What the topmost layer's entry is.
    pub meta: Stat,
}

impl Entry {
    /// The directory this entry is, at `rel`, for name operations.
    pub fn as_dir<'a>(&'a self, rel: &'a Path) -> Dir<'a> {
        Dir { rel, layers: &self.layers }
    }
    pub fn top(&self) -> LayerIdx {
        self.layers[0]
    }
    pub fn is_dir(&self) -> bool {
        self.meta.is_dir()
    }
    /// Whether this lives only in upper (a pure-upper directory can be renamed).
    fn upper_only(&self) -> bool {
        self.layers == [UPPER]
    }
}

/// One listed name of a merged directory.
#[derive(Clone, Debug)]
pub struct DirItem {
    pub name: OsString,
    pub entry: Entry,
}

/// One listed name of a merged directory, known from the layers' directory
/// entries alone (no stat of the name, see [`View::names`]).
#[derive(Clone, Debug)]
pub struct Named {
    pub name: OsString,
    /// As [`Entry::layers`].
    pub layers: Vec<LayerIdx>,
    /// The kind of the topmost layer's entry.
    pub file_type: FileKind,
}

impl Named {
    /// The directory this name is, at `rel`, for name operations.
    pub fn as_dir<'a>(&'a self, rel: &'a Path) -> Dir<'a> {
        Dir { rel, layers: &self.layers }
    }
    pub fn is_dir(&self) -> bool {
        self.file_type.is_dir()
    }
}

/// A directory of the view as a front end holds it: its path and layer
/// stack. Lower stacks never change while mounted and lookups always
/// consult upper, so a stack resolved earlier stays good: operations on a
/// name in it need not resolve the path from the root again.
#[derive(Clone, Copy, Debug)]
pub struct Dir<'a> {
    pub rel: &'a Path,
    pub layers: &'a [LayerIdx],
}

#[derive(Debug)]
pub struct View {
    upper: DirLayer,
    /// Topmost first; layer index `i` is `lowers[i - 1]`.
    lowers: Vec<Box<dyn Layer>>,
    policy: Policy,
    ns: XattrNs,
    /// Serialises namespace changes in upper (copy-up, create, rename...).
    ns_lock: Mutex<()>,
    tmp_seq: AtomicU64,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Reads an overlay marker xattr. Reading `user.*` needs read permission
/// on the entry: one the process may not read (a mode-000 history
/// directory, as an ordinary user) marks nothing, as overlayfs decides, so
/// it does not make its parent unlistable.
fn overlay_xattr(layer: &dyn Layer, rel: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    match layer.xattr(rel, OsStr::new(name)) {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => Ok(None),
        r => r,
    }
}

/// Whether `rel` in `layer` carries the overlay mark `name` (in either
/// namespace) with a value `accept` takes. One `llistxattr` answers for the
/// usual entry without xattrs, instead of a failing `lgetxattr` per namespace.
fn overlay_mark(
    layer: &dyn Layer,
    rel: &Path,
    name: fn(XattrNs) -> &'static str,
    accept: fn(&[u8]) -> bool,
) -> io::Result<bool> {
    let names = match layer.xattr_names(rel) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => return Ok(false),
        Err(e) => return Err(e),
    };
    for ns in ALL_NS {
        if names.iter().any(|n| n == name(ns))
            && let Some(v) = overlay_xattr(layer, rel, name(ns))?
            && accept(&v)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a name is one of regfs's own temporary files.
fn is_internal_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(TMP_PREFIX.as_bytes())
}

impl View {
    /// A view over the directories `upper` and `lowers` (topmost first).
    /// Checks that every layer root is a directory; it does not write anything.
    pub fn new(upper: PathBuf, lowers: Vec<PathBuf>, policy: Policy, ns: XattrNs) -> io::Result<View> {
        let lowers = lowers
            .iter()
            .map(|l| DirLayer::open(l).map(|l| Box::new(l) as Box<dyn Layer>))
            .collect::<io::Result<_>>()?;
        Ok(View::of_layers(DirLayer::open(&upper)?, lowers, policy, ns))
    }

    /// A view over layers already open (a lower need not be a directory).
    pub fn of_layers(upper: DirLayer, lowers: Vec<Box<dyn Layer>>, policy: Policy, ns: XattrNs) -> View {
        View { upper, lowers, policy, ns, ns_lock: Mutex::new(()), tmp_seq: AtomicU64::new(0) }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn upper_root(&self) -> &Path {
        self.upper.root()
    }

    /// The upper layer, to read (writes go through the view).
    pub fn upper_layer(&self) -> &dyn Layer {
        &self.upper
    }

    /// The lower layers, topmost first.
    pub fn lowers(&self) -> impl Iterator<Item = &dyn Layer> {
        self.lowers.iter().map(|l| &**l)
    }

    /// Where `rel` of layer `li` lives, for messages (never opened: a
    /// layer is read through [`Layer`]).
    pub fn place_of(&self, li: LayerIdx, rel: &Path) -> PathBuf {
        self.layer(li).source().join(rel)
    }

    /// The entry a listed name stands for, with its topmost layer's stat.
    pub fn entry_of(&self, dir_rel: &Path, n: &Named) -> io::Result<Entry> {
        let meta = self.stat_in(n.layers[0], &dir_rel.join(&n.name))?.ok_or_else(|| errno(libc::ENOENT))?;
        Ok(Entry { layers: n.layers.clone(), meta })
    }

    /// Layer `li` (0 is upper).
    fn layer(&self, li: LayerIdx) -> &dyn Layer {
        if li == UPPER { &self.upper } else { &*self.lowers[li - 1] }
    }

    fn layer_count(&self) -> usize {
        self.lowers.len() + 1
    }

    /// What layer `li` holds at `rel`, if anything.
    fn stat_in(&self, li: LayerIdx, rel: &Path) -> io::Result<Option<Stat>> {
        self.layer(li).stat(rel)
    }

    /// The root directory of the view: every layer contributes.
    pub fn root(&self) -> io::Result<Entry> {
        let root = Path::new("");
        let meta = self.stat_in(UPPER, root)?.ok_or_else(|| errno(libc::ENOENT))?;
        let mut layers = vec![UPPER];
        if !self.is_opaque(UPPER, root)? {
            for i in 1..self.layer_count() {
                layers.push(i);
                if self.is_opaque(i, root)? {
                    break;
                }
            }
        }
        Ok(Entry { layers, meta })
    }

    /// Whether any lower layer holds anything at `rel`, visible or not. Where
    /// one does, removing the name from upper must leave a whiteout and a new
    /// directory there must be opaque.
    fn lower_has(&self, rel: &Path) -> io::Result<bool> {
        for li in 1..self.layer_count() {
            if self.stat_in(li, rel)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A fresh name for a temporary file in the upper directory `dir_rel`.
    fn tmp_path(&self, dir_rel: &Path) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        dir_rel.join(format!("{TMP_PREFIX}{}.{n}", std::process::id()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A poisoned lock only means another request panicked mid-way; the
        // filesystem state is still what the syscalls left.
        self.ns_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn parent_of(rel: &Path) -> io::Result<&Path> {
        rel.parent().ok_or_else(|| errno(libc::EINVAL))
    }
}

/// What [`View::hide_in_upper`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hidden {
    Whiteout,
    Opaque,
    Already,
}

/// A setattr request, in view terms.
#[derive(Debug, Default)]
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
