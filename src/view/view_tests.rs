//! The view core on temporary directories, without FUSE or root: merged
//! listings, whiteouts, opaque directories, copy-up, rename and removal.

use super::*;
use std::fs;

struct Layers {
    _tmp: tempfile::TempDir,
    upper: PathBuf,
    lower: PathBuf,
}

impl Layers {
    fn new() -> Layers {
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower) = (tmp.path().join("upper"), tmp.path().join("lower"));
        fs::create_dir(&upper).unwrap();
        fs::create_dir(&lower).unwrap();
        Layers { _tmp: tmp, upper, lower }
    }

    fn view(&self, policy: Policy) -> View {
        View::new(self.upper.clone(), vec![self.lower.clone()], policy, XattrNs::for_current_user()).unwrap()
    }

    fn file(root: &Path, rel: &str, data: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
}

fn names(v: &View, rel: &str) -> Vec<String> {
    let e = v.resolve(Path::new(rel)).unwrap().expect("the directory is in the view");
    let mut n: Vec<String> =
        v.names(e.as_dir(Path::new(rel))).unwrap().into_iter().map(|n| n.name.into_string().unwrap()).collect();
    n.sort();
    n
}

fn read(v: &View, rel: &str) -> Option<String> {
    let e = v.resolve(Path::new(rel)).unwrap()?;
    Some(String::from_utf8(v.open_read(Path::new(rel), &e, 0).unwrap().read_all(1 << 20).unwrap()).unwrap())
}

#[test]
fn listings_merge_layers_and_honour_whiteouts_and_opaque_dirs() {
    let l = Layers::new();
    Layers::file(&l.lower, "a", "lower a");
    Layers::file(&l.lower, "d/x", "lower x");
    Layers::file(&l.lower, "o/hidden", "lower");
    Layers::file(&l.upper, "d/y", "upper y");
    Layers::file(&l.upper, "c", "upper c");
    fs::create_dir(l.upper.join("o")).unwrap();
    let v = l.view(Policy::transparent());
    v.hide_in_upper(Path::new("o")).unwrap();
    sys::mknod(&l.upper.join("a"), libc::S_IFCHR, sys::makedev(0, 0)).unwrap();
    assert_eq!(names(&v, ""), ["c", "d", "o"], "the whiteout hides a");
    assert_eq!(names(&v, "d"), ["x", "y"], "d merges both layers");
    assert_eq!(names(&v, "o"), Vec::<String>::new(), "an opaque directory cuts off the lower");
    assert_eq!(v.resolve(Path::new("d")).unwrap().unwrap().layers, [UPPER, 1]);
    assert!(v.resolve(Path::new("a")).unwrap().is_none());
    assert_eq!(read(&v, "d/x").as_deref(), Some("lower x"));
}

#[test]
fn policy_hides_history_manifests_but_never_upper_ones() {
    let l = Layers::new();
    let repo = "docker/registry/v2/repositories/app";
    Layers::file(&l.lower, &format!("{repo}/_manifests/tags/v1/current/link"), "old");
    Layers::file(&l.lower, &format!("{repo}/_layers/sha256/x/link"), "layer");
    let v = l.view(Policy::default());
    assert_eq!(names(&v, repo), ["_layers"]);
    v.in_parent(&Path::new(repo).join("_manifests"), |d, n| v.mkdir(d, n, 0o755)).unwrap();
    assert_eq!(names(&v, repo), ["_layers", "_manifests"]);
    assert_eq!(names(&v, &format!("{repo}/_manifests")), Vec::<String>::new(), "the new directory is opaque");
}

