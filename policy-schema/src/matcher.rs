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
//!
//! The indexes are sorted arrays, not hash tables ([`SortedIndex`]): adding a rule appends to
//! them, and [`RuleSet::finish`] sorts each once, by a counting pass over the keys' top bits.
//! Inserting into hash tables of a few megabytes while a large policy is read cost a cache miss
//! per insert on memory a policy update finds cold, more than all of the parsing (measured in
//! docs/signed-channel.md, "Performance pass 5").

use std::hash::{Hash, Hasher};

use rustc_hash::FxHasher;
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

fn hash_str(s: &str) -> u64 {
    let mut h = FxHasher::default();
    s.hash(&mut h);
    h.finish()
}

/// A key of a [`SortedIndex`]: ordered, and with a 64-bit value whose top bits pick its bucket.
/// 64-bit string hashes and SHA-256 digests are spread evenly over those bits, so buckets hold
/// one or two entries; keys that are not (a signed but odd policy) only make buckets larger,
/// and a lookup binary-searches its bucket, so it stays logarithmic whatever the keys.
trait IndexKey: Copy + Ord + Default + std::fmt::Debug {
    fn top(&self) -> u64;
}

impl IndexKey for u64 {
    fn top(&self) -> u64 {
        *self
    }
}

impl IndexKey for [u8; 32] {
    fn top(&self) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self[..8]);
        u64::from_be_bytes(first)
    }
}

/// `items` sorted, and a directory of where each bucket starts: bucket `b` (the items whose
/// `top` has `b` as its top bits, `top >> shift`) is `sorted[dir[b]..dir[b + 1]]`. One counting
/// pass over the top bits, a scatter into the buckets, and a sort of each bucket — one or two
/// items for evenly spread `top` values — so the work is linear and the writes sequential or
/// scattered once, instead of a hash-table probe per item.
pub(crate) fn bucket_sort<T: Copy + Ord + Default>(items: Vec<T>, top: impl Fn(&T) -> u64) -> (Vec<T>, Vec<u32>, u32) {
    let n = items.len();
    // About two items per bucket: the directory costs 2 bytes per item.
    let bits = (usize::BITS - (n / 2).max(2).leading_zeros() - 1).clamp(1, 30);
    let shift = 64 - bits;
    let buckets = 1usize << bits;
    let bucket = |t: &T| (top(t) >> shift) as usize;
    // Counts, then each bucket's start (`dir[buckets]` ends as `n`).
    let mut dir = vec![0u32; buckets + 1];
    for t in &items {
        dir[bucket(t)] += 1;
    }
    let mut sum = 0;
    for d in &mut dir {
        let count = *d;
        *d = sum;
        sum += count;
    }
    // Scatter: each bucket's slot moves from its start to its end...
    let mut sorted = vec![T::default(); n];
    for t in &items {
        let b = bucket(t);
        sorted[dir[b] as usize] = *t;
        dir[b] += 1;
    }
    drop(items);
    // ...so each slot now holds the next bucket's start: shift them back by one.
    for b in (1..=buckets).rev() {
        dir[b] = dir[b - 1];
    }
    dir[0] = 0;
    for b in 0..buckets {
        let range = &mut sorted[dir[b] as usize..dir[b + 1] as usize];
        if range.len() > 1 {
            range.sort_unstable();
        }
    }
    (sorted, dir, shift)
}

/// Matcher indices by key, as a sorted array with a directory of bucket starts.
///
/// Adding is an append to `staged` (in document order, so a large policy writes its index
/// sequentially); [`SortedIndex::build`] moves everything into `entries` by [`bucket_sort`]. A
/// lookup reads two directory slots and binary-searches one bucket. Several matchers under one
/// key are adjacent entries.
#[derive(Debug)]
struct SortedIndex<K> {
    /// Added since the last build, in the order added.
    staged: Vec<(K, u32)>,
    /// Every entry built, sorted by key (then matcher).
    entries: Vec<(K, u32)>,
    /// Bucket `b` is `entries[dir[b]..dir[b + 1]]`; empty when nothing was built.
    dir: Vec<u32>,
    /// A key's bucket is `top() >> shift`.
    shift: u32,
}

impl<K> Default for SortedIndex<K> {
    fn default() -> Self {
        Self { staged: Vec::new(), entries: Vec::new(), dir: Vec::new(), shift: 63 }
    }
}

impl<K: IndexKey> SortedIndex<K> {
    fn push(&mut self, key: K, m: u32) {
        self.staged.push((key, m));
    }

    fn is_empty(&self) -> bool {
        self.staged.is_empty() && self.entries.is_empty()
    }

