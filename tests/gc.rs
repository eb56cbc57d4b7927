//! `regfs gc`: registry-aware garbage collection through the view.
//!
//! - on a view (history lower + release upper) it trims the history to what
//!   the release references, whites out instead of touching the lowers, and
//!   removes stale repositories, uploads and emptied directories;
//! - it follows every reference kind recursively (nested indexes, subject,
//!   schema1, unknown media types), keeps untagged children of tagged indexes;
//! - differential: on stores pushed through the real registry it keeps the
//!   same blobs as `docker-registry garbage-collect` where the stock tool is
//!   right, and keeps the index children that `-m` wrongly deletes;
//! - bad links and manifests stop it before anything is deleted.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use support::fixtures;

use fixtures::{StoreWriter, V2, blob_set, copy_tree, empty_root, hexes, regfs_layers, regfs_ok, stock_gc, text};
use serde_json::{Value, json};
use support::oci;
use support::registry::{self, Registry};
use support::tree::snapshot;

fn repo_path(repo: &str) -> PathBuf {
    Path::new(V2).join("repositories").join(repo)
}

fn gc_json(lowers: &[&Path], upper: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let out = regfs_ok("gc", lowers, upper, &args);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("gc --json output is not JSON ({e}):\n{}", text(&out)))
}

fn deleted(report: &Value, kind: &str) -> u64 {
    report["report"]["kinds"][kind]["deleted"]["count"].as_u64().unwrap_or_else(|| panic!("no {kind} in {report:#}"))
}

