//! The admin view stays bounded with a large policy and many devices: the real `embargo-server`
//! over mutual TLS on loopback, a repository signed by the real admin tool with a policy of
//! 20,000 rules, devices reporting that they apply it (its real sha256). The rule table is paged
//! (rules some device must act on first), its links visit every rule once, the filter finds a
//! rule and echoes it escaped, bad query parameters are 400s naming the parameter, the device
//! list and a device's timeline are paged, the exports stay complete, and `embargo-server fleet`
//! prints a bounded summary unless asked for all of it. The paging and export tests run on SQLite
//! and on a throwaway PostgreSQL cluster.

mod fleet_common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use embargo_e2e::*;
use fleet_common::*;
use serde_json::json;

const RULES: usize = 20_000;
/// `limits::ADMIN_PAGE_ROWS` in the server.
const PAGE: usize = 200;

fn rule_id(i: usize) -> String {
    format!("app-{i:05}")
}

fn policy_toml() -> String {
    let mut t = String::from("expires = \"30d\"\n");
    for i in 0..RULES {
        t.push_str(&format!(
            "[[rule]]\nid = \"{}\"\ndescription = \"banned app {i}\"\naction = \"remove\"\n  [[rule.match]]\n  kind = \"deb\"\n  id = \"pkg-{i:05}\"\n",
            rule_id(i)
        ));
    }
    t
}

/// A report applying the policy `(version, sha256)`, with `rules` and audit events `events`.
fn report_on(device: &str, policy: &(u64, String), rules: serde_json::Value, events: std::ops::Range<u64>) -> Vec<u8> {
    let mut r: serde_json::Value = serde_json::from_slice(&report(device, 1, policy.0, rules)).unwrap();
    r["policy"]["sha256"] = json!(policy.1);
    r["events"] = events
        .map(|i| json!({"seq": i, "at": 1_790_000_000u64 + i, "kind": "action", "rule": "app-00042", "detail": format!("ev-{i}")}))
        .collect();
    serde_json::to_vec(&r).unwrap()
}

fn app(rule: &str, state: &str) -> serde_json::Value {
    json!({"rule": rule, "apps": [{"kind": "deb", "id": "pkg", "version": "1", "path": null, "state": state,
        "found_at": 1_790_000_000u64, "since": 1_790_000_001u64, "detail": null}]})
}

/// The `data-rule` rows of the table `id` in `page`, in order.
fn table_rows(page: &str, id: &str, attr: &str) -> Vec<String> {
    let table = page
        .split(&format!("<table id={id}>"))
        .nth(1)
        .unwrap_or_else(|| panic!("no table {id}"))
        .split("</table>")
        .next()
        .unwrap();
    table.split(&format!("<tr {attr}=\"")).skip(1).map(|s| s.split('"').next().unwrap().to_owned()).collect()
}

/// The href of the link with id `id`, HTML-unescaped.
fn link(page: &str, id: &str) -> Option<String> {
    let at = page.split(&format!("<a id={id} href=\"")).nth(1)?;
    Some(at.split('"').next().unwrap().replace("&amp;", "&"))
}

fn total(page: &str, id: &str) -> u64 {
    page.split(&format!("<span id=total-{id}>")).nth(1).unwrap().split('<').next().unwrap().parse().unwrap()
}

/// A running server with the 20,000-rule policy, three devices with rules to act on (laptop-1
/// also with 250 audit events) and `extra` devices without, and the admin's first page.
struct Fleet {
    _tmp: tempfile::TempDir,
    _server: Running,
    port: u16,
    admin: tokio_rustls::TlsConnector,
    db: String,
    first: String,
    devices: u64,
}

impl Fleet {
    fn get(&self, path: &str) -> (u16, String) {
        let (code, _, body) = http(self.port, &self.admin, "GET", path, "", b"");
        (code, body)
    }
}

