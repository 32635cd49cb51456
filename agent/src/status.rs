//! `embargoctl status` and `inventory`, built from the core loop's state. Reads only.

use embargo_policy::inventory::{Inventory, InventoryEntry, INVENTORY_SCHEMA_VERSION};
use embargo_policy::metadata::Time;

use crate::enforce::Enforcer;
use crate::proto;
use crate::source::Source as _;

impl Enforcer {
    pub fn status(&self) -> proto::Status {
        let mut reasons = Vec::new();
        if self.policy.policy_version.is_none() {
            reasons.push("no verified policy yet".to_owned());
        }
        // Expiry is judged now, not when the last sync report came in (a backed-off sync may
        // be minutes away while the timestamp expires).
        let now = self.clock.now();
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
        let mut sources = Vec::new();
        self.folders.status(&mut sources, &mut reasons);
        self.packages.status(&mut sources, &mut reasons);
        if self.backlog_dropped > 0 {
            reasons.push(format!(
                "hash backlog full ({} paths): {} files wait for the next scan",
                crate::hashpool::MAX_BACKLOG,
                self.backlog_dropped
            ));
        }
        if !self.held.is_empty() {
            reasons.push(format!("{} apps need confirmation (embargoctl confirm)", self.held.len()));
        }
        if let Some(note) = crate::STATE_RECOVERY.get().filter(|_| self.policy.last_success.is_none()) {
            reasons.push(note.clone());
        }
        if crate::act::quarantine::hardlinks_protected() == Some(false) {
            reasons.push("fs.protected_hardlinks is 0: users may hard link others' files into watched folders (such files are refused, not acted on)".into());
        }
        self.quota_hits.reasons(self.cfg.quarantine_quota, &mut reasons);
        let q = &self.qindex;
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
                counters: self.evidence.counters.clone(),
                last_actions: self.evidence.last_actions.0.iter().cloned().collect(),
                unhashed: self
                    .folders
                    .inventory
                    .iter()
                    .filter_map(|(p, it)| {
                        it.unhashed
                            .as_ref()
                            .map(|r| proto::UnhashedRecord { path: p.display().to_string(), reason: r.clone() })
                    })
                    .take(proto::UNHASHED_SHOWN)
                    .collect(),
            },
            quarantine: proto::QuarantineStatus { items: q.len(), bytes: q.values().map(|m| m.size).sum() },
            pending: {
                let report = self.reports.as_deref().map(crate::report::read_status);
                proto::PendingStatus {
                    needs_confirmation: self.held.len(),
                    reports: report.as_ref().map_or(0, |r| r.pending),
                    report,
                }
            },
            exec_gate: self.exec_gate.as_ref().map(|g| {
                let s = g.stats();
                proto::ExecGateStatus {
                    events: s.events,
                    allowed: s.allowed,
                    denied: s.denied,
                    cache_hits: s.cache_hits,
                    cache_misses: s.cache_misses,
                    cache_resets: s.cache_resets,
                    deadline: s.deadline,
                    queue_full: s.queue_full,
                    errors: s.errors,
                    spared: s.spared,
                    overflows: s.overflows,
                    hashed: s.hashed,
                    events_dropped: s.events_dropped,
                    marks: s.marks,
                    policy_updates: s.policy_updates,
                    kernel_cached: s.kernel_cached,
                    kernel_flushes: s.kernel_flushes,
                }
            }),
        }
    }

    /// `status` as `viewer` may see it (`None`: root, everything): the counters and sizes are
    /// aggregates; the last actions (by the owner they record, or their quarantine item's) and
    /// unhashed files are only the viewer's own.
    pub fn status_for(&self, viewer: Option<u32>) -> proto::Status {
        let mut s = self.status();
        if let Some(v) = viewer {
            let own = self.own_quarantine_ids(Some(v));
            s.enforcement
                .last_actions
                .retain(|a| a.owner_uid == Some(v) || a.quarantine_id.as_ref().is_some_and(|id| own.contains(id)));
            s.enforcement
                .unhashed
                .retain(|u| self.folders.inventory.get(std::path::Path::new(&u.path)).is_some_and(|it| it.uid == v));
        }
        s
    }

    /// One page of the quarantine index, oldest id first, as `viewer` may see it: `items` after
    /// the id `after` (at most `limit`), `next` (the `after` of the following page, absent on the
    /// last), and `hidden` (other users' items) for callers other than root. Costs one page.
    pub fn quarantine_page(&self, after: Option<String>, limit: usize, viewer: Option<u32>) -> serde_json::Value {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut rest = self
            .qindex
            .range::<String, _>((from, Bound::Unbounded))
            .map(|(_, m)| m)
            .filter(|m| viewer.is_none_or(|v| m.uid == v));
        let items: Vec<_> = rest.by_ref().take(limit).collect();
        let mut body = serde_json::json!({ "items": items });
        if let (Some(last), true) = (items.last(), rest.next().is_some()) {
            body["next"] = last.id.clone().into();
        }
        if let Some(v) = viewer {
            body["hidden"] = self.qindex.values().filter(|m| m.uid != v).count().into();
        }
        body
    }

    /// The quarantine items `viewer` owns (`None`: not needed, empty).
    pub fn own_quarantine_ids(&self, viewer: Option<u32>) -> std::collections::HashSet<String> {
        match viewer {
            None => Default::default(),
            Some(v) => self.qindex.values().filter(|m| m.uid == v).map(|m| m.id.clone()).collect(),
        }
    }

    /// One page of the inventory (`Inventory` plus `next`, the offset of the following page)
    /// as `viewer` may see it: their own files, every package (package databases are readable
    /// by all), and `hidden`, how many folder entries of other users were left out.
    /// Built from iterators over the entries, so an answer costs one page, whatever the size.
    pub fn inventory_page(&self, offset: usize, limit: usize, viewer: Option<u32>) -> serde_json::Value {
        let all = self
            .folders
            .inventory
            .values()
            .filter(|it| viewer.is_none_or(|v| it.uid == v))
            .map(|it| InventoryEntry { app: it.app.clone(), verdict: it.verdict.clone() })
            .chain(self.packages.roots.iter().flat_map(|r| {
                r.packages.values().map(|p| InventoryEntry { app: p.app.clone(), verdict: p.verdict.clone() })
            }));
        let mut rest = all.skip(offset);
        let apps: Vec<InventoryEntry> = rest.by_ref().take(limit).collect();
        let more = rest.next().is_some();
        let n = apps.len();
        let mut v = serde_json::to_value(Inventory { schema_version: INVENTORY_SCHEMA_VERSION, apps })
            .unwrap_or(serde_json::Value::Null);
        if let (true, Some(o)) = (more, v.as_object_mut()) {
            o.insert("next".into(), (offset + n).into());
        }
        if let (Some(viewer), Some(o)) = (viewer, v.as_object_mut()) {
            let hidden = self.folders.inventory.len() - self.folders.inventory.of_uid(viewer);
            o.insert("hidden".into(), hidden.into());
        }
        v
    }

    pub fn inventory(&self) -> Inventory {
        let apps = self
            .folders
            .inventory
            .values()
            .map(|it| InventoryEntry { app: it.app.clone(), verdict: it.verdict.clone() })
            .chain(self.packages.roots.iter().flat_map(|r| {
                r.packages.values().map(|p| InventoryEntry { app: p.app.clone(), verdict: p.verdict.clone() })
            }))
            .collect();
        Inventory { schema_version: INVENTORY_SCHEMA_VERSION, apps }
    }
}

