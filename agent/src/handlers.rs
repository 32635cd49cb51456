//! The core loop's handlers for control requests and sync results (filesystem hints are
//! `Enforcer::on_hints`). Who may change anything is decided here from the caller's uid
//! (SO_PEERCRED, carried by `control::Call`), never from the request.

use std::time::Instant;

use tokio::sync::oneshot;

use crate::enforce::Enforcer;
use crate::evidence::AuditEvent;
use crate::proto::{Request, Response};

impl Enforcer {
    pub fn on_control(&mut self, request: Request, uid: u32, reply: oneshot::Sender<Response>) {
        let me = rustix::process::geteuid().as_raw();
        if request.mutates() && uid != 0 && uid != me {
            let _ = reply
                .send(Response::err("denied", "permission denied: this request changes the agent and requires root"));
            return;
        }
        // Reads are filtered by the caller's uid: root (and the daemon's own uid) sees all, any
        // other user their own files plus aggregate counts (issue 10, finding 14).
        let viewer = (uid != 0 && uid != me).then_some(uid);
        let response = match request {
            Request::Status => Response::ok(self.status_for(viewer)),
            Request::Inventory { offset, limit } => Response::ok(self.inventory_page(
                offset,
                limit.unwrap_or(crate::proto::INVENTORY_PAGE).min(crate::proto::INVENTORY_PAGE),
                viewer,
            )),
            Request::Evaluate { app } => Response::ok(self.rules.matches(&app)),
            Request::QuarantineList => {
                let mut list: Vec<_> = self.qindex.values().cloned().collect();
                if let Some(v) = viewer {
                    list.retain(|m| m.uid == v);
                }
                Response::ok(list)
            }
            Request::Events { since, limit } => match crate::audit::read_entries(self.evidence.audit_path()) {
                Ok(entries) => {
                    let chain = crate::audit::verify(&entries);
                    let own = self.own_quarantine_ids(viewer);
                    let mut hidden = 0usize;
                    let out: Vec<_> = entries
                        .into_iter()
                        .flatten()
                        .filter(|e| e.seq > since)
                        .filter(|e| {
                            let shown = viewer.is_none_or(|v| crate::status::event_visible(&e.event, v, &own));
                            hidden += usize::from(!shown);
                            shown
                        })
                        .take(limit.min(10_000))
                        .collect();
                    let mut body =
                        serde_json::json!({"entries": out, "chain_ok": chain.is_ok(), "chain_break": chain.err()});
                    if viewer.is_some() {
                        body["hidden"] = hidden.into();
                    }
                    Response::ok(body)
                }
                Err(e) => Response::err("failed", format!("{}: {e}", self.evidence.audit_path().display())),
            },
            Request::Sync => {
                if self.sync_tx.try_send(crate::sync::Command::Now).is_err() {
                    let _ = reply.send(Response::err("busy", "a sync is already queued"));
                    return;
                }
                self.sync_waiters.push(reply);
                return;
            }
            Request::Scan => {
                self.refresh_roots();
                self.rescan_all(Instant::now());
                Response::ok(serde_json::json!({"apps": self.folders.inventory.len()}))
            }
            Request::QuarantineRestore { id } if self.qindex.get(&id).is_some_and(|m| m.suspension.is_some()) => {
                // An app suspended through its package manager: unsuspended on the package
                // worker, answered when that is done (`enforce::suspend`).
                let m = self.qindex[&id].clone();
                self.restore_suspension(m, uid, std::sync::Arc::new(std::sync::Mutex::new(Some(reply))));
                return;
            }
            Request::QuarantinePurge { id } if self.qindex.get(&id).is_some_and(|m| m.suspension.is_some()) => {
                let m = self.qindex[&id].clone();
                self.purge_suspension(m, uid)
            }
            Request::QuarantineRestore { id } => match self.store.restore(&id) {
                Ok(m) => {
                    self.qindex.remove(&id);
                    self.evidence.emit(AuditEvent::Restore {
                        id,
                        path: m.original_path.clone(),
                        uid,
                        owner_uid: Some(m.uid),
                    });
                    // Restored by an admin: that content (not the inode: its owner can write
                    // another build into it) is exempt until the policy changes, across
                    // restarts, so a restore is not undone by the next event. A file quarantined
                    // without a hash (over `max_hash_bytes`) cannot be exempted by content.
                    if m.sha256.is_empty() {
                        tracing::warn!(id = %m.id, "restored without a hash: not exempt, the policy still applies");
                    } else {
                        self.exempt.add(crate::exempt::Exemption {
                            sha256: m.sha256.clone(),
                            size: m.size,
                            path: m.original_path.clone(),
                            quarantine_id: m.id.clone(),
                            uid,
                        });
                    }
                    Response::ok(m)
                }
                Err(e) => Response::err("failed", e.to_string()),
            },
            Request::QuarantinePurge { id } => match self.store.purge(&id) {
                Ok(m) => {
                    self.qindex.remove(&id);
                    self.evidence.emit(AuditEvent::Purge {
                        id,
                        path: m.original_path.clone(),
                        uid: Some(uid),
                        reason: None,
                        owner_uid: Some(m.uid),
                    });
                    Response::ok(m)
                }
                Err(e) => Response::err("failed", e.to_string()),
            },
            Request::Confirm => Response::ok(serde_json::json!({"acted_on": self.confirm(uid)})),
        };
        let _ = reply.send(response);
    }

    /// A sync result: a new policy is applied (within the cap); otherwise the reconcile backstop.
    pub fn on_sync(&mut self, report: crate::sync::Report) {
        self.policy = report.status;
        let new_policy = report.new_rules.is_some();
        if let Some(rules) = report.new_rules {
            tracing::info!(version = ?self.policy.policy_version, rules = rules.len(), "enforcing new policy");
            self.evidence.emit(AuditEvent::Policy {
                version: self.policy.policy_version,
                sha256: self.policy.sha256.clone(),
                rules: rules.len(),
            });
            self.apply_rules(*rules);
        }
        if let Some(e) = &self.policy.last_error {
            if report.attempted {
                self.evidence.emit(AuditEvent::SyncFailed { kind: e.kind.clone(), message: e.message.clone() });
            }
        }
        if !new_policy {
            // The backstop for anything the watcher missed (a new policy already rescanned).
            self.reconcile();
        }
        if let Some(shared) = &self.reports {
            crate::report::set_health(shared, self.status().daemon.reasons);
        }
        for w in self.sync_waiters.drain(..) {
            let _ = w.send(match &self.policy.last_error {
                Some(e) if report.attempted => Response::err("sync_failed", format!("[{}] {}", e.kind, e.message)),
                _ => Response::ok(serde_json::json!({"policy_version": self.policy.policy_version})),
            });
        }
    }
}
