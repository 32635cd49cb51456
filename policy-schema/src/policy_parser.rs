//! A hand-written, single-pass parser for the policy payload, compiling each rule straight into
//! a [`RuleSet`] as it is read.
//!
//! Why not serde: on a 100,000-rule policy serde's per-token and per-struct work (plus a fresh
//! `Vec` per rule, per matcher and per list) cost about three times the format's hashing floor
//! (docs/signed-channel.md, "Performance"). This parser borrows every string from the verified
//! text, reuses one scratch rule for every rule, and dispatches on field names directly.
//!
//! It is exactly as strict as the serde path ([`Policy::parse_compiled_serde`], kept for the
//! differential test in `tests/policy_parser_differential.rs`): RFC 8259 JSON only (no trailing
//! commas, no comments, no leading zeros, no control characters or lone surrogates in strings),
//! unknown fields, duplicate fields, missing fields, floats or negative numbers where an integer
//! belongs and wrong value types are errors naming the field and the line and column. `null` is
//! accepted exactly where serde accepts it (the optional single-valued matcher fields).
//! It only ever sees bytes whose signatures verified (see `trust`).
//!
//! [`Policy::parse_compiled_serde`]: crate::metadata::Policy::parse_compiled_serde

use std::borrow::Cow;
use std::hash::{Hash as _, Hasher as _};

use crate::limits;
use crate::matcher::RuleSet;
use crate::metadata::{PolicyHeader, Time};
use crate::rules::{Action, Kind, MatcherRef, RuleRef};

/// A parse error: what was wrong and the byte offset where it was found.
pub(crate) struct ParseError {
    pub at: usize,
    pub reason: String,
}

impl ParseError {
    /// The error as serde_json would carry it, with a 1-based line and column.
    pub(crate) fn into_json(self, text: &str) -> serde_json::Error {
        let before = &text.as_bytes()[..self.at.min(text.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = before.len() - before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) + 1;
        <serde_json::Error as serde::de::Error>::custom(format!("{} at line {line} column {column}", self.reason))
    }
}

type Result<T> = std::result::Result<T, ParseError>;

const POLICY_FIELDS: &str = "`fleet`, `version`, `issued`, `expires`, `rules`";
const RULE_FIELDS: &str = "`id`, `description`, `action`, `match`, `except`, `tags`";
const MATCHER_FIELDS: &str = "`kind`, `id`, `name`, `publisher`, `signer`, `sha256`, `version`";
/// Field names in the order they are tried by [`Parser::name`]: the most frequent first.
const POLICY_NAMES: Names<5> = Names::new(["rules", "fleet", "version", "issued", "expires"]);
const RULE_NAMES: Names<6> = Names::new(["id", "action", "match", "description", "except", "tags"]);
const MATCHER_NAMES: Names<7> = Names::new(["sha256", "kind", "id", "name", "publisher", "signer", "version"]);
const ACTION_NAMES: Names<3> = Names::new(["quarantine", "remove", "audit"]);
/// `Kind::ALL` by name, in the same order (a unit test checks it).
const KIND_NAMES: Names<{ Kind::ALL.len() }> = Names::new([
    "deb", "rpm", "flatpak", "snap", "appimage", "desktop", "file", "android", "macos", "ios", "windows", "msix",
]);

/// Names the parser recognises without scanning them as strings (see [`Parser::name`]): each
/// with the first 8 bytes of `name"` (the name and its closing quote) as a little-endian word
/// and a mask of the bytes of that word that count, so that trying a name costs one AND and
/// one compare (plus a short tail compare for names of 8 bytes or more).
struct Names<const N: usize> {
    names: [&'static str; N],
    words: [(u64, u64); N],
}

impl<const N: usize> Names<N> {
    const fn new(names: [&'static str; N]) -> Self {
        let mut words = [(0u64, 0u64); N];
        let mut i = 0;
        while i < N {
            let b = names[i].as_bytes();
            let (mut word, mut mask) = (0u64, 0u64);
            let mut j = 0;
            while j < 8 && j <= b.len() {
                let c = if j < b.len() { b[j] } else { b'"' };
                word |= (c as u64) << (8 * j);
                mask |= 0xff << (8 * j);
                j += 1;
            }
            words[i] = (word, mask);
            i += 1;
        }
        Self { names, words }
    }
}

struct Parser<'a> {
    text: &'a str,
    b: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err<T>(&self, reason: impl Into<String>) -> Result<T> {
        Err(ParseError { at: self.pos, reason: reason.into() })
    }

    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.pos += 1;
        }
    }

