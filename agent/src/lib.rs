//! embargo-agent: the on-device daemon (`embargod`) and its control CLI (`embargoctl`).
//!
//! Layout (this file is the composition root: it builds the parts and starts the tasks):
//! - `config`: the TOML config, validated once (errors name file:line; exit 64).
//! - `config_doc`: the documentation of every config key (agent.toml(5) is generated from it).
//! - `daemon`: the core loop (one closed `Event` enum wrapping each producer's own message).
//! - `enforce`: the state the loop owns and its pipeline (source → decide → act → evidence),
//!   the policy update with the action cap; `handlers`, `status`: control and sync answers.
//! - `source`: where apps come from — install folders, package-manager roots (the registry of
//!   `PackageManager`s is `source::package::MANAGERS`).
//! - `decide`: the pure decision (verdict, mode, exemption, held, protected, cap).
//! - `act`: the only code that moves files, kills processes or runs a package manager
//!   (`act::quarantine` is the reversible store with crash recovery, `act::process` kills).
//! - `evidence`: typed `AuditEvent`s fed to sinks (audit log, counters, last actions).
//! - `audit`: the hash-chained audit log file.
//! - `sync`: the task that keeps the signed policy current (owns `TrustedState`).
//! - `identify`: what an opened file is (AppImage, desktop entry, plain file, installer artifact).
//! - `artifact`: `.deb` control and `.rpm` header read in-process, every size bounded.
//! - `escape`: control, bidi and zero-width characters made visible in output and logs.
//! - `safefs`: race-safe file operations beneath watched roots (openat2, renameat2).
//! - `control`: the Unix-socket server (peer credentials decide what a caller may do).
//! - `proto`: the control protocol types (the API boundary).
//! - `demo`: the one-command demo device.
//! - `android`: APK identity (manifest, signer) and packages.xml (ABX and text); reads only.
//! - `exec_wire`: `[exec]` wired in: the gate started on the published rule set, its events and
//!   the running-process sweeps (start-up, every rule-set change) relayed as audit events.
//! - `exec_gate`: the fanotify exec gate (banned files fail to execute); `running`: the sweep that
//!   stops banned running processes.
//! - `fallback`: the scan fallback for folder directories beyond the watch bounds
//!   (`source::dirwatch` holds the watches).
//! - `worker`: threads that run the loop's slow jobs (package reads and removals) and send
//!   each result back as the job owner's own message type.
//! - `sys`: the only `unsafe` (madvise for the idle trim), each block with its SAFETY argument.
#![deny(unsafe_code)]

pub mod act;
pub mod android;
pub mod artifact;
pub mod audit;
pub mod clock;
pub mod config;
pub mod config_doc;
pub mod control;
pub mod daemon;
pub mod decide;
pub mod demo;
pub mod enforce;
pub mod escape;
pub mod evidence;
pub mod exec_gate;
pub mod exec_wire;
mod exempt;
mod fallback;
mod handlers;
mod hashpool;
pub mod identify;
pub mod proto;
mod quota;
pub mod report;
pub mod running;
pub mod safefs;
pub mod source;
pub(crate) mod status;
pub mod sync;
#[allow(unsafe_code)]
pub mod sys;
#[cfg(test)]
mod testutil;
pub mod worker;
pub mod xz;

use std::future::Future;

use std::sync::Arc;

use embargo_policy::matcher::RuleSet;
use embargo_policy::trust::TrustedState;
use tokio::sync::{mpsc, watch};

pub use config::Config;

// The paths these modules had before the move into `act/`, `identify/` and `source/`, kept so
// that code written against them (branches in flight, benches, tests) still builds.
pub use act::quarantine;
pub use identify::squashfs;
pub use source::{dpkg, flatpak, packages, rpm, snap};

/// Why the agent could not run. `Config` errors exit 64 (do not restart), others exit 1.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
}

/// What start-up recovered from damaged trust state (`TrustedState::open_or_recover`), if
/// anything: `status` reports the device degraded with it until a sync succeeds. One agent per
/// process, so a process-wide value.
pub static STATE_RECOVERY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Checks the state directory: created 0700 if missing; refused if it is a symlink or writable
/// by anyone but its owner, or (as root) not owned by root.
fn prepare_state_dir(cfg: &Config) -> Result<(), AgentError> {
    use std::os::unix::fs::MetadataExt as _;
    let dir = &cfg.state_dir;
    embargo_policy::fsutil::ensure_dir(dir, 0o700)
        .map_err(|e| AgentError::Runtime(format!("state_dir {}: {e}", dir.display())))?;
    let m =
        std::fs::symlink_metadata(dir).map_err(|e| AgentError::Runtime(format!("state_dir {}: {e}", dir.display())))?;
    let me = rustix::process::geteuid().as_raw();
    if m.uid() != me || m.mode() & 0o022 != 0 {
        return Err(AgentError::Runtime(format!(
            "state_dir {} must be owned by uid {me} and not writable by group or others (mode {:o}, owner {})",
            dir.display(),
            m.mode() & 0o7777,
            m.uid()
        )));
    }
    Ok(())
}

/// Runs the agent until `shutdown` completes: enforce the persisted policy, then sync, watch,
/// act and answer the control socket.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    run_with_clock(cfg, Arc::new(clock::SystemClock), shutdown).await
}

