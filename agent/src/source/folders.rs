//! The install-folder source: watch patterns expanded to roots and anchors (their parents,
//! watched non-recursively through notify so new users' folders appear), the inventory of what
//! was identified there, and the walk that lists a root's files. A root's directories are
//! watched one by one as the walk meets them, under the watch bounds (`dirwatch`); what is
//! beyond them is rescanned by the scan fallback.
//!
//! It lists and remembers; opening a file beneath its root and identifying it is the core loop's
//! pipeline (`enforce`), and only `act` moves anything.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use embargo_policy::app::{App, Kind};
use embargo_policy::matcher::Verdict;
use notify::Watcher as _;

use super::{Hint, Source};
use crate::config::Watch;
use crate::proto::SourceStatus;
use crate::safefs::{self, FileId};

use super::dirwatch::DirWatch;
use super::walk::{Batch, Stop, Walk};

pub struct Root {
    pub kind: Kind,
    pub path: PathBuf,
    pub fd: OwnedFd,
    pub watch: String,
}

/// One identified file.
pub struct Item {
    pub root: PathBuf,
    pub app: App,
    pub verdict: Option<Verdict>,
    pub id: FileId,
    pub size: u64,
    /// An audit (or "needs confirmation") record was written for this file already.
    pub audited: bool,
    /// Why it has no hash, when it could not be hashed (`hashpool::Unhashed`).
    pub unhashed: Option<String>,
    /// The size, change and modification times its identity (and hash) was taken at; `None`
    /// once a write event named it. The identity is reused only for the same inode with the
    /// same stamp (the change time cannot be set by users, and a write event drops it even
    /// within one timestamp tick).
    pub stamp: Option<crate::hashpool::Stamp>,
    /// The file's owner (the inventory is bounded per uid).
    pub uid: u32,
}

/// A scan stopped at a bound of its batch (it continues in a later loop turn).
#[derive(Debug, Clone)]
pub struct BoundHit {
    pub root: PathBuf,
    /// The bound, as status and the audit log say it ("50 entries", "8388608 path bytes").
    pub bound: String,
    /// Which bound: "entries per scan" or "path bytes per scan".
    pub reason: &'static str,
}

impl BoundHit {
    fn new(root: &Path, stop: Stop, batch: Batch) -> Self {
        let (bound, reason) = match stop {
            Stop::Entries => (format!("{} entries", batch.entries), "entries per scan"),
            Stop::PathBytes => (format!("{} path bytes", batch.path_bytes), "path bytes per scan"),
        };
        Self { root: root.to_path_buf(), bound, reason }
    }
}

/// A walk that stopped at the bound, with what it has not seen yet of what the inventory held
/// under its start when it began: whatever is still unseen when the walk completes has vanished
/// and is forgotten (bounded by the inventory, which holds identified apps only).
struct PendingWalk {
    root: PathBuf,
    /// Where the walk started, relative to the root.
    start: PathBuf,
    walk: Walk,
    unseen: std::collections::HashSet<PathBuf>,
    /// The watcher's pass over the root, and the directories it left unwatched so far.
    pass: u64,
    unwatched: usize,
}

/// Lists one batch of `walk` beneath `root`, watching each directory it meets (through `dirs`)
/// before listing it; directories the bounds refuse are counted in `unwatched`.
fn walk_batch(
    root: &Root,
    dirs: Option<&mut DirWatch>,
    walk: &mut Walk,
    batch: Batch,
    files: &mut Vec<PathBuf>,
    pass: u64,
    unwatched: &mut usize,
) -> Option<Stop> {
    let Some(d) = dirs else { return walk.run(&root.fd, batch, files) };
    walk.run_with(&root.fd, batch, files, &mut |rel, fd, m| {
        let full = if rel.as_os_str().is_empty() { root.path.clone() } else { root.path.join(rel) };
        if !d.visit(&root.path, &full, fd, m, pass) {
            *unwatched += 1;
        }
    })
}

#[derive(Default)]
pub struct Folders {
    pub roots: Vec<Root>,
    anchors: Vec<PathBuf>,
    pub inventory: super::inventory_map::InventoryMap,
    /// Walks stopped at the bound, to continue where they stopped.
    walks: Vec<PendingWalk>,
    /// Roots whose last pass needed more than one batch, with the bound it reached (status
    /// shows them degraded).
    over_bound: BTreeMap<PathBuf, String>,
    /// The roots' directory watches, under their bounds (`None`: inotify could not start; the
    /// periodic reconcile is all there is).
    pub dirs: Option<DirWatch>,
    /// How often roots with unwatched directories are rescanned (for status).
    pub fallback_interval: std::time::Duration,
    /// How long the last fallback pass held the core loop (the next one waits in proportion).
    pub fallback_cost: std::time::Duration,
}

