//! `regfs release`, `regfs plan` and `regfs absorb`, end to end, as a user
//! runs them: the regfs binary over a history built through a real
//! `docker-registry`, images copied by skopeo from OCI layouts or from a
//! second registry, and the release tar served again by a stock registry and
//! pulled back. The front end is `REGFS_TEST_MODE` (fuse by default;
//! scripts/test.sh runs the suite in kernel mode too, as root).
//! Needs FUSE, docker-registry and skopeo; never skipped.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::fixtures::copy_tree;
use support::mount::{regfs_bin, test_mode, text};
use support::oci::{self, ImageRef, digest_hex};
use support::registry::{self, Registry};
use support::release::{self, Pulled, SkopeoCache, StoreFiles, V2};
use support::tree;

/// Images of release 2; the history (release 1) has [`STALE_IMAGES`] more,
/// whose repositories release 2 no longer ships.
const RELEASE_IMAGES: usize = 12;
const STALE_IMAGES: usize = 2;
/// Release 2 changes images 0, 5 and 10; release 3 images 1, 6 and 11.
const CHANGED_EVERY: usize = 5;
/// `team/web-04` is new in release 2: the history lacks the repository (but
/// holds the data of its shared base layers).
const NEW_IMAGE: usize = 4;

/// Release 1 pushed into a plain history store, release 2 written as layouts.
struct Fixture {
    work: tempfile::TempDir,
    history_root: PathBuf,
    history: Vec<ImageRef>,
    release: Vec<ImageRef>,
    /// `--from oci:` directory of release 2.
    layouts: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let work = tempfile::tempdir().expect("tempdir");
        let mut release1 = oci::release_set(1, RELEASE_IMAGES + STALE_IMAGES, CHANGED_EVERY);
        release1.remove(NEW_IMAGE);
        let history = oci::write_release(&work.path().join("layouts-r1"), &release1);
        let layouts = work.path().join("layouts-r2");
        let release = oci::write_release(&layouts, &oci::release_set(2, RELEASE_IMAGES, CHANGED_EVERY));
        let history_root = work.path().join("history");
        release::build_history(&history_root, &history, &SkopeoCache::new());
        Fixture { work, history_root, history, release, layouts }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// A layer release 2 adds (the history lacks it), and its image.
    fn new_layer(&self) -> (&ImageRef, String) {
        let old = all_blobs(&self.history);
        self.release
            .iter()
            .find_map(|i| i.layer_digests().into_iter().find(|l| !old.contains(l)).map(|l| (i, l)))
            .expect("release 2 adds a layer")
    }

    fn release_repos(&self) -> Vec<String> {
        self.release.iter().map(|i| i.repo.clone()).collect::<BTreeSet<_>>().into_iter().collect()
    }

    fn history_repos(&self) -> BTreeSet<String> {
        self.history.iter().map(|i| i.repo.clone()).collect()
    }
}

fn all_blobs(images: &[ImageRef]) -> BTreeSet<String> {
    images.iter().flat_map(ImageRef::blob_digests).collect()
}

/// Size of every blob of `images`, read from their layouts.
fn blob_sizes(images: &[ImageRef]) -> BTreeMap<String, u64> {
    let mut sizes = BTreeMap::new();
    for image in images {
        for d in image.blob_digests() {
            let path = image.layout_dir.join("blobs/sha256").join(digest_hex(&d));
            let len = fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).len();
            sizes.insert(d, len);
        }
    }
    sizes
}

/// The `_layers` links a push of `release` adds over `history`: (repo, digest).
fn new_links(history: &[ImageRef], release: &[ImageRef]) -> BTreeSet<(String, String)> {
    let mut links = BTreeSet::new();
    for image in release {
        let old = release::linked_in(history, &image.repo);
        links.extend(image.linked_blob_digests().difference(&old).map(|d| (image.repo.clone(), d.clone())));
    }
    links
}

/// Writes an images list (with a comment and a blank line, as people write them).
fn images_list(path: &Path, lines: &[String]) -> PathBuf {
    let text = format!("# release images\n\n{}\n", lines.join("\n"));
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path.to_path_buf()
}

fn list_of(images: &[ImageRef]) -> Vec<String> {
    images.iter().map(|i| format!("{}:{}", i.repo, i.tag)).collect()
}

/// `regfs release --history H... --images LIST --from FROM -o OUT --json --mode MODE EXTRA...`
fn regfs_release(histories: &[&Path], list: &Path, from: &str, out: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(regfs_bin());
    cmd.arg("release");
    for h in histories {
        cmd.arg("--history").arg(h);
    }
    cmd.arg("--images").arg(list).arg("--from").arg(from).arg("-o").arg(out);
    cmd.args(["--json", "--mode", &test_mode()]).args(extra);
    cmd.output().expect("running regfs release")
}

/// The JSON summary of a successful run.
fn summary(o: &Output) -> Value {
    assert!(o.status.success(), "regfs failed:\n{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not the JSON summary ({e}):\n{}", text(o)))
}

fn work_dir(out: &Path) -> PathBuf {
    let mut name = out.file_name().expect("a file name").to_os_string();
    name.push(".work");
    out.with_file_name(name)
}

