//! Exec gate bench: added time per exec of `/bin/true` with no gate, with embargod's gate
//! (cached verdicts), and with fapolicyd when it is installed; and the first-exec cost of a
//! 50 MB binary.
//!
//! `cargo bench -p embargo-agent --bench exec_gate` (as root). Everything runs in a private
//! mount namespace (the bench re-executes itself under `unshare --mount --propagation private`)
//! on a private tmpfs holding the copy of `/bin/true` that is executed: our gate marks only
//! that tmpfs, and fapolicyd's per-mount marks land on this namespace's copies of the mounts,
//! so no process outside the bench waits on either. fapolicyd runs alone, in the foreground,
//! under an exclusive lock on /tmp/embargo-fapolicyd.lock (other tests run it too), with a
//! complete rule set (deny execution in one directory, allow the rest) written over
//! /etc/fapolicyd, which is restored afterwards, also on error or panic.
//!
//! Env: `EMBARGO_BENCH_EXECS` (default 2000).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embargo_agent::exec_gate::{ExecGate, GateConfig, GateEvent, MarkScope};
use embargo_policy::matcher::RuleSet;
use embargo_policy::rules::{Action, Kind, Matcher, Rule};
use tokio::sync::{mpsc, watch};

const LOCK: &str = "/tmp/embargo-fapolicyd.lock";
const NS_ENV: &str = "EMBARGO_BENCH_PRIVATE_NS";

