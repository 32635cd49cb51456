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

pub mod flatpak;
mod inproc;

pub use inproc::InProcess;

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

/// A whole device: a repository served over TLS by `embargo-server`, and `embargod` watching
/// a fake home directory, with its control socket and state in a temp dir.
pub struct Device {
    pub tmp: tempfile::TempDir,
    pub repo: Repo,
    pub ca: TestCa,
    pub url: String,
    pub server: Option<Running>,
    pub agent: Option<Running>,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    /// `home/alice`: `Applications/` and `Downloads/` are watched for AppImages.
    pub home: PathBuf,
    pub staging: PathBuf,
    /// Extra environment for embargod (e.g. a PATH with stand-in tools).
    pub agent_env: Vec<(String, String)>,
}

impl Device {
    /// Starts the server for a repository signed with `policy_toml`, then the agent.
    pub fn new(policy_toml: &str) -> Self {
        Self::with_ttl(policy_toml, "1d")
    }

    pub fn with_ttl(policy_toml: &str, timestamp_ttl: &str) -> Self {
        Self::with_config(policy_toml, timestamp_ttl, "")
    }

    /// `extra` is appended to the agent's config (e.g. more `[[watch]]` tables).
    pub fn with_config(policy_toml: &str, timestamp_ttl: &str, extra: &str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        // Readable by other users: the non-root embargoctl test connects to the socket in here.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let repo = make_repo(tmp.path(), policy_toml);
        let k = |n: &str| repo.keys.join(n).to_str().unwrap().to_owned();
        policy_tool_ok(&[
            "timestamp",
            "--repo",
            repo.dir.to_str().unwrap(),
            "--key",
            &k("timestamp.key"),
            "--expires",
            timestamp_ttl,
        ]);
        let ca = test_ca(tmp.path());
        let (server, url) = start_server(&repo.dir, &ca, &[]);
        let home = tmp.path().join("home/alice");
        for d in ["Applications", "Downloads"] {
            std::fs::create_dir_all(home.join(d)).unwrap();
        }
        let staging = tmp.path().join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        let state = tmp.path().join("state");
        let socket = tmp.path().join("embargod.sock");
        let config = tmp.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "mode = \"enforce\"\nstate_dir = \"{state}\"\nsocket = \"{socket}\"\n\n[policy]\nrepository = \"{url}\"\nroot = \"{anchor}\"\nca = \"{ca}\"\ninterval = \"1h\"\n\n[[watch]]\nkind = \"appimage\"\npaths = [\"{home}/*/Applications\", \"{home}/*/Downloads\"]\n",
                state = state.display(),
                socket = socket.display(),
                anchor = repo.anchor.display(),
                ca = ca.ca_pem.display(),
                home = tmp.path().join("home").display(),
            ) + extra,
        )
        .unwrap();
        let mut d = Device {
            tmp,
            repo,
            ca,
            url,
            server: Some(server),
            agent: None,
            config,
            socket,
            state,
            home,
            staging,
            agent_env: Vec::new(),
        };
        d.start_agent();
        d
    }

    /// Rewrites the agent's config with `edit` and restarts the agent.
    pub fn reconfigure(&mut self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, edit(text)).unwrap();
        self.stop_agent();
        self.start_agent();
    }

    /// Restarts the agent with `env` added to its environment.
    pub fn restart_with_env(&mut self, env: &[(&str, String)]) {
        self.stop_agent();
        self.agent_env = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        self.start_agent();
    }

    pub fn start_agent(&mut self) {
        let child = Command::new(bin("embargod"))
            .args(["--config", self.config.to_str().unwrap()])
            .env("EMBARGO_LOG", "warn,embargo_agent=debug")
            .envs(self.agent_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.tmp.path().join("embargod.log")).unwrap())
            .spawn()
            .expect("start embargod");
        self.agent = Some(Running(child));
        // Up, watching, and enforcing a verified policy (synced, or persisted from before).
        eventually("embargod to enforce a verified policy", Duration::from_secs(20), || {
            self.status().filter(|s| {
                s["sources"].as_array().is_some_and(|a| !a.is_empty()) && s["policy"]["policy_version"].is_u64()
            })
        });
    }

    pub fn stop_agent(&mut self) {
        self.agent = None;
    }

    pub fn stop_server(&mut self) {
        self.server = None;
    }

    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("embargoctl")).arg("--socket").arg(&self.socket).args(args).output().expect("run embargoctl")
    }

    /// `embargoctl status --json`, parsed; `None` if the daemon is unreachable.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.ctl(&["status", "--json"]);
        if out.status.code() == Some(3) {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn policy_version(&self) -> Option<u64> {
        self.status()?["policy"]["policy_version"].as_u64()
    }

    /// Signs `policy_toml` as the next policy version and re-signs the timestamp.
    pub fn publish(&self, policy_toml: &str) {
        let k = |n: &str| self.repo.keys.join(n).to_str().unwrap().to_owned();
        let toml = self.tmp.path().join("next-policy.toml");
        std::fs::write(&toml, policy_toml).unwrap();
        let d = self.repo.dir.to_str().unwrap();
        policy_tool_ok(&["sign", "--repo", d, "--key", &k("policy.key"), toml.to_str().unwrap()]);
        policy_tool_ok(&["timestamp", "--repo", d, "--key", &k("timestamp.key")]);
    }

    /// Installs `bytes` at `rel` under the home directory the way installers do: written in a
    /// staging directory, renamed into place. Mode 0755.
    pub fn install(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let dest = self.home.join(rel);
        let tmp = self.staging.join(format!("{}.part", dest.file_name().unwrap().to_string_lossy()));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &dest).unwrap();
        dest
    }

    pub fn quarantine_list(&self) -> Vec<serde_json::Value> {
        let out = self.ctl(&["quarantine", "list", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    }

    pub fn inventory_has(&self, path: &Path) -> Option<serde_json::Value> {
        let out = self.ctl(&["inventory", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["apps"].as_array()?.iter().find(|e| e["app"]["paths"][0].as_str() == path.to_str()).cloned()
    }
}

/// A file that identifies as an AppImage (ELF + `AI\x02`), with `payload` after the header.
pub fn appimage(payload: &str) -> Vec<u8> {
    let mut v = b"\x7fELF\x02\x01\x01\x00AI\x02\x00\x00\x00\x00\x00".to_vec();
    v.extend_from_slice(payload.as_bytes());
    v
}

/// A real type-2 AppImage: an ELF runtime (a copy of `/bin/true` carrying the `AI\x02` magic at
/// offset 8, as the AppImage runtime does) with a squashfs image made by the real `mksquashfs`
/// appended. The image holds `AppRun`, a binary, and the desktop entry `<desktop_id>.desktop`
/// with `Name=<name>` and `X-AppImage-Version=<version>`; with `symlinked` it lives in
/// `usr/share/applications/` and the root holds a symlink to it (as linuxdeploy does);
/// `padding_files` adds files to the root that sort before it.
#[derive(Debug, Clone, Copy)]
pub struct RealAppImage<'a> {
    pub desktop_id: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub symlinked: bool,
    pub padding_files: usize,
    /// Extra `mksquashfs` options such as `-comp zstd` or `-no-fragments`.
    pub mksquashfs_args: &'a [&'a str],
}

impl<'a> RealAppImage<'a> {
    pub fn new(desktop_id: &'a str, name: &'a str, version: &'a str) -> Self {
        Self { desktop_id, name, version, symlinked: false, padding_files: 0, mksquashfs_args: &[] }
    }

    pub fn build(&self, work: &Path) -> Vec<u8> {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let appdir = work.join(format!("AppDir-{n}"));
        let (id, name, version) = (self.desktop_id, self.name, self.version);
        std::fs::create_dir_all(appdir.join("usr/share/applications")).unwrap();
        std::fs::create_dir_all(appdir.join("usr/bin")).unwrap();
        std::fs::write(appdir.join("AppRun"), "#!/bin/sh\nexec \"$APPDIR/usr/bin/app\" \"$@\"\n").unwrap();
        std::fs::write(appdir.join("usr/bin/app"), format!("binary of {name} {version}\n").repeat(2000)).unwrap();
        for i in 0..self.padding_files {
            std::fs::write(appdir.join(format!("aaa-padding-file-with-a-long-name-{i:05}")), b"x").unwrap();
        }
        let entry = format!(
            "[Desktop Entry]\nType=Application\nName={name}\nExec=app %U\nIcon={id}\nX-AppImage-Version={version}\n"
        );
        let file = format!("{id}.desktop");
        if self.symlinked {
            std::fs::write(appdir.join("usr/share/applications").join(&file), entry).unwrap();
            std::os::unix::fs::symlink(format!("usr/share/applications/{file}"), appdir.join(&file)).unwrap();
        } else {
            std::fs::write(appdir.join(&file), entry).unwrap();
        }
        let image = work.join(format!("image-{n}.sqfs"));
        let out = Command::new("mksquashfs")
            .arg(&appdir)
            .arg(&image)
            .args(["-root-owned", "-noappend", "-quiet"])
            .args(self.mksquashfs_args)
            .output()
            .unwrap();
        assert!(out.status.success(), "mksquashfs: {}", String::from_utf8_lossy(&out.stderr));
        let mut bytes = std::fs::read("/bin/true").unwrap();
        bytes[8..11].copy_from_slice(b"AI\x02");
        bytes.extend(std::fs::read(&image).unwrap());
        bytes
    }
}

/// Whether tests that need a tool or privilege must fail rather than skip (`.ci/run` sets it).
pub fn require_tools() -> bool {
    std::env::var("EMBARGO_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// Reports a skipped test and returns true; fails instead under EMBARGO_REQUIRE_TOOLS=1.
///
/// The report is one line, `SKIPPED <test>: <why>`, on stderr and, when `EMBARGO_SKIP_LOG` names
/// a file, appended to it (`scripts/test.sh` counts and lists those lines).
pub fn skip(why: &str) -> bool {
    assert!(!require_tools(), "{why} (EMBARGO_REQUIRE_TOOLS=1)");
    // libtest names each test's thread after the test.
    let test = std::thread::current().name().unwrap_or("unnamed test").to_owned();
    let line = format!("SKIPPED {test}: {why}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("EMBARGO_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
    true
}

/// Whether this process runs as root (real uid 0, from `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

/// Whether every tool is on PATH; skips (or fails, see `skip`) naming the first missing one.
pub fn need(tools: &[&str]) -> bool {
    match tools.iter().find(|t| !have(t)) {
        Some(t) => !skip(&format!("needs {t}")),
        None => true,
    }
}

/// A policy banning only Kaspersky (no WeChat rule).
pub const KASPERSKY_ONLY: &str =
    "[[rule]]\nid = \"kaspersky\"\naction = \"remove\"\n[[rule.match]]\nkind = \"deb\"\nid = \"kesl\"\n";
