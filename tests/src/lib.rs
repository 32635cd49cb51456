//! Helpers for the end-to-end tests: locate the built binaries, make a test CA and server
//! certificate with rcgen, start `embargo-server` on a free loopback port, and wait for a
//! condition with a deadline (never a bare sleep).
//!
//! The binaries are the ones `cargo build --workspace --bins` produced next to this test's
//! own executable; the README's test command builds them first.
#![forbid(unsafe_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary built alongside the tests.
pub fn bin(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test executable path");
    dir.pop(); // deps/
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` before the end-to-end tests (the README's test command does)",
        path.display()
    );
    path
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes; panics naming `what`.
pub fn eventually<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A CA and a server certificate for `localhost`/127.0.0.1, written as PEM files in `dir`.
pub struct TestCa {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

pub fn test_ca(dir: &Path) -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "embargo test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let out = TestCa { ca_pem: dir.join("ca.pem"), cert_pem: dir.join("server.pem"), key_pem: dir.join("server.key") };
    std::fs::write(&out.ca_pem, ca.pem()).unwrap();
    std::fs::write(&out.cert_pem, cert.pem()).unwrap();
    std::fs::write(&out.key_pem, key.serialize_pem()).unwrap();
    out
}

/// A free loopback port (bound then released; the server binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `embargo-server` for `repo` and waits until it accepts connections.
pub fn start_server(repo: &Path, ca: &TestCa, extra: &[&str]) -> (Running, String) {
    let port = free_port();
    let child = Command::new(bin("embargo-server"))
        .args(["--repo", repo.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .args(["--tls-cert", ca.cert_pem.to_str().unwrap(), "--tls-key", ca.key_pem.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start embargo-server");
    let running = Running(child);
    eventually("embargo-server to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    (running, format!("https://127.0.0.1:{port}/"))
}

/// A repository made with the real admin tool: keys, root v1, the example policy, a timestamp.
pub struct Repo {
    pub dir: PathBuf,
    pub keys: PathBuf,
    pub anchor: PathBuf,
}

pub fn policy_tool(args: &[&str]) -> std::process::Output {
    Command::new(bin("embargo-policy")).args(args).output().expect("run embargo-policy")
}

pub fn policy_tool_ok(args: &[&str]) -> String {
    let out = policy_tool(args);
    assert!(out.status.success(), "embargo-policy {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn make_repo(base: &Path, policy_toml: &str) -> Repo {
    let keys = base.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let dir = base.join("repo");
    let k = |n: &str| keys.join(n).to_str().unwrap().to_owned();
    for n in ["root.key", "timestamp.key", "policy.key"] {
        policy_tool_ok(&["keygen", &k(n)]);
    }
    let d = dir.to_str().unwrap();
    policy_tool_ok(&[
        "init",
        "--repo",
        d,
        "--fleet",
        "gov-test",
        "--root-key",
        &k("root.key"),
        "--timestamp-key",
        &k("timestamp.key"),
        "--policy-key",
        &k("policy.key"),
    ]);
    let toml = base.join("policy.toml");
    std::fs::write(&toml, policy_toml).unwrap();
    policy_tool_ok(&["sign", "--repo", d, "--key", &k("policy.key"), toml.to_str().unwrap()]);
    policy_tool_ok(&["timestamp", "--repo", d, "--key", &k("timestamp.key")]);
    Repo { anchor: dir.join("root/1.json"), dir, keys }
}
