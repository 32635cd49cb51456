//! The compliance report: what an agent sends to `POST <report url>/v1/reports`, and the
//! server's acknowledgement. A wire format shared by agent and server, so it lives here.
//!
//! Versioned (`version` = `REPORT_VERSION`), strict (`deny_unknown_fields`), bounded (every list
//! and string has a cap, checked by `Report::parse` after serde's own body-size cap at the
//! server). The device id inside is informational: the server takes the device from the client
//! certificate and refuses a report naming another device.
//!
//! Delivery contract: each report carries a per-device `sequence`, strictly increasing from 1.
//! The server stores a sequence once; a retry of a stored sequence is acknowledged again without
//! storing anything. The acknowledgement names the highest sequence stored for the device; the
//! agent drops every spooled report at or below it. Reports are snapshots (the full current
//! state of every rule with a match), so a lost or dropped report loses history detail, never
//! the current state; a dropped range is declared in `gap`.

use serde::{Deserialize, Serialize};

/// The report format version this code reads and writes.
pub const REPORT_VERSION: u32 = 1;

pub mod limits {
    /// Largest report body, in bytes.
    pub const REPORT_BYTES: usize = 1024 * 1024;
    /// Rules with a matched app in one report.
    pub const MAX_RULES: usize = 1024;
    /// Apps per rule in one report.
    pub const MAX_APPS: usize = 256;
    /// Audit events in one report.
    pub const MAX_EVENTS: usize = 512;
    /// Degraded reasons in one report.
    pub const MAX_REASONS: usize = 32;
    /// Longest string field (ids, versions, paths, details).
    pub const STRING_LEN: usize = 1024;
}

/// One report: the device's whole compliance state at `at`, plus audit events since the last
/// acknowledged report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub version: u32,
    /// The device as the agent knows itself; must equal the client certificate's device id.
    pub device: String,
    /// Per device, strictly increasing from 1 across restarts (persisted with the spool).
    pub sequence: u64,
    /// When the agent made this report, Unix seconds.
    pub at: u64,
    pub agent_version: String,
    pub mode: Mode,
    /// The policy the agent enforces, if it has verified one.
    pub policy: Option<AppliedPolicy>,
    pub health: Health,
    /// Every rule that has a matched app on the device now, or had one since the last
    /// acknowledged report (so a removal is reported once as `removed`). A rule of the applied
    /// policy that is absent here has nothing on the device.
    pub rules: Vec<RuleState>,
    pub events: Vec<Event>,
    /// Reports the agent's spool dropped (oldest first when its bound was hit) before this one.
    pub gap: Option<Gap>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Enforce,
    Monitor,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedPolicy {
    pub fleet: String,
    pub version: u64,
    pub sha256: String,
    /// When the agent started enforcing this version, Unix seconds.
    pub applied_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub degraded: bool,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleState {
    pub rule: String,
    pub apps: Vec<AppState>,
}

/// One matched app and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppState {
    /// The source kind (`appimage`, `deb`, `rpm`, `flatpak`, `snap`, …).
    pub kind: String,
    /// The app's id in that kind (package name, desktop id, app id).
    pub id: String,
    pub version: Option<String>,
    pub path: Option<String>,
    pub state: AppStatus,
    /// When the app was first found, Unix seconds.
    pub found_at: u64,
    /// When `state` was reached, Unix seconds.
    pub since: u64,
    /// Why removal failed or needs an admin.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppStatus {
    /// Present; no action taken (monitor mode, or a rule whose action is audit).
    Found,
    /// Present; the action waits for `embargoctl confirm` (the per-update action cap).
    HeldForConfirmation,
    Quarantined,
    Removed,
    /// The package manager refused (dependencies): an admin must act.
    NeedsAdmin,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// The audit log's entry number.
    pub seq: u64,
    pub at: u64,
    pub kind: String,
    pub rule: Option<String>,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gap {
    pub dropped: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
}

/// The server's answer to a stored (or already stored) report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    pub version: u32,
    pub device: String,
    /// The highest sequence stored for this device.
    pub acked: u64,
    /// Whether this request stored the report (false: a retry of a stored sequence, or older).
    pub stored: bool,
}

