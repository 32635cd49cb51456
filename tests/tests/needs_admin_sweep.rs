//! The running-process sweep and the needs-admin paths, with real processes: a process whose
//! executable is a file of a needs-admin package (by path, `OwnedPaths`) is found whatever the
//! rule set says of the file, recorded only in monitor mode, killed through a pidfd otherwise
//! with evidence naming the package's rule and the reason; a protected one is spared and an
//! allowed one keeps running. No root or fanotify needed (the processes are our own children).
//! The daemon side (a refused dpkg removal, then the kill) is in `exec_gate_daemon.rs`.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use embargo_agent::exec_gate::{judge_exec, GateMode, OwnedPaths};
use embargo_agent::exec_wire::stop_now;
use embargo_agent::running::{scan, scan_with_owned, StopReason};
use embargo_policy::matcher::RuleSet;

/// A copy of `sleep` with `marker` appended (its own inode and hash), mode 0755.
fn sleeper(dir: &Path, name: &str, marker: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let mut bytes = std::fs::read("/bin/sleep").unwrap();
    bytes.extend_from_slice(marker.as_bytes());
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn a_needs_admin_packages_running_process_is_found_by_path_recorded_in_monitor_mode_and_killed_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    // The kernel names the executable by its canonical path (a /tmp that is a symlink is
    // resolved), as the agent names needs-admin files.
    let dir = std::fs::canonicalize(tmp.path()).unwrap();
    std::fs::create_dir_all(dir.join("opt/wechat")).unwrap();
    let helper = sleeper(&dir.join("opt/wechat"), "wechat-helper", "needs-admin helper");
    let kept = sleeper(&dir.join("opt/wechat"), "wechat-protected", "needs-admin but protected");
    let other = sleeper(&dir, "other", "allowed");
    let mut h = embargo_e2e::Running(Command::new(&helper).arg("300").spawn().unwrap());
    let mut k = embargo_e2e::Running(Command::new(&kept).arg("300").spawn().unwrap());
    let mut o = embargo_e2e::Running(Command::new(&other).arg("300").spawn().unwrap());
    let (hp, kp, op) = (h.0.id() as i32, k.0.id() as i32, o.0.id() as i32);
    // The pids above exist once spawn returns, but /proc/PID/exe is the new program only
    // once their exec completed.
    embargo_e2e::eventually("the sleepers to have exec'd", std::time::Duration::from_secs(10), || {
        [(hp, &helper), (kp, &kept), (op, &other)]
            .iter()
            .all(|(pid, p)| std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_deref() == Some(p.as_path()))
            .then_some(())
    });

    let rules = RuleSet::default();
    let mut owned = OwnedPaths::default();
    owned.files.insert(helper.clone(), "wechat-deb".into());
    owned.files.insert(kept.clone(), "wechat-deb".into());
    let kept_path = kept.clone();
    let protected = move |p: &Path| p == kept_path;

    // The rule set alone bans none of them: only the needs-admin paths find the helper.
    let plain = scan(&rules, &judge_exec, &protected);
    assert!(plain.targets.iter().all(|t| t.pid != hp), "{:?}", plain.targets);

    let found = scan_with_owned(&rules, &owned, &judge_exec, &protected);
    let target = found.targets.iter().find(|t| t.pid == hp).expect("the helper is a target");
    assert_eq!((target.rule.as_str(), &target.reason, &target.exe), ("wechat-deb", &StopReason::NeedsAdmin, &helper));
    assert!(found.targets.iter().all(|t| t.pid != op && t.pid != kp), "{:?}", found.targets);
    assert!(found.spared.iter().any(|(pid, _, rule)| *pid == kp && rule == "wechat-deb"), "{:?}", found.spared);

    // Monitor mode: recorded, not killed.
    let events = stop_now(found, GateMode::Monitor);
    let text = serde_json::to_string(&events).unwrap();
    assert!(text.contains(&format!("\"pid\":{hp}")), "{text}");
    assert!(text.contains("\"killed\":false") && text.contains("monitor mode"), "{text}");
    assert!(text.contains("needs admin"), "{text}");
    assert!(h.0.try_wait().unwrap().is_none(), "monitor mode kills nothing");

    // Enforce: killed (SIGKILL through a pidfd), the evidence naming the rule and the reason.
    let found = scan_with_owned(&rules, &owned, &judge_exec, &protected);
    let events = stop_now(found, GateMode::Enforce);
    let mine: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .filter(|v| v["pid"].as_i64() == Some(hp as i64))
        .collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    let e = &mine[0];
    assert_eq!(
        (e["type"].as_str(), e["rule"].as_str(), e["killed"].as_bool()),
        (Some("process-killed"), Some("wechat-deb"), Some(true)),
        "{e}"
    );
    assert!(e["reason"].as_str().is_some_and(|r| r.contains("needs admin")), "{e}");
    let status =
        embargo_e2e::eventually("the helper to exit", std::time::Duration::from_secs(10), || h.0.try_wait().unwrap());
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(k.0.try_wait().unwrap().is_none(), "the protected one keeps running");
    assert!(o.0.try_wait().unwrap().is_none(), "the allowed one keeps running");
}
