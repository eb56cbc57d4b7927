//! Name lookup: one name in a directory's layer stack, a path from the
//! root, and fresh metadata for an entry held earlier.

use super::*;

impl View {
    /// Resolves `name` inside the directory `dir`.
    ///
    /// Kernel overlay rules: upper first, then the directory's lower stack;
    /// a whiteout ends the search, a non-directory is final, a directory
    /// merges with the directories below it until an opaque one. Policy hides
    /// the entry in every lower layer.
    pub fn lookup(&self, dir: Dir, name: &OsStr) -> io::Result<Option<Entry>> {
        let (dir_rel, dir_layers) = (dir.rel, dir.layers);
        if is_internal_name(name) || name.is_empty() || name == "." || name == ".." {
            return Ok(None);
        }
        let rel = dir_rel.join(name);
        let hidden = self.policy.hides_lower(&rel);
        let mut found: Option<Entry> = None;
        // Upper is always consulted: a directory copied up after `dir` was
        // resolved still shows what was written into it.
        let stack = std::iter::once(UPPER).chain(dir_layers.iter().copied().filter(|&l| l != UPPER));
        for li in stack {
            if li != UPPER && hidden {
                break;
            }
            let Some(meta) = self.stat_in(li, &rel)? else { continue };
            if self.is_whiteout(li, &rel, &meta)? {
                break;
            }
            let is_dir = meta.is_dir();
            match &mut found {
                None => {
                    found = Some(Entry { layers: vec![li], meta });
                    if !is_dir {
                        break;
                    }
                }
                Some(e) => {
                    if !is_dir {
                        break;
                    }
                    e.layers.push(li);
                }
            }
            // Nothing lies below the bottom layer: its opaque marks cut
            // nothing, so they are not read (two getxattrs per directory).
            if !self.is_bottom(li) && self.is_opaque(li, &rel)? {
                break;
            }
        }
        Ok(found)
    }

    /// Resolves a relative path from the root.
    pub fn resolve(&self, rel: &Path) -> io::Result<Option<Entry>> {
        let mut cur = self.root()?;
        let mut cur_rel = PathBuf::new();
        for comp in rel.components() {
            let std::path::Component::Normal(name) = comp else {
                return Err(errno(libc::EINVAL));
            };
            if !cur.is_dir() {
                return Ok(None);
            }
            match self.lookup(cur.as_dir(&cur_rel), name)? {
                Some(e) => cur = e,
                None => return Ok(None),
            }
            cur_rel.push(name);
        }
        Ok(Some(cur))
    }

    pub(super) fn resolve_existing(&self, rel: &Path) -> io::Result<Entry> {
        self.resolve(rel)?.ok_or_else(|| errno(libc::ENOENT))
    }

    /// [`View::lookup`] of a name that must exist (ENOENT otherwise).
    pub(super) fn lookup_existing(&self, dir: Dir, name: &OsStr) -> io::Result<Entry> {
        self.lookup(dir, name)?.ok_or_else(|| errno(libc::ENOENT))
    }

    /// The entry at `rel` found earlier in `layers`, with fresh metadata:
    /// upper first (writes and copy-ups change upper; lower entries never
    /// change while mounted), else the topmost of `layers`. ENOENT when
    /// neither holds it any more.
    pub fn stat_stack(&self, rel: &Path, layers: &[LayerIdx]) -> io::Result<Entry> {
        if let Some(meta) = self.stat_in(UPPER, rel)?
            && !self.is_whiteout(UPPER, rel, &meta)?
        {
            let mut all = vec![UPPER];
            if meta.is_dir() {
                all.extend(layers.iter().copied().filter(|&l| l != UPPER));
            }
            return Ok(Entry { layers: all, meta });
        }
        let lowers: Vec<LayerIdx> = layers.iter().copied().filter(|&l| l != UPPER).collect();
        let top = *lowers.first().ok_or_else(|| errno(libc::ENOENT))?;
        let meta = self.stat_in(top, rel)?.ok_or_else(|| errno(libc::ENOENT))?;
        Ok(Entry { layers: lowers, meta })
    }
}
