//! `embargo-policy export`: one signed ban list turned into each platform's own enforcement
//! format — Android Management API, Apple MDM, Intune, Santa and fapolicyd.
//!
//! This module owns where the rules come from (a repository verified by the agent's own
//! [`TrustedState`] code, or an unsigned TOML source for review) and the conversion loop that is
//! common to every target: which rules apply (action, device tags), which matchers a target can
//! express exactly, which it can only carry for the apps named in an inventory, and which it
//! cannot carry at all. Each target module (`amapi`, `apple`, `intune`, `santa`, `fapolicyd`)
//! only says how one matcher or one inventoried app becomes its own items and how the items
//! are written.
//!
//! Architecture invariants:
//! - Nothing is dropped silently: every matcher that is not carried over exactly is in the
//!   [`Report`], named by rule id, position and content, with the reason.
//! - A matcher is exported only when the target can express *every* condition in it; an AND
//!   the target cannot express is never widened into a broader ban (a version constraint
//!   dropped would ban every version), it is reported instead.
//! - Same input, same bytes: items are kept in ordered sets, identifiers (Apple PayloadUUIDs)
//!   are derived from the input, and nothing reads the clock or the exporting machine's files.
//! - Rules from a repository are used only after the repository verified exactly as
//!   `embargo-policy verify` and the agent verify it; the bytes parsed are the ones whose hash
//!   that verification accepted.

mod amapi;
mod apple;
mod fapolicyd;
mod intune;
mod santa;

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde::Serialize;

use crate::app::App;
use crate::inventory::Inventory;
use crate::matcher::RuleSet;
use crate::metadata::{Policy, Time};
use crate::rules::{Action, Kind, Matcher, Rule};
use crate::transport::{Fetch, FetchError};
use crate::trust::{sha256_hex, TrustedState, UpdateError};

/// The target formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Format {
    /// Android Management API: a Policy fragment (`applications[].installType: BLOCKED`).
    Amapi,
    /// Apple MDM: a `.mobileconfig` with a `com.apple.applicationaccess` payload.
    AppleMdm,
    /// Microsoft Intune: Graph compliance policies with `restrictedApps` (Android, iOS).
    Intune,
    /// Santa (macOS): rules JSON for `santactl rule --import`.
    Santa,
    /// fapolicyd 1.1 (Linux): a rules file for `/etc/fapolicyd/rules.d/`.
    Fapolicyd,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Amapi => "amapi",
            Format::AppleMdm => "apple-mdm",
            Format::Intune => "intune",
            Format::Santa => "santa",
            Format::Fapolicyd => "fapolicyd",
        }
    }

    /// The app kinds this target enforces on. A matcher naming another kind belongs to another
    /// target and is not a loss here; a matcher without a kind concerns every target.
    pub fn kinds(self) -> &'static [Kind] {
        match self {
            Format::Amapi => &[Kind::Android],
            Format::AppleMdm => &[Kind::Ios],
            Format::Intune => &[Kind::Android, Kind::Ios],
            Format::Santa => &[Kind::Macos],
            Format::Fapolicyd => {
                &[Kind::Deb, Kind::Rpm, Kind::Flatpak, Kind::Snap, Kind::Appimage, Kind::Desktop, Kind::File]
            }
        }
    }

    /// What the target does to a banned app, printed in the output and the report.
    pub fn guarantee(self) -> &'static str {
        match self {
            Format::Amapi => {
                "remove: BLOCKED apps cannot be installed, and copies installed under a previous policy are uninstalled"
            }
            Format::AppleMdm => {
                "block-launch: supervised iOS hides the apps and prevents their launch; it does not remove them"
            }
            Format::Intune => {
                "report: devices holding a restricted app are marked non-compliant (and lose access to company resources); the app is neither blocked nor removed"
            }
            Format::Santa => "block-exec: Santa blocks execution of matching binaries; it does not remove them",
            Format::Fapolicyd => {
                "block-exec: fapolicyd denies execution (and, for paths, opening) of matching files; it does not remove them"
            }
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the exported rules came from; written into every output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceInfo {
    /// `true`: a repository verified against a trust anchor. `false`: a TOML source, unsigned.
    pub signed: bool,
    /// The policy's fleet (for TOML: `--fleet`, if given).
    pub fleet: Option<String>,
    pub version: Option<u64>,
    /// Signed: the sha256 of the policy envelope the timestamp names. TOML: of the file.
    pub sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,
}

impl SourceInfo {
    /// One line for comments and descriptions.
    pub fn describe(&self) -> String {
        let fleet = self.fleet.as_deref().unwrap_or("(none)");
        let version = self.version.map_or_else(|| "(none)".to_owned(), |v| v.to_string());
        if self.signed {
            format!("signed policy of fleet {fleet}, version {version}, sha256 {}, verified", self.sha256)
        } else {
            format!(
                "UNSIGNED policy source (TOML, not verified), fleet {fleet}, version {version}, sha256 {}",
                self.sha256
            )
        }
    }
}

/// Rules and where they came from.
#[derive(Debug, Clone)]
pub struct LoadedPolicy {
    pub source: SourceInfo,
    pub rules: Vec<Rule>,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("verification FAILED [{kind}]: {error}", kind = .0.kind(), error = .0)]
    Verification(UpdateError),
    #[error("{path}: {reason}")]
    Input { path: String, reason: String },
    /// The TOML source's problems, one `file:line:col: message` per line.
    #[error("{0}")]
    Lint(String),
    #[error("{0}")]
    Target(String),
}

