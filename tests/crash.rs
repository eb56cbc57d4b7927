//! Crashes: regfs never writes the history, never loses a pushed blob, and
//! whatever a SIGKILL interrupts is finished by running it again.
//!
//! - the FUSE daemon killed in the middle of a skopeo push through a stock
//!   registry: `regfs umount` detaches the dead (and busy) mount, fails
//!   saying the daemon died and the upper is intact; the same upper mounts
//!   again, the push re-run completes, and gc + export give a tar
//!   byte-identical to an uninterrupted run on a fresh upper;
//! - `regfs gc --delete-untagged` killed before each of a spread of its
//!   deletions: re-running it finishes the job (never "a manifest has no
//!   data") and the export is byte-identical to an uninterrupted gc's;
//! - `regfs export` killed part way: the target keeps what it held, the
//!   temporary tar beside it is not the target and is removed by the next
//!   export (unless a live export holds it), which writes the same tar.
//!
//! gc and export are stopped at exact points by the `REGFS_TEST_PAUSE` hook
//! (see `src/testhook.rs`) and killed there by pid. Every test compares a
//! snapshot of each lower (names, modes, contents, xattrs) before and after,
//! after the killed runs too. Nothing here needs root.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};
use support::fixtures;

use fixtures::{V2, copy_tree, file_sha, regfs_layers, regfs_ok, text};
use support::mount::{Mount, is_mountpoint};
use support::oci::{self, ImageRef, ImageSpec};
use support::pause::{Paused, kill, run_to_pause};
use support::registry::Registry;
use support::release::{self, SkopeoCache, StoreFiles};
use support::tree::{self, RepoSpec, assert_unchanged};

/// Waits (up to 10 s) until process `pid` is gone.
fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while regfs::sys::process_alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still alive 10 s after SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `regfs ARGS` with `REGFS_TEST_PAUSE=POINT:N` and returns it once
/// it says it paused there; panics with its output if it ends first.
fn run_until_pause(args: &[String], point: &str, n: u64) -> Child {
    match run_to_pause(args, point, n) {
        Paused::At(child) => child,
        Paused::Ended(status, log) => {
            panic!("regfs {} ended ({status}) without pausing at {point} {n}:\n{log}", args.join(" "))
        }
    }
}

