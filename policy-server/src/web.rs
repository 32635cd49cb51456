//! HTTP handlers for the fleet: `POST /v1/reports` (devices) and `/admin/` (people).
//!
//! Owns: who may call what, body and rate bounds on reports, the admin sign-in and its session
//! cookie, and rendering (server-side HTML and SVG, CSV and JSON exports; no JavaScript).
//! **Invariant:** a report is stored under the device named by the client certificate; a body
//! naming another device is refused (403) and nothing is stored.
//! **Invariant:** a connection with a device certificate gets 403 on every `/admin/` path, with
//! or without a session cookie; there is no other way in than an admin certificate or a session
//! from the sign-in form.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use embargo_policy::report::{limits as report_limits, Ack, Report, REPORT_VERSION};
use sha2::{Digest as _, Sha256};

use crate::store::Store;
use crate::summary::{self, fmt_time, Staleness, Summary};
use crate::Peer;

/// A device may store at most `REPORT_BURST` reports at once and then one every
/// `REPORT_EVERY`; past that it gets 429 with Retry-After (per server process).
const REPORT_BURST: f64 = 10.0;
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Devices tracked by the rate limiter before its idle entries are swept.
const RATE_TABLE_MAX: usize = 100_000;
/// Lifetime of an admin session.
const SESSION: Duration = Duration::from_secs(8 * 3600);
const COOKIE: &str = "embargo_admin";

/// The fleet side of the server: the store, the admin credential, staleness.
pub struct Fleet {
    pub store: Store,
    /// The admin password (from `--admin-password-file`); none = admin certificates only.
    pub admin_password: Option<String>,
    pub staleness: Staleness,
    pub body_timeout: Duration,
    /// Audit-event retention, applied by the upkeep task (`upkeep.rs`).
    pub retention: crate::store::Retention,
    rate: Mutex<HashMap<String, (f64, Instant)>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("store", &self.store).field("staleness", &self.staleness).finish()
    }
}

impl Fleet {
    pub fn new(store: Store, admin_password: Option<String>, staleness: Staleness, body_timeout: Duration) -> Self {
        Fleet {
            store,
            admin_password,
            staleness,
            body_timeout,
            retention: crate::store::Retention::default(),
            rate: Mutex::new(HashMap::new()),
        }
    }

    /// Token bucket per device; `Err(wait)` when the device is over its rate.
    fn take_token(&self, device: &str) -> Result<(), Duration> {
        let mut table = self.rate.lock().expect("rate table");
        let now = Instant::now();
        if table.len() >= RATE_TABLE_MAX {
            table.retain(|_, (tokens, at)| {
                *tokens + at.elapsed().as_secs_f64() / REPORT_EVERY.as_secs_f64() < REPORT_BURST
            });
        }
        let (tokens, at) = table.entry(device.to_owned()).or_insert((REPORT_BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() / REPORT_EVERY.as_secs_f64()).min(REPORT_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(REPORT_EVERY.mul_f64(1.0 - *tokens))
        }
    }

    fn session_key(&self) -> Option<[u8; 32]> {
        self.admin_password.as_ref().map(|p| Sha256::digest(format!("embargo admin session key\0{p}")).into())
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response {
    (
        code,
        [(header::CACHE_CONTROL, "no-store"), (header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.into() + "\n",
    )
        .into_response()
}

async fn read_body(req: Request, max: usize, timeout: Duration) -> Result<Vec<u8>, Response> {
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok()) {
        if len > max {
            return Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body of {len} bytes is over the {max} byte limit"),
            ));
        }
    }
    let limited = http_body_util::Limited::new(req.into_body(), max);
    match tokio::time::timeout(timeout, http_body_util::BodyExt::collect(limited)).await {
        Err(_) => Err(text(StatusCode::REQUEST_TIMEOUT, "request body not received in time")),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(text(StatusCode::PAYLOAD_TOO_LARGE, format!("body is over the {max} byte limit")))
        }
        Ok(Err(e)) => Err(text(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))),
        Ok(Ok(c)) => Ok(c.to_bytes().to_vec()),
    }
}

