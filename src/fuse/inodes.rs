//! The inode table: a compact tree of (parent, name) records.
//!
//! No path string and no metadata is stored per inode: a node is its parent,
//! its name, the set of layers it was found in and whether it is a
//! directory (about 40 bytes plus the name). Paths are rebuilt from the
//! parent chain when a request needs one; attributes come from the layer
//! file. Inode numbers are never reused while mounted, so `stat` gives the
//! same number for the same name, and the table is a plain vector.
//!
//! Hard links: an upper file with several names is one inode (one `st_ino`,
//! one `nlink` the kernel keeps for all of them). Its first name is the
//! node's; the others are aliases, and when the first goes an alias takes
//! its place, so the inode's path always leads to the file while it has a
//! name.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::ffi::OsStr;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::RwLock;

use crate::view::{Dir, Entry, LayerIdx, UPPER};

pub const ROOT: u64 = 1;

/// The layers an entry was found in, as a bit set (bit i = layer i); lower
/// indexes are higher layers, so ascending order is topmost first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stack(u64);

impl Stack {
    pub fn of(layers: &[LayerIdx]) -> Stack {
        Stack(layers.iter().filter(|&&l| l < 64).fold(0, |m, &l| m | 1 << l))
    }

    pub fn layers(self) -> Vec<LayerIdx> {
        (0..64).filter(|i| self.0 & (1 << i) != 0).collect()
    }
}

#[derive(Debug)]
struct Node {
    parent: u64,
    name: Box<OsStr>,
    stack: Stack,
    dir: bool,
}

/// What the table knows of an inode.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub path: PathBuf,
    pub layers: Vec<LayerIdx>,
    pub dir: bool,
}

impl NodeInfo {
    /// The node as a directory of the view, for operations on its names.
    pub fn as_dir(&self) -> Dir<'_> {
        Dir { rel: &self.path, layers: &self.layers }
    }
}

#[derive(Debug, Default)]
struct Table {
    /// Indexed by inode number; slot 0 is unused.
    nodes: Vec<Node>,
    /// (parent, hash of name) → inode; names are checked on the node.
    by_name: HashMap<(u64, u64), u64>,
    /// The rare second name of a parent with an equal hash, and every
    /// alias (a hard link's further names).
    collisions: HashMap<(u64, Box<OsStr>), u64>,
    /// Inode → its aliases (parent, name).
    aliases: HashMap<u64, Vec<(u64, Box<OsStr>)>>,
    /// An upper file with several links (device, inode) → its inode here.
    by_file: HashMap<(u64, u64), u64>,
}

/// (device, inode) of an upper file with several links.
fn link_key(entry: &Entry) -> Option<(u64, u64)> {
    let m = &entry.meta;
    (entry.top() == UPPER && m.is_file() && m.nlink > 1).then_some((m.dev, m.ino))
}

fn name_hash(name: &OsStr) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

impl Table {
    fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(ino as usize).filter(|_| ino != 0)
    }

    fn find(&self, parent: u64, name: &OsStr) -> Option<u64> {
        let ino = *self.by_name.get(&(parent, name_hash(name)))?;
        if self.node(ino).is_some_and(|n| n.parent == parent && &*n.name == name) {
            return Some(ino);
        }
        self.collisions.get(&(parent, Box::from(name))).copied()
    }

    fn unlink_name(&mut self, parent: u64, name: &OsStr) -> Option<u64> {
        let key = (parent, name_hash(name));
        if let Some(&ino) = self.by_name.get(&key)
            && self.node(ino).is_some_and(|n| n.parent == parent && &*n.name == name)
        {
            self.by_name.remove(&key);
            return Some(ino);
        }
        self.collisions.remove(&(parent, Box::from(name)))
    }

    /// The inode for `name` in `parent`, created on first sight, with its
    /// layers and kind set.
    fn intern(&mut self, parent: u64, name: &OsStr, stack: Stack, dir: bool) -> u64 {
        if let Some(ino) = self.find(parent, name) {
            if let Some(n) = self.nodes.get_mut(ino as usize) {
                n.stack = stack;
                n.dir = dir;
            }
            return ino;
        }
        let ino = self.nodes.len() as u64;
        self.nodes.push(Node { parent, name: Box::from(name), stack, dir });
        self.link_name(parent, name, ino);
        ino
    }

    /// Whether `ino`'s own (parent, name) still names it.
    fn named(&self, ino: u64) -> bool {
        self.node(ino).is_some_and(|n| self.find(n.parent, &n.name) == Some(ino))
    }

    /// Gives `ino` one more name: its own, if it has none left, else an alias.
    fn add_name(&mut self, parent: u64, name: &OsStr, ino: u64) {
        if self.named(ino) {
            self.collisions.insert((parent, Box::from(name)), ino);
            self.aliases.entry(ino).or_default().push((parent, Box::from(name)));
        } else if let Some(n) = self.nodes.get_mut(ino as usize) {
            n.parent = parent;
            n.name = Box::from(name);
            self.link_name(parent, name, ino);
        }
    }

    /// Removes the name `name` in `parent`; an inode that loses its own
    /// name while it has an alias takes the alias as its name.
    fn remove_name(&mut self, parent: u64, name: &OsStr) -> Option<u64> {
        let ino = self.unlink_name(parent, name)?;
        let Some(aliases) = self.aliases.get_mut(&ino) else { return Some(ino) };
        aliases.retain(|(p, n)| !(*p == parent && &**n == name));
        let own = self.node(ino).is_some_and(|n| n.parent == parent && &*n.name == name);
        if own && let Some((p, n)) = self.aliases.get_mut(&ino).and_then(Vec::pop) {
            self.collisions.remove(&(p, n.clone()));
            if let Some(node) = self.nodes.get_mut(ino as usize) {
                node.parent = p;
                node.name = n.clone();
            }
            self.link_name(p, &n, ino);
        }
        Some(ino)
    }

    fn link_name(&mut self, parent: u64, name: &OsStr, ino: u64) {
        let key = (parent, name_hash(name));
        match self.by_name.get(&key) {
            Some(&other) if other != ino && self.node(other).is_some_and(|n| n.parent == parent) => {
                self.collisions.insert((parent, Box::from(name)), ino);
            }
            _ => {
                self.by_name.insert(key, ino);
            }
        }
    }
}

