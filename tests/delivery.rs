//! Delivery to a site, end to end: delta bundles (`--base`), site
//! inventories, and `regfs apply`, as a release engineer and a customer run
//! them.
//!
//! - The whole road with the real registry and skopeo: release 1 full,
//!   release 2 as a delta against release 1's bundle and against an
//!   inventory of a site holding release 1 (byte-identical, exactly the new
//!   blobs), release 3 as a delta against delta 2; sites landed with merge
//!   and `--replace`, one bundle at a time and a chain in one run; a stock
//!   registry on each site serves every image with the source's digests.
//! - Refusals: a delta to an empty site lists every missing blob; a hostile
//!   corpus of bundles (corrupt data, truncation, `..`, absolute names,
//!   links, devices, duplicates, oversized headers, names outside the store,
//!   a lying description) and of inventories, each refused naming the entry,
//!   the site unchanged to the byte.
//! - Crashes: `apply` SIGKILLed before each of its staging steps and each of
//!   its placements; the site never shows a tag whose image is incomplete,
//!   and a re-run gives the same site as an uninterrupted apply.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use support::fixtures;

use fixtures::{StoreWriter, V2, empty_root, untar};
use serde_json::Value;
use support::mount::{json, ok, refused, test_mode, text};
use support::oci::{self, ImageRef, digest_hex};
use support::pause::{Paused, kill, run_to_pause};
use support::registry::Registry;
use support::release::{self, Pulled, SkopeoCache};
use support::tarfile::{Edit, adding, find, rec, records, write_tar};
use support::tree::{Snapshot, assert_unchanged, snapshot};

const IMAGES: usize = 12;
/// Release 2 changes images 0, 5 and 10; release 3 images 1, 6 and 11.
const CHANGED_EVERY: usize = 5;

fn all_blobs(images: &[ImageRef]) -> BTreeSet<String> {
    images.iter().flat_map(ImageRef::blob_digests).collect()
}

/// The blobs whose data a tar carries.
fn tar_blob_data(tar: &Path) -> BTreeSet<String> {
    let mut a = tar::Archive::new(fs::File::open(tar).unwrap_or_else(|e| panic!("{}: {e}", tar.display())));
    let mut out = BTreeSet::new();
    for e in a.entries().expect("entries") {
        let e = e.expect("entry");
        let p = e.path().expect("path").display().to_string();
        if let Some(hex) = p.strip_prefix(&format!("{V2}/blobs/sha256/")).and_then(|r| r.strip_suffix("/data")) {
            out.insert(format!("sha256:{}", &hex[3..]));
        }
    }
    out
}

fn description(tar: &Path) -> regfs::bundle::Description {
    regfs::bundle::read_description(tar).unwrap_or_else(|e| panic!("{}: {e}", tar.display()))
}

/// The `docker/` tree of a site.
fn docker_tree(site: &Path) -> Snapshot {
    snapshot(&site.join("docker"))
}

/// Every tag at the site names a manifest whose data is there, and so is
/// every blob and child manifest it references: what a registry serving the
/// site must never miss.
fn assert_tags_complete(site: &Path, when: &str) {
    let v2 = site.join(V2);
    let blob = |d: &str| v2.join(format!("blobs/sha256/{}/{}/data", &digest_hex(d)[..2], digest_hex(d)));
    let mut stack = vec![v2.join("repositories")];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if p.ends_with("current") {
                let Ok(link) = fs::read_to_string(p.join("link")) else { continue };
                let mut todo = vec![link];
                while let Some(d) = todo.pop() {
                    let data = fs::read(blob(&d))
                        .unwrap_or_else(|e| panic!("{when}: {} names {d}, whose data is missing: {e}", p.display()));
                    let doc: Value = serde_json::from_slice(&data).expect("a manifest");
                    for b in doc["layers"].as_array().into_iter().flatten().chain([&doc["config"]]) {
                        if let Some(bd) = b["digest"].as_str() {
                            assert!(blob(bd).is_file(), "{when}: {} needs blob {bd}, missing", p.display());
                        }
                    }
                    todo.extend(
                        doc["manifests"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|m| m["digest"].as_str().map(str::to_string)),
                    );
                }
            } else {
                stack.push(p);
            }
        }
    }
}