    /// Sorts everything added into `entries` (entries of an earlier build included).
    fn build(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let mut all = std::mem::take(&mut self.staged);
        all.append(&mut self.entries);
        let (entries, dir, shift) = bucket_sort(all, |e| e.0.top());
        *self = Self { staged: Vec::new(), entries, dir, shift };
    }

    /// The matchers under `key` (built entries only).
    fn get(&self, key: &K) -> impl Iterator<Item = u32> + '_ {
        let key = *key;
        let b = (key.top() >> self.shift) as usize;
        let bucket: &[(K, u32)] = match (self.dir.get(b), self.dir.get(b + 1)) {
            (Some(&start), Some(&end)) => &self.entries[start as usize..end as usize],
            _ => &[],
        };
        // Entries are in key order, which is also `top` order: compare the 64-bit `top` first
        // (one load, no byte-wise compare), the whole key only where it is equal. Buckets hold
        // one or two entries when keys are even: a scan; a long one is binary-searched.
        let top = key.top();
        let first = if bucket.len() <= 8 {
            bucket.iter().position(|e| e.0.top() >= top).unwrap_or(bucket.len())
        } else {
            bucket.partition_point(|e| e.0.top() < top)
        };
        bucket[first..].iter().take_while(move |e| e.0.top() == top).filter(move |e| e.0 == key).map(|e| e.1)
    }

    /// Heap held, in bytes.
    fn bytes(&self) -> usize {
        (self.staged.capacity() + self.entries.capacity()) * std::mem::size_of::<(K, u32)>() + self.dir.capacity() * 4
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
    by_prefix: SortedIndex<u64>,
    /// Distinct key lengths present, so a lookup tries only those.
    lengths: Vec<usize>,
}

impl PrefixIndex {
    fn insert(&mut self, prefix: &str, m: u32) {
        let key = truncate_chars(prefix, PREFIX_KEY_MAX);
        if !self.lengths.contains(&key.len()) {
            self.lengths.push(key.len());
            self.lengths.sort_unstable();
        }
        self.by_prefix.push(hash_str(key), m);
    }

