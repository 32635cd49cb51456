//! The signed channel's attack matrix (../shared/research/signed-policy-security.md, "Test matrix"):
//! one test per attack, each asserting the distinct error and that the trusted state — in memory
//! and on disk — is what it was before. Repositories are real directories read through the real
//! file transport; signatures are real Ed25519.

use std::path::{Path, PathBuf};
use std::time::Duration;

use embargo_policy::dsse::{self, Envelope};
use embargo_policy::keys::SigningKey;
use embargo_policy::metadata::{
    Policy, PolicyPointer, RoleName, Root, Time, Timestamp, POLICY_TYPE, ROOT_TYPE, TIMESTAMP_TYPE,
};
use embargo_policy::repo::{self, RoleSpec};
use embargo_policy::rules::{Action, Kind, Matcher, Rule};
use embargo_policy::transport::FileTransport;
use embargo_policy::trust::{sha256_hex, Signers, TrustedState, UpdateError, UpdateOutcome};

const DAY: Duration = Duration::from_secs(86_400);

struct Fx {
    _tmp: tempfile::TempDir,
    repo: PathBuf,
    store: PathBuf,
    root_keys: Vec<SigningKey>,
    ts_key: SigningKey,
    policy_keys: Vec<SigningKey>,
    anchor: Vec<u8>,
    now: Time,
    transport: FileTransport,
}

fn rule(id: &str, pkg: &str) -> Rule {
    Rule {
        id: id.into(),
        description: String::new(),
        action: Action::Remove,
        matchers: vec![Matcher { kind: Some(Kind::Deb), id: Some(pkg.into()), ..Default::default() }],
        except: vec![],
        tags: vec![],
    }
}