/// A fetcher that keeps a copy of the policy document the verification fetched, so the rules
/// can be read from exactly the bytes whose hash, signatures and version it accepted.
struct Recording<'a, F> {
    inner: &'a F,
    policy: Mutex<Option<Vec<u8>>>,
}

impl<F: Fetch> Fetch for Recording<'_, F> {
    async fn fetch(&self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>, FetchError> {
        let got = self.inner.fetch(path, max_len).await?;
        if path.starts_with("policy/") {
            if let Some(bytes) = &got {
                *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes.clone());
            }
        }
        Ok(got)
    }
}

/// Verifies the repository behind `fetch` against the trust anchor `anchor` at time `now`, as
/// the agent does on its first sync, and returns the verified policy's rules.
pub async fn load_verified<F: Fetch>(fetch: &F, anchor: &[u8], now: Time) -> Result<LoadedPolicy, ExportError> {
    let mut state = TrustedState::from_anchor(anchor).map_err(ExportError::Verification)?;
    let recording = Recording { inner: fetch, policy: Mutex::new(None) };
    state.update(&recording, now, &[]).await.map_err(ExportError::Verification)?;
    let info = state.policy().ok_or_else(|| ExportError::Target("verification trusted no policy".into()))?.clone();
    let bytes = recording
        .policy
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .filter(|b| sha256_hex(b) == info.sha256)
        .ok_or_else(|| {
            ExportError::Target(format!("the verified policy {} was not among the fetched documents", info.sha256))
        })?;
    let path = format!("policy/{}.json", info.sha256);
    let envelope = crate::dsse::Envelope::decode(&bytes)
        .map_err(|e| ExportError::Input { path: path.clone(), reason: e.to_string() })?;
    let policy = Policy::parse(envelope.payload()).map_err(|e| ExportError::Input { path, reason: e.to_string() })?;
    Ok(LoadedPolicy {
        source: SourceInfo {
            signed: true,
            fleet: Some(policy.fleet.clone()),
            version: Some(policy.version),
            sha256: info.sha256,
            issued: Some(policy.issued),
            expires: Some(policy.expires),
        },
        rules: policy.rules,
    })
}

