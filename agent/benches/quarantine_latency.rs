//! Detection → quarantine latency and idle footprint of the real `embargod` (release build).
//!
//! A demo device is built in a temp dir (file:// repository signed with the example policy);
//! the bench starts `embargod --config` on it, then drops ≥ 1,000 banned single-file AppImages
//! into a watched folder one at a time, each by rename (as browsers and installers finish a
//! download). Latency is measured from outside the agent: from just before the rename to the
//! inotify event that says the file left the folder. Then the daemon is left idle and its RSS,
//! CPU time and context switches over the idle window are read from /proc (RSS is also shown
//! right after the burst, before the idle trim). Last, the price of the trim: over several
//! cycles, wait until the daemon has trimmed (its file-backed RSS is back down), drop one file
//! and time it the same way.
//!
//! PRODUCT.md's bars: p50 ≤ 3 ms, p99 ≤ 20 ms on 2 cores; idle RSS ≤ 5 MB, no periodic wake-ups
//! beyond the sync timer (set to 1 h here, so it falls outside the idle window). Run: `cargo bench -p embargo-agent --bench quarantine_latency`
//! (EMBARGO_BENCH_DROPS sets the number of drops, EMBARGO_BENCH_TRIM_CYCLES the trim cycles,
//! EMBARGO_BENCH_LARGE the number of 100 MB drops at the end).

use std::mem::MaybeUninit;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::inotify;