impl Fx {
    /// Root: 3 keys, threshold 2. Timestamp: 1 key. Policy: 2 keys, threshold 2.
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        let store = tmp.path().join("state");
        let root_keys: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate()).collect();
        let ts_key = SigningKey::generate();
        let policy_keys: Vec<SigningKey> = (0..2).map(|_| SigningKey::generate()).collect();
        let now = Time::parse("2026-06-01T00:00:00Z").unwrap();
        let anchor = repo::init(
            &repo,
            "gov-test",
            &root_keys.iter().collect::<Vec<_>>(),
            2,
            &RoleSpec { keys: vec![ts_key.public().clone()], threshold: 1 },
            &RoleSpec { keys: policy_keys.iter().map(|k| k.public().clone()).collect(), threshold: 2 },
            365 * DAY,
            now,
        )
        .unwrap();
        let transport = FileTransport::new(&repo);
        Fx { _tmp: tmp, repo, store, root_keys, ts_key, policy_keys, anchor, now, transport }
    }

    fn policy(&self, version: u64, fleet: &str, rules: Vec<Rule>, expires: Time) -> Policy {
        Policy { fleet: fleet.into(), version, issued: self.now, expires, rules }
    }

    fn sign_policy_with(&self, p: &Policy, keys: &[&SigningKey]) -> Vec<u8> {
        dsse::sign(POLICY_TYPE, &p.to_bytes(), keys)
    }

    fn pkeys(&self) -> Vec<&SigningKey> {
        self.policy_keys.iter().collect()
    }

    /// Publishes envelope bytes as a policy and returns its pointer.
    fn put_policy(&self, version: u64, bytes: &[u8]) -> PolicyPointer {
        let sha = sha256_hex(bytes);
        std::fs::create_dir_all(self.repo.join("policy")).unwrap();
        std::fs::write(self.repo.join("policy").join(format!("{sha}.json")), bytes).unwrap();
        PolicyPointer { version, sha256: sha, length: bytes.len() as u64 }
    }

    fn publish_policy(&self, version: u64, rules: Vec<Rule>) -> PolicyPointer {
        let p = self.policy(version, "gov-test", rules, self.now.plus(30 * DAY));
        self.put_policy(version, &self.sign_policy_with(&p, &self.pkeys()))
    }

    fn ts_bytes(&self, version: u64, pointer: PolicyPointer, expires: Time, key: &SigningKey) -> Vec<u8> {
        let ts = Timestamp { fleet: "gov-test".into(), version, expires, policy: pointer };
        dsse::sign(TIMESTAMP_TYPE, &ts.to_bytes(), &[key])
    }

    fn publish_ts(&self, version: u64, pointer: PolicyPointer) -> Vec<u8> {
        let bytes = self.ts_bytes(version, pointer, self.now.plus(DAY), &self.ts_key);
        self.put_ts(&bytes);
        bytes
    }

    fn put_ts(&self, bytes: &[u8]) {
        std::fs::write(self.repo.join("timestamp.json"), bytes).unwrap();
    }

    fn put_root(&self, version: u64, bytes: &[u8]) {
        std::fs::write(self.repo.join("root").join(format!("{version}.json")), bytes).unwrap();
    }

    fn open(&self) -> TrustedState {
        TrustedState::open(&self.store, &self.anchor, &[]).unwrap().0
    }

    fn update(&self, state: &mut TrustedState) -> Result<UpdateOutcome, UpdateError> {
        self.update_at(state, self.now)
    }

    fn update_at(&self, state: &mut TrustedState, now: Time) -> Result<UpdateOutcome, UpdateError> {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(state.update(&self.transport, now, &[]))
    }

    /// A state that trusts policy v2 and timestamp v2, persisted.
    fn established(&self) -> TrustedState {
        let p = self.publish_policy(2, vec![rule("wechat", "wechat")]);
        self.publish_ts(2, p);
        let mut s = self.open();
        assert!(matches!(self.update(&mut s), Ok(UpdateOutcome::NewPolicy(_))));
        s
    }

    fn disk(&self) -> Vec<u8> {
        std::fs::read(self.store.join("trust.json")).unwrap()
    }

    /// Runs an update expected to fail, and checks that nothing trusted changed.
    fn refused(&self, state: &mut TrustedState) -> UpdateError {
        self.refused_at(state, self.now)
    }

    fn refused_at(&self, state: &mut TrustedState, now: Time) -> UpdateError {
        let (before, disk) = (state.fingerprint(), self.disk());
        let err = self.update_at(state, now).expect_err("the update must be refused");
        assert_eq!(state.fingerprint(), before, "trusted state changed after: {err}");
        assert_eq!(self.disk(), disk, "persisted state changed after: {err}");
        // Reopening from disk gives the same trust, and the policy in force is still v2.
        let reopened = self.open();
        assert_eq!(reopened.fingerprint(), before);
        assert_eq!(reopened.policy().map(|p| p.version), Some(2));
        err
    }

    fn new_root(&self, version: u64, root_keys: &[&SigningKey], ts: &[&SigningKey], policy: &[&SigningKey]) -> Root {
        let spec =
            |ks: &[&SigningKey], t| RoleSpec { keys: ks.iter().map(|k| k.public().clone()).collect(), threshold: t };
        let mut keys = std::collections::BTreeMap::new();
        let mut role = |s: RoleSpec| {
            for k in &s.keys {
                keys.insert(k.keyid().to_owned(), k.to_json_key());
            }
            embargo_policy::metadata::RoleKeys {
                keyids: s.keys.iter().map(|k| k.keyid().to_owned()).collect(),
                threshold: s.threshold,
            }
        };
        let roles = embargo_policy::metadata::Roles {
            root: role(spec(root_keys, 2.min(root_keys.len() as u32))),
            timestamp: role(spec(ts, 1)),
            policy: role(spec(policy, policy.len() as u32)),
        };
        Root {
            fleet: "gov-test".into(),
            version,
            expires: self.now.plus(365 * DAY),
            keys: embargo_policy::metadata::StrictMap(keys),
            roles,
        }
    }
}

