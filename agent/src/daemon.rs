//! The daemon's core loop. One closed [`Event`] enum carries every trigger — filesystem hints,
//! sync results, control requests, reconcile ticks — into one task that owns all state, so
//! there is one place that decides and acts.
//!
//! Architecture invariants:
//! - The watcher only produces hints; it never moves files. Only `enforce_file` (via the
//!   quarantine store) moves anything, and only after re-opening the file beneath its root.
//! - The persisted, verified policy is enforced before the first network request.
//! - A policy update that would act on more apps than `max_actions_per_update` acts on none and
//!   reports "needs confirmation".

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use embargo_policy::app::{App, Inventory, InventoryEntry, INVENTORY_SCHEMA_VERSION};
use embargo_policy::matcher::{RuleSet, Verdict};
use embargo_policy::metadata::Time;
use embargo_policy::rules::{Action, Kind};
use notify::Watcher as _;
use tokio::sync::{mpsc, oneshot};

use crate::audit::AuditLog;
use crate::config::{Config, Mode};
use crate::proto::{self, ActionRecord, Counters, Request, Response};
use crate::quarantine::{self, QuarantineStore};
use crate::safefs::{self, FileId};
use crate::sync::{SyncCommand, SyncReport};

/// Everything that can make the daemon do something.
pub enum Event {
    Fs(notify::Result<notify::Event>),
    Sync(Box<SyncReport>),
    Control { request: Request, uid: u32, reply: oneshot::Sender<Response> },
}

/// Most files one scan of a root looks at, and how deep it goes.
const SCAN_MAX_FILES: usize = 200_000;
const SCAN_MAX_DEPTH: usize = 32;
const LAST_ACTIONS: usize = 20;

struct Root {
    kind: Kind,
    path: PathBuf,
    fd: OwnedFd,
    watch: String,
}

struct Item {
    root: PathBuf,
    app: App,
    verdict: Option<Verdict>,
    id: FileId,
    size: u64,
    /// An audit verdict was recorded for this file already.
    audited: bool,
}

/// How long the core loop must be quiet before it unmaps the code pages it touched.
const TRIM_AFTER_QUIET: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Daemon {
    cfg: Config,
    rules: RuleSet,
    policy: proto::PolicyStatus,
    roots: Vec<Root>,
    anchors: Vec<PathBuf>,
    inventory: BTreeMap<PathBuf, Item>,
    store: QuarantineStore,
    audit: AuditLog,
    counters: Counters,
    last_actions: VecDeque<ActionRecord>,
    needs_confirmation: Vec<PathBuf>,
    watcher: notify::RecommendedWatcher,
    sync_tx: mpsc::Sender<SyncCommand>,
    self_exe: Option<FileId>,
    started: Instant,
    /// Replies to `sync` requests waiting for the sync task.
    sync_waiters: Vec<oneshot::Sender<Response>>,
    /// Inodes an admin restored from quarantine; not acted on again under the same policy.
    exempt: std::collections::HashSet<FileId>,
    /// Package-manager roots (dpkg) and what is installed there.
    pkg_roots: Vec<crate::packages::PkgRoot>,
    /// When to retry removals that wait for a package-manager lock (no timer otherwise).
    retry_at: Option<tokio::time::Instant>,
    retry_attempts: u32,
}

