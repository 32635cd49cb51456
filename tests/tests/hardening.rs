//! Regression tests for the adversarial review's findings (issue 10), each run against the real
//! `embargod`/`embargoctl`; the unit tests beside the code cover the rest. Each test names the
//! finding it keeps fixed.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use embargo_e2e::*;
use embargo_policy::example::WECHAT_KASPERSKY_TOML;

const WAIT: Duration = Duration::from_secs(15);

/// Installs `bytes` under the home at `dir/<name>` where `name` is raw bytes (staged, renamed in).
fn install_bytes(dev: &Device, dir: &str, name: &[u8], bytes: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dest = dev.home.join(dir).join(OsStr::from_bytes(name));
    let tmp = dev.staging.join("staged.part");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &dest).unwrap();
    dest
}

fn gone(p: &Path) -> Option<()> {
    (!p.exists()).then_some(())
}

/// `eventually`, but a timeout shows the daemon's log (what it did instead).
fn eventually_logged<T>(dev: &Device, what: &str, cond: impl FnMut() -> Option<T>) -> T {
    let log = dev.tmp.path().join("embargod.log");
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| eventually(what, WAIT, cond))) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("embargod log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
            std::panic::resume_unwind(e)
        }
    }
}

/// Finding 1: a banned file whose name is not UTF-8 (or holds a newline) is quarantined and
/// restored to the same bytes by the real daemon.
#[test]
fn finding_1_non_utf8_names_are_quarantined_and_restored_by_embargod() {
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let names: [&[u8]; 2] = [b"WeChat-\xff.AppImage", b"WeChat-\n.AppImage"];
    for (i, name) in names.into_iter().enumerate() {
        // A build of its own per name: a restore exempts that content (finding 3), so the same
        // bytes under the next name would rightly stay.
        let banned = install_bytes(&dev, "Downloads", name, &appimage(&format!("wechat build {i}")));
        eventually_logged(&dev, "the non-UTF-8 WeChat to leave ~/Downloads", || gone(&banned));
        let items = dev.quarantine_list();
        assert_eq!(items.len(), 1, "{items:?}");
        let id = items.last().unwrap()["id"].as_str().unwrap().to_owned();
        let out = dev.ctl(&["quarantine", "restore", &id]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // The restore wrote the original name, not a lossy one.
        let dir = std::fs::read_dir(dev.home.join("Downloads")).unwrap();
        let lossy = dir.flatten().any(|e| e.file_name().as_bytes().contains(&0xef));
        assert!(!lossy, "restore wrote a U+FFFD name");
        assert!(banned.exists(), "restored under its original bytes");
        // Kept in place (the restore stands: its content is exempt).
    }
}

/// Finding 13: a hard link, under a banned name, to a running setuid program outside the roots.
/// The daemon reports it and touches nothing: the program keeps running, its mode is unchanged,
/// and its name inside the root stays.
#[test]
fn finding_13_a_hard_link_to_a_running_program_outside_the_roots_is_refused() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let outside = dev.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // `sleep` carrying the AppImage magic (the kernel ignores those bytes), setuid, running.
    let prog = outside.join("sleeper");
    let mut bytes = std::fs::read("/bin/sleep").unwrap();
    bytes[8..11].copy_from_slice(b"AI\x02");
    std::fs::write(&prog, bytes).unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let mut child = std::process::Command::new(&prog).arg("60").spawn().unwrap();
    let link = dev.home.join("Downloads/WeChat-x86_64.AppImage");
    std::fs::hard_link(&prog, &link).unwrap();
    let refused = eventually_logged(&dev, "the refusal in status", || {
        let s = dev.status()?;
        s["enforcement"]["last_actions"]
            .as_array()?
            .iter()
            .find(|a| a["result"].as_str().is_some_and(|r| r.contains("refused")))
            .cloned()
    });
    assert!(refused["result"].as_str().unwrap().contains("hard links"), "{refused}");
    assert!(child.try_wait().unwrap().is_none(), "the program outside the roots was killed");
    assert_eq!(std::fs::metadata(&prog).unwrap().mode() & 0o7777, 0o4755, "its mode was changed");
    assert!(link.exists(), "the link was moved");
    assert!(dev.quarantine_list().is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Finding 15: a name holding `\n`, an escape sequence and U+202E cannot forge a line in
/// `embargoctl` output or in the daemon's log, nor reach the terminal raw.
#[test]
fn finding_15_control_bidi_and_escape_codes_in_names_are_escaped_in_output_and_log() {
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let name = "WeChat-\n2026-11-30 quarantined FORGED \x1b[31m\u{202E}gepj.AppImage";
    let banned = install_bytes(&dev, "Downloads", name.as_bytes(), &appimage("wechat"));
    eventually_logged(&dev, "the WeChat with a forged line in its name to be quarantined", || gone(&banned));
    let clean = |what: &str, text: &str| {
        assert!(!text.contains('\x1b') && !text.contains('\u{202E}'), "{what} carries raw codes: {text:?}");
        for line in text.lines().filter(|l| l.contains("FORGED")) {
            assert!(line.contains("WeChat-"), "{what}: the name forged a line: {line:?}");
        }
    };
    for args in [&["quarantine", "list"][..], &["status"], &["events"], &["inventory"]] {
        let out = dev.ctl(args);
        assert!(out.status.code().is_some_and(|c| c < 2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        clean(&format!("embargoctl {args:?}"), &text);
    }
    let json = dev.ctl(&["quarantine", "list", "--json"]);
    let text = String::from_utf8(json.stdout).unwrap();
    clean("quarantine list --json", &text);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v[0]["original_path"].as_str().unwrap().ends_with(name), "the JSON value is the exact name");
    // The log: tracing's own colours aside, the name's codes are escaped.
    let log = std::fs::read_to_string(dev.tmp.path().join("embargod.log")).unwrap();
    assert!(!log.contains("\x1b[31m\u{202E}") && !log.contains('\u{202E}'), "raw codes in the log");
    for line in log.lines().filter(|l| l.contains("FORGED")) {
        assert!(line.contains("WeChat-"), "the name forged a log line: {line:?}");
    }
}

/// Finding 17: `embargoctl … | true` (stdout closed before it writes) exits normally.
#[test]
fn finding_17_a_closed_stdout_is_a_normal_exit() {
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    for args in [&["status"][..], &["status", "--json"], &["quarantine", "list"], &["events"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(bin("embargoctl"))
            .arg("--socket")
            .arg(&dev.socket)
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// Finding 10: one user holding (and re-opening) 70 idle connections to the control socket does
/// not lock root out: root's `embargoctl status` is answered at once.
#[test]
fn finding_10_idle_connections_of_one_user_do_not_lock_root_out() {
    if !is_root() && skip("needs root to run embargod as root and the flood as nobody") {
        return;
    }
    // The system python (a per-user install may not be executable by nobody).
    if !need(&["setpriv", "/usr/bin/python3"]) {
        return;
    }
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    // The flood: a client as nobody that keeps 70 connections open without sending a byte,
    // reconnecting whatever the daemon closes, for 20 s.
    let script = r#"
import socket, sys, time
path, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def conn():
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.setblocking(False)
    return s
socks = [conn() for _ in range(n)]
print("ready", flush=True)
end = time.time() + secs
while time.time() < end:
    for i, s in enumerate(socks):
        try:
            if s.recv(1) == b"":
                s.close(); socks[i] = conn()
        except BlockingIOError:
            pass
        except OSError:
            try: socks[i] = conn()
            except OSError: pass
    time.sleep(0.005)
"#;
    let mut flood = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script])
        .arg(&dev.socket)
        .args(["70", "20"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(flood.stdout.take().unwrap()), &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let out = dev.ctl(&["status", "--json"]);
        assert!(out.status.code().is_some_and(|c| c < 2), "root locked out: {}", String::from_utf8_lossy(&out.stderr));
        assert!(t.elapsed() < Duration::from_secs(2), "root waited {:?}", t.elapsed());
    }
    assert!(flood.try_wait().unwrap().is_none(), "the flood ended early");
    flood.kill().unwrap();
    flood.wait().unwrap();
}

/// Finding 4: the `AI\x02` bytes are optional (the kernel and the runtime ignore them). A real
/// AppImage with them zeroed, under a name that says nothing, is still found by its squashfs
/// after the ELF section headers and quarantined; so is a file only named `*.AppImage`.
#[test]
fn finding_4_an_appimage_without_its_magic_bytes_is_still_an_appimage() {
    if !need(&["mksquashfs"]) {
        return;
    }
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let mut bytes = RealAppImage::new("com.tencent.WeChat", "WeChat", "4.0").build(dev.tmp.path());
    bytes[8..11].copy_from_slice(&[0, 0, 0]);
    let hidden = install_bytes(&dev, "Downloads", b"holiday-photos", &bytes);
    eventually_logged(&dev, "the magic-less AppImage to be quarantined", || gone(&hidden));
    let m = dev.quarantine_list().into_iter().find(|m| m["original_path"] == hidden.to_str().unwrap()).unwrap();
    assert_eq!(m["app_id"], "com.tencent.WeChat", "identified from its embedded desktop entry");
    // Named *.AppImage, ELF but no squashfs and no magic: a candidate, matched by its name.
    let mut elf = std::fs::read("/bin/true").unwrap();
    elf[8..11].copy_from_slice(&[0, 0, 0]);
    let named = install_bytes(&dev, "Downloads", b"WeChat-x86_64.AppImage", &elf);
    eventually_logged(&dev, "the AppImage-named ELF to be quarantined", || gone(&named));
}

/// Finding 16: a damaged `trust.json`, or a missing policy file, no longer stops the daemon. It
/// moves the damaged state aside, starts from the last known good copy (or the anchor), reports
/// degraded naming it, and a sync restores the policy.
#[test]
fn finding_16_damaged_trust_state_is_moved_aside_and_the_daemon_still_starts() {
    let mut dev = Device::new(WECHAT_KASPERSKY_TOML);
    let trust = dev.state.join("trust");
    let aside = |prefix: &str| {
        std::fs::read_dir(&trust).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(prefix))
    };
    // 1. trust.json damaged, the server away: the last known good state is enforced at once.
    dev.stop_agent();
    dev.stop_server();
    std::fs::write(trust.join("trust.json"), b"{ damaged").unwrap();
    dev.start_agent();
    let s = dev.status().unwrap();
    assert_eq!(s["daemon"]["health"], "degraded", "{s}");
    let reasons = s["daemon"]["reasons"].to_string();
    assert!(reasons.contains("trust.json") && reasons.contains("last known good"), "{reasons}");
    assert_eq!(s["policy"]["policy_version"], 1);
    assert!(aside("trust.json.damaged-"), "the damaged file is kept aside");
    let banned = dev.install("Downloads/WeChat-x86_64.AppImage", &appimage("x"));
    eventually_logged(&dev, "the restored policy to act", || gone(&banned));

    // 2. Both copies unusable (the policy file they name is gone): start from the anchor, and a
    //    sync (the server back, on a new port) restores the policy.
    dev.stop_agent();
    for e in std::fs::read_dir(trust.join("policy")).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    let (server, url) = start_server(&dev.repo.dir, &dev.ca, &[]);
    let old = std::mem::replace(&mut dev.url, url.clone());
    dev.server = Some(server);
    dev.reconfigure(|t| t.replace(&old, &url));
    let s = dev.status().unwrap();
    assert_eq!(s["policy"]["policy_version"], 1, "synced again: {s}");
    assert_eq!(s["daemon"]["health"], "healthy", "{s}");
    assert!(aside("trust.good.json.damaged-"), "the unusable good copy is kept aside too");
    let log = std::fs::read_to_string(dev.tmp.path().join("embargod.log")).unwrap();
    assert!(log.contains("started from the trust anchor"), "{log}");
}
