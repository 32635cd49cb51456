//! Repository operations of the admin tool: create root v1, rotate the root, publish a signed
//! policy, re-sign the timestamp. A repository is a directory of static files:
//! `root/<N>.json`, `timestamp.json`, `policy/<sha256>.json`.
//!
//! These run on the admin's machine (or, for `timestamp`, on the server). They trust nothing
//! unsigned in the repository directory (anyone with write access to it — a CI upload path, a
//! shared mount, a CDN origin — could plant files): the root is the verified chain from
//! `root/1.json`, a policy is pointed at only once its envelope verifies under that root's
//! policy role, and the timestamp signer keeps its own state outside the repository (the last
//! version it signed and the root it trusts) instead of reading the unverified `timestamp.json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::authoring::PolicySource;
use crate::dsse::{self, Envelope};
use crate::fsutil;
use crate::keys::{JsonKey, PublicKey, SigningKey};
use crate::metadata::{
    limits, Policy, PolicyPointer, RoleKeys, RoleName, Roles, Root, StrictMap, Time, Timestamp, VerifiedRoot,
    POLICY_TYPE, ROOT_TYPE, TIMESTAMP_TYPE,
};
use crate::trust::sha256_hex;

/// How far past the signer's own clock a timestamp version may go. Versions are
/// `max(last + 1, now)` in Unix seconds, so only more than one signing per second for an hour,
/// or a far-future version signed earlier, gets near this; past it the signer refuses.
pub const TIMESTAMP_VERSION_SLACK: u64 = 3600;

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
    let verified = root.clone().check().map_err(|e| RepoError::Invalid(e.to_string()))?;
    if let Some(problem) = verified.shared_online_key() {
        return Err(RepoError::Invalid(format!(
            "{problem}: the online timestamp key must not hold an offline role (it could then change rules); \
             generate a separate key for each role"
        )));
    }
    Ok(root)
}

