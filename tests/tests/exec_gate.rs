//! The exec gate against the real kernel: fanotify permission events on private tmpfs mounts
//! this test makes (never the machine's own filesystems: other builds run here), real execs,
//! real processes killed through pidfds.
//!
//! Needs root and fanotify; skips saying so otherwise (fails under EMBARGO_REQUIRE_TOOLS=1).
//! Every gate here marks only tmpfs mounts under its own temp dir (`MarkScope::Under`), and
//! every gate is stopped (dropped) before its test returns, so nothing stays armed.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use embargo_agent::exec_gate::{
    judge_exec, Answer, ExecGate, GateConfig, GateEvent, GateMode, Judge, Judgement, MarkScope, OnTimeout, SpareReason,
};
use embargo_agent::running::{sweep, StopReason};
use embargo_e2e::{eventually, skip};
use embargo_policy::matcher::RuleSet;
use embargo_policy::rules::{Action, Kind, Matcher, Rule};
use tokio::sync::{mpsc, watch};

const EPERM: i32 = 1;

/// A temp dir with tmpfs mounts beneath it, unmounted (lazily) on drop.
struct Private {
    dir: tempfile::TempDir,
    mounts: Vec<PathBuf>,
}

impl Private {
    /// `None` (after reporting the skip) when not root or when mounting fails.
    fn new() -> Option<Private> {
        if embargo_agent::exec_gate::process_uid(std::process::id() as i32) != Some(0) {
            skip("the exec gate tests need root (fanotify permission events, tmpfs mounts)");
            return None;
        }
        let mut p = Private { dir: tempfile::tempdir().unwrap(), mounts: Vec::new() };
        p.mount("fs")?;
        Some(p)
    }

    fn mount(&mut self, name: &str) -> Option<PathBuf> {
        let at = self.dir.path().join(name);
        std::fs::create_dir_all(&at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=128m,mode=0755", "embargo-gate-test"])
            .arg(&at)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                self.mounts.push(at.clone());
                Some(at)
            }
            Ok(o) => {
                skip(&format!("cannot mount a private tmpfs: {}", String::from_utf8_lossy(&o.stderr).trim()));
                None
            }
            Err(e) => {
                skip(&format!("cannot run mount: {e}"));
                None
            }
        }
    }

    fn fs(&self) -> PathBuf {
        self.mounts[0].clone()
    }

    fn scope(&self) -> MarkScope {
        MarkScope::Under(vec![self.dir.path().to_path_buf()])
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// `/bin/true` with `marker` appended: a real ELF that runs, with a hash of its own.
fn elf(marker: &str) -> Vec<u8> {
    let mut b = std::fs::read("/bin/true").unwrap();
    b.extend_from_slice(marker.as_bytes());
    b
}

fn install(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn sha(bytes: &[u8]) -> String {
    embargo_policy::trust::sha256_hex(bytes)
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

fn hash_rule(id: &str, bytes: &[u8]) -> Rule {
    rule(id, Matcher { sha256: vec![sha(bytes)], ..Default::default() })
}

fn set(rules: Vec<Rule>) -> Arc<RuleSet> {
    Arc::new(RuleSet::compile(rules, &[]))
}

/// Runs `path`; `Err(errno)` when the exec itself failed.
fn run(path: &Path) -> Result<bool, i32> {
    match Command::new(path).stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) => Ok(s.success()),
        Err(e) => Err(e.raw_os_error().unwrap_or(-1)),
    }
}

struct Armed {
    gate: ExecGate,
    events: mpsc::Receiver<GateEvent>,
    seen: Vec<GateEvent>,
}

impl Armed {
    /// Waits (bounded) for an event `pred` accepts, keeping everything seen.
    fn expect(&mut self, what: &str, pred: impl Fn(&GateEvent) -> bool) -> GateEvent {
        if let Some(e) = self.seen.iter().find(|e| pred(e)) {
            return e.clone();
        }
        let (events, seen) = (&mut self.events, &mut self.seen);
        eventually(what, Duration::from_secs(10), || {
            while let Ok(e) = events.try_recv() {
                seen.push(e);
            }
            seen.iter().find(|e| pred(e)).cloned()
        })
    }

    fn drain(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            self.seen.push(e);
        }
    }
}

