//! The compiled, indexed rule set: which rule applies to an app, and how strongly.
//!
//! Compiling consumes the policy's rules once; matching one app then costs a few hash lookups
//! plus a full check of the few candidate matchers the index returns, never a scan of every rule.
//! Each matcher is indexed under exactly one of its conditions (an AND needs only one to be
//! necessary): sha256, else signer, else exact id, else id glob prefix, else name, else a
//! per-kind scan list for matchers that only constrain kind/publisher/version.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::glob::{glob_match, is_glob, literal_prefix};
use crate::rules::{Action, Kind, Matcher, Rule};
use crate::version::Constraint;

/// Longest literal prefix used as a glob index key. Lookups per app are bounded by this.
const PREFIX_KEY_MAX: usize = 8;

/// Whether a match rests on something the app cannot choose (signer, artifact hash) or on names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strength {
    Weak,
    Strong,
}

impl std::fmt::Display for Strength {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strength::Weak => "weak",
            Strength::Strong => "strong",
        })
    }
}

/// The rule that applies to an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub rule: String,
    pub action: Action,
    pub strength: Strength,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

#[derive(Debug)]
struct Pattern {
    text: Box<str>,
    glob: bool,
}

impl Pattern {
    fn new(text: &str, fold_case: bool) -> Self {
        let text: Box<str> = if fold_case {
            text.to_lowercase().into()
        } else {
            text.into()
        };
        let glob = is_glob(&text);
        Self { text, glob }
    }

    fn matches(&self, value: &str) -> bool {
        if self.glob {
            glob_match(&self.text, value)
        } else {
            *self.text == *value
        }
    }
}

#[derive(Debug)]
struct CompiledMatcher {
    kind: Option<Kind>,
    id: Option<Pattern>,
    name: Option<Pattern>,
    publisher: Option<Pattern>,
    signer: Box<[Box<str>]>,
    sha256: Box<[Box<str>]>,
    version: Option<Constraint>,
}

/// Case-folded name/publisher of an app, computed once per match.
struct Folded {
    name: Option<String>,
    publisher: Option<String>,
}

impl CompiledMatcher {
    fn new(m: Matcher) -> Self {
        Self {
            kind: m.kind,
            id: m.id.as_deref().map(|s| Pattern::new(s, false)),
            name: m.name.as_deref().map(|s| Pattern::new(s, true)),
            publisher: m.publisher.as_deref().map(|s| Pattern::new(s, true)),
            signer: m
                .signer
                .iter()
                .map(|s| s.to_lowercase().into_boxed_str())
                .collect(),
            sha256: m.sha256.into_iter().map(String::into_boxed_str).collect(),
            // Rules were checked before compiling; an unparsable constraint cannot reach here,
            // and if it did it would match nothing rather than everything.
            version: m.version.as_deref().and_then(|v| Constraint::parse(v).ok()),
        }
    }

    fn matches(&self, app: &App, folded: &Folded) -> bool {
        if self.kind.is_some_and(|k| k != app.kind) {
            return false;
        }
        if self.id.as_ref().is_some_and(|p| !p.matches(&app.id)) {
            return false;
        }
        for (pat, val) in [
            (&self.name, &folded.name),
            (&self.publisher, &folded.publisher),
        ] {
            if let Some(p) = pat {
                match val {
                    Some(v) if p.matches(v) => {}
                    _ => return false,
                }
            }
        }
        if !self.signer.is_empty()
            && !app
                .signers
                .iter()
                .any(|s| self.signer.iter().any(|m| m.eq_ignore_ascii_case(s)))
        {
            return false;
        }
        if !self.sha256.is_empty()
            && !app
                .sha256
                .as_deref()
                .is_some_and(|h| self.sha256.iter().any(|m| **m == *h))
        {
            return false;
        }
        if let Some(c) = &self.version {
            match &app.version {
                Some(v) if c.matches(app.kind, v) => {}
                _ => return false,
            }
        }
        true
    }