    /// The next non-whitespace byte, not consumed.
    fn peek(&mut self) -> Option<u8> {
        // Compact JSON has no whitespace between tokens: one compare decides that case.
        match self.b.get(self.pos) {
            Some(&c) if c > b' ' => Some(c),
            _ => {
                self.ws();
                self.b.get(self.pos).copied()
            }
        }
    }

    fn expect(&mut self, c: u8, what: &str) -> Result<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            self.unexpected(what)
        }
    }

    /// An error describing what was found where `what` was expected.
    fn unexpected<T>(&mut self, what: &str) -> Result<T> {
        let found = match self.peek() {
            None => "the end of the payload".to_owned(),
            Some(b'"') => "a string".to_owned(),
            Some(b'{') => "an object".to_owned(),
            Some(b'[') => "an array".to_owned(),
            Some(b'-' | b'0'..=b'9') => "a number".to_owned(),
            Some(b't' | b'f') => "a boolean".to_owned(),
            Some(b'n') => "null".to_owned(),
            Some(c) => format!("{:?}", c as char),
        };
        self.err(format!("expected {what}, found {found}"))
    }

    /// Whether the next value is `null` (consumed if so).
    fn null(&mut self) -> Result<bool> {
        if self.peek() != Some(b'n') {
            return Ok(false);
        }
        if self.b[self.pos..].starts_with(b"null") {
            self.pos += 4;
            Ok(true)
        } else {
            self.err("invalid literal")
        }
    }

    /// A JSON string, borrowed from the text unless it has escapes.
    fn string(&mut self, what: &str) -> Result<Cow<'a, str>> {
        if self.peek() != Some(b'"') {
            return self.unexpected(what);
        }
        self.pos += 1;
        let start = self.pos;
        // Find the first quote, backslash or control character 16 bytes at a time: the inner
        // loop has no branch, so it compiles to vector compares (strings here are short —
        // ids, hashes, names — so a search routine's per-call setup costs more than it saves).
        let special = |c: u8| (c == b'"') | (c == b'\\') | (c < 0x20);
        let mut end = start;
        let rest = &self.b[start..];
        for chunk in rest.chunks_exact(16) {
            let mut any = false;
            for &c in chunk {
                any |= special(c);
            }
            if any {
                break;
            }
            end += 16;
        }
        let Some(len) = self.b[end..].iter().position(|&c| special(c)) else {
            return self.err("unterminated string");
        };
        let end = end + len;
        if self.b[end] < 0x20 {
            self.pos = end;
            return self.err("control character in a string");
        }
        self.pos = end;
        if self.b[end] == b'\\' {
            return self.escaped_string(start);
        }
        self.pos += 1;
        Ok(Cow::Borrowed(&self.text[start..end]))
    }

    /// A string that is one of `names` (field names, `action` and `kind` values): its index and
    /// its text. The common case — the name written without escapes — is recognised by comparing
    /// the bytes after the opening quote with each name followed by a closing quote (a raw quote
    /// cannot occur inside a JSON string, so that match is exact) without scanning the string;
    /// anything else (escapes, other names) goes through [`Parser::string`] and is then looked
    /// up, so `"i\u0064"` is still `id`, exactly as serde reads it.
    fn name<const N: usize>(&mut self, what: &str, names: &Names<N>) -> Result<(Option<usize>, Cow<'a, str>)> {
        if self.peek() == Some(b'"') {
            let start = self.pos + 1;
            let rest = &self.b[start..];
            // Near the end of the payload (fewer than 8 bytes left) the string reader decides.
            if let Some(first) = rest.first_chunk::<8>() {
                let word = u64::from_le_bytes(*first);
                for (i, (n, &(w, mask))) in names.names.iter().zip(&names.words).enumerate() {
                    let len = n.len();
                    if word & mask == w
                        && (len < 8 || (rest.get(len) == Some(&b'"') && rest[8..len] == n.as_bytes()[8..]))
                    {
                        self.pos = start + len + 1;
                        return Ok((Some(i), Cow::Borrowed(&self.text[start..start + len])));
                    }
                }
            }
        }
        let s = self.string(what)?;
        Ok((names.names.iter().position(|n| *n == s), s))
    }

    /// The rest of a string that has an escape, from `start` (just after the opening quote).
    fn escaped_string(&mut self, start: usize) -> Result<Cow<'a, str>> {
        let mut out = String::from(&self.text[start..self.pos]);
        loop {
            let Some(&c) = self.b.get(self.pos) else {
                return self.err("unterminated string");
            };
            match c {
                b'"' => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                b'\\' => {
                    self.pos += 1;
                    let Some(&e) = self.b.get(self.pos) else {
                        return self.err("unterminated string");
                    };
                    self.pos += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let ch = if (0xd800..0xdc00).contains(&hi) {
                                if !self.b[self.pos..].starts_with(b"\\u") {
                                    return self.err("lone leading surrogate in a \\u escape");
                                }
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return self.err("lone leading surrogate in a \\u escape");
                                }
                                char::from_u32(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00))
                            } else {
                                char::from_u32(hi)
                            };
                            match ch {
                                Some(ch) => out.push(ch),
                                None => return self.err("lone trailing surrogate in a \\u escape"),
                            }
                        }
                        _ => {
                            self.pos -= 1;
                            return self.err("invalid escape");
                        }
                    }
                }
                0..=0x1f => return self.err("control character in a string"),
                _ => {
                    // Copy the run up to the next quote, backslash or control character.
                    let run = self.pos;
                    while self.b.get(self.pos).is_some_and(|&c| c != b'"' && c != b'\\' && c >= 0x20) {
                        self.pos += 1;
                    }
                    out.push_str(&self.text[run..self.pos]);
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32> {
        let Some(digits) = self.b.get(self.pos..self.pos + 4) else {
            return self.err("unterminated \\u escape");
        };
        let mut v = 0u32;
        for &d in digits {
            let x = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return self.err("invalid \\u escape"),
            };
            v = v * 16 + u32::from(x);
        }
        self.pos += 4;
        Ok(v)
    }

    /// A non-negative integer that fits `u64`; fractions, exponents, signs, leading zeros and
    /// overflow are errors (serde_json refuses them for a `u64` field too).
    fn u64(&mut self, what: &str) -> Result<u64> {
        if !matches!(self.peek(), Some(b'-' | b'0'..=b'9')) {
            return self.unexpected(what);
        }
        if self.b[self.pos] == b'-' {
            return self.err(format!("expected {what}, found a negative number"));
        }
        let start = self.pos;
        let mut v: u64 = 0;
        let mut overflow = false;
        while let Some(&d @ b'0'..=b'9') = self.b.get(self.pos) {
            match v.checked_mul(10).and_then(|v| v.checked_add(u64::from(d - b'0'))) {
                Some(n) => v = n,
                None => overflow = true,
            }
            self.pos += 1;
        }
        if self.b[start] == b'0' && self.pos - start > 1 {
            self.pos = start;
            return self.err("invalid number: leading zero");
        }
        if matches!(self.b.get(self.pos), Some(b'.' | b'e' | b'E')) {
            self.pos = start;
            return self.err(format!("expected {what}, found a floating-point number"));
        }
        if overflow {
            self.pos = start;
            return self.err(format!("expected {what}, found a number larger than {}", u64::MAX));
        }
        Ok(v)
    }

    fn time(&mut self, what: &str) -> Result<Time> {
        let at = self.pos;
        let s = self.string(what)?;
        if s.len() > 40 {
            return Err(ParseError { at, reason: format!("{what}: time string too long") });
        }
        Time::parse(&s).map_err(|e| ParseError { at, reason: format!("{what}: {e}") })
    }

    /// Walks an object: calls `field(self, index of the key in names, key, key_offset)` with the
    /// parser positioned at each value, which the callback must consume.
    fn object<const N: usize>(
        &mut self,
        what: &str,
        names: &Names<N>,
        mut field: impl FnMut(&mut Self, Option<usize>, Cow<'a, str>, usize) -> Result<()>,
    ) -> Result<()> {
        self.expect(b'{', what)?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let at = self.pos;
            let (known, key) = self.name("a field name", names)?;
            self.expect(b':', "`:`")?;
            field(self, known, key, at)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.unexpected("`,` or `}`"),
            }
        }
    }

    /// Walks an array: calls `item(self)` at each element, which must consume it.
    fn array(&mut self, what: &str, mut item: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        self.expect(b'[', what)?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.unexpected("`,` or `]`"),
            }
        }
    }

    fn strings(&mut self, what: &str, out: &mut Vec<Cow<'a, str>>) -> Result<()> {
        out.clear();
        self.array(what, |p| {
            let s = p.string("a string")?;
            out.push(s);
            Ok(())
        })
    }

    /// A `sha256` list into `out`, and each hash decoded into `decoded`. A hash written as 64
    /// lowercase hex digits and a closing quote is decoded in place without scanning it as a
    /// generic string (hex digits are never quotes, backslashes or control characters, so the
    /// string is exactly those digits); anything else is read as a string and left to the rule
    /// check, which names it (`decoded` is then shorter than `out`, and the check validates the
    /// whole list: see [`MatcherRef::check`]).
    fn sha256s(&mut self, out: &mut Vec<Cow<'a, str>>, decoded: &mut Vec<[u8; 32]>) -> Result<()> {
        out.clear();
        decoded.clear();
        self.array("`sha256` (a list of strings)", |p| {
            if p.peek() == Some(b'"') {
                let start = p.pos + 1;
                if let Some(digits) = p.b.get(start..start + 65) {
                    if digits[64] == b'"' {
                        if let Some(bytes) = crate::rules::sha256_from_hex_bytes(&digits[..64]) {
                            p.pos = start + 65;
                            out.push(Cow::Borrowed(&p.text[start..start + 64]));
                            decoded.push(bytes);
                            return Ok(());
                        }
                    }
                }
            }
            let s = p.string("a string")?;
            out.push(s);
            Ok(())
        })
    }

    fn kind(&mut self) -> Result<Option<Kind>> {
        if self.null()? {
            return Ok(None);
        }
        let at = self.pos;
        match self.name("`kind` (a string)", &KIND_NAMES)? {
            (Some(i), _) => Ok(Some(Kind::ALL[i])),
            (None, s) => Err(ParseError { at, reason: format!("unknown kind {s:?}") }),
        }
    }

    fn opt_string(&mut self, what: &str) -> Result<Option<Cow<'a, str>>> {
        if self.null()? {
            return Ok(None);
        }
        self.string(what).map(Some)
    }

    /// One matcher into `m` (reset first).
    fn matcher(&mut self, m: &mut MatcherRef<'a>) -> Result<()> {
        m.kind = None;
        m.id = None;
        m.name = None;
        m.publisher = None;
        m.signer.clear();
        m.sha256.clear();
        m.sha256_decoded.clear();
        m.version = None;
        let mut seen = 0u8;
        self.object("a matcher object", &MATCHER_NAMES, |p, known, key, at| {
            let Some(i) = known else {
                return Err(ParseError {
                    at,
                    reason: format!("unknown field `{key}` in a matcher, expected one of {MATCHER_FIELDS}"),
                });
            };
            let bit = 1u8 << i;
            if seen & bit != 0 {
                return Err(ParseError { at, reason: format!("duplicate field `{key}` in a matcher") });
            }
            seen |= bit;
            match i {
                0 => p.sha256s(&mut m.sha256, &mut m.sha256_decoded)?,
                1 => m.kind = p.kind()?,
                2 => m.id = p.opt_string("`id` (a string)")?,
                3 => m.name = p.opt_string("`name` (a string)")?,
                4 => m.publisher = p.opt_string("`publisher` (a string)")?,
                5 => p.strings("`signer` (a list of strings)", &mut m.signer)?,
                _ => m.version = p.opt_string("`version` (a string)")?,
            }
            Ok(())
        })
    }

    /// A list of matchers into `out`, reusing the matchers already there.
    fn matchers(&mut self, what: &str, out: &mut Vec<MatcherRef<'a>>) -> Result<()> {
        let mut n = 0;
        self.array(what, |p| {
            if n == out.len() {
                out.push(MatcherRef::default());
            }
            p.matcher(&mut out[n])?;
            n += 1;
            Ok(())
        })?;
        out.truncate(n);
        Ok(())
    }

    /// One rule into `r` (every field reset first).
    fn rule(&mut self, r: &mut RuleRef<'a>) -> Result<()> {
        let start = self.pos;
        let mut seen = 0u8;
        let mut action = None;
        r.description = Cow::Borrowed("");
        r.except.clear();
        r.tags.clear();
        self.object("a rule object", &RULE_NAMES, |p, known, key, at| {
            let Some(i) = known else {
                return Err(ParseError {
                    at,
                    reason: format!("unknown field `{key}` in a rule, expected one of {RULE_FIELDS}"),
                });
            };
            let bit = 1u8 << i;
            if seen & bit != 0 {
                return Err(ParseError { at, reason: format!("duplicate field `{key}` in a rule") });
            }
            seen |= bit;
            match i {
                0 => r.id = p.string("`id` (a string)")?,
                1 => {
                    p.ws();
                    let at = p.pos;
                    action = Some(match p.name("`action` (a string)", &ACTION_NAMES)? {
                        (Some(0), _) => Action::Quarantine,
                        (Some(1), _) => Action::Remove,
                        (Some(_), _) => Action::Audit,
                        (None, other) => {
                            return Err(ParseError {
                                at,
                                reason: format!(
                                    "unknown action {other:?}, expected one of `audit`, `quarantine`, `remove`"
                                ),
                            })
                        }
                    })
                }
                2 => p.matchers("`match` (a list of matchers)", &mut r.matchers)?,
                3 => r.description = p.string("`description` (a string)")?,
                4 => p.matchers("`except` (a list of matchers)", &mut r.except)?,
                _ => p.strings("`tags` (a list of strings)", &mut r.tags)?,
            }
            Ok(())
        })?;
        for (bit, name) in [(1, "id"), (2, "action"), (4, "match")] {
            if seen & bit == 0 {
                return Err(ParseError { at: start, reason: format!("missing field `{name}` in a rule") });
            }
        }
        r.action = action.unwrap_or(Action::Audit);
        Ok(())
    }
}

