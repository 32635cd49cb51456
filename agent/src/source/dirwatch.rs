//! The install folders' inotify watches, one per directory, under a budget (issue 10, finding 9).
//!
//! notify's recursive mode adds a watch for every directory beneath a root with no limit, and
//! every watch the root daemon holds counts against root's `fs.inotify.max_user_watches`: one
//! user's tree of directories could use them all, so that other root services (and we) could
//! add none. Here the agent adds the watches itself, while it walks a root: each directory is
//! watched (through its opened fd, `/proc/self/fd/N`, so a rename or symlink swap cannot point
//! the watch elsewhere) before it is listed, so nothing created in it after the listing goes
//! unseen. A directory is watched only if its parent is, and only within three bounds:
//! watches per root, watches on directories of one owner (uid), and a fixed share of the
//! kernel's `max_user_watches` for all of them. A directory beyond a bound is not watched; its
//! subtree is covered by the scan fallback (the core loop rescans a degraded root on a
//! schedule, and soon after activity in a watched directory with an unwatched child), and
//! `status` names the root, the owner and how many directories are unwatched. A pass over a
//! root that finds everything within the bounds again restores the watches and clears it.
//!
//! The events are read on one thread, blocked in `poll` while nothing happens (no wake-up),
//! and translated into `notify::Event`s exactly as notify's inotify backend names them, so the
//! sources' hints do not change. This module only watches; it never opens files beneath a root
//! itself (the walk hands it each directory's fd).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, EventKind, Flag, MetadataKind, ModifyKind};
use notify::event::{RemoveKind, RenameMode};
use rustix::fs::inotify::{self, ReadFlags, WatchFlags};
use tokio::sync::mpsc;

use crate::safefs::{FileId, Meta};

/// The default bound on watches per watched folder (root).
pub const DEFAULT_MAX_WATCHES_PER_ROOT: usize = 8192;
/// The default bound on watches on directories owned by one uid, over all roots.
pub const DEFAULT_MAX_WATCHES_PER_UID: usize = 16384;
/// The default interval of the scan fallback for roots with unwatched directories.
pub const DEFAULT_FALLBACK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// The agent's folder watches never exceed `max_user_watches / KERNEL_SHARE` (a quarter of
/// what the kernel lets all of root's processes hold), whatever the configured bounds say.
pub const KERNEL_SHARE: usize = 4;
/// `max_user_watches` when it cannot be read (the kernel's historic default).
const KERNEL_FALLBACK_MAX: usize = 8192;

/// What a watched folder directory is told to report. No opens, reads or non-writing closes:
/// the agent's own reads of the files it identifies must not come back as events.
fn mask() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::MODIFY
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::ATTRIB
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
        | WatchFlags::EXCL_UNLINK
}

/// The bounds on watches (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_root: usize,
    pub per_uid: usize,
    /// `max_user_watches / KERNEL_SHARE`, read at start.
    pub total: usize,
    /// The kernel's `max_user_watches` it was derived from.
    pub kernel_max: usize,
}

impl Limits {
    /// The configured bounds with the kernel's share read now.
    pub fn new(per_root: usize, per_uid: usize) -> Self {
        let kernel_max = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(KERNEL_FALLBACK_MAX);
        Self { per_root, per_uid, total: (kernel_max / KERNEL_SHARE).max(1), kernel_max }
    }
}

/// Which bound refused a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    PerRoot(usize),
    PerUid(usize),
    /// The agent's share of `max_user_watches` (limit, the kernel's value).
    Share(usize, usize),
    /// The kernel refused (`ENOSPC`: root's other processes hold the rest).
    Kernel(String),
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bound::PerRoot(n) => write!(f, "max_watches_per_root = {n}"),
            Bound::PerUid(n) => write!(f, "max_watches_per_uid = {n}"),
            Bound::Share(n, k) => write!(f, "{n} watches, 1/{KERNEL_SHARE} of fs.inotify.max_user_watches = {k}"),
            Bound::Kernel(e) => write!(f, "the kernel refused a watch ({e})"),
        }
    }
}

