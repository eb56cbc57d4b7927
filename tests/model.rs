//! Model-based test of the overlay rules: proptest generates a history (a
//! lower with files, directories and symlinks) and a sequence of file
//! operations; each sequence runs on a real regfs FUSE mount (transparent
//! policy) and on an in-memory model of what kernel overlayfs shows. After
//! every operation the errno class and the whole visible tree (names,
//! kinds, modes, contents, symlink targets) must match. After unmounting,
//! the same upper is mounted again by regfs and then by kernel overlayfs:
//! both must show the model's tree (one upper format), and the lower must be
//! unchanged to the byte. A failure shrinks to a minimal history and
//! operation sequence, printed with the mismatch.
//!
//! Needs root (kernel overlayfs); fails loudly without it.

mod support;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use support::mount::{KernelOverlay, Mount, is_root};
use support::tree;

/// Names operations use; the lower uses the same ones, so they collide.
const NAMES: [&str; 3] = ["a", "b", "c"];
/// Symlink targets: relative ones stay inside the view (no `..`), `z` is a
/// name nothing else creates, the absolute one never exists.
const TARGETS: [&str; 6] = ["a", "b", "a/b", "c/a", "z", "/nonexistent-regfs-model/x"];
const UMASK: u32 = 0o022;
/// Linux follows at most 40 symlinks in one path walk.
const MAX_LINKS: u32 = 40;

// ------------------------------------------------------------------ inputs

/// A relative path of 1 to 3 names from [`NAMES`].
#[derive(Clone, PartialEq, Eq)]
struct P(String);

impl fmt::Debug for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

fn fixed_path() -> impl Strategy<Value = P> {
    let depth = prop_oneof![2 => Just(1usize), 2 => Just(2), 1 => Just(3)];
    depth
        .prop_flat_map(|n| proptest::collection::vec(proptest::sample::select(&NAMES[..]), n))
        .prop_map(|v| P(v.join("/")))
}

/// An operand: a path of [`NAMES`]; (`#n`) one of the paths that exist in
/// the view when the operation runs; or (`#n/name`) a name in one of the
/// directories that exist then. Most operations then do something.
#[derive(Clone)]
enum Sel {
    Fixed(P),
    Existing(prop::sample::Index),
    Under(prop::sample::Index, &'static str),
}

impl fmt::Debug for Sel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sel::Fixed(p) => p.fmt(f),
            Sel::Existing(i) => write!(f, "#{}", i.index(1 << 16)),
            Sel::Under(i, n) => write!(f, "#{}/{n}", i.index(1 << 16)),
        }
    }
}

fn path() -> impl Strategy<Value = Sel> {
    prop_oneof![
        1 => fixed_path().prop_map(Sel::Fixed),
        2 => any::<prop::sample::Index>().prop_map(Sel::Existing),
        2 => (any::<prop::sample::Index>(), proptest::sample::select(&NAMES[..])).prop_map(|(i, n)| Sel::Under(i, n)),
    ]
}

fn data() -> impl Strategy<Value = String> {
    "[a-z]{0,6}"
}

fn target() -> impl Strategy<Value = String> {
    proptest::sample::select(&TARGETS[..]).prop_map(str::to_string)
}

#[derive(Clone, Debug)]
enum Lower {
    File(P, String, Mode),
    Dir(P, Mode),
    Link(P, String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Mode(u32);

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0o{:o}", self.0)
    }
}

fn lower_entry() -> impl Strategy<Value = Lower> {
    let file_mode = proptest::sample::select(vec![0o644, 0o600, 0o755, 0o444, 0o000]).prop_map(Mode);
    let dir_mode = proptest::sample::select(vec![0o755, 0o700, 0o555]).prop_map(Mode);
    prop_oneof![
        3 => (fixed_path(), data(), file_mode).prop_map(|(p, d, m)| Lower::File(p, d, m)),
        3 => (fixed_path(), dir_mode).prop_map(|(p, m)| Lower::Dir(p, m)),
        1 => (fixed_path(), target()).prop_map(|(p, t)| Lower::Link(p, t)),
    ]
}

#[derive(Clone, Debug)]
enum Op<T = Sel> {
    /// `open(O_WRONLY|O_CREAT|O_TRUNC)` + write (`fs::write`).
    Write(T, String),
    /// `open(O_WRONLY|O_CREAT|O_EXCL)` + write.
    Create(T, String),
    /// `open(O_WRONLY|O_APPEND)` + write.
    Append(T, String),
    /// `ftruncate` on a handle opened for writing, or `truncate(2)` by path.
    Truncate(T, u64, bool),
    Mkdir(T),
    Unlink(T),
    Rmdir(T),
    Rename(T, T),
    Symlink(T, String),
    Chmod(T, Mode),
}