fn sha256_file(path: &Path) -> String {
    tree::sha256_hex(&fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())))
}

/// Nothing of a finished release is left running: its mountpoint is not
/// mounted, its registry's port is closed, and no process names its work dir
/// (the registry, the FUSE daemon) on its command line.
fn assert_nothing_left(work: &Path) {
    let mnt = work.join("mnt");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    let mnt_text = mnt.display().to_string();
    assert!(
        !mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(mnt_text.as_str())),
        "{} is still mounted",
        mnt.display()
    );
    let config = work.join("registry.yml");
    let config = fs::read_to_string(&config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    let addr = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("addr: "))
        .unwrap_or_else(|| panic!("no http addr in registry.yml:\n{config}"));
    let addr: std::net::SocketAddr = addr.parse().unwrap_or_else(|e| panic!("addr {addr:?}: {e}"));
    assert!(std::net::TcpStream::connect(addr).is_err(), "the release registry still answers on {addr}");
    let left = processes_naming(&work.display().to_string());
    assert!(left.is_empty(), "processes of the release still run:\n{}", left.join("\n"));
}

fn assert_unchanged(before: &BTreeMap<PathBuf, tree::Node>, root: &Path) {
    let after = tree::snapshot(root);
    let changed: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(changed.is_empty(), "{} changed: {changed:#?}", root.display());
}

/// What a finished release must be: the summary agrees with the fixture
/// and the tar; the tar, unpacked and served by a stock registry, holds
/// exactly the release (catalog, tags, every image pulled back by digest,
/// no other blob); nothing is left running.
fn check_release(fx: &Fixture, o: &Output, out: &Path, cache: &SkopeoCache) {
    let s = summary(o);
    let history_blobs = all_blobs(&fx.history);
    let release_blobs = all_blobs(&fx.release);
    let sizes = blob_sizes(&fx.release);
    let uploaded: BTreeSet<&String> = release_blobs.difference(&history_blobs).collect();
    let reused: BTreeSet<&String> = release_blobs.intersection(&history_blobs).collect();
    let bytes = |set: &BTreeSet<&String>| set.iter().map(|d| sizes[*d]).sum::<u64>();
    let n = fx.release.len() as u64;
    assert!(!uploaded.is_empty() && !reused.is_empty(), "the fixture both changes and keeps blobs");
    let want_blobs = serde_json::json!({
        "uploaded": uploaded.len(),
        "uploaded_bytes": bytes(&uploaded),
        "reused": reused.len(),
        "reused_bytes": bytes(&reused),
    });
    assert_eq!(s["blobs"], want_blobs, "blob origins in the summary:\n{}", text(o));
    assert_eq!((s["images"].as_u64(), s["copied"].as_u64(), s["copy_attempts"].as_u64()), (Some(n), Some(n), Some(n)));
    assert_eq!(s["mode"], test_mode());
    // Every image as the tar holds it, repo:tag -> the source's digest.
    let mut want_tags: Vec<(String, String)> =
        fx.release.iter().map(|i| (format!("{}:{}", i.repo, i.tag), i.digest.clone())).collect();
    want_tags.sort();
    let mut got_tags: Vec<(String, String)> = s["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| (t["image"].as_str().unwrap_or("").to_string(), t["digest"].as_str().unwrap_or("").to_string()))
        .collect();
    got_tags.sort();
    assert_eq!(got_tags, want_tags, "the summary's tags");
    let out_abs = fs::canonicalize(out).unwrap_or_else(|e| panic!("no tar at {}: {e}\n{}", out.display(), text(o)));
    assert_eq!(s["tar"], out_abs.display().to_string());
    assert_eq!(s["tar_bytes"].as_u64(), Some(fs::metadata(out).expect("tar metadata").len()));
    assert_eq!(s["tar_sha256"], sha256_file(out), "the summary's sha256 is the tar's");
    assert_eq!(s["upper"], work_dir(&out_abs).join("upper").display().to_string());
    assert_nothing_left(&work_dir(out));

    // The tar is a registry rootdirectory holding the release and nothing else.
    let served = out.with_extension("served");
    fs::create_dir(&served).expect("mkdir for the unpacked tar");
    let file = fs::File::open(out).expect("opening the tar");
    tar::Archive::new(file).unpack(&served).unwrap_or_else(|e| panic!("unpacking {}: {e}", out.display()));
    let stored = StoreFiles::of(&served);
    assert_eq!(stored.blobs(), release_blobs, "blobs in the tar");
    assert!(stored.whiteouts.is_empty(), "whiteouts in the tar: {:#?}", stored.whiteouts);
    let outside: Vec<&String> = stored.files.iter().filter(|f| !f.starts_with(V2)).collect();
    assert_eq!(outside, [regfs::bundle::DESCRIPTION], "files outside {V2}: the bundle's description only");
    let registry = Registry::start(&served);
    let mut catalog = registry::catalog(&registry);
    catalog.sort();
    assert_eq!(catalog, fx.release_repos(), "catalog of the release tar");
    for image in &fx.release {
        assert_eq!(release::tags(&registry, &image.repo), std::slice::from_ref(&image.tag), "tags of {}", image.repo);
    }
    let pulled = release::pull_release(&registry, &fx.release, &out.with_extension("pulled"), cache);
    let expected: Vec<Pulled> = fx.release.iter().map(Pulled::expected).collect();
    assert_eq!(pulled, expected, "images pulled back from the release tar");
    release::assert_clean_log(&registry);
    registry.stop();
}

#[test]
fn release_from_oci_layouts() {
    let fx = Fixture::new();
    let before = tree::snapshot(&fx.history_root);
    let list = images_list(&fx.path("images.list"), &list_of(&fx.release));
    let out = fx.path("release-2.tar");
    let from = format!("oci:{}", fx.layouts.display());
    let started = std::time::Instant::now();
    let o = regfs_release(&[&fx.history_root], &list, &from, &out, &[]);
    let seconds = started.elapsed().as_secs_f64();
    check_release(&fx, &o, &out, &SkopeoCache::new());
    assert_unchanged(&before, &fx.history_root);
    let s = summary(&o);
    eprintln!(
        "release from oci: {seconds:.1} s, {} uploaded, {} reused, tar {} bytes",
        s["blobs"]["uploaded"], s["blobs"]["reused"], s["tar_bytes"]
    );
}

#[test]
fn release_from_a_source_registry() {
    let fx = Fixture::new();
    let before = tree::snapshot(&fx.history_root);
    let source_root = fx.path("source-registry");
    fs::create_dir(&source_root).expect("mkdir");
    let source = Registry::start(&source_root);
    let cache = SkopeoCache::new();
    release::push_release(&source, &fx.release, &cache);

    let list = images_list(&fx.path("images.list"), &list_of(&fx.release));
    let out = fx.path("release-2.tar");
    let from = format!("docker://{}", source.host());
    // A plain-HTTP source without --src-tls-verify false: every image named
    // at once with the hint, before anything is mounted.
    let o = regfs_release(&[&fx.history_root], &list, &from, &out, &[]);
    let err = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains(&format!("{} of the {} images cannot be read", fx.release.len(), fx.release.len())), "{err}");
    assert!(err.contains("the source speaks plain HTTP: pass --src-tls-verify false"), "{err}");
    assert!(!work_dir(&out).exists(), "nothing was mounted: {err}");
    // Missing at the source: each named.
    let mut lines = list_of(&fx.release);
    lines.push(format!("{}:no-such-tag", fx.release[0].repo));
    let missing_list = images_list(&fx.path("missing.list"), &lines);
    let o = regfs_release(&[&fx.history_root], &missing_list, &from, &out, &["--src-tls-verify", "false"]);
    let err = text(&o);
    assert!(
        !o.status.success() && err.contains(&format!("{}:no-such-tag: no such tag at the source", fx.release[0].repo)),
        "{err}"
    );
    let started = std::time::Instant::now();
    let o = regfs_release(&[&fx.history_root], &list, &from, &out, &["--src-tls-verify", "false"]);
    let seconds = started.elapsed().as_secs_f64();
    release::assert_clean_log(&source);
    source.stop();
    check_release(&fx, &o, &out, &cache);
    assert_unchanged(&before, &fx.history_root);
    eprintln!("release from a registry: {seconds:.1} s");
}