fn args(sub: &str, lowers: &[&Path], upper: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = vec![sub.to_string()];
    v.extend(fixtures::layer_args(lowers, upper));
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// `regfs gc` then `regfs export -o tar`, both asserted to succeed.
/// The tars compared here have different file names: one release name
/// (which the bundle records) for all.
fn finish(lowers: &[&Path], upper: &Path, gc_extra: &[&str], tar: &Path) {
    regfs_ok("gc", lowers, upper, gc_extra);
    regfs_ok("export", lowers, upper, &["-o", tar.to_str().expect("UTF-8 path"), "--name", "release"]);
}

/// Pushes `images` (all platforms) through a registry serving `root`, the
/// copies run in parallel; the registry must log no error.
fn push_all(root: &Path, images: &[ImageRef]) {
    let registry = Registry::start(root);
    release::push_release(&registry, images, &SkopeoCache::new());
    release::assert_clean_log(&registry);
    registry.stop();
}

/// Whether an upload of at least `min` bytes is in flight in `repo` (its
/// `_uploads/<uuid>/data` in upper).
fn upload_in_flight(upper: &Path, repo: &str, min: u64) -> bool {
    let dir = upper.join(V2).join("repositories").join(repo).join("_uploads");
    let Ok(sessions) = fs::read_dir(dir) else { return false };
    sessions.flatten().any(|s| fs::metadata(s.path().join("data")).is_ok_and(|m| m.len() >= min))
}

/// Size of the layer whose upload is in flight when the daemon is killed:
/// large enough that the kill lands while the registry streams it to
/// `_uploads` through the mount, with every other write of the push done.
const BIG_LAYER: usize = 64 << 20;
/// The kill is sent once this much of it has reached upper.
const KILL_AT: u64 = 4 << 20;

#[test]
fn killed_daemon_mid_push_is_detached_and_the_rerun_push_gives_the_same_release() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let history_images = oci::write_release(&w.join("layouts-r1"), &oci::release_set(1, 4, 2));
    let mut images = oci::write_release(&w.join("layouts-r2"), &oci::release_set(2, 4, 2));
    let big_spec = ImageSpec {
        layers: vec![oci::layer_bytes("crash-small", 8 << 10), oci::layer_bytes("crash-big", BIG_LAYER)],
        config_seed: "crash-big".into(),
    };
    let big = oci::write_image(&oci::layout_dir(&w.join("layouts-big"), "big/app"), "big/app", "r2", &big_spec);
    drop(big_spec);
    let history = w.join("history");
    release::build_history(&history, &history_images, &SkopeoCache::new());
    let before = tree::snapshot(&history);
    let (upper, mnt) = (w.join("upper"), w.join("mnt"));

    // The release images, then the big one, killed while its layer uploads.
    let mount = Mount::fuse(&[&history], &upper, &mnt, &["--mode", "fuse"]);
    let daemon = mount.daemon_pid();
    let registry = Registry::start(&mnt);
    let cache = SkopeoCache::new();
    release::push_release(&registry, &images, &cache);
    // Held across the kill: the dead mount is busy, as a registry's open
    // file or a shell's cwd would make it.
    let busy = fs::File::open(mnt.join(V2)).expect("opening the view");
    let (left, ended) = std::thread::scope(|s| {
        let push = s.spawn(|| cache.copy(&big.oci_reference(), &registry.reference(&big.repo, &big.tag), &["--all"]));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !upload_in_flight(&upper, &big.repo, KILL_AT) {
            assert!(!push.is_finished(), "the push of {BIG_LAYER} bytes ended before the kill could land");
            assert!(Instant::now() < deadline, "no upload of {} in upper after 60 s", big.repo);
            std::thread::sleep(Duration::from_millis(2));
        }
        regfs::sys::kill(daemon, libc::SIGKILL).expect("kill -9 the regfs daemon");
        wait_gone(daemon);
        let ended = push.join().expect("push thread");
        (upload_in_flight(&upper, &big.repo, 0), ended)
    });
    assert!(left, "the interrupted upload is left in upper's _uploads");
    assert!(ended.is_err(), "the push must fail once the daemon is dead: {ended:?}");
    registry.stop();
    assert_unchanged(&history, &before, "after the daemon was killed");

    // Nothing pushed before the kill is lost.
    let written = StoreFiles::of(&upper);
    let expected = release::expected_push_files(&history_images, &images);
    let lost: Vec<_> = expected.difference(&written.files).collect();
    assert!(lost.is_empty(), "pushed before the kill but missing from upper: {lost:#?}");
    for digest in written.blobs() {
        let hex = oci::digest_hex(&digest);
        let data = upper.join(format!("{V2}/blobs/sha256/{}/{hex}/data", &hex[..2]));
        assert_eq!(file_sha(&data), hex, "{} does not hash to its digest", data.display());
    }

    // Mounting over the dead mount says what to do first.
    let mut over = args("mount", &[&history], &upper, &["--mode", "fuse"]);
    over.push(mnt.display().to_string());
    let over = fixtures::regfs(&over);
    assert!(!over.status.success(), "mounting over a dead mount must fail:\n{}", text(&over));
    assert!(String::from_utf8_lossy(&over.stderr).contains("its daemon died; run `regfs umount"), "{}", text(&over));

    // umount: the dead, busy mount is detached; non-zero, saying why.
    let out = mount.umount_status();
    let err = String::from_utf8_lossy(&out.stderr);
    let still_mounted = is_mountpoint(&mnt);
    if still_mounted {
        support::mount::detach(&mnt);
    }
    assert!(!still_mounted, "{} is still mounted after regfs umount:\n{}", mnt.display(), text(&out));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for want in [
        format!("daemon (pid {daemon}) had died"),
        "detached".into(),
        "upper is intact".into(),
        "mounting the same".into(),
    ] {
        assert!(err.contains(&want), "{want:?} missing from regfs umount's message:\n{err}");
    }
    drop(busy);

    // The same upper mounts again (on the same mountpoint), the push is
    // re-run whole, and gc + export finish the release.
    images.push(big);
    let mount = Mount::fuse(&[&history], &upper, &mnt, &["--mode", "fuse"]);
    push_all(&mnt, &images);
    mount.umount();
    let recovered = w.join("recovered.tar");
    finish(&[&history], &upper, &[], &recovered);
    assert_unchanged(&history, &before, "after the re-run");

    // An uninterrupted run on a fresh upper gives the same bytes.
    let (fresh, fresh_mnt) = (w.join("fresh-upper"), w.join("fresh-mnt"));
    let mount = Mount::fuse(&[&history], &fresh, &fresh_mnt, &["--mode", "fuse"]);
    push_all(&fresh_mnt, &images);
    mount.umount();
    let reference = w.join("reference.tar");
    finish(&[&history], &fresh, &[], &reference);
    assert_eq!(file_sha(&recovered), file_sha(&reference), "the recovered release differs from an uninterrupted one");
    let big_hex = oci::digest_hex(&images.last().expect("big").manifests[0].layers[1]).to_string();
    let entries = tar_paths(&recovered);
    assert!(
        entries.contains(&format!("{V2}/blobs/sha256/{}/{big_hex}/data", &big_hex[..2])),
        "the big layer is in the tar"
    );
    assert!(!entries.iter().any(|p| p.contains("_uploads")), "uploads in the release tar");
    assert_unchanged(&history, &before, "at the end");
}