impl Bound {
    /// The bound's name in the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            Bound::PerRoot(_) => "watches per root",
            Bound::PerUid(_) => "watches per uid",
            Bound::Share(..) => "share of max_user_watches",
            Bound::Kernel(_) => "kernel watch limit",
        }
    }

    pub fn limit(&self) -> usize {
        match self {
            Bound::PerRoot(n) | Bound::PerUid(n) | Bound::Share(n, _) => *n,
            Bound::Kernel(_) => 0,
        }
    }
}

/// A root reached a bound (once per degradation, for the audit log).
#[derive(Debug, Clone)]
pub struct BoundNote {
    pub root: PathBuf,
    /// The owner of the first directory refused.
    pub uid: u32,
    pub bound: Bound,
}

struct Watched {
    wd: i32,
    uid: u32,
    id: FileId,
    /// The root's pass that last saw it (a whole pass forgets what it did not see).
    pass: u64,
}

#[derive(Default)]
struct RootWatch {
    /// Watched directories (full paths; a directory's descendants sort right after it).
    dirs: BTreeMap<PathBuf, Watched>,
    /// Watched directories with an unwatched child directory, by the pass that saw it.
    frontier: BTreeMap<PathBuf, u64>,
    /// Directories not watched, as of the last pass.
    unwatched: usize,
    /// The bound that refused the last directory refused, and its owner.
    bound: Option<(Bound, u32)>,
    /// Whether the audit log has this degradation already.
    reported: bool,
    pass: u64,
}

/// The wd → directory map the reader thread translates events with.
type Paths = Arc<Mutex<HashMap<i32, PathBuf>>>;

pub struct DirWatch {
    inotify: Arc<OwnedFd>,
    paths: Paths,
    /// Written on drop: wakes the reader thread, which then exits.
    stop: Arc<OwnedFd>,
    pub limits: Limits,
    roots: BTreeMap<PathBuf, RootWatch>,
    per_uid: HashMap<u32, usize>,
    total: usize,
    notes: Vec<BoundNote>,
}

impl DirWatch {
    /// Starts the inotify instance and its reader thread; events go to `events`.
    pub fn start(
        limits: Limits,
        events: mpsc::UnboundedSender<notify::Result<notify::Event>>,
    ) -> std::io::Result<Self> {
        let inotify = Arc::new(inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?);
        let stop = Arc::new(rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?);
        let paths: Paths = Arc::default();
        let (fd, wake, map) = (inotify.clone(), stop.clone(), paths.clone());
        std::thread::Builder::new()
            .name("embargo-inotify".into())
            .spawn(move || read_events(&fd, &wake, &map, &events))?;
        Ok(Self {
            inotify,
            paths,
            stop,
            limits,
            roots: BTreeMap::new(),
            per_uid: HashMap::new(),
            total: 0,
            notes: Vec::new(),
        })
    }

    /// Watches held now (all roots).
    pub fn count(&self) -> usize {
        self.total
    }

    /// Forgets a root that is no longer watched (its watches are removed).
    pub fn drop_root(&mut self, root: &Path) {
        self.unwatch_under(root);
        self.roots.remove(root);
    }

    /// Starts a pass (a walk) over `root`; returns its number, handed to [`Self::visit`] and
    /// [`Self::end_pass`].
    pub fn begin_pass(&mut self, root: &Path) -> u64 {
        let r = self.roots.entry(root.to_path_buf()).or_default();
        r.pass += 1;
        r.pass
    }