#[test]
fn release_fails_as_a_whole() {
    let fx = Fixture::new();
    let before = tree::snapshot(&fx.history_root);
    let from = format!("oci:{}", fx.layouts.display());
    let out = fx.path("release-2.tar");
    let work = work_dir(&out);

    // Images the source lacks: all found before anything is mounted.
    let mut lines = list_of(&fx.release);
    let no_tag = format!("{}:no-such-tag", fx.release[3].repo);
    let no_repo = "no/such-repo:r2".to_string();
    lines.insert(2, no_tag.clone());
    lines.push(no_repo.clone());
    let list = images_list(&fx.path("images.list"), &lines);
    let o = regfs_release(&[&fx.history_root], &list, &from, &out, &[]);
    assert!(!o.status.success(), "a release with missing images succeeded:\n{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("2 of the 14 images cannot be read from the source; nothing was mounted"), "{}", text(&o));
    assert!(stderr.contains(&format!("{no_tag}: ")) && stderr.contains("names no tag \"no-such-tag\""), "{}", text(&o));
    assert!(stderr.contains(&format!("{no_repo}: no OCI layout")), "{}", text(&o));
    let doc: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("no JSON on failure ({e}):\n{}", text(&o)));
    assert_eq!((doc["ok"].as_bool(), doc["phase"].as_str()), (Some(false), Some("preflight")), "{doc}");
    assert!(!work.exists(), "a preflight failure creates no work dir");

    // A copy that fails part way (a layer gone from its layout): no tar, the upper kept.
    let (broken, layer) = fx.new_layer();
    let layer_file = broken.layout_dir.join("blobs/sha256").join(digest_hex(&layer));
    fs::remove_file(&layer_file).unwrap_or_else(|e| panic!("removing {}: {e}", layer_file.display()));
    let list = images_list(&fx.path("images.list"), &list_of(&fx.release));
    let o = regfs_release(&[&fx.history_root], &list, &from, &out, &[]);
    assert!(!o.status.success(), "a release with a broken image succeeded:\n{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let broken_name = format!("{}:{}", broken.repo, broken.tag);
    assert!(stderr.contains(&format!("copying {broken_name} failed")), "{}", text(&o));
    assert!(stderr.contains("no tar written"), "{}", text(&o));
    let doc: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("no JSON on failure ({e}):\n{}", text(&o)));
    assert_eq!((doc["ok"].as_bool(), doc["phase"].as_str()), (Some(false), Some("push")), "{doc}");
    assert!(doc["error"].as_str().is_some_and(|e| e.contains(&format!("copying {broken_name} failed"))), "{doc}");
    assert!(!out.exists(), "a tar was written at {}", out.display());
    let leftovers: Vec<_> = fs::read_dir(fx.work.path())
        .expect("readdir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("release-2.tar") && n != "release-2.tar.work")
        .collect();
    assert!(leftovers.is_empty(), "tar leftovers: {leftovers:?}");
    // Kept for inspection (what it holds depends on how far the copies got).
    assert!(work.join("upper").is_dir(), "no upper in {}", work.display());
    assert!(stderr.contains(&work.join("upper").display().to_string()), "the error names the upper:\n{stderr}");
    assert_nothing_left(&work);
    assert_unchanged(&before, &fx.history_root);
    // Its upper is not absorbed by mistake: refused, naming why, history unchanged.
    let o = regfs_absorb(&fx.history_root, &work.join("upper"));
    assert!(!o.status.success() && text(&o).contains("a release that did not finish"), "{}", text(&o));
    assert_unchanged(&before, &fx.history_root);
}

/// A tmpfs of `kib` KiB mounted by the test (root); unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, kib: u64) -> SmallFs {
        fs::create_dir_all(at).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "regfs-test"])
            .arg(at)
            .status()
            .expect("running mount");
        assert!(ok.success(), "mount -t tmpfs (the test needs root)");
        SmallFs(at.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = regfs::sys::umount(&self.0, true);
    }
}

