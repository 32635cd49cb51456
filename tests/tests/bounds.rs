//! The rest of issue 10's findings 8 and 14, against the real embargod, embargoctl and
//! embargo-server: scan batches bounded in path bytes, the inventory bounded in bytes, files
//! beyond the inventory bound counted against the action cap (and never escaping), and
//! audit-only actions shown to the file's owner only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use embargo_e2e::*;
use embargo_policy::example::WECHAT_KASPERSKY_TOML;

const WAIT: Duration = Duration::from_secs(30);

fn gone(p: &Path) -> Option<()> {
    (!p.exists()).then_some(())
}

fn events(dev: &Device) -> String {
    String::from_utf8_lossy(&dev.ctl(&["events", "--json"]).stdout).into_owned()
}

/// `n` empty files named `<200 × d>-<i>.apk` three directories of 200-byte names deep under
/// `staging/<name>` (paths of over 800 bytes, like the review's attack).
fn long_tree(staging: &Path, name: &str, n: usize) -> PathBuf {
    let long = "d".repeat(200);
    let top = staging.join(name);
    let dir = top.join(&long).join(&long).join(&long);
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..n {
        std::fs::write(dir.join(format!("{long}-{i:04}.apk")), b"").unwrap();
    }
    top
}

/// Finding 8: a scan batch holds at most `max_scan_path_bytes` of paths; a tree over it is
/// scanned in several batches (reported: status and a scan-bound audit event naming the
/// bound), and a banned file at its end is still quarantined. On main the key does not exist
/// (and a batch held up to 200,000 paths whatever their length).
#[test]
fn a_scan_batch_is_bounded_in_path_bytes_and_continues_to_the_banned_file() {
    let dev = Device::with_config(WECHAT_KASPERSKY_TOML, "1d", "\n[enforcement]\nmax_scan_path_bytes = 8192\n");
    let top = long_tree(&dev.staging, "bundle", 100);
    // Last in depth-first order: a sibling directory listed after the long one.
    std::fs::create_dir(top.join("zz")).unwrap();
    std::fs::write(top.join("zz/WeChat-x86_64.AppImage"), appimage("after the long paths")).unwrap();
    let landed = dev.home.join("Downloads/bundle");
    std::fs::rename(&top, &landed).unwrap();
    eventually("the banned file after 80 KB of paths quarantined", WAIT, || {
        Some(dev.quarantine_list()).filter(|l| l.len() == 1)
    });
    let ev = events(&dev);
    assert!(ev.contains("\"type\":\"scan-bound\"") && ev.contains("path bytes per scan (8192 path bytes)"), "{ev}");
    let s = dev.status().unwrap();
    let reasons = s["daemon"]["reasons"].to_string();
    assert!(reasons.contains("bound of 8192 path bytes per scan"), "{s}");
}

/// Finding 8: the inventory is bounded in bytes per root and per uid, not only in entries:
/// 100 entries with 800-byte paths stay under 20,000 entries but not under 64 KiB. Status is
/// degraded naming the root and the uid, one `inventory-bound` audit event each, and a banned
/// AppImage arriving beyond the bound is still quarantined.
#[test]
fn the_inventory_is_bounded_in_bytes_per_root_and_uid() {
    let dev = Device::with_config(WECHAT_KASPERSKY_TOML, "1d", "\n[enforcement]\nmax_inventory_bytes = 65536\n");
    let top = long_tree(&dev.staging, "many", 100);
    std::fs::rename(&top, dev.home.join("Downloads/many")).unwrap();
    let root = dev.home.join("Downloads");
    let s = eventually("status degraded by the inventory's bound in bytes", WAIT, || {
        dev.status().filter(|s| {
            let reasons = s["daemon"]["reasons"].to_string();
            reasons.contains(&format!("inventory of {} reached its bound of 65536 bytes", root.display()))
                && reasons.contains("inventory of uid 0 reached its bound of 65536 bytes")
        })
    });
    assert_eq!(s["daemon"]["health"], "degraded", "{s}");
    let banned = dev.install("Downloads/WeChat-x86_64.AppImage", &appimage("wechat"));
    eventually("a banned AppImage beyond the bound still quarantined", WAIT, || gone(&banned));
    let v: serde_json::Value = serde_json::from_slice(&dev.ctl(&["inventory", "--json"]).stdout).unwrap();
    let apks =
        v["apps"].as_array().unwrap().iter().filter(|e| e["app"]["id"].as_str().unwrap().ends_with(".apk")).count();
    assert!((1..100).contains(&apks), "{apks} of 100 long entries remembered");
    let ev = events(&dev);
    let bound_events = ev.matches("\"type\":\"inventory-bound\"").count();
    assert_eq!(bound_events, 2, "one per root and one per uid, not one per refused file: {ev}");
}

