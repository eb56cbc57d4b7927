//! Release pipelines against real stores: a history built through a registry,
//! parallel skopeo pushes and pulls with a private blob-info cache, the view's
//! policy materialised for kernel overlayfs, and what a store holds afterwards.

use crate::support::oci::{self, ImageRef, REF_NAME_ANNOTATION, digest_hex, sha256_digest};
use crate::support::registry::{self, CopyOutput, Registry};
use crate::support::tree;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How many skopeo copies run at once, as in a release pipeline.
pub const PARALLEL_COPIES: usize = 4;

/// The registry's data below a rootdirectory.
pub const V2: &str = "docker/registry/v2";

/// A private skopeo blob-info cache, so what earlier runs (or other tests)
/// taught skopeo about where blobs live can't turn an upload into a cross-repo
/// mount or a skip.
///
/// skopeo 1.9.3 has no flag for the cache; as root it uses
/// `/var/lib/containers/cache`. containers/image picks the cache directory by
/// the *rootless* uid, read from `_CONTAINERS_ROOTLESS_UID` when set: a non-zero
/// value sends it to `$XDG_DATA_HOME/containers/cache`. Every copy checks from
/// skopeo's debug log that the private cache was really used.
pub struct SkopeoCache {
    dir: tempfile::TempDir,
}

impl SkopeoCache {
    pub fn new() -> SkopeoCache {
        let dir = tempfile::Builder::new()
            .prefix("regfs-skopeo-cache-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a skopeo cache dir: {e}"));
        SkopeoCache { dir }
    }

    /// `skopeo copy` (see [`registry::skopeo_copy`]) using this cache; `Err`
    /// holds the whole output when the copy fails.
    pub fn copy(&self, src: &str, dst: &str, extra_args: &[&str]) -> Result<CopyOutput, String> {
        let env = [("_CONTAINERS_ROOTLESS_UID", OsStr::new("1000")), ("XDG_DATA_HOME", self.dir.path().as_os_str())];
        let out = registry::skopeo_copy_env(src, dst, extra_args, &env).map_err(|o| o.to_string())?;
        let marker = format!("Using blob info cache at {}", self.dir.path().join("containers/cache").display());
        if !out.stderr.contains(&marker) {
            return Err(format!("skopeo did not use the private blob-info cache ({marker:?} missing):\n{out}"));
        }
        Ok(out)
    }
}

