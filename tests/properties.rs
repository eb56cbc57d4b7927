//! Property tests of the pure parsers, through the public API only:
//!
//! - `layout::parse_link` accepts exactly `sha256:` + 64 lowercase hex and
//!   never panics on arbitrary bytes; a digest round-trips through its text
//!   and its blob path;
//! - `gc::manifest::references` never panics on arbitrary bytes or JSON,
//!   gives back exactly the references of a generated manifest of any known
//!   shape, and names the field of a bad digest;
//! - `layout::classify` never panics on arbitrary paths, and classifying a
//!   path built by `layout` gives back its repository and section;
//! - `view::policy::parse_keep` / `parse_policy` never panic, every name
//!   they accept is a valid repository name that is safe to join into a
//!   path, and a rejected keep file names its first bad line.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use proptest::prelude::*;
use regfs::gc::manifest::{self, Ref, Refs};
use regfs::layout::{self, Digest, Place, Section};
use regfs::view::policy::{self, Policy};
use serde_json::{Value, json};

fn config() -> ProptestConfig {
    // Pure functions: many cases are cheap. No regression files in the tree:
    // a failure prints its shrunk input, which becomes a unit test.
    ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------- digests

const HEX: &[u8] = b"0123456789abcdef";

fn hex64() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(HEX), 64).prop_map(|v| String::from_utf8(v).expect("ascii"))
}

fn digest() -> impl Strategy<Value = Digest> {
    hex64().prop_map(|h| Digest::from_hex(&h).expect("valid hex"))
}

/// The specification: exactly `sha256:` and 64 lowercase hex, nothing else.
fn is_valid_link(b: &[u8]) -> bool {
    b.len() == layout::LINK_LEN && b.starts_with(b"sha256:") && b[7..].iter().all(|c| HEX.contains(c))
}