fn threshold(err: &UpdateError) -> (Signers, &dsse::ThresholdError) {
    match err {
        UpdateError::Signatures { signers, source, .. } => (*signers, source),
        other => panic!("expected a signature threshold error, got {other:?}"),
    }
}

#[test]
fn happy_path_then_unchanged() {
    let fx = Fx::new();
    let mut s = fx.established();
    assert_eq!(s.policy().unwrap().version, 2);
    assert_eq!(s.policy().unwrap().rule_count, 1);
    assert!(matches!(fx.update(&mut s), Ok(UpdateOutcome::Unchanged)));
    let p3 = fx.publish_policy(3, vec![rule("a", "a"), rule("b", "b")]);
    fx.publish_ts(3, p3);
    match fx.update(&mut s) {
        Ok(UpdateOutcome::NewPolicy(p)) => assert_eq!(p.len(), 2),
        other => panic!("{other:?}"),
    }
    let (reopened, policy) = TrustedState::open(&fx.store, &fx.anchor, &[]).unwrap();
    assert_eq!(reopened.fingerprint(), s.fingerprint());
    assert_eq!(policy.unwrap().len(), 2);
    assert_eq!(reopened.policy().unwrap().version, 3);
    // Only the policy in force is kept in the store.
    assert_eq!(std::fs::read_dir(fx.store.join("policy")).unwrap().count(), 1);
}

#[test]
fn policy_signed_by_unknown_keys_is_refused() {
    let fx = Fx::new();
    let mut s = fx.established();
    let strangers = [SigningKey::generate(), SigningKey::generate()];
    let p = fx.policy(3, "gov-test", vec![rule("x", "bash")], fx.now.plus(DAY));
    let ptr = fx.put_policy(3, &fx.sign_policy_with(&p, &[&strangers[0], &strangers[1]]));
    fx.publish_ts(3, ptr);
    let err = fx.refused(&mut s);
    let (who, t) = threshold(&err);
    assert_eq!(who, Signers::Policy);
    assert_eq!((t.valid, t.unknown, t.duplicate, t.invalid), (0, 2, 0, 0), "{err}");
}

#[test]
fn valid_timestamp_envelope_offered_as_the_policy_is_refused_by_type() {
    let fx = Fx::new();
    let mut s = fx.established();
    // Same key for both roles would make the signature pass; the authenticated type must not.
    let confused = dsse::sign(TIMESTAMP_TYPE, b"{}", &fx.pkeys());
    let ptr = fx.put_policy(3, &confused);
    fx.publish_ts(3, ptr);
    let err = fx.refused(&mut s);
    assert!(
        matches!(err, UpdateError::WrongPayloadType { expected: POLICY_TYPE, ref found, .. } if found == TIMESTAMP_TYPE),
        "{err}"
    );
}

#[test]
fn one_signature_duplicated_does_not_reach_threshold_two() {
    let fx = Fx::new();
    let mut s = fx.established();
    let p = fx.policy(3, "gov-test", vec![rule("x", "bash")], fx.now.plus(DAY));
    let payload = p.to_bytes();
    let sig = fx.policy_keys[0].sign(&dsse::pae(POLICY_TYPE, &payload)).to_vec();
    let k0 = fx.policy_keys[0].public().keyid().to_owned();
    let k1 = fx.policy_keys[1].public().keyid().to_owned();
    for sigs in [
        vec![(k0.clone(), sig.clone()), (k0.clone(), sig.clone())], // same keyid twice
        vec![(k0.clone(), sig.clone()), (k1.clone(), sig.clone())], // claims to be the other key
        vec![(k0.clone(), sig.clone()), ("anything".into(), sig.clone())],
    ] {
        let ptr = fx.put_policy(3, &dsse::assemble(POLICY_TYPE, &payload, &sigs));
        fx.publish_ts(3, ptr);
        let err = fx.refused(&mut s);
        let (who, t) = threshold(&err);
        assert_eq!(who, Signers::Policy);
        assert_eq!((t.valid, t.threshold, t.duplicate), (1, 2, 1), "{err}");
    }
}

