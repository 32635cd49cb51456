//! The hardened HTTPS transport (reqwest on rustls with the ring provider).
//!
//! Transport trust is defence in depth — signatures are the integrity anchor — but a device agent
//! still refuses what a careful client refuses: https only; only the configured CA when one is
//! set (else the system bundle); optional client certificate; no redirects; no proxies from the
//! environment; no content decoding (reqwest is built without gzip/brotli, so byte caps count
//! what is on the wire); connect, per-read and total timeouts; a minimum transfer rate; and byte
//! caps enforced while streaming, whatever Content-Length says.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::transport::{Fetch, FetchError};

/// Settings for [`HttpsTransport`].
#[derive(Debug, Clone)]
pub struct HttpsOptions {
    /// Base URL of the repository; must be https and end with `/`.
    pub base: String,
    /// PEM bundle of the only CAs to trust. `None`: the system bundle.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate chain and PEM private key of the device, for mTLS.
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub total_timeout: Duration,
    /// Below this many bytes per second (after a grace period) a download is abandoned.
    pub min_bytes_per_sec: u64,
}

impl HttpsOptions {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            ca_pem: None,
            client_identity: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(15),
            total_timeout: Duration::from_secs(60),
            min_bytes_per_sec: 1024,
        }
    }
}

/// Grace period before the minimum rate applies (TLS handshake, small documents).
const RATE_GRACE: Duration = Duration::from_secs(5);
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, Clone)]
pub struct HttpsTransport {
    client: reqwest::Client,
    opts: HttpsOptions,
}

fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &pem[..]).collect();
    let certs = certs.map_err(|e| format!("{what}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no PEM certificate found"));
    }
    Ok(certs)
}

impl HttpsTransport {
    pub fn new(opts: HttpsOptions) -> Result<Self, String> {
        if !opts.base.starts_with("https://") {
            return Err(format!("repository URL {:?} is not https://", opts.base));
        }
        if !opts.base.ends_with('/') {
            return Err(format!("repository URL {:?} must end with '/'", opts.base));
        }
        let mut roots = rustls::RootCertStore::empty();
        let (pem, what) = match &opts.ca_pem {
            Some(p) => (p.clone(), "configured CA"),
            None => {
                (std::fs::read(SYSTEM_CA_BUNDLE).map_err(|e| format!("{SYSTEM_CA_BUNDLE}: {e}"))?, SYSTEM_CA_BUNDLE)
            }
        };
        for cert in certs_from_pem(&pem, what)? {
            roots.add(cert).map_err(|e| format!("{what}: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let tls = match &opts.client_identity {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let certs = certs_from_pem(cert_pem, "client certificate")?;
                let key = rustls_pemfile::private_key(&mut &key_pem[..])
                    .map_err(|e| format!("client key: {e}"))?
                    .ok_or("client key: no PEM private key found")?;
                builder.with_client_auth_cert(certs, key).map_err(|e| format!("client certificate: {e}"))?
            }
        };
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .timeout(opts.total_timeout)
            .user_agent(concat!("embargo/", env!("CARGO_PKG_VERSION")))
            // No idle connections kept between syncs: a pooled connection would keep TLS state
            // resident and a pool timer waking the idle agent. Most syncs make one request (the
            // timestamp); a policy change costs one more handshake.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { client, opts })
    }

    fn transport_error(url: &str, e: &reqwest::Error) -> FetchError {
        if e.is_timeout() {
            return FetchError::Timeout { url: url.into(), what: "connect, read or total deadline" };
        }
        // Show the whole chain: the TLS reason (e.g. UnknownIssuer) is in a source error.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        FetchError::Transport { url: url.into(), message }
    }
}

/// A response to [`HttpsTransport::post_json`].
#[derive(Debug)]
pub struct PostResponse {
    pub status: u16,
    /// `Retry-After` in seconds, when the server sent one.
    pub retry_after: Option<u64>,
    /// At most the `max_len` first bytes of the body.
    pub body: Vec<u8>,
}

impl HttpsTransport {
    /// POSTs `body` as JSON to the base URL + `path` (the fleet server's report endpoint), with
    /// the same TLS settings and timeouts as a fetch. Every status is returned to the caller.
    pub async fn post_json(&self, path: &str, body: Vec<u8>, max_len: u64) -> Result<PostResponse, FetchError> {
        let url = format!("{}{}", self.opts.base, path);
        let mut resp = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| Self::transport_error(&url, &e))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| Self::transport_error(&url, &e))? {
            let room = (max_len as usize).saturating_sub(out.len());
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if room <= chunk.len() {
                break;
            }
        }
        Ok(PostResponse { status, retry_after, body: out })
    }
}

impl Fetch for HttpsTransport {
    async fn fetch(&self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>, FetchError> {
        let url = format!("{}{}", self.opts.base, path);
        let started = Instant::now();
        let mut resp = self.client.get(&url).send().await.map_err(|e| Self::transport_error(&url, &e))?;
        let status = resp.status();
        if status.is_redirection() {
            let location =
                resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            return Err(FetchError::Redirect { url, location });
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            if let Some(seconds) = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                return Err(FetchError::RetryAfter { url, status: status.as_u16(), seconds });
            }
        }
        if !status.is_success() {
            return Err(FetchError::Status { url, status: status.as_u16() });
        }
        if resp.content_length().is_some_and(|n| n > max_len) {
            return Err(FetchError::TooLarge { url, limit: max_len });
        }
        let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0).min(max_len) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| Self::transport_error(&url, &e))? {
            if body.len() as u64 + chunk.len() as u64 > max_len {
                return Err(FetchError::TooLarge { url, limit: max_len });
            }
            body.extend_from_slice(&chunk);
            let elapsed = started.elapsed();
            if elapsed > RATE_GRACE && (body.len() as u64) < self.opts.min_bytes_per_sec * elapsed.as_secs() {
                return Err(FetchError::SlowRetrieval { url, bytes: body.len() as u64, seconds: elapsed.as_secs() });
            }
        }
        Ok(Some(body))
    }
}