    fn strength(&self) -> Strength {
        if self.signer.is_empty() && self.sha256.is_empty() {
            Strength::Weak
        } else {
            Strength::Strong
        }
    }
}

#[derive(Debug)]
struct CompiledRule {
    id: Box<str>,
    description: Box<str>,
    action: Action,
    tags: Box<[Box<str>]>,
    matchers: Box<[CompiledMatcher]>,
    except: Box<[CompiledMatcher]>,
}

/// (rule index, matcher index)
type Entry = (u32, u16);

/// Index of glob patterns by a bounded literal prefix.
#[derive(Debug, Default)]
struct PrefixIndex {
    by_prefix: HashMap<Box<str>, Vec<Entry>>,
    /// Distinct key lengths present, so a lookup tries only those.
    lengths: Vec<usize>,
}

impl PrefixIndex {
    fn insert(&mut self, prefix: &str, e: Entry) {
        let key = truncate_chars(prefix, PREFIX_KEY_MAX);
        if !self.lengths.contains(&key.len()) {
            self.lengths.push(key.len());
            self.lengths.sort_unstable();
        }
        self.by_prefix.entry(key.into()).or_default().push(e);
    }

    fn candidates<'a>(&'a self, value: &'a str, out: &mut Vec<Entry>) {
        for &len in &self.lengths {
            if let Some(key) = value.get(..len) {
                if let Some(v) = self.by_prefix.get(key) {
                    out.extend_from_slice(v);
                }
            }
        }
    }
}

fn truncate_chars(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A compiled rule set for one device (its tags applied at compile time).
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<CompiledRule>,
    by_sha256: HashMap<Box<str>, Vec<Entry>>,
    by_signer: HashMap<Box<str>, Vec<Entry>>,
    by_id: HashMap<Box<str>, Vec<Entry>>,
    id_globs: PrefixIndex,
    by_name: HashMap<Box<str>, Vec<Entry>>,
    name_globs: PrefixIndex,
    /// Matchers with no indexable condition, per kind; the last slot is for "any kind".
    scan: Vec<Vec<Entry>>,
}

impl RuleSet {
    /// Compiles `rules` (already validated by `Policy::check`). Rules whose tags the device does
    /// not carry are dropped here, so matching never looks at them.
    pub fn compile(rules: Vec<Rule>, device_tags: &[String]) -> Self {
        let mut set = RuleSet {
            scan: vec![Vec::new(); Kind::ALL.len() + 1],
            ..Default::default()
        };
        for rule in rules {
            if !rule.tags.is_empty() && !rule.tags.iter().any(|t| device_tags.contains(t)) {
                continue;
            }
            let ri = set.rules.len() as u32;
            for (mi, m) in rule.matchers.iter().enumerate() {
                set.index(m, (ri, mi as u16));
            }
            set.rules.push(CompiledRule {
                id: rule.id.into(),
                description: rule.description.into(),
                action: rule.action,
                tags: rule.tags.into_iter().map(String::into_boxed_str).collect(),
                matchers: rule
                    .matchers
                    .into_iter()
                    .map(CompiledMatcher::new)
                    .collect(),
                except: rule.except.into_iter().map(CompiledMatcher::new).collect(),
            });
        }
        set
    }

    fn index(&mut self, m: &Matcher, e: Entry) {
        if !m.sha256.is_empty() {
            for h in &m.sha256 {
                self.by_sha256.entry(h.as_str().into()).or_default().push(e);
            }
        } else if !m.signer.is_empty() {
            for s in &m.signer {
                self.by_signer
                    .entry(s.to_lowercase().into())
                    .or_default()
                    .push(e);
            }
        } else if let Some(id) = m.id.as_deref().filter(|id| !is_glob(id)) {
            self.by_id.entry(id.into()).or_default().push(e);
        } else if let Some(id) = m.id.as_deref().filter(|id| !literal_prefix(id).is_empty()) {
            self.id_globs.insert(literal_prefix(id), e);
        } else if let Some(name) = m.name.as_deref().map(str::to_lowercase) {
            if !is_glob(&name) {
                self.by_name.entry(name.into()).or_default().push(e);
            } else if !literal_prefix(&name).is_empty() {
                self.name_globs.insert(literal_prefix(&name), e);
            } else {
                self.scan_slot(m.kind).push(e);
            }
        } else {
            self.scan_slot(m.kind).push(e);
        }
    }

