//! The curated view over FUSE: policy, overlay rules, writes, errnos,
//! remounts. Every test mounts for real and checks with plain std::fs calls;
//! after unmounting it checks upper's exact contents and that every lower is
//! byte-for-byte unchanged. This binary also runs as a non-root user in CI
//! (through fusermount3), so nothing here may need root.

mod support;

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use support::mount::Mount;
use support::tree::{self, RepoSpec, Store};

const REPOS: &[RepoSpec] = &[
    RepoSpec { name: "app", tags: &["1.0", "1.1"] },
    RepoSpec { name: "team/web", tags: &["2024"] },
    RepoSpec { name: "team/api", tags: &["v1", "v2"] },
    RepoSpec { name: "stale", tags: &["old"] },
];

/// A history lower, an empty upper and a mountpoint in one temp dir.
struct Fixture {
    _tmp: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    mnt: PathBuf,
    store: Store,
    before: std::collections::BTreeMap<PathBuf, tree::Node>,
    /// Upper right after the first mount: empty in FUSE mode; in kernel mode
    /// the policy's materialised whiteouts.
    baseline: std::cell::RefCell<Option<Vec<String>>>,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let lower = tmp.path().join("history");
        let store = tree::write_store(&lower, REPOS, "r1");
        let before = tree::snapshot(&lower);
        let upper = tmp.path().join("upper");
        let mnt = tmp.path().join("mnt");
        Fixture { lower, upper, mnt, store, before, baseline: Default::default(), _tmp: tmp }
    }

    fn mount(&self, extra: &[&str]) -> Mount {
        let m = Mount::fuse(&[&self.lower], &self.upper, &self.mnt, extra);
        self.baseline.borrow_mut().get_or_insert_with(|| tree::shape(&tree::snapshot(&self.upper)));
        m
    }

    fn baseline(&self) -> Vec<String> {
        self.baseline.borrow().clone().unwrap_or_default()
    }

    /// The non-directory entries of upper that the test's own writes made.
    fn upper_written(&self) -> Vec<String> {
        let base = self.baseline();
        self.upper_shape().into_iter().filter(|l| !l.starts_with("d ") && !base.contains(l)).collect()
    }

    fn v2(&self) -> PathBuf {
        self.mnt.join("docker/registry/v2")
    }

    fn assert_lower_unchanged(&self) {
        assert_eq!(tree::snapshot(&self.lower), self.before, "the history lower was modified");
    }

    fn upper_shape(&self) -> Vec<String> {
        tree::shape(&tree::snapshot(&self.upper))
    }
}

fn kernel_mode() -> bool {
    support::mount::test_mode() == "kernel"
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.expect("dirent").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn blob_rel(hex: &str) -> String {
    format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2])
}

#[test]
fn policy_hides_manifests_and_uploads_but_keeps_blobs_and_layers() {
    let fx = Fixture::new();
    let m = fx.mount(&[]);
    let repos = fx.v2().join("repositories");
    assert_eq!(names(&repos), ["app", "stale", "team"]);
    assert_eq!(names(&repos.join("team")), ["api", "web"]);
    for repo in ["app", "team/web", "team/api", "stale"] {
        let r = repos.join(repo);
        assert_eq!(names(&r), ["_layers"], "{repo}: only _layers stays visible");
        for hidden in ["_manifests", "_uploads"] {
            assert_eq!(errno_of(fs::metadata(r.join(hidden))), libc::ENOENT, "{repo}/{hidden} reachable by lookup");
            assert_eq!(errno_of(fs::metadata(r.join(hidden).join("tags"))), libc::ENOENT);
        }
        for hex in &fx.store.layer_links[repo] {
            let link = r.join(format!("_layers/sha256/{hex}/link"));
            assert_eq!(fs::read_to_string(&link).expect("layer link"), format!("sha256:{hex}"));
        }
    }
    for (hex, data) in &fx.store.blobs {
        assert_eq!(&fs::read(fx.mnt.join(blob_rel(hex))).expect("blob"), data, "blob {hex}");
    }
    drop(m);
    assert_eq!(fx.upper_shape(), fx.baseline(), "reading must not write upper");
    if kernel_mode() {
        assert!(fx.baseline().contains(&"c docker/registry/v2/repositories/team/api/_manifests".to_string()));
    } else {
        assert_eq!(fx.baseline(), Vec::<String>::new(), "FUSE hides by policy alone");
    }
    fx.assert_lower_unchanged();
}

