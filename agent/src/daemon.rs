//! The core loop. One closed [`Event`] enum wraps each producer's own message type — filesystem
//! events from the watcher, `sync::Report`s, `control::Call`s — and one task owns all state
//! (`enforce::Enforcer`), so there is one place that decides and acts. Producers never import
//! this module.
//!
//! Architecture invariants:
//! - The watcher only produces hints; it never moves files.
//! - The persisted, verified policy is enforced before the first network request.
//! - Filesystem events are drained in bursts: every event queued when the loop wakes is handled
//!   in one turn, hints deduplicated, and any number of overflows costs one rescan.

use std::time::Instant;

use tokio::sync::mpsc;

use crate::control::Call;
use crate::enforce::Enforcer;
use crate::source::Hint;

/// Everything that can make the daemon do something.
pub enum Event {
    /// A burst of filesystem events (at least one).
    Fs(Vec<notify::Result<notify::Event>>),
    Sync(Box<crate::sync::Report>),
    Control(Call),
    /// A package read or removal done on the package worker (`worker`), off this loop.
    Packages(crate::source::packages::Done),
    /// Evidence from the exec gate, and the running-process scans (`exec_wire`).
    Evidence(crate::exec_wire::ExecInput),
}

/// The receiving ends of every producer.
pub struct Inputs {
    pub fs: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    pub sync: mpsc::UnboundedReceiver<Box<crate::sync::Report>>,
    pub control: mpsc::Receiver<Call>,
    /// Audit events and process scans from the exec gate's relay task (`None` when `[exec]` is
    /// off).
    pub evidence: Option<mpsc::Receiver<crate::exec_wire::ExecInput>>,
}

/// Most filesystem events handled in one loop turn (the rest wait for the next turn, so a flood
/// cannot keep control requests waiting for long).
const FS_BURST: usize = 4096;

/// How long the core loop must be quiet before it unmaps the code pages it touched.
const TRIM_AFTER_QUIET: std::time::Duration = std::time::Duration::from_secs(1);

/// The hints of one burst of filesystem events, deduplicated in order; a watch error or an
/// overflow anywhere in the burst makes it one rescan of everything.
fn coalesce(state: &mut Enforcer, events: Vec<notify::Result<notify::Event>>) -> Vec<Hint> {
    let mut hints: Vec<Hint> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for res in events {
        let found = match res {
            Ok(ev) => {
                tracing::debug!(kind = ?ev.kind, paths = ?ev.paths, "fs event");
                // A write makes what is known of the file (its hash above all) stale at once,
                // before any hint is acted on.
                state.forget_written(&ev);
                state.hints_of(&ev)
            }
            Err(e) => {
                tracing::warn!(error = %e, "watch error: rescanning everything");
                vec![Hint::RefreshRoots, Hint::RescanAll]
            }
        };
        for h in found {
            if seen.insert(h.clone()) {
                hints.push(h);
            }
        }
    }
    hints
}

