//! A stock registry runs on the regfs view, and a release push reuses the history.
//!
//! One scenario, three stores, compared: release 2 is pushed with skopeo
//! (several copies at once) through a real `docker-registry` onto (a) an empty
//! directory, (b) kernel overlayfs over the release-1 history with the view's
//! policy materialised as whiteouts, (c) regfs over the same history. Each store
//! is then closed, opened again and served, and every image pulled back. A
//! behavioural difference between regfs and the kernel shows up as a failed
//! comparison of what the registry wrote or of what it serves.
//! Needs root (kernel overlay), FUSE, docker-registry and skopeo; never skipped.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use support::mount::{KernelOverlay, Mount};
use support::oci::{self, ImageRef, digest_hex};
use support::registry::{self, CopyOutput, Registry};
use support::release::{self, Pulled, SkopeoCache, StoreFiles, V2};
use support::tree;

/// Images of release 2; the history (release 1) has [`STALE_IMAGES`] more,
/// whose repositories release 2 no longer ships.
const RELEASE_IMAGES: usize = 20;
const STALE_IMAGES: usize = 2;
/// Release 2 changes every 10th image (images 0 and 10).
const CHANGED_EVERY: usize = 10;
/// Images new in release 2 (`team/web-04`): the history never had the
/// repository, but holds the data of its shared base layers.
const NEW_IMAGES: &[usize] = &[4];

/// The tests of this binary run one at a time: the push timings are taken on
/// an otherwise idle machine, and two scenarios at once would starve 2 cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Release 1 pushed into a plain history store, release 2 written as layouts.
struct Fixture {
    work: tempfile::TempDir,
    history_root: PathBuf,
    history: Vec<ImageRef>,
    release: Vec<ImageRef>,
}

impl Fixture {
    /// Release 1 has `release_images + stale_images` images but the history
    /// lacks those numbered in `new_images`.
    fn new(release_images: usize, stale_images: usize, new_images: &[usize]) -> Fixture {
        let work = tempfile::tempdir().expect("tempdir");
        let mut release1 = oci::release_set(1, release_images + stale_images, CHANGED_EVERY);
        for &i in new_images.iter().rev() {
            release1.remove(i);
        }
        let history = oci::write_release(&work.path().join("layouts-r1"), &release1);
        let release =
            oci::write_release(&work.path().join("layouts-r2"), &oci::release_set(2, release_images, CHANGED_EVERY));
        let history_root = work.path().join("history");
        release::build_history(&history_root, &history, &SkopeoCache::new());
        Fixture { work, history_root, history, release }
    }

    fn release_repos(&self) -> Vec<String> {
        sorted(self.release.iter().map(|i| i.repo.clone()))
    }

    fn history_repos(&self) -> Vec<String> {
        sorted(self.history.iter().map(|i| i.repo.clone()))
    }
}

fn sorted(it: impl Iterator<Item = String>) -> Vec<String> {
    it.collect::<BTreeSet<_>>().into_iter().collect()
}

/// The stores the release is pushed onto.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreKind {
    /// A plain empty directory: no history at all.
    Empty,
    /// `mount -t overlay` over the history, policy materialised as whiteouts.
    Kernel,
    /// `regfs mount --mode fuse` over the history.
    Regfs,
    /// `regfs mount --mode kernel` over the history (policy materialised by regfs).
    RegfsKernel,
}

/// An open store: the registry rootdirectory and what keeps it mounted.
enum Opened {
    Plain,
    Kernel(KernelOverlay),
    Regfs(Mount),
}

