//! The exec gate and the running-process sweep, wired into the daemon (`[exec]` in agent.toml).
//!
//! `lib.rs::run_with_clock` calls [`start`] when `[exec] enabled = true`: the gate
//! (`exec_gate::ExecGate`) decides with a `subscribe()`d receiver of the published rule set, and
//! a small task turns its `GateEvent`s into `AuditEvent`s and sends them, with the scans of the
//! running processes (`running::scan_with_owned`, on a blocking thread at start-up and after
//! every change of the published rule set or of the gate's needs-admin paths), to the core loop
//! ([`ExecInput`]). The core loop decides the kills (they count against the policy update's
//! action cap), refreshes the [`ProtectedPaths`] after package reads and hands the gate the
//! needs-admin packages' files ([`needs_admin_paths`], read on the package worker by
//! [`read_needs_admin_paths`]).
//! The gate itself is owned by the `Enforcer` (its counters go into `status`); dropping the
//! enforcer at shutdown stops the gate and flushes its marks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use embargo_policy::matcher::RuleSet;
use tokio::sync::{mpsc, watch};

use embargo_policy::app::Kind;

use crate::config::{Config, Mode};
use crate::evidence::AuditEvent;
use crate::exec_gate::{
    judge_exec, Answer, ExecGate, ExecInfo, GateConfig, GateError, GateEvent, GateMode, MarkScope, OwnedPaths,
    Protected, SpareReason,
};
use crate::running::{Scan, StopReason, SweepReport, Target};
use crate::source::package::{InstalledPackage, PackageManager};

/// What must never be denied or killed: absolute paths, each an executable or a directory
/// everything beneath which is protected (a flatpak or snap deployment).
#[derive(Debug, Default, Clone)]
pub struct ProtectedSet {
    paths: HashSet<PathBuf>,
}

impl ProtectedSet {
    /// Whether `path` or a directory it lies in is protected.
    pub fn contains(&self, path: &Path) -> bool {
        path.ancestors().any(|a| self.paths.contains(a))
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Adds `p`, and its canonical name when that differs (a merged /usr lists `/bin/sh`, the
    /// kernel names `/usr/bin/sh`). The root directory itself is never added.
    fn add(&mut self, p: PathBuf) {
        if p.parent().is_none() || p.as_os_str().is_empty() {
            return;
        }
        if let Ok(c) = std::fs::canonicalize(&p) {
            if c.parent().is_some() {
                self.paths.insert(c);
            }
        }
        self.paths.insert(p);
    }

    fn extend(&mut self, other: &ProtectedSet) {
        self.paths.extend(other.paths.iter().cloned());
    }
}

/// The files (absolute, as this process names them) of the packages under `root` that
/// `manager` calls protected: for dpkg and rpm their executables, for flatpak and snap their
/// deployments (protected whole).
pub fn protected_of<'a>(
    manager: &dyn PackageManager,
    root: &Path,
    packages: impl IntoIterator<Item = &'a InstalledPackage>,
) -> ProtectedSet {
    let mut set = ProtectedSet::default();
    for p in packages.into_iter().filter(|p| manager.protected(&p.package).is_some()) {
        for f in &p.files {
            set.add(root.join(f.trim_start_matches('/')));
        }
    }
    set
}

/// What is protected whatever the packages say: the agent's own executable and the package
/// managers by their usual paths, whether or not their package is known.
pub fn base_protected() -> ProtectedSet {
    let mut set = ProtectedSet::default();
    if let Ok(me) = std::env::current_exe() {
        set.add(me);
    }
    for name in ["dpkg", "apt", "apt-get", "rpm", "dnf", "yum", "zypper", "flatpak", "snap", "snapd", "embargod"] {
        for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/lib/snapd"] {
            set.add(Path::new(dir).join(name));
        }
    }
    set
}

