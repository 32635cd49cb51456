//! The compliance summary: what the admin page, the exports and `embargo-server fleet` show.
//!
//! Owns: turning stored rows into per-rule counts, the per-rule series over time, the stale and
//! old-policy device lists. Pure functions over `Store` reads; no HTML here.
//!
//! Counting rules. A device counts for a rule once it has reported a policy version at or above
//! the first version with which any device reported that rule (the server learns rules from
//! reports; a rule no device has matched yet is not listed). Such a device is `installed`,
//! `pending` or `failed` when its (device, rule) row says so, and `compliant` otherwise —
//! including devices on which the app was never found.

use std::collections::{BTreeMap, HashMap};

use embargo_policy::report::RuleStatus;
use serde::Serialize;

use crate::store::{DeviceRow, Store, StoreError};

/// How "stale" is decided: a device not seen for more than `intervals` × `interval`.
#[derive(Debug, Clone, Copy)]
pub struct Staleness {
    pub interval_secs: u64,
    pub intervals: u64,
}

/// One point of a rule's chart: (time, compliant, installed, pending, failed).
pub type Point = (u64, u64, u64, u64, u64);

#[derive(Debug, Clone, Serialize)]
pub struct RuleSummary {
    pub rule: String,
    pub first_seen: u64,
    pub first_policy_version: Option<u64>,
    pub compliant: u64,
    pub installed: u64,
    pub pending: u64,
    pub failed: u64,
    /// (time, compliant, installed, pending, failed), from the rule's first report to now.
    pub series: Vec<Point>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub generated_at: u64,
    /// The newest policy version any device reports.
    pub current_policy_version: Option<u64>,
    pub devices: u64,
    pub rules: Vec<RuleSummary>,
    pub stale: Vec<DeviceRow>,
    pub old_policy: Vec<DeviceRow>,
    pub stale_after_secs: u64,
}

/// Points in each rule's chart.
const SERIES_POINTS: u64 = 48;

pub async fn summary(store: &Store, now: u64, staleness: Staleness) -> Result<Summary, StoreError> {
    let devices = store.devices().await?;
    let device_rules = store.device_rules(None).await?;
    let current_policy_version = devices.iter().filter_map(|d| d.policy_version).max();
    let stale_after = staleness.interval_secs.saturating_mul(staleness.intervals);
    let mut rules = Vec::new();
    for (rule, first_seen, first_version) in store.rules().await? {
        let covered = |d: &DeviceRow| match (first_version, d.policy_version) {
            (Some(f), Some(v)) => v >= f,
            (None, _) => true,
            (Some(_), None) => false,
        };
        let covered_devices: HashMap<&str, &DeviceRow> =
            devices.iter().filter(|d| covered(d)).map(|d| (d.device.as_str(), d)).collect();
        let mut counts: BTreeMap<RuleStatus, u64> = BTreeMap::new();
        for dr in device_rules.iter().filter(|r| r.rule == rule && covered_devices.contains_key(r.device.as_str())) {
            *counts.entry(dr.status).or_default() += 1;
        }
        let noncompliant: u64 = [RuleStatus::Installed, RuleStatus::Pending, RuleStatus::Failed]
            .iter()
            .map(|s| counts.get(s).copied().unwrap_or(0))
            .sum();
        let series = series(store, &rule, first_seen, now, &devices).await?;
        rules.push(RuleSummary {
            compliant: (covered_devices.len() as u64).saturating_sub(noncompliant),
            installed: counts.get(&RuleStatus::Installed).copied().unwrap_or(0),
            pending: counts.get(&RuleStatus::Pending).copied().unwrap_or(0),
            failed: counts.get(&RuleStatus::Failed).copied().unwrap_or(0),
            rule,
            first_seen,
            first_policy_version: first_version,
            series,
        });
    }
    let stale = devices.iter().filter(|d| now.saturating_sub(d.last_seen) > stale_after).cloned().collect();
    let old_policy = devices
        .iter()
        .filter(|d| match (d.policy_version, current_policy_version) {
            (Some(v), Some(c)) => v < c,
            (None, Some(_)) => true,
            _ => false,
        })
        .cloned()
        .collect();
    Ok(Summary {
        generated_at: now,
        current_policy_version,
        devices: devices.len() as u64,
        rules,
        stale,
        old_policy,
        stale_after_secs: stale_after,
    })
}

/// The rule's counts at evenly spaced times from its first report to `now`: each device's last
/// recorded state at that time; devices known by then without a non-compliant state count as
/// compliant.
async fn series(
    store: &Store,
    rule: &str,
    from: u64,
    now: u64,
    devices: &[DeviceRow],
) -> Result<Vec<Point>, StoreError> {
    let history = store.rule_history(rule).await?;
    let span = now.saturating_sub(from).max(1);
    let mut out = Vec::new();
    for i in 0..=SERIES_POINTS {
        let t = from + span * i / SERIES_POINTS;
        let mut state: HashMap<&str, RuleStatus> = HashMap::new();
        for (device, at, status) in history.iter().take_while(|h| h.1 <= t) {
            let _ = at;
            state.insert(device.as_str(), *status);
        }
        let known = devices.iter().filter(|d| d.first_seen <= t).count() as u64;
        let count = |s: RuleStatus| state.values().filter(|v| **v == s).count() as u64;
        let (inst, pend, fail) = (count(RuleStatus::Installed), count(RuleStatus::Pending), count(RuleStatus::Failed));
        out.push((t, known.saturating_sub(inst + pend + fail), inst, pend, fail));
    }
    Ok(out)
}

/// The summary as terminal text (`embargo-server fleet`).
pub fn to_text(s: &Summary) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "devices: {}   newest policy version reported: {}",
        s.devices,
        s.current_policy_version.map_or("none".into(), |v| v.to_string())
    );
    let _ =
        writeln!(out, "\n{:<32} {:>10} {:>10} {:>10} {:>10}", "RULE", "COMPLIANT", "INSTALLED", "PENDING", "FAILED");
    for r in &s.rules {
        let _ =
            writeln!(out, "{:<32} {:>10} {:>10} {:>10} {:>10}", r.rule, r.compliant, r.installed, r.pending, r.failed);
    }
    let _ = writeln!(out, "\nstale devices (not seen for more than {} s): {}", s.stale_after_secs, s.stale.len());
    for d in &s.stale {
        let _ = writeln!(out, "  {}  last seen {}", d.device, fmt_time(d.last_seen));
    }
    let _ = writeln!(out, "devices on an old policy version: {}", s.old_policy.len());
    for d in &s.old_policy {
        let _ = writeln!(out, "  {}  policy {}", d.device, d.policy_version.map_or("none".into(), |v| v.to_string()));
    }
    out
}

/// RFC 3339 UTC, seconds.
pub fn fmt_time(t: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)).to_string()
}
