//! Package-manager sources inside the daemon (dpkg today): which packages are installed under
//! each configured root, their verdicts, and acting on them through the package manager.
//!
//! The daemon calls `scan` when the package database changes (dpkg renames `status` into place
//! and writes its `updates/` journal at each commit, so acting on that event is acting right
//! after the transaction commits) and `retry` while a removal waits for another transaction's
//! lock. Files are never deleted by path here: removal is `dpkg --purge`; only when that would
//! take other packages with it are the package's executables quarantined (reversibly) and the
//! package reported as needing an admin.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use embargo_policy::app::App;
use embargo_policy::matcher::{RuleSet, Verdict};
use embargo_policy::rules::{Action, Kind};

use crate::dpkg::{self, Removal};
use crate::safefs::{self, FileId};

/// What happened to a package the policy bans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Audit-only verdict recorded.
    Audited,
    Removed,
    /// Not removable without taking others along: executables quarantined, admin needed.
    NeedsAdmin(String),
    /// A package-manager transaction holds the lock; retried when it ends.
    WaitingForLock,
    Protected(String),
    Failed(String),
}

pub struct PkgItem {
    pub package: dpkg::Package,
    pub app: App,
    pub verdict: Option<Verdict>,
    pub outcome: Option<Outcome>,
}

/// Which package manager owns a root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    Dpkg,
    Rpm,
    Flatpak,
    Snap,
}

impl Manager {
    pub fn kind(self) -> Kind {
        match self {
            Manager::Dpkg => Kind::Deb,
            Manager::Rpm => Kind::Rpm,
            Manager::Flatpak => Kind::Flatpak,
            Manager::Snap => Kind::Snap,
        }
    }
}

pub struct PkgRoot {
    pub manager: Manager,
    pub root: PathBuf,
    pub fd: OwnedFd,
    pub packages: BTreeMap<String, PkgItem>,
}

impl PkgRoot {
    pub fn open(manager: Manager, root: &Path) -> std::io::Result<Self> {
        let fd = safefs::open_root(root)?;
        let ok = match manager {
            Manager::Dpkg => dpkg::admindir(root).join("status").exists(),
            Manager::Rpm => crate::rpm::dbpath(root).is_some(),
            Manager::Flatpak => root.is_dir(),
            Manager::Snap => root.join("snap").is_dir(),
        };
        if !ok {
            return Err(std::io::Error::other(format!("{} has no {manager:?} database", root.display())));
        }
        Ok(Self { manager, root: root.to_path_buf(), fd, packages: BTreeMap::new() })
    }

    /// The database directory the daemon watches.
    pub fn admindir(&self) -> PathBuf {
        match self.manager {
            Manager::Dpkg => dpkg::admindir(&self.root),
            Manager::Rpm => crate::rpm::dbpath(&self.root).unwrap_or_else(|| self.root.join("var/lib/rpm")),
            Manager::Flatpak => self.root.clone(),
            Manager::Snap => self.root.join("snap"),
        }
    }

