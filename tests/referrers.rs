//! What a release carries beside its images, end to end with the real
//! registry and skopeo: signatures, attestations, SBOMs and OCI 1.1
//! referrers travel with their image (from OCI layouts and from a source
//! registry), land at a site and are served there; GC keeps what is
//! attached to what it keeps; images are pinned by digest; every release
//! is recorded in the history and rebuilt from it byte for byte.
//! Needs FUSE, docker-registry and skopeo; never skipped.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::mount::{regfs_bin, test_mode, text};
use support::oci::digest_hex;
use support::registry::{self, Registry};
use support::release::{self, Pulled, SkopeoCache, V2};
use support::signed::{self, Attached, SignedSource};
use support::tree;

fn run(args: &[&str]) -> Output {
    Command::new(regfs_bin()).args(args).output().expect("running regfs")
}

fn ok(args: &[&str]) -> Output {
    let o = run(args);
    assert!(o.status.success(), "regfs {args:?} failed:\n{}", text(&o));
    o
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", text(o)))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `regfs release --json --mode MODE` over `history`.
fn release(history: &Path, list: &Path, from: &str, out: &Path, extra: &[&str]) -> Output {
    let mode = test_mode();
    let mut args = vec!["release", "--json", "--mode", &mode];
    let (h, l, o) = (s(history), s(list), s(out));
    args.extend(["--history", &h, "--images", &l, "--from", from, "-o", &o]);
    args.extend(extra);
    run(&args)
}

fn images_list(path: &Path, lines: &[String]) -> PathBuf {
    fs::write(path, format!("# signed release\n{}\n", lines.join("\n"))).expect("writing the list");
    path.to_path_buf()
}

/// The images list of a signed source: `app` by tag, `multi` by digest
/// alone, `tool` by tag pinned to its digest.
fn signed_list(path: &Path, src: &SignedSource) -> PathBuf {
    let [app, multi, tool] = &src.images[..] else { panic!("three images") };
    images_list(
        path,
        &[format!("app:{}", app.tag), format!("multi@{}", multi.digest), format!("tool:{}@{}", tool.tag, tool.digest)],
    )
}

fn work_upper(out: &Path) -> PathBuf {
    let mut name = out.file_name().expect("file name").to_os_string();
    name.push(".work");
    out.with_file_name(name).join("upper")
}

/// The attachments the lock of a summary or description lists, as written.
fn lock_attachments(lock: &Value) -> BTreeSet<Attached> {
    let kind = |k: &str| -> &'static str {
        match k {
            "signature" => "signature",
            "attestation" => "attestation",
            "sbom" => "sbom",
            "referrers-index" => "referrers-index",
            "referrer" => "referrer",
            other => panic!("unknown attachment kind {other:?}"),
        }
    };
    lock.as_array()
        .expect("a lock")
        .iter()
        .flat_map(|l| l["attachments"].as_array().expect("attachments").iter())
        .map(|a| Attached {
            kind: kind(a["kind"].as_str().expect("kind")),
            digest: a["digest"].as_str().expect("digest").into(),
            subject: a["subject"].as_str().expect("subject").into(),
            tag: a["tag"].as_str().map(str::to_string),
        })
        .collect()
}

