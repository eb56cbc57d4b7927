//! The bad-input corpus: every case gets a clear error that names the path
//! (or the right behaviour), and nothing is lost: the lowers are unchanged
//! to the byte, and so is the upper wherever the command refused.
//!
//! Already covered elsewhere, so not repeated here: a lower that is not a
//! registry root and an upper inside a lower for `mount`, a bad `--keep`
//! line (fuse_view); trailing-newline, uppercase, `sha256:../../etc` and
//! misfiled links in the upper, a binary manifest, a missing index child
//! (gc); an absolute symlink and a fifo in the upper, bad tar targets, a
//! corrupt blob (export).
//!
//! Root bypasses file permissions: the unreadable-file cases run the
//! commands as the unprivileged user `regfs-ci` (through `runuser`) when the
//! suite runs as root, and state the root behaviour explicitly.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::fixtures;

use fixtures::{StoreWriter, V2, app_store, empty_root, regfs_layers, regfs_ok, text};
use serde_json::{Value, json};
use support::mount::{Mount, is_root, regfs_bin};
use support::oci;
use support::tree::{self, Node, snapshot};

type Snap = BTreeMap<PathBuf, Node>;

/// A history lower and a release upper in one temp dir, with a transparent
/// policy file (the history's `_manifests` visible, so gc reads them).
struct Layers {
    tmp: tempfile::TempDir,
    lower: StoreWriter,
    upper: PathBuf,
    transparent: String,
}

impl Layers {
    /// `app:v1` in the lower; an empty upper.
    fn new() -> (Layers, String, Vec<String>) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (lower, m, layers) = app_store(&tmp.path().join("history"));
        let upper = tmp.path().join("upper");
        fs::create_dir(&upper).expect("mkdir upper");
        let transparent = tmp.path().join("transparent.json");
        fs::write(&transparent, r#"{"hide_sections": []}"#).expect("policy");
        let transparent = transparent.to_str().expect("UTF-8 temp path").to_string();
        (Layers { tmp, lower, upper, transparent }, m, layers)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn snaps(&self) -> (Snap, Snap) {
        (snapshot(&self.lower.root), snapshot(&self.upper))
    }

    /// `regfs SUB --lower L --upper U [--policy transparent] EXTRA...`.
    fn run(&self, sub: &str, transparent: bool, extra: &[&str]) -> Output {
        let mut args: Vec<&str> = Vec::new();
        if transparent {
            args.extend(["--policy", &self.transparent]);
        }
        args.extend_from_slice(extra);
        regfs_layers(sub, &[&self.lower.root], &self.upper, &args)
    }

    /// gc in every mode refuses, naming `must_name` and saying why, and
    /// neither layer changes.
    fn gc_refuses(&self, case: &str, transparent: bool, must_name: &str, why: &str) {
        let before = self.snaps();
        for extra in [&["--dry-run"][..], &[][..], &["--delete-untagged"][..]] {
            let out = self.run("gc", transparent, extra);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{case}: gc {extra:?} must fail:\n{}", text(&out));
            assert!(err.contains(must_name), "{case}: gc {extra:?} must name {must_name}:\n{err}");
            assert!(err.contains(why), "{case}: gc {extra:?} must say {why:?}:\n{err}");
            assert!(err.contains("stopped before deleting anything"), "{case}:\n{err}");
            assert_eq!(self.snaps(), before, "{case}: gc {extra:?} changed a layer");
        }
    }

    /// A link GC takes by its path: gc runs without reading it, `regfs
    /// verify` refuses the store naming it and saying why; no layer changes.
    fn verify_refuses(&self, case: &str, transparent: bool, must_name: &str, why: &str) {
        let before = self.snaps();
        let out = self.run("gc", transparent, &["--dry-run"]);
        assert!(out.status.success(), "{case}: gc must not read the link:\n{}", text(&out));
        let out = self.run("verify", transparent, &[]);
        let all = text(&out);
        assert!(!out.status.success(), "{case}: verify must fail:\n{all}");
        assert!(
            all.contains(must_name) && all.contains(why),
            "{case}: verify must name {must_name} and say {why:?}:\n{all}"
        );
        assert_eq!(self.snaps(), before, "{case}: verify changed a layer");
    }

    /// A bad link: a tag's `current` stops gc; any other, verify.
    fn link_refused(&self, case: &str, transparent: bool, must_name: &str, why: &str) {
        if must_name.contains("/current/") {
            self.gc_refuses(case, transparent, must_name, why);
        } else {
            self.verify_refuses(case, transparent, must_name, why);
        }
    }

    /// gc succeeds; returns its JSON report. The lower never changes.
    fn gc_ok(&self, transparent: bool, extra: &[&str]) -> Value {
        let lower = snapshot(&self.lower.root);
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let out = self.run("gc", transparent, &args);
        assert!(out.status.success(), "gc must succeed:\n{}", text(&out));
        assert_eq!(snapshot(&self.lower.root), lower, "gc wrote the lower");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("gc --json: {e}\n{}", text(&out)))
    }

