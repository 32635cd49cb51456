//! Fleet reports (docs/fleet.md, "The agent side"): a [`Sink`] of the typed evidence keeps the
//! device's compliance state, and a sender task of its own turns it into reports, spools each
//! one to disk (fsynced) before any send, and POSTs the spool oldest first to
//! `<[report] url>/v1/reports`, removing files once the server acknowledges their sequence.
//!
//! The core loop only takes a short mutex to copy an event into [`Shared`]; all disk and network
//! work happens on the sender task, so a slow or absent server never holds up enforcement.
//!
//! Bounds: the spool holds at most [`SPOOL_FILES`] reports and [`SPOOL_BYTES`] bytes; beyond,
//! the oldest are deleted and counted, and the next report's `gap` declares them. Events wait
//! in memory for the next report, at most [`MAX_EVENTS`] (older ones are dropped and counted in
//! `dropped_events`). Per rule at most `limits::MAX_APPS` apps, at most `limits::MAX_RULES` rules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embargo_policy::report::{self as wire, limits};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::evidence::{AuditEvent, Outcome, Sink};

/// Most reports kept in the spool.
pub const SPOOL_FILES: usize = 64;
/// Most bytes kept in the spool.
pub const SPOOL_BYTES: u64 = 4 << 20;
/// Most events waiting for the next report.
pub const MAX_EVENTS: usize = limits::MAX_EVENTS;
/// Shortest time between two reports made for state changes (they are coalesced).
pub const COALESCE: Duration = Duration::from_secs(2);

/// Status of the reporter, for `embargoctl status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportStatus {
    /// Reports spooled and not yet acknowledged.
    pub pending: usize,
    pub oldest_pending: Option<u64>,
    pub last_accepted: Option<u64>,
    /// Unix seconds when the server last acknowledged a report.
    pub last_accepted_at: Option<u64>,
    /// Reports dropped from the spool at its bound, since the agent started.
    pub dropped: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone)]
struct App {
    state: wire::AppStatus,
    /// The version the agent read from the app (package, APK, AppImage desktop entry).
    version: Option<String>,
    found_at: u64,
    since: u64,
    detail: Option<String>,
}

/// What the sink collects between reports.
#[derive(Debug, Default)]
pub struct Shared {
    /// (rule, kind, id, path) → app.
    apps: BTreeMap<(String, String, String, String), App>,
    events: Vec<wire::Event>,
    dropped_events: u64,
    policy: Option<wire::AppliedPolicy>,
    fleet: String,
    /// The reporter's own reasons (a refused report, dropped events).
    reasons: Vec<String>,
    /// The agent's degraded reasons as `status` names them, refreshed by the core loop after
    /// every sync (`set_health`).
    agent_reasons: Vec<String>,
    /// The audit log's entry number of the last event seen.
    audit_seq: u64,
    dirty: bool,
    pub status: ReportStatus,
}

/// The evidence sink: copies events into [`Shared`] and wakes the sender.
pub struct ReportSink {
    shared: Arc<Mutex<Shared>>,
    wake: Arc<tokio::sync::Notify>,
    now: Arc<dyn crate::clock::Clock>,
}

fn unix(t: embargo_policy::metadata::Time) -> u64 {
    t.0
}