/// Checks a signed release: the summary's lock names every image as
/// requested with the source's digest and every attachment; applied to a
/// site, a stock registry serves every image (pulled back, digests
/// compared) and every attachment by its tag or digest.
fn check_signed_release(src: &SignedSource, o: &Output, tar: &Path, site: &Path, cache: &SkopeoCache) {
    let sum = json(o);
    assert!(o.status.success(), "release failed:\n{}", text(o));
    let want: BTreeSet<Attached> = src.attached.iter().cloned().collect();
    assert_eq!(lock_attachments(&sum["lock"]), want, "attachments in the lock:\n{}", text(o));
    assert_eq!(sum["attachments"].as_u64(), Some(want.len() as u64));
    let lock = sum["lock"].as_array().expect("lock");
    let [app, multi, tool] = &src.images[..] else { panic!("three images") };
    let got: BTreeMap<&str, (&str, Option<&str>)> = lock
        .iter()
        .map(|l| {
            (l["requested"].as_str().expect("requested"), (l["digest"].as_str().expect("digest"), l["tag"].as_str()))
        })
        .collect();
    let want_lock: BTreeMap<String, (&str, Option<&str>)> = BTreeMap::from([
        (format!("app:{}", app.tag), (app.digest.as_str(), Some(app.tag.as_str()))),
        (format!("multi@{}", multi.digest), (multi.digest.as_str(), None)),
        (format!("tool:{}@{}", tool.tag, tool.digest), (tool.digest.as_str(), Some(tool.tag.as_str()))),
    ]);
    let got: BTreeMap<String, _> = got.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(got, want_lock, "images in the lock");
    let multi_lock = lock.iter().find(|l| l["repo"] == "multi").expect("multi in the lock");
    assert_eq!(multi_lock["platforms"], serde_json::json!(["linux/amd64", "linux/arm64"]));

    // The bundle's own description holds the same lock; inventory shows it.
    let d = regfs::bundle::read_description(tar).expect("the bundle's description");
    assert_eq!(serde_json::to_value(&d.lock).expect("lock as JSON"), sum["lock"], "the lock in the bundle");
    let inv = text(&ok(&["inventory", &s(tar)]));
    assert!(inv.contains("lock of release") && inv.contains(&format!("app:{}", app.tag)), "{inv}");
    assert!(inv.contains("signature") && inv.contains("referrers-index"), "{inv}");

    // The road: applied to a site, served by a stock registry.
    fs::create_dir_all(site).expect("mkdir site");
    ok(&["apply", &s(tar), "--to", &s(site)]);
    let registry = Registry::start(site);
    for a in &src.attached {
        let repo = src
            .images
            .iter()
            .find(|i| i.manifest_digests().contains(&a.subject) || is_attached_below(src, a, i))
            .map(|i| i.repo.clone());
        let repo = repo.unwrap_or_else(|| panic!("no image for {a:?}"));
        let by_digest = registry::manifest_digest(&registry, &repo, &a.digest);
        assert_eq!(by_digest.as_deref(), Some(a.digest.as_str()), "the site serves {a:?} by digest");
        if let Some(tag) = &a.tag {
            let by_tag = registry::manifest_digest(&registry, &repo, tag);
            assert_eq!(by_tag.as_deref(), Some(a.digest.as_str()), "the site serves {a:?} by its tag");
        }
    }
    // app and tool pulled back by tag; multi (untagged) by digest.
    let tagged = vec![app.clone(), tool.clone()];
    let pulled = release::pull_release(&registry, &tagged, &site.with_extension("pulled"), cache);
    let expected: Vec<Pulled> = tagged.iter().map(Pulled::expected).collect();
    assert_eq!(pulled, expected, "images pulled back from the site");
    assert_eq!(registry::manifest_digest(&registry, "multi", &multi.digest).as_deref(), Some(multi.digest.as_str()));
    for child in multi.child_digests() {
        assert_eq!(registry::manifest_digest(&registry, "multi", &child).as_deref(), Some(child.as_str()));
    }
    release::assert_clean_log(&registry);
    registry.stop();
}

/// Whether attachment `a` hangs, through other attachments, off image `i`.
fn is_attached_below(src: &SignedSource, a: &Attached, i: &support::oci::ImageRef) -> bool {
    let mut subject = a.subject.clone();
    for _ in 0..8 {
        if i.manifest_digests().contains(&subject) {
            return true;
        }
        match src.attached.iter().find(|x| x.digest == subject) {
            Some(up) => subject = up.subject.clone(),
            None => return false,
        }
    }
    false
}

