//! The sync task: owns the trusted state and the transport, polls the repository at the
//! configured interval with jitter (backing off with jitter on failure, honouring a bounded
//! Retry-After), and reports each result to the core loop. It never touches apps.

use std::time::Duration;

use embargo_policy::matcher::RuleSet;
use embargo_policy::metadata::Time;
use embargo_policy::transport::{Fetch, FetchError, FileTransport};
use embargo_policy::trust::{TrustedState, UpdateError, UpdateOutcome};
use rand::Rng as _;
use tokio::sync::mpsc;

use crate::config::{Config, Repository};
use crate::proto::{PolicyStatus, SyncError};

/// What the core loop asks of the sync task.
pub enum Command {
    Now,
}

/// What the sync task tells the core loop after each attempt.
pub struct Report {
    pub status: PolicyStatus,
    pub new_rules: Option<Box<RuleSet>>,
    /// False for the initial report made from persisted state.
    pub attempted: bool,
}

pub enum Transport {
    File(FileTransport),
    Https(embargo_policy::https::HttpsTransport),
}

impl Fetch for Transport {
    async fn fetch(&self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>, FetchError> {
        match self {
            Transport::File(t) => t.fetch(path, max_len).await,
            Transport::Https(t) => t.fetch(path, max_len).await,
        }
    }
}

/// Builds the transport the config names. Errors are configuration errors (exit 64).
pub fn transport(cfg: &Config) -> Result<Transport, String> {
    match &cfg.repository {
        Repository::Dir(d) => Ok(Transport::File(FileTransport::new(d))),
        Repository::Https(url) => {
            let mut opts = embargo_policy::https::HttpsOptions::new(url.clone());
            if let Some(ca) = &cfg.ca {
                opts.ca_pem = Some(std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?);
            }
            if let Some((c, k)) = &cfg.client_identity {
                let cert = std::fs::read(c).map_err(|e| format!("{}: {e}", c.display()))?;
                let key = std::fs::read(k).map_err(|e| format!("{}: {e}", k.display()))?;
                opts.client_identity = Some((cert, key));
            }
            embargo_policy::https::HttpsTransport::new(opts).map(Transport::Https)
        }
    }
}

/// What status shows about the trusted state.
pub fn policy_status(cfg: &Config, state: &TrustedState, previous: &PolicyStatus, now: Time) -> PolicyStatus {
    let p = state.policy();
    let t = state.timestamp();
    PolicyStatus {
        repository: cfg.repository.to_string(),
        fleet: state.root().fleet.clone(),
        root_version: state.root().version,
        policy_version: p.map(|p| p.version),
        issued: p.map(|p| p.issued.to_string()),
        expires: p.map(|p| p.expires.to_string()),
        timestamp_version: t.map(|t| t.version),
        timestamp_expires: t.map(|t| t.expires.to_string()),
        rule_count: p.map_or(0, |p| p.rule_count),
        sha256: p.map(|p| p.sha256.clone()),
        last_success: previous.last_success.clone(),
        last_attempt: previous.last_attempt.clone(),
        last_error: previous.last_error.clone(),
        stale: state.staleness(now),
    }
}

fn jitter(d: Duration) -> Duration {
    // ±20% around the interval, so a fleet does not poll in lockstep.
    let f = rand::thread_rng().gen_range(0.8..1.2);
    d.mul_f64(f)
}

fn backoff(failures: u32, cap: Duration) -> Duration {
    // Full jitter: uniform in [1s, min(cap, 5s * 2^n)].
    let ceiling = Duration::from_secs(5).saturating_mul(1 << failures.min(16)).min(cap).max(Duration::from_secs(1));
    Duration::from_secs_f64(rand::thread_rng().gen_range(1.0..=ceiling.as_secs_f64().max(1.0)))
}

pub async fn run(
    cfg: Config,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
    mut state: TrustedState,
    transport: Transport,
    mut commands: mpsc::Receiver<Command>,
    reports: mpsc::UnboundedSender<Box<Report>>,
) {
    let mut status = policy_status(&cfg, &state, &PolicyStatus::default(), clock.now());
    let mut failures = 0u32;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            cmd = commands.recv() => if cmd.is_none() { return },
        }
        let now = clock.now();
        status.last_attempt = Some(now.to_string());
        let result = state.update(&transport, now, &cfg.tags).await;
        let mut new_rules = None;
        let mut retry_after = None;
        match result {
            Ok(outcome) => {
                failures = 0;
                status.last_success = Some(now.to_string());
                status.last_error = None;
                if let UpdateOutcome::NewPolicy(rules) = outcome {
                    new_rules = Some(rules);
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(kind = e.kind(), error = %e, "policy sync failed; enforcing the last verified policy");
                if let UpdateError::Fetch { source: FetchError::RetryAfter { seconds, .. }, .. } = &e {
                    retry_after = Some(Duration::from_secs((*seconds).clamp(1, 3600)));
                }
                status.last_error = Some(SyncError { kind: e.kind().into(), message: e.to_string() });
            }
        }
        status = policy_status(&cfg, &state, &status, now);
        wait = match (failures, retry_after) {
            (_, Some(r)) => r,
            (0, None) => jitter(cfg.interval),
            (n, None) => backoff(n, cfg.interval),
        };
        if reports.send(Box::new(Report { status: status.clone(), new_rules, attempted: true })).is_err() {
            return;
        }
    }
}
