//! The view core: layers, policy, whiteouts, merged directories and copy-up.
//!
//! Every front end (FUSE, kernel materialisation, GC, export) goes through
//! this module, so they all see the same tree. Paths are relative to the
//! registry root (`""` is the root). Layer 0 is upper; 1.. are the lowers,
//! topmost first. Lowers are only ever read.
//!
//! Upper is kept in the kernel overlayfs format (0/0 char-device whiteouts,
//! `overlay.opaque` xattrs) so a kernel overlay mount of the same upper shows
//! the same tree.

pub mod policy;

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rustc_hash::FxHashMap;

use crate::sys::{self, SetTime};
pub use policy::Policy;

/// Index of a layer: 0 is upper, 1.. the lowers from the top.
pub type LayerIdx = usize;
pub const UPPER: LayerIdx = 0;

thread_local! {
    /// What this thread copied up since the last [`take_copyups`].
    static COPYUPS: std::cell::Cell<CopyUps> = const { std::cell::Cell::new(CopyUps { dirs: 0, others: 0 }) };
}

/// Copy-ups counted per thread: a front end serving one request per thread
/// learns whether the request changed attributes of entries it did not
/// name (a file's parent gains an upper entry; a copied-up directory turns
/// into a merged one, and so may every ancestor).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyUps {
    pub dirs: u64,
    pub others: u64,
}

/// The calling thread's copy-ups since the last call.
pub fn take_copyups() -> CopyUps {
    COPYUPS.with(|c| c.replace(CopyUps::default()))
}

fn count_copyup(dir: bool) {
    COPYUPS.with(|c| {
        let mut n = c.get();
        if dir {
            n.dirs += 1
        } else {
            n.others += 1
        }
        c.set(n);
    });
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
pub fn is_overlay_xattr(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b"trusted.overlay.") || b.starts_with(b"user.overlay.")
}

/// What one path is in the view.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The layers that contribute, topmost first. A non-directory has exactly
    /// one; a merged directory several; an opaque directory cuts the list.
    pub layers: Vec<LayerIdx>,
    /// Metadata of the topmost layer's entry.
    pub meta: Metadata,
}

