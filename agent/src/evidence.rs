//! Evidence: what the agent did, as typed [`AuditEvent`]s, fed to every [`Sink`] — the
//! hash-chained audit log, the counters and the last actions that status shows, and any sink
//! added later (a fleet reporter's spool, exec-gate statistics).
//!
//! Adding an event is one variant of [`AuditEvent`] (serde names it by its `type` tag); adding a
//! sink is one `impl Sink` passed to [`Evidence::add_sink`]. Sinks run on the core loop, so one
//! must only copy what it needs and hand slow work (network, disk beyond an append) to its own
//! task. This module never decides and never acts.

use std::collections::VecDeque;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::audit::AuditLog;
use crate::proto::{ActionRecord, Counters};

/// How many recent actions status shows.
pub const LAST_ACTIONS: usize = 20;

/// What became of an app a rule matched (drives the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// An audit verdict recorded (audit rules, monitor mode).
    Recorded,
    /// Moved into the quarantine store.
    Quarantined,
    /// Removed through its package manager.
    Removed,
    /// Its executables quarantined; the package itself needs an admin.
    NeedsAdmin,
    /// Never acted on (Essential package, the agent itself).
    Protected,
    /// Held back by a policy update over the action cap, until `embargoctl confirm`.
    NeedsConfirmation,
    Failed,
}

/// One thing the agent did or saw, as written to the audit log (`{"type": "<variant>", …}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum AuditEvent {
    /// The daemon started, enforcing `policy` (the persisted version, if any).
    Start { pid: u32, policy: Option<u64> },
    /// The quarantine store repaired something at start-up.
    Recovery { fixed: String },
    /// The trusted state was damaged and moved aside; the agent started from what still verified.
    StateRecovery { note: String },
    /// A newly verified policy is in force.
    Policy { version: Option<u64>, sha256: Option<String>, rules: usize },
    /// A sync attempt failed; the last verified policy stays in force.
    SyncFailed { kind: String, message: String },
    /// A policy update would act on more apps than the cap allows: it acts on none.
    NeedsConfirmation {
        apps: usize,
        files: usize,
        packages: usize,
        /// Running banned processes (the exec gate's sweep) held with them.
        #[serde(default)]
        processes: usize,
        cap: usize,
    },
    /// An admin confirmed the held-back update.
    Confirmed { apps: usize, uid: u32 },
    /// A verdict acted on (or recorded) for one app.
    Action { record: ActionRecord, sha256: Option<String>, mode: String, outcome: Outcome },
    /// A scan of `root` stopped at a bound (`reason`); it continues where it stopped.
    ScanBound { root: String, entries: usize, reason: String },
    /// A watched folder reached a watch bound (`bound`: watches per root, per uid, share of
    /// max_user_watches, kernel limit; `uid`: the owner of the first directory refused): its
    /// directories beyond it are covered by the scan fallback. Written once per degradation.
    WatchBound { root: String, uid: u32, bound: String, limit: usize, detail: String },
    /// A file was not hashed (`reason`: over `max_hash_bytes`, too slow, unreadable); only rules
    /// that need no hash judged it.
    Unhashed {
        path: String,
        size: u64,
        reason: String,
        /// The file's owner (absent in lines written before it existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
    },
    /// The folder inventory of a root or uid (`of`) reached its bound (`bound`, in entries or
    /// bytes): further files there are enforced at each look but not remembered. Once per
    /// crossing (again only after falling below half the bound).
    InventoryBound { of: String, bound: String },
    /// An admin restored a quarantined file.
    Restore {
        id: String,
        path: String,
        /// The admin's uid.
        uid: u32,
        /// The file's owner (absent in lines written before it existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner_uid: Option<u32>,
    },
    /// The exec gate judged an exec banned (`result`: "denied", "would-deny (monitor)", or why it
    /// was allowed anyway: protected, the agent's child, an audit rule).
    ExecDenied { pid: i32, uid: Option<u32>, path: String, rule: String, result: String },
    /// The exec gate could not decide in time (`reason`: deadline, queue full, identification
    /// failed) and answered `answer` (`[exec] on_timeout`).
    ExecTimeout { pid: i32, uid: Option<u32>, path: String, answer: String, reason: String },
    /// The running-process sweep stopped a banned process (`killed: false`: monitor mode, past the
    /// action cap, or the kill failed; `note` says which).
    ProcessKilled {
        pid: i32,
        uid: Option<u32>,
        exe: String,
        rule: String,
        reason: String,
        killed: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// A quarantined file was deleted (by an admin, or at the end of its retention).
    Purge {
        id: String,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The file's owner (absent in lines written before it existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner_uid: Option<u32>,
    },
    /// A quarantine of a file of `uid` (costing `cost` allocated bytes) reached that owner's
    /// quota: `purged` of their oldest items made room, or (`disposal`) the file was deleted in
    /// place because it cannot fit (see `quota`).
    QuarantineQuota {
        uid: u32,
        path: String,
        cost: u64,
        max_items: usize,
        max_bytes: u64,
        purged: Vec<String>,
        disposal: String,
    },
}