#[derive(Debug)]
pub struct Inodes {
    table: RwLock<Table>,
}

impl Inodes {
    pub fn new(root: &Entry) -> Inodes {
        let mut t = Table::default();
        let placeholder = Node { parent: 0, name: Box::from(OsStr::new("")), stack: Stack::default(), dir: false };
        t.nodes.push(placeholder);
        t.nodes.push(Node { parent: ROOT, name: Box::from(OsStr::new("")), stack: Stack::of(&root.layers), dir: true });
        Inodes { table: RwLock::new(t) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The path (relative to the registry root), layers and kind of `ino`.
    pub fn get(&self, ino: u64) -> Option<NodeInfo> {
        let t = self.read();
        let node = t.node(ino)?;
        let mut names: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let n = t.node(cur)?;
            names.push(&n.name);
            cur = n.parent;
            if names.len() > 4096 {
                return None;
            }
        }
        let path: PathBuf = names.iter().rev().collect();
        Some(NodeInfo { path, layers: node.stack.layers(), dir: node.dir })
    }

    /// The inode for `name` in `parent`, created on first sight; its layers
    /// and kind are set from `entry`.
    /// An upper file with several links is one inode whatever name it is
    /// found by.
    pub fn intern(&self, parent: u64, name: &OsStr, entry: &Entry) -> u64 {
        let (stack, dir) = (Stack::of(&entry.layers), entry.is_dir());
        let mut t = self.write();
        let Some(key) = link_key(entry) else { return t.intern(parent, name, stack, dir) };
        // One lock for the lookup and the insert: two names of one file
        // looked up at once still get one inode.
        match t.by_file.get(&key).copied().filter(|&i| t.node(i).is_some()) {
            Some(k) if t.find(parent, name) == Some(k) => k,
            Some(k) => {
                t.remove_name(parent, name);
                t.add_name(parent, name, k);
                k
            }
            None => {
                let ino = t.intern(parent, name, stack, dir);
                t.by_file.insert(key, ino);
                ino
            }
        }
    }

    /// [`Inodes::intern`] from a layer stack and whether it is a directory.
    pub fn intern_stack(&self, parent: u64, name: &OsStr, layers: &[LayerIdx], dir: bool) -> u64 {
        self.write().intern(parent, name, Stack::of(layers), dir)
    }

    /// The inode already known for `name` in `parent`, if any.
    pub fn find(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.read().find(parent, name)
    }

    /// Updates the layers and kind of `ino`.
    pub fn update(&self, ino: u64, entry: &Entry) {
        if ino == 0 {
            return;
        }
        let mut t = self.write();
        if let Some(n) = t.nodes.get_mut(ino as usize) {
            n.stack = Stack::of(&entry.layers);
            n.dir = entry.is_dir();
        }
        if let Some(key) = link_key(entry) {
            t.by_file.entry(key).or_insert(ino);
        }
    }

    /// Forgets the name `name` in `parent` (unlink, rmdir). The inode stays
    /// valid for open handles, keeping its last path.
    pub fn detach(&self, parent: u64, name: &OsStr) {
        self.write().remove_name(parent, name);
    }

    /// Moves the node named `name` in `parent` to `new_name` in `new_parent`,
    /// replacing whatever was there.
    pub fn rename(&self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) {
        let mut t = self.write();
        t.remove_name(new_parent, new_name);
        if let Some(ino) = t.remove_name(parent, name) {
            t.add_name(new_parent, new_name, ino);
        }
    }

    /// The parent inode of `ino` (the root is its own parent).
    pub fn parent_of(&self, ino: u64) -> Option<u64> {
        self.read().node(ino).map(|n| n.parent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_keep_layer_order() {
        assert_eq!(Stack::of(&[0, 2, 5]).layers(), vec![0, 2, 5]);
        assert_eq!(Stack::of(&[]).layers(), Vec::<usize>::new());
    }
}