impl Opened {
    fn close(self) {
        match self {
            Opened::Plain => {}
            Opened::Kernel(overlay) => drop(overlay),
            Opened::Regfs(mount) => {
                mount.umount();
            }
        }
    }
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Empty => "empty",
            StoreKind::Kernel => "kernel-overlay",
            StoreKind::Regfs => "regfs",
            StoreKind::RegfsKernel => "regfs-kernel",
        }
    }

    /// The history images this store starts with.
    fn history(self, fx: &Fixture) -> &[ImageRef] {
        if self == StoreKind::Empty { &[] } else { &fx.history }
    }

    /// Where the registry's writes land: the directory itself, or the upper.
    fn written_dir(self, dir: &Path) -> PathBuf {
        dir.join(if self == StoreKind::Empty { "store" } else { "upper" })
    }

    /// Creates the store's directories (and the kernel's policy whiteouts).
    fn prepare(self, dir: &Path, history: &Path) {
        let written = self.written_dir(dir);
        fs::create_dir_all(&written).unwrap_or_else(|e| panic!("creating {}: {e}", written.display()));
        if self == StoreKind::Kernel {
            let whiteouts = release::materialise_policy(history, &written);
            assert!(!whiteouts.is_empty(), "the history has _manifests to hide");
        }
    }

    /// Opens the store; `phase` names the mountpoint and a fresh kernel work
    /// dir; `keep` is passed to regfs only. Returns the rootdirectory to serve.
    fn open(self, dir: &Path, history: &Path, phase: &str, keep: Option<&Path>) -> (PathBuf, Opened) {
        let upper = self.written_dir(dir);
        // One mountpoint per phase: regfs keeps one daemon log per mountpoint.
        let mnt = dir.join(format!("mnt-{phase}"));
        match self {
            StoreKind::Empty => (upper, Opened::Plain),
            StoreKind::Kernel => {
                let work = dir.join(format!("work-{phase}"));
                (mnt.clone(), Opened::Kernel(KernelOverlay::mount(&[history], &upper, &work, &mnt)))
            }
            StoreKind::Regfs | StoreKind::RegfsKernel => {
                let mode = if self == StoreKind::Regfs { "fuse" } else { "kernel" };
                let mut extra = vec!["--mode", mode];
                if let Some(keep) = keep {
                    extra.extend(["--keep", keep.to_str().expect("UTF-8 temp path")]);
                }
                (mnt.clone(), Opened::Regfs(Mount::fuse(&[history], &upper, &mnt, &extra)))
            }
        }
    }
}

/// What one store went through.
struct Outcome {
    kind: StoreKind,
    catalog_before_push: Vec<String>,
    catalog_after_push: Vec<String>,
    pushes: Vec<CopyOutput>,
    push_time: Duration,
    written: StoreFiles,
    catalog_served_again: Vec<String>,
    pulled: Vec<Pulled>,
}

/// Before the push the registry must say "exists" for exactly the blobs the
/// history links in the same repository.
fn assert_blob_answers(registry: &Registry, history: &[ImageRef], release: &[ImageRef], kind: StoreKind) {
    for image in release {
        let linked = release::linked_in(history, &image.repo);
        for digest in image.linked_blob_digests() {
            assert_eq!(
                registry::blob_exists(registry, &image.repo, &digest),
                linked.contains(&digest),
                "{kind:?}: HEAD /v2/{}/blobs/{digest} before the push",
                image.repo
            );
        }
    }
}

/// Pushes the release onto a store, closes it, opens it again (regfs with
/// `--keep` naming the release) and pulls every image back.
fn run(kind: StoreKind, fx: &Fixture) -> Outcome {
    let dir = fx.work.path().join(kind.name());
    kind.prepare(&dir, &fx.history_root);
    let cache = SkopeoCache::new();

    let (root, opened) = kind.open(&dir, &fx.history_root, "push", None);
    let registry = Registry::start(&root);
    assert_blob_answers(&registry, kind.history(fx), &fx.release, kind);
    let catalog_before_push = registry::catalog(&registry);
    let (pushes, push_time) = release::push_release(&registry, &fx.release, &cache);
    // Listings read in the same session as the writes (no stale caches):
    // new repositories appear, and only the release's tags are there.
    let catalog_after_push = registry::catalog(&registry);
    for image in &fx.release {
        assert_eq!(
            release::tags(&registry, &image.repo),
            std::slice::from_ref(&image.tag),
            "{kind:?}: tags of {}",
            image.repo
        );
    }
    release::assert_clean_log(&registry);
    registry.stop();
    opened.close();
    let written = StoreFiles::of(&kind.written_dir(&dir));

    let keep = dir.join("keep.txt");
    let keep_lines: Vec<String> = fx.release.iter().map(|i| format!("{}:{}\n", i.repo, i.tag)).collect();
    fs::write(&keep, keep_lines.concat()).expect("writing the keep file");
    let (root, opened) = kind.open(&dir, &fx.history_root, "serve", Some(&keep));
    let registry = Registry::start(&root);
    let catalog_served_again = registry::catalog(&registry);
    let pulled = release::pull_release(&registry, &fx.release, &dir.join("pulled"), &cache);
    release::assert_clean_log(&registry);
    registry.stop();
    opened.close();

    Outcome { kind, catalog_before_push, catalog_after_push, pushes, push_time, written, catalog_served_again, pulled }
}

