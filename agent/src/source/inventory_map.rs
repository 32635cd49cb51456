//! The folder inventory with its memory bound: at most `bound` entries and `byte_bound` bytes
//! (paths plus app details, [`cost`]) per root and per owner uid. A file beyond the bound is still identified, decided and acted on at every look; it is
//! only not remembered (so its identity and hash are taken again next time), and `status`
//! degrades naming the root or uid. Without this, one user's 200,000 empty `*.apk` files under
//! long directory names grew the root daemon by gigabytes (issue 10, finding 8).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::folders::Item;

/// Default entries per root and per uid.
pub const DEFAULT_MAX_INVENTORY_ENTRIES: usize = 20_000;

/// Default bytes per root and per uid (what [`cost`] counts).
pub const DEFAULT_MAX_INVENTORY_BYTES: usize = 16 << 20;

/// What one entry is charged: the bytes of its path and of every string of its app, plus a
/// fixed 256 for the entry's own structures (map node, `Item`, allocation headers). Long names
/// make long entries: this is what a bound in entries alone did not see.
pub fn cost(path: &Path, item: &Item) -> usize {
    let a = &item.app;
    let strings = a.id.len()
        + a.name.as_ref().map_or(0, String::len)
        + a.version.as_ref().map_or(0, String::len)
        + a.publisher.as_ref().map_or(0, String::len)
        + a.sha256.as_ref().map_or(0, String::len)
        + a.signers.iter().chain(&a.paths).map(|s| s.len() + 24).sum::<usize>()
        + item.unhashed.as_ref().map_or(0, String::len)
        + item.verdict.as_ref().map_or(0, |v| v.rule.len());
    path.as_os_str().len() + item.root.as_os_str().len() + strings + 256
}

/// A bound the inventory reached, for one audit event each time a root or uid reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundReached {
    /// "root /home/u/Downloads" or "uid 1000".
    pub of: String,
    /// "20000 entries" or "16777216 bytes".
    pub bound: String,
}

#[derive(Default, Clone, Copy)]
struct Usage {
    entries: usize,
    bytes: usize,
}

