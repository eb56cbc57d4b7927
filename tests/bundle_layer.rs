//! Bundles as layers: a release tar mounted in place, without extracting
//! it, is the view of its extracted tree; a stock registry on it serves
//! every image; a release over a history of tars is byte for byte the
//! release over the extracted history; hostile tars are refused at mount,
//! naming the entry. Real FUSE mounts, the real registry and skopeo.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use support::fixtures::{StoreWriter, empty_root, untar};
use support::mount::{Mount, is_mountpoint, json, ok, refused, test_mode};
use support::oci::{self, ImageRef};
use support::registry::Registry;
use support::release::{self, Pulled, SkopeoCache};
use support::tarfile::{Edit, adding, find, rec, records, write_tar};
use support::tree;

const IMAGES: usize = 6;
const CHANGED_EVERY: usize = 3;

/// `regfs release` of `images` from `layouts` over the histories, to `out`.
fn release(histories: &[&Path], images: &[ImageRef], layouts: &Path, out: &Path, mode: &str) {
    release_with(histories, images, layouts, out, mode, &[]);
}

/// [`release`] with more arguments.
fn release_with(histories: &[&Path], images: &[ImageRef], layouts: &Path, out: &Path, mode: &str, extra: &[&str]) {
    fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
    let list = out.with_extension("list");
    let lines: Vec<String> = images.iter().map(|i| format!("{}:{}", i.repo, i.tag)).collect();
    fs::write(&list, lines.join("\n") + "\n").expect("images list");
    let mut args: Vec<String> = vec!["release".into()];
    for h in histories {
        args.extend(["--history".into(), h.display().to_string()]);
    }
    args.extend(["--images".into(), list.display().to_string(), "--from".into(), format!("oci:{}", layouts.display())]);
    args.extend(["-o".into(), out.display().to_string(), "--mode".into(), mode.into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    ok(&args);
}

/// The listing (types, modes, owners, sizes, times, content digests) of a
/// FUSE view over `lower` with `extra` mount options.
fn listing_over(lower: &Path, scratch: &Path, extra: &[&str]) -> Vec<String> {
    let upper = scratch.join("upper");
    let _ = fs::remove_dir_all(scratch);
    fs::create_dir_all(&upper).unwrap();
    let mut args = vec!["--mode", "fuse"];
    args.extend(extra);
    let m = Mount::fuse(&[lower], &upper, &scratch.join("mnt"), &args);
    // The root is upper's own directory: not the tar's or the tree's.
    let l = tree::listing(&m.mountpoint).into_iter().filter(|l| !l.ends_with(" . ")).collect();
    m.umount();
    l
}

#[test]
fn a_bundle_mounted_in_place_is_its_extracted_tree_and_serves_every_image() {
    let work = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| work.path().join(n);
    let images = oci::write_release(&p("layouts"), &oci::release_set(1, IMAGES, CHANGED_EVERY));
    let r1 = p("out/release-1.tar");
    release(&[&empty_root(&p("history"))], &images, &p("layouts"), &r1, &test_mode());
    let extracted = p("extracted");
    untar(&r1, &extracted);
    let plain = p("plain.json");
    fs::write(&plain, r#"{"hide_sections": []}"#).unwrap();
    for (what, extra) in
        [("the plain overlay", vec!["--policy", plain.to_str().unwrap()]), ("the history policy", vec![])]
    {
        let over_tar = listing_over(&r1, &p("t"), &extra);
        let over_dir = listing_over(&extracted, &p("d"), &extra);
        assert!(over_tar.len() > 100, "{what}: {} entries", over_tar.len());
        let only_tar: Vec<_> = over_tar.iter().filter(|l| !over_dir.contains(l)).collect();
        let only_dir: Vec<_> = over_dir.iter().filter(|l| !over_tar.contains(l)).collect();
        assert!(
            only_tar.is_empty() && only_dir.is_empty(),
            "{what}: the view over the tar and over its extracted tree differ:\nover the tar: {only_tar:#?}\nover the directory: {only_dir:#?}"
        );
    }

    // A stock registry on the mounted bundle serves every image by tag.
    let upper = p("serve-upper");
    fs::create_dir(&upper).unwrap();
    let m = Mount::fuse(&[&r1], &upper, &p("serve-mnt"), &["--policy", plain.to_str().unwrap()]);
    let registry = Registry::start(&m.mountpoint);
    let got = release::pull_release(&registry, &images, &p("pulls"), &SkopeoCache::new());
    let want: Vec<Pulled> = images.iter().map(Pulled::expected).collect();
    assert_eq!(got, want, "what the registry on the mounted bundle serves");
    release::assert_clean_log(&registry);
    registry.stop();
    m.umount();
    let left: Vec<_> = fs::read_dir(&upper).unwrap().collect();
    assert!(left.is_empty(), "pulls write nothing to upper: {left:?}");

    // Kernel overlayfs stacks directories only: refused, saying why.
    let err = refused(&[
        "mount",
        "--lower",
        r1.to_str().unwrap(),
        "--upper",
        upper.to_str().unwrap(),
        "--mode",
        "kernel",
        p("serve-mnt").to_str().unwrap(),
    ]);
    assert!(err.contains("is a bundle tar") && err.contains("--mode fuse"), "{err}");
    assert!(!is_mountpoint(&p("serve-mnt")));
}

#[test]
fn a_release_over_a_history_of_tars_is_the_release_over_the_extracted_history() {
    let work = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| work.path().join(n);
    let layouts = |r: u32| p(&format!("layouts-r{r}"));
    let (sets, r1) = two_releases(work.path(), &p("tars/release-1.tar"));
    let extracted = p("history");
    untar(&r1, &extracted);

    let out = |n: &str| p(&format!("{n}/release-2.tar"));
    release(&[&extracted], &sets[1], &layouts(2), &out("over-dir"), &test_mode());
    release(&[&r1], &sets[1], &layouts(2), &out("over-tar"), "auto");
    // A directory of release tars stands for its tars.
    release(&[&p("tars")], &sets[1], &layouts(2), &out("over-tar-dir"), "fuse");
    let want = fs::read(out("over-dir")).unwrap();
    assert!(fs::read(out("over-tar")).unwrap() == want, "release 2 over r1.tar differs from over its extracted tree");
    assert!(fs::read(out("over-tar-dir")).unwrap() == want, "release 2 over a directory of tars differs");
    // export takes the tar as a lower too.
    let again = p("again/release-2.tar");
    fs::create_dir(p("again")).unwrap();
    ok(&[
        "export",
        "--lower",
        r1.to_str().unwrap(),
        "--upper",
        p("over-tar/release-2.tar.work/upper").to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
    ]);
    // A finished release's upper exports with the release's lock: the same bytes.
    assert!(fs::read(&again).unwrap() == want, "export over the tar gives the release's bytes again");
    // plan and a GC dry run see the same over the tar as over the tree.
    let list = out("over-dir").with_extension("list");
    for sub in
        [vec!["plan", "--keep", list.to_str().unwrap()], vec!["gc", "--dry-run", "--keep", list.to_str().unwrap()]]
    {
        let scratch = p(&format!("{}-upper", sub[0]));
        fs::create_dir(&scratch).unwrap();
        let over = |lower: &Path| {
            let mut args = sub.clone();
            args.extend(["--json", "--lower", lower.to_str().unwrap()]);
            if sub[0] == "gc" {
                args.extend(["--upper", scratch.to_str().unwrap()]);
            }
            let mut v = json(&ok(&args));
            drop_timings(&mut v);
            v.as_object_mut().map(|o| o.remove("lowers"));
            v
        };
        assert_eq!(over(&r1), over(&extracted), "regfs {} over the tar and over its tree", sub[0]);
    }
}

/// Removes every `*_ms` member (timings differ run to run).
fn drop_timings(v: &mut serde_json::Value) {
    if let Some(o) = v.as_object_mut() {
        o.retain(|k, _| !k.ends_with("_ms"));
        o.values_mut().for_each(drop_timings);
    }
}

#[test]
fn hostile_tars_are_refused_at_mount_naming_the_entry() {
    let work = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| work.path().join(n);
    let store = StoreWriter::new(&p("store"));
    let (m, _, _) = store.image("app", "app-1", &[]);
    store.tag("app", "v1", &m);
    let good = p("good.tar");
    ok(&["export", "--upper", store.root.to_str().unwrap(), "-o", good.to_str().unwrap()]);
    let recs = records(&good);
    let blob_at = find(&recs, |n| n.ends_with("/data"));
    let blob_name = String::from_utf8_lossy(&recs[blob_at].name).into_owned();
    let v2 = "docker/registry/v2";
    let cases: Vec<(&str, Edit, String)> = vec![
        ("dot-dot", adding(rec(&format!("{v2}/../../../etc/passwd"), tar::EntryType::Regular, b"x")), "'..'".into()),
        ("absolute", adding(rec("/etc/passwd", tar::EntryType::Regular, b"x")), "/etc/passwd: an absolute path".into()),
        ("symlink", adding(rec(&format!("{v2}/s"), tar::EntryType::Symlink, b"")), format!("{v2}/s: a symlink")),
        ("hard link", adding(rec(&format!("{v2}/h"), tar::EntryType::Link, b"")), format!("{v2}/h: a hard link")),
        ("device", adding(rec(&format!("{v2}/c"), tar::EntryType::Char, b"")), format!("{v2}/c: a character device")),
        (
            "duplicate",
            Box::new(move |r| {
                let dup = r[blob_at].clone();
                r.push(dup);
                true
            }),
            format!("{blob_name}: listed twice"),
        ),
        (
            "size past the end",
            Box::new(move |r| {
                r.truncate(blob_at + 1);
                r[blob_at].data.truncate(1);
                false
            }),
            "truncated".into(),
        ),
        ("no end marker", Box::new(|_| false), "truncated".into()),
        (
            "below a file",
            adding(rec(&format!("{blob_name}/x"), tar::EntryType::Regular, b"x")),
            format!("{blob_name}/x: lies below {blob_name}, which is a file"),
        ),
        (
            "a file where a directory is",
            adding(rec(&format!("{v2}/blobs"), tar::EntryType::Regular, b"x")),
            format!("{v2}/blobs: "),
        ),
        (
            "no description",
            Box::new(|r| {
                r.remove(0);
                true
            }),
            "not a regfs bundle".into(),
        ),
    ];
    for (what, edit, says) in cases {
        let mut r = recs.clone();
        let end = edit(&mut r);
        let bad = p(&format!("{}.tar", what.replace(' ', "-")));
        write_tar(&bad, &r, end);
        if what == "size past the end" {
            // The data file claims more bytes than the tar holds.
            let mut bytes = fs::read(&bad).unwrap();
            bytes.truncate(bytes.len() - 512);
            fs::write(&bad, bytes).unwrap();
        }
        let upper = p(&format!("{what}-upper"));
        fs::create_dir(&upper).unwrap();
        let mnt = p(&format!("{what}-mnt"));
        let err = Mount::try_fuse(&[&bad], &upper, &mnt, &["--mode", "fuse"]).map(|m| m.umount()).expect_err(what);
        assert!(err.contains(&says), "{what}: the error must say {says:?}:\n{err}");
        assert!(!is_mountpoint(&mnt), "{what}: nothing is mounted");
        assert_eq!(fs::read_dir(&upper).unwrap().count(), 0, "{what}: nothing is written to upper");
    }
    let mut names: Vec<PathBuf> = fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    assert!(names.iter().all(|n| !n.ends_with("passwd")), "nothing outside the work dir");
}

/// A `regfs serve` child, stopped with SIGINT (as Ctrl-C) and reaped.
struct Served {
    child: std::process::Child,
    stdout: PathBuf,
}

impl Served {
    fn start(bundles: &[&Path], addr: std::net::SocketAddr, stdout: PathBuf) -> Served {
        let out = fs::File::create(&stdout).unwrap();
        let child = std::process::Command::new(support::mount::regfs_bin())
            .arg("serve")
            .args(bundles)
            .arg("--addr")
            .arg(addr.to_string())
            .stdout(out)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting regfs serve");
        Served { child, stdout }
    }

    /// Ctrl-C; the exit status, stdout and stderr.
    fn interrupt(mut self) -> (std::process::ExitStatus, String, String) {
        let _ = regfs::sys::kill(self.child.id(), libc::SIGINT);
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).unwrap();
        }
        let status = self.child.wait().expect("waiting for regfs serve");
        (status, fs::read_to_string(&self.stdout).unwrap_or_default(), err)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = regfs::sys::kill(self.child.id(), libc::SIGINT);
            let _ = self.child.wait();
        }
    }
}

