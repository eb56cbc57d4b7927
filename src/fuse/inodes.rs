//! The inode table: a compact tree of (parent, name) records.
//!
//! No path string is stored per inode; paths are rebuilt from the parent
//! chain when a request needs one. Inode numbers are never reused while the
//! filesystem is mounted, so `stat` gives the same number for the same name.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::RwLock;

use crate::view::Entry;

pub const ROOT: u64 = 1;

#[derive(Debug)]
struct Node {
    parent: u64,
    name: OsString,
    /// The view entry as last resolved; upper parts are refreshed on use.
    entry: Entry,
}

#[derive(Debug, Default)]
struct Table {
    nodes: HashMap<u64, Node>,
    by_name: HashMap<(u64, OsString), u64>,
    next: u64,
}

#[derive(Debug)]
pub struct Inodes {
    table: RwLock<Table>,
}

impl Inodes {
    pub fn new(root: Entry) -> Inodes {
        let mut t = Table { next: ROOT + 1, ..Table::default() };
        t.nodes.insert(ROOT, Node { parent: ROOT, name: OsString::new(), entry: root });
        Inodes { table: RwLock::new(t) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The path (relative to the registry root) and cached entry of `ino`.
    pub fn get(&self, ino: u64) -> Option<(PathBuf, Entry)> {
        let t = self.read();
        let node = t.nodes.get(&ino)?;
        let mut names: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let n = t.nodes.get(&cur)?;
            names.push(&n.name);
            cur = n.parent;
            if names.len() > 4096 {
                return None;
            }
        }
        let path: PathBuf = names.iter().rev().collect();
        Some((path, node.entry.clone()))
    }

    /// The inode for `name` in `parent`, created on first sight; its cached
    /// entry is replaced with `entry`.
    pub fn intern(&self, parent: u64, name: &OsStr, entry: Entry) -> u64 {
        let mut t = self.write();
        let key = (parent, name.to_os_string());
        if let Some(&ino) = t.by_name.get(&key) {
            if let Some(node) = t.nodes.get_mut(&ino) {
                node.entry = entry;
            }
            return ino;
        }
        let ino = t.next;
        t.next += 1;
        t.nodes.insert(ino, Node { parent, name: key.1.clone(), entry });
        t.by_name.insert(key, ino);
        ino
    }

    /// The inode already known for `name` in `parent`, if any.
    pub fn find(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.read().by_name.get(&(parent, name.to_os_string())).copied()
    }

    /// Updates the cached entry of `ino`.
    pub fn update(&self, ino: u64, entry: Entry) {
        if let Some(node) = self.write().nodes.get_mut(&ino) {
            node.entry = entry;
        }
    }

    /// Forgets the name `name` in `parent` (unlink, rmdir). The inode stays
    /// valid for open handles, detached from the tree.
    pub fn detach(&self, parent: u64, name: &OsStr) {
        let mut t = self.write();
        if let Some(ino) = t.by_name.remove(&(parent, name.to_os_string())) {
            if let Some(node) = t.nodes.get_mut(&ino) {
                // A detached node keeps its last path for fstat on open handles.
                node.parent = parent;
            }
        }
    }

    /// Moves the node named `name` in `parent` to `new_name` in `new_parent`,
    /// replacing whatever was there.
    pub fn rename(&self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) {
        let mut t = self.write();
        t.by_name.remove(&(new_parent, new_name.to_os_string()));
        if let Some(ino) = t.by_name.remove(&(parent, name.to_os_string())) {
            if let Some(node) = t.nodes.get_mut(&ino) {
                node.parent = new_parent;
                node.name = new_name.to_os_string();
            }
            t.by_name.insert((new_parent, new_name.to_os_string()), ino);
        }
    }

    /// The parent inode of `ino` (the root is its own parent).
    pub fn parent_of(&self, ino: u64) -> Option<u64> {
        self.read().nodes.get(&ino).map(|n| n.parent)
    }

}
