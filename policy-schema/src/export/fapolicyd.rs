//! fapolicyd 1.1 (Debian 12's 1.1.7 and later): a rules file to install as
//! `/etc/fapolicyd/rules.d/05-embargo.rules`, holding only `deny_audit` rules.
//!
//! fapolicyd evaluates rules top to bottom and the first match wins; the stock allow rules
//! (`42-trusted-elf`, `95-allow-open`, …) trust files that dpkg or rpm installed, so the ban must
//! sort before them: hence the `05-` prefix, and no allow rule in this file.
//! 1.1 has no `filehash=` and no globs: hashes are `sha256hash=` (lowercase hex) and paths are
//! exact. fapolicyd cannot match package names, so package, AppImage and desktop-entry matchers
//! are carried through an inventory (`embargoctl inventory --json`): the files of each matching
//! installed app become `path=` rules (deb/rpm: every file the package installed that is not a
//! directory of another listed file), flatpak and snap apps become `dir=` rules on their
//! install directory, and single-file apps also get a `sha256hash=` rule.
//! Hash rules deny `execute` only: a hash rule is evaluated on every access it may match, and
//! hashing every opened file would slow the whole system. Path rules deny `any` access.

use super::{ExportError, ExportedRule, Format, Report, SourceInfo, Target};
use crate::app::App;
use crate::rules::{is_sha256_hex, Kind, Matcher};

pub(super) struct Fapolicyd;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Line {
    Hash(String),
    Path(String),
    Dir(String),
}

impl Line {
    fn render(&self) -> String {
        match self {
            Line::Hash(h) => format!("deny_audit perm=execute all : sha256hash={h}"),
            Line::Path(p) => format!("deny_audit perm=any all : path={p}"),
            Line::Dir(d) => format!("deny_audit perm=any all : dir={d}/"),
        }
    }
}

/// Packages whose files a ban must never deny, whatever the policy and inventory say: denying
/// them would stop the system (the list the agent refuses to remove, and fapolicyd itself).
fn protected(name: &str) -> bool {
    crate::app::ALWAYS_PROTECTED.contains(&name) || name == "fapolicyd"
}

/// Why fapolicyd 1.1's rule parser cannot take `path` as one value, if it cannot: values end at
/// whitespace, commas make lists, `%` starts a set name, and ` : ` separates subject and object.
fn unusable_path(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        return Some("is not absolute");
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("contains whitespace or a control character, which fapolicyd 1.1 rules cannot express");
    }
    if path.contains([',', ':', '#', '%', '"']) {
        return Some("contains one of , : # % \" which fapolicyd 1.1 rules cannot express");
    }
    None
}