#[test]
fn signatures_and_referrers_travel_from_oci_layouts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layouts = dir.path().join("layouts");
    let src = signed::signed_source(&layouts, true, "v1");
    let history = dir.path().join("history");
    fs::create_dir_all(history.join(V2)).expect("history");
    let list = signed_list(&dir.path().join("images.list"), &src);
    let tar = dir.path().join("r1.tar");
    let o = release(&history, &list, &format!("oci:{}", layouts.display()), &tar, &[]);
    check_signed_release(&src, &o, &tar, &dir.path().join("site"), &SkopeoCache::new());

    // --no-referrers: the images alone.
    let bare = dir.path().join("bare.tar");
    let o = release(&history, &list, &format!("oci:{}", layouts.display()), &bare, &["--no-referrers"]);
    let sum = json(&o);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(sum["attachments"].as_u64(), Some(0));
    assert!(lock_attachments(&sum["lock"]).is_empty());
    let d = regfs::bundle::read_description(&bare).expect("description");
    assert!(d.images.iter().all(|i| !i.tag.starts_with("sha256-")), "no attachment tags: {:?}", d.images);
}

#[test]
fn signatures_and_referrers_travel_from_a_source_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layouts = dir.path().join("layouts");
    // A registry has no untagged referrers a client could find without the
    // referrers API, which distribution lacks: the fallback tag lists them.
    let src = signed::signed_source(&layouts, false, "v1");
    let store = dir.path().join("source-store");
    signed::store_from_layouts(&layouts, &["app", "multi", "tool"], &store);
    let source = Registry::start(&store);
    let history = dir.path().join("history");
    fs::create_dir_all(history.join(V2)).expect("history");
    let list = signed_list(&dir.path().join("images.list"), &src);
    let tar = dir.path().join("r1.tar");
    let from = format!("docker://{}", source.host());
    let o = release(&history, &list, &from, &tar, &["--src-tls-verify", "false"]);
    check_signed_release(&src, &o, &tar, &dir.path().join("site"), &SkopeoCache::new());
    source.stop();
}

/// A referrer nothing tags (found by its subject) is kept by
/// `gc --delete-untagged` as long as its subject is kept; the stock tool
/// deletes it.
#[test]
fn gc_keeps_every_referrer_of_a_kept_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layouts = dir.path().join("layouts");
    let src = signed::signed_source(&layouts, true, "v1");
    let store = dir.path().join("store");
    signed::store_from_layouts(&layouts, &["app"], &store);
    let report = src.attached.iter().find(|a| is_report(&src, a)).expect("the untagged report");

    let stock = dir.path().join("stock");
    support::fixtures::copy_tree(&store, &stock);
    let doomed = support::fixtures::stock_gc(&stock, true, true);
    assert!(doomed.contains(digest_hex(&report.digest)), "the stock tool keeps the untagged referrer? {doomed:?}");

    let o = ok(&["gc", "--delete-untagged", "--json", "--upper", &s(&store)]);
    let data = tree::v2(&store).join(format!(
        "blobs/sha256/{}/{}/data",
        &digest_hex(&report.digest)[..2],
        digest_hex(&report.digest)
    ));
    assert!(data.is_file(), "regfs gc deleted the referrer {}:\n{}", report.digest, text(&o));
    for a in
        src.attached.iter().filter(|a| a.subject == src.images[0].digest || is_attached_below(&src, a, &src.images[0]))
    {
        let hex = digest_hex(&a.digest);
        assert!(tree::v2(&store).join(format!("blobs/sha256/{}/{hex}/data", &hex[..2])).is_file(), "{a:?} deleted");
        let rev = tree::v2(&store).join(format!("repositories/app/_manifests/revisions/sha256/{hex}/link"));
        assert!(rev.is_file(), "{a:?}: its revision deleted");
    }
    // And the store still serves the referrer by digest.
    let registry = Registry::start(&store);
    assert_eq!(registry::manifest_digest(&registry, "app", &report.digest).as_deref(), Some(report.digest.as_str()));
    registry.stop();
}

/// The untagged vulnerability report: the one referrer nothing signs.
fn is_report(src: &SignedSource, a: &Attached) -> bool {
    a.kind == "referrer" && !src.attached.iter().any(|x| x.subject == a.digest)
}

