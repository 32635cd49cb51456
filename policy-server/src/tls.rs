//! TLS: the server certificate, optional client certificates, and who a verified client is.
//!
//! Owns: building the rustls config and turning a connection's verified certificate chain into a
//! `Peer` — a device (issued by `--client-ca`) or an admin (issued by `--admin-ca`). A client
//! without a certificate may still fetch the repository (it is public, signed data); reports need
//! a device certificate and the admin view an admin certificate or a sign-in session.
//! **Invariant:** the device id comes only from a certificate that verified against the device
//! CA; nothing a client sends in a request body or header can set it.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;

use crate::ServerError;

/// Longest device id (the client certificate's subject common name).
pub const DEVICE_ID_LEN: usize = 128;

/// Who is on the other end of a connection, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// No client certificate.
    Anonymous,
    /// A certificate issued by the device CA; the id is its subject common name.
    Device(String),
    /// A certificate issued by the admin CA; the name is its subject common name.
    Admin(String),
}

/// The server's TLS setup: the rustls config and the verifiers that classify client certificates.
#[derive(Clone)]
pub struct TlsSetup {
    pub config: Arc<rustls::ServerConfig>,
    device: Option<Arc<dyn ClientCertVerifier>>,
    admin: Option<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup")
            .field("device_ca", &self.device.is_some())
            .field("admin_ca", &self.admin.is_some())
            .finish()
    }
}

fn tls_err(path: &Path, reason: impl ToString) -> ServerError {
    ServerError::Tls { path: path.display().to_string(), reason: reason.to_string() }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let bytes = std::fs::read(path).map_err(|e| tls_err(path, e))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &bytes[..]).collect();
    let certs = certs.map_err(|e| tls_err(path, e))?;
    if certs.is_empty() {
        return Err(tls_err(path, "no PEM certificate"));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(paths: &[&Path]) -> Result<rustls::RootCertStore, ServerError> {
    let mut store = rustls::RootCertStore::empty();
    for path in paths {
        for cert in read_certs(path)? {
            store.add(cert).map_err(|e| tls_err(path, e))?;
        }
    }
    Ok(store)
}

fn verifier(paths: &[&Path], optional: bool) -> Result<Arc<dyn ClientCertVerifier>, ServerError> {
    let store = Arc::new(roots(paths)?);
    let builder = WebPkiClientVerifier::builder_with_provider(store, provider());
    let builder = if optional { builder.allow_unauthenticated() } else { builder };
    builder.build().map_err(|e| tls_err(paths[0], e))
}

/// Loads a PEM certificate chain and private key; with `client_ca` and/or `admin_ca`, asks
/// clients for a certificate (optional at the TLS level) and verifies any one sent.
pub fn tls_setup(
    cert_pem: &Path,
    key_pem: &Path,
    client_ca: Option<&Path>,
    admin_ca: Option<&Path>,
) -> Result<TlsSetup, ServerError> {
    let certs = read_certs(cert_pem)?;
    let key_bytes = std::fs::read(key_pem).map_err(|e| tls_err(key_pem, e))?;
    let key = rustls_pemfile::private_key(&mut &key_bytes[..])
        .map_err(|e| tls_err(key_pem, e))?
        .ok_or_else(|| tls_err(key_pem, "no PEM private key"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(cert_pem, e))?;
    let cas: Vec<&Path> = client_ca.into_iter().chain(admin_ca).collect();
    let builder = if cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        builder.with_client_cert_verifier(verifier(&cas, true)?)
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| tls_err(cert_pem, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsSetup {
        config: Arc::new(config),
        device: client_ca.map(|p| verifier(&[p], false)).transpose()?,
        admin: admin_ca.map(|p| verifier(&[p], false)).transpose()?,
    })
}

/// Loads a PEM certificate chain and private key into a rustls server config without client
/// certificates.
pub fn tls_config(cert_pem: &Path, key_pem: &Path) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    Ok(tls_setup(cert_pem, key_pem, None, None)?.config)
}

impl TlsSetup {
    /// Classifies the chain a client presented (already verified by the handshake against the
    /// union of both CAs) by checking it against each CA alone. A certificate whose common name
    /// is missing or not a valid id is treated as no certificate.
    pub fn peer(&self, chain: Option<&[CertificateDer<'static>]>) -> Peer {
        let Some((end, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return Peer::Anonymous;
        };
        let now = UnixTime::now();
        let issued_by = |v: &Option<Arc<dyn ClientCertVerifier>>| {
            v.as_ref().is_some_and(|v| v.verify_client_cert(end, intermediates, now).is_ok())
        };
        let Some(name) = common_name(end) else {
            tracing::info!("client certificate without a usable subject common name; treated as anonymous");
            return Peer::Anonymous;
        };
        if issued_by(&self.admin) {
            Peer::Admin(name)
        } else if issued_by(&self.device) {
            Peer::Device(name)
        } else {
            Peer::Anonymous
        }
    }
}

/// Whether `id` may name a device: 1–128 characters from `A-Z a-z 0-9 . _ - : @`.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= DEVICE_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@'))
}

/// The subject common name of a DER certificate, if it is a valid device id.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    valid_device_id(&cn).then_some(cn)
}
