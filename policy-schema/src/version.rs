//! Version ordering per ecosystem and version constraints (`<8.0.40`, `>=1.0, <2.0`).
//!
//! dpkg's ordering (deb-version(7)) is the default; rpm apps use rpmvercmp, which differs in how
//! it treats separators, letters against digits, and `^`. Both handle `~` as "sorts before
//! everything, even the end of the string".

use std::cmp::Ordering;

use crate::app::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

/// A conjunction of comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    parts: Vec<(Op, String)>,
}

impl Constraint {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        for piece in text.split(',') {
            let p = piece.trim();
            let (op, rest) = if let Some(r) = p.strip_prefix("<=") {
                (Op::Le, r)
            } else if let Some(r) = p.strip_prefix(">=") {
                (Op::Ge, r)
            } else if let Some(r) = p.strip_prefix("!=") {
                (Op::Ne, r)
            } else if let Some(r) = p.strip_prefix("==") {
                (Op::Eq, r)
            } else if let Some(r) = p.strip_prefix('<') {
                (Op::Lt, r)
            } else if let Some(r) = p.strip_prefix('>') {
                (Op::Gt, r)
            } else if let Some(r) = p.strip_prefix('=') {
                (Op::Eq, r)
            } else {
                return Err(format!("version constraint {piece:?} must start with <, <=, >, >=, = or !="));
            };
            let v = rest.trim();
            if v.is_empty() || v.chars().any(char::is_whitespace) {
                return Err(format!("version constraint {piece:?} has no single version after the operator"));
            }
            parts.push((op, v.to_owned()));
        }
        if parts.len() > 8 {
            return Err("a version constraint has more than 8 parts".into());
        }
        Ok(Self { parts })
    }

    /// A constraint nothing satisfies (`<0, >=0`).
    pub fn never() -> Self {
        Self { parts: vec![(Op::Lt, "0".into()), (Op::Ge, "0".into())] }
    }

    /// Whether `version`, ordered as `kind` orders versions, satisfies every part.
    pub fn matches(&self, kind: Kind, version: &str) -> bool {
        self.parts.iter().all(|(op, want)| {
            let ord = compare(kind, version, want);
            match op {
                Op::Lt => ord == Ordering::Less,
                Op::Le => ord != Ordering::Greater,
                Op::Gt => ord == Ordering::Greater,
                Op::Ge => ord != Ordering::Less,
                Op::Eq => ord == Ordering::Equal,
                Op::Ne => ord != Ordering::Equal,
            }
        })
    }
}

/// Compares two versions the way `kind`'s package manager does.
pub fn compare(kind: Kind, a: &str, b: &str) -> Ordering {
    match kind {
        Kind::Rpm => rpm_evr_cmp(a, b),
        _ => dpkg_cmp(a, b),
    }
}

fn split_epoch(v: &str) -> (u64, &str) {
    match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), rest)
        }
        _ => (0, v),
    }
}

/// dpkg's `verrevcmp` over `[epoch:]upstream[-revision]`.
pub fn dpkg_cmp(a: &str, b: &str) -> Ordering {
    let (ea, ra) = split_epoch(a);
    let (eb, rb) = split_epoch(b);
    ea.cmp(&eb).then_with(|| {
        let (ua, va) = ra.rsplit_once('-').unwrap_or((ra, ""));
        let (ub, vb) = rb.rsplit_once('-').unwrap_or((rb, ""));
        dpkg_verrevcmp(ua, ub).then_with(|| dpkg_verrevcmp(va, vb))
    })
}

