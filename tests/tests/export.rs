//! `embargo-policy export` read by independent readers and enforced by a real peer tool:
//! - every format of the signed example policy parsed by Python (`json`, `plistlib`), with the
//!   `.mobileconfig`'s required Payload keys checked, and a re-export of a newer policy version
//!   replacing the profile (same PayloadIdentifier, new content and UUIDs);
//! - the fapolicyd export, made from the inventory the real agent reports for a throwaway dpkg
//!   root (packages built with dpkg-deb, installed with the real dpkg), loaded by the real
//!   `fapolicyd --debug-deny`: the banned package's executable and a banned-by-hash file fail
//!   to execute with EPERM while everything else runs.
//!
//! fapolicyd is global to the machine: its run holds an exclusive lock on
//! `/tmp/embargo-fapolicyd.lock` (shared with the other fapolicyd users of this machine, e.g. the
//! exec-gate benchmark), allows everything the export does not deny, lasts seconds, and a guard
//! stops it and restores `/etc/fapolicyd` even when the test panics.

use std::io::{BufRead as _, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embargo_e2e::*;
use embargo_policy::example::WECHAT_KASPERSKY_TOML;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn export(repo: &Repo, format: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["export", "--format", format, "--repo", p(&repo.dir), "--root", p(&repo.anchor)];
    args.extend_from_slice(extra);
    let out = policy_tool(&args);
    assert!(out.status.success(), "export {format}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs `script` with python3 on `file`; returns its stdout parsed as JSON.
fn python(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().expect("run python3");
    assert!(out.status.success(), "python3: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Python's json module reads the document; checks the keys each target requires and prints
/// what the test compares.
const READ_JSON: &str = r##"
import json, sys
fmt, path = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8") as f:
    doc = json.load(f)
src = doc["embargo"]["source"]
assert src["signed"] is True, src
out = {"fleet": src["fleet"], "version": src["version"], "sha256": src["sha256"]}
if fmt == "amapi":
    pol = doc["policy"]
    assert pol["playStoreMode"] == "BLACKLIST"
    assert all(a["installType"] == "BLOCKED" for a in pol["applications"])
    out["ids"] = [a["packageName"] for a in pol["applications"]]
elif fmt == "intune":
    ids = []
    for pol in doc["deviceCompliancePolicies"]:
        assert pol["@odata.type"] in ("#microsoft.graph.androidCompliancePolicy", "#microsoft.graph.iosCompliancePolicy")
        assert pol["displayName"] and pol["scheduledActionsForRule"]
        assert 0 < len(pol["restrictedApps"]) <= 100
        for app in pol["restrictedApps"]:
            assert app["@odata.type"] == "#microsoft.graph.appListItem"
            ids.append(app["appId"])
    out["ids"] = ids
elif fmt == "santa":
    import re
    # The identifier checks Santa applies when it imports a rule (SNTRule initWithIdentifier).
    for r in doc["rules"]:
        assert r["policy"] == "BLOCKLIST"
        t, ident = r["rule_type"], r["identifier"]
        if t in ("BINARY", "CERTIFICATE"):
            assert re.fullmatch(r"[0-9a-fA-F]{64}", ident), r
        elif t == "TEAMID":
            assert re.fullmatch(r"[A-Za-z0-9]{10}", ident), r
        elif t == "SIGNINGID":
            team, _, sid = ident.partition(":")
            assert (team == "platform" or re.fullmatch(r"[A-Za-z0-9]{10}", team)) and sid, r
        else:
            assert False, r
    out["ids"] = [r["rule_type"] + " " + r["identifier"] for r in doc["rules"]]
print(json.dumps(out))
"##;

/// Python's plistlib reads the profile; the Payload keys Apple requires at both levels are
/// checked, UUIDs must parse.
const READ_PLIST: &str = r##"
import json, plistlib, sys, uuid
with open(sys.argv[1], "rb") as f:
    p = plistlib.load(f)
for k in ("PayloadContent", "PayloadDisplayName", "PayloadIdentifier", "PayloadType", "PayloadUUID", "PayloadVersion"):
    assert k in p, k
assert p["PayloadType"] == "Configuration" and p["PayloadVersion"] == 1
uuid.UUID(p["PayloadUUID"])
assert len(p["PayloadContent"]) == 1
r = p["PayloadContent"][0]
for k in ("PayloadIdentifier", "PayloadType", "PayloadUUID", "PayloadVersion"):
    assert k in r, k
assert r["PayloadType"] == "com.apple.applicationaccess" and r["PayloadVersion"] == 1
uuid.UUID(r["PayloadUUID"])
assert r["blockedAppBundleIDs"] == r["blacklistedAppBundleIDs"]
print(json.dumps({"id": p["PayloadIdentifier"], "uuid": p["PayloadUUID"], "inner_id": r["PayloadIdentifier"],
                  "inner_uuid": r["PayloadUUID"], "blocked": r["blockedAppBundleIDs"],
                  "description": p["PayloadDescription"]}))
"##;

fn sha256_of_policy(repo: &Repo) -> String {
    let out = policy_tool_ok(&["verify", p(&repo.dir), "--root", p(&repo.anchor)]);
    out.split_whitespace().skip_while(|w| *w != "sha256").nth(1).unwrap().to_owned()
}

#[test]
fn python_reads_every_format_and_a_new_version_replaces_the_apple_profile() {
    if !need(&["python3"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path(), WECHAT_KASPERSKY_TOML);
    let sha = sha256_of_policy(&repo);
    let expected = [
        ("amapi", vec!["com.tencent.mm", "com.tencent.wework", "com.kms.free"]),
        ("intune", vec!["com.tencent.mm", "com.tencent.wework", "com.kms.free", "com.tencent.xin"]),
        ("santa", vec!["TEAMID 5A4RE8SF68", "TEAMID 2Y8XE5CQ94"]),
    ];
    for (format, ids) in expected {
        let file = tmp.path().join(format!("{format}.json"));
        export(&repo, format, &["-o", p(&file)]);
        let got = python(READ_JSON, &[format, p(&file)]);
        assert_eq!(got["fleet"], "gov-test", "{format}");
        assert_eq!(got["version"], 1, "{format}");
        assert_eq!(got["sha256"], sha.as_str(), "{format}");
        assert_eq!(got["ids"], serde_json::json!(ids), "{format}");
    }

    let v1 = tmp.path().join("v1.mobileconfig");
    export(&repo, "apple-mdm", &["-o", p(&v1)]);
    let first = python(READ_PLIST, &[p(&v1)]);
    assert_eq!(first["blocked"], serde_json::json!(["com.tencent.xin"]));
    assert_eq!(first["id"], "embargo.gov-test.banned-apps");
    assert!(first["description"].as_str().unwrap().contains(&sha));

    // Version 2 of the policy also bans WeCom on iOS.
    let k = |n: &str| repo.keys.join(n).to_str().unwrap().to_owned();
    let v2_toml = tmp.path().join("v2.toml");
    let v2_text = WECHAT_KASPERSKY_TOML.replace(
        "  [[rule.match]]                 # iOS bundle id\n  kind = \"ios\"\n  id = \"com.tencent.xin\"\n",
        "  [[rule.match]]                 # iOS bundle id\n  kind = \"ios\"\n  id = \"com.tencent.xin\"\n  [[rule.match]]\n  kind = \"ios\"\n  id = \"com.tencent.ww\"\n",
    );
    assert_ne!(v2_text, WECHAT_KASPERSKY_TOML);
    std::fs::write(&v2_toml, v2_text).unwrap();
    policy_tool_ok(&["sign", "--repo", p(&repo.dir), "--key", &k("policy.key"), p(&v2_toml)]);
    policy_tool_ok(&["timestamp", "--repo", p(&repo.dir), "--key", &k("timestamp.key")]);
    let v2 = tmp.path().join("v2.mobileconfig");
    export(&repo, "apple-mdm", &["-o", p(&v2)]);
    let second = python(READ_PLIST, &[p(&v2)]);
    assert_eq!(second["id"], first["id"], "same PayloadIdentifier: installing v2 replaces v1");
    assert_eq!(second["inner_id"], first["inner_id"]);
    assert_ne!(second["uuid"], first["uuid"], "new content gets new UUIDs");
    assert_ne!(second["inner_uuid"], first["inner_uuid"]);
    assert_eq!(second["blocked"], serde_json::json!(["com.tencent.ww", "com.tencent.xin"]));
    // Exporting v2 again gives the same bytes.
    assert_eq!(export(&repo, "apple-mdm", &[]).stdout, std::fs::read(&v2).unwrap());
}

/// `/bin/true` with `tag` appended: a real ELF executable whose bytes (and sha256) are its own.
fn executable(path: &Path, tag: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut bytes = std::fs::read("/bin/true").unwrap();
    bytes.extend_from_slice(format!("\nembargo test executable {tag}\n").as_bytes());
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A .deb (no maintainer scripts) with one ELF executable at `exe` (absolute in the package).
fn build_deb(dir: &Path, name: &str, exe: &str) -> PathBuf {
    let tree = dir.join(format!("{name}-tree"));
    std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    std::fs::write(
        tree.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: Test <test@example.invalid>\nDescription: {name} for the fapolicyd export test\n"),
    )
    .unwrap();
    executable(&tree.join(exe.trim_start_matches('/')), name);
    let out = dir.join(format!("{name}_1.0-1_all.deb"));
    let o = Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&tree).arg(&out).output().unwrap();
    assert!(o.status.success(), "dpkg-deb: {}", String::from_utf8_lossy(&o.stderr));
    out
}

const FAPOLICYD_LOCK: &str = "/tmp/embargo-fapolicyd.lock";

/// One exclusive fapolicyd run: holds the machine-wide lock, keeps a copy of `/etc/fapolicyd`,
/// and on drop (also on panic) stops fapolicyd and puts `/etc/fapolicyd` back.
struct FapolicydRun {
    backup: PathBuf,
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    _lock: OwnedFd,
}

impl FapolicydRun {
    fn lock() -> OwnedFd {
        let fd = rustix::fs::open(
            FAPOLICYD_LOCK,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CREATE | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::from_raw_mode(0o666),
        )
        .expect("open the fapolicyd lock");
        // Blocks while another test or benchmark runs fapolicyd.
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::LockExclusive).expect("lock");
        fd
    }

    /// Backs up `/etc/fapolicyd` into `work` and installs `rules` (the export) followed by an
    /// allow-the-rest rule in place of the stock deny-all.
    fn install(work: &Path, rules: &[u8]) -> Self {
        let lock = Self::lock();
        let backup = work.join("etc-fapolicyd.backup");
        let cp = Command::new("cp").arg("-a").arg("/etc/fapolicyd").arg(&backup).output().unwrap();
        assert!(cp.status.success(), "backing up /etc/fapolicyd: {}", String::from_utf8_lossy(&cp.stderr));
        let run = FapolicydRun { backup, child: None, stderr: Arc::default(), _lock: lock };
        let pidof = Command::new("pidof").arg("fapolicyd").output().unwrap();
        assert!(
            !pidof.status.success(),
            "fapolicyd is already running outside {FAPOLICYD_LOCK}: refusing to start a second one"
        );
        let rules_d = Path::new("/etc/fapolicyd/rules.d");
        for e in std::fs::read_dir(rules_d).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        std::fs::write(rules_d.join("05-embargo.rules"), rules).unwrap();
        // Debian ships only a deny-all rule; the test must not stop the rest of the machine.
        std::fs::write(rules_d.join("95-allow-the-rest.rules"), "allow perm=any all : all\n").unwrap();
        // Root: this container cannot change to the fapolicyd user (Debian's default). The trust
        // database is not used by these rules: the file backend only, for a fast start.
        // fapolicyd marks only the filesystem types in `watch_fs`: the work directory's must be one.
        let fstype = Command::new("findmnt").args(["-n", "-o", "FSTYPE", "-T"]).arg(work).output().unwrap();
        let fstype = String::from_utf8_lossy(&fstype.stdout).trim().to_owned();
        let conf = std::fs::read_to_string("/etc/fapolicyd/fapolicyd.conf").unwrap();
        let conf: String = conf
            .lines()
            .map(|l| match l.split('=').next().map(str::trim) {
                Some("uid") => "uid = root".to_owned(),
                Some("gid") => "gid = root".to_owned(),
                Some("trust") => "trust = file".to_owned(),
                Some("watch_fs") if !fstype.is_empty() && !l.split(['=', ',']).any(|t| t.trim() == fstype) => {
                    format!("{l},{fstype}")
                }
                _ => l.to_owned(),
            })
            .map(|l| l + "\n")
            .collect();
        std::fs::write("/etc/fapolicyd/fapolicyd.conf", conf).unwrap();
        // The real rule compiler, as the systemd unit runs it before the daemon.
        let gen = Command::new("fagenrules").output().unwrap();
        assert!(
            gen.status.success(),
            "fagenrules: {}{}",
            String::from_utf8_lossy(&gen.stdout),
            String::from_utf8_lossy(&gen.stderr)
        );
        run
    }

    fn start(&mut self) {
        // Under `timeout`: should this test process be killed before its guard runs, fapolicyd
        // still ends within two minutes (timeout passes our SIGTERM on to it as well).
        let mut child = Command::new("timeout")
            .args(["--kill-after=5", "120", "fapolicyd", "--debug-deny"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fapolicyd");
        let err = child.stderr.take().unwrap();
        let sink = self.stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        self.child = Some(child);
        eventually("fapolicyd to load the rules and listen", Duration::from_secs(60), || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("fapolicyd exited ({status}): {}", self.log());
            }
            self.log().contains("Starting to listen for events").then_some(())
        });
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM (fapolicyd writes its report and exits), then SIGKILL if it lingers.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }
}

impl FapolicydRun {
    /// Stops fapolicyd and puts the saved `/etc/fapolicyd` back (the lock stays held).
    fn restore(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all("/etc/fapolicyd");
        let restored = Command::new("cp").arg("-a").arg(&self.backup).arg("/etc/fapolicyd").status();
        if !restored.is_ok_and(|s| s.success()) {
            eprintln!("RESTORE FAILED: copy {} back to /etc/fapolicyd by hand", self.backup.display());
        }
    }
}

impl Drop for FapolicydRun {
    fn drop(&mut self) {
        if self.child.is_some() || !self.restored_matches() {
            self.restore();
        }
    }
}

/// Every file under `dir` (relative path, mode, bytes), sorted.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
            if m.is_dir() {
                stack.push(e.path());
                out.push((rel, m.permissions().mode(), Vec::new()));
            } else {
                out.push((rel, m.permissions().mode(), std::fs::read(e.path()).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

impl FapolicydRun {
    fn restored_matches(&self) -> bool {
        snapshot(Path::new("/etc/fapolicyd")) == snapshot(&self.backup)
    }
}

fn exec_error(path: &Path) -> Option<i32> {
    match Command::new(path).stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(status) => {
            assert!(status.success(), "{} ran but failed: {status}", path.display());
            None
        }
        Err(e) => Some(e.raw_os_error().unwrap_or(-1)),
    }
}

#[test]
fn fapolicyd_denies_a_banned_package_resolved_through_the_agents_inventory() {
    if !is_root() && skip("needs root to run fapolicyd") {
        return;
    }
    if !need(&["fapolicyd", "fagenrules", "dpkg", "dpkg-deb", "cp", "pidof", "timeout", "findmnt"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = work.path().join("sysroot");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log", "usr/bin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // A loose tool banned by its hash, and one that is not.
    let hashed = work.path().join("tools/hashed-tool");
    executable(&hashed, "banned by hash");
    let free_tool = work.path().join("tools/free-tool");
    executable(&free_tool, "free");
    let hash = embargo_policy::trust::sha256_hex(&std::fs::read(&hashed).unwrap());
    let policy = format!(
        "{WECHAT_KASPERSKY_TOML}\n[[rule]]\nid = \"hashed-tool\"\ndescription = \"a tool banned by its hash\"\naction = \"quarantine\"\n  [[rule.match]]\n  kind = \"file\"\n  sha256 = [\"{hash}\"]\n"
    );

    // The real agent, in monitor mode (it reports and never acts), watching the dpkg root.
    let mut dev =
        Device::with_config(&policy, "1d", &format!("\n[[watch]]\nkind = \"deb\"\npaths = [\"{}\"]\n", root.display()));
    dev.reconfigure(|c| c.replace("mode = \"enforce\"", "mode = \"monitor\""));
    let wechat = build_deb(work.path(), "wechat", "/opt/wechat/bin/wechat");
    let hello = build_deb(work.path(), "hello-embargo", "/opt/hello/bin/hello");
    let o = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-not-root", "-i"])
        .arg(&wechat)
        .arg(&hello)
        .output()
        .unwrap();
    assert!(o.status.success(), "dpkg -i: {}", String::from_utf8_lossy(&o.stderr));
    let banned_exe = root.join("opt/wechat/bin/wechat");
    let allowed_exe = root.join("opt/hello/bin/hello");
    let inventory = eventually("the agent to inventory both packages", Duration::from_secs(20), || {
        let out = dev.ctl(&["inventory", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let has = |id: &str| {
            v["apps"].as_array()?.iter().find(|e| e["app"]["kind"] == "deb" && e["app"]["id"] == id).cloned()
        };
        let w = has("wechat")?;
        has("hello-embargo")?;
        w["app"]["paths"].as_array()?.iter().any(|p| p.as_str() == banned_exe.to_str()).then_some(out.stdout)
    });
    dev.stop_agent();
    let inv = work.path().join("inventory.json");
    std::fs::write(&inv, &inventory).unwrap();

    let rules_file = work.path().join("05-embargo.rules");
    let out = export(&dev.repo, "fapolicyd", &["--inventory", p(&inv), "-o", p(&rules_file)]);
    let rules = std::fs::read(&rules_file).unwrap();
    let text = String::from_utf8_lossy(&rules).into_owned();
    assert!(text.contains(&format!("deny_audit perm=any all : path={}\n", banned_exe.display())), "{text}");
    assert!(text.contains(&format!("deny_audit perm=execute all : sha256hash={hash}\n")), "{text}");
    assert!(!text.contains("hello"), "an allowed package is not denied: {text}");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(report.contains(r#"narrowed: rule "wechat" match[6] {"kind":"deb","id":"wechat"}"#), "{report}");

    // Before fapolicyd: both run.
    assert_eq!(exec_error(&banned_exe), None);
    assert_eq!(exec_error(&hashed), None);

    let mut run = FapolicydRun::install(work.path(), &rules);
    run.start();
    let eperm = Some(1);
    assert_eq!(exec_error(&banned_exe), eperm, "the banned package's executable is denied: {}", run.log());
    assert_eq!(exec_error(&hashed), eperm, "the file banned by hash is denied: {}", run.log());
    assert_eq!(exec_error(&allowed_exe), None, "another package's executable runs");
    assert_eq!(exec_error(&free_tool), None, "another file runs");
    assert_eq!(exec_error(Path::new("/bin/true")), None, "the system runs");
    let log = run.log();
    run.restore();
    assert!(run.restored_matches(), "/etc/fapolicyd is back as it was");
    assert!(Command::new("pidof").arg("fapolicyd").output().unwrap().status.code() != Some(0), "fapolicyd is stopped");
    drop(run);
    assert!(log.contains(&format!("path={}", banned_exe.display())) && log.contains("dec=deny"), "{log}");
    assert!(log.contains(&format!("path={}", hashed.display())), "{log}");
    assert!(!log.contains(&format!("path={}", allowed_exe.display())), "{log}");
    assert_eq!(exec_error(&banned_exe), None, "runs again once fapolicyd is gone");
}

#[test]
fn an_https_repository_exports_the_same_bytes_and_an_untrusted_server_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = make_repo(tmp.path(), WECHAT_KASPERSKY_TOML);
    let ca = test_ca(tmp.path());
    let (_server, url) = start_server(&repo.dir, &ca, &[]);
    for format in ["amapi", "santa"] {
        let from_dir = export(&repo, format, &[]).stdout;
        let args = ["export", "--format", format, "--repo", &url, "--root", p(&repo.anchor)];
        let out = policy_tool(&[&args[..], &["--ca", p(&ca.ca_pem)]].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, from_dir, "{format}: the same verified policy, the same bytes");
        // The system CA bundle does not vouch for the test server.
        let out = policy_tool(&args);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("verification FAILED [fetch]"), "{err}");
        assert!(out.stdout.is_empty());
    }
    // Usage: a repository needs its trust anchor; a source is required.
    assert_eq!(policy_tool(&["export", "--format", "amapi", "--repo", &url]).status.code(), Some(64));
    assert_eq!(policy_tool(&["export", "--format", "amapi"]).status.code(), Some(64));
    assert_eq!(policy_tool(&["export", "--format", "nope", "x.toml"]).status.code(), Some(64));
}