#[test]
fn a_push_that_cannot_fit_is_refused_before_anything_is_mounted() {
    let fx = Fixture::new();
    let list = images_list(&fx.path("images.list"), &list_of(&fx.release));
    let from = format!("oci:{}", fx.layouts.display());
    let small = SmallFs::mount(&fx.path("small"), 64);
    let out = small.0.join("release-2.tar");
    let o = regfs_release(&[&fx.history_root], &list, &from, &out, &[]);
    let err = text(&o);
    assert!(!o.status.success(), "{err}");
    let new = all_blobs(&fx.release).difference(&all_blobs(&fx.history)).count();
    assert!(err.contains(&format!("({new} blobs the history lacks")), "{err}");
    assert!(err.contains("free: free space there, or put the work dir on a larger filesystem"), "{err}");
    assert!(err.contains(&work_dir(&out).display().to_string()), "the work dir is named: {err}");
    assert!(!work_dir(&out).exists(), "nothing was created: {err}");
    // The same from a registry: sized from the manifests' descriptors.
    let source_root = fx.path("source-registry");
    fs::create_dir(&source_root).expect("mkdir");
    let source = Registry::start(&source_root);
    release::push_release(&source, &fx.release, &SkopeoCache::new());
    let from = format!("docker://{}", source.host());
    let o = regfs_release(&[&fx.history_root], &list, &from, &out, &["--src-tls-verify", "false"]);
    let err = text(&o);
    assert!(!o.status.success() && err.contains(&format!("({new} blobs the history lacks")), "{err}");
    assert!(!work_dir(&out).exists(), "nothing was created: {err}");
    source.stop();
}

