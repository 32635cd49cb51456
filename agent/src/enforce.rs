//! The enforcement state the core loop owns, and its pipeline: for each app a source yields,
//! `decide` → `act` → `evidence`. Also the policy update with its action cap, and `confirm`.
//!
//! Architecture invariants:
//! - Only `act` moves files, kills processes or runs a package manager; this module calls it
//!   with a `Decision` and reports the result as an `AuditEvent`.
//! - A policy update whose acts (file quarantines and package removals together) exceed
//!   `max_actions_per_update` acts on none of them until `embargoctl confirm`; apps that arrive
//!   afterwards are decided as usual. The configured mode is never changed to hold actions back.
//!   The exec gate's kills of running banned processes count on top (`on_scan`): over the cap
//!   none is killed until `confirm`.
//! - The rule set in force is published (`rules_tx`) whenever it changes, so other threads
//!   decide with the same rules without waiting behind a rescan.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use embargo_policy::app::App;
use embargo_policy::matcher::{RuleSet, Verdict};
use embargo_policy::rules::Action;
use tokio::sync::{mpsc, oneshot, watch};

use crate::act::{self, quarantine::QuarantineStore};
use crate::config::{Config, Mode};
use crate::decide::{self, Decision, Input};
use crate::evidence::{AuditEvent, Evidence, Outcome};
use crate::proto::{self, ActionRecord, Response};
use crate::safefs::{self, FileId};
use crate::source::folders::{BoundHit, Folders, Item};
use crate::source::packages::{self, PackageOutcome, Packages};
use crate::source::{Hint, Source as _};

mod suspend;

/// Apps a policy update over the action cap holds back until `embargoctl confirm`.
#[derive(Default)]
pub struct Held {
    pub files: HashSet<PathBuf>,
    /// (package root, package name)
    pub packages: HashSet<(PathBuf, String)>,
    /// Files beyond the inventory bound the update would act on past the cap, counted in the
    /// pass that followed it (they have no entry to be held by; see [`Counting`]).
    pub beyond: usize,
    /// While set, a file beyond the inventory bound that the rules would act on and whose
    /// change time is not after this instant (it was there before the update) is held, not
    /// acted on, until `confirm`. A file renamed, written or created since has a later change
    /// time (users cannot set it back) and is acted on as any arrival.
    pub beyond_before: Option<(i64, i64)>,
    /// Running banned processes (the exec gate's scan), killed on `confirm` if they still run
    /// the judged executable.
    pub processes: Vec<crate::running::Target>,
}

/// The pass after a policy update, counting the acts on files beyond the inventory bound
/// against what is left of the action cap (issue 10, finding 8: such files were acted on
/// uncounted, past the cap).
struct Counting {
    /// Acts the cap still allows.
    left: usize,
    /// When the update took effect (wall clock, as file change times are).
    at: (i64, i64),
}

impl Held {
    pub fn len(&self) -> usize {
        self.files.len() + self.packages.len() + self.beyond + self.processes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What waits for a hash from the pool.
enum Pending {
    /// A decision that needs the hash.
    Decide { full: PathBuf, meta: safefs::Meta, stamp: crate::hashpool::Stamp, app: App, since: Instant },
    /// A file moved before it was hashed: its manifest and audit record wait for the hash.
    AfterMove { app: App, v: Verdict, m: Box<act::quarantine::Manifest>, full: PathBuf, elapsed: std::time::Duration },
}

pub struct Enforcer {
    pub(crate) cfg: Config,
    pub(crate) clock: Arc<dyn crate::clock::Clock>,
    pub(crate) rules: Arc<RuleSet>,
    rules_tx: watch::Sender<Arc<RuleSet>>,
    pub(crate) policy: proto::PolicyStatus,
    pub(crate) folders: Folders,
    pub(crate) packages: Packages,
    watcher: notify::RecommendedWatcher,
    pub(crate) store: QuarantineStore,
    pub(crate) evidence: Evidence,
    /// The exec gate, when `[exec] enabled` (its counters go into `status`; dropping the
    /// enforcer stops it).
    pub(crate) exec_gate: Option<crate::exec_gate::ExecGate>,
    /// The exec gate's protected set, refreshed after every package read.
    pub(crate) exec_protected: Option<crate::exec_wire::ProtectedPaths>,
    /// The fleet reporter's state (pending reports, last accepted), when `[report]` is set.
    pub reports: Option<Arc<std::sync::Mutex<crate::report::Shared>>>,
    pub(crate) held: Held,
    /// Content (sha256) an admin restored from quarantine; not acted on again under the same
    /// policy, across restarts (`exempt`).
    pub(crate) exempt: crate::exempt::Exemptions,
    /// Hashing off the loop: the pool, what waits for each of its results (by token), the
    /// newest token per path (older results for a path are stale), decide-jobs in flight, and
    /// paths waiting for a free slot.
    pool: crate::hashpool::HashPool,
    pending: HashMap<u64, Pending>,
    hashing: HashMap<PathBuf, u64>,
    in_flight: usize,
    backlog: VecDeque<PathBuf>,
    backlogged: HashSet<PathBuf>,
    /// The quarantine store's manifests, in memory, so `status`, `quarantine list` and the
    /// uid filter never read the whole store on the loop (issue 10, finding 11). Read once at
    /// start; kept in step by every change the agent makes to the store.
    pub(crate) qindex: std::collections::BTreeMap<String, act::quarantine::Manifest>,
    /// Owners whose quarantine quota was hit (`quota`; status names them).
    pub(crate) quota_hits: crate::quota::QuotaHits,
    /// Paths dropped because the backlog was full (status shows it until it drains).
    pub(crate) backlog_dropped: u64,
    self_exe: Option<FileId>,
    pub(crate) started: Instant,
    pub(crate) sync_tx: mpsc::Sender<crate::sync::Command>,
    /// Replies to `sync` requests waiting for the sync task.
    pub(crate) sync_waiters: Vec<oneshot::Sender<Response>>,
    /// When to retry removals that wait for a package-manager lock (no timer otherwise).
    pub(crate) retry_at: Option<tokio::time::Instant>,
    /// When the scan fallback next rescans roots with unwatched directories (`fallback`;
    /// `None` while every directory is watched: no timer).
    pub(crate) fallback_at: Option<tokio::time::Instant>,
    retry_attempts: u32,
    /// Package reads and removals run here, off the loop; results come back through
    /// `package_results` (taken by the loop, which wraps them in its `Event`).
    package_worker: crate::worker::Worker<packages::Done>,
    package_results: Option<mpsc::UnboundedReceiver<packages::Done>>,
    /// A policy update waiting for package reads in flight, so that its action cap counts the
    /// packages as they are now (set at the time of the update).
    pending_update: Option<Instant>,
    /// The pass after a policy update, while it counts files beyond the inventory bound.
    counting: Option<Counting>,
    /// The last policy update's acts: its rule set, the files and packages it acts on (or
    /// holds), and whether it was held; the running-process scan of that rule set counts its
    /// kills on top (`on_scan`).
    last_update: Option<(Arc<RuleSet>, usize, usize, bool)>,
    /// A scan that arrived while its update still waited for package reads.
    pending_scan: Option<(Arc<RuleSet>, crate::running::Scan)>,
    /// The needs-admin packages (root, name, version, rule) whose files the exec gate denies.
    needs_admin: Vec<(PathBuf, String, String, String)>,
    /// The newest request to read their files (on the package worker); a result for an older
    /// one is dropped, and a job that starts after a newer request reads nothing.
    needs_admin_seq: Arc<std::sync::atomic::AtomicU64>,
}

impl Enforcer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Config,
        clock: Arc<dyn crate::clock::Clock>,
        rules_tx: watch::Sender<Arc<RuleSet>>,
        policy: proto::PolicyStatus,
        store: QuarantineStore,
        evidence: Evidence,
        fs_events: mpsc::UnboundedSender<notify::Result<notify::Event>>,
        sync_tx: mpsc::Sender<crate::sync::Command>,
    ) -> Result<Self, String> {
        let dir_events = fs_events.clone();
        let watcher = notify::recommended_watcher(move |res| {
            // Never block in the callback: the channel is unbounded, and bursts become rescans
            // downstream rather than losses here.
            let _ = fs_events.send(res);
        })
        .map_err(|e| format!("starting the filesystem watcher: {e}"))?;
        let self_exe = std::fs::metadata("/proc/self/exe").ok().map(|m| {
            use std::os::unix::fs::MetadataExt as _;
            FileId { dev: m.dev(), ino: m.ino() }
        });
        let rules = rules_tx.borrow().clone();
        let cfg_hash_cap = cfg.max_hash_bytes;
        let exempt = crate::exempt::Exemptions::load(&cfg.state_dir);
        let qindex = store.list().into_iter().map(|m| (m.id.clone(), m)).collect();
        let mut folders = Folders::default();
        folders.inventory.set_bound(cfg.max_inventory_entries);
        folders.inventory.set_byte_bound(cfg.max_inventory_bytes);
        folders.fallback_interval = cfg.watch_fallback_interval;
        folders.dirs = crate::fallback::start_dir_watch(&cfg, dir_events);
        // One thread: reads and removals of packages run in the order the loop submits them.
        let (package_worker, package_results) = crate::worker::Worker::spawn("embargo-packages", 1)
            .map_err(|e| format!("starting the package worker: {e}"))?;
        Ok(Self {
            cfg,
            clock,
            rules,
            rules_tx,
            policy,
            folders,
            packages: Packages::default(),
            watcher,
            store,
            evidence,
            exec_gate: None,
            exec_protected: None,
            last_update: None,
            pending_scan: None,
            needs_admin: Vec::new(),
            needs_admin_seq: Default::default(),
            reports: None,
            held: Held::default(),
            exempt,
            pool: crate::hashpool::HashPool::new(cfg_hash_cap)
                .map_err(|e| format!("starting the hash threads: {e}"))?,
            pending: HashMap::new(),
            hashing: HashMap::new(),
            in_flight: 0,
            backlog: VecDeque::new(),
            backlogged: HashSet::new(),
            backlog_dropped: 0,
            qindex,
            quota_hits: Default::default(),
            self_exe,
            started: Instant::now(),
            sync_tx,
            sync_waiters: Vec::new(),
            retry_at: None,
            fallback_at: None,
            retry_attempts: 0,
            package_worker,
            package_results: Some(package_results),
            pending_update: None,
            counting: None,
        })
    }