impl Op {
    /// The operation with every `#n` operand replaced by an existing path.
    fn concrete(&self, m: &Model) -> Op<P> {
        let existing: Vec<&String> = m.nodes.keys().filter(|k| !k.is_empty()).collect();
        let dirs: Vec<&String> =
            m.nodes.iter().filter(|(_, n)| matches!(n, Node::Dir { .. })).map(|(k, _)| k).collect();
        let p = |s: &Sel| match s {
            Sel::Fixed(p) => p.clone(),
            Sel::Existing(i) if existing.is_empty() => P(NAMES[i.index(NAMES.len())].to_string()),
            Sel::Existing(i) => P(existing[i.index(existing.len())].clone()),
            // The root is always a directory.
            Sel::Under(i, n) => P(join(dirs[i.index(dirs.len())], n)),
        };
        match self {
            Op::Write(a, d) => Op::Write(p(a), d.clone()),
            Op::Create(a, d) => Op::Create(p(a), d.clone()),
            Op::Append(a, d) => Op::Append(p(a), d.clone()),
            Op::Truncate(a, n, fd) => Op::Truncate(p(a), *n, *fd),
            Op::Mkdir(a) => Op::Mkdir(p(a)),
            Op::Unlink(a) => Op::Unlink(p(a)),
            Op::Rmdir(a) => Op::Rmdir(p(a)),
            Op::Rename(a, b) => Op::Rename(p(a), p(b)),
            Op::Symlink(a, t) => Op::Symlink(p(a), t.clone()),
            Op::Chmod(a, mode) => Op::Chmod(p(a), *mode),
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let mode = proptest::sample::select(vec![0o644, 0o600, 0o755, 0o700, 0o000, 0o777]).prop_map(Mode);
    prop_oneof![
        3 => (path(), data()).prop_map(|(p, d)| Op::Write(p, d)),
        1 => (path(), data()).prop_map(|(p, d)| Op::Create(p, d)),
        2 => (path(), data()).prop_map(|(p, d)| Op::Append(p, d)),
        1 => (path(), 0u64..8, any::<bool>()).prop_map(|(p, n, fd)| Op::Truncate(p, n, fd)),
        3 => path().prop_map(Op::Mkdir),
        2 => path().prop_map(Op::Unlink),
        2 => path().prop_map(Op::Rmdir),
        4 => (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (path(), target()).prop_map(|(p, t)| Op::Symlink(p, t)),
        1 => (path(), mode).prop_map(|(p, m)| Op::Chmod(p, m)),
    ]
}

// ------------------------------------------------------------------- model

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    File {
        data: Vec<u8>,
        mode: u32,
    },
    /// `merged`: the directory continues a lower one (it was in the history
    /// and never removed), so renaming it gives EXDEV.
    Dir {
        mode: u32,
        merged: bool,
    },
    Link {
        target: String,
    },
}

/// The view as overlayfs shows it: path ("" is the root) → node.
#[derive(Clone, Debug)]
struct Model {
    nodes: BTreeMap<String, Node>,
}

type Res<T> = Result<T, i32>;

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") }
}

fn split(p: &str) -> (&str, &str) {
    p.rsplit_once('/').unwrap_or(("", p))
}

/// Whether `p` is `dir` or below it.
fn within(p: &str, dir: &str) -> bool {
    p == dir || dir.is_empty() || p.starts_with(&format!("{dir}/"))
}

impl Model {
    /// The history: `docker/registry/v2` (a lower must be a registry root)
    /// plus the generated entries; an entry whose parent is not a
    /// directory, or whose name is taken, is left out.
    fn lower(entries: &[Lower]) -> Model {
        let mut nodes = BTreeMap::new();
        nodes.insert(String::new(), Node::Dir { mode: 0o755, merged: true });
        let mut m = Model { nodes };
        for d in ["docker", "docker/registry", "docker/registry/v2"] {
            m.nodes.insert(d.into(), Node::Dir { mode: 0o755, merged: true });
        }
        for e in entries {
            let (p, node) = match e {
                Lower::File(p, d, mode) => (p, Node::File { data: d.clone().into_bytes(), mode: mode.0 }),
                Lower::Dir(p, mode) => (p, Node::Dir { mode: mode.0, merged: true }),
                Lower::Link(p, t) => (p, Node::Link { target: t.clone() }),
            };
            let comps: Vec<&str> = p.0.split('/').collect();
            let mut cur = String::new();
            let mut ok = true;
            for c in &comps[..comps.len() - 1] {
                cur = join(&cur, c);
                match m.nodes.get(&cur) {
                    None => {
                        m.nodes.insert(cur.clone(), Node::Dir { mode: 0o755, merged: true });
                    }
                    Some(Node::Dir { .. }) => {}
                    Some(_) => ok = false,
                }
                if !ok {
                    break;
                }
            }
            if ok && !m.nodes.contains_key(&p.0) {
                m.nodes.insert(p.0.clone(), node);
            }
        }
        m
    }