/// Reads a TOML policy source with the admin tool's own parser (the one `sign` and `lint` use).
/// Problems come back as `file:line:col: message` lines.
pub fn load_toml(file: &str, bytes: &[u8], fleet: Option<String>) -> Result<LoadedPolicy, ExportError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ExportError::Input { path: file.into(), reason: format!("not UTF-8: {e}") })?;
    let src = crate::source::parse(file, text)
        .map_err(|diags| ExportError::Lint(diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")))?;
    Ok(LoadedPolicy {
        source: SourceInfo {
            signed: false,
            fleet,
            version: src.version,
            sha256: sha256_hex(bytes),
            issued: None,
            expires: None,
        },
        rules: src.rules,
    })
}

/// Everything an export needs besides the rules.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Apps (as `embargoctl inventory --json` reports them) through which matchers a target
    /// cannot express are resolved to concrete identifiers, paths and hashes.
    pub inventory: Option<Inventory>,
    /// Tags of the devices the export is for; tagged rules apply only when one matches.
    pub tags: Vec<String>,
    /// Apple: the profile's PayloadIdentifier (default `embargo.<fleet>.banned-apps`).
    pub payload_identifier: Option<String>,
}

/// One matcher that was not carried over exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Loss {
    pub rule: String,
    /// `match[3]` or `except[0]`.
    pub position: String,
    /// The matcher as compact JSON.
    pub matcher: String,
    pub reason: String,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rule {:?} {} {}: {}", self.rule, self.position, self.matcher, self.reason)
    }
}

/// What the conversion could not carry over, for stderr (and, summarised, the output).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Not exported at all.
    pub dropped: Vec<Loss>,
    /// Exported only for the apps the inventory names (new names, paths or versions are not
    /// covered), or exported with less than the policy says.
    pub narrowed: Vec<Loss>,
    /// Rules left out on purpose: audit-only rules, rules for other device tags.
    pub skipped_rules: Vec<String>,
    /// Matchers for other platforms (carried by another format).
    pub other_platforms: usize,
    /// Items written.
    pub exported: usize,
}

impl Report {
    /// The report as printed on stderr: one line per loss, then a summary.
    pub fn render(&self, format: Format) -> String {
        let mut out = String::new();
        for l in &self.dropped {
            out.push_str(&format!("{format}: not exported: {l}\n"));
        }
        for l in &self.narrowed {
            out.push_str(&format!("{format}: narrowed: {l}\n"));
        }
        for r in &self.skipped_rules {
            out.push_str(&format!("{format}: skipped: {r}\n"));
        }
        out.push_str(&format!("{format}: guarantee: {}\n", format.guarantee()));
        out.push_str(&format!(
            "{format}: {} item(s) exported; {} matcher(s) not exported, {} narrowed; {} matcher(s) are for other platforms\n",
            self.exported,
            self.dropped.len(),
            self.narrowed.len(),
            self.other_platforms
        ));
        out
    }

    pub fn lossy(&self) -> bool {
        !self.dropped.is_empty()
    }
}

/// The finished document and its report.
#[derive(Debug, Clone)]
pub struct Exported {
    pub bytes: Vec<u8>,
    pub report: Report,
}

/// Compact JSON of a matcher, for reports.
pub(crate) fn show(m: &Matcher) -> String {
    serde_json::to_string(m).expect("a matcher serializes")
}

/// The conditions a matcher has besides `kind`, by name, for reasons.
pub(crate) fn conditions(m: &Matcher) -> Vec<&'static str> {
    let mut c = Vec::new();
    if m.id.is_some() {
        c.push("id");
    }
    if m.name.is_some() {
        c.push("name");
    }
    if m.publisher.is_some() {
        c.push("publisher");
    }
    if !m.signer.is_empty() {
        c.push("signer");
    }
    if !m.sha256.is_empty() {
        c.push("sha256");
    }
    if m.version.is_some() {
        c.push("version");
    }
    c
}

