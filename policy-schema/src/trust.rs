//! The client's trusted state and the update check: root chain, timestamp, policy.
//!
//! This module decides what the agent believes. It owns the order of checks (TUF 1.0.34 §5,
//! reduced to root/timestamp/policy over DSSE) and the persistence of what passed them.
//! It never acts on apps and never trusts bytes before their signatures verify.
//!
//! Architecture invariants:
//! - A failed update leaves the timestamp, policy, floors and latest-known-time as they were.
//!   Root steps that fully verified are kept (TUF persists each root), so a later failure does
//!   not undo a key revocation.
//! - Expiry never un-bans: an expired policy is reported, and the caller keeps enforcing it.
//! - State is written with one atomic rename of `trust.json`, after the policy bytes it names
//!   are durable; a crash leaves the old or the new state, never a mix.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::dsse::{Envelope, EnvelopeError, ThresholdError};
use crate::fsutil;
use crate::matcher::RuleSet;
use crate::metadata::{
    limits, PayloadError, Policy, PolicyHeader, RoleName, Root, Time, Timestamp, VerifiedRoot, POLICY_TYPE, ROOT_TYPE,
    TIMESTAMP_TYPE,
};
use crate::transport::{Fetch, FetchError};

/// Whose signatures were being counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signers {
    /// A new root, checked against the keys of the root before it.
    RootOldKeys {
        version: u64,
    },
    /// A new root, checked against its own keys.
    RootNewKeys {
        version: u64,
    },
    Timestamp,
    Policy,
}

impl std::fmt::Display for Signers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signers::RootOldKeys { version } => {
                write!(f, "root v{version} (by the previous root's keys)")
            }
            Signers::RootNewKeys { version } => write!(f, "root v{version} (by its own keys)"),
            Signers::Timestamp => f.write_str("timestamp"),
            Signers::Policy => f.write_str("policy"),
        }
    }
}

/// Why an update was refused. Each attack has its own variant so status and tests can tell
/// them apart; every variant names the document it concerns.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("fetching {path}: {source}")]
    Fetch { path: String, source: FetchError },
    #[error("{path}: {source}")]
    Envelope { path: String, source: EnvelopeError },
    #[error("{path}: payloadType {found:?} is not {expected:?}")]
    WrongPayloadType { path: String, expected: &'static str, found: String },
    #[error("{path}: signatures of {signers}: {source}")]
    Signatures { path: String, signers: Signers, source: ThresholdError },
    #[error("{path}: {source}")]
    Payload { path: String, source: PayloadError },
    #[error("{path}: document is for fleet {found:?}, this device is in fleet {expected:?}")]
    FleetMismatch { path: String, expected: String, found: String },
    #[error("{path}: says version {found}, expected exactly {expected}")]
    RootVersionMismatch { path: String, expected: u64, found: u64 },
    #[error("more than {} root rotations in one update", limits::MAX_ROOT_ROTATIONS)]
    TooManyRootRotations,
    #[error(
        "trusted root v{version} expired at {expires} (now {now}): updates are frozen until a new root is published"
    )]
    RootExpired { version: u64, expires: Time, now: Time },
    #[error("system clock {now} is behind the latest known time {latest_known}: the clock was set back")]
    ClockRolledBack { now: Time, latest_known: Time },
    #[error("timestamp.json is missing from the repository")]
    TimestampMissing,
    #[error("timestamp rollback: offered v{offered}, trusted v{trusted}")]
    TimestampRollback { trusted: u64, offered: u64 },
    #[error("{role} v{version}: same version as the trusted one but different bytes")]
    SameVersionDifferentBytes { role: RoleName, version: u64 },
    #[error("timestamp v{version} expired at {expires} (now {now}): updates are frozen")]
    TimestampExpired { version: u64, expires: Time, now: Time },
    #[error("policy rollback: timestamp names policy v{offered}, trusted v{trusted}")]
    PolicyRollback { trusted: u64, offered: u64 },
    #[error("policy/{sha256}.json named by the timestamp is missing from the repository")]
    PolicyMissing { sha256: String },
    #[error("policy length {actual} is not the timestamp's {expected}")]
    PolicyLengthMismatch { expected: u64, actual: u64 },
    #[error("policy sha256 {actual} is not the timestamp's {expected}")]
    PolicyHashMismatch { expected: String, actual: String },
    #[error("policy says version {policy}, the timestamp says {timestamp}")]
    PolicyVersionMismatch { timestamp: u64, policy: u64 },
    #[error("policy v{version} expired at {expires} (now {now}); the last verified policy stays in force")]
    PolicyExpired { version: u64, expires: Time, now: Time },
    #[error("persisting trusted state in {path}: {source}")]
    Persist { path: String, source: std::io::Error },
    #[error(
        "timestamp v{version} is more than {slack_secs} s ahead of now ({now}): versions are Unix seconds, \
         a far-future one would make every later timestamp look like a rollback"
    )]
    TimestampVersionFarFuture { version: u64, now: Time, slack_secs: u64 },
    #[error("{path}: {problem}; a new root must keep the online timestamp key out of the offline roles")]
    SharedKeys { path: String, problem: String },
}

