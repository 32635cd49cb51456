//! The admin view's paged rule table: which rules a page shows, in which order, with which
//! counts — computed for the page shown, not for the whole policy.
//!
//! Owns: the cache of each applied policy's rule ids (parsed once per sha256: policy files are
//! content-addressed and immutable) and of the rules devices reported (reloaded when that table
//! grows), the order of the table (rules some device must still act on first, most such devices
//! first; then every other rule by id), the `?rule=` filter, and query-string parsing.
//! **Invariant:** counts are the same as `summary::summary`'s (see its module comment); only the
//! work differs: per request, aggregates the database computes (devices per policy, non-compliant
//! rows per rule and policy), a walk over the cached sorted id lists without allocating, and the
//! rows of one page. A request holds no per-rule data besides the rules needing attention, and
//! no per-device data (the charts' device counts come from a cached list of first contacts).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use embargo_policy::report::RuleStatus;

use crate::store::{Store, StoreError};
use crate::summary::{PolicySummary, RuleSummary};

/// A policy's rule ids, sorted and deduplicated.
#[derive(Debug)]
pub struct PolicyIds {
    pub sha256: String,
    pub fleet: String,
    pub version: u64,
    pub ids: Vec<Box<str>>,
}

/// A reported rule's first report: (time, policy version).
type FirstReport = (u64, Option<u64>);

/// The rules devices reported (the `rules` table), sorted by id.
#[derive(Debug, Default)]
struct Matched {
    /// Rows in the table when it was read; the table only grows, so a changed count means new rows.
    count: u64,
    ids: Vec<Box<str>>,
    /// (first seen, first policy version), parallel to `ids`.
    meta: Vec<FirstReport>,
}

/// Kept by the server for its life (in `web::Fleet`). Holds the rule ids of the policies devices
/// apply now (a policy no device applies any more is dropped at the next request) and the rules
/// devices reported: the server's memory for these grows with the policy's size, once, not per
/// request.
#[derive(Debug, Default)]
pub struct RuleCache {
    policies: tokio::sync::Mutex<HashMap<String, Arc<PolicyIds>>>,
    matched: tokio::sync::Mutex<Arc<Matched>>,
    /// Every device's first contact, sorted: 8 bytes a device, kept once.
    first_seen: tokio::sync::Mutex<Arc<Vec<u64>>>,
}

impl RuleCache {
    async fn policies(&self, store: &Store) -> Result<Vec<Arc<PolicyIds>>, StoreError> {
        let heads = store.applied_policy_heads().await?;
        let mut cache = self.policies.lock().await;
        cache.retain(|sha, _| heads.iter().any(|h| &h.0 == sha));
        let mut out = Vec::with_capacity(heads.len());
        for (sha256, fleet, version) in heads {
            if let Some(p) = cache.get(&sha256) {
                out.push(p.clone());
                continue;
            }
            let mut ids: Vec<Box<str>> =
                store.policy_rules(&sha256).await?.into_iter().map(String::into_boxed_str).collect();
            ids.sort_unstable();
            ids.dedup();
            let p = Arc::new(PolicyIds { sha256: sha256.clone(), fleet, version, ids });
            cache.insert(sha256, p.clone());
            out.push(p);
        }
        Ok(out)
    }

    /// Every device's first contact (server clock), sorted: for the charts' "devices known at
    /// time t". Devices are never deleted and a first contact never changes, so when the count
    /// grows only the devices first seen since the newest cached time are read; if the count
    /// still differs (a clock that went back), everything is read again.
    pub async fn first_seen(&self, store: &Store) -> Result<Arc<Vec<u64>>, StoreError> {
        let total = store.devices_count(crate::store::DeviceList::All).await?;
        let mut cached = self.first_seen.lock().await;
        if cached.len() as u64 != total {
            let v = Arc::make_mut(&mut cached);
            let newest = v.last().copied();
            if let Some(t) = newest {
                // Those first seen at `t` are read again with the rest.
                v.truncate(v.partition_point(|&x| x < t));
            }
            v.extend(store.devices_first_seen(newest).await?);
            if v.len() as u64 != total {
                *v = store.devices_first_seen(None).await?;
            }
        }
        Ok(cached.clone())
    }