/// Panics listing only the differences between two sets.
fn assert_same_set(what: &str, left_name: &str, left: &BTreeSet<String>, right_name: &str, right: &BTreeSet<String>) {
    let only_left: Vec<&String> = left.difference(right).collect();
    let only_right: Vec<&String> = right.difference(left).collect();
    assert!(
        only_left.is_empty() && only_right.is_empty(),
        "{what}: only in {left_name}: {only_left:#?}\nonly in {right_name}: {only_right:#?}"
    );
}

/// For a repository of the history, skopeo reused (HEAD said "exists")
/// exactly the layers the history links there, and uploaded exactly the
/// configs and layers it does not. A repository new to the history may have
/// had layers mounted from another repository (skopeo's cache learns of them
/// during the push, so which depends on timing): all it skipped must be
/// layers, and skipped plus uploaded must be all it links.
fn assert_reuse(outcome: &Outcome, history: &[ImageRef], release: &[ImageRef]) {
    for (image, output) in release.iter().zip(&outcome.pushes) {
        let old = release::linked_in(history, &image.repo);
        let (skipped, uploaded) = (output.skipped_blobs(), output.uploaded_blobs());
        let what = format!("{:?} push of {}:{}", outcome.kind, image.repo, image.tag);
        if old.is_empty() {
            let handled: BTreeSet<String> = skipped.union(&uploaded).cloned().collect();
            assert!(skipped.is_disjoint(&uploaded) && skipped.is_subset(&image.layer_digests()), "{what}:\n{output}");
            assert_same_set(
                &format!("{what}: handled blobs"),
                "skopeo",
                &handled,
                "image",
                &image.linked_blob_digests(),
            );
            continue;
        }
        let reused: BTreeSet<String> = image.layer_digests().intersection(&old).cloned().collect();
        let new: BTreeSet<String> = image.linked_blob_digests().difference(&old).cloned().collect();
        assert_same_set(&format!("{what}: skipped blobs"), "skopeo", &skipped, "history", &reused);
        assert_same_set(&format!("{what}: uploaded blobs"), "skopeo", &uploaded, "expected", &new);
    }
}

/// (skipped, uploaded) blob counts over a push.
fn skopeo_totals(outputs: &[CopyOutput]) -> (usize, usize) {
    outputs.iter().fold((0, 0), |(s, u), o| (s + o.skipped_blobs().len(), u + o.uploaded_blobs().len()))
}

