//! embargo-server: serves a policy repository directory over HTTPS, optionally re-signs its
//! timestamp on a schedule, and (with a device CA) takes agents' compliance reports.
//!
//! The server is not trusted by agents — they verify every document's signatures — so its job
//! is availability and good caching behaviour: content-addressed policies are immutable with
//! strong ETags and 304s; `timestamp.json` is `no-cache` with an ETag; a root version that does not
//! exist is a 404 (which is how agents learn the chain has ended). Only the repository's own path
//! shapes are served, checked literally (no decoding, no normalization), so no request can reach a
//! file outside the repository.
//!
//! Modules: `limits` (connection counts, I/O timeouts), `tls` (certificates and who a client is),
//! `files` (the repository documents, streamed), `store` (SQLite/PostgreSQL through sqlx),
//! `summary` (compliance counts and series), `pages` (the admin view's paged rule table and the
//! caches behind it), `web` (`/v1/reports` and `/admin/`), `upkeep` (the
//! repository's policy rule lists into the store, event retention; off the request path).
#![forbid(unsafe_code)]

pub mod files;
pub mod limits;
pub mod pages;
pub mod store;
pub mod summary;
pub mod tls;
pub mod upkeep;
pub mod web;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use embargo_policy::keys::SigningKey;
use embargo_policy::metadata::Time;
use tokio::net::TcpListener;

pub use limits::Limits;
pub use tls::{tls_config, tls_setup, Peer, TlsSetup};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{path}: {reason}")]
    Tls { path: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Re-signing of timestamp.json on a schedule.
#[derive(Debug)]
pub struct TimestampSigner {
    pub key: SigningKey,
    /// How long each timestamp is valid; it is re-signed every quarter of this.
    pub ttl: Duration,
    /// The signer's state file (last version signed, pinned root): `--state`, by default
    /// `repo::default_signer_state` (beside the repository directory, never inside it).
    pub state: PathBuf,
}

/// Everything `run` serves, validated by the binary.
#[derive(Debug)]
pub struct Options {
    pub repo: PathBuf,
    pub limits: Limits,
    pub signer: Option<TimestampSigner>,
    /// Reports and the admin view; none = the repository only.
    pub fleet: Option<Arc<web::Fleet>>,
}

impl Options {
    pub fn new(repo: PathBuf) -> Self {
        Options { repo, limits: Limits::default(), signer: None, fleet: None }
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) repo: Arc<PathBuf>,
}

/// Serves on `listener` with `tls` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    tls: TlsSetup,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let Options { repo, limits, signer, fleet } = options;
    let mut app = axum::Router::new().fallback(files::serve).with_state(AppState { repo: Arc::new(repo.clone()) });
    let mut upkeep = None;
    if let Some(fleet) = fleet {
        use axum::routing::{get, post};
        upkeep = Some(tokio::spawn(upkeep::run(repo.clone(), fleet.store.clone(), fleet.retention)));
        let fleet_routes = axum::Router::new()
            .route("/v1/reports", post(web::post_report))
            .route("/admin/", get(web::admin_index))
            .route("/admin/login", get(web::login_form).post(web::login))
            .route("/admin/logout", get(web::logout))
            .route("/admin/device/{device}", get(web::admin_device))
            .route("/admin/export/{file}", get(web::admin_export))
            .with_state(fleet);
        app = app.merge(fleet_routes);
    }
    let app = app.layer(axum::middleware::from_fn(log_request));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let gate = limits::ConnectionGate::new(&limits);
    let limits = Arc::new(limits);
    let tls = Arc::new(tls);
    let resigner = signer.map(|s| tokio::spawn(resign_loop(repo, s)));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer_addr) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over a bound: the connection is closed at once (dropped), before any TLS work.
        let Ok(permit) = gate.admit(peer_addr.ip()) else { continue };
        let (acceptor, app, limits, tls) = (acceptor.clone(), app.clone(), limits.clone(), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let io = limits::TimedIo::new(tcp, limits.idle_timeout, limits.write_timeout);
            let stream = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(io)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer_addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer_addr, "TLS handshake timed out");
                    return;
                }
            };
            let peer = tls.peer(stream.get_ref().1.peer_certificates());
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer.clone());
                let mut app = app.clone();
                async move {
                    use tower::Service as _;
                    app.call(req.map(axum::body::Body::new)).await
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(64 * 1024);
            if let Err(e) = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await {
                tracing::debug!(peer = %peer_addr, error = %e, "connection ended with an error");
            }
        });
    }
    for task in resigner.into_iter().chain(upkeep) {
        task.abort();
    }
    Ok(())
}

async fn resign_loop(repo: PathBuf, signer: TimestampSigner) {
    let every = (signer.ttl / 4).max(Duration::from_secs(1));
    loop {
        let key = &signer.key;
        match embargo_policy::repo::timestamp_with_state(&repo, &signer.state, &[key], None, signer.ttl, Time::now()) {
            Ok(ts) => {
                tracing::info!(version = ts.version, policy = ts.policy.version, expires = %ts.expires, "re-signed timestamp.json")
            }
            Err(e) => tracing::error!(error = %e, "re-signing timestamp.json failed"),
        }
        tokio::time::sleep(every).await;
    }
}

async fn log_request(req: Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    tracing::debug!(%method, %path, status = resp.status().as_u16(), micros = started.elapsed().as_micros() as u64, "request");
    resp
}

pub(crate) fn plain(code: StatusCode, text: &'static str) -> Response {
    (code, [(header::CACHE_CONTROL, "no-store")], text).into_response()
}