fn clip(s: &str) -> String {
    let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if s.len() <= limits::STRING_LEN {
        return s;
    }
    let mut end = limits::STRING_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl Sink for ReportSink {
    fn record(&mut self, event: &AuditEvent) {
        let now = unix(self.now.now());
        let Ok(mut s) = self.shared.lock() else { return };
        s.audit_seq += 1;
        let (kind, rule, detail) = match event {
            AuditEvent::Action { record, outcome, .. } => {
                let state = match outcome {
                    Outcome::Recorded | Outcome::Protected => wire::AppStatus::Found,
                    Outcome::Quarantined => wire::AppStatus::Quarantined,
                    Outcome::Removed => wire::AppStatus::Removed,
                    Outcome::NeedsAdmin => wire::AppStatus::NeedsAdmin,
                    Outcome::NeedsConfirmation => wire::AppStatus::HeldForConfirmation,
                    Outcome::Failed => wire::AppStatus::Failed,
                };
                let key = (clip(&record.rule), clip(&record.app_kind), clip(&record.app_id), clip(&record.path));
                let detail = matches!(outcome, Outcome::Failed | Outcome::NeedsAdmin | Outcome::Protected)
                    .then(|| clip(&record.result));
                let version = record.app_version.as_deref().map(clip);
                let per_rule = s.apps.keys().filter(|k| k.0 == key.0).count();
                let rules = s.apps.keys().map(|k| &k.0).collect::<std::collections::BTreeSet<_>>().len();
                match s.apps.get_mut(&key) {
                    Some(a) => {
                        if a.state != state {
                            a.since = now;
                        }
                        a.state = state;
                        a.detail = detail;
                        // An upgrade in place (same path, new version) shows the new version.
                        if version.is_some() {
                            a.version = version;
                        }
                    }
                    // Beyond the wire bounds an app is not tracked (its events still go out).
                    None if per_rule < limits::MAX_APPS && rules < limits::MAX_RULES => {
                        s.apps.insert(key, App { state, version, found_at: now, since: now, detail });
                    }
                    None => {}
                }
                (
                    "action",
                    Some(record.rule.clone()),
                    format!("{} {} {}: {}", record.action, record.app_kind, record.app_id, record.result),
                )
            }
            AuditEvent::Policy { version, sha256, .. } => {
                if let (Some(v), Some(h)) = (version, sha256) {
                    let fleet = s.fleet.clone();
                    s.policy = Some(wire::AppliedPolicy { fleet, version: *v, sha256: h.clone(), applied_at: now });
                }
                ("policy", None, format!("policy {version:?} in force"))
            }
            AuditEvent::Purge { path, .. } => {
                // The quarantined copy is deleted: the app is gone from the device for good.
                for (k, a) in s.apps.iter_mut() {
                    if &k.3 == path && a.state == wire::AppStatus::Quarantined {
                        a.state = wire::AppStatus::Removed;
                        a.since = now;
                    }
                }
                ("purge", None, format!("purged {path}"))
            }
            AuditEvent::Restore { path, .. } => {
                // A restored app is on the device again; the next scan reports its verdict.
                s.apps.retain(|k, _| &k.3 != path);
                ("restore", None, format!("restored {path}"))
            }
            other => {
                let v = serde_json::to_value(other).unwrap_or_default();
                let kind = v["type"].as_str().unwrap_or("event").to_owned();
                (if kind == "sync-failed" { "sync-failed" } else { "other" }, None, format!("{kind}: {v}"))
            }
        };
        let seq = s.audit_seq;
        if s.events.len() >= MAX_EVENTS {
            s.events.remove(0);
            s.dropped_events += 1;
        }
        s.events.push(wire::Event {
            seq,
            at: now,
            kind: kind.into(),
            rule: rule.map(|r| clip(&r)),
            detail: clip(&detail),
        });
        s.dirty = true;
        drop(s);
        self.wake.notify_one();
    }
}

/// The reporter: the sink to add to the evidence, and the sender task to spawn.
pub struct Reporter {
    pub shared: Arc<Mutex<Shared>>,
    wake: Arc<tokio::sync::Notify>,
    clock: Arc<dyn crate::clock::Clock>,
    spool: PathBuf,
    transport: embargo_policy::https::HttpsTransport,
    device: String,
    mode: wire::Mode,
    interval: Duration,
}

/// The device id: the subject common name of the client certificate (what the server takes).
pub fn device_id(cert_pem: &[u8]) -> Result<String, String> {
    let der = rustls_pemfile_first(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| format!("client certificate: {e}"))?;
    let cn = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).map(str::to_owned);
    cn.filter(|c| !c.is_empty() && c.len() <= 128).ok_or_else(|| "client certificate: no subject common name".into())
}

fn rustls_pemfile_first(pem: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "client certificate: not PEM text".to_owned())?;
    let begin = "-----BEGIN CERTIFICATE-----";
    let start = text.find(begin).ok_or("client certificate: no PEM certificate")? + begin.len();
    let end = text[start..].find("-----END CERTIFICATE-----").ok_or("client certificate: unterminated PEM")? + start;
    let b64: String = text[start..end].chars().filter(|c| !c.is_whitespace()).collect();
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("client certificate: {e}"))
}

