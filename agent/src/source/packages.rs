//! The package-manager source: every configured root of a kind in the registry
//! (`package::MANAGERS`), its database watched, what is installed there and each package's
//! verdict and outcome. Generic over [`PackageManager`]: nothing here names dpkg, rpm, flatpak or
//! snap.
//!
//! A database change (dpkg renames `status` into place and writes its `updates/` journal at each
//! commit, so acting on that event is acting right after the transaction commits) re-reads the
//! root. This module reads; removal is the act layer's (`act::remove_package`), and whether to
//! remove is `decide`'s.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use embargo_policy::app::App;
use embargo_policy::matcher::{RuleSet, Verdict};

use super::package::{InstalledPackage, PackageManager};
use super::{Hint, Source};
use crate::proto::SourceStatus;
use crate::safefs;

/// What became of a package the policy bans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageOutcome {
    /// Audit-only verdict recorded.
    Audited,
    Removed,
    /// Not removable without taking others along: executables quarantined, admin needed.
    NeedsAdmin(String),
    /// A package-manager transaction holds the lock; retried when it ends.
    WaitingForLock,
    Protected(String),
    /// Held back by a policy update over the action cap.
    Held,
    Failed(String),
}

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
}

impl PackageRoot {
    pub fn open(manager: &'static dyn PackageManager, root: &Path) -> std::io::Result<Self> {
        let fd = safefs::open_root(root)?;
        if !manager.has_database(root) {
            return Err(std::io::Error::other(format!("{} has no {} database", root.display(), manager.kind())));
        }
        Ok(Self { manager, root: root.to_path_buf(), fd, packages: BTreeMap::new() })
    }

    /// The database directory (shown in status).
    pub fn db_dir(&self) -> PathBuf {
        self.manager.db_dir(&self.root)
    }

    /// Re-reads the installed packages and their verdicts. Returns the names whose verdict
    /// needs deciding (new, changed, held or waiting).
    pub fn read(&mut self, rules: &RuleSet) -> Vec<String> {
        // Packages whose name, version and architecture did not change keep their file lists.
        let known = |p: &super::package::Package| {
            self.packages.get(&p.name).filter(|o| o.installed.package == *p).map(|o| o.installed.files.clone())
        };
        let installed = match self.manager.installed_since(&self.root, &known) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(root = %self.root.display(), error = %e, "cannot read the package database");
                return Vec::new();
            }
        };
        let mut next = BTreeMap::new();
        let mut todo = Vec::new();
        for p in installed {
            let app = self.manager.app(&self.root, &p);
            let old = self.packages.remove(&p.package.name);
            let verdict = rules.verdict(&app).map(|v| v.to_owned());
            let outcome =
                old.filter(|o| o.installed.package == p.package && o.verdict == verdict).and_then(|o| o.outcome);
            if verdict.is_some()
                && matches!(outcome, None | Some(PackageOutcome::WaitingForLock | PackageOutcome::Held))
            {
                todo.push(p.package.name.clone());
            }
            next.insert(p.package.name.clone(), PackageItem { installed: p, app, verdict, outcome });
        }
        self.packages = next;
        todo
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