fn verdict_action(mode: Mode, v: &Verdict) -> Action {
    if mode == Mode::Monitor {
        Action::Audit
    } else {
        v.action
    }
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

impl Daemon {
    pub fn new(
        cfg: Config,
        rules: RuleSet,
        policy: proto::PolicyStatus,
        store: QuarantineStore,
        audit: AuditLog,
        events: mpsc::UnboundedSender<Event>,
        sync_tx: mpsc::Sender<SyncCommand>,
    ) -> Result<Self, String> {
        let watcher = notify::recommended_watcher(move |res| {
            // Never block in the callback: the channel is unbounded, and bursts become rescans
            // downstream rather than losses here.
            let _ = events.send(Event::Fs(res));
        })
        .map_err(|e| format!("starting the filesystem watcher: {e}"))?;
        let self_exe = std::fs::metadata("/proc/self/exe").ok().map(|m| {
            use std::os::unix::fs::MetadataExt as _;
            FileId { dev: m.dev(), ino: m.ino() }
        });
        Ok(Self {
            cfg,
            rules,
            policy,
            roots: Vec::new(),
            anchors: Vec::new(),
            inventory: BTreeMap::new(),
            store,
            audit,
            counters: Counters::default(),
            last_actions: VecDeque::new(),
            needs_confirmation: Vec::new(),
            watcher,
            sync_tx,
            self_exe,
            started: Instant::now(),
            sync_waiters: Vec::new(),
            exempt: Default::default(),
            pkg_roots: Vec::new(),
            retry_at: None,
            retry_attempts: 0,
        })
    }

    fn audit(&mut self, event: serde_json::Value) {
        if let Err(e) = self.audit.append(event) {
            tracing::error!(error = %e, path = %self.audit.path().display(), "writing the audit log failed");
        }
    }

    /// Brings the set of roots in line with the watch patterns: new directories (a new user's
    /// ~/Applications) are watched and scanned; vanished ones dropped.
    pub fn refresh_roots(&mut self) {
        self.refresh_package_roots();
        let mut wanted: Vec<(Kind, PathBuf)> = Vec::new();
        let mut anchors = Vec::new();
        for w in self.cfg.watches.iter().filter(|w| !crate::config::PACKAGE_KINDS.contains(&w.kind)) {
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
                if let Err(e) = self.watcher.watch(a, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(path = %a.display(), error = %e, "cannot watch for new install roots");
                }
            }
        }
        for a in &self.anchors {
            if !anchors.contains(a) {
                let _ = self.watcher.unwatch(a);
            }
        }
        self.anchors = anchors;
        let before = self.roots.len();
        self.roots.retain(|r| wanted.iter().any(|(k, p)| *k == r.kind && *p == r.path) && r.path.is_dir());
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
            let watch = match self.watcher.watch(&path, notify::RecursiveMode::Recursive) {
                Ok(()) => "inotify".to_owned(),
                Err(e) => format!("degraded: {e} (covered by the periodic reconcile only)"),
            };
            tracing::info!(path = %path.display(), %kind, %watch, "watching");
            self.roots.push(Root { kind, path: path.clone(), fd, watch });
            new_roots.push(path);
        }
        for p in new_roots {
            self.scan_path(&p, Instant::now());
        }
    }

    /// Opens and watches the package-manager roots (their database directories only).
    fn refresh_package_roots(&mut self) {
        use crate::packages::Manager;
        let wanted: Vec<(Manager, PathBuf)> = self
            .cfg
            .watches
            .iter()
            .filter_map(|w| match w.kind {
                Kind::Deb => Some((Manager::Dpkg, w)),
                Kind::Rpm => Some((Manager::Rpm, w)),
                Kind::Flatpak => Some((Manager::Flatpak, w)),
                Kind::Snap => Some((Manager::Snap, w)),
                _ => None,
            })
            // `*` components (per-user installations) expand to the directories there now;
            // new ones are picked up at the next reconcile.
            .flat_map(|(m, w)| w.patterns.iter().flat_map(move |p| expand(p).0.into_iter().map(move |r| (m, r))))
            .collect();
        for (manager, root) in wanted {
            if self.pkg_roots.iter().any(|r| r.root == root && r.manager == manager) {
                continue;
            }
            match crate::packages::PkgRoot::open(manager, &root) {
                Ok(r) => {
                    for dir in r.watch_dirs() {
                        if let Err(e) = self.watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                            tracing::warn!(path = %dir.display(), error = %e, "cannot watch the package database");
                        }
                    }
                    tracing::info!(root = %root.display(), ?manager, "watching the package database");
                    self.pkg_roots.push(r);
                    let i = self.pkg_roots.len() - 1;
                    self.scan_packages(i, Instant::now());
                }
                Err(e) => tracing::warn!(root = %root.display(), error = %e, "cannot open the package root"),
            }
        }
    }

    /// Re-reads one package root and acts on what the policy bans there.
    fn scan_packages(&mut self, i: usize, since: Instant) {
        let todo = self.pkg_roots[i].scan(&self.rules);
        if self.pkg_roots.iter().all(|r| r.waiting() == 0) {
            self.retry_attempts = 0;
        }
        let monitor = self.cfg.mode == Mode::Monitor;
        for name in todo {
            let Some((v, app, outcome)) = self.pkg_roots[i].act(&name, monitor, &self.store) else { continue };
            use crate::packages::Outcome;
            let (action, result) = match &outcome {
                Outcome::Audited => ("audit".to_owned(), "recorded".to_owned()),
                Outcome::Removed => (
                    "remove".to_owned(),
                    match self.pkg_roots[i].manager {
                        crate::packages::Manager::Dpkg => "removed by dpkg --purge".to_owned(),
                        crate::packages::Manager::Rpm => "removed by rpm -e".to_owned(),
                        crate::packages::Manager::Flatpak => "removed by flatpak uninstall".to_owned(),
                        crate::packages::Manager::Snap => "removed by snap remove".to_owned(),
                    },
                ),
                Outcome::NeedsAdmin(why) => (v.action.to_string(), format!("needs admin: {why}")),
                Outcome::WaitingForLock => {
                    tracing::info!(package = %name, "a package-manager transaction holds the lock; waiting");
                    // Retry soon (dpkg holds the lock until it exits, right after committing),
                    // then less often while another frontend keeps it.
                    let delay = std::time::Duration::from_millis(10 << self.retry_attempts.min(6));
                    self.retry_attempts += 1;
                    self.retry_at.get_or_insert_with(|| tokio::time::Instant::now() + delay);
                    continue;
                }
                Outcome::Protected(why) => ("skip".to_owned(), format!("protected: {why}")),
                Outcome::Failed(e) => ("remove".to_owned(), format!("failed: {e}")),
            };
            match &outcome {
                Outcome::Removed => self.counters.purged += 1,
                Outcome::Audited => self.counters.audited += 1,
                Outcome::Protected(_) => self.counters.protected_skipped += 1,
                Outcome::Failed(_) => self.counters.failed += 1,
                Outcome::NeedsAdmin(_) => self.counters.quarantined += 1,
                Outcome::WaitingForLock => {}
            }
            self.counters.detected += 1;
            let path = self.pkg_roots[i].admindir();
            tracing::info!(package = %app.id, rule = %v.rule, %result, "package");
            self.record(&action, &result, &v, &app, &path, None, since.elapsed());
        }
    }

    fn retry_packages(&mut self) {
        self.retry_at = None;
        if self.pkg_roots.iter().all(|r| r.waiting() == 0) {
            self.retry_attempts = 0;
        }
        for i in 0..self.pkg_roots.len() {
            if self.pkg_roots[i].waiting() > 0 {
                self.scan_packages(i, Instant::now());
            }
        }
    }

    fn root_of(&self, path: &Path) -> Option<usize> {
        self.roots
            .iter()
            .enumerate()
            .filter(|(_, r)| path.starts_with(&r.path))
            .max_by_key(|(_, r)| r.path.as_os_str().len())
            .map(|(i, _)| i)
    }

    /// Scans `path` (a root or anything beneath one) and enforces on every file found.
    fn scan_path(&mut self, path: &Path, since: Instant) {
        self.counters.rescans += 1;
        let roots: Vec<usize> = match self.root_of(path) {
            Some(i) => vec![i],
            None => (0..self.roots.len()).filter(|&i| self.roots[i].path.starts_with(path)).collect(),
        };
        for ri in roots {
            let root_path = self.roots[ri].path.clone();
            let start = if path.starts_with(&root_path) { path.to_path_buf() } else { root_path.clone() };
            // Forget what was under the scanned subtree; what still exists is found again.
            let gone: Vec<PathBuf> = self
                .inventory
                .range(start.clone()..)
                .take_while(|(p, _)| p.starts_with(&start))
                .map(|(p, _)| p.clone())
                .collect();
            let mut files = Vec::new();
            walk(&start, 0, &mut files);
            let found: std::collections::HashSet<&PathBuf> = files.iter().collect();
            for p in gone {
                if !found.contains(&p) {
                    self.inventory.remove(&p);
                }
            }
            for f in &files {
                if let Ok(rel) = f.strip_prefix(&root_path) {
                    self.enforce_file(ri, rel.to_path_buf(), since);
                }
            }
        }
    }

    /// Identifies one file beneath root `ri` and acts on its verdict.
    fn enforce_file(&mut self, ri: usize, rel: PathBuf, since: Instant) {
        if rel.as_os_str().is_empty() {
            return;
        }
        let root = &self.roots[ri];
        let full = root.path.join(&rel);
        let (mut file, meta) = match safefs::open_file_beneath(&root.fd, &rel) {
            Ok(x) => x,
            Err(_) => {
                self.inventory.remove(&full);
                return;
            }
        };
        if Some(meta.id) == self.self_exe {
            self.counters.protected_skipped += 1;
            return;
        }
        let cached =
            self.inventory.get(&full).filter(|it| it.id == meta.id && it.size == meta.size).map(|it| it.app.clone());
        let mut app = match cached {
            Some(app) => app,
            None => match crate::identify::identify_unhashed(root.kind, &root.path, &rel, &mut file, &meta) {
                Ok(Some(app)) => {
                    self.counters.detected += 1;
                    app
                }
                Ok(None) => {
                    self.inventory.remove(&full);
                    return;
                }
                Err(e) => {
                    tracing::warn!(path = %full.display(), error = %e, "cannot identify");
                    return;
                }
            },
        };
        let mut verdict = self.rules.verdict(&app).map(|v| (v.to_owned(), v.except_by_hash));
        // The hash is read before deciding unless the verdict already moves the file and no
        // hash can lift it (no `except` on sha256): then the move does not wait for a large
        // file to be read whole, and the hash is taken after it, through the same fd, for the
        // evidence (`hash_after_move`).
        let moves_regardless_of_hash = verdict
            .as_ref()
            .is_some_and(|(v, except_by_hash)| !except_by_hash && verdict_action(self.cfg.mode, v) != Action::Audit)
            && !self.exempt.contains(&meta.id)
            && !self.needs_confirmation.contains(&full);
        if app.sha256.is_none() && !moves_regardless_of_hash {
            match crate::identify::sha256_of(&mut file) {
                Ok(h) => app.sha256 = Some(h),
                Err(e) => {
                    tracing::warn!(path = %full.display(), error = %e, "cannot hash");
                    return;
                }
            }
            verdict = self.rules.verdict(&app).map(|v| (v.to_owned(), v.except_by_hash));
        }
        let verdict = verdict.map(|(v, _)| v);
        let audited = self.inventory.get(&full).is_some_and(|it| it.audited && it.verdict == verdict);
        let root_path = root.path.clone();
        self.inventory.insert(
            full.clone(),
            Item {
                root: root_path.clone(),
                app: app.clone(),
                verdict: verdict.clone(),
                id: meta.id,
                size: meta.size,
                audited,
            },
        );
        let Some(v) = verdict else { return };
        if self.exempt.contains(&meta.id) {
            return;
        }
        // Held back by the action cap: a rescan or reconcile must not act before `confirm`.
        if self.needs_confirmation.contains(&full) && verdict_action(self.cfg.mode, &v) != Action::Audit {
            return;
        }
        match verdict_action(self.cfg.mode, &v) {
            Action::Audit => {
                if !audited {
                    self.counters.audited += 1;
                    self.record("audit", "recorded", &v, &app, &full, None, since.elapsed());
                    if let Some(it) = self.inventory.get_mut(&full) {
                        it.audited = true;
                    }
                }
            }
            action @ (Action::Quarantine | Action::Remove) => {
                let purge_after = (action == Action::Remove).then(|| Time::now().plus(self.cfg.retention));
                let sha = app.sha256.clone().unwrap_or_default();
                let kind = app.kind.to_string();
                let req = quarantine::Request {
                    root_path: &root_path,
                    root_fd: &self.roots[ri].fd,
                    rel: &rel,
                    file: &file,
                    meta: &meta,
                    sha256: &sha,
                    rule: &v.rule,
                    action,
                    app_kind: &kind,
                    app_id: &app.id,
                    purge_after,
                };
                match self.store.quarantine(req) {
                    Ok(mut m) => {
                        let elapsed = since.elapsed();
                        self.counters.quarantined += 1;
                        self.inventory.remove(&full);
                        let v =
                            if app.sha256.is_none() { self.hash_after_move(&mut app, &mut file, v, &mut m) } else { v };
                        let action = v.action;
                        tracing::info!(app = %app.id, path = %full.display(), rule = %v.rule, action = %action, id = %m.id, "quarantined");
                        self.record(
                            action.to_string().as_str(),
                            "quarantined",
                            &v,
                            &app,
                            &full,
                            Some(m.id.clone()),
                            elapsed,
                        );
                    }
                    Err(e) => {
                        let elapsed = since.elapsed();
                        self.counters.failed += 1;
                        if app.sha256.is_none() {
                            app.sha256 = crate::identify::sha256_of(&mut file).ok();
                        }
                        tracing::warn!(app = %app.id, path = %full.display(), rule = %v.rule, error = %e, "quarantine failed");
                        self.record(
                            action.to_string().as_str(),
                            &format!("failed: {e}"),
                            &v,
                            &app,
                            &full,
                            None,
                            elapsed,
                        );
                    }
                }
            }
        }
    }

    /// The file was moved before it was hashed (its verdict did not depend on the hash): hash
    /// it now through the same fd, and complete the manifest. Knowing the hash can only confirm
    /// the rule or bring a more severe or stronger one (hashless matchers still match and no
    /// except of the rule looks at hashes), so the move stands; the manifest and the audit
    /// record name the final rule.
    fn hash_after_move(
        &mut self,
        app: &mut App,
        file: &mut std::fs::File,
        v: Verdict,
        m: &mut crate::quarantine::Manifest,
    ) -> Verdict {
        let (v, sha) = match crate::identify::sha256_of(file) {
            Ok(sha) => {
                app.sha256 = Some(sha.clone());
                let v = self.rules.verdict(app).map(|x| x.to_owned()).filter(|x| x.action >= v.action).unwrap_or(v);
                (v, sha)
            }
            Err(e) => {
                tracing::warn!(id = %m.id, error = %e, "cannot hash the quarantined file; its manifest has no sha256");
                (v, String::new())
            }
        };
        let purge_after = if v.action == Action::Remove {
            m.purge_after.or_else(|| Some(Time::now().plus(self.cfg.retention)))
        } else {
            None
        };
        if let Err(e) = self.store.complete(m, &sha, &v.rule, v.action, purge_after) {
            tracing::warn!(id = %m.id, error = %e, "cannot write the quarantine manifest (recovery rebuilds it from the xattr)");
        }
        v
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        action: &str,
        result: &str,
        v: &Verdict,
        app: &App,
        path: &Path,
        quarantine_id: Option<String>,
        elapsed: std::time::Duration,
    ) {
        let rec = ActionRecord {
            time: Time::now().to_string(),
            action: action.into(),
            result: result.into(),
            rule: v.rule.clone(),
            strength: v.strength.to_string(),
            app_kind: app.kind.to_string(),
            app_id: app.id.clone(),
            path: path.display().to_string(),
            quarantine_id,
            micros: elapsed.as_micros() as u64,
        };
        self.audit(
            serde_json::json!({"type": "action", "record": rec, "sha256": app.sha256, "mode": self.cfg.mode.as_str()}),
        );
        self.last_actions.push_front(rec);
        self.last_actions.truncate(LAST_ACTIONS);
    }

    /// A filesystem hint: rescan what it names (new or renamed-in directories, overflow, watch
    /// errors), or enforce on the file it names.
    fn on_fs(&mut self, res: notify::Result<notify::Event>, since: Instant) {
        self.counters.events += 1;
        let ev = match res {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "watch error: rescanning everything");
                self.refresh_roots();
                self.rescan_all(since);
                return;
            }
        };
        tracing::debug!(kind = ?ev.kind, paths = ?ev.paths, "fs event");
        if ev.need_rescan() || ev.paths.is_empty() {
            tracing::info!("event queue overflowed: rescanning everything");
            self.rescan_all(since);
            return;
        }
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
        // Opens and non-writing closes (our own reads among them) say nothing new.
        if matches!(
            ev.kind,
            EventKind::Access(
                AccessKind::Open(_)
                    | AccessKind::Read
                    | AccessKind::Close(AccessMode::Read | AccessMode::Execute | AccessMode::Any | AccessMode::Other)
            )
        ) {
            return;
        }
        if let Some(i) = self.pkg_roots.iter().position(|r| ev.paths.iter().any(|p| r.is_db_change(p))) {
            self.scan_packages(i, since);
            return;
        }
        let structural =
            matches!(ev.kind, EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)));
        for path in &ev.paths {
            if structural
                && self.root_of(path).is_none()
                && self.anchors.iter().any(|a| path.parent() == Some(a.as_path()) || path == a)
            {
                self.refresh_roots();
                continue;
            }
            let Some(ri) = self.root_of(path) else { continue };
            match ev.kind {
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                    let gone: Vec<PathBuf> = self
                        .inventory
                        .range(path.clone()..)
                        .take_while(|(p, _)| p.starts_with(path))
                        .map(|(p, _)| p.clone())
                        .collect();
                    for p in gone {
                        self.inventory.remove(&p);
                    }
                    if path == &self.roots[ri].path {
                        self.refresh_roots();
                    }
                }
                EventKind::Create(_)
                | EventKind::Modify(ModifyKind::Name(_))
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Metadata(_)) => match std::fs::symlink_metadata(path) {
                    Ok(m) if m.is_dir() => self.scan_path(path, since),
                    Ok(m) if m.is_file() => {
                        let rel = path.strip_prefix(&self.roots[ri].path).map(Path::to_path_buf).unwrap_or_default();
                        self.enforce_file(ri, rel, since);
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }

    fn rescan_all(&mut self, since: Instant) {
        let paths: Vec<PathBuf> = self.roots.iter().map(|r| r.path.clone()).collect();
        for p in paths {
            self.scan_path(&p, since);
        }
    }

    /// A new policy: re-evaluate the whole inventory, within the action cap.
    fn apply_rules(&mut self, rules: RuleSet) {
        self.rules = rules;
        self.exempt.clear();
        for i in 0..self.pkg_roots.len() {
            self.scan_packages(i, Instant::now());
        }
        self.needs_confirmation.clear();
        let mut to_act = Vec::new();
        for (path, it) in &self.inventory {
            if let Some(v) = self.rules.verdict(&it.app) {
                if verdict_action(self.cfg.mode, &v.to_owned()) != Action::Audit {
                    to_act.push(path.clone());
                }
            }
        }
        if to_act.len() > self.cfg.max_actions_per_update {
            tracing::warn!(
                apps = to_act.len(),
                cap = self.cfg.max_actions_per_update,
                "policy update exceeds the action cap: acting on none (needs confirmation)"
            );
            self.audit(serde_json::json!({"type": "needs-confirmation", "apps": to_act.len(), "cap": self.cfg.max_actions_per_update}));
            self.needs_confirmation = to_act;
            // Audit-only verdicts still get recorded; quarantines wait for `embargoctl confirm`.
            let mode = self.cfg.mode;
            self.cfg.mode = Mode::Monitor;
            self.rescan_all(Instant::now());
            self.cfg.mode = mode;
            return;
        }
        self.rescan_all(Instant::now());
    }

    fn confirm(&mut self) -> usize {
        let pending = std::mem::take(&mut self.needs_confirmation);
        let n = pending.len();
        for p in pending {
            if let Some(ri) = self.root_of(&p) {
                let rel = p.strip_prefix(&self.roots[ri].path).map(Path::to_path_buf).unwrap_or_default();
                self.enforce_file(ri, rel, Instant::now());
            }
        }
        n
    }

    fn on_sync(&mut self, report: SyncReport) {
        self.policy = report.status;
        let new_policy = report.new_rules.is_some();
        if let Some(rules) = report.new_rules {
            tracing::info!(version = ?self.policy.policy_version, rules = rules.len(), "enforcing new policy");
            self.audit(serde_json::json!({"type": "policy", "version": self.policy.policy_version, "sha256": self.policy.sha256, "rules": rules.len()}));
            self.apply_rules(*rules);
        }
        if let Some(e) = &self.policy.last_error {
            if report.attempted {
                self.audit(serde_json::json!({"type": "sync-failed", "kind": e.kind, "message": e.message}));
            }
        }
        if !new_policy {
            // The backstop for anything the watcher missed (a new policy already rescanned).
            self.reconcile();
        }
        for w in self.sync_waiters.drain(..) {
            let _ = w.send(match &self.policy.last_error {
                Some(e) if report.attempted => Response::err("sync_failed", format!("[{}] {}", e.kind, e.message)),
                _ => Response::ok(serde_json::json!({"policy_version": self.policy.policy_version})),
            });
        }
    }

    pub fn status(&self) -> proto::Status {
        let mut reasons = Vec::new();
        if self.policy.policy_version.is_none() {
            reasons.push("no verified policy yet".to_owned());
        }
        // Expiry is judged now, not when the last sync report came in (a backed-off sync may
        // be minutes away while the timestamp expires).
        let now = Time::now();
        let expired = |version: Option<u64>, expires: &Option<String>, role: &str| {
            let at = expires.as_deref().and_then(|e| Time::parse(e).ok())?;
            (at <= now).then(|| format!("{role} v{} expired at {at}", version.unwrap_or(0)))
        };
        let live = expired(self.policy.policy_version, &self.policy.expires, "policy")
            .or_else(|| expired(self.policy.timestamp_version, &self.policy.timestamp_expires, "timestamp"))
            .or_else(|| self.policy.stale.clone());
        let mut policy = self.policy.clone();
        policy.stale = live.clone();
        if let Some(s) = live {
            reasons.push(format!("policy is stale: {s}"));
        }
        if let Some(e) = &self.policy.last_error {
            reasons.push(format!("sync failing: [{}] {}", e.kind, e.message));
        }
        for r in &self.roots {
            if r.watch != "inotify" {
                reasons.push(format!("watch of {} {}", r.path.display(), r.watch));
            }
        }
        let waiting: usize = self.pkg_roots.iter().map(|r| r.waiting()).sum();
        if waiting > 0 {
            reasons.push(format!("{waiting} package removal(s) waiting for the package manager's lock"));
        }
        if !self.needs_confirmation.is_empty() {
            reasons.push(format!("{} apps need confirmation (embargoctl confirm)", self.needs_confirmation.len()));
        }
        if let Some(note) = crate::STATE_RECOVERY.get().filter(|_| self.policy.last_success.is_none()) {
            reasons.push(note.clone());
        }
        if crate::quarantine::hardlinks_protected() == Some(false) {
            reasons.push("fs.protected_hardlinks is 0: users may hard link others' files into watched folders (such files are refused, not acted on)".into());
        }
        let sources = self
            .roots
            .iter()
            .map(|r| proto::SourceStatus {
                kind: r.kind.to_string(),
                path: r.path.display().to_string(),
                apps_seen: self.inventory.values().filter(|it| it.root == r.path).count(),
                watch: r.watch.clone(),
            })
            .chain(self.pkg_roots.iter().map(|r| proto::SourceStatus {
                kind: r.manager.kind().to_string(),
                path: r.admindir().display().to_string(),
                apps_seen: r.packages.len(),
                watch: "inotify".into(),
            }))
            .collect();
        let q = self.store.list();
        proto::Status {
            schema_version: proto::STATUS_SCHEMA_VERSION,
            daemon: proto::DaemonStatus {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
                uptime_secs: self.started.elapsed().as_secs(),
                mode: self.cfg.mode.as_str().into(),
                health: if reasons.is_empty() { "healthy" } else { "degraded" }.into(),
                reasons,
            },
            policy,
            sources,
            enforcement: proto::EnforcementStatus {
                counters: self.counters.clone(),
                last_actions: self.last_actions.iter().cloned().collect(),
            },
            quarantine: proto::QuarantineStatus { items: q.len(), bytes: q.iter().map(|m| m.size).sum() },
            pending: proto::PendingStatus { needs_confirmation: self.needs_confirmation.len(), reports: 0 },
        }
    }

    fn on_control(&mut self, request: Request, uid: u32, reply: oneshot::Sender<Response>) {
        let me = rustix::process::geteuid().as_raw();
        if request.mutates() && uid != 0 && uid != me {
            let _ = reply
                .send(Response::err("denied", "permission denied: this request changes the agent and requires root"));
            return;
        }
        let response = match request {
            Request::Status => Response::ok(self.status()),
            Request::Inventory => {
                let apps = self
                    .inventory
                    .values()
                    .map(|it| InventoryEntry { app: it.app.clone(), verdict: it.verdict.clone() })
                    .chain(self.pkg_roots.iter().flat_map(|r| {
                        r.packages.values().map(|p| InventoryEntry { app: p.app.clone(), verdict: p.verdict.clone() })
                    }))
                    .collect();
                Response::ok(Inventory { schema_version: INVENTORY_SCHEMA_VERSION, apps })
            }
            Request::Evaluate { app } => Response::ok(self.rules.matches(&app)),
            Request::QuarantineList => Response::ok(self.store.list()),
            Request::Events { since, limit } => match crate::audit::read_entries(self.audit.path()) {
                Ok(entries) => {
                    let chain = crate::audit::verify(&entries);
                    let out: Vec<_> =
                        entries.into_iter().flatten().filter(|e| e.seq > since).take(limit.min(10_000)).collect();
                    Response::ok(
                        serde_json::json!({"entries": out, "chain_ok": chain.is_ok(), "chain_break": chain.err()}),
                    )
                }
                Err(e) => Response::err("failed", format!("{}: {e}", self.audit.path().display())),
            },
            Request::Sync => {
                if self.sync_tx.try_send(SyncCommand::Now).is_err() {
                    let _ = reply.send(Response::err("busy", "a sync is already queued"));
                    return;
                }
                self.sync_waiters.push(reply);
                return;
            }
            Request::Scan => {
                self.refresh_roots();
                self.rescan_all(Instant::now());
                Response::ok(serde_json::json!({"apps": self.inventory.len()}))
            }
            Request::QuarantineRestore { id } => match self.store.restore(&id) {
                Ok(m) => {
                    self.counters.restored += 1;
                    self.audit(serde_json::json!({"type": "restore", "id": id, "path": m.original_path, "uid": uid}));
                    // Restored by an admin: that inode is exempt until the policy changes (or the
                    // agent restarts), so a restore is not undone by the next event.
                    self.exempt.insert(FileId { dev: m.dev, ino: m.ino });
                    Response::ok(m)
                }
                Err(e) => Response::err("failed", e.to_string()),
            },
            Request::QuarantinePurge { id } => match self.store.purge(&id) {
                Ok(m) => {
                    self.counters.purged += 1;
                    self.audit(serde_json::json!({"type": "purge", "id": id, "path": m.original_path, "uid": uid}));
                    Response::ok(m)
                }
                Err(e) => Response::err("failed", e.to_string()),
            },
            Request::Confirm => Response::ok(serde_json::json!({"acted_on": self.confirm()})),
        };
        let _ = reply.send(response);
    }

    fn reconcile(&mut self) {
        self.refresh_roots();
        self.rescan_all(Instant::now());
        for m in self.store.purge_expired(Time::now()) {
            self.counters.purged += 1;
            self.audit(
                serde_json::json!({"type": "purge", "id": m.id, "path": m.original_path, "reason": "retention"}),
            );
        }
    }

    /// Runs until `events` closes or `shutdown` completes. There is no periodic timer here: the
    /// sync task's timer is the only periodic wake-up, and each sync ends with a reconcile. The
    /// one-shot timers are the package-lock retry and the idle trim after a burst of activity.
    pub async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        self.refresh_roots();
        // READY: the persisted policy is loaded and enforced, the socket is bound, the watches
        // are in place. (A no-op outside systemd.)
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        // The watchdog is fed from this loop, so a stuck loop stops the pings and systemd
        // restarts us. Only under systemd with WatchdogSec=; otherwise there is no timer at all.
        let watchdog = sd_notify::watchdog_enabled();
        let mut ping = watchdog.map(|d| tokio::time::interval(d / 2));
        // The idle trim: one quiet second after start-up or after the last event, the code
        // pages this burst touched are unmapped (see `sys`). One wake-up per burst of activity;
        // none while idle.
        let mut trim_at = Some(tokio::time::Instant::now() + TRIM_AFTER_QUIET);
        tokio::pin!(shutdown);
        loop {
            let ev = tokio::select! {
                () = &mut shutdown => break,
                _ = async { ping.as_mut().expect("guarded").tick().await }, if ping.is_some() => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    continue;
                }
                () = tokio::time::sleep_until(self.retry_at.unwrap_or_else(tokio::time::Instant::now)), if self.retry_at.is_some() => {
                    self.retry_packages();
                    trim_at = Some(tokio::time::Instant::now() + TRIM_AFTER_QUIET);
                    continue;
                }
                () = tokio::time::sleep_until(trim_at.unwrap_or_else(tokio::time::Instant::now)), if trim_at.is_some() => {
                    trim_at = None;
                    match crate::sys::release_code_pages() {
                        Ok(bytes) => tracing::debug!(kib = bytes / 1024, "idle trim: code pages unmapped"),
                        Err(e) => tracing::debug!("idle trim skipped: {e}"),
                    }
                    continue;
                }
                ev = events.recv() => match ev { Some(ev) => ev, None => break },
            };
            let since = Instant::now();
            match ev {
                Event::Fs(res) => self.on_fs(res, since),
                Event::Sync(report) => self.on_sync(*report),
                Event::Control { request, uid, reply } => self.on_control(request, uid, reply),
            }
            trim_at = Some(tokio::time::Instant::now() + TRIM_AFTER_QUIET);
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!("shutting down");
    }
}

/// Lists regular files under `dir` without following symlinks, within the scan limits.
fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > SCAN_MAX_DEPTH || out.len() >= SCAN_MAX_FILES {
        return;
    }
    let Ok(meta) = std::fs::symlink_metadata(dir) else { return };
    if meta.is_file() {
        out.push(dir.to_path_buf());
        return;
    }
    if !meta.is_dir() {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            walk(&e.path(), depth + 1, out);
        } else if t.is_file() {
            out.push(e.path());
            if out.len() >= SCAN_MAX_FILES {
                return;
            }
        }
    }
}