    /// A directory the walk of `root` is about to list (its fd, opened beneath the root):
    /// watched, if its parent is (or it is the root) and the bounds allow. Returns whether it
    /// is watched.
    pub fn visit(&mut self, root: &Path, dir: &Path, fd: &OwnedFd, m: &Meta, pass: u64) -> bool {
        let Some(r) = self.roots.get_mut(root) else { return false };
        if let Some(w) = r.dirs.get_mut(dir) {
            if w.id == m.id {
                w.pass = w.pass.max(pass);
                if w.uid != m.uid {
                    // Chowned since it was watched: its watch counts for its new owner now.
                    let old = std::mem::replace(&mut w.uid, m.uid);
                    if let Some(n) = self.per_uid.get_mut(&old) {
                        *n -= 1;
                    }
                    self.per_uid.retain(|_, n| *n > 0);
                    *self.per_uid.entry(m.uid).or_default() += 1;
                }
                return true;
            }
        }
        // Another directory at this path now (replaced while events were lost): its old watch
        // goes first.
        if r.dirs.contains_key(dir) {
            self.unwatch_one(root, dir);
        }
        let Some(r) = self.roots.get_mut(root) else { return false };
        let parent = dir.parent().filter(|_| dir != root);
        if let Some(p) = parent {
            if !r.dirs.contains_key(p) {
                // Watched directories stay closed upward: a subtree below an unwatched
                // directory is the fallback's, whole.
                return false;
            }
        }
        let uid_count = self.per_uid.get(&m.uid).copied().unwrap_or(0);
        let refused = if r.dirs.len() >= self.limits.per_root {
            Some(Bound::PerRoot(self.limits.per_root))
        } else if uid_count >= self.limits.per_uid {
            Some(Bound::PerUid(self.limits.per_uid))
        } else if self.total >= self.limits.total {
            Some(Bound::Share(self.limits.total, self.limits.kernel_max))
        } else {
            None
        };
        let refused = match refused {
            Some(b) => Some(b),
            None => {
                // The fd's own inode, whatever its path has become meanwhile.
                let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
                // Holding the map across the call: an event for the new wd waits for its path.
                let mut paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
                match inotify::add_watch(self.inotify.as_fd(), proc.as_str(), mask()) {
                    Ok(wd) => {
                        paths.insert(wd, dir.to_path_buf());
                        r.dirs.insert(dir.to_path_buf(), Watched { wd, uid: m.uid, id: m.id, pass });
                        *self.per_uid.entry(m.uid).or_default() += 1;
                        self.total += 1;
                        None
                    }
                    Err(rustix::io::Errno::NOSPC) => Some(Bound::Kernel("fs.inotify.max_user_watches reached".into())),
                    Err(e) => {
                        // Gone meanwhile, or not a directory any more: nothing to watch.
                        tracing::debug!(path = %dir.display(), error = %e, "cannot watch");
                        return false;
                    }
                }
            }
        };
        let Some(bound) = refused else { return true };
        if let Some(p) = parent {
            r.frontier.insert(p.to_path_buf(), pass);
        }
        if !r.reported {
            r.reported = true;
            tracing::warn!(root = %root.display(), uid = m.uid, %bound, "watch bound reached: directories beyond it are covered by the scan fallback");
            self.notes.push(BoundNote { root: root.to_path_buf(), uid: m.uid, bound: bound.clone() });
        }
        r.bound = Some((bound, m.uid));
        false
    }

    /// The end of a pass that refused `unwatched` directories. A whole-root pass that is
    /// complete knows the root: what it did not see is unwatched (vanished), and if nothing was
    /// refused the degradation clears. A partial pass only adds what it found.
    pub fn end_pass(&mut self, root: &Path, pass: u64, whole: bool, unwatched: usize) {
        let Some(r) = self.roots.get_mut(root) else { return };
        if !whole {
            r.unwatched = r.unwatched.max(unwatched);
            return;
        }
        r.unwatched = unwatched;
        r.frontier.retain(|_, p| *p >= pass);
        let stale: Vec<PathBuf> = r.dirs.iter().filter(|(_, w)| w.pass < pass).map(|(p, _)| p.clone()).collect();
        for p in stale {
            self.unwatch_one(root, &p);
        }
        let Some(r) = self.roots.get_mut(root) else { return };
        if unwatched == 0 {
            if r.reported {
                tracing::info!(root = %root.display(), watches = r.dirs.len(), "every directory is watched again: the watch bound no longer applies");
            }
            r.reported = false;
            r.bound = None;
        }
    }

    /// Removes the watches on `path` and beneath it (gone, or renamed away).
    pub fn unwatch_under(&mut self, path: &Path) {
        let roots: Vec<PathBuf> =
            self.roots.keys().filter(|r| path.starts_with(r) || r.starts_with(path)).cloned().collect();
        for root in roots {
            let under: Vec<PathBuf> = match self.roots.get(&root) {
                Some(r) => r
                    .dirs
                    .range(path.to_path_buf()..)
                    .take_while(|(p, _)| p.starts_with(path))
                    .map(|(p, _)| p.clone())
                    .collect(),
                None => continue,
            };
            for p in under {
                self.unwatch_one(&root, &p);
            }
            if let Some(r) = self.roots.get_mut(&root) {
                let gone: Vec<PathBuf> = r
                    .frontier
                    .range(path.to_path_buf()..)
                    .take_while(|(p, _)| p.starts_with(path))
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in gone {
                    r.frontier.remove(&p);
                }
            }
        }
    }