/// How rule-id uniqueness is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdCheck {
    /// Each id against a hash set as its rule is read, so a duplicate is reported exactly where
    /// the serde path reports it, before any later error.
    InOrder,
    /// The ids' hashes are collected and sorted once after the last rule: no hash-set probe per
    /// rule into a table of megabytes of cold memory (docs/signed-channel.md, "Performance pass
    /// 5"). Any error at all, a duplicate included, makes [`parse_policy`] parse again
    /// `InOrder`, so what is reported is exactly what the in-order check reports.
    Deferred,
}

/// Parses a policy payload (already UTF-8-checked) and compiles its rules into `set`, checking
/// each rule, rule-id uniqueness (by 64-bit hash, as the serde path), the rule count and the
/// compiled-size `budget` exactly where the serde path does.
///
/// A valid policy is read once, with the id check deferred; a policy with any error is read a
/// second time with the in-order check, for the error the serde path reports (errors are rare
/// and their cost is bounded: at most twice a valid policy's).
///
/// On the calling thread: a second thread indexing what this one parses measured slower than
/// one thread in some runs on an otherwise idle 2-core machine (docs/signed-channel.md,
/// "Performance pass 4"), so it was removed.
pub(crate) fn parse_policy(text: &str, set: &mut RuleSet, budget: usize) -> Result<PolicyHeader> {
    match parse_with(text, set, budget, IdCheck::Deferred) {
        Ok(header) => Ok(header),
        Err(_) => {
            *set = set.emptied();
            parse_with(text, set, budget, IdCheck::InOrder)
        }
    }
}

