//! The overlay model (`tests/support/overlay_model.rs`) run directly
//! against the view core on temporary directories: no FUSE, no root, a few
//! seconds. Each generated history and operation sequence goes through the
//! view's API; after every operation the errno class and the whole visible
//! tree must match the model, and the lower must end unchanged to the byte.
//!
//! What the kernel's VFS does before a request reaches a filesystem (the
//! path walk, following symlinks; rename's ancestry checks) is done here:
//! the model's `namei` walks the view. Histories and `chmod`s keep to modes
//! their owner may write: unprivileged, the permission bits bind regfs's own
//! writes to upper (under FUSE the kernel checks them, as root, first).

mod support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use regfs::view::{AttrChange, Entry, Policy, View, XattrNs};
use support::overlay_model::*;
use support::tree;

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// The view with a namei-like walker in front, as a FUSE mount has the VFS.
struct Vfs {
    view: View,
}

impl Vfs {
    fn kind(&self, rel: &str) -> Res<Option<Kind>> {
        let Some(e) = self.view.resolve(Path::new(rel)).map_err(errno)? else { return Ok(None) };
        Ok(Some(if e.meta.is_dir() {
            Kind::Dir
        } else if e.meta.is_symlink() {
            let target = self.view.read_link(Path::new(rel), &e).map_err(errno)?;
            Kind::Link(target.to_string_lossy().into_owned())
        } else {
            Kind::File
        }))
    }

    fn resolve(&self, p: &str, follow: bool) -> Res<String> {
        namei(&|p| self.kind(p), "", p, follow, &mut 0)
    }

    fn parent_dir(&self, parent: &str) -> Res<String> {
        if parent.is_empty() {
            return Ok(String::new());
        }
        let real = self.resolve(parent, true)?;
        match self.kind(&real)? {
            Some(Kind::Dir) => Ok(real),
            None => Err(libc::ENOENT),
            Some(_) => Err(libc::ENOTDIR),
        }
    }

    /// An existing regular file, opened for writing (`flags`) through the view.
    fn open_file(&self, real: &str, flags: i32) -> Res<fs::File> {
        match self.kind(real)? {
            None => Err(libc::ENOENT),
            Some(Kind::Dir) => Err(libc::EISDIR),
            Some(_) => {
                let e = self.entry(real)?;
                self.view.open_write(Path::new(real), &e, flags).map(|c| c.value.0).map_err(errno)
            }
        }
    }

    /// The entry at `real` (a path resolved already).
    fn entry(&self, real: &str) -> Res<Entry> {
        self.view.resolve(Path::new(real)).map_err(errno)?.ok_or(libc::ENOENT)
    }

    fn set_attr(&self, real: &str, change: &AttrChange) -> Res<()> {
        let e = self.entry(real)?;
        self.view.set_attr(Path::new(real), &e, change).map(drop).map_err(errno)
    }

    fn create(&self, real: &str, d: &str) -> Res<()> {
        let mode = 0o666 & !UMASK;
        let (mut f, _) = self
            .view
            .in_parent(Path::new(real), |dir, name| self.view.create_file(dir, name, mode, true, false))
            .map_err(errno)?
            .value;
        f.write_all(d.as_bytes()).map_err(errno)
    }

    fn apply(&self, op: &Op<P>) -> Res<()> {
        let at = |real: &str| PathBuf::from(real);
        match op {
            Op::Write(p, d) => {
                let real = self.resolve(&p.0, true)?;
                match self.kind(&real)? {
                    None => self.create(&real, d),
                    Some(Kind::Dir) => Err(libc::EISDIR),
                    Some(_) => {
                        self.open_file(&real, libc::O_WRONLY | libc::O_TRUNC)?.write_all(d.as_bytes()).map_err(errno)
                    }
                }
            }
            Op::Create(p, d) => {
                let real = self.resolve(&p.0, false)?;
                if self.kind(&real)?.is_some() {
                    return Err(libc::EEXIST);
                }
                self.create(&real, d)
            }
            Op::Append(p, d) => {
                let real = self.resolve(&p.0, true)?;
                self.open_file(&real, libc::O_WRONLY | libc::O_APPEND)?.write_all(d.as_bytes()).map_err(errno)
            }
            Op::Truncate(p, n, _) => {
                let real = self.resolve(&p.0, true)?;
                match self.kind(&real)? {
                    None => Err(libc::ENOENT),
                    Some(Kind::Dir) => Err(libc::EISDIR),
                    Some(_) => {
                        let change = AttrChange { size: Some(*n), ..AttrChange::default() };
                        self.set_attr(&real, &change)
                    }
                }
            }
            Op::Chmod(p, m) => {
                let real = self.resolve(&p.0, true)?;
                if self.kind(&real)?.is_none() {
                    return Err(libc::ENOENT);
                }
                let change = AttrChange { mode: Some(m.0), ..AttrChange::default() };
                self.set_attr(&real, &change)
            }
            Op::Mkdir(p) => {
                let real = self.resolve(&p.0, false)?;
                let mode = 0o777 & !UMASK;
                self.view.in_parent(&at(&real), |dir, name| self.view.mkdir(dir, name, mode)).map(drop).map_err(errno)
            }
            Op::Symlink(p, t) => {
                let real = self.resolve(&p.0, false)?;
                self.view
                    .in_parent(&at(&real), |dir, name| self.view.symlink(dir, name, Path::new(t)))
                    .map(drop)
                    .map_err(errno)
            }
            Op::Unlink(p) => {
                let real = self.resolve(&p.0, false)?;
                self.view.in_parent(&at(&real), |dir, name| self.view.unlink(dir, name)).map(drop).map_err(errno)
            }
            Op::Rmdir(p) => {
                let real = self.resolve(&p.0, false)?;
                self.view.in_parent(&at(&real), |dir, name| self.view.rmdir(dir, name)).map(drop).map_err(errno)
            }
            Op::Rename(a, b) => {
                let (fp, fname) = split(&a.0);
                let (tp, tname) = split(&b.0);
                let old_parent = self.parent_dir(fp)?;
                let new_parent = self.parent_dir(tp)?;
                let old = join(&old_parent, fname);
                let new = join(&new_parent, tname);
                if self.kind(&old)?.is_none() {
                    return Err(libc::ENOENT);
                }
                // The VFS's own checks, before the filesystem is asked.
                if old_parent != new_parent {
                    if within(&new_parent, &old) {
                        return Err(libc::EINVAL);
                    }
                    if within(&old_parent, &new) {
                        return Err(libc::ENOTEMPTY);
                    }
                }
                self.view
                    .in_parent(&at(&old), |from, name| {
                        self.view.in_parent(&at(&new), |to, to_name| self.view.rename(from, name, to, to_name, 0))
                    })
                    .map(drop)
                    .map_err(errno)
            }
        }
    }