#[test]
fn stat_is_exact_and_inodes_are_stable() {
    let fx = Fixture::new();
    let m = fx.mount(&[]);
    let mut seen_inos = BTreeSet::new();
    for (hex, _) in fx.store.blobs.iter().take(5) {
        let rel = blob_rel(hex);
        let (a, b) =
            (fs::symlink_metadata(fx.lower.join(&rel)).unwrap(), fs::symlink_metadata(fx.mnt.join(&rel)).unwrap());
        assert_eq!(
            (a.size(), a.mode(), a.nlink(), a.uid(), a.gid()),
            (b.size(), b.mode(), b.nlink(), b.uid(), b.gid())
        );
        assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()), "mtime of {rel}");
        let again = fs::symlink_metadata(fx.mnt.join(&rel)).unwrap();
        assert_eq!(b.ino(), again.ino(), "inode number changed between two stats");
        assert!(seen_inos.insert(b.ino()), "two paths share an inode number");
    }
    // A lower-only directory keeps its own nlink and times.
    let rel = format!("docker/registry/v2/blobs/sha256/{}", &fx.store.blobs.keys().next().unwrap()[..2]);
    let (a, b) = (fs::metadata(fx.lower.join(&rel)).unwrap(), fs::metadata(fx.mnt.join(&rel)).unwrap());
    assert_eq!((a.mode(), a.nlink(), a.mtime()), (b.mode(), b.nlink(), b.mtime()));
    // readdir lists each name once, and its inode numbers match lookup's.
    let dir = fx.v2().join("blobs/sha256");
    let listed: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap()).collect();
    let unique: BTreeSet<_> = listed.iter().map(|e| e.file_name()).collect();
    assert_eq!(unique.len(), listed.len());
    for e in &listed {
        use std::os::unix::fs::DirEntryExt;
        assert_eq!(e.ino(), fs::symlink_metadata(e.path()).unwrap().ino());
    }
    drop(m);
    fx.assert_lower_unchanged();
}

/// Attributes of every directory from the view's root down to `rel` (and
/// `rel` itself), as a stat through the mount shows them.
fn chain_attrs(mnt: &Path, rel: &str) -> Vec<(String, u64, i64, i64, u32, u64)> {
    let mut out = Vec::new();
    let mut p = PathBuf::new();
    for c in std::iter::once("").chain(rel.split('/')) {
        p.push(c);
        let m = fs::symlink_metadata(mnt.join(&p)).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        out.push((p.display().to_string(), m.nlink(), m.mtime(), m.mtime_nsec(), m.mode(), m.size()));
    }
    out
}

#[test]
fn a_copy_up_shows_at_once_what_it_changed_in_every_ancestor() {
    let fx = Fixture::new();
    let m = fx.mount(&[]);
    let v2 = "docker/registry/v2";
    // Upper gains the top of the tree first: later copy-ups start below it.
    fs::create_dir(fx.v2().join("repositories/app/_layers/first")).expect("mkdir");
    // A new directory deep in a history-only chain (team, team/api, its
    // _layers and sha256 are copied up; repositories gains `team` in upper),
    // and a history file opened for writing (stale's chain and the file).
    let deep = format!("{v2}/repositories/team/api/_layers/sha256");
    let hex = &fx.store.layer_links["stale"][0];
    let link = format!("{v2}/repositories/stale/_layers/sha256/{hex}/link");
    // Every attribute is in the kernel's cache before the writes.
    let before = (chain_attrs(&fx.mnt, &deep), chain_attrs(&fx.mnt, &link));
    // Upper's directory times move on (a copied-up directory gains an entry).
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::create_dir(fx.mnt.join(&deep).join("new")).expect("mkdir deep in history");
    OpenOptions::new().append(true).open(fx.mnt.join(&link)).expect("open a history link for writing");
    let live = (chain_attrs(&fx.mnt, &deep), chain_attrs(&fx.mnt, &link));
    drop(m);
    // A fresh mount of the same upper has nothing cached: what it shows is
    // what the live mount must have shown.
    let m = fx.mount(&[]);
    let fresh = (chain_attrs(&fx.mnt, &deep), chain_attrs(&fx.mnt, &link));
    drop(m);
    assert_eq!(live.0, fresh.0, "after the mkdir, stale attributes were still cached");
    assert_eq!(live.1, fresh.1, "after the copy-up for writing, stale attributes were still cached");
    if !kernel_mode() {
        // The test tells something: the copies-up did change what was cached.
        assert_ne!(before.0, fresh.0, "the mkdir changed no attribute of the chain");
        assert_ne!(before.1, fresh.1, "the copy-up changed no attribute of the chain");
    }
    fx.assert_lower_unchanged();
}