/// Hex digests of the blobs a `--json` plan deletes.
fn planned_blobs(report: &Value) -> BTreeSet<String> {
    report["plan"]
        .as_array()
        .expect("plan")
        .iter()
        .filter(|d| d["kind"] == "blob")
        .filter_map(|d| Path::new(d["path"].as_str()?).file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

fn plan_paths(report: &Value) -> Vec<PathBuf> {
    report["plan"].as_array().expect("plan").iter().map(|d| PathBuf::from(d["path"].as_str().expect("path"))).collect()
}

/// No blob fan-out directory of the view is empty.
fn assert_no_empty_fanout(v: &regfs::view::View) {
    let root = Path::new(V2).join("blobs/sha256");
    for p in fixtures::view_names(v, &root) {
        assert!(!fixtures::view_names(v, &root.join(&p)).is_empty(), "empty blobs/sha256/{p} left behind");
    }
}

#[test]
fn view_gc_trims_history_to_the_release() {
    let work = tempfile::tempdir().unwrap();
    let (lower, upper) = (work.path().join("history"), work.path().join("release"));
    let h = StoreWriter::new(&lower);
    let base = h.blob(b"base layer shared by everything");
    let (app1, app1_cfg, app1_layers) = h.image("app", "app-v1", &[&base]);
    h.tag("app", "v1", &app1);
    let (web1, web1_cfg, web1_layers) = h.image("team/web", "web-v1", &[&base]);
    h.tag("team/web", "v1", &web1);
    let (stale1, stale_cfg, stale_layers) = h.image("stale", "stale-v1", &[&base]);
    h.tag("stale", "v1", &stale1);
    for r in ["app", "team/web", "stale"] {
        h.upload(r);
    }
    // The release: app changed (new config and layer, base reused from the
    // history), team/web re-pushed unchanged (revision and tag only), stale
    // not pushed; one upload left behind.
    let u = StoreWriter::new(&upper);
    let app2_cfg = u.blob(br#"{"seed":"app-v2"}"#);
    let app2_layer = u.blob(b"layer of app-v2");
    for l in [&app2_cfg, &app2_layer] {
        u.layer_link("app", l);
    }
    let app2 = u.manifest(
        "app",
        &json!({
            "schemaVersion": 2,
            "mediaType": oci::MEDIA_TYPE_MANIFEST,
            "config": u.desc(oci::MEDIA_TYPE_CONFIG, &app2_cfg),
            "layers": [h.desc(oci::MEDIA_TYPE_LAYER, &base), u.desc(oci::MEDIA_TYPE_LAYER, &app2_layer)],
        }),
    );
    u.tag("app", "v2", &app2);
    u.revision("team/web", &web1);
    u.tag("team/web", "v2", &web1);
    u.upload("app");

    let lower_before = snapshot(&lower);
    let upper_before = snapshot(&upper);
    let dry = gc_json(&[&lower], &upper, &["--dry-run"]);
    assert_eq!(snapshot(&upper), upper_before, "--dry-run changed the upper");
    assert_eq!(dry["report"]["dry_run"], true);

    let run = gc_json(&[&lower], &upper, &[]);
    assert_eq!(plan_paths(&run), plan_paths(&dry), "the dry run must print the exact plan");
    eprintln!(
        "view gc: {} deletions, planned in {} ms, swept in {} ms",
        plan_paths(&run).len(),
        run["report"]["plan_ms"],
        run["report"]["sweep_ms"]
    );
    assert_eq!(snapshot(&lower), lower_before, "the lower must never be written");

    let v = fixtures::view(&[&lower], &upper, None);
    for p in plan_paths(&run) {
        assert!(v.resolve(&p).unwrap().is_none(), "{} still in the view after gc", p.display());
    }
    let mut expect: BTreeSet<String> =
        [&base, &app2_cfg, &app2_layer, &app2, &web1, &web1_cfg].into_iter().cloned().collect();
    expect.extend(web1_layers.iter().cloned());
    assert_eq!(fixtures::view_blob_set(&v), expect);
    let gone: BTreeSet<String> =
        [&app1, &app1_cfg, &app1_layers[1], &stale1, &stale_cfg, &stale_layers[1]].into_iter().cloned().collect();
    assert!(blob_set(&lower).is_superset(&gone), "history blobs stay in the lower, hidden by whiteouts");
    assert_eq!(deleted(&run, "blob"), gone.len() as u64);
    assert_eq!(deleted(&run, "repository"), 1);
    assert_eq!(deleted(&run, "upload"), 1, "only the release's upload is visible (policy hides the history's)");

    assert!(v.resolve(&repo_path("stale")).unwrap().is_none(), "stale repository left");
    assert!(v.resolve(&repo_path("team")).unwrap().is_some());
    let layers_of = |r: &str| fixtures::view_names(&v, &repo_path(r).join("_layers/sha256"));
    assert_eq!(layers_of("app"), [&base, &app2_cfg, &app2_layer].into_iter().cloned().collect());
    assert_eq!(layers_of("team/web").len(), 3);
    for r in ["app", "team/web"] {
        assert!(v.resolve(&repo_path(r).join("_uploads")).unwrap().is_none(), "{r}/_uploads left");
    }
    assert_no_empty_fanout(&v);

    // Nothing is left to collect.
    let again = gc_json(&[&lower], &upper, &[]);
    assert_eq!(plan_paths(&again), Vec::<PathBuf>::new(), "a second gc must find nothing:\n{again:#}");
}

#[test]
fn marking_follows_every_reference_kind() {
    let work = tempfile::tempdir().unwrap();
    let empty = empty_root(&work.path().join("empty"));
    let upper = work.path().join("store");
    let s = StoreWriter::new(&upper);
    // multi: tagged index -> untagged index -> untagged manifest (OCI), and
    // a Docker schema2 child; an untagged image that is garbage.
    let (m, m_cfg, m_layers) = s.image("multi", "inner", &[]);
    let (d, d_cfg, d_layers) = s.image("multi", "docker-child", &[]);
    let inner = s.manifest(
        "multi",
        &json!({
            "schemaVersion": 2, "mediaType": oci::MEDIA_TYPE_INDEX,
            "manifests": [s.desc(oci::MEDIA_TYPE_MANIFEST, &m)],
        }),
    );
    let outer = s.manifest("multi", &json!({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [s.desc(oci::MEDIA_TYPE_INDEX, &inner), s.desc("application/vnd.docker.distribution.manifest.v2+json", &d)],
    }));
    s.tag("multi", "latest", &outer);
    let (junk, junk_cfg, junk_layers) = s.image("multi", "untagged-junk", &[]);
    // sig: a tagged artifact whose subject is an untagged image.
    let (subj, subj_cfg, subj_layers) = s.image("sig", "signed", &[]);
    let art_cfg = s.blob(b"{}");
    let art = s.manifest(
        "sig",
        &json!({
            "schemaVersion": 2, "mediaType": oci::MEDIA_TYPE_MANIFEST,
            "artifactType": "application/vnd.example.sig",
            "config": s.desc("application/vnd.oci.empty.v1+json", &art_cfg),
            "layers": [], "subject": s.desc(oci::MEDIA_TYPE_MANIFEST, &subj),
        }),
    );
    s.tag("sig", "sha256-sig", &art);
    // old: schema1; foreign: a foreign layer without data; weird: unknown type.
    let s1 = [s.blob(b"schema1 layer a"), s.blob(b"schema1 layer b")];
    let old = s.manifest(
        "old",
        &json!({
            "schemaVersion": 1, "name": "old", "tag": "v1",
            "fsLayers": [{"blobSum": format!("sha256:{}", s1[0])}, {"blobSum": format!("sha256:{}", s1[1])}],
            "signatures": [],
        }),
    );
    s.tag("old", "v1", &old);
    let win_cfg = s.blob(br#"{"os":"windows"}"#);
    let foreign = s.manifest("foreign", &json!({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": s.desc("application/vnd.docker.container.image.v1+json", &win_cfg),
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                    "digest": format!("sha256:{}", "f".repeat(64)), "size": 1, "urls": ["https://example.invalid/l"]}],
    }));
    s.tag("foreign", "v1", &foreign);
    let weird_cfg = s.blob(b"weird config");
    let weird = s.manifest(
        "weird",
        &json!({"mediaType": "application/x-future+json", "config": {"digest": format!("sha256:{weird_cfg}")}}),
    );
    s.tag("weird", "v1", &weird);
    let orphan = s.blob(b"nobody references me");

    let mut all = blob_set(&upper);
    let snap = snapshot(&upper);
    let keep_all = gc_json(&[&empty], &upper, &["--dry-run"]);
    assert_eq!(deleted(&keep_all, "blob"), 1, "default mode keeps every revision: only the orphan goes\n{keep_all:#}");
    assert_eq!(snapshot(&upper), snap);

    let run = gc_json(&[&empty], &upper, &["--delete-untagged"]);
    let warnings = run["report"]["warnings"].as_array().unwrap();
    assert!(warnings.is_empty(), "foreign layers without data are fine: {warnings:?}");
    let mut gone: BTreeSet<String> = [junk, junk_cfg, orphan].into();
    gone.extend(junk_layers);
    for g in &gone {
        assert!(all.remove(g));
    }
    assert_eq!(blob_set(&upper), all, "kept blobs");
    for kept in [m, m_cfg, d, d_cfg, inner, outer, subj, subj_cfg, art, art_cfg, old, win_cfg, weird, weird_cfg]
        .into_iter()
        .chain(m_layers)
        .chain(d_layers)
        .chain(subj_layers)
        .chain(s1)
    {
        assert!(all.contains(&kept), "{kept} must be kept");
    }
    let revs = fixtures::view_names(
        &fixtures::view(&[&empty], &upper, None),
        &repo_path("multi").join("_manifests/revisions/sha256"),
    );
    assert_eq!(revs.len(), 4, "index, inner index and both children stay; the untagged junk goes: {revs:?}");
}

/// Release 1 then release 2 pushed to the same tag (`cur`), so changed
/// images leave untagged manifests; image 5's manifest deleted through the
/// API, so its own blobs are garbage for every collector.
struct Pushed {
    store: PathBuf,
    r1: Vec<oci::ImageRef>,
    r2: Vec<oci::ImageRef>,
}

fn pushed_store(work: &Path) -> Pushed {
    let r1 = oci::write_release(&work.join("r1"), &oci::release_set(1, 6, 3));
    let r2 = oci::write_release(&work.join("r2"), &oci::release_set(2, 6, 3));
    let store = empty_root(&work.join("store"));
    let registry = Registry::start(&store);
    for image in r1.iter().chain(&r2) {
        registry::push_layout(&image.layout_dir, &image.tag, &registry, &image.repo, "cur")
            .unwrap_or_else(|o| panic!("pushing {}: {o}", image.repo));
    }
    let gone = &r2[5];
    let resp = registry.request("DELETE", &format!("/v2/{}/manifests/{}", gone.repo, gone.digest), &[]);
    assert_eq!(resp.status, 202, "deleting {}@{}: {}", gone.repo, gone.digest, String::from_utf8_lossy(&resp.body));
    registry.stop();
    Pushed { store, r1, r2 }
}

#[test]
fn differential_against_stock_gc() {
    let work = tempfile::tempdir().unwrap();
    let p = pushed_store(work.path());
    let empty = empty_root(&work.path().join("empty"));
    let copy = |name: &str| {
        let dst = work.path().join(name);
        copy_tree(&p.store, &dst);
        dst
    };
    let (stock, ours, stock_m, ours_m, as_lower, as_lower_upper) =
        (copy("stock"), copy("ours"), copy("stock-m"), copy("ours-m"), copy("lower"), work.path().join("lower-upper"));

    // Default mode: every revision is a root; the stock tool is right.
    let all = blob_set(&p.store);
    let stock_dry = stock_gc(&p.store, false, true);
    assert_eq!(blob_set(&p.store), all, "the stock --dry-run deletes nothing");
    let dry = gc_json(&[&empty], &ours, &["--dry-run"]);
    assert!(!stock_dry.is_empty());
    assert_eq!(planned_blobs(&dry), stock_dry, "both dry runs name the same blobs");
    assert_eq!(stock_gc(&stock, false, false), stock_dry);
    let report = gc_json(&[&empty], &ours, &[]);
    eprintln!(
        "gc on the pushed store: planned in {} ms, swept in {} ms",
        report["report"]["plan_ms"], report["report"]["sweep_ms"]
    );
    assert_eq!(blob_set(&ours), blob_set(&stock), "regfs gc and docker-registry garbage-collect keep the same blobs");
    let image5 = &p.r2[5];
    assert!(blob_set(&ours).is_disjoint(&hexes(&image5.manifest_digests())));
    assert!(blob_set(&ours).is_disjoint(&hexes(&image5.config_digests())));
    assert_eq!(deleted(&report, "repository"), 1, "the repository left without manifests is removed whole");

    // Tagged roots only: untagged release-1 manifests go in both...
    let stock_m_dry = stock_gc(&p.store, true, true);
    let ours_m_dry = planned_blobs(&gc_json(&[&empty], &ours_m, &["--delete-untagged", "--dry-run"]));
    stock_gc(&stock_m, true, false);
    gc_json(&[&empty], &ours_m, &["--delete-untagged"]);
    let (kept_stock, kept_ours) = (blob_set(&stock_m), blob_set(&ours_m));
    assert_eq!(&all - &kept_stock, stock_m_dry);
    assert_eq!(&all - &kept_ours, ours_m_dry);
    for changed in [0, 3] {
        let old = &p.r1[changed];
        assert_ne!(old.digest, p.r2[changed].digest);
        let only_old: BTreeSet<String> =
            hexes(&old.blob_digests()).difference(&hexes(&p.r2[changed].blob_digests())).cloned().collect();
        assert!(!only_old.is_empty());
        assert!(kept_stock.is_disjoint(&only_old) && kept_ours.is_disjoint(&only_old), "untagged {} must go", old.repo);
    }
    // ...but the stock tool also deletes what the tagged index's (untagged)
    // children reference: the -m data-loss bug. regfs keeps it.
    let index = p.r2.iter().find(|i| i.is_index()).expect("release has an index");
    let others: BTreeSet<String> =
        p.r2.iter()
            .filter(|i| i.repo != index.repo && i.repo != image5.repo)
            .flat_map(|i| hexes(&i.blob_digests()))
            .collect();
    let children_only: BTreeSet<String> = hexes(&index.linked_blob_digests()).difference(&others).cloned().collect();
    assert!(!children_only.is_empty());
    assert!(kept_stock.is_subset(&kept_ours), "regfs keeps everything the stock tool keeps");
    assert_eq!(
        kept_ours.difference(&kept_stock).cloned().collect::<BTreeSet<_>>(),
        children_only,
        "the only difference is what the index's children reference"
    );
    assert!(kept_ours.is_superset(&hexes(&index.blob_digests())));
    // The difference matters: the index pulls from regfs's result only.
    for (root, ok) in [(&ours_m, true), (&stock_m, false)] {
        let registry = Registry::start(root);
        let pulled = registry::pull_to_layout(&registry, &index.repo, "cur", &work.path().join(format!("pull-{ok}")));
        assert_eq!(pulled.is_ok(), ok, "pulling {} from {}:\n{:?}", index.repo, root.display(), pulled);
        registry.stop();
    }

    // The same store as a lower (all sections visible): whiteouts in an
    // empty upper give the same view, the lower is untouched.
    let policy = work.path().join("transparent.json");
    fs::write(&policy, r#"{"hide_sections": []}"#).unwrap();
    let before = snapshot(&as_lower);
    fs::create_dir(&as_lower_upper).unwrap();
    let pol = policy.to_str().unwrap();
    gc_json(&[&as_lower], &as_lower_upper, &["--delete-untagged", "--policy", pol]);
    assert_eq!(snapshot(&as_lower), before, "the lower must never be written");
    let v = fixtures::view(&[&as_lower], &as_lower_upper, Some(&policy));
    assert_eq!(fixtures::view_blob_set(&v), kept_ours);
}

/// A valid store with garbage (an orphan blob and an upload), plus a breakage.
fn broken_store(root: &Path, break_it: impl FnOnce(&StoreWriter, &str)) -> String {
    let (s, m, _) = fixtures::app_store(root);
    s.blob(b"orphan");
    s.upload("app");
    break_it(&s, &m);
    m
}

#[test]
fn bad_input_stops_gc_before_anything_is_deleted_or_is_named_by_verify() {
    let work = tempfile::tempdir().unwrap();
    let empty = empty_root(&work.path().join("empty"));
    let hex = "ab".repeat(32);
    type Breakage = Box<dyn Fn(&StoreWriter, &str) -> String>;
    let cases: Vec<(&str, Breakage)> = vec![
        (
            "trailing newline",
            Box::new(|s: &StoreWriter, _m: &str| {
                let l = s.blob(b"a layer");
                s.raw_link("app", &format!("_layers/sha256/{l}/link"), format!("sha256:{l}\n").as_bytes());
                format!("repositories/app/_layers/sha256/{l}/link")
            }),
        ),
        (
            "uppercase",
            Box::new(|s: &StoreWriter, m: &str| {
                s.raw_link(
                    "app",
                    &format!("_manifests/revisions/sha256/{m}/link"),
                    format!("sha256:{}", m.to_uppercase()).as_bytes(),
                );
                format!("repositories/app/_manifests/revisions/sha256/{m}/link")
            }),
        ),
        (
            "path trick",
            Box::new(|s: &StoreWriter, _m: &str| {
                s.raw_link("app", "_manifests/tags/v1/current/link", b"sha256:../../etc");
                "repositories/app/_manifests/tags/v1/current/link".to_string()
            }),
        ),
        (
            "other digest",
            Box::new(move |s: &StoreWriter, m: &str| {
                s.raw_link("app", &format!("_layers/sha256/{hex}/link"), format!("sha256:{m}").as_bytes());
                format!("repositories/app/_layers/sha256/{hex}/link")
            }),
        ),
        (
            "unparsable manifest",
            Box::new(|s: &StoreWriter, _m: &str| {
                let bad = s.blob(b"\x1f\x8b not json");
                s.revision("app", &bad);
                format!("blobs/sha256/{}/{bad}/data", &bad[..2])
            }),
        ),
        (
            "missing child",
            Box::new(|s: &StoreWriter, m: &str| {
                let child = "cd".repeat(32);
                let idx = s.manifest("app", &json!({"mediaType": oci::MEDIA_TYPE_INDEX, "manifests": [
                s.desc(oci::MEDIA_TYPE_MANIFEST, m), {"mediaType": oci::MEDIA_TYPE_MANIFEST, "digest": format!("sha256:{child}"), "size": 1}]}));
                s.tag("app", "multi", &idx);
                format!("blobs/sha256/cd/{child}/data")
            }),
        ),
    ];
    for (name, case) in cases {
        let root = work.path().join(name.replace(' ', "-"));
        let mut bad_path = String::new();
        broken_store(&root, |s, m| bad_path = case(s, m));
        let before = snapshot(&root);
        if ["trailing newline", "uppercase", "other digest"].contains(&name) {
            // A link GC takes by its path: verify names it; GC does not read it.
            let out = regfs_layers("verify", &[&empty], &root, &[]);
            assert!(!out.status.success(), "{name}: verify passed:\n{}", text(&out));
            assert!(
                text(&out).contains(&format!("{V2}/{bad_path}")),
                "{name}: verify must name {bad_path}:\n{}",
                text(&out)
            );
            regfs_ok("gc", &[&empty], &root, &["--dry-run"]);
            assert_eq!(snapshot(&root), before, "{name}: verify or a dry run changed the store");
            continue;
        }
        for extra in [&["--dry-run"][..], &[][..], &["--delete-untagged"][..]] {
            let out = regfs_layers("gc", &[&empty], &root, extra);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{name}: gc {extra:?} must fail:\n{}", text(&out));
            assert!(err.contains(&format!("{V2}/{bad_path}")), "{name}: the error must name {bad_path}:\n{err}");
            assert!(err.contains("stopped before deleting anything"), "{name}:\n{err}");
            assert_eq!(snapshot(&root), before, "{name}: gc {extra:?} changed the store");
        }
    }
}

#[test]
fn gc_and_export_refuse_an_upper_in_use() {
    let work = tempfile::tempdir().unwrap();
    let lower = empty_root(&work.path().join("lower"));
    let upper = work.path().join("upper");
    broken_store(&upper, |_, _| {});
    let mnt = support::mount::Mount::fuse(&[&lower], &upper, &work.path().join("mnt"), &["--mode", "fuse"]);
    let tar = work.path().join("x.tar");
    for (sub, extra) in [("gc", vec![]), ("export", vec!["-o", tar.to_str().unwrap()])] {
        let out = regfs_layers(sub, &[&lower], &upper, &extra);
        assert!(!out.status.success(), "regfs {sub} on a mounted upper must fail:\n{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("in use"), "{sub}:\n{}", text(&out));
    }
    assert!(!tar.exists());
    mnt.umount();
    regfs_ok("gc", &[&lower], &upper, &[]);
}

/// `regfs gc -v --dry-run --json` with `policy`, its scan on `threads`
/// threads (`REGFS_GC_THREADS`, which its log must confirm).
fn dry_run_on_threads(lower: &Path, upper: &Path, policy: &Path, threads: &str) -> Value {
    let mut args = vec!["gc".to_string(), "-v".into(), "--dry-run".into(), "--json".into()];
    args.extend(fixtures::layer_args(&[lower], upper));
    args.extend(["--policy".to_string(), policy.display().to_string()]);
    let out = std::process::Command::new(support::mount::regfs_bin())
        .args(&args)
        .env(regfs::gc::THREADS_VAR, threads)
        .output()
        .expect("running regfs gc");
    assert!(out.status.success(), "regfs gc on {threads} threads:\n{}", text(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains(&format!("threads={threads}")), "gc did not scan on {threads} threads:\n{log}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("gc --json output is not JSON ({e}):\n{}", text(&out)))
}

/// GC walks repositories and blob prefixes in parallel, on one thread per
/// CPU or, when the store is not in the page cache, on 32
/// (`REGFS_GC_THREADS` sets the number): the plan is the same on any number
/// of threads, with nested repositories, live and stale ones side by side.
#[test]
fn the_plan_is_the_same_on_one_thread_and_on_many() {
    let work = tempfile::tempdir().unwrap();
    let (lower, upper) = (work.path().join("history"), work.path().join("release"));
    let h = StoreWriter::new(&lower);
    let base = h.blob(b"a base layer every image shares");
    for i in 0..48 {
        // Repositories one to three levels deep, a repository inside another's directory.
        let repo = match i % 4 {
            0 => format!("team{}/svc{i}", i % 5),
            1 => format!("team{}/deep/svc{i}", i % 5),
            2 => format!("solo{i}"),
            _ => format!("team{}/svc{}/sub{i}", i % 5, i - 3),
        };
        let (manifest, _, _) = h.image(&repo, &format!("seed {i}"), &[&base]);
        if i % 3 != 0 {
            h.tag(&repo, "v1", &manifest);
        }
        if i % 7 == 0 {
            h.upload(&repo);
        }
    }
    // Garbage: blobs nothing names.
    for i in 0..64 {
        h.blob(format!("orphan {i}").as_bytes());
    }
    fs::create_dir_all(&upper).unwrap();
    // An empty policy: the history's manifests count, so repositories are live.
    let policy = work.path().join("policy.json");
    fs::write(&policy, r#"{"hide_sections": []}"#).unwrap();
    let plan_on = |threads: &str| {
        let mut v = dry_run_on_threads(&lower, &upper, &policy, threads);
        // Timings differ from run to run; everything else must not.
        for k in ["plan_ms", "sweep_ms"] {
            v["report"][k] = json!(0);
        }
        v
    };
    let one = plan_on("1");
    assert!(deleted(&one, "blob") >= 64, "the orphans are planned for deletion: {one:#}");
    assert!(deleted(&one, "upload") > 0, "uploads are planned for deletion: {one:#}");
    assert!(one["report"]["kinds"]["repository"]["kept"]["count"].as_u64() > Some(0), "live repositories: {one:#}");
    for threads in ["2", "32"] {
        assert_eq!(plan_on(threads), one, "the plan on {threads} threads differs from the one on 1");
    }
}

/// The repository tree is walked a level at a time, not by recursion: a
/// repository nested 1,800 directories deep (a path near PATH_MAX) is found
/// and kept, on one thread and on many, and the stale one beside it goes.
#[test]
fn a_repository_nested_near_path_max_is_found() {
    let work = tempfile::tempdir().unwrap();
    let (lower, upper) = (work.path().join("h"), work.path().join("u"));
    let h = StoreWriter::new(&lower);
    let deep = vec!["d"; 1800].join("/");
    let (manifest, _, _) = h.image(&deep, "deep", &[]);
    h.tag(&deep, "v1", &manifest);
    let stale = h.blob(b"a layer of a repository without manifests");
    h.layer_link("stale", &stale);
    fs::create_dir_all(&upper).unwrap();
    let policy = work.path().join("policy.json");
    fs::write(&policy, r#"{"hide_sections": []}"#).unwrap();
    for threads in ["1", "32"] {
        let v = dry_run_on_threads(&lower, &upper, &policy, threads);
        assert_eq!(v["report"]["kinds"]["repository"]["kept"]["count"], 1, "the deep repository stays: {v:#}");
        assert_eq!(deleted(&v, "repository"), 1, "the stale repository goes: {v:#}");
        assert_eq!(planned_blobs(&v), BTreeSet::from([stale.clone()]), "only the stale repository's blob goes");
    }
}

/// `regfs verify` checks what GC takes on trust: it names every link whose
/// content is not the digest it is filed under, every link directory
/// without its link, every blob whose data does not hash to its digest, all
/// in one run; GC itself runs on the same store without reading them.
#[test]
fn verify_names_every_damaged_link_and_blob_and_gc_does_not_read_them() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let (s, m, layers) = fixtures::app_store(&store);
    let ok = regfs_ok("verify", &[], &store, &["--json"]);
    let r: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!((r["ok"].as_bool(), r["problems"].as_array().map(Vec::len)), (Some(true), Some(0)), "{r}");
    // config + layer + manifest blobs; 2 layer links, 1 revision, 1 tag history, 1 current.
    assert_eq!((r["blobs_checked"].as_u64(), r["links_checked"].as_u64()), (Some(3), Some(5)), "{r}");

    let other = "ee".repeat(32);
    s.raw_link("app", &format!("_manifests/revisions/sha256/{m}/link"), format!("sha256:{other}").as_bytes());
    let missing = format!("_layers/sha256/{}/link", layers[0]);
    fs::remove_file(s.v2().join("repositories/app").join(&missing)).unwrap();
    let blob = s.blob_path(&layers[0]);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    let before = snapshot(&store);
    let out = regfs_layers("verify", &[], &store, &["--json"]);
    assert!(!out.status.success(), "verify passed a damaged store:\n{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems: Vec<String> =
        r["problems"].as_array().unwrap().iter().map(|p| format!("{}: {}", p["path"], p["problem"])).collect();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    let all = problems.join("\n");
    for want in [
        format!("revisions/sha256/{m}/link\": \"the link names sha256:{other} but is filed under sha256:{m}"),
        format!("{missing}\": \"missing"),
        format!("{}/data\": \"the data does not hash", layers[0]),
    ] {
        assert!(all.contains(&want), "{want:?} not in:\n{all}");
    }
    assert_eq!(snapshot(&store), before, "verify wrote the store");
    // GC takes the links by their paths: it plans without an error.
    let out = regfs_ok("gc", &[], &store, &["--dry-run"]);
    assert!(!text(&out).contains("filed under"), "{}", text(&out));
}
