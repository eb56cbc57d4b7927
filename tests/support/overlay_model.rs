//! The overlay model both model tests share: generated histories and
//! operation sequences, and an in-memory model of what kernel overlayfs
//! shows after each operation (`tests/model.rs` runs it against a FUSE mount
//! and kernel overlayfs, `tests/view_model.rs` against the view core).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use proptest::prelude::*;

/// Names operations use; the lower uses the same ones, so they collide.
pub const NAMES: [&str; 3] = ["a", "b", "c"];
/// Symlink targets: relative ones stay inside the view (no `..`), `z` is a
/// name nothing else creates, the absolute one never exists.
pub const TARGETS: [&str; 6] = ["a", "b", "a/b", "c/a", "z", "/nonexistent-regfs-model/x"];
pub const UMASK: u32 = 0o022;
/// Linux follows at most 40 symlinks in one path walk.
pub const MAX_LINKS: u32 = 40;

// ------------------------------------------------------------------ inputs

/// A relative path of 1 to 3 names from [`NAMES`].
#[derive(Clone, PartialEq, Eq)]
pub struct P(pub String);

impl fmt::Debug for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

pub fn fixed_path() -> impl Strategy<Value = P> {
    let depth = prop_oneof![2 => Just(1usize), 2 => Just(2), 1 => Just(3)];
    depth
        .prop_flat_map(|n| proptest::collection::vec(proptest::sample::select(&NAMES[..]), n))
        .prop_map(|v| P(v.join("/")))
}