#[test]
fn threshold_minus_one_valid_plus_garbage_is_refused() {
    let fx = Fx::new();
    let mut s = fx.established();
    let p = fx.policy(3, "gov-test", vec![rule("x", "bash")], fx.now.plus(DAY));
    let payload = p.to_bytes();
    let good = fx.policy_keys[0].sign(&dsse::pae(POLICY_TYPE, &payload)).to_vec();
    let k1 = fx.policy_keys[1].public().keyid().to_owned();
    let sigs = vec![
        (fx.policy_keys[0].public().keyid().to_owned(), good),
        (k1.clone(), vec![0x41; 64]), // well-formed but forged
        (k1, b"not a signature".to_vec()),
    ];
    let ptr = fx.put_policy(3, &dsse::assemble(POLICY_TYPE, &payload, &sigs));
    fx.publish_ts(3, ptr);
    let err = fx.refused(&mut s);
    let (_, t) = threshold(&err);
    assert_eq!((t.valid, t.unknown, t.invalid), (1, 1, 1), "{err}");
}

#[test]
fn payload_altered_after_signing_is_refused() {
    let fx = Fx::new();
    let mut s = fx.established();
    let p = fx.policy(3, "gov-test", vec![rule("x", "wechat")], fx.now.plus(DAY));
    let env = Envelope::decode(&fx.sign_policy_with(&p, &fx.pkeys())).unwrap();
    // Same signatures, payload changed to ban bash instead.
    let altered = String::from_utf8(env.payload().to_vec()).unwrap().replace("wechat", "bash");
    let ptr = fx.put_policy(3, &dsse::assemble(POLICY_TYPE, altered.as_bytes(), env.signatures()));
    fx.publish_ts(3, ptr);
    let err = fx.refused(&mut s);
    let (_, t) = threshold(&err);
    assert_eq!((t.valid, t.unknown), (0, 2), "{err}");

    // Altered into something that does not even parse: the payload is parsed while the
    // signatures are checked, and the signature failure is still the error reported.
    let broken = &altered[..altered.len() / 2];
    let ptr = fx.put_policy(3, &dsse::assemble(POLICY_TYPE, broken.as_bytes(), env.signatures()));
    fx.publish_ts(4, ptr);
    let err = fx.refused(&mut s);
    let (_, t) = threshold(&err);
    assert_eq!((t.valid, t.unknown), (0, 2), "{err}");
}

#[test]
fn signed_but_malformed_payloads_are_refused_by_the_strict_parser() {
    let fx = Fx::new();
    let good = fx.policy(3, "gov-test", vec![rule("x", "wechat")], fx.now.plus(DAY));
    let good_json = String::from_utf8(good.to_bytes()).unwrap();
    let too_many: Vec<Rule> = (0..200_001).map(|i| rule(&format!("r{i}"), "p")).collect();
    let oversize_list = Policy { rules: too_many, ..good.clone() };
    let long_desc = {
        let mut r = rule("x", "y");
        r.description = "d".repeat(5000);
        Policy { rules: vec![r], ..good.clone() }
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("duplicate key", good_json.replacen("\"version\":3", "\"version\":3,\"version\":4", 1).into_bytes()),
        ("unknown field", good_json.replacen("{\"fleet\"", "{\"extra\":1,\"fleet\"", 1).into_bytes()),
        ("float version", good_json.replacen("\"version\":3", "\"version\":3.0", 1).into_bytes()),
        ("unknown action", good_json.replace("\"remove\"", "\"delete\"").into_bytes()),
        ("oversize list", oversize_list.to_bytes()),
        ("oversize string", long_desc.to_bytes()),
    ];
    for (what, payload) in cases {
        let fx = Fx::new();
        let mut s = fx.established();
        assert_ne!(payload, good.to_bytes(), "{what}: case must differ");
        let ptr = fx.put_policy(3, &dsse::sign(POLICY_TYPE, &payload, &fx.pkeys()));
        fx.publish_ts(3, ptr);
        let err = fx.refused(&mut s);
        assert!(matches!(err, UpdateError::Payload { .. }), "{what}: {err}");
    }
    let _ = fx;
}

