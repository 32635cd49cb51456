//! The rule format inside a signed policy: rules, matchers, actions, kinds.
//!
//! These are wire types (they derive serde and are versioned with the policy payload). Matching
//! is in `matcher`, which compiles them into an index; version ordering is in `version`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

pub use crate::app::Kind;
use crate::limits;

/// What the agent does with an app a rule matches. Ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Audit,
    Quarantine,
    Remove,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Audit => "audit",
            Action::Quarantine => "quarantine",
            Action::Remove => "remove",
        })
    }
}

/// An AND of conditions. A matcher with no condition is invalid (it would match everything).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// Exact or glob (`*`, `?`), case-sensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Case-insensitive glob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Case-insensitive glob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// Any of: Android signing-cert SHA-256 (hex), Apple Team ID, RPM key id, snap publisher id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signer: Vec<String>,
    /// Any of these artifact SHA-256 hashes (lowercase hex).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sha256: Vec<String>,
    /// A constraint such as `<8.0.40` or `>=1.0, <2.0`, in the app kind's own version ordering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// One rule of the blocklist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub action: Action,
    #[serde(rename = "match")]
    pub matchers: Vec<Matcher>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<Matcher>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Checks length and control characters; `what` names the field and is only built on error.
fn bounded(what: impl FnOnce() -> String, s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("{} is {} bytes long (at most {max})", what(), s.len()));
    }
    // One branch-free pass (it compiles to vector compares): ASCII controls, and whether any
    // byte is non-ASCII (only then are the characters decoded to look for other controls).
    let (mut ascii_control, mut non_ascii) = (false, false);
    for &b in s.as_bytes() {
        ascii_control |= (b < 0x20) | (b == 0x7f);
        non_ascii |= b >= 0x80;
    }
    if ascii_control || (non_ascii && s.chars().any(|c| c.is_control())) {
        return Err(format!("{} contains a control character", what()));
    }
    Ok(())
}

pub fn is_sha256_hex(s: &str) -> bool {
    sha256_from_hex(s).is_some()
}

/// The 32 bytes of a sha256 written as 64 lowercase hex digits, or `None` for anything else.
/// Branch-free per digit (compare, select, OR), so the loop compiles to vector instructions: a
/// large hash-list policy checks and decodes tens of thousands of these.
pub fn sha256_from_hex(s: &str) -> Option<[u8; 32]> {
    sha256_from_hex_bytes(s.as_bytes())
}

/// [`sha256_from_hex`] of bytes (any bytes: only lowercase hex digits are accepted).
pub(crate) fn sha256_from_hex_bytes(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut digits = [0u8; 64];
    let mut bad = false;
    for (v, &c) in digits.iter_mut().zip(s) {
        let d = c.wrapping_sub(b'0');
        let l = c.wrapping_sub(b'a');
        let (is_d, is_l) = (d < 10, l < 6);
        bad |= !(is_d | is_l);
        *v = if is_d { d } else { l.wrapping_add(10) };
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = (pair[0] << 4) | (pair[1] & 0x0f);
    }
    (!bad).then_some(out)
}

/// A matcher borrowing its strings: what the streaming parser reads from a verified payload
/// (no allocation per string) and what `check` and the compiler work on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatcherRef<'a> {
    #[serde(default)]
    pub kind: Option<Kind>,
    #[serde(default, borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub publisher: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub signer: Vec<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub sha256: Vec<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub version: Option<Cow<'a, str>>,
    /// `sha256` decoded, filled by a reader that already decoded (and so validated) every hash
    /// of the list: when it has as many entries as `sha256`, [`MatcherRef::check`] need not
    /// validate the hex again and the compiler need not decode it again. Empty otherwise.
    #[serde(skip)]
    pub sha256_decoded: Vec<[u8; 32]>,
}

/// A rule borrowing its strings (see [`MatcherRef`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRef<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub description: Cow<'a, str>,
    pub action: Action,
    #[serde(rename = "match", borrow)]
    pub matchers: Vec<MatcherRef<'a>>,
    #[serde(default, borrow)]
    pub except: Vec<MatcherRef<'a>>,
    #[serde(default, borrow)]
    pub tags: Vec<Cow<'a, str>>,
}

impl Matcher {
    pub fn view(&self) -> MatcherRef<'_> {
        fn b(s: &Option<String>) -> Option<Cow<'_, str>> {
            s.as_deref().map(Cow::Borrowed)
        }
        MatcherRef {
            kind: self.kind,
            id: b(&self.id),
            name: b(&self.name),
            publisher: b(&self.publisher),
            signer: self.signer.iter().map(|s| Cow::Borrowed(s.as_str())).collect(),
            sha256: self.sha256.iter().map(|s| Cow::Borrowed(s.as_str())).collect(),
            version: b(&self.version),
            sha256_decoded: Vec::new(),
        }
    }

    pub fn check(&self, rule: &str) -> Result<(), String> {
        self.view().check(rule)
    }
}

