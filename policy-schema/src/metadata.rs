//! The three signed payloads (root, timestamp, policy) and their strict parsing.
//!
//! Parsing happens only on bytes whose signatures have been verified (see `trust`), and it is
//! strict: unknown fields, duplicate keys, floats where integers belong, and oversize strings or
//! lists are errors, each naming what was wrong. Nothing here does I/O.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::keys::{JsonKey, PublicKey};
use crate::matcher::RuleSet;
use crate::rules::Rule;

pub const ROOT_TYPE: &str = "application/vnd.embargo.root+json";
pub const TIMESTAMP_TYPE: &str = "application/vnd.embargo.timestamp+json";
pub const POLICY_TYPE: &str = "application/vnd.embargo.policy+json";

pub use crate::limits;

/// The most memory (estimated from the compiled set's allocations, see
/// [`RuleSet::approx_bytes`]) that compiling a payload of `payload_len` bytes may take.
pub fn compiled_budget(payload_len: usize) -> usize {
    payload_len
        .saturating_mul(limits::COMPILED_PER_PAYLOAD_BYTE)
        .saturating_add(limits::COMPILED_BASE_BYTES)
        .min(limits::COMPILED_MAX_BYTES)
}

/// Why a payload was refused after its signatures verified.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("malformed {role} payload: {source}")]
    Json { role: &'static str, source: serde_json::Error },
    #[error("invalid {role} payload: {reason}")]
    Invalid { role: &'static str, reason: String },
}

/// Seconds since the Unix epoch, written as RFC 3339 UTC (`2026-12-01T00:00:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    pub fn now() -> Self {
        Self::from_system(std::time::SystemTime::now())
    }

    pub fn from_system(t: std::time::SystemTime) -> Self {
        Time(t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
    }

    pub fn to_system(self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.0)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_rfc3339(text)
            .map(Self::from_system)
            .map_err(|e| format!("{text:?} is not an RFC 3339 UTC time such as 2026-12-01T00:00:00Z: {e}"))
    }

    pub fn plus(self, d: std::time::Duration) -> Self {
        Time(self.0.saturating_add(d.as_secs()))
    }

    pub fn minus(self, d: std::time::Duration) -> Self {
        Time(self.0.saturating_sub(d.as_secs()))
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_seconds(self.to_system()))
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if text.len() > 40 {
            return Err(de::Error::custom("time string too long"));
        }
        Time::parse(&text).map_err(de::Error::custom)
    }
}

/// A JSON object deserialized into a map that refuses duplicate keys (serde_json's maps keep the
/// last one silently, which would let signed and parsed meaning diverge).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StrictMap<V>(pub BTreeMap<String, V>);

impl<V: Serialize> Serialize for StrictMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for StrictMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V_<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V_<V> {
            type Value = StrictMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object with unique keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(k) = map.next_key::<String>()? {
                    if out.len() >= limits::MAX_KEYS {
                        return Err(de::Error::custom(format!("more than {} entries", limits::MAX_KEYS)));
                    }
                    let v = map.next_value()?;
                    if out.insert(k.clone(), v).is_some() {
                        return Err(de::Error::custom(format!("duplicate key {k:?}")));
                    }
                }
                Ok(StrictMap(out))
            }
        }
        d.deserialize_map(V_(std::marker::PhantomData))
    }
}

/// Keys and threshold of one role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    pub root: RoleKeys,
    pub timestamp: RoleKeys,
    pub policy: RoleKeys,
}

/// Root metadata: the trust anchor and the keys of every role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    pub fleet: String,
    pub version: u64,
    pub expires: Time,
    pub keys: StrictMap<JsonKey>,
    pub roles: Roles,
}

/// Which role's keys to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleName {
    Root,
    Timestamp,
    Policy,
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoleName::Root => "root",
            RoleName::Timestamp => "timestamp",
            RoleName::Policy => "policy",
        })
    }
}