#[test]
fn policy_hash_or_length_not_the_timestamps_is_refused() {
    let fx = Fx::new();
    let mut s = fx.established();
    let real = fx.publish_policy(3, vec![rule("x", "y")]);
    // Swap the bytes under the content address: hash mismatch.
    let other = fx.policy(3, "gov-test", vec![rule("x", "bash")], fx.now.plus(DAY));
    let other_bytes = fx.sign_policy_with(&other, &fx.pkeys());
    let path = fx.repo.join("policy").join(format!("{}.json", real.sha256));
    let mut swapped = other_bytes.clone();
    swapped.resize(real.length as usize, b' ');
    std::fs::write(&path, &swapped).unwrap();
    fx.publish_ts(3, real.clone());
    assert!(matches!(fx.refused(&mut s), UpdateError::PolicyHashMismatch { .. }));
    // Right bytes, wrong signed length.
    let real = fx.publish_policy(3, vec![rule("x", "y")]);
    fx.publish_ts(4, PolicyPointer { length: real.length + 1, ..real });
    assert!(matches!(fx.refused(&mut s), UpdateError::PolicyLengthMismatch { .. }));
}

#[test]
fn policy_version_not_the_timestamps_is_refused() {
    let fx = Fx::new();
    let mut s = fx.established();
    let p4 = fx.publish_policy(4, vec![rule("x", "y")]);
    fx.publish_ts(3, PolicyPointer { version: 3, ..p4 });
    let err = fx.refused(&mut s);
    assert!(matches!(err, UpdateError::PolicyVersionMismatch { timestamp: 3, policy: 4 }), "{err}");
}

#[test]
fn older_timestamp_and_older_policy_are_rollbacks() {
    let fx = Fx::new();
    let p1 = fx.publish_policy(1, vec![rule("old", "old")]);
    let old_ts = fx.ts_bytes(1, p1.clone(), fx.now.plus(DAY), &fx.ts_key);
    let mut s = fx.established();
    fx.put_ts(&old_ts);
    assert!(matches!(fx.refused(&mut s), UpdateError::TimestampRollback { trusted: 2, offered: 1 }));
    // A newer timestamp that names the older policy.
    fx.publish_ts(9, p1);
    assert!(matches!(fx.refused(&mut s), UpdateError::PolicyRollback { trusted: 2, offered: 1 }));
}

#[test]
fn same_version_with_different_bytes_is_refused() {
    let fx = Fx::new();
    let mut s = fx.established();
    let trusted_ptr = {
        let p = s.policy().unwrap();
        PolicyPointer { version: p.version, sha256: p.sha256.clone(), length: p.length }
    };
    // Timestamp v2 again, re-signed with another expiry.
    fx.put_ts(&fx.ts_bytes(2, trusted_ptr, fx.now.plus(2 * DAY), &fx.ts_key));
    let err = fx.refused(&mut s);
    assert!(matches!(err, UpdateError::SameVersionDifferentBytes { role: RoleName::Timestamp, version: 2 }), "{err}");
    // Policy v2 again with other rules, named by a fresh timestamp.
    let other = fx.publish_policy(2, vec![rule("other", "bash")]);
    fx.publish_ts(3, other);
    let err = fx.refused(&mut s);
    assert!(matches!(err, UpdateError::SameVersionDifferentBytes { role: RoleName::Policy, version: 2 }), "{err}");
}