/// The exact id of a matcher whose only condition is an exact (non-glob) id, or why not.
pub(crate) fn exact_id_only<'m>(m: &'m Matcher, target: &str, key: &str) -> Result<&'m str, String> {
    if m.version.is_some() {
        return Err(format!("{target} cannot match versions; exporting it would ban every version"));
    }
    let extra: Vec<&str> = conditions(m).into_iter().filter(|c| *c != "id").collect();
    if !extra.is_empty() {
        return Err(format!(
            "{target} matches by {key} only; the {} condition cannot be expressed",
            extra.join(" and ")
        ));
    }
    match m.id.as_deref() {
        None => Err(format!("{target} matches by {key} only and this matcher names none")),
        Some(id) if crate::glob::is_glob(id) => {
            Err(format!("{target} matches exact {key}s only; the glob {id:?} cannot be expressed"))
        }
        Some(id) => Ok(id),
    }
}

/// How one target turns matchers and inventoried apps into its items, and writes them.
pub(crate) trait Target {
    type Item: Ord + Clone;
    /// The items a matcher becomes when the target can express all of it, or why it cannot.
    fn express(&self, m: &Matcher) -> Result<Vec<Self::Item>, String>;
    /// The items that stand for one inventoried app matched by a rule (none if the app carries
    /// nothing the target can name). Problems with single items go to `losses`.
    fn for_app(&self, app: &App, losses: &mut Vec<String>) -> Vec<Self::Item>;
    /// Writes the document.
    fn write(
        &self,
        source: &SourceInfo,
        rules: &[ExportedRule<'_, Self::Item>],
        report: &Report,
    ) -> Result<Vec<u8>, ExportError>;
}

/// One rule's items, in policy order.
pub(crate) struct ExportedRule<'r, I> {
    pub rule: &'r Rule,
    pub items: BTreeSet<I>,
}

fn applies(rule: &Rule, tags: &[String]) -> bool {
    rule.tags.is_empty() || rule.tags.iter().any(|t| tags.contains(t))
}

fn for_target(m: &Matcher, format: Format) -> bool {
    m.kind.is_none_or(|k| format.kinds().contains(&k))
}

/// The apps of the inventory that `m` matches within `rule` (its exceptions honoured), with the
/// same matcher the agent uses.
fn resolve<'i>(inventory: &'i Inventory, rule: &Rule, m: &Matcher, format: Format) -> Vec<&'i App> {
    let one = Rule {
        id: rule.id.clone(),
        description: String::new(),
        action: rule.action,
        matchers: vec![m.clone()],
        except: rule.except.clone(),
        tags: Vec::new(),
    };
    let set = RuleSet::compile(vec![one], &[]);
    inventory
        .apps
        .iter()
        .map(|e| &e.app)
        .filter(|a| format.kinds().contains(&a.kind) && set.verdict(a).is_some())
        .collect()
}