#[test]
fn registry_style_writes_go_to_upper() {
    let fx = Fixture::new();
    let m = fx.mount(&[]);
    let v2 = fx.v2();
    // An upload: MkdirAll, create without O_TRUNC, ftruncate(0), write, fsync twice.
    let up = v2.join("repositories/app/_uploads/new-uuid");
    fs::create_dir_all(&up).unwrap();
    let mut f = OpenOptions::new().write(true).create(true).truncate(false).open(up.join("data")).unwrap();
    f.set_len(0).unwrap();
    f.write_all(b"new layer bytes").unwrap();
    f.sync_all().unwrap();
    f.sync_all().unwrap();
    drop(f);
    // Append, then read back.
    let mut f = OpenOptions::new().append(true).open(up.join("data")).unwrap();
    f.write_all(b" appended").unwrap();
    drop(f);
    assert_eq!(fs::read(up.join("data")).unwrap(), b"new layer bytes appended");
    // Upload end: rename across directories into blobs/.
    let hex = tree::sha256_hex(b"new layer bytes appended");
    let blob_dir = v2.join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
    fs::create_dir_all(&blob_dir).unwrap();
    fs::rename(up.join("data"), blob_dir.join("data")).unwrap();
    fs::remove_dir_all(&up).unwrap();
    // Links, a tag rewritten in place, a symlink, chmod and utimens.
    let link = v2.join(format!("repositories/app/_layers/sha256/{hex}/link"));
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    fs::write(&link, format!("sha256:{hex}")).unwrap();
    let tag = v2.join("repositories/app/_manifests/tags/2.0/current/link");
    fs::create_dir_all(tag.parent().unwrap()).unwrap();
    fs::write(&tag, "sha256:old").unwrap();
    let mut t = OpenOptions::new().write(true).open(&tag).unwrap();
    t.set_len(0).unwrap();
    t.write_all(format!("sha256:{hex}").as_bytes()).unwrap();
    drop(t);
    std::os::unix::fs::symlink("../data", v2.join("sym")).unwrap();
    assert_eq!(fs::read_link(v2.join("sym")).unwrap(), Path::new("../data"));
    fs::set_permissions(&link, fs::Permissions::from_mode(0o600)).unwrap();
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    fs::File::options().write(true).open(&link).unwrap().set_modified(when).unwrap();
    let meta = fs::metadata(&link).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.mtime()), (0o600, 1_000_000_000));
    assert_eq!(fs::metadata(blob_dir.join("data")).unwrap().len(), 24);
    // The history's _manifests stays hidden next to the new tag.
    assert_eq!(names(&v2.join("repositories/app/_manifests/tags")), ["2.0"]);
    m.umount();

    let expected_files = [
        format!("f docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]),
        format!("f docker/registry/v2/repositories/app/_layers/sha256/{hex}/link"),
        "f docker/registry/v2/repositories/app/_manifests/tags/2.0/current/link".to_string(),
        "l docker/registry/v2/sym".to_string(),
    ];
    let mut expected: Vec<_> = expected_files.to_vec();
    expected.sort();
    assert_eq!(fx.upper_written(), expected, "upper holds exactly what was written");
    // The registry recreated _manifests over a hidden lower one: it is opaque
    // in upper, so kernel overlay shows it the same way.
    let manifests = fx.upper.join("docker/registry/v2/repositories/app/_manifests");
    assert!(is_opaque(&manifests), "recreated _manifests must be opaque");
    // _uploads/new-uuid was created and removed; the hidden lower _uploads
    // gets a whiteout so it stays gone under kernel overlay too.
    let uploads = fx.upper.join("docker/registry/v2/repositories/app/_uploads");
    assert!(is_opaque(&uploads) || names(&uploads).is_empty(), "{:?}", fx.upper_shape());
    fx.assert_lower_unchanged();
}

fn is_opaque(dir: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|n| regfs::sys::lgetxattr(dir, n.as_ref()).ok().flatten().as_deref() == Some(b"y"))
}

fn is_whiteout(p: &Path) -> bool {
    match fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_char_device() && m.rdev() == 0 => true,
        Ok(m) if m.is_file() && m.len() == 0 => ["trusted.overlay.whiteout", "user.overlay.whiteout"]
            .iter()
            .any(|n| regfs::sys::lgetxattr(p, n.as_ref()).ok().flatten().is_some()),
        _ => false,
    }
}

