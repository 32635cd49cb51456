//! `embargo-policy export`, run as the real binary against repositories the real admin tool
//! made. Outputs are read back by serde into the shapes the target vendors document (structs
//! written here from their documentation, refusing unknown fields), not by the exporter's types.
//! Python's readers and the real fapolicyd are in `tests/tests/export.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;

fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_embargo-policy")).args(args).output().expect("run embargo-policy")
}

fn ok(args: &[&str]) -> Output {
    let out = tool(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A repository made by keygen → init → sign → timestamp, with `policy` as its first policy.
struct Repo {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    anchor: PathBuf,
    policy_key: PathBuf,
    ts_key: PathBuf,
    base: PathBuf,
}

impl Repo {
    fn new(policy: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_path_buf();
        let (root, ts, pol, dir) = (d.join("root.key"), d.join("ts.key"), d.join("policy.key"), d.join("repo"));
        for k in [&root, &ts, &pol] {
            ok(&["keygen", p(k)]);
        }
        ok(&[
            "init",
            "--repo",
            p(&dir),
            "--fleet",
            "gov-test",
            "--root-key",
            p(&root),
            "--timestamp-key",
            p(&ts),
            "--policy-key",
            p(&pol),
        ]);
        let repo = Repo { anchor: dir.join("root/1.json"), dir, policy_key: pol, ts_key: ts, base: d, _tmp: tmp };
        repo.publish(policy);
        repo
    }

    fn publish(&self, policy: &str) {
        let f = self.base.join("next.toml");
        std::fs::write(&f, policy).unwrap();
        ok(&["sign", "--repo", p(&self.dir), "--key", p(&self.policy_key), p(&f)]);
        ok(&["timestamp", "--repo", p(&self.dir), "--key", p(&self.ts_key)]);
    }

    /// The sha256 `verify` reports for the policy in force.
    fn verified_sha256(&self) -> String {
        let out = String::from_utf8(ok(&["verify", p(&self.dir), "--root", p(&self.anchor)]).stdout).unwrap();
        out.split_whitespace().skip_while(|w| *w != "sha256").nth(1).unwrap().to_owned()
    }

    fn export(&self, format: &str, extra: &[&str]) -> Output {
        let mut args = vec!["export", "--format", format, "--repo", p(&self.dir), "--root", p(&self.anchor)];
        args.extend_from_slice(extra);
        tool(&args)
    }
}

const EXAMPLE: &str = embargo_policy::example::WECHAT_KASPERSKY_TOML;

// The documented shapes, written from the vendors' documentation.

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Source {
    signed: bool,
    fleet: Option<String>,
    version: Option<u64>,
    sha256: String,
    #[serde(default)]
    issued: Option<String>,
    #[serde(default)]
    expires: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Loss {
    rule: String,
    position: String,
    matcher: String,
    reason: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Header {
    generator: String,
    format: String,
    source: Source,
    guarantee: String,
    not_exported: Vec<Loss>,
    narrowed: Vec<Loss>,
}

/// AMAPI `ApplicationPolicy` (the two fields a ban uses).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApplicationPolicy {
    package_name: String,
    install_type: String,
}

/// AMAPI `Policy` fragment.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AmapiPolicy {
    play_store_mode: String,
    applications: Vec<ApplicationPolicy>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AmapiDoc {
    embargo: Header,
    policy: AmapiPolicy,
}

/// Graph `appListItem`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AppListItem {
    #[serde(rename = "@odata.type")]
    odata_type: String,
    name: String,
    publisher: Option<String>,
    app_store_url: Option<String>,
    app_id: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeviceComplianceActionItem {
    action_type: String,
    grace_period_hours: i32,
    notification_template_id: String,
    #[serde(rename = "notificationMessageCCList")]
    notification_message_cc_list: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScheduledActionForRule {
    rule_name: String,
    scheduled_action_configurations: Vec<DeviceComplianceActionItem>,
}

/// Graph beta `androidCompliancePolicy` / `iosCompliancePolicy` (the fields a ban sets).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CompliancePolicy {
    #[serde(rename = "@odata.type")]
    odata_type: String,
    display_name: String,
    description: String,
    restricted_apps: Vec<AppListItem>,
    scheduled_actions_for_rule: Vec<ScheduledActionForRule>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IntuneDoc {
    embargo: Header,
    device_compliance_policies: Vec<CompliancePolicy>,
}

/// A Santa rule dictionary (`santactl rule --import`, sync `ruledownload`).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct SantaRule {
    rule_type: String,
    policy: String,
    identifier: String,
    custom_msg: String,
    comment: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct SantaDoc {
    embargo: Header,
    rules: Vec<SantaRule>,
}

fn json<T: serde::de::DeserializeOwned>(out: &Output) -> T {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_example_policy_in_every_format_from_a_verified_repository() {
    let repo = Repo::new(EXAMPLE);
    let sha = repo.verified_sha256();
    let check_source = |h: &Header, format: &str| {
        assert_eq!(h.generator, "embargo-policy export");
        assert_eq!(h.format, format);
        assert!(h.source.signed);
        assert_eq!(h.source.fleet.as_deref(), Some("gov-test"));
        assert_eq!(h.source.version, Some(1));
        assert_eq!(h.source.sha256, sha, "the output names the policy verification accepted");
        assert!(h.source.issued.is_some() && h.source.expires.is_some());
        assert!(!h.guarantee.is_empty());
    };

    let out = repo.export("amapi", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: AmapiDoc = json(&out);
    check_source(&doc.embargo, "amapi");
    assert_eq!(doc.policy.play_store_mode, "BLACKLIST", "without it AMAPI uninstalls every app not named");
    let blocked: Vec<(&str, &str)> =
        doc.policy.applications.iter().map(|a| (a.package_name.as_str(), a.install_type.as_str())).collect();
    assert_eq!(
        blocked,
        [("com.tencent.mm", "BLOCKED"), ("com.tencent.wework", "BLOCKED"), ("com.kms.free", "BLOCKED")]
    );
    let dropped: Vec<(&str, &str, &str)> =
        doc.embargo.not_exported.iter().map(|l| (l.rule.as_str(), l.position.as_str(), l.matcher.as_str())).collect();
    assert_eq!(dropped, [("kaspersky", "match[1]", r#"{"kind":"android","id":"com.kaspersky.*"}"#)]);
    assert!(doc.embargo.not_exported[0].reason.contains("glob"));
    assert!(doc.embargo.narrowed.is_empty());

    let out = repo.export("intune", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: IntuneDoc = json(&out);
    check_source(&doc.embargo, "intune");
    let by_type = |t: &str| -> Vec<String> {
        doc.device_compliance_policies
            .iter()
            .filter(|p| p.odata_type == t)
            .flat_map(|p| p.restricted_apps.iter().map(|a| a.app_id.clone()))
            .collect()
    };
    assert_eq!(
        by_type("#microsoft.graph.androidCompliancePolicy"),
        ["com.tencent.mm", "com.tencent.wework", "com.kms.free"]
    );
    assert_eq!(by_type("#microsoft.graph.iosCompliancePolicy"), ["com.tencent.xin"]);
    for pol in &doc.device_compliance_policies {
        assert!(pol.restricted_apps.len() <= 100);
        assert!(pol.description.contains(&sha) && pol.display_name.contains("gov-test"));
        assert_eq!(pol.scheduled_actions_for_rule[0].scheduled_action_configurations[0].action_type, "block");
        assert!(pol
            .restricted_apps
            .iter()
            .all(|a| a.odata_type == "#microsoft.graph.appListItem" && a.name == a.app_id));
        let _ = (&pol.restricted_apps[0].publisher, &pol.restricted_apps[0].app_store_url);
        let c = &pol.scheduled_actions_for_rule[0];
        assert!(!c.rule_name.is_empty() && c.scheduled_action_configurations[0].grace_period_hours == 0);
        let a = &c.scheduled_action_configurations[0];
        assert!(a.notification_template_id.is_empty() && a.notification_message_cc_list.is_empty());
    }

    let out = repo.export("santa", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: SantaDoc = json(&out);
    check_source(&doc.embargo, "santa");
    let rules: Vec<(&str, &str, &str)> =
        doc.rules.iter().map(|r| (r.rule_type.as_str(), r.policy.as_str(), r.identifier.as_str())).collect();
    assert_eq!(rules, [("TEAMID", "BLOCKLIST", "5A4RE8SF68"), ("TEAMID", "BLOCKLIST", "2Y8XE5CQ94")]);
    assert!(doc.rules[0].custom_msg.contains("WeChat") && doc.rules[0].comment.contains("embargo rule wechat"));
    let err = stderr(&out);
    assert!(err.contains(r#"rule "wechat" match[3] {"kind":"macos","id":"com.tencent.xinWeChat*"}"#), "{err}");

    let out = repo.export("apple-mdm", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("<?xml") && text.contains("<string>com.apple.applicationaccess</string>"));
    assert_eq!(text.matches("<string>com.tencent.xin</string>").count(), 2, "both keys list it: {text}");
    assert!(text.contains(&sha));
    let out = repo.export("apple-mdm", &["--payload-identifier", "ca.gc.example.ban"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("<string>ca.gc.example.ban</string>")
            && text.contains("<string>ca.gc.example.ban.restrictions</string>")
    );
    let out = repo.export("apple-mdm", &["--payload-identifier", "bad id<"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("reverse-DNS"), "{}", stderr(&out));

    let out = repo.export("fapolicyd", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(text.contains(&format!("sha256 {sha}")), "{text}");
    assert!(text.lines().all(|l| l.is_empty() || l.starts_with('#') || l.starts_with("deny")), "{text}");
    // Without an inventory, every Linux matcher of the example is a name: each is reported.
    let err = stderr(&out);
    for (rule, pos) in [("wechat", 6), ("wechat", 7), ("wechat", 8), ("kaspersky", 4), ("kaspersky", 9)] {
        assert!(err.contains(&format!("not exported: rule \"{rule}\" match[{pos}]")), "{rule} {pos}: {err}");
    }
}

#[test]
fn exports_are_deterministic() {
    let repo = Repo::new(EXAMPLE);
    let toml = repo.base.join("example.toml");
    std::fs::write(&toml, EXAMPLE).unwrap();
    for format in ["amapi", "apple-mdm", "intune", "santa", "fapolicyd"] {
        let a = repo.export(format, &[]);
        let b = repo.export(format, &[]);
        assert!(a.status.success() && !a.stdout.is_empty(), "{format}: {}", stderr(&a));
        assert_eq!(a.stdout, b.stdout, "{format} from the repository");
        let args = ["export", "--format", format, "--fleet", "gov-test", p(&toml)];
        assert_eq!(ok(&args).stdout, ok(&args).stdout, "{format} from TOML");
        let file = repo.base.join(format!("out.{format}"));
        ok(&["export", "--format", format, "--fleet", "gov-test", p(&toml), "-o", p(&file)]);
        assert_eq!(std::fs::read(&file).unwrap(), ok(&args).stdout, "{format}: -o writes the same bytes");
    }
}

#[test]
fn a_toml_export_says_it_is_unsigned_and_names_the_files_sha256() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("draft.toml");
    std::fs::write(&toml, EXAMPLE).unwrap();
    let out = ok(&["export", "--format", "amapi", p(&toml)]);
    let doc: AmapiDoc = json(&out);
    assert!(!doc.embargo.source.signed);
    assert_eq!(doc.embargo.source.sha256, embargo_policy::trust::sha256_hex(EXAMPLE.as_bytes()));
    assert_eq!(doc.embargo.source.fleet, None);
    let text = String::from_utf8(ok(&["export", "--format", "fapolicyd", p(&toml)]).stdout).unwrap();
    assert!(text.contains("UNSIGNED policy source"), "{text}");
    // A broken source is refused with the linter's file:line messages.
    std::fs::write(&toml, "[[rule]]\nid = \"x\"\naction = \"remove\"\n[[rule.match]]\nkind = \"deb\"\nid = \"*\"\n")
        .unwrap();
    let out = tool(&["export", "--format", "amapi", p(&toml)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&format!("{}:1:", p(&toml))), "{}", stderr(&out));
}

#[test]
fn a_tampered_repository_fails_with_the_verification_error_and_writes_nothing() {
    let repo = Repo::new(EXAMPLE);
    let policy_file = std::fs::read_dir(repo.dir.join("policy")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&policy_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&policy_file, &bytes).unwrap();
    let out_file = repo.base.join("out.json");
    for format in ["amapi", "apple-mdm", "intune", "santa", "fapolicyd"] {
        let out = repo.export(format, &["-o", p(&out_file)]);
        assert_eq!(out.status.code(), Some(1), "{format}");
        let err = stderr(&out);
        assert!(err.contains("verification FAILED [policy-hash-mismatch]: policy sha256"), "{format}: {err}");
        assert!(out.stdout.is_empty() && !out_file.exists(), "{format}: nothing is written");
    }
    // A timestamp signed by the wrong key: the signature error, named.
    bytes[mid] ^= 0x01;
    std::fs::write(&policy_file, &bytes).unwrap();
    ok(&["timestamp", "--repo", p(&repo.dir), "--key", p(&repo.policy_key)]);
    let out = repo.export("santa", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("verification FAILED [signatures]: timestamp.json: signatures of timestamp"),
        "{}",
        stderr(&out)
    );
    // Restored: it exports again.
    ok(&["timestamp", "--repo", p(&repo.dir), "--key", p(&repo.ts_key)]);
    assert!(repo.export("santa", &[]).status.success());
}

#[test]
fn strict_fails_when_a_matcher_is_dropped_and_passes_when_none_is() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("p.toml");
    let out_file = tmp.path().join("out.json");
    std::fs::write(&toml, EXAMPLE).unwrap();
    let out = tool(&["export", "--format", "amapi", "--strict", p(&toml), "-o", p(&out_file)]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(r#"amapi: not exported: rule "kaspersky" match[1] {"kind":"android","id":"com.kaspersky.*"}: the Android Management API matches exact package names only"#),
        "{err}"
    );
    assert!(err.contains("--strict") && !out_file.exists(), "{err}");
    // Without --strict the same export succeeds and says the same.
    let out = ok(&["export", "--format", "amapi", p(&toml), "-o", p(&out_file)]);
    assert!(stderr(&out).contains("1 matcher(s) not exported") && out_file.exists());

    let exact = "[[rule]]\nid = \"w\"\naction = \"remove\"\n[[rule.match]]\nkind = \"android\"\nid = \"com.tencent.mm\"\n[[rule.match]]\nkind = \"deb\"\nid = \"wechat\"\n";
    std::fs::write(&toml, exact).unwrap();
    let out = ok(&["export", "--format", "amapi", "--strict", p(&toml)]);
    assert!(
        stderr(&out).contains("0 matcher(s) not exported, 0 narrowed; 1 matcher(s) are for other platforms"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn conditions_a_target_cannot_express_are_reported_never_widened() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("p.toml");
    let h = "ab".repeat(32);
    std::fs::write(
        &toml,
        format!(
            r#"
[[rule]]
id = "old-wechat"
action = "remove"
  [[rule.match]]
  kind = "android"
  id = "com.tencent.mm"
  version = "<8.0.40"
  [[rule.match]]
  kind = "macos"
  id = "com.tencent.xinWeChat"
  signer = ["5A4RE8SF68"]
  [[rule.match]]
  kind = "macos"
  sha256 = ["{h}"]
  [[rule.match]]
  kind = "file"
  sha256 = ["{h}"]
  [[rule.match]]
  kind = "macos"
  id = "com.tencent.xinWeChat.helper"
[[rule]]
id = "kes"
action = "quarantine"
except = [{{ sha256 = ["{h}"] }}]
  [[rule.match]]
  kind = "android"
  id = "com.kms.free"
[[rule]]
id = "watch-only"
action = "audit"
  [[rule.match]]
  kind = "android"
  id = "com.audit.only"
[[rule]]
id = "mobile-only"
action = "remove"
tags = ["mobile"]
  [[rule.match]]
  kind = "android"
  id = "com.mobile.only"
"#
        ),
    )
    .unwrap();
    let out = ok(&["export", "--format", "amapi", p(&toml)]);
    let doc: AmapiDoc = json(&out);
    let ids: Vec<&str> = doc.policy.applications.iter().map(|a| a.package_name.as_str()).collect();
    assert_eq!(ids, ["com.kms.free"], "a version-bounded ban is not widened to every version");
    let err = stderr(&out);
    assert!(err.contains(r#"rule "old-wechat" match[0]"#) && err.contains("every version"), "{err}");
    assert!(err.contains(r#"rule "kes" except[0]"#) && err.contains("no exceptions"), "{err}");
    assert!(err.contains(r#"skipped: rule "watch-only" is audit-only"#), "{err}");
    assert!(err.contains(r#"skipped: rule "mobile-only" applies only to devices tagged mobile"#), "{err}");
    let doc: AmapiDoc = json(&ok(&["export", "--format", "amapi", "--tag", "mobile", p(&toml)]));
    let ids: Vec<&str> = doc.policy.applications.iter().map(|a| a.package_name.as_str()).collect();
    assert_eq!(ids, ["com.kms.free", "com.mobile.only"]);

    let out = ok(&["export", "--format", "santa", p(&toml)]);
    let doc: SantaDoc = json(&out);
    let rules: Vec<(&str, &str)> = doc.rules.iter().map(|r| (r.rule_type.as_str(), r.identifier.as_str())).collect();
    assert_eq!(rules, [("BINARY", h.as_str()), ("SIGNINGID", "5A4RE8SF68:com.tencent.xinWeChat")]);
    assert!(stderr(&out).contains("match[4]") && stderr(&out).contains("Team ID"), "{}", stderr(&out));

    let text = String::from_utf8(ok(&["export", "--format", "fapolicyd", p(&toml)]).stdout).unwrap();
    let rules: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    assert_eq!(rules, [format!("deny_audit perm=execute all : sha256hash={h}")]);
}

#[test]
fn an_inventory_resolves_what_a_format_cannot_express() {
    use embargo_policy::app::App;
    use embargo_policy::inventory::{Inventory, InventoryEntry};
    use embargo_policy::rules::Kind;
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("p.toml");
    std::fs::write(&toml, EXAMPLE).unwrap();
    let mut deb = App::new(Kind::Deb, "wechat");
    deb.paths = ["/r/opt", "/r/opt/wechat", "/r/opt/wechat/wechat", "/r/opt/wechat/libwx.so", "/r/opt/we chat"]
        .map(String::from)
        .to_vec();
    let mut appimage = App::new(Kind::Appimage, "com.tencent.WeChat");
    appimage.name = Some("WeChat".into());
    appimage.paths = vec!["/home/a/Downloads/WeChat.AppImage".into()];
    appimage.sha256 = Some("cd".repeat(32));
    let mut flatpak = App::new(Kind::Flatpak, "com.tencent.WeChat");
    flatpak.paths = vec!["/var/lib/flatpak/app/com.tencent.WeChat/x86_64/stable/active".into()];
    let mut libc = App::new(Kind::Deb, "libc6");
    libc.paths = vec!["/lib/x86_64-linux-gnu/libc.so.6".into()];
    let inventory = Inventory {
        schema_version: 1,
        apps: [
            deb,
            appimage,
            flatpak,
            libc,
            App::new(Kind::Android, "com.kaspersky.kes"),
            App::new(Kind::Android, "com.kasperskyfan.app"),
            App::new(Kind::Deb, "firefox-esr"),
        ]
        .into_iter()
        .map(|app| InventoryEntry { app, verdict: None })
        .collect(),
    };
    let inv = tmp.path().join("inventory.json");
    std::fs::write(&inv, serde_json::to_vec(&inventory).unwrap()).unwrap();

    let out = ok(&["export", "--format", "amapi", "--inventory", p(&inv), p(&toml)]);
    let doc: AmapiDoc = json(&out);
    let ids: Vec<&str> = doc.policy.applications.iter().map(|a| a.package_name.as_str()).collect();
    assert_eq!(ids, ["com.tencent.mm", "com.tencent.wework", "com.kaspersky.kes", "com.kms.free"]);
    assert!(doc.embargo.not_exported.is_empty());
    assert_eq!(doc.embargo.narrowed.len(), 1);
    assert!(stderr(&out).contains(r#"narrowed: rule "kaspersky" match[1]"#), "{}", stderr(&out));

    let out = ok(&["export", "--format", "fapolicyd", "--inventory", p(&inv), p(&toml)]);
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let rules: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    let cd = "cd".repeat(32);
    assert_eq!(
        rules,
        [
            format!("deny_audit perm=execute all : sha256hash={cd}"),
            "deny_audit perm=any all : path=/home/a/Downloads/WeChat.AppImage".into(),
            "deny_audit perm=any all : path=/r/opt/wechat/libwx.so".into(),
            "deny_audit perm=any all : path=/r/opt/wechat/wechat".into(),
            "deny_audit perm=any all : dir=/var/lib/flatpak/app/com.tencent.WeChat/".into(),
        ]
    );
    let err = stderr(&out);
    assert!(err.contains(r#"path "/r/opt/we chat""#) && err.contains("whitespace"), "{err}");
    assert!(!text.contains("libc.so") && !text.contains("firefox"), "{text}");
    // The example's kesl packages are not installed: reported, not silently absent.
    assert!(
        err.contains(r#"not exported: rule "kaspersky" match[4]"#) && err.contains("no app in the inventory"),
        "{err}"
    );
}

#[test]
fn intune_splits_restricted_apps_at_its_limit_of_100() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("p.toml");
    // Rules hold at most 64 matchers: three rules of 50.
    let mut text = String::new();
    for i in 0..150 {
        if i % 50 == 0 {
            text.push_str(&format!("[[rule]]\nid = \"many{i}\"\naction = \"remove\"\n"));
        }
        text.push_str(&format!("[[rule.match]]\nkind = \"android\"\nid = \"com.example.app{i:03}\"\n"));
    }
    std::fs::write(&toml, text).unwrap();
    let doc: IntuneDoc = json(&ok(&["export", "--format", "intune", p(&toml)]));
    let sizes: Vec<usize> = doc.device_compliance_policies.iter().map(|p| p.restricted_apps.len()).collect();
    assert_eq!(sizes, [100, 50]);
    assert!(doc.device_compliance_policies[1].display_name.ends_with("(2/2)"));
    let all: std::collections::BTreeSet<&str> = doc
        .device_compliance_policies
        .iter()
        .flat_map(|p| p.restricted_apps.iter().map(|a| a.app_id.as_str()))
        .collect();
    assert_eq!(all.len(), 150);
}