#[test]
fn expired_timestamp_policy_and_root_are_refused_and_the_last_policy_stays() {
    let fx = Fx::new();
    let mut s = fx.established();
    // Expired timestamp.
    let p3 = fx.publish_policy(3, vec![rule("x", "y")]);
    fx.put_ts(&fx.ts_bytes(3, p3, fx.now.minus(Duration::from_secs(1)), &fx.ts_key));
    assert!(matches!(fx.refused(&mut s), UpdateError::TimestampExpired { version: 3, .. }));
    // A fresh timestamp naming an expired policy.
    let p = fx.policy(4, "gov-test", vec![rule("x", "y")], fx.now.minus(Duration::from_secs(1)));
    let ptr = fx.put_policy(4, &fx.sign_policy_with(&p, &fx.pkeys()));
    fx.publish_ts(4, ptr);
    assert!(matches!(fx.refused(&mut s), UpdateError::PolicyExpired { version: 4, .. }));
    // The trusted policy itself expiring is reported, and it stays in force.
    let later = fx.now.plus(31 * DAY);
    let p2_ptr = {
        let p = s.policy().unwrap();
        PolicyPointer { version: p.version, sha256: p.sha256.clone(), length: p.length }
    };
    fx.put_ts(&fx.ts_bytes(5, p2_ptr, later.plus(DAY), &fx.ts_key));
    let err = fx.update_at(&mut s, later).unwrap_err();
    assert!(matches!(err, UpdateError::PolicyExpired { version: 2, .. }), "{err}");
    assert_eq!(s.policy().unwrap().version, 2, "expiry never un-bans");
    assert!(s.staleness(later).unwrap().contains("policy v2 expired"));
    // Expired root.
    let fx = Fx::new();
    let mut s = fx.established();
    let err = fx.refused_at(&mut s, fx.now.plus(366 * DAY));
    assert!(matches!(err, UpdateError::RootExpired { version: 1, .. }), "{err}");
}

#[test]
fn clock_set_back_behind_latest_known_time_is_refused() {
    let fx = Fx::new();
    let mut s = fx.established();
    assert_eq!(s.latest_known_time(), fx.now);
    let err = fx.refused_at(&mut s, fx.now.minus(DAY));
    assert!(matches!(err, UpdateError::ClockRolledBack { .. }), "{err}");
}

#[test]
fn root_v2_needs_old_and_new_thresholds() {
    let fx = Fx::new();
    let mut s = fx.established();
    let new_keys: Vec<SigningKey> = (0..2).map(|_| SigningKey::generate()).collect();
    let root2 = fx.new_root(2, &new_keys.iter().collect::<Vec<_>>(), &[&fx.ts_key], &fx.pkeys());
    // Only the new keys.
    fx.put_root(2, &dsse::sign(ROOT_TYPE, &root2.to_bytes(), &new_keys.iter().collect::<Vec<_>>()));
    let err = fx.refused(&mut s);
    assert_eq!(threshold(&err).0, Signers::RootOldKeys { version: 2 }, "{err}");
    // Only the old keys.
    fx.put_root(2, &dsse::sign(ROOT_TYPE, &root2.to_bytes(), &fx.root_keys.iter().collect::<Vec<_>>()));
    let err = fx.refused(&mut s);
    assert_eq!(threshold(&err).0, Signers::RootNewKeys { version: 2 }, "{err}");
    // Both: accepted, and the chain continues from it.
    let signers: Vec<&SigningKey> = fx.root_keys.iter().chain(&new_keys).collect();
    fx.put_root(2, &dsse::sign(ROOT_TYPE, &root2.to_bytes(), &signers));
    assert!(fx.update(&mut s).is_ok());
    assert_eq!(s.root().version, 2);
}

#[test]
fn root_file_2_saying_version_5_is_refused() {
    let fx = Fx::new();
    let mut s = fx.established();
    let root5 = fx.new_root(5, &fx.root_keys.iter().collect::<Vec<_>>(), &[&fx.ts_key], &fx.pkeys());
    fx.put_root(2, &dsse::sign(ROOT_TYPE, &root5.to_bytes(), &fx.root_keys.iter().collect::<Vec<_>>()));
    let err = fx.refused(&mut s);
    assert!(matches!(err, UpdateError::RootVersionMismatch { expected: 2, found: 5, .. }), "{err}");
}

