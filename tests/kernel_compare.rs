//! regfs against the kernel: the same layers listed through regfs (with a
//! policy that hides nothing) and through `mount -t overlay` must look the
//! same to the byte, and an upper written by either mounts in the other.
//! Needs root for the kernel overlay mounts (CI runs it as root).

mod support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use support::mount::{KernelOverlay, Mount};
use support::tree::{self, RepoSpec};

const REPOS: &[RepoSpec] = &[
    RepoSpec { name: "app", tags: &["1.0", "1.1"] },
    RepoSpec { name: "team/web", tags: &["2024"] },
    RepoSpec { name: "stale", tags: &["old"] },
];

struct Layers {
    tmp: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    transparent: PathBuf,
}

impl Layers {
    fn new() -> Layers {
        Layers::under("")
    }

    /// Layers whose roots lie `below` further down than the mountpoints
    /// (a long path there makes their real paths longer than the view's).
    fn under(below: &str) -> Layers {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join(below);
        let lower = base.join("history");
        tree::write_store(&lower, REPOS, "r1");
        let upper = base.join("upper");
        fs::create_dir_all(&upper).unwrap();
        let transparent = tmp.path().join("transparent.json");
        fs::write(&transparent, r#"{"hide_sections": []}"#).unwrap();
        Layers { lower, upper, transparent, tmp }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn regfs(&self) -> Mount {
        Mount::fuse(&[&self.lower], &self.upper, &self.path("mnt"), &["--policy", self.transparent.to_str().unwrap()])
    }

    /// [`Layers::regfs`] that other users may enter (`--allow-other`), as a
    /// kernel overlay mount always is.
    fn regfs_shared(&self) -> Mount {
        let policy = self.transparent.to_str().unwrap();
        Mount::fuse(&[&self.lower], &self.upper, &self.path("mnt"), &["--policy", policy, "--allow-other"])
    }

    fn kernel(&self) -> KernelOverlay {
        // A fresh work dir each time: never share work between mounts.
        let work = self.path(&format!("work-{}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        KernelOverlay::mount(&[&self.lower], &self.upper, &work, &self.path("kmnt"))
    }

    fn listing_regfs(&self) -> Vec<String> {
        let m = self.regfs();
        let l = tree::listing(&m.mountpoint);
        m.umount();
        l
    }

    fn listing_kernel(&self) -> Vec<String> {
        let k = self.kernel();
        tree::listing(&k.mountpoint)
    }
}

/// The same operations a registry and a person do, applied to a mounted view.
fn mutate(v: &Path) {
    let v2 = v.join("docker/registry/v2");
    let hexes: Vec<_> = fs::read_dir(v2.join("blobs/sha256")).unwrap().map(|e| e.unwrap().path()).collect();
    // Delete a lower blob dir (whiteout), rm -rf a lower repository.
    fs::remove_dir_all(&hexes[0]).unwrap();
    fs::remove_dir_all(v2.join("repositories/stale")).unwrap();
    // Re-create a deleted lower name as a directory (opaque).
    fs::create_dir_all(v2.join("repositories/stale/_layers")).unwrap();
    fs::write(v2.join("repositories/stale/_layers/new"), b"new").unwrap();
    // Replace a history _manifests tree with a fresh one (opaque dir again).
    fs::remove_dir_all(v2.join("repositories/app/_manifests")).unwrap();
    fs::create_dir_all(v2.join("repositories/app/_manifests/tags/2.0/current")).unwrap();
    fs::write(v2.join("repositories/app/_manifests/tags/2.0/current/link"), b"sha256:x").unwrap();
    // Copy-up by append, a new file, a rename across directories, a symlink.
    let blob = fs::read_dir(&hexes[1]).unwrap().next().unwrap().unwrap().path().join("data");
    fs::OpenOptions::new().append(true).open(&blob).unwrap().write_all(b"+").unwrap();
    fs::create_dir_all(v2.join("repositories/app/_uploads/u1")).unwrap();
    fs::write(v2.join("repositories/app/_uploads/u1/data"), b"upload").unwrap();
    fs::create_dir_all(v2.join("blobs/sha256/ff/ffnew")).unwrap();
    fs::rename(v2.join("repositories/app/_uploads/u1/data"), v2.join("blobs/sha256/ff/ffnew/data")).unwrap();
    std::os::unix::fs::symlink("blobs", v2.join("link-to-blobs")).unwrap();
}

#[test]
fn untouched_layers_list_the_same_as_kernel_overlay() {
    let l = Layers::new();
    let ours = l.listing_regfs();
    let kernel = l.listing_kernel();
    assert_eq!(ours, kernel);
    assert!(ours.len() > 50, "the sample is not trivial: {} entries", ours.len());
}

#[test]
fn an_upper_written_by_regfs_mounts_in_the_kernel_showing_the_same_view() {
    let l = Layers::new();
    let m = l.regfs();
    mutate(&m.mountpoint);
    let ours = tree::listing(&m.mountpoint);
    m.umount();
    let kernel = l.listing_kernel();
    assert_eq!(ours, kernel);
    // And regfs reads its own upper back the same after a remount.
    assert_eq!(l.listing_regfs(), ours);
}

#[test]
fn an_upper_written_by_the_kernel_mounts_in_regfs_showing_the_same_view() {
    let l = Layers::new();
    let kernel = {
        let k = l.kernel();
        mutate(&k.mountpoint);
        tree::listing(&k.mountpoint)
    };
    assert_eq!(l.listing_regfs(), kernel);
}

/// The curated view (default policy) served by the FUSE front end and by
/// the kernel after materialising the policy: the same names, modes, sizes,
/// owners, times and contents. Only directory link counts may differ: the
/// kernel mode copies up the ancestors of its whiteouts, and overlayfs
/// reports nlink 1 for a merged directory.
#[test]
fn the_policy_view_is_the_same_in_fuse_and_kernel_mode() {
    let l = Layers::new();
    let listing = |mode: &str, upper: &str| {
        let m = Mount::fuse(&[&l.lower], &l.path(upper), &l.path("mnt"), &["--mode", mode]);
        // The root is the upper directory itself: its times are its own.
        let out: Vec<String> = tree::listing(&m.mountpoint)
            .into_iter()
            .skip(1)
            .map(|line| {
                if line.starts_with('d') {
                    // "d0755 NLINK rest": drop the link count of directories.
                    let mut f: Vec<&str> = line.splitn(3, ' ').collect();
                    f[1] = "_";
                    f.join(" ")
                } else {
                    line
                }
            })
            .collect();
        m.umount();
        out
    };
    let fuse = listing("fuse", "upper-fuse");
    let kernel = listing("kernel", "upper-kernel");
    assert!(fuse.iter().all(|l| !l.contains("_manifests") && !l.contains("_uploads")), "{fuse:#?}");
    assert_eq!(fuse, kernel);
}

/// Set-user/group-ID bits after an unprivileged user writes or truncates:
/// regfs (which writes upper as root and is told by the kernel when a
/// writer lacks CAP_FSETID) must leave the modes the kernel overlay leaves.
#[test]
fn an_unprivileged_writer_drops_setid_bits_as_under_the_kernel() {
    use std::os::unix::fs::PermissionsExt;
    let l = Layers::new();
    // The writer (nobody) must reach the mountpoints.
    fs::set_permissions(l.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let lower_file = l.lower.join("docker/lower-suid");
    fs::write(&lower_file, b"history\n").unwrap();
    fs::set_permissions(&lower_file, fs::Permissions::from_mode(0o6777)).unwrap();

    let modes_after = |root: &Path| -> Vec<(String, u32)> {
        let d = root.join("docker");
        for (name, mode) in [("new-suid", 0o6777), ("new-sgid-noexec", 0o6767), ("trunc", 0o6777)] {
            fs::write(d.join(name), b"x\n").unwrap();
            fs::set_permissions(d.join(name), fs::Permissions::from_mode(mode)).unwrap();
        }
        let script = "echo more >> new-suid && echo more >> new-sgid-noexec && echo more >> lower-suid \
                      && truncate -s 0 trunc";
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script])
            .current_dir(&d)
            .output()
            .expect("running setpriv (util-linux)");
        assert!(out.status.success(), "writing as nobody: {}", support::mount::text(&out));
        ["new-suid", "new-sgid-noexec", "lower-suid", "trunc"]
            .iter()
            .map(|n| (n.to_string(), fs::metadata(d.join(n)).unwrap().permissions().mode() & 0o7777))
            .collect()
    };
    let ours = {
        let m = Mount::fuse(
            &[&l.lower],
            &l.upper,
            &l.path("mnt"),
            &["--allow-other", "--policy", l.transparent.to_str().unwrap()],
        );
        let modes = modes_after(&m.mountpoint);
        m.umount();
        modes
    };
    let kernel = {
        let upper = l.path("kernel-upper");
        fs::create_dir_all(&upper).unwrap();
        let k = KernelOverlay::mount(&[&l.lower], &upper, &l.path("kwork"), &l.path("kmnt"));
        modes_after(&k.mountpoint)
    };
    assert_eq!(ours, kernel, "modes after unprivileged writes (regfs, then kernel)");
    let expected = [("new-suid", 0o777), ("new-sgid-noexec", 0o767), ("lower-suid", 0o777), ("trunc", 0o777)];
    assert_eq!(ours, expected.map(|(n, m)| (n.to_string(), m)).to_vec());
}

/// Each case's name and outcome.
type Outcomes = Vec<(String, String)>;
/// Calls made on a mounted view, with their outcomes.
type Cases = fn(&Path) -> Outcomes;
/// A mountpoint and what unmounts it.
type Mounted = (PathBuf, Box<dyn FnOnce()>);

/// Runs `cases` on a regfs mount and on kernel overlayfs, each over its own
/// copy of the same history (the second time, on the same upper again:
/// `then`), prints them side by side and asserts they are the same.
fn beside_kernel(cases: Cases, then: Option<Cases>) -> Outcomes {
    beside_kernel_over(Layers::new, cases, then)
}

/// [`beside_kernel`] over layers `layers` makes.
fn beside_kernel_over(layers: fn() -> Layers, cases: Cases, then: Option<Cases>) -> Outcomes {
    let run = |mount: &dyn Fn(&Layers) -> Mounted| {
        let layers = layers();
        let (mp, done) = mount(&layers);
        let mut out = cases(&mp);
        done();
        if let Some(then) = then {
            let (mp, done) = mount(&layers);
            out.extend(then(&mp));
            done();
        }
        out
    };
    let ours = run(&|l: &Layers| {
        let m = l.regfs_shared();
        (m.mountpoint.clone(), Box::new(move || drop(m.umount())))
    });
    let kernel = run(&|l: &Layers| {
        let k = l.kernel();
        (k.mountpoint.clone(), Box::new(move || drop(k)))
    });
    for ((what, o), (_, k)) in ours.iter().zip(&kernel) {
        eprintln!("{what:40} regfs: {o:45} kernel: {k}");
    }
    assert_eq!(ours, kernel, "regfs and kernel overlayfs differ");
    ours
}

/// What a call that shows nothing showed.
fn nothing<T>(_: T) -> String {
    String::new()
}

/// The outcome of one call: `ok` with what it showed, or the errno.
fn outcome<T>(r: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => format!("ok {}", ok(v)),
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
    }
}

/// Creating opens and special files, as POSIX and overlayfs define them:
/// each case's outcome on regfs and on kernel overlayfs over the same
/// history (each with its own upper). Found by a public conformance suite:
/// `open(O_CREAT|O_RDONLY)` of a new name gave EIO on regfs, and `mknod c 0 0`
/// succeeded and then vanished (it is a whiteout in the upper format).
fn creation_cases(v: &Path) -> Vec<(String, String)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let d = v.join("docker/registry/v2");
    let open =
        |name: &str, flags: i32| fs::OpenOptions::new().read(true).custom_flags(flags).mode(0o640).open(d.join(name));
    let mut out = Vec::new();
    let mut case = |what: &str, result: String| out.push((what.to_string(), result));
    case(
        "open(new, O_CREAT|O_RDONLY)",
        outcome(open("c1", libc::O_CREAT), |mut f| {
            let mut buf = Vec::new();
            let read = std::io::Read::read_to_end(&mut f, &mut buf).map(|_| buf.len());
            let write = f.write(b"x").map_err(|e| e.raw_os_error());
            format!("read {read:?} write {write:?}")
        }),
    );
    case("stat of it", outcome(fs::metadata(d.join("c1")), |m| format!("{:o} size {}", m.mode() & 0o7777, m.len())));
    case("open(new, O_CREAT|O_EXCL|O_RDONLY)", outcome(open("c2", libc::O_CREAT | libc::O_EXCL), |_| String::new()));
    case("again", outcome(open("c2", libc::O_CREAT | libc::O_EXCL), |_| String::new()));
    case("open(new, O_CREAT|O_TRUNC|O_RDONLY)", outcome(open("c3", libc::O_CREAT | libc::O_TRUNC), |_| String::new()));
    std::os::unix::fs::symlink("c4-target", d.join("c4")).unwrap();
    case("open(dangling symlink, O_CREAT|O_RDONLY)", outcome(open("c4", libc::O_CREAT), |_| String::new()));
    case("the symlink's target", outcome(fs::metadata(d.join("c4-target")), |m| format!("file {}", m.is_file())));
    case("open(history file, O_CREAT|O_RDONLY)", outcome(open("blobs", libc::O_CREAT), |_| String::new()));
    let dev = |name: &str, major: u32, minor: u32| {
        regfs::sys::mknod(&d.join(name), libc::S_IFCHR | 0o644, regfs::sys::makedev(major, minor))
    };
    case("mknod c 0 0", outcome(dev("n0", 0, 0), |_| String::new()));
    case("mknod c 1 3", outcome(dev("n1", 1, 3), |_| String::new()));
    std::thread::sleep(std::time::Duration::from_millis(1200));
    case("the 0/0 name a second later", outcome(fs::symlink_metadata(d.join("n0")), |_| "present".into()));
    case(
        "the 1/3 device a second later",
        outcome(fs::symlink_metadata(d.join("n1")), |m| {
            format!("char {} rdev {}", m.file_type().is_char_device(), m.rdev())
        }),
    );
    out
}

#[test]
fn creating_opens_and_special_files_match_kernel_overlay() {
    let ours = beside_kernel(creation_cases, None);
    assert!(ours[0].1.starts_with("ok"), "the kernel creates the file: {ours:?}");
}

/// open(2) flags on each kind of target: history and new files, a
/// directory, a symlink (to a history file, dangling), a missing name and
/// one in a missing directory. Each outcome, then what the target holds.
fn open_flag_cases(v: &Path) -> Outcomes {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let d = v.join("docker/registry/v2");
    let mut out = Vec::new();
    let mut case = |what: &str, result: String| out.push((what.to_string(), result));
    let blobs: Vec<PathBuf> = fs::read_dir(d.join("blobs/sha256"))
        .unwrap()
        .flat_map(|p| fs::read_dir(p.unwrap().path()).unwrap())
        .map(|b| b.unwrap().path().join("data"))
        .collect();
    let mut blobs = blobs.into_iter();
    let mut history = || blobs.next().expect("enough history blobs");
    fs::write(d.join("new"), b"new file").unwrap();
    let open = |p: &Path, acc: i32, flags: i32| {
        let mut o = fs::OpenOptions::new();
        match acc {
            libc::O_RDONLY => o.read(true),
            libc::O_WRONLY => o.write(true),
            _ => o.read(true).write(true),
        };
        o.custom_flags(flags).mode(0o644).open(p)
    };
    let size = |p: &Path| outcome(fs::symlink_metadata(p), |m| format!("size {}", m.len()));
    let head = |p: &Path| {
        outcome(fs::File::open(p), |f| {
            let mut b = Vec::new();
            f.take(6).read_to_end(&mut b).unwrap();
            format!("{b:?}")
        })
    };

    let h = history();
    case("O_WRONLY|O_TRUNC on a history file", outcome(open(&h, libc::O_WRONLY, libc::O_TRUNC), nothing));
    case("its size", size(&h));
    let h = history();
    let before = fs::metadata(&h).unwrap().len();
    let appended = open(&h, libc::O_WRONLY, libc::O_APPEND).and_then(|mut f| f.write_all(b"!"));
    case("O_WRONLY|O_APPEND on a history file, write", outcome(appended, nothing));
    case("its size grew by one", outcome(fs::metadata(&h), |m| format!("{}", m.len() == before + 1)));
    let h = history();
    let read = open(&h, libc::O_RDWR, 0).and_then(|mut f| {
        let mut b = [0u8; 2];
        f.read_exact(&mut b).map(|()| b)
    });
    case("O_RDWR on a history file, read", outcome(read, |b| format!("{b:?}")));
    let h = history();
    case("O_RDONLY|O_TRUNC on a history file", outcome(open(&h, libc::O_RDONLY, libc::O_TRUNC), nothing));
    case("its size", size(&h));
    let h = history();
    case("O_CREAT|O_EXCL on a history file", outcome(open(&h, libc::O_WRONLY, libc::O_CREAT | libc::O_EXCL), nothing));
    case(
        "O_CREAT|O_EXCL on a new file",
        outcome(open(&d.join("new"), libc::O_WRONLY, libc::O_CREAT | libc::O_EXCL), nothing),
    );
    case("O_CREAT on a new file (no O_EXCL)", outcome(open(&d.join("new"), libc::O_WRONLY, libc::O_CREAT), nothing));
    case("it keeps its data", head(&d.join("new")));
    std::os::unix::fs::symlink(h.strip_prefix(&d).unwrap(), d.join("to-history")).unwrap();
    std::os::unix::fs::symlink("nowhere", d.join("dangling")).unwrap();
    case("O_NOFOLLOW on a symlink", outcome(open(&d.join("to-history"), libc::O_RDONLY, libc::O_NOFOLLOW), nothing));
    case(
        "O_NOFOLLOW|O_CREAT on a dangling symlink",
        outcome(open(&d.join("dangling"), libc::O_WRONLY, libc::O_NOFOLLOW | libc::O_CREAT), nothing),
    );
    let through = open(&d.join("to-history"), libc::O_WRONLY, libc::O_TRUNC).and_then(|mut f| f.write_all(b"via link"));
    case("write through a symlink to a history file", outcome(through, nothing));
    case("the target's data", head(&h));
    case(
        "the symlink is still one",
        outcome(fs::symlink_metadata(d.join("to-history")), |m| format!("{}", m.file_type().is_symlink())),
    );
    case(
        "O_CREAT|O_EXCL through a symlink to a file",
        outcome(open(&d.join("to-history"), libc::O_WRONLY, libc::O_CREAT | libc::O_EXCL), nothing),
    );
    case("O_DIRECTORY on a file", outcome(open(&d.join("new"), libc::O_RDONLY, libc::O_DIRECTORY), nothing));
    case(
        "O_DIRECTORY on a history directory",
        outcome(open(&d.join("blobs"), libc::O_RDONLY, libc::O_DIRECTORY), nothing),
    );
    case("O_WRONLY on a history directory", outcome(open(&d.join("blobs"), libc::O_WRONLY, 0), nothing));
    case("O_RDONLY on a missing name", outcome(open(&d.join("missing"), libc::O_RDONLY, 0), nothing));
    case("O_CREAT in a missing directory", outcome(open(&d.join("missing/f"), libc::O_WRONLY, libc::O_CREAT), nothing));
    case("O_CREAT on a history directory", outcome(open(&d.join("blobs"), libc::O_WRONLY, libc::O_CREAT), nothing));
    out
}

#[test]
fn open_flags_on_every_kind_of_target_match_kernel_overlay() {
    let ours = beside_kernel(open_flag_cases, None);
    assert!(ours.len() >= 20, "{ours:?}");
}

/// An open file whose name is gone (POSIX: it lives until closed), and a
/// history file opened, then deleted: fstat, ftruncate, fchmod, futimens,
/// reads and writes on the open descriptor. regfs answered ENOENT to the
/// attribute calls (the kernel asks them by inode, without the handle).
fn unlinked_cases(v: &Path) -> Vec<(String, String)> {
    use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
    let d = v.join("docker/registry/v2");
    let mut out = Vec::new();
    let mut case = |what: &str, result: String| out.push((what.to_string(), result));
    let history = fs::read_dir(d.join("blobs/sha256"))
        .unwrap()
        .flat_map(|p| fs::read_dir(p.unwrap().path()).unwrap())
        .map(|b| b.unwrap().path().join("data"))
        .next()
        .expect("a history blob");
    for (name, path) in [("new file", d.join("u1")), ("history file", history)] {
        let mut f = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).unwrap();
        f.write_all(b"hello").unwrap();
        fs::remove_file(&path).unwrap();
        case(&format!("{name}: fstat"), outcome(f.metadata(), |m| format!("nlink {} size {}", m.nlink(), m.len())));
        case(&format!("{name}: ftruncate"), outcome(f.set_len(2), |_| String::new()));
        case(
            &format!("{name}: fchmod"),
            outcome(f.set_permissions(fs::Permissions::from_mode(0o600)), |_| String::new()),
        );
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        case(&format!("{name}: futimens"), outcome(f.set_modified(t), |_| String::new()));
        case(
            &format!("{name}: fstat after"),
            outcome(f.metadata(), |m| format!("mode {:o} size {} mtime {}", m.mode() & 0o7777, m.len(), m.mtime())),
        );
        let mut buf = [0u8; 8];
        case(&format!("{name}: pread"), outcome(f.read_at(&mut buf, 0), |n| String::from_utf8_lossy(&buf[..n]).into()));
        case(&format!("{name}: the name"), outcome(fs::symlink_metadata(&path), |_| "present".into()));
    }
    out
}