/// The protected set at start-up: [`base_protected`] and the protected packages of the host's
/// own package databases (dpkg, rpm and snap at `/`, flatpak's system installation), each read
/// with its manager's `protected`. The roots the agent watches are added as they are read
/// ([`ProtectedPaths::refresh_root`]).
pub fn protected_paths() -> ProtectedSet {
    let mut set = base_protected();
    for m in crate::source::package::MANAGERS {
        let root = match m.kind() {
            Kind::Deb | Kind::Rpm | Kind::Snap => Path::new("/"),
            Kind::Flatpak => Path::new(crate::source::flatpak::SYSTEM_INSTALLATION),
            _ => continue,
        };
        if !m.has_database(root) {
            continue;
        }
        match m.installed(root) {
            Ok(pkgs) => set.extend(&protected_of(*m, root, &pkgs)),
            Err(e) => {
                tracing::warn!(kind = %m.kind(), error = %e, "exec gate: cannot read the host's packages for the protected set")
            }
        }
    }
    set
}

/// The protected set the gate and the sweeps read, refreshed by the core loop whenever a
/// watched package root is read again (the `Packages` event), not only at start-up.
#[derive(Clone)]
pub struct ProtectedPaths {
    inner: Arc<std::sync::RwLock<Arc<ProtectedSet>>>,
    /// The start-up set, and per watched root the protected packages (name, version) and their
    /// files as last read.
    sources: Arc<std::sync::Mutex<Sources>>,
}

#[derive(Default)]
struct Sources {
    start: ProtectedSet,
    roots: std::collections::BTreeMap<PathBuf, (Vec<(String, String)>, ProtectedSet)>,
}

impl ProtectedPaths {
    pub fn new(start: ProtectedSet) -> Self {
        let current = Arc::new(start.clone());
        Self {
            inner: Arc::new(std::sync::RwLock::new(current)),
            sources: Arc::new(std::sync::Mutex::new(Sources { start, roots: Default::default() })),
        }
    }

    /// The set in force.
    pub fn current(&self) -> Arc<ProtectedSet> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.current().contains(path)
    }

    /// Root `root` of `manager` was read again: when its protected packages changed (by name
    /// and version), recompute its part and publish the union. Returns whether the set changed.
    pub fn refresh_root<'a>(
        &self,
        manager: &dyn PackageManager,
        root: &Path,
        packages: impl IntoIterator<Item = &'a InstalledPackage> + Clone,
    ) -> bool {
        let mut key: Vec<(String, String)> = packages
            .clone()
            .into_iter()
            .filter(|p| manager.protected(&p.package).is_some())
            .map(|p| (p.package.name.clone(), p.package.version.clone()))
            .collect();
        key.sort();
        let mut src = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if src.roots.get(root).is_some_and(|(k, _)| *k == key) {
            return false;
        }
        let part = protected_of(manager, root, packages);
        src.roots.insert(root.to_path_buf(), (key, part));
        let mut all = src.start.clone();
        for (_, part) in src.roots.values() {
            all.extend(part);
        }
        tracing::info!(root = %root.display(), paths = all.len(), "exec gate: protected set refreshed");
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(all);
        true
    }
}

/// Most needs-admin paths handed to the gate; past it the rest are left out (logged).
pub const MAX_OWNED_PATHS: usize = 100_000;

