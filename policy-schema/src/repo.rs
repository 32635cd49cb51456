//! Repository operations of the admin tool: create root v1, rotate the root, publish a signed
//! policy, re-sign the timestamp. A repository is a directory of static files:
//! `root/<N>.json`, `timestamp.json`, `policy/<sha256>.json`.
//!
//! These run on the admin's machine (or, for `timestamp`, on the server); they never verify a
//! client's view — `trust` does that, and `embargo-policy verify` runs it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::authoring::PolicySource;
use crate::dsse::{self, Envelope};
use crate::fsutil;
use crate::keys::{JsonKey, PublicKey, SigningKey};
use crate::metadata::{
    limits, Policy, PolicyPointer, RoleKeys, Roles, Root, StrictMap, Time, Timestamp, POLICY_TYPE, ROOT_TYPE,
    TIMESTAMP_TYPE,
};
use crate::trust::sha256_hex;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io { path: path.display().to_string(), source }
}

/// Keys and threshold for one role, as given on the command line.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    pub keys: Vec<PublicKey>,
    pub threshold: u32,
}

fn role_keys(spec: &RoleSpec, all: &mut StrictMap<JsonKey>) -> RoleKeys {
    let mut keyids = Vec::new();
    for k in &spec.keys {
        all.0.insert(k.keyid().to_owned(), k.to_json_key());
        if !keyids.iter().any(|id| id == k.keyid()) {
            keyids.push(k.keyid().to_owned());
        }
    }
    RoleKeys { keyids, threshold: spec.threshold }
}

/// Reads a key file as a public key: a `.pub` file (`{"keytype","public"}`) or a private key.
pub fn read_public(path: &Path) -> Result<PublicKey, RepoError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    if let Ok(jk) = serde_json::from_slice::<JsonKey>(&bytes) {
        return jk.to_public().map_err(|e| RepoError::Invalid(format!("{}: {e}", path.display())));
    }
    SigningKey::read(path).map(|k| k.public().clone()).map_err(|e| RepoError::Invalid(e.to_string()))
}

/// Writes a new private key to `path` (0600) and its public half to `path.pub`.
pub fn keygen(path: &Path) -> Result<PublicKey, RepoError> {
    let key = SigningKey::generate();
    key.write_new(path).map_err(|e| RepoError::Invalid(e.to_string()))?;
    let pub_path = PathBuf::from(format!("{}.pub", path.display()));
    let mut text = serde_json::to_vec_pretty(&key.public().to_json_key()).expect("key serializes");
    text.push(b'\n');
    std::fs::write(&pub_path, text).map_err(io(&pub_path))?;
    Ok(key.public().clone())
}

fn write_doc(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), RepoError> {
    fsutil::ensure_dir(dir, 0o755).map_err(io(dir))?;
    fsutil::write_atomic(dir, name, bytes, 0o644).map_err(io(dir))
}

/// Creates root v1 in `repo`, signed by every root key given. Returns its envelope bytes.
pub fn init(
    repo: &Path,
    fleet: &str,
    root_keys: &[&SigningKey],
    root_threshold: u32,
    timestamp: &RoleSpec,
    policy: &RoleSpec,
    expires: Duration,
    now: Time,
) -> Result<Vec<u8>, RepoError> {
    if repo.join("root").join("1.json").exists() {
        return Err(RepoError::Invalid(format!("{} already has root/1.json", repo.display())));
    }
    let root_spec =
        RoleSpec { keys: root_keys.iter().map(|k| k.public().clone()).collect(), threshold: root_threshold };
    let root = build_root(fleet, 1, now.plus(expires), &root_spec, timestamp, policy)?;
    let bytes = dsse::sign(ROOT_TYPE, &root.to_bytes(), root_keys);
    write_doc(&repo.join("root"), "1.json", &bytes)?;
    Ok(bytes)
}

fn build_root(
    fleet: &str,
    version: u64,
    expires: Time,
    root: &RoleSpec,
    ts: &RoleSpec,
    policy: &RoleSpec,
) -> Result<Root, RepoError> {
    let mut keys = StrictMap(std::collections::BTreeMap::new());
    let roles = Roles {
        root: role_keys(root, &mut keys),
        timestamp: role_keys(ts, &mut keys),
        policy: role_keys(policy, &mut keys),
    };
    let root = Root { fleet: fleet.to_owned(), version, expires, keys, roles };
    // Refuse to publish what a client would refuse to trust.
    root.clone().check().map_err(|e| RepoError::Invalid(e.to_string()))?;
    Ok(root)
}

/// The newest root in the repository: its payload and envelope bytes.
pub fn current_root(repo: &Path) -> Result<(Root, Vec<u8>), RepoError> {
    let dir = repo.join("root");
    let mut best: Option<u64> = None;
    for e in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_suffix(".json").and_then(|n| n.parse::<u64>().ok()) {
            best = best.max(Some(n));
        }
    }
    let n = best.ok_or_else(|| {
        RepoError::Invalid(format!("{} has no root/<N>.json; run `embargo-policy init`", repo.display()))
    })?;
    let path = dir.join(format!("{n}.json"));
    let bytes = fsutil::read_capped(&path, limits::ROOT_BYTES).map_err(io(&path))?;
    let env = Envelope::decode(&bytes).map_err(|e| RepoError::Invalid(format!("{}: {e}", path.display())))?;
    let root: Root =
        serde_json::from_slice(env.payload()).map_err(|e| RepoError::Invalid(format!("{}: {e}", path.display())))?;
    Ok((root, bytes))
}