fn arm(p: &Private, rules: watch::Receiver<Arc<RuleSet>>, cfg: GateConfig, judge: Option<Arc<Judge>>) -> Option<Armed> {
    let (tx, events) = mpsc::channel(1024);
    let cfg = GateConfig { scope: p.scope(), ..cfg };
    let protected: Arc<embargo_agent::exec_gate::Protected> = Arc::new(|_: &Path| false);
    let started = match judge {
        Some(j) => ExecGate::start_with_judge(cfg, rules, protected, tx, j),
        None => ExecGate::start(cfg, rules, protected, tx),
    };
    match started {
        Ok(gate) => {
            let mut a = Armed { gate, events, seen: Vec::new() };
            a.expect("the private tmpfs to be marked", |e| matches!(e, GateEvent::Marked { .. }));
            Some(a)
        }
        Err(e) => {
            skip(&format!("fanotify is unavailable: {e}"));
            None
        }
    }
}

/// Test gates: the test process spawns the execs itself, so its children are not exempt.
fn test_cfg() -> GateConfig {
    GateConfig { exempt_children: false, ..GateConfig::default() }
}

#[test]
fn banned_files_fail_with_eperm_naming_the_rule_allowed_ones_run_and_lifting_the_ban_lets_them_run() {
    let Some(p) = Private::new() else { return };
    let work = tempfile::tempdir().unwrap();
    if !embargo_e2e::need(&["mksquashfs"]) {
        return;
    }
    let image = embargo_e2e::RealAppImage::new("com.tencent.WeChat", "WeChat", "4.0.1").build(work.path());
    let appimage = install(&p.fs(), "renamed-anything.AppImage", &image);
    let banned_elf = elf("banned by hash");
    let by_hash = install(&p.fs(), "tool", &banned_elf);
    let allowed = install(&p.fs(), "allowed", &elf("allowed"));
    let rules = vec![
        rule(
            "wechat-appimage",
            Matcher { kind: Some(Kind::Appimage), id: Some("com.tencent.WeChat".into()), ..Default::default() },
        ),
        hash_rule("tool-by-hash", &banned_elf),
    ];
    // Verdicts on files changed in the last 100 ms are not cached (see RACY); let them age.
    std::thread::sleep(Duration::from_millis(150));
    // The same files run before the gate is armed: the failures below are the gate's.
    assert_eq!(run(&appimage), Ok(true));
    assert_eq!(run(&by_hash), Ok(true));
    let (tx, rx) = watch::channel(set(rules));
    let Some(mut g) = arm(&p, rx, test_cfg(), None) else { return };

    assert_eq!(run(&appimage), Err(EPERM), "a banned AppImage (by its embedded desktop id) must not start");
    let e = g.expect("the AppImage deny", |e| matches!(e, GateEvent::Denied { rule, .. } if rule == "wechat-appimage"));
    let GateEvent::Denied { exec, .. } = e else { unreachable!() };
    assert_eq!(exec.path, appimage);
    assert_eq!(exec.uid, Some(0));
    assert!(exec.pid > 0);
    assert_eq!(run(&by_hash), Err(EPERM), "a banned-by-hash ELF must not start");
    g.expect(
        "the hash deny",
        |e| matches!(e, GateEvent::Denied { rule, exec } if rule == "tool-by-hash" && exec.path == by_hash),
    );
    assert_eq!(run(&allowed), Ok(true), "an allowed binary runs");

    // Once judged, repeated execs are answered from the caches: the deny from ours, the allow
    // (a root-owned file no one else may write) by the kernel, without an event at all.
    let before = g.gate.stats();
    assert_eq!(before.kernel_cached, 1, "the allowed file's verdict went to the kernel: {before:?}");
    for _ in 0..3 {
        assert_eq!(run(&allowed), Ok(true));
        assert_eq!(run(&by_hash), Err(EPERM));
    }
    let after = g.gate.stats();
    assert!(after.cache_hits >= before.cache_hits + 3, "{before:?} -> {after:?}");
    assert_eq!(after.events, before.events + 3, "only the denied execs reached the gate: {before:?} -> {after:?}");
    assert!(after.denied >= 5);

    // Lifting the ban: the cache holds "deny" for both, and a new rule set must clear it.
    tx.send(set(vec![])).unwrap();
    assert_eq!(run(&appimage), Ok(true), "after the ban is lifted the AppImage runs");
    assert_eq!(run(&by_hash), Ok(true), "after the ban is lifted the ELF runs");
    assert_eq!(g.gate.stats().policy_updates, 1);
    g.gate.stop();
}

