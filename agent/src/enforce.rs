//! The enforcement state the core loop owns, and its pipeline: for each app a source yields,
//! `decide` → `act` → `evidence`. Also the policy update with its action cap, and `confirm`.
//!
//! Architecture invariants:
//! - Only `act` moves files, kills processes or runs a package manager; this module calls it
//!   with a `Decision` and reports the result as an `AuditEvent`.
//! - A policy update whose acts (file quarantines and package removals together) exceed
//!   `max_actions_per_update` acts on none of them until `embargoctl confirm`; apps that arrive
//!   afterwards are decided as usual. The configured mode is never changed to hold actions back.
//! - The rule set in force is published (`rules_tx`) whenever it changes, so other threads
//!   decide with the same rules without waiting behind a rescan.

use std::collections::HashSet;
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

/// Apps a policy update over the action cap holds back until `embargoctl confirm`.
#[derive(Default)]
pub struct Held {
    pub files: HashSet<PathBuf>,
    /// (package root, package name)
    pub packages: HashSet<(PathBuf, String)>,
}

impl Held {
    pub fn len(&self) -> usize {
        self.files.len() + self.packages.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    pub(crate) held: Held,
    /// Inodes an admin restored from quarantine; not acted on again under the same policy.
    pub(crate) exempt: HashSet<FileId>,
    self_exe: Option<FileId>,
    pub(crate) started: Instant,
    pub(crate) sync_tx: mpsc::Sender<crate::sync::Command>,
    /// Replies to `sync` requests waiting for the sync task.
    pub(crate) sync_waiters: Vec<oneshot::Sender<Response>>,
    /// When to retry removals that wait for a package-manager lock (no timer otherwise).
    pub(crate) retry_at: Option<tokio::time::Instant>,
    retry_attempts: u32,
    /// Package reads and removals run here, off the loop; results come back through
    /// `package_results` (taken by the loop, which wraps them in its `Event`).
    package_worker: crate::worker::Worker<packages::Done>,
    package_results: Option<mpsc::UnboundedReceiver<packages::Done>>,
    /// A policy update waiting for package reads in flight, so that its action cap counts the
    /// packages as they are now (set at the time of the update).
    pending_update: Option<Instant>,
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
        // One thread: reads and removals of packages run in the order the loop submits them.
        let (package_worker, package_results) = crate::worker::Worker::spawn("embargo-packages", 1)
            .map_err(|e| format!("starting the package worker: {e}"))?;
        Ok(Self {
            cfg,
            clock,
            rules,
            rules_tx,
            policy,
            folders: Folders::default(),
            packages: Packages::default(),
            watcher,
            store,
            evidence,
            held: Held::default(),
            exempt: HashSet::new(),
            self_exe,
            started: Instant::now(),
            sync_tx,
            sync_waiters: Vec::new(),
            retry_at: None,
            retry_attempts: 0,
            package_worker,
            package_results: Some(package_results),
            pending_update: None,
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
                Hint::Database(i) => self.read_packages(i),
                Hint::Gone(path) => self.folders.forget_under(&path),
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
        let (files, hits) = self.folders.list(path, self.cfg.max_files_per_scan);
        self.enforce_listed(files, hits, since);
    }

    /// Whether a scan stopped at the bound waits to be continued.
    pub fn has_pending_scans(&self) -> bool {
        self.folders.has_pending_walks()
    }

    /// Continues the scans that stopped at the bound, one batch each.
    pub fn continue_scans(&mut self) {
        let (files, hits) = self.folders.continue_walks(self.cfg.max_files_per_scan);
        self.enforce_listed(files, hits, Instant::now());
    }

    fn enforce_listed(&mut self, files: Vec<(usize, PathBuf)>, hits: Vec<BoundHit>, since: Instant) {
        for hit in hits {
            tracing::warn!(root = %hit.root.display(), entries = hit.entries, "scan stopped at the bound on entries per scan; continuing where it stopped");
            self.evidence.emit(AuditEvent::ScanBound {
                root: hit.root.display().to_string(),
                entries: hit.entries,
                reason: "entries per scan".into(),
            });
        }
        for (ri, rel) in files {
            self.enforce_file(ri, rel, since);
        }
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

    /// Identifies one file beneath folder root `ri`, decides, acts, records.
    pub fn enforce_file(&mut self, ri: usize, rel: PathBuf, since: Instant) {
        if rel.as_os_str().is_empty() {
            return;
        }
        let root = &self.folders.roots[ri];
        let full = root.path.join(&rel);
        // A path longer than one resolution allows is reached through its parent directory,
        // opened in chunks beneath the root; the file is then opened and moved relative to it.
        let deep = if crate::source::walk::is_long(&rel) {
            let parent = rel.parent().unwrap_or(Path::new(""));
            match crate::source::walk::open_long(
                &root.fd,
                parent,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            ) {
                Ok(fd) => Some((fd, root.path.join(parent), PathBuf::from(rel.file_name().unwrap_or_default()))),
                Err(_) => {
                    self.folders.inventory.remove(&full);
                    return;
                }
            }
        } else {
            None
        };
        let (base_fd, base_path, base_rel) = match &deep {
            Some((fd, p, r)) => (fd, p.clone(), r.clone()),
            None => (&root.fd, root.path.clone(), rel.clone()),
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
        let cached = self
            .folders
            .inventory
            .get(&full)
            .filter(|it| it.id == meta.id && it.size == meta.size)
            .map(|it| it.app.clone());
        let mut app = match cached {
            Some(app) => app,
            None => match crate::identify::identify_unhashed(root.kind, &base_path, &base_rel, &mut file, &meta) {
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
        let exempt = self.exempt.contains(&meta.id);
        let held = self.held.files.contains(&full);
        let mut verdict = self.rules.verdict(&app).map(|v| (v.to_owned(), v.except_by_hash));
        let mut decision = decide::decide(&self.input(verdict.as_ref(), app.sha256.is_some(), exempt, held));
        if decision == Decision::NeedHash {
            match crate::identify::sha256_of(&mut file) {
                Ok(h) => app.sha256 = Some(h),
                Err(e) => {
                    tracing::warn!(path = %full.display(), error = %e, "cannot hash");
                    return;
                }
            }
            verdict = self.rules.verdict(&app).map(|v| (v.to_owned(), v.except_by_hash));
            decision = decide::decide(&self.input(verdict.as_ref(), true, exempt, held));
        }
        let verdict = verdict.map(|(v, _)| v);
        let audited = self.folders.inventory.get(&full).is_some_and(|it| it.audited && it.verdict == verdict);
        let root_path = self.folders.roots[ri].path.clone();
        self.folders.inventory.insert(
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
        let recorded_once = |this: &mut Self, action: &str, result: &str, outcome: Outcome| {
            if !audited {
                this.record(action, result, outcome, &v, &app, &full, None, since.elapsed());
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
                let base_fd = match &deep {
                    Some((fd, _, _)) => fd,
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
                        let v =
                            if app.sha256.is_none() { self.hash_after_move(&mut app, &mut file, v, &mut m) } else { v };
                        tracing::info!(app = %app.id, path = %full.display(), rule = %v.rule, action = %v.action, id = %m.id, "quarantined");
                        self.record(
                            &v.action.to_string(),
                            "quarantined",
                            Outcome::Quarantined,
                            &v,
                            &app,
                            &full,
                            Some(m.id.clone()),
                            elapsed,
                        );
                    }
                    Err(e) => {
                        let elapsed = since.elapsed();
                        if app.sha256.is_none() {
                            app.sha256 = crate::identify::sha256_of(&mut file).ok();
                        }
                        tracing::warn!(app = %app.id, path = %full.display(), rule = %v.rule, error = %e, "quarantine failed");
                        self.record(
                            &v.action.to_string(),
                            &format!("failed: {e}"),
                            Outcome::Failed,
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
    /// it now through the same fd and complete the manifest. `decide::after_hash` keeps the
    /// move's verdict unless the hash brings one at least as severe; the manifest and the audit
    /// record name the final rule.
    fn hash_after_move(
        &mut self,
        app: &mut App,
        file: &mut std::fs::File,
        v: Verdict,
        m: &mut act::quarantine::Manifest,
    ) -> Verdict {
        let (v, sha) = match crate::identify::sha256_of(file) {
            Ok(sha) => {
                app.sha256 = Some(sha.clone());
                (decide::after_hash(v, self.rules.verdict(app).map(|x| x.to_owned())), sha)
            }
            Err(e) => {
                tracing::warn!(id = %m.id, error = %e, "cannot hash the quarantined file; its manifest has no sha256");
                (v, String::new())
            }
        };
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

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        action: &str,
        result: &str,
        outcome: Outcome,
        v: &Verdict,
        app: &App,
        path: &Path,
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
        let d = decide::decide(&Input {
            verdict: Some(&v),
            except_by_hash: false,
            hash_known: true,
            mode: self.cfg.mode,
            exempt: false,
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
                    Ok(read) => r.apply_read(read, &rules, &self.rules),
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
                self.conclude_package(i, &name, &verdict, outcome, Some(PackageOutcome::Removing), since);
            }
        }
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
            Decision::Act(action) => act::act_on_package(&self.packages.roots[i], name, action, &v, &self.store),
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
            PackageOutcome::Protected(why) => ("skip".to_owned(), format!("protected: {why}"), Outcome::Protected),
            PackageOutcome::Failed(e) => ("remove".to_owned(), format!("failed: {e}"), Outcome::Failed),
        };
        self.evidence.counters.detected += 1;
        tracing::info!(package = %app.id, rule = %v.rule, %result, "package");
        self.record(&action, &result, counted, v, &app, &path, None, since.elapsed());
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
                    decide::decide(&self.input(v.as_ref(), true, self.exempt.contains(&it.id), false)),
                    Decision::Act(_)
                )
            })
            .map(|(p, _)| p.clone())
            .collect();
        let acts = pkg_acts.len() + file_acts.len();
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
                cap: self.cfg.max_actions_per_update,
            });
            self.held = Held { files: file_acts.into_iter().collect(), packages: pkg_acts.into_iter().collect() };
        }
        for (i, name) in pkg_todo {
            self.enforce_package(i, &name, since);
        }
        self.rescan_all(since);
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
        n
    }

    /// The backstop after each sync: re-expand roots, rescan, purge expired quarantine items.
    pub fn reconcile(&mut self) {
        self.refresh_roots();
        self.rescan_all(Instant::now());
        for m in self.store.purge_expired(self.clock.now()) {
            self.evidence.emit(AuditEvent::Purge {
                id: m.id,
                path: m.original_path,
                uid: None,
                reason: Some("retention".into()),
            });
        }
    }

    /// Whether the configured mode is monitor (for status).
    pub fn monitor(&self) -> bool {
        self.cfg.mode == Mode::Monitor
    }
}