impl Reporter {
    /// Builds the reporter and its sink. Errors are configuration errors.
    pub fn new(
        cfg: &crate::Config,
        url: &str,
        clock: Arc<dyn crate::clock::Clock>,
        fleet: String,
        policy: Option<(u64, String)>,
        audit_seq: u64,
        quarantined: &[crate::act::quarantine::Manifest],
    ) -> Result<(Self, ReportSink), String> {
        let mut opts = embargo_policy::https::HttpsOptions::new(format!("{url}/"));
        if let Some(ca) = &cfg.ca {
            opts.ca_pem = Some(std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?);
        }
        let Some((c, k)) = &cfg.client_identity else {
            return Err("[report] needs [policy] client_cert and client_key (the device's identity)".into());
        };
        let cert = std::fs::read(c).map_err(|e| format!("{}: {e}", c.display()))?;
        let key = std::fs::read(k).map_err(|e| format!("{}: {e}", k.display()))?;
        let device = device_id(&cert)?;
        opts.client_identity = Some((cert, key));
        opts.total_timeout = Duration::from_secs(30);
        let transport = embargo_policy::https::HttpsTransport::new(opts)?;
        let spool = cfg.state_dir.join("reports");
        embargo_policy::fsutil::ensure_dir(&spool, 0o700).map_err(|e| format!("{}: {e}", spool.display()))?;
        let now = unix(clock.now());
        let shared = Arc::new(Mutex::new(Shared {
            policy: policy.map(|(version, sha256)| wire::AppliedPolicy {
                fleet: fleet.clone(),
                version,
                sha256,
                applied_at: now,
            }),
            fleet,
            audit_seq,
            dirty: true,
            ..Shared::default()
        }));
        // Apps quarantined before this start are still reported as quarantined (the sink only
        // sees events from now on), within the same per-rule and rule bounds.
        if let Ok(mut s) = shared.lock() {
            for m in quarantined {
                let key = (clip(&m.rule), clip(&m.app_kind), clip(&m.app_id), clip(&m.original_path));
                let per_rule = s.apps.keys().filter(|k| k.0 == key.0).count();
                let rules = s.apps.keys().map(|k| &k.0).collect::<std::collections::BTreeSet<_>>().len();
                if per_rule < limits::MAX_APPS && rules < limits::MAX_RULES {
                    let at = m.quarantined_at.0;
                    s.apps.insert(
                        key,
                        App {
                            state: wire::AppStatus::Quarantined,
                            version: None,
                            found_at: at,
                            since: at,
                            detail: None,
                        },
                    );
                }
            }
        }
        let wake = Arc::new(tokio::sync::Notify::new());
        let sink = ReportSink { shared: shared.clone(), wake: wake.clone(), now: clock.clone() };
        let mode = match cfg.mode {
            crate::config::Mode::Enforce => wire::Mode::Enforce,
            crate::config::Mode::Monitor => wire::Mode::Monitor,
        };
        let r = Self { shared, wake, clock, spool, transport, device, mode, interval: cfg.interval };
        r.refresh_status();
        Ok((r, sink))
    }

    /// Spooled sequences, oldest first, with sizes.
    fn spooled(&self) -> Vec<(u64, u64)> {
        spooled(&self.spool)
    }

    fn refresh_status(&self) {
        let files = self.spooled();
        if let Ok(mut s) = self.shared.lock() {
            s.status.pending = files.len();
            s.status.oldest_pending = files.first().map(|f| f.0);
        }
    }

    /// Makes a report of the current state and spools it (fsynced) before anything is sent.
    fn spool_one(&self) -> std::io::Result<()> {
        let next = read_next(&self.spool);
        // The next sequence is persisted before the report that uses it, so a crash between
        // the two never reuses a sequence.
        embargo_policy::fsutil::write_atomic(&self.spool, "next", (next + 1).to_string().as_bytes(), 0o600)?;
        let mut gap = None;
        let dropped = make_room(&self.spool);
        let report = {
            let mut s = self.shared.lock().map_err(|_| std::io::Error::other("report state poisoned"))?;
            if let (Some(first), Some(last)) = (dropped.first(), dropped.last()) {
                s.status.dropped += dropped.len() as u64;
                tracing::warn!(dropped = dropped.len(), first, last, "report spool full: oldest reports dropped");
                gap = Some(wire::Gap { dropped: dropped.len() as u64, first_sequence: *first, last_sequence: *last });
            }
            let rules = rule_states(&s);
            let health = health(&s);
            let r = wire::Report {
                version: wire::REPORT_VERSION,
                device: self.device.clone(),
                sequence: next,
                at: unix(self.clock.now()),
                agent_version: env!("CARGO_PKG_VERSION").into(),
                mode: self.mode,
                policy: s.policy.clone(),
                health,
                rules,
                events: std::mem::take(&mut s.events),
                gap,
            };
            s.dropped_events = 0;
            s.dirty = false;
            r
        };
        embargo_policy::fsutil::write_atomic(&self.spool, &name(next), &report.to_bytes(), 0o600)?;
        self.refresh_status();
        Ok(())
    }

