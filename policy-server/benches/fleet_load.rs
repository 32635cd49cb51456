//! Fleet load bench: the real `embargo-server` process on loopback, N simulated agents each with
//! its own client certificate. Bounded in count and time; stops by itself.
//!
//! `cargo bench -p embargo-server --bench fleet_load`
//! Environment: `EMBARGO_BENCH_AGENTS` (default 10000), `EMBARGO_BENCH_SECS` (seconds per timed
//! phase, default 5), `EMBARGO_BENCH_DB` (`sqlite`, default, or a `postgres://…` URL).
//!
//! Phases:
//! 1. `304s on open connections`: 64 keep-alive connections poll `timestamp.json` with its ETag.
//! 2. `syncs`: every agent once, as the agent does it — a new mutual-TLS connection, the timestamp
//!    poll (304), one report, close — 64 at a time. Handshakes/s counted apart from requests/s.
//! 3. `reports on open connections`: 1,000 agents each holding a connection post 8 reports (within
//!    the per-device burst of 10), 32 in flight at once.
//!
//! Client and server share the machine's cores, so every rate is a floor for the server alone.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embargo_policy::report::{self, AppState, AppStatus, AppliedPolicy, Health, Mode, Report, RuleState};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Pki {
    ca_pem: String,
    roots: rustls::RootCertStore,
    device_ca: rcgen::Certificate,
    device_key: rcgen::KeyPair,
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    (p.self_signed(&key).unwrap(), key)
}

fn setup_pki(dir: &Path) -> Pki {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let (server_ca, server_ca_key) = ca("bench server CA");
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = p.signed_by(&key, &server_ca, &server_ca_key).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let (device_ca, device_key) = ca("bench device CA");
    std::fs::write(dir.join("devices.pem"), device_ca.pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.der().clone()).unwrap();
    Pki { ca_pem: server_ca.pem(), roots, device_ca, device_key }
}

fn device_config(pki: &Pki, id: &str) -> Arc<rustls::ClientConfig> {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, id);
    let cert = p.signed_by(&key, &pki.device_ca, &pki.device_key).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots.clone())
        .with_client_auth_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    Arc::new(config)
}

fn report_body(device: &str, sequence: u64) -> Vec<u8> {
    Report {
        version: report::REPORT_VERSION,
        device: device.into(),
        sequence,
        at: 1_790_000_000 + sequence,
        agent_version: "0.1.0".into(),
        mode: Mode::Enforce,
        policy: Some(AppliedPolicy {
            fleet: "bench".into(),
            version: 3,
            sha256: "ab".repeat(32),
            applied_at: 1_790_000_000,
        }),
        health: Health { degraded: false, reasons: vec![] },
        rules: vec![RuleState {
            rule: "wechat".into(),
            apps: vec![AppState {
                kind: "appimage".into(),
                id: "wechat".into(),
                version: Some("4.0".into()),
                path: Some("/home/user/Downloads/WeChat.AppImage".into()),
                state: if sequence % 2 == 0 { AppStatus::Quarantined } else { AppStatus::Found },
                found_at: 1_790_000_000,
                since: 1_790_000_000 + sequence,
                detail: None,
            }],
        }],
        events: vec![],
        gap: None,
    }
    .to_bytes()
}

/// Reads one HTTP/1.1 response; returns (status, etag).
async fn read_response(r: &mut BufReader<Tls>) -> (u16, Option<String>) {
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut len, mut etag) = (0usize, None);
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("etag:") {
            etag = Some(l[5..].trim().to_owned());
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.unwrap();
    (status, etag)
}

async fn connect(port: u16, config: Arc<rustls::ClientConfig>) -> BufReader<Tls> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config).connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    BufReader::new(tls)
}

async fn poll(s: &mut BufReader<Tls>, etag: &str) -> u16 {
    let req = format!("GET /timestamp.json HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: {etag}\r\n\r\n");
    s.get_mut().write_all(req.as_bytes()).await.unwrap();
    read_response(s).await.0
}

