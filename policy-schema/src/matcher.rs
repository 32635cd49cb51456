//! The compiled, indexed rule set: which rule applies to an app, and how strongly.
//!
//! Compiling takes each validated rule once (it can be fed while a policy is being parsed, so a
//! large policy is never held twice); matching one app then costs a few hash lookups plus a full
//! check of the few candidate matchers the index returns, never a scan of every rule.
//!
//! Each matcher is indexed under exactly one of its conditions (an AND needs only one to be
//! necessary): sha256, else signer, else exact id, else id-glob prefix, else name, else a
//! per-kind scan list for matchers that only constrain kind/publisher/version. Index keys other
//! than sha256 are 64-bit hashes, so a hit is a candidate that the full check confirms; sha256
//! keys are the full 32 bytes, so a sha256 hit needs no second comparison. Strings live in one
//! arena; a 100,000-rule policy compiles to a few bytes per rule beyond its text.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use rustc_hash::{FxHashMap, FxHasher};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::glob::{glob_match, is_glob, literal_prefix};
use crate::rules::{Action, Kind, MatcherRef, Rule, RuleRef};
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

/// The rule that applies to an app (owned, for reports and wire formats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub rule: String,
    pub action: Action,
    pub strength: Strength,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// The rule that applies to an app, borrowed from the rule set (no allocation on the hot path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerdictRef<'a> {
    pub rule: &'a str,
    pub description: &'a str,
    pub action: Action,
    pub strength: Strength,
    /// Whether the rule has an `except` matcher on sha256: only then can learning the app's
    /// hash lift this verdict (hashless matchers that matched still match once it is known).
    pub except_by_hash: bool,
}

impl VerdictRef<'_> {
    pub fn to_owned(self) -> Verdict {
        Verdict {
            rule: self.rule.to_owned(),
            action: self.action,
            strength: self.strength,
            description: self.description.to_owned(),
        }
    }
}

/// A string in the arena.
#[derive(Debug, Clone, Copy, Default)]
struct Str {
    start: u32,
    len: u32,
}

/// Hasher for sha256 keys: they are uniformly distributed already, so the first 8 bytes are
/// the hash. (Keys come from the signed policy, never from the apps being matched.)
#[derive(Default)]
struct FirstBytes(u64);

impl Hasher for FirstBytes {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
}

fn hash_str(s: &str) -> u64 {
    let mut h = FxHasher::default();
    s.hash(&mut h);
    h.finish()
}

/// Matcher indices under one key. Almost always exactly one, stored inline; a key shared by
/// several matchers points (high bit set) into `RuleSet::shared`.
#[derive(Debug, Clone, Copy)]
struct Entries(u32);

const SHARED: u32 = 1 << 31;

fn insert<K: Hash + Eq, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, Entries, S>,
    shared: &mut Vec<Vec<u32>>,
    k: K,
    m: u32,
) -> usize {
    match map.entry(k) {
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(Entries(m));
            0
        }
        std::collections::hash_map::Entry::Occupied(mut o) => {
            let e = o.get_mut();
            if e.0 & SHARED != 0 {
                shared[(e.0 & !SHARED) as usize].push(m);
                4
            } else {
                shared.push(vec![e.0, m]);
                e.0 = (shared.len() - 1) as u32 | SHARED;
                2 * 4
            }
        }
    }
}

fn entries<'a>(e: &'a Entries, shared: &'a [Vec<u32>]) -> &'a [u32] {
    if e.0 & SHARED != 0 {
        &shared[(e.0 & !SHARED) as usize]
    } else {
        std::slice::from_ref(&e.0)
    }
}

#[derive(Debug, Clone, Copy)]
struct Pattern {
    text: Str,
    glob: bool,
}

/// Conditions most matchers do not have, kept out of line.
#[derive(Debug, Default)]
struct Extra {
    name: Option<Pattern>,
    publisher: Option<Pattern>,
    /// Lowercased.
    signer: Vec<Str>,
    /// Empty when sha256 is the matcher's index key (a hit on the key is the check).
    sha256: Vec<[u8; 32]>,
    version: Option<Constraint>,
}