impl UpdateError {
    /// A short stable name for status output and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpdateError::Fetch { .. } => "fetch",
            UpdateError::Envelope { .. } => "envelope",
            UpdateError::WrongPayloadType { .. } => "wrong-payload-type",
            UpdateError::Signatures { .. } => "signatures",
            UpdateError::Payload { .. } => "payload",
            UpdateError::FleetMismatch { .. } => "fleet-mismatch",
            UpdateError::RootVersionMismatch { .. } => "root-version-mismatch",
            UpdateError::TooManyRootRotations => "too-many-root-rotations",
            UpdateError::RootExpired { .. } => "root-expired",
            UpdateError::ClockRolledBack { .. } => "clock-rolled-back",
            UpdateError::TimestampMissing => "timestamp-missing",
            UpdateError::TimestampRollback { .. } => "timestamp-rollback",
            UpdateError::SameVersionDifferentBytes { .. } => "same-version-different-bytes",
            UpdateError::TimestampExpired { .. } => "timestamp-expired",
            UpdateError::PolicyRollback { .. } => "policy-rollback",
            UpdateError::PolicyMissing { .. } => "policy-missing",
            UpdateError::PolicyLengthMismatch { .. } => "policy-length-mismatch",
            UpdateError::PolicyHashMismatch { .. } => "policy-hash-mismatch",
            UpdateError::PolicyVersionMismatch { .. } => "policy-version-mismatch",
            UpdateError::PolicyExpired { .. } => "policy-expired",
            UpdateError::Persist { .. } => "persist",
            UpdateError::TimestampVersionFarFuture { .. } => "timestamp-version-far-future",
            UpdateError::SharedKeys { .. } => "shared-keys",
        }
    }
}

/// Errors loading persisted state or the shipped trust anchor.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// What the trusted policy is, without its rules (the caller owns and compiles those).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    pub fleet: String,
    pub version: u64,
    pub issued: Time,
    pub expires: Time,
    pub sha256: String,
    pub length: u64,
    pub rule_count: usize,
    /// Keyids of the policy keys whose signature on this policy verified. A new root that still
    /// gives a threshold of them the policy role keeps the policy floor (finding 1 of issue 11).
    pub signed_by: Vec<String>,
}

/// How far ahead of the client's clock a timestamp version may be. The signer writes
/// `max(last + 1, now)` in Unix seconds and refuses to go past its own clock plus
/// [`crate::repo::TIMESTAMP_VERSION_SLACK`]; the client allows more to absorb clock skew.
pub const TIMESTAMP_VERSION_SLACK: u64 = 7 * 86_400;

/// The trusted timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestampInfo {
    pub version: u64,
    pub expires: Time,
    bytes: Vec<u8>,
}

/// What an update changed.
#[derive(Debug)]
pub enum UpdateOutcome {
    /// The timestamp verified and names the policy already in force.
    Unchanged,
    /// A new policy verified and is now trusted: its rules, compiled for this device.
    NewPolicy(Box<RuleSet>),
}

/// Everything the client trusts, and where it is persisted.
#[derive(Debug, Clone)]
pub struct TrustedState {
    root_bytes: Vec<u8>,
    root: VerifiedRoot,
    timestamp: Option<TimestampInfo>,
    policy: Option<PolicyInfo>,
    /// Lowest policy version acceptable next: the trusted policy's version, reset to 0 when the
    /// policy keys rotate (fast-forward recovery) while the old policy stays in force.
    policy_floor: u64,
    latest_known_time: Time,
    store: Option<PathBuf>,
}