/// `POST /v1/reports`.
pub(crate) async fn post_report(State(fleet): State<Arc<Fleet>>, req: Request) -> Response {
    let device = match req.extensions().get::<Peer>() {
        Some(Peer::Device(d)) => d.clone(),
        _ => return text(StatusCode::FORBIDDEN, "reports need a device client certificate"),
    };
    if let Err(wait) = fleet.take_token(&device) {
        let mut r = text(StatusCode::TOO_MANY_REQUESTS, format!("device {device}: too many reports; retry later"));
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
        return r;
    }
    let body = match read_body(req, report_limits::REPORT_BYTES, fleet.body_timeout).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let report = match Report::parse(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("device {device}: {e}")),
    };
    if report.device != device {
        tracing::warn!(device, claimed = report.device, "report claims another device; refused");
        return text(
            StatusCode::FORBIDDEN,
            format!("the report names device {:?} but the client certificate is device {device:?}", report.device),
        );
    }
    match fleet.store.ingest(&device, &report, now_secs()).await {
        Ok(done) => {
            let ack = Ack { version: REPORT_VERSION, device, acked: done.acked, stored: done.stored };
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], serde_json::to_vec(&ack).expect("ack"))
                .into_response()
        }
        Err(e) => {
            tracing::error!(device, error = %e, "storing a report");
            text(StatusCode::SERVICE_UNAVAILABLE, "the report could not be stored; retry later")
        }
    }
}

// ---- admin access ----

fn hmac(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(key);
    let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
    for i in 0..64 {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new().chain_update(ipad).chain_update(msg).finalize();
    Sha256::new().chain_update(opad).chain_update(inner).finalize().into()
}

fn session_cookie(key: &[u8; 32], now: u64) -> String {
    let expires = now + SESSION.as_secs();
    format!("{expires}.{}", hex::encode(hmac(key, expires.to_string().as_bytes())))
}

fn session_valid(key: &[u8; 32], value: &str, now: u64) -> bool {
    let Some((expires, mac)) = value.split_once('.') else { return false };
    let Ok(exp) = expires.parse::<u64>() else { return false };
    let Ok(mac) = hex::decode(mac) else { return false };
    let want = hmac(key, expires.as_bytes());
    // Constant time: every byte compared.
    exp > now && mac.len() == 32 && mac.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

enum Access {
    Allowed,
    Denied(Response),
}

fn admin_access(fleet: &Fleet, req: &Request) -> Access {
    match req.extensions().get::<Peer>() {
        Some(Peer::Admin(_)) => return Access::Allowed,
        Some(Peer::Device(d)) => {
            return Access::Denied(text(
                StatusCode::FORBIDDEN,
                format!("device certificates ({d}) cannot read the admin view"),
            ))
        }
        _ => {}
    }
    if let (Some(key), Some(v)) = (fleet.session_key(), cookie_value(req.headers(), COOKIE)) {
        if session_valid(&key, v, now_secs()) {
            return Access::Allowed;
        }
    }
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/admin/login"));
    Access::Denied(r)
}

fn html(body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'"),
        ],
        body,
    )
        .into_response()
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}\
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#eee}.n{text-align:right}\
.compliant{color:#1a7f37}.installed{color:#b42318}.pending{color:#9a6700}.failed{color:#6e40c9}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{t}</title><style>{STYLE}</style></head>\
         <body><h1>{t}</h1>{body}<p><a href=\"/admin/\">summary</a> · <a href=\"/admin/logout\">sign out</a></p></body></html>",
        t = esc(title)
    )
}

pub(crate) async fn login_form(State(fleet): State<Arc<Fleet>>, req: Request) -> Response {
    if let Some(Peer::Device(_)) = req.extensions().get::<Peer>() {
        return text(StatusCode::FORBIDDEN, "device certificates cannot read the admin view");
    }
    if fleet.admin_password.is_none() {
        return text(
            StatusCode::NOT_FOUND,
            "sign-in is not configured (--admin-password-file); use an admin certificate",
        );
    }
    html(page(
        "embargo — sign in",
        "<form method=post action=\"/admin/login\"><label>Password <input id=password type=password name=password \
         autocomplete=current-password autofocus></label> <button id=signin type=submit>Sign in</button></form>",
    ))
}