    /// Brings the roots in line with the watch patterns and scans the new ones.
    pub fn refresh_roots(&mut self) {
        self.refresh_package_roots();
        let new = self.folders.refresh(&self.cfg.watches, &mut self.watcher);
        for p in new {
            self.scan_path(&p, Instant::now());
        }
    }

    /// Opens and watches the package-manager roots (their database directories only).
    fn refresh_package_roots(&mut self) {
        use notify::Watcher as _;
        let wanted = self
            .cfg
            .watches
            .iter()
            .filter_map(|w| crate::source::package::manager_for(w.kind).map(|m| (m, w)))
            // `*` components (per-user installations) expand to the directories there now;
            // new ones are picked up at the next reconcile.
            .flat_map(|(m, w)| {
                w.patterns
                    .iter()
                    .flat_map(move |p| crate::source::folders::expand(p).0.into_iter().map(move |r| (m, r)))
            })
            .collect();
        for i in self.packages.open_new(wanted) {
            let r = &self.packages.roots[i];
            for dir in r.manager.watch_dirs(&r.root) {
                if let Err(e) = self.watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(path = %dir.display(), error = %e, "cannot watch the package database");
                }
            }
            self.read_packages(i);
        }
    }

    /// The receiving end of the package worker's results (taken once, by the loop).
    pub fn take_package_results(&mut self) -> Option<mpsc::UnboundedReceiver<packages::Done>> {
        self.package_results.take()
    }

    /// Handles the hints of one loop turn (already coalesced: one rescan for any number of
    /// overflows, each path once).
    pub fn on_hints(&mut self, hints: Vec<Hint>, since: Instant) {
        if hints.contains(&Hint::RescanAll) {
            tracing::info!("events were lost: rescanning everything");
            if hints.contains(&Hint::RefreshRoots) {
                self.refresh_roots();
            }
            self.rescan_all(since);
            let dbs: Vec<usize> = (0..self.packages.roots.len()).collect();
            for i in dbs {
                self.read_packages(i);
            }
            return;
        }
        for h in hints {
            match h {
                Hint::RescanAll => {}
                Hint::RefreshRoots => self.refresh_roots(),
                Hint::Database(i) => {
                    if let Some(r) = self.packages.roots.get(i) {
                        use notify::Watcher as _;
                        for dir in r.manager.transient_watch_dirs(&r.root) {
                            if let Err(e) = self.watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                                tracing::debug!(path = %dir.display(), error = %e, "cannot watch");
                            }
                        }
                    }
                    self.read_packages(i)
                }
                Hint::Gone(path) => self.folders.forget_under(&path),
                Hint::Fallback => self.fallback_soon(),
                Hint::Path(path) => match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => self.scan_path(&path, since),
                    Ok(m) if m.is_file() => {
                        if let Some(ri) = self.folders.root_of(&path) {
                            let rel = path
                                .strip_prefix(&self.folders.roots[ri].path)
                                .map(Path::to_path_buf)
                                .unwrap_or_default();
                            self.enforce_file(ri, rel, since);
                        }
                    }
                    _ => {}
                },
            }
        }
    }

    /// A write event: what is known of the files it names is stale (their next look identifies
    /// and hashes them again). A hash being taken meanwhile is checked against the file's
    /// stamp when it comes back (`on_hashed`).
    pub fn forget_written(&mut self, ev: &notify::Event) {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
        let written = matches!(
            ev.kind,
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Other)
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        if !written {
            return;
        }
        for p in &ev.paths {
            if let Some(it) = self.folders.inventory.get_mut(p) {
                it.stamp = None;
            }
        }
    }

    /// What the sources make of one filesystem event.
    pub fn hints_of(&self, ev: &notify::Event) -> Vec<Hint> {
        if crate::source::says_nothing(ev) && !ev.need_rescan() {
            return Vec::new();
        }
        let db = self.packages.hint(ev);
        if !db.is_empty() {
            return db;
        }
        self.folders.hint(ev)
    }

    pub fn rescan_all(&mut self, since: Instant) {
        for p in self.folders.root_paths() {
            self.scan_path(&p, since);
        }
    }

    /// Scans `path` (a root or anything beneath one) and enforces on every file found. A scan
    /// that reaches the bound on entries per scan is reported and continued in a later turn.
    pub fn scan_path(&mut self, path: &Path, since: Instant) {
        self.evidence.counters.rescans += 1;
        let (files, hits) = self.folders.list(path, self.scan_batch());
        self.enforce_listed(files, hits, since);
    }

    /// Whether a scan stopped at the bound waits to be continued.
    pub fn has_pending_scans(&self) -> bool {
        self.folders.has_pending_walks()
    }

    /// Continues the scans that stopped at the bound, one batch each.
    pub fn continue_scans(&mut self) {
        let (files, hits) = self.folders.continue_walks(self.scan_batch());
        self.enforce_listed(files, hits, Instant::now());
        self.end_counting_if_done();
    }

    /// Whether a file beyond the inventory bound that the rules would act on is held: during
    /// the pass after an update it uses up what is left of the cap, then it and every later
    /// one that was there before the update are held (counted once, in that pass).
    fn hold_beyond_bound(&mut self, ctime: (i64, i64)) -> bool {
        if let Some(c) = &mut self.counting {
            if ctime > c.at {
                return false;
            }
            if c.left > 0 && self.held.beyond_before.is_none() {
                c.left -= 1;
                return false;
            }
            self.held.beyond += 1;
            self.held.beyond_before = Some(c.at);
            return true;
        }
        self.held.beyond_before.is_some_and(|at| ctime <= at)
    }

    /// Ends the count of the pass after an update once its walks are done; if it held files
    /// beyond the inventory bound, the audit log says so with the update's full count.
    fn end_counting_if_done(&mut self) {
        if self.counting.is_none() || self.folders.has_pending_walks() {
            return;
        }
        self.counting = None;
        if self.held.beyond > 0 {
            tracing::warn!(
                apps = self.held.len(),
                beyond_bound = self.held.beyond,
                cap = self.cfg.max_actions_per_update,
                "policy update exceeds the action cap with files beyond the inventory bound: those are held (needs confirmation)"
            );
            self.evidence.emit(AuditEvent::NeedsConfirmation {
                apps: self.held.len(),
                files: self.held.files.len() + self.held.beyond,
                packages: self.held.packages.len(),
                processes: self.held.processes.len(),
                cap: self.cfg.max_actions_per_update,
            });
        }
    }

    /// One scan batch: at most `max_files_per_scan` entries and `max_scan_path_bytes` bytes of
    /// listed paths, so a scan holds one bounded batch of paths at a time (finding 8).
    fn scan_batch(&self) -> crate::source::walk::Batch {
        crate::source::walk::Batch { entries: self.cfg.max_files_per_scan, path_bytes: self.cfg.max_scan_path_bytes }
    }

    fn enforce_listed(&mut self, files: Vec<(usize, PathBuf)>, hits: Vec<BoundHit>, since: Instant) {
        for hit in hits {
            tracing::warn!(root = %hit.root.display(), bound = %hit.bound, "scan stopped at a bound of its batch; continuing where it stopped");
            self.evidence.emit(AuditEvent::ScanBound {
                root: hit.root.display().to_string(),
                entries: self.cfg.max_files_per_scan,
                reason: format!("{} ({})", hit.reason, hit.bound),
            });
        }
        for (ri, rel) in files {
            self.enforce_file(ri, rel, since);
        }
        self.after_watching();
    }

    fn input<'a>(&self, v: Option<&'a (Verdict, bool)>, hash_known: bool, exempt: bool, held: bool) -> Input<'a> {
        Input {
            verdict: v.map(|(v, _)| v),
            except_by_hash: v.is_some_and(|(_, e)| *e),
            hash_known,
            mode: self.cfg.mode,
            exempt,
            held,
            protected: None,
        }
    }

    /// The directory fd, its path and the name relative to it through which `rel` (beneath root
    /// `ri`) is opened and moved: the root itself, or — for a path longer than one resolution
    /// allows — its parent, opened in chunks beneath the root. `None`: the parent is gone.
    pub(crate) fn base_of(&self, ri: usize, rel: &Path) -> Option<(Option<rustix::fd::OwnedFd>, PathBuf, PathBuf)> {
        let root = &self.folders.roots[ri];
        if crate::source::walk::is_long(rel) {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let fd = crate::source::walk::open_long(
                &root.fd,
                parent,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            )
            .ok()?;
            Some((Some(fd), root.path.join(parent), PathBuf::from(rel.file_name().unwrap_or_default())))
        } else {
            Some((None, root.path.clone(), rel.to_path_buf()))
        }
    }

    /// Identifies one file beneath folder root `ri` and decides; a decision that needs the hash
    /// hands the opened file to the hash pool (the loop goes on; [`Self::on_hashed`] finishes),
    /// anything else is concluded at once.
    pub fn enforce_file(&mut self, ri: usize, rel: PathBuf, since: Instant) {
        if rel.as_os_str().is_empty() {
            return;
        }
        let full = self.folders.roots[ri].path.join(&rel);
        // A newer look at this path supersedes a hash still being taken of it.
        self.hashing.remove(&full);
        let Some((deep, base_path, base_rel)) = self.base_of(ri, &rel) else {
            self.folders.inventory.remove(&full);
            return;
        };
        let base_fd = match &deep {
            Some(fd) => fd.as_fd(),
            None => self.folders.roots[ri].fd.as_fd(),
        };
        let (mut file, meta) = match safefs::open_file_beneath(base_fd, &base_rel) {
            Ok(x) => x,
            Err(_) => {
                self.folders.inventory.remove(&full);
                return;
            }
        };
        if Some(meta.id) == self.self_exe {
            self.evidence.counters.protected_skipped += 1;
            return;
        }
        let stamp = match crate::hashpool::stamp(&file) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(path = %full.display(), error = %e, "cannot stat");
                return;
            }
        };
        // What is known of the file is reused only for the same inode, unchanged since (never
        // a hash across a write).
        let cached = self
            .folders
            .inventory
            .get(&full)
            .filter(|it| it.id == meta.id && it.size == meta.size && it.stamp == Some(stamp))
            .map(|it| it.app.clone());
        let kind = self.folders.roots[ri].kind;
        let app = match cached {
            Some(app) => app,
            None => match crate::identify::identify_unhashed(kind, &base_path, &base_rel, &mut file, &meta) {
                Ok(Some(app)) => {
                    self.evidence.counters.detected += 1;
                    app
                }
                Ok(None) => {
                    self.folders.inventory.remove(&full);
                    return;
                }
                Err(e) => {
                    tracing::warn!(path = %full.display(), error = %e, "cannot identify");
                    return;
                }
            },
        };
        let exempt = app.sha256.as_deref().is_some_and(|h| self.exempt.contains(h));
        let held = self.held.files.contains(&full);
        // Content an admin restored can only be recognised by its hash: a file of the same size
        // is hashed before a verdict acts on it.
        let lift = self.exempt.has_size(meta.size);
        let verdict = self.rules.verdict(&app).map(|v| (v.to_owned(), v.except_by_hash || lift));
        let decision = decide::decide(&self.input(verdict.as_ref(), app.sha256.is_some(), exempt, held));
        if decision != Decision::NeedHash {
            return self.conclude(full, file, meta, stamp, app, None, since);
        }
        if let Err(why) = crate::hashpool::over_cap(&file, self.pool.cap()) {
            return self.conclude(full, file, meta, stamp, app, Some(why), since);
        }
        if stamp.size <= crate::hashpool::INLINE_DECIDE_BYTES {
            let mut app = app;
            return match crate::hashpool::hash_capped(&mut file, self.pool.cap()) {
                Ok(sha) => {
                    app.sha256 = Some(sha);
                    self.conclude(full, file, meta, stamp, app, None, since)
                }
                Err(crate::hashpool::Unhashed::Changed) => {}
                Err(why) => self.conclude(full, file, meta, stamp, app, Some(why), since),
            };
        }
        if self.in_flight >= crate::hashpool::MAX_IN_FLIGHT {
            // The pool is busy: the path (not the open file) waits its turn, within a bound;
            // beyond it the next scan finds the file again.
            if self.backlog.len() >= crate::hashpool::MAX_BACKLOG {
                self.backlog_dropped += 1;
            } else if self.backlogged.insert(full.clone()) {
                self.backlog.push_back(full);
            }
            return;
        }
        let token = self.pool.submit(file);
        self.in_flight += 1;
        self.hashing.insert(full.clone(), token);
        self.pending.insert(token, Pending::Decide { full, meta, stamp, app, since });
    }

    /// The receiving end of the hash pool's results, for the loop (once).
    pub fn take_hash_results(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<crate::hashpool::Done>> {
        self.pool.take_results()
    }

    /// A hash (or why there is none) came back from the pool: finish what was waiting for it,
    /// then hand the pool the next file from the backlog.
    pub fn on_hashed(&mut self, done: crate::hashpool::Done) {
        use crate::hashpool::Unhashed;
        let Some(pending) = self.pending.remove(&done.token) else { return };
        match pending {
            Pending::Decide { full, meta, stamp, mut app, since } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                // Superseded by a newer look at the path (an event came in meanwhile).
                if self.hashing.get(&full) == Some(&done.token) {
                    self.hashing.remove(&full);
                    match done.result {
                        // Written to after the hash was taken: look again.
                        Ok(_) if crate::hashpool::stamp(&done.file).ok() != Some(stamp) => {
                            self.enforce_path(&full, since)
                        }
                        Ok(sha) => {
                            app.sha256 = Some(sha);
                            self.conclude(full, done.file, meta, stamp, app, None, since);
                        }
                        // Written to while it was read: look again, from the start.
                        Err(Unhashed::Changed) => self.enforce_path(&full, since),
                        Err(why) => self.conclude(full, done.file, meta, stamp, app, Some(why), since),
                    }
                }
            }
            Pending::AfterMove { mut app, v, mut m, full, elapsed } => {
                let sha = done.result.inspect(|sha| app.sha256 = Some(sha.clone()));
                self.finish_move(app, v, &mut m, full, elapsed, sha);
            }
        }
        if self.backlog.is_empty() && self.in_flight == 0 {
            self.backlog_dropped = 0;
        }
        while self.in_flight < crate::hashpool::MAX_IN_FLIGHT {
            let Some(next) = self.backlog.pop_front() else { break };
            self.backlogged.remove(&next);
            self.enforce_path(&next, Instant::now());
        }
    }

    /// [`Self::enforce_file`] by full path, if it is still beneath a root.
    fn enforce_path(&mut self, full: &Path, since: Instant) {
        if let Some(ri) = self.folders.root_of(full) {
            let rel = full.strip_prefix(&self.folders.roots[ri].path).map(Path::to_path_buf).unwrap_or_default();
            self.enforce_file(ri, rel, since);
        }
    }

    /// Decides with everything known of the file (its hash, or why there is none), records it
    /// in the inventory and acts. Without a hash, a verdict that needs none still acts, an
    /// `except` on sha256 cannot be shown to apply (so it lifts nothing), and a file that only a
    /// hash could judge stays, reported as unhashed.
    fn conclude(
        &mut self,
        full: PathBuf,
        mut file: std::fs::File,
        meta: safefs::Meta,
        stamp: crate::hashpool::Stamp,
        mut app: App,
        unhashed: Option<crate::hashpool::Unhashed>,
        since: Instant,
    ) {
        let Some(ri) = self.folders.root_of(&full) else { return };
        let rel = full.strip_prefix(&self.folders.roots[ri].path).map(Path::to_path_buf).unwrap_or_default();
        let exempt = app.sha256.as_deref().is_some_and(|h| self.exempt.contains(h));
        let held = self.held.files.contains(&full);
        let lift = self.exempt.has_size(meta.size);
        let verdict =
            self.rules.verdict(&app).map(|v| (v.to_owned(), (v.except_by_hash || lift) && unhashed.is_none()));
        let hash_known = app.sha256.is_some() || unhashed.is_some();
        let decision = decide::decide(&self.input(verdict.as_ref(), hash_known, exempt, held));
        let verdict = verdict.map(|(v, _)| v);
        let previous = self.folders.inventory.get(&full);
        let audited = previous.is_some_and(|it| it.audited && it.verdict == verdict);
        let unhashed = unhashed.map(|u| u.to_string());
        let reported = previous.is_some_and(|it| it.id == meta.id && it.unhashed.is_some() && it.unhashed == unhashed);
        if let (Some(why), false) = (&unhashed, reported) {
            tracing::warn!(path = %full.display(), reason = %why, "not hashed");
            self.evidence.emit(AuditEvent::Unhashed {
                path: full.display().to_string(),
                size: meta.size,
                reason: why.clone(),
                uid: Some(meta.uid),
            });
        }
        let root_path = self.folders.roots[ri].path.clone();
        let remembered = self.folders.inventory.insert(
            full.clone(),
            Item {
                root: root_path,
                app: app.clone(),
                verdict: verdict.clone(),
                id: meta.id,
                size: meta.size,
                audited,
                unhashed,
                stamp: Some(stamp),
                uid: meta.uid,
            },
        );
        for r in self.folders.inventory.take_reached() {
            tracing::warn!(of = %r.of, bound = %r.bound, "inventory bound reached: further files are enforced at each look but not remembered");
            self.evidence.emit(AuditEvent::InventoryBound { of: r.of, bound: r.bound });
        }
        let Some(v) = verdict else { return };
        // Beyond the inventory bound a file has no entry to be counted or held by: the pass
        // after a policy update counts it against the cap here (held past it, reported in one
        // audit event at the end of the pass, not one per file per look).
        if !remembered && matches!(decision, Decision::Act(_)) && self.hold_beyond_bound(stamp.ctime) {
            return;
        }
        let recorded_once = |this: &mut Self, action: &str, result: &str, outcome: Outcome| {
            if !audited {
                this.record(action, result, outcome, &v, &app, &full, Some(meta.uid), None, since.elapsed());
                if let Some(it) = this.folders.inventory.get_mut(&full) {
                    it.audited = true;
                }
            }
        };
        match decision {
            Decision::Allow | Decision::NeedHash => {}
            Decision::Audit => recorded_once(self, "audit", "recorded", Outcome::Recorded),
            Decision::Hold => {
                recorded_once(self, &v.action.to_string(), "needs confirmation", Outcome::NeedsConfirmation)
            }
            Decision::Protected(why) => recorded_once(self, "skip", &format!("protected: {why}"), Outcome::Protected),
            Decision::Act(_) => {
                // The owner's quarantine quota: their oldest items make room, or a file too large
                // for it is deleted rather than left in place (`quota`).
                let cost = act::quarantine::allocated_bytes(&file).unwrap_or(meta.size);
                if !self.make_room(ri, &file, meta.uid, cost, &full) {
                    return self.delete_over_quota(ri, &rel, &file, &meta, &app, &v, &full, since);
                }
                let Some((deep, base_path, base_rel)) = self.base_of(ri, &rel) else { return };
                let base_fd = match &deep {
                    Some(fd) => fd,
                    None => &self.folders.roots[ri].fd,
                };
                match act::quarantine_file(
                    &self.store,
                    &base_path,
                    base_fd,
                    &base_rel,
                    &file,
                    &meta,
                    &app,
                    &v,
                    self.clock.now().plus(self.cfg.retention),
                ) {
                    Ok(mut m) => {
                        let elapsed = since.elapsed();
                        self.folders.inventory.remove(&full);
                        if app.sha256.is_some() {
                            return self.finish_move(app, v, &mut m, full, elapsed, Ok(String::new()));
                        }
                        // Hashed after the move, for the evidence: small files right here, larger
                        // ones on the pool (the record is written when the hash is in).
                        let sha = match crate::hashpool::over_cap(&file, self.pool.cap()) {
                            Err(why) => Err(why),
                            Ok(()) if meta.size <= crate::hashpool::INLINE_HASH_BYTES => {
                                crate::hashpool::hash_capped(&mut file, self.pool.cap())
                            }
                            Ok(()) => {
                                let token = self.pool.submit(file);
                                self.pending
                                    .insert(token, Pending::AfterMove { app, v, m: Box::new(m), full, elapsed });
                                return;
                            }
                        };
                        if let Ok(sha) = &sha {
                            app.sha256 = Some(sha.clone());
                        }
                        self.finish_move(app, v, &mut m, full, elapsed, sha);
                    }
                    Err(e) => {
                        let elapsed = since.elapsed();
                        if app.sha256.is_none() && meta.size <= crate::hashpool::INLINE_HASH_BYTES {
                            app.sha256 = crate::hashpool::hash_capped(&mut file, self.pool.cap()).ok();
                        }
                        tracing::warn!(app = %app.id, path = %full.display(), rule = %v.rule, error = %e, "quarantine failed");
                        self.record(
                            &v.action.to_string(),
                            &format!("failed: {e}"),
                            Outcome::Failed,
                            &v,
                            &app,
                            &full,
                            Some(meta.uid),
                            None,
                            elapsed,
                        );
                    }
                }
            }
        }
    }

    /// The file was moved; `sha` is its hash taken after the move (empty: it was known before),
    /// or why there is none. `decide::after_hash` keeps the move's verdict unless the hash brings
    /// one at least as severe; the manifest and the audit record name the final rule.
    fn finish_move(
        &mut self,
        app: App,
        v: Verdict,
        m: &mut act::quarantine::Manifest,
        full: PathBuf,
        elapsed: std::time::Duration,
        sha: Result<String, crate::hashpool::Unhashed>,
    ) {
        let v = match sha {
            Ok(sha) if sha.is_empty() => v,
            Ok(sha) => {
                let v = decide::after_hash(v, self.rules.verdict(&app).map(|x| x.to_owned()));
                let purge_after = if v.action == Action::Remove {
                    m.purge_after.or_else(|| Some(self.clock.now().plus(self.cfg.retention)))
                } else {
                    None
                };
                if let Err(e) = self.store.complete(m, &sha, &v.rule, v.action, purge_after) {
                    tracing::warn!(id = %m.id, error = %e, "cannot write the quarantine manifest (recovery rebuilds it from the xattr)");
                }
                v
            }
            Err(why) => {
                tracing::warn!(id = %m.id, reason = %why, "the quarantined file was not hashed; its manifest has no sha256");
                self.evidence.emit(AuditEvent::Unhashed {
                    path: full.display().to_string(),
                    size: m.size,
                    reason: why.to_string(),
                    uid: Some(m.uid),
                });
                let purge_after = if v.action == Action::Remove { m.purge_after } else { None };
                if let Err(e) = self.store.complete(m, "", &v.rule, v.action, purge_after) {
                    tracing::warn!(id = %m.id, error = %e, "cannot write the quarantine manifest (recovery rebuilds it from the xattr)");
                }
                v
            }
        };
        self.qindex.insert(m.id.clone(), m.clone());
        tracing::info!(app = %app.id, path = %full.display(), rule = %v.rule, action = %v.action, id = %m.id, "quarantined");
        self.record(
            &v.action.to_string(),
            "quarantined",
            Outcome::Quarantined,
            &v,
            &app,
            &full,
            Some(m.uid),
            Some(m.id.clone()),
            elapsed,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &mut self,
        action: &str,
        result: &str,
        outcome: Outcome,
        v: &Verdict,
        app: &App,
        path: &Path,
        owner_uid: Option<u32>,
        quarantine_id: Option<String>,
        elapsed: std::time::Duration,
    ) {
        let record = ActionRecord {
            time: self.clock.now().to_string(),
            action: action.into(),
            result: result.into(),
            rule: v.rule.clone(),
            strength: v.strength.to_string(),
            app_kind: app.kind.to_string(),
            app_id: app.id.clone(),
            path: path.display().to_string(),
            quarantine_id,
            micros: elapsed.as_micros() as u64,
            owner_uid,
            app_version: app.version.clone(),
        };
        self.evidence.emit(AuditEvent::Action {
            record,
            sha256: app.sha256.clone(),
            mode: self.cfg.mode.as_str().into(),
            outcome,
        });
    }

    /// The decision for package `name` of root `i` under the current rules and held set.
    fn package_decision(&self, i: usize, name: &str) -> Option<(Verdict, Decision)> {
        let r = &self.packages.roots[i];
        let item = r.packages.get(name)?;
        let v = item.verdict.clone()?;
        let protected = r.manager.protected(&item.installed.package);
        let held = self.held.packages.contains(&(r.root.clone(), name.to_owned()));
        let exempt = self.exempt.contains(&suspend::exempt_key(r, &item.installed.package));
        let d = decide::decide(&Input {
            verdict: Some(&v),
            except_by_hash: false,
            hash_known: true,
            mode: self.cfg.mode,
            exempt,
            held,
            protected: protected.as_deref(),
        });
        Some((v, d))
    }

    /// Has package root `i` re-read on the package worker (at most one read per root queued or
    /// running; changes that come in meanwhile cost one more read).
    fn read_packages(&mut self, i: usize) {
        let r = &mut self.packages.roots[i];
        if r.reading {
            r.reread = true;
            return;
        }
        r.reading = true;
        r.reread = false;
        let rules = self.rules.clone();
        self.package_worker.submit(self.packages.roots[i].read_job(i, rules.clone()), move |why| {
            packages::Done::Read { root: i, rules, result: Err(format!("the read panicked: {why}")) }
        });
    }

    /// A result from the package worker: a read is taken in and what it bans decided (unless a
    /// policy update waits for it: then the update decides everything at once); a removal's
    /// result is concluded and recorded.
    pub fn on_packages(&mut self, done: packages::Done) {
        match done {
            packages::Done::Read { root: i, rules, result } => {
                let r = &mut self.packages.roots[i];
                r.reading = false;
                r.read_once = true;
                let todo = match result {
                    Ok(read) => {
                        let todo = r.apply_read(read, &rules, &self.rules);
                        if let Some(p) = &self.exec_protected {
                            p.refresh_root(r.manager, &r.root, r.packages.values().map(|it| &it.installed));
                        }
                        todo
                    }
                    Err(e) => {
                        tracing::warn!(root = %r.root.display(), error = %e, "cannot read the package database");
                        Vec::new()
                    }
                };
                if self.packages.waiting() == 0 {
                    self.retry_attempts = 0;
                }
                if self.pending_update.is_some() {
                    if !self.packages.roots.iter().any(|r| r.reading) {
                        self.finish_update();
                    }
                } else {
                    let since = Instant::now();
                    for name in todo {
                        self.enforce_package(i, &name, since);
                    }
                }
                if self.packages.roots[i].reread {
                    self.read_packages(i);
                }
            }
            packages::Done::Removed { root: i, name, result, verdict, since } => {
                let outcome = act::conclude_removal(&self.packages.roots[i], &name, result, &verdict, &self.store);
                // The fallback may have quarantined the package's programs (ids not returned):
                // re-read the index (package removals are rare and never a user's doing).
                self.qindex = self.store.list().into_iter().map(|m| (m.id.clone(), m)).collect();
                self.conclude_package(i, &name, &verdict, outcome, Some(PackageOutcome::Removing), since);
            }
            packages::Done::Suspended { root, name, manifest, result, verdict, since } => {
                self.on_suspended(root, &name, *manifest, result, &verdict, since)
            }
            packages::Done::Unsuspended { id, result, uid, reply } => self.on_unsuspended(id, result, uid, reply),
            packages::Done::NeedsAdminPaths { seq, result } => self.on_needs_admin_paths(seq, result),
        }
        self.publish_needs_admin();
    }

    /// Decides for one package whose verdict needs acting on; acts (a removal: hands it to the
    /// package worker, concluded in [`Self::on_packages`]) and records.
    fn enforce_package(&mut self, i: usize, name: &str, since: Instant) {
        let Some((v, decision)) = self.package_decision(i, name) else { return };
        let previous = self.packages.roots[i].packages.get(name).and_then(|p| p.outcome.clone());
        let outcome = match decision {
            Decision::Allow | Decision::NeedHash => return,
            Decision::Audit => PackageOutcome::Audited,
            Decision::Protected(why) => PackageOutcome::Protected(why),
            Decision::Hold => PackageOutcome::Held,
            Decision::Act(Action::Remove) => match self.packages.roots[i].remove_job(i, name, v.clone(), since) {
                Some(job) => {
                    if let Some(item) = self.packages.roots[i].packages.get_mut(name) {
                        item.outcome = Some(PackageOutcome::Removing);
                    }
                    let (n, verdict) = (name.to_owned(), v.clone());
                    self.package_worker.submit(job, move |why| packages::Done::Removed {
                        root: i,
                        name: n,
                        result: Err(format!("the removal panicked: {why}")),
                        verdict,
                        since,
                    });
                    return;
                }
                None => PackageOutcome::Failed("cannot hand the removal to the package worker".into()),
            },
            Decision::Act(Action::Quarantine) if self.packages.roots[i].manager.suspends() => {
                // Reversible through the package manager (Android: suspend), on the worker.
                self.suspend_package(i, name, v, since);
                return;
            }
            Decision::Act(action) => {
                let o = act::act_on_package(&self.packages.roots[i], name, action, &v, &self.store);
                // It may have quarantined the package's programs (ids not returned): re-read
                // the index (package removals are rare and never a user's doing).
                self.qindex = self.store.list().into_iter().map(|m| (m.id.clone(), m)).collect();
                o
            }
        };
        self.conclude_package(i, name, &v, outcome, previous, since);
    }

    /// Stores what became of a package and records it.
    fn conclude_package(
        &mut self,
        i: usize,
        name: &str,
        v: &Verdict,
        outcome: PackageOutcome,
        previous: Option<PackageOutcome>,
        since: Instant,
    ) {
        let root = &mut self.packages.roots[i];
        let removed_by = root.manager.removed_by();
        let path = root.db_dir();
        let Some(item) = root.packages.get_mut(name) else { return };
        item.outcome = Some(outcome.clone());
        let app = item.app.clone();
        let (action, result, counted) = match &outcome {
            PackageOutcome::Audited => ("audit".to_owned(), "recorded".to_owned(), Outcome::Recorded),
            PackageOutcome::Removed => ("remove".to_owned(), format!("removed by {removed_by}"), Outcome::Removed),
            PackageOutcome::RemovedAs(uid) => {
                ("remove".to_owned(), format!("removed by {removed_by} run as uid {uid}"), Outcome::Removed)
            }
            PackageOutcome::NeedsAdmin(why) => {
                (v.action.to_string(), format!("needs admin: {why}"), Outcome::NeedsAdmin)
            }
            PackageOutcome::WaitingForLock => {
                tracing::info!(package = %name, "a package-manager transaction holds the lock; waiting");
                // Retry soon (dpkg holds the lock until it exits, right after committing),
                // then less often while another frontend keeps it.
                let delay = std::time::Duration::from_millis(10 << self.retry_attempts.min(6));
                self.retry_attempts += 1;
                self.retry_at.get_or_insert_with(|| tokio::time::Instant::now() + delay);
                return;
            }
            PackageOutcome::Held => {
                if previous == Some(PackageOutcome::Held) {
                    return;
                }
                (v.action.to_string(), "needs confirmation".to_owned(), Outcome::NeedsConfirmation)
            }
            PackageOutcome::Removing => return,
            PackageOutcome::Suspended(id) => {
                ("quarantine".to_owned(), format!("suspended through the package manager ({id})"), Outcome::Quarantined)
            }
            PackageOutcome::Protected(why) => ("skip".to_owned(), format!("protected: {why}"), Outcome::Protected),
            PackageOutcome::Failed(e) => ("remove".to_owned(), format!("failed: {e}"), Outcome::Failed),
        };
        self.evidence.counters.detected += 1;
        tracing::info!(package = %app.id, rule = %v.rule, %result, "package");
        let owner = package_owner(&app);
        self.record(&action, &result, counted, v, &app, &path, owner, None, since.elapsed());
    }

    /// Retries removals that waited for a package manager's lock (re-read first: the
    /// transaction that held the lock may have changed them).
    pub fn retry_packages(&mut self) {
        self.retry_at = None;
        if self.packages.waiting() == 0 {
            self.retry_attempts = 0;
        }
        for i in 0..self.packages.roots.len() {
            if self.packages.roots[i].waiting() > 0 {
                self.read_packages(i);
            }
        }
    }

    /// A new policy: publish it, then re-evaluate everything within the action cap. The cap
    /// counts what this update would act on, package removals and file quarantines together;
    /// over it, all of them are held until `confirm`.
    pub fn apply_rules(&mut self, rules: RuleSet) {
        self.rules = Arc::new(rules);
        self.rules_tx.send_replace(self.rules.clone());
        self.exempt.clear();
        self.held = Held::default();
        self.counting = None;
        self.pending_update = Some(Instant::now());
        // The count must cover the packages as they are: a read in flight is waited for (its
        // result finishes the update, `on_packages`); otherwise the packages read last are
        // current (every database change is read).
        if !self.packages.roots.iter().any(|r| r.reading) {
            self.finish_update();
        }
    }

    /// The policy update proper: match the packages read and the files known against the new
    /// rules, count what it would act on against the cap, and act (or hold everything).
    fn finish_update(&mut self) {
        let Some(since) = self.pending_update.take() else { return };
        // Packages first matched (no acting yet), so the count covers them.
        let mut pkg_todo = Vec::new();
        for i in 0..self.packages.roots.len() {
            for name in self.packages.roots[i].rematch(&self.rules) {
                pkg_todo.push((i, name));
            }
        }
        let pkg_acts: Vec<(PathBuf, String)> = pkg_todo
            .iter()
            .filter(|(i, name)| matches!(self.package_decision(*i, name), Some((_, Decision::Act(_)))))
            .map(|(i, name)| (self.packages.roots[*i].root.clone(), name.clone()))
            .collect();
        let file_acts: Vec<PathBuf> = self
            .folders
            .inventory
            .iter()
            .filter(|(_, it)| {
                let v = self.rules.verdict(&it.app).map(|v| (v.to_owned(), v.except_by_hash));
                matches!(
                    decide::decide(&self.input(
                        v.as_ref(),
                        true,
                        it.app.sha256.as_deref().is_some_and(|h| self.exempt.contains(h)),
                        false
                    )),
                    Decision::Act(_)
                )
            })
            .map(|(p, _)| p.clone())
            .collect();
        let acts = pkg_acts.len() + file_acts.len();
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or((0, 0), |d| (d.as_secs() as i64, i64::from(d.subsec_nanos())));
        // Files beyond the inventory bound are counted in the pass below, against what is left.
        self.counting = Some(Counting { left: self.cfg.max_actions_per_update.saturating_sub(acts), at });
        if !decide::within_cap(acts, self.cfg.max_actions_per_update) {
            tracing::warn!(
                apps = acts,
                packages = pkg_acts.len(),
                files = file_acts.len(),
                cap = self.cfg.max_actions_per_update,
                "policy update exceeds the action cap: acting on none (needs confirmation)"
            );
            self.evidence.emit(AuditEvent::NeedsConfirmation {
                apps: acts,
                files: file_acts.len(),
                packages: pkg_acts.len(),
                processes: 0,
                cap: self.cfg.max_actions_per_update,
            });
            self.last_update = Some((self.rules.clone(), file_acts.len(), pkg_acts.len(), true));
            self.held = Held {
                files: file_acts.into_iter().collect(),
                packages: pkg_acts.into_iter().collect(),
                beyond: 0,
                beyond_before: Some(at),
                processes: Vec::new(),
            };
        } else {
            self.last_update = Some((self.rules.clone(), file_acts.len(), pkg_acts.len(), false));
        }
        for (i, name) in pkg_todo {
            self.enforce_package(i, &name, since);
        }
        self.rescan_all(since);
        self.end_counting_if_done();
        self.publish_needs_admin();
        if let Some((rules, scan)) = self.pending_scan.take() {
            self.on_scan(rules, scan);
        }
    }

    /// Hands the exec gate the files of every banned package the agent could not remove
    /// ("needs admin"), when that list changed: their execs are denied naming the rule, and the
    /// sweep that follows stops their running processes. Reading the files (dpkg's `.list`
    /// files, up to [`crate::exec_wire::MAX_OWNED_PATHS`] paths) is a job on the package worker;
    /// the loop publishes its result when it comes back ([`Self::on_needs_admin_paths`]).
    fn publish_needs_admin(&mut self) {
        if self.exec_gate.is_none() {
            return;
        }
        let mut now = Vec::new();
        let mut pkgs = Vec::new();
        for r in &self.packages.roots {
            for (name, it) in &r.packages {
                if let (Some(PackageOutcome::NeedsAdmin(_)), Some(v)) = (&it.outcome, &it.verdict) {
                    now.push((r.root.clone(), name.clone(), it.installed.package.version.clone(), v.rule.clone()));
                    pkgs.push(crate::exec_wire::NeedsAdminPackage {
                        manager: r.manager,
                        root: r.root.clone(),
                        installed: it.installed.clone(),
                        rule: v.rule.clone(),
                    });
                }
            }
        }
        if now == self.needs_admin {
            return;
        }
        self.needs_admin = now;
        use std::sync::atomic::Ordering;
        let seq = self.needs_admin_seq.fetch_add(1, Ordering::AcqRel) + 1;
        let latest = self.needs_admin_seq.clone();
        self.package_worker.submit(
            move || {
                // A newer set was asked for while this one waited: only that one is read.
                let result = if latest.load(Ordering::Acquire) == seq {
                    Some(crate::exec_wire::read_needs_admin_paths(&pkgs))
                } else {
                    None
                };
                packages::Done::NeedsAdminPaths { seq, result: Ok(result) }
            },
            move |why| packages::Done::NeedsAdminPaths { seq, result: Err(why) },
        );
    }

    /// The needs-admin packages' files, read on the package worker: handed to the gate unless
    /// a newer request was made since (its result follows).
    fn on_needs_admin_paths(&mut self, seq: u64, result: Result<Option<crate::exec_gate::OwnedPaths>, String>) {
        if seq != self.needs_admin_seq.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let Some(gate) = &self.exec_gate else { return };
        match result {
            Ok(Some(owned)) => {
                tracing::info!(
                    packages = self.needs_admin.len(),
                    paths = owned.len(),
                    "exec gate: files of needs-admin packages denied"
                );
                gate.set_owned_paths(owned);
            }
            Ok(None) => {}
            Err(why) => tracing::error!(%why, "exec gate: reading the files of needs-admin packages panicked"),
        }
    }

    /// Input from the exec side: gate evidence, or a scan of the running processes.
    pub fn on_exec(&mut self, input: crate::exec_wire::ExecInput) {
        match input {
            crate::exec_wire::ExecInput::Audit(e) => self.evidence.emit(*e),
            crate::exec_wire::ExecInput::Scan { rules, scan } => self.on_scan(rules, scan),
        }
    }

    /// The running processes the rule set bans: their kills count against the action cap of
    /// the policy update that published it, on top of its file and package acts. Within the
    /// cap they are killed now; over it (or when the update was held anyway) none is, they are
    /// held for `confirm` ("needs confirmation"). The update's files and packages are not
    /// waited for the scan (a scan can take seconds): they were acted on (or held) by their own
    /// count, which is at most the cap. A scan with no update (start-up) counts alone.
    fn on_scan(&mut self, rules: Arc<RuleSet>, scan: crate::running::Scan) {
        if !Arc::ptr_eq(&rules, &self.rules) {
            return; // A newer rule set's scan follows.
        }
        if self.pending_update.is_some() {
            self.pending_scan = Some((rules, scan));
            return;
        }
        let (files, packages, held) = match &self.last_update {
            Some((r, f, p, h)) if Arc::ptr_eq(r, &rules) => (*f, *p, *h),
            _ => (0, 0, false),
        };
        let cap = self.cfg.max_actions_per_update;
        let kills = scan.targets.len();
        if self.cfg.mode == Mode::Monitor || kills == 0 || (!held && decide::within_cap(files + packages + kills, cap))
        {
            let mode = if self.cfg.mode == Mode::Monitor {
                crate::exec_gate::GateMode::Monitor
            } else {
                crate::exec_gate::GateMode::Enforce
            };
            for e in crate::exec_wire::stop_now(scan, mode) {
                self.evidence.emit(e);
            }
            return;
        }
        let acts = files + packages + kills;
        tracing::warn!(
            apps = acts,
            files,
            packages,
            processes = kills,
            cap,
            "policy update exceeds the action cap: killing none (needs confirmation)"
        );
        if !held {
            self.evidence.emit(AuditEvent::NeedsConfirmation {
                apps: acts,
                files: 0,
                packages: 0,
                processes: kills,
                cap,
            });
        }
        let why =
            format!("needs confirmation: the policy update's acts ({acts}) exceed max_actions_per_update ({cap})");
        for e in crate::exec_wire::hold_events(&scan, &why) {
            self.evidence.emit(e);
        }
        self.held.processes = scan.targets;
    }

    /// Acts on everything the last update held back. Returns how many apps that was.
    pub fn confirm(&mut self, uid: u32) -> usize {
        let held = std::mem::take(&mut self.held);
        let n = held.len();
        if n > 0 {
            self.evidence.emit(AuditEvent::Confirmed { apps: n, uid });
        }
        let since = Instant::now();
        for (root, name) in held.packages {
            if let Some(i) = self.packages.roots.iter().position(|r| r.root == root) {
                self.enforce_package(i, &name, since);
            }
        }
        for p in held.files {
            if let Some(ri) = self.folders.root_of(&p) {
                let rel = p.strip_prefix(&self.folders.roots[ri].path).map(Path::to_path_buf).unwrap_or_default();
                self.enforce_file(ri, rel, since);
            }
        }
        // Files beyond the inventory bound were held by change time, not by path: a rescan
        // (nothing held now) acts on them.
        if held.beyond_before.is_some() {
            self.counting = None;
            self.rescan_all(since);
        }
        for t in held.processes {
            let e = crate::exec_wire::confirm_kill(t);
            self.evidence.emit(e);
        }
        n
    }

    /// The backstop after each sync: re-expand roots, rescan, purge expired quarantine items.
    pub fn reconcile(&mut self) {
        self.refresh_roots();
        self.rescan_all(Instant::now());
        // Expired items are found in the in-memory index, not by reading every manifest.
        let now = self.clock.now();
        let expired: Vec<String> =
            self.qindex.values().filter(|m| m.purge_after.is_some_and(|t| t <= now)).map(|m| m.id.clone()).collect();
        for id in expired {
            let m = match self.store.purge(&id) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(%id, error = %e, "purging an expired quarantined item failed");
                    continue;
                }
            };
            self.qindex.remove(&m.id);
            self.evidence.emit(AuditEvent::Purge {
                id: m.id,
                path: m.original_path,
                uid: None,
                reason: Some("retention".into()),
                owner_uid: Some(m.uid),
            });
        }
    }

    /// Whether the configured mode is monitor (for status).
    pub fn monitor(&self) -> bool {
        self.cfg.mode == Mode::Monitor
    }
}

/// A package's owner is its installation's (a user's flatpak installation); system packages
/// (Android apps included, whatever users they are installed for) have none and their records
/// are shown only to root.
pub(crate) fn package_owner(app: &App) -> Option<u32> {
    match app.scope {
        embargo_policy::app::Scope::User(uid) => Some(uid),
        embargo_policy::app::Scope::System => None,
    }
}