#[test]
fn a_revoked_policy_key_cannot_sign_after_rotation() {
    let fx = Fx::new();
    let mut s = fx.established();
    let replacement = SigningKey::generate();
    // Rotate: policy key 1 is revoked and replaced.
    let root2 =
        fx.new_root(2, &fx.root_keys.iter().collect::<Vec<_>>(), &[&fx.ts_key], &[&fx.policy_keys[0], &replacement]);
    fx.put_root(2, &dsse::sign(ROOT_TYPE, &root2.to_bytes(), &fx.root_keys.iter().collect::<Vec<_>>()));
    // The rotation verifies and is kept; the policy in force was signed by the revoked key, so
    // re-checking it under the new keys is reported (and it stays in force: expiry and
    // revocation never un-ban).
    let err = fx.update(&mut s).unwrap_err();
    assert_eq!(threshold(&err).0, Signers::Policy, "{err}");
    assert_eq!((s.root().version, s.policy().unwrap().version), (2, 2));
    // A policy signed by key 0 and the revoked key 1.
    let p = fx.policy(3, "gov-test", vec![rule("x", "bash")], fx.now.plus(DAY));
    let ptr = fx.put_policy(3, &fx.sign_policy_with(&p, &fx.pkeys()));
    fx.publish_ts(3, ptr);
    let err = fx.refused(&mut s);
    let (who, t) = threshold(&err);
    assert_eq!((who, t.valid, t.unknown), (Signers::Policy, 1, 1), "{err}");
    // Signed by key 0 and the replacement: accepted.
    let ptr = fx.put_policy(3, &fx.sign_policy_with(&p, &[&fx.policy_keys[0], &replacement]));
    fx.publish_ts(4, ptr);
    assert!(matches!(fx.update(&mut s), Ok(UpdateOutcome::NewPolicy(_))));
}

#[test]
fn another_fleets_documents_are_refused() {
    let fx = Fx::new();
    let mut s = fx.established();
    // A policy for another fleet, validly signed, named by a valid timestamp of ours.
    let p = fx.policy(3, "other-fleet", vec![rule("x", "bash")], fx.now.plus(DAY));
    let ptr = fx.put_policy(3, &fx.sign_policy_with(&p, &fx.pkeys()));
    fx.publish_ts(3, ptr.clone());
    let err = fx.refused(&mut s);
    assert!(matches!(err, UpdateError::FleetMismatch { ref found, .. } if found == "other-fleet"), "{err}");
    // A timestamp for another fleet.
    let ts = Timestamp { fleet: "other-fleet".into(), version: 4, expires: fx.now.plus(DAY), policy: ptr };
    fx.put_ts(&dsse::sign(TIMESTAMP_TYPE, &ts.to_bytes(), &[&fx.ts_key]));
    let err = fx.refused(&mut s);
    assert!(matches!(err, UpdateError::FleetMismatch { ref path, .. } if path == "timestamp.json"), "{err}");
}

#[test]
fn fast_forward_recovery_after_timestamp_key_rotation() {
    let fx = Fx::new();
    let mut s = fx.established();
    // The online key is compromised and signs a timestamp with a version as far ahead as
    // clients allow (a farther one is refused outright, see channel_hardening.rs).
    let ptr = {
        let p = s.policy().unwrap();
        PolicyPointer { version: p.version, sha256: p.sha256.clone(), length: p.length }
    };
    let poisoned = fx.now.0 + embargo_policy::trust::TIMESTAMP_VERSION_SLACK;
    fx.publish_ts(poisoned, ptr.clone());
    assert!(fx.update(&mut s).is_ok());
    assert_eq!(s.timestamp().unwrap().version, poisoned);
    // Without a rotation, honest timestamps now look like rollbacks.
    let p3 = fx.publish_policy(3, vec![rule("a", "a")]);
    fx.publish_ts(10, p3.clone());
    assert!(matches!(fx.refused(&mut s), UpdateError::TimestampRollback { .. }));
    // Rotate the timestamp key: the client drops the poisoned version and accepts v10.
    let new_ts_key = SigningKey::generate();
    let root2 = fx.new_root(2, &fx.root_keys.iter().collect::<Vec<_>>(), &[&new_ts_key], &fx.pkeys());
    fx.put_root(2, &dsse::sign(ROOT_TYPE, &root2.to_bytes(), &fx.root_keys.iter().collect::<Vec<_>>()));
    fx.put_ts(&fx.ts_bytes(10, p3, fx.now.plus(DAY), &new_ts_key));
    assert!(matches!(fx.update(&mut s), Ok(UpdateOutcome::NewPolicy(_))));
    assert_eq!(s.timestamp().unwrap().version, 10);
    assert_eq!(s.policy().unwrap().version, 3);
}