    /// export refuses, naming `must_name`; no tar (nor temporary) is left.
    fn export_refuses(&self, transparent: bool, must_name: &str, why: &str) {
        let out_dir = self.path("out");
        let _ = fs::remove_dir_all(&out_dir);
        fs::create_dir(&out_dir).expect("mkdir out");
        let before = self.snaps();
        let tar = out_dir.join("r.tar");
        let out = self.run("export", transparent, &["-o", tar.to_str().expect("UTF-8")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "export must fail:\n{}", text(&out));
        assert!(err.contains(must_name) && err.contains(why), "export must name {must_name} ({why}):\n{err}");
        assert_eq!(fs::read_dir(&out_dir).expect("readdir").count(), 0, "no tar and no temporary may be left");
        assert_eq!(self.snaps(), before, "export changed a layer");
    }
}

fn warnings(report: &Value) -> Vec<String> {
    report["report"]["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().expect("text").to_string())
        .collect()
}

fn blob_rel(hex: &str) -> String {
    format!("{V2}/blobs/sha256/{}/{hex}/data", &hex[..2])
}

fn repo_rel(repo: &str, rest: &str) -> String {
    format!("{V2}/repositories/{repo}/{rest}")
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

// ------------------------------------------------------------- manifests

/// Manifest documents gc must refuse, with a word of the reason.
fn bad_manifests(good: &[u8]) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let hex = "ab".repeat(32);
    let doc = |v: Value| serde_json::to_vec(&v).expect("json");
    let mut deep = br#"{"layers":"#.to_vec();
    deep.extend(std::iter::repeat_n(b'[', 100_000));
    let mut huge = vec![b' '; (16 << 20) + 1];
    huge.extend_from_slice(b"{}");
    vec![
        ("truncated", good[..good.len() / 2].to_vec(), "does not parse"),
        ("truncated by one byte", good[..good.len() - 1].to_vec(), "does not parse"),
        ("empty", Vec::new(), "does not parse"),
        ("null", b"null".to_vec(), "not a JSON object"),
        ("a string", br#""manifest""#.to_vec(), "not a JSON object"),
        ("an array", b"[]".to_vec(), "not a JSON object"),
        ("byte order mark", b"\xef\xbb\xbf{}".to_vec(), "does not parse"),
        ("invalid UTF-8", b"{\"mediaType\":\"\xff\xfe\"}".to_vec(), "does not parse"),
        ("nested 100k deep", deep, "recursion limit"),
        ("layers not a list", doc(json!({"layers": {"digest": format!("sha256:{hex}")}})), "does not parse"),
        ("digest not a string", doc(json!({"config": {"digest": 5}})), "does not parse"),
        ("descriptor without digest", doc(json!({"layers": [{"size": 1}]})), "does not parse"),
        ("other algorithm", doc(json!({"layers": [{"digest": format!("sha512:{hex}")}]})), "layers[0].digest"),
        ("short hex", doc(json!({"config": {"digest": format!("sha256:{}", &hex[..63])}})), "config.digest"),
        (
            "path in a digest",
            doc(json!({"manifests": [{"digest": "sha256:../../../../etc/passwd"}]})),
            "manifests[0].digest",
        ),
        ("schema1 bad blobSum", doc(json!({"fsLayers": [{"blobSum": "tarsum+sha256:x"}]})), "fsLayers[0].blobSum"),
        ("too large", huge, "too large to be a manifest"),
    ]
}

#[test]
fn malformed_manifests_stop_gc_naming_the_blob() {
    // In the release (upper), and in the history seen through a transparent
    // policy: either way the manifest is a gc root and must parse.
    for in_lower in [false, true] {
        for (case, bytes, why) in bad_manifests(&valid_manifest()) {
            let (l, _, _) = Layers::new();
            let store = if in_lower { StoreWriter { root: l.lower.root.clone() } } else { StoreWriter::new(&l.upper) };
            let hex = store.blob(&bytes);
            store.revision("app", &hex);
            store.tag("app", "broken", &hex);
            let case = format!("{case} (in the {})", if in_lower { "lower" } else { "upper" });
            l.gc_refuses(&case, in_lower, &blob_rel(&hex), why);
        }
    }
}

fn valid_manifest() -> Vec<u8> {
    let d = |c: &str| format!("sha256:{}", c.repeat(64));
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": oci::MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": oci::MEDIA_TYPE_CONFIG, "digest": d("a"), "size": 2},
        "layers": [{"mediaType": oci::MEDIA_TYPE_LAYER, "digest": d("b"), "size": 3}],
    }))
    .expect("json")
}

#[test]
fn a_policy_hidden_history_manifest_is_never_read() {
    // Default policy: the history's _manifests is not part of the view, so a
    // broken manifest there stops nothing; the release's own gc goes on and
    // collects its blob like any blob the release does not reference.
    let (l, _, _) = Layers::new();
    let hex = l.lower.blob(b"{ truncated");
    l.lower.revision("app", &hex);
    let report = l.gc_ok(false, &[]);
    let about: Vec<&Value> =
        report["plan"].as_array().expect("plan").iter().filter(|d| d.to_string().contains(&hex)).collect();
    assert_eq!(about.len(), 1, "{report:#}");
    assert_eq!(about[0]["kind"], "blob", "{report:#}");
    assert!(warnings(&report).is_empty(), "{report:#}");
}

#[test]
fn unknown_media_types_are_followed_or_reported() {
    let (l, _, _) = Layers::new();
    let s = StoreWriter::new(&l.upper);
    // No field gc knows: kept, with a warning naming the blob.
    let opaque =
        s.manifest("odd", &json!({"schemaVersion": 2, "mediaType": "application/x-future+json", "payload": [1, 2]}));
    s.tag("odd", "v1", &opaque);
    s.layer_link("odd", &opaque);
    // A non-string mediaType and unknown descriptor types: the known fields are followed.
    let cfg = s.blob(b"odd config");
    let layer = s.blob(b"odd layer");
    let numeric = s.manifest(
        "odd",
        &json!({
            "mediaType": 7,
            "config": s.desc("application/x-unknown-config", &cfg),
            "layers": [s.desc("application/x-unknown-layer", &layer)],
        }),
    );
    s.tag("odd", "v2", &numeric);
    for b in [&cfg, &layer] {
        s.layer_link("odd", b);
    }
    // An index whose child has an unknown media type: the child is followed.
    let child_layer = s.blob(b"child layer");
    s.layer_link("odd", &child_layer);
    let child =
        s.manifest("odd", &json!({"mediaType": "application/x-child", "layers": [s.desc("x/y", &child_layer)]}));
    let index = s.manifest(
        "odd",
        &json!({"mediaType": oci::MEDIA_TYPE_INDEX, "manifests": [s.desc("application/x-child", &child)]}),
    );
    s.tag("odd", "v3", &index);
    let garbage = s.blob(b"nobody names me");

    let report = l.gc_ok(false, &["--delete-untagged"]);
    let warn = warnings(&report);
    assert_eq!(warn.len(), 1, "{warn:#?}");
    assert!(warn[0].contains(&blob_rel(&opaque)) && warn[0].contains("application/x-future+json"), "{warn:#?}");
    let v = fixtures::view(&[&l.lower.root], &l.upper, None);
    let kept = fixtures::view_blob_set(&v);
    for b in [&opaque, &cfg, &layer, &numeric, &child, &child_layer, &index] {
        assert!(kept.contains(b), "{b} must be kept: {kept:?}");
    }
    assert!(!kept.contains(&garbage));
}

// ------------------------------------------------------------------ links

/// Link contents that are not exactly `sha256:<64 lowercase hex>`, with a
/// word of the reason gc gives.
fn bad_links(hex: &str) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut oversized = format!("sha256:{hex}").into_bytes();
    oversized.resize(5000, b'0');
    vec![
        ("other algorithm", format!("sha512:{hex}").into_bytes(), "other algorithms"),
        ("sha512", format!("sha512:{hex}{hex}").into_bytes(), "other algorithms"),
        ("uppercase algorithm", format!("SHA256:{hex}").into_bytes(), "other algorithms"),
        ("short hex", format!("sha256:{}", &hex[..63]).into_bytes(), "64 lowercase hex"),
        ("long hex", format!("sha256:{hex}0").into_bytes(), "64 lowercase hex"),
        ("uppercase hex", format!("sha256:{}", hex.to_uppercase()).into_bytes(), "64 lowercase hex"),
        ("trailing newline", format!("sha256:{hex}\n").into_bytes(), "64 lowercase hex"),
        ("CRLF", format!("sha256:{hex}\r\n").into_bytes(), "64 lowercase hex"),
        ("leading space", format!(" sha256:{hex}").into_bytes(), "other algorithms"),
        ("trailing NUL", format!("sha256:{hex}\0").into_bytes(), "64 lowercase hex"),
        ("empty", Vec::new(), "other algorithms"),
        ("algorithm only", b"sha256:".to_vec(), "64 lowercase hex"),
        ("path", b"sha256:../../../../../../../../etc/passwd".to_vec(), "64 lowercase hex"),
        ("binary", vec![0xff; 71], "64 lowercase hex"),
        ("oversized", oversized, "a link holds 71 bytes"),
    ]
}

