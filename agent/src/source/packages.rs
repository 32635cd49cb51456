//! The package-manager source: every configured root of a kind in the registry
//! (`package::MANAGERS`), its database watched, what is installed there and each package's
//! verdict and outcome. Generic over [`PackageManager`]: nothing here names dpkg, rpm, flatpak or
//! snap.
//!
//! A database change (dpkg renames `status` into place and writes its `updates/` journal at each
//! commit, so acting on that event is acting right after the transaction commits) re-reads the
//! root. This module reads; removal is the act layer's (`act::remove_package`), and whether to
//! remove is `decide`'s.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use embargo_policy::app::App;
use embargo_policy::matcher::{RuleSet, Verdict};

use super::package::{InstalledPackage, Package, PackageManager, Removal, Suspension};
use super::{Hint, Source};
use crate::proto::SourceStatus;
use crate::safefs;

/// What became of a package the policy bans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageOutcome {
    /// Audit-only verdict recorded.
    Audited,
    Removed,
    /// Removed by a package-manager process that ran as this uid (a user's flatpak installation).
    RemovedAs(u32),
    /// Not removable without taking others along: executables quarantined, admin needed.
    NeedsAdmin(String),
    /// A package-manager transaction holds the lock; retried when it ends.
    WaitingForLock,
    Protected(String),
    /// Held back by a policy update over the action cap.
    Held,
    /// Decided; its removal (or suspension) is running on the package worker.
    Removing,
    /// Quarantined through the package manager (Android: suspended), quarantine entry `id`.
    Suspended(String),
    Failed(String),
}

/// One package as the worker read it.
pub struct ReadPackage {
    pub installed: InstalledPackage,
    pub app: App,
    pub verdict: Option<Verdict>,
}

/// What the package worker sends back to the core loop (the loop wraps it in its `Event`).
pub enum Done {
    /// A re-read of root `root`, matched against `rules`.
    Read { root: usize, rules: Arc<RuleSet>, result: Result<Vec<ReadPackage>, String> },
    /// A removal of package `name` of root `root` (decided at `since`) ran.
    Removed { root: usize, name: String, result: Result<Removal, String>, verdict: Verdict, since: Instant },
    /// A suspension of package `name` ran; `manifest` is its quarantine entry as the intent
    /// wrote it (or would have: nothing is on disk when no command was needed).
    Suspended {
        root: usize,
        name: String,
        manifest: Box<crate::act::quarantine::Manifest>,
        result: Result<Suspension, String>,
        verdict: Verdict,
        since: Instant,
    },
    /// `embargoctl quarantine restore ID` of a suspension ran; `reply` answers the request.
    Unsuspended { id: String, result: Result<(), String>, uid: u32, reply: Reply },
    /// The files of the needs-admin packages were read (request `seq`, for the exec gate);
    /// `Ok(None)`: not read, a newer request had been made by then.
    NeedsAdminPaths { seq: u64, result: Result<Option<crate::exec_gate::OwnedPaths>, String> },
}

/// A control request's reply, shared by a job and its panic handler (whichever runs answers).
pub type Reply = std::sync::Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<crate::proto::Response>>>>;

pub struct PackageItem {
    pub installed: InstalledPackage,
    pub app: App,
    pub verdict: Option<Verdict>,
    pub outcome: Option<PackageOutcome>,
}

/// One package-manager root.
pub struct PackageRoot {
    pub manager: &'static dyn PackageManager,
    pub root: PathBuf,
    pub fd: OwnedFd,
    pub packages: BTreeMap<String, PackageItem>,
    /// A read is on the worker; `reread`: another change came in meanwhile (one more read
    /// follows, however many changes). At most one read per root is queued or running.
    pub reading: bool,
    pub reread: bool,
    /// Whether a read has completed since the root was opened.
    pub read_once: bool,
}