fn main() {
    if embargo_agent::exec_gate::process_uid(std::process::id() as i32) != Some(0) {
        eprintln!("exec_gate bench: SKIP, needs root (fanotify, tmpfs, a private mount namespace)");
        return;
    }
    if std::env::var(NS_ENV).as_deref() != Ok("1") {
        let status = Command::new("unshare")
            .args(["--mount", "--propagation", "private"])
            .arg(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env(NS_ENV, "1")
            .status()
            .expect("run unshare (util-linux)");
        std::process::exit(status.code().unwrap_or(1));
    }
    restore_on_signal();
    let n: usize = std::env::var("EMBARGO_BENCH_EXECS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let tmp = tempfile::tempdir().unwrap();
    let fs = tmp.path().join("fs");
    std::fs::create_dir_all(&fs).unwrap();
    run_ok(Command::new("mount").args(["-t", "tmpfs", "-o", "size=256m,mode=0755", "embargo-bench"]).arg(&fs));
    let _unmount = Unmount(fs.clone());
    let true_bin = install(&fs.join("true"), &std::fs::read("/bin/true").unwrap());
    // The same bytes owned by a user: never left to the kernel's cache, so every exec is
    // answered by our reader from its own cache (the userspace path).
    let mut user_bytes = std::fs::read("/bin/true").unwrap();
    user_bytes.extend_from_slice(b"owned by nobody");
    let user_bin = install(&fs.join("users-true"), &user_bytes);
    std::os::unix::fs::chown(&user_bin, Some(65534), Some(65534)).unwrap();
    std::fs::create_dir_all(fs.join("denied")).unwrap();
    let denied_bin = install(&fs.join("denied/true"), &std::fs::read("/bin/true").unwrap());
    let mut big = std::fs::read("/bin/true").unwrap();
    big.extend((0..50u32 * 1024 * 1024 / 4).flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()));
    let big_bin = install(&fs.join("big"), &big);
    std::thread::sleep(Duration::from_millis(150)); // Past the gate's "racy" window.

    println!("exec_gate bench: {n} execs of a copy of /bin/true on a private tmpfs, in a private mount namespace");
    println!("load average at start: {}", load_average());

    // A rule set that makes the gate do its whole job on a miss: an AppImage rule, a name rule
    // and a hash rule (so files are hashed when nothing else bans them).
    let rules = RuleSet::compile(
        vec![
            rule(
                "wechat",
                Matcher { kind: Some(Kind::Appimage), id: Some("com.tencent.WeChat".into()), ..Default::default() },
            ),
            rule("by-name", Matcher { kind: Some(Kind::File), id: Some("wechat".into()), ..Default::default() }),
            rule("by-hash", Matcher { sha256: vec!["ab".repeat(32)], ..Default::default() }),
        ],
        &[],
    );
    let (_tx, rx) = watch::channel(Arc::new(rules));
    let cfg = GateConfig { scope: MarkScope::Under(vec![tmp.path().to_path_buf()]), ..GateConfig::default() };
    let start = |rx: watch::Receiver<Arc<RuleSet>>| {
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        let gate = ExecGate::start(cfg.clone(), rx, Arc::new(|_: &Path| false), ev_tx).expect("start the exec gate");
        (gate, ev_rx)
    };
    // fapolicyd, when installed: set up once (lock, backup, rules), started and stopped per round.
    let mut fapolicyd = if Path::new("/usr/sbin/fapolicyd").exists() {
        match Fapolicyd::prepare(tmp.path(), &fs.join("denied"), &denied_bin) {
            Ok(f) => Some(f),
            Err(e) => {
                println!("fapolicyd: not measured: {e}");
                None
            }
        }
    } else {
        println!("fapolicyd: not installed, not measured");
        None
    };

    // The machine is shared: every round runs no gate, our gate and fapolicyd back to back, so
    // all three see the same load.
    let (mut base, mut gated, mut user_gated, mut fap) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let rounds = 8;
    // Reader thread's CPU time and run-queue wait (ns), and the events it handled.
    let mut reader_cpu = (0u64, 0u64, 0u64);
    for round in 0..rounds {
        base.extend(measure(&true_bin, n / rounds));
        let (gate, mut ev_rx) = start(rx.clone());
        if round == 0 {
            let mut marked = Vec::new();
            while let Ok(e) = ev_rx.try_recv() {
                if let GateEvent::Marked { mount_point, fstype, per_mount } = e {
                    let how = if per_mount { "mount" } else { "filesystem" };
                    marked.push(format!("{} ({fstype}, {how})", mount_point.display()));
                }
            }
            println!("embargo gate marks: {}", marked.join(", "));
        }
        gated.extend(measure(&true_bin, n / rounds));
        let kernel_stats = gate.stats();
        let sched_before = reader_schedstat();
        let before = gate.stats().events;
        user_gated.extend(measure(&user_bin, n / rounds));
        let stats = gate.stats();
        let sched_after = reader_schedstat();
        drop(gate);
        if let (Some(b), Some(a)) = (sched_before, sched_after) {
            reader_cpu.0 += a.0 - b.0;
            reader_cpu.1 += a.1 - b.1;
            reader_cpu.2 += stats.events - before;
        }
        if round == 0 {
            println!(
                "  gate counters (round 1), root's copy: events {} kernel-cached {}; then the user's copy: events {} cache hits {} misses {} hashed {} deadline {}",
                kernel_stats.events,
                kernel_stats.kernel_cached,
                stats.events - kernel_stats.events,
                stats.cache_hits,
                stats.cache_misses,
                stats.hashed,
                stats.deadline
            );
        }
        if let Some(f) = fapolicyd.as_mut() {
            match f.start(round == 0) {
                Ok(()) => {
                    fap.extend(measure(&true_bin, n / rounds));
                    f.stop();
                }
                Err(e) => {
                    println!("fapolicyd: not measured: {e}");
                    fapolicyd = None;
                    fap.clear();
                }
            }
        }
    }
    drop(fapolicyd);
    report("no gate", &base, None);
    report("embargo gate (kernel-cached)", &gated, Some(&base));
    report("embargo gate (our cache: user's file)", &user_gated, Some(&base));
    if reader_cpu.2 > 0 {
        println!(
            "  gate reader thread per event: {:.1} µs on a CPU, {:.1} µs runnable waiting for one (schedstat)",
            reader_cpu.0 as f64 / reader_cpu.2 as f64 / 1e3,
            reader_cpu.1 as f64 / reader_cpu.2 as f64 / 1e3
        );
    }
    if !fap.is_empty() {
        report("fapolicyd", &fap, Some(&base));
        let added = |s: &[Duration], p| pct(s, p).as_secs_f64() - pct(&base, p).as_secs_f64();
        for (what, samples) in [("root's file, kernel-cached", &gated), ("user's file, our cache", &user_gated)] {
            println!(
                "added per cached exec ({what}), median: embargo {:.1} µs, fapolicyd {:.1} µs: {:.0}% of fapolicyd's (goal ≤ 25%)",
                added(samples, 50) * 1e6,
                added(&fap, 50) * 1e6,
                100.0 * added(samples, 50) / added(&fap, 50)
            );
        }
    }
    println!("load average at the end: {}", load_average());

    // First exec of a 50 MB binary: a cache miss. With a hash rule in the set (and nothing
    // else banning it) the gate hashes it whole; without one it reads 16 bytes. Each round
    // appends a byte, so the next exec is a miss again.
    let first_execs = |gate: &ExecGate| {
        let (mut first, mut again) = (Vec::new(), Vec::new());
        let before = gate.stats().hashed;
        for _ in 0..20 {
            // A write (not only new timestamps): it also clears the kernel-cached verdict.
            let mut f = std::fs::File::options().append(true).open(&big_bin).unwrap();
            std::io::Write::write_all(&mut f, b"\0").unwrap();
            drop(f);
            std::thread::sleep(Duration::from_millis(150));
            first.extend(measure_once(&big_bin));
            again.extend(measure_once(&big_bin));
        }
        (first, again, gate.stats().hashed - before)
    };
    let (gate, _ev_rx) = start(rx);
    let (first, again, hashed) = first_execs(&gate);
    drop(gate);
    let no_hash_rules = RuleSet::compile(
        vec![rule("by-name", Matcher { kind: Some(Kind::File), id: Some("wechat".into()), ..Default::default() })],
        &[],
    );
    let (gate, _ev_rx) = start(watch::channel(Arc::new(no_hash_rules)).1);
    let (first_nohash, _, hashed_nohash) = first_execs(&gate);
    drop(gate);
    let big_base: Vec<Duration> = (0..20).flat_map(|_| measure_once(&big_bin)).collect();
    println!("50 MB binary (first execs hashed: {hashed} of 20 with a hash rule, {hashed_nohash} of 20 without):");
    report("  no gate", &big_base, None);
    report("  gate, first exec, hash rule (hash)", &first, Some(&big_base));
    report("  gate, next exec (cached)", &again, Some(&big_base));
    report("  gate, first exec, no hash rule", &first_nohash, Some(&big_base));
}

/// The three load averages, as /proc/loadavg gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// (time on a CPU, time runnable but waiting) in ns of the gate's reader thread.
fn reader_schedstat() -> Option<(u64, u64)> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        if std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim() == "gate-reader") {
            let s = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
            return Some((f.next()??, f.next()??));
        }
    }
    None
}

