//! The real agent reporting to the real fleet server: `embargod` with `[report] url` and an rcgen
//! device certificate, `embargo-server` with `--client-ca` and SQLite, over real mutual TLS on
//! loopback. A quarantined AppImage shows up in the server's stored state; with the server down
//! the agent keeps enforcing and spools; when the server returns every spooled report arrives.

mod fleet_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use embargo_e2e::*;
use embargo_policy::example::WECHAT_KASPERSKY_TOML;
use fleet_common::*;

fn start_fleet_server(dev: &Device, port: u16, devices_ca: &std::path::Path, db: &str) -> Running {
    let child = Command::new(bin("embargo-server"))
        .args(["--repo", dev.repo.dir.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .args(["--tls-cert", dev.ca.cert_pem.to_str().unwrap(), "--tls-key", dev.ca.key_pem.to_str().unwrap()])
        .args(["--client-ca", devices_ca.to_str().unwrap(), "--database", db])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start embargo-server");
    let running = Running(child);
    eventually("the fleet server to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    running
}

fn fleet_json(db: &str) -> serde_json::Value {
    let out = Command::new(bin("embargo-server")).args(["fleet", "--database", db, "--json"]).output().unwrap();
    assert!(out.status.success(), "embargo-server fleet: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One query against the server's SQLite file, with the real `sqlite3` shell.
fn sql(db: &str, query: &str) -> String {
    let file = db.strip_prefix("sqlite://").unwrap();
    let out = Command::new("sqlite3").args([file, query]).output().unwrap();
    assert!(out.status.success(), "sqlite3 {query}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `eventually`, showing the agent's log and the server's summary when it times out.
fn eventually_or<T>(
    log: &std::path::Path,
    db: &str,
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if start.elapsed() > timeout {
            let tail: String =
                std::fs::read_to_string(log).unwrap_or_default().lines().rev().take(40).collect::<Vec<_>>().join("\n");
            panic!(
                "timed out after {timeout:?} waiting for {what}\nagent log (newest first):\n{tail}\nfleet: {}",
                fleet_json(db)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spooled(dev: &Device) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dev.state.join("reports"))
        .map(|d| {
            d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".json")).collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn the_agent_reports_a_quarantine_and_spools_while_the_server_is_down() {
    if !need(&["sqlite3"]) {
        return;
    }
    let mut dev = Device::new(WECHAT_KASPERSKY_TOML);
    let devices = issuer(dev.tmp.path(), "devices");
    let (cert, key) = client_cert(&devices, "laptop-7");
    let (cert_path, key_path) = (dev.tmp.path().join("device.pem"), dev.tmp.path().join("device.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let db = format!("sqlite://{}", dev.tmp.path().join("fleet.db").display());
    let port = free_port();
    let server = start_fleet_server(&dev, port, &devices.pem, &db);
    dev.reconfigure(|t| {
        t.replace(
            "[policy]\n",
            &format!("[policy]\nclient_cert = \"{}\"\nclient_key = \"{}\"\n", cert_path.display(), key_path.display()),
        ) + &format!("\n[report]\nurl = \"https://127.0.0.1:{port}\"\n")
    });

    // A banned AppImage is quarantined, and the server's stored state says so.
    let banned = dev.install("Downloads/WeChat-x86_64.AppImage", &appimage("wechat"));
    eventually("the AppImage to be quarantined", Duration::from_secs(20), || (!banned.exists()).then_some(()));
    let log = dev.tmp.path().join("embargod.log");
    let apps = eventually_or(&log, &db, "the server to store the quarantine", Duration::from_secs(30), || {
        let apps = sql(&db, "SELECT apps FROM device_rules WHERE device = 'laptop-7' AND rule = 'wechat'");
        apps.contains("\"quarantined\"").then_some(apps)
    });
    assert!(apps.contains(banned.to_str().unwrap()), "{apps}");
    let summary = fleet_json(&db);
    let wechat = summary["rules"].as_array().unwrap().iter().find(|r| r["rule"] == "wechat").unwrap();
    assert_eq!(wechat["compliant"], 1, "{summary}");
    // The policy the agent applies (named by the sha256 it reports) is read from the server's
    // repository: its rule nothing matched is listed too, the device compliant with it.
    let kaspersky =
        eventually_or(&log, &db, "the policy's unmatched rule to be listed", Duration::from_secs(40), || {
            fleet_json(&db)["rules"].as_array()?.iter().find(|r| r["rule"] == "kaspersky").cloned()
        });
    assert_eq!(
        (kaspersky["compliant"].as_u64(), kaspersky["matched"].as_bool()),
        (Some(1), Some(false)),
        "{kaspersky}"
    );
    let status = dev.status().unwrap();
    eventually("status to show an accepted report", Duration::from_secs(20), || {
        let s = dev.status()?;
        s["pending"]["report"]["last_accepted"].as_u64().filter(|_| s["pending"]["reports"] == 0)
    });
    assert_eq!(status["pending"]["report"]["dropped"], 0, "{status}");

    // The server goes away: the agent keeps enforcing and spools its reports.
    drop(server);
    let mut quarantined = Vec::new();
    for i in 0..3 {
        let p = dev.install(&format!("Downloads/WeChat-{i}.AppImage"), &appimage("wechat"));
        eventually("enforcement while the server is down", Duration::from_secs(20), || (!p.exists()).then_some(()));
        quarantined.push(p);
        // Each change makes a report once the coalescing delay has passed.
        let want = i + 1;
        eventually("a report to be spooled", Duration::from_secs(20), || (spooled(&dev).len() >= want).then_some(()));
    }
    let pending = spooled(&dev);
    let text = String::from_utf8(dev.ctl(&["status"]).stdout).unwrap();
    assert!(text.contains(&format!("pending reports {}", pending.len())), "{text}");
    let last_seq: u64 = pending.last().unwrap().trim_end_matches(".json").parse().unwrap();

    // The server returns on the same address: every spooled report arrives and the spool empties.
    let server = start_fleet_server(&dev, port, &devices.pem, &db);
    eventually_or(&log, &db, "the spool to drain", Duration::from_secs(90), || spooled(&dev).is_empty().then_some(()));
    let stored: u64 = sql(&db, "SELECT last_sequence FROM devices WHERE device = 'laptop-7'").parse().unwrap();
    assert!(stored >= last_seq, "the server's last sequence {stored} is below the spooled {last_seq}");
    // Every quarantine's audit event arrived, each once (4 quarantines: 1 before, 3 during the outage).
    let actions = sql(&db, "SELECT count(*) FROM events WHERE device = 'laptop-7' AND kind = 'action'");
    assert_eq!(actions, "4", "{}", sql(&db, "SELECT seq, detail FROM events WHERE device = 'laptop-7'"));
    let apps = sql(&db, "SELECT apps FROM device_rules WHERE device = 'laptop-7' AND rule = 'wechat'");
    for p in &quarantined {
        assert!(apps.contains(p.to_str().unwrap()), "{apps}");
    }
    let s = dev.status().unwrap();
    assert!(s["pending"]["report"]["last_accepted"].as_u64().unwrap() >= last_seq, "{s}");

    // kill -9 between spool and send: with the server down, a report is spooled (fsynced), the
    // agent is killed (SIGKILL), the server returns, and the restarted agent sends it.
    drop(server);
    let p = dev.install("Downloads/WeChat-killed.AppImage", &appimage("wechat"));
    eventually("enforcement while the server is down", Duration::from_secs(20), || (!p.exists()).then_some(()));
    // The quarantine's report is on disk (its event names the file) before the kill.
    eventually("the report to be spooled", Duration::from_secs(20), || {
        spooled(&dev)
            .iter()
            .any(|n| {
                std::fs::read_to_string(dev.state.join("reports").join(n)).is_ok_and(|t| t.contains("WeChat-killed"))
            })
            .then_some(())
    });
    let after_kill = spooled(&dev);
    dev.stop_agent(); // Child::kill: SIGKILL.
    assert_eq!(spooled(&dev), after_kill, "the spool changed across kill -9");
    let _server = start_fleet_server(&dev, port, &devices.pem, &db);
    dev.start_agent();
    eventually_or(&log, &db, "the spool to drain after kill -9", Duration::from_secs(90), || {
        spooled(&dev).is_empty().then_some(())
    });
    let apps = sql(&db, "SELECT apps FROM device_rules WHERE device = 'laptop-7' AND rule = 'wechat'");
    assert!(apps.contains(p.to_str().unwrap()), "{apps}");
    let actions = sql(&db, "SELECT count(*) FROM events WHERE device = 'laptop-7' AND kind = 'action'");
    assert_eq!(actions, "5", "{}", sql(&db, "SELECT seq, detail FROM events WHERE device = 'laptop-7'"));

    // A real AppImage's version (its desktop entry's X-AppImage-Version) reaches the server.
    if !need(&["mksquashfs"]) {
        return;
    }
    let image = RealAppImage::new("com.tencent.WeChat", "WeChat", "4.0.1.11").build(dev.tmp.path());
    let p = dev.install("Downloads/WeChat-real.AppImage", &image);
    eventually("the real AppImage to be quarantined", Duration::from_secs(20), || (!p.exists()).then_some(()));
    let apps = eventually_or(&log, &db, "the server to store the app's version", Duration::from_secs(60), || {
        let apps = sql(&db, "SELECT apps FROM device_rules WHERE device = 'laptop-7' AND rule = 'wechat'");
        apps.contains("\"version\":\"4.0.1.11\"").then_some(apps)
    });
    assert!(apps.contains(p.to_str().unwrap()), "{apps}");
}