    fn unwatch_one(&mut self, root: &Path, dir: &Path) {
        let Some(w) = self.roots.get_mut(root).and_then(|r| r.dirs.remove(dir)) else { return };
        self.paths.lock().unwrap_or_else(|e| e.into_inner()).remove(&w.wd);
        // EINVAL: the kernel dropped it already (the directory was deleted).
        let _ = inotify::remove_watch(self.inotify.as_fd(), w.wd);
        self.total -= 1;
        if let Some(n) = self.per_uid.get_mut(&w.uid) {
            *n -= 1;
            if *n == 0 {
                self.per_uid.remove(&w.uid);
            }
        }
    }

    /// Whether `dir` is watched and has an unwatched child directory (activity in it means the
    /// fallback should look soon).
    pub fn is_frontier(&self, root: &Path, dir: &Path) -> bool {
        self.roots.get(root).is_some_and(|r| r.frontier.contains_key(dir))
    }

    /// Directories of `root` not watched, as of its last pass.
    pub fn unwatched(&self, root: &Path) -> usize {
        self.roots.get(root).map_or(0, |r| r.unwatched)
    }

    /// Roots with unwatched directories (the fallback rescans them).
    pub fn degraded_roots(&self) -> Vec<PathBuf> {
        self.roots.iter().filter(|(_, r)| r.unwatched > 0 || r.bound.is_some()).map(|(p, _)| p.clone()).collect()
    }

    /// The bounds reached since the last call (each once per degradation of a root).
    pub fn take_notes(&mut self) -> Vec<BoundNote> {
        std::mem::take(&mut self.notes)
    }

    /// The `watch` column of a root in `status`, and the degradation reason, if any.
    pub fn state(&self, root: &Path, fallback: std::time::Duration) -> (String, Option<String>) {
        let Some(r) = self.roots.get(root) else { return ("inotify".into(), None) };
        match &r.bound {
            None if r.unwatched == 0 => (format!("inotify ({} directories)", r.dirs.len()), None),
            bound => {
                let (why, uid) = match bound {
                    Some((b, uid)) => (b.to_string(), uid.to_string()),
                    None => ("a watch bound".into(), "?".into()),
                };
                let text = format!(
                    "watches of {} at the bound ({why}; directories of uid {uid}): {} directories unwatched, {} watched; the unwatched ones are rescanned every {}",
                    root.display(),
                    r.unwatched.max(1),
                    r.dirs.len(),
                    humantime::format_duration(fallback)
                );
                (format!("inotify, degraded: {} directories unwatched", r.unwatched.max(1)), Some(text))
            }
        }
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        // Wakes the reader, which exits and closes the inotify fd with the last Arc.
        let _ = rustix::io::write(self.stop.as_fd(), &1u64.to_ne_bytes());
    }
}

