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

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use support::mount::{KernelOverlay, Mount, is_root};
use support::overlay_model::*;
use support::tree;

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
    run_ops(&mut model, ops, "regfs", |op| apply_real(&mnt, op), |what, want| compare(what, want, &mnt))?;
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

proptest! {
    #![proptest_config(model_config())]

    #[test]
    fn regfs_and_kernel_overlay_follow_the_overlay_model(
        lower in proptest::collection::vec(lower_entry(false), 0..12),
        ops in proptest::collection::vec(op(false), 1..=20),
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
