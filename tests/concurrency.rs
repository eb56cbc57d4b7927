//! Concurrency: many writers through one mount, several mounts over one
//! history, and what must be refused while a mount uses an upper.
//!
//! - 8 skopeo pushes at once through one registry on one mount: upper holds
//!   exactly what the release adds over the history, every file with the
//!   right content, and every image pulls back whole after a remount;
//! - two mounts over the same history with separate uppers, pushed to at
//!   the same time through two registries: each upper holds exactly its own
//!   release, each view serves only its own tags, both pull back whole;
//! - `regfs gc`, `regfs export` and `regfs absorb` refuse an upper a live
//!   mount uses, and a second mount of it is refused in either mode
//!   (`--mode fuse` and `--mode kernel`), writing nothing.
//!
//! The mounts use `REGFS_TEST_MODE` (FUSE by default; scripts/test.sh runs
//! this suite in kernel mode too, as root), so the refusals are checked for
//! every pair of modes: FUSE first (here, also unprivileged) and kernel
//! first (the kernel pass). The history lowers are compared byte for byte
//! before and after every test.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use support::fixtures;

use fixtures::{V2, empty_root, regfs_layers, text};
use support::mount::{Mount, is_mountpoint, test_mode};
use support::oci::{self, ImageRef};
use support::registry::{self, CopyOutput, Registry};
use support::release::{self, Pulled, SkopeoCache, StoreFiles};
use support::tree::{self, RepoSpec, assert_unchanged};

/// Skopeo copies at once through one mount.
const PARALLEL_PUSHES: usize = 8;

/// Copies every image at once (one thread and one skopeo each); panics
/// with every failure.
fn push_at_once(registry: &Registry, images: &[ImageRef], cache: &SkopeoCache) -> Vec<CopyOutput> {
    let results: Vec<Result<CopyOutput, String>> = std::thread::scope(|s| {
        let pushes: Vec<_> = images
            .iter()
            .map(|image| {
                s.spawn(move || {
                    cache.copy(&image.oci_reference(), &registry.reference(&image.repo, &image.tag), &["--all"])
                })
            })
            .collect();
        pushes.into_iter().map(|p| p.join().expect("push thread")).collect()
    });
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(errors.is_empty(), "{} of {} parallel pushes failed:\n{errors:#?}", errors.len(), images.len());
    results.into_iter().map(|r| r.expect("checked")).collect()
}

/// Upper holds exactly what pushing `release` over `history` writes (plus,
/// in kernel mode, the policy's whiteouts; none in FUSE mode), each file
/// with the right content: blob data hashing to its digest, every link
/// naming the digest its path says, each tag naming its image.
fn assert_upper_holds(upper: &Path, history: &[ImageRef], release: &[ImageRef], what: &str) {
    let written = StoreFiles::of(upper);
    let expected = release::expected_push_files(history, release);
    let extra: Vec<_> = written.files.difference(&expected).collect();
    let missing: Vec<_> = expected.difference(&written.files).collect();
    assert!(extra.is_empty() && missing.is_empty(), "{what}: upper differs\nextra: {extra:#?}\nmissing: {missing:#?}");
    if test_mode() == "fuse" {
        assert!(written.whiteouts.is_empty(), "{what}: a push whited out {:#?}", written.whiteouts);
    }
    let tags: BTreeSet<(String, String, String)> =
        release.iter().map(|i| (i.repo.clone(), i.tag.clone(), i.digest.clone())).collect();
    for rel in &written.files {
        let content = fs::read(upper.join(rel)).unwrap_or_else(|e| panic!("{what}: reading {rel}: {e}"));
        let parts: Vec<&str> = rel.split('/').collect();
        if rel.ends_with("/data") && rel.contains("/blobs/sha256/") {
            assert_eq!(tree::sha256_hex(&content), parts[parts.len() - 2], "{what}: {rel} does not hash to its digest");
        } else if rel.ends_with("/current/link") {
            let (repo, tag) = tag_of(rel);
            assert!(
                tags.contains(&(repo.clone(), tag.clone(), String::from_utf8_lossy(&content).into_owned())),
                "{what}: {rel} names {:?}, not {repo}:{tag}'s image",
                String::from_utf8_lossy(&content)
            );
        } else {
            assert!(rel.ends_with("/link"), "{what}: unexpected file {rel}");
            assert_eq!(content, format!("sha256:{}", parts[parts.len() - 2]).into_bytes(), "{what}: {rel}");
        }
    }
}

/// (repo, tag) of `…/repositories/<repo>/_manifests/tags/<tag>/current/link`.
fn tag_of(rel: &str) -> (String, String) {
    let rest = rel.split_once("/repositories/").expect("a repository path").1;
    let (repo, tail) = rest.split_once("/_manifests/tags/").expect("a tag path");
    (repo.to_string(), tail.split('/').next().expect("a tag").to_string())
}