/// Valid links with one small mutation: the inputs most likely to slip through.
fn near_link() -> impl Strategy<Value = Vec<u8>> {
    (hex64(), 0usize..9, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(hex, how, at, byte)| {
        let mut b = format!("sha256:{hex}").into_bytes();
        let i = at.index(b.len());
        match how {
            0 => b[i] = byte,
            1 => b.insert(i, byte),
            2 => {
                b.remove(i);
            }
            3 => b.push(b'\n'),
            4 => b.make_ascii_uppercase(),
            5 => b.splice(0..6, b"sha512".iter().copied()).for_each(drop),
            6 => b.truncate(i),
            7 => b.extend_from_slice(&b.clone()[7..]),
            _ => b.splice(7..9, b"..".iter().copied()).for_each(drop),
        }
        b
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_link_accepts_exactly_sha256_and_64_lowercase_hex(b in proptest::collection::vec(any::<u8>(), 0..100)) {
        prop_assert_eq!(layout::parse_link(&b).is_ok(), is_valid_link(&b), "{:?}", String::from_utf8_lossy(&b));
    }

    #[test]
    fn parse_link_rejects_near_misses(b in near_link()) {
        prop_assert_eq!(layout::parse_link(&b).is_ok(), is_valid_link(&b), "{:?}", String::from_utf8_lossy(&b));
        // Digest::parse is the same rule on text.
        if let Ok(s) = std::str::from_utf8(&b) {
            prop_assert_eq!(Digest::parse(s).is_ok(), is_valid_link(&b));
        }
    }

    #[test]
    fn digests_round_trip_through_text_and_paths(d in digest()) {
        let text = d.to_string();
        prop_assert_eq!(layout::parse_link(text.as_bytes()), Ok(d));
        prop_assert_eq!(Digest::from_hex(d.hex()), Ok(d));
        prop_assert_eq!(layout::blob_of_data_path(&layout::blob_data(&d)), Some(d));
        prop_assert_eq!(layout::blob_dir_digest(&d.hex()[..2], d.hex()), Ok(d));
        // Every path layout builds from a digest stays below v2, component by component.
        for p in [layout::blob_data(&d), layout::layer_link("r", &d), layout::revision_link("r", &d)] {
            prop_assert!(p.starts_with(layout::V2));
            prop_assert!(p.components().all(|c| matches!(c, Component::Normal(_))), "{}", p.display());
        }
    }
}

// -------------------------------------------------------------- manifests

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
        digest().prop_map(|d| Value::String(d.to_string())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Object keys: mostly the ones `references` looks at, so shapes collide with them.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(vec![
            "mediaType", "config", "layers", "manifests", "subject", "blobs", "fsLayers", "blobSum", "digest",
            "urls", "size", "schemaVersion",
        ])
        .prop_map(str::to_string),
        1 => "[a-zA-Z]{0,8}",
    ]
}

/// A generated descriptor: digest and, maybe, `urls` (foreign when non-empty).
#[derive(Clone, Debug)]
struct Desc {
    digest: Digest,
    urls: Option<Vec<String>>,
    size: u64,
}

fn desc() -> impl Strategy<Value = Desc> {
    (digest(), proptest::option::of(proptest::collection::vec("https://[a-z]{1,8}/x", 0..3)), any::<u32>())
        .prop_map(|(digest, urls, size)| Desc { digest, urls, size: size.into() })
}

#[derive(Clone, Debug)]
struct Doc {
    media_type: Option<String>,
    config: Option<Desc>,
    layers: Option<Vec<Desc>>,
    manifests: Option<Vec<Desc>>,
    subject: Option<Desc>,
    blobs: Option<Vec<Desc>>,
    fs_layers: Option<Vec<Digest>>,
    annotations: bool,
}

fn descs() -> impl Strategy<Value = Option<Vec<Desc>>> {
    proptest::option::of(proptest::collection::vec(desc(), 0..5))
}

fn doc() -> impl Strategy<Value = Doc> {
    (
        proptest::option::of(prop_oneof![
            Just("application/vnd.oci.image.manifest.v1+json".to_string()),
            Just("application/vnd.oci.image.index.v1+json".to_string()),
            Just("application/vnd.docker.distribution.manifest.v2+json".to_string()),
            Just("application/vnd.docker.distribution.manifest.list.v2+json".to_string()),
            "application/x-[a-z]{1,10}",
        ]),
        proptest::option::of(desc()),
        descs(),
        descs(),
        proptest::option::of(desc()),
        descs(),
        proptest::option::of(proptest::collection::vec(digest(), 0..4)),
        any::<bool>(),
    )
        .prop_map(|(media_type, config, layers, manifests, subject, blobs, fs_layers, annotations)| Doc {
            media_type,
            config,
            layers,
            manifests,
            subject,
            blobs,
            fs_layers,
            annotations,
        })
}

fn desc_json(d: &Desc) -> Value {
    let mut v = json!({"mediaType": "application/octet-stream", "digest": d.digest.to_string(), "size": d.size});
    if let Some(u) = &d.urls {
        v["urls"] = json!(u);
    }
    v
}

impl Doc {
    fn to_json(&self) -> Value {
        let mut v = json!({"schemaVersion": 2});
        if let Some(m) = &self.media_type {
            v["mediaType"] = json!(m);
        }
        if let Some(c) = &self.config {
            v["config"] = desc_json(c);
        }
        for (name, list) in [("layers", &self.layers), ("manifests", &self.manifests), ("blobs", &self.blobs)] {
            if let Some(l) = list {
                v[name] = Value::Array(l.iter().map(desc_json).collect());
            }
        }
        if let Some(s) = &self.subject {
            v["subject"] = desc_json(s);
        }
        if let Some(f) = &self.fs_layers {
            v["fsLayers"] = Value::Array(f.iter().map(|d| json!({"blobSum": d.to_string()})).collect());
        }
        if self.annotations {
            v["annotations"] = json!({"org.opencontainers.image.created": "2026-01-01T00:00:00Z"});
            v["artifactType"] = json!("application/vnd.example");
        }
        v
    }

    /// What `references` must give back: blobs in config, layers, blobs,
    /// fsLayers order; child manifests; the subject.
    fn expected(&self) -> Refs {
        let r = |d: &Desc| Ref {
            digest: d.digest,
            foreign: d.urls.as_ref().is_some_and(|u| !u.is_empty()),
            size: Some(d.size),
        };
        let mut blobs: Vec<Ref> = self.config.iter().map(r).collect();
        blobs.extend(self.layers.iter().flatten().map(r));
        blobs.extend(self.blobs.iter().flatten().map(r));
        blobs.extend(self.fs_layers.iter().flatten().map(|d| Ref { digest: *d, foreign: false, size: None }));
        Refs {
            media_type: self.media_type.clone(),
            blobs,
            config: self.config.as_ref().map(|d| d.digest),
            manifests: self.manifests.iter().flatten().map(r).collect(),
            subject: self.subject.as_ref().map(r),
        }
    }
}

/// A string that is not a valid digest.
fn bad_digest() -> impl Strategy<Value = String> {
    prop_oneof![
        near_link().prop_filter_map("still valid", |b| {
            let s = String::from_utf8(b).ok()?;
            (!is_valid_link(s.as_bytes())).then_some(s)
        }),
        Just("sha256:../../etc/passwd".to_string()),
        Just(String::new()),
        ".{0,20}".prop_filter("valid by chance", |s| !is_valid_link(s.as_bytes())),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn references_never_panics_on_bytes(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = manifest::references(&b);
    }

    #[test]
    fn references_never_panics_on_json(v in json_value()) {
        let bytes = serde_json::to_vec(&v).expect("json");
        let r = manifest::references(&bytes);
        if !v.is_object() {
            prop_assert!(r.is_err(), "a non-object document must be refused: {}", v);
        }
    }

    #[test]
    fn references_never_panics_on_truncated_manifests(d in doc(), cut in any::<prop::sample::Index>()) {
        let bytes = serde_json::to_vec(&d.to_json()).expect("json");
        let cut = cut.index(bytes.len());
        // A strict prefix of a JSON object is never a whole document.
        prop_assert!(manifest::references(&bytes[..cut]).is_err());
    }

    #[test]
    fn references_round_trip_generated_manifests(d in doc()) {
        let bytes = serde_json::to_vec_pretty(&d.to_json()).expect("json");
        let got = manifest::references(&bytes);
        prop_assert_eq!(got, Ok(d.expected()));
    }

    #[test]
    fn a_bad_digest_names_its_field(d in doc(), bad in bad_digest(), which in 0usize..6, at in any::<prop::sample::Index>()) {
        let mut v = d.to_json();
        let (field, ptr) = match which {
            0 => ("config.digest".to_string(), "/config/digest".to_string()),
            1 => ("subject.digest".to_string(), "/subject/digest".to_string()),
            n => {
                let name = ["layers", "manifests", "blobs", "fsLayers"][n - 2];
                let len = v.get(name).and_then(Value::as_array).map_or(0, Vec::len);
                if len == 0 {
                    return Ok(());
                }
                let i = at.index(len);
                let key = if name == "fsLayers" { "blobSum" } else { "digest" };
                (format!("{name}[{i}].{key}"), format!("/{name}/{i}/{key}"))
            }
        };
        let Some(slot) = v.pointer_mut(&ptr) else { return Ok(()) };
        *slot = Value::String(bad.clone());
        match manifest::references(&serde_json::to_vec(&v).expect("json")) {
            // Every other digest is valid: the error names exactly this field.
            Err(manifest::ManifestError::Field { field: f, .. }) => prop_assert_eq!(f, field),
            other => prop_assert!(false, "{bad:?} in {field} gave {other:?}"),
        }
    }
}

// ------------------------------------------------- paths and classification

/// A path of arbitrary components: raw bytes (not UTF-8, with `/`), `.`,
/// `..`, empty, and the names classify looks for.
fn any_path() -> impl Strategy<Value = PathBuf> {
    let comp = prop_oneof![
        proptest::sample::select(vec![
            "docker",
            "registry",
            "v2",
            "repositories",
            "_layers",
            "_manifests",
            "_uploads",
            ".",
            "..",
            "",
            "/",
            "a",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    (any::<bool>(), proptest::collection::vec(comp, 0..10)).prop_map(|(abs, comps)| {
        let mut bytes = if abs { b"/".to_vec() } else { Vec::new() };
        bytes.extend(comps.join(&b'/'));
        PathBuf::from(OsStr::from_bytes(&bytes))
    })
}

/// A repository name as `valid_repo_name` accepts it.
fn repo_name() -> impl Strategy<Value = String> {
    proptest::collection::vec("[a-z0-9][a-z0-9._-]{0,6}", 1..4).prop_map(|parts| parts.join("/"))
}

fn section() -> impl Strategy<Value = Section> {
    proptest::sample::select(vec![Section::Layers, Section::Manifests, Section::Uploads])
}

fn comps(repo: &str) -> Vec<String> {
    repo.split('/').map(str::to_string).collect()
}

/// [`Place`] without the borrow of its path.
#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Outside,
    Root,
    Repo(Vec<String>),
    In(Vec<String>, Section),
}

fn place(p: &Path) -> Owned {
    let own = |v: Vec<&str>| v.into_iter().map(str::to_string).collect();
    match layout::classify(p) {
        Place::Outside => Owned::Outside,
        Place::RepositoriesRoot => Owned::Root,
        Place::RepoOrNamespace { prefix } => Owned::Repo(own(prefix)),
        Place::InSection { repo, section } => Owned::In(own(repo), section),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn classify_never_panics(p in any_path()) {
        let _ = layout::classify(&p);
        let _ = Policy::default().hides_lower(&p);
        let _ = Policy::transparent().hides_lower(&p);
        let _ = layout::blob_of_data_path(&p);
    }

    #[test]
    fn classify_gives_back_repo_and_section(repo in repo_name(), s in section(), d in digest(), tail in proptest::collection::vec("[a-z_]{1,6}", 0..4), tag in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}") {
        prop_assume!(layout::valid_repo_name(&repo));
        let want = comps(&repo);
        prop_assert_eq!(place(&layout::repo_dir(&repo)), Owned::Repo(want.clone()));
        let mut inside = layout::section_dir(&repo, s);
        for t in &tail {
            inside.push(t);
        }
        prop_assert_eq!(place(&inside), Owned::In(want.clone(), s));
        for (p, sec) in [
            (layout::layer_link(&repo, &d), Section::Layers),
            (layout::revision_link(&repo, &d), Section::Manifests),
            (layout::tag_current_link(&repo, &tag), Section::Manifests),
            (layout::tag_index_entry_dir(&repo, &tag, &d), Section::Manifests),
            (layout::uploads_dir(&repo).join("0f4c2b8e"), Section::Uploads),
        ] {
            prop_assert_eq!(place(&p), Owned::In(want.clone(), sec), "{}", p.display());
        }
        prop_assert_eq!(place(&layout::blob_data(&d)), Owned::Outside);
        prop_assert_eq!(place(&layout::repositories_root()), Owned::Root);
        // Every namespace on the way is a namespace.
        for n in 1..want.len() {
            let ns = want[..n].join("/");
            prop_assert_eq!(place(&layout::repo_dir(&ns)), Owned::Repo(want[..n].to_vec()));
        }
    }

    #[test]
    fn valid_repo_names_are_safe_path_components(s in prop_oneof![repo_name(), "[a-z0-9._/-]{0,12}", ".{0,12}"]) {
        if layout::valid_repo_name(&s) {
            let dir = layout::repo_dir(&s);
            let rest = dir.strip_prefix(layout::repositories_root()).expect("below repositories/");
            let parts: Vec<_> = rest.components().collect();
            prop_assert_eq!(parts.len(), s.split('/').count(), "{}", s);
            for (c, want) in parts.iter().zip(s.split('/')) {
                prop_assert_eq!(*c, Component::Normal(OsStr::new(want)), "{}", s);
                prop_assert!(layout::may_hold_repos(want) && Section::from_name(want).is_none());
            }
        }
    }
}

// ------------------------------------------------------------------ policy

/// Lines of a keep file: good references, comments, blanks, and junk.
fn keep_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => repo_name(),
        2 => (repo_name(), "[a-zA-Z0-9_.-]{1,10}").prop_map(|(r, t)| format!("{r}:{t}")),
        1 => (repo_name(), digest()).prop_map(|(r, d)| format!("{r}@{d}")),
        1 => (repo_name(), "[ \t]{0,3}", ".{0,10}").prop_map(|(r, ws, c)| format!("{ws}{r}{ws}# {c}")),
        1 => "#.{0,10}",
        1 => "[ \t]{0,4}",
        1 => ".{0,16}",
    ]
}

fn keep_text() -> impl Strategy<Value = String> {
    (proptest::collection::vec(keep_line(), 0..10), proptest::sample::select(vec!["\n", "\r\n"]))
        .prop_map(|(lines, nl)| lines.join(nl))
}

fn policy_json() -> impl Strategy<Value = Value> {
    let names = proptest::collection::vec(
        prop_oneof![
            proptest::sample::select(vec!["_manifests", "_uploads", "_layers"]).prop_map(str::to_string),
            ".{0,10}",
            repo_name(),
        ],
        0..4,
    );
    (
        proptest::option::of(names.clone()),
        proptest::option::of(names),
        proptest::option::of(json_value()),
        any::<bool>(),
    )
        .prop_map(|(hide, keep, extra, extra_key)| {
            let mut v = json!({});
            if let Some(h) = hide {
                v["hide_sections"] = json!(h);
            }
            if let Some(k) = keep {
                v["keep"] = json!(k);
            }
            if let Some(e) = extra {
                v[if extra_key { "unknown" } else { "keep" }] = e;
            }
            v
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_keep_never_panics_and_accepts_only_repo_names(text in prop_oneof![keep_text(), ".{0,64}"]) {
        match policy::parse_keep(&text, "keep.txt") {
            Ok(set) => {
                for r in set.repos() {
                    prop_assert!(layout::valid_repo_name(r), "accepted {:?}", r);
                }
                // Every line's repository is kept, and nothing else.
                let mut named = std::collections::BTreeSet::new();
                for raw in text.lines() {
                    let line = raw.split('#').next().unwrap_or("").trim();
                    if !line.is_empty() {
                        named.insert(policy::repo_of_image_ref(line).to_string());
                    }
                }
                prop_assert_eq!(set.repos().map(str::to_string).collect::<std::collections::BTreeSet<_>>(), named);
            }
            Err(e) => {
                let msg = e.to_string();
                let first_bad = text
                    .lines()
                    .position(|raw| {
                        let line = raw.split('#').next().unwrap_or("").trim();
                        !line.is_empty() && !layout::valid_repo_name(policy::repo_of_image_ref(line))
                    })
                    .expect("a rejected keep file has a bad line");
                let want = format!("keep.txt:{}:", first_bad + 1);
                prop_assert!(msg.starts_with(&want), "{} (want {})", msg, want);
            }
        }
    }

    #[test]
    fn parse_policy_never_panics(text in prop_oneof![".{0,64}".boxed(), policy_json().prop_map(|v| v.to_string()).boxed()]) {
        if let Ok(p) = policy::parse_policy(&text, "policy.json")
            && let Some(k) = &p.keep
        {
            for r in k.repos() {
                prop_assert!(layout::valid_repo_name(r), "accepted {:?}", r);
            }
        }
    }

    #[test]
    fn keep_hides_exactly_the_repositories_not_named(kept in proptest::collection::vec(repo_name(), 1..4), probe in repo_name()) {
        prop_assume!(kept.iter().chain([&probe]).all(|r| layout::valid_repo_name(r)));
        let set = policy::parse_keep(&kept.join("\n"), "k").expect("valid names");
        let pol = Policy { keep: Some(set), ..Policy::default() };
        let reached = kept.iter().any(|k| k == &probe || k.starts_with(&format!("{probe}/")));
        prop_assert_eq!(pol.hides_lower(&layout::repo_dir(&probe)), !reached);
        prop_assert_eq!(pol.keeps_repo(&probe), kept.contains(&probe));
        // _layers of a kept repository stays, of any other goes; _manifests always goes.
        prop_assert_eq!(pol.hides_lower(&layout::section_dir(&probe, Section::Layers)), !kept.contains(&probe));
        prop_assert!(pol.hides_lower(&layout::section_dir(&probe, Section::Manifests)));
        prop_assert!(!pol.hides_lower(Path::new(layout::V2).join("blobs").as_path()));
    }
}