#[test]
fn bad_links_are_named_by_gc_or_verify() {
    // Every bad content at every kind of link, in the history (transparent
    // policy) and in the release: a tag's current link stops gc; the links
    // gc takes by their path are named by `regfs verify`.
    for in_lower in [true, false] {
        let (probe, m, layers) = Layers::new();
        drop(probe);
        for (case, content, why) in bad_links(&layers[0]) {
            for rel in [
                format!("_layers/sha256/{}/link", layers[0]),
                format!("_manifests/revisions/sha256/{m}/link"),
                "_manifests/tags/v1/current/link".to_string(),
                format!("_manifests/tags/v1/index/sha256/{m}/link"),
            ] {
                let (l, m2, _) = Layers::new();
                assert_eq!(m, m2, "the fixture is deterministic");
                if in_lower {
                    l.lower.raw_link("app", &rel, &content);
                } else {
                    let up = StoreWriter::new(&l.upper);
                    let (um, _, _) = up.image("app", "v1", &[]);
                    up.tag("app", "v1", &um);
                    up.raw_link("app", &rel, &content);
                }
                let where_ = if in_lower { "lower" } else { "upper" };
                l.link_refused(&format!("{case} at {rel} ({where_})"), in_lower, &repo_rel("app", &rel), why);
            }
        }
    }
}

#[test]
fn links_that_are_not_files_or_sit_under_bad_names_stop_gc() {
    let hex = "ab".repeat(32);
    type Setup = Box<dyn Fn(&StoreWriter, &str, &[String]) -> (String, &'static str)>;
    let cases: Vec<(&str, Setup)> = vec![
        (
            "link is a directory",
            Box::new(|s, _m, layers| {
                let rel = format!("_layers/sha256/{}/link", layers[0]);
                let p = s.v2().join("repositories/app").join(&rel);
                fs::remove_file(&p).unwrap();
                fs::create_dir(&p).unwrap();
                (rel, "a link must be a regular file")
            }),
        ),
        (
            "link is a symlink to a valid link",
            Box::new(|s, m, _| {
                let rel = format!("_manifests/revisions/sha256/{m}/link");
                let p = s.v2().join("repositories/app").join(&rel);
                fs::rename(&p, s.root.join("real-link")).unwrap();
                std::os::unix::fs::symlink(s.root.join("real-link"), &p).unwrap();
                (rel, "a link must be a regular file")
            }),
        ),
        (
            "link directory with uppercase hex",
            Box::new(move |s, _, _| {
                let name = hex.to_uppercase();
                s.raw_link(
                    "app",
                    &format!("_layers/sha256/{name}/link"),
                    format!("sha256:{}", "ab".repeat(32)).as_bytes(),
                );
                (format!("_layers/sha256/{name}"), "only sha256 digest directories")
            }),
        ),
        (
            "link directory with short hex",
            Box::new(|s, m, _| {
                let name = &m[..63];
                s.raw_link(
                    "app",
                    &format!("_manifests/revisions/sha256/{name}/link"),
                    format!("sha256:{m}").as_bytes(),
                );
                (format!("_manifests/revisions/sha256/{name}"), "only sha256 digest directories")
            }),
        ),
        (
            "a file among link directories",
            Box::new(|s, m, _| {
                s.raw_link("app", &format!("_manifests/tags/v1/index/sha256/{m}.bak"), b"x");
                (format!("_manifests/tags/v1/index/sha256/{m}.bak"), "only sha256 digest directories")
            }),
        ),
        (
            "a tag that is a file",
            Box::new(|s, _, _| {
                s.raw_link("app", "_manifests/tags/latest", b"sha256:x");
                ("_manifests/tags/latest".to_string(), "a tag must be a directory")
            }),
        ),
    ];
    for (case, setup) in cases {
        let (l, m, layers) = Layers::new();
        let (rel, why) = setup(&l.lower, &m, &layers);
        if (rel.starts_with("_layers/") && why == "a link must be a regular file") || rel.contains("/index/") {
            // GC trusts a _layers link directory whole, and reads a tag's
            // history only with --delete-untagged; verify looks at both.
            l.verify_refuses(case, true, &repo_rel("app", &rel), why);
            let out = l.run("gc", true, &["--delete-untagged", "--dry-run"]);
            assert!(
                rel.starts_with("_layers/") || !out.status.success(),
                "{case}: --delete-untagged reads tag histories"
            );
        } else {
            l.gc_refuses(case, true, &repo_rel("app", &rel), why);
        }
    }
}

#[test]
fn bad_history_links_count_only_where_the_view_shows_them() {
    // Default policy: a bad link in the history's hidden _manifests is never
    // read; one in the _layers of a repository the release pushes to is.
    let (l, m, layers) = Layers::new();
    l.lower.raw_link("app", &format!("_manifests/revisions/sha256/{m}/link"), b"sha256:../../etc");
    l.gc_ok(false, &["--dry-run"]);
    let up = StoreWriter::new(&l.upper);
    let (um, _, _) = up.image("app", "v2", &[]);
    up.tag("app", "v2", &um);
    let rel = format!("_layers/sha256/{}/link", layers[0]);
    l.lower.raw_link("app", &rel, format!("sha512:{}", layers[0]).as_bytes());
    l.verify_refuses("bad history _layers link", false, &repo_rel("app", &rel), "other algorithms");
}

#[test]
fn links_to_blobs_without_data() {
    // A revision naming a manifest that has no data: gc cannot know what it
    // references, so it stops, naming the missing data file.
    let (l, _, _) = Layers::new();
    let ghost = "cd".repeat(32);
    l.lower.revision("app", &ghost);
    l.gc_refuses("revision without data", true, &blob_rel(&ghost), "has no data in the store");
    let (l, _, _) = Layers::new();
    l.lower.tag("app", "ghost", &ghost);
    l.lower.revision("app", &ghost);
    fs::create_dir_all(l.lower.v2().join(format!("blobs/sha256/cd/{ghost}"))).unwrap();
    l.gc_refuses("revision whose blob directory is empty", true, &blob_rel(&ghost), "has no data in the store");

    // Layers without data. One not in the store at all: the manifest keeps
    // it marked (a warning), but its _layers link goes, so the registry
    // never answers "exists" for it. One whose blob directory is listed but
    // lacks its data file: GC takes it as the manifest sizes it (as
    // distribution does, it does not look inside), and `regfs verify`
    // names it.
    let (l, _, _) = Layers::new();
    let s = StoreWriter::new(&l.upper);
    let (empty_dir, absent) = (s.blob(b"will lose its data"), "ef".repeat(32));
    fs::remove_file(s.blob_path(&empty_dir)).unwrap();
    let cfg = s.blob(b"cfg");
    let man = s.manifest("dataless", &json!({
        "mediaType": oci::MEDIA_TYPE_MANIFEST,
        "config": s.desc(oci::MEDIA_TYPE_CONFIG, &cfg),
        "layers": [{"digest": format!("sha256:{empty_dir}"), "size": 1}, {"digest": format!("sha256:{absent}"), "size": 1}],
    }));
    s.tag("dataless", "v1", &man);
    for b in [&cfg, &empty_dir, &absent] {
        s.layer_link("dataless", b);
    }
    let report = l.gc_ok(false, &[]);
    let warn = warnings(&report);
    assert!(
        warn.iter().any(|w| w.contains(absent.as_str()) && w.contains("no data")),
        "no warning for {absent}: {warn:#?}"
    );
    let v = fixtures::view(&[&l.lower.root], &l.upper, None);
    let links = fixtures::view_names(&v, Path::new(&repo_rel("dataless", "_layers/sha256")));
    assert_eq!(links, BTreeSet::from([cfg.clone(), empty_dir.clone()]), "the link to a blob not in the store must go");
    assert!(fixtures::view_blob_set(&v).contains(&man));
    let out = l.run("verify", false, &[]);
    assert!(
        !out.status.success() && text(&out).contains(&blob_rel(&empty_dir)) && text(&out).contains("missing"),
        "{}",
        text(&out)
    );
}

// --------------------------------------------------------------- symlinks

/// An outside directory that symlinks in the lower point to, with content
/// that would stop gc if it were ever read through them.
fn outside(l: &Layers) -> (PathBuf, Snap) {
    let out = l.path("outside");
    let bad = StoreWriter { root: out.clone() };
    bad.raw_link("evil", "_layers/sha256/x/link", b"not a link");
    bad.raw_link("evil", "_manifests/revisions/sha256/y/link", b"sha512:zz");
    fs::write(out.join("secret"), b"outside data").unwrap();
    fs::write(out.join("link"), format!("sha256:{}", "ab".repeat(32))).unwrap();
    let snap = snapshot(&out);
    (out, snap)
}

#[test]
fn lower_symlinks_show_as_symlinks_through_the_mount() {
    let (l, _, _) = Layers::new();
    let (out, out_before) = outside(&l);
    let v2 = l.lower.v2();
    std::os::unix::fs::symlink(&out, v2.join("escape")).unwrap();
    std::os::unix::fs::symlink(out.join("docker/registry/v2/repositories/evil"), v2.join("repositories/evil")).unwrap();
    std::os::unix::fs::symlink("blobs", v2.join("alias")).unwrap();
    let lower_before = snapshot(&l.lower.root);

    let m = Mount::fuse(&[&l.lower.root], &l.upper, &l.path("mnt"), &["--mode", "fuse", "--policy", &l.transparent]);
    let mv2 = m.mountpoint.join(V2);
    for (name, target) in [
        ("escape", out.clone()),
        ("repositories/evil", out.join("docker/registry/v2/repositories/evil")),
        ("alias", "blobs".into()),
    ] {
        let meta = fs::symlink_metadata(mv2.join(name)).unwrap();
        assert!(meta.file_type().is_symlink(), "{name} must show as a symlink");
        assert_eq!(fs::read_link(mv2.join(name)).unwrap(), target, "{name}");
    }
    let listed: BTreeSet<_> = fs::read_dir(mv2.join("repositories"))
        .unwrap()
        .map(|e| e.unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.file_type().unwrap().is_symlink()))
        .collect();
    assert_eq!(listed, BTreeSet::from([("app".into(), false), ("evil".into(), true)]));
    // Copy-up of a symlink copies the link, not what it points to: rename,
    // chown -h and touch -h act on the link; deleting it leaves a whiteout.
    fs::rename(mv2.join("escape"), mv2.join("escaped")).unwrap();
    assert_eq!(fs::read_link(mv2.join("escaped")).unwrap(), out);
    std::os::unix::fs::lchown(mv2.join("repositories/evil"), Some(regfs::sys::geteuid()), Some(regfs::sys::getegid()))
        .unwrap();
    let t = regfs::sys::SetTime::At(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000));
    regfs::sys::utimens(&mv2.join("alias"), t, t).unwrap();
    assert_eq!(fs::symlink_metadata(mv2.join("alias")).unwrap().mtime(), 1_000_000);
    fs::remove_file(mv2.join("repositories/evil")).unwrap();
    m.umount();
    let up = l.upper.join(V2);
    assert!(fs::symlink_metadata(up.join("escaped")).unwrap().file_type().is_symlink());
    assert!(fs::symlink_metadata(up.join("alias")).unwrap().file_type().is_symlink());
    assert_eq!(fs::read_link(up.join("alias")).unwrap(), Path::new("blobs"));
    assert_eq!(snapshot(&out), out_before, "nothing outside may change");
    assert_eq!(snapshot(&l.lower.root), lower_before);
}