pub(crate) async fn login(State(fleet): State<Arc<Fleet>>, req: Request) -> Response {
    if let Some(Peer::Device(_)) = req.extensions().get::<Peer>() {
        return text(StatusCode::FORBIDDEN, "device certificates cannot read the admin view");
    }
    let (Some(key), Some(password)) = (fleet.session_key(), fleet.admin_password.clone()) else {
        return text(StatusCode::NOT_FOUND, "sign-in is not configured (--admin-password-file)");
    };
    let body = match read_body(req, 4096, fleet.body_timeout).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let given = url_form_value(&body, "password").unwrap_or_default();
    let same = Sha256::digest(given.as_bytes())
        .iter()
        .zip(Sha256::digest(password.as_bytes()))
        .fold(0u8, |a, (x, y)| a | (x ^ y))
        == 0;
    if !same {
        // A second per failed attempt, so guessing is slow (connections are bounded too).
        tokio::time::sleep(Duration::from_secs(1)).await;
        tracing::warn!("admin sign-in failed");
        return html(page("embargo — sign in", "<p>Wrong password. <a href=\"/admin/login\">Try again</a>.</p>"))
            .with_status(StatusCode::UNAUTHORIZED);
    }
    let mut r = StatusCode::SEE_OTHER.into_response();
    let cookie = format!(
        "{COOKIE}={}; Secure; HttpOnly; SameSite=Strict; Path=/admin/; Max-Age={}",
        session_cookie(&key, now_secs()),
        SESSION.as_secs()
    );
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("cookie"));
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/admin/"));
    r
}

pub(crate) async fn logout() -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("embargo_admin=; Secure; HttpOnly; SameSite=Strict; Path=/admin/; Max-Age=0"),
    );
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/admin/login"));
    r
}

trait WithStatus {
    fn with_status(self, code: StatusCode) -> Response;
}
impl WithStatus for Response {
    fn with_status(mut self, code: StatusCode) -> Response {
        *self.status_mut() = code;
        self
    }
}

/// The value of `name` in an `application/x-www-form-urlencoded` body.
fn url_form_value(body: &[u8], name: &str) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?;
    for pair in s.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            let v = v.replace('+', " ");
            let bytes = v.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' && i + 2 < bytes.len() {
                    let h = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                    out.push(u8::from_str_radix(h, 16).ok()?);
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            return String::from_utf8(out).ok();
        }
    }
    None
}

async fn load_summary(fleet: &Fleet) -> Result<Summary, Response> {
    summary::summary(&fleet.store, now_secs(), fleet.staleness).await.map_err(|e| {
        tracing::error!(error = %e, "reading the fleet store");
        text(StatusCode::SERVICE_UNAVAILABLE, "the fleet store could not be read")
    })
}

/// The series as an SVG line chart (server-rendered, no script).
pub fn chart_svg(r: &summary::RuleSummary) -> String {
    let (w, h, pad) = (640.0f64, 220.0f64, 36.0f64);
    let max = r.series.iter().map(|p| p.1 + p.2 + p.3 + p.4).max().unwrap_or(1).max(1) as f64;
    let (t0, t1) = (r.series.first().map_or(0, |p| p.0), r.series.last().map_or(1, |p| p.0));
    let span = (t1.saturating_sub(t0)).max(1) as f64;
    let x = |t: u64| pad + (t - t0) as f64 / span * (w - 2.0 * pad);
    let y = |v: u64| h - pad - v as f64 / max * (h - 2.0 * pad);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=chart data-rule=\"{}\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=img>\
         <title>{} over time</title><rect x=0 y=0 width=\"{w}\" height=\"{h}\" fill=\"#fff\" stroke=\"#ccc\"/>\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r_}\" y2=\"{b}\" stroke=\"#888\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"#888\"/>\
         <text x=\"4\" y=\"{pad}\" font-size=\"11\">{max}</text><text x=\"4\" y=\"{b}\" font-size=\"11\">0</text>\
         <text x=\"{pad}\" y=\"{h2}\" font-size=\"11\">{from}</text><text x=\"{r2}\" y=\"{h2}\" font-size=\"11\">{to}</text>",
        esc(&r.rule),
        esc(&r.rule),
        b = h - pad,
        r_ = w - pad,
        h2 = h - 8.0,
        r2 = w - pad - 130.0,
        from = fmt_time(t0),
        to = fmt_time(t1),
    );
    type Getter = fn(&summary::Point) -> u64;
    let series: [(&str, &str, Getter); 4] = [
        ("compliant", "#1a7f37", |p| p.1),
        ("installed", "#b42318", |p| p.2),
        ("pending", "#9a6700", |p| p.3),
        ("failed", "#6e40c9", |p| p.4),
    ];
    for (i, (name, color, get)) in series.iter().enumerate() {
        let points: Vec<String> = r.series.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(get(p)))).collect();
        let _ = write!(
            svg,
            "<polyline class=\"series {name}\" fill=none stroke=\"{color}\" stroke-width=2 points=\"{}\"/>\
             <text x=\"{}\" y=\"14\" font-size=\"11\" fill=\"{color}\">{name}</text>",
            points.join(" "),
            pad + 90.0 * i as f64
        );
    }
    svg.push_str("</svg>");
    svg
}