    /// Sends the oldest spooled report. `Ok(true)`: something was acknowledged.
    async fn send_one(&self) -> Result<bool, (String, Option<Duration>)> {
        let Some((seq, _)) = self.spooled().first().copied() else { return Ok(false) };
        let path = self.spool.join(name(seq));
        let body = embargo_policy::fsutil::read_capped(&path, limits::REPORT_BYTES as u64)
            .map_err(|e| (format!("{}: {e}", path.display()), None))?;
        let resp = self.transport.post_json("v1/reports", body, 64 * 1024).await.map_err(|e| (e.to_string(), None))?;
        let text = String::from_utf8_lossy(&resp.body).trim().to_owned();
        match resp.status {
            200 => {
                let ack: wire::Ack = serde_json::from_slice(&resp.body)
                    .map_err(|e| (format!("the server's acknowledgement is not valid: {e}"), None))?;
                for (s, _) in self.spooled() {
                    if s <= ack.acked {
                        let _ = std::fs::remove_file(self.spool.join(name(s)));
                    }
                }
                let _ = embargo_policy::fsutil::sync_dir(&self.spool);
                if ack.acked < seq {
                    // The server stores only sequences above its last one: this one can never
                    // be stored (the agent's state directory was reset). Drop it, said loudly.
                    tracing::error!(
                        seq,
                        acked = ack.acked,
                        "the server already holds a higher report sequence; dropping"
                    );
                    let _ = std::fs::remove_file(&path);
                }
                if let Ok(mut s) = self.shared.lock() {
                    s.status.last_accepted = Some(ack.acked);
                    s.status.last_accepted_at = Some(unix(self.clock.now()));
                    s.status.last_error = None;
                    s.reasons.retain(|r| !r.starts_with("report refused"));
                }
                self.refresh_status();
                Ok(true)
            }
            429 | 503 => {
                Err((format!("server answered {}: {text}", resp.status), resp.retry_after.map(Duration::from_secs)))
            }
            400 | 403 | 413 => {
                let msg = format!("report refused ({}): {}", resp.status, clip(&text));
                if let Ok(mut s) = self.shared.lock() {
                    if !s.reasons.contains(&msg) {
                        s.reasons.push(msg.clone());
                    }
                }
                Err((msg, None))
            }
            other => Err((format!("server answered {other}: {}", clip(&text)), None)),
        }
    }

    /// The sender task: coalesces changes into reports (one at least every interval), spools
    /// them, and sends the spool with backoff and full jitter on failure.
    pub async fn run(self) {
        let mut failures = 0u32;
        let mut last_spool = tokio::time::Instant::now() - COALESCE;
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let dirty = self.shared.lock().map(|s| s.dirty).unwrap_or(false);
            let now = tokio::time::Instant::now();
            if dirty && now >= last_spool + COALESCE {
                if let Err(e) = self.spool_one() {
                    tracing::error!(error = %e, spool = %self.spool.display(), "spooling a report failed");
                }
                last_spool = now;
            }
            if retry_at.is_none_or(|t| now >= t) {
                retry_at = None;
                loop {
                    match self.send_one().await {
                        Ok(true) => failures = 0,
                        Ok(false) => break,
                        Err((msg, after)) => {
                            failures += 1;
                            tracing::warn!(error = %msg, "sending a report failed; it stays spooled");
                            if let Ok(mut s) = self.shared.lock() {
                                s.status.last_error = Some(msg);
                            }
                            let wait =
                                after.map(|a| a.min(self.interval)).unwrap_or_else(|| backoff(failures, self.interval));
                            retry_at = Some(tokio::time::Instant::now() + wait);
                            break;
                        }
                    }
                }
            }
            let heartbeat = last_spool + self.interval;
            let mut until = heartbeat;
            if let Some(t) = retry_at {
                until = until.min(t);
            }
            if dirty {
                until = until.min(last_spool + COALESCE);
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = self.wake.notified() => {}
            }
            if tokio::time::Instant::now() >= heartbeat {
                if let Ok(mut s) = self.shared.lock() {
                    s.dirty = true;
                }
            }
        }
    }

    pub fn spool_dir(&self) -> &Path {
        &self.spool
    }
}