#[test]
fn an_unlinked_open_file_works_as_under_kernel_overlay() {
    beside_kernel(unlinked_cases, None);
}

/// Hard links: one inode, one nlink for every name, at once (after link,
/// rename and unlink of another name), the first name's ctime moved by
/// `link`; data written through one name read through another. regfs gave
/// each name its own inode number, and the first name kept a stale nlink.
fn hardlink_cases(v: &Path) -> Vec<(String, String)> {
    use std::os::unix::fs::MetadataExt;
    let d = v.join("docker/registry/v2");
    let st = |n: &str| fs::symlink_metadata(d.join(n)).unwrap();
    let mut out = Vec::new();
    let mut case = |what: &str, result: String| out.push((what.to_string(), result));
    fs::write(d.join("a"), b"1").unwrap();
    let c0 = st("a").ctime_nsec() + st("a").ctime() * 1_000_000_000;
    std::thread::sleep(std::time::Duration::from_millis(20));
    case("link a b", outcome(fs::hard_link(d.join("a"), d.join("b")), |_| String::new()));
    let (a, b) = (st("a"), st("b"));
    let c1 = a.ctime_nsec() + a.ctime() * 1_000_000_000;
    case(
        "after link",
        format!("same ino {} nlink {} {} a's ctime moved {}", a.ino() == b.ino(), a.nlink(), b.nlink(), c1 > c0),
    );
    fs::create_dir(d.join("dir")).unwrap();
    fs::hard_link(d.join("a"), d.join("dir/c")).unwrap();
    fs::rename(d.join("b"), d.join("dir/b2")).unwrap();
    let ino = st("a").ino();
    case(
        "three names, one renamed",
        format!("nlink {} same {}", st("a").nlink(), [st("dir/c").ino(), st("dir/b2").ino()] == [ino, ino]),
    );
    fs::remove_file(d.join("a")).unwrap();
    case("a unlinked", format!("nlink {} {}", st("dir/c").nlink(), st("dir/b2").nlink()));
    fs::OpenOptions::new().append(true).open(d.join("dir/c")).unwrap().write_all(b"2").unwrap();
    case(
        "written through c, read through b2",
        outcome(fs::read(d.join("dir/b2")), |v| String::from_utf8_lossy(&v).into()),
    );
    fs::remove_file(d.join("dir/c")).unwrap();
    case("one name left", format!("nlink {}", st("dir/b2").nlink()));
    fs::hard_link(d.join("dir/b2"), d.join("e")).unwrap();
    out
}

