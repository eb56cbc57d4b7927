//! Reading the registry tree through the view: repositories, their links,
//! and the blob store. Nothing here writes.
//!
//! Directories are listed by name ([`View::names_in`]: one getdents per
//! layer, no stat per name), and a blob's `data` is looked up only when GC
//! needs it (a marked blob, or one in upper whose bytes a deletion frees):
//! a cold-cache dry run over a large history then reads directories, not
//! tens of thousands of inodes.
//!
//! Every directory listed is remembered (how many names it holds), so the planner
//! can tell which directories GC leaves empty without listing them again.
//!
//! A link's digest is taken from its path, as distribution's own GC does:
//! the `link` files of `_layers`, revisions and tag histories are not
//! opened (on a whole store that is most of its files); revision
//! directories are listed, which says whether the file is there. Only a tag's
//! `current/link` is read, since its content decides what the tag names.
//! `regfs verify` checks every link's content against its path.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use super::{GcError, bad};
use crate::layout::{self, Digest, Section};
use crate::view::{Dir, Entry, Layer, LayerIdx, Named, UPPER, View};

/// A link directory (`.../sha256/<hex>`): the digest its name stands for.
#[derive(Clone, Debug)]
pub struct LinkRef {
    pub digest: Digest,
    /// View path of the `<hex>` directory.
    pub dir: PathBuf,
    /// Whether it counts as a link (a tag's `current` without a `link` file
    /// does not; a link directory is trusted to hold one).
    pub present: bool,
    /// Size of the link file (a valid one's, for a link not read).
    pub bytes: u64,
    /// Whether the link directory is upper's (deleting it frees its bytes).
    pub in_upper: bool,
}

/// One tag of a repository.
#[derive(Clone, Debug)]
pub struct TagScan {
    pub dir: PathBuf,
    /// What `current/link` names; `None` when there is none.
    pub current: Option<Digest>,
    pub current_bytes: u64,
    /// `index/sha256/<hex>` entries: the manifests the tag named over time.
    pub history: Vec<LinkRef>,
}

/// A directory of the view and its layer stack: where lookups start, so
/// the scan never resolves a deep path from the root again.
pub type At = (PathBuf, Vec<LayerIdx>);

/// One repository: a directory under `repositories/` with a section.
#[derive(Clone, Debug, Default)]
pub struct RepoScan {
    pub name: String,
    /// The sections present, with their directories.
    pub sections: Vec<(Section, At)>,
    pub revisions: Vec<LinkRef>,
    pub tags: Vec<TagScan>,
    pub layer_links: Vec<LinkRef>,
}

impl LinkRef {
    /// Files and bytes deleting the link frees (an upper link only).
    pub fn freed(&self) -> (u64, u64) {
        if self.present && self.in_upper { (1, self.bytes) } else { (0, 0) }
    }
}

impl RepoScan {
    pub fn has(&self, s: Section) -> bool {
        self.section(s).is_some()
    }

    fn section(&self, s: Section) -> Option<&At> {
        self.sections.iter().find(|(x, _)| *x == s).map(|(_, at)| at)
    }
}

/// A directory of the repository tree (view path, layer stack, repository name).
type TreeDir = (PathBuf, Vec<LayerIdx>, String);
/// What one directory of the repository tree holds: the repository it is, if
/// any, and the directories below it to walk.
type RepoDir = (Option<RepoScan>, Vec<TreeDir>);

/// One blob directory of the store.
#[derive(Clone, Debug)]
pub struct BlobScan {
    pub digest: Digest,
    /// The blob directory's layer stack.
    pub layers: Vec<LayerIdx>,
}

/// A blob's data file as the view has it (its size is the entry's).
pub type BlobData = Option<Entry>;

pub struct Scanner<'v> {
    view: &'v View,
    /// How many names each directory listed holds.
    listings: Mutex<FxHashMap<PathBuf, usize>>,
}

/// Largest link file read: a valid one is 71 bytes.
const MAX_LINK_BYTES: u64 = 4096;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GcError + '_ {
    move |source| GcError::Io { path: path.display().to_string(), source }
}