fn tar_paths(tar: &Path) -> BTreeSet<String> {
    let mut a = tar::Archive::new(fs::File::open(tar).expect("open tar"));
    a.entries()
        .expect("tar entries")
        .map(|e| {
            e.expect("tar entry").path().expect("entry path").display().to_string().trim_end_matches('/').to_string()
        })
        .collect()
}

/// A release upper with work for `gc --delete-untagged` of every kind: over
/// a history of release 1 (6 images), release 2 and then release 3 of 5 of
/// them pushed to tag `cur` through the mount. The images release 3 changes
/// leave untagged manifests (and blobs only they use) in upper; image 5's
/// repository is stale; history blobs nothing uses get whiteouts.
struct PushedRelease {
    work: tempfile::TempDir,
    history: PathBuf,
    upper: PathBuf,
}

impl PushedRelease {
    fn new() -> PushedRelease {
        let work = tempfile::tempdir().expect("tempdir");
        let w = work.path();
        let r1 = oci::write_release(&w.join("r1"), &oci::release_set(1, 6, 3));
        let r2 = oci::write_release(&w.join("r2"), &oci::release_set(2, 5, 3));
        let r3 = oci::write_release(&w.join("r3"), &oci::release_set(3, 5, 3));
        let history = w.join("history");
        release::build_history(&history, &r1, &SkopeoCache::new());
        let upper = w.join("upper");
        let mount = Mount::fuse(&[&history], &upper, &w.join("mnt"), &["--mode", "fuse"]);
        let registry = Registry::start(&mount.mountpoint);
        let cache = SkopeoCache::new();
        for set in [&r2, &r3] {
            release::parallel(set, |i| cache.copy(&i.oci_reference(), &registry.reference(&i.repo, "cur"), &["--all"]));
        }
        release::assert_clean_log(&registry);
        registry.stop();
        mount.umount();
        PushedRelease { work, history, upper }
    }

    /// A copy of the pushed upper (whiteouts, xattrs and all).
    fn copy(&self, name: &str) -> PathBuf {
        let dst = self.work.path().join(name);
        copy_tree(&self.upper, &dst);
        dst
    }
}