/// Publishes root N+1. It is signed by `old_keys` (a threshold of root N's keys) and by
/// `new_root_keys` (a threshold of its own). Roles not given keep their keys.
pub fn rotate_root(
    repo: &Path,
    old_keys: &[&SigningKey],
    new_root_keys: &[&SigningKey],
    new_root_threshold: u32,
    timestamp: Option<&RoleSpec>,
    policy: Option<&RoleSpec>,
    expires: Duration,
    now: Time,
) -> Result<u64, RepoError> {
    let (old, _) = current_root(repo)?;
    let verified_old = old.clone().check().map_err(|e| RepoError::Invalid(e.to_string()))?;
    let keep = |role: crate::metadata::RoleName| {
        let (keys, threshold) = verified_old.role_keys(role);
        RoleSpec { keys: keys.into_iter().cloned().collect(), threshold: threshold as u32 }
    };
    let ts = timestamp.cloned().unwrap_or_else(|| keep(crate::metadata::RoleName::Timestamp));
    let pol = policy.cloned().unwrap_or_else(|| keep(crate::metadata::RoleName::Policy));
    let root_spec =
        RoleSpec { keys: new_root_keys.iter().map(|k| k.public().clone()).collect(), threshold: new_root_threshold };
    let version = old.version + 1;
    let root = build_root(&old.fleet, version, now.plus(expires), &root_spec, &ts, &pol)?;
    let mut signers: Vec<&SigningKey> = old_keys.to_vec();
    for k in new_root_keys {
        if !signers.iter().any(|s| s.public() == k.public()) {
            signers.push(k);
        }
    }
    let bytes = dsse::sign(ROOT_TYPE, &root.to_bytes(), &signers);
    write_doc(&repo.join("root"), &format!("{version}.json"), &bytes)?;
    Ok(version)
}

/// Reads the payload of every policy in the repository, unverified (the admin's own files),
/// and returns the newest: (version, sha256, length).
pub fn newest_policy(repo: &Path) -> Result<Option<(u64, String, u64)>, RepoError> {
    let dir = repo.join("policy");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&dir)(e)),
    };
    let mut best: Option<(u64, String, u64)> = None;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let bytes = fsutil::read_capped(&path, limits::POLICY_BYTES).map_err(io(&path))?;
        let Ok(env) = Envelope::decode(&bytes) else {
            continue;
        };
        #[derive(serde::Deserialize)]
        struct VersionOnly {
            version: u64,
        }
        let Ok(v) = serde_json::from_slice::<VersionOnly>(env.payload()) else {
            continue;
        };
        if best.as_ref().is_none_or(|(bv, _, _)| v.version > *bv) {
            best = Some((v.version, sha256_hex(&bytes), bytes.len() as u64));
        }
    }
    Ok(best)
}

/// What `sign` published.
#[derive(Debug, Clone)]
pub struct Published {
    pub version: u64,
    pub sha256: String,
    pub length: u64,
    pub path: PathBuf,
}

/// Signs a policy source and publishes it as `policy/<sha256>.json`.
pub fn sign_policy(repo: &Path, source: PolicySource, keys: &[&SigningKey], now: Time) -> Result<Published, RepoError> {
    let (root, _) = current_root(repo)?;
    let version = match source.version {
        Some(v) => v,
        None => newest_policy(repo)?.map_or(1, |(v, _, _)| v + 1),
    };
    let policy =
        Policy { fleet: root.fleet, version, issued: now, expires: now.plus(source.expires), rules: source.rules };
    policy.check().map_err(|e| RepoError::Invalid(e.to_string()))?;
    let bytes = dsse::sign(POLICY_TYPE, &policy.to_bytes(), keys);
    if bytes.len() as u64 > limits::POLICY_BYTES {
        return Err(RepoError::Invalid(format!(
            "signed policy is {} bytes, over the {} cap",
            bytes.len(),
            limits::POLICY_BYTES
        )));
    }
    let sha256 = sha256_hex(&bytes);
    let dir = repo.join("policy");
    write_doc(&dir, &format!("{sha256}.json"), &bytes)?;
    Ok(Published {
        version,
        sha256: sha256.clone(),
        length: bytes.len() as u64,
        path: dir.join(format!("{sha256}.json")),
    })
}

/// Re-signs `timestamp.json` to point at `policy` (default: the newest policy). The version is
/// max(previous + 1, now in Unix seconds), so independent signers (cron, the server) never reuse one.
pub fn timestamp(
    repo: &Path,
    keys: &[&SigningKey],
    policy: Option<(u64, String, u64)>,
    expires: Duration,
    now: Time,
) -> Result<Timestamp, RepoError> {
    let (root, _) = current_root(repo)?;
    let (pv, sha, len) = match policy {
        Some(p) => p,
        None => newest_policy(repo)?
            .ok_or_else(|| RepoError::Invalid("no policy to point at; run `embargo-policy sign` first".into()))?,
    };
    let path = repo.join("timestamp.json");
    let previous = match fsutil::read_capped(&path, limits::TIMESTAMP_BYTES) {
        Ok(bytes) => Envelope::decode(&bytes)
            .ok()
            .and_then(|e| serde_json::from_slice::<Timestamp>(e.payload()).ok())
            .map_or(0, |t| t.version),
        Err(_) => 0,
    };
    let ts = Timestamp {
        fleet: root.fleet,
        version: (previous + 1).max(now.0),
        expires: now.plus(expires),
        policy: PolicyPointer { version: pv, sha256: sha, length: len },
    };
    let bytes = dsse::sign(TIMESTAMP_TYPE, &ts.to_bytes(), keys);
    write_doc(repo, "timestamp.json", &bytes)?;
    Ok(ts)
}
