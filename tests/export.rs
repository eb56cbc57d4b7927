//! `regfs export` and `regfs mount --export`: the release tar.
//!
//! - the tar is deterministic, holds exactly what the view shows, and a
//!   stock registry serves every image from it once untarred;
//! - `--verify` catches a corrupt blob and no tar (nor temporary) is left;
//! - symlinks leading out, special files and bad targets are refused;
//! - on unmount the daemon runs gc then export; a failure makes
//!   `regfs umount` fail with a message saying how to finish by hand, and the
//!   upper is left as it was.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use support::fixtures;

use fixtures::{V2, app_store, assert_serves, empty_root, file_sha, regfs, regfs_layers, regfs_ok, text, untar};
use support::mount::Mount;
use support::oci;
use support::registry::{self, Registry};
use support::tree::snapshot;

/// Paths and headers of a tar, in order.
fn tar_entries(tar: &Path) -> Vec<(PathBuf, tar::Header)> {
    let mut a = tar::Archive::new(fs::File::open(tar).expect("open tar"));
    a.entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            (e.path().expect("path").into_owned(), e.header().clone())
        })
        .collect()
}

fn export(lowers: &[&Path], upper: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    regfs_layers("export", lowers, upper, &args)
}

#[test]
fn export_is_deterministic_and_serves_every_image() {
    let work = tempfile::tempdir().unwrap();
    let images = oci::write_release(&work.path().join("r1"), &oci::release_set(1, 6, 3));
    let store = empty_root(&work.path().join("store"));
    let pushes: Vec<_> = images.iter().map(|i| (i, i.tag.as_str())).collect();
    fixtures::push_store(&store, &pushes);
    let empty = empty_root(&work.path().join("empty"));

    let (a, b) = (work.path().join("a.tar"), work.path().join("b.tar"));
    let started = std::time::Instant::now();
    let out = export(&[&empty], &store, &a, &["--verify"]);
    assert!(out.status.success(), "{}", text(&out));
    let took = started.elapsed();
    // Times and owners of the files do not matter...
    let some_link = fixtures::view_paths(&fixtures::view(&[&empty], &store, None), Path::new(V2))
        .into_iter()
        .find(|p| p.ends_with("link"))
        .expect("a link");
    let f = fs::File::options().write(true).open(store.join(&some_link)).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600)).unwrap();
    // (The bundle records its release's name: by default the tar's name.)
    regfs_ok("export", &[&empty], &store, &["-o", b.to_str().unwrap(), "--name", "a"]);
    assert_eq!(file_sha(&a), file_sha(&b), "two exports of the same release must be byte-identical");
    eprintln!(
        "export: {} tar of {} images in {took:?} (with --verify); {}",
        fs::metadata(&a).unwrap().len(),
        images.len(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    // ...unless asked to keep them.
    let c = work.path().join("c.tar");
    regfs_ok("export", &[&empty], &store, &["-o", c.to_str().unwrap(), "--keep-times"]);
    assert_ne!(file_sha(&a), file_sha(&c));

    let mut entries = tar_entries(&a);
    // The description comes first, then the store in path order.
    assert_eq!(entries.first().map(|(p, _)| p.clone()), Some(PathBuf::from(regfs::bundle::DESCRIPTION)));
    entries.remove(0);
    let paths: Vec<PathBuf> = entries.iter().map(|(p, _)| p.clone()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "entries in path order");
    for (p, h) in &entries {
        assert!(p.starts_with("docker"), "{}", p.display());
        assert_eq!((h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()), (0, 0, 0), "{}", p.display());
        assert!(h.username().unwrap().unwrap_or("").is_empty(), "{}", p.display());
    }
    let v = fixtures::view(&[&empty], &store, None);
    let mut shown = fixtures::view_paths(&v, Path::new(""));
    shown.insert(PathBuf::from("docker"));
    assert_eq!(paths.iter().cloned().collect::<BTreeSet<_>>(), shown, "the tar holds exactly the view");

    let unpacked = work.path().join("unpacked");
    untar(&a, &unpacked);
    assert_serves(&unpacked, &images.iter().collect::<Vec<_>>(), "r1", &work.path().join("pulled"));

    // A view hides the history's manifests: so does its tar.
    let history_view = work.path().join("h.tar");
    let upper = work.path().join("upper");
    fs::create_dir(&upper).unwrap();
    regfs_ok("export", &[&store], &upper, &["-o", history_view.to_str().unwrap()]);
    let hidden: Vec<_> = tar_entries(&history_view).into_iter().filter(|(p, _)| p.ends_with("_manifests")).collect();
    assert!(hidden.is_empty(), "hidden history in the tar: {:?}", hidden.iter().map(|e| &e.0).collect::<Vec<_>>());
}

#[test]
fn long_paths_round_trip_through_gnu_tar() {
    let work = tempfile::tempdir().unwrap();
    let empty = empty_root(&work.path().join("empty"));
    let s = fixtures::StoreWriter::new(&work.path().join("store"));
    let repo = ["a", "b", "c"].map(|c| c.repeat(80)).join("/");
    let (m, _, _) = s.image(&repo, "v1", &[]);
    s.tag(&repo, "v1", &m);
    let tar = work.path().join("long.tar");
    regfs_ok("export", &[&empty], &s.root, &["-o", tar.to_str().unwrap()]);
    assert!(tar_entries(&tar).iter().any(|(p, _)| p.as_os_str().len() > 300), "no path over 300 bytes");
    let unpacked = work.path().join("unpacked");
    untar(&tar, &unpacked);
    assert_eq!(snapshot(&unpacked.join("docker")), snapshot(&s.root.join("docker")), "the tar round-trips the store");
}

#[test]
fn verify_catches_a_corrupt_blob_and_nothing_is_left() {
    let work = tempfile::tempdir().unwrap();
    let empty = empty_root(&work.path().join("empty"));
    let (s, _, layers) = app_store(&work.path().join("store"));
    let data = s.blob_path(&layers[0]);
    let mut bytes = fs::read(&data).unwrap();
    bytes[0] ^= 0x20;
    fs::write(&data, &bytes).unwrap();

    let out_dir = work.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let tar = out_dir.join("release.tar");
    let out = export(&[&empty], &s.root, &tar, &["--verify"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    let rel = format!("{V2}/blobs/sha256/{}/{}/data", &layers[0][..2], layers[0]);
    assert!(err.contains(&rel) && err.contains("corrupt"), "the error must name the blob:\n{err}");
    assert_eq!(fs::read_dir(&out_dir).unwrap().count(), 0, "no tar and no temporary file may be left");
    // Without --verify the data is streamed as it is.
    regfs_ok("export", &[&empty], &s.root, &["-o", tar.to_str().unwrap()]);
    assert!(tar.is_file());
}

#[test]
fn export_refuses_what_a_store_cannot_hold() {
    let work = tempfile::tempdir().unwrap();
    let empty = empty_root(&work.path().join("empty"));
    let (s, _, _) = app_store(&work.path().join("store"));
    let v2 = s.v2();
    // regfs's own temporaries are never exported; a contained symlink is kept as one.
    fs::write(v2.join(".regfs-tmp.123.0"), b"internal").unwrap();
    std::os::unix::fs::symlink("blobs", v2.join("alias")).unwrap();
    let ok = work.path().join("ok.tar");
    regfs_ok("export", &[&empty], &s.root, &["-o", ok.to_str().unwrap()]);
    let entries = tar_entries(&ok);
    assert!(entries.iter().all(|(p, _)| !p.to_string_lossy().contains(".regfs-tmp.")));
    let alias = entries.iter().find(|(p, _)| p.ends_with("alias")).expect("symlink entry");
    assert_eq!(alias.1.entry_type(), tar::EntryType::Symlink);
    assert_eq!(alias.1.link_name().unwrap().unwrap(), Path::new("blobs"));
    fs::remove_file(v2.join("alias")).unwrap();

    let tar = work.path().join("bad.tar");
    std::os::unix::fs::symlink("../../../../etc/passwd", v2.join("evil")).unwrap();
    let out = export(&[&empty], &s.root, &tar, &[]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("leads out of the store"),
        "{}",
        text(&out)
    );
    fs::remove_file(v2.join("evil")).unwrap();
    let fifo = v2.join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let out = export(&[&empty], &s.root, &tar, &[]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(&format!("{V2}/fifo")),
        "{}",
        text(&out)
    );
    assert!(!tar.exists());
    fs::remove_file(&fifo).unwrap();

    for (target, msg) in [
        (work.path().join("missing/x.tar"), "does not exist"),
        (s.root.join("x.tar"), "inside layer"),
        (work.path().to_path_buf(), "is a directory"),
    ] {
        let out = export(&[&empty], &s.root, &target, &[]);
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains(msg), "{msg}:\n{}", text(&out));
    }
}

#[test]
fn mount_runs_gc_and_export_on_unmount() {
    let work = tempfile::tempdir().unwrap();
    let r1 = oci::write_release(&work.path().join("r1"), &oci::release_set(1, 6, 3));
    let r2 = oci::write_release(&work.path().join("r2"), &oci::release_set(2, 6, 3));
    let history = empty_root(&work.path().join("history"));
    fixtures::push_store(&history, &r1.iter().map(|i| (i, "r1")).collect::<Vec<_>>());
    let history_before = snapshot(&history);
    let (upper, mp, out_dir) = (work.path().join("upper"), work.path().join("mnt"), work.path().join("out"));
    fs::create_dir(&out_dir).unwrap();
    let tar = out_dir.join("release-2.tar");

    // The target directory is checked when mounting, not after the push.
    let early = Mount::try_fuse(&[&history], &upper, &mp, &["--export", "/nonexistent/x.tar"]);
    assert!(early.as_ref().is_err_and(|e| e.contains("does not exist")), "{:?}", early.err());

    let mnt = Mount::fuse(&[&history], &upper, &mp, &["--export", tar.to_str().unwrap()]);
    // Release 2 ships images 0..=4: image 5's repository is stale.
    let shipped: Vec<&oci::ImageRef> = r2.iter().take(5).collect();
    let registry = Registry::start(&mp);
    for image in &shipped {
        registry::push_image(&registry, image).unwrap_or_else(|o| panic!("pushing {}: {o}", image.repo));
    }
    registry.stop();
    let started = std::time::Instant::now();
    let out = mnt.umount();
    let msg = String::from_utf8_lossy(&out.stderr);
    eprintln!("umount with gc + export took {:?}: {}", started.elapsed(), msg.trim());
    assert!(msg.contains("exported") && msg.contains("gc deleted"), "{msg}");
    assert_eq!(snapshot(&history), history_before, "the history must never be written");

    let unpacked = work.path().join("unpacked");
    untar(&tar, &unpacked);
    let v2 = unpacked.join(V2);
    assert!(!v2.join("repositories").join(&r1[5].repo).exists(), "stale repository exported");
    let uploads: Vec<_> = tar_entries(&tar).into_iter().filter(|(p, _)| p.ends_with("_uploads")).collect();
    assert!(uploads.is_empty(), "uploads exported");
    let wanted: BTreeSet<String> = shipped.iter().flat_map(|i| fixtures::hexes(&i.blob_digests())).collect();
    assert_eq!(fixtures::blob_set(&unpacked), wanted, "the tar holds exactly the release's blobs");
    assert_serves(&unpacked, &shipped, "r2", &work.path().join("pulled"));
}

#[test]
fn unmount_failures_are_reported_and_leave_upper_intact() {
    let work = tempfile::tempdir().unwrap();
    let lower = empty_root(&work.path().join("lower"));
    let upper = work.path().join("upper");
    let (s, m, _layers) = app_store(&upper);
    s.blob(b"garbage");
    let out_dir = work.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let tar = out_dir.join("x.tar");
    let extra = ["--export", tar.to_str().unwrap()];

    // gc fails on a bad tag link written through the mount: nothing deleted, nothing exported.
    let mnt = Mount::fuse(&[&lower], &upper, &work.path().join("mnt"), &extra);
    let bad = Path::new(V2).join("repositories/app/_manifests/tags/v1/current/link");
    fs::write(mnt.mountpoint.join(&bad), format!("sha256:{m}\n")).unwrap();
    let before = snapshot(&upper);
    let out = mnt.umount_status();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    for want in ["gc after unmount failed", "nothing was exported", "is intact", "regfs gc", &bad.display().to_string()]
    {
        assert!(err.contains(want), "{want:?} missing from:\n{err}");
    }
    assert_eq!(snapshot(&upper), before, "a failed gc must leave the upper as it was");
    assert!(!tar.exists());
    fs::write(upper.join(&bad), format!("sha256:{m}")).unwrap();

    // export fails (its directory went away): gc ran, the upper stays, the
    // export can be re-run by hand.
    let mnt = Mount::fuse(&[&lower], &upper, &work.path().join("mnt"), &extra);
    fs::remove_dir(&out_dir).unwrap();
    let out = mnt.umount_status();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    for want in ["export after unmount failed", "is intact", "regfs export"] {
        assert!(err.contains(want), "{want:?} missing from:\n{err}");
    }
    fs::create_dir(&out_dir).unwrap();
    let by_hand = regfs([
        "export",
        "--lower",
        lower.to_str().unwrap(),
        "--upper",
        upper.to_str().unwrap(),
        "-o",
        tar.to_str().unwrap(),
    ]);
    assert!(by_hand.status.success(), "{}", text(&by_hand));
    assert!(tar_entries(&tar).iter().any(|(p, _)| p.ends_with(format!("revisions/sha256/{m}/link"))));
}

/// A single store is its own view: `gc` and `export` take it as `--upper`
/// alone (no `--lower`), with the same result as over an empty history;
/// `mount` still needs a history and says so.
#[test]
fn a_single_store_is_exported_and_collected_as_upper_alone() {
    let work = tempfile::tempdir().unwrap();
    let (store, _, _) = fixtures::app_store(&work.path().join("store"));
    store.upload("app");
    let copy = work.path().join("copy");
    fixtures::copy_tree(&store.root, &copy);
    let empty = empty_root(&work.path().join("empty"));
    let (a, b) = (work.path().join("a/r.tar"), work.path().join("b/r.tar"));
    for d in [&a, &b] {
        fs::create_dir_all(d.parent().unwrap()).unwrap();
    }
    regfs_ok("gc", &[], &store.root, &[]);
    regfs_ok("gc", &[&empty], &copy, &[]);
    assert_eq!(snapshot(&store.root.join("docker")), snapshot(&copy.join("docker")), "the same gc");
    assert!(!store.root.join(V2).join("repositories/app/_uploads").exists(), "gc removed the upload");
    let out = export(&[], &store.root, &a, &[]);
    assert!(out.status.success(), "{}", text(&out));
    regfs_ok("export", &[&empty], &copy, &["-o", b.to_str().unwrap()]);
    assert_eq!(file_sha(&a), file_sha(&b), "the same tar");
    let mnt = work.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let out = regfs(["mount", "--upper", copy.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("needs at least one --lower"), "{}", text(&out));
}
