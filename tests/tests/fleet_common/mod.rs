//! Helpers shared by the fleet tests: CAs and client certificates (rcgen), raw HTTP/1.1 over
//! mutual TLS, report bodies, a throwaway PostgreSQL cluster.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use embargo_e2e::{free_port, have, skip, TestCa};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA and certificates it issues, as PEM files.
pub struct Issuer {
    pub ca: rcgen::Certificate,
    pub key: rcgen::KeyPair,
    pub pem: PathBuf,
}

pub fn issuer(dir: &Path, name: &str) -> Issuer {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let ca = p.self_signed(&key).unwrap();
    let pem = dir.join(format!("{name}.pem"));
    std::fs::write(&pem, ca.pem()).unwrap();
    Issuer { ca, key, pem }
}

/// A client certificate with subject CN `cn`: (cert PEM, key PEM).
pub fn client_cert(by: &Issuer, cn: &str) -> (String, String) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &by.ca, &by.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn tls_client(ca: &TestCa, identity: Option<&(String, String)>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca.ca_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).map(|c| c.unwrap()).collect();
            b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()).unwrap()
        }
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One HTTP/1.1 exchange over a new TLS connection: (status, head, body).
pub fn http(
    port: u16,
    client: &tokio_rustls::TlsConnector,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, String, String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut s = client.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
        // A caller may declare its own Content-Length (to test a refusal without sending it all).
        let length = if headers.to_ascii_lowercase().contains("content-length:") {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        let head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{length}{headers}\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_owned()
        };
        (status, head.to_owned(), body)
    })
}

/// The payload of a chunked HTTP/1.1 body (streamed responses such as the exports). A body
/// that ends before its last (empty) chunk is a failed transfer: it panics.
pub fn dechunk(body: &str) -> String {
    let mut out = Vec::new();
    let mut rest = body.as_bytes();
    loop {
        let line = rest.iter().position(|&b| b == b'\n').unwrap_or_else(|| panic!("truncated chunked body"));
        let size = String::from_utf8_lossy(&rest[..line]);
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).expect("a chunk size");
        rest = &rest[line + 1..];
        if size == 0 {
            return String::from_utf8_lossy(&out).into_owned();
        }
        assert!(rest.len() >= size + 2, "truncated chunked body");
        out.extend_from_slice(&rest[..size]);
        rest = rest[size..].strip_prefix(b"\r\n").expect("CRLF after a chunk");
    }
}

pub fn report(device: &str, sequence: u64, policy_version: u64, rules: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "version": 1,
        "device": device,
        "sequence": sequence,
        "at": 1_790_000_000u64 + sequence,
        "agent_version": "0.1.0",
        "mode": "enforce",
        "policy": {"fleet": "gov-test", "version": policy_version, "sha256": "ab".repeat(32), "applied_at": 1_790_000_000u64},
        "health": {"degraded": false, "reasons": []},
        "rules": rules,
        "events": [{"seq": sequence, "at": 1_790_000_000u64, "kind": "quarantine", "rule": "wechat", "detail": "moved WeChat.AppImage"}],
        "gap": null
    }))
    .unwrap()
}

pub fn wechat(state: &str) -> serde_json::Value {
    json!([{"rule": "wechat", "apps": [{"kind": "appimage", "id": "wechat", "version": "4.0",
        "path": "/home/alice/Downloads/WeChat.AppImage", "state": state, "found_at": 1_790_000_000u64,
        "since": 1_790_000_001u64, "detail": null}]}])
}

/// A throwaway PostgreSQL cluster, run as `nobody` when we are root; stopped on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    pub url: String,
    as_nobody: bool,
}

pub fn pg_bin(name: &str) -> Option<PathBuf> {
    if have(name) {
        return Some(PathBuf::from(name));
    }
    let p = PathBuf::from("/usr/lib/postgresql/15/bin").join(name);
    p.exists().then_some(p)
}

pub fn pg_command(bin: &Path, as_nobody: bool) -> Command {
    if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

impl Postgres {
    pub fn start() -> Option<Postgres> {
        Self::start_with("")
    }

    /// The server log (`pg_ctl -l`), e.g. with `-c log_statement=all`.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Starts a cluster with `extra` server options (`-c name=value …`).
    pub fn start_with(extra: &str) -> Option<Postgres> {
        let (Some(initdb), Some(pg_ctl)) = (pg_bin("initdb"), pg_bin("pg_ctl")) else {
            skip("needs PostgreSQL (initdb, pg_ctl)");
            return None;
        };
        let as_nobody = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
        if as_nobody && !have("setpriv") {
            skip("needs setpriv to run PostgreSQL as nobody");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        if as_nobody {
            let nobody = Command::new("id").args(["-u", "nobody"]).output().unwrap();
            let uid: u32 = String::from_utf8_lossy(&nobody.stdout).trim().parse().unwrap();
            std::os::unix::fs::chown(dir.path(), Some(uid), None).unwrap();
        }
        let data = dir.path().join("data");
        let out = pg_command(&initdb, as_nobody)
            .args(["-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off {extra}", dir.path().display());
        let out = pg_command(&pg_ctl, as_nobody)
            .args([
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                dir.path().join("log").to_str().unwrap(),
                "-w",
                "start",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
        Some(Postgres { url: format!("postgres://postgres@127.0.0.1:{port}/postgres"), dir, as_nobody })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(pg_ctl) = pg_bin("pg_ctl") {
            let data = self.dir.path().join("data");
            let _ = pg_command(&pg_ctl, self.as_nobody)
                .args(["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}