    async fn matched(&self, store: &Store) -> Result<Arc<Matched>, StoreError> {
        let count = store.rules_count().await?;
        let mut cached = self.matched.lock().await;
        if cached.count != count || (count > 0 && cached.ids.is_empty()) {
            let mut rows: Vec<(Box<str>, FirstReport)> =
                store.rules().await?.into_iter().map(|(r, seen, v)| (r.into_boxed_str(), (seen, v))).collect();
            // Sorted here, by bytes: PostgreSQL's ORDER BY follows the database's collation,
            // which need not be the order the binary searches below assume.
            rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let (ids, meta) = rows.into_iter().unzip();
            *cached = Arc::new(Matched { count, ids, meta });
        }
        Ok(cached.clone())
    }
}

/// Everything needed to compute any rule's row, read once per request.
#[derive(Debug)]
pub struct Rules {
    now: u64,
    /// Applied policies with a stored rule list, oldest version first: (ids, devices on it,
    /// earliest first contact of those devices).
    policies: Vec<(Arc<PolicyIds>, u64, u64)>,
    /// Devices on a policy without a stored rule list: (reported version, devices), by version.
    unknown: Vec<(Option<u64>, u64)>,
    matched: Arc<Matched>,
    /// Rules with covered devices still installed / pending / failed: (rule, [installed,
    /// pending, failed]), most such devices first, then by id.
    attention: Vec<(String, [u64; 3])>,
    attention_index: HashMap<String, usize>,
    pub devices: u64,
    pub current_policy_version: Option<u64>,
}

/// One page of the rule table.
#[derive(Debug)]
pub struct RulePage {
    pub rows: Vec<RuleSummary>,
    /// Rows of the whole (filtered) table.
    pub total: u64,
    /// Of those, rules needing attention.
    pub attention: u64,
}

impl Rules {
    pub async fn load(store: &Store, cache: &RuleCache, now: u64) -> Result<Rules, StoreError> {
        let policies = cache.policies(store).await?;
        let mut with_devices: Vec<(Arc<PolicyIds>, u64, u64)> = policies.into_iter().map(|p| (p, 0, now)).collect();
        let mut unknown: Vec<(Option<u64>, u64)> = Vec::new();
        let (mut devices, mut current) = (0u64, None::<u64>);
        for (sha, version, n, first) in store.devices_by_policy().await? {
            devices += n;
            current = current.max(version);
            match sha.as_deref().and_then(|h| with_devices.iter_mut().find(|p| p.0.sha256 == h)) {
                Some(p) => {
                    p.1 += n;
                    p.2 = p.2.min(first);
                }
                None => unknown.push((version, n)),
            }
        }
        unknown.sort_unstable();
        let matched = cache.matched(store).await?;
        let mut rules = Rules {
            now,
            policies: with_devices,
            unknown,
            matched,
            attention: Vec::new(),
            attention_index: HashMap::new(),
            devices,
            current_policy_version: current,
        };
        let mut counts: HashMap<String, [u64; 3]> = HashMap::new();
        for (rule, status, sha, version, n) in store.noncompliant_counts().await? {
            // Counted only when the device's policy covers the rule (as in `summary`).
            let covered = match sha.as_deref().and_then(|h| rules.policies.iter().find(|p| p.0.sha256 == h)) {
                Some(p) => p.0.ids.binary_search_by(|id| (**id).cmp(rule.as_str())).is_ok(),
                None => match (rules.first_version(&rule), version) {
                    (Some(f), Some(v)) => v >= f,
                    (None, _) => true,
                    (Some(_), None) => false,
                },
            };
            let slot = match status {
                RuleStatus::Installed => 0,
                RuleStatus::Pending => 1,
                RuleStatus::Failed => 2,
                RuleStatus::Compliant => continue,
            };
            if covered {
                counts.entry(rule).or_default()[slot] += n;
            }
        }
        let mut attention: Vec<(String, [u64; 3])> = counts.into_iter().collect();
        attention.sort_unstable_by(|a, b| {
            let sum = |c: &[u64; 3]| c.iter().sum::<u64>();
            sum(&b.1).cmp(&sum(&a.1)).then_with(|| a.0.cmp(&b.0))
        });
        rules.attention_index = attention.iter().enumerate().map(|(i, (r, _))| (r.clone(), i)).collect();
        rules.attention = attention;
        Ok(rules)
    }