/// `database`: a PostgreSQL URL, or none for SQLite in the fixture's directory.
fn fleet(extra: usize, database: Option<&str>) -> Fleet {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path(), &policy_toml());
    let entry = std::fs::read_dir(repo.dir.join("policy")).unwrap().flatten().next().unwrap();
    let policy = (1u64, entry.file_name().to_string_lossy().trim_end_matches(".json").to_owned());
    let ca = test_ca(tmp.path());
    let devices = issuer(tmp.path(), "devices");
    let admins = issuer(tmp.path(), "admins");
    let db = database.map_or_else(|| format!("sqlite://{}", tmp.path().join("fleet.db").display()), str::to_owned);
    let (server, url) = start_server(
        &repo.dir,
        &ca,
        &["--client-ca", devices.pem.to_str().unwrap(), "--admin-ca", admins.pem.to_str().unwrap(), "--database", &db],
    );
    let port: u16 = url.trim_end_matches('/').rsplit(':').next().unwrap().parse().unwrap();
    let admin = tls_client(&ca, Some(&client_cert(&admins, "alice-admin")));
    let json_ct = "Content-Type: application/json\r\n";
    let post = |device: &str, body: &[u8]| {
        let client = tls_client(&ca, Some(&client_cert(&devices, device)));
        let (code, _, text) = http(port, &client, "POST", "/v1/reports", json_ct, body);
        assert_eq!(code, 200, "{device}: {text}");
    };
    // Rules some device must act on, spread over the id range so that an id order would not put
    // them on the first page: app-19990 on two devices, three others on one each.
    post(
        "laptop-1",
        &report_on(
            "laptop-1",
            &policy,
            json!([app("app-19990", "found"), app("app-00042", "found"), app("app-07000", "quarantined")]),
            1..251,
        ),
    );
    post(
        "laptop-2",
        &report_on("laptop-2", &policy, json!([app("app-19990", "found"), app("app-15000", "failed")]), 1..2),
    );
    post("laptop-3", &report_on("laptop-3", &policy, json!([app("app-10000", "held_for_confirmation")]), 1..2));
    for i in 0..extra {
        let d = format!("fleet-{i:03}");
        post(&d, &report_on(&d, &policy, json!([]), 1..1));
    }
    // The server reads the policy from its repository in the background.
    let first = eventually("the admin view to list the policy's rules", Duration::from_secs(60), || {
        let (code, _, page) = http(port, &admin, "GET", "/admin/", "", b"");
        assert_eq!(code, 200, "{page}");
        page.contains("data-policy=\"1\"").then_some(page)
    });
    Fleet { _tmp: tmp, _server: server, port, admin, db, first, devices: (extra + 3) as u64 }
}

/// The first page holds one page of rows, rules needing attention first, says how many rules
/// there are, and its next links visit every rule of the policy exactly once; the device list
/// (more devices than a page) is paged the same way.
#[test]
fn the_rule_table_is_paged_attention_first_and_its_links_visit_every_rule_once() {
    rule_table_paged(None);
}

#[test]
fn the_rule_table_is_paged_attention_first_and_its_links_visit_every_rule_once_on_postgresql() {
    let Some(pg) = Postgres::start() else { return };
    rule_table_paged(Some(&pg.url));
}

fn rule_table_paged(database: Option<&str>) {
    let f = fleet(PAGE, database);
    let first = &f.first;
    let rows = table_rows(first, "rules", "data-rule");
    assert_eq!(rows.len(), PAGE, "the first page holds one page of rows");
    assert_eq!(total(first, "rules"), RULES as u64, "the page says how many rules there are");
    assert_eq!(&rows[..4], ["app-19990", "app-00042", "app-10000", "app-15000"], "attention first, most devices first");
    assert!(first.contains("<span id=rules-attention>4</span>"), "four rules need attention");
    let r = first.split("<tr data-rule=\"app-19990\">").nth(1).unwrap().split("</tr>").next().unwrap();
    assert!(r.contains("compliant\">201<") && r.contains("installed\">2<"), "{r}");
    assert!(first.len() < 1_000_000, "one page is not the whole policy: {} bytes", first.len());

    let mut seen: Vec<String> = rows;
    let mut page = first.clone();
    let mut pages = 1;
    while let Some(next) = link(&page, "next-rules") {
        let (code, body) = f.get(&next);
        assert_eq!(code, 200, "{next}: {body}");
        let rows = table_rows(&body, "rules", "data-rule");
        assert!(!rows.is_empty() && rows.len() <= PAGE, "{next}: {} rows", rows.len());
        seen.extend(rows);
        page = body;
        pages += 1;
        assert!(pages <= RULES / PAGE + 1, "more pages than rules");
    }
    assert_eq!(pages, RULES / PAGE);
    assert_eq!(seen.len(), RULES, "every rule once");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), RULES, "no rule twice");
    assert!((0..RULES).all(|i| unique.contains(&rule_id(i))), "every rule of the policy");

    // The device list is paged too, and its link keeps the rule table's page.
    assert_eq!(table_rows(first, "devices", "data-device").len(), PAGE);
    assert_eq!(total(first, "devices"), f.devices);
    let next = link(first, "next-devices").expect("a next link for the devices");
    let (_, body) = f.get(&next);
    let mut all: HashSet<String> = table_rows(first, "devices", "data-device").into_iter().collect();
    all.extend(table_rows(&body, "devices", "data-device"));
    assert_eq!(all.len() as u64, f.devices, "both pages list every device once");
    assert_eq!(table_rows(&body, "rules", "data-rule")[0], "app-19990", "the rule table keeps its own page");
}

