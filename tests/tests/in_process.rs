//! The agent run in the test process (`Device::run_in_process`: `embargo_agent::run_with_clock`
//! with a manual clock) for the behaviours that depend on mode, the action cap and time: monitor
//! mode, the cap with `confirm`, and expiry judged by a clock the test advances — no sleeps.

use std::time::Duration;

use embargo_e2e::*;
use embargo_policy::example::WECHAT_KASPERSKY_TOML;

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn in_process_monitor_mode_records_but_never_moves() {
    let mut dev = Device::new(WECHAT_KASPERSKY_TOML);
    let text = std::fs::read_to_string(&dev.config).unwrap();
    std::fs::write(&dev.config, text.replace("mode = \"enforce\"", "mode = \"monitor\"")).unwrap();
    let _agent = dev.run_in_process();
    let banned = dev.install("Downloads/WeChat-x86_64.AppImage", &appimage("monitored"));
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
fn in_process_an_update_over_the_cap_waits_for_confirm() {
    let mut dev = Device::with_config(KASPERSKY_ONLY, "1d", "\n[enforcement]\nmax_actions_per_update = 2\n");
    let _agent = dev.run_in_process();
    let files: Vec<_> = (0..3)
        .map(|i| dev.install(&format!("Downloads/WeChat-{i}.AppImage"), &appimage(&format!("copy {i}"))))
        .collect();
    for f in &files {
        eventually("each copy seen (allowed under v1)", WAIT, || dev.inventory_has(f));
    }
    dev.publish(WECHAT_KASPERSKY_TOML);
    assert!(dev.ctl(&["sync"]).status.success());
    let s = dev.status().unwrap();
    assert_eq!(s["pending"]["needs_confirmation"], 3, "{s}");
    assert!(files.iter().all(|f| f.exists()), "over the cap: nothing acted on");
    assert!(dev.ctl(&["confirm"]).status.success());
    assert!(files.iter().all(|f| !f.exists()), "confirmed: all acted on");
}

#[test]
fn in_process_expiry_degrades_status_and_enforcement_goes_on_without_sleeping() {
    let mut dev = Device::new(WECHAT_KASPERSKY_TOML);
    let agent = dev.run_in_process();
    dev.stop_server();
    let s = dev.status().unwrap();
    assert!(!s["daemon"]["reasons"].to_string().contains("expired"), "{s}");
    let expires = s["policy"]["timestamp_expires"].as_str().unwrap().to_owned();
    // One day and a minute later (the device's timestamp lives one day).
    agent.clock.advance(Duration::from_secs(86_400 + 60));
    let s = dev.status().unwrap();
    assert_eq!(s["daemon"]["health"], "degraded", "{s}");
    assert!(s["daemon"]["reasons"].to_string().contains(&format!("expired at {expires}")), "{s}");
    assert_eq!(dev.ctl(&["status"]).status.code(), Some(1));
    let banned = dev.install("Downloads/WeChat-x86_64.AppImage", &appimage("after expiry"));
    eventually("still enforced after expiry", WAIT, || (!banned.exists()).then_some(()));
}