#[derive(Debug)]
struct CompiledMatcher {
    rule: u32,
    kind: Option<Kind>,
    /// Whether the matcher has signer or sha256 conditions (even when the sha256 is only the
    /// index key and not stored here).
    strong: bool,
    id: Option<Pattern>,
    /// Index into `extras`, or `NO_EXTRA`.
    extra: u32,
}

const NO_EXTRA: u32 = u32::MAX;

#[derive(Debug)]
struct CompiledRule {
    id: Str,
    description: Str,
    action: Action,
    excepts: (u32, u32),
    except_by_hash: bool,
}

/// Index of glob patterns by a bounded literal prefix.
#[derive(Debug, Default)]
struct PrefixIndex {
    by_prefix: FxHashMap<u64, Entries>,
    /// Distinct key lengths present, so a lookup tries only those.
    lengths: Vec<usize>,
}

impl PrefixIndex {
    fn insert(&mut self, shared: &mut Vec<Vec<u32>>, prefix: &str, m: u32) -> usize {
        let key = truncate_chars(prefix, PREFIX_KEY_MAX);
        if !self.lengths.contains(&key.len()) {
            self.lengths.push(key.len());
            self.lengths.sort_unstable();
        }
        insert(&mut self.by_prefix, shared, hash_str(key), m)
    }