/// Runs until every producer is gone or `shutdown` completes. There is no periodic timer here:
/// the sync task's timer is the only periodic wake-up, and each sync ends with a reconcile. The
/// one-shot timers are the package-lock retry and the idle trim after a burst of activity.
pub async fn run(mut state: Enforcer, mut inputs: Inputs, shutdown: impl std::future::Future<Output = ()>) {
    state.refresh_roots();
    // READY: the persisted policy is loaded and enforced, the socket is bound, the watches
    // are in place. (A no-op outside systemd.)
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    // The watchdog is fed from this loop, so a stuck loop stops the pings and systemd
    // restarts us. Only under systemd with WatchdogSec=; otherwise there is no timer at all.
    let watchdog = sd_notify::watchdog_enabled();
    let mut ping = watchdog.map(|d| tokio::time::interval(d / 2));
    // The idle trim: one quiet second after start-up or after the last event, the code
    // pages this burst touched are unmapped (see `sys`). One wake-up per burst of activity;
    // none while idle.
    let mut trim_at = Some(tokio::time::Instant::now() + TRIM_AFTER_QUIET);
    tokio::pin!(shutdown);
    let (mut sync_open, mut control_open) = (true, true);
    // Hashes come back from the pool (`hashpool`); the loop never reads a file whole.
    let mut hashed = state.take_hash_results();
    // Package reads and removals come back from their worker thread.
    let mut packages_done = state.take_package_results();
    loop {
        let ev = tokio::select! {
            // In this order: queued filesystem events before the requests that may ask about them.
            biased;
            () = &mut shutdown => break,
            ev = inputs.fs.recv() => match ev {
                Some(first) => {
                    let mut burst = vec![first];
                    while burst.len() < FS_BURST {
                        match inputs.fs.try_recv() {
                            Ok(more) => burst.push(more),
                            Err(_) => break,
                        }
                    }
                    Event::Fs(burst)
                }
                None => break,
            },
            done = async { hashed.as_mut().expect("guarded").recv().await }, if hashed.is_some() => match done {
                Some(d) => {
                    state.on_hashed(d);
                    trim_at = Some(tokio::time::Instant::now() + TRIM_AFTER_QUIET);
                    continue;
                }
                None => { hashed = None; continue }
            },
            done = async { packages_done.as_mut().expect("guarded").recv().await }, if packages_done.is_some() => match done {
                Some(d) => Event::Packages(d),
                None => { packages_done = None; continue }
            },
            ev = async { inputs.evidence.as_mut().expect("guarded").recv().await }, if inputs.evidence.is_some() => match ev {
                Some(e) => Event::Evidence(e),
                None => { inputs.evidence = None; continue }
            },
            report = inputs.sync.recv(), if sync_open => match report {
                Some(r) => Event::Sync(r),
                None => { sync_open = false; continue }
            },
            call = inputs.control.recv(), if control_open => match call {
                Some(c) => Event::Control(c),
                None => { control_open = false; continue }
            },
            _ = async { ping.as_mut().expect("guarded").tick().await }, if ping.is_some() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                continue;
            }
            // A scan stopped at its bound continues here, after whatever else is queued.
            () = std::future::ready(()), if state.has_pending_scans() => {
                state.continue_scans();
                trim_at = Some(tokio::time::Instant::now() + TRIM_AFTER_QUIET);
                continue;
            }
            () = tokio::time::sleep_until(state.retry_at.unwrap_or_else(tokio::time::Instant::now)), if state.retry_at.is_some() => {
                state.retry_packages();
                trim_at = Some(tokio::time::Instant::now() + TRIM_AFTER_QUIET);
                continue;
            }
            // Only while a root has directories beyond the watch bounds (`fallback`).
            () = tokio::time::sleep_until(state.fallback_at.unwrap_or_else(tokio::time::Instant::now)), if state.fallback_at.is_some() => {
                state.run_fallback();
                trim_at = Some(tokio::time::Instant::now() + TRIM_AFTER_QUIET);
                continue;
            }
            () = tokio::time::sleep_until(trim_at.unwrap_or_else(tokio::time::Instant::now)), if trim_at.is_some() => {
                trim_at = None;
                match crate::sys::release_code_pages() {
                    Ok(bytes) => tracing::debug!(kib = bytes / 1024, "idle trim: code pages unmapped"),
                    Err(e) => tracing::debug!("idle trim skipped: {e}"),
                }
                continue;
            }
        };
        let since = Instant::now();
        match ev {
            Event::Fs(burst) => {
                state.evidence.counters.events += burst.len() as u64;
                let hints = coalesce(&mut state, burst);
                state.on_hints(hints, since);
            }
            Event::Sync(report) => state.on_sync(*report),
            Event::Control(Call { request, uid, reply }) => state.on_control(request, uid, reply),
            Event::Packages(done) => state.on_packages(done),
            Event::Evidence(e) => state.on_exec(e),
        }
        trim_at = Some(tokio::time::Instant::now() + TRIM_AFTER_QUIET);
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down");
}
