//! Shell-style globs over identifiers: `*` matches any run of characters (dots included), `?` one
//! character. No character classes: identifiers do not need them and every extra feature is
//! attack surface in a matcher evaluated against attacker-chosen names.

/// Whether `text` contains a glob metacharacter.
pub fn is_glob(text: &str) -> bool {
    text.bytes().any(|b| b == b'*' || b == b'?')
}

/// The literal text before the first metacharacter.
pub fn literal_prefix(pattern: &str) -> &str {
    let end = pattern.find(['*', '?']).unwrap_or(pattern.len());
    &pattern[..end]
}

/// Matches `text` against `pattern` in O(len(pattern) * len(text)) worst case, no recursion.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("com.kaspersky.*", "com.kaspersky.kes"));
        assert!(glob_match("com.kaspersky.*", "com.kaspersky.a.b"));
        assert!(!glob_match("com.kaspersky.*", "com.kasperskyx"));
        assert!(!glob_match("com.kaspersky.*", "org.com.kaspersky.x"));
        assert!(glob_match("*wechat*", "my-wechat-app"));
        assert!(glob_match("we?hat", "wechat"));
        assert!(!glob_match("we?hat", "weechat"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("*", ""));
        assert_eq!(literal_prefix("com.k*"), "com.k");
        assert_eq!(literal_prefix("*x"), "");
    }
}