const TRUST_FILE: &str = "trust.json";
/// The last known good copy of `trust.json` (see `open_or_recover`).
const GOOD_FILE: &str = "trust.good.json";
const STATE_SCHEMA_VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PersistedState {
    schema_version: u32,
    /// The trusted root's envelope, base64.
    root: String,
    timestamp: Option<String>,
    policy: Option<PersistedPolicy>,
    policy_floor: u64,
    latest_known_time: Time,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PersistedPolicy {
    fleet: String,
    version: u64,
    issued: Time,
    expires: Time,
    sha256: String,
    length: u64,
    rule_count: usize,
    /// Absent in states written before it existed: then no key is known to have signed, and a
    /// policy-role change resets the floor (the old, conservative behaviour).
    #[serde(default)]
    signed_by: Vec<String>,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Decodes an envelope and checks its type (signatures are checked by `verify_role`).
fn open_envelope(path: &str, bytes: &[u8], expected_type: &'static str) -> Result<Envelope, UpdateError> {
    open_envelope_owned(path, bytes.to_vec(), expected_type)
}

fn open_envelope_owned(path: &str, bytes: Vec<u8>, expected_type: &'static str) -> Result<Envelope, UpdateError> {
    let env = Envelope::decode_owned(bytes).map_err(|source| UpdateError::Envelope { path: path.into(), source })?;
    // The type is authenticated by the signature; checking it first only ever rejects, and it
    // names the real problem when a valid document of another role is offered.
    if env.payload_type() != expected_type {
        return Err(UpdateError::WrongPayloadType {
            path: path.into(),
            expected: expected_type,
            found: env.payload_type().to_owned(),
        });
    }
    Ok(env)
}

fn verify_role(
    path: &str,
    env: &Envelope,
    root: &VerifiedRoot,
    role: RoleName,
    signers: Signers,
) -> Result<(), UpdateError> {
    let (keys, threshold) = root.role_keys(role);
    env.verify(&keys, threshold).map(|_| ()).map_err(|source| UpdateError::Signatures {
        path: path.into(),
        signers,
        source,
    })
}

/// Verifies a root document that is signed by its own root keys (a trust anchor or a persisted root).
pub fn verify_self_signed_root(path: &str, bytes: &[u8]) -> Result<VerifiedRoot, UpdateError> {
    let env = open_envelope(path, bytes, ROOT_TYPE)?;
    let root = Root::parse(env.payload()).map_err(|source| UpdateError::Payload { path: path.into(), source })?;
    let version = root.root.version;
    verify_role(path, &env, &root, RoleName::Root, Signers::RootNewKeys { version })?;
    Ok(root)
}

/// Verifies root N+1 against trusted root N: threshold of the old keys, threshold of its own
/// keys, version exactly N+1, same fleet.
fn verify_root_step(path: &str, bytes: &[u8], old: &VerifiedRoot) -> Result<VerifiedRoot, UpdateError> {
    let expected = old.root.version + 1;
    let env = open_envelope(path, bytes, ROOT_TYPE)?;
    verify_role(path, &env, old, RoleName::Root, Signers::RootOldKeys { version: expected })?;
    let new = Root::parse(env.payload()).map_err(|source| UpdateError::Payload { path: path.into(), source })?;
    verify_role(path, &env, &new, RoleName::Root, Signers::RootNewKeys { version: expected })?;
    if new.root.version != expected {
        return Err(UpdateError::RootVersionMismatch { path: path.into(), expected, found: new.root.version });
    }
    if new.root.fleet != old.root.fleet {
        return Err(UpdateError::FleetMismatch {
            path: path.into(),
            expected: old.root.fleet.clone(),
            found: new.root.fleet.clone(),
        });
    }
    // A new root may not (re)introduce a key shared between the online role and an offline
    // one; a shipped anchor that already does is kept and reported (see `key_sharing`).
    if let Some(problem) = new.shared_online_key() {
        return Err(UpdateError::SharedKeys { path: path.into(), problem });
    }
    Ok(new)
}

/// Verifies root N+1 against root N (for the admin tool walking a repository's chain).
pub fn verify_next_root(path: &str, bytes: &[u8], old: &VerifiedRoot) -> Result<VerifiedRoot, UpdateError> {
    verify_root_step(path, bytes, old)
}

fn same_role_keys(a: &VerifiedRoot, b: &VerifiedRoot, role: RoleName) -> bool {
    let (ka, ta) = a.role_keys(role);
    let (kb, tb) = b.role_keys(role);
    let mut ba: Vec<[u8; 32]> = ka.iter().map(|k| k.to_bytes()).collect();
    let mut bb: Vec<[u8; 32]> = kb.iter().map(|k| k.to_bytes()).collect();
    ba.sort_unstable();
    bb.sort_unstable();
    ta == tb && ba == bb
}

impl TrustedState {
    /// Starts from a trust anchor (the root shipped with the agent), with nothing else trusted.
    pub fn from_anchor(root_bytes: &[u8]) -> Result<Self, UpdateError> {
        let root = verify_self_signed_root("root.json (trust anchor)", root_bytes)?;
        Ok(Self {
            root_bytes: root_bytes.to_vec(),
            root,
            timestamp: None,
            policy: None,
            policy_floor: 0,
            latest_known_time: Time(0),
            store: None,
        })
    }

    /// Opens the state persisted in `store`, or starts from `anchor` if there is none. A shipped
    /// anchor newer than the persisted root (an image update) replaces it, with the same
    /// fast-forward handling as a rotation; an anchor for another fleet starts over.
    /// Returns the state and the trusted policy's rules compiled for `device_tags`, if any.
    pub fn open(store: &Path, anchor: &[u8], device_tags: &[String]) -> Result<(Self, Option<RuleSet>), LoadError> {
        let anchor_state = Self::from_anchor(anchor)
            .map_err(|e| LoadError::Invalid { path: "trust anchor".into(), reason: e.to_string() })?;
        fsutil::ensure_dir(store, 0o700)
            .map_err(|source| LoadError::Io { path: store.display().to_string(), source })?;
        fsutil::ensure_dir(&store.join("policy"), 0o700)
            .map_err(|source| LoadError::Io { path: store.display().to_string(), source })?;
        let trust_path = store.join(TRUST_FILE);
        let (mut state, policy) = match fsutil::read_capped(&trust_path, 1024 * 1024) {
            Ok(bytes) => Self::load(store, &bytes, device_tags)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (anchor_state.clone(), None),
            Err(source) => return Err(LoadError::Io { path: trust_path.display().to_string(), source }),
        };
        state.store = Some(store.to_path_buf());
        if anchor_state.root.root.fleet != state.root.root.fleet {
            let mut fresh = anchor_state;
            fresh.store = Some(store.to_path_buf());
            return Ok((fresh, None));
        }
        if anchor_state.root.root.version > state.root.root.version {
            state.adopt_root(anchor.to_vec(), anchor_state.root);
        }
        Ok((state, policy))
    }

    /// [`open`](Self::open), but damaged or inconsistent state does not stop the agent: a
    /// `trust.json` that does not load (unparsable, failing verification, naming a policy file
    /// that is missing or altered) is moved aside as `trust.json.damaged-<unix time>`, and the
    /// state starts from the last known good copy (`trust.good.json`, rewritten by every
    /// persist and every clean open) if that still verifies, else from the anchor (no policy
    /// until a sync). The third value says what happened, for the caller to report; `None` when
    /// the state loaded as it was. Only a bad anchor or an unusable store is an error.
    pub fn open_or_recover(
        store: &Path,
        anchor: &[u8],
        device_tags: &[String],
    ) -> Result<(Self, Option<RuleSet>, Option<String>), LoadError> {
        let damaged = match Self::open(store, anchor, device_tags) {
            Ok((state, rules)) => {
                state.keep_good_copy();
                return Ok((state, rules, None));
            }
            Err(LoadError::Invalid { path, reason }) if path == "trust anchor" => {
                return Err(LoadError::Invalid { path, reason })
            }
            Err(e) => e,
        };
        let now = crate::metadata::Time::now().0;
        let move_aside = |name: &str| -> String {
            let aside = format!("{name}.damaged-{now}");
            match std::fs::rename(store.join(name), store.join(&aside)) {
                Ok(()) => {
                    let _ = fsutil::sync_dir(store);
                    format!("moved aside to {}", store.join(&aside).display())
                }
                Err(e) => format!("could not be moved aside ({e})"),
            }
        };
        let mut note = format!("damaged trust state ({damaged}): {}", move_aside(TRUST_FILE));
        if let Ok(good) = fsutil::read_capped(&store.join(GOOD_FILE), 1024 * 1024) {
            if fsutil::write_atomic(store, TRUST_FILE, &good, 0o600).is_ok() {
                match Self::open(store, anchor, device_tags) {
                    Ok((state, rules)) => {
                        let v = state.policy().map_or("none".to_string(), |p| format!("v{}", p.version));
                        note.push_str(&format!("; started from the last known good state (policy {v})"));
                        return Ok((state, rules, Some(note)));
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(store.join(TRUST_FILE));
                        note.push_str(&format!("; the last known good copy does not load either ({e}): "));
                        note.push_str(&move_aside(GOOD_FILE));
                    }
                }
            }
        }
        let (state, rules) = Self::open(store, anchor, device_tags)?;
        note.push_str("; started from the trust anchor (no policy until a sync)");
        Ok((state, rules, Some(note)))
    }

    /// Writes `trust.good.json`: the state that just loaded or persisted (best effort).
    fn keep_good_copy(&self) {
        let Some(store) = &self.store else { return };
        if let Ok(bytes) = fsutil::read_capped(&store.join(TRUST_FILE), 1024 * 1024) {
            let _ = fsutil::write_atomic(store, GOOD_FILE, &bytes, 0o600);
        }
    }

    fn load(store: &Path, bytes: &[u8], device_tags: &[String]) -> Result<(Self, Option<RuleSet>), LoadError> {
        let path = store.join(TRUST_FILE).display().to_string();
        let invalid = |reason: String| LoadError::Invalid { path: path.clone(), reason };
        let p: PersistedState = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if p.schema_version != STATE_SCHEMA_VERSION {
            return Err(invalid(format!("schema_version {} is not {STATE_SCHEMA_VERSION}", p.schema_version)));
        }
        let root_bytes = unb64(&p.root).ok_or_else(|| invalid("root is not base64".into()))?;
        let root = verify_self_signed_root("persisted root", &root_bytes).map_err(|e| invalid(e.to_string()))?;
        let timestamp = match p.timestamp {
            None => None,
            Some(t) => {
                let bytes = unb64(&t).ok_or_else(|| invalid("timestamp is not base64".into()))?;
                let env =
                    open_envelope("persisted timestamp", &bytes, TIMESTAMP_TYPE).map_err(|e| invalid(e.to_string()))?;
                let ts = Timestamp::parse(env.payload()).map_err(|e| invalid(e.to_string()))?;
                Some(TimestampInfo { version: ts.version, expires: ts.expires, bytes })
            }
        };
        let (policy_info, policy) = match p.policy {
            None => (None, None),
            Some(pp) => {
                // The state dir is root-only; the policy file is bound to trust.json by its
                // hash, which is what makes the pair consistent after a crash.
                let file = store.join("policy").join(format!("{}.json", pp.sha256));
                let bytes = fsutil::read_capped(&file, limits::POLICY_BYTES)
                    .map_err(|source| LoadError::Io { path: file.display().to_string(), source })?;
                let actual = sha256_hex(&bytes);
                if actual != pp.sha256 {
                    return Err(LoadError::Invalid {
                        path: file.display().to_string(),
                        reason: format!("sha256 is {actual}, trust.json says {}", pp.sha256),
                    });
                }
                let env =
                    open_envelope_owned("persisted policy", bytes, POLICY_TYPE).map_err(|e| invalid(e.to_string()))?;
                let (_, policy) =
                    Policy::parse_compiled(env.payload(), device_tags).map_err(|e| invalid(e.to_string()))?;
                let info = PolicyInfo {
                    fleet: pp.fleet,
                    version: pp.version,
                    issued: pp.issued,
                    expires: pp.expires,
                    sha256: pp.sha256,
                    length: pp.length,
                    rule_count: pp.rule_count,
                    signed_by: pp.signed_by,
                };
                (Some(info), Some(policy))
            }
        };
        let state = Self {
            root_bytes,
            root,
            timestamp,
            policy: policy_info,
            policy_floor: p.policy_floor,
            latest_known_time: p.latest_known_time,
            store: Some(store.to_path_buf()),
        };
        Ok((state, policy))
    }

    /// Writes trust.json atomically, then removes policy files it no longer names.
    fn persist(&self) -> Result<(), UpdateError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let p = PersistedState {
            schema_version: STATE_SCHEMA_VERSION,
            root: b64(&self.root_bytes),
            timestamp: self.timestamp.as_ref().map(|t| b64(&t.bytes)),
            policy: self.policy.as_ref().map(|p| PersistedPolicy {
                fleet: p.fleet.clone(),
                version: p.version,
                issued: p.issued,
                expires: p.expires,
                sha256: p.sha256.clone(),
                length: p.length,
                rule_count: p.rule_count,
                signed_by: p.signed_by.clone(),
            }),
            policy_floor: self.policy_floor,
            latest_known_time: self.latest_known_time,
        };
        let bytes = serde_json::to_vec_pretty(&p).expect("state serializes");
        let err = |source| UpdateError::Persist { path: store.display().to_string(), source };
        fsutil::write_atomic(store, TRUST_FILE, &bytes, 0o600).map_err(err)?;
        // The last known good copy: the same bytes, naming the same (kept) policy file.
        let _ = fsutil::write_atomic(store, GOOD_FILE, &bytes, 0o600);
        let keep = self.policy.as_ref().map(|p| format!("{}.json", p.sha256));
        if let Ok(entries) = std::fs::read_dir(store.join("policy")) {
            for e in entries.flatten() {
                if Some(e.file_name().to_string_lossy().as_ref()) != keep.as_deref() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    fn adopt_root(&mut self, bytes: Vec<u8>, new: VerifiedRoot) {
        // Fast-forward recovery: when a role's keys change, versions signed by the old keys no
        // longer bind the client. The policy in force stays in force until a new one verifies.
        if !same_role_keys(&self.root, &new, RoleName::Timestamp) {
            self.timestamp = None;
        }
        // The policy floor survives a policy-role change (e.g. a key added) as long as the
        // trusted policy still verifies under the new role: a threshold of the new role's keys
        // is among the keys whose signatures on it verified. Only when its signers were revoked
        // (or the threshold rose past them) is the floor reset, so that an honest policy signed
        // by the new keys can be accepted even if a revoked key signed a huge version.
        if !same_role_keys(&self.root, &new, RoleName::Policy) && !self.policy_verifies_under(&new) {
            self.policy_floor = 0;
        }
        self.root_bytes = bytes;
        self.root = new;
    }

    /// Whether the trusted policy's recorded signers meet `root`'s policy threshold.
    fn policy_verifies_under(&self, root: &VerifiedRoot) -> bool {
        let Some(p) = &self.policy else { return false };
        let role = root.role(RoleName::Policy);
        let still = role.keyids.iter().filter(|id| p.signed_by.iter().any(|s| s == *id)).count();
        still >= role.threshold as usize
    }

    pub fn root(&self) -> &Root {
        &self.root.root
    }

    /// The trusted root's key-sharing problem, if any: one key in the online timestamp role
    /// and in an offline role (root or policy). New roots with this are refused; a shipped
    /// anchor that has it is kept (refusing it would stop enforcement) and reported here, and
    /// by [`TrustedState::staleness`], so status shows the device as degraded.
    pub fn key_sharing(&self) -> Option<String> {
        self.root.shared_online_key().map(|p| format!("root v{}: {p}", self.root.root.version))
    }

    pub fn policy(&self) -> Option<&PolicyInfo> {
        self.policy.as_ref()
    }

    pub fn timestamp(&self) -> Option<&TimestampInfo> {
        self.timestamp.as_ref()
    }

    pub fn latest_known_time(&self) -> Time {
        self.latest_known_time
    }

    /// Why the state in force is stale at `now`, if it is (for status: "degraded").
    pub fn staleness(&self, now: Time) -> Option<String> {
        let now = now.max(self.latest_known_time);
        if self.root.root.expires <= now {
            return Some(format!("root v{} expired at {}", self.root.root.version, self.root.root.expires));
        }
        if let Some(problem) = self.key_sharing() {
            return Some(problem);
        }
        match (&self.timestamp, &self.policy) {
            (_, None) => Some("no verified policy yet".into()),
            (None, _) => Some("no verified timestamp since the timestamp keys changed".into()),
            (Some(t), Some(p)) => {
                if p.expires <= now {
                    Some(format!("policy v{} expired at {}", p.version, p.expires))
                } else if t.expires <= now {
                    Some(format!("timestamp v{} expired at {}", t.version, t.expires))
                } else {
                    None
                }
            }
        }
    }

    /// Runs one full update against `fetch` at time `now` (taken once by the caller).
    /// A new policy is returned compiled for a device carrying `device_tags`.
    pub async fn update<F: Fetch>(
        &mut self,
        fetch: &F,
        now: Time,
        device_tags: &[String],
    ) -> Result<UpdateOutcome, UpdateError> {
        if now < self.latest_known_time {
            return Err(UpdateError::ClockRolledBack { now, latest_known: self.latest_known_time });
        }
        self.update_root(fetch).await?;
        if self.root.root.expires <= now {
            return Err(UpdateError::RootExpired {
                version: self.root.root.version,
                expires: self.root.root.expires,
                now,
            });
        }
        let (ts, ts_bytes) = self.fetch_timestamp(fetch, now).await?;
        let pointer = &ts.policy;
        if pointer.version < self.policy_floor {
            return Err(UpdateError::PolicyRollback { trusted: self.policy_floor, offered: pointer.version });
        }
        let new_ts = TimestampInfo { version: ts.version, expires: ts.expires, bytes: ts_bytes };
        if let Some(p) = self.policy.as_ref().filter(|p| p.version == pointer.version && self.policy_floor == p.version)
        {
            if p.sha256 != pointer.sha256 {
                return Err(UpdateError::SameVersionDifferentBytes { role: RoleName::Policy, version: p.version });
            }
            let (version, expires) = (p.version, p.expires);
            self.timestamp = Some(new_ts);
            self.latest_known_time = self.latest_known_time.max(now);
            self.persist()?;
            if expires <= now {
                return Err(UpdateError::PolicyExpired { version, expires, now });
            }
            return Ok(UpdateOutcome::Unchanged);
        }
        let (rules, info) = self.fetch_policy(fetch, &ts, now, device_tags).await?;
        self.timestamp = Some(new_ts);
        self.policy_floor = info.version;
        self.policy = Some(info);
        self.latest_known_time = self.latest_known_time.max(now);
        self.persist()?;
        Ok(UpdateOutcome::NewPolicy(Box::new(rules)))
    }

    async fn update_root<F: Fetch>(&mut self, fetch: &F) -> Result<(), UpdateError> {
        for _ in 0..limits::MAX_ROOT_ROTATIONS {
            let path = format!("root/{}.json", self.root.root.version + 1);
            let Some(bytes) = fetch
                .fetch(&path, limits::ROOT_BYTES)
                .await
                .map_err(|source| UpdateError::Fetch { path: path.clone(), source })?
            else {
                return Ok(());
            };
            let new = verify_root_step(&path, &bytes, &self.root)?;
            self.adopt_root(bytes, new);
            self.persist()?;
        }
        Err(UpdateError::TooManyRootRotations)
    }

    async fn fetch_timestamp<F: Fetch>(&self, fetch: &F, now: Time) -> Result<(Timestamp, Vec<u8>), UpdateError> {
        let path = "timestamp.json";
        let bytes = fetch
            .fetch(path, limits::TIMESTAMP_BYTES)
            .await
            .map_err(|source| UpdateError::Fetch { path: path.into(), source })?
            .ok_or(UpdateError::TimestampMissing)?;
        let env = open_envelope(path, &bytes, TIMESTAMP_TYPE)?;
        verify_role(path, &env, &self.root, RoleName::Timestamp, Signers::Timestamp)?;
        let ts =
            Timestamp::parse(env.payload()).map_err(|source| UpdateError::Payload { path: path.into(), source })?;
        self.check_fleet(path, &ts.fleet)?;
        let slack_secs = TIMESTAMP_VERSION_SLACK;
        if ts.version > now.0.saturating_add(slack_secs) {
            return Err(UpdateError::TimestampVersionFarFuture { version: ts.version, now, slack_secs });
        }
        if let Some(trusted) = &self.timestamp {
            if ts.version < trusted.version {
                return Err(UpdateError::TimestampRollback { trusted: trusted.version, offered: ts.version });
            }
            if ts.version == trusted.version && bytes != trusted.bytes {
                return Err(UpdateError::SameVersionDifferentBytes { role: RoleName::Timestamp, version: ts.version });
            }
        }
        if ts.expires <= now {
            return Err(UpdateError::TimestampExpired { version: ts.version, expires: ts.expires, now });
        }
        Ok((ts, bytes))
    }

    async fn fetch_policy<F: Fetch>(
        &self,
        fetch: &F,
        ts: &Timestamp,
        now: Time,
        device_tags: &[String],
    ) -> Result<(RuleSet, PolicyInfo), UpdateError> {
        let pointer = &ts.policy;
        let path = format!("policy/{}.json", pointer.sha256);
        let bytes = fetch
            .fetch(&path, pointer.length)
            .await
            .map_err(|source| UpdateError::Fetch { path: path.clone(), source })?
            .ok_or_else(|| UpdateError::PolicyMissing { sha256: pointer.sha256.clone() })?;
        if bytes.len() as u64 != pointer.length {
            return Err(UpdateError::PolicyLengthMismatch { expected: pointer.length, actual: bytes.len() as u64 });
        }
        let actual = sha256_hex(&bytes);
        if actual != pointer.sha256 {
            return Err(UpdateError::PolicyHashMismatch { expected: pointer.sha256.clone(), actual });
        }
        // The bytes are stored under their hash before they are decoded in place (the decode
        // consumes them); trust.json names the file only once everything below passed, and a
        // file it does not name is removed.
        let stored = self
            .store
            .as_ref()
            .map(|s| s.join("policy"))
            .filter(|_| self.policy.as_ref().is_none_or(|p| p.sha256 != actual));
        if let Some(dir) = &stored {
            fsutil::write_atomic(dir, &format!("{actual}.json"), &bytes, 0o600)
                .map_err(|source| UpdateError::Persist { path: dir.display().to_string(), source })?;
        }
        let result = Self::verify_policy(&self.root, &path, bytes, pointer.version, now, device_tags).and_then(
            |(header, rules, signers)| self.check_fleet(&path, &header.fleet).map(|()| (header, rules, signers)),
        );
        let (header, rules, signed_by) = match result {
            Ok(ok) => ok,
            Err(e) => {
                if let Some(dir) = &stored {
                    let _ = std::fs::remove_file(dir.join(format!("{actual}.json")));
                }
                return Err(e);
            }
        };
        let info = PolicyInfo {
            fleet: header.fleet,
            version: header.version,
            issued: header.issued,
            expires: header.expires,
            sha256: actual,
            length: pointer.length,
            rule_count: header.rule_count,
            signed_by,
        };
        Ok((rules, info))
    }

    /// Verify, then parse: the policy signatures are checked over the decoded bytes first, and
    /// only bytes that a threshold of policy keys signed reach the parser. The compiled rule set
    /// is bounded on its own ([`crate::metadata::compiled_budget`]). Returns the header, the
    /// compiled rules, and the keyids whose signatures verified.
    fn verify_policy(
        root: &VerifiedRoot,
        path: &str,
        bytes: Vec<u8>,
        expected_version: u64,
        now: Time,
        device_tags: &[String],
    ) -> Result<(PolicyHeader, RuleSet, Vec<String>), UpdateError> {
        let env = open_envelope_owned(path, bytes, POLICY_TYPE)?;
        let (keys, threshold) = root.role_keys(RoleName::Policy);
        let signers = env.verify_signers(&keys, threshold).map_err(|source| UpdateError::Signatures {
            path: path.into(),
            signers: Signers::Policy,
            source,
        })?;
        let signed_by = signers.into_iter().map(|k| keys[k].keyid().to_owned()).collect();
        let (header, rules) = Policy::parse_compiled(env.payload(), device_tags)
            .map_err(|source| UpdateError::Payload { path: path.into(), source })?;
        drop(env);
        if header.version != expected_version {
            return Err(UpdateError::PolicyVersionMismatch { timestamp: expected_version, policy: header.version });
        }
        if header.expires <= now {
            return Err(UpdateError::PolicyExpired { version: header.version, expires: header.expires, now });
        }
        Ok((header, rules, signed_by))
    }

    fn check_fleet(&self, path: &str, fleet: &str) -> Result<(), UpdateError> {
        if fleet != self.root.root.fleet {
            return Err(UpdateError::FleetMismatch {
                path: path.into(),
                expected: self.root.root.fleet.clone(),
                found: fleet.into(),
            });
        }
        Ok(())
    }

    /// A comparable snapshot of everything trusted, for tests asserting "unchanged".
    pub fn fingerprint(&self) -> String {
        format!(
            "root={} ts={:?} policy={:?} floor={} lkt={}",
            sha256_hex(&self.root_bytes),
            self.timestamp.as_ref().map(|t| sha256_hex(&t.bytes)),
            self.policy.as_ref().map(|p| (&p.sha256, p.version)),
            self.policy_floor,
            self.latest_known_time,
        )
    }
}
