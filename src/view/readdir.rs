//! Merged directory listings.

use super::*;

impl View {
    /// Lists a directory of the view: each visible name once, upper first,
    /// with its metadata.
    pub fn list(&self, dir: Dir) -> io::Result<Vec<DirItem>> {
        self.names(dir)?.into_iter().map(|n| Ok(DirItem { entry: self.entry_of(dir.rel, &n)?, name: n.name })).collect()
    }

    /// Lists a directory of the view from its layers' directory entries:
    /// each visible name once, upper first, with the same rules as
    /// [`View::lookup`] (whiteouts, opaque cuts, policy). A name is
    /// stat'ed only where it could be a whiteout (a device, or a file above
    /// the bottom layer) and a directory's opaque mark is read only above
    /// the bottom layer, so listing history costs one getdents per layer.
    pub fn names(&self, dir: Dir) -> io::Result<Vec<Named>> {
        let (dir_rel, dir_layers) = (dir.rel, dir.layers);
        struct Slot {
            name: OsString,
            /// The contributing layers and the topmost entry's type; `None`
            /// while hidden (a whiteout, or policy).
            found: Option<(Vec<LayerIdx>, FileKind)>,
            /// No layer further down may contribute.
            closed: bool,
        }
        let mut slots: Vec<Slot> = Vec::new();
        // Names are unique within one layer's directory, so the index that
        // merges layers is built only once a second layer has the directory:
        // most directories of a history live in one layer alone.
        let mut index: Option<FxHashMap<OsString, usize>> = None;
        let mut layers_read = 0;
        let judge = self.policy.may_hide_in(dir_rel);
        let stack = std::iter::once(UPPER).chain(dir_layers.iter().copied().filter(|&l| l != UPPER));
        for li in stack {
            let Some(rd) = self.layer(li).read_dir(dir_rel)? else { continue };
            layers_read += 1;
            if layers_read == 2 {
                index = Some(slots.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect());
            }
            for (name, ft) in rd {
                if is_internal_name(&name) {
                    continue;
                }
                let i = match index.as_ref().and_then(|ix| ix.get(&name)) {
                    Some(&i) => i,
                    None => {
                        if let Some(ix) = index.as_mut() {
                            ix.insert(name.clone(), slots.len());
                        }
                        slots.push(Slot { name, found: None, closed: false });
                        slots.len() - 1
                    }
                };
                let slot = &mut slots[i];
                if slot.closed {
                    continue;
                }
                let rel = || dir_rel.join(&slot.name);
                if li != UPPER && judge && self.policy.hides_lower(&rel()) {
                    slot.closed = true;
                    continue;
                }
                if self.may_be_whiteout(li, ft) {
                    let r = rel();
                    let Some(meta) = self.stat_in(li, &r)? else { continue };
                    if self.is_whiteout(li, &r, &meta)? {
                        slot.closed = true;
                        continue;
                    }
                }
                // A non-directory is final, and so is an opaque directory.
                slot.closed = !ft.is_dir() || (!self.is_bottom(li) && self.is_opaque(li, &rel())?);
                match &mut slot.found {
                    None => slot.found = Some((vec![li], ft)),
                    Some((layers, top)) if top.is_dir() && ft.is_dir() => layers.push(li),
                    // Below a directory, a non-directory ends the merge.
                    Some(_) => slot.closed = true,
                }
            }
        }
        Ok(slots
            .into_iter()
            .filter_map(|s| s.found.map(|(layers, file_type)| Named { name: s.name, layers, file_type }))
            .collect())
    }
}