/// The names of an upper's hard-linked file, looked up in a fresh mount.
fn hardlinks_after_remount(v: &Path) -> Vec<(String, String)> {
    use std::os::unix::fs::MetadataExt;
    let d = v.join("docker/registry/v2");
    let (b2, e) = (fs::metadata(d.join("dir/b2")).unwrap(), fs::metadata(d.join("e")).unwrap());
    vec![("after a remount".into(), format!("same ino {} nlink {} {}", b2.ino() == e.ino(), b2.nlink(), e.nlink()))]
}

#[test]
fn hard_links_are_one_inode_as_under_kernel_overlay() {
    let ours = beside_kernel(hardlink_cases, Some(hardlinks_after_remount));
    assert_eq!(ours.last().map(|c| c.1.as_str()), Some("same ino true nlink 2 2"), "after a remount");
}

/// Which calls change which times, on new entries and on history ones: for
/// each call, whether the entry's mtime and ctime and its directory's mtime
/// and ctime moved (POSIX says which must; overlayfs adds copy-up, which
/// keeps a history entry's times until the call itself changes them).
fn timestamp_cases(v: &Path) -> Vec<(String, String)> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = v.join("docker/registry/v2");
    let times = |p: &Path| {
        fs::symlink_metadata(p)
            .map(|m| (m.mtime() * 1_000_000_000 + m.mtime_nsec(), m.ctime() * 1_000_000_000 + m.ctime_nsec()))
    };
    let mut out = Vec::new();
    let history_dir = fs::read_dir(d.join("blobs/sha256")).unwrap().next().unwrap().unwrap().path();
    let history_file = fs::read_dir(&history_dir).unwrap().next().unwrap().unwrap().path().join("data");
    fs::create_dir(d.join("t")).unwrap();
    fs::write(d.join("t/f"), b"x").unwrap();
    type Call = Box<dyn Fn() -> std::io::Result<()>>;
    let (df, dt) = (d.join("t/f"), d.join("t"));
    let calls: Vec<(&str, PathBuf, PathBuf, Call)> = vec![
        (
            "write new file",
            df.clone(),
            dt.clone(),
            Box::new({
                let p = df.clone();
                move || fs::OpenOptions::new().append(true).open(&p)?.write_all(b"y")
            }),
        ),
        (
            "chmod new file",
            df.clone(),
            dt.clone(),
            Box::new({
                let p = df.clone();
                move || fs::set_permissions(&p, fs::Permissions::from_mode(0o600))
            }),
        ),
        (
            "truncate new file",
            df.clone(),
            dt.clone(),
            Box::new({
                let p = df.clone();
                move || fs::OpenOptions::new().write(true).open(&p)?.set_len(1)
            }),
        ),
        (
            "link new file",
            df.clone(),
            dt.clone(),
            Box::new({
                let (p, q) = (df.clone(), d.join("t/g"));
                move || fs::hard_link(&p, &q)
            }),
        ),
        (
            "rename in its dir",
            d.join("t/h"),
            dt.clone(),
            Box::new({
                let (p, q) = (d.join("t/g"), d.join("t/h"));
                move || fs::rename(&p, &q)
            }),
        ),
        (
            "create in dir",
            d.join("t/new"),
            dt.clone(),
            Box::new({
                let p = d.join("t/new");
                move || fs::write(&p, b"")
            }),
        ),
        (
            "unlink in dir",
            dt.clone(),
            dt.clone(),
            Box::new({
                let p = d.join("t/new");
                move || fs::remove_file(&p)
            }),
        ),
        (
            "mkdir in dir",
            dt.clone(),
            dt.clone(),
            Box::new({
                let p = d.join("t/sub");
                move || fs::create_dir(&p)
            }),
        ),
        (
            "rmdir in dir",
            dt.clone(),
            dt.clone(),
            Box::new({
                let p = d.join("t/sub");
                move || fs::remove_dir(&p)
            }),
        ),
        (
            "symlink in dir",
            dt.clone(),
            dt.clone(),
            Box::new({
                let p = d.join("t/ln");
                move || std::os::unix::fs::symlink("f", &p)
            }),
        ),
        (
            "read history file",
            history_file.clone(),
            history_dir.clone(),
            Box::new({
                let p = history_file.clone();
                move || fs::read(&p).map(drop)
            }),
        ),
        (
            "write history file",
            history_file.clone(),
            history_dir.clone(),
            Box::new({
                let p = history_file.clone();
                move || fs::OpenOptions::new().append(true).open(&p)?.write_all(b"+")
            }),
        ),
        (
            "chmod history dir",
            history_dir.clone(),
            d.join("blobs/sha256"),
            Box::new({
                let p = history_dir.clone();
                move || fs::set_permissions(&p, fs::Permissions::from_mode(0o700))
            }),
        ),
        (
            "create in history dir",
            history_dir.clone(),
            d.join("blobs/sha256"),
            Box::new({
                let p = history_dir.join("x");
                move || fs::write(&p, b"")
            }),
        ),
    ];
    for (what, entry, dir, call) in calls {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (e0, d0) = (times(&entry).ok(), times(&dir).ok());
        let r = call();
        let (e1, d1) = (times(&entry).ok(), times(&dir).ok());
        let moved = |a: Option<(i64, i64)>, b: Option<(i64, i64)>| match (a, b) {
            (Some(a), Some(b)) => format!("m{} c{}", u8::from(b.0 != a.0), u8::from(b.1 != a.1)),
            _ => "-".into(),
        };
        out.push((what.to_string(), outcome(r, |_| format!("entry {} dir {}", moved(e0, e1), moved(d0, d1)))));
    }
    out
}

