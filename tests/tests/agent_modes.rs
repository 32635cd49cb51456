//! Agent behaviours beyond the basic flow: monitor mode, the per-update action cap with
//! `embargoctl confirm`, and `embargoctl check`.

use std::time::Duration;

use embargo_e2e::*;
use embargo_policy::example::WECHAT_KASPERSKY_TOML;

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn monitor_mode_records_but_never_moves() {
    let mut dev = Device::new(WECHAT_KASPERSKY_TOML);
    dev.reconfigure(|t| t.replace("mode = \"enforce\"", "mode = \"monitor\""));
    let banned = dev.install("Downloads/WeChat-x86_64.AppImage", &appimage("monitored"));
    let entry = eventually("WeChat seen with its verdict", WAIT, || {
        dev.inventory_has(&banned).filter(|e| e.get("verdict").is_some())
    });
    assert_eq!(entry["verdict"]["rule"], "wechat");
    let s = eventually("the audit recorded", WAIT, || {
        dev.status().filter(|s| s["enforcement"]["counters"]["audited"] == 1)
    });
    assert_eq!(s["daemon"]["mode"], "monitor");
    assert_eq!(s["enforcement"]["counters"]["quarantined"], 0);
    assert_eq!(s["enforcement"]["last_actions"][0]["action"], "audit");
    assert!(banned.exists(), "monitor mode never moves anything");
    assert!(dev.quarantine_list().is_empty());
}

#[test]
fn a_policy_update_over_the_action_cap_acts_on_none_until_confirmed() {
    let dev = Device::with_config(KASPERSKY_ONLY, "1d", "\n[enforcement]\nmax_actions_per_update = 2\n");
    let files: Vec<_> = (0..3)
        .map(|i| dev.install(&format!("Downloads/WeChat-{i}.AppImage"), &appimage(&format!("copy {i}"))))
        .collect();
    for f in &files {
        eventually("each copy seen (allowed under v1)", WAIT, || dev.inventory_has(f));
    }
    dev.publish(WECHAT_KASPERSKY_TOML);
    assert!(dev.ctl(&["sync"]).status.success());
    let s = dev.status().unwrap();
    assert_eq!(s["policy"]["policy_version"], 2);
    assert_eq!(s["pending"]["needs_confirmation"], 3, "{s}");
    assert!(s["daemon"]["reasons"].to_string().contains("need confirmation"), "{s}");
    assert!(files.iter().all(|f| f.exists()), "over the cap: nothing acted on");
    // The reconcile after the next sync does not act on them either.
    assert!(dev.ctl(&["sync"]).status.success());
    assert!(dev.ctl(&["scan"]).status.success());
    assert!(files.iter().all(|f| f.exists()), "held back across syncs and rescans");
    // A new arrival is not part of the update: it is acted on at once.
    let fresh = dev.install("Applications/WeChat-new.AppImage", &appimage("new"));
    eventually("a new arrival quarantined", WAIT, || (!fresh.exists()).then_some(()));
    assert!(files.iter().all(|f| f.exists()));
    let out = dev.ctl(&["confirm"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(files.iter().all(|f| !f.exists()), "confirmed: all acted on");
    assert_eq!(dev.status().unwrap()["pending"]["needs_confirmation"], 0);
}

#[test]
fn check_names_the_rule_that_would_act() {
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    // Outside every watched folder: identified by embargoctl with the caller's permissions.
    let banned = dev.staging.join("WeChat-x86_64.AppImage");
    std::fs::write(&banned, appimage("check me")).unwrap();
    let out = dev.ctl(&["check", banned.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("appimage WeChat-x86_64.AppImage") && text.contains("remove: rule wechat (weak match)"),
        "{text}"
    );
    let allowed = dev.staging.join("notes.txt");
    std::fs::write(&allowed, "hello").unwrap();
    let text = String::from_utf8_lossy(&dev.ctl(&["check", allowed.to_str().unwrap()]).stdout).into_owned();
    assert!(text.contains("allowed: no rule applies"), "{text}");
    assert!(banned.exists(), "check never acts");
}

#[test]
fn processes_running_a_banned_file_are_stopped_before_it_is_quarantined() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::ExitStatusExt as _;
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    // A runnable AppImage: a real ELF executable (a copy of sleep) carrying the AppImage magic
    // at offset 8, where real AppImages carry it too (the kernel ignores those bytes).
    let mut elf = std::fs::read("/bin/sleep").unwrap();
    elf[8..11].copy_from_slice(b"AI\x02");
    let staged = dev.staging.join("WeChat-x86_64.AppImage");
    std::fs::write(&staged, &elf).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = std::process::Command::new(&staged).arg("1000").spawn().expect("the patched ELF runs");
    // The running binary is moved into a watched folder.
    let dest = dev.home.join("Applications/WeChat-x86_64.AppImage");
    std::fs::rename(&staged, &dest).unwrap();
    let status = eventually("the process to be killed", WAIT, || child.try_wait().unwrap());
    assert_eq!(status.signal(), Some(9), "{status:?}");
    eventually("the file quarantined", WAIT, || (!dest.exists()).then_some(()));
    let q = dev.quarantine_list();
    assert_eq!(q[0]["killed_pids"][0], child.id(), "{q:?}");
}
