//! The Android image files in `packaging/android/` agree with the agent and with each other.
//! `packaging/android/check.sh` runs them for real under qemu, but it is not part of `.ci/run`
//! (the aarch64 target may not be installable there); this keeps a broken `agent.toml` or an
//! `.rc` that names other paths from passing CI. On a device a config error is exit 64, which init
//! restarts forever.

use std::path::{Path, PathBuf};

use embargo_agent::config::Config;
use embargo_policy::rules::Kind;

fn packaging(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/android").join(name)
}

#[test]
fn the_shipped_android_config_loads_and_agrees_with_the_init_service() {
    let text = std::fs::read_to_string(packaging("agent.toml")).unwrap();
    // Parsed as on the device, under the path the image installs it at.
    let cfg = Config::parse(Path::new("/system/etc/embargo/agent.toml"), &text)
        .unwrap_or_else(|e| panic!("packaging/android/agent.toml: {e}"));
    // Installed apps are read from the device root; Downloads of every user are watched.
    let watches: Vec<(Kind, Vec<PathBuf>)> = cfg.watches.iter().map(|w| (w.kind, w.patterns.clone())).collect();
    assert!(watches.contains(&(Kind::Android, vec![PathBuf::from("/")])), "{watches:?}");
    assert!(watches.contains(&(Kind::File, vec![PathBuf::from("/data/media/*/Download")])), "{watches:?}");
    // The trust anchor sits on /system (verified boot), the state on /data.
    assert_eq!(cfg.root, Path::new("/system/etc/embargo/root.json"));
    assert!(cfg.state_dir.starts_with("/data/misc/embargo"), "{}", cfg.state_dir.display());
    // The `.rc` grants no CAP_SYS_ADMIN, so an enabled exec gate (fanotify) could not start and
    // the daemon would stop at every start.
    assert!(!cfg.exec.enabled, "the exec gate needs SYS_ADMIN, which embargod.rc does not grant");

    let rc = std::fs::read_to_string(packaging("embargod.rc")).unwrap();
    let service = rc.lines().find(|l| l.starts_with("service embargod ")).expect("a `service embargod` line");
    assert_eq!(service, "service embargod /system/bin/embargod --config /system/etc/embargo/agent.toml");
    // init makes the state directory and the socket's directory before the service starts.
    let made: Vec<&str> = rc
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mkdir "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(made.contains(&cfg.state_dir.to_str().unwrap()), "{made:?} lacks {}", cfg.state_dir.display());
    let socket_dir = cfg.socket.parent().unwrap();
    assert!(made.contains(&socket_dir.to_str().unwrap()), "{made:?} lacks {}", socket_dir.display());
    let caps = rc.lines().find_map(|l| l.trim().strip_prefix("capabilities ")).expect("a capabilities line");
    assert!(!caps.split_whitespace().any(|c| c == "SYS_ADMIN"), "{caps}");
}