    fn candidates(&self, shared: &[Vec<u32>], value: &str, out: &mut Candidates) {
        for &len in &self.lengths {
            if let Some(key) = value.get(..len) {
                if let Some(v) = self.by_prefix.get(&hash_str(key)) {
                    out.extend(entries(v, shared));
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

/// A small buffer of candidate matcher indices, on the stack unless an app hits many.
struct Candidates {
    inline: [u32; 32],
    len: usize,
    spill: Vec<u32>,
}

impl Candidates {
    fn new() -> Self {
        Self { inline: [0; 32], len: 0, spill: Vec::new() }
    }

    fn extend(&mut self, items: &[u32]) {
        for &m in items {
            if self.len < self.inline.len() {
                self.inline[self.len] = m;
                self.len += 1;
            } else {
                self.spill.push(m);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.inline[..self.len].iter().copied().chain(self.spill.iter().copied())
    }
}

fn parse_sha(hex: &str) -> Option<[u8; 32]> {
    crate::rules::sha256_from_hex(hex)
}

/// A compiled rule set for one device (its tags applied at compile time).
#[derive(Debug)]
pub struct RuleSet {
    text: String,
    rules: Vec<CompiledRule>,
    matchers: Vec<CompiledMatcher>,
    excepts: Vec<CompiledMatcher>,
    extras: Vec<Extra>,
    by_sha256: HashMap<[u8; 32], Entries, BuildHasherDefault<FirstBytes>>,
    by_signer: FxHashMap<u64, Entries>,
    by_id: FxHashMap<u64, Entries>,
    id_globs: PrefixIndex,
    by_name: FxHashMap<u64, Entries>,
    name_globs: PrefixIndex,
    /// Matchers with no indexable condition, per kind; the last slot is for "any kind".
    scan: Vec<Vec<u32>>,
    /// Matcher lists of index keys shared by several matchers.
    shared: Vec<Vec<u32>>,
    device_tags: Vec<String>,
    /// Whether any matcher looks at name or publisher (so matching can skip case folding).
    uses_names: bool,
    /// Heap held inside `extras` and `shared` (their element vectors), kept as rules are added
    /// so that [`RuleSet::approx_bytes`] costs the same whatever the set's size.
    inner_bytes: usize,
}

impl Default for RuleSet {
    fn default() -> Self {
        Self::new(&[])
    }
}

/// Folded (lowercased) name and publisher of an app, computed only when rules look at them.
struct Folded {
    name: Option<String>,
    publisher: Option<String>,
}

impl RuleSet {
    /// An empty set for a device carrying `device_tags`; feed it rules with [`RuleSet::add`].
    pub fn new(device_tags: &[String]) -> Self {
        Self {
            text: String::new(),
            rules: Vec::new(),
            matchers: Vec::new(),
            excepts: Vec::new(),
            extras: Vec::new(),
            by_sha256: HashMap::default(),
            by_signer: FxHashMap::default(),
            by_id: FxHashMap::default(),
            id_globs: PrefixIndex::default(),
            by_name: FxHashMap::default(),
            name_globs: PrefixIndex::default(),
            scan: vec![Vec::new(); Kind::ALL.len() + 1],
            shared: Vec::new(),
            device_tags: device_tags.to_vec(),
            uses_names: false,
            inner_bytes: 0,
        }
    }

    /// Compiles already-validated rules.
    pub fn compile(rules: Vec<Rule>, device_tags: &[String]) -> Self {
        let mut set = Self::new(device_tags);
        for r in &rules {
            set.add(&r.view());
        }
        set.shrink();
        set
    }

    /// Reserves room for about `rules` rules with one matcher each, `sha256` of them indexed
    /// by hash: a policy's counts are known before its rules are compiled (see
    /// `Policy::parse_compiled`), and growing the tables by doubling costs a copy and a rehash
    /// per doubling and leaves up to half of each table unused.
    /// The id index gets room for the other rules (`rules - sha256`): most large policies
    /// are hashes and package ids, and at worst (no ids at all) that is 17 bytes a rule unused.
    pub fn reserve(&mut self, rules: usize, sha256: usize) {
        self.rules.reserve(rules);
        self.matchers.reserve(rules);
        self.by_sha256.reserve(sha256);
        self.by_id.reserve(rules.saturating_sub(sha256));
    }

    /// How many rules room was reserved for.
    pub fn capacity_hint(&self) -> usize {
        self.rules.capacity() - self.rules.len()
    }

    /// Releases spare capacity once all rules are added.
    pub fn shrink(&mut self) {
        self.text.shrink_to_fit();
        self.rules.shrink_to_fit();
        self.matchers.shrink_to_fit();
        self.excepts.shrink_to_fit();
        self.extras.shrink_to_fit();
    }

    fn intern(&mut self, s: &str) -> Str {
        let start = self.text.len() as u32;
        self.text.push_str(s);
        Str { start, len: s.len() as u32 }
    }

    fn get(&self, s: Str) -> &str {
        &self.text[s.start as usize..(s.start + s.len) as usize]
    }

    fn pattern(&mut self, s: &str, fold_case: bool) -> Pattern {
        // Names and publishers: the one matching form of both sides (`normalize::fold`).
        let s = if fold_case { crate::normalize::fold(s) } else { std::borrow::Cow::Borrowed(s) };
        let glob = is_glob(&s);
        let text = self.intern(&s);
        Pattern { text, glob }
    }

    /// Interns `s` lowercased (`str::to_lowercase`), without a temporary string when it is ASCII.
    fn intern_lowercase(&mut self, s: &str) -> Str {
        if !s.is_ascii() {
            return self.intern(&s.to_lowercase());
        }
        let start = self.text.len() as u32;
        self.text.extend(s.bytes().map(|b| char::from(b.to_ascii_lowercase())));
        Str { start, len: s.len() as u32 }
    }

    fn compile_matcher(&mut self, rule: u32, m: &MatcherRef<'_>, sha_is_key: bool) -> CompiledMatcher {
        let id = m.id.as_deref().map(|s| self.pattern(s, false));
        let stored_sha = !m.sha256.is_empty() && !sha_is_key;
        let needs_extra =
            m.name.is_some() || m.publisher.is_some() || !m.signer.is_empty() || stored_sha || m.version.is_some();
        let extra = if needs_extra {
            let name = m.name.as_deref().map(|s| self.pattern(s, true));
            let publisher = m.publisher.as_deref().map(|s| self.pattern(s, true));
            let signer: Vec<Str> = m.signer.iter().map(|s| self.intern_lowercase(s)).collect();
            let sha256: Vec<[u8; 32]> =
                if stored_sha { (0..m.sha256.len()).filter_map(|i| m.sha256_at(i)).collect() } else { Vec::new() };
            // Rules were checked before compiling; an unparsable constraint cannot reach here,
            // and if it did it would match nothing rather than everything.
            let version = m.version.as_deref().map(|v| Constraint::parse(v).unwrap_or_else(|_| Constraint::never()));
            self.uses_names |= name.is_some() || publisher.is_some();
            self.inner_bytes += signer.capacity() * std::mem::size_of::<Str>()
                + sha256.capacity() * 32
                + m.version.as_deref().map_or(0, |v| v.len() + 8 * std::mem::size_of::<String>());
            self.extras.push(Extra { name, publisher, signer, sha256, version });
            (self.extras.len() - 1) as u32
        } else {
            NO_EXTRA
        };
        CompiledMatcher { rule, kind: m.kind, strong: m.is_strong(), id, extra }
    }

    /// Adds one validated rule (ignored when its tags exclude this device).
    pub fn add(&mut self, rule: &RuleRef<'_>) {
        if !rule.tags.is_empty() && !rule.tags.iter().any(|t| self.device_tags.iter().any(|d| d == t)) {
            return;
        }
        let ri = self.rules.len() as u32;
        for m in &rule.matchers {
            let mi = self.matchers.len() as u32;
            let compiled = self.compile_matcher(ri, m, !m.sha256.is_empty());
            self.index(m, &compiled, mi);
            self.matchers.push(compiled);
        }
        let start = self.excepts.len() as u32;
        for m in &rule.except {
            let c = self.compile_matcher(ri, m, false);
            self.excepts.push(c);
        }
        let excepts = (start, self.excepts.len() as u32);
        let except_by_hash = rule.except.iter().any(|m| !m.sha256.is_empty());
        let id = self.intern(&rule.id);
        let description = self.intern(&rule.description);
        self.rules.push(CompiledRule { id, description, action: rule.action, excepts, except_by_hash });
    }

    /// Indexes matcher `mi` under one of its conditions, reading the compiled form `c` for
    /// everything but the hashes (its id and name patterns already say whether they are globs,
    /// its signers are already lowercased and its name already folded).
    fn index(&mut self, m: &MatcherRef<'_>, c: &CompiledMatcher, mi: u32) {
        let shared = &mut self.shared;
        let extra = (c.extra != NO_EXTRA).then(|| &self.extras[c.extra as usize]);
        let text = &self.text;
        let get = |s: Str| &text[s.start as usize..(s.start + s.len) as usize];
        let mut added = 0;
        if !m.sha256.is_empty() {
            for i in 0..m.sha256.len() {
                if let Some(key) = m.sha256_at(i) {
                    added += insert(&mut self.by_sha256, shared, key, mi);
                }
            }
        } else if let Some(signers) = extra.map(|x| &x.signer).filter(|s| !s.is_empty()) {
            for &s in signers {
                added += insert(&mut self.by_signer, shared, hash_str(get(s)), mi);
            }
        } else if let Some(id) = c.id.filter(|id| !id.glob) {
            added += insert(&mut self.by_id, shared, hash_str(get(id.text)), mi);
        } else if let Some(prefix) = c.id.map(|id| literal_prefix(get(id.text))).filter(|p| !p.is_empty()) {
            added += self.id_globs.insert(shared, prefix, mi);
        } else if let Some(name) = extra.and_then(|x| x.name) {
            if !name.glob {
                added += insert(&mut self.by_name, shared, hash_str(get(name.text)), mi);
            } else if !literal_prefix(get(name.text)).is_empty() {
                added += self.name_globs.insert(shared, literal_prefix(get(name.text)), mi);
            } else {
                self.scan[m.kind.map_or(Kind::ALL.len(), Kind::index)].push(mi);
            }
        } else {
            self.scan[m.kind.map_or(Kind::ALL.len(), Kind::index)].push(mi);
        }
        self.inner_bytes += added;
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// An estimate of the heap this set holds: the capacity of every table times its element
    /// size (hash tables: one control byte per slot besides the entry). Used to bound what a
    /// policy may compile to; it is an estimate of the allocations, not of allocator overhead.
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        fn map<K, V, S>(m: &HashMap<K, V, S>) -> usize {
            m.capacity() * (size_of::<(K, V)>() + 1)
        }
        let shared = self.shared.capacity() * size_of::<Vec<u32>>();
        let extras = self.extras.capacity() * size_of::<Extra>();
        let scan: usize = self.scan.iter().map(|v| v.capacity() * 4).sum();
        self.text.capacity()
            + self.rules.capacity() * size_of::<CompiledRule>()
            + (self.matchers.capacity() + self.excepts.capacity()) * size_of::<CompiledMatcher>()
            + extras
            + map(&self.by_sha256)
            + map(&self.by_signer)
            + map(&self.by_id)
            + map(&self.by_name)
            + map(&self.id_globs.by_prefix)
            + map(&self.name_globs.by_prefix)
            + shared
            + scan
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any matcher needs an artifact hash to match: when none does and no verdict is
    /// lifted by an `except` on sha256, knowing a file's hash cannot change its verdict, so a
    /// caller (the exec gate) need not read the file whole.
    pub fn has_sha256_matchers(&self) -> bool {
        !self.by_sha256.is_empty()
    }

    fn pattern_matches(&self, p: Pattern, value: &str) -> bool {
        let text = self.get(p.text);
        if p.glob {
            glob_match(text, value)
        } else {
            text == value
        }
    }

    fn matcher_matches(&self, m: &CompiledMatcher, app: &App, app_sha: Option<[u8; 32]>, folded: &Folded) -> bool {
        if m.kind.is_some_and(|k| k != app.kind) {
            return false;
        }
        if m.id.is_some_and(|p| !self.pattern_matches(p, &app.id)) {
            return false;
        }
        if m.extra == NO_EXTRA {
            return true;
        }
        let x = &self.extras[m.extra as usize];
        for (pat, val) in [(x.name, &folded.name), (x.publisher, &folded.publisher)] {
            if let Some(p) = pat {
                match val {
                    Some(v) if self.pattern_matches(p, v) => {}
                    _ => return false,
                }
            }
        }
        if !x.signer.is_empty()
            && !app.signers.iter().any(|s| x.signer.iter().any(|m| self.get(*m).eq_ignore_ascii_case(s)))
        {
            return false;
        }
        if !x.sha256.is_empty() && !app_sha.is_some_and(|h| x.sha256.contains(&h)) {
            return false;
        }
        if let Some(c) = &x.version {
            match &app.version {
                Some(v) if c.matches(app.kind, v) => {}
                _ => return false,
            }
        }
        true
    }

    fn strength(&self, m: &CompiledMatcher) -> Strength {
        if m.strong {
            Strength::Strong
        } else {
            Strength::Weak
        }
    }

    /// Calls `f(rule index, strength)` for every rule that applies to `app` (unsorted; a rule
    /// may be reported once per matching matcher).
    fn each_hit(&self, app: &App, mut f: impl FnMut(u32, Strength)) {
        let mut c = Candidates::new();
        let app_sha = app.sha256.as_deref().and_then(parse_sha);
        if let Some(h) = &app_sha {
            if let Some(v) = self.by_sha256.get(h) {
                c.extend(entries(v, &self.shared));
            }
        }
        for s in &app.signers {
            if let Some(v) = self.by_signer.get(&hash_str(&s.to_lowercase())) {
                c.extend(entries(v, &self.shared));
            }
        }
        if let Some(v) = self.by_id.get(&hash_str(&app.id)) {
            c.extend(entries(v, &self.shared));
        }
        self.id_globs.candidates(&self.shared, &app.id, &mut c);
        let folded = if self.uses_names {
            Folded {
                name: app.name.as_deref().map(|n| crate::normalize::fold(n).into_owned()),
                publisher: app.publisher.as_deref().map(|p| crate::normalize::fold(p).into_owned()),
            }
        } else {
            Folded { name: None, publisher: None }
        };
        if let Some(name) = &folded.name {
            if let Some(v) = self.by_name.get(&hash_str(name)) {
                c.extend(entries(v, &self.shared));
            }
            self.name_globs.candidates(&self.shared, name, &mut c);
        }
        c.extend(&self.scan[app.kind.index()]);
        c.extend(&self.scan[Kind::ALL.len()]);
        for mi in c.iter() {
            let m = &self.matchers[mi as usize];
            if !self.matcher_matches(m, app, app_sha, &folded) {
                continue;
            }
            let rule = &self.rules[m.rule as usize];
            let (a, b) = rule.excepts;
            if self.excepts[a as usize..b as usize].iter().any(|e| self.matcher_matches(e, app, app_sha, &folded)) {
                continue;
            }
            f(m.rule, self.strength(m));
        }
    }

    fn verdict_ref(&self, ri: u32, strength: Strength) -> VerdictRef<'_> {
        let r = &self.rules[ri as usize];
        VerdictRef {
            rule: self.get(r.id),
            description: self.get(r.description),
            action: r.action,
            strength,
            except_by_hash: r.except_by_hash,
        }
    }

    /// The rule that decides what happens to `app`, if any: the most severe action, then a
    /// strong match over a weak one, then the earliest rule in the policy.
    pub fn verdict(&self, app: &App) -> Option<VerdictRef<'_>> {
        let mut best: Option<(u32, Strength)> = None;
        self.each_hit(app, |ri, s| {
            let better = match best {
                None => true,
                Some((bi, bs)) => {
                    let (a, b) = (self.rules[ri as usize].action, self.rules[bi as usize].action);
                    (a, s, std::cmp::Reverse(ri)) > (b, bs, std::cmp::Reverse(bi))
                }
            };
            if better {
                best = Some((ri, s));
            }
        });
        best.map(|(ri, s)| self.verdict_ref(ri, s))
    }

    /// Every rule that applies to `app`, in the order `verdict` ranks them.
    pub fn matches(&self, app: &App) -> Vec<Verdict> {
        let mut hits: Vec<(u32, Strength)> = Vec::new();
        self.each_hit(app, |ri, s| match hits.iter_mut().find(|(r, _)| *r == ri) {
            Some((_, best)) => *best = (*best).max(s),
            None => hits.push((ri, s)),
        });
        hits.sort_by(|(ra, sa), (rb, sb)| {
            let (a, b) = (self.rules[*ra as usize].action, self.rules[*rb as usize].action);
            b.cmp(&a).then(sb.cmp(sa)).then(ra.cmp(rb))
        });
        hits.into_iter().map(|(ri, s)| self.verdict_ref(ri, s).to_owned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Matcher;

    fn rule(id: &str, action: Action, matchers: Vec<Matcher>) -> Rule {
        Rule { id: id.into(), description: String::new(), action, matchers, except: vec![], tags: vec![] }
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
            vec![Matcher { kind: Some(Kind::Android), id: Some("com.kaspersky.*".into()), ..Default::default() }],
        );
        kas.except = vec![Matcher { id: Some("com.kaspersky.allowed".into()), ..Default::default() }];
        let rules = vec![
            kas,
            rule(
                "wechat-deb",
                Action::Remove,
                vec![Matcher { kind: Some(Kind::Deb), id: Some("wechat".into()), ..Default::default() }],
            ),
            rule("by-name", Action::Audit, vec![Matcher { name: Some("*WeChat*".into()), ..Default::default() }]),
            rule("team", Action::Quarantine, vec![Matcher { signer: vec!["2Y8XE5CQ94".into()], ..Default::default() }]),
            rule("hash", Action::Quarantine, vec![Matcher { sha256: vec![hash.clone()], ..Default::default() }]),
            rule(
                "hash-and-kind",
                Action::Remove,
                vec![Matcher { kind: Some(Kind::Snap), sha256: vec!["b".repeat(64)], ..Default::default() }],
            ),
            rule(
                "old-only",
                Action::Remove,
                vec![Matcher { id: Some("tool".into()), version: Some("<2.0".into()), ..Default::default() }],
            ),
        ];
        let set = RuleSet::compile(rules, &[]);
        assert_eq!(set.verdict(&app(Kind::Android, "com.kaspersky.kes")).unwrap().rule, "kaspersky-android");
        assert!(set.verdict(&app(Kind::Android, "com.kaspersky.allowed")).is_none(), "except exempts");
        assert!(set.verdict(&app(Kind::Deb, "com.kaspersky.kes")).is_none(), "kind is part of the AND");
        assert!(set.verdict(&app(Kind::Android, "com.kasperskyx")).is_none());
        let v = set.verdict(&app(Kind::Deb, "wechat")).unwrap();
        assert_eq!((v.rule, v.strength), ("wechat-deb", Strength::Weak));
        let mut named = app(Kind::Appimage, "x");
        named.name = Some("My wechat Desktop".into());
        assert_eq!(set.verdict(&named).unwrap().rule, "by-name", "name globs are case-insensitive");
        let mut signed = app(Kind::Macos, "com.kaspersky.kav");
        signed.signers = vec!["2y8xe5cq94".into()];
        let v = set.verdict(&signed).unwrap();
        assert_eq!((v.rule, v.strength), ("team", Strength::Strong));
        let mut hashed = app(Kind::File, "whatever");
        hashed.sha256 = Some(hash);
        assert_eq!(set.verdict(&hashed).unwrap().strength, Strength::Strong);
        let mut wrong_kind = app(Kind::Deb, "x");
        wrong_kind.sha256 = Some("b".repeat(64));
        assert!(set.verdict(&wrong_kind).is_none(), "a hash hit still needs the rest of the AND");
        wrong_kind.kind = Kind::Snap;
        assert_eq!(set.verdict(&wrong_kind).unwrap().rule, "hash-and-kind");
        let mut old = app(Kind::Deb, "tool");
        old.version = Some("1.9".into());
        assert_eq!(set.verdict(&old).unwrap().rule, "old-only");
        old.version = Some("2.0".into());
        assert!(set.verdict(&old).is_none());
        old.version = None;
        assert!(set.verdict(&old).is_none(), "a version constraint needs a version");
    }

    #[test]
    fn most_severe_rule_wins_and_tags_filter() {
        let m = || vec![Matcher { id: Some("x".into()), ..Default::default() }];
        let mut tagged = rule("tagged", Action::Remove, m());
        tagged.tags = vec!["mobile".into()];
        let rules = vec![rule("audit", Action::Audit, m()), tagged, rule("q", Action::Quarantine, m())];
        let set = RuleSet::compile(rules.clone(), &[]);
        assert_eq!(set.verdict(&app(Kind::Deb, "x")).unwrap().rule, "q");
        let set = RuleSet::compile(rules, &["mobile".into()]);
        let all = set.matches(&app(Kind::Deb, "x"));
        assert_eq!(all.iter().map(|v| v.rule.as_str()).collect::<Vec<_>>(), ["tagged", "q", "audit"]);
        assert_eq!(set.verdict(&app(Kind::Deb, "x")).unwrap().rule, "tagged");
    }

    /// What the agent relies on to move a file before hashing it: a verdict reached without a
    /// hash says whether a hash could lift it, and learning the hash never loses that rule.
    #[test]
    fn a_verdict_says_whether_a_hash_could_lift_it() {
        let approved = "b".repeat(64);
        let by_name = || vec![Matcher { name: Some("*wechat*".into()), ..Default::default() }];
        let mut excepted = rule("wechat-except", Action::Quarantine, by_name());
        excepted.except = vec![Matcher { sha256: vec![approved.clone()], ..Default::default() }];
        let plain = rule("wechat", Action::Quarantine, by_name());
        let mut named = app(Kind::Appimage, "x");
        named.name = Some("WeChat".into());

        let set = RuleSet::compile(vec![plain.clone()], &[]);
        let v = set.verdict(&named).unwrap();
        assert!(!v.except_by_hash);
        named.sha256 = Some(approved.clone());
        assert_eq!(set.verdict(&named).unwrap().rule, "wechat", "the hash does not lose the rule");
        named.sha256 = None;

        let set = RuleSet::compile(vec![excepted], &[]);
        assert!(set.verdict(&named).unwrap().except_by_hash);
        named.sha256 = Some(approved);
        assert!(set.verdict(&named).is_none(), "the approved build is lifted once its hash is known");
    }
}