/// A root whose keys have been checked and decoded.
#[derive(Debug, Clone)]
pub struct VerifiedRoot {
    pub root: Root,
    keys: BTreeMap<String, PublicKey>,
}

impl VerifiedRoot {
    pub fn role(&self, role: RoleName) -> &RoleKeys {
        match role {
            RoleName::Root => &self.root.roles.root,
            RoleName::Timestamp => &self.root.roles.timestamp,
            RoleName::Policy => &self.root.roles.policy,
        }
    }

    /// A key listed both in the online timestamp role and in an offline role (root or policy),
    /// described, or `None`. Such a root makes the online key able to change rules (or roots),
    /// which the role split exists to prevent.
    pub fn shared_online_key(&self) -> Option<String> {
        let ts = &self.root.roles.timestamp.keyids;
        for (name, role) in [("root", &self.root.roles.root), ("policy", &self.root.roles.policy)] {
            if let Some(id) = role.keyids.iter().find(|id| ts.contains(id)) {
                return Some(format!("key {id} is in both the timestamp role and the {name} role"));
            }
        }
        None
    }

    /// The distinct public keys of `role` and its threshold.
    pub fn role_keys(&self, role: RoleName) -> (Vec<&PublicKey>, usize) {
        let r = self.role(role);
        let keys = r.keyids.iter().filter_map(|id| self.keys.get(id)).collect();
        (keys, r.threshold as usize)
    }
}

fn invalid(role: &'static str, reason: impl Into<String>) -> PayloadError {
    PayloadError::Invalid { role, reason: reason.into() }
}

fn check_fleet(role: &'static str, fleet: &str) -> Result<(), PayloadError> {
    if fleet.is_empty() || fleet.len() > limits::FLEET_LEN || fleet.chars().any(|c| c.is_control()) {
        return Err(invalid(role, format!("fleet must be 1..={} printable characters", limits::FLEET_LEN)));
    }
    Ok(())
}

impl Root {
    pub fn parse(bytes: &[u8]) -> Result<VerifiedRoot, PayloadError> {
        let root: Root = serde_json::from_slice(bytes).map_err(|source| PayloadError::Json { role: "root", source })?;
        root.check()
    }

    /// Validates keys and roles and decodes the keys.
    pub fn check(self) -> Result<VerifiedRoot, PayloadError> {
        check_fleet("root", &self.fleet)?;
        if self.version == 0 {
            return Err(invalid("root", "version must be at least 1"));
        }
        let mut keys = BTreeMap::new();
        for (keyid, jk) in &self.keys.0 {
            let key = jk.to_public().map_err(|e| invalid("root", format!("key {keyid}: {e}")))?;
            if key.keyid() != keyid {
                return Err(invalid("root", format!("key listed as {keyid} has keyid {}", key.keyid())));
            }
            keys.insert(keyid.clone(), key);
        }
        for (name, role) in
            [("root", &self.roles.root), ("timestamp", &self.roles.timestamp), ("policy", &self.roles.policy)]
        {
            if role.keyids.len() > limits::MAX_KEYIDS_PER_ROLE {
                return Err(invalid(
                    "root",
                    format!("role {name} lists more than {} keys", limits::MAX_KEYIDS_PER_ROLE),
                ));
            }
            let mut seen = std::collections::BTreeSet::new();
            for id in &role.keyids {
                if !keys.contains_key(id) {
                    return Err(invalid("root", format!("role {name} names unknown key {id}")));
                }
                if !seen.insert(id) {
                    return Err(invalid("root", format!("role {name} lists key {id} twice")));
                }
            }
            if role.threshold == 0 || role.threshold as usize > role.keyids.len() {
                return Err(invalid(
                    "root",
                    format!("role {name} has threshold {} with {} keys", role.threshold, role.keyids.len()),
                ));
            }
        }
        Ok(VerifiedRoot { root: self, keys })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("root serializes")
    }
}

/// What the timestamp says about the current policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPointer {
    pub version: u64,
    pub sha256: String,
    pub length: u64,
}