pub(crate) async fn admin_index(State(fleet): State<Arc<Fleet>>, req: Request) -> Response {
    if let Access::Denied(r) = admin_access(&fleet, &req) {
        return r;
    }
    let s = match load_summary(&fleet).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut b = String::new();
    let _ = write!(
        b,
        "<p>{} devices · newest policy version reported: <b id=policy-version>{}</b> · generated {}</p>",
        s.devices,
        s.current_policy_version.map_or("none".into(), |v| v.to_string()),
        fmt_time(s.generated_at)
    );
    b.push_str("<h2>Rules</h2><table id=rules><tr><th>rule</th><th>since policy</th><th>in</th><th>compliant</th><th>still installed</th><th>removal pending</th><th>failed / needs admin</th></tr>");
    for r in &s.rules {
        let _ = write!(
            b,
            "<tr data-rule=\"{r_}\"><td>{r_}</td><td class=n>{v}</td><td class=in>{}</td><td class=\"n compliant\">{}</td><td class=\"n installed\">{}</td><td class=\"n pending\">{}</td><td class=\"n failed\">{}</td></tr>",
            esc(&summary::in_policies(r)),
            r.compliant,
            r.installed,
            r.pending,
            r.failed,
            r_ = esc(&r.rule),
            v = r.first_policy_version.map_or("-".into(), |v| v.to_string()),
        );
    }
    b.push_str("</table>");
    b.push_str("<h2>Policies applied</h2><table id=policies><tr><th>version</th><th>rules</th><th>devices</th><th>sha256</th></tr>");
    for p in &s.policies {
        let _ = write!(
            b,
            "<tr data-policy=\"{}\"><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td>{}</td></tr>",
            p.version,
            p.version,
            p.rules,
            p.devices,
            esc(&p.sha256)
        );
    }
    b.push_str("</table>");
    if s.devices_policy_unknown > 0 {
        let _ = write!(
            b,
            "<p>{} devices apply a policy this server's repository does not hold: their rules are known only from their matches.</p>",
            s.devices_policy_unknown
        );
    }
    // Charts for rules with a history; a rule never matched is all compliant.
    for r in s.rules.iter().filter(|r| r.matched) {
        let _ = write!(b, "<h3>{} since {}</h3>{}", esc(&r.rule), fmt_time(r.first_seen), chart_svg(r));
    }
    let device_table = |id: &str, title: &str, rows: &[crate::store::DeviceRow]| {
        let mut t = format!("<h2>{title}</h2><table id={id}><tr><th>device</th><th>last seen</th><th>policy version</th><th>agent</th><th>mode</th></tr>");
        for d in rows {
            let _ = write!(
                t,
                "<tr data-device=\"{dev}\"><td><a href=\"/admin/device/{dev}\">{dev}</a></td><td>{}</td><td class=n>{}</td><td>{}</td><td>{}</td></tr>",
                fmt_time(d.last_seen),
                d.policy_version.map_or("none".into(), |v| v.to_string()),
                esc(&d.agent_version),
                esc(&d.mode),
                dev = esc(&d.device),
            );
        }
        t.push_str("</table>");
        t
    };
    b.push_str(&device_table(
        "stale",
        &format!("Stale devices (not seen for more than {} s)", s.stale_after_secs),
        &s.stale,
    ));
    b.push_str(&device_table("old-policy", "Devices on an old policy version", &s.old_policy));
    let devices = fleet.store.devices().await.unwrap_or_default();
    b.push_str(&device_table("devices", "All devices", &devices));
    b.push_str("<h2>Exports</h2><p>");
    for t in ["rules", "policies", "devices", "device_rules", "stale", "old_policy"] {
        let _ =
            write!(b, "{t}: <a href=\"/admin/export/{t}.csv\">CSV</a> <a href=\"/admin/export/{t}.json\">JSON</a> · ");
    }
    b.push_str("</p>");
    html(page("embargo — fleet compliance", &b))
}