#[test]
fn copy_up_keeps_data_and_metadata() {
    let fx = Fixture::new();
    let m = fx.mount(&[]);
    let (hex, data) = fx.store.blobs.iter().next().unwrap();
    let rel = blob_rel(hex);
    let before = fs::metadata(fx.lower.join(&rel)).unwrap();
    // Opening for write copies up; reading sees the same bytes, then the change.
    let mut f = OpenOptions::new().read(true).write(true).open(fx.mnt.join(&rel)).unwrap();
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert_eq!(&got, data);
    let after_open = fs::metadata(fx.mnt.join(&rel)).unwrap();
    assert_eq!(
        (after_open.mode(), after_open.mtime(), after_open.len()),
        (before.mode(), before.mtime(), before.len())
    );
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"X").unwrap();
    drop(f);
    let mut expected = data.clone();
    expected[0] = b'X';
    assert_eq!(fs::read(fx.mnt.join(&rel)).unwrap(), expected);
    // O_TRUNC through the view.
    let other = blob_rel(fx.store.blobs.keys().nth(1).unwrap());
    fs::write(fx.mnt.join(&other), b"short").unwrap();
    assert_eq!(fs::read(fx.mnt.join(&other)).unwrap(), b"short");
    m.umount();
    assert_eq!(fs::read(fx.upper.join(&rel)).unwrap(), expected);
    assert_eq!(fs::metadata(fx.upper.join(&rel)).unwrap().mode(), before.mode());
    fx.assert_lower_unchanged();
}

#[test]
fn deletes_leave_kernel_whiteouts() {
    let fx = Fixture::new();
    let m = fx.mount(&[]);
    let v2 = fx.v2();
    let (hex, _) = fx.store.blobs.iter().next().unwrap();
    fs::remove_file(fx.mnt.join(blob_rel(hex))).unwrap();
    assert_eq!(errno_of(fs::metadata(fx.mnt.join(blob_rel(hex)))), libc::ENOENT);
    fs::remove_dir(fx.mnt.join(blob_rel(hex)).parent().unwrap()).unwrap();
    // rm -rf of a lower repository through the view.
    fs::remove_dir_all(v2.join("repositories/stale")).unwrap();
    assert_eq!(names(&v2.join("repositories")), ["app", "team"]);
    // Re-creating a deleted name shows only the new content.
    fs::create_dir_all(v2.join("repositories/stale/_layers")).unwrap();
    assert_eq!(names(&v2.join("repositories/stale")), ["_layers"]);
    assert_eq!(names(&v2.join("repositories/stale/_layers")), Vec::<String>::new());
    m.umount();
    let blob_dir = fx.upper.join(blob_rel(hex));
    assert!(is_whiteout(blob_dir.parent().unwrap()), "blob dir must be a whiteout");
    let stale = fx.upper.join("docker/registry/v2/repositories/stale");
    assert!(stale.is_dir() && is_opaque(&stale), "re-created stale must be an opaque dir");
    fx.assert_lower_unchanged();
}

#[test]
fn errors_map_to_the_right_errno() {
    let fx = Fixture::new();
    let m = fx.mount(&[]);
    let v2 = fx.v2();
    assert_eq!(errno_of(fs::metadata(v2.join("nope"))), libc::ENOENT);
    assert_eq!(errno_of(fs::create_dir(v2.join("repositories/app"))), libc::EEXIST);
    assert_eq!(errno_of(fs::remove_dir(v2.join("repositories/app"))), libc::ENOTEMPTY);
    // Renaming a directory that has lower content: EXDEV, as kernel overlay
    // without redirect_dir (mv falls back to copying).
    assert_eq!(errno_of(fs::rename(v2.join("repositories/app"), v2.join("repositories/moved"))), libc::EXDEV);
    // Renaming a directory that lives only in upper works.
    fs::create_dir_all(v2.join("fresh/sub")).unwrap();
    fs::write(v2.join("fresh/sub/f"), b"1").unwrap();
    fs::rename(v2.join("fresh"), v2.join("moved")).unwrap();
    assert_eq!(fs::read(v2.join("moved/sub/f")).unwrap(), b"1");
    assert_eq!(errno_of(fs::remove_file(v2.join("repositories"))), libc::EISDIR);
    assert_eq!(errno_of(fs::read_dir(v2.join("blobs/sha256/zz"))), libc::ENOENT);
    let f = OpenOptions::new().write(true).create_new(true).open(v2.join("moved/sub/f"));
    assert_eq!(f.map(|_| ()).unwrap_err().kind(), ErrorKind::AlreadyExists);
    // Nothing from the read-only history leaks EROFS: writes to lower files work.
    let (hex, _) = fx.store.blobs.iter().next().unwrap();
    fs::OpenOptions::new().append(true).open(fx.mnt.join(blob_rel(hex))).unwrap().write_all(b"+").unwrap();
    m.umount();
    fx.assert_lower_unchanged();
}