#[test]
fn timestamps_move_as_under_kernel_overlay() {
    beside_kernel(timestamp_cases, None);
}

/// rename(2) over what is there already, on new and history entries, and
/// the longest names: each outcome (errno, or what the names then are).
fn rename_and_name_cases(v: &Path) -> Outcomes {
    let d = v.join("docker/registry/v2");
    let mut out = Vec::new();
    let mut case = |what: &str, result: String| out.push((what.to_string(), result));
    let history_dir = fs::read_dir(d.join("blobs/sha256")).unwrap().next().unwrap().unwrap().path();
    let history_blob = fs::read_dir(&history_dir).unwrap().next().unwrap().unwrap().path();
    let history_file = history_blob.join("data");
    fs::write(d.join("f1"), b"1").unwrap();
    fs::write(d.join("f2"), b"2").unwrap();
    fs::create_dir_all(d.join("d1/sub")).unwrap();
    fs::create_dir(d.join("d2")).unwrap();
    fs::create_dir(d.join("d3")).unwrap();
    let rn = |a: &Path, b: &Path| outcome(fs::rename(a, b), |_| String::new());
    let read = |p: &Path| outcome(fs::read(p), |v| String::from_utf8_lossy(&v).into());
    case("file over file", rn(&d.join("f1"), &d.join("f2")));
    case("the target's content", read(&d.join("f2")));
    case("file over empty dir", rn(&d.join("f2"), &d.join("d2")));
    case("dir over file", rn(&d.join("d2"), &d.join("f2")));
    case("dir over non-empty dir", rn(&d.join("d3"), &d.join("d1")));
    case("dir over empty dir", rn(&d.join("d1"), &d.join("d3")));
    case("dir into itself", rn(&d.join("d3"), &d.join("d3/sub/x")));
    case("history file over new file", rn(&history_file, &d.join("f2")));
    case("history file's content moved", outcome(fs::metadata(d.join("f2")), |m| format!("size {}", m.len())));
    case("the history name", outcome(fs::symlink_metadata(&history_file), |_| "present".into()));
    case("history dir with content", rn(&history_blob, &d.join("moved")));
    case("new file over history dir", rn(&d.join("f2"), &history_dir));
    let n255 = "n".repeat(255);
    let n256 = "n".repeat(256);
    case("create a 255-byte name", outcome(fs::write(d.join(&n255), b"x"), |_| String::new()));
    case("create a 256-byte name", outcome(fs::write(d.join(&n256), b"x"), |_| String::new()));
    case("rename to a 255-byte name", rn(&d.join(&n255), &d.join("m".repeat(255))));
    case("mkdir a 255-byte name", outcome(fs::create_dir(d.join("k".repeat(255))), |_| String::new()));
    let deep: PathBuf = (0..6).map(|_| "p".repeat(200)).collect();
    case("a 1.2 KiB path", outcome(fs::create_dir_all(d.join(&deep)), |_| String::new()));
    case("a file at its end", outcome(fs::write(d.join(&deep).join("f"), b"deep"), |_| String::new()));
    out
}