pub(crate) async fn admin_device(
    State(fleet): State<Arc<Fleet>>,
    UrlPath(device): UrlPath<String>,
    req: Request,
) -> Response {
    if let Access::Denied(r) = admin_access(&fleet, &req) {
        return r;
    }
    let devices = match fleet.store.devices().await {
        Ok(d) => d,
        Err(_) => return text(StatusCode::SERVICE_UNAVAILABLE, "the fleet store could not be read"),
    };
    let Some(d) = devices.into_iter().find(|d| d.device == device) else {
        return text(StatusCode::NOT_FOUND, format!("no device {device:?}"));
    };
    let rules = fleet.store.device_rules(Some(&device)).await.unwrap_or_default();
    let timeline = fleet.store.timeline(&device).await.unwrap_or_default();
    let mut b = format!(
        "<p>last seen {} · policy {} ({}) · agent {} · mode {} · last report #{}{}</p>",
        fmt_time(d.last_seen),
        d.policy_version.map_or("none".into(), |v| v.to_string()),
        esc(d.policy_sha256.as_deref().unwrap_or("-")),
        esc(&d.agent_version),
        esc(&d.mode),
        d.last_sequence,
        if d.degraded { format!(" · <b>degraded</b>: {}", esc(&d.reasons.join("; "))) } else { String::new() }
    );
    b.push_str("<h2>Rules</h2><table id=device-rules><tr><th>rule</th><th>state</th><th>since</th><th>apps</th></tr>");
    for r in &rules {
        let apps: Vec<String> = r
            .apps
            .iter()
            .map(|a| {
                format!(
                    "{} {} {} ({:?}){}",
                    esc(&a.kind),
                    esc(&a.id),
                    esc(a.version.as_deref().unwrap_or("")),
                    a.state,
                    a.path.as_deref().map(|p| format!(" at {}", esc(p))).unwrap_or_default()
                )
            })
            .collect();
        let _ = write!(
            b,
            "<tr data-rule=\"{r_}\"><td>{r_}</td><td class={s}>{s}</td><td>{}</td><td>{}</td></tr>",
            fmt_time(r.since),
            apps.join("<br>"),
            r_ = esc(&r.rule),
            s = r.status.as_str()
        );
    }
    b.push_str("</table><h2>Timeline</h2><table id=timeline><tr><th>time</th><th>what</th></tr>");
    for (at, what) in &timeline {
        let _ = write!(b, "<tr><td>{}</td><td>{}</td></tr>", fmt_time(*at), esc(what));
    }
    b.push_str("</table>");
    html(page(&format!("device {device}"), &b))
}