/// [`run`] with the time of day read from `clock` (tests pass a `clock::ManualClock`).
pub async fn run_with_clock(
    cfg: Config,
    clock: Arc<dyn clock::Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let anchor = std::fs::read(&cfg.root).map_err(|e| {
        AgentError::Config(format!(
            "{}: cannot read the trust anchor (policy.root {}): {e}",
            cfg.path.display(),
            cfg.root.display()
        ))
    })?;
    let transport = sync::transport(&cfg).map_err(|e| AgentError::Config(format!("{}: {e}", cfg.path.display())))?;
    prepare_state_dir(&cfg)?;
    let (state, rules, recovered) = TrustedState::open_or_recover(&cfg.state_dir.join("trust"), &anchor, &cfg.tags)
        .map_err(|e| AgentError::Runtime(format!("loading trusted state: {e}")))?;
    if let Some(note) = &recovered {
        tracing::error!("{note}");
        let _ = STATE_RECOVERY.set(note.clone());
    }
    let rules = rules.unwrap_or_default();
    tracing::info!(policy = ?state.policy().map(|p| p.version), rules = rules.len(), "enforcing the persisted policy before any network access");
    let store = act::quarantine::QuarantineStore::open(&cfg.state_dir.join("quarantine"))
        .map_err(|e| AgentError::Runtime(e.to_string()))?;
    let log = audit::AuditLog::open_with(&cfg.state_dir.join("audit.log"), cfg.audit_rotation)
        .map_err(|e| AgentError::Runtime(format!("audit log: {e}")))?;
    let audit_seq = log.seq();
    let mut evidence = evidence::Evidence::new(log);
    // The reporter's sink is added first so it sees every event the audit log records.
    let reporter = match &cfg.report_url {
        None => None,
        Some(url) => {
            let policy = state.policy().map(|p| (p.version, p.sha256.clone()));
            let (r, sink) = report::Reporter::new(
                &cfg,
                url,
                clock.clone(),
                state.root().fleet.clone(),
                policy,
                audit_seq,
                &store.list(),
            )
            .map_err(|e| AgentError::Config(format!("{}: [report]: {e}", cfg.path.display())))?;
            evidence.add_sink(Box::new(sink));
            Some(r)
        }
    };
    let report_status = reporter.as_ref().map(|r| r.shared.clone());
    for fixed in store.recover() {
        tracing::warn!(%fixed, "quarantine recovery");
        evidence.emit(evidence::AuditEvent::Recovery { fixed });
    }
    if let Some(note) = &recovered {
        evidence.emit(evidence::AuditEvent::StateRecovery { note: note.clone() });
    }
    evidence.emit(evidence::AuditEvent::Start { pid: std::process::id(), policy: state.policy().map(|p| p.version) });

    match act::quarantine::hardlinks_protected() {
        Some(true) => {}
        Some(false) => tracing::error!(
            "fs.protected_hardlinks is 0: users may hard link files they do not own into watched folders; the agent refuses files with more than one link, and status reports the device degraded"
        ),
        None => tracing::warn!("cannot read /proc/sys/fs/protected_hardlinks"),
    }

    // The rule set in force, published: the core loop sends each new one; any task that must
    // decide on its own thread (an exec gate) holds a `rules.subscribe()` receiver.
    let (rules, _published): (watch::Sender<Arc<RuleSet>>, _) = watch::channel(Arc::new(rules));
    let (fs_tx, fs_rx) = mpsc::unbounded_channel();
    let (sync_cmd_tx, sync_cmd_rx) = mpsc::channel(1);
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let (call_tx, call_rx) = mpsc::channel(64);
    let status = sync::policy_status(&cfg, &state, &proto::PolicyStatus::default(), clock.now());
    let listener = control::bind(&cfg.socket)
        .map_err(|e| AgentError::Runtime(format!("control socket {}: {e}", cfg.socket.display())))?;
    // The exec gate decides on its own threads with a subscribed receiver; its evidence comes
    // back to the core loop through `exec_ev_rx`. A gate that cannot start (no fanotify, no
    // CAP_SYS_ADMIN) is an error: an admin who enabled it must not believe execs are gated.
    let (exec_gate, exec_relay, exec_ev_rx) = if cfg.exec.enabled {
        let (tx, rx) = mpsc::channel(1024);
        let (gate, relay, protected) = exec_wire::start(&cfg, &rules, tx)
            .map_err(|e| AgentError::Runtime(format!("[exec] enabled but the exec gate cannot start: {e}")))?;
        (Some((gate, protected)), Some(relay), Some(rx))
    } else {
        (None, None, None)
    };
    let mut enforcer =
        enforce::Enforcer::new(cfg.clone(), clock.clone(), rules, status, store, evidence, fs_tx, sync_cmd_tx)
            .map_err(AgentError::Runtime)?;
    if let Some((gate, protected)) = exec_gate {
        enforcer.exec_gate = Some(gate);
        enforcer.exec_protected = Some(protected);
    }
    enforcer.reports = report_status;
    let reporter = reporter.map(|r| tokio::spawn(r.run()));
    let control = tokio::spawn(control::serve(listener, call_tx));
    let syncer = tokio::spawn(sync::run(cfg.clone(), clock, state, transport, sync_cmd_rx, report_tx));
    let inputs = daemon::Inputs { fs: fs_rx, sync: report_rx, control: call_rx, evidence: exec_ev_rx };
    daemon::run(enforcer, inputs, shutdown).await;
    if let Some(r) = exec_relay {
        r.abort();
    }
    control.abort();
    syncer.abort();
    if let Some(r) = reporter {
        r.abort();
    }
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}