#[test]
fn removing_leaves_whiteouts_only_where_a_lower_holds_the_name() {
    let l = Layers::new();
    Layers::file(&l.lower, "h", "history");
    let v = l.view(Policy::transparent());
    v.in_parent(Path::new("n"), |d, n| v.create_file(d, n, 0o644, true, false)).unwrap();
    v.in_parent(Path::new("n"), |d, n| v.unlink(d, n)).unwrap();
    assert!(fs::symlink_metadata(l.upper.join("n")).is_err(), "an upper-only name leaves nothing");
    v.in_parent(Path::new("h"), |d, n| v.unlink(d, n)).unwrap();
    let m = fs::symlink_metadata(l.upper.join("h")).unwrap();
    assert!(v.is_whiteout(UPPER, Path::new("h"), &Stat::of_metadata(&m)).unwrap(), "a history name leaves a whiteout");
    assert_eq!(fs::read_to_string(l.lower.join("h")).unwrap(), "history", "the lower is never written");
    assert!(v.resolve(Path::new("h")).unwrap().is_none());
    // A new file takes the whiteout's place.
    v.in_parent(Path::new("h"), |d, n| v.create_file(d, n, 0o644, true, false)).unwrap();
    assert_eq!(read(&v, "h").as_deref(), Some(""));
}

/// rename(2) of the view path `from` to `to`.
fn rename(v: &View, from: &str, to: &str) -> io::Result<Changed<()>> {
    v.in_parent(Path::new(from), |fd, name| {
        v.in_parent(Path::new(to), |td, to_name| v.rename(fd, name, td, to_name, 0))
    })
}

#[test]
fn rename_copies_files_up_and_refuses_history_directories() {
    let l = Layers::new();
    Layers::file(&l.lower, "f", "data");
    Layers::file(&l.lower, "dir/inner", "x");
    let v = l.view(Policy::transparent());
    let done = rename(&v, "f", "g").unwrap();
    assert_eq!(done.copyups, CopyUps { dirs: 0, others: 1 }, "the file was copied up to move it");
    assert_eq!(read(&v, "g").as_deref(), Some("data"));
    assert!(v.resolve(Path::new("f")).unwrap().is_none(), "the source is whited out");
    assert_eq!(fs::read_to_string(l.lower.join("f")).unwrap(), "data");
    let e = rename(&v, "dir", "moved").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "a directory with history content never moves");
    v.in_parent(Path::new("new"), |d, n| v.mkdir(d, n, 0o755)).unwrap();
    rename(&v, "new", "renamed").unwrap();
    assert_eq!(names(&v, ""), ["dir", "g", "renamed"]);
    let e = v.in_parent(Path::new("dir"), |d, n| v.rmdir(d, n)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    v.remove_tree(Path::new("dir")).unwrap();
    assert_eq!(names(&v, ""), ["g", "renamed"]);
}

#[test]
fn writing_a_history_file_copies_it_up_first() {
    let l = Layers::new();
    Layers::file(&l.lower, "a/b/file", "history");
    let v = l.view(Policy::transparent());
    let e = v.resolve(Path::new("a/b/file")).unwrap().unwrap();
    let done = v.open_write(Path::new("a/b/file"), &e, libc::O_WRONLY | libc::O_APPEND).unwrap();
    assert_eq!(done.copyups, CopyUps { dirs: 2, others: 1 }, "a, a/b and the file were copied up");
    let (mut f, e) = done.value;
    assert_eq!(e.layers, [UPPER], "the entry returned is upper's");
    let again = v.open_write(Path::new("a/b/file"), &e, libc::O_WRONLY).unwrap();
    assert_eq!(again.copyups, CopyUps::default(), "a second open copies nothing");
    use std::io::Write;
    f.write_all(b" + release").unwrap();
    assert_eq!(read(&v, "a/b/file").as_deref(), Some("history + release"));
    assert_eq!(fs::read_to_string(l.lower.join("a/b/file")).unwrap(), "history");
    assert!(l.upper.join("a/b/file").is_file(), "the copy lives in upper");
}

#[test]
fn read_only_creates_work_and_zero_devices_are_refused() {
    let l = Layers::new();
    let v = l.view(Policy::transparent());
    let (f, e) = v.in_parent(Path::new("ro"), |d, n| v.create_file(d, n, 0o640, false, true)).unwrap().value;
    assert!(e.meta.is_file() && e.meta.size == 0);
    use std::io::Write;
    assert_eq!((&f).write(b"x").unwrap_err().raw_os_error(), Some(libc::EBADF), "opened read-only");
    let err = v.in_parent(Path::new("dev"), |d, n| v.mknod(d, n, libc::S_IFCHR | 0o644, 0)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "a 0/0 device is a whiteout in upper");
    assert!(fs::symlink_metadata(l.upper.join("dev")).is_err(), "nothing was written");
}