fn status_field(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Voluntary + involuntary context switches summed over all threads, and CPU ticks.
fn activity(pid: u32) -> (u64, u64) {
    let mut switches = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for l in text.lines() {
            if l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches") {
                switches += l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (switches, ticks)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let drops: usize = std::env::var("EMBARGO_BENCH_DROPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("device");
    let config = embargo_agent::demo::build(&dir).unwrap();
    // The demo syncs every 30 s (±20%). The idle window measures the daemon's own wake-ups, so
    // the sync timer (the one periodic wake-up by design) is set beyond the run: with 30 s, a
    // run slowed by a loaded machine puts the first sync (and its reconcile) inside the window,
    // which is where the "22 context switches, 2 ticks" of a loaded run came from.
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("interval = \"30s\""), "the demo config changed: {text}");
    std::fs::write(&config, text.replace("interval = \"30s\"", "interval = \"1h\"")).unwrap();
    let socket = dir.join("embargod.sock");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_embargod"))
        .args(["--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = rt
            .block_on(embargo_agent::control::call(
                &socket,
                embargo_agent::proto::Request::Status,
                Duration::from_secs(1),
            ))
            .ok()
            .and_then(|r| r.result)
            .is_some_and(|s| s["policy"]["policy_version"].is_u64());
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "embargod did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let downloads = dir.join("home/alice/Downloads");
    let staging = dir.join("staging");
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC).unwrap();
    inotify::add_watch(&fd, &downloads, inotify::WatchFlags::MOVED_FROM | inotify::WatchFlags::DELETE).unwrap();
    let mut buf = [MaybeUninit::<u8>::uninit(); 8192];
    let mut reader = inotify::Reader::new(&fd, &mut buf);
    // Writes `bytes` in the staging dir, renames it into ~/Downloads and times until the inotify
    // event that says it left the folder.
    let mut drop_file = |name: &str, bytes: &[u8]| {
        let tmp_path = staging.join(name);
        std::fs::write(&tmp_path, bytes).unwrap();
        let started = Instant::now();
        std::fs::rename(&tmp_path, downloads.join(name)).unwrap();
        loop {
            let ev = reader.next().unwrap();
            if ev.file_name().and_then(|n| n.to_str().ok()) == Some(name) {
                break;
            }
        }
        started.elapsed()
    };
    let mut drop_one = |i: usize| {
        let bytes = embargo_agent::identify::fake_appimage(format!("build {i}").as_bytes());
        drop_file(&format!("WeChat-{i}-x86_64.AppImage"), &bytes)
    };
    let mut latencies: Vec<Duration> = (0..drops).map(&mut drop_one).collect();
    let busy = (status_field(pid, "VmRSS:"), status_field(pid, "RssFile:"));
    let stored = std::fs::read_dir(dir.join("state/quarantine"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "bin"))
        .count();
    assert!(stored >= drops, "every drop must be in quarantine");
    latencies.sort();
    println!(
        "detection -> quarantine over {drops} drops: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms   [bars: p50 <= 3 ms, p99 <= 20 ms]",
        pct(&latencies, 0.5).as_secs_f64() * 1e3,
        pct(&latencies, 0.9).as_secs_f64() * 1e3,
        pct(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );

    // Idle: let the daemon settle, then watch it for a window.
    std::thread::sleep(Duration::from_secs(2));
    let (s0, t0) = activity(pid);
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let (s1, t1) = activity(pid);
    // PSS divides shared pages (libc, ld.so) among the processes mapping them; shown for
    // information, the bar is judged on RSS.
    let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    println!("right after the burst: VmRSS {} kB (RssFile {} kB) -- before the idle trim", busy.0, busy.1);
    println!(
        "idle after the drops: VmRSS {} kB (RssAnon {} kB, RssFile {} kB; PSS {pss} kB), {} threads   [bar: RSS <= 5 MB]",
        status_field(pid, "VmRSS:"),
        status_field(pid, "RssAnon:"),
        status_field(pid, "RssFile:"),
        status_field(pid, "Threads:")
    );
    println!("idle {:?} window: {} context switches, {} CPU ticks   [bar: no periodic wake-ups beyond the sync timer (1 h here)]", window, s1 - s0, t1 - t0);

    // The price of the idle trim: the first drop after each trim maps the code it needs back in.
    let cycles: usize = std::env::var("EMBARGO_BENCH_TRIM_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let trimmed_file_kb = status_field(pid, "RssFile:");
    let mut first = Vec::with_capacity(cycles);
    let mut refaulted_kb = Vec::with_capacity(cycles);
    for c in 0..cycles {
        // Wait (by polling /proc, never by a fixed sleep) until the daemon has trimmed: its
        // file-backed resident set is back at the trimmed level.
        let deadline = Instant::now() + Duration::from_secs(10);
        while status_field(pid, "RssFile:") > trimmed_file_kb + 256 {
            assert!(Instant::now() < deadline, "the daemon did not trim after the last drop");
            std::thread::sleep(Duration::from_millis(20));
        }
        first.push(drop_one(drops + c));
        // Handling the drop mapped code back in; if it mapped too little for the wait above to
        // see, the next cycle could not tell a trimmed daemon from a warm one.
        let refaulted = status_field(pid, "RssFile:").saturating_sub(trimmed_file_kb);
        assert!(refaulted > 256, "a drop mapped only {refaulted} kB back in: cannot observe the next trim");
        refaulted_kb.push(refaulted);
    }
    refaulted_kb.sort();
    println!("code mapped back in by the first drop after a trim: median {} kB", refaulted_kb[refaulted_kb.len() / 2]);
    first.sort();
    println!(
        "first drop after an idle trim, {cycles} cycles: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms   [bars: p50 <= 3 ms, p99 <= 20 ms]",
        pct(&first, 0.5).as_secs_f64() * 1e3,
        pct(&first, 0.9).as_secs_f64() * 1e3,
        first.last().unwrap().as_secs_f64() * 1e3
    );
    // Large AppImages (real ones are 100-300 MB): the move does not wait for the hash when the
    // verdict cannot depend on it, so latency should not grow with the file.
    let large: usize = std::env::var("EMBARGO_BENCH_LARGE").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let mut big = Vec::with_capacity(large);
    let body: Vec<u8> = (0..100u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    for i in 0..large {
        let mut bytes = embargo_agent::identify::fake_appimage(format!("large build {i}").as_bytes());
        bytes.extend_from_slice(&body);
        big.push(drop_file(&format!("WeChat-large-{i}-x86_64.AppImage"), &bytes));
    }
    if large > 0 {
        big.sort();
        println!(
            "detection -> quarantine of {large} drops of 100 MB: p50 {:.2} ms, max {:.2} ms (hash taken after the move)",
            pct(&big, 0.5).as_secs_f64() * 1e3,
            big.last().unwrap().as_secs_f64() * 1e3
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = Path::new("");
}
