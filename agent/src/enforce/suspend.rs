//! Reversible quarantine of installed packages through their package manager (Android: `cmd
//! package suspend` per user), on the loop's side: what is decided and taken in here, the
//! commands run on the package worker (`PackageRoot::suspend_job`, `PackageManager::unsuspend`).
//!
//! A suspension is a quarantine entry of its own kind (`Manifest::suspension`): listed by
//! `embargoctl quarantine list`, undone by `restore` (`cmd package unsuspend` per user, then the
//! entry is dropped and the app at that version is exempt until the policy changes, as a
//! restored file's content is). `purge` of a suspension refuses while the app is installed: the
//! store holds nothing of the app to delete, and uninstalling is the policy's `remove` action,
//! which has its own protection checks and action cap. Once the app is gone, `purge` drops the
//! entry.
//!
//! Crash safety: the worker writes the entry (state `intent`, the users about to be acted on)
//! before the first command, and the result replaces it (state `suspended`, the users it now
//! holds). A crash in between leaves the intent, which lists every user a command may have run
//! for; restore runs `unsuspend` for each, which is harmless where nothing was suspended.

use std::path::Path;
use std::time::Instant;

use embargo_policy::matcher::Verdict;
use embargo_policy::rules::Action;

use super::Enforcer;
use crate::act::quarantine::{Manifest, Suspension, MANIFEST_SCHEMA_VERSION, SUSPENSION_DONE};
use crate::evidence::{AuditEvent, Outcome};
use crate::proto::Response;
use crate::source::package::{self, Package};
use crate::source::packages::{self, PackageOutcome, PackageRoot, Reply};

/// The exemption key of a package restored by an admin: this package at this version in this
/// root, kept in the exemptions file beside restored contents (a new policy clears both).
pub fn exempt_key(r: &PackageRoot, p: &Package) -> String {
    format!("package:{}:{}:{}@{}", r.manager.kind(), r.root.display(), p.name, p.version)
}

fn answer(reply: &Reply, response: Response) {
    if let Some(tx) = reply.lock().ok().and_then(|mut r| r.take()) {
        let _ = tx.send(response);
    }
}

impl Enforcer {
    /// The suspension entry of package `name` in root `i`, if there is one.
    fn suspension_of(&self, i: usize, name: &str) -> Option<&Manifest> {
        let root = &self.packages.roots[i].root;
        self.qindex
            .values()
            .find(|m| m.suspension.as_ref().is_some_and(|s| s.package == name) && m.root_path() == *root)
    }

    /// Hands the suspension of package `name` (decided: `Act(Quarantine)`) to the package worker.
    pub(super) fn suspend_package(&mut self, i: usize, name: &str, v: Verdict, since: Instant) {
        let r = &self.packages.roots[i];
        let Some(item) = r.packages.get(name) else { return };
        // An entry from an earlier run (or an intent a crash left) is continued, not doubled.
        let manifest = match self.suspension_of(i, name) {
            Some(m) => m.clone(),
            None => {
                let path = item.app.paths.first().cloned().unwrap_or_else(|| r.root.display().to_string());
                let rel = Path::new(&path).strip_prefix(&r.root).map(|p| p.display().to_string()).unwrap_or_default();
                Manifest {
                    schema_version: MANIFEST_SCHEMA_VERSION,
                    id: self.store.new_id(),
                    original_path: path,
                    root: r.root.display().to_string(),
                    rel,
                    uid: 0,
                    gid: 0,
                    mode: 0,
                    size: 0,
                    sha256: String::new(),
                    rule: v.rule.clone(),
                    action: Action::Quarantine,
                    app_kind: item.app.kind.to_string(),
                    app_id: item.app.id.clone(),
                    quarantined_at: self.clock.now(),
                    purge_after: None,
                    dev: 0,
                    ino: 0,
                    killed_pids: Vec::new(),
                    root_hex: None,
                    rel_hex: None,
                    payload_dir: None,
                    allocated: None,
                    suspension: Some(Suspension {
                        package: name.to_owned(),
                        users: Vec::new(),
                        state: SUSPENSION_DONE.into(),
                    }),
                }
            }
        };
        let store_dir = self.store.dir().to_path_buf();
        let Some(job) = r.suspend_job(i, name, v.clone(), since, manifest.clone(), store_dir) else { return };
        if let Some(item) = self.packages.roots[i].packages.get_mut(name) {
            item.outcome = Some(PackageOutcome::Removing);
        }
        let n = name.to_owned();
        self.package_worker.submit(job, move |why| packages::Done::Suspended {
            root: i,
            name: n,
            manifest: Box::new(manifest),
            result: Err(format!("the suspension panicked: {why}")),
            verdict: v,
            since,
        });
    }