/// The paths of a banned package the agent could not remove, as the gate will see them, added
/// to `out` under `rule`: for dpkg every file its list names (`info/<package>.list`; entries
/// that other entries lie beneath are directories and left out), for rpm its executables, for
/// flatpak and snap its deployment (everything beneath it). Each file is named with its parent
/// directory made canonical (a merged /usr lists `/bin/x`, the kernel names `/usr/bin/x`) and
/// its last component as listed (a symlink in the list is exec'd as its target, which the list
/// names too). Returns false when [`MAX_OWNED_PATHS`] was reached.
pub fn needs_admin_paths(
    manager: &dyn PackageManager,
    root: &Path,
    p: &InstalledPackage,
    rule: &str,
    out: &mut crate::exec_gate::OwnedPaths,
) -> bool {
    let canonical = |f: &str| {
        let full = root.join(f.trim_start_matches('/'));
        match (full.parent().and_then(|d| std::fs::canonicalize(d).ok()), full.file_name()) {
            (Some(dir), Some(name)) => dir.join(name),
            _ => full,
        }
    };
    match manager.kind() {
        Kind::Deb | Kind::Rpm => {
            let listed = if manager.kind() == Kind::Deb {
                crate::source::dpkg::files(root, &p.package)
            } else {
                p.files.clone()
            };
            let mut files = listed;
            files.sort_unstable();
            for (i, f) in files.iter().enumerate() {
                let is_dir = files.get(i + 1).is_some_and(|next| {
                    next.len() > f.len() && next.starts_with(f.as_str()) && next.as_bytes()[f.len()] == b'/'
                });
                if is_dir || f.trim_matches(['/', '.']).is_empty() {
                    continue;
                }
                if out.len() >= MAX_OWNED_PATHS {
                    return false;
                }
                out.files.insert(canonical(f), rule.to_owned());
            }
        }
        _ => {
            for f in &p.files {
                if out.len() >= MAX_OWNED_PATHS {
                    return false;
                }
                let full = root.join(f.trim_start_matches('/'));
                let dir = std::fs::canonicalize(&full).unwrap_or(full);
                if dir.parent().is_some() {
                    out.dirs.insert(dir, rule.to_owned());
                }
            }
        }
    }
    true
}

/// A banned package the agent could not remove, as the core loop hands it to
/// [`read_needs_admin_paths`] (on the package worker).
pub struct NeedsAdminPackage {
    pub manager: &'static dyn PackageManager,
    pub root: PathBuf,
    pub installed: InstalledPackage,
    pub rule: String,
}

/// The needs-admin paths of `packages` ([`needs_admin_paths`] of each, at most
/// [`MAX_OWNED_PATHS`], a warning when that bound is reached). It reads dpkg's `.list` files
/// (100,000 paths at most), so it runs on the package worker, never on the core loop: the log
/// line names the thread that read.
pub fn read_needs_admin_paths(packages: &[NeedsAdminPackage]) -> OwnedPaths {
    let mut owned = OwnedPaths::default();
    for p in packages {
        if !needs_admin_paths(p.manager, &p.root, &p.installed, &p.rule, &mut owned) {
            tracing::warn!(
                package = %p.installed.package.name,
                bound = MAX_OWNED_PATHS,
                "exec gate: too many files of needs-admin packages; the rest are not denied by path"
            );
            break;
        }
    }
    let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
    tracing::info!(
        packages = packages.len(),
        paths = owned.len(),
        thread,
        "exec gate: files of needs-admin packages read"
    );
    owned
}

/// The gate's configuration from `[exec]` and the agent's mode.
pub fn gate_config(cfg: &Config) -> GateConfig {
    GateConfig {
        mode: if cfg.mode == Mode::Monitor { GateMode::Monitor } else { GateMode::Enforce },
        on_timeout: cfg.exec.on_timeout,
        deadline: cfg.exec.deadline,
        scope: match &cfg.exec.mounts {
            Some(dirs) => MarkScope::Under(dirs.clone()),
            None => MarkScope::AllFilesystems,
        },
        exempt_children: true,
        pass_through: crate::exec_gate::dynamic_loaders(),
        ..GateConfig::default()
    }
}

/// What the exec side sends the core loop.
pub enum ExecInput {
    /// Evidence of the gate (an exec denied, a deadline, …).
    Audit(Box<AuditEvent>),
    /// The running processes the rule set `rules` bans, found by a scan on a blocking thread.
    /// The core loop stops them ([`stop_now`]) or holds them for `confirm`: the kills of a
    /// policy update count against its action cap with the update's other acts.
    Scan { rules: Arc<RuleSet>, scan: Scan },
}

