//! The folder inventory with its memory bound: at most `bound` entries per root and per owner
//! uid. A file beyond the bound is still identified, decided and acted on at every look; it is
//! only not remembered (so its identity and hash are taken again next time), and `status`
//! degrades naming the root or uid. Without this, one user's 200,000 empty `*.apk` files under
//! long directory names grew the root daemon by gigabytes (issue 10, finding 8).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::folders::Item;

/// Default entries per root and per uid.
pub const DEFAULT_MAX_INVENTORY_ENTRIES: usize = 20_000;

pub struct InventoryMap {
    map: BTreeMap<PathBuf, Item>,
    per_root: HashMap<PathBuf, usize>,
    per_uid: HashMap<u32, usize>,
    bound: usize,
    /// Roots and uids that had a file not remembered since they were last under the bound.
    over_roots: BTreeSet<PathBuf>,
    over_uids: BTreeSet<u32>,
}

impl Default for InventoryMap {
    fn default() -> Self {
        Self::with_bound(DEFAULT_MAX_INVENTORY_ENTRIES)
    }
}

impl InventoryMap {
    pub fn with_bound(bound: usize) -> Self {
        Self {
            map: BTreeMap::new(),
            per_root: HashMap::new(),
            per_uid: HashMap::new(),
            bound,
            over_roots: BTreeSet::new(),
            over_uids: BTreeSet::new(),
        }
    }

    pub fn set_bound(&mut self, bound: usize) {
        self.bound = bound;
    }

    pub fn bound(&self) -> usize {
        self.bound
    }

    /// Remembers `item` at `path`, unless its root or its owner already has `bound` entries.
    /// Returns whether it is remembered.
    pub fn insert(&mut self, path: PathBuf, item: Item) -> bool {
        if self.map.contains_key(&path) {
            self.remove(&path);
        }
        let in_root = self.per_root.get(&item.root).copied().unwrap_or(0);
        let of_uid = self.per_uid.get(&item.uid).copied().unwrap_or(0);
        if in_root >= self.bound || of_uid >= self.bound {
            if in_root >= self.bound {
                self.over_roots.insert(item.root.clone());
            }
            if of_uid >= self.bound {
                self.over_uids.insert(item.uid);
            }
            return false;
        }
        *self.per_root.entry(item.root.clone()).or_default() += 1;
        *self.per_uid.entry(item.uid).or_default() += 1;
        self.map.insert(path, item);
        true
    }

    pub fn remove(&mut self, path: &Path) -> Option<Item> {
        let it = self.map.remove(path)?;
        if let Some(n) = self.per_root.get_mut(&it.root) {
            *n -= 1;
            if *n == 0 {
                self.per_root.remove(&it.root);
            }
        }
        if let Some(n) = self.per_uid.get_mut(&it.uid) {
            *n -= 1;
            if *n == 0 {
                self.per_uid.remove(&it.uid);
            }
        }
        // Well under the bound again: the degradation ends (at the next refusal it returns).
        if self.per_root.get(&it.root).copied().unwrap_or(0) < self.bound / 2 {
            self.over_roots.remove(&it.root);
        }
        if self.per_uid.get(&it.uid).copied().unwrap_or(0) < self.bound / 2 {
            self.over_uids.remove(&it.uid);
        }
        Some(it)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&PathBuf, &Item) -> bool) {
        let gone: Vec<PathBuf> = self.map.iter().filter(|(p, it)| !keep(p, it)).map(|(p, _)| p.clone()).collect();
        for p in gone {
            self.remove(&p);
        }
    }

    pub fn get(&self, path: &Path) -> Option<&Item> {
        self.map.get(path)
    }

    /// Mutable access to an entry (its root and uid must not change: they are counted).
    pub fn get_mut(&mut self, path: &Path) -> Option<&mut Item> {
        self.map.get_mut(path)
    }

    pub fn range(&self, from: PathBuf) -> std::collections::btree_map::Range<'_, PathBuf, Item> {
        self.map.range(from..)
    }

    pub fn iter(&self) -> std::collections::btree_map::Iter<'_, PathBuf, Item> {
        self.map.iter()
    }

    pub fn values(&self) -> std::collections::btree_map::Values<'_, PathBuf, Item> {
        self.map.values()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries remembered of files owned by `uid`.
    pub fn of_uid(&self, uid: u32) -> usize {
        self.per_uid.get(&uid).copied().unwrap_or(0)
    }

    /// Entries remembered under `root`.
    pub fn in_root(&self, root: &Path) -> usize {
        self.per_root.get(root).copied().unwrap_or(0)
    }

    /// Why status is degraded by this bound, one line per root or uid over it.
    pub fn reasons(&self, out: &mut Vec<String>) {
        for r in &self.over_roots {
            out.push(format!(
                "inventory of {} reached its bound of {} entries: further files are enforced at each look but not remembered",
                r.display(),
                self.bound
            ));
        }
        for u in &self.over_uids {
            out.push(format!(
                "inventory of uid {u} reached its bound of {} entries: further files are enforced at each look but not remembered",
                self.bound
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embargo_policy::app::App;
    use embargo_policy::rules::Kind;

    fn item(root: &str, uid: u32) -> Item {
        Item {
            root: root.into(),
            app: App::new(Kind::File, "x"),
            verdict: None,
            id: crate::safefs::FileId { dev: 0, ino: 0 },
            size: 0,
            audited: false,
            unhashed: None,
            stamp: None,
            uid,
        }
    }

    #[test]
    fn bounded_per_root_and_per_uid_and_reported() {
        let mut m = InventoryMap::with_bound(2);
        assert!(m.insert("/a/1".into(), item("/a", 1)));
        assert!(m.insert("/a/2".into(), item("/a", 2)));
        assert!(!m.insert("/a/3".into(), item("/a", 3)), "root /a is full");
        assert!(m.insert("/b/1".into(), item("/b", 1)));
        assert!(!m.insert("/c/1".into(), item("/c", 1)), "uid 1 is full");
        // Replacing an entry does not count twice.
        assert!(m.insert("/a/1".into(), item("/a", 1)));
        let mut r = Vec::new();
        m.reasons(&mut r);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].contains("/a") && r[1].contains("uid 1"), "{r:?}");
        m.remove(Path::new("/a/1"));
        m.remove(Path::new("/a/2"));
        m.remove(Path::new("/b/1"));
        let mut r = Vec::new();
        m.reasons(&mut r);
        assert!(r.is_empty(), "{r:?}");
        assert_eq!((m.len(), m.in_root(Path::new("/a"))), (0, 0));
    }
}