fn rule(id: &str, m: Matcher) -> Rule {
    Rule {
        id: id.into(),
        description: String::new(),
        action: Action::Remove,
        matchers: vec![m],
        except: vec![],
        tags: vec![],
    }
}

fn install(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn measure_once(bin: &Path) -> Option<Duration> {
    let t = Instant::now();
    let ok = Command::new(bin).stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    ok.then(|| t.elapsed())
}

/// `n` timed execs after 50 untimed ones.
fn measure(bin: &Path, n: usize) -> Vec<Duration> {
    for _ in 0..50 {
        measure_once(bin).expect("exec succeeds");
    }
    (0..n).map(|_| measure_once(bin).expect("exec succeeds")).collect()
}

fn pct(samples: &[Duration], p: usize) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    s[((s.len() - 1) * p / 100).min(s.len() - 1)]
}

fn report(name: &str, samples: &[Duration], base: Option<&[Duration]>) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let line = [50, 90, 99].map(|p| us(pct(samples, p)));
    print!("{name:<36} per exec µs: median {:8.1} p90 {:8.1} p99 {:8.1}", line[0], line[1], line[2]);
    if let Some(b) = base {
        let added = [50, 90, 99].map(|p| us(pct(samples, p)) - us(pct(b, p)));
        print!("   added µs: median {:7.1} p90 {:7.1} p99 {:7.1}", added[0], added[1], added[2]);
    }
    println!("   (n = {})", samples.len());
}

impl Fapolicyd {
    /// Takes the lock, backs up /etc/fapolicyd and writes the bench's rules: "deny execution in
    /// `denied_dir`, allow the rest". Dropping it stops fapolicyd, restores /etc/fapolicyd and
    /// releases the lock.
    fn prepare(work: &Path, denied_dir: &Path, denied_bin: &Path) -> Result<Fapolicyd, String> {
        let lock = std::fs::File::options().create(true).append(true).open(LOCK).map_err(|e| format!("{LOCK}: {e}"))?;
        println!("fapolicyd: waiting for the lock on {LOCK}");
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| format!("flock {LOCK}: {e}"))?;
        let running = Command::new("pgrep").args(["-x", "fapolicyd"]).output().map_err(|e| format!("pgrep: {e}"))?;
        if running.status.success() {
            return Err(format!(
                "another fapolicyd is running (pid {}); the bench runs it alone",
                String::from_utf8_lossy(&running.stdout).trim()
            ));
        }
        let backup = work.join("etc-fapolicyd");
        run_ok(Command::new("cp").args(["-a", "/etc/fapolicyd"]).arg(&backup));
        println!("fapolicyd: /etc/fapolicyd backed up to {} (restored when the bench ends)", backup.display());
        *CLEANUP.lock().unwrap() = Some((backup.clone(), None));
        let guard = Fapolicyd {
            backup,
            child: None,
            _lock: lock,
            log: work.join("fapolicyd.log"),
            denied_bin: denied_bin.to_path_buf(),
        };
        std::fs::remove_dir_all("/etc/fapolicyd/rules.d").map_err(|e| format!("rules.d: {e}"))?;
        std::fs::create_dir_all("/etc/fapolicyd/rules.d").map_err(|e| format!("rules.d: {e}"))?;
        let _ = std::fs::remove_file("/etc/fapolicyd/compiled.rules");
        std::fs::write(
            "/etc/fapolicyd/rules.d/10-embargo-bench.rules",
            format!("deny perm=execute all : dir={}/\nallow perm=any all : all\n", denied_dir.display()),
        )
        .map_err(|e| format!("writing the rules: {e}"))?;
        let conf =
            std::fs::read_to_string("/etc/fapolicyd/fapolicyd.conf").map_err(|e| format!("fapolicyd.conf: {e}"))?;
        let conf: String = conf
            .lines()
            .map(|l| match l.split('=').next().map(str::trim) {
                // No rpm database on Debian; and the bench's root lacks CAP_SYS_RESOURCE in its
                // bounding set here, which fapolicyd's switch to its own uid insists on keeping.
                Some("trust") => "trust = file".to_owned(),
                Some("uid") => "uid = root".to_owned(),
                Some("gid") => "gid = root".to_owned(),
                _ => l.to_owned(),
            })
            .map(|l| l + "\n")
            .collect();
        std::fs::write("/etc/fapolicyd/fapolicyd.conf", conf).map_err(|e| format!("fapolicyd.conf: {e}"))?;
        let gen = Command::new("fagenrules").output().map_err(|e| format!("fagenrules: {e}"))?;
        if !Path::new("/etc/fapolicyd/compiled.rules").exists() {
            return Err(format!("fagenrules wrote no compiled.rules: {}", String::from_utf8_lossy(&gen.stderr)));
        }
        Ok(guard)
    }

    /// Starts fapolicyd in the foreground and waits until it denies the copy in the denied
    /// directory.
    fn start(&mut self, show_marks: bool) -> Result<(), String> {
        let child = Command::new("fapolicyd")
            .arg("--debug-deny")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("start fapolicyd: {e}"))?;
        let pid = child.id();
        self.child = Some(child);
        if let Some((_, p)) = CLEANUP.lock().unwrap().as_mut() {
            *p = Some(pid);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Command::new(&self.denied_bin).status().is_ok() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!(
                    "fapolicyd exited ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "fapolicyd did not start denying within 60 s: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if show_marks {
            println!("fapolicyd (pid {pid}) marks, as listed in its fanotify fdinfo: {}", fapolicyd_marks(pid));
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some((_, p)) = CLEANUP.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            *p = None;
        }
    }
}

