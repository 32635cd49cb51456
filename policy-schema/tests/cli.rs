//! The admin tool, run as a real binary: keygen → init → sign → timestamp → verify, and the
//! failures an admin must see named.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_embargo-policy")).args(args).output().expect("run embargo-policy")
}

fn ok(args: &[&str]) -> String {
    let out = tool(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn round_trip_and_a_flipped_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (root, ts, pol, repo) = (d.join("root.key"), d.join("ts.key"), d.join("policy.key"), d.join("repo"));
    for k in [&root, &ts, &pol] {
        let out = ok(&["keygen", p(k)]);
        assert_eq!(std::fs::metadata(k).unwrap().permissions().mode() & 0o777, 0o600);
        let secret: serde_json::Value = serde_json::from_slice(&std::fs::read(k).unwrap()).unwrap();
        assert!(!out.contains(secret["private"].as_str().unwrap()), "private key printed");
    }
    ok(&[
        "init",
        "--repo",
        p(&repo),
        "--fleet",
        "gov",
        "--root-key",
        p(&root),
        "--timestamp-key",
        &format!("{}.pub", p(&ts)),
        "--policy-key",
        p(&pol),
    ]);
    let policy_toml = d.join("wechat-kaspersky.toml");
    std::fs::write(&policy_toml, embargo_policy::example::WECHAT_KASPERSKY_TOML).unwrap();
    let out = ok(&["sign", "--repo", p(&repo), "--key", p(&pol), p(&policy_toml)]);
    assert!(out.contains("policy v1"), "{out}");
    ok(&["timestamp", "--repo", p(&repo), "--key", p(&ts)]);
    let anchor = repo.join("root/1.json");
    let out = ok(&["verify", p(&repo), "--root", p(&anchor)]);
    assert!(out.contains("OK: fleet gov root v1") && out.contains("policy v1"), "{out}");

    // One flipped byte in the published policy.
    let policy_file = std::fs::read_dir(repo.join("policy")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&policy_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&policy_file, &bytes).unwrap();
    let out = tool(&["verify", p(&repo), "--root", p(&anchor)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policy-hash-mismatch"), "{err}");

    // A timestamp signed by the policy key instead of the timestamp key.
    bytes[mid] ^= 0x01;
    std::fs::write(&policy_file, &bytes).unwrap();
    ok(&["timestamp", "--repo", p(&repo), "--key", p(&pol)]);
    let out = tool(&["verify", p(&repo), "--root", p(&anchor)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("signatures of timestamp"));
}

#[test]
fn lint_names_file_and_line_and_usage_errors_exit_64() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("bad.toml");
    std::fs::write(&f, "[[rule]]\nid = \"x\"\naction = \"remove\"\n[[rule.match]]\nkind = \"deb\"\nid = \"*\"\n")
        .unwrap();
    let out = tool(&["lint", p(&f)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:1:", p(&f))) && err.contains("match everything"), "{err}");
    let good = tmp.path().join("good.toml");
    std::fs::write(&good, embargo_policy::example::WECHAT_KASPERSKY_TOML).unwrap();
    assert!(ok(&["lint", p(&good)]).contains("ok (2 rules)"));
    assert_eq!(tool(&["sign", "--no-such-flag"]).status.code(), Some(64));
}

#[test]
fn impact_lists_what_a_policy_would_act_on() {
    let tmp = tempfile::tempdir().unwrap();
    let inv = tmp.path().join("inv.json");
    std::fs::write(
        &inv,
        r#"{"schema_version":1,"apps":[
            {"app":{"kind":"deb","id":"wechat","version":"4.0","paths":["/opt/wechat"],"scope":"system"}},
            {"app":{"kind":"deb","id":"firefox-esr","scope":"system"}},
            {"app":{"kind":"android","id":"com.kaspersky.kes","scope":{"user":10}}}
        ]}"#,
    )
    .unwrap();
    let pol = tmp.path().join("p.toml");
    std::fs::write(&pol, embargo_policy::example::WECHAT_KASPERSKY_TOML).unwrap();
    let out = ok(&["impact", "--inventory", p(&inv), p(&pol)]);
    assert!(out.contains("2 of 3 apps would be acted on"), "{out}");
    assert!(out.contains("wechat") && out.contains("com.kaspersky.kes") && !out.contains("firefox"), "{out}");
    let schema: serde_json::Value = serde_json::from_str(&ok(&["schema"])).unwrap();
    assert!(schema["$defs"]["policy"]["properties"]["rules"].is_object());
}