fn parse_with(text: &str, set: &mut RuleSet, budget: usize, ids: IdCheck) -> Result<PolicyHeader> {
    let mut p = Parser { text, b: text.as_bytes(), pos: 0 };
    let (mut fleet, mut version, mut issued, mut expires, mut rule_count) = (None, None, None, None, None);
    p.object("a policy object", &POLICY_NAMES, |p, _, key, at| {
        let dup = |set: bool| -> Result<()> {
            if set {
                return Err(ParseError { at, reason: format!("duplicate field `{key}`") });
            }
            Ok(())
        };
        match &*key {
            "fleet" => {
                dup(fleet.is_some())?;
                fleet = Some(p.string("`fleet` (a string)")?.into_owned());
            }
            "version" => {
                dup(version.is_some())?;
                version = Some(p.u64("`version` (an unsigned integer)")?);
            }
            "issued" => {
                dup(issued.is_some())?;
                issued = Some(p.time("`issued` (an RFC 3339 time)")?);
            }
            "expires" => {
                dup(expires.is_some())?;
                expires = Some(p.time("`expires` (an RFC 3339 time)")?);
            }
            "rules" => {
                dup(rule_count.is_some())?;
                rule_count = Some(rules(p, set, budget, ids)?);
            }
            other => {
                return Err(ParseError {
                    at,
                    reason: format!("unknown field `{other}`, expected one of {POLICY_FIELDS}"),
                })
            }
        }
        Ok(())
    })?;
    if p.peek().is_some() {
        return p.err("trailing characters after the policy object");
    }
    let missing = |name: &str| ParseError { at: p.pos, reason: format!("missing field `{name}`") };
    Ok(PolicyHeader {
        fleet: fleet.ok_or_else(|| missing("fleet"))?,
        version: version.ok_or_else(|| missing("version"))?,
        issued: issued.ok_or_else(|| missing("issued"))?,
        expires: expires.ok_or_else(|| missing("expires"))?,
        rule_count: rule_count.ok_or_else(|| missing("rules"))?,
    })
}