/// Runs `f` over `items`, [`PARALLEL_COPIES`] at a time, results in item order.
/// Stops handing out work after the first error; panics with every error.
pub fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> Result<R, String> + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<R, String>>>> = Mutex::new(items.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL_COPIES.min(items.len()) {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let result = f(item);
                    failed.fetch_or(result.is_err(), Ordering::Relaxed);
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(result);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let errors: Vec<String> = results.iter().flatten().filter_map(|r| r.as_ref().err().cloned()).collect();
    assert!(errors.is_empty(), "{} of {} jobs failed:\n{}", errors.len(), items.len(), errors.join("\n\n"));
    results.into_iter().map(|r| r.expect("every job ran").expect("no job failed")).collect()
}

/// Pushes every image (all platforms, digests preserved) in parallel; returns
/// skopeo's outputs in image order and the wall time of the whole push.
pub fn push_release(registry: &Registry, images: &[ImageRef], cache: &SkopeoCache) -> (Vec<CopyOutput>, Duration) {
    let started = Instant::now();
    let outputs = parallel(images, |image| {
        let dst = registry.reference(&image.repo, &image.tag);
        cache.copy(&image.oci_reference(), &dst, &["--all"]).map_err(|e| format!("pushing {dst}: {e}"))
    });
    (outputs, started.elapsed())
}

/// Builds a history store under `root`: a registry there, `images` pushed, stopped.
pub fn build_history(root: &Path, images: &[ImageRef], cache: &SkopeoCache) {
    fs::create_dir_all(root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
    let registry = Registry::start(root);
    push_release(&registry, images, cache);
    assert_clean_log(&registry);
    registry.stop();
}

/// What a pulled image is made of: the digest its tag names and every blob.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pulled {
    pub repo: String,
    pub tag: String,
    pub digest: String,
    pub blobs: BTreeSet<String>,
}

impl Pulled {
    /// What pulling `image` must give back.
    pub fn expected(image: &ImageRef) -> Pulled {
        Pulled {
            repo: image.repo.clone(),
            tag: image.tag.clone(),
            digest: image.digest.clone(),
            blobs: image.blob_digests(),
        }
    }

    /// Reads a pulled OCI layout, checking that every blob hashes to its name.
    fn read(layout: &Path, repo: &str, tag: &str) -> Result<Pulled, String> {
        let index_path = layout.join("index.json");
        let index: serde_json::Value = fs::read(&index_path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| format!("{}: {e}", index_path.display()))?;
        let digests: Vec<&str> = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["annotations"][REF_NAME_ANNOTATION] == tag)
            .filter_map(|m| m["digest"].as_str())
            .collect();
        let [digest] = digests[..] else {
            return Err(format!("{}: tag {tag} names {digests:?}", index_path.display()));
        };
        let mut blobs = BTreeSet::new();
        let dir = layout.join("blobs/sha256");
        for entry in fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let name = format!("sha256:{}", path.file_name().unwrap_or_default().to_string_lossy());
            if sha256_digest(&bytes) != name {
                return Err(format!("{} does not hash to its name", path.display()));
            }
            blobs.insert(name);
        }
        Ok(Pulled { repo: repo.to_string(), tag: tag.to_string(), digest: digest.to_string(), blobs })
    }
}

/// Pulls every image back (all platforms, uncompressed, digests preserved)
/// into layouts under `out_root`, in parallel; returns them in image order.
pub fn pull_release(registry: &Registry, images: &[ImageRef], out_root: &Path, cache: &SkopeoCache) -> Vec<Pulled> {
    parallel(images, |image| {
        let layout = oci::layout_dir(out_root, &image.repo);
        fs::create_dir_all(layout.parent().expect("a layout has a parent")).map_err(|e| e.to_string())?;
        let src = registry.reference(&image.repo, &image.tag);
        let dst = format!("oci:{}:{}", layout.display(), image.tag);
        cache
            .copy(&src, &dst, &["--all", "--dest-oci-accept-uncompressed-layers"])
            .map_err(|e| format!("pulling {src}: {e}"))?;
        Pulled::read(&layout, &image.repo, &image.tag)
    })
}

/// `GET /v2/<repo>/tags/list`, sorted; panics on a non-200.
pub fn tags(registry: &Registry, repo: &str) -> Vec<String> {
    let path = format!("/v2/{repo}/tags/list");
    let response = registry.request("GET", &path, &[]);
    let body = String::from_utf8_lossy(&response.body);
    assert_eq!(response.status, 200, "GET {path}: {body}");
    let value: serde_json::Value =
        serde_json::from_slice(&response.body).unwrap_or_else(|e| panic!("GET {path}: bad JSON ({e}): {body}"));
    let mut tags: Vec<String> =
        value["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_string)).collect();
    tags.sort();
    tags
}

/// Panics with the log lines if the registry logged an error other than a
/// client's 4xx (a HEAD of a missing blob logs `level=error` too) or answered
/// a 5xx.
pub fn assert_clean_log(registry: &Registry) {
    let log = registry.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| {
            let error = ["level=error", "level=fatal", "level=panic"].iter().any(|e| l.contains(e));
            (error && !l.contains("http.response.status=4")) || l.contains("http.response.status=5")
        })
        .collect();
    assert!(bad.is_empty(), "registry on {} logged errors:\n{}", registry.root().display(), bad.join("\n"));
}