    fn scan_slot(&mut self, kind: Option<Kind>) -> &mut Vec<Entry> {
        let i = kind.map_or(Kind::ALL.len(), Kind::index);
        &mut self.scan[i]
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every rule that applies to `app`, most severe first (then strong before weak, then
    /// policy order). A rule applies if any of its matchers matches and none of its excepts does.
    pub fn matches(&self, app: &App) -> Vec<Verdict> {
        let mut candidates = Vec::new();
        if let Some(h) = &app.sha256 {
            if let Some(v) = self.by_sha256.get(h.as_str()) {
                candidates.extend_from_slice(v);
            }
        }
        for s in &app.signers {
            if let Some(v) = self.by_signer.get(s.to_lowercase().as_str()) {
                candidates.extend_from_slice(v);
            }
        }
        if let Some(v) = self.by_id.get(app.id.as_str()) {
            candidates.extend_from_slice(v);
        }
        self.id_globs.candidates(&app.id, &mut candidates);
        let folded = Folded {
            name: app.name.as_deref().map(str::to_lowercase),
            publisher: app.publisher.as_deref().map(str::to_lowercase),
        };
        if let Some(name) = &folded.name {
            if let Some(v) = self.by_name.get(name.as_str()) {
                candidates.extend_from_slice(v);
            }
            self.name_globs.candidates(name, &mut candidates);
        }
        candidates.extend_from_slice(&self.scan[app.kind.index()]);
        candidates.extend_from_slice(&self.scan[Kind::ALL.len()]);

        let mut hits: Vec<(u32, Strength)> = Vec::new();
        for (ri, mi) in candidates {
            let rule = &self.rules[ri as usize];
            let m = &rule.matchers[mi as usize];
            if !m.matches(app, &folded) {
                continue;
            }
            match hits.iter_mut().find(|(r, _)| *r == ri) {
                Some((_, s)) => *s = (*s).max(m.strength()),
                None => hits.push((ri, m.strength())),
            }
        }
        hits.retain(|(ri, _)| {
            !self.rules[*ri as usize]
                .except
                .iter()
                .any(|m| m.matches(app, &folded))
        });
        hits.sort_by(|(ra, sa), (rb, sb)| {
            let (a, b) = (&self.rules[*ra as usize], &self.rules[*rb as usize]);
            b.action.cmp(&a.action).then(sb.cmp(sa)).then(ra.cmp(rb))
        });
        hits.into_iter()
            .map(|(ri, strength)| {
                let r = &self.rules[ri as usize];
                Verdict {
                    rule: r.id.to_string(),
                    action: r.action,
                    strength,
                    description: r.description.to_string(),
                }
            })
            .collect()
    }

    /// The rule that decides what happens to `app`, if any.
    pub fn verdict(&self, app: &App) -> Option<Verdict> {
        self.matches(app).into_iter().next()
    }

    /// Tags of a rule, by id (for reports).
    pub fn rule_tags(&self, id: &str) -> Option<Vec<String>> {
        self.rules
            .iter()
            .find(|r| &*r.id == id)
            .map(|r| r.tags.iter().map(|t| t.to_string()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, action: Action, matchers: Vec<Matcher>) -> Rule {
        Rule {
            id: id.into(),
            description: String::new(),
            action,
            matchers,
            except: vec![],
            tags: vec![],
        }
    }

    fn app(kind: Kind, id: &str) -> App {
        App::new(kind, id)
    }

    #[test]
    fn globs_exact_names_signers_hashes_and_excepts() {
        let hash = "a".repeat(64);
        let mut kas = rule(
            "kaspersky-android",
            Action::Remove,
            vec![Matcher {
                kind: Some(Kind::Android),
                id: Some("com.kaspersky.*".into()),
                ..Default::default()
            }],
        );
        kas.except = vec![Matcher {
            id: Some("com.kaspersky.allowed".into()),
            ..Default::default()
        }];
        let rules = vec![
            kas,
            rule(
                "wechat-deb",
                Action::Remove,
                vec![Matcher {
                    kind: Some(Kind::Deb),
                    id: Some("wechat".into()),
                    ..Default::default()
                }],
            ),
            rule(
                "by-name",
                Action::Audit,
                vec![Matcher {
                    name: Some("*WeChat*".into()),
                    ..Default::default()
                }],
            ),
            rule(
                "team",
                Action::Quarantine,
                vec![Matcher {
                    signer: vec!["2Y8XE5CQ94".into()],
                    ..Default::default()
                }],
            ),
            rule(
                "hash",
                Action::Quarantine,
                vec![Matcher {
                    sha256: vec![hash.clone()],
                    ..Default::default()
                }],
            ),
            rule(
                "old-only",
                Action::Remove,
                vec![Matcher {
                    id: Some("tool".into()),
                    version: Some("<2.0".into()),
                    ..Default::default()
                }],
            ),
        ];
        let set = RuleSet::compile(rules, &[]);
        assert_eq!(
            set.verdict(&app(Kind::Android, "com.kaspersky.kes"))
                .unwrap()
                .rule,
            "kaspersky-android"
        );
        assert!(
            set.verdict(&app(Kind::Android, "com.kaspersky.allowed"))
                .is_none(),
            "except exempts"
        );
        assert!(
            set.verdict(&app(Kind::Deb, "com.kaspersky.kes")).is_none(),
            "kind is part of the AND"
        );
        assert!(set.verdict(&app(Kind::Android, "com.kasperskyx")).is_none());
        let v = set.verdict(&app(Kind::Deb, "wechat")).unwrap();
        assert_eq!(
            (v.rule.as_str(), v.strength),
            ("wechat-deb", Strength::Weak)
        );
        let mut named = app(Kind::Appimage, "x");
        named.name = Some("My wechat Desktop".into());
        assert_eq!(
            set.verdict(&named).unwrap().rule,
            "by-name",
            "name globs are case-insensitive"
        );
        let mut signed = app(Kind::Macos, "com.kaspersky.kav");
        signed.signers = vec!["2y8xe5cq94".into()];
        let v = set.verdict(&signed).unwrap();
        assert_eq!((v.rule.as_str(), v.strength), ("team", Strength::Strong));
        let mut hashed = app(Kind::File, "whatever");
        hashed.sha256 = Some(hash);
        assert_eq!(set.verdict(&hashed).unwrap().strength, Strength::Strong);
        let mut old = app(Kind::Deb, "tool");
        old.version = Some("1.9".into());
        assert_eq!(set.verdict(&old).unwrap().rule, "old-only");
        old.version = Some("2.0".into());
        assert!(set.verdict(&old).is_none());
        old.version = None;
        assert!(
            set.verdict(&old).is_none(),
            "a version constraint needs a version"
        );
    }

    #[test]
    fn most_severe_rule_wins_and_tags_filter() {
        let m = || {
            vec![Matcher {
                id: Some("x".into()),
                ..Default::default()
            }]
        };
        let mut tagged = rule("tagged", Action::Remove, m());
        tagged.tags = vec!["mobile".into()];
        let rules = vec![
            rule("audit", Action::Audit, m()),
            tagged,
            rule("q", Action::Quarantine, m()),
        ];
        let set = RuleSet::compile(rules.clone(), &[]);
        assert_eq!(set.verdict(&app(Kind::Deb, "x")).unwrap().rule, "q");
        let set = RuleSet::compile(rules, &["mobile".into()]);
        let all = set.matches(&app(Kind::Deb, "x"));
        assert_eq!(
            all.iter().map(|v| v.rule.as_str()).collect::<Vec<_>>(),
            ["tagged", "q", "audit"]
        );
    }
}
