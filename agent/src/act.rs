//! Acting: the only code that moves files (`quarantine`, the store), kills processes (`process`)
//! or runs a package manager's removal. It never decides: every function here is called with a
//! decision already made by `decide`, and returns what happened for `evidence`.

pub mod process;
pub mod quarantine;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use embargo_policy::app::App;
use embargo_policy::matcher::Verdict;
use embargo_policy::metadata::Time;
use embargo_policy::rules::Action;

use crate::safefs::{self, Meta};
use crate::source::package::{Package, PackageManager, Removal};
use crate::source::packages::{PackageOutcome, PackageRoot};
use quarantine::{Manifest, QuarantineError, QuarantineStore};

/// Moves one opened file beneath its root into the quarantine store (the store's step order:
/// see `quarantine`). `remove` verdicts are purged after `purge_at`.
#[allow(clippy::too_many_arguments)]
pub fn quarantine_file(
    store: &QuarantineStore,
    root_path: &Path,
    root_fd: &std::os::fd::OwnedFd,
    rel: &Path,
    file: &std::fs::File,
    meta: &Meta,
    app: &App,
    v: &Verdict,
    purge_at: Time,
) -> Result<Manifest, QuarantineError> {
    let purge_after = (v.action == Action::Remove).then_some(purge_at);
    let sha = app.sha256.clone().unwrap_or_default();
    let kind = app.kind.to_string();
    store.quarantine(quarantine::Request {
        root_path,
        root_fd,
        rel,
        file,
        meta,
        sha256: &sha,
        rule: &v.rule,
        action: v.action,
        app_kind: &kind,
        app_id: &app.id,
        purge_after,
    })
}

/// Files of the package that are executables (what runs), as paths relative to the root.
fn executables(root_path: &Path, root_fd: &OwnedFd, app: &App) -> Vec<PathBuf> {
    app.paths
        .iter()
        .filter_map(|p| Path::new(p).strip_prefix(root_path).ok().map(Path::to_path_buf))
        .filter(|rel| {
            safefs::open_beneath(root_fd, rel, rustix::fs::OFlags::PATH)
                .and_then(|fd| safefs::meta(&fd))
                .is_ok_and(|m| m.is_file && m.mode & 0o111 != 0)
        })
        .collect()
}

/// Kills processes running any executable of the package.
fn stop_package_processes(root_path: &Path, root_fd: &OwnedFd, app: &App) -> Vec<i32> {
    let mut killed = Vec::new();
    for rel in executables(root_path, root_fd, app) {
        if let Ok(fd) = safefs::open_beneath(root_fd, &rel, rustix::fs::OFlags::PATH) {
            if let Ok(m) = safefs::meta(&fd) {
                killed.extend(process::kill_processes_running(m.id));
            }
        }
    }
    killed
}

/// Quarantines the package's executables (reversible; the package database is untouched).
fn quarantine_executables(root: &PackageRoot, app: &App, v: &Verdict, store: &QuarantineStore) -> usize {
    let mut n = 0;
    for rel in executables(&root.root, &root.fd, app) {
        let Ok((mut file, meta)) = safefs::open_file_beneath(&root.fd, &rel) else { continue };
        let sha = crate::identify::sha256_of(&mut file).unwrap_or_default();
        let req = quarantine::Request {
            root_path: &root.root,
            root_fd: &root.fd,
            rel: &rel,
            file: &file,
            meta: &meta,
            sha256: &sha,
            rule: &v.rule,
            action: Action::Quarantine,
            app_kind: root.manager.kind().as_str(),
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

/// What the package worker runs for a package whose decision is `Act(Remove)`: stops its
/// processes and removes it through its package manager (dry run first, lock retries: the
/// manager's `remove`). Runs off the core loop: a package manager's run costs what the device's
/// database costs (dpkg loads every file list), and waiting for it must not stall the loop.
/// Everything it needs is passed in owned (the root's fd is a duplicate).
pub fn remove_package(
    manager: &'static dyn PackageManager,
    root_path: &Path,
    root_fd: &OwnedFd,
    app: &App,
    package: &Package,
) -> Result<Removal, String> {
    stop_package_processes(root_path, root_fd, app);
    manager.remove(root_path, package, false)
}

/// What a removal's result means for the package, back on the loop: a removal that would take
/// other packages along is not done; the package's executables are quarantined instead and an
/// admin is needed.
pub fn conclude_removal(
    root: &PackageRoot,
    name: &str,
    result: Result<Removal, String>,
    v: &Verdict,
    store: &QuarantineStore,
) -> PackageOutcome {
    match result {
        Ok(Removal::Purged) => PackageOutcome::Removed,
        Ok(Removal::PurgedAs(uid)) => PackageOutcome::RemovedAs(uid),
        Ok(Removal::Busy) => PackageOutcome::WaitingForLock,
        Ok(Removal::Protected(why)) => PackageOutcome::Protected(why),
        Ok(Removal::NeedsAdmin(why)) => {
            let moved = root.packages.get(name).map_or(0, |item| quarantine_executables(root, &item.app, v, store));
            PackageOutcome::NeedsAdmin(format!(
                "other packages depend on {name} ({why}); executables quarantined: {moved}"
            ))
        }
        Err(e) => PackageOutcome::Failed(e),
    }
}

/// Acts on one package whose decision is `Act(action)` for the actions that need no package
/// manager run: `quarantine` stops its processes and quarantines its executables (`remove` goes
/// through the package worker: [`remove_package`], then [`conclude_removal`]). Files of managed
/// packages are never deleted by path.
pub fn act_on_package(
    root: &PackageRoot,
    name: &str,
    action: Action,
    v: &Verdict,
    store: &QuarantineStore,
) -> PackageOutcome {
    let Some(item) = root.packages.get(name) else { return PackageOutcome::Failed(format!("{name} is gone")) };
    let app = &item.app;
    match action {
        Action::Audit => PackageOutcome::Audited,
        Action::Remove => PackageOutcome::Failed("a removal runs on the package worker".into()),
        Action::Quarantine => {
            stop_package_processes(&root.root, &root.fd, app);
            let moved = quarantine_executables(root, app, v, store);
            PackageOutcome::NeedsAdmin(format!(
                "quarantine of a managed package: executables quarantined ({moved}); remove it with the package manager"
            ))
        }
    }
}