impl PackageRoot {
    pub fn open(manager: &'static dyn PackageManager, root: &Path) -> std::io::Result<Self> {
        let fd = safefs::open_root(root)?;
        if !manager.has_database(root) {
            return Err(std::io::Error::other(format!("{} has no {} database", root.display(), manager.kind())));
        }
        Ok(Self {
            manager,
            root: root.to_path_buf(),
            fd,
            packages: BTreeMap::new(),
            reading: false,
            reread: false,
            read_once: false,
        })
    }

    /// The database directory (shown in status).
    pub fn db_dir(&self) -> PathBuf {
        self.manager.db_dir(&self.root)
    }

    /// The job that re-reads the installed packages and matches them against `rules`, for the
    /// package worker: the status file and the file lists of packages that changed are read
    /// there, never on the loop. Packages whose name, version and architecture did not change
    /// keep their file lists (a snapshot of them goes with the job).
    pub fn read_job(&self, index: usize, rules: Arc<RuleSet>) -> impl FnOnce() -> Done + Send + 'static {
        let manager = self.manager;
        let root = self.root.clone();
        let known: HashMap<String, (Package, Vec<String>)> = self
            .packages
            .iter()
            .map(|(n, o)| (n.clone(), (o.installed.package.clone(), o.installed.files.clone())))
            .collect();
        move || {
            let lookup = |p: &Package| known.get(&p.name).filter(|(k, _)| k == p).map(|(_, f)| f.clone());
            let result = manager
                .installed_since(&root, &lookup)
                .map(|installed| {
                    installed
                        .into_iter()
                        .map(|p| {
                            let app = manager.app(&root, &p);
                            let verdict = rules.verdict(&app).map(|v| v.to_owned());
                            ReadPackage { installed: p, app, verdict }
                        })
                        .collect()
                })
                .map_err(|e| e.to_string());
            Done::Read { root: index, rules, result }
        }
    }

    /// Takes in what the worker read (matched against `read_with`; re-matched here if the
    /// rules in force changed meanwhile). Returns the names whose verdict needs deciding (new,
    /// changed, held or waiting).
    pub fn apply_read(
        &mut self,
        read: Vec<ReadPackage>,
        read_with: &Arc<RuleSet>,
        rules: &Arc<RuleSet>,
    ) -> Vec<String> {
        let stale = !Arc::ptr_eq(read_with, rules);
        let mut next = BTreeMap::new();
        for ReadPackage { installed, app, verdict } in read {
            let verdict = if stale { rules.verdict(&app).map(|v| v.to_owned()) } else { verdict };
            let old = self.packages.remove(&installed.package.name);
            // A removal in flight stays in flight whatever the read says; its result decides.
            let outcome = old.and_then(|o| match o.outcome {
                Some(PackageOutcome::Removing) => Some(PackageOutcome::Removing),
                out => out.filter(|_| o.installed.package == installed.package && o.verdict == verdict),
            });
            next.insert(installed.package.name.clone(), PackageItem { installed, app, verdict, outcome });
        }
        self.packages = next;
        self.todo()
    }

    /// Matches the packages already read against new `rules` (no database read: the list is
    /// as current as the last change the database watch reported). Returns the names to decide.
    pub fn rematch(&mut self, rules: &RuleSet) -> Vec<String> {
        for item in self.packages.values_mut() {
            let verdict = rules.verdict(&item.app).map(|v| v.to_owned());
            if verdict != item.verdict && item.outcome != Some(PackageOutcome::Removing) {
                item.outcome = None;
            }
            item.verdict = verdict;
        }
        self.todo()
    }

    /// The packages whose verdict needs deciding.
    fn todo(&self) -> Vec<String> {
        self.packages
            .iter()
            .filter(|(_, p)| {
                p.verdict.is_some()
                    && matches!(p.outcome, None | Some(PackageOutcome::WaitingForLock | PackageOutcome::Held))
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The job that removes package `name` (decided on the loop) for the package worker.
    pub fn remove_job(
        &self,
        index: usize,
        name: &str,
        verdict: Verdict,
        since: Instant,
    ) -> Option<impl FnOnce() -> Done + Send + 'static> {
        let item = self.packages.get(name)?;
        let manager = self.manager;
        let root = self.root.clone();
        let fd = self.fd.try_clone().ok()?;
        let (app, package, name) = (item.app.clone(), item.installed.package.clone(), name.to_owned());
        Some(move || {
            let result = crate::act::remove_package(manager, &root, &fd, &app, &package);
            Done::Removed { root: index, name, result, verdict, since }
        })
    }

    /// The job that suspends package `name` (decided on the loop) for the package worker:
    /// the intent (`manifest`, users added) is written into the store directory `store_dir`
    /// before the first command runs.
    pub fn suspend_job(
        &self,
        index: usize,
        name: &str,
        verdict: Verdict,
        since: Instant,
        manifest: crate::act::quarantine::Manifest,
        store_dir: PathBuf,
    ) -> Option<impl FnOnce() -> Done + Send + 'static> {
        let item = self.packages.get(name)?;
        let manager = self.manager;
        let root = self.root.clone();
        let (package, name) = (item.installed.package.clone(), name.to_owned());
        Some(move || {
            let mut manifest = Box::new(manifest);
            let result = manager.suspend(&root, &package, &verdict.rule, &mut |users| {
                let s = manifest.suspension.as_mut().expect("a suspension entry");
                for u in users {
                    if !s.users.contains(u) {
                        s.users.push(*u);
                    }
                }
                s.state = crate::act::quarantine::SUSPENSION_INTENT.into();
                crate::act::quarantine::write_manifest_in(&store_dir, &manifest).map_err(|e| e.to_string())
            });
            Done::Suspended { root: index, name, manifest, result, verdict, since }
        })
    }

    pub fn waiting(&self) -> usize {
        self.packages.values().filter(|p| p.outcome == Some(PackageOutcome::WaitingForLock)).count()
    }
}