#[test]
fn recreated_manifests_stay_curated_after_remount() {
    let fx = Fixture::new();
    let m = fx.mount(&[]);
    let tags = fx.v2().join("repositories/team/api/_manifests/tags");
    fs::create_dir_all(tags.join("v3/current")).unwrap();
    fs::write(tags.join("v3/current/link"), b"sha256:x").unwrap();
    assert_eq!(names(&tags), ["v3"], "history tags v1, v2 must stay hidden");
    m.umount();
    let m = fx.mount(&[]);
    assert_eq!(names(&tags), ["v3"], "after remount");
    assert_eq!(fs::read(tags.join("v3/current/link")).unwrap(), b"sha256:x");
    assert_eq!(names(&fx.v2().join("repositories/team/api")), ["_layers", "_manifests"]);
    m.umount();
    fx.assert_lower_unchanged();
}

#[test]
fn keep_file_hides_stale_repositories() {
    let fx = Fixture::new();
    let keep = fx.upper.parent().unwrap().join("keep.txt");
    fs::write(&keep, "# release 42\napp:1.1\nteam/api:v2\n").unwrap();
    let m = fx.mount(&["--keep", keep.to_str().unwrap()]);
    let repos = fx.v2().join("repositories");
    assert_eq!(names(&repos), ["app", "team"]);
    assert_eq!(names(&repos.join("team")), ["api"]);
    assert_eq!(errno_of(fs::metadata(repos.join("stale"))), libc::ENOENT);
    assert_eq!(errno_of(fs::metadata(repos.join("team/web/_layers"))), libc::ENOENT);
    // Blobs of hidden repositories stay visible: pushes still skip them.
    for hex in &fx.store.layer_links["stale"] {
        assert!(fx.mnt.join(blob_rel(hex)).exists());
    }
    // A push to a hidden repository starts it afresh.
    fs::create_dir_all(repos.join("stale/_layers/sha256")).unwrap();
    assert_eq!(names(&repos.join("stale/_layers/sha256")), Vec::<String>::new());
    m.umount();
    // Hiding is virtual in FUSE mode: nothing is written for hidden
    // repositories. Kernel mode needs exactly one whiteout for each.
    let upper = fx.upper_shape();
    let marks: Vec<_> = upper.iter().filter(|l| l.contains("team/web")).collect();
    if kernel_mode() {
        assert_eq!(marks, ["c docker/registry/v2/repositories/team/web"], "{upper:?}");
    } else {
        assert!(marks.is_empty(), "{upper:?}");
    }
    fx.assert_lower_unchanged();
}

#[test]
fn several_lowers_merge_topmost_first() {
    let fx = Fixture::new();
    let older = fx.upper.parent().unwrap().join("older");
    let old_store = tree::write_store(
        &older,
        &[RepoSpec { name: "legacy", tags: &["1"] }, RepoSpec { name: "app", tags: &["0.9"] }],
        "r0",
    );
    // The same path in both lowers: the first --lower wins.
    let shared = "docker/registry/v2/shadowed";
    fs::write(fx.lower.join(shared), b"top").unwrap();
    fs::write(older.join(shared), b"bottom").unwrap();
    let before_top = tree::snapshot(&fx.lower);
    let before_older = tree::snapshot(&older);
    let m = Mount::fuse(&[&fx.lower, &older], &fx.upper, &fx.mnt, &[]);
    assert_eq!(fs::read(fx.mnt.join(shared)).unwrap(), b"top");
    assert_eq!(names(&fx.v2().join("repositories")), ["app", "legacy", "stale", "team"]);
    for hex in old_store.blobs.keys().chain(fx.store.blobs.keys()) {
        assert!(fx.mnt.join(blob_rel(hex)).is_file(), "blob {hex} of either lower is visible");
    }
    let mut app_links = names(&fx.v2().join("repositories/app/_layers/sha256"));
    app_links.sort();
    let mut expected: Vec<_> =
        fx.store.layer_links["app"].iter().chain(&old_store.layer_links["app"]).cloned().collect();
    expected.sort();
    expected.dedup();
    assert_eq!(app_links, expected, "_layers merges across lowers");
    m.umount();
    assert_eq!(tree::snapshot(&fx.lower), before_top);
    assert_eq!(tree::snapshot(&older), before_older);
}

