//! The quarantine store and the audit log against a user who fills them (issue 10, findings 11
//! and 12): the real embargod and embargoctl, real files in temp directories, the attacker as
//! `nobody` (uid 65534) through `setpriv`.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use embargo_e2e::*;
use embargo_policy::example::WECHAT_KASPERSKY_TOML;

const WAIT: Duration = Duration::from_secs(30);
const NOBODY: u32 = 65534;

fn gone(p: &Path) -> Option<()> {
    (!p.exists()).then_some(())
}

/// Whether this test can run: root (to run embargod as root and the attacker as nobody) and
/// setpriv. Skips saying why otherwise (fails under EMBARGO_REQUIRE_TOOLS=1).
fn can_run() -> bool {
    if !is_root() {
        return !skip("needs root to run embargod as root and the attacker as nobody");
    }
    need(&["setpriv"])
}

/// A command run as nobody.
fn as_nobody(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(program);
    c
}

/// One raw request on the control socket (as root), the response parsed.
fn raw(dev: &Device, request: serde_json::Value) -> serde_json::Value {
    let mut s = std::os::unix::net::UnixStream::connect(&dev.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut line = serde_json::to_vec(&serde_json::json!({"v": 1, "request": request})).unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
}

/// Median, 90th percentile and maximum of `d`.
fn spread(d: &mut [Duration]) -> String {
    d.sort();
    let at = |q: f64| d[((d.len() - 1) as f64 * q).round() as usize];
    format!("median {:?}, p90 {:?}, max {:?} (n={})", at(0.5), at(0.9), d[d.len() - 1], d.len())
}

/// Writes a store of `n` items of `uid` and an audit log of as many action records into the
/// stopped agent's state, as 20,000 earlier quarantines would have left them (written directly:
/// 20,000 real quarantines cost 20,000 fsyncs). The log continues the chain already there.
fn fill_state(dev: &Device, n: usize, uid: u32) {
    use embargo_agent::audit::Entry;
    use sha2::Digest as _;
    let q = dev.state.join("quarantine");
    let root = dev.home.join("Downloads");
    for i in 0..n {
        let id = format!("q{:016x}{:04x}", 0x1000_0000_0000_0000u64 + i as u64, 0);
        let m = serde_json::json!({
            "schema_version": 1, "id": id,
            "original_path": root.join(format!("WeChat-{i}.AppImage")).display().to_string(),
            "root": root.display().to_string(), "rel": format!("WeChat-{i}.AppImage"),
            "uid": uid, "gid": uid, "mode": 0o755, "size": 7, "sha256": "00", "rule": "wechat",
            "action": "quarantine", "app_kind": "appimage", "app_id": format!("WeChat-{i}"),
            "quarantined_at": "2026-01-01T00:00:00Z", "purge_after": null, "dev": 1, "ino": i,
        });
        std::fs::write(q.join(format!("{id}.json")), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        std::fs::write(q.join(format!("{id}.bin")), b"payload").unwrap();
    }
    let log = dev.state.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let last: Entry = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let (mut seq, mut prev) = (last.seq, last.hash);
    let mut out = std::io::BufWriter::new(std::fs::OpenOptions::new().append(true).open(&log).unwrap());
    for i in 0..n {
        seq += 1;
        let id = format!("q{:016x}{:04x}", 0x1000_0000_0000_0000u64 + i as u64, 0);
        let event = serde_json::json!({"type": "action", "record": {
            "time": "2026-01-01T00:00:00Z", "action": "quarantine", "result": "quarantined", "rule": "wechat",
            "strength": "weak", "app_kind": "appimage", "app_id": format!("WeChat-{i}"),
            "path": root.join(format!("WeChat-{i}.AppImage")).display().to_string(),
            "quarantine_id": id, "micros": 100}, "sha256": "00", "mode": "enforce", "outcome": "quarantined"});
        let mut e = Entry {
            schema_version: embargo_agent::audit::AUDIT_SCHEMA_VERSION,
            seq,
            time: embargo_policy::metadata::Time::now(),
            prev: prev.clone(),
            event,
            hash: String::new(),
        };
        let mut h = sha2::Sha256::new();
        h.update(e.prev.as_bytes());
        h.update(serde_json::to_vec(&e).unwrap());
        e.hash = hex::encode(h.finalize());
        prev = e.hash.clone();
        serde_json::to_writer(&mut out, &e).unwrap();
        out.write_all(b"\n").unwrap();
    }
    out.flush().unwrap();
}

/// Drops a banned AppImage (as root, into alice's Applications) and returns how long it took to
/// be quarantined.
fn drop_and_time(dev: &Device, i: usize) -> Duration {
    let start = Instant::now();
    let p = dev.install(&format!("Applications/WeChat-drop{i}-x86_64.AppImage"), &appimage("wechat"));
    eventually("a banned drop to be quarantined", WAIT, || gone(&p));
    start.elapsed()
}

/// Finding 11: with 20,000 quarantined items (and 20,000 audit records) of an unprivileged user,
/// that user flooding `status`, `quarantine list` and `events` does not hold enforcement up:
/// banned drops are still quarantined (the latency is printed, without and with the flood), each
/// answer is bounded whatever the client asks (a page of the store, a page of the log), and the
/// whole chain verifies with `events --verify`.
#[test]
fn twenty_thousand_quarantined_items_and_a_read_flood_do_not_hold_enforcement_up() {
    if !can_run() {
        return;
    }
    const ITEMS: usize = 20_000;
    // Default bounds: nobody's 20,000 items exceed the per-uid quota, which is checked only when
    // one more of nobody's files is quarantined (the drops below are root's).
    let mut dev = Device::new(WECHAT_KASPERSKY_TOML);
    let t0 = Instant::now();
    dev.stop_agent();
    fill_state(&dev, ITEMS, NOBODY);
    eprintln!("[{:?}] state filled", t0.elapsed());
    let started = Instant::now();
    dev.start_agent();
    eprintln!("embargod with {ITEMS} quarantined items up in {:?}", started.elapsed());

    // The server bounds each answer, whatever the client asks for.
    let page = raw(&dev, serde_json::json!({"method": "quarantine_list", "limit": 1_000_000}));
    assert_eq!(page["ok"], true, "{page}");
    let items = page["result"]["items"].as_array().unwrap();
    assert_eq!(items.len(), embargo_agent::proto::QUARANTINE_PAGE);
    let next = page["result"]["next"].as_str().unwrap().to_owned();
    let page2 = raw(&dev, serde_json::json!({"method": "quarantine_list", "after": next, "limit": 10}));
    assert_eq!(page2["result"]["items"].as_array().unwrap().len(), 10);
    assert!(page2["result"]["items"][0]["id"].as_str().unwrap() > next.as_str());
    let events = raw(&dev, serde_json::json!({"method": "events", "since": 0, "limit": 1_000_000}));
    assert_eq!(events["ok"], true, "{events}");
    assert_eq!(events["result"]["entries"].as_array().unwrap().len(), embargo_agent::audit::EVENTS_PAGE);
    assert_eq!(events["result"]["more"], true);
    // The CLI pages through all of it.
    let t = Instant::now();
    let listed = dev.quarantine_list();
    assert_eq!(listed.len(), ITEMS);
    eprintln!("`embargoctl quarantine list --json` of {ITEMS} items (40 pages): {:?}", t.elapsed());

    // Baseline: drop-to-quarantine latency without the flood.
    let mut quiet: Vec<Duration> = (0..5).map(|i| drop_and_time(&dev, i)).collect();

    // The flood: nobody runs status, quarantine list (every page of their 20,000 items) and
    // events (every page of the log) in a loop, three clients at once.
    let ctl = bin("embargoctl");
    let flood: Vec<_> = [&["status", "--json"][..], &["quarantine", "list", "--json"], &["events", "--json"]]
        .iter()
        .map(|args| {
            let script = "while :; do \"$0\" \"$@\" >/dev/null 2>&1; done";
            let mut c = as_nobody(Path::new("/bin/sh"));
            c.args(["-c", script]).arg(&ctl).arg("--socket").arg(&dev.socket).args(*args);
            Running(c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
        })
        .collect();
    // Let the flood get going (each client has completed a request).
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("[{:?}] flood started", t0.elapsed());
    let mut flooded: Vec<Duration> = (5..15).map(|i| drop_and_time(&dev, i)).collect();
    // Root's own reads while the flood runs: each answered, and timed.
    let (mut status, mut list, mut recent) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        assert!(dev.ctl(&["status", "--json"]).status.code().is_some_and(|c| c <= 1));
        status.push(t.elapsed());
        let t = Instant::now();
        let page = raw(&dev, serde_json::json!({"method": "quarantine_list", "limit": 500}));
        assert_eq!(page["ok"], true);
        list.push(t.elapsed());
        let t = Instant::now();
        let tail = raw(&dev, serde_json::json!({"method": "events", "since": 0, "limit": 1000}));
        assert_eq!(tail["ok"], true);
        recent.push(t.elapsed());
    }
    for mut f in flood {
        assert!(f.0.try_wait().unwrap().is_none(), "a flood client ended early");
        let _ = f.0.kill();
    }
    eprintln!("drop-to-quarantine latency, {ITEMS} items, no flood: {}", spread(&mut quiet));
    eprintln!("drop-to-quarantine latency, {ITEMS} items, 3 unprivileged readers flooding: {}", spread(&mut flooded));
    eprintln!("during the flood, root's `embargoctl status`: {}", spread(&mut status));
    eprintln!("during the flood, one `quarantine_list` page of 500: {}", spread(&mut list));
    eprintln!("during the flood, one `events` page of 1000 from the start of the log: {}", spread(&mut recent));

    eprintln!("[{:?}] flood stopped", t0.elapsed());
    // The whole chain (the filled records and everything since) verifies, off the loop.
    let t = Instant::now();
    let out = dev.ctl(&["events", "--verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("chain verified"), "{text}");
    eprintln!("events --verify over {} entries: {:?}", ITEMS, t.elapsed());
    // nobody may not run the verification (it reads every file).
    let out = as_nobody(&ctl).arg("--socket").arg(&dev.socket).args(["events", "--verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("[{:?}] done", t0.elapsed());
    // Stopped before its state directory is deleted (40,000 files).
    dev.stop_agent();
}

/// Copies `bytes` into `dir` (owned by nobody) as nobody would: written in nobody's staging
/// directory, renamed into place, mode 0755.
fn drop_as_nobody(dev: &Device, stage: &Path, dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let src = dev.staging.join(name);
    std::fs::write(&src, bytes).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
    let dest = dir.join(name);
    let status = as_nobody(Path::new("/bin/sh"))
        .args(["-c", "cp \"$0\" \"$1\" && chmod 755 \"$1\" && mv \"$1\" \"$2\""])
        .arg(&src)
        .arg(stage.join(name))
        .arg(&dest)
        .status()
        .unwrap();
    assert!(status.success());
    dest
}

/// Finding 11, the quota: nobody fills their quarantine quota with throw-away banned files, then
/// drops the real one. It is quarantined all the same (their own oldest item makes room, never
/// another user's); a banned file too large for the quota on its own is deleted, not left in
/// place; both are audited and status names the uid and the bound.
#[test]
fn the_quarantine_quota_cannot_be_used_to_keep_a_banned_file() {
    if !can_run() {
        return;
    }
    let dev = Device::with_config(
        WECHAT_KASPERSKY_TOML,
        "1d",
        "\n[enforcement]\nquarantine_max_items_per_uid = 3\nquarantine_max_bytes_per_uid = 1048576\n",
    );
    let apps = dev.home.join("Applications");
    let stage = dev.tmp.path().join("nobody-staging");
    std::fs::create_dir_all(&stage).unwrap();
    for d in [&apps, &stage] {
        std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    // Another user's (root's) item, which nobody's quota must never evict.
    let roots = dev.install("Downloads/WeChat-root-x86_64.AppImage", &appimage("root's"));
    eventually("root's banned file to be quarantined", WAIT, || gone(&roots));
    let mut throwaway = Vec::new();
    for i in 0..3 {
        let p = drop_as_nobody(&dev, &stage, &apps, &format!("WeChat-junk{i}-x86_64.AppImage"), &appimage("junk"));
        eventually("a throw-away banned file to be quarantined", WAIT, || gone(&p));
        throwaway.push(p);
    }
    let mine = |l: &[serde_json::Value]| l.iter().filter(|m| m["uid"] == NOBODY).count();
    assert_eq!(mine(&dev.quarantine_list()), 3);
    let oldest =
        dev.quarantine_list().into_iter().find(|m| m["original_path"] == throwaway[0].to_str().unwrap()).unwrap()["id"]
            .clone();

    // The real one, with the quota full.
    let real = drop_as_nobody(&dev, &stage, &apps, "WeChat-x86_64.AppImage", &appimage("the real one"));
    eventually("the real banned file to be quarantined despite the full quota", WAIT, || gone(&real));
    let list = dev.quarantine_list();
    assert_eq!(mine(&list), 3, "{list:?}");
    assert!(list.iter().any(|m| m["original_path"] == real.to_str().unwrap()), "{list:?}");
    assert!(!list.iter().any(|m| m["id"] == oldest), "nobody's oldest item made room");
    assert!(list.iter().any(|m| m["original_path"] == roots.to_str().unwrap()), "root's item is untouched");

    // Larger than the byte bound on its own (2 MiB of real data): deleted, not left in place.
    let mut big = appimage("big");
    big.resize(2 << 20, 0x5a);
    let huge = drop_as_nobody(&dev, &stage, &apps, "WeChat-big-x86_64.AppImage", &big);
    eventually("the over-quota banned file to be gone", WAIT, || gone(&huge));
    let list = dev.quarantine_list();
    assert!(!list.iter().any(|m| m["original_path"] == huge.to_str().unwrap()), "deleted, not stored");

    let s = dev.status().unwrap();
    assert_eq!(s["daemon"]["health"], "degraded", "{s}");
    let reasons = s["daemon"]["reasons"].to_string();
    assert!(reasons.contains("uid 65534") && reasons.contains("3 items / 1048576 bytes"), "{reasons}");
    let events = String::from_utf8_lossy(&dev.ctl(&["events", "--json"]).stdout).into_owned();
    assert!(events.contains("\"type\":\"quarantine-quota\""), "{events}");
    assert!(events.contains("deleted in place"), "{events}");
    assert!(events.contains("oldest purged to make room"), "{events}");

    // A banned name that is a second hard link to nobody's file (made here by root; a user can
    // where fs.protected_hardlinks=0) is refused, and makes no room: nobody's items stay.
    let before: Vec<serde_json::Value> =
        dev.quarantine_list().into_iter().filter(|m| m["uid"] == NOBODY).map(|m| m["id"].clone()).collect();
    let outside = dev.tmp.path().join("nobody-file");
    std::fs::write(&outside, appimage("linked")).unwrap();
    std::os::unix::fs::chown(&outside, Some(NOBODY), Some(NOBODY)).unwrap();
    let link = dev.home.join("Downloads/WeChat-link-x86_64.AppImage");
    std::fs::hard_link(&outside, &link).unwrap();
    eventually("the hard link to be refused", WAIT, || {
        let ev = String::from_utf8_lossy(&dev.ctl(&["events", "--json"]).stdout).into_owned();
        ev.contains("2 hard links").then_some(())
    });
    assert!(link.exists(), "refused, left in place");
    let after: Vec<serde_json::Value> =
        dev.quarantine_list().into_iter().filter(|m| m["uid"] == NOBODY).map(|m| m["id"].clone()).collect();
    assert_eq!(after, before, "a refused file made no room");
}

/// Finding 11, rotation end to end: with a small `audit_max_bytes` the log rotates as the agent
/// works, at most `audit_keep_files` rotated files stay, `events --verify` checks the chain
/// across them (and says what was dropped), and an edited rotated file is detected.
#[test]
fn the_audit_log_rotates_and_its_chain_verifies_across_files() {
    let dev = Device::with_config(
        WECHAT_KASPERSKY_TOML,
        "1d",
        "\n[enforcement]\naudit_max_bytes = 4096\naudit_keep_files = 2\n",
    );
    for i in 0..40 {
        let p = dev.install(&format!("Applications/WeChat-{i}-x86_64.AppImage"), &appimage("wechat"));
        eventually("a banned file to be quarantined", WAIT, || gone(&p));
    }
    let rotated: Vec<PathBuf> = std::fs::read_dir(&dev.state)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("audit.log."))
        .collect();
    assert_eq!(rotated.len(), 2, "{rotated:?}");
    let out = dev.ctl(&["events", "--verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("were in rotated files deleted beyond audit_keep_files"), "{text}");
    // `events` pages from the oldest kept entry to the newest.
    let listed = String::from_utf8_lossy(&dev.ctl(&["events", "--json"]).stdout).into_owned();
    let seqs: Vec<u64> = listed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(seqs[0] > 1, "the oldest entries were dropped");

    let target = rotated.iter().max().unwrap();
    let text = std::fs::read_to_string(target).unwrap();
    let edited = text.replacen("\"quarantined\"", "\"restored\"", 1);
    assert_ne!(text, edited, "the rotated file holds an action record to edit");
    std::fs::write(target, edited).unwrap();
    let out = dev.ctl(&["events", "--verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("BROKEN"));
}

/// Finding 11, crash safety: with the log rotating every few records, embargod is killed with
/// SIGKILL again and again while banned files arrive (so some kills land during a rotation: the
/// rename, the first record of the new file, a drop record and its unlink), and restarted each
/// time; in the end the chain across the kept files verifies.
#[test]
fn kill_9_while_the_audit_log_rotates_leaves_a_chain_that_verifies() {
    let mut dev = Device::with_config(
        WECHAT_KASPERSKY_TOML,
        "1d",
        "\n[enforcement]\naudit_max_bytes = 4096\naudit_keep_files = 3\n",
    );
    let mut n = 0;
    for round in 0..10 {
        for _ in 0..=round % 3 {
            dev.install(&format!("Applications/WeChat-{n}-x86_64.AppImage"), &appimage("wechat"));
            n += 1;
        }
        dev.stop_agent(); // SIGKILL
        dev.start_agent();
    }
    for i in 0..n {
        let p = dev.home.join(format!("Applications/WeChat-{i}-x86_64.AppImage"));
        eventually("every banned file to be handled", WAIT, || gone(&p));
    }
    let rotated = std::fs::read_dir(&dev.state)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().unwrap().starts_with("audit.log."))
        .count();
    assert!((1..=3).contains(&rotated), "{rotated} rotated files");
    let out = dev.ctl(&["events", "--verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