/// Every package-manager root in the config.
#[derive(Default)]
pub struct Packages {
    pub roots: Vec<PackageRoot>,
}

impl Packages {
    /// Opens the roots not open yet; returns the indices of the new ones (their directories
    /// still to watch and their packages still to read).
    pub fn open_new(&mut self, wanted: Vec<(&'static dyn PackageManager, PathBuf)>) -> Vec<usize> {
        let mut new = Vec::new();
        for (manager, root) in wanted {
            if self.roots.iter().any(|r| r.root == root && r.manager.kind() == manager.kind()) {
                continue;
            }
            match PackageRoot::open(manager, &root) {
                Ok(r) => {
                    tracing::info!(root = %root.display(), kind = %manager.kind(), "watching the package database");
                    self.roots.push(r);
                    new.push(self.roots.len() - 1);
                }
                Err(e) => tracing::warn!(root = %root.display(), error = %e, "cannot open the package root"),
            }
        }
        new
    }

    pub fn waiting(&self) -> usize {
        self.roots.iter().map(PackageRoot::waiting).sum()
    }
}

impl Source for Packages {
    fn hint(&self, ev: &notify::Event) -> Vec<Hint> {
        self.roots
            .iter()
            .enumerate()
            .filter(|(_, r)| ev.paths.iter().any(|p| r.manager.is_db_change(&r.root, p)))
            .map(|(i, _)| Hint::Database(i))
            .collect()
    }

    fn status(&self, out: &mut Vec<SourceStatus>, reasons: &mut Vec<String>) {
        out.extend(self.roots.iter().map(|r| SourceStatus {
            kind: r.manager.kind().to_string(),
            path: r.db_dir().display().to_string(),
            apps_seen: r.packages.len(),
            watch: "inotify".into(),
        }));
        let waiting = self.waiting();
        if waiting > 0 {
            reasons.push(format!("{waiting} package removal(s) waiting for the package manager's lock"));
        }
    }
}