/// The reader thread: blocked in `poll` until inotify has events or the watcher is dropped.
fn read_events(
    inotify: &OwnedFd,
    stop: &OwnedFd,
    paths: &Mutex<HashMap<i32, PathBuf>>,
    events: &mpsc::UnboundedSender<notify::Result<notify::Event>>,
) {
    use rustix::event::{PollFd, PollFlags};
    let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 64 * 1024];
    loop {
        let mut fds = [PollFd::new(inotify, PollFlags::IN), PollFd::new(stop, PollFlags::IN)];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                let _ = events.send(Err(notify::Error::io(e.into())));
                return;
            }
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        let mut reader = inotify::Reader::new(inotify, &mut buf);
        loop {
            let ev = match reader.next() {
                Ok(ev) => ev,
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => break,
                Err(e) => {
                    let _ = events.send(Err(notify::Error::io(e.into())));
                    break;
                }
            };
            let flags = ev.events();
            if flags.intersects(ReadFlags::QUEUE_OVERFLOW | ReadFlags::UNMOUNT) {
                // Events were lost (or a filesystem went away): the loop rescans everything.
                if events.send(Ok(notify::Event::new(EventKind::Other).set_flag(Flag::Rescan))).is_err() {
                    return;
                }
                continue;
            }
            let path = {
                let mut map = paths.lock().unwrap_or_else(|e| e.into_inner());
                if flags.contains(ReadFlags::IGNORED) {
                    // The kernel dropped the watch (its directory was deleted).
                    map.remove(&ev.wd());
                    continue;
                }
                let Some(dir) = map.get(&ev.wd()) else { continue };
                match ev.file_name() {
                    Some(name) if !name.to_bytes().is_empty() => dir.join(std::ffi::OsStr::from_bytes(name.to_bytes())),
                    _ => dir.clone(),
                }
            };
            for kind in kinds(flags) {
                if events.send(Ok(notify::Event::new(kind).add_path(path.clone()))).is_err() {
                    return;
                }
            }
        }
    }
}