    /// A suspension's result, back on the loop: the entry is completed (or dropped when it holds
    /// no user), the outcome recorded. A failure is recorded once and not retried until the
    /// package or the policy changes (the outcome is kept; only new verdicts are decided).
    pub(super) fn on_suspended(
        &mut self,
        i: usize,
        name: &str,
        mut m: Manifest,
        result: Result<package::Suspension, String>,
        v: &Verdict,
        since: Instant,
    ) {
        let known = self.qindex.contains_key(&m.id);
        let outcome = match result {
            Ok(package::Suspension::Suspended { users, already, failed }) => {
                let s = m.suspension.as_mut().expect("a suspension entry");
                // The entry's users: those of an earlier entry plus those suspended now (the
                // intent's list, less the ones whose command definitely failed).
                let mut held: Vec<u32> = self
                    .qindex
                    .get(&m.id)
                    .and_then(|e| e.suspension.as_ref())
                    .map(|e| e.users.clone())
                    .unwrap_or_default();
                held.extend(users.iter().copied());
                held.sort_unstable();
                held.dedup();
                s.users = held;
                s.state = SUSPENSION_DONE.into();
                let shown = s.users.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
                if s.users.is_empty() {
                    if !known {
                        let _ = self.store.forget(&m.id);
                    }
                } else if let Err(e) = self.store.write_manifest(&m) {
                    // The intent is on disk: restore still undoes every user it lists.
                    tracing::warn!(id = %m.id, error = %e, "cannot write the suspension's entry (its intent stays)");
                    self.qindex.insert(m.id.clone(), m.clone());
                } else {
                    self.qindex.insert(m.id.clone(), m.clone());
                }
                let failures = failed.iter().map(|(u, why)| format!("user {u}: {why}")).collect::<Vec<_>>().join("; ");
                match (m.suspension.as_ref().is_some_and(|s| !s.users.is_empty()), failed.is_empty()) {
                    (true, true) => PackageOutcome::Suspended(format!("{}, users {shown}", m.id)),
                    (true, false) => {
                        PackageOutcome::Failed(format!("suspended for users {shown} ({}), not for: {failures}", m.id))
                    }
                    (false, false) => PackageOutcome::Failed(format!("suspending failed: {failures}")),
                    (false, true) => {
                        let others = already.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
                        PackageOutcome::Protected(format!(
                            "already suspended by root for users {others}, not by the agent"
                        ))
                    }
                }
            }
            Ok(package::Suspension::NotInstalled) => {
                PackageOutcome::Protected(format!("{name} is installed for no user: nothing to suspend"))
            }
            Ok(package::Suspension::Protected(why)) => PackageOutcome::Protected(why),
            Err(e) => {
                // A job that panicked after its intent was written: list what is on disk.
                if let Ok(disk) = self.store.get(&m.id) {
                    if disk.suspension.is_some() {
                        self.qindex.insert(disk.id.clone(), disk);
                    }
                }
                PackageOutcome::Failed(e)
            }
        };
        let quarantine_id = match &outcome {
            PackageOutcome::Suspended(_) | PackageOutcome::Failed(_) if self.qindex.contains_key(&m.id) => {
                Some(m.id.clone())
            }
            _ => None,
        };
        let r = &mut self.packages.roots[i];
        let path = r.db_dir();
        let Some(item) = r.packages.get_mut(name) else { return };
        item.outcome = Some(outcome.clone());
        let app = item.app.clone();
        let (action, result, counted) = match &outcome {
            PackageOutcome::Suspended(what) => {
                ("quarantine", format!("suspended by cmd package suspend ({what})"), Outcome::Quarantined)
            }
            PackageOutcome::Protected(why) => ("skip", format!("protected: {why}"), Outcome::Protected),
            PackageOutcome::Failed(e) => ("quarantine", format!("failed: {e}"), Outcome::Failed),
            _ => return,
        };
        tracing::info!(package = %name, rule = %v.rule, %result, "package");
        self.evidence.counters.detected += 1;
        let owner = super::package_owner(&app);
        self.record(action, &result, counted, v, &app, &path, owner, quarantine_id, since.elapsed());
    }