#[test]
fn renames_over_existing_entries_and_long_names_match_kernel_overlay() {
    beside_kernel(rename_and_name_cases, None);
}

/// The longest paths a caller can name (PATH_MAX counts the NUL: 4095
/// bytes), on layers whose roots are 600 bytes longer than the mountpoint.
/// regfs joined view paths onto the layer roots and gave ENAMETOOLONG once
/// the joined path reached PATH_MAX; it now resolves relative to a handle
/// of each layer root, as the kernel resolves by dentry.
fn long_path_cases(v: &Path) -> Outcomes {
    use std::os::unix::ffi::OsStrExt;
    const PATH_MAX: usize = 4096;
    let d = v.join("docker/registry/v2");
    let mut out = Vec::new();
    let mut case = |what: &str, result: String| out.push((what.to_string(), result));
    // Directories down to where a name of at most 255 bytes (NAME_MAX)
    // makes the path exactly PATH_MAX - 1 bytes.
    let mut deep = d.clone();
    let room = |p: &Path| PATH_MAX - 1 - p.as_os_str().len() - 1;
    while room(&deep) > 255 {
        deep.push("q".repeat(250.min(room(&deep) - 101)));
    }
    let name_len = room(&deep);
    let file = deep.join("f".repeat(name_len));
    let moved = deep.join("g".repeat(name_len));
    let too_long = deep.join("h".repeat(name_len + 1));
    assert_eq!(file.as_os_str().as_bytes().len(), PATH_MAX - 1);
    let nothing = |_| String::new();
    case("mkdir -p to the deepest directory", outcome(fs::create_dir_all(&deep), nothing));
    case("create a file, path 4095 bytes", outcome(fs::write(&file, b"deep"), nothing));
    case("read it", outcome(fs::read(&file), |v| String::from_utf8_lossy(&v).into()));
    case("stat it", outcome(fs::symlink_metadata(&file), |m| format!("size {}", m.len())));
    case("list its directory", outcome(fs::read_dir(&deep), |rd| format!("{} names", rd.count())));
    let set_xattr = regfs::sys::lsetxattr(&file, "user.regfs-test".as_ref(), b"1", 0);
    case("setxattr on it", outcome(set_xattr, nothing));
    case("rename it to another 4095-byte path", outcome(fs::rename(&file, &moved), nothing));
    case("symlink at 4095 bytes", outcome(std::os::unix::fs::symlink("target", &file), nothing));
    case("readlink it", outcome(fs::read_link(&file), |t| t.display().to_string()));
    case("a 4096-byte path", outcome(fs::write(&too_long, b"x"), nothing));
    case("unlink the file", outcome(fs::remove_file(&moved), nothing));
    case("unlink the symlink", outcome(fs::remove_file(&file), nothing));
    case("rmdir the deepest directory", outcome(fs::remove_dir(&deep), nothing));
    out
}

