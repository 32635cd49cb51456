//! The fleet store's upkeep, off every request's path: reading the rule ids of the signed
//! policies the server's repository holds (so the admin view lists every rule of a policy a
//! device applies, matched or not), and event retention.
//!
//! Owns: which policy files are believed (only a content-addressed `policy/<sha256>.json` whose
//! envelope a threshold of the policy keys of the repository's verified root chain signed, for
//! the chain's fleet; only verified bytes reach a parser) and when events are deleted.
//! Never writes to the repository.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use embargo_policy::dsse::Envelope;
use embargo_policy::metadata::{RoleName, POLICY_TYPE};
use embargo_policy::trust::sha256_hex;

use crate::store::{PolicyRules, Retention, Store};

/// How often the repository's policy directory is looked at for new files.
pub const POLICY_SCAN_EVERY: Duration = Duration::from_secs(30);

/// Runs forever: a policy scan every [`POLICY_SCAN_EVERY`], a prune every `retention.every`.
pub async fn run(repo: PathBuf, store: Store, retention: Retention) {
    let mut known: HashSet<String> = HashSet::new();
    let mut rejected: HashSet<String> = HashSet::new();
    let tick = retention.every.min(POLICY_SCAN_EVERY).max(Duration::from_millis(100));
    let (mut next_scan, mut next_prune) = (tokio::time::Instant::now(), tokio::time::Instant::now());
    loop {
        let now = tokio::time::Instant::now();
        if now >= next_scan {
            next_scan = now + POLICY_SCAN_EVERY;
            if let Err(e) = sync_policies(&repo, &store, &mut known, &mut rejected).await {
                tracing::warn!(repo = %repo.display(), error = %e, "reading the repository's policies");
            }
        }
        if now < next_prune {
            tokio::time::sleep(tick).await;
            continue;
        }
        next_prune = now + retention.every;
        match store.prune_events(crate::web::now_secs(), &retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deleted = n,
                max_age_secs = retention.max_age.as_secs(),
                max_per_device = retention.max_per_device,
                "event retention: old events deleted"
            ),
            Err(e) => tracing::warn!(error = %e, "event retention"),
        }
        tokio::time::sleep(tick).await;
    }
}

/// Stores the rule ids of every verified policy in `repo/policy/` not stored yet. `known` and
/// `rejected` remember file names across scans so each file is read and verified once.
pub async fn sync_policies(
    repo: &Path,
    store: &Store,
    known: &mut HashSet<String>,
    rejected: &mut HashSet<String>,
) -> Result<usize, String> {
    if known.is_empty() {
        *known = store.policy_hashes().await.map_err(|e| e.to_string())?;
    }
    let dir = repo.join("policy");
    let names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(d) => d
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok()?.strip_suffix(".json").map(str::to_owned))
            .filter(|n| !known.contains(n) && !rejected.contains(n))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    if names.is_empty() {
        return Ok(0);
    }
    let (repo2, names2) = (repo.to_path_buf(), names.clone());
    // Reading and verifying a policy of up to 64 MiB is blocking work.
    let read = tokio::task::spawn_blocking(move || read_verified(&repo2, &names2))
        .await
        .map_err(|e| format!("reading policies: {e}"))??;
    let mut added = 0;
    for (name, outcome) in read {
        match outcome {
            Ok(p) => {
                store.add_policy(&p, crate::web::now_secs()).await.map_err(|e| e.to_string())?;
                tracing::info!(version = p.version, sha256 = %p.sha256, rules = p.rules.len(), "policy rule list stored");
                known.insert(name);
                added += 1;
            }
            Err(why) => {
                tracing::warn!(file = %dir.join(format!("{name}.json")).display(), %why, "policy file not believed; ignored");
                rejected.insert(name);
            }
        }
    }
    Ok(added)
}

/// Each named policy file, verified under the repository's verified root chain: its rule ids,
/// or why it is not believed.
#[allow(clippy::type_complexity)]
fn read_verified(repo: &Path, names: &[String]) -> Result<Vec<(String, Result<PolicyRules, String>)>, String> {
    let (root, _) = embargo_policy::repo::verified_root(repo, None).map_err(|e| e.to_string())?;
    let (keys, threshold) = root.role_keys(RoleName::Policy);
    Ok(names
        .iter()
        .map(|name| {
            let path = repo.join("policy").join(format!("{name}.json"));
            let outcome = (|| {
                let bytes = embargo_policy::fsutil::read_capped(&path, embargo_policy::limits::POLICY_BYTES)
                    .map_err(|e| e.to_string())?;
                // Content-addressed: a file whose name is not its hash is not a published policy.
                let sha256 = sha256_hex(&bytes);
                if &sha256 != name {
                    return Err(format!("its sha256 is {sha256}, not its name"));
                }
                let env = Envelope::decode_owned(bytes).map_err(|e| e.to_string())?;
                if env.payload_type() != POLICY_TYPE {
                    return Err(format!("payload type {:?} is not a policy", env.payload_type()));
                }
                env.verify(&keys, threshold).map_err(|e| format!("signatures: {e}"))?;
                // Only the ids are kept (a policy may hold 200,000 rules); the rest of each rule
                // is skipped by the parser.
                #[derive(serde::Deserialize)]
                struct Ids {
                    fleet: String,
                    version: u64,
                    rules: Vec<Id>,
                }
                #[derive(serde::Deserialize)]
                struct Id {
                    id: String,
                }
                let ids: Ids = serde_json::from_slice(env.payload()).map_err(|e| format!("payload: {e}"))?;
                if ids.fleet != root.root.fleet {
                    return Err(format!("fleet {:?} is not the repository's {:?}", ids.fleet, root.root.fleet));
                }
                Ok(PolicyRules {
                    sha256,
                    fleet: ids.fleet,
                    version: ids.version,
                    rules: ids.rules.into_iter().map(|r| r.id).collect(),
                })
            })();
            (name.clone(), outcome)
        })
        .collect())
}