    fn is_dir(&self, p: &str) -> bool {
        matches!(self.nodes.get(p), Some(Node::Dir { .. }))
    }

    fn has_children(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.nodes.range(prefix.clone()..).next().is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    /// Path walk from directory `dir`, as namei does: every symlink on the
    /// way is followed (the last one only when `follow`). Returns the real
    /// path of the last component, whose parent exists and is a directory;
    /// the last component itself may not exist.
    fn walk(&self, dir: &str, path: &str, follow: bool, links: &mut u32) -> Res<String> {
        if path.starts_with('/') {
            // Absolute targets lead out of the view, where nothing exists.
            return Err(libc::ENOENT);
        }
        let comps: Vec<&str> = path.split('/').collect();
        let mut cur = dir.to_string();
        for (i, c) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            let child = join(&cur, c);
            match self.nodes.get(&child) {
                None if last => return Ok(child),
                None => return Err(libc::ENOENT),
                Some(Node::Dir { .. }) => cur = child,
                Some(Node::File { .. }) if last => return Ok(child),
                Some(Node::File { .. }) => return Err(libc::ENOTDIR),
                Some(Node::Link { .. }) if last && !follow => return Ok(child),
                Some(Node::Link { target }) => {
                    *links += 1;
                    if *links > MAX_LINKS {
                        return Err(libc::ELOOP);
                    }
                    let real = self.walk(&cur, target, true, links)?;
                    if last {
                        return Ok(real);
                    }
                    match self.nodes.get(&real) {
                        Some(Node::Dir { .. }) => cur = real,
                        None => return Err(libc::ENOENT),
                        Some(_) => return Err(libc::ENOTDIR),
                    }
                }
            }
        }
        Ok(cur)
    }

    fn resolve(&self, p: &str, follow: bool) -> Res<String> {
        self.walk("", p, follow, &mut 0)
    }

    /// The real directory a path's parent part names.
    fn parent_dir(&self, parent: &str) -> Res<String> {
        if parent.is_empty() {
            return Ok(String::new());
        }
        let real = self.resolve(parent, true)?;
        match self.nodes.get(&real) {
            Some(Node::Dir { .. }) => Ok(real),
            None => Err(libc::ENOENT),
            Some(_) => Err(libc::ENOTDIR),
        }
    }

    fn file_mut(&mut self, real: &str) -> Res<&mut Vec<u8>> {
        match self.nodes.get_mut(real) {
            None => Err(libc::ENOENT),
            Some(Node::Dir { .. }) => Err(libc::EISDIR),
            Some(Node::File { data, .. }) => Ok(data),
            Some(Node::Link { .. }) => unreachable!("a followed walk never ends on a symlink"),
        }
    }

    fn new_file(&mut self, real: String, d: &str) {
        self.nodes.insert(real, Node::File { data: d.as_bytes().to_vec(), mode: 0o666 & !UMASK });
    }

