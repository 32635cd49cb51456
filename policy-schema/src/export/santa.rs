//! Santa (macOS): `{"rules": [...]}` as `santactl rule --import` reads it (sync servers such as
//! Moroz take the same rule dictionaries), every rule with policy `BLOCKLIST`.
//!
//! From macOS matchers: a Team ID signer → `TEAMID`; a signer that is a certificate SHA-256 →
//! `CERTIFICATE`; a file sha256 → `BINARY`; a bundle id together with Team ID signers →
//! `SIGNINGID` (`TeamID:SigningID`, the only form Santa accepts for a developer's signing ID).
//! A bundle id alone, a glob, a name or a version cannot be expressed. Santa reads only the
//! `rules` key; the `embargo` header beside it records the source.

use serde::Serialize;

use super::{conditions, to_json, ExportError, ExportedRule, Format, JsonHeader, Report, SourceInfo, Target};
use crate::app::App;
use crate::rules::{is_sha256_hex, Kind, Matcher};

pub(super) struct Santa;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub(super) enum RuleType {
    Binary,
    Certificate,
    Signingid,
    Teamid,
}

#[derive(Serialize)]
struct SantaRule<'a> {
    rule_type: RuleType,
    policy: &'static str,
    identifier: &'a str,
    custom_msg: &'a str,
    comment: String,
}

#[derive(Serialize)]
struct Document<'a> {
    embargo: JsonHeader<'a>,
    rules: Vec<SantaRule<'a>>,
}

/// An Apple Team ID: ten uppercase letters or digits.
pub fn is_team_id(s: &str) -> bool {
    s.len() == 10 && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

impl Target for Santa {
    type Item = (RuleType, String);

    fn express(&self, m: &Matcher) -> Result<Vec<(RuleType, String)>, String> {
        let c = conditions(m);
        if m.version.is_some() {
            return Err("Santa cannot match versions; exporting it would block every version".into());
        }
        if m.name.is_some() || m.publisher.is_some() {
            return Err("Santa matches code identity (hashes, Team ID, signing ID), not names or publishers".into());
        }
        if c == ["sha256"] {
            return Ok(m.sha256.iter().map(|h| (RuleType::Binary, h.clone())).collect());
        }
        if c.contains(&"sha256") {
            return Err(format!("Santa cannot combine a file hash with {}", c.join(" and ")));
        }
        match (m.id.as_deref(), m.signer.is_empty()) {
            (None, false) => m
                .signer
                .iter()
                .map(|s| {
                    if is_team_id(s) {
                        Ok((RuleType::Teamid, s.clone()))
                    } else if is_sha256_hex(&s.to_ascii_lowercase()) {
                        Ok((RuleType::Certificate, s.to_ascii_lowercase()))
                    } else {
                        Err(format!("signer {s:?} is neither an Apple Team ID nor a certificate SHA-256"))
                    }
                })
                .collect(),
            (Some(id), _) if crate::glob::is_glob(id) => {
                Err(format!("Santa matches exact signing IDs only; the glob {id:?} cannot be expressed"))
            }
            (Some(_), true) => Err(
                "Santa scopes a signing ID by its Team ID (TeamID:SigningID): add the developer's Team ID as signer to this matcher"
                    .into(),
            ),
            (Some(id), false) => m
                .signer
                .iter()
                .map(|s| {
                    if is_team_id(s) {
                        Ok((RuleType::Signingid, format!("{s}:{id}")))
                    } else {
                        Err(format!("signer {s:?} is not an Apple Team ID, so no TeamID:SigningID can be formed"))
                    }
                })
                .collect(),
            (None, true) => Err("the matcher names nothing Santa can match".into()),
        }
    }

    fn for_app(&self, app: &App, _: &mut Vec<String>) -> Vec<(RuleType, String)> {
        match (&app.kind, &app.sha256) {
            (Kind::Macos, Some(h)) if is_sha256_hex(h) => vec![(RuleType::Binary, h.clone())],
            _ => Vec::new(),
        }
    }

    fn write(
        &self,
        source: &SourceInfo,
        rules: &[ExportedRule<'_, (RuleType, String)>],
        report: &Report,
    ) -> Result<Vec<u8>, ExportError> {
        let origin = source.describe();
        let out = rules
            .iter()
            .flat_map(|r| {
                let origin = &origin;
                r.items.iter().map(move |(t, id)| SantaRule {
                    rule_type: *t,
                    policy: "BLOCKLIST",
                    identifier: id,
                    custom_msg: if r.rule.description.is_empty() { "Banned by policy" } else { &r.rule.description },
                    comment: format!("embargo rule {}; {origin}", r.rule.id),
                })
            })
            .collect();
        Ok(to_json(&Document { embargo: JsonHeader::new(Format::Santa, source, report), rules: out }))
    }
}
