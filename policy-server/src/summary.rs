//! The compliance summary: what the admin page, the exports and `embargo-server fleet` show.
//!
//! Owns: turning stored rows into per-rule counts, the per-rule series over time, the stale and
//! old-policy device lists. Pure functions over `Store` reads; no HTML here.
//!
//! Counting rules. The rules listed are every rule a device reported a match for and every rule
//! of every policy a device applies whose rule list the server read from its repository
//! (`upkeep.rs`), matched or not. A device counts for a rule when the policy it applies (by
//! sha256) lists the rule; for a device on a policy the server has not read, once it has
//! reported a policy version at or above the first version with the rule. Such a device is
//! `installed`, `pending` or `failed` when its (device, rule) row says so, and `compliant`
//! otherwise — including devices on which the app was never found.

use std::collections::{BTreeMap, HashMap, HashSet};

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
    /// Whether any device ever reported a match (false: listed only because an applied
    /// policy holds it).
    pub matched: bool,
    /// The versions of the applied policies (read from the repository) that list the rule.
    pub in_policy_versions: Vec<u64>,
    /// (time, compliant, installed, pending, failed), from the rule's first report to now;
    /// empty for a rule never matched.
    pub series: Vec<Point>,
}

/// A policy some device applies whose rule list the server read from its repository.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    pub version: u64,
    pub fleet: String,
    pub sha256: String,
    pub rules: u64,
    pub devices: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub generated_at: u64,
    /// The newest policy version any device reports.
    pub current_policy_version: Option<u64>,
    pub devices: u64,
    pub rules: Vec<RuleSummary>,
    /// The applied policies whose rule lists are known, oldest version first.
    pub policies: Vec<PolicySummary>,
    /// Devices applying a policy the server has no rule list for (not in its repository, or
    /// not verified): their rules are known only from their matches.
    pub devices_policy_unknown: u64,
    pub stale: Vec<DeviceRow>,
    pub old_policy: Vec<DeviceRow>,
    pub stale_after_secs: u64,
}

/// Points in each rule's chart.
const SERIES_POINTS: u64 = 48;

