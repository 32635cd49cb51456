//! Fleet reporting end to end: the real `embargo-server` with a device CA and an admin CA (rcgen),
//! reports posted over real mutual TLS, the admin view and exports, and `embargo-server fleet` —
//! the same test on SQLite and on a throwaway PostgreSQL cluster the test starts itself.

mod fleet_common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use embargo_e2e::*;
use fleet_common::*;
use serde_json::json;

fn fleet_summary(database: &str) -> String {
    let out = Command::new(bin("embargo-server")).args(["fleet", "--database", database]).output().unwrap();
    assert!(out.status.success(), "embargo-server fleet: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The whole contract, against the database at `database`.
fn ingest_and_view(database: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path(), embargo_policy::example::WECHAT_KASPERSKY_TOML);
    let ca = test_ca(tmp.path());
    let devices = issuer(tmp.path(), "devices");
    let admins = issuer(tmp.path(), "admins");
    let password = tmp.path().join("admin-password");
    std::fs::write(&password, "correct horse\n").unwrap();
    let (_server, url) = start_server(
        &repo.dir,
        &ca,
        &[
            "--client-ca",
            devices.pem.to_str().unwrap(),
            "--admin-ca",
            admins.pem.to_str().unwrap(),
            "--database",
            database,
            "--admin-password-file",
            password.to_str().unwrap(),
        ],
    );
    let port: u16 = url.trim_end_matches('/').rsplit(':').next().unwrap().parse().unwrap();
    let laptop1 = tls_client(&ca, Some(&client_cert(&devices, "laptop-1")));
    let admin = tls_client(&ca, Some(&client_cert(&admins, "alice-admin")));
    let anonymous = tls_client(&ca, None);
    let json_ct = "Content-Type: application/json\r\n";

    // A quarantine is stored and acknowledged with its sequence.
    let (code, _, body) =
        http(port, &laptop1, "POST", "/v1/reports", json_ct, &report("laptop-1", 1, 1, wechat("quarantined")));
    assert_eq!(code, 200, "{body}");
    let ack: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((ack["acked"].as_u64(), ack["stored"].as_bool()), (Some(1), Some(true)), "{body}");
    // A retry stores nothing and acknowledges the same sequence.
    let (code, _, body) =
        http(port, &laptop1, "POST", "/v1/reports", json_ct, &report("laptop-1", 1, 1, wechat("quarantined")));
    assert_eq!(code, 200);
    let ack: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((ack["acked"].as_u64(), ack["stored"].as_bool()), (Some(1), Some(false)), "{body}");
    // A report claiming another device is refused, and nothing is stored under either name.
    let (code, _, body) =
        http(port, &laptop1, "POST", "/v1/reports", json_ct, &report("laptop-2", 2, 1, wechat("found")));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("laptop-2") && body.contains("laptop-1"), "{body}");
    // No certificate, no report; an admin certificate is not a device either.
    let (code, _, _) =
        http(port, &anonymous, "POST", "/v1/reports", json_ct, &report("laptop-1", 3, 1, wechat("found")));
    assert_eq!(code, 403);
    let (code, _, _) =
        http(port, &admin, "POST", "/v1/reports", json_ct, &report("alice-admin", 1, 1, wechat("found")));
    assert_eq!(code, 403);
    // Unknown fields and other format versions are refused, naming the problem.
    let mut bad: serde_json::Value = serde_json::from_slice(&report("laptop-1", 3, 1, wechat("found"))).unwrap();
    bad["device_override"] = json!("x");
    let (code, _, body) = http(port, &laptop1, "POST", "/v1/reports", json_ct, bad.to_string().as_bytes());
    assert_eq!(code, 400);
    assert!(body.contains("device_override"), "{body}");
    // A body over 1 MiB is refused from its declared length, before it is read.
    let (code, _, body) = http(
        port,
        &laptop1,
        "POST",
        "/v1/reports",
        "Content-Type: application/json\r\nContent-Length: 2097152\r\n",
        b"",
    );
    assert_eq!(code, 413, "{body}");

    // A second device on a newer policy still has the app, a third needs an admin.
    let laptop2 = tls_client(&ca, Some(&client_cert(&devices, "laptop-2")));
    let laptop3 = tls_client(&ca, Some(&client_cert(&devices, "laptop-3")));
    assert_eq!(http(port, &laptop2, "POST", "/v1/reports", json_ct, &report("laptop-2", 1, 2, wechat("found"))).0, 200);
    assert_eq!(
        http(port, &laptop3, "POST", "/v1/reports", json_ct, &report("laptop-3", 1, 2, wechat("needs_admin"))).0,
        200
    );

    // The admin view: device certificates get 403, with or without a session.
    let (code, _, _) = http(port, &laptop1, "GET", "/admin/", "", b"");
    assert_eq!(code, 403);
    let (code, head, _) = http(port, &anonymous, "GET", "/admin/", "", b"");
    assert_eq!(code, 303);
    assert!(head.to_ascii_lowercase().contains("location: /admin/login"), "{head}");
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    let (code, _, _) = http(port, &anonymous, "POST", "/admin/login", form, b"password=wrong");
    assert_eq!(code, 401);
    let (code, head, _) = http(port, &anonymous, "POST", "/admin/login", form, b"password=correct+horse");
    assert_eq!(code, 303, "{head}");
    let cookie_line =
        head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).expect("a session cookie");
    for attr in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(cookie_line.contains(attr), "{cookie_line}");
    }
    let cookie = cookie_line.split_once(':').unwrap().1.trim().split(';').next().unwrap().to_owned();
    let with_cookie = format!("Cookie: {cookie}\r\n");
    let (code, _, _) = http(port, &laptop1, "GET", "/admin/", &with_cookie, b"");
    assert_eq!(code, 403, "a device certificate with an admin's session cookie");
    let (code, _, _) = http(port, &anonymous, "GET", "/admin/", "Cookie: embargo_admin=99999999999.00\r\n", b"");
    assert_eq!(code, 303, "a forged session");
    for client_headers in [(&anonymous, with_cookie.as_str()), (&admin, "")] {
        let (code, _, page) = http(port, client_headers.0, "GET", "/admin/", client_headers.1, b"");
        assert_eq!(code, 200, "{page}");
        let row = page.split("<tr data-rule=\"wechat\">").nth(1).expect("a wechat row").split("</tr>").next().unwrap();
        // The rule was first reported with policy 1, so all three devices count: laptop-1
        // compliant (quarantined), laptop-2 still installed, laptop-3 failed (needs admin).
        assert!(
            row.contains("compliant\">1<") && row.contains("installed\">1<") && row.contains("failed\">1<"),
            "{row}"
        );
        assert!(page.contains("<svg") && page.contains("class=\"series compliant\""), "no chart");
        assert!(page.contains("data-device=\"laptop-1\""), "laptop-1 listed");
        // laptop-1 is on policy 1 while others report 2.
        let old = page.split("id=old-policy").nth(1).unwrap().split("</table>").next().unwrap();
        assert!(old.contains("laptop-1") && !old.contains("laptop-2"), "{old}");
    }
    let (code, _, page) = http(port, &admin, "GET", "/admin/device/laptop-1", "", b"");
    assert_eq!(code, 200);
    assert!(page.contains("rule wechat: compliant") && page.contains("first report"), "{page}");
    let (code, head, csv) = http(port, &admin, "GET", "/admin/export/device_rules.csv", "", b"");
    assert_eq!(code, 200);
    assert!(head.contains("policy-2.csv"), "{head}");
    assert!(csv.starts_with("policy_version,device,device_policy_version,rule,status"), "{csv}");
    assert!(csv.contains("2,laptop-3,2,wechat,failed"), "{csv}");
    let (_, _, js) = http(port, &admin, "GET", "/admin/export/rules.json", "", b"");
    let js: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert_eq!(js["policy_version"], 2);
    assert_eq!(js["rows"][0]["rule"], "wechat");

    // History: laptop-2 removes it later; the change is stored, the summary follows.
    assert_eq!(http(port, &laptop2, "POST", "/v1/reports", json_ct, &report("laptop-2", 2, 2, json!([]))).0, 200);
    let summary = fleet_summary(database);
    let line = summary.lines().find(|l| l.starts_with("wechat")).unwrap_or_else(|| panic!("{summary}"));
    let n: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&n[1..5], ["2", "0", "0", "1"], "{summary}");
    // The repository's policy (sha256 of its file) is not the one these reports name, so the
    // rule is known only from matches.
    assert_eq!(&n[5..], ["matched", "only"], "{summary}");
    assert!(summary.contains("devices: 3"), "{summary}");
    let (_, _, page) = http(port, &admin, "GET", "/admin/device/laptop-2", "", b"");
    assert!(page.contains("rule wechat: installed") && page.contains("rule wechat: compliant"), "{page}");
}