    /// `embargoctl quarantine restore ID` of a suspension: `unsuspend` runs on the package
    /// worker; the reply follows from [`Self::on_unsuspended`].
    pub(crate) fn restore_suspension(&mut self, m: Manifest, uid: u32, reply: Reply) {
        let Some(s) = m.suspension.clone() else { return };
        let root_path = m.root_path();
        let Some(r) = self.packages.roots.iter().find(|r| r.manager.suspends() && r.root == root_path) else {
            answer(
                &reply,
                Response::err(
                    "failed",
                    format!("{}: not a watched package root; cannot unsuspend {}", m.root, s.package),
                ),
            );
            return;
        };
        let (manager, root, id) = (r.manager, r.root.clone(), m.id.clone());
        let (reply2, id2) = (reply.clone(), id.clone());
        self.package_worker.submit(
            move || {
                let result = manager.unsuspend(&root, &s.package, &s.users);
                packages::Done::Unsuspended { id, result, uid, reply }
            },
            move |why| packages::Done::Unsuspended {
                id: id2,
                result: Err(format!("the restore panicked: {why}")),
                uid,
                reply: reply2,
            },
        );
    }

    /// A restore's result: the entry dropped, the app exempt at its version until the policy
    /// changes (so the next read does not suspend it again), the request answered.
    pub(super) fn on_unsuspended(&mut self, id: String, result: Result<(), String>, uid: u32, reply: Reply) {
        let Some(m) = self.qindex.get(&id).cloned() else {
            answer(&reply, Response::err("failed", format!("no quarantined item {id:?}")));
            return;
        };
        if let Err(e) = result {
            // The entry stays; restore can be asked again (unsuspend is idempotent).
            answer(&reply, Response::err("failed", e));
            return;
        }
        if let Err(e) = self.store.forget(&id) {
            answer(&reply, Response::err("failed", e.to_string()));
            return;
        }
        self.qindex.remove(&id);
        let name = m.suspension.as_ref().map(|s| s.package.clone()).unwrap_or_default();
        let root_path = m.root_path();
        if let Some(r) = self.packages.roots.iter_mut().find(|r| r.manager.suspends() && r.root == root_path) {
            if let Some(item) = r.packages.get(&name) {
                let key = exempt_key(r, &item.installed.package);
                self.exempt.add(crate::exempt::Exemption {
                    sha256: key,
                    // No file has this size: the key never makes a file wait for its hash.
                    size: u64::MAX,
                    path: m.original_path.clone(),
                    quarantine_id: id.clone(),
                    uid,
                });
            }
            if let Some(item) = r.packages.get_mut(&name) {
                item.outcome = None;
            }
        }
        // A suspended app is a system-scope package: no owner, shown to root only.
        self.evidence.emit(AuditEvent::Restore { id, path: m.original_path.clone(), uid, owner_uid: None });
        answer(&reply, Response::ok(m));
    }

    /// `embargoctl quarantine purge ID` of a suspension: refused while the app is installed (see
    /// the module header); once it is gone, the entry is dropped.
    pub(crate) fn purge_suspension(&mut self, m: Manifest, uid: u32) -> Response {
        let name = m.suspension.as_ref().map(|s| s.package.as_str()).unwrap_or_default();
        let root_path = m.root_path();
        let installed = self
            .packages
            .roots
            .iter()
            .filter(|r| r.manager.suspends() && r.root == root_path)
            .any(|r| r.packages.contains_key(name));
        if installed {
            return Response::err(
                "failed",
                format!(
                    "{name} is still installed and suspended: `restore` unsuspends it; to uninstall it, make its rule `remove`"
                ),
            );
        }
        if let Err(e) = self.store.forget(&m.id) {
            return Response::err("failed", e.to_string());
        }
        self.qindex.remove(&m.id);
        self.evidence.emit(AuditEvent::Purge {
            id: m.id.clone(),
            path: m.original_path.clone(),
            uid: Some(uid),
            reason: Some("the suspended app is no longer installed".into()),
            owner_uid: None,
        });
        Response::ok(m)
    }
}