#[test]
fn gc_and_export_never_follow_lower_symlinks_out() {
    // A symlinked "repository" is not a repository: gc neither reads nor
    // deletes through it; export refuses it (its target leads out).
    let (l, _, _) = Layers::new();
    let (out, out_before) = outside(&l);
    let v2 = l.lower.v2();
    std::os::unix::fs::symlink(out.join("docker/registry/v2/repositories/evil"), v2.join("repositories/evil")).unwrap();
    let report = l.gc_ok(true, &[]);
    assert!(!report.to_string().contains("evil"), "gc looked through the symlink:\n{report:#}");
    assert_eq!(snapshot(&out), out_before);
    l.export_refuses(true, &format!("{V2}/repositories/evil"), "leads out of the store");
    assert_eq!(snapshot(&out), out_before);

    // In places gc reads, a symlink is an error naming it.
    type Setup = Box<dyn Fn(&StoreWriter, &Path, &str, &[String]) -> (String, &'static str)>;
    let cases: Vec<(&str, Setup)> = vec![
        (
            "link file",
            Box::new(|s, out, m, _| {
                let rel = repo_rel("app", &format!("_manifests/revisions/sha256/{m}/link"));
                fs::remove_file(s.root.join(&rel)).unwrap();
                std::os::unix::fs::symlink(out.join("link"), s.root.join(&rel)).unwrap();
                (rel, "a link must be a regular file")
            }),
        ),
        (
            "blob data",
            Box::new(|s, out, _, layers| {
                let rel = blob_rel(&layers[0]);
                fs::remove_file(s.root.join(&rel)).unwrap();
                std::os::unix::fs::symlink(out.join("secret"), s.root.join(&rel)).unwrap();
                (rel, "blob data must be a regular file")
            }),
        ),
        (
            "blob directory",
            Box::new(|s, out, _, layers| {
                let rel = blob_rel(&layers[0]);
                let dir = s.root.join(&rel);
                let dir = dir.parent().unwrap();
                fs::remove_dir_all(dir).unwrap();
                std::os::unix::fs::symlink(out, dir).unwrap();
                (Path::new(&rel).parent().unwrap().display().to_string(), "a blob must be a directory")
            }),
        ),
        (
            "blob fan-out directory",
            Box::new(|s, out, _, _| {
                let rel = format!("{V2}/blobs/sha256/zz");
                std::os::unix::fs::symlink(out, s.root.join(&rel)).unwrap();
                (rel, "unexpected file in the blob store")
            }),
        ),
    ];
    for (case, setup) in cases {
        let (l, m, layers) = Layers::new();
        let (out, out_before) = outside(&l);
        let (rel, why) = setup(&l.lower, &out, &m, &layers);
        if case == "blob data" {
            // GC takes a layer as its manifest sizes it; verify looks inside.
            l.verify_refuses(case, true, &rel, why);
        } else {
            l.gc_refuses(case, true, &rel, why);
        }
        assert_eq!(snapshot(&out), out_before, "{case}");
    }
}

/// Kernel mode materialises the policy by walking the lowers: it must not
/// walk through a symlinked repository either. It did, and then refused to
/// mount ("hiding …/evil/_manifests: Not a directory"). Both modes show the
/// symlink, and both hide it when the keep list leaves it out. Needs root
/// (kernel mode); scripts/test-unprivileged.sh skips it by name.
#[test]
fn kernel_mode_mounts_over_a_symlinked_history_repository() {
    assert!(is_root(), "kernel mode needs root (the unprivileged pass skips this test)");
    let (l, _, _) = Layers::new();
    let (out, out_before) = outside(&l);
    let target = out.join("docker/registry/v2/repositories/evil");
    std::os::unix::fs::symlink(&target, l.lower.v2().join("repositories/evil")).unwrap();
    let lower_before = snapshot(&l.lower.root);
    let keep = l.path("keep.txt");
    fs::write(&keep, "app:v1\n").unwrap();
    for mode in ["kernel", "fuse"] {
        for kept in [false, true] {
            let upper = l.path(&format!("upper-{mode}-{kept}"));
            let mut extra = vec!["--mode", mode];
            if kept {
                extra.extend(["--keep", keep.to_str().unwrap()]);
            }
            let m = Mount::fuse(&[&l.lower.root], &upper, &l.path("mnt"), &extra);
            let repos = m.mountpoint.join(V2).join("repositories");
            let names: BTreeSet<String> =
                fs::read_dir(&repos).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            if kept {
                assert_eq!(names, BTreeSet::from(["app".to_string()]), "{mode}: evil is not kept");
                assert_eq!(errno_of(fs::symlink_metadata(repos.join("evil"))), libc::ENOENT, "{mode}");
            } else {
                assert_eq!(names, BTreeSet::from(["app".to_string(), "evil".to_string()]), "{mode}");
                assert!(fs::symlink_metadata(repos.join("evil")).unwrap().file_type().is_symlink(), "{mode}");
                assert_eq!(fs::read_link(repos.join("evil")).unwrap(), target, "{mode}");
            }
            m.umount();
        }
    }
    assert_eq!(snapshot(&out), out_before, "nothing outside may change");
    assert_eq!(snapshot(&l.lower.root), lower_before);
}

#[test]
fn export_stores_contained_lower_symlinks_and_refuses_others() {
    let (l, _, _) = Layers::new();
    let v2 = l.lower.v2();
    std::os::unix::fs::symlink("blobs/sha256", v2.join("alias")).unwrap();
    let tar = l.path("ok.tar");
    let out = l.run("export", true, &["-o", tar.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let mut a = tar::Archive::new(fs::File::open(&tar).unwrap());
    let alias = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().ends_with("alias"))
        .expect("the symlink is exported");
    assert_eq!(alias.header().entry_type(), tar::EntryType::Symlink);
    assert_eq!(alias.link_name().unwrap().unwrap(), Path::new("blobs/sha256"));
    for target in ["../../../../etc", "/etc", "blobs/../../.."] {
        let (l, _, _) = Layers::new();
        std::os::unix::fs::symlink(target, l.lower.v2().join("bad")).unwrap();
        l.export_refuses(true, &format!("{V2}/bad"), "leads out of the store");
    }
}

// ----------------------------------------------------------------- layers

#[test]
fn a_lower_that_is_not_a_registry_root_is_refused_by_every_command() {
    let (l, _, _) = Layers::new();
    let real = l.lower.root.clone();
    let plain = l.path("plain");
    fs::create_dir(&plain).unwrap();
    let file = l.path("file");
    fs::write(&file, b"x").unwrap();
    let half = l.path("half");
    fs::create_dir_all(half.join("docker/registry")).unwrap();
    let v2_file = l.path("v2-file");
    fs::create_dir_all(v2_file.join("docker/registry")).unwrap();
    fs::write(v2_file.join(V2), b"x").unwrap();
    let the_v2 = l.path("the-v2");
    fs::create_dir_all(the_v2.join("blobs")).unwrap();
    // A store reached through a symlinked skeleton directory: the view would
    // show the symlink, and a registry writing through it would write the
    // history itself.
    let via_link = l.path("via-link");
    fs::create_dir(&via_link).unwrap();
    std::os::unix::fs::symlink(real.join("docker"), via_link.join("docker")).unwrap();
    let missing = l.path("missing");
    let cases: [(&Path, &str); 7] = [
        (&plain, "not a registry rootdirectory"),
        (&file, "not a directory"),
        (&half, "not a registry rootdirectory"),
        (&v2_file, "not a registry rootdirectory"),
        (&the_v2, "not a registry rootdirectory"),
        (&via_link, "is a symlink"),
        (&missing, "cannot open"),
    ];
    let real_before = snapshot(&real);
    for (lower, why) in cases {
        let upper = l.path("fresh-upper");
        let tar = l.path("x.tar");
        let mount = match Mount::try_fuse(&[lower], &upper, &l.path("mnt"), &["--mode", "fuse"]) {
            Ok(m) => {
                drop(m);
                panic!("mounting {} must fail", lower.display())
            }
            Err(e) => e,
        };
        let runs: Vec<(&str, bool, String)> = [
            ("gc", regfs_layers("gc", &[lower], &l.upper, &[])),
            ("export", regfs_layers("export", &[lower], &l.upper, &["-o", tar.to_str().unwrap()])),
            ("plan", fixtures::regfs(["plan".as_ref(), "--lower".as_ref(), lower.as_os_str()])),
        ]
        .into_iter()
        .map(|(cmd, out)| (cmd, out.status.success(), text(&out)))
        .chain([("mount", false, mount)])
        .collect();
        for (cmd, ok, out) in runs {
            assert!(!ok, "{cmd} over {} must fail:\n{out}", lower.display());
            assert!(
                out.contains(&lower.display().to_string()) && out.contains(why),
                "{cmd}: must name {} ({why}):\n{out}",
                lower.display()
            );
        }
        assert!(!upper.exists() && !tar.exists(), "a refused command created its upper or tar");
    }
    assert_eq!(snapshot(&real), real_before);
    assert_eq!(fs::read_dir(&l.upper).unwrap().count(), 0, "the upper was written");
}

#[test]
fn overlapping_layers_and_mountpoints_are_refused() {
    let (l, _, _) = Layers::new();
    let lower = l.lower.root.clone();
    let lower_before = snapshot(&lower);
    // Upper inside the lower, the lower inside the upper, the same directory,
    // and an upper reached through a symlink into the lower.
    let outer = l.path("outer");
    fs::create_dir(&outer).unwrap();
    fixtures::copy_tree(&lower, &outer.join("history"));
    let nested_lower = outer.join("history");
    let link = l.path("link-into-lower");
    std::os::unix::fs::symlink(lower.join("docker"), &link).unwrap();
    let tar = l.path("x.tar");
    for (lower, upper) in [
        (&lower, lower.join("docker")),
        (&nested_lower, outer.clone()),
        (&lower, lower.clone()),
        (&lower, link.join("registry")),
    ] {
        let before = snapshot(&outer);
        for (cmd, extra) in [("gc", vec![]), ("export", vec!["-o", tar.to_str().unwrap()])] {
            let out = regfs_layers(cmd, &[lower], &upper, &extra);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{cmd} --upper {}:\n{}", upper.display(), text(&out));
            assert!(err.contains("overlap"), "{cmd} --upper {}:\n{err}", upper.display());
        }
        let err =
            Mount::try_fuse(&[lower], &upper, &l.path("mnt"), &["--mode", "fuse"]).err().expect("mount must fail");
        assert!(err.contains("overlap"), "mount --upper {}:\n{err}", upper.display());
        assert_eq!(snapshot(&outer), before);
        assert!(!tar.exists());
    }
    // The mountpoint inside the upper or a lower, or holding one of them.
    fs::create_dir_all(l.upper.join("mnt")).unwrap();
    fs::create_dir_all(l.path("holder/upper")).unwrap();
    for (upper, mp) in [
        (l.upper.clone(), l.upper.join("mnt")),
        (l.upper.clone(), lower.join("docker")),
        (l.upper.clone(), l.upper.clone()),
        (l.path("holder/upper"), l.path("holder")),
    ] {
        let err = Mount::try_fuse(&[&lower], &upper, &mp, &["--mode", "fuse"]).err().expect("mount must fail");
        assert!(err.contains("overlaps"), "mountpoint {}:\n{err}", mp.display());
    }
    assert_eq!(snapshot(&lower), lower_before);
    assert_eq!(tree::shape(&snapshot(&l.upper)), ["d mnt"], "a refused mount wrote the upper");
}

// ------------------------------------------------------- unreadable files

/// The unprivileged user the root run acts as (`REGFS_TEST_USER`, as for
/// scripts/test-unprivileged.sh). As root, it is set up the way that script
/// sets it up (user created if missing, /dev/fuse usable), so this suite does
/// not depend on the script having run first.
fn ci_user() -> String {
    let user = std::env::var("REGFS_TEST_USER").unwrap_or_else(|_| "regfs-ci".into());
    if is_root() {
        static SETUP: std::sync::Once = std::sync::Once::new();
        SETUP.call_once(|| {
            let exists = Command::new("id").arg(&user).output().is_ok_and(|o| o.status.success());
            if !exists {
                let st = Command::new("useradd").args(["--create-home", "--shell", "/bin/sh", &user]).status();
                assert!(st.is_ok_and(|s| s.success()), "useradd {user}");
            }
            fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).expect("chmod 0666 /dev/fuse");
        });
    }
    user
}

/// Runs a command as the unprivileged user (through runuser when root, as
/// is otherwise: the caller is then unprivileged already).
fn as_user(runtime: &Path, program: &OsStr, args: &[&OsStr]) -> Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", &ci_user(), "--", "env"]).arg(format!("XDG_RUNTIME_DIR={}", runtime.display())).arg(program);
        c
    } else {
        let mut c = Command::new(program);
        c.env("XDG_RUNTIME_DIR", runtime);
        c
    };
    cmd.args(args).output().expect("running a command as the unprivileged user")
}