#[test]
fn eight_parallel_pushes_through_one_mount() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let history_images = oci::write_release(&w.join("layouts-r1"), &oci::release_set(1, PARALLEL_PUSHES, 4));
    let images = oci::write_release(&w.join("layouts-r2"), &oci::release_set(2, PARALLEL_PUSHES, 4));
    assert!(images.iter().any(ImageRef::is_index));
    let history = w.join("history");
    release::build_history(&history, &history_images, &SkopeoCache::new());
    let before = tree::snapshot(&history);
    let (upper, mnt) = (w.join("upper"), w.join("mnt"));

    let mount = Mount::fuse(&[&history], &upper, &mnt, &[]);
    let registry = Registry::start(&mnt);
    let cache = SkopeoCache::new();
    let started = std::time::Instant::now();
    push_at_once(&registry, &images, &cache);
    eprintln!("{PARALLEL_PUSHES} pushes at once through one {} mount: {:.2?}", test_mode(), started.elapsed());
    for image in &images {
        assert_eq!(release::tags(&registry, &image.repo), std::slice::from_ref(&image.tag), "tags of {}", image.repo);
        assert_eq!(
            registry::manifest_digest(&registry, &image.repo, &image.tag).as_deref(),
            Some(image.digest.as_str())
        );
    }
    release::assert_clean_log(&registry);
    registry.stop();
    mount.umount();
    assert_upper_holds(&upper, &history_images, &images, "8 parallel pushes");
    assert_unchanged(&history, &before, "after the pushes");

    let mount = Mount::fuse(&[&history], &upper, &mnt, &[]);
    let registry = Registry::start(&mnt);
    let pulled = release::pull_release(&registry, &images, &w.join("pulled"), &cache);
    assert_eq!(pulled, images.iter().map(Pulled::expected).collect::<Vec<_>>());
    release::assert_clean_log(&registry);
    registry.stop();
    mount.umount();
    assert_unchanged(&history, &before, "at the end");
}

#[test]
fn two_mounts_over_one_history_with_separate_uppers() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let history_images = oci::write_release(&w.join("layouts-r1"), &oci::release_set(1, 6, 3));
    let history = w.join("history");
    release::build_history(&history, &history_images, &SkopeoCache::new());
    let before = tree::snapshot(&history);
    let releases = [2, 3].map(|r| oci::write_release(&w.join(format!("layouts-r{r}")), &oci::release_set(r, 6, 3)));
    let uppers = ["a", "b"].map(|n| w.join(format!("upper-{n}")));

    let mounts = [0, 1].map(|i| Mount::fuse(&[&history], &uppers[i], &w.join(format!("mnt-{i}")), &[]));
    let registries = [0, 1].map(|i| Registry::start(&mounts[i].mountpoint));
    let cache = SkopeoCache::new();
    std::thread::scope(|s| {
        let (registries, releases, cache) = (&registries, &releases, &cache);
        let pushes: Vec<_> =
            (0..2).map(|i| s.spawn(move || release::push_release(&registries[i], &releases[i], cache))).collect();
        for p in pushes {
            p.join().expect("push thread");
        }
    });
    // Each view shows its own release only, while both are mounted.
    for i in 0..2 {
        for image in &releases[i] {
            assert_eq!(
                release::tags(&registries[i], &image.repo),
                std::slice::from_ref(&image.tag),
                "mount {i}: tags of {}",
                image.repo
            );
        }
    }
    let pulled: Vec<Vec<Pulled>> = std::thread::scope(|s| {
        let pulls: Vec<_> = (0..2)
            .map(|i| {
                let (registries, releases, cache) = (&registries, &releases, &cache);
                s.spawn(move || {
                    release::pull_release(&registries[i], &releases[i], &w.join(format!("pulled-{i}")), cache)
                })
            })
            .collect();
        pulls.into_iter().map(|p| p.join().expect("pull thread")).collect()
    });
    for i in 0..2 {
        assert_eq!(pulled[i], releases[i].iter().map(Pulled::expected).collect::<Vec<_>>(), "mount {i}: pulled images");
        release::assert_clean_log(&registries[i]);
    }
    for r in registries {
        r.stop();
    }
    for m in mounts {
        m.umount();
    }
    for i in 0..2 {
        assert_upper_holds(&uppers[i], &history_images, &releases[i], &format!("upper {i}"));
    }
    assert_unchanged(&history, &before, "at the end");
}

/// A synthetic history (and its snapshot), a mount of it in the test's
/// mode, and a directory for the rest.
struct Mounted {
    _work: tempfile::TempDir,
    lower: PathBuf,
    before: tree::Snapshot,
    upper: PathBuf,
    dir: PathBuf,
    mount: Mount,
}