/// The paths of `paths` that are not a directory of another listed path (dpkg and rpm list
/// every directory they create; a directory cannot be executed and denying it means nothing).
fn leaves(paths: &[String]) -> Vec<&String> {
    let set: std::collections::BTreeSet<&str> = paths.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for p in paths {
        let below = format!("{}/", p.trim_end_matches('/'));
        let has_child = set.range(below.as_str()..).next().is_some_and(|n| n.starts_with(&below));
        // "/" itself is never a leaf.
        if !has_child && p.len() > 1 && !out.contains(&p) {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// `<dir>` of a flatpak `<dir>/<arch>/<branch>/active` or a snap `<dir>/current`.
fn install_dir(app: &App) -> Option<String> {
    let path = app.paths.first()?;
    let (levels, last) = match app.kind {
        Kind::Flatpak => (3, "active"),
        Kind::Snap => (1, "current"),
        _ => return None,
    };
    let mut p = std::path::Path::new(path);
    if p.file_name()? != last {
        return None;
    }
    for _ in 0..levels {
        p = p.parent()?;
    }
    // Never a top-level directory such as /opt: an install directory is at least /a/b deep.
    (p.components().count() >= 3).then(|| p.display().to_string())
}

impl Target for Fapolicyd {
    type Item = Line;

    fn express(&self, m: &Matcher) -> Result<Vec<Line>, String> {
        let c = super::conditions(m);
        if c == ["sha256"] {
            return Ok(m.sha256.iter().map(|h| Line::Hash(h.clone())).collect());
        }
        if c.contains(&"sha256") {
            return Err(format!("fapolicyd cannot combine a file hash with {}", c.join(" and ")));
        }
        Err(format!(
            "fapolicyd matches files by path and hash, not by {}; pass --inventory (embargoctl inventory --json) to deny the files of installed copies",
            c.join(" and ")
        ))
    }

    fn for_app(&self, app: &App, losses: &mut Vec<String>) -> Vec<Line> {
        let mut out = Vec::new();
        if matches!(app.kind, Kind::Deb | Kind::Rpm) && protected(&app.id) {
            losses.push(format!(
                "inventoried {} package {:?} is a system package whose files are never denied",
                app.kind, app.id
            ));
            return out;
        }
        let mut push_path = |p: &str, out: &mut Vec<Line>| match unusable_path(p) {
            Some(why) => losses.push(format!("path {p:?} of {} {:?} {why}", app.kind, app.id)),
            None => out.push(Line::Path(p.to_owned())),
        };
        match app.kind {
            Kind::Deb | Kind::Rpm => {
                for p in leaves(&app.paths) {
                    push_path(p, &mut out);
                }
            }
            Kind::Flatpak | Kind::Snap => match install_dir(app) {
                Some(d) => match unusable_path(&d) {
                    Some(why) => losses.push(format!("directory {d:?} of {} {:?} {why}", app.kind, app.id)),
                    None => out.push(Line::Dir(d)),
                },
                None => losses.push(format!(
                    "{} {:?}: no install directory in its inventory paths {:?}",
                    app.kind, app.id, app.paths
                )),
            },
            // The entry itself: denying it hides the launcher; its Exec= target may be a shared
            // tool (`flatpak`, `env`) and is not denied.
            Kind::Desktop => {
                if let Some(p) = app.paths.first() {
                    push_path(p, &mut out);
                }
            }
            _ => {
                if let Some(p) = app.paths.first() {
                    push_path(p, &mut out);
                }
                if let Some(h) = app.sha256.as_deref().filter(|h| is_sha256_hex(h)) {
                    out.push(Line::Hash(h.to_owned()));
                }
            }
        }
        out
    }

    fn write(
        &self,
        source: &SourceInfo,
        rules: &[ExportedRule<'_, Line>],
        report: &Report,
    ) -> Result<Vec<u8>, ExportError> {
        let mut s = String::new();
        s.push_str("# embargo ban list for fapolicyd 1.1+, generated by `embargo-policy export --format fapolicyd`.\n");
        s.push_str(&format!("# Source: {}.\n", source.describe()));
        s.push_str(&format!("# Guarantee: {}.\n", Format::Fapolicyd.guarantee()));
        s.push_str("# Install as /etc/fapolicyd/rules.d/05-embargo.rules (before the stock allow rules), then run `fagenrules --load`.\n");
        for l in &report.dropped {
            s.push_str(&format!("# Not exported: {}\n", one_line(&l.to_string())));
        }
        for l in &report.narrowed {
            s.push_str(&format!("# Narrowed: {}\n", one_line(&l.to_string())));
        }
        for r in rules {
            s.push('\n');
            s.push_str(&format!("# rule {:?} ({}): {}\n", r.rule.id, r.rule.action, one_line(&r.rule.description)));
            for line in &r.items {
                s.push_str(&line.render());
                s.push('\n');
            }
        }
        Ok(s.into_bytes())
    }
}

/// A comment must stay on one line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_drop_directories_of_listed_files() {
        let paths: Vec<String> = [
            "/r/opt",
            "/r/opt/wechat",
            "/r/opt/wechat c",
            "/r/opt/wechat/wechat",
            "/r/opt/wechat/lib.so",
            "/r/usr/share/doc/wechat",
            "/r/opt/wechat2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let got: Vec<&str> = leaves(&paths).into_iter().map(String::as_str).collect();
        assert_eq!(
            got,
            [
                "/r/opt/wechat c",
                "/r/opt/wechat/lib.so",
                "/r/opt/wechat/wechat",
                "/r/opt/wechat2",
                "/r/usr/share/doc/wechat"
            ]
        );
        let mut libc = App::new(Kind::Deb, "libc6");
        libc.paths = vec!["/lib/x86_64-linux-gnu/libc.so.6".into()];
        let mut losses = Vec::new();
        assert!(Fapolicyd.for_app(&libc, &mut losses).is_empty());
        assert!(losses[0].contains("system package"), "{losses:?}");
    }

    #[test]
    fn install_dirs_and_unusable_paths() {
        let mut a = App::new(Kind::Flatpak, "com.tencent.WeChat");
        a.paths = vec!["/var/lib/flatpak/app/com.tencent.WeChat/x86_64/stable/active".into()];
        assert_eq!(install_dir(&a).as_deref(), Some("/var/lib/flatpak/app/com.tencent.WeChat"));
        let mut s = App::new(Kind::Snap, "wechat");
        s.paths = vec!["/snap/wechat/current".into()];
        assert_eq!(install_dir(&s).as_deref(), Some("/snap/wechat"));
        s.paths = vec!["/wechat/current".into()];
        assert_eq!(install_dir(&s), None, "a top-level directory is never denied whole");
        assert!(unusable_path("/opt/we chat/x").is_some());
        assert!(unusable_path("/opt/a,b").is_some());
        assert!(unusable_path("relative").is_some());
        assert!(unusable_path("/opt/wechat/wechat").is_none());
    }
}