/// Pids and command lines of the processes whose command line contains `needle`.
fn processes_naming(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("reading /proc").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// A copy of the layouts `src` in which blob `digest` of `image` is a FIFO
/// nobody writes: a copy that reads it blocks until it is killed.
fn hanging_layouts(src: &Path, image: &ImageRef, digest: &str, dst: &Path) -> PathBuf {
    copy_tree(src, dst);
    let rel = image.layout_dir.strip_prefix(src).expect("the image's layout is in src");
    let blob = dst.join(rel).join("blobs/sha256").join(digest_hex(digest));
    fs::remove_file(&blob).unwrap_or_else(|e| panic!("removing {}: {e}", blob.display()));
    regfs::sys::mknod(&blob, libc::S_IFIFO | 0o644, 0).expect("mkfifo");
    dst.to_path_buf()
}

/// A `regfs release` from `layouts` (see [`hanging_layouts`]) whose push
/// hangs, waited for until it is pushing.
struct HangingRelease {
    child: std::process::Child,
    reader: Option<std::thread::JoinHandle<String>>,
    skopeo_marker: String,
}

impl HangingRelease {
    fn start(history: &Path, list: &Path, layouts: &Path, out: &Path) -> HangingRelease {
        use std::io::BufRead;
        use std::time::{Duration, Instant};
        let mut child = Command::new(regfs_bin())
            .arg("release")
            .arg("--history")
            .arg(history)
            .arg("--images")
            .arg(list)
            .arg("--from")
            .arg(format!("oci:{}", layouts.display()))
            .args(["--mode", &test_mode()])
            .arg("-o")
            .arg(out)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting regfs release");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        // Pushing once a copy hangs on the FIFO.
        let skopeo_marker = format!("oci:{}/", layouts.display());
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut pushing = false;
        while !pushing || processes_naming(&skopeo_marker).is_empty() {
            assert!(Instant::now() < deadline, "the release never reached its copies");
            assert!(child.try_wait().expect("polling regfs").is_none(), "regfs ended before the push");
            while let Ok(line) = rx.try_recv() {
                pushing |= line.contains("regfs release: push");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        HangingRelease { child, reader: Some(reader), skopeo_marker }
    }

    /// Sends `sig`; the exit status (within 30 s) and everything on stderr.
    fn stop(mut self, sig: i32) -> (std::process::ExitStatus, String) {
        use std::time::{Duration, Instant};
        regfs::sys::kill(self.child.id(), sig).expect("signalling regfs");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("polling regfs") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("regfs release did not stop within 30 s of signal {sig}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self.reader.take().map(|r| r.join().expect("stderr reader")).unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for HangingRelease {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn release_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = dir.path().join("history");
    fs::create_dir_all(history.join(V2)).expect("mkdir history");
    let before = tree::snapshot(&history);
    let images = oci::write_release(&dir.path().join("layouts"), &oci::release_set(1, 2, CHANGED_EVERY));
    let list = images_list(&dir.path().join("images.list"), &list_of(&images));
    let layer = images[1].layer_digests().into_iter().next().expect("a layer");
    let layouts = hanging_layouts(&dir.path().join("layouts"), &images[1], &layer, &dir.path().join("hanging"));
    let out = dir.path().join("release.tar");
    let running = HangingRelease::start(&history, &list, &layouts, &out);
    let marker = running.skopeo_marker.clone();
    let (status, stderr) = running.stop(libc::SIGTERM);
    assert!(!status.success(), "an interrupted release succeeded:\n{stderr}");
    assert!(stderr.contains("interrupted (SIGTERM)") && stderr.contains("no tar written"), "{stderr}");
    assert!(!out.exists(), "a tar was written");
    assert_nothing_left(&work_dir(&out));
    assert!(processes_naming(&marker).is_empty(), "skopeo copies survived: {:#?}", processes_naming(&marker));
    assert_unchanged(&before, &history);
}

/// Whether `path` is a mountpoint now.
fn mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    let want = path.display().to_string();
    info.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

#[test]
fn a_running_or_killed_release_is_named_and_resume_or_clean_finish_the_work() {
    let fx = Fixture::new();
    let list = images_list(&fx.path("images.list"), &list_of(&fx.release));
    let from = format!("oci:{}", fx.layouts.display());
    // What an undisturbed release gives: the tar every recovery must give too.
    let reference = fx.path("reference/release-2.tar");
    fs::create_dir_all(reference.parent().unwrap()).unwrap();
    summary(&regfs_release(&[&fx.history_root], &list, &from, &reference, &[]));

    // A layer release 2 adds (the history lacks it), as a FIFO: the push hangs there.
    let (image, layer) = fx.new_layer();
    let layouts = hanging_layouts(&fx.layouts, image, &layer, &fx.path("hanging"));
    let out = fx.path("release-2.tar");
    let work = work_dir(&out);
    let running = HangingRelease::start(&fx.history_root, &list, &layouts, &out);
    // Let the other copies land something in upper first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while fs::read_dir(work.join("upper")).map(|mut d| d.next().is_none()).unwrap_or(true) {
        assert!(std::time::Instant::now() < deadline, "nothing reached upper");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A second release on the same work dir while the first runs: refused, naming it.
    let o = regfs_release(&[&fx.history_root], &list, &from, &out, &[]);
    let err = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("a release is running with work dir") && err.contains(&running.child.id().to_string()),
        "{err}"
    );
    // Killed: its view stays mounted; the next run says how to recover and touches nothing.
    let (status, _) = running.stop(libc::SIGKILL);
    assert!(!status.success());
    assert!(mounted(&work.join("mnt")), "a killed release leaves its view mounted");
    let before = tree::snapshot(&work.join("upper"));
    let o = regfs_release(&[&fx.history_root], &list, &from, &out, &[]);
    let err = text(&o);
    assert!(!o.status.success() && err.contains(&format!("regfs umount {}", work.join("mnt").display())), "{err}");
    assert!(err.contains("--resume") && err.contains("--clean"), "{err}");
    assert!(mounted(&work.join("mnt")), "refusing unmounts nothing");
    assert_unchanged(&before, &work.join("upper"));
    // Unmounted by hand, the kept upper without --resume: refused, saying so.
    let o = support::mount::regfs(["umount", work.join("mnt").to_str().unwrap()]);
    assert!(o.status.success() && !mounted(&work.join("mnt")), "{}", text(&o));
    let o = regfs_release(&[&fx.history_root], &list, &from, &out, &[]);
    assert!(!o.status.success() && text(&o).contains("pass --resume to continue it"), "{}", text(&o));
    // --resume finishes it: the very tar of the undisturbed release.
    summary(&regfs_release(&[&fx.history_root], &list, &from, &out, &["--resume"]));
    assert_eq!(sha256_file(&out), sha256_file(&reference), "a resumed release is the undisturbed one");
    assert_nothing_left(&work);

    // Killed again, --clean unmounts, removes and starts over.
    let out = fx.path("again/release-2.tar");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let work = work_dir(&out);
    let (status, _) = HangingRelease::start(&fx.history_root, &list, &layouts, &out).stop(libc::SIGKILL);
    assert!(!status.success() && mounted(&work.join("mnt")));
    let before = tree::snapshot(&fx.history_root);
    summary(&regfs_release(&[&fx.history_root], &list, &from, &out, &["--clean"]));
    assert_eq!(sha256_file(&out), sha256_file(&reference), "a clean re-run is the undisturbed release");
    assert_nothing_left(&work);
    assert_unchanged(&before, &fx.history_root);
}

/// The repository directories a keep list hides: for each stale repository,
/// its topmost path prefix that holds no kept repository.
fn hidden_repo_dirs(stale: &BTreeSet<String>, kept: &BTreeSet<String>) -> BTreeSet<String> {
    let mut hidden = BTreeSet::new();
    for repo in stale {
        let parts: Vec<&str> = repo.split('/').collect();
        for n in 1..=parts.len() {
            let prefix = parts[..n].join("/");
            let holds_kept = kept.iter().any(|k| *k == prefix || k.starts_with(&format!("{prefix}/")));
            if !holds_kept {
                hidden.insert(prefix);
                break;
            }
        }
    }
    hidden
}

#[test]
fn plan_reports_kept_and_stale() {
    let fx = Fixture::new();
    let before = tree::snapshot(&fx.history_root);
    // Kept: a plain repository, one named with a tag, one in a namespace
    // whose sibling goes stale, and a repository the history lacks.
    let history_repos = fx.history_repos();
    let kept: BTreeSet<String> = ["app-00", "team/web-01", "org/tools/cli-02"].map(String::from).into();
    assert!(kept.is_subset(&history_repos));
    let keep = fx.path("keep.list");
    fs::write(&keep, "# kept\napp-00\nteam/web-01:r2\n\norg/tools/cli-02\nbrand/new:r2\n").expect("writing keep");
    let o = Command::new(regfs_bin())
        .args(["plan", "--json", "--lower"])
        .arg(&fx.history_root)
        .arg("--keep")
        .arg(&keep)
        .output()
        .expect("running regfs plan");
    let p = summary(&o);

    let stale: BTreeSet<String> = history_repos.difference(&kept).cloned().collect();
    let v2 = fx.history_root.join(V2);
    let sections = |name: &str| kept.iter().filter(|r| v2.join("repositories").join(r).join(name).is_dir()).count();
    let blobs = StoreFiles::of(&fx.history_root).blobs();
    assert_eq!(blobs, all_blobs(&fx.history));
    let sizes = blob_sizes(&fx.history);
    let want = serde_json::json!({
        "lowers": [fs::canonicalize(&fx.history_root).expect("canonical history").display().to_string()],
        "repos_kept": kept,
        "repos_stale": stale,
        "repos_new": ["brand/new"],
        "hidden_manifests": kept.len(),
        "hidden_uploads": sections("_uploads"),
        "hidden_layers": 0,
        "hidden_repo_dirs": hidden_repo_dirs(&stale, &kept).len(),
        "blobs_visible": blobs.len(),
        "blob_bytes_visible": blobs.iter().map(|d| sizes[d]).sum::<u64>(),
    });
    assert_eq!(p, want, "plan:\n{}", text(&o));
    assert!(sections("_manifests") == kept.len() && sections("_uploads") > 0, "the fixture has both sections");

    // Without a keep list nothing is stale.
    let o = Command::new(regfs_bin())
        .args(["plan", "--json", "--lower"])
        .arg(&fx.history_root)
        .output()
        .expect("regfs plan");
    let p = summary(&o);
    assert_eq!(p["repos_kept"], serde_json::json!(history_repos));
    assert_eq!((p["repos_stale"].as_array().map(Vec::len), p["hidden_repo_dirs"].as_u64()), (Some(0), Some(0)));
    assert_unchanged(&before, &fx.history_root);
}

fn regfs_absorb(history: &Path, upper: &Path) -> Output {
    Command::new(regfs_bin())
        .args(["absorb", "--json", "--history"])
        .arg(history)
        .arg("--upper")
        .arg(upper)
        .output()
        .expect("running regfs absorb")
}

/// Files named like absorb's temporary files anywhere below `root`.
fn absorb_temps(root: &Path) -> Vec<PathBuf> {
    tree::snapshot(root).into_keys().filter(|p| p.to_string_lossy().contains(".regfs-absorb")).collect()
}

fn blob_file(digest: &str) -> String {
    let hex = digest_hex(digest);
    format!("{V2}/blobs/sha256/{}/{hex}/data", &hex[..2])
}

#[test]
fn absorb_folds_a_release_into_history() {
    let fx = Fixture::new();
    let list = images_list(&fx.path("images.list"), &list_of(&fx.release));
    let out = fx.path("release-2.tar");
    let from2 = format!("oci:{}", fx.layouts.display());
    summary(&regfs_release(&[&fx.history_root], &list, &from2, &out, &[]));
    let upper = work_dir(&out).join("upper");
    let upper_before = tree::snapshot(&upper);

    // Absorbed: exactly the release's new blobs and its new _layers links.
    let absorbed_root = fx.path("history-absorbed");
    copy_tree(&fx.history_root, &absorbed_root);
    let files_before = StoreFiles::of(&absorbed_root).files;
    let snap_before = tree::snapshot(&absorbed_root);
    let o = regfs_absorb(&absorbed_root, &upper);
    let r = summary(&o);
    let new_blobs: BTreeSet<String> = all_blobs(&fx.release).difference(&all_blobs(&fx.history)).cloned().collect();
    let links = new_links(&fx.history, &fx.release);
    let sizes = blob_sizes(&fx.release);
    let want = serde_json::json!({
        "release": "release-2",
        "record_present": false,
        "blobs_added": new_blobs.len(),
        "blob_bytes_added": new_blobs.iter().map(|d| sizes[d]).sum::<u64>(),
        "blobs_present": 0,
        "links_added": links.len(),
        "links_present": 0,
    });
    assert_eq!(r, want, "first absorb:\n{}", text(&o));
    let files_after = StoreFiles::of(&absorbed_root).files;
    let added: BTreeSet<String> = files_after.difference(&files_before).cloned().collect();
    let mut expected: BTreeSet<String> = new_blobs.iter().map(|d| blob_file(d)).collect();
    expected.extend(
        links.iter().map(|(repo, d)| format!("{V2}/repositories/{repo}/_layers/sha256/{}/link", digest_hex(d))),
    );
    // And the release's record, beside the registry tree.
    expected.insert("regfs-releases/release-2.json".to_string());
    assert_eq!(added, expected, "files absorb added");
    let after = tree::snapshot(&absorbed_root);
    let touched: Vec<_> =
        snap_before.iter().filter(|(p, n)| after.get(*p) != Some(*n) && n.kind != 'd').map(|(p, _)| p).collect();
    assert!(touched.is_empty(), "absorb changed history files: {touched:#?}");
    for d in &new_blobs {
        let data = fs::read(absorbed_root.join(blob_file(d))).expect("an absorbed blob");
        assert_eq!(oci::sha256_digest(&data), *d);
    }
    assert!(absorb_temps(&absorbed_root).is_empty());
    assert_unchanged(&upper_before, &upper);

    // Again: nothing to add.
    let snap = tree::snapshot(&absorbed_root);
    let r = summary(&regfs_absorb(&absorbed_root, &upper));
    assert_eq!((r["blobs_added"].as_u64(), r["links_added"].as_u64()), (Some(0), Some(0)), "{r}");
    assert_eq!((&r["blobs_present"], &r["links_present"]), (&want["blobs_added"], &want["links_added"]));
    assert_eq!(r["record_present"], true, "{r}");
    assert_unchanged(&snap, &absorbed_root);

    // A blob whose content does not match its digest stops absorb, which
    // names the file and leaves nothing of it (nor a temporary file) behind.
    let damaged_upper = fx.path("upper-damaged");
    copy_tree(&upper, &damaged_upper);
    let victim = new_blobs.iter().next().expect("a new blob");
    let victim_file = damaged_upper.join(blob_file(victim));
    let mut bytes = fs::read(&victim_file).expect("reading the blob");
    bytes[0] ^= 0xff;
    fs::write(&victim_file, &bytes).expect("damaging the blob");
    let fresh = fx.path("history-fresh");
    copy_tree(&fx.history_root, &fresh);
    let o = regfs_absorb(&fresh, &damaged_upper);
    assert!(!o.status.success(), "absorb took a damaged blob:\n{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&victim_file.display().to_string()) && stderr.contains("does not match its digest"),
        "{}",
        text(&o)
    );
    assert!(!fresh.join(blob_file(victim)).exists());
    assert!(!fresh.join(blob_file(victim)).parent().expect("blob dir").exists(), "absorb made the damaged blob's dir");
    assert!(absorb_temps(&fresh).is_empty(), "temporary files left: {:#?}", absorb_temps(&fresh));

    // Release 3 over the absorbed history uploads only what neither
    // release 1 nor release 2 had: nothing absorbed is uploaded again.
    let layouts3 = fx.path("layouts-r3");
    let release3 = oci::write_release(&layouts3, &oci::release_set(3, RELEASE_IMAGES, CHANGED_EVERY));
    let list3 = images_list(&fx.path("images-3.list"), &list_of(&release3));
    let out3 = fx.path("release-3.tar");
    let o = regfs_release(&[&absorbed_root], &list3, &format!("oci:{}", layouts3.display()), &out3, &[]);
    let s = summary(&o);
    let shipped: BTreeSet<String> = all_blobs(&fx.history).union(&all_blobs(&fx.release)).cloned().collect();
    let r3_blobs = all_blobs(&release3);
    let uploaded3: BTreeSet<String> = r3_blobs.difference(&shipped).cloned().collect();
    assert_eq!(s["blobs"]["uploaded"].as_u64(), Some(uploaded3.len() as u64), "{}", text(&o));
    assert_eq!(s["blobs"]["reused"].as_u64(), Some((r3_blobs.len() - uploaded3.len()) as u64));
    let in_upper3 = StoreFiles::of(&work_dir(&out3).join("upper")).blobs();
    assert_eq!(in_upper3, uploaded3, "blobs release 3 uploaded");
    assert!(in_upper3.is_disjoint(&new_blobs) && !r3_blobs.is_disjoint(&new_blobs), "release 3 reuses absorbed blobs");
    assert_nothing_left(&work_dir(&out3));
}

#[test]
fn images_list_errors_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = dir.path().join("history");
    fs::create_dir_all(history.join(V2)).expect("mkdir history");
    let layouts = dir.path().join("layouts");
    fs::create_dir(&layouts).expect("mkdir layouts");
    let from = format!("oci:{}", layouts.display());
    let cases: &[(&str, &str, &str)] = &[
        ("app:r1\napp-b\n", ":2:", "no tag"),
        ("# header\napp:r1\nTeam/App:r1\n", ":3:", "is not a repository name"),
        ("app:r1\nteam/web:r1\n\napp:r1\n", ":4:", "app:r1 is listed twice (first on line 1)"),
        ("app:r1\napp:bad*tag\n", ":2:", "bad tag"),
        ("app:r1\nteam/app:bad/tag\n", ":2:", "bad tag \"bad/tag\""),
        ("# nothing\n\n", "", "no images listed"),
    ];
    for (i, (content, at, message)) in cases.iter().enumerate() {
        let list = dir.path().join(format!("images-{i}.list"));
        fs::write(&list, content).expect("writing the list");
        let out = dir.path().join(format!("release-{i}.tar"));
        let o = regfs_release(&[&history], &list, &from, &out, &[]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "case {i} succeeded:\n{}", text(&o));
        let located = format!("{}{at}", list.display());
        assert!(
            stderr.contains(&located) && stderr.contains(message),
            "case {i}: want {located:?} and {message:?}:\n{}",
            text(&o)
        );
        assert!(!out.exists() && !work_dir(&out).exists(), "case {i} wrote something");
        let doc: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("case {i}: no JSON ({e})"));
        assert_eq!((doc["ok"].as_bool(), doc["phase"].as_str()), (Some(false), Some("preflight")), "case {i}: {doc}");
    }

    // An existing tar is not overwritten without --force (nothing is written).
    fs::write(dir.path().join("ok.list"), "app:r1\n").expect("writing the list");
    let existing = dir.path().join("existing.tar");
    fs::write(&existing, b"an earlier release").expect("writing a tar");
    let o = regfs_release(&[&history], &dir.path().join("ok.list"), &from, &existing, &[]);
    assert!(!o.status.success() && text(&o).contains("already exists; pass --force"), "{}", text(&o));
    assert_eq!(fs::read(&existing).expect("reading it"), b"an earlier release");
    assert!(!work_dir(&existing).exists(), "no work dir for a refused release");

    // A work dir inside the history is refused before anything is written.
    fs::write(dir.path().join("ok.list"), "app:r1\n").expect("writing the list");
    let before = tree::snapshot(&history);
    let o = regfs_release(
        &[&history],
        &dir.path().join("ok.list"),
        &from,
        &dir.path().join("r.tar"),
        &["--workdir", &history.join("work").display().to_string()],
    );
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("overlap"), "{}", text(&o));
    assert_unchanged(&before, &history);
}

/// A release on a terminal (a pseudo-terminal through `script`): each phase
/// is named as it runs, the push shows images done and in flight and the
/// bytes written, and the log stays quiet without `-v`.
#[test]
fn a_release_on_a_terminal_names_each_phase_and_what_is_in_flight() {
    let fx = Fixture::new();
    let list = images_list(&fx.path("images.list"), &list_of(&fx.release));
    let out = fx.path("release-2.tar");
    let cmd = format!(
        "{} release --history {} --images {} --from oci:{} -o {} --mode {}",
        regfs_bin().display(),
        fx.history_root.display(),
        list.display(),
        fx.layouts.display(),
        out.display(),
        test_mode()
    );
    // A terminal as a person has one (the unprivileged pass runs with an empty environment).
    let o = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .expect("running script (util-linux)");
    let screen = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", text(&o));
    for phase in ["mount", "registry", "push", "gc", "export"] {
        assert!(screen.contains(phase), "the phase {phase} is named on the terminal:\n{screen}");
    }
    assert!(screen.contains("images") && screen.contains("in flight") && screen.contains("written"), "{screen}");
    assert!(!screen.contains(" INFO "), "no log lines without -v on a terminal:\n{screen}");
    assert!(screen.contains("images copied"), "the summary:\n{screen}");
    assert!(out.is_file());
    fs::write(fx.path("terminal.txt"), &screen).ok();
    eprintln!("--- a release on a terminal ---\n{}", screen.replace('\r', "\n"));
}