/// The newest root of the repository's verified chain: root/1.json verified by its own keys,
/// then each root/N+1.json by root N's keys and its own, until the next file is missing.
/// A file that does not verify is an error naming it (never skipped: a gap would let an
/// older, revoked root stand). With `pin` (version, sha256 of its envelope), the chain must
/// pass through exactly that file: a replaced root/1.json starts a chain that does not.
/// Returns the root, its envelope bytes, and the version/sha256 to pin next time.
pub fn verified_root(repo: &Path, pin: Option<(u64, &str)>) -> Result<(VerifiedRoot, Vec<u8>), RepoError> {
    let dir = repo.join("root");
    let read = |n: u64| -> Result<Option<(PathBuf, Vec<u8>)>, RepoError> {
        let path = dir.join(format!("{n}.json"));
        match fsutil::read_capped(&path, limits::ROOT_BYTES) {
            Ok(bytes) => Ok(Some((path, bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    };
    let check_pin = |n: u64, path: &Path, bytes: &[u8]| match pin {
        Some((v, sha)) if v == n && sha256_hex(bytes) != sha => Err(RepoError::Invalid(format!(
            "{} is not the root v{n} this signer trusted before (sha256 {sha}); refusing a replaced root",
            path.display()
        ))),
        _ => Ok(()),
    };
    let (path, bytes) = read(1)?.ok_or_else(|| {
        RepoError::Invalid(format!("{} has no root/1.json; run `embargo-policy init`", repo.display()))
    })?;
    check_pin(1, &path, &bytes)?;
    let label = path.display().to_string();
    let mut root =
        crate::trust::verify_self_signed_root(&label, &bytes).map_err(|e| RepoError::Invalid(e.to_string()))?;
    let mut current = bytes;
    for _ in 0..limits::MAX_ROOT_ROTATIONS {
        let n = root.root.version + 1;
        let Some((path, bytes)) = read(n)? else { break };
        check_pin(n, &path, &bytes)?;
        root = crate::trust::verify_next_root(&path.display().to_string(), &bytes, &root)
            .map_err(|e| RepoError::Invalid(e.to_string()))?;
        current = bytes;
    }
    if let Some((v, _)) = pin {
        if v > root.root.version {
            return Err(RepoError::Invalid(format!(
                "the repository's verified root chain ends at v{}, but this signer already trusted v{v}",
                root.root.version
            )));
        }
    }
    Ok((root, current))
}

/// The newest root in the repository (of its verified chain): its payload and envelope bytes.
pub fn current_root(repo: &Path) -> Result<(Root, Vec<u8>), RepoError> {
    let (root, bytes) = verified_root(repo, None)?;
    Ok((root.root, bytes))
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
    let (verified_old, _) = verified_root(repo, None)?;
    let old = verified_old.root.clone();
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

/// The newest policy in the repository whose envelope verifies under the repository's verified
/// root (see [`verified_root`]): (version, sha256, length).
pub fn newest_policy(repo: &Path) -> Result<Option<(u64, String, u64)>, RepoError> {
    let (root, _) = verified_root(repo, None)?;
    newest_verified_policy(repo, &root)
}

/// The newest policy in `repo` that a threshold of `root`'s policy keys signed, for `root`'s
/// fleet: (version, sha256, length). Files that do not verify are skipped (planted or stale
/// files are not the admin's), and only verified bytes are parsed, for their version.
pub fn newest_verified_policy(repo: &Path, root: &VerifiedRoot) -> Result<Option<(u64, String, u64)>, RepoError> {
    let dir = repo.join("policy");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&dir)(e)),
    };
    let (keys, threshold) = root.role_keys(RoleName::Policy);
    let mut best: Option<(u64, String, u64)> = None;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let bytes = fsutil::read_capped(&path, limits::POLICY_BYTES).map_err(io(&path))?;
        let (sha256, length) = (sha256_hex(&bytes), bytes.len() as u64);
        // Content-addressed: a file whose name is not its hash is not a published policy.
        if path.file_stem().and_then(|s| s.to_str()) != Some(sha256.as_str()) {
            continue;
        }
        let Ok(env) = Envelope::decode_owned(bytes) else {
            continue;
        };
        if env.payload_type() != POLICY_TYPE || env.verify(&keys, threshold).is_err() {
            continue;
        }
        #[derive(serde::Deserialize)]
        struct Header {
            fleet: String,
            version: u64,
        }
        let Ok(h) = serde_json::from_slice::<Header>(env.payload()) else {
            continue;
        };
        if h.fleet != root.root.fleet {
            continue;
        }
        if best.as_ref().is_none_or(|(bv, _, _)| h.version > *bv) {
            best = Some((h.version, sha256, length));
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
    let (verified, _) = verified_root(repo, None)?;
    let version = match source.version {
        Some(v) => v,
        None => match newest_verified_policy(repo, &verified)? {
            None => 1,
            Some((v, _, _)) => v
                .checked_add(1)
                .ok_or_else(|| RepoError::Invalid(format!("the newest policy has version {v}; no next version")))?,
        },
    };
    let root = verified.root;
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

/// What the timestamp signer remembers between runs, kept outside the repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerState {
    /// The last timestamp version this signer wrote (or saw verified in the repository).
    pub last_version: u64,
    /// The newest root this signer verified, pinned: a later run's chain must pass through it.
    pub root_version: u64,
    pub root_sha256: String,
}

/// Where `timestamp` keeps its state unless told otherwise: beside the repository directory,
/// never inside it (`/srv/repo` → `/srv/repo.timestamp-state.json`), so that write access to
/// the served files is not write access to the signer's memory. The CLI's `--state` and
/// [`timestamp_with_state`] choose another place.
pub fn default_signer_state(repo: &Path) -> Result<PathBuf, RepoError> {
    let abs = std::path::absolute(repo).map_err(io(repo))?;
    let name = abs.file_name().ok_or_else(|| {
        RepoError::Invalid(format!("{}: cannot place the signer state beside it; pass --state", repo.display()))
    })?;
    let parent = abs.parent().unwrap_or(Path::new("/"));
    Ok(parent.join(format!("{}.timestamp-state.json", name.to_string_lossy())))
}

fn read_signer_state(path: &Path) -> Result<SignerState, RepoError> {
    match fsutil::read_capped(path, 64 * 1024) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| RepoError::Invalid(format!("{}: not a timestamp signer state: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SignerState::default()),
        Err(e) => Err(io(path)(e)),
    }
}

/// The version of the repository's `timestamp.json` if it verifies under `root`'s timestamp
/// role and fleet (another signer holding a timestamp key wrote it), else `None`.
fn verified_timestamp_version(repo: &Path, root: &VerifiedRoot) -> Option<u64> {
    let bytes = fsutil::read_capped(&repo.join("timestamp.json"), limits::TIMESTAMP_BYTES).ok()?;
    let env = Envelope::decode(&bytes).ok()?;
    let (keys, threshold) = root.role_keys(RoleName::Timestamp);
    if env.payload_type() != TIMESTAMP_TYPE || env.verify(&keys, threshold).is_err() {
        return None;
    }
    let ts = Timestamp::parse(env.payload()).ok()?;
    (ts.fleet == root.root.fleet).then_some(ts.version)
}

/// Re-signs `timestamp.json` to point at `policy` (default: the newest verified policy), with
/// the signer state in its default place ([`default_signer_state`]). The server's scheduled
/// re-signing calls this.
pub fn timestamp(
    repo: &Path,
    keys: &[&SigningKey],
    policy: Option<(u64, String, u64)>,
    expires: Duration,
    now: Time,
) -> Result<Timestamp, RepoError> {
    timestamp_with_state(repo, &default_signer_state(repo)?, keys, policy, expires, now)
}

/// Re-signs `timestamp.json`. The version is `max(last + 1, now)` in Unix seconds, where `last`
/// is the larger of the signer state's last version and the version of a `timestamp.json`
/// that verifies under the root (so independent signers sharing a key never reuse one); an
/// unsigned or wrongly signed `timestamp.json` is ignored. The version may not pass
/// `now + TIMESTAMP_VERSION_SLACK`. The state is written before the timestamp, so a crash
/// between the two never lets a version be signed twice.
pub fn timestamp_with_state(
    repo: &Path,
    state_path: &Path,
    keys: &[&SigningKey],
    policy: Option<(u64, String, u64)>,
    expires: Duration,
    now: Time,
) -> Result<Timestamp, RepoError> {
    let state = read_signer_state(state_path)?;
    let pin = (state.root_version > 0).then_some((state.root_version, state.root_sha256.as_str()));
    let (root, root_bytes) = verified_root(repo, pin)?;
    let (pv, sha, len) = match policy {
        Some(p) => p,
        None => newest_verified_policy(repo, &root)?.ok_or_else(|| {
            RepoError::Invalid(format!(
                "{}: no policy signed by the root's policy keys to point at; run `embargo-policy sign` first",
                repo.display()
            ))
        })?,
    };
    let last = state.last_version.max(verified_timestamp_version(repo, &root).unwrap_or(0));
    let next = last
        .checked_add(1)
        .ok_or_else(|| RepoError::Invalid(format!("the last timestamp version is {last}; there is no next one")))?;
    let version = next.max(now.0);
    if version > now.0.saturating_add(TIMESTAMP_VERSION_SLACK) {
        return Err(RepoError::Invalid(format!(
            "the next timestamp version would be {version}, more than {TIMESTAMP_VERSION_SLACK} s past this \
             clock ({now} = {}): the last signed version {last} (from {}) is in the future. If this clock is \
             right, a timestamp key signed a far-future version: rotate the timestamp key with the root keys",
            now.0,
            state_path.display()
        )));
    }
    let ts = Timestamp {
        fleet: root.root.fleet.clone(),
        version,
        expires: now.plus(expires),
        policy: PolicyPointer { version: pv, sha256: sha, length: len },
    };
    let new_state =
        SignerState { last_version: version, root_version: root.root.version, root_sha256: sha256_hex(&root_bytes) };
    let mut state_bytes = serde_json::to_vec_pretty(&new_state).expect("signer state serializes");
    state_bytes.push(b'\n');
    let (state_dir, state_name) = match (state_path.parent(), state_path.file_name()) {
        (Some(d), Some(n)) => (if d.as_os_str().is_empty() { Path::new(".") } else { d }, n.to_string_lossy()),
        _ => return Err(RepoError::Invalid(format!("{}: not a file path", state_path.display()))),
    };
    fsutil::write_atomic(state_dir, &state_name, &state_bytes, 0o600).map_err(io(state_path))?;
    let bytes = dsse::sign(TIMESTAMP_TYPE, &ts.to_bytes(), keys);
    write_doc(repo, "timestamp.json", &bytes)?;
    Ok(ts)
}
