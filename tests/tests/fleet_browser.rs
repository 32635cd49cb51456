//! The admin view in a real browser: headless Chromium, driven through its DevTools protocol
//! (CDP over a websocket, spoken here with tokio-tungstenite), signs in with the page's own form
//! as an admin would and loads `/admin/`; the test reads the rendered rows for the device and the
//! rule and the chart, and saves a screenshot to `target/fleet-admin.png`.
//!
//! The browser does not trust the test CA, so the test tells it to accept the server's
//! certificate (`Security.setIgnoreCertificateErrors`); TLS itself is real.

mod fleet_common;

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use embargo_e2e::*;
use fleet_common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Cdp {
    ws: Ws,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    /// Sends one command and waits (bounded) for its answer, skipping events.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("devtools socket open")
                .unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    async fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true})).await;
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it is truthy (bounded).
    async fn until(&mut self, what: &str, expr: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.eval(expr).await;
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"].into_iter().find(|b| have(b)).map(str::to_owned)
}

#[test]
fn an_admin_signs_in_with_chromium_and_sees_the_rule_the_device_and_the_chart() {
    let Some(browser) = chromium() else {
        skip("needs chromium");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path(), embargo_policy::example::WECHAT_KASPERSKY_TOML);
    let ca = test_ca(tmp.path());
    let devices = issuer(tmp.path(), "devices");
    let password = tmp.path().join("admin-password");
    std::fs::write(&password, "correct horse").unwrap();
    let db = format!("sqlite://{}", tmp.path().join("fleet.db").display());
    let (_server, url) = start_server(
        &repo.dir,
        &ca,
        &[
            "--client-ca",
            devices.pem.to_str().unwrap(),
            "--database",
            &db,
            "--admin-password-file",
            password.to_str().unwrap(),
        ],
    );
    let port: u16 = url.trim_end_matches('/').rsplit(':').next().unwrap().parse().unwrap();
    let json_ct = "Content-Type: application/json\r\n";
    for (dev, state) in [("laptop-1", "quarantined"), ("laptop-2", "found")] {
        let client = tls_client(&ca, Some(&client_cert(&devices, dev)));
        let (code, _, body) = http(port, &client, "POST", "/v1/reports", json_ct, &report(dev, 1, 1, wechat(state)));
        assert_eq!(code, 200, "{body}");
    }

    let profile = tmp.path().join("chromium-profile");
    let mut child = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            "--window-size=1200,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    // Chromium prints its DevTools websocket address on stderr.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(ws) = line.strip_prefix("DevTools listening on ") {
                let _ = tx.send(ws.trim().to_owned());
            }
        }
    });
    let _browser = Running(child);
    let ws_url = rx.recv_timeout(Duration::from_secs(30)).expect("chromium's DevTools address");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (row, device_row, polylines, png) = rt.block_on(async {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str()).await.unwrap();
        let mut cdp = Cdp { ws, next: 0, session: None };
        let target = cdp.call("Target.createTarget", json!({"url": "about:blank"})).await;
        let attached = cdp.call("Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true})).await;
        cdp.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
        cdp.call("Security.setIgnoreCertificateErrors", json!({"ignore": true})).await;
        cdp.call("Page.enable", json!({})).await;
        cdp.call("Runtime.enable", json!({})).await;
        cdp.call("Page.navigate", json!({"url": format!("{url}admin/")})).await;
        // Not signed in: the page sends us to the sign-in form.
        cdp.until("the sign-in form", "document.readyState === 'complete' && !!document.getElementById('password')").await;
        cdp.eval(
            "document.getElementById('password').value = 'correct horse'; document.getElementById('signin').click(); true",
        )
        .await;
        cdp.until(
            "the admin page",
            "document.readyState === 'complete' && location.pathname === '/admin/' && !!document.getElementById('rules')",
        )
        .await;
        let row = cdp.eval("document.querySelector('#rules tr[data-rule=\"wechat\"]').innerText").await;
        let device_row = cdp.eval("document.querySelector('#devices tr[data-device=\"laptop-2\"]').innerText").await;
        let polylines = cdp.eval("document.querySelectorAll('svg.chart[data-rule=\"wechat\"] polyline').length").await;
        let shot = cdp.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true})).await;
        (row, device_row, polylines, shot["data"].as_str().unwrap().to_owned())
    });
    let row = row.as_str().unwrap_or_default().to_owned();
    let cells: Vec<&str> = row.split('\t').map(str::trim).collect();
    assert_eq!(cells, ["wechat", "1", "matched only", "1", "1", "0", "0"], "rendered rule row: {row:?}");
    let device_row = device_row.as_str().unwrap_or_default();
    assert!(device_row.starts_with("laptop-2") && device_row.contains("0.1.0"), "rendered device row: {device_row:?}");
    assert_eq!(polylines, json!(4), "the chart's four series");
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD.decode(png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fleet-admin.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());
}