/// `/admin/export/<table>.<csv|json>`; every row names the newest policy version reported.
pub(crate) async fn admin_export(
    State(fleet): State<Arc<Fleet>>,
    UrlPath(file): UrlPath<String>,
    req: Request,
) -> Response {
    if let Access::Denied(r) = admin_access(&fleet, &req) {
        return r;
    }
    let Some((table, format)) = file.rsplit_once('.') else {
        return text(StatusCode::NOT_FOUND, "exports are /admin/export/<table>.csv or .json");
    };
    let s = match load_summary(&fleet).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let pv = s.current_policy_version.map_or(String::new(), |v| v.to_string());
    let (header_row, rows): (Vec<&str>, Vec<Vec<String>>) = match table {
        "rules" => (
            vec![
                "policy_version",
                "rule",
                "first_policy_version",
                "first_seen",
                "compliant",
                "installed",
                "pending",
                "failed",
                "in_policy_versions",
                "matched",
            ],
            s.rules
                .iter()
                .map(|r| {
                    vec![
                        pv.clone(),
                        r.rule.clone(),
                        r.first_policy_version.map_or(String::new(), |v| v.to_string()),
                        fmt_time(r.first_seen),
                        r.compliant.to_string(),
                        r.installed.to_string(),
                        r.pending.to_string(),
                        r.failed.to_string(),
                        r.in_policy_versions.iter().map(u64::to_string).collect::<Vec<_>>().join(" "),
                        r.matched.to_string(),
                    ]
                })
                .collect(),
        ),
        "policies" => (
            vec!["policy_version", "version", "fleet", "sha256", "rules", "devices"],
            s.policies
                .iter()
                .map(|p| {
                    vec![
                        pv.clone(),
                        p.version.to_string(),
                        p.fleet.clone(),
                        p.sha256.clone(),
                        p.rules.to_string(),
                        p.devices.to_string(),
                    ]
                })
                .collect(),
        ),
        "devices" | "stale" | "old_policy" => {
            let list = match table {
                "devices" => fleet.store.devices().await.unwrap_or_default(),
                "stale" => s.stale.clone(),
                _ => s.old_policy.clone(),
            };
            (
                vec![
                    "policy_version",
                    "device",
                    "device_policy_version",
                    "policy_sha256",
                    "last_seen",
                    "first_seen",
                    "agent_version",
                    "mode",
                    "degraded",
                ],
                list.iter()
                    .map(|d| {
                        vec![
                            pv.clone(),
                            d.device.clone(),
                            d.policy_version.map_or(String::new(), |v| v.to_string()),
                            d.policy_sha256.clone().unwrap_or_default(),
                            fmt_time(d.last_seen),
                            fmt_time(d.first_seen),
                            d.agent_version.clone(),
                            d.mode.clone(),
                            d.degraded.to_string(),
                        ]
                    })
                    .collect(),
            )
        }
        "device_rules" => {
            let versions: HashMap<String, Option<u64>> = fleet
                .store
                .devices()
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|d| (d.device, d.policy_version))
                .collect();
            (
                vec!["policy_version", "device", "device_policy_version", "rule", "status", "since", "apps"],
                fleet
                    .store
                    .device_rules(None)
                    .await
                    .unwrap_or_default()
                    .iter()
                    .map(|r| {
                        vec![
                            pv.clone(),
                            r.device.clone(),
                            versions.get(&r.device).copied().flatten().map_or(String::new(), |v| v.to_string()),
                            r.rule.clone(),
                            r.status.as_str().to_owned(),
                            fmt_time(r.since),
                            r.apps.iter().map(|a| format!("{}:{}", a.kind, a.id)).collect::<Vec<_>>().join(" "),
                        ]
                    })
                    .collect(),
            )
        }
        _ => return text(StatusCode::NOT_FOUND, format!("no table {table:?}")),
    };
    let name = format!("embargo-{table}-policy-{}.{format}", if pv.is_empty() { "none" } else { &pv });
    let disposition = format!("attachment; filename=\"{name}\"");
    let (ctype, body) = match format {
        "csv" => {
            let mut out = header_row.join(",") + "\n";
            for r in rows {
                out += &r.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",");
                out.push('\n');
            }
            ("text/csv; charset=utf-8", out)
        }
        "json" => {
            let rows: Vec<serde_json::Map<String, serde_json::Value>> = rows
                .into_iter()
                .map(|r| {
                    header_row.iter().map(|h| h.to_string()).zip(r.into_iter().map(serde_json::Value::String)).collect()
                })
                .collect();
            let doc = serde_json::json!({ "table": table, "policy_version": s.current_policy_version, "generated_at": fmt_time(s.generated_at), "rows": rows });
            ("application/json", serde_json::to_string_pretty(&doc).expect("json"))
        }
        _ => return text(StatusCode::NOT_FOUND, "exports are .csv or .json"),
    };
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(header::CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).expect("ascii name"));
    r
}

/// A CSV field, quoted when needed; a leading `=+-@` is prefixed with `'` so a spreadsheet does
/// not run a device-supplied string as a formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_expire_and_resist_tampering() {
        let key = [7u8; 32];
        let c = session_cookie(&key, 1000);
        assert!(session_valid(&key, &c, 1001));
        assert!(!session_valid(&key, &c, 1000 + SESSION.as_secs() + 1));
        assert!(!session_valid(&[8u8; 32], &c, 1001));
        let (exp, mac) = c.split_once('.').unwrap();
        assert!(!session_valid(&key, &format!("{}.{mac}", exp.parse::<u64>().unwrap() + 1), 1001));
    }

    #[test]
    fn form_values_and_csv_fields() {
        assert_eq!(url_form_value(b"a=1&password=p%40ss+w", "password").as_deref(), Some("p@ss w"));
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }
}