pub struct InventoryMap {
    map: BTreeMap<PathBuf, Item>,
    per_root: HashMap<PathBuf, Usage>,
    per_uid: HashMap<u32, Usage>,
    bound: usize,
    byte_bound: usize,
    /// Roots and uids that had a file not remembered since they were last under the bound,
    /// with the bound they reached.
    over_roots: BTreeMap<PathBuf, String>,
    over_uids: BTreeMap<u32, String>,
    /// Bounds reached since the owner last took them (one audit event each).
    reached: Vec<BoundReached>,
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
            byte_bound: DEFAULT_MAX_INVENTORY_BYTES,
            over_roots: BTreeMap::new(),
            over_uids: BTreeMap::new(),
            reached: Vec::new(),
        }
    }

    pub fn set_bound(&mut self, bound: usize) {
        self.bound = bound;
    }

    pub fn set_byte_bound(&mut self, bytes: usize) {
        self.byte_bound = bytes;
    }

    /// The bounds reached since the last call (each root or uid once per crossing: it is
    /// reported again only after falling below half the bound and reaching it anew).
    pub fn take_reached(&mut self) -> Vec<BoundReached> {
        std::mem::take(&mut self.reached)
    }

    /// Which bound `u` plus one entry of `cost` bytes would exceed, if any.
    fn over(&self, u: Usage, cost: usize) -> Option<String> {
        if u.entries >= self.bound {
            Some(format!("{} entries", self.bound))
        } else if u.bytes + cost > self.byte_bound {
            Some(format!("{} bytes", self.byte_bound))
        } else {
            None
        }
    }

    fn well_under(&self, u: Usage) -> bool {
        u.entries < self.bound / 2 && u.bytes < self.byte_bound / 2
    }

    pub fn bound(&self) -> usize {
        self.bound
    }

    /// Remembers `item` at `path`, unless its root or its owner already has `bound` entries
    /// or would exceed `byte_bound` bytes with it. Returns whether it is remembered.
    pub fn insert(&mut self, path: PathBuf, item: Item) -> bool {
        if self.map.contains_key(&path) {
            self.remove(&path);
        }
        let c = cost(&path, &item);
        let in_root = self.over(self.per_root.get(&item.root).copied().unwrap_or_default(), c);
        let of_uid = self.over(self.per_uid.get(&item.uid).copied().unwrap_or_default(), c);
        if in_root.is_some() || of_uid.is_some() {
            if let Some(b) = in_root {
                if !self.over_roots.contains_key(&item.root) {
                    self.reached.push(BoundReached { of: format!("root {}", item.root.display()), bound: b.clone() });
                }
                self.over_roots.insert(item.root.clone(), b);
            }
            if let Some(b) = of_uid {
                if !self.over_uids.contains_key(&item.uid) {
                    self.reached.push(BoundReached { of: format!("uid {}", item.uid), bound: b.clone() });
                }
                self.over_uids.insert(item.uid, b);
            }
            return false;
        }
        for u in [self.per_root.entry(item.root.clone()).or_default(), self.per_uid.entry(item.uid).or_default()] {
            u.entries += 1;
            u.bytes += c;
        }
        self.map.insert(path, item);
        true
    }

    pub fn remove(&mut self, path: &Path) -> Option<Item> {
        let it = self.map.remove(path)?;
        let c = cost(path, &it);
        if let Some(u) = self.per_root.get_mut(&it.root) {
            u.entries -= 1;
            u.bytes -= c;
            if u.entries == 0 {
                self.per_root.remove(&it.root);
            }
        }
        if let Some(u) = self.per_uid.get_mut(&it.uid) {
            u.entries -= 1;
            u.bytes -= c;
            if u.entries == 0 {
                self.per_uid.remove(&it.uid);
            }
        }
        // Well under the bound again: the degradation ends (at the next refusal it returns).
        if self.well_under(self.per_root.get(&it.root).copied().unwrap_or_default()) {
            self.over_roots.remove(&it.root);
        }
        if self.well_under(self.per_uid.get(&it.uid).copied().unwrap_or_default()) {
            self.over_uids.remove(&it.uid);
        }
        Some(it)
    }

    /// Bytes remembered (as [`cost`] counts them) under `root`.
    pub fn bytes_in_root(&self, root: &Path) -> usize {
        self.per_root.get(root).map_or(0, |u| u.bytes)
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

    /// Mutable access to an entry (its root, uid and anything [`cost`] counts must not
    /// change: they are counted).
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
        self.per_uid.get(&uid).map_or(0, |u| u.entries)
    }

    /// Entries remembered under `root`.
    pub fn in_root(&self, root: &Path) -> usize {
        self.per_root.get(root).map_or(0, |u| u.entries)
    }

    /// Why status is degraded by this bound, one line per root or uid over it.
    pub fn reasons(&self, out: &mut Vec<String>) {
        for (r, b) in &self.over_roots {
            out.push(format!(
                "inventory of {} reached its bound of {b}: further files are enforced at each look but not remembered",
                r.display(),
            ));
        }
        for (u, b) in &self.over_uids {
            out.push(format!(
                "inventory of uid {u} reached its bound of {b}: further files are enforced at each look but not remembered",
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
        assert_eq!(m.take_reached().len(), 2, "one audit event per root or uid reaching the bound");
    }

    /// Long names make long entries: the bound in bytes stops a user who stays under the bound
    /// in entries, per root and per uid, and the bytes are given back on removal.
    #[test]
    fn bounded_in_bytes_per_root_and_per_uid() {
        let mut m = InventoryMap::with_bound(1000);
        m.set_byte_bound(10_000);
        let long = "x".repeat(2000);
        let mut kept = 0;
        for i in 0..10 {
            if m.insert(format!("/a/{long}{i}").into(), item("/a", 7)) {
                kept += 1;
            }
        }
        // Each entry costs over 2,000 bytes: at most four fit in 10,000.
        assert!((1..=4).contains(&kept), "{kept} kept");
        assert!(m.bytes_in_root(Path::new("/a")) <= 10_000);
        let mut r = Vec::new();
        m.reasons(&mut r);
        assert!(r.iter().any(|l| l.contains("/a") && l.contains("10000 bytes")), "{r:?}");
        assert!(r.iter().any(|l| l.contains("uid 7") && l.contains("10000 bytes")), "{r:?}");
        let reached = m.take_reached();
        assert_eq!(reached.len(), 2, "{reached:?}");
        assert!(m.take_reached().is_empty(), "reported once, not at every refusal");
        // Short entries of another user in another root still fit.
        assert!(m.insert("/b/short".into(), item("/b", 8)));
        for i in 0..10 {
            m.remove(Path::new(&format!("/a/{long}{i}")));
        }
        assert_eq!(m.bytes_in_root(Path::new("/a")), 0);
        let mut r = Vec::new();
        m.reasons(&mut r);
        assert!(r.is_empty(), "{r:?}");
    }
}