#[test]
fn a_file_rewritten_after_its_verdict_was_cached_is_judged_again() {
    let Some(p) = Private::new() else { return };
    let banned = elf("rewritten into a banned file");
    let (_tx, rx) = watch::channel(set(vec![hash_rule("banned", &banned)]));
    let path = install(&p.fs(), "tool", &elf("harmless at first"));
    std::thread::sleep(Duration::from_millis(150));
    let Some(mut g) = arm(&p, rx, test_cfg(), None) else { return };
    assert_eq!(run(&path), Ok(true));
    assert_eq!(run(&path), Ok(true));
    let s = g.gate.stats();
    assert_eq!((s.kernel_cached, s.events), (1, 1), "the allow was left to the kernel: {s:?}");
    std::fs::write(&path, &banned).unwrap();
    assert_eq!(run(&path), Err(EPERM), "the rewrite cleared the kernel's ignore mark: the file is judged again");
    g.expect("the deny", |e| matches!(e, GateEvent::Denied { rule, .. } if rule == "banned"));
    g.gate.stop();

    // A file its owner (not root) may write is never left to the kernel (a write through a
    // shared mapping raises no modify event): our cache, keyed by the change time, answers it.
    let rx = watch::channel(set(vec![hash_rule("banned", &banned)])).1;
    let path = install(&p.fs(), "users-tool", &elf("harmless, owned by a user"));
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let Some(mut g) = arm(&p, rx, test_cfg(), None) else { return };
    assert_eq!(run(&path), Ok(true));
    assert_eq!(run(&path), Ok(true));
    let s = g.gate.stats();
    assert_eq!((s.kernel_cached, s.cache_hits), (0, 1), "a user's file is cached by us only: {s:?}");
    std::fs::write(&path, &banned).unwrap();
    assert_eq!(run(&path), Err(EPERM), "the rewrite changed the change time: the cached allow no longer applies");
    g.expect("the deny", |e| matches!(e, GateEvent::Denied { rule, .. } if rule == "banned"));
}

#[test]
fn a_rule_set_that_bans_a_kernel_cached_file_flushes_the_kernels_verdicts() {
    let Some(p) = Private::new() else { return };
    let bytes = elf("allowed, then banned");
    let path = install(&p.fs(), "tool", &bytes);
    std::thread::sleep(Duration::from_millis(150));
    let (tx, rx) = watch::channel(set(vec![]));
    let Some(mut g) = arm(&p, rx, test_cfg(), None) else { return };
    assert_eq!(run(&path), Ok(true));
    assert_eq!(run(&path), Ok(true));
    assert_eq!(g.gate.stats().kernel_cached, 1);
    let flushes = g.gate.stats().kernel_flushes;
    tx.send(set(vec![hash_rule("now-banned", &bytes)])).unwrap();
    eventually("the kernel's verdicts to be flushed", Duration::from_secs(10), || {
        (g.gate.stats().kernel_flushes > flushes).then_some(())
    });
    assert_eq!(run(&path), Err(EPERM), "the new ban applies to a file the kernel had cached as allowed");
    g.expect("the deny", |e| matches!(e, GateEvent::Denied { rule, .. } if rule == "now-banned"));
}

#[test]
fn identification_past_the_deadline_is_answered_as_on_timeout_says_and_recorded() {
    for (on_timeout, expected) in [(OnTimeout::Allow, Ok(true)), (OnTimeout::Deny, Err(EPERM))] {
        let Some(p) = Private::new() else { return };
        let banned = elf("slow to judge");
        let path = install(&p.fs(), "slow", &banned);
        let (_tx, rx) = watch::channel(set(vec![hash_rule("slow", &banned)]));
        let slow: Arc<Judge> = Arc::new(|rules: &RuleSet, file: &mut std::fs::File, path: &Path| {
            std::thread::sleep(Duration::from_millis(1500));
            judge_exec(rules, file, path)
        });
        let cfg = GateConfig { on_timeout, deadline: Duration::from_millis(200), ..test_cfg() };
        let Some(mut g) = arm(&p, rx, cfg, Some(slow)) else { return };
        let started = std::time::Instant::now();
        assert_eq!(run(&path), expected, "on_timeout = {on_timeout:?}");
        let waited = started.elapsed();
        assert!(waited < Duration::from_millis(1200), "the exec waited {waited:?}, not the deadline");
        let want = if on_timeout == OnTimeout::Allow { Answer::Allow } else { Answer::Deny };
        let e = g.expect("the deadline record", |e| matches!(e, GateEvent::Deadline { answer, .. } if *answer == want));
        let GateEvent::Deadline { exec, .. } = e else { unreachable!() };
        assert_eq!(exec.path, path);
        assert_eq!(g.gate.stats().deadline, 1);
        // The worker is still inside the slow judge: stopping does not wait for it, and the
        // gate leaves nothing armed behind (its marks are flushed).
        let stopping = std::time::Instant::now();
        g.gate.stop();
        assert!(stopping.elapsed() < Duration::from_millis(1000), "stop waited {:?}", stopping.elapsed());
        let started = std::time::Instant::now();
        assert_eq!(run(&path), Ok(true), "nothing is gated after stop");
        assert!(started.elapsed() < Duration::from_millis(1000));
    }
}