/// Stops `scan`'s targets now (in monitor mode only records them); the audit events of that.
pub fn stop_now(scan: Scan, mode: GateMode) -> Vec<AuditEvent> {
    sweep_events(crate::running::stop(scan, mode, usize::MAX))
}

/// The audit events of targets held back for `confirm` (not killed; `why` says so), and the
/// protected ones and errors logged.
pub fn hold_events(scan: &Scan, why: &str) -> Vec<AuditEvent> {
    let report = SweepReport {
        scanned: scan.scanned,
        spared: scan.spared.clone(),
        errors: scan.errors.clone(),
        ..Default::default()
    };
    let _ = sweep_events(report);
    scan.targets
        .iter()
        .map(|t| AuditEvent::ProcessKilled {
            pid: t.pid,
            uid: t.uid,
            exe: t.exe.display().to_string(),
            rule: t.rule.clone(),
            reason: stop_reason(&t.reason),
            killed: false,
            note: Some(why.to_owned()),
        })
        .collect()
}

/// Kills one target held back by the action cap, now confirmed (if it still runs the judged
/// executable).
pub fn confirm_kill(t: Target) -> AuditEvent {
    let (killed, note) = match crate::running::kill_if_same(t.pid, t.dev, t.ino) {
        Ok(true) => (true, None),
        Ok(false) => (false, Some("exited or changed before the kill".to_owned())),
        Err(e) => (false, Some(format!("kill failed: {e}"))),
    };
    AuditEvent::ProcessKilled {
        pid: t.pid,
        uid: t.uid,
        exe: t.exe.display().to_string(),
        rule: t.rule,
        reason: stop_reason(&t.reason),
        killed,
        note,
    }
}

/// Arms the gate and starts the task that turns its events and the sweeps' reports into audit
/// events on `evidence`. Must be called inside the tokio runtime. The returned
/// [`ProtectedPaths`] is what the core loop refreshes after package reads.
pub fn start(
    cfg: &Config,
    rules: &watch::Sender<Arc<RuleSet>>,
    evidence: mpsc::Sender<ExecInput>,
) -> Result<(ExecGate, tokio::task::JoinHandle<()>, ProtectedPaths), GateError> {
    let set = ProtectedPaths::new(protected_paths());
    tracing::info!(paths = set.current().len(), "exec gate: protected executables");
    let handle = set.clone();
    let protected: Arc<Protected> = Arc::new(move |p: &Path| set.contains(p));
    let (gate_tx, gate_rx) = mpsc::channel::<GateEvent>(1024);
    let gate = ExecGate::start(gate_config(cfg), rules.subscribe(), protected.clone(), gate_tx)?;
    let applied = gate.policy_applied();
    let watches = Watches { rules: rules.subscribe(), owned: gate.subscribe_owned() };
    let task = tokio::spawn(relay(gate_rx, watches, protected, applied, evidence));
    Ok((gate, task, handle))
}

/// Whether the gate has applied a rule set ([`ExecGate::policy_applied`]).
type Applied = Arc<crate::exec_gate::PolicyApplied>;

/// What a change of wakes the sweeps: the published rule set, and the needs-admin paths the
/// gate denies ([`ExecGate::subscribe_owned`]).
struct Watches {
    rules: watch::Receiver<Arc<RuleSet>>,
    owned: watch::Receiver<Arc<OwnedPaths>>,
}

/// Relays gate events to the core loop, and (in its own task, so a long scan never holds up
/// the gate's evidence) scans the running processes at start-up and after every change of the
/// rule set or of the needs-admin paths.
async fn relay(
    mut gate_rx: mpsc::Receiver<GateEvent>,
    watches: Watches,
    protected: Arc<Protected>,
    applied: Applied,
    evidence: mpsc::Sender<ExecInput>,
) {
    let sweeper = tokio::spawn(scans(watches, protected, applied, evidence.clone()));
    while let Some(ev) = gate_rx.recv().await {
        if let Some(a) = audit_of(ev) {
            if evidence.send(ExecInput::Audit(Box::new(a))).await.is_err() {
                break;
            }
        }
    }
    sweeper.abort();
}