/// The per-(device, rule) compliance state the server derives from a rule's apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleStatus {
    /// Nothing left on the device (all quarantined or removed).
    Compliant,
    /// Removal waits for confirmation.
    Pending,
    /// Present, no action taken.
    Installed,
    /// Removal failed or needs an admin.
    Failed,
}

impl RuleStatus {
    pub const ALL: [RuleStatus; 4] =
        [RuleStatus::Compliant, RuleStatus::Installed, RuleStatus::Pending, RuleStatus::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleStatus::Compliant => "compliant",
            RuleStatus::Pending => "pending",
            RuleStatus::Installed => "installed",
            RuleStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        RuleStatus::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl RuleState {
    /// The worst state among the rule's apps: failed > installed > pending > compliant.
    pub fn status(&self) -> RuleStatus {
        let of = |a: &AppState| match a.state {
            AppStatus::Quarantined | AppStatus::Removed => RuleStatus::Compliant,
            AppStatus::HeldForConfirmation => RuleStatus::Pending,
            AppStatus::Found => RuleStatus::Installed,
            AppStatus::NeedsAdmin | AppStatus::Failed => RuleStatus::Failed,
        };
        self.apps.iter().map(of).max().unwrap_or(RuleStatus::Compliant)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("report is {0} bytes, over the {max} byte limit", max = limits::REPORT_BYTES)]
    TooLarge(usize),
    #[error("report is not valid: {0}")]
    Malformed(String),
    #[error("report format version {0} is not supported (this server reads version {REPORT_VERSION})")]
    Version(u32),
    #[error("report field {field}: {problem}")]
    Bound { field: &'static str, problem: String },
}

fn bound(field: &'static str, problem: String) -> ReportError {
    ReportError::Bound { field, problem }
}

fn check_str(field: &'static str, s: &str) -> Result<(), ReportError> {
    if s.len() > limits::STRING_LEN {
        return Err(bound(field, format!("{} bytes, over {}", s.len(), limits::STRING_LEN)));
    }
    if s.chars().any(char::is_control) {
        return Err(bound(field, "contains control characters".into()));
    }
    Ok(())
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), ReportError> {
    if len > max {
        return Err(bound(field, format!("{len} entries, over {max}")));
    }
    Ok(())
}

impl Report {
    /// Parses and checks a report body: size, format version, unknown fields, bounds.
    pub fn parse(bytes: &[u8]) -> Result<Self, ReportError> {
        if bytes.len() > limits::REPORT_BYTES {
            return Err(ReportError::TooLarge(bytes.len()));
        }
        // The version is read first so an agent newer than the server gets a clear answer, not
        // an unknown-field error.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned = serde_json::from_slice(bytes).map_err(|e| ReportError::Malformed(e.to_string()))?;
        if v.version != REPORT_VERSION {
            return Err(ReportError::Version(v.version));
        }
        let report: Report = serde_json::from_slice(bytes).map_err(|e| ReportError::Malformed(e.to_string()))?;
        report.check()?;
        Ok(report)
    }

    /// Checks every bound; `parse` calls it, a sender should too.
    pub fn check(&self) -> Result<(), ReportError> {
        if self.version != REPORT_VERSION {
            return Err(ReportError::Version(self.version));
        }
        if self.sequence == 0 {
            return Err(bound("sequence", "starts at 1".into()));
        }
        check_str("device", &self.device)?;
        check_str("agent_version", &self.agent_version)?;
        if let Some(p) = &self.policy {
            check_str("policy.fleet", &p.fleet)?;
            if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bound("policy.sha256", "not 64 hex digits".into()));
            }
        }
        check_len("health.reasons", self.health.reasons.len(), limits::MAX_REASONS)?;
        for r in &self.health.reasons {
            check_str("health.reasons", r)?;
        }
        check_len("rules", self.rules.len(), limits::MAX_RULES)?;
        let mut seen = std::collections::BTreeSet::new();
        for rule in &self.rules {
            check_str("rules.rule", &rule.rule)?;
            if rule.rule.is_empty() || !seen.insert(rule.rule.as_str()) {
                return Err(bound("rules.rule", format!("empty or repeated rule id {:?}", rule.rule)));
            }
            check_len("rules.apps", rule.apps.len(), limits::MAX_APPS)?;
            for a in &rule.apps {
                check_str("rules.apps.kind", &a.kind)?;
                check_str("rules.apps.id", &a.id)?;
                for (f, s) in
                    [("rules.apps.version", &a.version), ("rules.apps.path", &a.path), ("rules.apps.detail", &a.detail)]
                {
                    if let Some(s) = s {
                        check_str(f, s)?;
                    }
                }
            }
        }
        check_len("events", self.events.len(), limits::MAX_EVENTS)?;
        for e in &self.events {
            check_str("events.kind", &e.kind)?;
            check_str("events.detail", &e.detail)?;
            if let Some(r) = &e.rule {
                check_str("events.rule", r)?;
            }
        }
        if let Some(g) = &self.gap {
            if g.first_sequence > g.last_sequence || g.last_sequence >= self.sequence {
                return Err(bound("gap", "range must be ordered and before this report's sequence".into()));
            }
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a report serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Report {
        Report {
            version: REPORT_VERSION,
            device: "laptop-1".into(),
            sequence: 1,
            at: 1_790_000_000,
            agent_version: "0.1.0".into(),
            mode: Mode::Enforce,
            policy: Some(AppliedPolicy {
                fleet: "gov".into(),
                version: 2,
                sha256: "a".repeat(64),
                applied_at: 1_790_000_000,
            }),
            health: Health { degraded: false, reasons: vec![] },
            rules: vec![RuleState {
                rule: "wechat".into(),
                apps: vec![AppState {
                    kind: "appimage".into(),
                    id: "wechat".into(),
                    version: Some("4.0".into()),
                    path: Some("/home/a/Downloads/WeChat.AppImage".into()),
                    state: AppStatus::Quarantined,
                    found_at: 1_790_000_000,
                    since: 1_790_000_001,
                    detail: None,
                }],
            }],
            events: vec![],
            gap: None,
        }
    }

    #[test]
    fn round_trips_and_derives_rule_status() {
        let r = sample();
        assert_eq!(Report::parse(&r.to_bytes()).unwrap(), r);
        assert_eq!(r.rules[0].status(), RuleStatus::Compliant);
        let mut r2 = r.clone();
        r2.rules[0].apps.push(AppState { state: AppStatus::NeedsAdmin, ..r.rules[0].apps[0].clone() });
        assert_eq!(r2.rules[0].status(), RuleStatus::Failed);
    }

    #[test]
    fn refuses_unknown_fields_other_versions_and_overlong_lists() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_bytes()).unwrap();
        v["extra"] = 1.into();
        assert!(
            matches!(Report::parse(v.to_string().as_bytes()), Err(ReportError::Malformed(m)) if m.contains("extra"))
        );
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_bytes()).unwrap();
        v["version"] = 2.into();
        assert_eq!(Report::parse(v.to_string().as_bytes()), Err(ReportError::Version(2)));
        let mut r = sample();
        r.rules = (0..=limits::MAX_RULES).map(|i| RuleState { rule: format!("r{i}"), apps: vec![] }).collect();
        assert!(matches!(Report::parse(&r.to_bytes()), Err(ReportError::Bound { field: "rules", .. })));
        let mut r = sample();
        r.rules.push(r.rules[0].clone());
        assert!(matches!(Report::parse(&r.to_bytes()), Err(ReportError::Bound { field: "rules.rule", .. })));
        assert!(matches!(Report::parse(&vec![b' '; limits::REPORT_BYTES + 1]), Err(ReportError::TooLarge(_))));
    }
}