/// Expands a watch pattern into existing root directories, and the directories to watch
/// (non-recursively) so that roots appearing later are noticed.
pub fn expand(pattern: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut prefixes = vec![PathBuf::from("/")];
    let mut anchors = Vec::new();
    for comp in pattern.components().skip(1) {
        let c = comp.as_os_str().to_string_lossy();
        let mut next = Vec::new();
        for p in &prefixes {
            if c.contains(['*', '?']) {
                anchors.push(p.clone());
                for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                    let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                    let name = e.file_name().to_string_lossy().into_owned();
                    if is_dir && embargo_policy::glob::glob_match(&c, &name) {
                        next.push(p.join(name));
                    }
                }
            } else {
                let q = p.join(&*c);
                if std::fs::symlink_metadata(&q).is_ok_and(|m| m.is_dir()) {
                    next.push(q);
                } else {
                    anchors.push(p.clone());
                }
            }
        }
        prefixes = next;
    }
    anchors.sort();
    anchors.dedup();
    (prefixes, anchors)
}

impl Folders {
    /// Brings the set of roots in line with the folder watch patterns: new directories (a new
    /// user's ~/Applications) are watched; vanished ones dropped. Returns the new roots (to scan).
    pub fn refresh(&mut self, watches: &[Watch], watcher: &mut notify::RecommendedWatcher) -> Vec<PathBuf> {
        let mut wanted: Vec<(Kind, PathBuf)> = Vec::new();
        let mut anchors = Vec::new();
        for w in watches.iter().filter(|w| !crate::config::is_package_kind(w.kind)) {
            for p in &w.patterns {
                let (roots, a) = expand(p);
                wanted.extend(roots.into_iter().map(|r| (w.kind, r)));
                anchors.extend(a);
            }
        }
        anchors.sort();
        anchors.dedup();
        for a in &anchors {
            if !self.anchors.contains(a) {
                if let Err(e) = watcher.watch(a, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(path = %a.display(), error = %e, "cannot watch for new install roots");
                }
            }
        }
        for a in &self.anchors {
            if !anchors.contains(a) {
                let _ = watcher.unwatch(a);
            }
        }
        self.anchors = anchors;
        let before = self.roots.len();
        let dirs = &mut self.dirs;
        self.roots.retain(|r| {
            let keep = wanted.iter().any(|(k, p)| *k == r.kind && *p == r.path) && r.path.is_dir();
            if let (false, Some(d)) = (keep, dirs.as_mut()) {
                d.drop_root(&r.path);
            }
            keep
        });
        if self.roots.len() != before {
            let live: Vec<PathBuf> = self.roots.iter().map(|r| r.path.clone()).collect();
            self.inventory.retain(|_, it| live.contains(&it.root));
        }
        let mut new_roots = Vec::new();
        for (kind, path) in wanted {
            if self.roots.iter().any(|r| r.path == path && r.kind == kind) {
                continue;
            }
            let fd = match safefs::open_root(&path) {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open watch root (symlinks are not followed)");
                    continue;
                }
            };
            // Its directories are watched by the scan that follows (`list`).
            let watch = match &self.dirs {
                Some(_) => "inotify".to_owned(),
                None => "degraded: no inotify watcher (covered by the periodic reconcile only)".to_owned(),
            };
            tracing::info!(path = %path.display(), %kind, %watch, "watching");
            self.roots.push(Root { kind, path: path.clone(), fd, watch });
            new_roots.push(path);
        }
        new_roots
    }

    /// The innermost root containing `path`.
    pub fn root_of(&self, path: &Path) -> Option<usize> {
        self.roots
            .iter()
            .enumerate()
            .filter(|(_, r)| path.starts_with(&r.path))
            .max_by_key(|(_, r)| r.path.as_os_str().len())
            .map(|(i, _)| i)
    }

    /// Forgets everything identified and watched at or beneath `path`.
    pub fn forget_under(&mut self, path: &Path) {
        if let Some(d) = self.dirs.as_mut() {
            d.unwatch_under(path);
        }
        let gone: Vec<PathBuf> = self
            .inventory
            .range(path.to_path_buf())
            .take_while(|(p, _)| p.starts_with(path))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            self.inventory.remove(&p);
        }
    }

    /// Lists the files at or beneath `path` (a root, anything beneath one, or a directory that
    /// contains roots) as (root index, path relative to the root), forgetting what vanished. At
    /// most one `batch` per root: a walk that reaches it is kept, reported in the returned hits,
    /// and continued by [`Folders::continue_walks`].
    pub fn list(&mut self, path: &Path, batch: Batch) -> (Vec<(usize, PathBuf)>, Vec<BoundHit>) {
        let roots: Vec<usize> = match self.root_of(path) {
            Some(i) => vec![i],
            None => (0..self.roots.len()).filter(|&i| self.roots[i].path.starts_with(path)).collect(),
        };
        let mut out = Vec::new();
        let mut hits = Vec::new();
        for ri in roots {
            let root_path = self.roots[ri].path.clone();
            let start = if path.starts_with(&root_path) { path.to_path_buf() } else { root_path.clone() };
            let rel_start = start.strip_prefix(&root_path).map(Path::to_path_buf).unwrap_or_default();
            // A new scan supersedes an unfinished walk of the whole root, or of the same subtree.
            self.walks.retain(|w| w.root != root_path || (!rel_start.as_os_str().is_empty() && w.start != rel_start));
            let mut walk = Walk::new(rel_start.clone());
            let mut files = Vec::new();
            let pass = self.dirs.as_mut().map_or(0, |d| d.begin_pass(&root_path));
            let mut unwatched = 0;
            let stop =
                walk_batch(&self.roots[ri], self.dirs.as_mut(), &mut walk, batch, &mut files, pass, &mut unwatched);
            // What the inventory holds under the scanned subtree and this batch did not find
            // (compared by path relative to the root: no second copy of the batch's paths).
            let found: std::collections::HashSet<&Path> = files.iter().map(PathBuf::as_path).collect();
            let not_found = self
                .inventory
                .range(start.clone())
                .take_while(|(p, _)| p.starts_with(&start))
                .filter(|(p, _)| !p.strip_prefix(&root_path).is_ok_and(|rel| found.contains(rel)))
                .map(|(p, _)| p.clone());
            match stop {
                None => {
                    if let Some(d) = self.dirs.as_mut() {
                        d.end_pass(&root_path, pass, walk.whole_root, unwatched);
                    }
                    // Only a walk done in one batch has seen all of the subtree: forget the rest.
                    let gone: Vec<PathBuf> = not_found.collect();
                    for p in gone {
                        self.inventory.remove(&p);
                    }
                    if walk.whole_root {
                        self.over_bound.remove(&root_path);
                    }
                }
                Some(stop) => {
                    let unseen = not_found.collect();
                    let hit = BoundHit::new(&root_path, stop, batch);
                    self.over_bound.insert(root_path.clone(), hit.bound.clone());
                    hits.push(hit);
                    self.walks.push(PendingWalk {
                        root: root_path.clone(),
                        start: rel_start,
                        walk,
                        unseen,
                        pass,
                        unwatched,
                    });
                }
            }
            out.extend(files.into_iter().map(|rel| (ri, rel)));
        }
        (out, hits)
    }

    /// Whether a walk stopped at the bound waits to be continued.
    pub fn has_pending_walks(&self) -> bool {
        !self.walks.is_empty()
    }

    /// Whether a whole pass over `root` stopped at the bound and is being continued.
    pub fn walking(&self, root: &Path) -> bool {
        self.walks.iter().any(|w| w.root == root && w.walk.whole_root)
    }

    /// Continues the walks that stopped at the bound, one batch each.
    pub fn continue_walks(&mut self, batch: Batch) -> (Vec<(usize, PathBuf)>, Vec<BoundHit>) {
        let mut out = Vec::new();
        let mut hits = Vec::new();
        for PendingWalk { root: root_path, start, mut walk, mut unseen, pass, mut unwatched } in
            std::mem::take(&mut self.walks)
        {
            let Some(ri) = self.roots.iter().position(|r| r.path == root_path) else { continue };
            let mut files = Vec::new();
            let stop =
                walk_batch(&self.roots[ri], self.dirs.as_mut(), &mut walk, batch, &mut files, pass, &mut unwatched);
            if stop.is_none() {
                if let Some(d) = self.dirs.as_mut() {
                    d.end_pass(&root_path, pass, walk.whole_root, unwatched);
                }
            }
            for f in &files {
                unseen.remove(&root_path.join(f));
            }
            match stop {
                None => {
                    // What the inventory held when the walk began and no batch found has vanished.
                    for p in unseen {
                        self.inventory.remove(&p);
                    }
                }
                Some(stop) => {
                    hits.push(BoundHit::new(&root_path, stop, batch));
                    self.walks.push(PendingWalk { root: root_path, start, walk, unseen, pass, unwatched });
                }
            }
            out.extend(files.into_iter().map(|rel| (ri, rel)));
        }
        (out, hits)
    }

    pub fn root_paths(&self) -> Vec<PathBuf> {
        self.roots.iter().map(|r| r.path.clone()).collect()
    }
}

