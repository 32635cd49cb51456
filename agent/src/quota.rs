//! The per-owner quarantine quota (issue 10, finding 11): at most
//! `quarantine_max_items_per_uid` items and `quarantine_max_bytes_per_uid` allocated bytes per
//! file owner (root's own files are not counted: only root can put them in a watched folder).
//!
//! The quota must never become a way to keep a banned app (fill it with throw-away banned files,
//! then drop the real one). So a quarantine beyond it is never refused:
//! - the owner's **oldest** items are purged first until the new one fits — only their own (one
//!   user cannot evict another's evidence), each purge audited with the reason;
//! - a single file larger than the byte bound on its own cannot fit: it is **deleted in place**
//!   (after the same checks as a quarantine: one link, the folder's user's file, killed first)
//!   rather than left where it was. A sparse file counts only its allocated bytes, so only a file
//!   whose owner really paid for that much data gets here.
//!
//! Either way a `quarantine-quota` audit event names the uid, the bounds and what was done, and
//! status is degraded naming the uid and the bound until the daemon restarts.

use std::path::Path;

use embargo_policy::app::App;
use embargo_policy::matcher::Verdict;

use crate::enforce::Enforcer;
use crate::evidence::{AuditEvent, Outcome};

/// Owners whose quota was hit since start (status names them), at most `MAX_UIDS` of them.
#[derive(Debug, Default)]
pub struct QuotaHits(pub std::collections::BTreeMap<u32, Hit>);

#[derive(Debug, Clone, Copy, Default)]
pub struct Hit {
    /// Times the quota was reached.
    pub times: u64,
    /// Items of this owner purged to make room.
    pub purged: u64,
    /// Files deleted in place, larger than the byte bound alone.
    pub deleted: u64,
}

/// Owners remembered in [`QuotaHits`] (more are counted under the last).
const MAX_UIDS: usize = 64;
/// Owners status names (the rest are counted).
const SHOWN: usize = 5;

impl QuotaHits {
    fn hit(&mut self, uid: u32) -> &mut Hit {
        let key = if self.0.len() >= MAX_UIDS && !self.0.contains_key(&uid) { u32::MAX } else { uid };
        self.0.entry(key).or_default()
    }

    /// The status reasons: one line per owner (at most `SHOWN`).
    pub fn reasons(&self, q: crate::config::QuarantineQuota, out: &mut Vec<String>) {
        for (uid, h) in self.0.iter().take(SHOWN) {
            let who = if *uid == u32::MAX { "further uids".to_owned() } else { format!("uid {uid}") };
            out.push(format!(
                "{who} reached the quarantine quota ({} items / {} bytes per uid) {} times: {} of its oldest items purged, {} files over the byte bound deleted in place",
                q.max_items, q.max_bytes, h.times, h.purged, h.deleted
            ));
        }
        if self.0.len() > SHOWN {
            out.push(format!("{} more uids reached the quarantine quota", self.0.len() - SHOWN));
        }
    }
}