#[test]
fn gc_killed_at_any_deletion_is_finished_by_running_it_again() {
    let fx = PushedRelease::new();
    let before = tree::snapshot(&fx.history);
    let lowers: &[&Path] = &[&fx.history];
    let gc_args = ["--delete-untagged"];

    let dry = regfs_ok("gc", lowers, &fx.upper, &["--delete-untagged", "--dry-run", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&dry.stdout).expect("gc --json");
    let kinds: Vec<String> =
        plan["plan"].as_array().expect("plan").iter().map(|d| d["kind"].as_str().expect("kind").to_string()).collect();
    for kind in ["blob", "manifest", "tag_history", "repository", "layer_link", "empty_dir"] {
        assert!(kinds.iter().any(|k| k == kind), "the fixture gives gc no {kind} to delete: {kinds:?}");
    }
    let total = kinds.len() as u64;
    // Points: first and last deletion, either side of each change of kind,
    // and a spread in between. Point k = k-1 deletions done.
    let mut points: BTreeSet<u64> = [1, 2, total].into();
    for i in 1..kinds.len() {
        if kinds[i] != kinds[i - 1] {
            points.extend([i as u64, i as u64 + 1, i as u64 + 2]);
        }
    }
    points.extend((1..=10).map(|s| s * total / 10));
    points.retain(|&k| (1..=total).contains(&k));

    let reference_upper = fx.copy("reference-upper");
    let reference = fx.work.path().join("reference.tar");
    finish(lowers, &reference_upper, &gc_args, &reference);
    let want = file_sha(&reference);

    for &k in &points {
        let upper = fx.copy(&format!("upper-{k}"));
        kill(run_until_pause(&args("gc", lowers, &upper, &gc_args), "gc-delete", k));
        assert_unchanged(&fx.history, &before, &format!("gc killed before deletion {k} of {total}"));
        let tar = fx.work.path().join(format!("gc-{k}.tar"));
        let rerun = regfs_layers("gc", lowers, &upper, &gc_args);
        assert!(
            rerun.status.success(),
            "gc killed before deletion {k} of {total} ({}): the re-run fails:\n{}",
            kinds[k as usize - 1],
            text(&rerun)
        );
        let again = regfs_ok("gc", lowers, &upper, &["--delete-untagged", "--dry-run", "--json"]);
        let again: serde_json::Value = serde_json::from_slice(&again.stdout).expect("gc --json");
        assert_eq!(again["plan"].as_array().map(Vec::len), Some(0), "k={k}: a third gc still finds work: {again:#}");
        regfs_ok("export", lowers, &upper, &["-o", tar.to_str().expect("UTF-8"), "--name", "release"]);
        assert_eq!(file_sha(&tar), want, "gc killed before deletion {k} of {total}, re-run: a different release tar");
        fs::remove_dir_all(&upper).expect("removing a copy");
    }
    eprintln!("gc killed at {} of {total} deletions ({points:?}); every re-run gave the same tar", points.len());
    assert_unchanged(&fx.history, &before, "at the end");
}

/// `.NAME.XXXXXX.partial` files in `dir`: the temporary tars of exports to `dir/NAME`.
fn partials(dir: &Path, name: &str) -> Vec<PathBuf> {
    let prefix = format!(".{name}.");
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("readdir")
        .flatten()
        .filter(|e| {
            e.file_name().to_string_lossy().starts_with(&prefix)
                && e.file_name().to_string_lossy().ends_with(".partial")
        })
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

#[test]
fn export_killed_midway_leaves_no_tar_and_the_next_run_cleans_up() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let lower = w.join("history");
    tree::write_store(
        &lower,
        &[RepoSpec { name: "app", tags: &["1.0"] }, RepoSpec { name: "team/web", tags: &["2"] }],
        "h",
    );
    let before = tree::snapshot(&lower);
    let upper = w.join("upper");
    let (s, _, _) = fixtures::app_store(&upper);
    // Big enough that the tar writer's 1 MiB buffer has reached the temporary file.
    let big = s.blob(&vec![7u8; 3 << 20]);
    let lowers: &[&Path] = &[&lower];
    let out_dir = w.join("out");
    fs::create_dir(&out_dir).expect("mkdir out");
    let target = out_dir.join("release.tar");
    let target_arg = target.to_str().expect("UTF-8").to_string();
    let export_args = args("export", lowers, &upper, &["-o", &target_arg]);

    let reference = w.join("reference.tar");
    regfs_ok("export", lowers, &upper, &["-o", reference.to_str().expect("UTF-8"), "--name", "release"]);
    let want = file_sha(&reference);
    let entries = tar_paths(&reference).len() as u64;
    let big_path = format!("{V2}/blobs/sha256/{}/{big}/data", &big[..2]);
    assert!(tar_paths(&reference).contains(&big_path));

    // Killed early (nothing at the target yet) and late (an older tar there).
    let old = b"the release tar of an earlier export".to_vec();
    for (k, earlier) in [(2, None), (entries, Some(&old))] {
        let _ = fs::remove_file(&target);
        if let Some(bytes) = earlier {
            fs::write(&target, bytes).expect("writing the earlier tar");
        }
        kill(run_until_pause(&export_args, "export-entry", k));
        match earlier {
            None => assert!(!target.exists(), "killed before entry {k}: a tar appeared at the target"),
            Some(bytes) => assert_eq!(
                &fs::read(&target).expect("reading the target"),
                bytes,
                "killed before entry {k}: the target changed"
            ),
        }
        let left = partials(&out_dir, "release.tar");
        assert_eq!(left.len(), 1, "killed before entry {k}: temporary tars {left:?}");
        if k == entries {
            assert!(fs::metadata(&left[0]).expect("stat").len() > 1 << 20, "the late kill left a partly written tar");
        }
        assert_unchanged(&lower, &before, &format!("export killed before entry {k}"));

        // The next export removes the leftover and writes the same tar.
        regfs_ok("export", lowers, &upper, &["-o", &target_arg]);
        assert_eq!(file_sha(&target), want, "export after a killed one: a different tar");
        assert_eq!(
            partials(&out_dir, "release.tar"),
            Vec::<PathBuf>::new(),
            "the leftover temporary tar was not removed"
        );
    }

    // A live export's temporary tar is locked: an export of another upper
    // to the same target leaves it alone (and the killed one's is then
    // removed by the next run).
    let other = w.join("other-upper");
    copy_tree(&upper, &other);
    let live = run_until_pause(&export_args, "export-entry", 3);
    let held = partials(&out_dir, "release.tar");
    assert_eq!(held.len(), 1, "{held:?}");
    regfs_ok("export", lowers, &other, &["-o", &target_arg]);
    assert_eq!(partials(&out_dir, "release.tar"), held, "a live export's temporary tar was removed");
    assert_eq!(file_sha(&target), want);
    kill(live);
    regfs_ok("export", lowers, &upper, &["-o", &target_arg]);
    assert_eq!(partials(&out_dir, "release.tar"), Vec::<PathBuf>::new());
    assert_eq!(file_sha(&target), want);
    assert_unchanged(&lower, &before, "at the end");
}

/// `--fsync finalize`: a marker naming the boot sits in upper (hidden from
/// the view) while the mount may hold unsynced data and is gone after a
/// clean unmount. A daemon killed meanwhile leaves it; the next taker of
/// the upper in the same boot syncs and clears it. One from another boot
/// (the machine went down before the sync) makes mount and gc refuse the
/// upper, saying what to do.
#[test]
fn fsync_finalize_marks_upper_until_synced_and_refuses_it_after_a_machine_crash() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let history = tmp.path().join("history");
    tree::write_store(&history, &[RepoSpec { name: "app", tags: &["1.0"] }], "r1");
    let before = tree::snapshot(&history);
    let upper = tmp.path().join("upper");
    fs::create_dir_all(&upper).expect("mkdir upper");
    let mnt = tmp.path().join("mnt");
    let marker = upper.join(regfs::durability::MARKER);
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    let finalize = ["--mode", "fuse", "--fsync", "finalize"];

    let m = Mount::fuse(&[&history], &upper, &mnt, &finalize);
    assert_eq!(fs::read_to_string(&marker).expect("marker while mounted").trim(), boot.trim());
    let root: Vec<_> = fs::read_dir(&mnt).expect("listing the view root").map(|e| e.unwrap().file_name()).collect();
    assert_eq!(root, vec![std::ffi::OsString::from("docker")], "the marker is not part of the view");
    let written = mnt.join(V2).join("written-while-finalize");
    fs::write(&written, b"kept\n").expect("writing through the mount");
    // The first fsync tells the kernel to answer the rest itself (ENOSYS);
    // every one succeeds, on files and directories alike.
    for _ in 0..2 {
        fs::File::open(&written).and_then(|f| f.sync_all()).expect("fsync through the mount");
        fs::File::open(mnt.join(V2)).and_then(|d| d.sync_all()).expect("fsync of a directory through the mount");
    }
    m.umount();
    assert!(!marker.exists(), "a clean unmount syncs upper and removes the marker");
    assert_eq!(fs::read(upper.join(V2).join("written-while-finalize")).expect("in upper"), b"kept\n");

    // The daemon killed: the marker stays; gc (same boot) syncs and clears it.
    let m = Mount::fuse(&[&history], &upper, &mnt, &finalize);
    fs::write(mnt.join(V2).join("second"), b"also kept\n").expect("writing through the mount");
    let daemon = m.daemon_pid();
    regfs::sys::kill(daemon, libc::SIGKILL).expect("kill -9 the regfs daemon");
    wait_gone(daemon);
    let out = m.umount_status();
    assert!(!is_mountpoint(&mnt), "the dead mount is detached:\n{}", text(&out));
    assert!(marker.exists(), "a killed finalize mount leaves its marker");
    regfs_ok("gc", &[&history], &upper, &["--dry-run"]);
    assert!(!marker.exists(), "the next taker of upper in the same boot syncs it and removes the marker");
    assert_eq!(fs::read(upper.join(V2).join("second")).expect("in upper"), b"also kept\n");

    // A marker from another boot: refused until the user decides.
    fs::write(&marker, b"00000000-0000-4000-8000-000000000000\n").expect("faking an earlier boot");
    let gc = fixtures::regfs_layers("gc", &[&history], &upper, &["--dry-run"]);
    assert!(!gc.status.success(), "gc must refuse an unsynced upper of an earlier boot:\n{}", text(&gc));
    let said = String::from_utf8_lossy(&gc.stderr);
    assert!(said.contains("went down") && said.contains(regfs::durability::MARKER), "{}", text(&gc));
    let refused = Mount::try_fuse(&[&history], &upper, &mnt, &["--mode", "fuse"]);
    assert!(refused.as_ref().is_err_and(|e| e.contains("went down")), "mount must refuse it too: {:?}", refused.err());
    fs::remove_file(&marker).expect("the user vouches for the upper");
    let m = Mount::fuse(&[&history], &upper, &mnt, &["--mode", "fuse"]);
    // `--fsync full` syncs what upper holds: a directory only history has
    // holds nothing unsynced, one upper has is synced.
    let fresh = mnt.join(V2).join("fresh");
    fs::create_dir(&fresh).expect("mkdir through the mount");
    assert!(!upper.join("docker/registry/v2/blobs").exists(), "blobs/ is history's alone here");
    for dir in [mnt.join("docker/registry/v2/blobs"), fresh] {
        fs::File::open(&dir).and_then(|d| d.sync_all()).unwrap_or_else(|e| panic!("fsync of {}: {e}", dir.display()));
    }
    m.umount();
    assert_unchanged(&history, &before, "after the finalize mounts");

    // Only the FUSE front end can defer fsyncs; asking the kernel is an error.
    let kernel = Mount::try_fuse(&[&history], &upper, &mnt, &["--mode", "kernel", "--fsync", "finalize"]);
    assert!(
        kernel.as_ref().is_err_and(|e| e.contains("needs the FUSE front end")),
        "--mode kernel --fsync finalize must be refused: {:?}",
        kernel.err()
    );
    assert!(!marker.exists(), "a refused mount leaves no marker");
}