/// `?rule=` keeps the rules whose id contains it and is echoed escaped; malformed parameters
/// are 400s naming the parameter.
#[test]
fn the_filter_finds_a_rule_and_bad_parameters_are_refused() {
    let f = fleet(0, None);
    let (code, body) = f.get("/admin/?rule=app-1234");
    assert_eq!(code, 200);
    let want: Vec<String> = (12340..12350).map(rule_id).collect();
    let rows = table_rows(&body, "rules", "data-rule");
    assert_eq!(rows.len(), want.len(), "the filter keeps the ids containing it");
    assert_eq!(rows, want);
    assert_eq!(total(&body, "rules"), 10);
    let (_, body) = f.get("/admin/?rule=19990");
    assert_eq!(table_rows(&body, "rules", "data-rule"), ["app-19990"]);
    assert!(body.contains("<svg") && body.contains("data-rule=\"app-19990\""), "its chart is drawn");
    let (code, body) = f.get("/admin/?rule=%3Cscript%3Ex%22");
    assert_eq!(code, 200);
    assert!(!body.contains("<script>") && body.contains("&lt;script&gt;x&quot;"), "the filter is escaped");
    assert_eq!(total(&body, "rules"), 0);

    for (q, name) in [
        ("page=abc", "page"),
        ("page=0", "page"),
        ("page=-1", "page"),
        ("devices_page=1.5", "devices_page"),
        ("pgae=2", "pgae"),
        ("rule=%zz", "rule"),
    ] {
        let (code, body) = f.get(&format!("/admin/?{q}"));
        assert_eq!(code, 400, "{q}: {body}");
        assert!(body.contains(name), "{q}: {body}");
    }
    let (code, body) = f.get("/admin/device/laptop-1?timeline_page=x");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("timeline_page"), "{body}");
}

/// A device's timeline (250 events, its first report, its rule changes) is paged, newest first,
/// and the exports stay complete (streamed).
#[test]
fn a_device_timeline_is_paged_and_exports_stay_complete() {
    timeline_and_exports(None);
}

#[test]
fn a_device_timeline_is_paged_and_exports_stay_complete_on_postgresql() {
    let Some(pg) = Postgres::start() else { return };
    timeline_and_exports(Some(&pg.url));
}

fn timeline_and_exports(database: Option<&str>) {
    let f = fleet(0, database);
    let (code, dev) = f.get("/admin/device/laptop-1");
    assert_eq!(code, 200, "{dev}");
    let events = |page: &str| -> Vec<String> {
        page.split("event action [app-00042]: ").skip(1).map(|s| s.split('<').next().unwrap().to_owned()).collect()
    };
    let timeline_rows = |page: &str| page.split("<table id=timeline>").nth(1).unwrap().matches("<tr><td>").count();
    assert_eq!(timeline_rows(&dev), PAGE);
    let t = total(&dev, "timeline");
    assert!(t >= 253, "{t}");
    let mut ev = events(&dev);
    assert_eq!(ev[0], "ev-250", "newest first");
    let next = link(&dev, "next-timeline").expect("a next link for the timeline");
    let (_, dev2) = f.get(&next);
    assert_eq!((timeline_rows(&dev) + timeline_rows(&dev2)) as u64, t);
    ev.extend(events(&dev2));
    let unique: HashSet<&String> = ev.iter().collect();
    assert_eq!((ev.len(), unique.len()), (250, 250), "every event once");
    assert!(dev.contains("rule app-19990: installed"), "{dev}");

    let (code, csv) = f.get("/admin/export/rules.csv");
    assert_eq!(code, 200);
    let lines: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(lines.len(), RULES, "every rule in the CSV");
    assert!(lines.iter().any(|l| l.starts_with("1,app-19990,1,") && l.ends_with(",1,2,0,0,1,true")), "app-19990");
    let (_, js) = f.get("/admin/export/rules.json");
    let js: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert_eq!(js["rows"].as_array().unwrap().len(), RULES);
    let (_, js) = f.get("/admin/export/devices.json");
    let js: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert_eq!(js["rows"].as_array().unwrap().len() as u64, f.devices);
}

/// `embargo-server fleet` prints a bounded summary by default (attention first, saying how to
/// see the rest), all of it with `--all`.
#[test]
fn the_fleet_command_prints_a_bounded_summary_unless_asked_for_all() {
    let f = fleet(0, None);
    let run = |extra: &[&str]| {
        let out =
            Command::new(bin("embargo-server")).args(["fleet", "--database", &f.db]).args(extra).output().unwrap();
        assert!(out.status.success(), "embargo-server fleet: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let short = run(&[]);
    let rule_lines = |s: &str| s.lines().filter(|l| l.starts_with("app-")).count();
    assert!(rule_lines(&short) <= PAGE, "{} rule lines by default", rule_lines(&short));
    assert!(short.lines().find(|l| l.starts_with("app-")).unwrap().starts_with("app-19990"), "attention first");
    assert!(short.contains("--all"), "the summary says how to see the rest");
    assert_eq!(rule_lines(&run(&["--all"])), RULES);
}
