//! No silent scan limits: a banned AppImage deeper than PATH_MAX is found, a bind-mount loop in a
//! watched folder neither hangs the agent nor repeats the scan, and a scan that reaches the bound
//! on entries per scan says so (status and audit) and continues where it stopped.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use embargo_e2e::*;
use embargo_policy::example::WECHAT_KASPERSKY_TOML;

const WAIT: Duration = Duration::from_secs(30);

fn events(dev: &Device) -> String {
    String::from_utf8_lossy(&dev.ctl(&["events", "--json"]).stdout).into_owned()
}

#[test]
fn a_banned_appimage_1000_levels_deep_renamed_in_as_one_tree_is_quarantined() {
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let src = dev.staging.join("WeChat.src");
    std::fs::write(&src, appimage("deep wechat")).unwrap();
    // 1,000 levels of 8-byte names: a 9,000-byte path, over PATH_MAX; built with relative
    // `cd`s, as nothing can name it whole.
    let script = format!(
        "set -e; cd '{}'; mkdir tree; cd tree; i=0; while [ $i -lt 1000 ]; do mkdir levelxyz; cd levelxyz; i=$((i+1)); done; cp '{}' WeChat-x86_64.AppImage",
        dev.staging.display(),
        src.display()
    );
    // bash, not dash: dash resolves `cd` through the whole $PWD and fails past PATH_MAX.
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::rename(dev.staging.join("tree"), dev.home.join("Downloads/tree")).unwrap();
    let items =
        eventually("the deep AppImage quarantined", WAIT, || Some(dev.quarantine_list()).filter(|l| l.len() == 1));
    assert_eq!(items[0]["rule"], "wechat", "{items:?}");
    let original = items[0]["original_path"].as_str().unwrap();
    assert!(original.len() > 4096 && original.ends_with("/WeChat-x86_64.AppImage"), "{original}");
}

/// Unmounts on drop, before the temp dirs go (so nothing walks through the mount to delete).
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn bind(src: &Path, dst: &Path) -> Option<Mounted> {
    std::fs::create_dir_all(dst).unwrap();
    let ok = Command::new("mount").arg("--bind").arg(src).arg(dst).status().is_ok_and(|s| s.success());
    if !ok {
        skip("needs `mount --bind` (root with CAP_SYS_ADMIN)");
        return None;
    }
    Some(Mounted(dst.to_path_buf()))
}

#[test]
fn a_bind_mount_loop_in_a_watched_folder_neither_hangs_nor_repeats() {
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let downloads = dev.home.join("Downloads");
    let Some(_mount) = bind(&downloads, &downloads.join("loop")) else { return };
    let banned = dev.install("Downloads/WeChat-x86_64.AppImage", &appimage("looped wechat"));
    eventually("the AppImage quarantined", WAIT, || (!banned.exists()).then_some(()));
    // A full scan through the loop answers promptly and finds nothing twice.
    let out = dev.ctl(&["scan"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dev.status().is_some(), "the agent still answers");
    let items = dev.quarantine_list();
    assert_eq!(items.len(), 1, "quarantined once, not again through the loop: {items:?}");
    assert!(!events(&dev).contains("loop/WeChat"), "nothing acted on through the mount");
}

#[test]
fn a_scan_over_the_file_bound_degrades_status_and_continues_to_the_banned_file() {
    let dev = Device::with_config(WECHAT_KASPERSKY_TOML, "1d", "\n[enforcement]\nmax_files_per_scan = 50\n");
    let tree = dev.staging.join("bundle");
    for d in 0..6 {
        let dir = tree.join(format!("part{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..50 {
            std::fs::write(dir.join(format!("decoy{i}.dat")), b"not an app").unwrap();
        }
    }
    std::fs::write(tree.join("part5/WeChat-x86_64.AppImage"), appimage("among decoys")).unwrap();
    let landed = dev.home.join("Downloads/bundle");
    std::fs::rename(&tree, &landed).unwrap();
    eventually("the banned file among 300 decoys quarantined", WAIT, || {
        Some(dev.quarantine_list()).filter(|l| l.len() == 1)
    });
    assert!(!landed.join("part5/WeChat-x86_64.AppImage").exists());
    let ev = events(&dev);
    assert!(ev.contains("\"type\":\"scan-bound\"") && ev.contains("entries per scan"), "{ev}");
    let s = dev.status().unwrap();
    let reasons = s["daemon"]["reasons"].to_string();
    let root = dev.home.join("Downloads");
    assert!(reasons.contains(&*root.to_string_lossy()) && reasons.contains("bound of 50 entries"), "{s}");
}