/// The non-directory entries of a store (paths relative to its root), with the
/// kernel's 0/0 whiteouts apart from everything else.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StoreFiles {
    pub files: BTreeSet<String>,
    pub whiteouts: BTreeSet<String>,
}

impl StoreFiles {
    pub fn of(root: &Path) -> StoreFiles {
        let mut out = StoreFiles::default();
        for (path, node) in tree::snapshot(root) {
            let path = path.display().to_string();
            match (node.kind, node.content.as_str()) {
                ('d', _) => {}
                ('c', "0") => {
                    out.whiteouts.insert(path);
                }
                _ => {
                    out.files.insert(path);
                }
            }
        }
        out
    }

    /// Digests of the blobs stored (`…/blobs/sha256/<xx>/<hex>/data`).
    pub fn blobs(&self) -> BTreeSet<String> {
        let prefix = format!("{V2}/blobs/sha256/");
        self.files
            .iter()
            .filter_map(|p| p.strip_prefix(&prefix)?.strip_suffix("/data")?.split_once('/'))
            .map(|(_, hex)| format!("sha256:{hex}"))
            .collect()
    }
}

fn blob_path(digest: &str) -> String {
    let hex = digest_hex(digest);
    format!("{V2}/blobs/sha256/{}/{hex}/data", &hex[..2])
}

fn repo_path(repo: &str, rel: &str) -> String {
    format!("{V2}/repositories/{repo}/{rel}")
}

/// The blobs (configs and layers) `history` links in repository `repo`.
pub fn linked_in(history: &[ImageRef], repo: &str) -> BTreeSet<String> {
    history.iter().filter(|old| old.repo == repo).flat_map(ImageRef::linked_blob_digests).collect()
}

/// Every file a registry writes when `pushed` goes onto a store that already
/// holds `history` (reused blobs are neither uploaded nor linked again; the
/// history's manifests are not seen, so every revision and tag is written).
pub fn expected_push_files(history: &[ImageRef], pushed: &[ImageRef]) -> BTreeSet<String> {
    let stored: BTreeSet<String> = history.iter().flat_map(ImageRef::blob_digests).collect();
    let mut files = BTreeSet::new();
    for image in pushed {
        let linked = linked_in(history, &image.repo);
        files.extend(image.blob_digests().difference(&stored).map(|d| blob_path(d)));
        let link = |rel: String| repo_path(&image.repo, &format!("{rel}/link"));
        files.extend(
            image.linked_blob_digests().difference(&linked).map(|d| link(format!("_layers/sha256/{}", digest_hex(d)))),
        );
        files.extend(
            image.manifest_digests().iter().map(|d| link(format!("_manifests/revisions/sha256/{}", digest_hex(d)))),
        );
        files.insert(link(format!("_manifests/tags/{}/current", image.tag)));
        files.insert(link(format!("_manifests/tags/{}/index/sha256/{}", image.tag, digest_hex(&image.digest))));
    }
    files
}

/// Materialises the view's default policy for a kernel overlay of `lower`:
/// a 0/0 whiteout in `upper` over every repository's `_manifests` and
/// `_uploads`. Returns the whiteouts made (paths relative to `upper`).
pub fn materialise_policy(lower: &Path, upper: &Path) -> Vec<PathBuf> {
    let mut made = Vec::new();
    let mut dirs = vec![Path::new(V2).join("repositories")];
    while let Some(rel) = dirs.pop() {
        let dir = lower.join(&rel);
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
            let entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            let child = rel.join(&name);
            if name == "_manifests" || name == "_uploads" {
                let parent = upper.join(&rel);
                fs::create_dir_all(&parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
                let whiteout = upper.join(&child);
                regfs::sys::mknod(&whiteout, libc::S_IFCHR, regfs::sys::makedev(0, 0))
                    .unwrap_or_else(|e| panic!("mknod {} c 0 0: {e}", whiteout.display()));
                made.push(child);
            } else if !name.as_encoded_bytes().starts_with(b"_") {
                dirs.push(child);
            }
        }
    }
    made
}