    fn matched_meta(&self, rule: &str) -> Option<(u64, Option<u64>)> {
        self.matched.ids.binary_search_by(|id| (**id).cmp(rule)).ok().map(|i| self.matched.meta[i])
    }

    fn in_policies(&self, rule: &str) -> impl Iterator<Item = &(Arc<PolicyIds>, u64, u64)> {
        let rule = rule.to_owned();
        self.policies.iter().filter(move |p| p.0.ids.binary_search_by(|id| (**id).cmp(rule.as_str())).is_ok())
    }

    /// The policy version with which a rule first appeared (reported, or in an applied policy).
    fn first_version(&self, rule: &str) -> Option<u64> {
        match self.matched_meta(rule) {
            Some((_, v)) => v,
            None => self.in_policies(rule).map(|p| p.0.version).min(),
        }
    }

    /// The rule's row, with counts as `summary::summary` computes them (no chart series).
    pub fn row(&self, rule: &str) -> RuleSummary {
        let meta = self.matched_meta(rule);
        let inside: Vec<&(Arc<PolicyIds>, u64, u64)> = self.in_policies(rule).collect();
        let (first_seen, first_version) = match meta {
            Some(m) => m,
            None => (inside.iter().map(|p| p.2).min().unwrap_or(self.now), inside.iter().map(|p| p.0.version).min()),
        };
        let mut covered: u64 = inside.iter().map(|p| p.1).sum();
        covered += self
            .unknown
            .iter()
            .filter(|(v, _)| match (first_version, v) {
                (Some(f), Some(v)) => *v >= f,
                (None, _) => true,
                (Some(_), None) => false,
            })
            .map(|(_, n)| n)
            .sum::<u64>();
        let [installed, pending, failed] = self.attention_index.get(rule).map_or([0; 3], |&i| self.attention[i].1);
        let mut in_policy_versions: Vec<u64> = inside.iter().map(|p| p.0.version).collect();
        in_policy_versions.dedup();
        RuleSummary {
            rule: rule.to_owned(),
            first_seen,
            first_policy_version: first_version,
            compliant: covered.saturating_sub(installed + pending + failed),
            installed,
            pending,
            failed,
            matched: meta.is_some(),
            in_policy_versions,
            series: Vec::new(),
        }
    }

    /// Every rule id, sorted, once: the applied policies' ids merged with the reported ones.
    pub fn ids(&self) -> Merge<'_> {
        let mut lists: Vec<&[Box<str>]> = self.policies.iter().map(|p| p.0.ids.as_slice()).collect();
        lists.push(&self.matched.ids);
        Merge { lists }
    }

    /// The rule ids after `after` (exclusive), sorted: the start of an export's next chunk.
    pub fn ids_after<'a>(&'a self, after: Option<&str>) -> Merge<'a> {
        let mut m = self.ids();
        if let Some(a) = after {
            for l in &mut m.lists {
                let i = l.partition_point(|id| &**id <= a);
                *l = &l[i..];
            }
        }
        m
    }

    /// Page `page` (from 1) of the table, `size` rows a page, of the rules whose id contains
    /// `filter`: rules needing attention first, then the rest by id.
    pub fn page(&self, filter: Option<&str>, page: u64, size: u64) -> RulePage {
        let keep = |r: &str| filter.is_none_or(|f| r.contains(f));
        let start = (page.saturating_sub(1)).saturating_mul(size);
        let end = start.saturating_add(size);
        let mut rows = Vec::new();
        let mut n = 0u64;
        for (rule, _) in self.attention.iter().filter(|(r, _)| keep(r)) {
            if n >= start && n < end {
                rows.push(self.row(rule));
            }
            n += 1;
        }
        let attention = n;
        for rule in self.ids().filter(|r| keep(r) && !self.attention_index.contains_key(*r)) {
            if n >= start && n < end {
                rows.push(self.row(rule));
            }
            n += 1;
        }
        RulePage { rows, total: n, attention }
    }

    /// The applied policies with stored rule lists (for the "Policies applied" table).
    pub fn policies(&self) -> Vec<PolicySummary> {
        self.policies
            .iter()
            .map(|(p, devices, _)| PolicySummary {
                version: p.version,
                fleet: p.fleet.clone(),
                sha256: p.sha256.clone(),
                rules: p.ids.len() as u64,
                devices: *devices,
            })
            .collect()
    }

    /// Devices on a policy whose rule list the server does not hold.
    pub fn devices_policy_unknown(&self) -> u64 {
        self.unknown.iter().map(|(_, n)| n).sum()
    }
}

