//! Android Management API: a `Policy` fragment that blocks each banned package.
//!
//! `installType: BLOCKED` blocks installs and uninstalls copies installed under a previous
//! policy. `playStoreMode: BLACKLIST` is required with it: the API's default (`WHITELIST`)
//! uninstalls every app the policy does not name. The fragment is under `"policy"`; the
//! `"embargo"` header records the source and what was not exported.

use serde::Serialize;

use super::{exact_id_only, to_json, ExportError, ExportedRule, Format, JsonHeader, Report, SourceInfo, Target};
use crate::app::App;
use crate::rules::{Kind, Matcher};

/// The API's limit on `applications` per policy.
pub const MAX_APPLICATIONS: usize = 3000;

pub(super) struct Amapi;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Application<'a> {
    package_name: &'a str,
    install_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PolicyFragment<'a> {
    play_store_mode: &'static str,
    applications: Vec<Application<'a>>,
}

#[derive(Serialize)]
struct Document<'a> {
    embargo: JsonHeader<'a>,
    policy: PolicyFragment<'a>,
}

impl Target for Amapi {
    type Item = String;

    fn express(&self, m: &Matcher) -> Result<Vec<String>, String> {
        exact_id_only(m, "the Android Management API", "package name").map(|id| vec![id.to_owned()])
    }

    fn for_app(&self, app: &App, _: &mut Vec<String>) -> Vec<String> {
        if app.kind == Kind::Android {
            vec![app.id.clone()]
        } else {
            Vec::new()
        }
    }

    fn write(
        &self,
        source: &SourceInfo,
        rules: &[ExportedRule<'_, String>],
        report: &Report,
    ) -> Result<Vec<u8>, ExportError> {
        let applications: Vec<Application<'_>> = rules
            .iter()
            .flat_map(|r| r.items.iter())
            .map(|p| Application { package_name: p, install_type: "BLOCKED" })
            .collect();
        if applications.len() > MAX_APPLICATIONS {
            return Err(ExportError::Target(format!(
                "amapi: {} blocked packages exceed the API's {MAX_APPLICATIONS} applications per policy",
                applications.len()
            )));
        }
        let doc = Document {
            embargo: JsonHeader::new(Format::Amapi, source, report),
            policy: PolicyFragment { play_store_mode: "BLACKLIST", applications },
        };
        Ok(to_json(&doc))
    }
}