#[test]
fn reports_and_admin_view_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", tmp.path().join("fleet.db").display());
    ingest_and_view(&db);
}

#[test]
fn reports_and_admin_view_on_postgresql() {
    let Some(pg) = Postgres::start() else { return };
    ingest_and_view(&pg.url);
}

/// The repository's one signed policy: (version, sha256 = its file name).
fn repo_policy(repo: &Path) -> (u64, String) {
    let entry = std::fs::read_dir(repo.join("policy")).unwrap().flatten().next().expect("a signed policy");
    let sha = entry.file_name().to_string_lossy().trim_end_matches(".json").to_owned();
    let env = embargo_policy::dsse::Envelope::decode_owned(std::fs::read(entry.path()).unwrap()).unwrap();
    let payload: serde_json::Value = serde_json::from_slice(env.payload()).unwrap();
    (payload["version"].as_u64().unwrap(), sha)
}

/// A report applying the policy (`version`, `sha256`) with `events` audit events numbered
/// `first_event..`.
fn report_on(
    device: &str,
    sequence: u64,
    policy: &(u64, String),
    rules: serde_json::Value,
    events: std::ops::Range<u64>,
) -> Vec<u8> {
    let mut r: serde_json::Value = serde_json::from_slice(&report(device, sequence, policy.0, rules)).unwrap();
    r["policy"]["sha256"] = json!(policy.1);
    r["events"] = events
        .map(|i| json!({"seq": i, "at": 1_790_000_000u64 + i, "kind": "action", "rule": "wechat", "detail": format!("ev-{i}")}))
        .collect();
    serde_json::to_vec(&r).unwrap()
}

