//! embargo-server over real TLS (a test CA made with rcgen), fetched with the agent's own
//! hardened HTTPS transport and with raw requests.

use std::time::Duration;

use embargo_e2e::*;
use embargo_policy::https::{HttpsOptions, HttpsTransport};
use embargo_policy::transport::{Fetch, FetchError};
use embargo_policy::trust::{TrustedState, UpdateOutcome};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn transport(url: &str, ca: &TestCa) -> HttpsTransport {
    let mut opts = HttpsOptions::new(url);
    opts.ca_pem = Some(std::fs::read(&ca.ca_pem).unwrap());
    HttpsTransport::new(opts).unwrap()
}

/// Sends one raw HTTP/1.1 request over TLS and returns the response head and body as text.
async fn raw_request(port: u16, ca: &TestCa, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&ca.ca_pem).unwrap();
    for c in rustls_pemfile_certs(&pem) {
        roots.add(c).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut tls = connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).map(|c| c.unwrap()).collect()
}

#[test]
fn serves_root_timestamp_policy_with_caching_and_refuses_escapes() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path(), embargo_policy::example::WECHAT_KASPERSKY_TOML);
    let ca = test_ca(tmp.path());
    let (_server, url) = start_server(&repo.dir, &ca, &[]);
    let port: u16 = url.trim_end_matches('/').rsplit(':').next().unwrap().parse().unwrap();
    let rt = rt();
    let t = transport(&url, &ca);

    // The whole client update over TLS.
    let anchor = std::fs::read(&repo.anchor).unwrap();
    let mut state = TrustedState::from_anchor(&anchor).unwrap();
    let outcome = rt.block_on(state.update(&t, embargo_policy::metadata::Time::now(), &[])).unwrap();
    assert!(matches!(outcome, UpdateOutcome::NewPolicy(ref p) if p.len() == 2));
    let sha = state.policy().unwrap().sha256.clone();

    // Root v1 exists, v2 is a 404 (the end of the chain).
    assert!(rt.block_on(t.fetch("root/1.json", 65536)).unwrap().is_some());
    assert!(rt.block_on(t.fetch("root/2.json", 65536)).unwrap().is_none());

    // Caching headers.
    let head = rt.block_on(raw_request(
        port,
        &ca,
        "GET /timestamp.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("cache-control: no-cache"), "{head}");
    let req = format!("GET /policy/{sha}.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let first = rt.block_on(raw_request(port, &ca, &req));
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.to_ascii_lowercase().contains(&format!("etag: \"{sha}\"")), "{first}");
    assert!(first.to_ascii_lowercase().contains("immutable"), "{first}");
    let req = format!(
        "GET /policy/{sha}.json HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: \"{sha}\"\r\nConnection: close\r\n\r\n"
    );
    let second = rt.block_on(raw_request(port, &ca, &req));
    assert!(second.starts_with("HTTP/1.1 304"), "{second}");

    // No path escapes the repository.
    std::fs::write(tmp.path().join("secret.json"), "secret").unwrap();
    for path in [
        "/../secret.json",
        "/policy/../../secret.json",
        "/root/..%2f..%2fsecret.json",
        "/%2e%2e/secret.json",
        "//etc/passwd",
        "/root/1.json/../../../secret.json",
    ] {
        let resp = rt.block_on(raw_request(
            port,
            &ca,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        ));
        assert!(!resp.contains("secret"), "{path} leaked: {resp}");
        assert!(resp.starts_with("HTTP/1.1 404") || resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
    }
}

#[test]
fn a_server_outside_the_configured_ca_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path(), embargo_policy::example::WECHAT_KASPERSKY_TOML);
    let ca = test_ca(tmp.path());
    let (_server, url) = start_server(&repo.dir, &ca, &[]);
    let other = tempfile::tempdir().unwrap();
    let other_ca = test_ca(other.path());
    let t = transport(&url, &other_ca);
    let err = rt().block_on(t.fetch("timestamp.json", 16384)).unwrap_err();
    assert!(
        matches!(err, FetchError::Transport { ref message, .. } if message.contains("UnknownIssuer") || message.contains("certificate")),
        "{err}"
    );
    // http:// is refused by construction.
    assert!(HttpsTransport::new(HttpsOptions::new(url.replace("https", "http"))).is_err());
}

/// `--state FILE`: the server's re-signing keeps the signer state (last version signed, pinned
/// root) where it is told, as `embargo-policy timestamp --state` does, and leaves the default
/// state file beside the repository alone.
#[test]
fn the_server_keeps_the_signer_state_where_state_says() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path(), embargo_policy::example::WECHAT_KASPERSKY_TOML);
    let ca = test_ca(tmp.path());
    let default_state = embargo_policy::repo::default_signer_state(&repo.dir).unwrap();
    let default_before = std::fs::read(&default_state).ok();
    let state = tmp.path().join("signer/state.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    let key = repo.keys.join("timestamp.key");
    let (_server, url) = start_server(
        &repo.dir,
        &ca,
        &["--timestamp-key", key.to_str().unwrap(), "--timestamp-ttl", "4s", "--state", state.to_str().unwrap()],
    );
    let t = transport(&url, &ca);
    let rt = rt();
    let version_served = || -> Option<u64> {
        let bytes = rt.block_on(t.fetch("timestamp.json", 16384)).unwrap()?;
        let env = embargo_policy::dsse::Envelope::decode(&bytes).ok()?;
        Some(embargo_policy::metadata::Timestamp::parse(env.payload()).ok()?.version)
    };
    let initial = version_served().expect("the repository has a timestamp");
    // The state is written before timestamp.json: once the server re-signed, both agree.
    let written = eventually("a re-signing recorded in the state file", Duration::from_secs(10), || {
        let s: embargo_policy::repo::SignerState = serde_json::from_slice(&std::fs::read(&state).ok()?).ok()?;
        (s.last_version > initial && version_served() == Some(s.last_version)).then_some(s)
    });
    assert_eq!(written.root_version, 1, "{written:?}");
    assert_eq!(std::fs::read(&default_state).ok(), default_before, "the default state file was touched");
}

#[test]
fn the_server_re_signs_the_timestamp_on_a_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path(), embargo_policy::example::WECHAT_KASPERSKY_TOML);
    let ca = test_ca(tmp.path());
    let before = std::fs::read(repo.dir.join("timestamp.json")).unwrap();
    let key = repo.keys.join("timestamp.key");
    let (_server, url) =
        start_server(&repo.dir, &ca, &["--timestamp-key", key.to_str().unwrap(), "--timestamp-ttl", "4s"]);
    let t = transport(&url, &ca);
    let rt = rt();
    let first = eventually("a re-signed timestamp", Duration::from_secs(10), || {
        rt.block_on(t.fetch("timestamp.json", 16384)).unwrap().filter(|b| *b != before)
    });
    eventually("a second re-signing", Duration::from_secs(10), || {
        rt.block_on(t.fetch("timestamp.json", 16384)).unwrap().filter(|b| *b != first)
    });
    let anchor = std::fs::read(&repo.anchor).unwrap();
    let mut state = TrustedState::from_anchor(&anchor).unwrap();
    rt.block_on(state.update(&t, embargo_policy::metadata::Time::now(), &[])).unwrap();
}