pub async fn summary(store: &Store, now: u64, staleness: Staleness) -> Result<Summary, StoreError> {
    let devices = store.devices().await?;
    let device_rules = store.device_rules(None).await?;
    let policies = store.applied_policies().await?;
    let current_policy_version = devices.iter().filter_map(|d| d.policy_version).max();
    let stale_after = staleness.interval_secs.saturating_mul(staleness.intervals);

    // Policies whose rule list the server read from its repository, and who applies each.
    let policy_rules: HashMap<&str, HashSet<&str>> =
        policies.iter().map(|p| (p.sha256.as_str(), p.rules.iter().map(String::as_str).collect())).collect();
    let mut on_policy: HashMap<&str, (u64, u64)> = HashMap::new(); // sha256 -> (devices, earliest first_seen)
    let mut unknown_versions: Vec<Option<u64>> = Vec::new(); // devices whose policy's rules are unknown
    for d in &devices {
        match d.policy_sha256.as_deref().filter(|h| policy_rules.contains_key(h)) {
            Some(h) => {
                let e = on_policy.entry(h).or_insert((0, d.first_seen));
                e.0 += 1;
                e.1 = e.1.min(d.first_seen);
            }
            None => unknown_versions.push(d.policy_version),
        }
    }
    unknown_versions.sort_unstable();
    let by_device: HashMap<&str, &DeviceRow> = devices.iter().map(|d| (d.device.as_str(), d)).collect();

    // Every rule: those devices matched (learned from reports) and those of an applied policy.
    struct Known {
        first_seen: u64,
        first_version: Option<u64>,
        matched: bool,
        in_policies: Vec<usize>,
    }
    let mut all: BTreeMap<String, Known> = BTreeMap::new();
    for (rule, first_seen, first_version) in store.rules().await? {
        all.insert(rule, Known { first_seen, first_version, matched: true, in_policies: Vec::new() });
    }
    for (i, p) in policies.iter().enumerate() {
        let since = on_policy.get(p.sha256.as_str()).map_or(now, |e| e.1);
        for rule in &p.rules {
            let k = all.entry(rule.clone()).or_insert(Known {
                first_seen: since,
                first_version: Some(p.version),
                matched: false,
                in_policies: Vec::new(),
            });
            if !k.matched {
                k.first_seen = k.first_seen.min(since);
                k.first_version = k.first_version.map(|v| v.min(p.version));
            }
            k.in_policies.push(i);
        }
    }
    let mut rows_by_rule: HashMap<&str, Vec<&crate::store::DeviceRuleRow>> = HashMap::new();
    for r in &device_rules {
        rows_by_rule.entry(r.rule.as_str()).or_default().push(r);
    }

    let mut rules = Vec::new();
    for (rule, k) in all {
        // A device counts for a rule when the policy it applies lists the rule; when the server
        // has not read that policy, when it applies a version at or above the rule's first.
        let by_version = |v: Option<u64>| match (k.first_version, v) {
            (Some(f), Some(v)) => v >= f,
            (None, _) => true,
            (Some(_), None) => false,
        };
        let covered = |d: &DeviceRow| match d.policy_sha256.as_deref().and_then(|h| policy_rules.get(h)) {
            Some(set) => set.contains(rule.as_str()),
            None => by_version(d.policy_version),
        };
        let mut covered_count: u64 =
            k.in_policies.iter().map(|&i| on_policy.get(policies[i].sha256.as_str()).map_or(0, |e| e.0)).sum();
        covered_count += match k.first_version {
            None => unknown_versions.len() as u64,
            Some(f) => (unknown_versions.len() - unknown_versions.partition_point(|v| v.is_none_or(|v| v < f))) as u64,
        };
        let mut counts: BTreeMap<RuleStatus, u64> = BTreeMap::new();
        for dr in rows_by_rule.get(rule.as_str()).into_iter().flatten() {
            if by_device.get(dr.device.as_str()).is_some_and(|d| covered(d)) {
                *counts.entry(dr.status).or_default() += 1;
            }
        }
        let noncompliant: u64 = [RuleStatus::Installed, RuleStatus::Pending, RuleStatus::Failed]
            .iter()
            .map(|s| counts.get(s).copied().unwrap_or(0))
            .sum();
        // A rule no device ever matched has no history to chart (every device is compliant).
        let known = |t: u64| devices.iter().filter(|d| d.first_seen <= t).count() as u64;
        let series = if k.matched { series(store, &rule, k.first_seen, now, known).await? } else { Vec::new() };
        let mut in_policy_versions: Vec<u64> = k.in_policies.iter().map(|&i| policies[i].version).collect();
        in_policy_versions.dedup();
        rules.push(RuleSummary {
            compliant: covered_count.saturating_sub(noncompliant),
            installed: counts.get(&RuleStatus::Installed).copied().unwrap_or(0),
            pending: counts.get(&RuleStatus::Pending).copied().unwrap_or(0),
            failed: counts.get(&RuleStatus::Failed).copied().unwrap_or(0),
            rule,
            first_seen: k.first_seen,
            first_policy_version: k.first_version,
            matched: k.matched,
            in_policy_versions,
            series,
        });
    }
    let policies = policies
        .iter()
        .map(|p| PolicySummary {
            version: p.version,
            fleet: p.fleet.clone(),
            sha256: p.sha256.clone(),
            rules: p.rules.len() as u64,
            devices: on_policy.get(p.sha256.as_str()).map_or(0, |e| e.0),
        })
        .collect();
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
        policies,
        devices_policy_unknown: unknown_versions.len() as u64,
        stale,
        old_policy,
        stale_after_secs: stale_after,
    })
}

/// The rule's counts at evenly spaced times from its first report to `now`: each device's last
/// recorded state at that time; devices known by then without a non-compliant state count as
/// compliant. `known(t)` is how many devices the server knew at time `t`.
pub(crate) async fn series(
    store: &Store,
    rule: &str,
    from: u64,
    now: u64,
    known: impl Fn(u64) -> u64,
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
        let known = known(t);
        let count = |s: RuleStatus| state.values().filter(|v| **v == s).count() as u64;
        let (inst, pend, fail) = (count(RuleStatus::Installed), count(RuleStatus::Pending), count(RuleStatus::Failed));
        out.push((t, known.saturating_sub(inst + pend + fail), inst, pend, fail));
    }
    Ok(out)
}