fn backoff(failures: u32, cap: Duration) -> Duration {
    // Full jitter: uniform in [1 s, min(cap, 2^n s)].
    let ceiling = Duration::from_secs(1).saturating_mul(1 << failures.min(16)).min(cap).max(Duration::from_secs(1));
    Duration::from_secs_f64(rand::thread_rng().gen_range(1.0..=ceiling.as_secs_f64().max(1.0)))
}

/// Deletes the oldest spooled reports until one more fits the bound (fewer than
/// [`SPOOL_FILES`] files and at most [`SPOOL_BYTES`] bytes); returns the dropped sequences.
fn make_room(dir: &Path) -> Vec<u64> {
    let mut files = spooled(dir);
    let mut dropped = Vec::new();
    let mut bytes: u64 = files.iter().map(|f| f.1).sum();
    while files.len() >= SPOOL_FILES || (bytes > SPOOL_BYTES && !files.is_empty()) {
        let (seq, size) = files.remove(0);
        let _ = std::fs::remove_file(dir.join(name(seq)));
        bytes -= size;
        dropped.push(seq);
    }
    if !dropped.is_empty() {
        let _ = embargo_policy::fsutil::sync_dir(dir);
    }
    dropped
}

fn name(seq: u64) -> String {
    format!("{seq:020}.json")
}

fn read_next(dir: &Path) -> u64 {
    let persisted = std::fs::read_to_string(dir.join("next")).ok().and_then(|t| t.trim().parse::<u64>().ok());
    let newest = spooled(dir).last().map(|f| f.0 + 1);
    persisted.into_iter().chain(newest).max().unwrap_or(1).max(1)
}

/// `(sequence, bytes)` of every spooled report, oldest first (at most the spool bound plus one
/// are expected; anything not named like a report is ignored).
fn spooled(dir: &Path) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            let seq = n.strip_suffix(".json")?.parse::<u64>().ok()?;
            let m = e.metadata().ok()?;
            m.is_file().then_some((seq, m.len()))
        })
        .collect();
    out.sort_unstable();
    out
}

/// The per-rule app states a report carries, rules in id order.
fn rule_states(s: &Shared) -> Vec<wire::RuleState> {
    let mut rules: BTreeMap<String, Vec<wire::AppState>> = BTreeMap::new();
    for ((rule, kind, id, path), a) in &s.apps {
        rules.entry(rule.clone()).or_default().push(wire::AppState {
            kind: kind.clone(),
            id: id.clone(),
            version: a.version.clone(),
            path: (!path.is_empty()).then(|| path.clone()),
            state: a.state,
            found_at: a.found_at,
            since: a.since,
            detail: a.detail.clone(),
        });
    }
    rules.into_iter().map(|(rule, apps)| wire::RuleState { rule, apps }).collect()
}

/// The health a report carries: the agent's degraded reasons (as `status` shows them), then the
/// reporter's own, within the format's bounds.
fn health(s: &Shared) -> wire::Health {
    let mut reasons: Vec<String> = s.agent_reasons.iter().chain(&s.reasons).map(|r| clip(r)).collect();
    if s.dropped_events > 0 {
        reasons.push(format!("{} audit events not reported (over {MAX_EVENTS} between reports)", s.dropped_events));
    }
    reasons.truncate(limits::MAX_REASONS);
    wire::Health { degraded: !reasons.is_empty(), reasons }
}

/// Called by the core loop after each sync with `status`'s degraded reasons; a change makes the
/// next report due.
pub fn set_health(shared: &Mutex<Shared>, reasons: Vec<String>) {
    if let Ok(mut s) = shared.lock() {
        if s.agent_reasons != reasons {
            s.agent_reasons = reasons;
            s.dirty = true;
        }
    }
}