impl Source for Folders {
    fn hint(&self, ev: &notify::Event) -> Vec<Hint> {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
        if ev.need_rescan() || ev.paths.is_empty() {
            return vec![Hint::RescanAll];
        }
        let structural =
            matches!(ev.kind, EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)));
        let mut hints = Vec::new();
        for path in &ev.paths {
            let root = self.root_of(path);
            if structural
                && root.is_none()
                && self.anchors.iter().any(|a| path.parent() == Some(a.as_path()) || path == a)
            {
                hints.push(Hint::RefreshRoots);
                continue;
            }
            let Some(ri) = root else { continue };
            // Activity in a watched directory whose child is beyond the watch bound: the scan
            // fallback looks soon (writes excepted: a download in progress is not a reason).
            if !matches!(ev.kind, EventKind::Modify(ModifyKind::Data(_)) | EventKind::Access(_))
                && path
                    .parent()
                    .zip(self.dirs.as_ref())
                    .is_some_and(|(parent, d)| d.is_frontier(&self.roots[ri].path, parent))
            {
                hints.push(Hint::Fallback);
            }
            match ev.kind {
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                    hints.push(Hint::Gone(path.clone()));
                    if path == &self.roots[ri].path {
                        hints.push(Hint::RefreshRoots);
                    }
                }
                EventKind::Create(_)
                | EventKind::Modify(ModifyKind::Name(_))
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Metadata(_)) => hints.push(Hint::Path(path.clone())),
                _ => {}
            }
        }
        hints
    }

    fn status(&self, out: &mut Vec<SourceStatus>, reasons: &mut Vec<String>) {
        self.inventory.reasons(reasons);
        for (root, bound) in &self.over_bound {
            let state = if self.walks.iter().any(|w| &w.root == root) { "continuing" } else { "continued" };
            reasons.push(format!(
                "scan of {} stopped at the bound of {bound} per scan ({state} where it stopped)",
                root.display()
            ));
        }
        for r in &self.roots {
            let watch = match &self.dirs {
                Some(d) => {
                    let (watch, reason) = d.state(&r.path, self.fallback_interval);
                    reasons.extend(reason);
                    watch
                }
                None => {
                    reasons.push(format!("watch of {} {}", r.path.display(), r.watch));
                    r.watch.clone()
                }
            };
            out.push(SourceStatus {
                kind: r.kind.to_string(),
                path: r.path.display().to_string(),
                apps_seen: self.inventory.in_root(&r.path),
                watch,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(root: &Path) -> Item {
        Item {
            root: root.to_path_buf(),
            app: App::new(Kind::Appimage, "x"),
            verdict: None,
            id: FileId { dev: 0, ino: 0 },
            size: 0,
            audited: false,
            unhashed: None,
            stamp: None,
            uid: 0,
        }
    }

    /// A file that vanished without an event (an overflow, say) is forgotten by the pass that
    /// no longer finds it, also when that pass takes several batches.
    #[test]
    fn a_walk_over_several_batches_forgets_what_vanished() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        // Five directories of two files each.
        for d in 0..5 {
            std::fs::create_dir_all(root.join(format!("d{d}"))).unwrap();
            for i in 0..2 {
                std::fs::write(root.join(format!("d{d}/f{i}")), "x").unwrap();
            }
        }
        let mut f = Folders::default();
        f.roots.push(Root {
            kind: Kind::Appimage,
            path: root.clone(),
            fd: safefs::open_root(&root).unwrap(),
            watch: "inotify".into(),
        });
        let (kept, gone) = (root.join("d3/f1"), root.join("d4/vanished"));
        f.inventory.insert(kept.clone(), item(&root));
        f.inventory.insert(gone.clone(), item(&root));
        let batch = Batch { entries: 3, path_bytes: usize::MAX };
        let (mut files, hits) = f.list(&root, batch);
        assert!(!hits.is_empty() && f.has_pending_walks(), "the bound of 3 entries stops the first batch");
        let mut batches = 1;
        while f.has_pending_walks() {
            files.extend(f.continue_walks(batch).0);
            batches += 1;
        }
        assert!(batches > 2, "{batches} batches");
        assert_eq!(files.len(), 10, "every file listed once: {files:?}");
        assert!(f.inventory.get(&kept).is_some(), "a file still there is kept");
        assert!(f.inventory.get(&gone).is_none(), "a file that vanished is forgotten");
    }
}