fn chown_to_user(p: &Path) {
    if is_root() {
        let user = ci_user();
        let st = Command::new("chown").args(["-R", &user]).arg(p).status().expect("chown");
        assert!(st.success(), "chown -R {user} {}", p.display());
    }
}

/// A FUSE mount made by the unprivileged user; undone on drop.
struct UserMount {
    mp: PathBuf,
    runtime: PathBuf,
}

impl Drop for UserMount {
    fn drop(&mut self) {
        let out = as_user(&self.runtime, regfs_bin().as_os_str(), &["umount".as_ref(), self.mp.as_os_str()]);
        if !out.status.success() {
            let _ = Command::new("fusermount3").arg("-uz").arg(&self.mp).status();
            if is_root() {
                let _ = regfs::sys::umount(&self.mp, true);
            }
        }
    }
}

#[test]
fn unreadable_history_files_give_clear_errors() {
    let (l, m, layers) = Layers::new();
    fs::set_permissions(l.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let runtime = l.path("runtime");
    fs::create_dir(&runtime).unwrap();
    for p in [&runtime, &l.upper] {
        chown_to_user(p);
    }
    // Snapshots with every mode readable (an unprivileged snapshot could not
    // read a mode-000 file), compared once the modes are back.
    let before = l.snaps();
    let manifest = l.lower.blob_path(&m);
    let layer = l.lower.blob_path(&layers[0]);
    let tags = l.lower.v2().join("repositories/app/_manifests/tags");
    let lock = |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    lock(&manifest, 0o000);
    lock(&layer, 0o000);
    lock(&tags, 0o000);
    let regfs = regfs_bin();
    let layer_args = |extra: &[&str]| -> Vec<OsString> {
        let mut v: Vec<OsString> =
            vec!["--lower".into(), l.lower.root.clone().into(), "--upper".into(), l.upper.clone().into()];
        v.extend(["--policy", &l.transparent].iter().map(OsString::from));
        v.extend(extra.iter().map(OsString::from));
        v
    };
    let run = |sub: &str, extra: &[&str]| {
        let mut args: Vec<OsString> = vec![sub.into()];
        args.extend(layer_args(extra));
        as_user(&runtime, regfs.as_os_str(), &args.iter().map(OsString::as_os_str).collect::<Vec<_>>())
    };
    let refused = |out: &Output, path: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "must fail:\n{}", text(out));
        assert!(err.contains(path) && err.contains("Permission denied"), "must name {path}:\n{err}");
        assert_eq!(err.matches("Permission denied").count(), 1, "the cause once:\n{err}");
    };

    // gc: the unreadable tags directory is met first (listing it), then the
    // manifest (reading it); each error names its path, nothing is deleted.
    let out = run("gc", &["--dry-run"]);
    refused(&out, &repo_rel("app", "_manifests/tags"));
    lock(&tags, 0o755);
    let out = run("gc", &[]);
    refused(&out, &blob_rel(&m));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped before deleting anything"), "{}", text(&out));

    // export: the unreadable manifest stops it by name (its tag's image is
    // described before the tar is begun); no tar is left.
    let out_dir = l.path("out");
    fs::create_dir(&out_dir).unwrap();
    chown_to_user(&out_dir);
    let tar = out_dir.join("r.tar");
    let out = run("export", &["-o", tar.to_str().unwrap()]);
    refused(&out, &blob_rel(&m));
    assert_eq!(fs::read_dir(&out_dir).unwrap().count(), 0, "no tar and no temporary may be left");
    // With the manifest readable, the unreadable layer stops the tar by name.
    lock(&manifest, 0o644);
    let out = run("export", &["-o", tar.to_str().unwrap()]);
    refused(&out, &blob_rel(&layers[0]));
    lock(&manifest, 0o000);
    assert_eq!(fs::read_dir(&out_dir).unwrap().count(), 0, "no tar and no temporary may be left");

    // Through a mount the user makes: the kernel refuses what the modes
    // refuse (default_permissions), the rest of the view works, nothing is
    // copied up, and the unreadable directory does not hide its siblings.
    lock(&tags, 0o000);
    let mp = l.path("mnt");
    fs::create_dir(&mp).unwrap();
    chown_to_user(&mp);
    let mut args: Vec<OsString> = vec!["mount".into(), "--mode".into(), "fuse".into()];
    args.extend(layer_args(&[]));
    args.push(mp.clone().into());
    let out = as_user(&runtime, regfs.as_os_str(), &args.iter().map(OsString::as_os_str).collect::<Vec<_>>());
    assert!(out.status.success(), "mount as {}:\n{}", ci_user(), text(&out));
    let guard = UserMount { mp: mp.clone(), runtime: runtime.clone() };
    let shell = |script: &str| as_user(&runtime, "sh".as_ref(), &["-c".as_ref(), script.as_ref()]);
    let denied = |script: String| {
        let out = shell(&script);
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{script}:\n{}",
            text(&out)
        );
    };
    let on_mount = |rel: String| mp.join(rel).display().to_string();
    denied(format!("cat '{}'", on_mount(blob_rel(&m))));
    denied(format!("echo x >> '{}'", on_mount(blob_rel(&m))));
    denied(format!("ls '{}'", on_mount(repo_rel("app", "_manifests/tags"))));
    let out = shell(&format!("ls '{}'", on_mount(repo_rel("app", "_manifests"))));
    assert!(
        out.status.success() && out.stdout == b"revisions\ntags\n",
        "the parent of an unreadable directory lists:\n{}",
        text(&out)
    );
    let link = on_mount(repo_rel("app", &format!("_layers/sha256/{}/link", layers[0])));
    let out = shell(&format!("cat '{link}'"));
    assert!(out.status.success() && out.stdout == format!("sha256:{}", layers[0]).as_bytes(), "{}", text(&out));
    drop(guard);

    // Root reads whatever the mode says (CAP_DAC_OVERRIDE): as root, gc and
    // export of the same layers succeed. That is the documented root behaviour.
    if is_root() {
        l.gc_ok(true, &["--dry-run"]);
        let out = l.run("export", true, &["-o", tar.to_str().unwrap()]);
        assert!(out.status.success(), "root exports mode-000 files:\n{}", text(&out));
        fs::remove_file(&tar).unwrap();
    }
    lock(&manifest, 0o644);
    lock(&layer, 0o644);
    lock(&tags, 0o755);
    assert_eq!(l.snaps(), before, "a refused command changed a layer");
}