/// The UTF-8 name of a listed item; registries only create UTF-8 names.
fn utf8<'a>(dir: &Path, item: &'a Named) -> Result<&'a str, GcError> {
    item.name.to_str().ok_or_else(|| bad(&dir.join(&item.name), "not a UTF-8 name; a registry never creates one"))
}

impl<'v> Scanner<'v> {
    pub fn view(&self) -> &'v View {
        self.view
    }

    pub fn new(view: &'v View) -> Scanner<'v> {
        Scanner { view, listings: Mutex::new(FxHashMap::default()) }
    }

    /// Resolves a path that must be a directory if it exists.
    pub fn dir(&self, rel: &Path) -> Result<Option<Vec<LayerIdx>>, GcError> {
        match self.view.resolve(rel).map_err(io_err(rel))? {
            Some(e) if e.is_dir() => Ok(Some(e.layers)),
            Some(_) => Err(bad(rel, "expected a directory, found a file")),
            None => Ok(None),
        }
    }

    /// Resolves `target` by lookups from `from`, an ancestor already
    /// resolved. `None` when it does not exist; an error when a step on the
    /// way is not a directory.
    fn descend(&self, from: &At, target: &Path) -> Result<Option<At>, GcError> {
        let tail = target.strip_prefix(&from.0).map_err(|_| bad(target, "internal: not below the scan's position"))?;
        let (mut rel, mut layers) = from.clone();
        for c in tail.components() {
            match self.view.lookup(Dir { rel: &rel, layers: &layers }, c.as_os_str()).map_err(io_err(&rel))? {
                Some(next) if next.is_dir() => layers = next.layers,
                Some(_) => return Err(bad(&rel.join(c), "expected a directory, found a file")),
                None => return Ok(None),
            }
            rel.push(c);
        }
        Ok(Some((rel, layers)))
    }

    /// Lists a directory of the view by name, remembering how many it holds.
    pub fn list(&self, rel: &Path, layers: &[LayerIdx]) -> Result<Vec<Named>, GcError> {
        let mut items = self.view.names(Dir { rel, layers }).map_err(io_err(rel))?;
        items.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        self.listings.lock().unwrap_or_else(|p| p.into_inner()).insert(rel.to_path_buf(), items.len());
        Ok(items)
    }

    /// How many names a directory holds: remembered from the scan, or
    /// listed now.
    pub fn name_count(&self, rel: &Path) -> Result<usize, GcError> {
        if let Some(n) = self.listings.lock().unwrap_or_else(|p| p.into_inner()).get(rel) {
            return Ok(*n);
        }
        match self.dir(rel)? {
            Some(layers) => Ok(self.list(rel, &layers)?.len()),
            None => Ok(0),
        }
    }

    /// Directories the scan found empty.
    pub fn empty_dirs(&self) -> Vec<PathBuf> {
        let l = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        l.iter().filter(|(_, n)| **n == 0).map(|(p, _)| p.clone()).collect()
    }

    /// Reads the `link` file in directory `dir`. `expect` is the digest the
    /// directory name stands for: the file must name exactly that. Returns
    /// the digest, the file's size and whether it is upper's.
    fn read_link(
        &self,
        dir: &Path,
        dir_layers: &[LayerIdx],
        expect: Option<&Digest>,
    ) -> Result<Option<(Digest, u64, bool)>, GcError> {
        let rel = dir.join(layout::LINK);
        let Some(e) =
            self.view.lookup(Dir { rel: dir, layers: dir_layers }, layout::LINK.as_ref()).map_err(io_err(&rel))?
        else {
            return Ok(None);
        };
        if !e.meta.is_file() {
            return Err(bad(&rel, "a link must be a regular file"));
        }
        if e.meta.size > MAX_LINK_BYTES {
            return Err(bad(&rel, format!("a link holds 71 bytes, this one {}", e.meta.size)));
        }
        // Sized from the lookup: one read(2) for a link, not a probe loop.
        let content =
            self.view.open_read(&rel, &e, 0).and_then(|f| f.read_all(MAX_LINK_BYTES)).map_err(io_err(&rel))?;
        let d = layout::parse_link(&content).map_err(|err| bad(&rel, format!("bad link: {err}")))?;
        if let Some(x) = expect.filter(|x| **x != d) {
            return Err(bad(&rel, format!("the link names {d} but is filed under {x}")));
        }
        Ok(Some((d, content.len() as u64, e.top() == UPPER)))
    }

    /// The link directories `<dir>/<hex>` (`_layers/sha256`,
    /// `revisions/sha256`, a tag's `index/sha256`), by name: every name must
    /// be a digest directory. Their `link` files are not read.
    pub fn link_dirs(&self, from: &At, dir: &Path) -> Result<Vec<(Digest, Named)>, GcError> {
        let Some((_, layers)) = self.descend(from, dir)? else { return Ok(Vec::new()) };
        self.list(dir, &layers)?
            .into_iter()
            .map(|item| {
                let rel = dir.join(&item.name);
                let d = Digest::from_hex(utf8(dir, &item)?).map_err(|_| {
                    bad(&rel, "unexpected entry: only sha256 digest directories (64 lowercase hex) belong here")
                })?;
                if !item.is_dir() {
                    return Err(bad(&rel, "a link directory must be a directory"));
                }
                Ok((d, item))
            })
            .collect()
    }

    /// The links below `dir`, each taken from its directory's name.
    ///
    /// With `listed`, each link directory is listed too (not its `link`
    /// opened): the listing says whether the file is there and, from the
    /// entry's type, that it is a regular file. Revisions need that: a
    /// manifest deleted through the registry's API leaves its revision
    /// directory without the link, and that manifest is no root. Elsewhere
    /// (`_layers`, tag histories) a link directory is trusted whole, as
    /// distribution does: one without its file is harmless, and `regfs
    /// verify` names it.
    fn links(&self, from: &At, dir: &Path, listed: bool) -> Result<Vec<LinkRef>, GcError> {
        let dirs = self.link_dirs(from, dir)?;
        if !listed {
            return Ok(dirs
                .into_iter()
                .map(|(digest, item)| LinkRef {
                    digest,
                    dir: dir.join(&item.name),
                    present: true,
                    bytes: layout::LINK_LEN as u64,
                    in_upper: item.layers.first() == Some(&UPPER),
                })
                .collect());
        }
        dirs.into_par_iter()
            .map(|(digest, item)| {
                let rel = dir.join(&item.name);
                let names = self.list(&rel, &item.layers)?;
                let link = names.iter().find(|n| n.name == layout::LINK);
                if let Some(l) = link.filter(|l| !l.file_type.is_file()) {
                    let kind = format!("{:?}", l.file_type).to_lowercase();
                    return Err(bad(&rel.join(layout::LINK), format!("a link must be a regular file, not a {kind}")));
                }
                Ok(LinkRef {
                    digest,
                    dir: rel,
                    present: link.is_some(),
                    bytes: layout::LINK_LEN as u64,
                    in_upper: link.is_some_and(|l| l.layers.first() == Some(&UPPER)),
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .collect()
    }

    /// Checks a link directory's `link` file as a registry writes it: a
    /// regular file naming exactly the digest of its directory.
    pub fn check_link(&self, dir: &Path, layers: &[LayerIdx], expect: &Digest) -> Result<(), GcError> {
        match self.read_link(dir, layers, Some(expect))? {
            Some(_) => Ok(()),
            None => Err(bad(&dir.join(layout::LINK), "missing: a link directory without its link file")),
        }
    }

    /// The repository's link directories GC takes by name, with where each
    /// sits: revisions, tag histories and `_layers` (for `regfs verify`).
    pub fn repo_link_dirs(&self, repo: &RepoScan) -> Result<Vec<(Digest, PathBuf, Vec<LayerIdx>)>, GcError> {
        let mut out = Vec::new();
        let mut add = |from: &At, dir: PathBuf| -> Result<(), GcError> {
            for (d, item) in self.link_dirs(from, &dir)? {
                out.push((d, dir.join(&item.name), item.layers));
            }
            Ok(())
        };
        if let Some(m) = repo.section(Section::Manifests) {
            add(m, layout::revision_links_dir(&repo.name))?;
            for t in &repo.tags {
                if let Some(at) = self.descend(m, &t.dir)? {
                    let name = t.dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    add(&at, layout::tag_index_dir(&repo.name, name))?;
                }
            }
        }
        if let Some(l) = repo.section(Section::Layers) {
            add(l, layout::layer_links_dir(&repo.name))?;
        }
        Ok(out)
    }

    /// Every repository of the view, sorted by name (not yet scanned). The
    /// tree is walked a level at a time, each level's directories listed in
    /// parallel (a cold walk waits on every listing); a loop, not recursion,
    /// so no depth of nesting exhausts a stack.
    pub fn repositories(&self) -> Result<Vec<RepoScan>, GcError> {
        let root = layout::repositories_root();
        let mut out = Vec::new();
        let Some(layers) = self.dir(&root)? else { return Ok(out) };
        let mut level = vec![(root, layers, String::new())];
        while !level.is_empty() {
            let listed: Vec<_> =
                level.into_par_iter().map(|(rel, layers, name)| self.repository_dir(rel, layers, name)).collect();
            level = Vec::new();
            // In listing order, so the first bad entry reported is always the same one.
            for l in listed {
                let (repo, children) = l?;
                out.extend(repo);
                level.extend(children);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One directory of the repository tree: the repository it is (when it
    /// holds a section) and the subdirectories that may hold more.
    fn repository_dir(&self, rel: PathBuf, layers: Vec<LayerIdx>, name: String) -> Result<RepoDir, GcError> {
        let mut sections = Vec::new();
        let mut children = Vec::new();
        for item in self.list(&rel, &layers)? {
            if !item.is_dir() {
                continue;
            }
            // A repository name is UTF-8: skipping one that is not would
            // sweep the blobs it references and leave its links dangling.
            let n = utf8(&rel, &item)?;
            if let Some(s) = Section::from_name(n) {
                if !name.is_empty() {
                    sections.push((s, (rel.join(&item.name), item.layers)));
                }
            } else if layout::may_hold_repos(n) {
                let child = if name.is_empty() { n.to_string() } else { format!("{name}/{n}") };
                children.push((rel.join(&item.name), item.layers, child));
            }
        }
        let repo = (!sections.is_empty()).then(|| RepoScan { name, sections, ..RepoScan::default() });
        Ok((repo, children))
    }

    /// Reads a repository's revisions and tags and, when `with_layers`, its
    /// layer links; when `with_history`, each tag's history entries (only
    /// `--delete-untagged` can find one to delete: otherwise every revision
    /// there is a root, and an entry naming one that is gone is harmless).
    pub fn scan_repo(&self, repo: &mut RepoScan, with_layers: bool, with_history: bool) -> Result<(), GcError> {
        if let Some(m) = repo.section(Section::Manifests) {
            let m = m.clone();
            repo.revisions = self.links(&m, &layout::revision_links_dir(&repo.name), true)?;
            repo.tags = self.tags(&m, &repo.name, with_history)?;
        }
        if let Some(l) = repo.section(Section::Layers).filter(|_| with_layers) {
            repo.layer_links = self.links(l, &layout::layer_links_dir(&repo.name), false)?;
        }
        Ok(())
    }

    fn tags(&self, manifests: &At, repo: &str, with_history: bool) -> Result<Vec<TagScan>, GcError> {
        let dir = layout::tags_dir(repo);
        let Some((_, layers)) = self.descend(manifests, &dir)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for item in self.list(&dir, &layers)? {
            let name = utf8(&dir, &item)?.to_string();
            let tag_dir = layout::tag_dir(repo, &name);
            if !item.is_dir() {
                return Err(bad(&tag_dir, "a tag must be a directory"));
            }
            let tag: At = (tag_dir.clone(), item.layers);
            let current_link = layout::tag_current_link(repo, &name);
            let current = match current_link.parent() {
                Some(p) => match self.descend(&tag, p)? {
                    Some((_, cl)) => self.read_link(p, &cl, None)?,
                    None => None,
                },
                None => None,
            };
            out.push(TagScan {
                history: if with_history {
                    self.links(&tag, &layout::tag_index_dir(repo, &name), false)?
                } else {
                    Vec::new()
                },
                current: current.map(|c| c.0),
                current_bytes: current.map_or(0, |c| c.1),
                dir: tag_dir,
            });
        }
        Ok(out)
    }

    /// The prefix directories of the blob store (`blobs/sha256/<xx>`), for
    /// [`Scanner::blobs`].
    pub fn blob_prefixes(&self) -> Result<Vec<Named>, GcError> {
        let root = layout::blobs_root();
        match self.dir(&root)? {
            Some(layers) => self.list(&root, &layers),
            None => Ok(Vec::new()),
        }
    }

    /// Every blob directory of the store (below `prefixes`), by name: what is inside one is
    /// looked at only when GC needs it ([`Scanner::blob_data`]). Anything
    /// else under `blobs/sha256` is an error: GC does not guess what it is.
    pub fn blobs(&self, prefixes: &[Named]) -> Result<Vec<BlobScan>, GcError> {
        let root = layout::blobs_root();
        let per_prefix: Vec<Vec<BlobScan>> = prefixes
            .par_iter()
            .map(|p| {
                let prel = root.join(&p.name);
                let prefix = utf8(&root, p)?;
                if !p.is_dir() {
                    return Err(bad(&prel, "unexpected file in the blob store"));
                }
                self.list(&prel, &p.layers)?
                    .into_iter()
                    .map(|item| {
                        let digest = layout::blob_dir_digest(prefix, utf8(&prel, &item)?)
                            .map_err(|err| bad(&prel.join(&item.name), format!("not a blob directory: {err}")))?;
                        if !item.is_dir() {
                            return Err(bad(&prel.join(&item.name), "a blob must be a directory"));
                        }
                        Ok(BlobScan { digest, layers: item.layers })
                    })
                    .collect()
            })
            // In order, so the first bad entry reported is always the same one.
            .collect::<Vec<_>>()
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok(per_prefix.into_iter().flatten().collect())
    }

    /// A blob's `data` file; `None` when there is none.
    pub fn blob_data(&self, blob: &BlobScan) -> Result<BlobData, GcError> {
        let dir = layout::blob_dir(&blob.digest);
        let data_rel = dir.join(layout::DATA);
        match self
            .view
            .lookup(Dir { rel: &dir, layers: &blob.layers }, layout::DATA.as_ref())
            .map_err(io_err(&data_rel))?
        {
            Some(d) if d.meta.is_file() => Ok(Some(d)),
            Some(_) => Err(bad(&data_rel, "blob data must be a regular file")),
            None => Ok(None),
        }
    }

    /// Files and bytes that removing the view path `rel` (and everything
    /// below it) frees: what upper holds there. History entries are only
    /// hidden by a whiteout, which frees nothing, so they are not visited.
    pub fn upper_usage(&self, rel: &Path) -> Result<(u64, u64), GcError> {
        fn walk(upper: &dyn Layer, rel: &Path) -> Result<(u64, u64), GcError> {
            let Some(meta) = upper.stat(rel).map_err(io_err(rel))? else { return Ok((0, 0)) };
            if !meta.is_dir() {
                return Ok(if meta.is_file() { (1, meta.size) } else { (0, 0) });
            }
            let mut total = (0, 0);
            for (name, _) in upper.read_dir(rel).map_err(io_err(rel))?.unwrap_or_default() {
                let (f, b) = walk(upper, &rel.join(name))?;
                total = (total.0 + f, total.1 + b);
            }
            Ok(total)
        }
        walk(self.view.upper_layer(), rel)
    }
}