/// Finding 8: files beyond the inventory bound count toward the action cap, and none escapes.
/// The bound (5 entries) is filled with decoys; six AppImages arrive beyond it, allowed by the
/// first policy. A second policy bans them: with a cap of 3 it must act on at most 3 without
/// confirmation (on main all six were quarantined, uncounted). A banned AppImage arriving after
/// the update is quarantined at once; `confirm` acts on what was held.
#[test]
fn files_beyond_the_inventory_bound_count_toward_the_action_cap_and_never_escape() {
    let extra = "\n[enforcement]\nmax_inventory_entries = 5\nmax_actions_per_update = 3\n";
    let dev = Device::with_config(WECHAT_KASPERSKY_TOML, "1d", extra);
    for i in 0..8 {
        dev.install(&format!("Downloads/decoy-{i}.apk"), b"");
    }
    eventually("the bound filled with decoys", WAIT, || {
        dev.status().filter(|s| s["daemon"]["reasons"].to_string().contains("reached its bound of 5 entries"))
    });
    let games: Vec<PathBuf> =
        (0..6).map(|i| dev.install(&format!("Applications/Game-{i}-x86_64.AppImage"), &appimage("game"))).collect();
    // Seen (the uid is over its bound, so they are not remembered) and allowed by policy v1.
    eventually("the games looked at", WAIT, || {
        dev.status().filter(|s| s["enforcement"]["counters"]["detected"].as_u64() >= Some(14))
    });
    for g in &games {
        assert!(dev.inventory_has(g).is_none(), "{} is beyond the bound", g.display());
    }
    let games_banned = format!(
        "{WECHAT_KASPERSKY_TOML}\n[[rule]]\nid = \"games\"\naction = \"quarantine\"\n[[rule.match]]\nkind = \"appimage\"\nname = \"*game*\"\n"
    );
    dev.publish(&games_banned);
    let out = dev.ctl(&["sync"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = eventually("the update counted past the cap", WAIT, || {
        dev.status().filter(|s| s["pending"]["needs_confirmation"].as_u64() > Some(0))
    });
    let moved = games.iter().filter(|g| !g.exists()).count();
    assert!(moved <= 3, "{moved} acted on past a cap of 3 without confirmation: {s}");
    assert_eq!(moved + s["pending"]["needs_confirmation"].as_u64().unwrap() as usize, 6, "{s}");
    assert!(events(&dev).contains("\"type\":\"needs-confirmation\""));
    // An arrival after the update is acted on at once, beyond the bound or not.
    let late = dev.install("Applications/Game-late-x86_64.AppImage", &appimage("late game"));
    eventually("a banned AppImage arriving after the update quarantined", WAIT, || gone(&late));
    // A later rescan does not act on the held ones either.
    assert!(dev.ctl(&["scan"]).status.success());
    assert_eq!(games.iter().filter(|g| !g.exists()).count(), moved, "held files stay held until confirm");
    let out = dev.ctl(&["confirm"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("every held game quarantined after confirm", WAIT, || games.iter().all(|g| !g.exists()).then_some(()));
}

/// Finding 14: an audit-only verdict on a user's file is shown to that user (in `events` and
/// in `status`'s last actions) and not to another user; root sees both. On main audit-only
/// records carried no owner, so no user saw their own.
#[test]
fn audit_only_actions_are_shown_to_the_files_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    if !need(&["setpriv"]) {
        return;
    }
    let policy =
        "[[rule]]\nid = \"games-audit\"\naction = \"audit\"\n[[rule.match]]\nkind = \"appimage\"\nname = \"*game*\"\n";
    let dev = Device::new(policy);
    let (a, b) = (65534u32, 1000u32);
    let mut paths = Vec::new();
    for (uid, name) in [(a, "GameOfA-x86_64.AppImage"), (b, "GameOfB-x86_64.AppImage")] {
        let staged = dev.staging.join(name);
        std::fs::write(&staged, appimage(name)).unwrap();
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&staged, Some(uid), Some(uid)).unwrap();
        let dest = dev.home.join("Downloads").join(name);
        std::fs::rename(&staged, &dest).unwrap();
        paths.push(dest);
    }
    eventually("both audit records written", WAIT, || {
        let ev = events(&dev);
        (ev.contains("GameOfA") && ev.contains("GameOfB")).then_some(())
    });
    assert!(paths.iter().all(|p| p.exists()), "audit only: nothing moved");
    let ctl = dev.tmp.path().join("embargoctl-copy");
    std::fs::copy(bin("embargoctl"), &ctl).unwrap();
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_user = |uid: u32, args: &[&str]| {
        let out = Command::new("setpriv")
            .args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()])
            .arg(&ctl)
            .arg("--socket")
            .arg(&dev.socket)
            .args(args)
            .output()
            .expect("setpriv");
        assert!(out.status.code().is_some_and(|c| c <= 1), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for args in [&["events", "--json"][..], &["status", "--json"]] {
        let seen_by_a = as_user(a, args);
        assert!(seen_by_a.contains("GameOfA"), "{args:?}: A does not see the audit record of A's file: {seen_by_a}");
        assert!(!seen_by_a.contains("GameOfB"), "{args:?}: A sees B's: {seen_by_a}");
        let seen_by_b = as_user(b, args);
        assert!(seen_by_b.contains("GameOfB") && !seen_by_b.contains("GameOfA"), "{args:?}: {seen_by_b}");
    }
    let ev = events(&dev);
    assert!(ev.contains(&format!("\"owner_uid\":{a}")) && ev.contains(&format!("\"owner_uid\":{b}")), "{ev}");
}