#[test]
fn a_pinned_tag_that_moved_fails_before_the_push() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layouts = dir.path().join("layouts");
    let src = signed::signed_source(&layouts, false, "v1");
    let history = dir.path().join("history");
    fs::create_dir_all(history.join(V2)).expect("history");
    // tool:v1 pinned to app's digest: the tag names another manifest.
    let pinned = format!("tool:v1@{}", src.images[0].digest);
    let list = images_list(&dir.path().join("images.list"), &["app:v1".to_string(), pinned.clone()]);
    let tar = dir.path().join("r.tar");
    let o = release(&history, &list, &format!("oci:{}", layouts.display()), &tar, &[]);
    assert!(!o.status.success(), "a moved tag was released:\n{}", text(&o));
    let err = text(&o);
    assert!(err.contains(&pinned) && err.contains("moved") && err.contains(&src.images[2].digest), "{err}");
    let doc = json(&o);
    assert_eq!(doc["phase"], "preflight", "{doc}");
    assert!(!tar.exists() && !work_upper(&tar).exists(), "something was written");

    // From a registry too: the tag is resolved there before anything is mounted.
    let store = dir.path().join("source-store");
    signed::store_from_layouts(&layouts, &["app", "tool"], &store);
    let source = Registry::start(&store);
    let from = format!("docker://{}", source.host());
    let o = release(&history, &list, &from, &tar, &["--src-tls-verify", "false"]);
    assert!(!o.status.success() && text(&o).contains(&pinned) && text(&o).contains("moved"), "{}", text(&o));
    assert!(!work_upper(&tar).exists(), "something was written");
    source.stop();
}

fn absorb(history: &Path, out: &Path) -> Value {
    json(&ok(&["absorb", "--json", "--history", &s(history), "--upper", &s(&work_upper(out))]))
}