/// Sorted, deduplicated merge of sorted id lists (a handful: the applied policies and the
/// reported rules). Borrows; allocates nothing per id.
#[derive(Debug)]
pub struct Merge<'a> {
    lists: Vec<&'a [Box<str>]>,
}

impl<'a> Iterator for Merge<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let min: &'a str = self
            .lists
            .iter()
            .filter_map(|l| {
                let l: &'a [Box<str>] = l;
                l.first().map(|s| &**s)
            })
            .min()?;
        for l in &mut self.lists {
            if l.first().is_some_and(|s| &**s == min) {
                *l = &l[1..];
            }
        }
        Some(min)
    }
}

/// A query string's parameters, percent-decoded; an error names the parameter (or the part)
/// that is malformed, unknown or repeated.
pub fn query_params(query: Option<&str>, allowed: &[&str]) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    let mut seen = HashSet::new();
    for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let key = percent_decode(k).ok_or_else(|| format!("query parameter {k:?}: malformed percent-encoding"))?;
        if !allowed.contains(&key.as_str()) {
            return Err(format!("unknown query parameter {key:?} (known: {})", allowed.join(", ")));
        }
        let value = percent_decode(v).ok_or_else(|| format!("query parameter {key}: malformed percent-encoding"))?;
        if !seen.insert(key.clone()) {
            return Err(format!("query parameter {key} is given more than once"));
        }
        out.insert(key, value);
    }
    Ok(out)
}

/// A page number from the query: absent = 1; otherwise 1 ..= 10^9.
pub fn page_param(params: &HashMap<String, String>, name: &str) -> Result<u64, String> {
    match params.get(name) {
        None => Ok(1),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (1..=1_000_000_000).contains(&n) => Ok(n),
            _ => Err(format!("query parameter {name}: {v:?} is not a page number (1, 2, …)")),
        },
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = b.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `s` percent-encoded for a query value (everything but unreserved characters).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Pages needed for `total` rows (at least one, so an empty table has page 1).
pub fn pages(total: u64, size: u64) -> u64 {
    total.div_ceil(size.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<Box<str>> {
        v.iter().map(|s| (*s).into()).collect()
    }

    #[test]
    fn the_merge_is_sorted_and_deduplicated() {
        let (a, b, c) = (ids(&["a", "c", "e"]), ids(&["b", "c", "f"]), ids(&[]));
        let m = Merge { lists: vec![&a, &b, &c] };
        assert_eq!(m.collect::<Vec<_>>(), ["a", "b", "c", "e", "f"]);
    }

    #[test]
    fn query_parameters_are_decoded_and_bad_ones_named() {
        let p = query_params(Some("page=2&rule=we%20chat+x"), &["page", "rule"]).unwrap();
        assert_eq!(p["rule"], "we chat x");
        assert_eq!(page_param(&p, "page"), Ok(2));
        let e = query_params(Some("pgae=2"), &["page"]).unwrap_err();
        assert!(e.contains("pgae"), "{e}");
        assert!(query_params(Some("rule=%zz"), &["rule"]).unwrap_err().contains("rule"));
        assert!(query_params(Some("page=1&page=2"), &["page"]).unwrap_err().contains("more than once"));
        for bad in ["0", "-1", "x", "", "99999999999"] {
            let p = query_params(Some(&format!("page={bad}")), &["page"]).unwrap();
            assert!(page_param(&p, "page").unwrap_err().contains("page"), "{bad}");
        }
        assert_eq!(percent_encode("a b&<"), "a%20b%26%3C");
    }
}