/// Timestamp metadata: signed often by an online key; it can freeze updates, never change rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timestamp {
    pub fleet: String,
    pub version: u64,
    pub expires: Time,
    pub policy: PolicyPointer,
}

impl Timestamp {
    pub fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let ts: Timestamp =
            serde_json::from_slice(bytes).map_err(|source| PayloadError::Json { role: "timestamp", source })?;
        check_fleet("timestamp", &ts.fleet)?;
        if ts.policy.sha256.len() != 64
            || !ts.policy.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(invalid("timestamp", "policy.sha256 must be 64 lowercase hex digits"));
        }
        if ts.policy.length == 0 || ts.policy.length > limits::POLICY_BYTES {
            return Err(invalid("timestamp", format!("policy.length must be 1..={}", limits::POLICY_BYTES)));
        }
        Ok(ts)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("timestamp serializes")
    }
}

/// Policy metadata: the blocklist, signed by the offline policy keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub fleet: String,
    pub version: u64,
    pub issued: Time,
    pub expires: Time,
    pub rules: Vec<Rule>,
}

impl Policy {
    pub fn parse(bytes: &[u8]) -> Result<Self, PayloadError> {
        let p: Policy =
            serde_json::from_slice(bytes).map_err(|source| PayloadError::Json { role: "policy", source })?;
        p.check()?;
        Ok(p)
    }