async fn post(s: &mut BufReader<Tls>, body: &[u8]) -> u16 {
    let head = format!(
        "POST /v1/reports HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body);
    s.get_mut().write_all(&msg).await.unwrap();
    read_response(s).await.0
}

fn percentiles(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    format!("p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", p(0.5), p(0.99), p(1.0))
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

fn dir_size(path: &Path, prefix: &str) -> u64 {
    std::fs::read_dir(path)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let agents = env_u64("EMBARGO_BENCH_AGENTS", 10_000).clamp(1, 100_000) as usize;
    let secs = env_u64("EMBARGO_BENCH_SECS", 5).clamp(1, 60);
    let db = std::env::var("EMBARGO_BENCH_DB").unwrap_or_else(|_| "sqlite".into());
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join("root")).unwrap();
    // The server serves bytes; agents verify them. Content does not change the server's cost.
    std::fs::write(repo.join("root/1.json"), vec![b' '; 2048]).unwrap();
    std::fs::write(repo.join("timestamp.json"), vec![b' '; 900]).unwrap();
    let pki = setup_pki(tmp.path());
    let _ = &pki.ca_pem;
    let database =
        if db == "sqlite" { format!("sqlite://{}", tmp.path().join("fleet.db").display()) } else { db.clone() };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = |n: &str| tmp.path().join(n).to_str().unwrap().to_owned();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_embargo-server"))
        .args(["--repo", repo.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .args(["--tls-cert", &d("server.pem"), "--tls-key", &d("server.key"), "--client-ca", &d("devices.pem")])
        .args(["--database", &database, "--max-connections", "4096", "--max-connections-per-ip", "4096"])
        .env("EMBARGO_LOG", "warn")
        .spawn()
        .expect("start embargo-server");
    let pid = server.id();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("making {agents} device certificates…");
    let configs: Vec<Arc<rustls::ClientConfig>> =
        (0..agents).map(|i| device_config(&pki, &format!("device-{i:06}"))).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("fleet_load: {agents} agents, database {}", if db == "sqlite" { "SQLite" } else { "PostgreSQL" });

    rt.block_on(async {
        // The timestamp's ETag, as an agent learns it from its first poll.
        let mut s = connect(port, configs[0].clone()).await;
        s.get_mut().write_all(b"GET /timestamp.json HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let (code, etag) = read_response(&mut s).await;
        assert_eq!(code, 200);
        let etag = Arc::new(etag.expect("timestamp ETag"));
        drop(s);

        // Phase 1: 304s on open connections.
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64 {
            let (config, etag) = (configs[i % agents].clone(), etag.clone());
            tasks.spawn(async move {
                let mut s = connect(port, config).await;
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    assert_eq!(poll(&mut s, &etag).await, 304);
                    lat.push(t.elapsed());
                }
                lat
            });
        }
        let t0 = Instant::now();
        let mut lat = Vec::new();
        while let Some(l) = tasks.join_next().await {
            lat.extend(l.unwrap());
        }
        let el = t0.elapsed().as_secs_f64();
        println!("304s on open connections: {:.0}/s over {} requests ({})", lat.len() as f64 / el, lat.len(), percentiles(lat));

        // Phase 2: one sync per agent: handshake, 304 poll, report, close.
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let configs = Arc::new(configs);
        let deadline = Instant::now() + Duration::from_secs(secs * 12);
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (next, configs, etag) = (next.clone(), configs.clone(), etag.clone());
            tasks.spawn(async move {
                let (mut hs, mut rep) = (Vec::new(), Vec::new());
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= configs.len() || Instant::now() > deadline {
                        return (hs, rep);
                    }
                    let t = Instant::now();
                    let mut s = connect(port, configs[i].clone()).await;
                    hs.push(t.elapsed());
                    assert_eq!(poll(&mut s, &etag).await, 304);
                    let t = Instant::now();
                    let code = post(&mut s, &report_body(&format!("device-{i:06}"), 1)).await;
                    assert_eq!(code, 200, "report of device-{i:06}");
                    rep.push(t.elapsed());
                }
            });
        }
        let (mut hs, mut rep) = (Vec::new(), Vec::new());
        while let Some(r) = tasks.join_next().await {
            let (h, r) = r.unwrap();
            hs.extend(h);
            rep.extend(r);
        }
        let el = t0.elapsed().as_secs_f64();
        let synced = rep.len();
        println!(
            "syncs (new mTLS connection + 304 + report): {} agents in {:.2} s: {:.0} handshakes/s, {:.0} requests/s; handshake {}; report {}",
            hs.len(),
            el,
            hs.len() as f64 / el,
            2.0 * rep.len() as f64 / el,
            percentiles(hs),
            percentiles(rep)
        );

        // Phase 3: reports on open connections (ingest without handshakes).
        let holders = synced.min(1000);
        let mut conns = Vec::new();
        for (i, config) in configs.iter().enumerate().take(holders) {
            conns.push((i, connect(port, config.clone()).await));
        }
        // 32 in flight at once: the latency is the server's, not a queue the bench made.
        let in_flight = Arc::new(tokio::sync::Semaphore::new(32));
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, mut s) in conns {
            let in_flight = in_flight.clone();
            tasks.spawn(async move {
                let mut lat = Vec::new();
                for seq in 2..10 {
                    let _slot = in_flight.acquire().await.unwrap();
                    let t = Instant::now();
                    assert_eq!(post(&mut s, &report_body(&format!("device-{i:06}"), seq)).await, 200);
                    lat.push(t.elapsed());
                }
                lat
            });
        }
        let mut lat = Vec::new();
        while let Some(l) = tasks.join_next().await {
            lat.extend(l.unwrap());
        }
        let el = t0.elapsed().as_secs_f64();
        println!(
            "reports on open connections: {:.0}/s over {} reports from {holders} devices ({})",
            lat.len() as f64 / el,
            lat.len(),
            percentiles(lat)
        );
        println!(
            "server RSS: {} KiB now, {} KiB peak (VmHWM)",
            status_kib(pid, "VmRSS:"),
            status_kib(pid, "VmHWM:")
        );
        if db == "sqlite" {
            let bytes = dir_size(tmp.path(), "fleet.db");
            println!(
                "SQLite size: {} KiB for {synced} devices ({:.1} MiB per 10,000 devices, with history of {} reports)",
                bytes / 1024,
                bytes as f64 / 1048576.0 * 10_000.0 / synced.max(1) as f64,
                synced + holders * 8
            );
        }
    });
    let _ = server.kill();
    let _ = server.wait();
}