/// The layouts of releases 1 and 2 (`WORK/layouts-rN`), and release 1 as a
/// full bundle at `r1`: (images of each, r1).
fn two_releases(work: &Path, r1: &Path) -> (Vec<Vec<ImageRef>>, PathBuf) {
    let layouts = |r: u32| work.join(format!("layouts-r{r}"));
    let sets: Vec<Vec<ImageRef>> =
        (1..=2).map(|r| oci::write_release(&layouts(r), &oci::release_set(r, IMAGES, CHANGED_EVERY))).collect();
    release(&[&empty_root(&work.join("empty"))], &sets[0], &layouts(1), r1, &test_mode());
    (sets, r1.to_path_buf())
}

/// Release 1 as a full bundle, and release 2, made over the tar of
/// release 1, as a delta against it: (images of each, r1.tar, d2.tar).
fn full_and_delta(work: &Path) -> (Vec<Vec<ImageRef>>, PathBuf, PathBuf) {
    let p = |n: &str| work.join(n);
    let layouts = |r: u32| p(&format!("layouts-r{r}"));
    let (sets, r1) = two_releases(work, &p("out/release-1.tar"));
    let d2 = p("out/release-2.tar");
    release_with(&[&r1], &sets[1], &layouts(2), &d2, "auto", &["--base", r1.to_str().unwrap()]);
    (sets, r1, d2)
}

