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

use crate::store::{DeviceList, Store};
use crate::summary::{self, fmt_time, Staleness};
use crate::Peer;
use crate::{limits, pages};

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
    /// Parsed rule ids of the applied policies, and the reported rules (`pages.rs`).
    pub rules: pages::RuleCache,
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
            rules: pages::RuleCache::default(),
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

fn page_html(title: &str, body: &str) -> String {
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
    html(page_html(
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
        return html(page_html("embargo — sign in", "<p>Wrong password. <a href=\"/admin/login\">Try again</a>.</p>"))
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

fn bad_query(msg: String) -> Response {
    text(StatusCode::BAD_REQUEST, msg)
}

fn store_unreadable(e: crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "reading the fleet store");
    text(StatusCode::SERVICE_UNAVAILABLE, "the fleet store could not be read")
}

/// A link to `path` with the current query parameters, `key` set to `value`; escaped for an
/// HTML attribute.
fn link(path: &str, params: &HashMap<String, String>, key: &str, value: &str) -> String {
    let mut pairs: Vec<(&str, &str)> =
        params.iter().filter(|(k, _)| k.as_str() != key).map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.push((key, value));
    pairs.sort_unstable();
    let q: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", pages::percent_encode(v))).collect();
    esc(&format!("{path}?{}", q.join("&")))
}

/// "N rows · page P of M" and previous/next links for one paged table; `id` names the links
/// (`prev-<id>`, `next-<id>`, `first-<id>`, `last-<id>`; the count `total-<id>`) for tests and readers.
fn pager(
    id: &str,
    path: &str,
    params: &HashMap<String, String>,
    key: &str,
    page: u64,
    total: u64,
    what: &str,
) -> String {
    let size = limits::ADMIN_PAGE_ROWS;
    let last = pages::pages(total, size);
    let first_row = (page - 1) * size + 1;
    let mut out =
        format!("<p class=pager id=pager-{id}><span id=total-{id}>{total}</span> {what} · page {page} of {last}",);
    if total > 0 && page <= last {
        let _ = write!(out, " · rows {first_row}–{}", (page * size).min(total));
    }
    if page > last {
        let _ = write!(out, " · <b>page {page} is past the last page</b>");
    }
    if page > 1 {
        let _ = write!(
            out,
            " · <a id=first-{id} href=\"{}\">first</a> · <a id=prev-{id} href=\"{}\">previous</a>",
            link(path, params, key, "1"),
            link(path, params, key, &(page - 1).min(last).to_string())
        );
    }
    if page < last {
        let _ = write!(
            out,
            " · <a id=next-{id} href=\"{}\">next</a> · <a id=last-{id} href=\"{}\">last</a>",
            link(path, params, key, &(page + 1).to_string()),
            link(path, params, key, &last.to_string())
        );
    }
    out.push_str("</p>");
    out
}

fn device_table(id: &str, title: &str, rows: &[crate::store::DeviceRow], pager: &str) -> String {
    let mut t = format!("<h2>{title}</h2>{pager}<table id={id}><tr><th>device</th><th>last seen</th><th>policy version</th><th>agent</th><th>mode</th></tr>");
    for d in rows {
        let _ = write!(
            t,
            "<tr data-device=\"{dev}\"><td><a href=\"/admin/device/{}\">{dev}</a></td><td>{}</td><td class=n>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&pages::percent_encode(&d.device)),
            fmt_time(d.last_seen),
            d.policy_version.map_or("none".into(), |v| v.to_string()),
            esc(&d.agent_version),
            esc(&d.mode),
            dev = esc(&d.device),
        );
    }
    t.push_str("</table>");
    t
}

/// `/admin/`: the rule table a page at a time (rules some device must act on first), the
/// applied policies, charts for the page's matched rules, and the three device lists, each a
/// page at a time. Query: `page`, `rule` (id contains), `stale_page`, `old_page`, `devices_page`.
pub(crate) async fn admin_index(State(fleet): State<Arc<Fleet>>, req: Request) -> Response {
    if let Access::Denied(r) = admin_access(&fleet, &req) {
        return r;
    }
    let params =
        match pages::query_params(req.uri().query(), &["page", "rule", "stale_page", "old_page", "devices_page"]) {
            Ok(p) => p,
            Err(e) => return bad_query(e),
        };
    let page_of = |name: &str| pages::page_param(&params, name);
    let (page, stale_page, old_page, devices_page) =
        match (page_of("page"), page_of("stale_page"), page_of("old_page"), page_of("devices_page")) {
            (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
            (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => return bad_query(e),
        };
    let filter = params.get("rule").map(String::as_str).filter(|f| !f.is_empty());
    if filter.is_some_and(|f| f.len() > limits::ADMIN_FILTER_LEN) {
        return bad_query(format!("query parameter rule: longer than {} bytes", limits::ADMIN_FILTER_LEN));
    }
    let now = now_secs();
    let size = limits::ADMIN_PAGE_ROWS;
    let rules = match pages::Rules::load(&fleet.store, &fleet.rules, now).await {
        Ok(r) => r,
        Err(e) => return store_unreadable(e),
    };
    let table = rules.page(filter, page, size);
    let mut b = String::new();
    let _ = write!(
        b,
        "<p>{} devices · newest policy version reported: <b id=policy-version>{}</b> · generated {}</p>",
        rules.devices,
        rules.current_policy_version.map_or("none".into(), |v| v.to_string()),
        fmt_time(now)
    );
    b.push_str("<h2>Rules</h2>");
    let _ = write!(
        b,
        "<form method=get action=\"/admin/\"><label>Rule id contains <input id=rule-filter name=rule value=\"{}\" maxlength={}></label> \
         <button type=submit>Filter</button>{}</form>",
        esc(filter.unwrap_or("")),
        limits::ADMIN_FILTER_LEN,
        if filter.is_some() { " <a id=rules-unfiltered href=\"/admin/\">all rules</a>" } else { "" }
    );
    let what = match filter {
        Some(f) => format!("rules whose id contains “{}”", esc(f)),
        None => "rules".into(),
    };
    let _ = write!(
        b,
        "<p>Rules with devices still installed, pending or failed come first (<span id=rules-attention>{}</span> of them, most such devices first), then every other rule by id.</p>",
        table.attention
    );
    b.push_str(&pager("rules", "/admin/", &params, "page", page, table.total, &what));
    b.push_str("<table id=rules><tr><th>rule</th><th>since policy</th><th>in</th><th>compliant</th><th>still installed</th><th>removal pending</th><th>failed / needs admin</th></tr>");
    for r in &table.rows {
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
    if table.rows.len() as u64 == size {
        b.push_str(&pager("rules-bottom", "/admin/", &params, "page", page, table.total, &what));
    }
    b.push_str("<h2>Policies applied</h2><table id=policies><tr><th>version</th><th>rules</th><th>devices</th><th>sha256</th></tr>");
    for p in rules.policies() {
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
    let unknown = rules.devices_policy_unknown();
    if unknown > 0 {
        let _ = write!(
            b,
            "<p>{unknown} devices apply a policy this server's repository does not hold: their rules are known only from their matches.</p>",
        );
    }
    // Charts for this page's rules with a history (a rule never matched is all compliant), at
    // most ADMIN_PAGE_CHARTS: each reads the rule's whole state history.
    let charted: Vec<&summary::RuleSummary> = table.rows.iter().filter(|r| r.matched).collect();
    if !charted.is_empty() {
        let first_seen = match fleet.rules.first_seen(&fleet.store).await {
            Ok(f) => f,
            Err(e) => return store_unreadable(e),
        };
        let known = |t: u64| first_seen.partition_point(|&f| f <= t) as u64;
        for r in charted.iter().take(limits::ADMIN_PAGE_CHARTS) {
            let series = match summary::series(&fleet.store, &r.rule, r.first_seen, now, known).await {
                Ok(s) => s,
                Err(e) => return store_unreadable(e),
            };
            let r = summary::RuleSummary { series, ..(*r).clone() };
            let _ = write!(b, "<h3>{} since {}</h3>{}", esc(&r.rule), fmt_time(r.first_seen), chart_svg(&r));
        }
        if charted.len() > limits::ADMIN_PAGE_CHARTS {
            let _ = write!(
                b,
                "<p id=charts-more>{} more matched rules on this page have a chart; filter by rule id to see one.</p>",
                charted.len() - limits::ADMIN_PAGE_CHARTS
            );
        }
    }
    let stale_after = fleet.staleness.interval_secs.saturating_mul(fleet.staleness.intervals);
    let lists = [
        (
            "stale",
            "stale_page",
            stale_page,
            DeviceList::SeenBefore(now.saturating_sub(stale_after)),
            format!("Stale devices (not seen for more than {stale_after} s)"),
        ),
        (
            "old-policy",
            "old_page",
            old_page,
            // With no policy reported, no device is on an old one.
            rules.current_policy_version.map_or(DeviceList::SeenBefore(0), DeviceList::PolicyBelow),
            "Devices on an old policy version".to_owned(),
        ),
        ("devices", "devices_page", devices_page, DeviceList::All, "All devices".to_owned()),
    ];
    for (id, key, page, list, title) in lists {
        let (total, rows) = match (
            fleet.store.devices_count(list).await,
            fleet.store.devices_page(list, (page - 1) * size, size).await,
        ) {
            (Ok(t), Ok(r)) => (t, r),
            (Err(e), _) | (_, Err(e)) => return store_unreadable(e),
        };
        let p = pager(id, "/admin/", &params, key, page, total, "devices");
        b.push_str(&device_table(id, &title, &rows, &p));
    }
    b.push_str("<h2>Exports</h2><p>Complete tables (streamed downloads, not paged): ");
    for t in ["rules", "policies", "devices", "device_rules", "stale", "old_policy"] {
        let _ =
            write!(b, "{t}: <a href=\"/admin/export/{t}.csv\">CSV</a> <a href=\"/admin/export/{t}.json\">JSON</a> · ");
    }
    b.push_str("</p>");
    html(page_html("embargo — fleet compliance", &b))
}

/// `/admin/device/<id>`: the device, its rules (non-compliant first) and its timeline (newest
/// first), each a page at a time. Query: `rules_page`, `timeline_page`.
pub(crate) async fn admin_device(
    State(fleet): State<Arc<Fleet>>,
    UrlPath(device): UrlPath<String>,
    req: Request,
) -> Response {
    if let Access::Denied(r) = admin_access(&fleet, &req) {
        return r;
    }
    let params = match pages::query_params(req.uri().query(), &["rules_page", "timeline_page"]) {
        Ok(p) => p,
        Err(e) => return bad_query(e),
    };
    let (rules_page, timeline_page) =
        match (pages::page_param(&params, "rules_page"), pages::page_param(&params, "timeline_page")) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return bad_query(e),
        };
    let d = match fleet.store.device(&device).await {
        Ok(Some(d)) => d,
        Ok(None) => return text(StatusCode::NOT_FOUND, format!("no device {device:?}")),
        Err(e) => return store_unreadable(e),
    };
    let size = limits::ADMIN_PAGE_ROWS;
    let store = &fleet.store;
    let (rules_total, rules, timeline_total, timeline) = match (
        store.device_rules_count(&device).await,
        store.device_rules_page(&device, (rules_page - 1) * size, size).await,
        store.timeline_count(&device).await,
        store.timeline_page(&device, (timeline_page - 1) * size, size).await,
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => return store_unreadable(e),
    };
    let path = format!("/admin/device/{}", pages::percent_encode(&device));
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
    b.push_str("<h2>Rules</h2>");
    b.push_str(&pager(
        "device-rules",
        &path,
        &params,
        "rules_page",
        rules_page,
        rules_total,
        "rules (not compliant first)",
    ));
    b.push_str("<table id=device-rules><tr><th>rule</th><th>state</th><th>since</th><th>apps</th></tr>");
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
    b.push_str("</table><h2>Timeline</h2>");
    b.push_str(&pager(
        "timeline",
        &path,
        &params,
        "timeline_page",
        timeline_page,
        timeline_total,
        "entries (newest first)",
    ));
    b.push_str("<table id=timeline><tr><th>time</th><th>what</th></tr>");
    for row in &timeline {
        let _ = write!(b, "<tr><td>{}</td><td>{}</td></tr>", fmt_time(row.at), esc(&row.what));
    }
    b.push_str("</table>");
    html(page_html(&format!("device {device}"), &b))
}

/// One export row: cells in the header's order.
type Row = Vec<String>;

/// Writes rows as CSV lines or JSON objects (after the first, with a leading comma).
struct Rows {
    header: &'static [&'static str],
    json: bool,
    first: bool,
}

impl Rows {
    fn push(&mut self, out: &mut String, row: Row) {
        if self.json {
            out.push_str(if self.first { "\n{" } else { ",\n{" });
            for (i, (h, v)) in self.header.iter().zip(row).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}:{}", serde_json::Value::from(*h), serde_json::Value::from(v));
            }
            out.push('}');
        } else {
            out.push_str(&row.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        self.first = false;
    }
}

const RULES_HEADER: &[&str] = &[
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
];
const POLICIES_HEADER: &[&str] = &["policy_version", "version", "fleet", "sha256", "rules", "devices"];
const DEVICES_HEADER: &[&str] = &[
    "policy_version",
    "device",
    "device_policy_version",
    "policy_sha256",
    "last_seen",
    "first_seen",
    "agent_version",
    "mode",
    "degraded",
];
const DEVICE_RULES_HEADER: &[&str] =
    &["policy_version", "device", "device_policy_version", "rule", "status", "since", "apps"];

/// `/admin/export/<table>.<csv|json>`; every row names the newest policy version reported.
/// Complete, and streamed: the rows are read from the store and written out
/// `EXPORT_CHUNK_ROWS` at a time through a channel of two chunks, so memory stays bounded
/// whatever the table's size. A store error part way ends the response without its final chunk
/// (the client sees a truncated transfer, not a short file that looks complete).
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
    let json = match format {
        "csv" => false,
        "json" => true,
        _ => return text(StatusCode::NOT_FOUND, "exports are .csv or .json"),
    };
    let header = match table {
        "rules" => RULES_HEADER,
        "policies" => POLICIES_HEADER,
        "devices" | "stale" | "old_policy" => DEVICES_HEADER,
        "device_rules" => DEVICE_RULES_HEADER,
        _ => return text(StatusCode::NOT_FOUND, format!("no table {table:?}")),
    };
    let now = now_secs();
    let rules = match pages::Rules::load(&fleet.store, &fleet.rules, now).await {
        Ok(r) => r,
        Err(e) => return store_unreadable(e),
    };
    let current = rules.current_policy_version;
    let pv = current.map_or(String::new(), |v| v.to_string());
    let name = format!("embargo-{table}-policy-{}.{format}", if pv.is_empty() { "none" } else { &pv });
    let mut head = String::new();
    if json {
        let _ = write!(
            head,
            "{{\"table\":{},\"policy_version\":{},\"generated_at\":{},\"rows\":[",
            serde_json::Value::from(table),
            serde_json::to_string(&current).expect("json"),
            serde_json::Value::from(fmt_time(now))
        );
    } else {
        head = header.join(",") + "\n";
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(2);
    let stale_after = fleet.staleness.interval_secs.saturating_mul(fleet.staleness.intervals);
    let table = table.to_owned();
    let store = fleet.store.clone();
    tokio::spawn(async move {
        let mut w = Rows { header, json, first: true };
        let send = |chunk: String| {
            let tx = tx.clone();
            async move { tx.send(Ok(chunk)).await.is_ok() }
        };
        if !send(head).await {
            return;
        }
        let chunk = limits::EXPORT_CHUNK_ROWS;
        let result: Result<(), crate::store::StoreError> = async {
            match table.as_str() {
                "rules" => {
                    let mut after: Option<String> = None;
                    loop {
                        let ids: Vec<String> =
                            rules.ids_after(after.as_deref()).take(chunk as usize).map(str::to_owned).collect();
                        let Some(last) = ids.last().cloned() else { break };
                        let mut out = String::new();
                        for id in &ids {
                            let r = rules.row(id);
                            w.push(
                                &mut out,
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
                                ],
                            );
                        }
                        if !send(out).await {
                            return Ok(());
                        }
                        after = Some(last);
                    }
                }
                "policies" => {
                    let mut out = String::new();
                    for p in rules.policies() {
                        w.push(
                            &mut out,
                            vec![
                                pv.clone(),
                                p.version.to_string(),
                                p.fleet,
                                p.sha256,
                                p.rules.to_string(),
                                p.devices.to_string(),
                            ],
                        );
                    }
                    send(out).await;
                }
                "device_rules" => {
                    let mut after: Option<(String, String)> = None;
                    loop {
                        let rows = store
                            .device_rules_after(after.as_ref().map(|(r, d)| (r.as_str(), d.as_str())), chunk)
                            .await?;
                        let Some((last, _)) = rows.last() else { break };
                        after = Some((last.rule.clone(), last.device.clone()));
                        let mut out = String::new();
                        for (r, version) in rows {
                            w.push(
                                &mut out,
                                vec![
                                    pv.clone(),
                                    r.device.clone(),
                                    version.map_or(String::new(), |v| v.to_string()),
                                    r.rule.clone(),
                                    r.status.as_str().to_owned(),
                                    fmt_time(r.since),
                                    r.apps.iter().map(|a| format!("{}:{}", a.kind, a.id)).collect::<Vec<_>>().join(" "),
                                ],
                            );
                        }
                        if !send(out).await {
                            return Ok(());
                        }
                    }
                }
                devices => {
                    let list = match devices {
                        "stale" => DeviceList::SeenBefore(now.saturating_sub(stale_after)),
                        "old_policy" => current.map_or(DeviceList::SeenBefore(0), DeviceList::PolicyBelow),
                        _ => DeviceList::All,
                    };
                    let mut after: Option<String> = None;
                    loop {
                        let rows = store.devices_after(list, after.as_deref(), chunk).await?;
                        let Some(last) = rows.last() else { break };
                        after = Some(last.device.clone());
                        let mut out = String::new();
                        for d in rows {
                            w.push(
                                &mut out,
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
                                ],
                            );
                        }
                        if !send(out).await {
                            return Ok(());
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) if json => {
                send("\n]}\n".into()).await;
            }
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, table, "reading the fleet store for an export");
                let _ = tx.send(Err(std::io::Error::other(format!("export of {table} failed: {e}")))).await;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if json { "application/json" } else { "text/csv; charset=utf-8" }),
    );
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let disposition = format!("attachment; filename=\"{name}\"");
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