impl Mounted {
    fn new() -> Mounted {
        let work = tempfile::tempdir().expect("tempdir");
        let dir = work.path().to_path_buf();
        let lower = dir.join("history");
        tree::write_store(
            &lower,
            &[RepoSpec { name: "app", tags: &["1.0"] }, RepoSpec { name: "team/web", tags: &["2"] }],
            "h",
        );
        let before = tree::snapshot(&lower);
        let upper = dir.join("upper");
        let mount = Mount::fuse(&[&lower], &upper, &dir.join("mnt"), &[]);
        Mounted { lower, before, upper, dir, mount, _work: work }
    }
}

#[test]
fn gc_export_and_absorb_refuse_an_upper_a_live_mount_uses() {
    let l = Mounted::new();
    let written = l.mount.mountpoint.join(V2).join("repositories/app/_uploads/refused/data");
    fs::create_dir_all(written.parent().expect("parent")).expect("mkdir through the mount");
    fs::write(&written, b"x").expect("writing through the mount");
    let upper_before = tree::snapshot(&l.upper);
    let into = empty_root(&l.dir.join("absorb-into"));
    let into_before = tree::snapshot(&into);
    let tar = l.dir.join("release.tar");
    let tar_arg = tar.to_str().expect("UTF-8").to_string();
    let upper_arg = l.upper.to_str().expect("UTF-8").to_string();
    let into_arg = into.to_str().expect("UTF-8").to_string();

    let run = |sub: &str| match sub {
        "absorb" => fixtures::regfs(["absorb", "--history", &into_arg, "--upper", &upper_arg]),
        "export" => regfs_layers("export", &[&l.lower], &l.upper, &["-o", &tar_arg]),
        _ => regfs_layers(sub, &[&l.lower], &l.upper, &[]),
    };
    for sub in ["gc", "export", "absorb"] {
        let out = run(sub);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "regfs {sub} on an upper a {} mount uses must fail:\n{}",
            test_mode(),
            text(&out)
        );
        assert!(
            err.contains("is in use by") && (err.contains("umount") || err.contains("unmount")),
            "regfs {sub}:\n{err}"
        );
        assert!(err.contains(l.upper.to_str().expect("UTF-8")), "regfs {sub} must name the upper:\n{err}");
    }
    assert!(!tar.exists(), "a refused export wrote {}", tar.display());
    assert!(
        fs::read_dir(&l.dir)
            .expect("readdir")
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".partial"))
    );
    assert_unchanged(&into, &into_before, "refused absorb");
    assert_eq!(tree::snapshot(&l.upper), upper_before, "a refused command wrote to upper");
    assert_eq!(fs::read(&written).expect("the mount still serves"), b"x");
    l.mount.umount();

    // Unmounted, the same commands run.
    for sub in ["gc", "export", "absorb"] {
        let out = run(sub);
        assert!(out.status.success(), "regfs {sub} after unmounting:\n{}", text(&out));
    }
    assert!(tar.is_file());
    assert_unchanged(&l.lower, &l.before, "at the end");
}

#[test]
fn a_second_mount_of_a_live_upper_is_refused_in_either_mode() {
    let l = Mounted::new();
    let probe = l.mount.mountpoint.join(V2).join("repositories/app/_layers");
    let listing = fs::read_dir(&probe).expect("listing through the first mount").count();
    let upper_before = tree::snapshot(&l.upper);
    for mode in ["fuse", "kernel"] {
        let mnt2 = l.dir.join(format!("mnt-{mode}"));
        let refused = Mount::try_fuse(&[&l.lower], &l.upper, &mnt2, &["--mode", mode]);
        let err = refused
            .err()
            .unwrap_or_else(|| panic!("a {mode} mount of an upper a {} mount uses must fail", test_mode()));
        assert!(err.contains("is in use by"), "{} mount, then {mode}:\n{err}", test_mode());
        assert!(!is_mountpoint(&mnt2), "{} is mounted after a refused mount", mnt2.display());
        assert_eq!(tree::snapshot(&l.upper), upper_before, "a refused {mode} mount wrote to upper");
    }
    assert_eq!(fs::read_dir(&probe).expect("the first mount still serves").count(), listing);
    l.mount.umount();
    // Unmounted, the upper mounts again.
    let again = Mount::fuse(&[&l.lower], &l.upper, &l.dir.join("mnt-again"), &["--mode", "fuse"]);
    assert_eq!(
        fs::read_dir(again.mountpoint.join(V2).join("repositories/app/_layers")).expect("listing").count(),
        listing
    );
    again.umount();
    assert_unchanged(&l.lower, &l.before, "at the end");
}