fn check_budget(set: &RuleSet, budget: usize, at: usize) -> Result<()> {
    let used = set.approx_bytes();
    if used > budget {
        return Err(ParseError {
            at,
            reason: format!(
                "the compiled rules would take more than {budget} bytes ({used} so far): over the bound of {}× the \
                 payload plus {} bytes, at most {} bytes",
                limits::COMPILED_PER_PAYLOAD_BYTE,
                limits::COMPILED_BASE_BYTES,
                limits::COMPILED_MAX_BYTES
            ),
        });
    }
    Ok(())
}

fn empty_rule<'a>() -> RuleRef<'a> {
    RuleRef {
        id: Cow::Borrowed(""),
        description: Cow::Borrowed(""),
        action: Action::Audit,
        matchers: Vec::new(),
        except: Vec::new(),
        tags: Vec::new(),
    }
}

/// What is checked of each rule as it is parsed, in the order the serde path checks it: the
/// rule count, then the rule itself (its id's uniqueness is checked by the [`Indexer`]).
struct Checks {
    count: usize,
}

impl Checks {
    fn check(&mut self, r: &RuleRef<'_>, at: usize) -> Result<()> {
        self.count += 1;
        if self.count > limits::MAX_RULES {
            return Err(ParseError { at, reason: format!("more than {} rules", limits::MAX_RULES) });
        }
        r.check().map_err(|reason| ParseError { at, reason })
    }
}