    pub fn check(&self) -> Result<(), PayloadError> {
        check_fleet("policy", &self.fleet)?;
        if self.rules.len() > limits::MAX_RULES {
            return Err(invalid("policy", format!("{} rules (at most {})", self.rules.len(), limits::MAX_RULES)));
        }
        let mut ids = std::collections::HashSet::with_capacity(self.rules.len());
        for rule in &self.rules {
            rule.check().map_err(|reason| invalid("policy", reason))?;
            if !ids.insert(rule.id.as_str()) {
                return Err(invalid("policy", format!("rule id {:?} is used twice", rule.id)));
            }
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("policy serializes")
    }

    /// Parses a policy payload and compiles its rules for a device carrying `device_tags`, one
    /// rule at a time, so the rules are never held as a list beside the compiled set. Exactly
    /// as strict as [`Policy::parse`]; rule-id uniqueness is checked by 64-bit hash (a
    /// collision between two distinct ids, ~1e-10 for 100,000 rules, is reported as a duplicate).
    ///
    /// The parser is the hand-written one in `policy_parser` (one pass, strings borrowed, each
    /// rule compiled as it is read); [`Policy::parse_compiled_serde`] is the serde path it
    /// replaced, kept as the reference its strictness is tested against.
    pub fn parse_compiled(bytes: &[u8], device_tags: &[String]) -> Result<(PolicyHeader, RuleSet), PayloadError> {
        let text = std::str::from_utf8(bytes).map_err(|e| PayloadError::Invalid {
            role: "policy",
            reason: format!("not UTF-8 at byte {}", e.valid_up_to()),
        })?;
        // The parser reserves the set's tables (from `table_sizes`) where it indexes.
        let mut set = RuleSet::new(device_tags);
        let header = crate::policy_parser::parse_policy(text, &mut set, compiled_budget(bytes.len()))
            .map_err(|e| PayloadError::Json { role: "policy", source: e.into_json(text) })?;
        check_fleet("policy", &header.fleet)?;
        set.finish();
        Ok((header, set))
    }

    /// The serde implementation of [`Policy::parse_compiled`], which it replaced: the reference
    /// in the differential test that shows the hand-written parser accepts and refuses the same
    /// documents. Not used on the verification path.
    #[doc(hidden)]
    pub fn parse_compiled_serde(bytes: &[u8], device_tags: &[String]) -> Result<(PolicyHeader, RuleSet), PayloadError> {
        // JSON is UTF-8 (RFC 8259): one validation of the whole text here, instead of one per
        // string inside the parser.
        let text = std::str::from_utf8(bytes).map_err(|e| PayloadError::Invalid {
            role: "policy",
            reason: format!("not UTF-8 at byte {}", e.valid_up_to()),
        })?;
        let mut set = RuleSet::new(device_tags);
        let budget = compiled_budget(bytes.len());
        let (rules, sha) = table_sizes(bytes);
        set.reserve(rules, sha);
        let mut de = serde_json::Deserializer::from_str(text);
        let header = serde::de::DeserializeSeed::deserialize(PolicySeed { set: &mut set, budget }, &mut de)
            .and_then(|h| de.end().map(|()| h))
            .map_err(|source| PayloadError::Json { role: "policy", source })?;
        check_fleet("policy", &header.fleet)?;
        set.finish();
        Ok((header, set))
    }
}

/// How many rules and sha256 matchers to reserve room for, counted in the verified text: every
/// rule has exactly one `"action"` key and a quoted `"action"` cannot occur inside a JSON string
/// (its quotes would be escaped). Matchers with `"sha256"` lists are counted the same way. A
/// string value "action" (a tag, say) is counted too, so both counts are capped by what the text
/// could hold: a rule takes at least 40 bytes, a sha256 matcher at least 80, which keeps the
/// reserved bytes well under the compiled-size budget per payload byte.
fn table_sizes(bytes: &[u8]) -> (usize, usize) {
    (rule_count_hint(bytes), sha256_count_hint(bytes))
}

/// The rule count of [`table_sizes`].
pub(crate) fn rule_count_hint(bytes: &[u8]) -> usize {
    count_quoted(bytes, b"\"action\"").min(bytes.len() / 40)
}

/// The sha256-matcher count of [`table_sizes`].
pub(crate) fn sha256_count_hint(bytes: &[u8]) -> usize {
    count_quoted(bytes, b"\"sha256\"").min(bytes.len() / 80)
}

/// Non-overlapping occurrences of a quoted 6-character name. `memmem` picks its candidate
/// bytes by their frequency in ordinary text, where a quote is rare; in JSON it is everywhere,
/// so on a large policy most candidates were false and each cost a check. The name's first
/// letter and its closing quote are the pair here (half the time on the bench's policy). Any
/// other platform, or a CPU without the vector instructions, uses `memmem`.
fn count_quoted(bytes: &[u8], needle: &[u8; 8]) -> usize {
    #[cfg(target_arch = "aarch64")]
    use memchr::arch::aarch64::neon::packedpair::Finder;
    #[cfg(target_arch = "x86_64")]
    use memchr::arch::x86_64::avx2::packedpair::Finder;
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let pair = memchr::arch::all::packedpair::Pair::with_indices(needle, 1, 7);
        if let Some(finder) = pair.and_then(|p| Finder::with_pair(needle, p)) {
            let (mut count, mut at) = (0, 0);
            while bytes.len() - at >= finder.min_haystack_len() {
                let Some(i) = finder.find(&bytes[at..], needle) else {
                    return count;
                };
                count += 1;
                at += i + needle.len();
            }
            return count + memchr::memmem::find_iter(&bytes[at..], needle).count();
        }
    }
    memchr::memmem::find_iter(bytes, needle).count()
}

/// A policy's fields other than its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyHeader {
    pub fleet: String,
    pub version: u64,
    pub issued: Time,
    pub expires: Time,
    pub rule_count: usize,
}

struct PolicySeed<'a> {
    set: &'a mut RuleSet,
    budget: usize,
}