#[test]
fn execs_of_a_pass_through_file_never_reach_the_gate() {
    let Some(p) = Private::new() else { return };
    let loader = install(&p.fs(), "loader", &elf("like ld.so"));
    let other = install(&p.fs(), "other", &elf("anything else"));
    // Banned, to show the pass-through mark is what lets it run, not a verdict.
    let (_tx, rx) = watch::channel(set(vec![hash_rule("loader", &std::fs::read(&loader).unwrap())]));
    let cfg = GateConfig { pass_through: vec![loader.clone()], ..test_cfg() };
    let Some(g) = arm(&p, rx, cfg, None) else { return };
    let before = g.gate.stats().events;
    assert_eq!(run(&loader), Ok(true));
    assert_eq!(g.gate.stats().events, before, "no permission event for the pass-through file");
    assert_eq!(run(&other), Ok(true));
    assert_eq!(g.gate.stats().events, before + 1, "other files still reach the gate");
}

#[test]
fn a_tmpfs_mounted_after_start_is_gated_too() {
    let Some(mut p) = Private::new() else { return };
    let banned = elf("on a late mount");
    let (_tx, rx) = watch::channel(set(vec![hash_rule("late", &banned)]));
    let Some(mut g) = arm(&p, rx, test_cfg(), None) else { return };
    let Some(late) = p.mount("late") else { return };
    g.expect(
        "the late tmpfs to be marked",
        |e| matches!(e, GateEvent::Marked { mount_point, .. } if *mount_point == late),
    );
    let path = install(&late, "tool", &banned);
    assert_eq!(run(&path), Err(EPERM), "an exec from a filesystem mounted after start is gated");
    g.expect("the deny", |e| matches!(e, GateEvent::Denied { rule, .. } if rule == "late"));
    drop(g);
}

#[test]
fn protected_binaries_and_the_agents_children_are_spared_and_monitor_mode_only_records() {
    let Some(p) = Private::new() else { return };
    let banned = elf("banned but protected");
    let protected_path = install(&p.fs(), "dpkg", &banned);
    let child_path = install(&p.fs(), "helper", &elf("banned, run by the agent"));
    let (_tx, rx) = watch::channel(set(vec![
        hash_rule("protected-one", &banned),
        hash_rule("agent-child", &std::fs::read(&child_path).unwrap()),
    ]));
    let (tx_ev, events) = mpsc::channel(64);
    let pp = protected_path.clone();
    let cfg = GateConfig { scope: p.scope(), exempt_children: true, ..GateConfig::default() };
    let gate = match ExecGate::start(cfg, rx, Arc::new(move |path: &Path| path == pp), tx_ev) {
        Ok(g) => g,
        Err(e) => {
            skip(&format!("fanotify is unavailable: {e}"));
            return;
        }
    };
    let mut g = Armed { gate, events, seen: Vec::new() };
    g.expect("marked", |e| matches!(e, GateEvent::Marked { .. }));
    // Our direct child: spared. The same file run by a grandchild (sh forks, then execs): denied.
    assert_eq!(run(&child_path), Ok(true));
    g.expect("spared child", |e| matches!(e, GateEvent::Spared { reason: SpareReason::AgentChild, .. }));
    let status = Command::new("sh").arg("-c").arg(format!("'{}'; exit $?", child_path.display())).status().unwrap();
    assert_eq!(status.code(), Some(126), "a grandchild is not exempt");
    g.expect("the grandchild's deny", |e| matches!(e, GateEvent::Denied { rule, .. } if rule == "agent-child"));
    // A protected binary is never denied, even by the grandchild.
    let status = Command::new("sh").arg("-c").arg(format!("'{}'; exit $?", protected_path.display())).status().unwrap();
    assert_eq!(status.code(), Some(0));
    g.expect(
        "spared protected",
        |e| matches!(e, GateEvent::Spared { reason: SpareReason::Protected, rule, .. } if rule == "protected-one"),
    );
    g.gate.stop();

    // Monitor mode: the banned file runs, and the would-be deny is recorded.
    let (_tx, rx) = watch::channel(set(vec![hash_rule("monitored", &std::fs::read(&child_path).unwrap())]));
    let cfg = GateConfig { mode: GateMode::Monitor, ..test_cfg() };
    let Some(mut g) = arm(&p, rx, cfg, None) else { return };
    assert_eq!(run(&child_path), Ok(true));
    g.expect("would deny", |e| matches!(e, GateEvent::WouldDeny { rule, .. } if rule == "monitored"));
    g.drain();
    assert!(!g.seen.iter().any(|e| matches!(e, GateEvent::Denied { .. })));
}