// -------------------------------------------------- big directories, names

#[test]
fn a_directory_of_100k_entries_lists_each_name_once() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = empty_root(&tmp.path().join("lower"));
    let upper = tmp.path().join("upper");
    let big = Path::new(V2).join("big");
    fs::create_dir(lower.join(&big)).unwrap();
    let name = |i: u32| format!("entry-{i:06}");
    let n = 100_000;
    let started = Instant::now();
    for i in 0..n {
        fs::File::create(lower.join(&big).join(name(i))).unwrap();
    }
    eprintln!("100k: wrote the lower in {:?}", started.elapsed());
    let m = Mount::fuse(&[&lower], &upper, &tmp.path().join("mnt"), &["--mode", "fuse"]);
    let dir = m.mountpoint.join(&big);
    // Mixed: deleted history entries (whiteouts), copied-up ones, new ones.
    for i in (0..n).step_by(100) {
        fs::remove_file(dir.join(name(i))).unwrap();
        fs::write(dir.join(name(i + 1)), b"copied up").unwrap();
        fs::File::create(dir.join(format!("new-{i:06}"))).unwrap();
    }
    let mut want: BTreeSet<String> = (0..n).filter(|i| i % 100 != 0).map(name).collect();
    want.extend((0..n).step_by(100).map(|i| format!("new-{i:06}")));
    for pass in ["first", "second (kernel cache)"] {
        let started = Instant::now();
        let mut seen = BTreeMap::<String, u32>::new();
        for e in fs::read_dir(&dir).unwrap() {
            *seen.entry(e.unwrap().file_name().into_string().unwrap()).or_default() += 1;
        }
        let took = started.elapsed();
        eprintln!("100k: {pass} readdir of {} names in {took:?}", seen.len());
        let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).map(|(n, _)| n).take(5).collect();
        assert!(twice.is_empty(), "listed more than once: {twice:?}");
        assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), want, "{pass} listing");
        assert!(took < Duration::from_secs(30), "{pass} readdir took {took:?}");
    }
    m.umount();
    let m = Mount::fuse(&[&lower], &upper, &tmp.path().join("mnt"), &["--mode", "fuse"]);
    let started = Instant::now();
    let count = fs::read_dir(m.mountpoint.join(&big)).unwrap().count();
    assert_eq!(count, want.len(), "after a remount");
    eprintln!("100k: readdir after remount in {:?}", started.elapsed());
    m.umount();
}