#[test]
fn paths_up_to_path_max_work_under_longer_layer_roots_as_under_kernel_overlay() {
    let ours = beside_kernel_over(|| Layers::under(&vec!["r".repeat(199); 3].join("/")), long_path_cases, None);
    assert!(ours[1].1.starts_with("ok"), "the kernel takes a 4095-byte path: {ours:?}");
}

/// What a second user may do through the view: the kernel checks the modes
/// and owners the view shows (regfs mounts with `default_permissions`).
fn second_user_cases(v: &Path) -> Outcomes {
    use std::os::unix::fs::PermissionsExt;
    let d = v.join("docker/registry/v2");
    // The test's temporary directory is 0700: let the second user reach the mount.
    let top = v.parent().expect("the mountpoint's directory");
    fs::set_permissions(top, fs::Permissions::from_mode(0o755)).unwrap();
    let history = fs::read_dir(d.join("blobs/sha256")).unwrap().next().unwrap().unwrap().path();
    let history_file = fs::read_dir(d.join("blobs/sha256")).unwrap().nth(1).unwrap().unwrap().path();
    let history_file = fs::read_dir(history_file).unwrap().next().unwrap().unwrap().path().join("data");
    for (name, mode) in [("private", 0o600), ("public", 0o644)] {
        fs::write(d.join(name), b"data").unwrap();
        fs::set_permissions(d.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::create_dir(d.join("open")).unwrap();
    fs::set_permissions(d.join("open"), fs::Permissions::from_mode(0o777)).unwrap();
    // Group class: the group's bits apply to a member even where others' allow more.
    for (name, mode) in [("group-read", 0o640), ("group-denied", 0o604), ("shared", 0o666)] {
        fs::write(d.join(name), b"data").unwrap();
        std::os::unix::fs::chown(d.join(name), None, Some(4242)).unwrap();
        fs::set_permissions(d.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    // Sticky: only a file's owner (or the directory's) may remove it.
    fs::create_dir(d.join("sticky")).unwrap();
    fs::set_permissions(d.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(d.join("sticky/roots"), b"r").unwrap();
    fs::set_permissions(d.join("sticky/roots"), fs::Permissions::from_mode(0o666)).unwrap();
    fs::set_permissions(&history, fs::Permissions::from_mode(0o700)).unwrap();
    let script = r#"
import os, sys
def t(what, f):
    try:
        r = f()
        print(what, "ok", "" if r is None else r)
    except OSError as e:
        print(what, "errno", e.errno)
t("read 0600 file", lambda: open("private").read())
t("read 0644 file", lambda: open("public").read())
t("write 0644 file", lambda: open("public", "a").write("x"))
t("create in root's 0755 dir", lambda: open("new", "w").close())
t("create in a 0777 dir", lambda: open("open/mine", "w").close())
t("stat the new file's owner", lambda: os.stat("open/mine").st_uid)
t("list a 0700 history dir", lambda: len(os.listdir(sys.argv[1])))
t("unlink its own file", lambda: os.unlink("open/mine"))
t("read a 0640 file of its group", lambda: open("group-read").read())
t("read a 0604 file of its group", lambda: open("group-denied").read())
t("utime(NULL) of a 0666 file not its own", lambda: os.utime("shared"))
t("utime(times) of a 0666 file not its own", lambda: os.utime("shared", (1, 1)))
t("chmod a file not its own", lambda: os.chmod("shared", 0o600))
t("unlink root's file in a sticky dir", lambda: os.unlink("sticky/roots"))
t("rename root's file in a sticky dir", lambda: os.rename("sticky/roots", "sticky/moved"))
t("create in the sticky dir", lambda: open("sticky/mine", "w").close())
t("unlink its own file there", lambda: os.unlink("sticky/mine"))
t("write a history file", lambda: open(sys.argv[2], "a").write("x"))
"#;
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "4242", "--regid", "4242", "--clear-groups", "/usr/bin/python3", "-c", script])
        .arg(&history)
        .arg(&history_file)
        .current_dir(&d)
        .output()
        .expect("running setpriv");
    assert!(out.status.success(), "the second user's script: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| match l.split_once(" ok") {
            Some((what, rest)) => (what.to_string(), format!("ok{rest}")),
            None => match l.split_once(" errno") {
                Some((what, rest)) => (what.to_string(), format!("errno{rest}")),
                None => (l.to_string(), String::new()),
            },
        })
        .collect()
}

#[test]
fn a_second_user_gets_what_the_kernel_gives_it() {
    let ours = beside_kernel(second_user_cases, None);
    assert_eq!(ours.len(), 18, "{ours:?}");
}

/// Detaches what is still mounted on the path when dropped (a failed test
/// leaves no mount behind).
struct DetachOnDrop(PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        if support::mount::is_mountpoint(&self.0) {
            support::mount::detach(&self.0);
        }
    }
}

/// The uid of `regfs-ci`, the ordinary user scripts/setup.sh creates
/// (fusermount3 wants a user with a name).
fn ordinary_uid() -> u32 {
    let out = std::process::Command::new("id").args(["-u", "regfs-ci"]).output().expect("running id");
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    uid.unwrap_or_else(|| panic!("no user regfs-ci: run scripts/setup.sh (it creates it)"))
}

/// `regfs ARGS` as `regfs-ci` (its own group, no others); its output.
fn regfs_as_second_user(args: &[&std::ffi::OsStr]) -> std::process::Output {
    as_second_user(support::mount::regfs_bin().as_os_str(), args)
}

/// `chown -R UID:UID PATH`.
fn chown_to(uid: u32, path: &Path) {
    let out = std::process::Command::new("chown").args(["-R", &format!("{uid}:{uid}")]).arg(path).output().unwrap();
    assert!(out.status.success(), "chown: {}", support::mount::text(&out));
}

/// `unshare -Urm sh -c SCRIPT` as `regfs-ci`; its output and its text.
fn in_user_namespace_as_second_user(script: &str) -> (std::process::Output, String) {
    let unshare = std::ffi::OsString::from("unshare");
    let out = as_second_user(&unshare, &["-Urm".as_ref(), "sh".as_ref(), "-c".as_ref(), script.as_ref()]);
    let text = support::mount::text(&out);
    (out, text)
}

/// `PROGRAM ARGS` as `regfs-ci`; its output.
fn as_second_user(program: &std::ffi::OsStr, args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args(["--reuid", "regfs-ci", "--regid", "regfs-ci", "--clear-groups"])
        .arg(program)
        .args(args)
        .env_remove("XDG_RUNTIME_DIR")
        // Its own home, not the test's (skopeo reads its config there).
        .env("HOME", if Path::new("/home/regfs-ci").is_dir() { "/home/regfs-ci" } else { "/tmp" })
        .output()
        .expect("running setpriv")
}

/// An ordinary user mounting root's history is told why writes will fail
/// (the view shows the history's owners: EACCES); a bundle tar is shown as
/// `tar -x` by that user would extract it: the user's own, so no warning.
#[test]
fn an_ordinary_user_is_warned_about_a_root_owned_history_and_owns_a_bundle_it_mounts() {
    use std::os::unix::fs::PermissionsExt;
    let uid = ordinary_uid();
    let l = Layers::new();
    let top = l.tmp.path();
    fs::set_permissions(top, fs::Permissions::from_mode(0o755)).unwrap();
    let bundle = l.path("history.tar");
    let out = support::mount::regfs(["export", "--upper", l.lower.to_str().unwrap(), "-o", bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}", support::mount::text(&out));
    fs::set_permissions(&bundle, fs::Permissions::from_mode(0o644)).unwrap();
    for (what, lower, warned) in [("a root-owned history", &l.lower, true), ("a bundle tar", &bundle, false)] {
        let (upper, mnt) = (l.path(&format!("u-{warned}")), l.path(&format!("m-{warned}")));
        for d in [&upper, &mnt] {
            fs::create_dir(d).unwrap();
            std::os::unix::fs::chown(d, Some(uid), Some(uid)).unwrap();
        }
        let args = [
            "mount".as_ref(),
            "--lower".as_ref(),
            lower.as_os_str(),
            "--upper".as_ref(),
            upper.as_os_str(),
            "--mode".as_ref(),
            "fuse".as_ref(),
            mnt.as_os_str(),
        ];
        let out = regfs_as_second_user(&args);
        let text = support::mount::text(&out);
        let guard = DetachOnDrop(mnt.clone());
        assert!(out.status.success(), "{what}: {text}");
        assert_eq!(text.contains("belongs to uid 0") && text.contains("EACCES"), warned, "{what}: {text}");
        // (Only its user may enter a FUSE mount without --allow-other.)
        let blobs = mnt.join("docker/registry/v2/blobs");
        let out = as_second_user("stat".as_ref(), &["-c".as_ref(), "%u".as_ref(), blobs.as_os_str()]);
        let want = if warned { 0 } else { uid };
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want.to_string(), "{what}: the owner the view shows");
        let out = regfs_as_second_user(&["umount".as_ref(), mnt.as_os_str()]);
        assert!(out.status.success(), "{what}: {}", support::mount::text(&out));
        drop(guard);
    }
}

/// `unshare -Urm` as an ordinary user (the README's capability-free path):
/// root of the namespace is that user, so its runtime dir is that user's
/// (`/tmp/regfs-UID`), not the machine root's `/tmp/regfs-0`; a kernel
/// mount and its unmount work there.
#[test]
fn an_ordinary_user_in_a_user_namespace_mounts_with_its_own_runtime_dir() {
    use std::os::unix::fs::PermissionsExt;
    let uid = ordinary_uid();
    let l = Layers::new();
    fs::set_permissions(l.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // The machine root's runtime dir exists (and is not the user's).
    let _ = fs::create_dir(std::env::temp_dir().join("regfs-0"));
    // The user's own directory: the overlay work dir goes beside upper.
    let own = l.path("ns");
    let (upper, mnt) = (own.join("upper"), own.join("mnt"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir(&mnt).unwrap();
    for p in [&l.lower, &own] {
        chown_to(uid, p);
    }
    let regfs = support::mount::regfs_bin();
    let script = format!(
        "set -e; {r} mount --lower {lower} --upper {upper} --mode kernel {mnt}; ls {mnt}/docker/registry/v2; \
         {r} umount {mnt}",
        r = regfs.display(),
        lower = l.lower.display(),
        upper = upper.display(),
        mnt = mnt.display()
    );
    let (out, text) = in_user_namespace_as_second_user(&script);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("blobs") && text.contains("repositories"), "the view inside the namespace: {text}");
    assert!(!text.contains("belongs to another user"), "{text}");
}

/// The same path for a whole release from a registry: skopeo, root of the
/// namespace, would read root's lookaside signature store (permission
/// denied); regfs gives it a store of the user's own.
#[test]
fn an_ordinary_user_releases_from_a_registry_inside_a_user_namespace() {
    use std::os::unix::fs::PermissionsExt;
    use support::{oci, registry::Registry, release};
    let uid = ordinary_uid();
    let l = Layers::new();
    fs::set_permissions(l.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let images = oci::write_release(&l.path("layouts"), &oci::release_set(1, 3, 5));
    fs::create_dir(l.path("source")).unwrap();
    let source = Registry::start(&l.path("source"));
    release::push_release(&source, &images, &release::SkopeoCache::new());
    let own = l.path("ns");
    fs::create_dir_all(own.join("history/docker/registry/v2")).unwrap();
    let list: Vec<String> = images.iter().map(|i| format!("{}:{}", i.repo, i.tag)).collect();
    fs::write(own.join("images.list"), list.join("\n") + "\n").unwrap();
    chown_to(uid, &own);
    let script = format!(
        "set -e; export HOME={o}; {r} release --history {o}/history --images {o}/images.list --from docker://{s} --src-tls-verify false \
         -o {o}/release.tar --json",
        r = support::mount::regfs_bin().display(),
        o = own.display(),
        s = source.host()
    );
    let (out, text) = in_user_namespace_as_second_user(&script);
    assert!(out.status.success(), "{text}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(summary["copied"].as_u64(), Some(images.len() as u64), "{summary}");
    assert!(own.join("release.tar").is_file(), "{text}");
    source.stop();
}

/// An ordinary user's release over root's history: warned at mount, and
/// the push's failure (500s to skopeo) explained from the registry's log:
/// permission denied on the path, and what to do.
#[test]
fn an_ordinary_users_release_over_root_history_says_why_the_push_failed() {
    use std::os::unix::fs::PermissionsExt;
    use support::oci;
    let uid = ordinary_uid();
    let l = Layers::new();
    fs::set_permissions(l.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let own = l.path("own");
    let images = oci::write_release(&own.join("layouts"), &oci::release_set(1, 2, 5));
    let list: Vec<String> = images.iter().map(|i| format!("{}:{}", i.repo, i.tag)).collect();
    fs::write(own.join("images.list"), list.join("\n") + "\n").unwrap();
    chown_to(uid, &own);
    let release = |o: &Path| -> Vec<std::ffi::OsString> {
        [
            "release".into(),
            "--history".into(),
            l.lower.clone().into_os_string(),
            "--images".into(),
            o.join("images.list").into_os_string(),
            "--from".into(),
            format!("oci:{}", o.join("layouts").display()).into(),
            "--mode".into(),
            "fuse".into(),
            "--retries".into(),
            "0".into(),
            "-o".into(),
            o.join("release.tar").into_os_string(),
        ]
        .into()
    };
    let args = release(&own);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out = regfs_as_second_user(&args);
    let text = support::mount::text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("belongs to uid 0"), "warned at mount: {text}");
    assert!(text.contains("the registry could not write: permission denied ("), "{text}");
    assert!(text.contains("run the release as the user who owns the history"), "{text}");
}
