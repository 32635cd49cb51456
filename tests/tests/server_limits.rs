//! One network client cannot take `embargo-server` down (issue 11, finding 5).
//!
//! The real server process on loopback, under hundreds of hostile connections at once — a flood
//! of silent TCP connections from one address, TLS connections that go idle, clients that trickle
//! a request header a byte at a time, and clients that request a 24 MiB policy and never read —
//! keeps answering a legitimate client from another address, stays under a stated peak RSS
//! (VmHWM of the server process), closes the flood beyond the per-address bound at once, and
//! closes every idle and slow connection within its timeouts. Attackers bind their own loopback
//! source addresses (127.0.0.0/8 is all loopback), so the per-address bound is exercised the way
//! it works against real clients.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embargo_e2e::*;
use embargo_policy::https::{HttpsOptions, HttpsTransport};
use embargo_policy::transport::Fetch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Peak RSS the server may reach during the whole attack. Streaming keeps a stalled 24 MiB
/// download to one 64 KiB chunk plus TLS buffers; before, each of the 60 non-reading clients
/// pinned a whole copy of the file (1.4 GiB here).
const SERVER_PEAK_RSS_KIB: u64 = 96 * 1024;

/// Server timeouts for this test, short so the test is bounded in time.
const TIMEOUT_SECS: u64 = 3;

fn connector(ca: &TestCa) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&ca.ca_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TCP connection to the server from the loopback source address `from`.
async fn connect_from(from: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))?;
    socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// Waits until the peer closes `stream` (EOF or error), up to `limit`; returns when it did.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn hundreds_of_slow_and_idle_clients_do_not_stop_a_legitimate_one() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path(), embargo_policy::example::WECHAT_KASPERSKY_TOML);
    // A large document in the repository. The server does not verify what it serves (agents
    // do), so for this test its content only needs a policy's name and size.
    let big_name = format!("policy/{}.json", "ab".repeat(32));
    std::fs::write(repo.dir.join(&big_name), vec![b' '; 24 << 20]).unwrap();
    let ca = test_ca(tmp.path());
    let t = TIMEOUT_SECS.to_string() + "s";
    let (server, url) = start_server(
        &repo.dir,
        &ca,
        &[
            "--max-connections-per-ip",
            "32",
            "--handshake-timeout",
            &t,
            "--header-timeout",
            &t,
            "--idle-timeout",
            &t,
            "--write-timeout",
            &t,
        ],
    );
    let pid = server.0.id();
    let port: u16 = url.trim_end_matches('/').rsplit(':').next().unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tls = connector(&ca);
    let timeouts = Duration::from_secs(TIMEOUT_SECS);
    // What the server may take beyond its own timeouts to close a connection: on two loaded
    // cores (the whole suite running, 860 connections in TLS handshakes against a debug build)
    // connections waiting in the accept queue took over 4 s to be reached in one `.ci/run`, and
    // 42 of the flood were still open after 13 s in another (2026-11-30; alone, the test passes
    // in 5.4 s). The test still fails when the server never closes one.
    let slack = Duration::from_secs(30);

    rt.block_on(async move {
        let mut attacks = tokio::task::JoinSet::new();
        // 1. A flood of 400 silent TCP connections from one address: 32 are admitted (and closed
        //    by the handshake timeout), the rest closed at accept.
        for _ in 0..400 {
            attacks.spawn(async move {
                let mut s = connect_from("127.0.0.2", port).await.unwrap();
                ("flood", closed_within(&mut s, timeouts + slack).await)
            });
        }
        // 2. 300 TLS connections that go idle after the handshake, from ten addresses.
        for i in 0..300 {
            let tls = tls.clone();
            attacks.spawn(async move {
                let tcp = connect_from(&format!("127.0.0.{}", 3 + i % 10), port).await.unwrap();
                let mut s = tls.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
                ("idle", closed_within(&mut s, timeouts + slack).await)
            });
        }
        // 3. 100 clients trickling a request header, one byte every 300 ms (slowloris).
        for i in 0..100 {
            let tls = tls.clone();
            attacks.spawn(async move {
                let tcp = connect_from(&format!("127.0.1.{}", 1 + i % 5), port).await.unwrap();
                let s = tls.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
                let (mut r, mut w) = tokio::io::split(s);
                let trickle = tokio::spawn(async move {
                    for b in
                        b"GET /timestamp.json HTTP/1.1\r\nHost: localhost\r\nX-Slow: ".iter().chain([b'a'; 200].iter())
                    {
                        if w.write_all(&[*b]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                });
                let closed = closed_within(&mut r, timeouts + slack).await;
                trickle.abort();
                ("slow header", closed)
            });
        }
        // 4. 60 clients requesting the 24 MiB document and never reading the response.
        for i in 0..60 {
            let tls = tls.clone();
            let req = format!("GET /{big_name} HTTP/1.1\r\nHost: localhost\r\n\r\n");
            attacks.spawn(async move {
                let tcp = connect_from(&format!("127.0.2.{}", 1 + i % 3), port).await.unwrap();
                let mut s = tls.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
                s.write_all(req.as_bytes()).await.unwrap();
                // Never read; wait past the write timeout, then see that the server gave up.
                tokio::time::sleep(timeouts + Duration::from_secs(2)).await;
                let mut sink = vec![0u8; 1 << 20];
                let deadline = tokio::time::Instant::now() + slack + Duration::from_secs(4);
                let closed = loop {
                    match tokio::time::timeout_at(deadline, s.read(&mut sink)).await {
                        Err(_) => break None,
                        Ok(Ok(0)) | Ok(Err(_)) => break Some(Duration::ZERO),
                        Ok(Ok(_)) => continue,
                    }
                };
                ("stalled download", closed)
            });
        }

        // The legitimate client, from 127.0.0.1, with the agent's own HTTPS transport, while the
        // attackers hold their connections.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut opts = HttpsOptions::new(url.clone());
        opts.ca_pem = Some(std::fs::read(&ca.ca_pem).unwrap());
        let client = HttpsTransport::new(opts).unwrap();
        let mut worst = Duration::ZERO;
        for _ in 0..20 {
            let start = Instant::now();
            let body = client.fetch("timestamp.json", 16384).await.expect("legitimate fetch during the attack");
            assert!(body.is_some(), "timestamp.json missing");
            worst = worst.max(start.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(worst < Duration::from_secs(2), "a legitimate fetch took {worst:?} during the attack");

        let mut closed_at_once = 0;
        let mut never_closed = Vec::new();
        while let Some(r) = attacks.join_next().await {
            let (kind, closed) = r.unwrap();
            match closed {
                None => never_closed.push(kind),
                Some(d) if kind == "flood" && d < Duration::from_secs(1) => closed_at_once += 1,
                Some(_) => {}
            }
        }
        assert!(never_closed.is_empty(), "connections the server never closed: {never_closed:?}");
        assert!(closed_at_once >= 400 - 32, "only {closed_at_once} of 400 flood connections were refused at once");
    });
    let hwm = vm_hwm_kib(pid);
    eprintln!("server peak RSS (VmHWM): {hwm} KiB; bound {SERVER_PEAK_RSS_KIB} KiB");
    assert!(hwm < SERVER_PEAK_RSS_KIB, "server peak RSS {hwm} KiB over the bound {SERVER_PEAK_RSS_KIB} KiB");
}