/// Rule and device lines `embargo-server fleet` prints by default (`--limit`; `--all` for every
/// one): a 100,000-rule policy would otherwise print 100,000 lines.
pub const TEXT_LIMIT: usize = 50;

/// The summary as terminal text (`embargo-server fleet`): rules some device must act on first
/// (most such devices first), then the rest by id; at most `limit` rules and `limit` devices per
/// list (`None`: all), each list saying how many it left out.
pub fn to_text(s: &Summary, limit: Option<usize>) -> String {
    use std::fmt::Write as _;
    let limit = limit.unwrap_or(usize::MAX);
    let more = |out: &mut String, shown: usize, total: usize, what: &str| {
        if total > shown {
            let _ = writeln!(
                out,
                "  … {} more {what} not shown ({total} in all): --limit N or --all to print them, --json has every one",
                total - shown
            );
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "devices: {}   newest policy version reported: {}",
        s.devices,
        s.current_policy_version.map_or("none".into(), |v| v.to_string())
    );
    let attention = |r: &RuleSummary| r.installed + r.pending + r.failed;
    let mut order: Vec<&RuleSummary> = s.rules.iter().collect();
    order.sort_by(|a, b| {
        (attention(a) == 0).cmp(&(attention(b) == 0)).then(attention(b).cmp(&attention(a))).then(a.rule.cmp(&b.rule))
    });
    let _ = writeln!(
        out,
        "\nrules: {} ({} with devices still installed, pending or failed; listed first)",
        s.rules.len(),
        order.iter().filter(|r| attention(r) > 0).count()
    );
    let _ =
        writeln!(out, "{:<32} {:>10} {:>10} {:>10} {:>10}  IN", "RULE", "COMPLIANT", "INSTALLED", "PENDING", "FAILED");
    for r in order.iter().take(limit) {
        let _ = writeln!(
            out,
            "{:<32} {:>10} {:>10} {:>10} {:>10}  {}",
            r.rule,
            r.compliant,
            r.installed,
            r.pending,
            r.failed,
            in_policies(r)
        );
    }
    more(&mut out, order.len().min(limit), order.len(), "rules");
    let _ = writeln!(out, "\npolicies applied (rule lists read from the repository):");
    for p in &s.policies {
        let _ =
            writeln!(out, "  version {:<6} {} rules  {} devices  sha256 {}", p.version, p.rules, p.devices, p.sha256);
    }
    if s.devices_policy_unknown > 0 {
        let _ = writeln!(out, "  devices on a policy the repository does not hold: {}", s.devices_policy_unknown);
    }
    let _ = writeln!(out, "\nstale devices (not seen for more than {} s): {}", s.stale_after_secs, s.stale.len());
    for d in s.stale.iter().take(limit) {
        let _ = writeln!(out, "  {}  last seen {}", d.device, fmt_time(d.last_seen));
    }
    more(&mut out, s.stale.len().min(limit), s.stale.len(), "stale devices");
    let _ = writeln!(out, "devices on an old policy version: {}", s.old_policy.len());
    for d in s.old_policy.iter().take(limit) {
        let _ = writeln!(out, "  {}  policy {}", d.device, d.policy_version.map_or("none".into(), |v| v.to_string()));
    }
    more(&mut out, s.old_policy.len().min(limit), s.old_policy.len(), "devices on an old policy");
    out
}

/// Which applied policy versions list the rule, for the tables: "policy 3, 4", or "matched
/// only" for a rule known only from reports.
pub fn in_policies(r: &RuleSummary) -> String {
    if r.in_policy_versions.is_empty() {
        return "matched only".into();
    }
    let v: Vec<String> = r.in_policy_versions.iter().map(u64::to_string).collect();
    format!("policy {}", v.join(", "))
}

/// RFC 3339 UTC, seconds.
pub fn fmt_time(t: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)).to_string()
}