#[test]
fn fast_forward_recovery_after_policy_key_rotation_keeps_enforcing_until_new_policy() {
    let fx = Fx::new();
    let mut s = fx.established();
    // A compromised pair of policy keys signs v1000.
    let p = fx.publish_policy(1000, vec![rule("x", "y")]);
    fx.publish_ts(3, p);
    assert!(fx.update(&mut s).is_ok());
    assert_eq!(s.policy().unwrap().version, 1000);
    // Rotate policy keys; the honest v5 is accepted though lower, and v1000 stays in force until then.
    let new_pkeys = [SigningKey::generate(), SigningKey::generate()];
    let root2 =
        fx.new_root(2, &fx.root_keys.iter().collect::<Vec<_>>(), &[&fx.ts_key], &[&new_pkeys[0], &new_pkeys[1]]);
    fx.put_root(2, &dsse::sign(ROOT_TYPE, &root2.to_bytes(), &fx.root_keys.iter().collect::<Vec<_>>()));
    fx.put_ts(b"not yet");
    assert!(fx.update(&mut s).is_err());
    assert_eq!((s.root().version, s.policy().unwrap().version), (2, 1000), "root kept, old policy in force");
    let honest = fx.policy(5, "gov-test", vec![rule("x", "y")], fx.now.plus(DAY));
    let ptr = fx.put_policy(5, &fx.sign_policy_with(&honest, &[&new_pkeys[0], &new_pkeys[1]]));
    fx.publish_ts(4, ptr);
    assert!(matches!(fx.update(&mut s), Ok(UpdateOutcome::NewPolicy(_))));
    assert_eq!(s.policy().unwrap().version, 5);
}

#[test]
fn oversize_documents_are_cut_at_the_cap() {
    let fx = Fx::new();
    let mut s = fx.established();
    let mut big = fx.ts_bytes(3, s_ptr(&s), fx.now.plus(DAY), &fx.ts_key);
    big.resize(64 * 1024, b' ');
    fx.put_ts(&big);
    let err = fx.refused(&mut s);
    assert!(
        matches!(err, UpdateError::Fetch { source: embargo_policy::transport::FetchError::TooLarge { .. }, .. }),
        "{err}"
    );
}

fn s_ptr(s: &TrustedState) -> PolicyPointer {
    let p = s.policy().unwrap();
    PolicyPointer { version: p.version, sha256: p.sha256.clone(), length: p.length }
}

#[test]
fn a_missing_next_root_does_not_revert_a_persisted_rotation() {
    let fx = Fx::new();
    let mut s = fx.established();
    let root2 = fx.new_root(2, &fx.root_keys.iter().collect::<Vec<_>>(), &[&fx.ts_key], &fx.pkeys());
    fx.put_root(2, &dsse::sign(ROOT_TYPE, &root2.to_bytes(), &fx.root_keys.iter().collect::<Vec<_>>()));
    assert!(fx.update(&mut s).is_ok());
    std::fs::remove_file(fx.repo.join("root/2.json")).unwrap();
    let reopened = fx.open();
    assert_eq!(reopened.root().version, 2);
    let _ = Path::new("");
}