impl Entry {
    pub fn top(&self) -> LayerIdx {
        self.layers[0]
    }
    pub fn is_dir(&self) -> bool {
        self.meta.is_dir()
    }
    /// Whether this lives only in upper (a pure-upper directory can be renamed).
    pub fn upper_only(&self) -> bool {
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
/// entries alone (no stat of the name, see [`View::names_in`]).
#[derive(Clone, Debug)]
pub struct Named {
    pub name: OsString,
    /// As [`Entry::layers`].
    pub layers: Vec<LayerIdx>,
    /// The type of the topmost layer's entry.
    pub file_type: fs::FileType,
}

impl Named {
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
    roots: Vec<PathBuf>,
    policy: Policy,
    ns: XattrNs,
    /// Serialises namespace changes in upper (copy-up, create, rename...).
    ns_lock: Mutex<()>,
    tmp_seq: AtomicU64,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn is_missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

fn lstat(p: &Path) -> io::Result<Option<Metadata>> {
    match fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads an overlay marker xattr. Reading `user.*` needs read permission
/// on the entry: one the process may not read (a mode-000 history
/// directory, as an ordinary user) marks nothing, as overlayfs decides, so
/// it does not make its parent unlistable.
fn overlay_xattr(p: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    match sys::lgetxattr(p, OsStr::new(name)) {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => Ok(None),
        r => r,
    }
}

/// Whether `p` carries the overlay mark `name` (in either namespace) with a
/// value `accept` takes. One `llistxattr` answers for the usual entry
/// without xattrs, instead of a failing `lgetxattr` per namespace.
fn overlay_mark(p: &Path, name: fn(XattrNs) -> &'static str, accept: fn(&[u8]) -> bool) -> io::Result<bool> {
    let names = match sys::llistxattr(p) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => return Ok(false),
        Err(e) => return Err(e),
    };
    for ns in ALL_NS {
        if names.iter().any(|n| n == name(ns))
            && let Some(v) = overlay_xattr(p, name(ns))?
            && accept(&v)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a name is one of regfs's own temporary files.
pub fn is_internal_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(TMP_PREFIX.as_bytes())
}

impl View {
    /// A view over `upper` and `lowers` (topmost first). Checks that every
    /// layer root is a directory; it does not write anything.
    pub fn new(upper: PathBuf, lowers: Vec<PathBuf>, policy: Policy, ns: XattrNs) -> io::Result<View> {
        let mut roots = vec![upper];
        roots.extend(lowers);
        for r in &roots {
            if !fs::metadata(r)?.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", r.display()),
                ));
            }
        }
        Ok(View { roots, policy, ns, ns_lock: Mutex::new(()), tmp_seq: AtomicU64::new(0) })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn upper_root(&self) -> &Path {
        &self.roots[UPPER]
    }

    pub fn lower_roots(&self) -> &[PathBuf] {
        &self.roots[1..]
    }

    pub fn layer_count(&self) -> usize {
        self.roots.len()
    }

    pub fn xattr_ns(&self) -> XattrNs {
        self.ns
    }

    /// The real path of `rel` in layer `layer`.
    pub fn layer_path(&self, layer: LayerIdx, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() { self.roots[layer].clone() } else { self.roots[layer].join(rel) }
    }

    /// The real path of the topmost file behind an entry.
    pub fn real_path(&self, rel: &Path, e: &Entry) -> PathBuf {
        self.layer_path(e.top(), rel)
    }

    /// The root directory of the view: every layer contributes.
    pub fn root(&self) -> io::Result<Entry> {
        let meta = fs::symlink_metadata(&self.roots[UPPER])?;
        let mut layers = vec![UPPER];
        if !self.is_opaque(&self.roots[UPPER])? {
            for i in 1..self.roots.len() {
                layers.push(i);
                if self.is_opaque(&self.roots[i])? {
                    break;
                }
            }
        }
        Ok(Entry { layers, meta })
    }

    /// Whether `p` (already known to exist with metadata `m`) is a whiteout.
    /// In the bottom layer only the 0/0 device form counts: an xattr
    /// whiteout there would hide nothing (nothing lies below), and skipping
    /// it spares a stat of every history file when listing.
    fn is_whiteout(&self, li: LayerIdx, p: &Path, m: &Metadata) -> io::Result<bool> {
        let ft = m.file_type();
        if !self.may_be_whiteout(li, ft) {
            return Ok(false);
        }
        if ft.is_char_device() {
            return Ok(m.rdev() == 0);
        }
        Ok(m.len() == 0 && overlay_mark(p, XattrNs::whiteout, |_| true)?)
    }

    fn is_bottom(&self, li: LayerIdx) -> bool {
        li + 1 == self.roots.len()
    }

    /// Whether an entry of type `ft` in layer `li` may be a whiteout (so a
    /// listing must stat it to know): a device, or a file above the bottom
    /// layer (the xattr form).
    fn may_be_whiteout(&self, li: LayerIdx, ft: fs::FileType) -> bool {
        ft.is_char_device() || (ft.is_file() && !self.is_bottom(li))
    }

    fn is_opaque(&self, dir: &Path) -> io::Result<bool> {
        overlay_mark(dir, XattrNs::opaque, |v| v == b"y")
    }

    /// Resolves `name` inside the directory `dir` (at `dir_rel`).
    ///
    /// Kernel overlay rules: upper first, then the directory's lower stack;
    /// a whiteout ends the search, a non-directory is final, a directory
    /// merges with the directories below it until an opaque one. Policy hides
    /// the entry in every lower layer.
    pub fn lookup(&self, dir_rel: &Path, dir: &Entry, name: &OsStr) -> io::Result<Option<Entry>> {
        self.lookup_in(dir_rel, &dir.layers, name)
    }

    /// [`View::lookup`] given only the directory's layer stack.
    pub fn lookup_in(&self, dir_rel: &Path, dir_layers: &[LayerIdx], name: &OsStr) -> io::Result<Option<Entry>> {
        if is_internal_name(name) || name.is_empty() || name == "." || name == ".." {
            return Ok(None);
        }
        let rel = dir_rel.join(name);
        let hidden = self.policy.hides_lower(&rel);
        let mut found: Option<Entry> = None;
        // Upper is always consulted: a directory copied up after `dir` was
        // resolved still shows what was written into it.
        let stack = std::iter::once(UPPER).chain(dir_layers.iter().copied().filter(|&l| l != UPPER));
        for li in stack {
            if li != UPPER && hidden {
                break;
            }
            let p = self.layer_path(li, &rel);
            let Some(meta) = lstat(&p)? else { continue };
            if self.is_whiteout(li, &p, &meta)? {
                break;
            }
            let is_dir = meta.is_dir();
            match &mut found {
                None => {
                    found = Some(Entry { layers: vec![li], meta });
                    if !is_dir {
                        break;
                    }
                }
                Some(e) => {
                    if !is_dir {
                        break;
                    }
                    e.layers.push(li);
                }
            }
            // Nothing lies below the bottom layer: its opaque marks cut
            // nothing, so they are not read (two getxattrs per directory).
            if !self.is_bottom(li) && self.is_opaque(&p)? {
                break;
            }
        }
        Ok(found)
    }

    /// Resolves a relative path from the root.
    pub fn resolve(&self, rel: &Path) -> io::Result<Option<Entry>> {
        let mut cur = self.root()?;
        let mut cur_rel = PathBuf::new();
        for comp in rel.components() {
            let std::path::Component::Normal(name) = comp else {
                return Err(errno(libc::EINVAL));
            };
            if !cur.is_dir() {
                return Ok(None);
            }
            match self.lookup(&cur_rel, &cur, name)? {
                Some(e) => cur = e,
                None => return Ok(None),
            }
            cur_rel.push(name);
        }
        Ok(Some(cur))
    }

    fn resolve_existing(&self, rel: &Path) -> io::Result<Entry> {
        self.resolve(rel)?.ok_or_else(|| errno(libc::ENOENT))
    }

    /// [`View::lookup_in`] of a name that must exist (ENOENT otherwise).
    fn lookup_existing(&self, dir: Dir, name: &OsStr) -> io::Result<Entry> {
        self.lookup_in(dir.rel, dir.layers, name)?.ok_or_else(|| errno(libc::ENOENT))
    }

    /// Fresh metadata for an entry: upper may have changed since `e` was
    /// resolved (writes, copy-up); lower entries never change while mounted.
    pub fn refresh(&self, rel: &Path, e: &Entry) -> io::Result<Entry> {
        let p = self.layer_path(UPPER, rel);
        if let Some(meta) = lstat(&p)?
            && !self.is_whiteout(UPPER, &p, &meta)?
        {
            let mut layers = vec![UPPER];
            layers.extend(e.layers.iter().copied().filter(|&l| l != UPPER));
            if !meta.is_dir() {
                layers.truncate(1);
            }
            return Ok(Entry { layers, meta });
        }
        Ok(e.clone())
    }

    /// The entry at `rel` found earlier in `layers`, with fresh metadata:
    /// upper first (a copy-up may have happened since), else the topmost
    /// of `layers`. ENOENT when neither holds it any more.
    pub fn stat_stack(&self, rel: &Path, layers: &[LayerIdx]) -> io::Result<Entry> {
        let up = self.layer_path(UPPER, rel);
        if let Some(meta) = lstat(&up)?
            && !self.is_whiteout(UPPER, &up, &meta)?
        {
            let mut all = vec![UPPER];
            if meta.is_dir() {
                all.extend(layers.iter().copied().filter(|&l| l != UPPER));
            }
            return Ok(Entry { layers: all, meta });
        }
        let lowers: Vec<LayerIdx> = layers.iter().copied().filter(|&l| l != UPPER).collect();
        let top = *lowers.first().ok_or_else(|| errno(libc::ENOENT))?;
        let meta = lstat(&self.layer_path(top, rel))?.ok_or_else(|| errno(libc::ENOENT))?;
        Ok(Entry { layers: lowers, meta })
    }

    /// Lists a directory of the view: each visible name once, upper first.
    pub fn list(&self, dir_rel: &Path, dir: &Entry) -> io::Result<Vec<DirItem>> {
        self.list_in(dir_rel, &dir.layers)
    }

    /// [`View::list`] given only the directory's layer stack.
    pub fn list_in(&self, dir_rel: &Path, dir_layers: &[LayerIdx]) -> io::Result<Vec<DirItem>> {
        self.names_in(dir_rel, dir_layers)?
            .into_iter()
            .map(|n| {
                let meta = fs::symlink_metadata(self.layer_path(n.layers[0], &dir_rel.join(&n.name)))?;
                Ok(DirItem { name: n.name, entry: Entry { layers: n.layers, meta } })
            })
            .collect()
    }

    /// Lists a directory of the view from its layers' directory entries:
    /// each visible name once, upper first, with the same rules as
    /// [`View::lookup_in`] (whiteouts, opaque cuts, policy). A name is
    /// stat'ed only where it could be a whiteout (a device, or a file above
    /// the bottom layer) and a directory's opaque mark is read only above
    /// the bottom layer, so listing history costs one getdents per layer.
    pub fn names_in(&self, dir_rel: &Path, dir_layers: &[LayerIdx]) -> io::Result<Vec<Named>> {
        struct Slot {
            name: OsString,
            /// The contributing layers and the topmost entry's type; `None`
            /// while hidden (a whiteout, or policy).
            found: Option<(Vec<LayerIdx>, fs::FileType)>,
            /// No layer further down may contribute.
            closed: bool,
        }
        let mut slots: Vec<Slot> = Vec::new();
        // Names are unique within one layer's directory, so the index that
        // merges layers is built only once a second layer has the directory:
        // most directories of a history live in one layer alone.
        let mut index: Option<FxHashMap<OsString, usize>> = None;
        let mut layers_read = 0;
        let judge = self.policy.may_hide_in(dir_rel);
        let stack = std::iter::once(UPPER).chain(dir_layers.iter().copied().filter(|&l| l != UPPER));
        for li in stack {
            let dir = self.layer_path(li, dir_rel);
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(e),
            };
            layers_read += 1;
            if layers_read == 2 {
                index = Some(slots.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect());
            }
            for de in rd {
                let de = de?;
                let name = de.file_name();
                if is_internal_name(&name) {
                    continue;
                }
                let i = match index.as_ref().and_then(|ix| ix.get(&name)) {
                    Some(&i) => i,
                    None => {
                        if let Some(ix) = index.as_mut() {
                            ix.insert(name.clone(), slots.len());
                        }
                        slots.push(Slot { name, found: None, closed: false });
                        slots.len() - 1
                    }
                };
                let slot = &mut slots[i];
                if slot.closed {
                    continue;
                }
                let path = || dir.join(&slot.name);
                if li != UPPER && judge && self.policy.hides_lower(&dir_rel.join(&slot.name)) {
                    slot.closed = true;
                    continue;
                }
                let ft = de.file_type()?;
                if self.may_be_whiteout(li, ft) {
                    let p = path();
                    let meta = match lstat(&p)? {
                        Some(m) => m,
                        None => continue,
                    };
                    if self.is_whiteout(li, &p, &meta)? {
                        slot.closed = true;
                        continue;
                    }
                }
                // A non-directory is final, and so is an opaque directory.
                slot.closed = !ft.is_dir() || (!self.is_bottom(li) && self.is_opaque(&path())?);
                match &mut slot.found {
                    None => slot.found = Some((vec![li], ft)),
                    Some((layers, top)) if top.is_dir() && ft.is_dir() => layers.push(li),
                    // Below a directory, a non-directory ends the merge.
                    Some(_) => slot.closed = true,
                }
            }
        }
        Ok(slots
            .into_iter()
            .filter_map(|s| s.found.map(|(layers, file_type)| Named { name: s.name, layers, file_type }))
            .collect())
    }

    /// Whether any lower layer holds anything at `rel`, visible or not. Where
    /// one does, removing the name from upper must leave a whiteout and a new
    /// directory there must be opaque.
    fn lower_has(&self, rel: &Path) -> io::Result<bool> {
        for li in 1..self.roots.len() {
            if lstat(&self.layer_path(li, rel))?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn tmp_path(&self, dir_rel: &Path) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.layer_path(UPPER, &dir_rel.join(format!("{TMP_PREFIX}{}.{n}", std::process::id())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A poisoned lock only means another request panicked mid-way; the
        // filesystem state is still what the syscalls left.
        self.ns_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure the directory `rel` exists in upper, copying up each
    /// missing ancestor with its mode, owner and times.
    fn ensure_upper_dir(&self, rel: &Path) -> io::Result<()> {
        let up = self.layer_path(UPPER, rel);
        if let Some(m) = lstat(&up)?
            && m.is_dir()
        {
            return Ok(());
        }
        let Some(entry) = self.resolve(rel)? else { return Err(errno(libc::ENOENT)) };
        if !entry.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        if let Some(parent) = rel.parent() {
            self.ensure_upper_dir(parent)?;
        }
        // A whiteout can't sit where the view shows a directory, but a stale
        // temporary or foreign file could: only a missing name is created.
        fs::create_dir(&up).or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })?;
        count_copyup(true);
        copy_attrs(&entry.meta, &up)?;
        Ok(())
    }

    fn parent_of(rel: &Path) -> io::Result<&Path> {
        rel.parent().ok_or_else(|| errno(libc::EINVAL))
    }

    /// Copies a lower entry up to upper (data, mode, owner, times, xattrs).
    pub fn copy_up(&self, rel: &Path) -> io::Result<Entry> {
        let _g = self.lock();
        self.copy_up_locked(rel)
    }

    fn copy_up_locked(&self, rel: &Path) -> io::Result<Entry> {
        let entry = self.resolve_existing(rel)?;
        if entry.top() == UPPER {
            return Ok(entry);
        }
        if entry.is_dir() {
            self.ensure_upper_dir(rel)?;
            return self.resolve_existing(rel);
        }
        let parent = Self::parent_of(rel)?;
        self.ensure_upper_dir(parent)?;
        let src = self.real_path(rel, &entry);
        let tmp = self.tmp_path(parent);
        let ft = entry.meta.file_type();
        let made = if ft.is_file() {
            copy_file_data(&src, &tmp, entry.meta.mode())
        } else if ft.is_symlink() {
            fs::read_link(&src).and_then(|t| std::os::unix::fs::symlink(t, &tmp))
        } else {
            sys::mknod(&tmp, entry.meta.mode(), entry.meta.rdev())
        };
        let finish = made
            .and_then(|_| copy_xattrs(&src, &tmp))
            .and_then(|_| copy_attrs(&entry.meta, &tmp))
            .and_then(|_| fs::rename(&tmp, self.layer_path(UPPER, rel)));
        if let Err(e) = finish {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        count_copyup(false);
        self.resolve_existing(rel)
    }

    /// Removes a whiteout (or any non-directory) that upper holds at `rel`,
    /// so a new entry can take its place.
    fn clear_upper_slot(&self, rel: &Path) -> io::Result<()> {
        let p = self.layer_path(UPPER, rel);
        if let Some(m) = lstat(&p)? {
            if self.is_whiteout(UPPER, &p, &m)? {
                fs::remove_file(&p)?;
            } else {
                return Err(errno(libc::EEXIST));
            }
        }
        Ok(())
    }

    /// Resolves the parent directory of `rel` and names the last component.
    fn parent_dir(&self, rel: &Path) -> io::Result<(PathBuf, Entry, OsString)> {
        let parent = Self::parent_of(rel)?;
        let name = rel.file_name().ok_or_else(|| errno(libc::EINVAL))?.to_os_string();
        let e = self.resolve_existing(parent)?;
        if !e.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        Ok((parent.to_path_buf(), e, name))
    }

    /// Prepares upper for a new name in `dir` that does not exist in the
    /// view; returns its path.
    fn prepare_new(&self, dir: Dir, name: &OsStr) -> io::Result<PathBuf> {
        if self.lookup_in(dir.rel, dir.layers, name)?.is_some() {
            return Err(errno(libc::EEXIST));
        }
        self.ensure_upper_dir(dir.rel)?;
        let rel = dir.rel.join(name);
        self.clear_upper_slot(&rel)?;
        Ok(rel)
    }

    /// Runs `op` (an `*_in` method) on the name `rel` in its parent,
    /// resolved from the root. (A stack resolved before the lock is taken
    /// is as good as one a front end kept, see [`Dir`].)
    fn in_parent<T>(&self, rel: &Path, op: impl FnOnce(Dir, &OsStr) -> io::Result<T>) -> io::Result<T> {
        let (parent, e, name) = self.parent_dir(rel)?;
        op(Dir { rel: &parent, layers: &e.layers }, &name)
    }

    /// A name just created in upper: the only layer it has.
    fn new_upper_entry(&self, rel: &Path) -> io::Result<Entry> {
        Ok(Entry { layers: vec![UPPER], meta: fs::symlink_metadata(self.layer_path(UPPER, rel))? })
    }

    /// Creates a regular file (`O_CREAT|O_EXCL` semantics) and opens it.
    pub fn create_file(&self, rel: &Path, mode: u32, write: bool, read: bool) -> io::Result<(File, Entry)> {
        self.in_parent(rel, |dir, name| self.create_file_in(dir, name, mode, write, read))
    }

    /// [`View::create_file`] of `name` in `dir`.
    pub fn create_file_in(
        &self,
        dir: Dir,
        name: &OsStr,
        mode: u32,
        write: bool,
        read: bool,
    ) -> io::Result<(File, Entry)> {
        let _g = self.lock();
        let rel = self.prepare_new(dir, name)?;
        let p = self.layer_path(UPPER, &rel);
        let f = OpenOptions::new().read(read || !write).write(write).create_new(true).mode(mode & 0o7777).open(&p)?;
        let meta = f.metadata()?;
        Ok((f, Entry { layers: vec![UPPER], meta }))
    }

    /// Creates a directory; opaque where a lower holds the same name, so
    /// nothing hidden below leaks back in (also under kernel overlay).
    pub fn mkdir(&self, rel: &Path, mode: u32) -> io::Result<Entry> {
        self.in_parent(rel, |dir, name| self.mkdir_in(dir, name, mode))
    }

    /// [`View::mkdir`] of `name` in `dir`.
    pub fn mkdir_in(&self, dir: Dir, name: &OsStr, mode: u32) -> io::Result<Entry> {
        let _g = self.lock();
        let rel = self.prepare_new(dir, name)?;
        let p = self.layer_path(UPPER, &rel);
        fs::create_dir(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777))?;
        if self.lower_has(&rel)? {
            self.set_opaque(&p)?;
        }
        // New in upper, and opaque wherever a lower holds the name.
        self.new_upper_entry(&rel)
    }

    fn set_opaque(&self, p: &Path) -> io::Result<()> {
        sys::lsetxattr(p, OsStr::new(self.ns.opaque()), b"y", 0)
    }

    /// Creates a special file (fifo, socket, device) in upper.
    pub fn mknod(&self, rel: &Path, mode: u32, rdev: u64) -> io::Result<Entry> {
        self.in_parent(rel, |dir, name| self.mknod_in(dir, name, mode, rdev))
    }

    /// [`View::mknod`] of `name` in `dir`.
    pub fn mknod_in(&self, dir: Dir, name: &OsStr, mode: u32, rdev: u64) -> io::Result<Entry> {
        let _g = self.lock();
        let rel = self.prepare_new(dir, name)?;
        sys::mknod(&self.layer_path(UPPER, &rel), mode, rdev)?;
        self.new_upper_entry(&rel)
    }

    pub fn symlink(&self, rel: &Path, target: &Path) -> io::Result<Entry> {
        self.in_parent(rel, |dir, name| self.symlink_in(dir, name, target))
    }

    /// [`View::symlink`] of `name` in `dir`.
    pub fn symlink_in(&self, dir: Dir, name: &OsStr, target: &Path) -> io::Result<Entry> {
        let _g = self.lock();
        let rel = self.prepare_new(dir, name)?;
        std::os::unix::fs::symlink(target, self.layer_path(UPPER, &rel))?;
        self.new_upper_entry(&rel)
    }

    /// Hard link: the source is copied up first, as the kernel does.
    pub fn link(&self, from: &Path, to: &Path) -> io::Result<Entry> {
        let _g = self.lock();
        let src = self.resolve_existing(from)?;
        if src.is_dir() {
            return Err(errno(libc::EPERM));
        }
        self.copy_up_locked(from)?;
        let (parent, pe, name) = self.parent_dir(to)?;
        self.prepare_new(Dir { rel: &parent, layers: &pe.layers }, &name)?;
        fs::hard_link(self.layer_path(UPPER, from), self.layer_path(UPPER, to))?;
        self.resolve_existing(to)
    }

    /// Puts a whiteout at `rel` in upper: the kernel's 0/0 character device,
    /// or where mknod is refused, the xattr form (Linux 6.7+).
    fn make_whiteout(&self, rel: &Path) -> io::Result<()> {
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
    fn remove_and_whiteout(&self, rel: &Path, entry: &Entry) -> io::Result<()> {
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

    pub fn unlink(&self, rel: &Path) -> io::Result<()> {
        self.in_parent(rel, |dir, name| self.unlink_in(dir, name))
    }

    /// [`View::unlink`] of `name` in `dir`.
    pub fn unlink_in(&self, dir: Dir, name: &OsStr) -> io::Result<()> {
        let _g = self.lock();
        let e = self.lookup_existing(dir, name)?;
        if e.is_dir() {
            return Err(errno(libc::EISDIR));
        }
        self.remove_and_whiteout(&dir.rel.join(name), &e)
    }

    pub fn rmdir(&self, rel: &Path) -> io::Result<()> {
        if rel.as_os_str().is_empty() {
            return Err(errno(libc::EBUSY));
        }
        self.in_parent(rel, |dir, name| self.rmdir_in(dir, name))
    }

    /// [`View::rmdir`] of `name` in `dir`.
    pub fn rmdir_in(&self, dir: Dir, name: &OsStr) -> io::Result<()> {
        let _g = self.lock();
        let e = self.lookup_existing(dir, name)?;
        if !e.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        let rel = dir.rel.join(name);
        if !self.names_in(&rel, &e.layers)?.is_empty() {
            return Err(errno(libc::ENOTEMPTY));
        }
        self.remove_and_whiteout(&rel, &e)
    }

    /// Removes `rel` and everything below it, through the view (upper files
    /// deleted, lower entries whited out). Used by GC and `rm -rf`-like callers.
    pub fn remove_all(&self, rel: &Path) -> io::Result<()> {
        let Some(e) = self.resolve(rel)? else { return Ok(()) };
        if e.is_dir() {
            for item in self.list(rel, &e)? {
                self.remove_all(&rel.join(&item.name))?;
            }
            self.rmdir(rel)
        } else {
            self.unlink(rel)
        }
    }

    /// Removes `rel` and everything below it in one step: the upper part is
    /// deleted and, where a lower holds the name, one whiteout hides the rest.
    /// The same end state as [`View::remove_all`] without visiting every
    /// entry (GC removes whole history repositories this way).
    pub fn remove_tree(&self, rel: &Path) -> io::Result<()> {
        if rel.as_os_str().is_empty() {
            return Err(errno(libc::EBUSY));
        }
        let _g = self.lock();
        let Some(e) = self.resolve(rel)? else { return Ok(()) };
        self.remove_and_whiteout(rel, &e)
    }

    /// rename(2) through the view. Directories that have anything in a lower
    /// layer give EXDEV, as under kernel overlay without `redirect_dir`.
    pub fn rename(&self, from: &Path, to: &Path, flags: u32) -> io::Result<()> {
        let _g = self.lock();
        if flags & libc::RENAME_EXCHANGE != 0 || flags & libc::RENAME_WHITEOUT != 0 {
            return Err(errno(libc::EINVAL));
        }
        let src = self.resolve_existing(from)?;
        if from == to {
            return Ok(());
        }
        if to.starts_with(from) {
            return Err(errno(libc::EINVAL));
        }
        let dst = self.resolve(to)?;
        if let Some(d) = &dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(errno(libc::EEXIST));
            }
            match (src.is_dir(), d.is_dir()) {
                (true, false) => return Err(errno(libc::ENOTDIR)),
                (false, true) => return Err(errno(libc::EISDIR)),
                _ => {}
            }
        }
        // Before the target's emptiness, as overlayfs checks it.
        if src.is_dir() && !src.upper_only() {
            return Err(errno(libc::EXDEV));
        }
        if let Some(d) = dst.as_ref().filter(|d| src.is_dir() && d.is_dir())
            && !self.list(to, d)?.is_empty()
        {
            return Err(errno(libc::ENOTEMPTY));
        }
        if !src.is_dir() {
            self.copy_up_locked(from)?;
        }
        self.ensure_upper_dir(Self::parent_of(to)?)?;
        let up_to = self.layer_path(UPPER, to);
        match &dst {
            // An empty merged or opaque directory in upper holds only whiteouts.
            Some(d) if d.is_dir() && d.layers.contains(&UPPER) => fs::remove_dir_all(&up_to)?,
            Some(_) => {}
            None => self.clear_upper_slot(to)?,
        }
        fs::rename(self.layer_path(UPPER, from), &up_to)?;
        if src.is_dir() && self.lower_has(to)? {
            self.set_opaque(&up_to)?;
        }
        if self.lower_has(from)? {
            self.make_whiteout(from)?;
        }
        Ok(())
    }

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

fn copy_file_data(src: &Path, dst: &Path, mode: u32) -> io::Result<()> {
    let mut from = File::open(src)?;
    let mut to = OpenOptions::new().write(true).create_new(true).mode(mode & 0o7777).open(dst)?;
    // io::copy uses copy_file_range/sendfile between files where it can.
    io::copy(&mut from, &mut to)?;
    Ok(())
}

/// Owner (where permitted), mode and times of `meta` onto `dst`.
fn copy_attrs(meta: &Metadata, dst: &Path) -> io::Result<()> {
    if sys::geteuid() == 0
        && let Err(e) = std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
    {
        // In a user namespace, ids outside its map cannot be given
        // (EINVAL): the copy keeps the namespace root's ownership.
        if !(sys::in_user_namespace() && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EPERM))) {
            return Err(e);
        }
    }
    if !meta.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    let atime = meta.accessed().map(SetTime::At).unwrap_or(SetTime::Omit);
    let mtime = meta.modified().map(SetTime::At).unwrap_or(SetTime::Omit);
    sys::utimens(dst, atime, mtime)
}

/// User-visible xattrs travel with a copy-up; overlay's own never do.
fn copy_xattrs(src: &Path, dst: &Path) -> io::Result<()> {
    for name in sys::llistxattr(src)? {
        if is_overlay_xattr(&name) {
            continue;
        }
        if let Some(v) = sys::lgetxattr(src, &name)? {
            // Not every namespace is writable by every user: skip, don't fail.
            if let Err(e) = sys::lsetxattr(dst, &name, &v, 0) {
                tracing::debug!(path = %dst.display(), ?name, error = %e, "xattr not copied up");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