    fn candidates(&self, value: &str, out: &mut Candidates) {
        for &len in &self.lengths {
            if let Some(key) = value.get(..len) {
                out.extend(self.by_prefix.get(&hash_str(key)));
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

    fn extend(&mut self, items: impl IntoIterator<Item = u32>) {
        for m in items {
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
    by_sha256: SortedIndex<[u8; 32]>,
    by_signer: SortedIndex<u64>,
    by_id: SortedIndex<u64>,
    id_globs: PrefixIndex,
    by_name: SortedIndex<u64>,
    name_globs: PrefixIndex,
    /// Matchers with no indexable condition, per kind; the last slot is for "any kind".
    scan: Vec<Vec<u32>>,
    device_tags: Vec<String>,
    /// Whether any matcher looks at name or publisher (so matching can skip case folding).
    uses_names: bool,
    /// Heap held inside `extras` (their element vectors), kept as rules are added
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
            by_sha256: SortedIndex::default(),
            by_signer: SortedIndex::default(),
            by_id: SortedIndex::default(),
            id_globs: PrefixIndex::default(),
            by_name: SortedIndex::default(),
            name_globs: PrefixIndex::default(),
            scan: vec![Vec::new(); Kind::ALL.len() + 1],
            device_tags: device_tags.to_vec(),
            uses_names: false,
            inner_bytes: 0,
        }
    }

    /// An empty set for the same device.
    pub(crate) fn emptied(&self) -> Self {
        Self::new(&self.device_tags)
    }

    /// Compiles already-validated rules.
    pub fn compile(rules: Vec<Rule>, device_tags: &[String]) -> Self {
        let mut set = Self::new(device_tags);
        for r in &rules {
            set.add(&r.view());
        }
        set.finish();
        set
    }

    /// Reserves room for about `rules` rules with one matcher each, `sha256` of them indexed
    /// by hash: a policy's counts are known before its rules are compiled (see
    /// `Policy::parse_compiled`), and growing by doubling costs a copy per doubling and leaves
    /// up to half of each vector unused.
    /// The id index gets room for the other rules (`rules - sha256`): most large policies
    /// are hashes and package ids, and at worst (no ids at all) that is 16 bytes a rule unused
    /// until [`RuleSet::finish`].
    pub(crate) fn reserve(&mut self, rules: usize, sha256: usize) {
        self.rules.reserve(rules);
        self.matchers.reserve(rules);
        self.by_sha256.staged.reserve(sha256);
        self.by_id.staged.reserve(rules.saturating_sub(sha256));
    }

    /// How many rules room was reserved for.
    pub(crate) fn capacity_hint(&self) -> usize {
        self.rules.capacity() - self.rules.len()
    }

    /// Builds the indexes once all rules are added, and releases spare capacity. A set is only
    /// matched against after this (every constructor calls it); rules added later are not found
    /// until it is called again.
    pub(crate) fn finish(&mut self) {
        self.by_sha256.build();
        self.by_signer.build();
        self.by_id.build();
        self.by_name.build();
        self.id_globs.by_prefix.build();
        self.name_globs.by_prefix.build();
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

    /// Adds one validated rule (ignored when its tags exclude this device). Crate-only: a set is
    /// matched only after [`RuleSet::finish`], which [`RuleSet::compile`] and the policy parsers
    /// call, so no set outside this crate can be matched half-built.
    pub(crate) fn add(&mut self, rule: &RuleRef<'_>) {
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
        let extra = (c.extra != NO_EXTRA).then(|| &self.extras[c.extra as usize]);
        let text = &self.text;
        let get = |s: Str| &text[s.start as usize..(s.start + s.len) as usize];
        if !m.sha256.is_empty() {
            for i in 0..m.sha256.len() {
                if let Some(key) = m.sha256_at(i) {
                    self.by_sha256.push(key, mi);
                }
            }
        } else if let Some(signers) = extra.map(|x| &x.signer).filter(|s| !s.is_empty()) {
            for &s in signers {
                self.by_signer.push(hash_str(get(s)), mi);
            }
        } else if let Some(id) = c.id.filter(|id| !id.glob) {
            self.by_id.push(hash_str(get(id.text)), mi);
        } else if let Some(prefix) = c.id.map(|id| literal_prefix(get(id.text))).filter(|p| !p.is_empty()) {
            self.id_globs.insert(prefix, mi);
        } else if let Some(name) = extra.and_then(|x| x.name) {
            if !name.glob {
                self.by_name.push(hash_str(get(name.text)), mi);
            } else if !literal_prefix(get(name.text)).is_empty() {
                self.name_globs.insert(literal_prefix(get(name.text)), mi);
            } else {
                self.scan[m.kind.map_or(Kind::ALL.len(), Kind::index)].push(mi);
            }
        } else {
            self.scan[m.kind.map_or(Kind::ALL.len(), Kind::index)].push(mi);
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// An estimate of the heap this set holds: the capacity of every table times its element
    /// size, plus the vectors inside `extras`. Used to bound what a
    /// policy may compile to; it is an estimate of the allocations, not of allocator overhead.
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        let extras = self.extras.capacity() * size_of::<Extra>();
        let scan: usize = self.scan.iter().map(|v| v.capacity() * 4).sum();
        self.text.capacity()
            + self.rules.capacity() * size_of::<CompiledRule>()
            + (self.matchers.capacity() + self.excepts.capacity()) * size_of::<CompiledMatcher>()
            + extras
            + self.by_sha256.bytes()
            + self.by_signer.bytes()
            + self.by_id.bytes()
            + self.by_name.bytes()
            + self.id_globs.by_prefix.bytes()
            + self.name_globs.by_prefix.bytes()
            + scan
            + self.inner_bytes
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
            c.extend(self.by_sha256.get(h));
        }
        for s in &app.signers {
            c.extend(self.by_signer.get(&hash_str(&s.to_lowercase())));
        }
        c.extend(self.by_id.get(&hash_str(&app.id)));
        self.id_globs.candidates(&app.id, &mut c);
        let folded = if self.uses_names {
            Folded {
                name: app.name.as_deref().map(|n| crate::normalize::fold(n).into_owned()),
                publisher: app.publisher.as_deref().map(|p| crate::normalize::fold(p).into_owned()),
            }
        } else {
            Folded { name: None, publisher: None }
        };
        if let Some(name) = &folded.name {
            c.extend(self.by_name.get(&hash_str(name)));
            self.name_globs.candidates(name, &mut c);
        }
        c.extend(self.scan[app.kind.index()].iter().copied());
        c.extend(self.scan[Kind::ALL.len()].iter().copied());
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

    /// A small deterministic generator (xorshift), so that failures reproduce.
    struct Draw(u64);

    impl Draw {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// The sorted index finds exactly the matchers added under each key, and nothing under
    /// keys never added: keys from a small range (many duplicates), spread over all 64 bits,
    /// or all with the same top bits (one bucket, as a signed but odd policy could make), over
    /// two builds (the second merges what the first built).
    #[test]
    fn sorted_index_finds_exactly_what_was_added() {
        let mut draw = Draw(0x9e37_79b9_7f4a_7c15);
        for n in [0usize, 1, 2, 3, 5, 64, 1000, 4097] {
            for shape in 0..3 {
                let key = |r: u64| match shape {
                    0 => r % 7,
                    1 => r,
                    _ => r & 0xffff,
                };
                let mut index = SortedIndex::<u64>::default();
                let mut added: Vec<(u64, u32)> = Vec::new();
                for round in 0..2u32 {
                    for m in 0..n as u32 {
                        let k = key(draw.next());
                        index.push(k, round * 10_000 + m);
                        added.push((k, round * 10_000 + m));
                    }
                    index.build();
                    let absent = (0..50).map(|_| key(draw.next())).filter(|k| !added.iter().any(|e| e.0 == *k));
                    let probes: Vec<u64> = added.iter().map(|e| e.0).chain(absent).collect();
                    for k in probes {
                        let mut got: Vec<u32> = index.get(&k).collect();
                        got.sort_unstable();
                        let mut want: Vec<u32> = added.iter().filter(|e| e.0 == k).map(|e| e.1).collect();
                        want.sort_unstable();
                        assert_eq!(got, want, "n {n}, shape {shape}, round {round}, key {k:#x}");
                    }
                }
            }
        }
        // Digests as keys, one of them under two matchers.
        let mut index = SortedIndex::<[u8; 32]>::default();
        let digests: Vec<[u8; 32]> =
            (0..500u64).map(|i| parse_sha(&crate::trust::sha256_hex(&i.to_le_bytes())).unwrap()).collect();
        for (m, d) in digests.iter().enumerate() {
            index.push(*d, m as u32);
        }
        index.push(digests[7], 999);
        index.build();
        for (m, d) in digests.iter().enumerate() {
            let got: Vec<u32> = index.get(d).collect();
            let want = if m == 7 { vec![7, 999] } else { vec![m as u32] };
            assert_eq!(got, want);
        }
        assert_eq!(index.get(&[0u8; 32]).count(), 0);
    }

    /// A set of a few thousand rules of every indexed shape gives each app exactly the rules
    /// that match it when each rule is compiled on its own: the index loses no candidate at
    /// scale (where its buckets are many) that it finds in a set of one rule.
    #[test]
    fn a_large_set_matches_as_its_rules_do_one_by_one() {
        let mut draw = Draw(0x2545_f491_4f6c_dd1d);
        let hash = |i: u64| crate::trust::sha256_hex(&i.to_le_bytes());
        let rules: Vec<Rule> = (0..1500u64)
            .map(|i| {
                let r = draw.next() % 40;
                let kind = Kind::ALL[(draw.next() % 4) as usize];
                let m = match i % 8 {
                    0 | 1 => Matcher { sha256: vec![hash(r)], ..Default::default() },
                    2 => Matcher { signer: vec![format!("SIGNER{r}")], ..Default::default() },
                    3 => Matcher { kind: Some(kind), id: Some(format!("org.app{r}")), ..Default::default() },
                    4 => Matcher { id: Some(format!("com.v{}.*", r % 9)), ..Default::default() },
                    5 => Matcher { name: Some(format!("Banned App {r}")), ..Default::default() },
                    6 => Matcher { name: Some(format!("banned*{}", r % 5)), ..Default::default() },
                    _ => Matcher { kind: Some(kind), version: Some(format!("<{}.0", r % 5)), ..Default::default() },
                };
                rule(&format!("r{i}"), Action::Quarantine, vec![m])
            })
            .collect();
        let set = RuleSet::compile(rules.clone(), &[]);
        let alone: Vec<RuleSet> = rules.iter().map(|r| RuleSet::compile(vec![r.clone()], &[])).collect();
        let mut hits = 0;
        for _ in 0..300 {
            let r = draw.next() % 40;
            let mut a = app(Kind::ALL[(draw.next() % 4) as usize], &format!("org.app{r}"));
            if draw.next() % 3 == 0 {
                a.id = format!("com.v{}.thing", r % 9);
            }
            a.name = Some(format!("banned app {}", draw.next() % 40));
            a.version = Some(format!("{}.1", draw.next() % 6));
            a.signers = vec![format!("signer{}", draw.next() % 40)];
            a.sha256 = Some(hash(draw.next() % 40));
            let got: Vec<String> = set.matches(&a).into_iter().map(|v| v.rule).collect();
            let mut got_sorted = got.clone();
            got_sorted.sort();
            let mut want: Vec<String> = alone.iter().filter_map(|s| s.verdict(&a)).map(|v| v.rule.to_owned()).collect();
            want.sort();
            assert_eq!(got_sorted, want, "app {a:?}");
            hits += got.len();
        }
        assert!(hits > 300, "the apps should hit many rules ({hits})");
    }
}