/// Indexes checked rules in order: checks each rule id's uniqueness (by 64-bit hash, as the
/// serde path; see [`IdCheck`]), adds the rule, and checks the compiled-size budget every 256
/// rules (and at the end, by the caller), as the serde path does: one rule adds at most
/// MAX_MATCHERS × MAX_LIST index entries, so the overshoot between checks is bounded.
struct Indexer<'s> {
    set: &'s mut RuleSet,
    budget: usize,
    ids: Ids,
    count: usize,
}

enum Ids {
    InOrder(rustc_hash::FxHashSet<u64>),
    Deferred(Vec<u64>),
}

impl<'s> Indexer<'s> {
    /// Reserves the set's tables (and the ids' room) from counts in the verified text
    /// (`metadata::table_sizes`): no doubling copies or rehashes while indexing.
    fn new(set: &'s mut RuleSet, budget: usize, text: &[u8], rule_count: usize, check: IdCheck) -> Self {
        set.reserve(rule_count, crate::metadata::sha256_count_hint(text));
        let ids = match check {
            IdCheck::InOrder => {
                Ids::InOrder(rustc_hash::FxHashSet::with_capacity_and_hasher(rule_count, Default::default()))
            }
            IdCheck::Deferred => Ids::Deferred(Vec::with_capacity(rule_count)),
        };
        Self { set, budget, ids, count: 0 }
    }