    /// The directories to watch (non-recursively).
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        match self.manager {
            Manager::Dpkg => vec![self.admindir(), self.admindir().join("updates")],
            Manager::Rpm | Manager::Flatpak => vec![self.admindir()],
            Manager::Snap => vec![self.admindir(), self.root.join("var/lib/snapd/snaps")],
        }
    }

    /// Whether a filesystem event means the database changed (and not, say, our own lock file
    /// being opened, or a reader's sqlite shared-memory file).
    pub fn is_db_change(&self, path: &Path) -> bool {
        let admin = self.admindir();
        match self.manager {
            Manager::Dpkg => path == admin.join("status") || path.parent() == Some(admin.join("updates").as_path()),
            Manager::Rpm => {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                path.parent() == Some(admin.as_path())
                    && matches!(name, "rpmdb.sqlite" | "Packages" | "Packages.db" | "Index.db" | "rpmdb.sqlite-wal")
            }
            Manager::Flatpak => path == admin.join(".changed") || path == admin.join("app"),
            Manager::Snap => {
                path.parent() == Some(admin.as_path())
                    || path.parent() == Some(self.root.join("var/lib/snapd/snaps").as_path())
            }
        }
    }

    fn read(&self) -> std::io::Result<Vec<(dpkg::Package, App)>> {
        let root = &self.root;
        let found: Vec<(dpkg::Package, Vec<String>)> = match self.manager {
            Manager::Dpkg => dpkg::installed(root)?
                .into_iter()
                .map(|p| {
                    let files = dpkg::files(root, &p);
                    (p, files)
                })
                .collect(),
            Manager::Rpm => crate::rpm::installed(root)?,
            Manager::Flatpak => crate::flatpak::installed(root)?,
            Manager::Snap => crate::snap::installed(root)?,
        };
        let kind = self.manager.kind();
        Ok(found
            .into_iter()
            .map(|(p, files)| {
                let app = dpkg::app_of(kind, root, &p, files);
                (p, app)
            })
            .collect())
    }

    /// Re-reads the installed packages and their verdicts. Returns the names whose verdict
    /// needs acting on (new, changed, or waiting).
    pub fn scan(&mut self, rules: &RuleSet) -> Vec<String> {
        let installed = match self.read() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(root = %self.root.display(), error = %e, "cannot read the package database");
                return Vec::new();
            }
        };
        let mut next = BTreeMap::new();
        let mut todo = Vec::new();
        for (p, app) in installed {
            let old = self.packages.remove(&p.name);
            let verdict = rules.verdict(&app).map(|v| v.to_owned());
            let outcome = old.filter(|o| o.package == p && o.verdict == verdict).and_then(|o| o.outcome);
            if verdict.is_some() && matches!(outcome, None | Some(Outcome::WaitingForLock)) {
                todo.push(p.name.clone());
            }
            next.insert(p.name.clone(), PkgItem { package: p, app, verdict, outcome });
        }
        self.packages = next;
        todo
    }

    /// Files of the package that are executables (what runs), as paths relative to the root.
    fn executables(&self, app: &App) -> Vec<PathBuf> {
        app.paths
            .iter()
            .filter_map(|p| Path::new(p).strip_prefix(&self.root).ok().map(Path::to_path_buf))
            .filter(|rel| {
                safefs::open_beneath(&self.fd, rel, rustix::fs::OFlags::PATH)
                    .and_then(|fd| safefs::meta(&fd))
                    .is_ok_and(|m| m.is_file && m.mode & 0o111 != 0)
            })
            .collect()
    }

    /// Kills processes running any file of the package.
    fn stop_processes(&self, app: &App) -> Vec<i32> {
        let mut killed = Vec::new();
        for rel in self.executables(app) {
            if let Ok(fd) = safefs::open_beneath(&self.fd, &rel, rustix::fs::OFlags::PATH) {
                if let Ok(m) = safefs::meta(&fd) {
                    killed.extend(crate::quarantine::kill_processes_running(FileId { dev: m.id.dev, ino: m.id.ino }));
                }
            }
        }
        killed
    }

    /// Acts on one banned package. `monitor` turns every action into audit.
    pub fn act(
        &mut self,
        name: &str,
        monitor: bool,
        store: &crate::quarantine::QuarantineStore,
    ) -> Option<(Verdict, App, Outcome)> {
        let item = self.packages.get(name)?;
        let v = item.verdict.clone()?;
        let app = item.app.clone();
        let package = item.package.clone();
        let action = if monitor { Action::Audit } else { v.action };
        let outcome = match action {
            Action::Audit => Outcome::Audited,
            Action::Remove => {
                if let Some(why) = package.protected() {
                    Outcome::Protected(why)
                } else {
                    self.stop_processes(&app);
                    let removal = match self.manager {
                        Manager::Dpkg => dpkg::purge(&self.root, &package),
                        Manager::Rpm => crate::rpm::erase(&self.root, &package),
                        Manager::Flatpak => crate::flatpak::uninstall(&self.root, &package),
                        Manager::Snap => crate::snap::remove(&package),
                    };
                    match removal {
                        Ok(Removal::Purged) => Outcome::Removed,
                        Ok(Removal::Busy) => Outcome::WaitingForLock,
                        Ok(Removal::Protected(why)) => Outcome::Protected(why),
                        Ok(Removal::NeedsAdmin(why)) => {
                            let moved = self.quarantine_executables(&app, &v, store);
                            Outcome::NeedsAdmin(format!(
                                "other packages depend on {name} ({why}); executables quarantined: {moved}"
                            ))
                        }
                        Err(e) => Outcome::Failed(e),
                    }
                }
            }
            Action::Quarantine => match package.protected() {
                Some(why) => Outcome::Protected(why),
                None => {
                    self.stop_processes(&app);
                    let moved = self.quarantine_executables(&app, &v, store);
                    Outcome::NeedsAdmin(format!("quarantine of a managed package: executables quarantined ({moved}); remove it with the package manager"))
                }
            },
        };
        if let Some(item) = self.packages.get_mut(name) {
            item.outcome = Some(outcome.clone());
        }
        Some((v, app, outcome))
    }

    /// Quarantines the package's executables (reversible; the package database is untouched).
    fn quarantine_executables(&self, app: &App, v: &Verdict, store: &crate::quarantine::QuarantineStore) -> usize {
        let mut n = 0;
        for rel in self.executables(app) {
            let Ok((mut file, meta)) = safefs::open_file_beneath(&self.fd, &rel) else { continue };
            let sha = crate::identify::sha256_of(&mut file).unwrap_or_default();
            let req = crate::quarantine::Request {
                root_path: &self.root,
                root_fd: &self.fd,
                rel: &rel,
                file: &file,
                meta: &meta,
                sha256: &sha,
                rule: &v.rule,
                action: Action::Quarantine,
                app_kind: self.manager.kind().as_str(),
                app_id: &app.id,
                purge_after: None,
            };
            match store.quarantine(req) {
                Ok(_) => n += 1,
                Err(e) => {
                    tracing::warn!(package = %app.id, file = %rel.display(), error = %e, "quarantining a package executable failed")
                }
            }
        }
        n
    }

    pub fn waiting(&self) -> usize {
        self.packages.values().filter(|p| p.outcome == Some(Outcome::WaitingForLock)).count()
    }
}
