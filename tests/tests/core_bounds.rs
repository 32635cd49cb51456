//! The core loop's bounds against a user who wants to stall it (issue 10, the core findings):
//! the real embargod, embargoctl and embargo-server, real files in temp directories.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use embargo_e2e::*;
use embargo_policy::example::WECHAT_KASPERSKY_TOML;

const WAIT: Duration = Duration::from_secs(15);

/// How long one `embargoctl status` may take while the daemon is handling an attack.
const STATUS_BOUND: Duration = Duration::from_secs(2);

fn gone(p: &Path) -> Option<()> {
    (!p.exists()).then_some(())
}

/// Runs `embargoctl status --json` and returns how long it took, or panics if it took longer
/// than `bound` (the child is killed then, so a stalled daemon fails the test rather than hangs).
fn timed_status(dev: &Device, bound: Duration) -> (Duration, serde_json::Value) {
    let start = Instant::now();
    let mut child = Command::new(bin("embargoctl"))
        .arg("--socket")
        .arg(&dev.socket)
        .args(["status", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = eventually("embargoctl status to answer", bound, || child.try_wait().unwrap());
    let took = start.elapsed();
    assert!(status.code().is_some_and(|c| c <= 1), "status exit {status:?}");
    let mut out = Vec::new();
    std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    (took, serde_json::from_slice(&out).unwrap())
}

/// Finding 6: a 1 TiB sparse file (a few KiB on disk) with the AppImage magic, under a name no
/// rule bans (so only its hash could judge it), must not stall the loop: status answers within
/// `STATUS_BOUND`, a banned AppImage dropped right after is quarantined within `WAIT`, the
/// sparse file is reported as not hashed, and SIGTERM stops the daemon promptly.
#[test]
fn a_one_tib_sparse_appimage_does_not_stall_the_loop() {
    let mut dev = Device::new(WECHAT_KASPERSKY_TOML);
    let staged = dev.staging.join("Huge-x86_64.AppImage");
    {
        let f = std::fs::File::create(&staged).unwrap();
        std::io::Write::write_all(&mut &f, &appimage("huge")).unwrap();
        f.set_len(1 << 40).unwrap();
    }
    let huge = dev.home.join("Downloads/Huge-x86_64.AppImage");
    std::fs::rename(&staged, &huge).unwrap();
    let dropped = Instant::now();
    let banned = dev.install("Applications/WeChat-x86_64.AppImage", &appimage("wechat"));
    eventually("the banned AppImage to be quarantined while the sparse file is handled", WAIT, || gone(&banned));
    eprintln!("banned AppImage quarantined {:?} after the sparse file was dropped", dropped.elapsed());
    let (took, _) = timed_status(&dev, STATUS_BOUND);
    eprintln!("status answered in {took:?}");
    // The sparse file is reported as not hashed (over the cap), not silently allowed.
    let s = eventually("the sparse file reported as unhashed", WAIT, || {
        let (_, s) = timed_status(&dev, STATUS_BOUND);
        (s["enforcement"]["counters"]["unhashed"].as_u64() >= Some(1)).then_some(s)
    });
    assert_eq!(s["enforcement"]["counters"]["quarantined"], 1, "{s}");
    let listed = &s["enforcement"]["unhashed"][0];
    assert_eq!(listed["path"], huge.to_str().unwrap(), "{s}");
    assert!(listed["reason"].as_str().is_some_and(|w| w.contains("over cap") && w.contains("sparse")), "{s}");
    assert!(dev.inventory_has(&huge).is_some(), "it is in the inventory, without a verdict");
    assert!(huge.exists(), "nothing but its hash could judge it: it stays");
    let events = String::from_utf8_lossy(&dev.ctl(&["events", "--json"]).stdout).into_owned();
    assert!(events.contains("\"type\":\"unhashed\""), "{events}");

    // SIGTERM is honoured promptly.
    let agent = dev.agent.as_mut().unwrap();
    let killed = Command::new("kill").args(["-TERM", &agent.0.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let start = Instant::now();
    eventually("embargod to exit on SIGTERM", Duration::from_secs(5), || agent.0.try_wait().unwrap());
    eprintln!("embargod exited {:?} after SIGTERM", start.elapsed());
}

/// Finding 6, with the cap raised above the sparse file so it really is read (for minutes, on a
/// pool thread): the loop still answers and enforces, and SIGTERM does not wait for the hash.
#[test]
fn hashing_a_terabyte_happens_off_the_loop() {
    let mut dev = Device::with_config(WECHAT_KASPERSKY_TOML, "1d", "\n[enforcement]\nmax_hash_bytes = 2199023255552\n");
    let staged = dev.staging.join("Huge-x86_64.AppImage");
    {
        let f = std::fs::File::create(&staged).unwrap();
        std::io::Write::write_all(&mut &f, &appimage("huge")).unwrap();
        f.set_len(1 << 40).unwrap();
    }
    let huge = dev.home.join("Downloads/Huge-x86_64.AppImage");
    std::fs::rename(&staged, &huge).unwrap();
    let dropped = Instant::now();
    let banned = dev.install("Applications/WeChat-x86_64.AppImage", &appimage("wechat"));
    eventually("the banned AppImage to be quarantined while the terabyte is hashed", WAIT, || gone(&banned));
    eprintln!("banned AppImage quarantined {:?} after the sparse file was dropped", dropped.elapsed());
    let mut took = Vec::new();
    for _ in 0..20 {
        took.push(timed_status(&dev, STATUS_BOUND).0);
    }
    took.sort();
    eprintln!("status while hashing: median {:?}, max {:?}", took[took.len() / 2], took[took.len() - 1]);
    let s = timed_status(&dev, STATUS_BOUND).1;
    assert_eq!(s["enforcement"]["counters"]["quarantined"], 1, "{s}");
    assert_eq!(s["enforcement"]["counters"]["unhashed"], 0, "still being hashed: {s}");
    let agent = dev.agent.as_mut().unwrap();
    let killed = Command::new("kill").args(["-TERM", &agent.0.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let start = Instant::now();
    eventually("embargod to exit on SIGTERM while hashing", Duration::from_secs(5), || agent.0.try_wait().unwrap());
    eprintln!("embargod exited {:?} after SIGTERM", start.elapsed());
}

/// Finding 2: a banned build written with `dd conv=notrunc` over a same-size decoy the agent
/// has already hashed must be judged by its new bytes: a sha256 rule quarantines it.
#[test]
fn an_in_place_overwrite_of_a_hashed_decoy_is_judged_by_its_new_hash() {
    let banned_bytes = appimage("the banned build");
    let decoy_bytes = appimage("a harmless decoy");
    assert_eq!(banned_bytes.len(), decoy_bytes.len());
    let policy = format!(
        "[[rule]]\nid = \"banned-build\"\naction = \"quarantine\"\n[[rule.match]]\nkind = \"appimage\"\nsha256 = [\"{}\"]\n",
        embargo_policy::trust::sha256_hex(&banned_bytes)
    );
    let dev = Device::new(&policy);
    let decoy = dev.install("Downloads/Tool-x86_64.AppImage", &decoy_bytes);
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&decoy).unwrap());
    let entry = eventually("the decoy hashed in the inventory", WAIT, || {
        dev.inventory_has(&decoy).filter(|e| e["app"]["sha256"].is_string())
    });
    assert!(entry.get("verdict").is_none(), "{entry}");
    let staged = dev.staging.join("banned.bin");
    std::fs::write(&staged, &banned_bytes).unwrap();
    let out = Command::new("dd")
        .arg(format!("if={}", staged.display()))
        .arg(format!("of={}", decoy.display()))
        .args(["conv=notrunc", "status=none"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("the overwritten decoy to be quarantined by the sha256 rule", WAIT, || gone(&decoy));
    let items = dev.quarantine_list();
    assert_eq!(items[0]["rule"], "banned-build", "{items:?}");
    assert_eq!(items[0]["sha256"], embargo_policy::trust::sha256_hex(&banned_bytes).as_str());
    assert_eq!(items[0]["ino"], inode, "the same inode, written in place: {items:?}");
}

/// Finding 3: an admin's restore exempts the restored *content* (its sha256), not the inode, and
/// the exemption survives a restart (state file); overwriting the restored inode with another
/// banned build gets it quarantined.
#[test]
fn a_restore_exempts_the_content_not_the_inode() {
    let policy = "[[rule]]\nid = \"wechat\"\naction = \"quarantine\"\n[[rule.match]]\nkind = \"appimage\"\nname = \"*wechat*\"\n";
    let mut dev = Device::new(policy);
    let restored_bytes = appimage("wechat build the admin allowed");
    let path = dev.install("Downloads/WeChat-x86_64.AppImage", &restored_bytes);
    eventually("WeChat quarantined", WAIT, || gone(&path));
    let id = dev.quarantine_list()[0]["id"].as_str().unwrap().to_owned();
    let out = dev.ctl(&["quarantine", "restore", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&path).unwrap(), restored_bytes);
    assert!(dev.state.join("exemptions.json").exists(), "exemptions are persisted");

    // Across a restart the restored content stays exempt (judged with its hash, then left).
    dev.stop_agent();
    dev.start_agent();
    let entry = eventually("the restored file hashed in the inventory", WAIT, || {
        dev.inventory_has(&path).filter(|e| e["app"]["sha256"].is_string())
    });
    assert_eq!(entry["verdict"]["rule"], "wechat", "{entry}");
    assert!(path.exists(), "the restored build is exempt after a restart");

    // The user overwrites the restored inode with another build: not exempt.
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    std::fs::write(&path, appimage("wechat build nobody allowed, longer")).unwrap();
    eventually("the overwritten restored inode to be quarantined", WAIT, || gone(&path));
    let items = dev.quarantine_list();
    assert!(items.iter().any(|m| m["ino"] == inode), "the restored inode itself: {items:?}");
}

/// Finding 8: the inventory remembers at most `max_inventory_entries` per root and per uid;
/// status degrades naming both; a banned file arriving beyond the bound is still quarantined;
/// `inventory` is answered page by page and lists what is remembered.
#[test]
fn the_inventory_is_bounded_per_root_and_uid_and_enforcement_goes_on() {
    let dev = Device::with_config(WECHAT_KASPERSKY_TOML, "1d", "\n[enforcement]\nmax_inventory_entries = 50\n");
    let dir = dev.staging.join("many");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..200 {
        std::fs::write(dir.join(format!("app-{i:04}.apk")), b"").unwrap();
    }
    let dest = dev.home.join("Downloads/many");
    std::fs::rename(&dir, &dest).unwrap();
    let root = dev.home.join("Downloads");
    let s = eventually("status degraded by the inventory bound", WAIT, || {
        dev.status().filter(|s| {
            let reasons = s["daemon"]["reasons"].to_string();
            reasons.contains(&format!("inventory of {}", root.display())) && reasons.contains("inventory of uid ")
        })
    });
    assert_eq!(s["daemon"]["health"], "degraded", "{s}");
    let banned = dev.install("Downloads/WeChat-x86_64.AppImage", &appimage("wechat"));
    eventually("a banned AppImage beyond the bound still quarantined", WAIT, || gone(&banned));
    let out = dev.ctl(&["inventory", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let apks =
        v["apps"].as_array().unwrap().iter().filter(|e| e["app"]["id"].as_str().unwrap().ends_with(".apk")).count();
    assert_eq!(apks, 50, "remembered up to the bound");
    assert!(v.get("next").is_none());
}

/// The figure for finding 8 (`EMBARGO_BENCH_INVENTORY=1`): 200,000 empty `*.apk` files under
/// long directory names in a watched folder; prints embargod's VmHWM (peak RSS) before and
/// after the whole scan, and the peak of one `inventory` request (VmHWM reset via
/// /proc/PID/clear_refs). `EMBARGO_BENCH_INVENTORY=flat` puts all of them in one directory.
#[test]
fn bench_inventory_memory_under_200k_apk_files() {
    if std::env::var_os("EMBARGO_BENCH_INVENTORY").is_none() {
        eprintln!("set EMBARGO_BENCH_INVENTORY=1 to run this figure");
        return;
    }
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let pid = dev.agent.as_ref().unwrap().0.id();
    let hwm = || {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines().find(|l| l.starts_with("VmHWM")).unwrap().to_owned()
    };
    let rss = || {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines().find(|l| l.starts_with("VmRSS")).unwrap().to_owned()
    };
    eprintln!("before: {} {}", hwm(), rss());
    let top = dev.staging.join("flood");
    let long = "d".repeat(200);
    // `flat`: all 200,000 in one directory (the batch bound must hold inside a directory).
    let flat = std::env::var("EMBARGO_BENCH_INVENTORY").is_ok_and(|v| v == "flat");
    let mut n = 0;
    for a in 0..10 {
        for b in 0..20 {
            let d = if flat {
                top.join(&long).join(&long).join(&long)
            } else {
                top.join(format!("{long}{a}")).join(format!("{long}{b}")).join(&long)
            };
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..1000 {
                std::fs::write(d.join(format!("{long}-{a}-{b}-{i:04}.apk")), b"").unwrap();
                n += 1;
            }
        }
    }
    std::fs::rename(&top, dev.home.join("Downloads/flood")).unwrap();
    let start = Instant::now();
    // The scan is done when the inventory bound was reached and no walk is still continuing
    // (a scan over a batch bound says "continuing" until its last batch).
    eventually("the flood scanned to its end", Duration::from_secs(1200), || {
        dev.status().filter(|s| {
            let r = s["daemon"]["reasons"].to_string();
            r.contains("inventory of") && !r.contains("continuing where it stopped")
        })
    });
    // A banned AppImage dropped now is quarantined (the flood holds nothing up).
    let banned = dev.install("Downloads/WeChat-x86_64.AppImage", &appimage("wechat"));
    eventually("the banned AppImage after the flood quarantined", Duration::from_secs(60), || gone(&banned));
    eprintln!("{n} files; after the scan ({:?}): {} {}", start.elapsed(), hwm(), rss());
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let t = Instant::now();
    let out = dev.ctl(&["inventory", "--json"]);
    assert!(out.status.success());
    eprintln!("one inventory request ({} bytes, {:?}): {}", out.stdout.len(), t.elapsed(), hwm());
}

/// Finding 14: a user reads only their own items (plus aggregate counts) through `inventory`,
/// `quarantine list`, `events` and `status`; root sees everything. The other user's files are
/// owned by uid 1000 here (chown as root); the reader is `nobody` via setpriv.
#[test]
fn reads_are_filtered_by_the_callers_uid() {
    use std::os::unix::fs::PermissionsExt as _;
    if !need(&["setpriv"]) {
        return;
    }
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let secret_allowed = dev.install("Applications/Secret-Project-x86_64.AppImage", &appimage("secret"));
    std::os::unix::fs::chown(&secret_allowed, Some(1000), Some(1000)).unwrap();
    let mine = dev.install("Applications/Mine-x86_64.AppImage", &appimage("nobody's own"));
    std::os::unix::fs::chown(&mine, Some(65534), Some(65534)).unwrap();
    let staged = dev.staging.join("WeChat-x86_64.AppImage");
    std::fs::write(&staged, appimage("wechat of uid 1000")).unwrap();
    std::os::unix::fs::chown(&staged, Some(1000), Some(1000)).unwrap();
    let banned = dev.home.join("Downloads/WeChat-x86_64.AppImage");
    std::fs::rename(&staged, &banned).unwrap();
    eventually("uid 1000's WeChat quarantined", WAIT, || gone(&banned));
    // A rescan makes sure the allowed file is seen with its new owner.
    assert!(dev.ctl(&["scan"]).status.success());
    eventually("root sees the secret file", WAIT, || dev.inventory_has(&secret_allowed));
    assert_eq!(dev.quarantine_list().len(), 1);

    let ctl = dev.tmp.path().join("embargoctl-copy");
    std::fs::copy(bin("embargoctl"), &ctl).unwrap();
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&ctl)
            .arg("--socket")
            .arg(&dev.socket)
            .args(args)
            .output()
            .expect("setpriv");
        assert!(out.status.code().is_some_and(|c| c <= 1), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for args in
        [&["inventory", "--json"][..], &["quarantine", "list", "--json"], &["events", "--json"], &["status", "--json"]]
    {
        let out = as_nobody(args);
        assert!(!out.contains("Secret-Project") && !out.contains("WeChat-x86_64"), "{args:?} discloses: {out}");
    }
    // Their own file is shown, the others counted.
    let inv: serde_json::Value = serde_json::from_str(&as_nobody(&["inventory", "--json"])).unwrap();
    let ids: Vec<&str> = inv["apps"].as_array().unwrap().iter().filter_map(|e| e["app"]["id"].as_str()).collect();
    assert_eq!(ids, ["Mine-x86_64.AppImage"], "{inv}");
    // Aggregates stay visible.
    let s: serde_json::Value = serde_json::from_str(&as_nobody(&["status", "--json"])).unwrap();
    assert_eq!(s["enforcement"]["counters"]["quarantined"], 1, "{s}");
    assert_eq!(s["quarantine"]["items"], 1, "{s}");
    // Root still sees everything.
    let root_events = String::from_utf8_lossy(&dev.ctl(&["events", "--json"]).stdout).into_owned();
    assert!(root_events.contains("WeChat-x86_64"));
}

/// The figure for finding 11 (`EMBARGO_BENCH_QUARANTINE=N`, e.g. 20000): N banned files
/// quarantined, then `status` timed (median, p90, max over 50 calls) while a banned AppImage is
/// dropped; prints how long that one took to be quarantined.
#[test]
fn bench_status_with_a_large_quarantine_store() {
    let Some(n) = std::env::var("EMBARGO_BENCH_QUARANTINE").ok().and_then(|v| v.parse::<usize>().ok()) else {
        eprintln!("set EMBARGO_BENCH_QUARANTINE=N to run this figure");
        return;
    };
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let dir = dev.staging.join("flood");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..n {
        std::fs::write(dir.join(format!("WeChat-{i}.AppImage")), appimage("w")).unwrap();
    }
    let start = Instant::now();
    std::fs::rename(&dir, dev.home.join("Downloads/flood")).unwrap();
    eventually("all quarantined", Duration::from_secs(3600), || {
        dev.status().filter(|s| s["enforcement"]["counters"]["quarantined"].as_u64() >= Some(n as u64))
    });
    eprintln!("{n} quarantined in {:?}", start.elapsed());
    // status is called in a loop on another thread while a banned AppImage is dropped.
    let mut took = std::thread::scope(|sc| {
        let poller = sc.spawn(|| (0..50).map(|_| timed_status(&dev, Duration::from_secs(30)).0).collect::<Vec<_>>());
        let banned = dev.install("Applications/WeChat-x86_64.AppImage", &appimage("late"));
        let dropped = Instant::now();
        eventually("the late one quarantined", WAIT, || gone(&banned));
        eprintln!("a banned AppImage dropped during the status calls was gone after {:?}", dropped.elapsed());
        poller.join().unwrap()
    });
    took.sort();
    eprintln!(
        "status with {n} items: median {:?}, p90 {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() * 9 / 10],
        took[took.len() - 1]
    );
}
