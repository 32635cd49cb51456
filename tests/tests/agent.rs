//! embargod end to end: the real embargo-server over TLS, the real embargod and embargoctl,
//! real files in temp directories.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use embargo_e2e::*;
use embargo_policy::example::WECHAT_KASPERSKY_TOML;

const WAIT: Duration = Duration::from_secs(15);

fn gone(p: &Path) -> Option<()> {
    (!p.exists()).then_some(())
}

#[test]
fn banned_appimage_is_quarantined_allowed_stays_and_restore_works_after_the_rule_is_dropped() {
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    assert_eq!(dev.policy_version(), Some(1));
    let allowed = dev.install("Applications/Firefox-x86_64.AppImage", &appimage("firefox"));
    let banned = dev.install("Downloads/WeChat-x86_64.AppImage", &appimage("wechat"));
    eventually("WeChat to leave ~/Downloads", WAIT, || gone(&banned));
    // The allowed one was seen (it is in the inventory, with no verdict) and left alone.
    let entry = eventually("Firefox in the inventory", WAIT, || dev.inventory_has(&allowed));
    assert!(entry.get("verdict").is_none(), "{entry}");
    assert!(allowed.exists());

    // In the store, with its manifest.
    let items = dev.quarantine_list();
    assert_eq!(items.len(), 1, "{items:?}");
    let m = &items[0];
    assert_eq!(m["rule"], "wechat");
    assert_eq!(m["original_path"], banned.to_str().unwrap());
    assert_eq!(m["mode"], 0o755);
    let id = m["id"].as_str().unwrap();
    let stored = dev.state.join("quarantine").join(format!("{id}.bin"));
    assert_eq!(std::fs::read(&stored).unwrap(), appimage("wechat"));
    assert_eq!(std::fs::metadata(&stored).unwrap().mode() & 0o7777, 0o400, "stripped of permissions");
    assert!(dev.state.join("quarantine").join(format!("{id}.json")).exists());

    // Status shows the policy version, the counters and the last action.
    let s = dev.status().unwrap();
    assert_eq!(s["schema_version"], 1);
    assert_eq!(s["policy"]["policy_version"], 1);
    assert_eq!(s["enforcement"]["counters"]["quarantined"], 1);
    assert_eq!(s["enforcement"]["last_actions"][0]["rule"], "wechat");
    assert_eq!(s["enforcement"]["last_actions"][0]["path"], banned.to_str().unwrap());
    assert_eq!(s["daemon"]["health"], "healthy", "{s}");
    assert_eq!(dev.ctl(&["status"]).status.code(), Some(0));

    // A newer policy drops the WeChat rule; restore puts the file back with its mode.
    dev.publish(KASPERSKY_ONLY);
    let out = dev.ctl(&["sync"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(dev.policy_version(), Some(2));
    let out = dev.ctl(&["quarantine", "restore", id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&banned).unwrap(), appimage("wechat"));
    assert_eq!(std::fs::metadata(&banned).unwrap().mode() & 0o7777, 0o755);
    assert!(dev.quarantine_list().is_empty());
    let entry = eventually("the restored file in the inventory", WAIT, || dev.inventory_has(&banned));
    assert!(entry.get("verdict").is_none(), "no rule applies any more: {entry}");
    // The audit log recorded it all and its chain verifies.
    let out = dev.ctl(&["events", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"type\":\"restore\"") && text.contains("quarantined"), "{text}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("WARNING"));
    let out = dev.ctl(&["events", "--verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn an_installer_style_directory_rename_is_caught_two_levels_down() {
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let built = dev.staging.join("wechat-installer");
    std::fs::create_dir_all(built.join("opt/bin")).unwrap();
    std::fs::write(built.join("opt/bin/WeChat-x86_64.AppImage"), appimage("deep")).unwrap();
    std::fs::write(built.join("opt/README"), "not an app").unwrap();
    let dest = dev.home.join("Applications/wechat-installer");
    std::fs::rename(&built, &dest).unwrap();
    eventually("the nested AppImage to be quarantined", WAIT, || gone(&dest.join("opt/bin/WeChat-x86_64.AppImage")));
    assert!(dest.join("opt/README").exists());
    assert_eq!(dev.quarantine_list()[0]["rel"], "wechat-installer/opt/bin/WeChat-x86_64.AppImage");
}

#[test]
fn a_new_rule_acts_within_one_sync_and_a_rollback_is_refused() {
    let dev = Device::new(KASPERSKY_ONLY);
    let old_timestamp = std::fs::read(dev.repo.dir.join("timestamp.json")).unwrap();
    let first = dev.install("Downloads/WeChat-x86_64.AppImage", &appimage("one"));
    eventually("WeChat seen and allowed under v1", WAIT, || dev.inventory_has(&first));
    assert!(first.exists());
    // v2 bans WeChat: one sync and it is acted on.
    dev.publish(WECHAT_KASPERSKY_TOML);
    assert!(dev.ctl(&["sync"]).status.success());
    assert_eq!(dev.policy_version(), Some(2));
    eventually("WeChat quarantined under v2", WAIT, || gone(&first));
    // The server serves v1 again.
    std::fs::write(dev.repo.dir.join("timestamp.json"), &old_timestamp).unwrap();
    let out = dev.ctl(&["sync"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rollback"), "{}", String::from_utf8_lossy(&out.stderr));
    let s = dev.status().unwrap();
    assert_eq!(s["policy"]["policy_version"], 2, "v2 stays in force");
    assert_eq!(s["policy"]["last_error"]["kind"], "timestamp-rollback", "{s}");
    assert_eq!(s["daemon"]["health"], "degraded");
    assert_eq!(dev.ctl(&["status"]).status.code(), Some(1));
    let second = dev.install("Applications/WeChat-again.AppImage", &appimage("two"));
    eventually("v2 still enforced", WAIT, || gone(&second));
}

#[test]
fn restart_with_the_server_down_enforces_the_persisted_policy_and_degrades_on_expiry() {
    let mut dev = Device::with_ttl(WECHAT_KASPERSKY_TOML, "4s");
    assert_eq!(dev.policy_version(), Some(1));
    let expires = dev.status().unwrap()["policy"]["timestamp_expires"].as_str().unwrap().to_owned();
    dev.stop_agent();
    dev.stop_server();
    dev.start_agent();
    let s = dev.status().unwrap();
    assert_eq!(s["policy"]["policy_version"], 1, "persisted policy loaded without the server");
    let banned = dev.install("Downloads/WeChat-x86_64.AppImage", &appimage("offline"));
    eventually("quarantined offline", WAIT, || gone(&banned));
    // Once the timestamp expires, status says so and exits 1; enforcement goes on.
    let s = eventually("the timestamp to expire", WAIT, || {
        let s = dev.status()?;
        s["daemon"]["reasons"]
            .as_array()?
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("expired")))
            .then_some(s)
    });
    assert_eq!(s["daemon"]["health"], "degraded", "{s}");
    assert!(s["daemon"]["reasons"].to_string().contains(&format!("expired at {expires}")), "{s}");
    assert_eq!(dev.ctl(&["status"]).status.code(), Some(1));
    let again = dev.install("Applications/WeChat-2.AppImage", &appimage("after expiry"));
    eventually("still enforced after expiry", WAIT, || gone(&again));
}

#[test]
fn a_symlink_swapped_in_during_arrivals_never_leads_outside_the_roots() {
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let outside = dev.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // Lures: banned-looking files outside every root.
    let mut lures = Vec::new();
    for i in 0..5 {
        let p = outside.join(format!("WeChat-{i}.AppImage"));
        std::fs::write(&p, appimage("lure")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        lures.push((p, m.ino(), m.mode()));
    }
    let sub = dev.home.join("Downloads/sub");
    let trash = dev.tmp.path().join("trash");
    std::fs::create_dir_all(&trash).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    let mut i = 0;
    while std::time::Instant::now() < deadline && i < 3000 {
        // A real directory with banned files appears...
        let real = dev.staging.join(format!("real{i}"));
        std::fs::create_dir_all(&real).unwrap();
        for j in 0..5 {
            std::fs::write(real.join(format!("WeChat-{j}.AppImage")), appimage("inside")).unwrap();
        }
        std::fs::rename(&real, &sub).unwrap();
        // ...and is swapped for a symlink to the outside directory right away.
        std::fs::rename(&sub, trash.join(format!("t{i}"))).unwrap();
        std::os::unix::fs::symlink(&outside, &sub).unwrap();
        std::fs::remove_file(&sub).unwrap();
        i += 1;
    }
    // A banned file arriving at the end proves the agent was live throughout.
    let last = dev.install("Downloads/WeChat-last.AppImage", &appimage("last"));
    eventually("the last arrival to be quarantined", WAIT, || gone(&last));
    for (p, ino, mode) in &lures {
        let m = std::fs::metadata(p).unwrap_or_else(|_| panic!("{} was moved", p.display()));
        assert_eq!((m.ino(), m.mode()), (*ino, *mode), "{} was changed", p.display());
        assert_eq!(std::fs::read(p).unwrap(), appimage("lure"));
    }
    for m in dev.quarantine_list() {
        let original = m["original_path"].as_str().unwrap();
        assert!(original.starts_with(dev.home.to_str().unwrap()), "moved from outside the roots: {original}");
        assert!(!lures.iter().any(|(_, ino, _)| m["ino"] == *ino), "a lure's inode is in quarantine");
    }
    assert!(i > 50, "the race loop ran only {i} times");
}

#[test]
fn non_root_may_read_status_but_not_purge() {
    if !rustix_is_root() && skip("needs root to run embargod as root and embargoctl as nobody") {
        return;
    }
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let banned = dev.install("Downloads/WeChat-x86_64.AppImage", &appimage("x"));
    eventually("quarantined", WAIT, || gone(&banned));
    let id = dev.quarantine_list()[0]["id"].as_str().unwrap().to_owned();
    // A copy of embargoctl that nobody may execute.
    let ctl = dev.tmp.path().join("embargoctl");
    std::fs::copy(bin("embargoctl"), &ctl).unwrap();
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&ctl)
            .arg("--socket")
            .arg(&dev.socket)
            .args(args)
            .output()
            .expect("setpriv")
    };
    let out = as_nobody(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["policy"]["policy_version"], 1);
    let out = as_nobody(&["quarantine", "purge", &id]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    assert_eq!(dev.quarantine_list().len(), 1, "nothing was purged");
    let out = as_nobody(&["sync"]);
    assert_eq!(out.status.code(), Some(4));
    // Root may.
    assert!(dev.ctl(&["quarantine", "purge", &id]).status.success());
    assert!(dev.quarantine_list().is_empty());
}

fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

#[test]
fn bad_config_exits_64_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(&cfg, "mode = \"enforce\"\n\n[policy]\nrepository = \"https://x.example/\"\nroot = \"/nonexistent\"\nfrequency = \"1h\"\n").unwrap();
    let out = std::process::Command::new(bin("embargod")).args(["--config", cfg.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:6:", cfg.display())) && err.contains("frequency"), "{err}");
    // A config that parses but names a missing trust anchor is a configuration error too.
    std::fs::write(&cfg, "[policy]\nrepository = \"https://x.example/\"\nroot = \"/nonexistent/root.json\"\n").unwrap();
    let out = std::process::Command::new(bin("embargod")).args(["--config", cfg.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("trust anchor"));
}

/// A large banned AppImage is moved without waiting for its hash (its verdict does not depend
/// on it), and the evidence is still complete: the manifest and the audit record carry the
/// sha256 of exactly what was moved.
#[test]
fn a_large_banned_appimage_is_moved_first_and_its_manifest_carries_the_real_sha256() {
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let mut payload = String::with_capacity(64 << 20);
    while payload.len() < 64 << 20 {
        payload.push_str(&format!("{:016x}", payload.len()));
    }
    let bytes = appimage(&payload);
    let expected = embargo_policy::trust::sha256_hex(&bytes);
    let banned = dev.install("Downloads/WeChat-4.0-x86_64.AppImage", &bytes);
    eventually("the large WeChat to leave ~/Downloads", WAIT, || gone(&banned));
    let items = eventually("its manifest to carry the hash", WAIT, || {
        Some(dev.quarantine_list()).filter(|l| l.len() == 1 && !l[0]["sha256"].as_str().unwrap_or("").is_empty())
    });
    assert_eq!(items[0]["sha256"], expected.as_str(), "{items:?}");
    assert_eq!(items[0]["rule"], "wechat");
    let out = dev.ctl(&["events", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.contains("\"quarantined\"") && l.contains(&expected)), "{text}");
}

/// A rule that excepts one build by hash: that build is hashed before any decision and stays;
/// another build of the same app is quarantined.
#[test]
fn an_except_by_hash_keeps_the_approved_build_and_quarantines_the_others() {
    let approved = appimage("wechat approved build");
    let policy = format!(
        "[[rule]]\nid = \"wechat\"\naction = \"quarantine\"\n[[rule.match]]\nkind = \"appimage\"\nname = \"*wechat*\"\n\
         [[rule.except]]\nsha256 = [\"{}\"]\n",
        embargo_policy::trust::sha256_hex(&approved)
    );
    let dev = Device::new(&policy);
    let kept = dev.install("Applications/WeChat-approved-x86_64.AppImage", &approved);
    let banned = dev.install("Downloads/WeChat-x86_64.AppImage", &appimage("wechat other build"));
    eventually("the other build to leave ~/Downloads", WAIT, || gone(&banned));
    let entry = eventually("the approved build in the inventory", WAIT, || dev.inventory_has(&kept));
    assert!(entry.get("verdict").is_none(), "the except applies: {entry}");
    assert!(kept.exists());
    assert_eq!(dev.quarantine_list().len(), 1);
}