fn convert<T: Target>(
    target: &T,
    format: Format,
    policy: &LoadedPolicy,
    opts: &Options,
) -> Result<Exported, ExportError> {
    let mut report = Report::default();
    let mut out: Vec<ExportedRule<'_, T::Item>> = Vec::new();
    let mut seen: BTreeSet<T::Item> = BTreeSet::new();
    for rule in &policy.rules {
        if !applies(rule, &opts.tags) {
            report.skipped_rules.push(format!(
                "rule {:?} applies only to devices tagged {} (pass --tag to export it)",
                rule.id,
                rule.tags.join(", ")
            ));
            continue;
        }
        if rule.action == Action::Audit {
            report.skipped_rules.push(format!(
                "rule {:?} is audit-only: it records and never blocks, so it is not exported as a block",
                rule.id
            ));
            continue;
        }
        let mut items = BTreeSet::new();
        let mut direct = false;
        for (i, m) in rule.matchers.iter().enumerate() {
            if !for_target(m, format) {
                report.other_platforms += 1;
                continue;
            }
            let loss = |reason: String| Loss {
                rule: rule.id.clone(),
                position: format!("match[{i}]"),
                matcher: show(m),
                reason,
            };
            match target.express(m) {
                Ok(found) => {
                    direct = true;
                    items.extend(found);
                }
                Err(reason) => match &opts.inventory {
                    None => report.dropped.push(loss(reason)),
                    Some(inv) => {
                        let apps = resolve(inv, rule, m, format);
                        let mut problems = Vec::new();
                        let found: Vec<T::Item> = apps.iter().flat_map(|a| target.for_app(a, &mut problems)).collect();
                        for p in problems {
                            report.dropped.push(loss(p));
                        }
                        if found.is_empty() {
                            report.dropped.push(loss(format!(
                                "{reason}; no app in the inventory that the target can name matches it"
                            )));
                        } else {
                            report.narrowed.push(loss(format!(
                                "{reason}; exported for the {} matching app(s) of the inventory only ({} item(s)): other copies, names or versions are not covered",
                                apps.len(),
                                found.len()
                            )));
                            items.extend(found);
                        }
                    }
                },
            }
        }
        if direct {
            for (i, m) in rule.except.iter().enumerate() {
                report.dropped.push(Loss {
                    rule: rule.id.clone(),
                    position: format!("except[{i}]"),
                    matcher: show(m),
                    reason: format!(
                        "{format} has no exceptions to a block: the rule is exported without it, so the apps it exempts are blocked too"
                    ),
                });
            }
        }
        // An item two rules produce is written once, under the first rule.
        items.retain(|it| seen.insert(it.clone()));
        report.exported += items.len();
        if !items.is_empty() {
            out.push(ExportedRule { rule, items });
        }
    }
    let bytes = target.write(&policy.source, &out, &report)?;
    Ok(Exported { bytes, report })
}

/// Converts `policy` into `format`.
pub fn export(format: Format, policy: &LoadedPolicy, opts: &Options) -> Result<Exported, ExportError> {
    match format {
        Format::Amapi => convert(&amapi::Amapi, format, policy, opts),
        Format::AppleMdm => {
            if let Some(id) = &opts.payload_identifier {
                apple::check_identifier(id).map_err(ExportError::Target)?;
            }
            convert(&apple::Apple::new(&policy.source, opts), format, policy, opts)
        }
        Format::Intune => convert(&intune::Intune, format, policy, opts),
        Format::Santa => convert(&santa::Santa, format, policy, opts),
        Format::Fapolicyd => convert(&fapolicyd::Fapolicyd, format, policy, opts),
    }
}

/// The header every JSON output carries under `"embargo"`.
#[derive(Debug, Serialize)]
pub(crate) struct JsonHeader<'a> {
    pub generator: &'static str,
    pub format: &'static str,
    pub source: &'a SourceInfo,
    pub guarantee: &'static str,
    pub not_exported: &'a [Loss],
    pub narrowed: &'a [Loss],
}

impl<'a> JsonHeader<'a> {
    pub fn new(format: Format, source: &'a SourceInfo, report: &'a Report) -> Self {
        Self {
            generator: "embargo-policy export",
            format: format.as_str(),
            source,
            guarantee: format.guarantee(),
            not_exported: &report.dropped,
            narrowed: &report.narrowed,
        }
    }
}

pub(crate) fn to_json(value: &impl Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("export documents serialize");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_ids_only_and_reasons_name_the_condition() {
        let m = |f: &dyn Fn(&mut Matcher)| {
            let mut m = Matcher { kind: Some(Kind::Android), id: Some("com.x".into()), ..Default::default() };
            f(&mut m);
            m
        };
        assert_eq!(exact_id_only(&m(&|_| {}), "T", "package name"), Ok("com.x"));
        let e = exact_id_only(&m(&|m| m.id = Some("com.*".into())), "T", "package name").unwrap_err();
        assert!(e.contains("glob"), "{e}");
        let e = exact_id_only(&m(&|m| m.version = Some("<2".into())), "T", "package name").unwrap_err();
        assert!(e.contains("every version"), "{e}");
        let e = exact_id_only(&m(&|m| m.signer = vec!["ab".into()]), "T", "package name").unwrap_err();
        assert!(e.contains("signer"), "{e}");
    }
}