fn work_upper(tar: &Path) -> PathBuf {
    let mut name = tar.file_name().expect("name").to_os_string();
    name.push(".work");
    tar.with_file_name(name).join("upper")
}

/// `regfs release` of `images` from their layouts over `history`; the JSON summary.
fn release(history: &Path, images: &[ImageRef], layouts: &Path, out: &Path, extra: &[&str]) -> Value {
    fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
    let list = out.with_extension("list");
    let lines: Vec<String> = images.iter().map(|i| format!("{}:{}", i.repo, i.tag)).collect();
    fs::write(&list, lines.join("\n") + "\n").expect("images list");
    let mut args: Vec<String> = ["release", "--history"].map(String::from).to_vec();
    args.push(history.display().to_string());
    args.extend(["--images".into(), list.display().to_string(), "--from".into(), format!("oci:{}", layouts.display())]);
    args.extend(["-o".into(), out.display().to_string(), "--json".into(), "--mode".into(), test_mode()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    json(&ok(&args))
}

fn export(history: &Path, upper: &Path, out: &Path, extra: &[&str]) {
    fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
    let mut args = vec!["export".to_string(), "--lower".into(), history.display().to_string()];
    args.extend(["--upper".into(), upper.display().to_string(), "-o".into(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    ok(&args);
}

/// A stock registry on `site` serves every image of `images` by its tag
/// with the source's digests and blobs.
fn assert_site_serves(site: &Path, images: &[ImageRef], pulls: &Path, cache: &SkopeoCache) {
    let registry = Registry::start(site);
    let got = release::pull_release(&registry, images, pulls, cache);
    let want: Vec<Pulled> = images.iter().map(Pulled::expected).collect();
    assert_eq!(got, want, "what the registry on {} serves", site.display());
    release::assert_clean_log(&registry);
    registry.stop();
}

#[test]
fn deltas_ship_only_what_the_site_lacks_and_land_whole() {
    let work = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| work.path().join(n);
    let layouts = |r: u32| p(&format!("layouts-r{r}"));
    let sets: Vec<Vec<ImageRef>> =
        (1..=3).map(|r| oci::write_release(&layouts(r), &oci::release_set(r, IMAGES, CHANGED_EVERY))).collect();
    let history = empty_root(&p("history"));
    let cache = SkopeoCache::new();

    // Release 1, full; absorbed into the history.
    let r1 = p("out/release-1.tar");
    release(&history, &sets[0], &layouts(1), &r1, &[]);
    assert_eq!(tar_blob_data(&r1), all_blobs(&sets[0]), "a full bundle carries every blob");
    ok(&["absorb", "--history", history.to_str().unwrap(), "--upper", work_upper(&r1).to_str().unwrap()]);

    // Release 2 as a delta against release 1's bundle ...
    let d2 = p("a/release-2.tar");
    let s2 = release(&history, &sets[1], &layouts(2), &d2, &["--base", r1.to_str().unwrap()]);
    let upper2 = work_upper(&d2);
    let full2 = p("full/release-2.tar");
    export(&history, &upper2, &full2, &[]);
    // ... and against an inventory of a site that holds release 1.
    let site1 = p("site-r1");
    untar(&r1, &site1);
    let inv = p("site-r1.inventory");
    ok(&["inventory", site1.to_str().unwrap(), "-o", inv.to_str().unwrap()]);
    let d2b = p("b/release-2.tar");
    export(&history, &upper2, &d2b, &["--base", inv.to_str().unwrap()]);
    assert!(fs::read(&d2).unwrap() == fs::read(&d2b).unwrap(), "the delta against the bundle and the inventory differ");
    let new2: BTreeSet<String> = all_blobs(&sets[1]).difference(&all_blobs(&sets[0])).cloned().collect();
    assert!(!new2.is_empty());
    assert_eq!(tar_blob_data(&d2), new2, "delta 2 carries exactly release 2's new blobs");
    assert_eq!(tar_blob_data(&full2), all_blobs(&sets[1]));
    let desc2 = description(&d2);
    let shipped: BTreeSet<String> = desc2.blobs.iter().filter(|b| b.shipped).map(|b| b.digest.to_string()).collect();
    let needed: BTreeSet<String> = desc2.blobs.iter().map(|b| b.digest.to_string()).collect();
    assert_eq!((shipped, needed), (new2.clone(), all_blobs(&sets[1])), "delta 2's description");
    let new_bytes: u64 = desc2.blobs.iter().filter(|b| b.shipped).map(|b| b.size).sum();
    assert_eq!(s2["bundle"]["blobs_shipped"].as_u64(), Some(new2.len() as u64), "{s2}");
    assert_eq!(s2["bundle"]["bytes_shipped"].as_u64(), Some(new_bytes), "{s2}");
    assert_eq!(s2["bundle"]["blobs_needed"].as_u64(), Some(all_blobs(&sets[1]).len() as u64), "{s2}");
    assert!(s2["base"]["blobs_digest"].is_string(), "{s2}");
    let (d2_len, full2_len) = (fs::metadata(&d2).unwrap().len(), fs::metadata(&full2).unwrap().len());
    assert!(d2_len < full2_len, "delta {d2_len} B, full {full2_len} B");
    ok(&["absorb", "--history", history.to_str().unwrap(), "--upper", upper2.to_str().unwrap()]);

    // Release 3 as a delta against delta 2: it stands for the site after
    // delta 2, so nothing release 2 needed ships again.
    let d3 = p("a/release-3.tar");
    release(&history, &sets[2], &layouts(3), &d3, &["--base", d2.to_str().unwrap()]);
    let full3 = p("full/release-3.tar");
    export(&history, &work_upper(&d3), &full3, &[]);
    let new3: BTreeSet<String> = all_blobs(&sets[2]).difference(&all_blobs(&sets[1])).cloned().collect();
    assert_eq!(tar_blob_data(&d3), new3, "delta 3 carries exactly release 3's new blobs");

    // Replace: a site holding release 1 + delta 2 is exactly full 2, and serves it.
    let want2 = p("untar-full-2");
    untar(&full2, &want2);
    let site_a = p("site-a");
    untar(&r1, &site_a);
    let applied = json(&ok(&["apply", d2.to_str().unwrap(), "--to", site_a.to_str().unwrap(), "--replace", "--json"]));
    assert_eq!(applied["bundles"][0]["blobs_written"].as_u64(), Some(new2.len() as u64), "{applied}");
    assert_eq!(docker_tree(&site_a), docker_tree(&want2), "release 1 + delta 2 --replace is full 2");
    assert_site_serves(&site_a, &sets[1], &p("pulls-a"), &cache);

    // Merge: release 1's tags still pull, and release 2's.
    let site_b = p("site-b");
    untar(&r1, &site_b);
    ok(&["apply", d2.to_str().unwrap(), "--to", site_b.to_str().unwrap()]);
    assert_site_serves(&site_b, &sets[0], &p("pulls-b1"), &cache);
    assert_site_serves(&site_b, &sets[1], &p("pulls-b2"), &cache);

    // A chain into an empty site, in one run and one bundle a run: full 3.
    let want3 = p("untar-full-3");
    untar(&full3, &want3);
    let site_c = p("site-c");
    fs::create_dir(&site_c).unwrap();
    ok(&[
        "apply",
        r1.to_str().unwrap(),
        d2.to_str().unwrap(),
        d3.to_str().unwrap(),
        "--to",
        site_c.to_str().unwrap(),
        "--replace",
    ]);
    assert_eq!(docker_tree(&site_c), docker_tree(&want3), "full 1, delta 2, delta 3 in one run is full 3");
    let site_d = p("site-d");
    fs::create_dir(&site_d).unwrap();
    for b in [&r1, &d2, &d3] {
        ok(&["apply", b.to_str().unwrap(), "--to", site_d.to_str().unwrap(), "--replace"]);
    }
    assert_eq!(docker_tree(&site_d), docker_tree(&want3), "full 1, delta 2, delta 3 one at a time is full 3");
    assert_site_serves(&site_d, &sets[2], &p("pulls-d"), &cache);

    // A second run of a completed apply changes nothing.
    let before = snapshot(&site_c);
    let again = json(&ok(&["apply", d3.to_str().unwrap(), "--to", site_c.to_str().unwrap(), "--replace", "--json"]));
    assert_unchanged(&site_c, &before, "a second apply");
    let b = &again["bundles"][0];
    assert_eq!((b["blobs_written"].as_u64(), b["links_written"].as_u64()), (Some(0), Some(0)), "{again}");
    assert_eq!(again["removed"]["files"].as_u64(), Some(0), "{again}");

    // A dry run says what would change and writes nothing.
    let site_e = p("site-e");
    untar(&r1, &site_e);
    let before = snapshot(&site_e);
    let dry = json(&ok(&[
        "apply",
        d2.to_str().unwrap(),
        "--to",
        site_e.to_str().unwrap(),
        "--replace",
        "--dry-run",
        "--json",
    ]));
    assert_unchanged(&site_e, &before, "a dry run");
    assert_eq!(dry["bundles"][0]["blobs_written"].as_u64(), Some(new2.len() as u64), "{dry}");
    assert_eq!(dry["removed"]["tags"].as_u64(), Some(IMAGES as u64), "release 1's tags would go: {dry}");
    let gone: BTreeSet<String> = all_blobs(&sets[0]).difference(&all_blobs(&sets[1])).cloned().collect();
    assert_eq!(dry["removed"]["blobs"].as_u64(), Some(gone.len() as u64), "{dry}");

    // A delta to an empty site: refused before writing, every missing blob named.
    let empty = p("site-empty");
    fs::create_dir(&empty).unwrap();
    let err = refused(&["apply", d2.to_str().unwrap(), "--to", empty.to_str().unwrap()]);
    let missing: Vec<&regfs::bundle::Blob> = desc2.blobs.iter().filter(|b| !b.shipped).collect();
    assert!(err.contains(&format!("{} blobs release release-2 needs are neither", missing.len())), "{err}");
    for b in &missing {
        assert!(err.contains(&b.digest.to_string()), "{} not named:\n{err}", b.digest);
    }
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 0, "nothing written to the empty site");
}

/// Two small stores written by hand, bundled: full 1, and delta 2 against it.
struct Small {
    dir: tempfile::TempDir,
    full1: PathBuf,
    delta2: PathBuf,
    full2: PathBuf,
}

impl Small {
    fn new() -> Small {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        let base_layer = "a shared base layer".repeat(300);
        let s1 = StoreWriter::new(&p("s1"));
        let base = s1.blob(base_layer.as_bytes());
        let (app1, _, _) = s1.image("app", "app-1", &[&base]);
        s1.tag("app", "v1", &app1);
        let (lib1, _, _) = s1.image("team/lib", "lib-1", &[&base]);
        s1.tag("team/lib", "v1", &lib1);
        let s2 = StoreWriter::new(&p("s2"));
        let base = s2.blob(base_layer.as_bytes());
        let (app1, _, _) = s2.image("app", "app-1", &[&base]);
        s2.tag("app", "v1", &app1);
        let (app2, _, _) = s2.image("app", "app-2", &[&base]);
        s2.tag("app", "v2", &app2);
        let (tool, _, _) = s2.image("team/tool", "tool-2", &[]);
        s2.tag("team/tool", "v2", &tool);
        let empty = empty_root(&p("empty"));
        let full1 = p("full-1.tar");
        let delta2 = p("delta-2.tar");
        let full2 = p("full-2.tar");
        for (store, out, extra) in [
            (&s1.root, &full1, vec![]),
            (&s2.root, &delta2, vec!["--base", full1.to_str().unwrap()]),
            (&s2.root, &full2, vec![]),
        ] {
            let mut args = vec!["export", "--lower", empty.to_str().unwrap(), "--upper", store.to_str().unwrap()];
            args.extend(["-o", out.to_str().unwrap()]);
            args.extend(extra);
            ok(&args);
        }
        Small { dir, full1, delta2, full2 }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new site holding full 1.
    fn site(&self, name: &str) -> PathBuf {
        let site = self.path(name);
        untar(&self.full1, &site);
        site
    }
}

#[test]
fn hostile_bundles_are_refused_naming_the_entry_and_nothing_is_written() {
    let s = Small::new();
    let good = records(&s.delta2);
    let full = records(&s.full1);
    let blob_at = find(&good, |n| n.ends_with("/data"));
    let blob_name = String::from_utf8_lossy(&good[blob_at].name).into_owned();
    let link_at = find(&good, |n| n.contains("/_layers/") && n.ends_with("/link"));
    let link_name = String::from_utf8_lossy(&good[link_at].name).into_owned();
    let other_digest = format!("sha256:{}", "0".repeat(64));
    let store = |rest: &str| format!("{V2}/{rest}");
    // (what, edit of delta 2's records (false: write without the end marker), what the error must say)
    let cases: Vec<(&str, Edit, String)> = vec![
        (
            "corrupt blob",
            Box::new(move |r| {
                r[blob_at].data[0] ^= 0xff;
                true
            }),
            format!("{blob_name}: the data hashes to"),
        ),
        ("no end marker", Box::new(|_| false), "truncated".into()),
        (
            "dot-dot",
            adding(rec(&format!("{V2}/blobs/../../../etc/passwd"), tar::EntryType::Regular, b"x")),
            "a '..' component".into(),
        ),
        ("absolute", adding(rec("/etc/passwd", tar::EntryType::Regular, b"x")), "/etc/passwd: an absolute path".into()),
        (
            "symlink",
            adding(rec(&store("repositories/app/_layers/sha256/x"), tar::EntryType::Symlink, b"")),
            "a symlink".into(),
        ),
        ("hard link", adding(rec(&store("blobs/x"), tar::EntryType::Link, b"")), "a hard link".into()),
        ("char device", adding(rec(&store("blobs/c"), tar::EntryType::Char, b"")), "a character device".into()),
        ("block device", adding(rec(&store("blobs/b"), tar::EntryType::Block, b"")), "a block device".into()),
        ("fifo", adding(rec(&store("blobs/f"), tar::EntryType::Fifo, b"")), "a fifo".into()),
        (
            "duplicate",
            Box::new(move |r| {
                let dup = r[link_at].clone();
                r.push(dup);
                true
            }),
            format!("{link_name}: listed twice"),
        ),
        (
            "a file where the blob store has prefix directories",
            adding(rec(&store("blobs/sha256/zz"), tar::EntryType::Regular, b"")),
            "has no place in a registry store".into(),
        ),
        (
            "long name header of 1 MiB",
            adding(rec(&"d/".repeat(1 << 19), tar::EntryType::Regular, b"")),
            "a GNU long name of".into(),
        ),
        (
            "uploads",
            adding(rec(&store("repositories/app/_uploads/u/data"), tar::EntryType::Regular, b"half")),
            "_uploads/u/data: has no place".into(),
        ),
        (
            "outside docker/",
            adding(rec("etc/cron.d/x", tar::EntryType::Regular, b"x")),
            "etc/cron.d/x: has no place".into(),
        ),
        (
            "no description",
            Box::new(|r| {
                r.remove(0);
                true
            }),
            "not a regfs bundle".into(),
        ),
        (
            "description not JSON",
            Box::new(|r| {
                r[0].data = b"not json".to_vec();
                true
            }),
            "not a bundle description".into(),
        ),
        (
            "link naming another digest",
            Box::new({
                let d = other_digest.clone();
                move |r| {
                    r[link_at].data = d.as_bytes().to_vec();
                    true
                }
            }),
            format!("{link_name}: holds {other_digest}, but its path names another digest"),
        ),
        (
            "shipped blob missing",
            Box::new(move |r| {
                r.remove(blob_at);
                true
            }),
            "the description says the bundle carries it, but it has no data".into(),
        ),
        (
            "tag the description does not list",
            Box::new({
                let d = other_digest.clone();
                move |r| {
                    let mut link = r[link_at].clone();
                    link.name = store("repositories/app/_manifests/tags/extra/current/link").into_bytes();
                    link.data = d.as_bytes().to_vec();
                    r.push(link);
                    true
                }
            }),
            "not among the blobs the release needs".into(),
        ),
    ];
    let sites = [s.site("site-full-1"), s.path("site-empty")];
    fs::create_dir(&sites[1]).unwrap();
    for (i, (what, edit, want)) in cases.iter().enumerate() {
        let mut recs = good.clone();
        let end = edit(&mut recs);
        let bad = s.path(&format!("bad-{i}.tar"));
        write_tar(&bad, &recs, end);
        for site in &sites {
            let before = snapshot(site);
            let err = refused(&["apply", bad.to_str().unwrap(), "--to", site.to_str().unwrap()]);
            assert!(err.contains(want.as_str()), "{what}: the error must say {want:?}:\n{err}");
            assert!(err.contains("nothing was written") || err.contains("refused"), "{what}:\n{err}");
            assert_unchanged(site, &before, what);
        }
    }
    // Truncated anywhere: cut in half, and at every entry boundary's middle.
    let bytes = fs::read(&s.full1).unwrap();
    for cut in [bytes.len() / 2, 700, bytes.len() - 1024, bytes.len() - 300] {
        let bad = s.path(&format!("cut-{cut}.tar"));
        fs::write(&bad, &bytes[..cut]).unwrap();
        let before = snapshot(&sites[1]);
        let err = refused(&["apply", bad.to_str().unwrap(), "--to", sites[1].to_str().unwrap()]);
        assert!(err.contains("truncated") || err.contains("runs past the end"), "cut at {cut}:\n{err}");
        assert_unchanged(&sites[1], &before, "a truncated bundle");
    }
    // An oversized size field: a header that claims more data than the file has.
    let mut recs = full.clone();
    let mut big = rec(&format!("{V2}/blobs/sha256/ab"), tar::EntryType::Directory, b"");
    big.data = Vec::new();
    recs.push(big);
    let bad = s.path("claims.tar");
    write_tar(&bad, &recs, true);
    let mut raw = fs::read(&bad).unwrap();
    let last = raw.len() - 1024 - 512;
    let mut h = tar::Header::from_byte_slice(&raw[last..last + 512]).clone();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1 << 30);
    h.set_cksum();
    raw[last..last + 512].copy_from_slice(h.as_bytes());
    fs::write(&bad, &raw).unwrap();
    let err = refused(&["apply", bad.to_str().unwrap(), "--to", sites[1].to_str().unwrap()]);
    assert!(err.contains("runs past the end of the file"), "{err}");
    // All at once: two problems of two bundles are both listed.
    let two = refused(&[
        "apply",
        s.path("bad-0.tar").to_str().unwrap(),
        s.path("bad-3.tar").to_str().unwrap(),
        "--to",
        sites[0].to_str().unwrap(),
    ]);
    assert!(two.contains("2 problems") && two.contains("hashes to") && two.contains("absolute"), "{two}");
    assert_eq!(fs::read_dir(&sites[1]).unwrap().count(), 0, "the empty site stays empty");
    // A site another apply holds (its lock) is refused, dry run or not.
    let held = fs::File::open(&sites[0]).unwrap();
    assert!(regfs::sys::try_lock_exclusive(&held).unwrap(), "taking the site's lock");
    for extra in [&["--replace"][..], &["--replace", "--dry-run"][..]] {
        let mut args = vec!["apply", s.full2.to_str().unwrap(), "--to", sites[0].to_str().unwrap()];
        args.extend(extra);
        let before = snapshot(&sites[0]);
        let err = refused(&args);
        assert!(err.contains("another regfs apply is landing into this site"), "{err}");
        assert_unchanged(&sites[0], &before, "a locked site");
    }
    drop(held);
    // The site is not a store, or a symlinked one.
    let junk = s.path("junk");
    fs::create_dir(&junk).unwrap();
    fs::write(junk.join("notes.txt"), b"x").unwrap();
    let err = refused(&["apply", s.full1.to_str().unwrap(), "--to", junk.to_str().unwrap()]);
    assert!(err.contains("neither empty nor a registry rootdirectory"), "{err}");
    let err = refused(&["apply", s.full1.to_str().unwrap(), "--to", s.path("missing").to_str().unwrap()]);
    assert!(err.contains("no such directory"), "{err}");
    let linked = s.site("site-linked");
    let blobs = linked.join(V2).join("blobs");
    fs::rename(&blobs, s.path("elsewhere")).unwrap();
    std::os::unix::fs::symlink(s.path("elsewhere"), &blobs).unwrap();
    let err = refused(&["apply", s.full2.to_str().unwrap(), "--to", linked.to_str().unwrap()]);
    assert!(err.contains("is not a directory (a symlink?)"), "{err}");
}

#[test]
fn inventories_name_what_a_site_holds_and_hostile_ones_are_refused() {
    let s = Small::new();
    let site = s.site("site");
    let of = |path: &Path| json(&ok(&["inventory", path.to_str().unwrap(), "--json"]));
    let from_bundle = of(&s.full1);
    let from_site = of(&site);
    assert_eq!(from_bundle, from_site, "a bundle stands for the site after applying it");
    assert_eq!(from_site["repositories"].as_array().map(Vec::len), Some(2), "{from_site}");
    // The chain: full 1 + delta 2 is the site after both (release 2's blobs).
    let chain = json(&ok(&["inventory", s.delta2.to_str().unwrap(), "--json"]));
    let d2 = description(&s.delta2);
    assert_eq!(chain["blobs"].as_array().map(Vec::len), Some(d2.blobs.len()), "{chain}");

    // --verify leaves a corrupt blob out and names it.
    let hex = digest_hex(from_site["blobs"][0]["digest"].as_str().unwrap()).to_string();
    let data = site.join(V2).join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut bytes = fs::read(&data).unwrap();
    bytes[0] ^= 1;
    fs::write(&data, &bytes).unwrap();
    let out = ok(&["inventory", site.to_str().unwrap(), "--verify", "--json"]);
    let inv = json(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("{}: does not hash to", data.display())),
        "{}",
        text(&out)
    );
    assert_eq!(inv["blobs"].as_array().map(Vec::len), from_site["blobs"].as_array().map(|b| b.len() - 1));
    // ... and apply replaces a corrupt copy a bundle carries.
    ok(&["apply", s.full1.to_str().unwrap(), "--to", site.to_str().unwrap()]);
    assert_eq!(json(&ok(&["inventory", site.to_str().unwrap(), "--verify", "--json"])), from_site);

    // Hostile inventory files: refused by inventory and by export --base, nothing written.
    let d = "sha256:".to_string() + &"a".repeat(64);
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "not an inventory"),
        (r#"{"format":"other","version":1,"repositories":[],"blobs":[]}"#.into(), "format \"other\""),
        (r#"{"format":"regfs-inventory","version":9,"repositories":[],"blobs":[]}"#.into(), "upgrade regfs"),
        (
            format!(
                r#"{{"format":"regfs-inventory","version":1,"repositories":[],"blobs":[{{"digest":"{d}","size":1}},{{"digest":"{d}","size":1}}]}}"#
            ),
            "listed twice",
        ),
        (
            r#"{"format":"regfs-inventory","version":1,"repositories":[],"blobs":[{"digest":"sha256:XYZ","size":1}]}"#
                .into(),
            "64 lowercase hex",
        ),
        (
            r#"{"format":"regfs-inventory","version":1,"repositories":[{"repo":"../etc","tags":{}}],"blobs":[]}"#
                .into(),
            "not a repository name",
        ),
        (r#"{"format":"regfs-inventory","version":1,"repositories":[],"blobs":[],"extra":1}"#.into(), "unknown field"),
    ];
    let empty = empty_root(&s.path("empty2"));
    let store = s.path("s2");
    let out_dir = s.path("out");
    fs::create_dir(&out_dir).unwrap();
    // `regfs export` of store 2 cut against `base`, which must be refused.
    let export_against = |base: &Path, tar: &Path| {
        let (empty, store) = (empty.to_str().unwrap(), store.to_str().unwrap());
        refused(&[
            "export",
            "--lower",
            empty,
            "--upper",
            store,
            "--base",
            base.to_str().unwrap(),
            "-o",
            tar.to_str().unwrap(),
        ])
    };
    for (i, (content, want)) in cases.iter().enumerate() {
        let f = s.path(&format!("bad-{i}.inventory"));
        fs::write(&f, content).unwrap();
        let err = refused(&["inventory", f.to_str().unwrap()]);
        assert!(err.contains(&f.display().to_string()) && err.contains(want), "case {i}: {want:?}:\n{err}");
        let err = export_against(&f, &out_dir.join("delta.tar"));
        assert!(err.contains(want), "export --base, case {i}:\n{err}");
        assert_eq!(fs::read_dir(&out_dir).unwrap().count(), 0, "no tar written");
    }
    // A base whose blob has another size than the release's: refused.
    let f = s.path("sizes.inventory");
    let real = d2.blobs[0];
    fs::write(
        &f,
        format!(
            r#"{{"format":"regfs-inventory","version":1,"repositories":[],"blobs":[{{"digest":"{}","size":{}}}]}}"#,
            real.digest,
            real.size + 1
        ),
    )
    .unwrap();
    let err = export_against(&f, &out_dir.join("d.tar"));
    assert!(err.contains("one of them is corrupt"), "{err}");
}

/// Starts `regfs ARGS` paused at `POINT:N`; `None` if it finished first
/// (the point lies past its work), which it must do successfully.
fn paused_at(args: &[&str], point: &str, n: u64) -> Option<std::process::Child> {
    match run_to_pause(args, point, n) {
        Paused::At(child) => Some(child),
        Paused::Ended(status, log) => {
            assert!(status.success(), "regfs failed before {point} {n} ({status}):\n{log}");
            None
        }
    }
}

#[test]
fn an_apply_killed_anywhere_is_finished_by_running_it_again() {
    let s = Small::new();
    let reference = s.site("reference");
    let args = |site: &Path| -> Vec<String> {
        ["apply", s.delta2.to_str().unwrap(), "--to", site.to_str().unwrap(), "--replace"].map(String::from).to_vec()
    };
    ok(&args(&reference));
    let want = docker_tree(&reference);
    let mut kills = BTreeMap::new();
    for point in ["apply-stage", "apply-step"] {
        for n in 1.. {
            let site = s.path(&format!("{point}-{n}"));
            untar(&s.full1, &site);
            let before = docker_tree(&site);
            let a = args(&site);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let Some(child) = paused_at(&a, point, n) else {
                // It finished: past the last point.
                assert_eq!(docker_tree(&site), want);
                break;
            };
            kill(child);
            if point == "apply-stage" {
                assert_eq!(docker_tree(&site), before, "killed while staging: the registry tree is untouched");
            }
            assert_tags_complete(&site, &format!("killed at {point} {n}"));
            ok(&a);
            assert_eq!(docker_tree(&site), want, "re-run after a kill at {point} {n}");
            assert!(!site.join(regfs::apply::STAGING).exists(), "staging left after {point} {n}");
            *kills.entry(point).or_insert(0) += 1;
        }
    }
    assert!(kills.get("apply-stage").copied().unwrap_or(0) >= 2, "{kills:?}");
    assert!(kills.get("apply-step").copied().unwrap_or(0) >= 10, "{kills:?}");
}