    fn apply(&mut self, op: &Op<P>) -> Res<()> {
        match op {
            Op::Write(p, d) => {
                let real = self.resolve(&p.0, true)?;
                match self.nodes.get_mut(&real) {
                    None => self.new_file(real, d),
                    Some(Node::File { data, .. }) => *data = d.as_bytes().to_vec(),
                    Some(_) => return Err(libc::EISDIR),
                }
            }
            Op::Create(p, d) => {
                let real = self.resolve(&p.0, false)?;
                if self.nodes.contains_key(&real) {
                    return Err(libc::EEXIST);
                }
                self.new_file(real, d);
            }
            Op::Append(p, d) => {
                let real = self.resolve(&p.0, true)?;
                self.file_mut(&real)?.extend_from_slice(d.as_bytes());
            }
            Op::Truncate(p, n, _) => {
                let real = self.resolve(&p.0, true)?;
                self.file_mut(&real)?.resize(*n as usize, 0);
            }
            Op::Chmod(p, m) => {
                let real = self.resolve(&p.0, true)?;
                match self.nodes.get_mut(&real) {
                    None => return Err(libc::ENOENT),
                    Some(Node::File { mode, .. } | Node::Dir { mode, .. }) => *mode = m.0,
                    Some(Node::Link { .. }) => unreachable!("a followed walk never ends on a symlink"),
                }
            }
            Op::Mkdir(p) => {
                let real = self.resolve(&p.0, false)?;
                if self.nodes.contains_key(&real) {
                    return Err(libc::EEXIST);
                }
                self.nodes.insert(real, Node::Dir { mode: 0o777 & !UMASK, merged: false });
            }
            Op::Symlink(p, t) => {
                let real = self.resolve(&p.0, false)?;
                if self.nodes.contains_key(&real) {
                    return Err(libc::EEXIST);
                }
                self.nodes.insert(real, Node::Link { target: t.clone() });
            }
            Op::Unlink(p) => {
                let real = self.resolve(&p.0, false)?;
                match self.nodes.get(&real) {
                    None => return Err(libc::ENOENT),
                    Some(Node::Dir { .. }) => return Err(libc::EISDIR),
                    Some(_) => {
                        self.nodes.remove(&real);
                    }
                }
            }
            Op::Rmdir(p) => {
                let real = self.resolve(&p.0, false)?;
                match self.nodes.get(&real) {
                    None => return Err(libc::ENOENT),
                    Some(Node::Dir { .. }) if self.has_children(&real) => return Err(libc::ENOTEMPTY),
                    Some(Node::Dir { .. }) => {
                        self.nodes.remove(&real);
                    }
                    Some(_) => return Err(libc::ENOTDIR),
                }
            }
            Op::Rename(a, b) => self.rename(&a.0, &b.0)?,
        }
        Ok(())
    }

    /// rename(2): the VFS checks in the kernel's order, then overlayfs's
    /// (EXDEV for a directory with history content, before emptiness).
    fn rename(&mut self, from: &str, to: &str) -> Res<()> {
        let (fp, fname) = split(from);
        let (tp, tname) = split(to);
        let old_parent = self.parent_dir(fp)?;
        let new_parent = self.parent_dir(tp)?;
        let old = join(&old_parent, fname);
        let new = join(&new_parent, tname);
        let Some(src) = self.nodes.get(&old).cloned() else { return Err(libc::ENOENT) };
        if old_parent != new_parent {
            if within(&new_parent, &old) {
                return Err(libc::EINVAL);
            }
            if within(&old_parent, &new) {
                return Err(libc::ENOTEMPTY);
            }
        }
        if old == new {
            return Ok(());
        }
        let src_dir = matches!(src, Node::Dir { .. });
        if let Some(dst) = self.nodes.get(&new) {
            match (src_dir, matches!(dst, Node::Dir { .. })) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                _ => {}
            }
        }
        if matches!(src, Node::Dir { merged: true, .. }) {
            return Err(libc::EXDEV);
        }
        if self.is_dir(&new) && self.has_children(&new) {
            return Err(libc::ENOTEMPTY);
        }
        self.nodes.remove(&new);
        let moved: Vec<String> = self.nodes.keys().filter(|k| within(k, &old)).cloned().collect();
        for k in moved {
            let n = self.nodes.remove(&k).expect("listed");
            self.nodes.insert(format!("{new}{}", &k[old.len()..]), n);
        }
        Ok(())
    }

    /// What a walk of the view must find.
    fn visible(&self) -> Tree {
        self.nodes
            .iter()
            .filter(|(p, _)| !p.is_empty())
            .map(|(p, n)| {
                let seen = match n {
                    Node::File { data, mode } => Seen::File(*mode, String::from_utf8_lossy(data).into_owned()),
                    Node::Dir { mode, .. } => Seen::Dir(*mode),
                    Node::Link { target } => Seen::Link(target.clone()),
                };
                (p.clone(), seen)
            })
            .collect()
    }
}

// --------------------------------------------------------------- real side

/// What a walk finds at one path: kind, mode (not for symlinks), content.
#[derive(Clone, PartialEq, Eq)]
enum Seen {
    File(u32, String),
    Dir(u32),
    Link(String),
    Other(String),
}