/// An operand: a path of [`NAMES`]; (`#n`) one of the paths that exist in
/// the view when the operation runs; or (`#n/name`) a name in one of the
/// directories that exist then. Most operations then do something.
#[derive(Clone)]
pub enum Sel {
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

pub fn path() -> impl Strategy<Value = Sel> {
    prop_oneof![
        1 => fixed_path().prop_map(Sel::Fixed),
        2 => any::<prop::sample::Index>().prop_map(Sel::Existing),
        2 => (any::<prop::sample::Index>(), proptest::sample::select(&NAMES[..])).prop_map(|(i, n)| Sel::Under(i, n)),
    ]
}

pub fn data() -> impl Strategy<Value = String> {
    "[a-z]{0,6}"
}

pub fn target() -> impl Strategy<Value = String> {
    proptest::sample::select(&TARGETS[..]).prop_map(str::to_string)
}

#[derive(Clone, Debug)]
pub enum Lower {
    File(P, String, Mode),
    Dir(P, Mode),
    Link(P, String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0o{:o}", self.0)
    }
}

/// A history entry; `owner_writable` keeps to modes whose owner may write
/// (a run that is not root, where permission bits bind the writer too).
pub fn lower_entry(owner_writable: bool) -> impl Strategy<Value = Lower> {
    let (files, dirs) = if owner_writable {
        (vec![0o644, 0o600, 0o755], vec![0o755, 0o700])
    } else {
        (vec![0o644, 0o600, 0o755, 0o444, 0o000], vec![0o755, 0o700, 0o555])
    };
    let file_mode = proptest::sample::select(files).prop_map(Mode);
    let dir_mode = proptest::sample::select(dirs).prop_map(Mode);
    prop_oneof![
        3 => (fixed_path(), data(), file_mode).prop_map(|(p, d, m)| Lower::File(p, d, m)),
        3 => (fixed_path(), dir_mode).prop_map(|(p, m)| Lower::Dir(p, m)),
        1 => (fixed_path(), target()).prop_map(|(p, t)| Lower::Link(p, t)),
    ]
}

#[derive(Clone, Debug)]
pub enum Op<T = Sel> {
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
    pub fn concrete(&self, m: &Model) -> Op<P> {
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

/// An operation; `owner_writable` as for [`lower_entry`] (a `chmod` then
/// keeps every bit a directory's owner needs: read, write, search).
pub fn op(owner_writable: bool) -> impl Strategy<Value = Op> {
    let modes = if owner_writable { vec![0o755, 0o700, 0o777] } else { vec![0o644, 0o600, 0o755, 0o700, 0o000, 0o777] };
    let mode = proptest::sample::select(modes).prop_map(Mode);
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

// ------------------------------------------------------------------- namei

/// What a path walk finds at one name.
pub enum Kind {
    Dir,
    File,
    Link(String),
}

/// Path walk from directory `dir`, as the kernel's namei does, over any
/// tree `kind` describes: every symlink on the way is followed (the last
/// one only when `follow`). Returns the real path of the last component,
/// whose parent exists and is a directory; the last component itself may
/// not exist.
pub fn namei(
    kind: &dyn Fn(&str) -> Res<Option<Kind>>,
    dir: &str,
    path: &str,
    follow: bool,
    links: &mut u32,
) -> Res<String> {
    if path.starts_with('/') {
        // Absolute targets lead out of the view, where nothing exists.
        return Err(libc::ENOENT);
    }
    let comps: Vec<&str> = path.split('/').collect();
    let mut cur = dir.to_string();
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let child = join(&cur, c);
        match kind(&child)? {
            None if last => return Ok(child),
            None => return Err(libc::ENOENT),
            Some(Kind::Dir) => cur = child,
            Some(Kind::File) if last => return Ok(child),
            Some(Kind::File) => return Err(libc::ENOTDIR),
            Some(Kind::Link(_)) if last && !follow => return Ok(child),
            Some(Kind::Link(target)) => {
                *links += 1;
                if *links > MAX_LINKS {
                    return Err(libc::ELOOP);
                }
                let real = namei(kind, &cur, &target, true, links)?;
                if last {
                    return Ok(real);
                }
                match kind(&real)? {
                    Some(Kind::Dir) => cur = real,
                    None => return Err(libc::ENOENT),
                    Some(_) => return Err(libc::ENOTDIR),
                }
            }
        }
    }
    Ok(cur)
}

/// Runs `ops` on the model and, through `apply`, on the system under test
/// (`who`), comparing the errno class of each and, through `compare`, the
/// whole visible tree after each.
pub fn run_ops(
    model: &mut Model,
    ops: &[Op],
    who: &str,
    apply: impl Fn(&Op<P>) -> Res<()>,
    compare: impl Fn(&str, &Tree) -> Result<(), proptest::test_runner::TestCaseError>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let mut done: Vec<Op<P>> = Vec::new();
    for op in ops {
        let op = op.concrete(model);
        let i = done.len();
        done.push(op.clone());
        let want = class(model.apply(&op));
        let got = class(apply(&op));
        let name = |r: Res<()>| r.map_err(|e| std::io::Error::from_raw_os_error(e).to_string());
        if want != got {
            return Err(proptest::test_runner::TestCaseError::fail(format!(
                "op {i} {op:?}: the model gives {:?}, {who} {:?}\nthe operations as run: {done:#?}",
                name(want),
                name(got)
            )));
        }
        compare(&format!("after op {i} {op:?} (the operations as run: {done:?})"), &model.visible())?;
    }
    Ok(())
}

// ------------------------------------------------------------------- model

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
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
pub struct Model {
    pub nodes: BTreeMap<String, Node>,
}

pub type Res<T> = Result<T, i32>;

pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") }
}

pub fn split(p: &str) -> (&str, &str) {
    p.rsplit_once('/').unwrap_or(("", p))
}

/// Whether `p` is `dir` or below it.
pub fn within(p: &str, dir: &str) -> bool {
    p == dir || dir.is_empty() || p.starts_with(&format!("{dir}/"))
}

impl Model {
    /// The history: `docker/registry/v2` (a lower must be a registry root)
    /// plus the generated entries; an entry whose parent is not a
    /// directory, or whose name is taken, is left out.
    pub fn lower(entries: &[Lower]) -> Model {
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

    pub fn is_dir(&self, p: &str) -> bool {
        matches!(self.nodes.get(p), Some(Node::Dir { .. }))
    }

    pub fn has_children(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.nodes.range(prefix.clone()..).next().is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    /// What the model holds at `p`.
    pub fn kind(&self, p: &str) -> Res<Option<Kind>> {
        Ok(self.nodes.get(p).map(|n| match n {
            Node::Dir { .. } => Kind::Dir,
            Node::File { .. } => Kind::File,
            Node::Link { target } => Kind::Link(target.clone()),
        }))
    }

    pub fn resolve(&self, p: &str, follow: bool) -> Res<String> {
        namei(&|p| self.kind(p), "", p, follow, &mut 0)
    }

    /// The real directory a path's parent part names.
    pub fn parent_dir(&self, parent: &str) -> Res<String> {
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

    pub fn file_mut(&mut self, real: &str) -> Res<&mut Vec<u8>> {
        match self.nodes.get_mut(real) {
            None => Err(libc::ENOENT),
            Some(Node::Dir { .. }) => Err(libc::EISDIR),
            Some(Node::File { data, .. }) => Ok(data),
            Some(Node::Link { .. }) => unreachable!("a followed walk never ends on a symlink"),
        }
    }

    pub fn new_file(&mut self, real: String, d: &str) {
        self.nodes.insert(real, Node::File { data: d.as_bytes().to_vec(), mode: 0o666 & !UMASK });
    }

    pub fn apply(&mut self, op: &Op<P>) -> Res<()> {
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
    pub fn rename(&mut self, from: &str, to: &str) -> Res<()> {
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
    pub fn visible(&self) -> Tree {
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
pub enum Seen {
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

pub type Tree = BTreeMap<String, Seen>;

pub fn class(r: Res<()>) -> Res<()> {
    r.map_err(|e| if e == libc::EEXIST { libc::ENOTEMPTY } else { e })
}

pub fn write_lower(root: &Path, m: &Model) {
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

pub fn diff(want: &Tree, got: &Tree) -> String {
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

/// 64 cases of up to 20 operations (PROPTEST_CASES overrides, for a longer
/// hunt); a FUSE case mounts three times, so shrinking a failure is bounded.
pub fn model_config() -> ProptestConfig {
    let mut c = ProptestConfig { max_shrink_iters: 256, failure_persistence: None, ..ProptestConfig::default() };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 64;
    }
    c
}