/// The audit events the admin timeline of `device` shows, by detail.
fn timeline_events(port: u16, admin: &tokio_rustls::TlsConnector, device: &str) -> Vec<String> {
    let (code, _, page) = http(port, admin, "GET", &format!("/admin/device/{device}"), "", b"");
    assert_eq!(code, 200, "{page}");
    page.split("event action [wechat]: ").skip(1).map(|s| s.split('<').next().unwrap().to_owned()).collect()
}

/// Every rule of the applied policy is listed, matched or not (the server reads the signed
/// policy from its repository), and audit events are pruned by count per device and by age.
fn whole_policy_and_event_retention(database: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path(), embargo_policy::example::WECHAT_KASPERSKY_TOML);
    let policy = repo_policy(&repo.dir);
    let ca = test_ca(tmp.path());
    let devices = issuer(tmp.path(), "devices");
    let admins = issuer(tmp.path(), "admins");
    let server = |extra: &[&str]| {
        let mut args = vec![
            "--client-ca",
            devices.pem.to_str().unwrap(),
            "--admin-ca",
            admins.pem.to_str().unwrap(),
            "--database",
            database,
            "--event-prune-interval",
            "200ms",
        ];
        args.extend_from_slice(extra);
        start_server(&repo.dir, &ca, &args)
    };
    let (running, url) = server(&["--event-max-per-device", "5"]);
    let port: u16 = url.trim_end_matches('/').rsplit(':').next().unwrap().parse().unwrap();
    let admin = tls_client(&ca, Some(&client_cert(&admins, "alice-admin")));
    let json_ct = "Content-Type: application/json\r\n";
    let laptop1 = tls_client(&ca, Some(&client_cert(&devices, "laptop-1")));
    let laptop2 = tls_client(&ca, Some(&client_cert(&devices, "laptop-2")));
    let body = report_on("laptop-1", 1, &policy, wechat("quarantined"), 1..21);
    assert_eq!(http(port, &laptop1, "POST", "/v1/reports", json_ct, &body).0, 200);
    let body = report_on("laptop-2", 1, &policy, json!([]), 1..2);
    assert_eq!(http(port, &laptop2, "POST", "/v1/reports", json_ct, &body).0, 200);

    // kaspersky matched nothing anywhere, yet it is a rule of the policy both devices apply.
    let page = eventually("the admin view to list the policy's unmatched rule", Duration::from_secs(20), || {
        let (_, _, page) = http(port, &admin, "GET", "/admin/", "", b"");
        page.contains("<tr data-rule=\"kaspersky\">").then_some(page)
    });
    let row = |rule: &str| {
        page.split(&format!("<tr data-rule=\"{rule}\">")).nth(1).unwrap().split("</tr>").next().unwrap().to_owned()
    };
    let k = row("kaspersky");
    assert!(k.contains("compliant\">2<") && k.contains("installed\">0<") && k.contains("failed\">0<"), "{k}");
    assert!(k.contains(&format!("policy {}", policy.0)), "{k}");
    let w = row("wechat");
    assert!(w.contains("compliant\">2<") && w.contains(&format!("policy {}", policy.0)), "{w}");
    let policies = page.split("id=policies").nth(1).unwrap().split("</table>").next().unwrap();
    assert!(policies.contains(&policy.1) && policies.contains(&format!("data-policy=\"{}\"", policy.0)), "{policies}");
    let (_, _, csv) = http(port, &admin, "GET", "/admin/export/rules.csv", "", b"");
    let line = csv.lines().find(|l| l.contains(",kaspersky,")).unwrap_or_else(|| panic!("{csv}"));
    assert!(line.ends_with(&format!(",2,0,0,0,{},false", policy.0)), "{line}");
    let (_, _, js) = http(port, &admin, "GET", "/admin/export/policies.json", "", b"");
    let js: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert_eq!(js["rows"][0]["sha256"], policy.1.as_str(), "{js}");
    assert_eq!(js["rows"][0]["devices"], "2", "{js}");
    let summary = fleet_summary(database);
    let line = summary.lines().find(|l| l.starts_with("kaspersky")).unwrap_or_else(|| panic!("{summary}"));
    let n: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&n[1..5], ["2", "0", "0", "0"], "{summary}");
    assert!(summary.contains(&policy.1), "{summary}");

    // At most 5 events per device are kept: the newest.
    let kept = eventually("events over the per-device bound to be pruned", Duration::from_secs(20), || {
        let ev = timeline_events(port, &admin, "laptop-1");
        (ev.len() == 5).then_some(ev)
    });
    let mut kept = kept;
    kept.sort();
    assert_eq!(kept, ["ev-16", "ev-17", "ev-18", "ev-19", "ev-20"]);
    assert_eq!(timeline_events(port, &admin, "laptop-2"), ["ev-1"], "a device under the bound keeps its events");

    // With a retention of 1 s, every event is older than that: all go, the rule state stays.
    drop(running);
    let (_running, url) = server(&["--event-retention", "1s"]);
    let port: u16 = url.trim_end_matches('/').rsplit(':').next().unwrap().parse().unwrap();
    eventually("events past the retention to be pruned", Duration::from_secs(20), || {
        (timeline_events(port, &admin, "laptop-1").is_empty() && timeline_events(port, &admin, "laptop-2").is_empty())
            .then_some(())
    });
    let (_, _, page) = http(port, &admin, "GET", "/admin/device/laptop-1", "", b"");
    assert!(page.contains("rule wechat: compliant"), "{page}");
}

