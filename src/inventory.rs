//! What a site holds: blob digests and sizes, repositories and their tags.
//!
//! A site sends its inventory back (small, no blob contents) so the next
//! delta ships only what it lacks. An inventory is read from a registry
//! rootdirectory (names and sizes from the blob store; tags from their
//! `current` links; blob contents only with `verify`), from a bundle (the
//! site *after applying it*: every blob its release needs, as its
//! description lists them) or from an inventory file. Several sources are
//! one union: the bases of `export --base`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::bundle::{self, BaseRef};
use crate::layout::{self, Digest, Section};

/// `format` of an inventory file.
pub const FORMAT: &str = "regfs-inventory";
pub const VERSION: u32 = 1;
/// Largest inventory file read.
const MAX_INVENTORY_BYTES: u64 = 256 << 20;

/// Blobs, repositories and tags a site holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub blobs: BTreeMap<Digest, u64>,
    /// repository → tag → the manifest its `current` link names.
    pub repositories: BTreeMap<String, BTreeMap<String, Digest>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRepo {
    repo: String,
    tags: BTreeMap<String, Digest>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBlob {
    digest: Digest,
    size: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryFile {
    format: String,
    version: u32,
    repositories: Vec<FileRepo>,
    blobs: Vec<FileBlob>,
}

/// What reading a source found wrong but could leave out.
pub type Warnings = Vec<String>;

impl Inventory {
    /// Reads a rootdirectory, a bundle or an inventory file.
    pub fn of_path(path: &Path, verify: bool) -> Result<(Inventory, Warnings)> {
        let meta = fs::metadata(path).with_context(|| format!("{}: cannot open", path.display()))?;
        if meta.is_dir() {
            return Inventory::of_rootdir(path, verify);
        }
        let mut head = [0u8; 265];
        let n = File::open(path)
            .and_then(|mut f| f.read(&mut head))
            .with_context(|| format!("reading {}", path.display()))?;
        if n >= 263 && &head[257..262] == b"ustar" {
            let d = bundle::read_description(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            return Ok((Inventory::of_description(&d), Vec::new()));
        }
        let bytes = read_capped(path, MAX_INVENTORY_BYTES)?;
        let inv = Inventory::parse(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok((inv, Vec::new()))
    }

    /// The site a bundle leaves: every blob its release needs, its images' tags.
    pub fn of_description(d: &bundle::Description) -> Inventory {
        let mut inv = Inventory::default();
        for b in &d.blobs {
            inv.blobs.insert(b.digest, b.size);
        }
        for img in &d.images {
            inv.repositories.entry(img.repo.clone()).or_default().insert(img.tag.clone(), img.digest);
        }
        inv
    }

    /// Reads a registry rootdirectory by names: blob directories holding
    /// `data`, repositories with `_manifests`, tags with a `current` link.
    /// With `verify` every blob is hashed; one that does not match its
    /// digest is left out (the next delta ships it again) and named.
    pub fn of_rootdir(root: &Path, verify: bool) -> Result<(Inventory, Warnings)> {
        if !root.join(layout::V2).is_dir() {
            bail!("{}: not a registry rootdirectory (no {} inside)", root.display(), layout::V2);
        }
        let mut warnings = Vec::new();
        let mut found = Vec::new();
        let blobs_dir = root.join(layout::blobs_root());
        for prefix in crate::util::subdir_names(&blobs_dir)? {
            for hex in crate::util::subdir_names(&blobs_dir.join(&prefix))? {
                let Ok(d) = layout::blob_dir_digest(&prefix, &hex) else {
                    warnings.push(format!(
                        "{}: not a blob directory; left out",
                        blobs_dir.join(&prefix).join(&hex).display()
                    ));
                    continue;
                };
                let data = root.join(layout::blob_data(&d));
                match fs::symlink_metadata(&data) {
                    Ok(m) if m.is_file() => found.push((d, m.len())),
                    Ok(_) => warnings.push(format!("{}: not a regular file; left out", data.display())),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("stat {}", data.display())),
                }
            }
        }
        if verify {
            let checked: Vec<Result<bool>> =
                found.par_iter().map(|(d, _)| hashes_to(&root.join(layout::blob_data(d)), d)).collect();
            let mut kept = Vec::with_capacity(found.len());
            for ((d, size), ok) in found.into_iter().zip(checked) {
                if ok? {
                    kept.push((d, size));
                } else {
                    warnings.push(format!(
                        "{}: does not hash to {d}: left out of the inventory (the next delta ships it again)",
                        root.join(layout::blob_data(&d)).display()
                    ));
                }
            }
            found = kept;
        }
        let mut inv = Inventory { blobs: found.into_iter().collect(), ..Inventory::default() };
        let repos = layout::repositories_in(root, |s| s == Section::Manifests)
            .with_context(|| format!("listing the repositories of {}", root.display()))?;
        for repo in repos {
            let tags_dir = root.join(layout::tags_dir(&repo));
            let mut tags = BTreeMap::new();
            for tag in crate::util::subdir_names(&tags_dir)? {
                let link = root.join(layout::tag_current_link(&repo, &tag));
                match fs::read(&link)
                    .map_err(|e| e.to_string())
                    .and_then(|b| layout::parse_link(&b).map_err(|e| e.to_string()))
                {
                    Ok(d) => {
                        tags.insert(tag, d);
                    }
                    Err(e) => warnings.push(format!("{}: {e}; tag left out", link.display())),
                }
            }
            inv.repositories.insert(repo, tags);
        }
        Ok((inv, warnings))
    }

    /// Adds `other`. The same blob with two sizes is an error.
    pub fn merge(&mut self, other: Inventory, what: &str) -> Result<()> {
        for (d, size) in other.blobs {
            match self.blobs.insert(d, size) {
                Some(prev) if prev != size => {
                    bail!("{what}: blob {d} has {size} bytes, but {prev} in an earlier base: one of them is corrupt")
                }
                _ => {}
            }
        }
        for (repo, tags) in other.repositories {
            self.repositories.entry(repo).or_default().extend(tags);
        }
        Ok(())
    }

    /// The union of several bases.
    pub fn of_bases(paths: &[impl AsRef<Path>]) -> Result<Inventory> {
        let mut all = Inventory::default();
        for p in paths {
            let p = p.as_ref();
            let (inv, warnings) = Inventory::of_path(p, false).with_context(|| format!("--base {}", p.display()))?;
            for w in warnings {
                tracing::warn!("--base {}: {w}", p.display());
            }
            all.merge(inv, &format!("--base {}", p.display()))?;
        }
        Ok(all)
    }

    /// How a bundle cut against this inventory names it.
    pub fn base_ref(&self) -> BaseRef {
        BaseRef {
            blobs_digest: bundle::blob_list_digest(self.blobs.iter().map(|(d, s)| (d, *s))),
            blobs: self.blobs.len() as u64,
            bytes: self.blobs.values().sum(),
        }
    }

    pub fn tag_count(&self) -> usize {
        self.repositories.values().map(BTreeMap::len).sum()
    }

    /// The inventory file: fixed key order, one repository or blob per line.
    pub fn to_bytes(&self) -> Vec<u8> {
        let repos: Vec<String> = self
            .repositories
            .iter()
            .map(|(repo, tags)| {
                serde_json::to_string(&FileRepo { repo: repo.clone(), tags: tags.clone() }).unwrap_or_default()
            })
            .collect();
        let blobs: Vec<String> = self
            .blobs
            .iter()
            .map(|(d, s)| serde_json::to_string(&FileBlob { digest: *d, size: *s }).unwrap_or_default())
            .collect();
        let list = |v: Vec<String>| if v.is_empty() { "[]".to_string() } else { format!("[\n{}\n]", v.join(",\n")) };
        format!(
            "{{\"format\":\"{FORMAT}\",\"version\":{VERSION},\n\"repositories\":{},\n\"blobs\":{}}}\n",
            list(repos),
            list(blobs)
        )
        .into_bytes()
    }

    /// Parses and checks an inventory file.
    pub fn parse(bytes: &[u8]) -> Result<Inventory, String> {
        let f: InventoryFile = serde_json::from_slice(bytes).map_err(|e| {
            format!(
                "not an inventory (expected the JSON `regfs inventory -o` writes, a bundle or a rootdirectory): {e}"
            )
        })?;
        if f.format != FORMAT {
            return Err(format!("format {:?}, expected {FORMAT:?}", f.format));
        }
        if f.version != VERSION {
            return Err(format!("version {} (this regfs reads version {VERSION}: upgrade regfs)", f.version));
        }
        let mut inv = Inventory::default();
        for (i, b) in f.blobs.into_iter().enumerate() {
            if inv.blobs.insert(b.digest, b.size).is_some() {
                return Err(format!("blobs[{i}]: {} is listed twice", b.digest));
            }
        }
        for (i, r) in f.repositories.into_iter().enumerate() {
            if !layout::valid_repo_name(&r.repo) {
                return Err(format!("repositories[{i}]: {:?} is not a repository name", r.repo));
            }
            if let Some(bad) = r.tags.keys().find(|t| !layout::valid_tag(t)) {
                return Err(format!("repositories[{i}]: {bad:?} is not a tag"));
            }
            if inv.repositories.insert(r.repo.clone(), r.tags).is_some() {
                return Err(format!("repositories[{i}]: {} is listed twice", r.repo));
            }
        }
        Ok(inv)
    }
}

fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>> {
    let f = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).with_context(|| format!("reading {}", path.display()))?;
    if buf.len() as u64 > max {
        bail!("{}: larger than {max} bytes: not an inventory", path.display());
    }
    Ok(buf)
}

/// Whether the file at `path` hashes to `want`.
pub fn hashes_to(path: &Path, want: &Digest) -> Result<bool> {
    let f = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(crate::util::sha256_reader(f).with_context(|| format!("reading {}", path.display()))? == *want)
}

/// `regfs inventory`: the union of `paths`, written to `out` or printed.
pub fn command(paths: &[std::path::PathBuf], out: Option<&Path>, json: bool, verify: bool) -> Result<()> {
    let mut all = Inventory::default();
    let mut locks = Vec::new();
    for p in paths {
        if let Ok(d) = bundle::read_description(p) {
            locks.push((p.clone(), d));
        }
        let (inv, warnings) = Inventory::of_path(p, verify)?;
        for w in &warnings {
            eprintln!("regfs inventory: warning: {w}");
        }
        all.merge(inv, &p.display().to_string())?;
    }
    let bytes = all.to_bytes();
    if let Some(out) = out {
        crate::util::write_atomic(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    }
    if json && out.is_none() {
        use std::io::Write;
        io::stdout().write_all(&bytes).context("writing the inventory")?;
        return Ok(());
    }
    let b = all.base_ref();
    let line = format!(
        "{} blobs ({}), {} repositories, {} tags; blob list {}",
        b.blobs,
        crate::util::human_bytes(b.bytes),
        all.repositories.len(),
        all.tag_count(),
        b.blobs_digest
    );
    match out {
        Some(o) => println!("regfs: wrote the inventory {}: {line}", o.display()),
        None => println!("{line}"),
    }
    for (p, d) in &locks {
        print!("{}", lock_lines(p, d));
    }
    Ok(())
}

/// A bundle's lock, for a person: each image as requested, what it
/// resolved to, its platforms, and what is attached to it.
pub fn lock_lines(path: &Path, d: &bundle::Description) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if d.lock.is_empty() {
        let _ = writeln!(
            out,
            "{}: release {} has no lock (made by regfs export, or by an older regfs)",
            path.display(),
            d.release
        );
        return out;
    }
    let _ = writeln!(out, "{}: lock of release {}:", path.display(), d.release);
    for l in &d.lock {
        let platforms = if l.platforms.is_empty() { String::new() } else { format!(" [{}]", l.platforms.join(", ")) };
        let _ = writeln!(out, "  {} -> {}{platforms}", l.requested, l.digest);
        for a in &l.attachments {
            let kind =
                serde_json::to_value(a.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            let by = a.tag.as_deref().map_or_else(|| "by digest".to_string(), |t| format!("tag {t}"));
            let artifact = a.artifact_type.as_deref().map_or_else(String::new, |t| format!(", {t}"));
            let _ = writeln!(out, "    {kind} {} of {} ({by}{artifact})", a.digest, a.subject);
        }
    }
    out
}
