//! The policy source format admins write (TOML) and its linter.
//!
//! ```toml
//! version = 3            # optional: defaults to the repository's current policy version + 1
//! expires = "30d"        # optional: how long the signed policy is valid (default 30 days)
//!
//! [[rule]]
//! id = "wechat"
//! description = "Directive 2023-10-30: WeChat"
//! action = "remove"
//! [[rule.match]]
//! kind = "android"
//! id = "com.tencent.mm"
//! ```
//! Every problem is reported as `file:line:col: message`; nothing here signs anything.

use serde::Deserialize;

use crate::rules::Rule;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    expires: Option<String>,
    #[serde(rename = "rule", default)]
    rules: Vec<toml::Spanned<Rule>>,
}

/// A policy as written by an admin, checked.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub version: Option<u64>,
    pub expires: std::time::Duration,
    pub rules: Vec<Rule>,
}

/// One problem in a policy source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
    }
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

pub const DEFAULT_POLICY_EXPIRY: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Parses and checks a policy source; returns every problem found, each with its location.
pub fn parse(file: &str, text: &str) -> Result<PolicySource, Vec<Diagnostic>> {
    let diag = |offset: usize, message: String| {
        let (line, column) = line_col(text, offset);
        Diagnostic { file: file.to_owned(), line, column, message }
    };
    let raw: RawSource = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            return Err(vec![diag(offset, e.message().trim().to_owned())]);
        }
    };
    let mut problems = Vec::new();
    let expires = match raw.expires.as_deref() {
        None => DEFAULT_POLICY_EXPIRY,
        Some(d) => match humantime::parse_duration(d) {
            Ok(d) if d.as_secs() >= 3600 => d,
            Ok(_) => {
                problems.push(diag(text.find("expires").unwrap_or(0), format!("expires {d:?} is under one hour")));
                DEFAULT_POLICY_EXPIRY
            }
            Err(e) => {
                problems
                    .push(diag(text.find("expires").unwrap_or(0), format!("expires {d:?}: {e} (use e.g. \"30d\")")));
                DEFAULT_POLICY_EXPIRY
            }
        },
    };
    if raw.version == Some(0) {
        problems.push(diag(text.find("version").unwrap_or(0), "version must be at least 1".into()));
    }
    let mut seen = std::collections::HashMap::new();
    let mut rules = Vec::with_capacity(raw.rules.len());
    for spanned in raw.rules {
        let start = spanned.span().start;
        let rule = spanned.into_inner();
        if let Err(reason) = rule.check() {
            problems.push(diag(start, reason));
        }
        if let Some(first) = seen.insert(rule.id.clone(), start) {
            let (line, _) = line_col(text, first);
            problems.push(diag(start, format!("rule id {:?} is already used at line {line}", rule.id)));
        }
        rules.push(rule);
    }
    if rules.is_empty() && problems.is_empty() {
        problems.push(diag(0, "the policy has no [[rule]]".into()));
    }
    if rules.len() > crate::metadata::limits::MAX_RULES {
        problems.push(diag(0, format!("{} rules (at most {})", rules.len(), crate::metadata::limits::MAX_RULES)));
    }
    if problems.is_empty() {
        Ok(PolicySource { version: raw.version, expires, rules })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_file_and_line() {
        let text = "version = 1\n\n[[rule]]\nid = \"a\"\naction = \"remove\"\n[[rule.match]]\nid = \"x\"\n\n[[rule]]\nid = \"a\"\naction = \"audit\"\n[[rule.match]]\nkind = \"deb\"\n";
        let errs = parse("p.toml", text).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
        assert!(shown.iter().any(|s| s.starts_with("p.toml:9:") && s.contains("already used at line 3")), "{shown:?}");
        assert!(shown.iter().any(|s| s.starts_with("p.toml:9:") && s.contains("only `kind`")), "{shown:?}");
    }

    #[test]
    fn unknown_keys_and_bad_actions_are_located() {
        let text = "[[rule]]\nid = \"a\"\naction = \"delete\"\n[[rule.match]]\nid = \"x\"\n";
        let errs = parse("p.toml", text).unwrap_err();
        assert_eq!(errs[0].line, 3, "{errs:?}");
        assert!(errs[0].message.contains("delete"), "{errs:?}");
        let text = "[[rule]]\nid = \"a\"\naction = \"audit\"\n[[rule.match]]\nid = \"x\"\npackage = \"y\"\n";
        let errs = parse("p.toml", text).unwrap_err();
        assert_eq!(errs[0].line, 6, "{errs:?}");
        assert!(errs[0].message.contains("package"), "{errs:?}");
    }
}