/// Not a test on its own: the gate host for `killing_the_gate_process_…`, run as a separate
/// process (this test binary re-executed with EMBARGO_GATE_HOST set). Without that variable it
/// returns at once.
#[test]
fn gate_host_helper() {
    let Ok(dir) = std::env::var("EMBARGO_GATE_HOST") else { return };
    let banned = std::env::var("EMBARGO_GATE_SHA").unwrap();
    let slow = std::env::var("EMBARGO_GATE_SLOW").is_ok_and(|v| v == "1");
    let rules = set(vec![rule("host-ban", Matcher { sha256: vec![banned], ..Default::default() })]);
    let (_tx, rx) = watch::channel(rules);
    let (tx_ev, _events) = mpsc::channel(64);
    let judge: Arc<Judge> = if slow {
        Arc::new(|_: &RuleSet, _: &mut std::fs::File, _: &Path| {
            println!("judging");
            std::thread::sleep(Duration::from_secs(300));
            Ok(Judgement::Allow)
        })
    } else {
        Arc::new(judge_exec)
    };
    let cfg = GateConfig {
        scope: MarkScope::Under(vec![PathBuf::from(dir)]),
        deadline: Duration::from_secs(600),
        exempt_children: false,
        ..GateConfig::default()
    };
    let _gate = ExecGate::start_with_judge(cfg, rx, Arc::new(|_: &Path| false), tx_ev, judge).unwrap();
    println!("armed");
    // Until the parent kills us (or closes our stdin: then the gate is dropped and disarms).
    let _ = std::io::stdin().lines().next();
}