/// Whether an audit event may be shown to `viewer`, a user who is not root: events that name no file
/// (start, policy, sync, confirmation); actions whose record names the viewer as owner
/// (audit-only verdicts included) or whose quarantine item is theirs (records written before
/// the owner was recorded); unhashed files and exec events of theirs; restores and purges of
/// their items (by the owner they record, or, for older lines, if the item is still stored).
pub fn event_visible(event: &serde_json::Value, viewer: u32, own: &std::collections::HashSet<String>) -> bool {
    event_visible_by(event, viewer, |id| own.contains(id))
}

/// [`event_visible`] with `own` as a predicate on quarantine ids (on the loop: a lookup in the
/// index, instead of a set of the viewer's ids built per request).
pub fn event_visible_by(event: &serde_json::Value, viewer: u32, own: impl Fn(&str) -> bool) -> bool {
    let ty = event.get("type").and_then(|t| t.as_str()).unwrap_or("");
    let uid_is_viewer = |v: Option<&serde_json::Value>| v.and_then(|u| u.as_u64()) == Some(u64::from(viewer));
    match ty {
        "start" | "policy" | "sync-failed" | "needs-confirmation" | "confirmed" => true,
        "action" => {
            let record = event.get("record");
            uid_is_viewer(record.and_then(|r| r.get("owner_uid")))
                || record.and_then(|r| r.get("quarantine_id")).and_then(|i| i.as_str()).is_some_and(&own)
        }
        "unhashed" | "exec-denied" | "exec-timeout" | "process-killed" => uid_is_viewer(event.get("uid")),
        "restore" | "purge" => {
            uid_is_viewer(event.get("owner_uid")) || event.get("id").and_then(|i| i.as_str()).is_some_and(&own)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::event_visible;
    use serde_json::json;

    /// Finding 14: what a non-root caller sees of the audit log, by the owner each line
    /// records; lines written before the owner was recorded fall back to the quarantine item.
    #[test]
    fn events_are_shown_to_the_owner_they_record() {
        let own: std::collections::HashSet<String> = ["q-mine".to_owned()].into();
        let action = |owner: Option<u32>, q: Option<&str>| {
            let mut r = json!({"action": "audit", "path": "/home/x/App.AppImage"});
            if let Some(o) = owner {
                r["owner_uid"] = o.into();
            }
            if let Some(q) = q {
                r["quarantine_id"] = q.into();
            }
            json!({"type": "action", "record": r})
        };
        assert!(event_visible(&action(Some(1000), None), 1000, &own), "an audit-only action on their file");
        assert!(!event_visible(&action(Some(1001), None), 1000, &own), "another user's");
        assert!(!event_visible(&action(None, None), 1000, &own), "a system package's, or an old line");
        assert!(event_visible(&action(None, Some("q-mine")), 1000, &own), "an old line about their stored item");
        let purge = json!({"type": "purge", "id": "q-gone", "path": "/p", "owner_uid": 1000});
        assert!(event_visible(&purge, 1000, &own), "a purge of their item no longer in the store");
        assert!(!event_visible(&purge, 1001, &own));
        let unhashed = json!({"type": "unhashed", "path": "/p", "size": 1, "reason": "r", "uid": 1000});
        assert!(event_visible(&unhashed, 1000, &own) && !event_visible(&unhashed, 1001, &own));
        let bound = json!({"type": "inventory-bound", "of": "uid 1000", "bound": "20000 entries"});
        assert!(!event_visible(&bound, 1000, &own), "bounds are root's");
        assert!(event_visible(&json!({"type": "policy", "version": 2}), 1000, &own));
    }

    /// Lines written before the owner fields existed still parse as typed events and their
    /// chain verifies; lines with them are the same shape plus the fields.
    #[test]
    fn audit_lines_without_owner_fields_still_parse_and_verify() {
        use crate::evidence::AuditEvent;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("audit.log");
        let mut log = crate::audit::AuditLog::open(&path).unwrap();
        let old = [
            json!({"type": "action", "record": {"time": "t", "action": "audit", "result": "recorded", "rule": "r",
                "strength": "strong", "app_kind": "appimage", "app_id": "a", "path": "/p", "micros": 1},
                "sha256": null, "mode": "enforce", "outcome": "recorded"}),
            json!({"type": "restore", "id": "q1", "path": "/p", "uid": 0}),
            json!({"type": "purge", "id": "q1", "path": "/p"}),
            json!({"type": "unhashed", "path": "/p", "size": 1, "reason": "r"}),
        ];
        for e in &old {
            log.append(e.clone()).unwrap();
        }
        drop(log);
        let entries = crate::audit::read_entries(&path).unwrap();
        assert_eq!(crate::audit::verify(&entries), Ok(()));
        for e in entries {
            let ev: AuditEvent = serde_json::from_value(e.unwrap().event).unwrap();
            let back = serde_json::to_value(&ev).unwrap().to_string();
            assert!(!back.contains("owner_uid") && !back.contains("\"uid\":null"), "{back}");
        }
    }
}