/// Status of the spool read from disk (for a status request when no reporter runs).
pub fn read_status(shared: &Mutex<Shared>) -> ReportStatus {
    shared.lock().map(|s| s.status.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spool_drops_the_oldest_at_its_bounds_and_keeps_the_sequence() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for seq in 1..=SPOOL_FILES as u64 {
            std::fs::write(dir.join(name(seq)), b"{}").unwrap();
        }
        std::fs::write(dir.join("next"), (SPOOL_FILES as u64 + 1).to_string()).unwrap();
        std::fs::write(dir.join("not-a-report"), b"x").unwrap();
        // Full by count: the oldest one goes.
        assert_eq!(make_room(dir), vec![1]);
        assert_eq!(spooled(dir).len(), SPOOL_FILES - 1);
        assert_eq!(read_next(dir), SPOOL_FILES as u64 + 1);
        // Over the byte bound: the oldest go until the rest fits.
        let big = vec![b' '; (SPOOL_BYTES / 2) as usize + 1];
        std::fs::write(dir.join(name(100)), &big).unwrap();
        std::fs::write(dir.join(name(101)), &big).unwrap();
        let dropped = make_room(dir);
        assert_eq!(dropped.first(), Some(&2));
        assert_eq!(dropped.last(), Some(&100), "{dropped:?}");
        assert_eq!(spooled(dir).iter().map(|f| f.0).collect::<Vec<_>>(), vec![101]);
        // The next sequence never goes back, whatever the spool holds.
        assert_eq!(read_next(dir), 102);
    }

    #[test]
    fn reports_carry_the_agents_degraded_reasons() {
        let shared = Mutex::new(Shared::default());
        assert!(!health(&shared.lock().unwrap()).degraded);
        set_health(&shared, vec!["policy is stale: timestamp v3 expired".into()]);
        let s = shared.lock().unwrap();
        assert!(s.dirty, "a new reason makes a report due");
        let h = health(&s);
        assert!(h.degraded);
        assert_eq!(h.reasons, vec!["policy is stale: timestamp v3 expired".to_owned()]);
    }

    #[test]
    fn the_sink_tracks_app_states_and_numbers_events_like_the_audit_log() {
        let shared = Arc::new(Mutex::new(Shared { audit_seq: 41, ..Shared::default() }));
        let mut sink = ReportSink {
            shared: shared.clone(),
            wake: Arc::new(tokio::sync::Notify::new()),
            now: Arc::new(crate::clock::SystemClock),
        };
        let record = crate::proto::ActionRecord {
            time: "t".into(),
            action: "quarantine".into(),
            result: "quarantined".into(),
            rule: "wechat".into(),
            strength: "strong".into(),
            app_kind: "appimage".into(),
            app_id: "wechat".into(),
            path: "/home/a/WeChat.AppImage".into(),
            quarantine_id: Some("q1".into()),
            micros: 1,
            owner_uid: None,
            app_version: Some("4.0.1".into()),
        };
        sink.record(&AuditEvent::Action {
            record,
            sha256: None,
            mode: "enforce".into(),
            outcome: Outcome::Quarantined,
        });
        {
            let s = shared.lock().unwrap();
            let app = s.apps.values().next().unwrap();
            assert_eq!(app.state, wire::AppStatus::Quarantined);
            assert_eq!(app.version.as_deref(), Some("4.0.1"), "the version the agent read is kept");
            let rules = rule_states(&s);
            assert_eq!(rules[0].apps[0].version.as_deref(), Some("4.0.1"), "and reported: {rules:?}");
            assert_eq!(s.events[0].seq, 42);
            assert_eq!(s.events[0].rule.as_deref(), Some("wechat"));
            assert!(s.dirty);
        }
        sink.record(&AuditEvent::Purge {
            id: "q1".into(),
            path: "/home/a/WeChat.AppImage".into(),
            uid: None,
            reason: Some("retention".into()),
            owner_uid: None,
        });
        let s = shared.lock().unwrap();
        assert_eq!(s.apps.values().next().unwrap().state, wire::AppStatus::Removed);
        assert_eq!(s.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![42, 43]);
    }
}
