//! PRODUCT.md: "a kill -9 at any instant leaves quarantined files recoverable and state
//! consistent". The real embargod is killed with SIGKILL again and again while banned files
//! (small ones, and large ones whose hash is taken after the move) arrive, and restarted each
//! time; in the end every file is quarantined exactly once with a complete manifest and its
//! exact bytes, the store holds nothing else, and the audit chain verifies.

use std::path::PathBuf;
use std::time::Duration;

use embargo_e2e::*;
use embargo_policy::example::WECHAT_KASPERSKY_TOML;
use embargo_policy::trust::sha256_hex;

#[test]
fn kill_9_at_any_instant_loses_nothing() {
    let mut dev = Device::new(WECHAT_KASPERSKY_TOML);
    let mut dropped: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for round in 0..12 {
        // A different number of arrivals each round, so the kill lands at different points of
        // the handling: before the move, between the move and the manifest, during the hash.
        for _ in 0..=round % 4 {
            let i = dropped.len();
            let size = if i % 3 == 0 { 8 << 20 } else { 1000 + i };
            let bytes = appimage(&format!("{i}:{}", "x".repeat(size)));
            let path = dev.install(&format!("Downloads/WeChat-{i}-x86_64.AppImage"), &bytes);
            dropped.push((path, bytes));
        }
        dev.stop_agent(); // SIGKILL
        dev.start_agent();
    }
    for (path, _) in &dropped {
        eventually(&format!("{} to be handled", path.display()), Duration::from_secs(30), || {
            (!path.exists()).then_some(())
        });
    }
    let items = eventually("every manifest complete", Duration::from_secs(30), || {
        Some(dev.quarantine_list())
            .filter(|l| l.len() == dropped.len() && l.iter().all(|m| !m["sha256"].as_str().unwrap_or("").is_empty()))
    });
    let store = dev.state.join("quarantine");
    for (path, bytes) in &dropped {
        let m = items
            .iter()
            .find(|m| m["original_path"].as_str() == path.to_str())
            .unwrap_or_else(|| panic!("{} is not in the store: {items:?}", path.display()));
        assert_eq!(m["sha256"], sha256_hex(bytes).as_str(), "{m}");
        let id = m["id"].as_str().unwrap();
        assert_eq!(&std::fs::read(store.join(format!("{id}.bin"))).unwrap(), bytes, "{id}");
    }
    let mut expected: Vec<String> = items
        .iter()
        .flat_map(|m| {
            let id = m["id"].as_str().unwrap();
            [format!("{id}.bin"), format!("{id}.json")]
        })
        .collect();
    let mut present: Vec<String> =
        std::fs::read_dir(&store).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    expected.sort();
    present.sort();
    assert_eq!(present, expected, "nothing but payloads and their manifests in the store");
    let out = dev.ctl(&["events", "--json"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("WARNING"), "{}", String::from_utf8_lossy(&out.stderr));
    // The audit chain survived the kills.
    let out = dev.ctl(&["events", "--verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