#[test]
fn release_push_on_regfs_reuses_history_like_kernel_overlay() {
    let _serial = serial();
    let fx = Fixture::new(RELEASE_IMAGES, STALE_IMAGES, NEW_IMAGES);
    let history_before = tree::snapshot(&fx.history_root);
    assert!(fx.release.iter().any(ImageRef::is_index) && fx.release.iter().any(|i| i.repo.contains('/')));

    let [empty, kernel, regfs, regfs_kernel] =
        [StoreKind::Empty, StoreKind::Kernel, StoreKind::Regfs, StoreKind::RegfsKernel].map(|kind| run(kind, &fx));

    // The history is byte-for-byte what the history registry left.
    let history_after = tree::snapshot(&fx.history_root);
    let changed: Vec<_> = history_before
        .keys()
        .chain(history_after.keys())
        .filter(|p| history_before.get(*p) != history_after.get(*p))
        .collect();
    assert!(changed.is_empty(), "the history (lower) changed: {changed:#?}");

    // What the registry wrote: only what release 2 adds over the history,
    // the same under regfs and kernel overlay, and no whiteouts from regfs.
    let expected_over_history = release::expected_push_files(&fx.history, &fx.release);
    assert_same_set("files written", "regfs upper", &regfs.written.files, "kernel upper", &kernel.written.files);
    assert_same_set("blobs stored", "regfs upper", &regfs.written.blobs(), "kernel upper", &kernel.written.blobs());
    assert_same_set("files written", "regfs upper", &regfs.written.files, "expected", &expected_over_history);
    assert!(regfs.written.whiteouts.is_empty(), "a pure push whited out {:#?}", regfs.written.whiteouts);
    // regfs in kernel mode: the same files; its whiteouts are the policy's.
    assert_same_set(
        "files written",
        "regfs-kernel upper",
        &regfs_kernel.written.files,
        "expected",
        &expected_over_history,
    );
    assert_eq!(regfs_kernel.written.blobs(), regfs.written.blobs());
    let expected_from_scratch = release::expected_push_files(&[], &fx.release);
    assert_same_set("files written", "empty store", &empty.written.files, "expected", &expected_from_scratch);
    let history_blobs: BTreeSet<String> = fx.history.iter().flat_map(ImageRef::blob_digests).collect();
    let new_blobs: BTreeSet<String> =
        fx.release.iter().flat_map(ImageRef::blob_digests).filter(|d| !history_blobs.contains(d)).collect();
    // Nothing the history held was written again: no blob data, no link.
    assert_eq!(regfs.written.blobs(), new_blobs);
    for image in &fx.release {
        for digest in release::linked_in(&fx.history, &image.repo).intersection(&image.linked_blob_digests()) {
            let link = format!("{V2}/repositories/{}/_layers/sha256/{}/link", image.repo, digest_hex(digest));
            assert!(!regfs.written.files.contains(&link), "{link} written again in regfs upper");
        }
    }

    // The registry answered "exists" for every reused blob, as skopeo saw it.
    assert_reuse(&regfs, &fx.history, &fx.release);
    assert_reuse(&regfs_kernel, &fx.history, &fx.release);
    assert_reuse(&kernel, &fx.history, &fx.release);

    // The history's repositories are all there before the push, and the new
    // one after it; served again with --keep only the release's are (the
    // kernel mount has no --keep).
    let all_repos = sorted(fx.history_repos().into_iter().chain(fx.release_repos()));
    assert_eq!(regfs.catalog_before_push, fx.history_repos());
    assert_eq!(kernel.catalog_before_push, fx.history_repos());
    assert_eq!(empty.catalog_before_push, Vec::<String>::new());
    assert_eq!(regfs.catalog_after_push, all_repos);
    assert_eq!(kernel.catalog_after_push, all_repos);
    assert_eq!(empty.catalog_after_push, fx.release_repos());
    assert_eq!(regfs.catalog_served_again, fx.release_repos());
    assert_eq!(regfs_kernel.catalog_before_push, fx.history_repos());
    assert_eq!(regfs_kernel.catalog_after_push, all_repos);
    assert_eq!(regfs_kernel.catalog_served_again, fx.release_repos());
    assert_eq!(kernel.catalog_served_again, all_repos);
    assert_eq!(empty.catalog_served_again, fx.release_repos());

    // Every image comes back whole from every store.
    let expected_pulls: Vec<Pulled> = fx.release.iter().map(Pulled::expected).collect();
    for outcome in [&empty, &kernel, &regfs, &regfs_kernel] {
        assert_eq!(outcome.pulled, expected_pulls, "{:?}: pulled images", outcome.kind);
    }

    let linked: usize = fx.release.iter().map(|i| i.linked_blob_digests().len()).sum();
    eprintln!(
        "release 2 push: {} images, {} linked blobs, {} blobs new over the history, {} skopeo copies at once",
        fx.release.len(),
        linked,
        new_blobs.len(),
        release::PARALLEL_COPIES
    );
    for (label, outcome) in [
        ("(a) empty store", &empty),
        ("(b) kernel overlay over r1", &kernel),
        ("(c) regfs over r1", &regfs),
        ("(d) regfs kernel mode", &regfs_kernel),
    ] {
        let (skipped, uploaded) = skopeo_totals(&outcome.pushes);
        eprintln!("  {label:<28} {:>8.2?}  skipped {skipped:>3}, uploaded {uploaded:>3}", outcome.push_time);
    }
}

/// The part of a `Location` header after the host: `/v2/...`.
fn location_path(response: &registry::HttpResponse) -> String {
    let location = response.header("location").expect("a Location header");
    location[location.find("/v2/").expect("Location names a /v2/ path")..].to_string()
}