#[test]
fn whole_policy_and_event_retention_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", tmp.path().join("fleet.db").display());
    whole_policy_and_event_retention(&db);
}

#[test]
fn whole_policy_and_event_retention_on_postgresql() {
    let Some(pg) = Postgres::start() else { return };
    whole_policy_and_event_retention(&pg.url);
}

/// PostgreSQL ingest costs a constant number of statements (round trips) per report, whatever
/// the report holds: counted in the server's own statement log (`log_statement=all`).
#[test]
fn postgresql_ingest_round_trips_do_not_grow_with_the_report() {
    let Some(pg) = Postgres::start_with("-c log_statement=all") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path(), embargo_policy::example::WECHAT_KASPERSKY_TOML);
    let ca = test_ca(tmp.path());
    let devices = issuer(tmp.path(), "devices");
    let (_server, url) =
        start_server(&repo.dir, &ca, &["--client-ca", devices.pem.to_str().unwrap(), "--database", &pg.url]);
    let port: u16 = url.trim_end_matches('/').rsplit(':').next().unwrap().parse().unwrap();
    let json_ct = "Content-Type: application/json\r\n";
    let policy = (1, "ab".repeat(32));
    let three_rules = json!([
        {"rule": "wechat", "apps": wechat("found")[0]["apps"]},
        {"rule": "kaspersky", "apps": wechat("needs_admin")[0]["apps"]},
        {"rule": "zoom", "apps": wechat("quarantined")[0]["apps"]},
    ]);
    // Warm up: connections opened and statements prepared.
    for d in 0..4 {
        let name = format!("warm-{d}");
        let c = tls_client(&ca, Some(&client_cert(&devices, &name)));
        assert_eq!(
            http(port, &c, "POST", "/v1/reports", json_ct, &report_on(&name, 1, &policy, three_rules.clone(), 1..3)).0,
            200
        );
    }
    let statements = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("LOG:  execute") || l.contains("LOG:  statement:"))
            // The upkeep task's own statements (retention, policy lists) are not the report's.
            .filter(|l| !l.contains("policies") && !l.contains("DELETE FROM events") && !l.contains("GROUP BY device"))
            .map(str::to_owned)
            .collect()
    };
    let laptop = tls_client(&ca, Some(&client_cert(&devices, "laptop-1")));
    let mut per_report = Vec::new();
    for (seq, rules, events) in [(1, three_rules.clone(), 1..201), (2, json!([]), 201..401)] {
        let before = statements(&pg.log()).len();
        let body = report_on("laptop-1", seq, &policy, rules, events);
        assert_eq!(http(port, &laptop, "POST", "/v1/reports", json_ct, &body).0, 200);
        let after = eventually("the statement log to be written", Duration::from_secs(10), || {
            let s = statements(&pg.log());
            s.iter().skip(before).any(|l| l.contains("COMMIT")).then_some(s)
        });
        per_report.push(after[before..].to_vec());
    }
    for (i, s) in per_report.iter().enumerate() {
        // Before batching: ~5 + 3 per rule + 1 per event (over 200 here).
        assert!(s.len() <= 12, "report {}: {} statements:\n{}", i + 1, s.len(), s.join("\n"));
        let events = s.iter().filter(|l| l.contains("INSERT INTO events")).count();
        assert_eq!(events, 1, "report {}: all 200 events in one statement:\n{}", i + 1, s.join("\n"));
    }
    // The second report made laptop-1 compliant for all three (the four warm-up devices still
    // have wechat installed and kaspersky failed; zoom is quarantined everywhere).
    let out = Command::new(bin("embargo-server")).args(["fleet", "--database", &pg.url, "--json"]).output().unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (rule, compliant) in [("wechat", 1), ("kaspersky", 1), ("zoom", 5)] {
        let r = summary["rules"].as_array().unwrap().iter().find(|r| r["rule"] == rule).unwrap();
        assert_eq!(r["compliant"].as_u64(), Some(compliant), "{rule}: {summary}");
    }
}