fn sha(p: &Path) -> String {
    tree::sha256_hex(&fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

#[test]
fn a_recorded_release_is_rebuilt_from_the_history_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = dir.path().join("history");
    fs::create_dir_all(history.join(V2)).expect("history");
    let l1 = dir.path().join("layouts-1");
    let src1 = signed::signed_source(&l1, true, "v1");
    let r1 = dir.path().join("r1.tar");
    let o =
        release(&history, &signed_list(&dir.path().join("r1.list"), &src1), &format!("oci:{}", l1.display()), &r1, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(absorb(&history, &r1)["release"], "r1");
    let l2 = dir.path().join("layouts-2");
    let src2 = signed::signed_source(&l2, true, "v2");
    let r2 = dir.path().join("r2.tar");
    let list2 = signed_list(&dir.path().join("r2.list"), &src2);
    let o = release(&history, &list2, &format!("oci:{}", l2.display()), &r2, &["--base", &s(&r1)]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(absorb(&history, &r2)["release"], "r2");
    // Absorbing again records nothing new; the records are never in a view.
    assert_eq!(absorb(&history, &r2)["record_present"], true);
    let view = support::fixtures::view(&[&history], &dir.path().join("scratch-upper"), None);
    assert!(
        !support::fixtures::view_names(&view, Path::new("")).contains("regfs-releases"),
        "records visible in a view"
    );

    for (name, original) in [("r1", &r1), ("r2", &r2)] {
        let again = dir.path().join(format!("{name}-again.tar"));
        let o = ok(&["release", "--rebuild", name, "--history", &s(&history), "-o", &s(&again), "--json"]);
        assert_eq!(sha(&again), sha(original), "rebuilt {name}:\n{}", text(&o));
        assert_eq!(json(&o)["tar_sha256"], sha(original));
    }

    // A history that lost one blob: refused, naming it; nothing written.
    let lost = dir.path().join("lost");
    support::fixtures::copy_tree(&history, &lost);
    let victim = src1.images[0].manifests[0].layers[1].clone();
    let hex = digest_hex(&victim);
    fs::remove_dir_all(tree::v2(&lost).join(format!("blobs/sha256/{}/{hex}", &hex[..2]))).expect("removing a blob");
    let again = dir.path().join("lost.tar");
    let o = run(&["release", "--rebuild", "r1", "--history", &s(&lost), "-o", &s(&again)]);
    assert!(!o.status.success() && text(&o).contains(&victim) && text(&o).contains("lacks"), "{}", text(&o));
    assert!(!again.exists(), "a tar was written");

    // Hostile records: each refused naming the file, nothing written.
    let record = lost.join("regfs-releases/r1.json");
    let good = fs::read_to_string(&record).expect("the record");
    let cases: Vec<(&str, String)> = vec![
        ("truncated", good[..good.len() / 2].to_string()),
        ("another format", good.replacen("regfs-release-record", "something-else", 1)),
        ("a bad digest", good.replacen("\"tar_sha256\": \"", "\"tar_sha256\": \"ZZ", 1)),
        ("a lock naming a blob the release lacks", {
            let v: Value = serde_json::from_str(&good).expect("JSON");
            let desc = v["description"].as_str().expect("description");
            let forged = desc.replacen(&src1.images[0].digest, &format!("sha256:{}", "0".repeat(64)), 1);
            good.replace(&serde_json::to_string(desc).expect("json"), &serde_json::to_string(&forged).expect("json"))
        }),
    ];
    for (what, content) in cases {
        fs::write(&record, &content).expect("forging the record");
        let o = run(&["release", "--rebuild", "r1", "--history", &s(&lost), "-o", &s(&again)]);
        assert!(!o.status.success(), "{what}: accepted:\n{}", text(&o));
        assert!(
            text(&o).contains(&record.display().to_string()),
            "{what}: the error does not name the record:\n{}",
            text(&o)
        );
        assert!(!again.exists(), "{what}: a tar was written");
    }
    // An unknown name says which releases the history records.
    let o = run(&["release", "--rebuild", "r9", "--history", &s(&history), "-o", &s(&again)]);
    assert!(!o.status.success() && text(&o).contains("recorded: r1, r2"), "{}", text(&o));
}

/// A source whose attachments are broken: the release is refused in the
/// preflight, naming the image and the tag, and nothing is written.
#[test]
fn a_broken_attachment_at_the_source_is_refused_before_the_push() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = dir.path().join("history");
    fs::create_dir_all(history.join(V2)).expect("history");
    type Breaks = fn(&Path, &str);
    let cases: [(&str, Breaks); 2] = [
        ("a signature tag naming what is no manifest", |layout, subject| {
            let garbage = support::oci::put_raw(layout, support::oci::MEDIA_TYPE_MANIFEST, b"\x1f\x8b not json");
            support::oci::list_in_index(layout, Some(&format!("sha256-{}.sig", digest_hex(subject))), &garbage);
        }),
        ("a fallback index listing a referrer the source lacks", |layout, subject| {
            let missing = serde_json::json!({
                "mediaType": support::oci::MEDIA_TYPE_MANIFEST,
                "digest": format!("sha256:{}", "7".repeat(64)),
                "size": 100,
            });
            signed::fallback_index(layout, subject, &[missing]);
        }),
    ];
    for (i, (what, break_it)) in cases.iter().enumerate() {
        let layouts = dir.path().join(format!("layouts-{i}"));
        let img = support::oci::write_image(
            &support::oci::layout_dir(&layouts, "app"),
            "app",
            "v1",
            &support::oci::ImageSpec { layers: vec![support::oci::layer_bytes("x", 512)], config_seed: "x".into() },
        );
        break_it(&support::oci::layout_dir(&layouts, "app"), &img.digest);
        let list = images_list(&dir.path().join(format!("{i}.list")), &["app:v1".to_string()]);
        let tar = dir.path().join(format!("{i}.tar"));
        let o = release(&history, &list, &format!("oci:{}", layouts.display()), &tar, &[]);
        let err = text(&o);
        assert!(!o.status.success(), "{what}: released:\n{err}");
        assert!(
            err.contains("app:v1") && err.contains(&format!("sha256-{}", digest_hex(&img.digest))),
            "{what}: {err}"
        );
        assert_eq!(json(&o)["phase"], "preflight", "{what}");
        assert!(!tar.exists() && !work_upper(&tar).exists(), "{what}: something was written");
        // --no-referrers releases the image alone.
        let o = release(&history, &list, &format!("oci:{}", layouts.display()), &tar, &["--no-referrers"]);
        assert!(o.status.success(), "{what}: --no-referrers:\n{}", text(&o));
    }
}