struct Host(std::process::Child, std::sync::mpsc::Receiver<String>);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_host(dir: &Path, banned_sha: &str, slow: bool) -> Host {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "gate_host_helper", "--nocapture", "--test-threads=1"])
        .env("EMBARGO_GATE_HOST", dir)
        .env("EMBARGO_GATE_SHA", banned_sha)
        .env("EMBARGO_GATE_SLOW", if slow { "1" } else { "0" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let host = Host(child, rx);
    wait_line(&host, "armed");
    host
}

fn wait_line(h: &Host, want: &str) {
    eventually(&format!("the gate host to print {want:?}"), Duration::from_secs(20), || {
        // libtest prints `test gate_host_helper ... ` without a newline before the first line.
        h.1.try_recv().ok().filter(|l| l.trim().ends_with(want))
    });
}

#[test]
fn killing_the_gate_process_releases_pending_execs_and_a_restart_rearms() {
    let Some(p) = Private::new() else { return };
    let banned = elf("banned in another process's gate");
    let path = install(&p.fs(), "tool", &banned);
    let hash = sha(&banned);
    let dir = p.dir.path();

    // Armed in another process: the exec fails there too.
    let host = start_host(dir, &hash, false);
    assert_eq!(run(&path), Err(EPERM));
    drop(host);
    assert_eq!(run(&path), Ok(true), "a gate stopped normally leaves nothing armed");

    // A gate stuck judging: an exec waits on it; SIGKILL the gate's process and the kernel
    // releases (allows) the pending event.
    let host = start_host(dir, &hash, true);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let blocked = path.clone();
    std::thread::spawn(move || {
        let _ = done_tx.send(run(&blocked));
    });
    wait_line(&host, "judging");
    assert!(done_rx.recv_timeout(Duration::from_millis(300)).is_err(), "the exec waits for the gate's answer");
    let mut host = host;
    host.0.kill().unwrap(); // SIGKILL
    let _ = host.0.wait();
    let released = done_rx.recv_timeout(Duration::from_secs(10)).expect("the pending exec was released");
    assert_eq!(released, Ok(true));
    assert_eq!(run(&path), Ok(true), "nothing is armed after the kill");

    // Restart re-arms.
    let host = start_host(dir, &hash, false);
    assert_eq!(run(&path), Err(EPERM));
    drop(host);
}

#[test]
fn the_sweep_kills_a_running_banned_process_and_spares_an_allowed_one() {
    let Some(p) = Private::new() else { return };
    let sleep = std::fs::read("/bin/sleep").unwrap();
    let mut banned = sleep.clone();
    banned.extend_from_slice(b"banned sleeper");
    let mut allowed = sleep;
    allowed.extend_from_slice(b"allowed sleeper");
    let banned_path = install(&p.fs(), "sleeper", &banned);
    let allowed_path = install(&p.fs(), "other", &allowed);
    let mut b = Command::new(&banned_path).arg("60").spawn().unwrap();
    let mut a = Command::new(&allowed_path).arg("60").spawn().unwrap();
    let rules = RuleSet::compile(vec![hash_rule("sleeper-ban", &banned)], &[]);
    let none = |_: &Path| false;

    let report = sweep(&rules, &judge_exec, &none, GateMode::Monitor, 10);
    let found =
        report.stopped.iter().find(|s| s.pid == b.id() as i32).expect("monitor mode reports the banned process");
    assert!(!found.killed);
    assert!(b.try_wait().unwrap().is_none(), "monitor mode kills nothing");

    let report = sweep(&rules, &judge_exec, &none, GateMode::Enforce, 10);
    let killed = report.stopped.iter().find(|s| s.pid == b.id() as i32).expect("the banned process is found");
    assert!(killed.killed, "{killed:?}");
    assert_eq!(killed.rule, "sleeper-ban");
    assert_eq!(killed.uid, Some(0));
    assert_eq!(killed.reason, StopReason::Exe);
    assert_eq!(killed.exe, banned_path);
    let status = b.wait().unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(9));
    assert!(report.stopped.iter().all(|s| s.rule == "sleeper-ban"), "{:?}", report.stopped);
    assert!(a.try_wait().unwrap().is_none(), "the allowed process still runs");

    // The action cap: nothing killed past it.
    let mut c = Command::new(&banned_path).arg("60").spawn().unwrap();
    let report = sweep(&rules, &judge_exec, &none, GateMode::Enforce, 0);
    assert_eq!(report.capped, 1);
    assert!(c.try_wait().unwrap().is_none());
    let _ = c.kill();
    let _ = c.wait();
    let _ = a.kill();
    let _ = a.wait();
}

#[test]
fn needs_admin_paths_are_denied_by_path_at_once_even_when_the_kernel_had_cached_an_allow() {
    let Some(p) = Private::new() else { return };
    let owned = install(&p.fs(), "package-program", &elf("a needs-admin package's program"));
    let other = install(&p.fs(), "other", &elf("anything else"));
    std::thread::sleep(Duration::from_millis(150));
    let (_tx, rx) = watch::channel(set(vec![]));
    let Some(mut g) = arm(&p, rx, test_cfg(), None) else { return };
    assert_eq!(run(&owned), Ok(true));
    assert_eq!(run(&owned), Ok(true));
    assert_eq!(g.gate.stats().kernel_cached, 1, "the allow went to the kernel");
    let mut paths = embargo_agent::exec_gate::OwnedPaths::default();
    paths.files.insert(std::fs::canonicalize(&owned).unwrap(), "banned-package".into());
    g.gate.set_owned_paths(paths);
    assert_eq!(run(&owned), Err(EPERM), "denied by path as soon as set_owned_paths returns");
    g.expect("the deny", |e| matches!(e, GateEvent::Denied { rule, .. } if rule == "banned-package"));
    assert_eq!(run(&other), Ok(true), "other files run");
    g.gate.set_owned_paths(Default::default());
    assert_eq!(run(&owned), Ok(true), "the package's files run again once it is gone from the set");
}