/// The session id of an upload the registry opened (202 Accepted).
fn upload_uuid(response: &registry::HttpResponse) -> String {
    response.header("docker-upload-uuid").expect("a Docker-Upload-UUID header").to_string()
}

/// New repositories get the history's blobs without a byte of blob data
/// going to upper: by cross-repo mount from a history repository, and by a
/// plain upload of blobs only the history holds (the registry finds the data
/// and drops the upload).
#[test]
fn new_repos_reuse_history_blobs_on_regfs() {
    let _serial = serial();
    let fx = Fixture::new(3, 0, &[]);
    let history_before = tree::snapshot(&fx.history_root);
    let upper = fx.work.path().join("upper");
    let mount = Mount::fuse(&[&fx.history_root], &upper, &fx.work.path().join("mnt"), &["--mode", "fuse"]);
    let registry = Registry::start(&mount.mountpoint);

    // Cross-repo mount of the index image's arm64 app layer, which only its
    // own history repository links.
    let source = fx.history.iter().find(|i| i.is_index()).expect("the history has an index");
    let digest = source.manifests.last().and_then(|m| m.layers.last()).expect("a layer").clone();
    let target = "release/mounted";
    assert!(registry::blob_exists(&registry, &source.repo, &digest));
    assert!(!registry::blob_exists(&registry, target, &digest));
    let path = format!("/v2/{target}/blobs/uploads/?mount={digest}&from={}", source.repo);
    let response = registry.request("POST", &path, &[("Content-Length", "0")]);
    assert_eq!(response.status, 201, "POST {path}: {}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(location_path(&response), format!("/v2/{target}/blobs/{digest}"));
    assert!(registry::blob_exists(&registry, target, &digest));

    // A blob the source repository does not link is not mounted: the
    // registry opens an upload session instead (left open: cancelling one
    // makes distribution 2.8.2 log an error and leave a hash state behind,
    // on any storage).
    let foreign = fx.history[0].manifests[0].layers.last().expect("a layer").clone();
    assert!(!source.layer_digests().contains(&foreign));
    let path = format!("/v2/{target}/blobs/uploads/?mount={foreign}&from={}", source.repo);
    let upload = registry.request("POST", &path, &[("Content-Length", "0")]);
    assert_eq!(upload.status, 202, "POST {path}: {}", String::from_utf8_lossy(&upload.body));
    assert!(!registry::blob_exists(&registry, target, &foreign));

    // A history image pushed into a new repository by a skopeo that knows
    // nothing: every blob is uploaded, and the registry keeps the history's data.
    let copy = ImageRef { repo: "release/copy".into(), ..fx.history[0].clone() };
    let cache = SkopeoCache::new();
    let output = cache
        .copy(&copy.oci_reference(), &registry.reference(&copy.repo, &copy.tag), &["--all"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.uploaded_blobs(), copy.linked_blob_digests(), "{output}");
    assert!(output.skipped_blobs().is_empty(), "{output}");
    let pulled = release::pull_release(&registry, std::slice::from_ref(&copy), &fx.work.path().join("pulled"), &cache);
    assert_eq!(pulled, [Pulled::expected(&copy)]);
    release::assert_clean_log(&registry);
    registry.stop();
    mount.umount();

    let mut written = StoreFiles::of(&upper);
    let session = format!("{V2}/repositories/{target}/_uploads/{}/", upload_uuid(&upload));
    assert!(written.files.iter().any(|f| f.starts_with(&session)), "no {session} in upper");
    written.files.retain(|f| !f.starts_with(&session));
    let mut expected = release::expected_push_files(&fx.history, std::slice::from_ref(&copy));
    expected.insert(format!("{V2}/repositories/{target}/_layers/sha256/{}/link", digest_hex(&digest)));
    assert_same_set("files written", "regfs upper", &written.files, "expected", &expected);
    assert!(written.blobs().is_empty(), "blob data stored again: {:#?}", written.blobs());
    assert!(written.whiteouts.is_empty(), "{:#?}", written.whiteouts);
    let link = upper.join(format!("{V2}/repositories/{target}/_layers/sha256/{}/link", digest_hex(&digest)));
    assert_eq!(fs::read_to_string(&link).expect("reading the mounted link"), digest);
    assert!(tree::snapshot(&fx.history_root) == history_before, "the history (lower) changed");
}