impl Rule {
    pub fn view(&self) -> RuleRef<'_> {
        RuleRef {
            id: Cow::Borrowed(&self.id),
            description: Cow::Borrowed(&self.description),
            action: self.action,
            matchers: self.matchers.iter().map(Matcher::view).collect(),
            except: self.except.iter().map(Matcher::view).collect(),
            tags: self.tags.iter().map(|t| Cow::Borrowed(t.as_str())).collect(),
        }
    }

    pub fn check(&self) -> Result<(), String> {
        self.view().check()
    }
}

impl MatcherRef<'_> {
    pub fn check(&self, rule: &str) -> Result<(), String> {
        let ctx = |what: &str| format!("rule {rule:?}: {what}");
        let nothing_but_kind = self.id.is_none()
            && self.name.is_none()
            && self.publisher.is_none()
            && self.signer.is_empty()
            && self.sha256.is_empty();
        if self.kind.is_none() && nothing_but_kind {
            return Err(ctx("a matcher must name at least one of kind, id, name, publisher, signer, sha256"));
        }
        if self.kind.is_some() && nothing_but_kind && self.version.is_none() {
            return Err(ctx("a matcher with only `kind` would match every app of that kind"));
        }
        for (what, v) in [("id", &self.id), ("name", &self.name), ("publisher", &self.publisher)] {
            if let Some(v) = v {
                bounded(|| ctx(what), v, limits::PATTERN_LEN)?;
                if v.is_empty() {
                    return Err(ctx(&format!("{what} is empty")));
                }
                if v.chars().all(|c| c == '*' || c == '?') {
                    return Err(ctx(&format!("{what} {v:?} would match everything")));
                }
            }
        }
        if self.signer.len() > limits::MAX_LIST || self.sha256.len() > limits::MAX_LIST {
            return Err(ctx(&format!("a signer or sha256 list is longer than {}", limits::MAX_LIST)));
        }
        for s in &self.signer {
            bounded(|| ctx("signer"), s, limits::PATTERN_LEN)?;
            if s.is_empty() {
                return Err(ctx("empty signer"));
            }
        }
        if self.sha256_decoded.len() != self.sha256.len() {
            for h in &self.sha256 {
                if !is_sha256_hex(h) {
                    return Err(ctx(&format!("sha256 {h:?} is not 64 lowercase hex digits")));
                }
            }
        }
        if let Some(v) = &self.version {
            bounded(|| ctx("version"), v, limits::PATTERN_LEN)?;
            crate::version::Constraint::parse(v).map_err(|e| ctx(&e))?;
        }
        Ok(())
    }

    /// Whether this matcher identifies an app by something the app cannot choose freely.
    pub fn is_strong(&self) -> bool {
        !self.signer.is_empty() || !self.sha256.is_empty()
    }

    /// The `i`th hash decoded: from `sha256_decoded` when the reader filled it, else from the
    /// text (`None` for text that is not a valid hash, which a checked matcher never has).
    pub(crate) fn sha256_at(&self, i: usize) -> Option<[u8; 32]> {
        if self.sha256_decoded.len() == self.sha256.len() {
            Some(self.sha256_decoded[i])
        } else {
            sha256_from_hex(&self.sha256[i])
        }
    }
}

impl RuleRef<'_> {
    pub fn check(&self) -> Result<(), String> {
        if self.id.is_empty() {
            return Err("a rule has an empty id".into());
        }
        bounded(|| "rule id".into(), &self.id, limits::RULE_ID_LEN)?;
        let ctx = |what: String| format!("rule {:?}: {what}", self.id);
        bounded(|| ctx("description".into()), &self.description, limits::DESCRIPTION_LEN)?;
        if self.matchers.is_empty() {
            return Err(ctx("`match` is empty".into()));
        }
        if self.matchers.len() > limits::MAX_MATCHERS || self.except.len() > limits::MAX_MATCHERS {
            return Err(ctx(format!("more than {} matchers", limits::MAX_MATCHERS)));
        }
        for m in self.matchers.iter().chain(&self.except) {
            m.check(&self.id)?;
        }
        if self.tags.len() > limits::MAX_TAGS {
            return Err(ctx(format!("more than {} tags", limits::MAX_TAGS)));
        }
        for t in &self.tags {
            bounded(|| ctx("tag".into()), t, limits::TAG_LEN)?;
            if t.is_empty() {
                return Err(ctx("empty tag".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_decodes_exactly_lowercase_hex() {
        for seed in 0u8..=255 {
            let bytes: [u8; 32] = std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 7));
            let text = hex::encode(bytes);
            assert_eq!(sha256_from_hex(&text), Some(bytes));
        }
        let good = "0123456789abcdef".repeat(4);
        assert!(is_sha256_hex(&good));
        assert!(!is_sha256_hex(&good.to_uppercase()), "uppercase is not the canonical form");
        assert!(!is_sha256_hex(&good[1..]), "63 digits");
        assert!(!is_sha256_hex(&format!("{good}0")), "65 digits");
        for bad in ['g', 'G', ' ', '/', ':', '@', '`', '\0'] {
            for at in [0, 1, 31, 63] {
                let mut s = good.clone().into_bytes();
                s[at] = bad as u8;
                assert!(!is_sha256_hex(std::str::from_utf8(&s).unwrap()), "{bad:?} at {at}");
            }
        }
        let mut s = good.clone();
        s.replace_range(62..64, "é");
        assert!(!is_sha256_hex(&s), "a multi-byte character");
    }
}