#[test]
fn name_lengths_through_the_mount() {
    let (l, _, _) = Layers::new();
    let v2 = l.lower.v2();
    let n255 = "h".repeat(255);
    let n256 = "h".repeat(256);
    fs::write(v2.join(&n255), b"history").unwrap();
    fs::create_dir(v2.join("d".repeat(255))).unwrap();
    let lower_before = snapshot(&l.lower.root);
    let m = Mount::fuse(&[&l.lower.root], &l.upper, &l.path("mnt"), &["--mode", "fuse"]);
    let mv2 = m.mountpoint.join(V2);
    assert_eq!(fs::read(mv2.join(&n255)).unwrap(), b"history");
    let new = "n".repeat(255);
    fs::write(mv2.join(&new), b"new").unwrap();
    fs::create_dir(mv2.join("d".repeat(255)).join("e".repeat(255))).unwrap();
    std::os::unix::fs::symlink(&new, mv2.join("s".repeat(255))).unwrap();
    fs::rename(mv2.join(&new), mv2.join("r".repeat(255))).unwrap();
    fs::OpenOptions::new().append(true).open(mv2.join(&n255)).unwrap();
    fs::remove_file(mv2.join(&n255)).unwrap();
    for (what, r) in [
        ("create", fs::write(mv2.join(&n256), b"x").map(drop)),
        ("stat", fs::symlink_metadata(mv2.join(&n256)).map(drop)),
        ("mkdir", fs::create_dir(mv2.join(&n256))),
        ("symlink", std::os::unix::fs::symlink("x", mv2.join(&n256))),
        ("rename to", fs::rename(mv2.join("r".repeat(255)), mv2.join(&n256))),
        ("unlink", fs::remove_file(mv2.join(&n256))),
    ] {
        assert_eq!(errno_of(r), libc::ENAMETOOLONG, "{what} of a 256-byte name");
    }
    let mut names: Vec<String> = fs::read_dir(&mv2)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 255)
        .collect();
    names.sort();
    assert_eq!(names, ["d".repeat(255), "r".repeat(255), "s".repeat(255)]);
    m.umount();
    assert_eq!(snapshot(&l.lower.root), lower_before);
    let up = tree::shape(&snapshot(&l.upper));
    assert!(up.contains(&format!("c {V2}/{n255}")), "a whiteout for the deleted history name: {up:?}");

    // gc and export: a 255-byte repository name (and the longest tag a
    // registry accepts, 128), exported and untarred back.
    let s = StoreWriter::new(&l.path("store"));
    let repo = "r".repeat(255);
    let (man, _, _) = s.image(&repo, "v1", &[]);
    let tag = "t".repeat(128);
    s.tag(&repo, &tag, &man);
    let empty = empty_root(&l.path("empty"));
    regfs_ok("gc", &[&empty], &s.root, &[]);
    let tar = l.path("long.tar");
    regfs_ok("export", &[&empty], &s.root, &["-o", tar.to_str().unwrap()]);
    let unpacked = l.path("unpacked");
    fixtures::untar(&tar, &unpacked);
    assert_eq!(snapshot(&unpacked.join("docker")), snapshot(&s.root.join("docker")));
    assert!(unpacked.join(repo_rel(&repo, &format!("_manifests/tags/{tag}/current/link"))).is_file());
    // A tag no registry accepts (129 characters) has no place in a bundle.
    s.tag(&repo, &"t".repeat(129), &man);
    let out = fixtures::regfs_layers("export", &[&empty], &s.root, &["-o", tar.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("not a valid tag name"), "{}", text(&out));
}