/// What one inotify event is, in notify's names (as its inotify backend translates them, so
/// the sources read our events exactly as they read notify's).
fn kinds(f: ReadFlags) -> Vec<EventKind> {
    let dir = f.contains(ReadFlags::ISDIR);
    let mut out = Vec::new();
    if f.contains(ReadFlags::MOVED_FROM) {
        out.push(EventKind::Modify(ModifyKind::Name(RenameMode::From)));
    } else if f.contains(ReadFlags::MOVED_TO) {
        out.push(EventKind::Modify(ModifyKind::Name(RenameMode::To)));
    }
    if f.contains(ReadFlags::MOVE_SELF) {
        out.push(EventKind::Modify(ModifyKind::Name(RenameMode::From)));
    }
    if f.contains(ReadFlags::CREATE) {
        out.push(EventKind::Create(if dir { CreateKind::Folder } else { CreateKind::File }));
    }
    if f.contains(ReadFlags::DELETE) {
        out.push(EventKind::Remove(if dir { RemoveKind::Folder } else { RemoveKind::File }));
    }
    if f.contains(ReadFlags::DELETE_SELF) {
        out.push(EventKind::Remove(RemoveKind::Folder));
    }
    if f.contains(ReadFlags::MODIFY) {
        out.push(EventKind::Modify(ModifyKind::Data(DataChange::Any)));
    }
    if f.contains(ReadFlags::CLOSE_WRITE) {
        out.push(EventKind::Access(AccessKind::Close(AccessMode::Write)));
    }
    if f.contains(ReadFlags::ATTRIB) {
        out.push(EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_meta(p: &Path) -> (OwnedFd, Meta) {
        let fd = crate::safefs::open_root(p).unwrap();
        let m = crate::safefs::meta(&fd).unwrap();
        (fd, m)
    }

    /// The bound per root refuses directories past it, closed upward; the note is written once;
    /// a whole pass without refusals clears it and the count follows removals.
    #[tokio::test]
    async fn the_bound_per_root_is_kept_and_cleared() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        for i in 0..5 {
            std::fs::create_dir_all(root.join(format!("d{i}/sub"))).unwrap();
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let limits = Limits { per_root: 4, per_uid: 100, total: 100, kernel_max: 400 };
        let mut w = DirWatch::start(limits, tx).unwrap();
        let pass = w.begin_pass(&root);
        let mut dirs = vec![root.clone()];
        for i in 0..5 {
            dirs.push(root.join(format!("d{i}")));
            dirs.push(root.join(format!("d{i}/sub")));
        }
        let mut refused = 0;
        for d in &dirs {
            let (fd, m) = dir_meta(d);
            if !w.visit(&root, d, &fd, &m, pass) {
                refused += 1;
            }
        }
        w.end_pass(&root, pass, true, refused);
        assert_eq!(w.count(), 4, "at most the bound per root");
        assert_eq!(refused, 7);
        assert_eq!(w.take_notes().len(), 1, "one note for the degradation");
        assert_eq!(w.degraded_roots(), vec![root.clone()]);
        assert!(w.is_frontier(&root, &root.join("d1")), "d1 is watched, its sub is not");
        // An event from a watched directory arrives with its path.
        std::fs::write(root.join("d0/new"), b"x").unwrap();
        let ev = rx.recv().await.unwrap().unwrap();
        assert_eq!(ev.paths, vec![root.join("d0/new")]);
        // The tree shrinks: the next whole pass watches everything and clears the degradation.
        for i in 1..5 {
            std::fs::remove_dir_all(root.join(format!("d{i}"))).unwrap();
        }
        w.unwatch_under(&root.join("d1"));
        let pass = w.begin_pass(&root);
        let mut refused = 0;
        for d in [root.clone(), root.join("d0"), root.join("d0/sub")] {
            let (fd, m) = dir_meta(&d);
            if !w.visit(&root, &d, &fd, &m, pass) {
                refused += 1;
            }
        }
        w.end_pass(&root, pass, true, refused);
        assert_eq!(refused, 0);
        assert_eq!(w.count(), 3, "the vanished directories' watches are gone");
        assert!(w.degraded_roots().is_empty());
        assert!(w.state(&root, DEFAULT_FALLBACK_INTERVAL).1.is_none());
    }

    /// A kernel queue overflow (`IN_Q_OVERFLOW`) reaches the loop as notify's rescan event (the
    /// folders source turns it into a rescan of everything). The overflow is made deterministic
    /// by holding the wd table, which the reader needs for every event, while the queue fills.
    #[tokio::test]
    async fn an_overflow_becomes_a_rescan_event() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut w = DirWatch::start(Limits { per_root: 10, per_uid: 10, total: 10, kernel_max: 40 }, tx).unwrap();
        let pass = w.begin_pass(&root);
        let (fd, m) = dir_meta(&root);
        assert!(w.visit(&root, &root, &fd, &m, pass));
        let queue: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(16384);
        {
            let _held = w.paths.lock().unwrap();
            // Each creation queues a CREATE and a CLOSE_WRITE. The reader may already hold one
            // read buffer of events (blocked on the table), which frees that much of the queue:
            // overfill by far more than any buffer.
            for i in 0..queue / 2 + 4096 {
                std::fs::File::create(root.join(format!("f{i}"))).unwrap();
            }
        }
        let rescan = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                match rx.recv().await {
                    Some(Ok(ev)) if ev.need_rescan() => return ev,
                    Some(_) => {}
                    None => panic!("the reader stopped"),
                }
            }
        })
        .await
        .expect("a rescan event after the overflow");
        assert!(rescan.paths.is_empty());
    }

    /// The bound per uid counts one owner's directories only: another owner's are still watched,
    /// and the status reason names the owner refused.
    #[tokio::test]
    async fn the_bound_per_uid_spares_other_owners() {
        if !crate::testutil::root_or_skip("needs root to chown") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        for d in ["u/a", "u/b", "u/c", "r/x"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for d in ["u", "u/a", "u/b", "u/c"] {
            std::os::unix::fs::chown(root.join(d), Some(65534), Some(65534)).unwrap();
        }
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut w = DirWatch::start(Limits { per_root: 100, per_uid: 3, total: 100, kernel_max: 400 }, tx).unwrap();
        let pass = w.begin_pass(&root);
        let mut refused = Vec::new();
        for d in ["", "u", "u/a", "u/b", "u/c", "r", "r/x"] {
            let p = if d.is_empty() { root.clone() } else { root.join(d) };
            let (fd, m) = dir_meta(&p);
            if !w.visit(&root, &p, &fd, &m, pass) {
                refused.push(d);
            }
        }
        w.end_pass(&root, pass, true, refused.len());
        assert_eq!(refused, ["u/c"], "nobody's fourth directory only");
        assert_eq!(w.count(), 6);
        let reason = w.state(&root, DEFAULT_FALLBACK_INTERVAL).1.unwrap();
        assert!(reason.contains("max_watches_per_uid = 3") && reason.contains("uid 65534"), "{reason}");
        assert!(reason.contains("1 directories unwatched"), "{reason}");
        let notes = w.take_notes();
        assert_eq!((notes.len(), notes[0].uid, notes[0].bound.name()), (1, 65534, "watches per uid"));
    }
}