/// Somewhere evidence goes.
pub trait Sink: Send {
    fn record(&mut self, event: &AuditEvent);
}

impl Sink for Counters {
    fn record(&mut self, event: &AuditEvent) {
        match event {
            AuditEvent::Action { outcome, .. } => match outcome {
                Outcome::Recorded => self.audited += 1,
                Outcome::Quarantined | Outcome::NeedsAdmin => self.quarantined += 1,
                Outcome::Removed => self.purged += 1,
                Outcome::Protected => self.protected_skipped += 1,
                Outcome::Failed => self.failed += 1,
                Outcome::NeedsConfirmation => {}
            },
            AuditEvent::Restore { .. } => self.restored += 1,
            AuditEvent::Unhashed { .. } => self.unhashed += 1,
            AuditEvent::Purge { .. } => self.purged += 1,
            AuditEvent::ExecDenied { result, .. } if result == "denied" => self.exec_denied += 1,
            AuditEvent::ProcessKilled { killed: true, .. } => self.processes_killed += 1,
            _ => {}
        }
    }
}

/// The most recent actions, newest first.
#[derive(Debug, Default)]
pub struct LastActions(pub VecDeque<ActionRecord>);

impl Sink for LastActions {
    fn record(&mut self, event: &AuditEvent) {
        if let AuditEvent::Action { record, .. } = event {
            self.0.push_front(record.clone());
            self.0.truncate(LAST_ACTIONS);
        }
    }
}

impl Sink for AuditLog {
    fn record(&mut self, event: &AuditEvent) {
        if let Err(e) = self.append_event(event) {
            tracing::error!(error = %e, path = %self.path().display(), "writing the audit log failed");
        }
    }
}

/// The evidence sinks of one agent.
pub struct Evidence {
    log: AuditLog,
    pub counters: Counters,
    pub last_actions: LastActions,
    others: Vec<Box<dyn Sink>>,
}

impl Evidence {
    pub fn new(log: AuditLog) -> Self {
        Self { log, counters: Counters::default(), last_actions: LastActions::default(), others: Vec::new() }
    }

    /// Adds a sink that sees every event from now on.
    pub fn add_sink(&mut self, sink: Box<dyn Sink>) {
        self.others.push(sink);
    }

    /// Records one event in every sink.
    pub fn emit(&mut self, event: AuditEvent) {
        self.log.record(&event);
        self.counters.record(&event);
        self.last_actions.record(&event);
        for s in &mut self.others {
            s.record(&event);
        }
    }

    pub fn audit_path(&self) -> &Path {
        self.log.path()
    }

    /// The audit log (its in-memory tail answers `events`).
    pub fn audit(&self) -> &AuditLog {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("audit.log");
        let mut ev = Evidence::new(AuditLog::open(&path).unwrap());
        let record = ActionRecord {
            time: "t".into(),
            action: "quarantine".into(),
            result: "quarantined".into(),
            rule: "r".into(),
            strength: "strong".into(),
            app_kind: "appimage".into(),
            app_id: "a".into(),
            path: "/p".into(),
            quarantine_id: None,
            micros: 1,
            owner_uid: None,
            app_version: None,
        };
        ev.emit(AuditEvent::Action { record, sha256: None, mode: "enforce".into(), outcome: Outcome::Quarantined });
        ev.emit(AuditEvent::NeedsConfirmation { apps: 3, files: 1, packages: 2, processes: 0, cap: 2 });
        assert_eq!(ev.counters.quarantined, 1);
        assert_eq!(ev.last_actions.0.len(), 1);
        let entries = crate::audit::read_entries(&path).unwrap();
        assert_eq!(crate::audit::verify(&entries), Ok(()));
        let e = entries[1].as_ref().unwrap();
        assert_eq!(e.event["type"], "needs-confirmation");
        assert_eq!(e.schema_version, crate::audit::AUDIT_SCHEMA_VERSION);
        let back: AuditEvent = serde_json::from_value(entries[0].as_ref().unwrap().event.clone()).unwrap();
        assert!(matches!(back, AuditEvent::Action { outcome: Outcome::Quarantined, .. }));
    }
}