/// One scan at start-up and one after each change of the published rule set or of the
/// needs-admin paths (changes during a scan are coalesced into one more), each on a blocking
/// thread; the core loop decides the kills. A process running a needs-admin package's file is
/// found by its path ([`crate::running::scan_with_owned`]), the paths being the gate's own.
async fn scans(watches: Watches, protected: Arc<Protected>, applied: Applied, evidence: mpsc::Sender<ExecInput>) {
    let Watches { mut rules, mut owned } = watches;
    // The start-up scan: the value in force counts as changed.
    rules.mark_changed();
    let hashes = Arc::new(SweepHashes::default());
    // The gate holds the needs-admin sender: once it is gone only rule sets wake a scan.
    let mut owned_open = true;
    loop {
        tokio::select! {
            r = rules.changed() => if r.is_err() { return },
            o = owned.changed(), if owned_open => if o.is_err() { owned_open = false; continue },
        }
        let current = rules.borrow_and_update().clone();
        let owned_now = owned.borrow_and_update().clone();
        // Scan only once the gate has dropped the kernel-cached verdicts of older rule sets
        // (a thread wake-up after publication; bounded, and a newer set supersedes this one).
        let waiting = std::time::Instant::now();
        while !applied(&current) && waiting.elapsed() < std::time::Duration::from_secs(1) {
            if rules.has_changed().unwrap_or(false) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let (p, h, r) = (protected.clone(), hashes.clone(), current.clone());
        let scan = tokio::task::spawn_blocking(move || {
            let judge = move |r: &RuleSet, f: &mut std::fs::File, path: &Path| h.judge(r, f, path);
            crate::running::scan_with_owned(&r, &owned_now, &judge, &*p)
        })
        .await;
        match scan {
            Ok(scan) => {
                tracing::info!(scanned = scan.scanned, banned = scan.targets.len(), "running-process sweep done");
                if evidence.send(ExecInput::Scan { rules: current, scan }).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::error!("the running-process sweep panicked: {e}"),
        }
    }
}

/// Most hashes the sweeps remember; when full the memory is emptied.
const SWEEP_HASHES: usize = 4096;

/// The size, modification and change time of a file: a remembered hash is used only while these
/// are unchanged.
type Stamp = (u64, i64, i64, i64, i64);

/// The sha256 of executables the sweeps hashed, kept across sweeps so a sweep after a policy
/// update does not read every running executable whole again. An entry is used only for the same
/// (device, inode) with the same size, modification and change time; a file changed in the last
/// 100 ms is not remembered (a write in the same timestamp tick could hide behind it).
#[derive(Default)]
struct SweepHashes {
    map: std::sync::Mutex<std::collections::HashMap<(u64, u64), (Stamp, String)>>,
}

impl SweepHashes {
    /// [`judge_exec`] with remembered hashes (with the hash always known, the verdict is the one
    /// `judge_exec` reaches: a hash only confirms or strengthens a verdict).
    fn judge(
        &self,
        rules: &RuleSet,
        file: &mut std::fs::File,
        path: &Path,
    ) -> std::io::Result<crate::exec_gate::Judgement> {
        use std::os::unix::fs::MetadataExt as _;
        if !rules.has_sha256_matchers() {
            return judge_exec(rules, file, path);
        }
        let m = file.metadata()?;
        let stamp: Stamp = (m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec());
        let key = (m.dev(), m.ino());
        let known = self.map.lock().unwrap_or_else(|e| e.into_inner()).get(&key).filter(|(s, _)| *s == stamp).cloned();
        let sha = match known {
            Some((_, sha)) => sha,
            None => {
                let sha = crate::identify::sha256_of(file)?;
                let changed = std::time::SystemTime::UNIX_EPOCH
                    + std::time::Duration::new(m.ctime().max(0) as u64, m.ctime_nsec().clamp(0, 999_999_999) as u32);
                let settled = changed.elapsed().is_ok_and(|age| age > std::time::Duration::from_millis(100));
                if settled {
                    let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
                    if map.len() >= SWEEP_HASHES {
                        map.clear();
                    }
                    map.insert(key, (stamp, sha.clone()));
                }
                sha
            }
        };
        let mut app = crate::exec_gate::exec_app(file, path)?;
        app.sha256 = Some(sha);
        Ok(match rules.verdict(&app).map(|v| (v.rule.to_owned(), v.action)) {
            None => crate::exec_gate::Judgement::Allow,
            Some((rule, embargo_policy::rules::Action::Audit)) => crate::exec_gate::Judgement::Audit { rule },
            Some((rule, _)) => crate::exec_gate::Judgement::Deny { rule },
        })
    }
}

fn answer(a: Answer) -> String {
    match a {
        Answer::Allow => "allow".into(),
        Answer::Deny => "deny".into(),
    }
}

fn exec_fields(e: ExecInfo) -> (i32, Option<u32>, String) {
    (e.pid, e.uid, e.path.display().to_string())
}

/// The audit event of one gate event (`None`: logged only).
pub fn audit_of(ev: GateEvent) -> Option<AuditEvent> {
    Some(match ev {
        GateEvent::Denied { exec, rule } => {
            let (pid, uid, path) = exec_fields(exec);
            AuditEvent::ExecDenied { pid, uid, path, rule, result: "denied".into() }
        }
        GateEvent::WouldDeny { exec, rule } => {
            let (pid, uid, path) = exec_fields(exec);
            AuditEvent::ExecDenied { pid, uid, path, rule, result: "would-deny (monitor)".into() }
        }
        GateEvent::Spared { exec, rule, reason } => {
            let (pid, uid, path) = exec_fields(exec);
            let result = match reason {
                SpareReason::Protected => "allowed: protected",
                SpareReason::AgentChild => "allowed: the agent's child",
            };
            AuditEvent::ExecDenied { pid, uid, path, rule, result: result.into() }
        }
        GateEvent::Audited { exec, rule } => {
            let (pid, uid, path) = exec_fields(exec);
            AuditEvent::ExecDenied { pid, uid, path, rule, result: "allowed: audit rule".into() }
        }
        GateEvent::Deadline { exec, answer: a } => {
            let (pid, uid, path) = exec_fields(exec);
            AuditEvent::ExecTimeout { pid, uid, path, answer: answer(a), reason: "deadline".into() }
        }
        GateEvent::QueueFull { exec, answer: a } => {
            let (pid, uid, path) = exec_fields(exec);
            AuditEvent::ExecTimeout { pid, uid, path, answer: answer(a), reason: "queue full".into() }
        }
        GateEvent::Failed { exec, error, answer: a } => {
            let (pid, uid, path) = exec_fields(exec);
            AuditEvent::ExecTimeout {
                pid,
                uid,
                path,
                answer: answer(a),
                reason: format!("identification failed: {error}"),
            }
        }
        GateEvent::Marked { mount_point, fstype, per_mount } => {
            tracing::info!(mount = %mount_point.display(), fstype, per_mount, "exec gate: marked");
            return None;
        }
        GateEvent::MarkFailed { mount_point, error } => {
            tracing::warn!(mount = %mount_point.display(), error, "exec gate: cannot mark; execs there are not gated");
            return None;
        }
        GateEvent::Overflow => {
            tracing::warn!("exec gate: the kernel dropped events (their execs were allowed)");
            return None;
        }
    })
}

fn stop_reason(r: &StopReason) -> String {
    match r {
        StopReason::Exe => "banned executable".into(),
        StopReason::AppImageMount { runtime_pid, appimage, .. } => {
            format!("runs from the mount of banned AppImage {} (runtime pid {runtime_pid})", appimage.display())
        }
        StopReason::NeedsAdmin => "runs a file of a banned package the agent could not remove (needs admin)".into(),
    }
}

/// The audit events of one sweep: one `process-killed` per process stopped (or, in monitor mode,
/// past the cap or when the kill failed, that would have been: `killed: false` with the reason).
pub fn sweep_events(r: SweepReport) -> Vec<AuditEvent> {
    for e in &r.errors {
        tracing::warn!(error = %e, "running-process sweep");
    }
    for (pid, exe, why) in &r.spared {
        tracing::info!(pid, exe = %exe.display(), why, "running-process sweep: protected, not stopped");
    }
    if r.capped > 0 {
        tracing::warn!(capped = r.capped, "running-process sweep: kills past max_actions_per_update not done");
    }
    r.stopped
        .into_iter()
        .map(|s| AuditEvent::ProcessKilled {
            pid: s.pid,
            uid: s.uid,
            exe: s.exe.display().to_string(),
            rule: s.rule,
            reason: stop_reason(&s.reason),
            killed: s.killed,
            note: s.note,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::running::Stopped;

    fn exec() -> ExecInfo {
        ExecInfo { pid: 42, uid: Some(1000), path: PathBuf::from("/tmp/x") }
    }

    #[test]
    fn gate_events_become_audit_events_naming_rule_and_answer() {
        let json = |e: Option<AuditEvent>| serde_json::to_value(e.expect("an audit event")).unwrap();
        let d = json(audit_of(GateEvent::Denied { exec: exec(), rule: "r1".into() }));
        assert_eq!(
            (d["type"].as_str(), d["rule"].as_str(), d["result"].as_str()),
            (Some("exec-denied"), Some("r1"), Some("denied"))
        );
        assert_eq!((d["pid"].as_i64(), d["uid"].as_u64(), d["path"].as_str()), (Some(42), Some(1000), Some("/tmp/x")));
        let w = json(audit_of(GateEvent::WouldDeny { exec: exec(), rule: "r1".into() }));
        assert_eq!(w["result"], "would-deny (monitor)");
        let t = json(audit_of(GateEvent::Deadline { exec: exec(), answer: Answer::Deny }));
        assert_eq!(
            (t["type"].as_str(), t["answer"].as_str(), t["reason"].as_str()),
            (Some("exec-timeout"), Some("deny"), Some("deadline"))
        );
        assert!(audit_of(GateEvent::Overflow).is_none());
    }

    #[test]
    fn sweep_reports_become_process_killed_events_and_count() {
        let stopped = |killed| Stopped {
            pid: 7,
            uid: Some(0),
            exe: PathBuf::from("/tmp/app"),
            rule: "r2".into(),
            reason: StopReason::Exe,
            killed,
            note: (!killed).then(|| "monitor mode".into()),
        };
        let r = SweepReport { scanned: 3, stopped: vec![stopped(true), stopped(false)], ..Default::default() };
        let evs = sweep_events(r);
        assert_eq!(evs.len(), 2);
        let mut counters = crate::proto::Counters::default();
        for e in &evs {
            crate::evidence::Sink::record(&mut counters, e);
        }
        assert_eq!(counters.processes_killed, 1, "only a sent SIGKILL counts");
        let v = serde_json::to_value(&evs[1]).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["rule"].as_str(), v["killed"].as_bool()),
            (Some("process-killed"), Some("r2"), Some(false))
        );
        assert_eq!(v["note"], "monitor mode");
    }

    #[test]
    fn the_gate_config_follows_exec_and_mode() {
        let text = "mode = \"monitor\"\n[policy]\nrepository = \"https://p.invalid/\"\nroot = \"/r.json\"\n[exec]\nenabled = true\non_timeout = \"deny\"\nmounts = [\"/media\"]\n";
        let cfg = Config::parse(Path::new("/etc/embargo/agent.toml"), text).unwrap();
        let g = gate_config(&cfg);
        assert_eq!(g.mode, GateMode::Monitor);
        assert_eq!(g.on_timeout, crate::exec_gate::OnTimeout::Deny);
        assert_eq!(g.scope, MarkScope::Under(vec![PathBuf::from("/media")]));
        assert!(g.exempt_children);
    }

    #[test]
    fn remembered_hashes_are_used_only_for_an_unchanged_file() {
        use crate::exec_gate::Judgement;
        use embargo_policy::matcher::RuleSet;
        use embargo_policy::rules::{Action, Matcher, Rule};
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tool");
        std::fs::write(&path, b"first").unwrap();
        let rule = |bytes: &[u8]| Rule {
            id: "by-hash".into(),
            description: String::new(),
            action: Action::Quarantine,
            matchers: vec![Matcher { sha256: vec![embargo_policy::trust::sha256_hex(bytes)], ..Default::default() }],
            except: vec![],
            tags: vec![],
        };
        let first = RuleSet::compile(vec![rule(b"first")], &[]);
        let second = RuleSet::compile(vec![rule(b"second")], &[]);
        std::thread::sleep(std::time::Duration::from_millis(150));
        let h = SweepHashes::default();
        let judge = |r: &RuleSet| h.judge(r, &mut std::fs::File::open(&path).unwrap(), &path).unwrap();
        assert_eq!(judge(&first), Judgement::Deny { rule: "by-hash".into() });
        assert_eq!(h.map.lock().unwrap().len(), 1, "a settled file's hash is remembered");
        assert_eq!(judge(&second), Judgement::Allow);
        std::fs::write(&path, b"second").unwrap();
        assert_eq!(judge(&second), Judgement::Deny { rule: "by-hash".into() }, "a rewritten file is hashed again");
    }

    #[test]
    fn flatpak_and_snap_protections_cover_their_deployments_and_refresh_follows_the_packages() {
        use crate::source::package::{InstalledPackage, Package};
        let pkg =
            |name: &str, file: &str| InstalledPackage { package: Package::new(name, "1"), files: vec![file.into()] };
        let root = Path::new("/var/lib/flatpak");
        let runtime = pkg("org.freedesktop.Platform", "/runtime/org.freedesktop.Platform/x86_64/23.08");
        let app = pkg("com.tencent.WeChat", "/app/com.tencent.WeChat/x86_64/stable");
        let set = protected_of(&crate::source::flatpak::Flatpak, root, [&runtime, &app]);
        assert!(set.contains(&root.join("runtime/org.freedesktop.Platform/x86_64/23.08/active/files/bin/sh")));
        assert!(!set.contains(&root.join("app/com.tencent.WeChat/x86_64/stable/active/files/wechat")));
        let core = pkg("core22", "/snap/core22/current");
        let snap_app = pkg("wechat", "/snap/wechat/current");
        let set = protected_of(&crate::source::snap::Snap, Path::new("/"), [&core, &snap_app]);
        assert!(set.contains(Path::new("/snap/core22/current/usr/bin/sh")));
        assert!(!set.contains(Path::new("/snap/wechat/current/wechat")));
        assert!(!set.contains(Path::new("/snap/core22-evil/x")), "whole components only");

        let paths = ProtectedPaths::new(ProtectedSet::default());
        let snap_root = Path::new("/");
        assert!(paths.refresh_root(&crate::source::snap::Snap, snap_root, [&core, &snap_app]));
        assert!(paths.contains(Path::new("/snap/core22/current/usr/bin/sh")));
        assert!(!paths.refresh_root(&crate::source::snap::Snap, snap_root, [&core, &snap_app]), "unchanged");
        assert!(paths.refresh_root(&crate::source::snap::Snap, snap_root, [&snap_app]), "core22 removed");
        assert!(!paths.contains(Path::new("/snap/core22/current/usr/bin/sh")));
    }

    #[test]
    fn the_agent_itself_is_protected() {
        let set = protected_paths();
        let me = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
        assert!(set.contains(&me));
        assert!(!set.contains(Path::new("/tmp/anything")));
    }
}