impl fmt::Debug for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::File(m, d) => write!(f, "file 0o{m:o} {d:?}"),
            Seen::Dir(m) => write!(f, "dir 0o{m:o}"),
            Seen::Link(t) => write!(f, "symlink -> {t:?}"),
            Seen::Other(s) => write!(f, "special file {s}"),
        }
    }
}

type Tree = BTreeMap<String, Seen>;

/// Every entry below `root` (not following symlinks), as [`Seen`].
fn walk_tree(root: &Path) -> Tree {
    fn go(root: &Path, rel: &str, out: &mut Tree) {
        let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
            .map(|e| e.expect("dirent").file_name().into_string().expect("UTF-8 name"))
            .collect();
        names.sort();
        for n in names {
            let p = join(rel, &n);
            let full = root.join(&p);
            let m = fs::symlink_metadata(&full).unwrap_or_else(|e| panic!("lstat {}: {e}", full.display()));
            let mode = m.mode() & 0o7777;
            let seen = if m.is_dir() {
                Seen::Dir(mode)
            } else if m.is_symlink() {
                Seen::Link(fs::read_link(&full).expect("readlink").to_string_lossy().into_owned())
            } else if m.is_file() {
                let data = fs::read(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()));
                assert_eq!(data.len() as u64, m.len(), "stat size of {p} differs from its data");
                Seen::File(mode, String::from_utf8_lossy(&data).into_owned())
            } else {
                Seen::Other(format!("{:o} rdev {}", m.mode(), m.rdev()))
            };
            let is_dir = m.is_dir();
            out.insert(p.clone(), seen);
            if is_dir {
                go(root, &p, out);
            }
        }
    }
    let mut out = Tree::new();
    go(root, "", &mut out);
    out
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Applies `op` under `root` with plain syscalls.
fn apply_real(root: &Path, op: &Op<P>) -> Res<()> {
    let at = |p: &P| root.join(&p.0);
    let r = match op {
        Op::Write(p, d) => fs::write(at(p), d),
        Op::Create(p, d) => {
            fs::OpenOptions::new().write(true).create_new(true).open(at(p)).and_then(|mut f| f.write_all(d.as_bytes()))
        }
        Op::Append(p, d) => fs::OpenOptions::new().append(true).open(at(p)).and_then(|mut f| f.write_all(d.as_bytes())),
        Op::Truncate(p, n, true) => fs::OpenOptions::new().write(true).open(at(p)).and_then(|f| f.set_len(*n)),
        Op::Truncate(p, n, false) => {
            let c = std::ffi::CString::new(at(p).into_os_string().into_encoded_bytes()).expect("no NUL");
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::truncate(c.as_ptr(), *n as libc::off_t) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
        Op::Mkdir(p) => fs::create_dir(at(p)),
        Op::Unlink(p) => fs::remove_file(at(p)),
        Op::Rmdir(p) => fs::remove_dir(at(p)),
        Op::Rename(a, b) => fs::rename(at(a), at(b)),
        Op::Symlink(p, t) => std::os::unix::fs::symlink(t, at(p)),
        Op::Chmod(p, m) => fs::set_permissions(at(p), fs::Permissions::from_mode(m.0)),
    };
    r.map_err(errno)
}

/// Errnos POSIX lets an implementation choose between count as one.
fn class(r: Res<()>) -> Res<()> {
    r.map_err(|e| if e == libc::EEXIST { libc::ENOTEMPTY } else { e })
}

fn write_lower(root: &Path, m: &Model) {
    for (p, n) in &m.nodes {
        let full = root.join(p);
        match n {
            Node::Dir { .. } => fs::create_dir_all(&full).expect("mkdir lower"),
            Node::File { data, .. } => fs::write(&full, data).expect("write lower"),
            Node::Link { target } => std::os::unix::fs::symlink(target, &full).expect("symlink lower"),
        }
    }
    // Modes last, deepest first, so a read-only directory is filled first.
    for (p, n) in m.nodes.iter().rev() {
        if let Node::File { mode, .. } | Node::Dir { mode, .. } = n {
            fs::set_permissions(root.join(p), fs::Permissions::from_mode(*mode)).expect("chmod lower");
        }
    }
}

fn diff(want: &Tree, got: &Tree) -> String {
    let mut out = String::new();
    for (p, w) in want {
        match got.get(p) {
            Some(g) if g == w => {}
            Some(g) => out += &format!("  {p}: model {w:?}, view {g:?}\n"),
            None => out += &format!("  {p}: model {w:?}, missing from the view\n"),
        }
    }
    for (p, g) in got {
        if !want.contains_key(p) {
            out += &format!("  {p}: not in the model, view {g:?}\n");
        }
    }
    out
}

fn compare(what: &str, want: &Tree, root: &Path) -> Result<(), TestCaseError> {
    let got = walk_tree(root);
    if &got != want {
        return Err(TestCaseError::fail(format!("{what}: the tree differs from the model:\n{}", diff(want, &got))));
    }
    Ok(())
}

fn run_case(lower_spec: &[Lower], ops: &[Op]) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let (lower, upper, mnt) = (t.join("lower"), t.join("upper"), t.join("mnt"));
    let mut model = Model::lower(lower_spec);
    write_lower(&lower, &model);
    fs::create_dir(&upper).expect("mkdir upper");
    let policy = t.join("transparent.json");
    fs::write(&policy, r#"{"hide_sections": []}"#).expect("policy");
    let lower_before = tree::snapshot(&lower);
    let args = ["--mode", "fuse", "--policy", policy.to_str().expect("UTF-8 temp path")];

    let m = Mount::fuse(&[&lower], &upper, &mnt, &args);
    compare("freshly mounted", &model.visible(), &mnt)?;
    let mut done: Vec<Op<P>> = Vec::new();
    for op in ops {
        let op = op.concrete(&model);
        let i = done.len();
        done.push(op.clone());
        let want = class(model.apply(&op));
        let got = class(apply_real(&mnt, &op));
        let name = |r: Res<()>| r.map_err(|e| std::io::Error::from_raw_os_error(e).to_string());
        if want != got {
            return Err(TestCaseError::fail(format!(
                "op {i} {op:?}: the model gives {:?}, regfs {:?}\nthe operations as run: {done:#?}",
                name(want),
                name(got)
            )));
        }
        compare(&format!("after op {i} {op:?} (the operations as run: {done:?})"), &model.visible(), &mnt)?;
    }
    m.umount();
    if tree::snapshot(&lower) != lower_before {
        return Err(TestCaseError::fail("the lower was modified"));
    }
    let want = model.visible();
    let again = Mount::fuse(&[&lower], &upper, &mnt, &args);
    compare("regfs remounted on the same upper", &want, &mnt)?;
    again.umount();
    let k = KernelOverlay::mount(&[&lower], &upper, &t.join("work"), &t.join("kmnt"));
    compare("kernel overlayfs on the same upper", &want, &k.mountpoint)?;
    drop(k);
    prop_assert_eq!(tree::snapshot(&lower), lower_before, "the lower was modified");
    Ok(())
}

/// 64 cases of up to 20 operations (PROPTEST_CASES overrides, for a longer
/// hunt); each case mounts three times, so shrinking a failure is bounded.
fn model_config() -> ProptestConfig {
    let mut c = ProptestConfig { max_shrink_iters: 256, failure_persistence: None, ..ProptestConfig::default() };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 64;
    }
    c
}

