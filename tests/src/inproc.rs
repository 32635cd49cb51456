//! The agent inside the test process: `embargo_agent::run_with_clock(config, clock, shutdown)` on
//! its own runtime thread — the same `run` that `embargod` calls — with a `ManualClock` the test
//! advances instead of sleeping. The device's socket, state and folders are the ones the
//! binary would use, so `Device::ctl` and friends work unchanged.

use std::sync::Arc;
use std::time::Duration;

use embargo_agent::clock::ManualClock;

use crate::{eventually, Device};

/// A running in-process agent; dropping it shuts the agent down and waits for it.
pub struct InProcess {
    pub clock: Arc<ManualClock>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Device {
    /// Stops the `embargod` process and runs the agent in this process instead, on the same
    /// config, with a manual clock starting now. Returns once it enforces a verified policy.
    pub fn run_in_process(&mut self) -> InProcess {
        self.stop_agent();
        let cfg = embargo_agent::Config::load(&self.config).expect("the device's config loads");
        let clock = Arc::new(ManualClock::new());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let agent_clock: Arc<dyn embargo_agent::clock::Clock> = clock.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(embargo_agent::run_with_clock(cfg, agent_clock, async {
                let _ = rx.await;
            }))
            .map_err(|e| e.to_string())
        });
        let agent = InProcess { clock, shutdown: Some(tx), thread: Some(thread) };
        eventually("the in-process agent to enforce a verified policy", Duration::from_secs(20), || {
            self.status().filter(|s| {
                s["sources"].as_array().is_some_and(|a| !a.is_empty()) && s["policy"]["policy_version"].is_u64()
            })
        });
        agent
    }
}