#[test]
fn non_utf8_names_work_through_the_mount() {
    let (l, _, _) = Layers::new();
    let v2 = l.lower.v2();
    let latin1 = OsStr::from_bytes(b"caf\xe9");
    let junk = OsStr::from_bytes(b"\xff\xfe-dir");
    fs::write(v2.join(latin1), b"history").unwrap();
    let lower_before = snapshot(&l.lower.root);
    let m = Mount::fuse(&[&l.lower.root], &l.upper, &l.path("mnt"), &["--mode", "fuse"]);
    let mv2 = m.mountpoint.join(V2);
    assert_eq!(fs::read(mv2.join(latin1)).unwrap(), b"history");
    fs::create_dir(mv2.join(junk)).unwrap();
    fs::write(mv2.join(junk).join(latin1), b"new").unwrap();
    fs::OpenOptions::new().append(true).open(mv2.join(latin1)).unwrap();
    fs::rename(mv2.join(latin1), mv2.join(junk).join(OsStr::from_bytes(b"moved-\x80"))).unwrap();
    let mut names: Vec<Vec<u8>> =
        fs::read_dir(mv2.join(junk)).unwrap().map(|e| e.unwrap().file_name().into_vec()).collect();
    names.sort();
    assert_eq!(names, [b"caf\xe9".to_vec(), b"moved-\x80".to_vec()]);
    assert_eq!(fs::read(mv2.join(junk).join(OsStr::from_bytes(b"moved-\x80"))).unwrap(), b"history");
    assert_eq!(errno_of(fs::metadata(mv2.join(latin1))), libc::ENOENT);
    m.umount();
    assert_eq!(snapshot(&l.lower.root), lower_before);
    assert!(
        tree::shape(&snapshot(&l.upper)).iter().any(|s| s.starts_with("c ") && s.ends_with("caf\u{fffd}")),
        "whiteout"
    );
}

#[test]
fn non_utf8_names_where_a_registry_path_must_be_utf8() {
    // gc: every registry name must be UTF-8; one that is not stops gc by path.
    let cases: [(&str, &[u8]); 4] = [
        ("blob fan-out", b"blobs/sha256/\xff"),
        ("blob directory", b"blobs/sha256/ab/\xffab"),
        ("layer link directory", b"repositories/app/_layers/sha256/\xfe\xff"),
        ("tag", b"repositories/app/_manifests/tags/v\xe9"),
    ];
    for (case, rel) in cases {
        let (l, _, _) = Layers::new();
        let p = l.lower.v2().join(OsStr::from_bytes(rel));
        fs::create_dir_all(&p).unwrap();
        let shown = Path::new(V2).join(OsStr::from_bytes(rel)).display().to_string();
        l.gc_refuses(case, true, &shown, "not a UTF-8 name");
    }
    // A non-UTF-8 directory under repositories/ cannot be a registry
    // repository name either: refused by name, not skipped (its links would
    // otherwise dangle after the sweep).
    let (l, m, layers) = Layers::new();
    let odd = OsStr::from_bytes(b"\xe9quipe");
    let repo = l.lower.v2().join("repositories").join(odd);
    fs::create_dir_all(repo.join("_layers/sha256")).unwrap();
    fixtures::copy_tree(
        &l.lower.v2().join("repositories/app/_layers/sha256").join(&layers[0]),
        &repo.join("_layers/sha256").join(&layers[0]),
    );
    let shown = Path::new(V2).join("repositories").join(odd).display().to_string();
    l.gc_refuses("repository", true, &shown, "not a UTF-8 name");
    let _ = m;

    // export has no such rule: names go into the tar byte for byte.
    let (l, _, _) = Layers::new();
    fs::write(l.lower.v2().join(OsStr::from_bytes(b"notes-\xe9")), b"n").unwrap();
    let tar = l.path("x.tar");
    let out = l.run("export", false, &["-o", tar.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let mut a = tar::Archive::new(fs::File::open(&tar).unwrap());
    let found = a.entries().unwrap().any(|e| e.unwrap().path_bytes().ends_with(b"notes-\xe9"));
    assert!(found, "the non-UTF-8 name must be in the tar as it is");
}

#[test]
fn an_upper_that_is_not_a_directory_is_refused() {
    let (l, _, _) = Layers::new();
    let file = l.path("upper-file");
    fs::write(&file, b"x").unwrap();
    let tar = l.path("t.tar");
    for upper in [file.clone(), l.path("nope")] {
        for (cmd, extra) in [("gc", vec![]), ("export", vec!["-o", tar.to_str().unwrap()])] {
            let out = regfs_layers(cmd, &[&l.lower.root], &upper, &extra);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{cmd}:\n{}", text(&out));
            assert!(err.contains(&upper.display().to_string()) && err.contains("no such directory"), "{cmd}:\n{err}");
        }
    }
    let err = Mount::try_fuse(&[&l.lower.root], &file, &l.path("mnt"), &["--mode", "fuse"]).err().expect("must fail");
    assert!(err.contains(&file.display().to_string()) && err.contains("not a directory"), "{err}");
    assert_eq!(fs::read(&file).unwrap(), b"x");
    assert!(!l.path("nope").exists() && !tar.exists());
}