fn dpkg_order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn dpkg_verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let mut first_diff = 0;
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = dpkg_order(a.get(i).copied().filter(|c| !c.is_ascii_digit()));
            let bc = dpkg_order(b.get(j).copied().filter(|c| !c.is_ascii_digit()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            if i < a.len() && !a[i].is_ascii_digit() {
                i += 1;
            }
            if j < b.len() && !b[j].is_ascii_digit() {
                j += 1;
            }
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == 0 {
                first_diff = a[i] as i32 - b[j] as i32;
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != 0 {
            return first_diff.cmp(&0);
        }
    }
    Ordering::Equal
}

/// rpm's ordering over `[epoch:]version[-release]`: epochs, then rpmvercmp of version, then of release.
pub fn rpm_evr_cmp(a: &str, b: &str) -> Ordering {
    let (ea, ra) = split_epoch(a);
    let (eb, rb) = split_epoch(b);
    ea.cmp(&eb).then_with(|| {
        let (va, rela) = ra.rsplit_once('-').unwrap_or((ra, ""));
        let (vb, relb) = rb.rsplit_once('-').unwrap_or((rb, ""));
        rpmvercmp(va, vb).then_with(|| {
            if rela.is_empty() || relb.is_empty() {
                Ordering::Equal
            } else {
                rpmvercmp(rela, relb)
            }
        })
    })
}

/// rpm's `rpmvercmp` (lib/rpmvercmp.c), including `~` and `^`.
pub fn rpmvercmp(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let sep = |c: u8| !c.is_ascii_alphanumeric() && c != b'~' && c != b'^';
    loop {
        while i < a.len() && sep(a[i]) {
            i += 1;
        }
        while j < b.len() && sep(b[j]) {
            j += 1;
        }
        // Tilde sorts before everything.
        let (ta, tb) = (a.get(i) == Some(&b'~'), b.get(j) == Some(&b'~'));
        if ta || tb {
            if !ta {
                return Ordering::Greater;
            }
            if !tb {
                return Ordering::Less;
            }
            i += 1;
            j += 1;
            continue;
        }
        // Caret sorts after the end of the string but before anything else.
        let (ca, cb) = (a.get(i) == Some(&b'^'), b.get(j) == Some(&b'^'));
        if ca || cb {
            if i >= a.len() {
                return Ordering::Less;
            }
            if j >= b.len() {
                return Ordering::Greater;
            }
            if !ca {
                return Ordering::Greater;
            }
            if !cb {
                return Ordering::Less;
            }
            i += 1;
            j += 1;
            continue;
        }
        if i >= a.len() || j >= b.len() {
            break;
        }
        let numeric = a[i].is_ascii_digit();
        let take = |s: &[u8], mut k: usize| {
            let start = k;
            while k < s.len() && (if numeric { s[k].is_ascii_digit() } else { s[k].is_ascii_alphabetic() }) {
                k += 1;
            }
            (start, k)
        };
        let (sa, ea) = take(a, i);
        let (sb, eb) = take(b, j);
        if sb == eb {
            // Segments of different types: numeric is newer than alpha.
            return if numeric { Ordering::Greater } else { Ordering::Less };
        }
        let (mut x, mut y) = (&a[sa..ea], &b[sb..eb]);
        if numeric {
            while x.first() == Some(&b'0') {
                x = &x[1..];
            }
            while y.first() == Some(&b'0') {
                y = &y[1..];
            }
            match x.len().cmp(&y.len()) {
                Ordering::Equal => {}
                other => return other,
            }
        }
        match x.cmp(y) {
            Ordering::Equal => {}
            other => return other,
        }
        i = ea;
        j = eb;
    }
    match (i >= a.len(), j >= b.len()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        _ => Ordering::Greater,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn dpkg_ordering_matches_deb_version_7() {
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0+b1", Less),
            ("1:0.9", "2.0", Greater),
            ("1.0-1", "1.0-2", Less),
            ("1.0a", "1.0", Greater),
            ("1.0~~", "1.0~", Less),
            ("8.0.39", "8.0.40", Less),
            ("10", "9", Greater),
            ("1.002", "1.2", Equal),
            ("2.0-1ubuntu1", "2.0-1", Greater),
        ] {
            assert_eq!(dpkg_cmp(a, b), want, "{a} vs {b}");
            assert_eq!(dpkg_cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn rpm_ordering_matches_rpmvercmp() {
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1.0", "2.0", Less),
            ("2.0.1", "2.0", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0^git1", "1.0", Greater),
            ("1.0^git1", "1.0.1", Less),
            ("1.0a", "1.0", Greater),
            ("1a", "1.1", Less),       // alpha segment older than numeric
            ("1.0_1", "1.0.1", Equal), // separators are equivalent in rpm, not in dpkg
            ("5:1.0-1", "2.0-1", Greater),
        ] {
            assert_eq!(rpm_evr_cmp(a, b), want, "{a} vs {b}");
            assert_eq!(rpm_evr_cmp(b, a), want.reverse(), "{b} vs {a}");
        }
        assert_ne!(dpkg_cmp("1.0_1", "1.0.1"), Equal, "dpkg and rpm differ here");
    }

    #[test]
    fn constraints() {
        let c = Constraint::parse("<8.0.40").unwrap();
        assert!(c.matches(Kind::Deb, "8.0.39"));
        assert!(!c.matches(Kind::Deb, "8.0.40"));
        let c = Constraint::parse(">=1.0, <2.0").unwrap();
        assert!(c.matches(Kind::Rpm, "1.5-3"));
        assert!(!c.matches(Kind::Rpm, "2.0"));
        assert!(Constraint::parse("~1.0").is_err());
        assert!(Constraint::parse("<").is_err());
        assert!(Constraint::parse("< 1 2").is_err());
    }
}