/// The layer and config blobs of a release's images (what skopeo copies as blobs).
fn copied_blobs(images: &[ImageRef]) -> std::collections::BTreeSet<String> {
    images.iter().flat_map(|i| i.layer_digests().into_iter().chain(i.config_digests())).collect()
}

#[test]
fn push_lands_a_full_bundle_then_only_what_a_delta_adds_and_refuses_what_the_target_cannot_complete() {
    let work = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| work.path().join(n);
    let (sets, r1, d2) = full_and_delta(work.path());
    let target = Registry::start(&empty_root(&p("target")));
    let dest = format!("docker://{}", target.host());
    let cache = SkopeoCache::new();
    let push = |bundles: &[&Path], dest: &str| {
        let mut args: Vec<String> = vec!["push".into()];
        args.extend(bundles.iter().map(|b| b.display().to_string()));
        args.extend([dest.to_string(), "--dest-tls-verify=false".into(), "--json".into()]);
        args
    };

    let full = json(&ok(&push(&[&r1], &dest)));
    assert_eq!(full["images"].as_array().map(Vec::len), Some(IMAGES), "{full}");
    assert_eq!(full["blobs_uploaded"].as_u64(), Some(copied_blobs(&sets[0]).len() as u64), "{full}");
    assert_eq!(full["blobs_skipped"].as_u64(), Some(0), "{full}");
    let got = release::pull_release(&target, &sets[0], &p("pulls-1"), &cache);
    assert_eq!(got, sets[0].iter().map(Pulled::expected).collect::<Vec<_>>(), "release 1 at the target");

    // The delta alone: the target holds its base; only what it adds is uploaded.
    let delta = json(&ok(&push(&[&d2], &dest)));
    let new: Vec<String> = copied_blobs(&sets[1]).difference(&copied_blobs(&sets[0])).cloned().collect();
    assert!(!new.is_empty());
    assert_eq!(delta["blobs_uploaded"].as_u64(), Some(new.len() as u64), "{delta}");
    let got = release::pull_release(&target, &sets[1], &p("pulls-2"), &cache);
    assert_eq!(got, sets[1].iter().map(Pulled::expected).collect::<Vec<_>>(), "release 2 at the target");
    release::assert_clean_log(&target);

    // A delta to an empty target: refused before anything is pushed, all missing named.
    let empty = Registry::start(&empty_root(&p("empty-target")));
    let err = refused(&push(&[&d2], &format!("docker://{}/product", empty.host())));
    assert!(err.contains("refused, nothing was pushed"), "{err}");
    let desc = regfs::bundle::read_description(&d2).unwrap();
    let unshipped: Vec<String> = desc.blobs.iter().filter(|b| !b.shipped).map(|b| b.digest.to_string()).collect();
    assert!(unshipped.iter().any(|d| err.contains(d)), "{err}");
    let catalog = empty.request("GET", "/v2/_catalog", &[]);
    assert_eq!(String::from_utf8_lossy(&catalog.body).trim(), r#"{"repositories":[]}"#, "nothing pushed");
    let repos = empty_root(&p("empty-target")).join("docker/registry/v2/repositories");
    assert!(!repos.exists() || fs::read_dir(&repos).unwrap().count() == 0, "nothing pushed");
}

#[test]
fn serve_runs_the_registry_on_a_full_bundle_and_a_delta_over_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| work.path().join(n);
    let (sets, r1, d2) = full_and_delta(work.path());

    // A delta alone lacks what its base holds: refused, every blob listed.
    let err = refused(&["serve", d2.to_str().unwrap(), "--addr", "127.0.0.1:1"]);
    let desc = regfs::bundle::read_description(&d2).unwrap();
    let unshipped: Vec<_> = desc.blobs.iter().filter(|b| !b.shipped).collect();
    assert!(!unshipped.is_empty());
    assert!(err.contains(&format!("{} blobs are in none of the bundles", unshipped.len())), "{err}");
    assert!(unshipped.iter().all(|b| err.contains(&b.digest.to_string())), "{err}");

    let addr = Registry::free_addr();
    let served = Served::start(&[&r1, &d2], addr, p("serve.out"));
    let registry = Registry::served_at(addr).expect("regfs serve answers GET /v2/");
    let cache = SkopeoCache::new();
    for (i, set) in sets.iter().enumerate() {
        let got = release::pull_release(&registry, set, &p(&format!("pulls-{i}")), &cache);
        let want: Vec<Pulled> = set.iter().map(Pulled::expected).collect();
        assert_eq!(got, want, "release {} as served", i + 1);
    }
    let upload = registry.request("POST", &format!("/v2/{}/blobs/uploads/", sets[1][0].repo), &[]);
    assert!(upload.status >= 400, "a push is refused: {}", upload.status);
    let (status, out, err) = served.interrupt();
    assert!(status.success(), "regfs serve after Ctrl-C: {status}\n{err}");
    assert!(out.contains("serving 2 bundles") && out.contains(&sets[1][0].repo), "{out}");
    assert!(err.contains("the bundles were not changed"), "{err}");
    // Its own mount (other tests may be serving at the same time).
    let mnt = err
        .lines()
        .find_map(|l| l.strip_prefix("regfs: mounted ")?.split(' ').next())
        .unwrap_or_else(|| panic!("no mountpoint named on stderr:\n{err}"));
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.lines().any(|l| l.split(' ').nth(4) == Some(mnt)), "{mnt} is still mounted");
    assert!(!Path::new(mnt).exists(), "the scratch directory {mnt} is removed");
}