    /// Every entry of the view, as [`Seen`].
    fn tree(&self) -> Tree {
        let mut out = Tree::new();
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let e = self.view.resolve(Path::new(&rel)).expect("resolve").expect("a listed directory");
            for item in self.view.list(e.as_dir(Path::new(&rel))).expect("list") {
                let p = join(&rel, item.name.to_str().expect("UTF-8 name"));
                let m = &item.entry.meta;
                let rel_p = Path::new(&p);
                let mode = m.perm();
                let seen = if m.is_dir() {
                    stack.push(p.clone());
                    Seen::Dir(mode)
                } else if m.is_symlink() {
                    Seen::Link(
                        self.view.read_link(rel_p, &item.entry).expect("readlink").to_string_lossy().into_owned(),
                    )
                } else if m.is_file() {
                    let data =
                        self.view.open_read(rel_p, &item.entry, 0).expect("open").read_all(1 << 20).expect("read");
                    assert_eq!(data.len() as u64, m.size, "stat size of {p} differs from its data");
                    Seen::File(mode, String::from_utf8_lossy(&data).into_owned())
                } else {
                    Seen::Other(format!("{:o} rdev {}", m.mode, m.rdev))
                };
                out.insert(p, seen);
            }
        }
        out
    }
}

fn compare(what: &str, want: &Tree, vfs: &Vfs) -> Result<(), TestCaseError> {
    let got = vfs.tree();
    if &got != want {
        return Err(TestCaseError::fail(format!("{what}: the view differs from the model:\n{}", diff(want, &got))));
    }
    Ok(())
}

fn run_case(lower_spec: &[Lower], ops: &[Op]) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (lower, upper) = (tmp.path().join("lower"), tmp.path().join("upper"));
    let mut model = Model::lower(lower_spec);
    write_lower(&lower, &model);
    fs::create_dir(&upper).expect("mkdir upper");
    let lower_before = tree::snapshot(&lower);
    let open = || Vfs {
        view: View::new(upper.clone(), vec![lower.clone()], Policy::transparent(), XattrNs::for_current_user())
            .expect("a view"),
    };
    let vfs = open();
    compare("fresh", &model.visible(), &vfs)?;
    run_ops(&mut model, ops, "the view", |op| vfs.apply(op), |what, want| compare(what, want, &vfs))?;
    // A new view of the same layers (a remount) shows the same tree.
    compare("a new view of the same upper", &model.visible(), &open())?;
    prop_assert_eq!(tree::snapshot(&lower), lower_before, "the lower was modified");
    Ok(())
}

proptest! {
    #![proptest_config(model_config())]

    #[test]
    fn the_view_follows_the_overlay_model(
        lower in proptest::collection::vec(lower_entry(true), 0..12),
        ops in proptest::collection::vec(op(true), 1..=20),
    ) {
        regfs::sys::set_umask(UMASK);
        run_case(&lower, &ops)?;
    }
}

/// The FUSE suite's regression case, in process.
#[test]
fn renaming_a_history_directory_onto_a_full_one_is_exdev() {
    regfs::sys::set_umask(UMASK);
    let p = |s: &str| P(s.to_string());
    let lower = [Lower::Dir(p("a/a/b"), Mode(0o755)), Lower::Dir(p("c/a"), Mode(0o755))];
    let ops =
        [Op::Rename(Sel::Fixed(p("a/a")), Sel::Fixed(p("c"))), Op::Rename(Sel::Fixed(p("c/a")), Sel::Fixed(p("a")))];
    run_case(&lower, &ops).unwrap_or_else(|e| panic!("{e}"));
}