/// The mounts fapolicyd marked, from the `fanotify mnt_id:` lines of its group's fdinfo.
fn fapolicyd_marks(pid: u32) -> String {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts = embargo_agent::exec_gate::parse_mountinfo(&mountinfo);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines().filter(|l| l.starts_with("fanotify ")) {
            let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).map(str::to_owned);
            if let Some(id) = field("mnt_id:").and_then(|h| u64::from_str_radix(&h, 16).ok()) {
                let m = mounts.iter().find(|m| m.mount_id == id);
                out.push(m.map_or(format!("mount {id}"), |m| format!("{} ({})", m.mount_point.display(), m.fstype)));
            } else if line.contains("sdev:") {
                out.push(format!("a filesystem ({line})"));
            }
            if let Some(mask) = field("mask:") {
                if out.len() == 1 {
                    out[0].push_str(&format!(" mask {mask}"));
                }
            }
        }
    }
    format!("{} marks: {}", out.len(), out.join(", "))
}

/// The backup of /etc/fapolicyd and fapolicyd's pid while they exist, for the signal handler.
static CLEANUP: std::sync::Mutex<Option<(PathBuf, Option<u32>)>> = std::sync::Mutex::new(None);

/// Puts /etc/fapolicyd back from `backup`.
fn restore(backup: &Path) {
    let _ = std::fs::remove_dir_all("/etc/fapolicyd");
    let restored = Command::new("cp").args(["-a"]).arg(backup).arg("/etc/fapolicyd").status();
    if !restored.is_ok_and(|s| s.success()) {
        eprintln!("fapolicyd: RESTORING /etc/fapolicyd FAILED; the backup is at {}", backup.display());
    }
}

/// SIGTERM, SIGINT or SIGHUP while fapolicyd runs: stop it, restore /etc/fapolicyd, exit.
fn restore_on_signal() {
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("signal runtime");
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {}
            }
        });
        if let Some((backup, pid)) = CLEANUP.lock().unwrap().take() {
            if let Some(pid) = pid {
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
            restore(&backup);
        }
        eprintln!("exec_gate bench: interrupted; fapolicyd stopped and /etc/fapolicyd restored");
        std::process::exit(130);
    });
}

struct Fapolicyd {
    backup: PathBuf,
    child: Option<std::process::Child>,
    /// Held (flock) while the bench owns /etc/fapolicyd.
    _lock: std::fs::File,
    log: PathBuf,
    denied_bin: PathBuf,
}

impl Drop for Fapolicyd {
    fn drop(&mut self) {
        self.stop();
        // Whoever takes the entry restores (this guard or the signal handler), once.
        if CLEANUP.lock().unwrap_or_else(|e| e.into_inner()).take().is_some() {
            restore(&self.backup);
        }
    }
}