    fn add(&mut self, r: &RuleRef<'_>, at: usize) -> Result<()> {
        let mut h = rustc_hash::FxHasher::default();
        r.id.hash(&mut h);
        match &mut self.ids {
            Ids::InOrder(seen) => {
                if !seen.insert(h.finish()) {
                    return Err(ParseError { at, reason: format!("rule id {:?} is used twice", r.id) });
                }
            }
            Ids::Deferred(all) => all.push(h.finish()),
        }
        self.set.add(r);
        self.count += 1;
        if self.count % 256 == 0 {
            check_budget(self.set, self.budget, at)?;
        }
        Ok(())
    }

    /// The deferred id check, after the last rule: an error (which makes the caller parse again
    /// in order, to find which id and where) if any two ids hash alike.
    fn check_ids(self, at: usize) -> Result<()> {
        if let Ids::Deferred(all) = self.ids {
            let (sorted, _, _) = crate::matcher::bucket_sort(all, |h| *h);
            if sorted.windows(2).any(|w| w[0] == w[1]) {
                return Err(ParseError { at, reason: "a rule id is used twice".into() });
            }
        }
        Ok(())
    }
}

fn rules<'a>(p: &mut Parser<'a>, set: &mut RuleSet, budget: usize, ids: IdCheck) -> Result<usize> {
    // Table sizes from counts in the verified text (`metadata::table_sizes`): no doubling
    // copies or rehashes while indexing.
    let rule_count = crate::metadata::rule_count_hint(p.b);
    let mut checks = Checks { count: 0 };
    let mut indexer = Indexer::new(&mut *set, budget, p.b, rule_count, ids);
    let mut r = empty_rule();
    p.array("`rules` (a list of rules)", |p| {
        let at = p.pos;
        p.rule(&mut r)?;
        checks.check(&r, at)?;
        indexer.add(&r, at)
    })?;
    indexer.check_ids(p.pos)?;
    check_budget(set, budget, p.pos)?;
    Ok(checks.count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_the_kinds_in_order() {
        assert_eq!(KIND_NAMES.names, Kind::ALL.map(Kind::as_str));
    }
}