impl Enforcer {
    /// Makes room for one more quarantined item of `uid` costing `cost` bytes, purging that
    /// owner's oldest items while one more would pass either bound. `false`: it cannot fit (on
    /// its own larger than the byte bound, or a purge failed) and is to be deleted in place.
    /// A file the quarantine would refuse (several hard links, not the folder's user's: see
    /// `quarantine::check_acceptable`) makes no room: it is refused and reported as before, and
    /// a hard link to another user's file can never evict that user's items.
    pub(crate) fn make_room(&mut self, ri: usize, file: &std::fs::File, uid: u32, cost: u64, path: &Path) -> bool {
        if uid == 0 {
            return true;
        }
        let acceptable = crate::safefs::meta(file)
            .ok()
            .zip(crate::safefs::meta(&self.folders.roots[ri].fd).ok())
            .is_some_and(|(m, root)| crate::act::quarantine::check_acceptable(&m, root.uid).is_ok());
        if !acceptable {
            return true;
        }
        let q = self.cfg.quarantine_quota;
        let mut own: Vec<(embargo_policy::metadata::Time, String, u64)> =
            self.qindex.values().filter(|m| m.uid == uid).map(|m| (m.quarantined_at, m.id.clone(), m.cost())).collect();
        let (mut items, mut bytes) = (own.len(), own.iter().map(|o| o.2).sum::<u64>());
        let fits = |items: usize, bytes: u64| items < q.max_items && bytes.saturating_add(cost) <= q.max_bytes;
        if fits(items, bytes) {
            return true;
        }
        own.sort();
        let mut purged = Vec::new();
        if cost <= q.max_bytes {
            for (_, id, c) in own {
                if fits(items, bytes) {
                    break;
                }
                match self.store.purge(&id) {
                    Ok(m) => {
                        self.qindex.remove(&id);
                        self.evidence.emit(AuditEvent::Purge {
                            id: id.clone(),
                            path: m.original_path.clone(),
                            uid: Some(m.uid),
                            reason: Some(format!(
                                "quarantine quota of uid {uid} ({} items / {} bytes): oldest purged to make room",
                                q.max_items, q.max_bytes
                            )),
                            owner_uid: Some(m.uid),
                        });
                        items -= 1;
                        bytes = bytes.saturating_sub(c);
                        purged.push(id);
                    }
                    Err(e) => tracing::warn!(%id, error = %e, "cannot purge to make room in the quarantine quota"),
                }
            }
        }
        let room = fits(items, bytes);
        let hit = self.quota_hits.hit(uid);
        hit.times += 1;
        hit.purged += purged.len() as u64;
        hit.deleted += u64::from(!room);
        tracing::warn!(uid, purged = purged.len(), room, "quarantine quota reached");
        self.evidence.emit(AuditEvent::QuarantineQuota {
            uid,
            path: path.display().to_string(),
            cost,
            max_items: q.max_items,
            max_bytes: q.max_bytes,
            purged,
            disposal: if room {
                "quarantined after purging this owner's oldest items".into()
            } else {
                "deleted in place: it cannot fit in the owner's quarantine quota".into()
            },
        });
        room
    }

    /// Deletes a banned file that cannot fit in its owner's quota (see the module header).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn delete_over_quota(
        &mut self,
        ri: usize,
        rel: &Path,
        file: &std::fs::File,
        meta: &crate::safefs::Meta,
        app: &App,
        v: &Verdict,
        full: &Path,
        since: std::time::Instant,
    ) {
        let Some((deep, base_path, base_rel)) = self.base_of(ri, rel) else { return };
        let base_fd = deep.as_ref().unwrap_or(&self.folders.roots[ri].fd);
        let kind = app.kind.to_string();
        let sha = app.sha256.clone().unwrap_or_default();
        let r = crate::act::quarantine::Request {
            root_path: &base_path,
            root_fd: base_fd,
            rel: &base_rel,
            file,
            meta,
            sha256: &sha,
            rule: &v.rule,
            action: v.action,
            app_kind: &kind,
            app_id: &app.id,
            purge_after: None,
        };
        let result = self.store.delete_in_place(&r);
        let elapsed = since.elapsed();
        match result {
            Ok(_) => {
                self.folders.inventory.remove(full);
                tracing::warn!(app = %app.id, path = %full.display(), rule = %v.rule, "deleted in place: over its owner's quarantine quota");
                self.record(
                    &v.action.to_string(),
                    "deleted in place (over the owner's quarantine quota)",
                    Outcome::Removed,
                    v,
                    app,
                    full,
                    Some(meta.uid),
                    None,
                    elapsed,
                );
            }
            Err(e) => {
                tracing::warn!(app = %app.id, path = %full.display(), error = %e, "deleting a file over the quarantine quota failed");
                self.record(
                    &v.action.to_string(),
                    &format!("failed: {e}"),
                    Outcome::Failed,
                    v,
                    app,
                    full,
                    Some(meta.uid),
                    None,
                    elapsed,
                );
            }
        }
    }
}