#[test]
fn bad_layers_are_refused_with_clear_errors() {
    let fx = Fixture::new();
    let not_registry = fx.upper.parent().unwrap().join("plain");
    fs::create_dir_all(&not_registry).unwrap();
    let err = Mount::try_fuse(&[&not_registry], &fx.upper, &fx.mnt, &[]).err().expect("must fail");
    assert!(err.contains("not a registry rootdirectory"), "{err}");
    let inside = fx.lower.join("docker/upper");
    let err = Mount::try_fuse(&[&fx.lower], &inside, &fx.mnt, &[]).err().expect("must fail");
    assert!(err.contains("overlap"), "{err}");
    assert!(!inside.exists(), "nothing may be created inside a lower");
    let keep = fx.upper.parent().unwrap().join("keep.txt");
    fs::write(&keep, "app\nNot A Repo\n").unwrap();
    let err = Mount::try_fuse(&[&fx.lower], &fx.upper, &fx.mnt, &["--keep", keep.to_str().unwrap()])
        .err()
        .expect("must fail");
    assert!(err.contains("keep.txt:2"), "{err}");
    // Two mounts of one upper are refused.
    let m = fx.mount(&[]);
    let mnt2 = fx.upper.parent().unwrap().join("mnt2");
    let err = Mount::try_fuse(&[&fx.lower], &fx.upper, &mnt2, &[]).err().expect("second mount of one upper must fail");
    assert!(err.contains("in use"), "{err}");
    m.umount();
    fx.assert_lower_unchanged();
}

/// The daemon's log is kept while it runs and removed after a clean
/// unmount, so the runtime dir does not fill up with one log per mount.
#[test]
fn a_clean_unmount_leaves_no_daemon_log() {
    let f = Fixture::new();
    let m = f.mount(&["--mode", "fuse"]);
    let log = m
        .stderr
        .split("log ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no log named in {:?}", m.stderr));
    assert!(log.is_file(), "{} while mounted", log.display());
    let out = m.umount();
    assert!(out.status.success());
    assert!(!log.exists(), "{} left after a clean unmount", log.display());
    f.assert_lower_unchanged();
}

#[test]
fn foreground_mount_unmounts_on_sigterm() {
    let fx = Fixture::new();
    fs::create_dir_all(&fx.mnt).unwrap();
    let mut child = std::process::Command::new(support::mount::regfs_bin())
        .args(["mount", "--foreground", "--lower"])
        .arg(&fx.lower)
        .arg("--upper")
        .arg(&fx.upper)
        .arg(&fx.mnt)
        .spawn()
        .expect("spawn regfs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !fx.mnt.join("docker").exists() {
        assert!(std::time::Instant::now() < deadline, "foreground mount not ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    fs::write(fx.v2().join("written"), b"1").unwrap();
    regfs::sys::kill(child.id(), libc::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!fx.mnt.join("docker").exists(), "still mounted after SIGTERM");
    assert_eq!(fs::read(fx.upper.join("docker/registry/v2/written")).unwrap(), b"1");
    fx.assert_lower_unchanged();
}

#[test]
fn parallel_reads_of_one_history_file_with_passthrough() {
    // As root (CAP_SYS_ADMIN) the kernel reads history files directly and
    // every open of one file shares its single backing; unprivileged, the
    // flag is ignored and reads go through regfs. Either way all readers
    // get every byte.
    let fx = Fixture::new();
    let (hex, data) = fx.store.blobs.iter().next().unwrap();
    let rel = blob_rel(hex);
    let m = fx.mount(&["--passthrough"]);
    let path = fx.mnt.join(&rel);
    let held = fs::File::open(&path).unwrap();
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..8).map(|_| s.spawn(|| fs::read(&path))).collect();
        for r in readers {
            assert_eq!(&r.join().unwrap().unwrap(), data);
        }
    });
    drop(held);
    assert_eq!(&fs::read(&path).unwrap(), data, "a read after every handle closed");
    m.umount();
    fx.assert_lower_unchanged();
}
