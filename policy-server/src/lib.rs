//! embargo-server: serves a policy repository directory over HTTPS, and optionally re-signs its
//! timestamp on a schedule.
//!
//! The server is not trusted by agents — they verify every document's signatures — so its job
//! is availability and good caching behaviour: content-addressed policies are immutable with
//! strong ETags and 304s; `timestamp.json` is `no-cache`; a root version that does not exist is
//! a 404 (which is how agents learn the chain has ended). Only the repository's own path shapes
//! are served, checked literally (no decoding, no normalization), so no request can reach a
//! file outside the repository.
#![forbid(unsafe_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use embargo_policy::keys::SigningKey;
use embargo_policy::metadata::{limits, Time};
use embargo_policy::transport::is_repository_path;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{path}: {reason}")]
    Tls { path: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Loads a PEM certificate chain and private key into a rustls server config (ring provider).
pub fn tls_config(cert_pem: &Path, key_pem: &Path) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| ServerError::Tls { path: p.display().to_string(), reason: e.to_string() })
    };
    let cert_bytes = read(cert_pem)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &cert_bytes[..]).collect();
    let certs = certs.map_err(|e| ServerError::Tls { path: cert_pem.display().to_string(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(ServerError::Tls { path: cert_pem.display().to_string(), reason: "no PEM certificate".into() });
    }
    let key_bytes = read(key_pem)?;
    let key = rustls_pemfile::private_key(&mut &key_bytes[..])
        .map_err(|e| ServerError::Tls { path: key_pem.display().to_string(), reason: e.to_string() })?
        .ok_or_else(|| ServerError::Tls { path: key_pem.display().to_string(), reason: "no PEM private key".into() })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls { path: cert_pem.display().to_string(), reason: e.to_string() })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls { path: cert_pem.display().to_string(), reason: e.to_string() })?;
    Ok(Arc::new(config))
}

/// Re-signing of timestamp.json on a schedule.
#[derive(Debug)]
pub struct TimestampSigner {
    pub key: SigningKey,
    /// How long each timestamp is valid; it is re-signed every quarter of this.
    pub ttl: Duration,
}

#[derive(Clone)]
struct AppState {
    repo: Arc<PathBuf>,
}

/// Serves `repo` on `listener` with `tls` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    repo: PathBuf,
    signer: Option<TimestampSigner>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let app = axum::Router::new()
        .fallback(serve)
        .layer(axum::middleware::from_fn(log_request))
        .with_state(AppState { repo: Arc::new(repo.clone()) });
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let resigner = signer.map(|s| tokio::spawn(resign_loop(repo, s)));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    if let Some(task) = resigner {
        task.abort();
    }
    Ok(())
}

async fn resign_loop(repo: PathBuf, signer: TimestampSigner) {
    let every = (signer.ttl / 4).max(Duration::from_secs(1));
    loop {
        let (repo2, ttl) = (repo.clone(), signer.ttl);
        let key = &signer.key;
        match embargo_policy::repo::timestamp(&repo2, &[key], None, ttl, Time::now()) {
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
    tracing::info!(%method, %path, status = resp.status().as_u16(), micros = started.elapsed().as_micros() as u64, "request");
    resp
}

fn status(code: StatusCode, text: &'static str) -> Response {
    (code, [(header::CACHE_CONTROL, "no-store")], text).into_response()
}

async fn serve(State(state): State<AppState>, req: Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return status(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    let path = req.uri().path().trim_start_matches('/');
    // Checked literally: `..`, percent-escapes, doubled slashes and anything else that is not
    // one of the three repository shapes is refused before any file system access.
    if !is_repository_path(path) {
        return status(StatusCode::NOT_FOUND, "not a repository path\n");
    }
    let cap = if path == "timestamp.json" {
        limits::TIMESTAMP_BYTES
    } else if path.starts_with("root/") {
        limits::ROOT_BYTES
    } else {
        limits::POLICY_BYTES
    };
    let file = state.repo.join(path);
    let immutable = path.starts_with("policy/");
    let etag = immutable.then(|| format!("\"{}\"", &path["policy/".len()..path.len() - ".json".len()]));
    if let Some(tag) = &etag {
        let matches = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
        if matches && file.is_file() {
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag.clone())]).into_response();
        }
    }
    let bytes = match tokio::task::spawn_blocking(move || embargo_policy::fsutil::read_capped(&file, cap)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return status(StatusCode::NOT_FOUND, "no such document\n")
        }
        Ok(Err(e)) => {
            tracing::error!(path, error = %e, "reading repository file");
            return status(StatusCode::INTERNAL_SERVER_ERROR, "cannot read document\n");
        }
        Err(_) => return status(StatusCode::INTERNAL_SERVER_ERROR, "cannot read document\n"),
    };
    let mut resp = Response::new(Body::from(bytes));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(tag) = etag {
        h.insert(header::ETAG, HeaderValue::from_str(&tag).expect("hex etag is a valid header"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    } else {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    resp
}
