//! embargo-agent: the on-device daemon (`embargod`) and its control CLI (`embargoctl`).
//!
//! Layout:
//! - `config`: the TOML config, validated once (errors name file:line; exit 64).
//! - `config_doc`: the documentation of every config key (agent.toml(5) is generated from it).
//! - `daemon`: the core loop and all enforcement state (one closed `Event` enum).
//! - `sync`: the task that keeps the signed policy current (owns `TrustedState`).
//! - `identify`: what an opened file is (AppImage, desktop entry, plain file).
//! - `safefs`: race-safe file operations beneath watched roots (openat2, renameat2).
//! - `quarantine`: the reversible quarantine store with manifests and crash recovery.
//! - `audit`: the hash-chained audit log.
//! - `control`: the Unix-socket server (peer credentials decide what a caller may do).
//! - `proto`: the control protocol types (the API boundary).
//! - `demo`: the one-command demo device.
//! - `sys`: the only `unsafe` (madvise for the idle trim), each block with its SAFETY argument.
#![deny(unsafe_code)]

pub mod audit;
pub mod config;
pub mod config_doc;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod dpkg;
pub mod flatpak;
pub mod identify;
pub mod packages;
pub mod proto;
pub mod quarantine;
pub mod rpm;
pub mod safefs;
pub mod snap;
pub mod squashfs;
pub mod sync;
#[allow(unsafe_code)]
pub mod sys;

use std::future::Future;

use embargo_policy::trust::TrustedState;
use tokio::sync::mpsc;

pub use config::Config;

/// Why the agent could not run. `Config` errors exit 64 (do not restart), others exit 1.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
}

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
    let anchor = std::fs::read(&cfg.root).map_err(|e| {
        AgentError::Config(format!(
            "{}: cannot read the trust anchor (policy.root {}): {e}",
            cfg.path.display(),
            cfg.root.display()
        ))
    })?;
    let transport = sync::transport(&cfg).map_err(|e| AgentError::Config(format!("{}: {e}", cfg.path.display())))?;
    prepare_state_dir(&cfg)?;
    let (state, rules) = TrustedState::open(&cfg.state_dir.join("trust"), &anchor, &cfg.tags)
        .map_err(|e| AgentError::Runtime(format!("loading trusted state: {e}")))?;
    let rules = rules.unwrap_or_default();
    tracing::info!(policy = ?state.policy().map(|p| p.version), rules = rules.len(), "enforcing the persisted policy before any network access");
    let store = quarantine::QuarantineStore::open(&cfg.state_dir.join("quarantine"))
        .map_err(|e| AgentError::Runtime(e.to_string()))?;
    let mut audit = audit::AuditLog::open(&cfg.state_dir.join("audit.log"))
        .map_err(|e| AgentError::Runtime(format!("audit log: {e}")))?;
    for fixed in store.recover() {
        tracing::warn!(%fixed, "quarantine recovery");
        let _ = audit.append(serde_json::json!({"type": "recovery", "fixed": fixed}));
    }
    let _ = audit.append(
        serde_json::json!({"type": "start", "pid": std::process::id(), "policy": state.policy().map(|p| p.version)}),
    );

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (sync_tx, sync_rx) = mpsc::channel(1);
    let status = sync::policy_status(&cfg, &state, &proto::PolicyStatus::default());
    let listener = control::bind(&cfg.socket)
        .map_err(|e| AgentError::Runtime(format!("control socket {}: {e}", cfg.socket.display())))?;
    let daemon = daemon::Daemon::new(cfg.clone(), rules, status, store, audit, events_tx.clone(), sync_tx)
        .map_err(AgentError::Runtime)?;
    let control = tokio::spawn(control::serve(listener, events_tx.clone()));
    let syncer = tokio::spawn(sync::run(cfg.clone(), state, transport, sync_rx, events_tx));
    daemon.run(events_rx, shutdown).await;
    control.abort();
    syncer.abort();
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}