impl<'de> de::DeserializeSeed<'de> for PolicySeed<'_> {
    type Value = PolicyHeader;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<PolicyHeader, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PolicySeed<'_> {
    type Value = PolicyHeader;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a policy object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PolicyHeader, A::Error> {
        let (mut fleet, mut version, mut issued, mut expires, mut rules) = (None, None, None, None, None);
        fn once<T, E: de::Error>(slot: &mut Option<T>, v: T, name: &'static str) -> Result<(), E> {
            if slot.replace(v).is_some() {
                return Err(E::duplicate_field(name));
            }
            Ok(())
        }
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "fleet" => once(&mut fleet, map.next_value::<String>()?, "fleet")?,
                "version" => once(&mut version, map.next_value::<u64>()?, "version")?,
                "issued" => once(&mut issued, map.next_value::<Time>()?, "issued")?,
                "expires" => once(&mut expires, map.next_value::<Time>()?, "expires")?,
                "rules" => {
                    if rules.is_some() {
                        return Err(de::Error::duplicate_field("rules"));
                    }
                    rules = Some(map.next_value_seed(RulesSeed { set: &mut *self.set, budget: self.budget })?);
                }
                other => {
                    return Err(de::Error::unknown_field(other, &["fleet", "version", "issued", "expires", "rules"]))
                }
            }
        }
        Ok(PolicyHeader {
            fleet: fleet.ok_or_else(|| de::Error::missing_field("fleet"))?,
            version: version.ok_or_else(|| de::Error::missing_field("version"))?,
            issued: issued.ok_or_else(|| de::Error::missing_field("issued"))?,
            expires: expires.ok_or_else(|| de::Error::missing_field("expires"))?,
            rule_count: rules.ok_or_else(|| de::Error::missing_field("rules"))?,
        })
    }
}

struct RulesSeed<'a> {
    set: &'a mut RuleSet,
    budget: usize,
}

impl<'de> de::DeserializeSeed<'de> for RulesSeed<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl RulesSeed<'_> {
    fn check_budget<E: de::Error>(&self) -> Result<(), E> {
        let used = self.set.approx_bytes();
        if used > self.budget {
            return Err(E::custom(format!(
                "the compiled rules would take more than {} bytes ({} so far): over the bound of {}× the payload \
                 plus {} bytes, at most {} bytes",
                self.budget,
                used,
                limits::COMPILED_PER_PAYLOAD_BYTE,
                limits::COMPILED_BASE_BYTES,
                limits::COMPILED_MAX_BYTES
            )));
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for RulesSeed<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of rules")
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        use std::hash::{Hash as _, Hasher as _};
        let mut ids = rustc_hash::FxHashSet::with_capacity_and_hasher(self.set.capacity_hint(), Default::default());
        let mut count = 0usize;
        while let Some(rule) = seq.next_element::<crate::rules::RuleRef<'de>>()? {
            count += 1;
            if count > limits::MAX_RULES {
                return Err(de::Error::custom(format!("more than {} rules", limits::MAX_RULES)));
            }
            rule.check().map_err(de::Error::custom)?;
            let mut h = rustc_hash::FxHasher::default();
            rule.id.hash(&mut h);
            if !ids.insert(h.finish()) {
                return Err(de::Error::custom(format!("rule id {:?} is used twice", rule.id)));
            }
            self.set.add(&rule);
            // Checked every 256 rules (and at the end): one rule adds at most
            // MAX_MATCHERS × MAX_LIST index entries, so the overshoot between checks is bounded too.
            if count % 256 == 0 {
                self.check_budget()?;
            }
        }
        self.check_budget()?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector count agrees with `memmem` at every length and position: texts shorter than
    /// the vector finder takes, names at the very start and end, back to back, overlapping a
    /// chunk boundary, and near misses (`"actions"`, `"Action"`).
    #[test]
    fn quoted_names_are_counted_as_memmem_counts_them() {
        let pieces: [&[u8]; 7] =
            [b"\"action\"", b"\"sha256\"", b"\"actions\"", b"\"Action\"", b"x", b"\"", b"{\"id\":\"r1\","];
        let mut seed = 0x1234_5678_9abc_def0u64;
        for len in 0..400 {
            let mut text = Vec::new();
            while text.len() < len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.extend_from_slice(pieces[(seed % pieces.len() as u64) as usize]);
            }
            for needle in [b"\"action\"", b"\"sha256\""] {
                let want = memchr::memmem::find_iter(&text, needle).count();
                assert_eq!(count_quoted(&text, needle), want, "len {len}: {:?}", String::from_utf8_lossy(&text));
            }
        }
    }
}