proptest! {
    #![proptest_config(model_config())]

    #[test]
    fn regfs_and_kernel_overlay_follow_the_overlay_model(
        lower in proptest::collection::vec(lower_entry(), 0..12),
        ops in proptest::collection::vec(op(), 1..=20),
    ) {
        assert!(is_root(), "the model test mounts kernel overlayfs: run it as root (CI does)");
        regfs::sys::set_umask(UMASK);
        run_case(&lower, &ops)?;
    }
}

/// Found by the property above: renaming a history directory onto a
/// non-empty directory gave ENOTEMPTY; overlayfs answers EXDEV first (a
/// directory with history content never moves), so `mv` falls back to a copy.
#[test]
fn renaming_a_history_directory_onto_a_full_one_is_exdev() {
    assert!(is_root(), "the model test mounts kernel overlayfs: run it as root (CI does)");
    regfs::sys::set_umask(UMASK);
    let p = |s: &str| P(s.to_string());
    let lower = [Lower::Dir(p("a/a/b"), Mode(0o755)), Lower::Dir(p("c/a"), Mode(0o755))];
    let ops =
        [Op::Rename(Sel::Fixed(p("a/a")), Sel::Fixed(p("c"))), Op::Rename(Sel::Fixed(p("c/a")), Sel::Fixed(p("a")))];
    run_case(&lower, &ops).unwrap_or_else(|e| panic!("{e}"));
}
