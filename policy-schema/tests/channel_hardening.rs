//! Issue 11, findings 1, 3 and 4: what the online timestamp key, or write access to the
//! repository directory alone, can no longer do. Real repositories in temp dirs, the real file
//! transport, real Ed25519 signatures, and the same `repo` functions the admin tool and
//! `embargo-server --timestamp-key` call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use embargo_policy::dsse;
use embargo_policy::keys::SigningKey;
use embargo_policy::metadata::{Policy, PolicyPointer, RoleKeys, Roles, Root, StrictMap, Time, Timestamp};
use embargo_policy::metadata::{POLICY_TYPE, ROOT_TYPE, TIMESTAMP_TYPE};
use embargo_policy::repo::{self, RoleSpec};
use embargo_policy::rules::{Action, Kind, Matcher, Rule};
use embargo_policy::transport::FileTransport;
use embargo_policy::trust::{sha256_hex, TrustedState, UpdateError, UpdateOutcome};

const DAY: Duration = Duration::from_secs(86_400);

fn ban(id: &str, pkg: &str) -> Rule {
    Rule {
        id: id.into(),
        description: String::new(),
        action: Action::Remove,
        matchers: vec![Matcher { kind: Some(Kind::Deb), id: Some(pkg.into()), ..Default::default() }],
        except: vec![],
        tags: vec![],
    }
}

fn spec(keys: &[&SigningKey], threshold: u32) -> RoleSpec {
    RoleSpec { keys: keys.iter().map(|k| k.public().clone()).collect(), threshold }
}

struct Fx {
    _tmp: tempfile::TempDir,
    repo: PathBuf,
    store: PathBuf,
    root_key: SigningKey,
    ts_key: SigningKey,
    policy_key: SigningKey,
    anchor: Vec<u8>,
    now: Time,
}

impl Fx {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        let store = tmp.path().join("state");
        let (root_key, ts_key, policy_key) = (SigningKey::generate(), SigningKey::generate(), SigningKey::generate());
        let now = Time::parse("2026-06-01T00:00:00Z").unwrap();
        let anchor = repo::init(
            &repo,
            "gov-test",
            &[&root_key],
            1,
            &spec(&[&ts_key], 1),
            &spec(&[&policy_key], 1),
            365 * DAY,
            now,
        )
        .unwrap();
        Fx { _tmp: tmp, repo, store, root_key, ts_key, policy_key, anchor, now }
    }

    fn publish_policy(&self, version: u64, rules: Vec<Rule>, keys: &[&SigningKey]) -> PolicyPointer {
        let p = Policy { fleet: "gov-test".into(), version, issued: self.now, expires: self.now.plus(30 * DAY), rules };
        let bytes = dsse::sign(POLICY_TYPE, &p.to_bytes(), keys);
        let sha = sha256_hex(&bytes);
        std::fs::create_dir_all(self.repo.join("policy")).unwrap();
        std::fs::write(self.repo.join("policy").join(format!("{sha}.json")), &bytes).unwrap();
        PolicyPointer { version, sha256: sha, length: bytes.len() as u64 }
    }

    fn publish_ts(&self, version: u64, pointer: PolicyPointer, key: &SigningKey) {
        let ts = Timestamp { fleet: "gov-test".into(), version, expires: self.now.plus(DAY), policy: pointer };
        std::fs::write(self.repo.join("timestamp.json"), dsse::sign(TIMESTAMP_TYPE, &ts.to_bytes(), &[key])).unwrap();
    }

    fn open(&self) -> TrustedState {
        TrustedState::open(&self.store, &self.anchor, &[]).unwrap().0
    }

    fn update(&self, state: &mut TrustedState) -> Result<UpdateOutcome, UpdateError> {
        let t = FileTransport::new(&self.repo);
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(state.update(&t, self.now, &[]))
    }

    /// Root v2 through the admin tool's own rotate-root.
    fn rotate(&self, policy: Option<&RoleSpec>) {
        repo::rotate_root(&self.repo, &[&self.root_key], &[&self.root_key], 1, None, policy, 365 * DAY, self.now)
            .unwrap();
    }
}

/// Finding 1, end to end: v1 (no WeChat ban) → v2 (ban) → a root rotation that only adds a
/// second policy key → the timestamp key points devices back at v1. The device must refuse,
/// keep v2 in force — also after a restart (the signers of v2 are persisted) — and still accept
/// a newer policy.
#[test]
fn adding_a_policy_key_does_not_let_the_timestamp_key_roll_the_policy_back() {
    let fx = Fx::new();
    let v1 = fx.publish_policy(1, vec![ban("kaspersky", "kaspersky")], &[&fx.policy_key]);
    let v2 = fx.publish_policy(2, vec![ban("kaspersky", "kaspersky"), ban("wechat", "wechat")], &[&fx.policy_key]);
    fx.publish_ts(1, v1.clone(), &fx.ts_key);
    let mut s = fx.open();
    assert!(matches!(fx.update(&mut s), Ok(UpdateOutcome::NewPolicy(_))));
    fx.publish_ts(2, v2, &fx.ts_key);
    assert!(matches!(fx.update(&mut s), Ok(UpdateOutcome::NewPolicy(_))));
    assert_eq!(s.policy().unwrap().version, 2);

    let second = SigningKey::generate();
    fx.rotate(Some(&spec(&[&fx.policy_key, &second], 1)));
    fx.publish_ts(3, v1.clone(), &fx.ts_key);
    let err = fx.update(&mut s).unwrap_err();
    assert!(matches!(err, UpdateError::PolicyRollback { trusted: 2, offered: 1 }), "{err}");
    assert_eq!((s.root().version, s.policy().unwrap().version), (2, 2), "root v2 adopted, v2 (the ban) in force");

    // The same after a restart: the floor is not rebuilt from nothing.
    let mut reopened = fx.open();
    fx.publish_ts(4, v1, &fx.ts_key);
    let err = fx.update(&mut reopened).unwrap_err();
    assert!(matches!(err, UpdateError::PolicyRollback { trusted: 2, offered: 1 }), "{err}");
    assert_eq!(reopened.policy().unwrap().version, 2);

    // A newer policy signed by the added key is accepted.
    let v3 = fx.publish_policy(3, vec![ban("wechat", "wechat")], &[&second]);
    fx.publish_ts(5, v3, &fx.ts_key);
    assert!(matches!(fx.update(&mut reopened), Ok(UpdateOutcome::NewPolicy(_))));
    assert_eq!(reopened.policy().unwrap().version, 3);
}

/// Finding 1, the other side: the rotation happened because v2's signers were revoked (say a
/// compromised key signed a huge version). Then the floor resets, and an honest lower version
/// signed by the new key is accepted; the old policy stays in force until it verifies.
#[test]
fn revoking_the_trusted_policys_signers_resets_the_floor() {
    let fx = Fx::new();
    let huge = fx.publish_policy(1000, vec![ban("wechat", "wechat")], &[&fx.policy_key]);
    fx.publish_ts(1, huge, &fx.ts_key);
    let mut s = fx.open();
    assert!(matches!(fx.update(&mut s), Ok(UpdateOutcome::NewPolicy(_))));
    let fresh = SigningKey::generate();
    fx.rotate(Some(&spec(&[&fresh], 1)));
    let honest = fx.publish_policy(5, vec![ban("wechat", "wechat")], &[&fresh]);
    fx.publish_ts(2, honest, &fx.ts_key);
    assert!(matches!(fx.update(&mut s), Ok(UpdateOutcome::NewPolicy(_))));
    assert_eq!(s.policy().unwrap().version, 5);
}

/// Raising the threshold past the trusted policy's signers is a reset too (it no longer
/// verifies under the new role).
#[test]
fn raising_the_policy_threshold_past_the_signers_resets_the_floor() {
    let fx = Fx::new();
    let v9 = fx.publish_policy(9, vec![ban("wechat", "wechat")], &[&fx.policy_key]);
    fx.publish_ts(1, v9, &fx.ts_key);
    let mut s = fx.open();
    assert!(fx.update(&mut s).is_ok());
    let second = SigningKey::generate();
    fx.rotate(Some(&spec(&[&fx.policy_key, &second], 2)));
    let v3 = fx.publish_policy(3, vec![ban("wechat", "wechat")], &[&fx.policy_key, &second]);
    fx.publish_ts(2, v3, &fx.ts_key);
    assert!(matches!(fx.update(&mut s), Ok(UpdateOutcome::NewPolicy(_))));
    assert_eq!(s.policy().unwrap().version, 3);
}

/// Finding 3, client side: a timestamp whose version is far past the clock (here what a
/// compromised or confused signer would write to lock devices out: 2^64−2) is refused, so it
/// cannot make every later honest timestamp look like a rollback.
#[test]
fn far_future_timestamp_versions_are_refused_by_the_client() {
    let fx = Fx::new();
    let p = fx.publish_policy(1, vec![ban("wechat", "wechat")], &[&fx.policy_key]);
    fx.publish_ts(u64::MAX - 1, p.clone(), &fx.ts_key);
    let mut s = fx.open();
    let err = fx.update(&mut s).unwrap_err();
    assert!(matches!(err, UpdateError::TimestampVersionFarFuture { version, .. } if version == u64::MAX - 1), "{err}");
    assert_eq!(err.kind(), "timestamp-version-far-future");
    assert!(s.timestamp().is_none() && s.policy().is_none(), "nothing trusted from it");
    // A time-based version a little ahead (clock skew) is fine.
    fx.publish_ts(fx.now.0 + 3600, p, &fx.ts_key);
    assert!(fx.update(&mut s).is_ok());
}

fn state_file(repo: &Path) -> PathBuf {
    repo::default_signer_state(repo).unwrap()
}

/// Finding 3, signer side: a planted unsigned `timestamp.json` claiming version 2^64−2 and a
/// planted policy not signed by the policy keys (with a higher version) are both ignored by
/// `repo::timestamp` — the function `embargo-policy timestamp` and the server's scheduled
/// re-signing call. The signer's next version comes from its own state and the clock, and
/// devices accept the result.
#[test]
fn the_timestamp_signer_ignores_planted_unsigned_files() {
    let fx = Fx::new();
    let real = fx.publish_policy(1, vec![ban("wechat", "wechat")], &[&fx.policy_key]);
    let first = repo::timestamp(&fx.repo, &[&fx.ts_key], None, DAY, fx.now).unwrap();
    assert_eq!(first.version, fx.now.0, "time-based version");
    assert_eq!(first.policy, real);
    assert!(state_file(&fx.repo).exists(), "state beside the repository");
    assert!(!state_file(&fx.repo).starts_with(&fx.repo), "never inside it");

    // An attacker with write access to the directory only.
    let attacker = SigningKey::generate();
    let planted_ts =
        Timestamp { fleet: "gov-test".into(), version: u64::MAX - 1, expires: fx.now.plus(DAY), policy: real.clone() };
    std::fs::write(fx.repo.join("timestamp.json"), dsse::sign(TIMESTAMP_TYPE, &planted_ts.to_bytes(), &[&attacker]))
        .unwrap();
    let planted = fx.publish_policy(99, vec![], &[&attacker]);
    // Unsigned too: a policy envelope whose only signature is garbage.
    let unsigned =
        Policy { fleet: "gov-test".into(), version: 100, issued: fx.now, expires: fx.now.plus(DAY), rules: vec![] };
    let junk = dsse::assemble(POLICY_TYPE, &unsigned.to_bytes(), &[(String::new(), vec![0u8; 64])]);
    std::fs::write(fx.repo.join("policy").join(format!("{}.json", sha256_hex(&junk))), &junk).unwrap();

    let later = fx.now.plus(Duration::from_secs(60));
    let second = repo::timestamp(&fx.repo, &[&fx.ts_key], None, DAY, later).unwrap();
    assert_eq!(second.version, later.0, "not u64::MAX, not an overflow");
    assert_eq!(second.policy, real, "the planted v99/v100 are not pointed at (planted: {})", planted.sha256);

    // The same twice within one second: the state makes versions strictly increase.
    let third = repo::timestamp(&fx.repo, &[&fx.ts_key], None, DAY, later).unwrap();
    assert_eq!(third.version, later.0 + 1);

    // Devices accept what the signer wrote.
    let mut s = fx.open();
    let t = FileTransport::new(&fx.repo);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert!(matches!(rt.block_on(s.update(&t, later, &[])), Ok(UpdateOutcome::NewPolicy(_))));
    assert_eq!(s.policy().unwrap().version, 1);
}

/// Finding 3: the signer's own state is the only place a far-future version could come from
/// besides a verified timestamp; it refuses to go past its clock plus the slack, with checked
/// arithmetic (state at u64::MAX is an error, not a wrap to 0).
#[test]
fn the_signer_refuses_versions_past_its_clock_and_never_overflows() {
    let fx = Fx::new();
    fx.publish_policy(1, vec![ban("wechat", "wechat")], &[&fx.policy_key]);
    repo::timestamp(&fx.repo, &[&fx.ts_key], None, DAY, fx.now).unwrap();
    let path = state_file(&fx.repo);
    let mut state: repo::SignerState = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for last in [fx.now.0 + repo::TIMESTAMP_VERSION_SLACK, u64::MAX] {
        state.last_version = last;
        std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
        let before = std::fs::read(fx.repo.join("timestamp.json")).unwrap();
        let err = repo::timestamp(&fx.repo, &[&fx.ts_key], None, DAY, fx.now).unwrap_err();
        assert!(err.to_string().contains("timestamp version"), "{err}");
        assert_eq!(std::fs::read(fx.repo.join("timestamp.json")).unwrap(), before, "nothing signed");
    }
}

/// Finding 3: the signer walks the verified root chain. A planted root/2.json not signed by
/// root v1's keys is an error naming it; a replaced root/1.json is refused once the signer has
/// pinned the real one.
#[test]
fn the_signer_verifies_the_root_chain_and_pins_it() {
    let fx = Fx::new();
    fx.publish_policy(1, vec![ban("wechat", "wechat")], &[&fx.policy_key]);
    repo::timestamp(&fx.repo, &[&fx.ts_key], None, DAY, fx.now).unwrap();
    let attacker = SigningKey::generate();
    let evil = Root {
        fleet: "gov-test".into(),
        version: 2,
        expires: fx.now.plus(DAY),
        keys: StrictMap(
            [&attacker, &fx.ts_key].iter().map(|k| (k.public().keyid().to_owned(), k.public().to_json_key())).collect(),
        ),
        roles: Roles {
            root: RoleKeys { keyids: vec![attacker.public().keyid().into()], threshold: 1 },
            timestamp: RoleKeys { keyids: vec![fx.ts_key.public().keyid().into()], threshold: 1 },
            policy: RoleKeys { keyids: vec![attacker.public().keyid().into()], threshold: 1 },
        },
    };
    let planted = fx.repo.join("root/2.json");
    std::fs::write(&planted, dsse::sign(ROOT_TYPE, &evil.to_bytes(), &[&attacker])).unwrap();
    let err = repo::timestamp(&fx.repo, &[&fx.ts_key], None, DAY, fx.now).unwrap_err();
    assert!(err.to_string().contains("root/2.json"), "{err}");
    std::fs::remove_file(&planted).unwrap();

    // root/1.json replaced by a self-signed root naming the attacker's policy key.
    let mut evil1 = evil;
    evil1.version = 1;
    std::fs::write(fx.repo.join("root/1.json"), dsse::sign(ROOT_TYPE, &evil1.to_bytes(), &[&attacker])).unwrap();
    fx.publish_policy(50, vec![], &[&attacker]);
    let err = repo::timestamp(&fx.repo, &[&fx.ts_key], None, DAY, fx.now.plus(DAY)).unwrap_err();
    assert!(err.to_string().contains("replaced root"), "{err}");
}

/// Finding 4: the admin tool refuses one key in the online role and an offline one.
#[test]
fn init_and_rotate_root_refuse_a_key_shared_with_the_timestamp_role() {
    let tmp = tempfile::tempdir().unwrap();
    let now = Time::parse("2026-06-01T00:00:00Z").unwrap();
    let one = SigningKey::generate();
    let other = SigningKey::generate();
    for (ts, pol) in [(&one, &one), (&one, &other)] {
        let root_keys: &[&SigningKey] = if std::ptr::eq(pol, &one) { &[&other] } else { &[&one] };
        let err = repo::init(&tmp.path().join("r"), "f", root_keys, 1, &spec(&[ts], 1), &spec(&[pol], 1), DAY, now)
            .unwrap_err();
        assert!(err.to_string().contains("timestamp role"), "{err}");
        assert!(!tmp.path().join("r/root/1.json").exists());
    }
    let fx = Fx::new();
    let err = repo::rotate_root(
        &fx.repo,
        &[&fx.root_key],
        &[&fx.root_key],
        1,
        None,
        Some(&spec(&[&fx.ts_key], 1)),
        DAY,
        fx.now,
    )
    .unwrap_err();
    assert!(err.to_string().contains("timestamp role"), "{err}");
    assert!(!fx.repo.join("root/2.json").exists());
}

/// A root with `ts` in the timestamp role and `shared` in both the timestamp and policy roles.
fn shared_root(fx: &Fx, version: u64, policy_key: &SigningKey) -> Root {
    let keys = [&fx.root_key, &fx.ts_key, policy_key];
    Root {
        fleet: "gov-test".into(),
        version,
        expires: fx.now.plus(365 * DAY),
        keys: StrictMap(keys.iter().map(|k| (k.public().keyid().to_owned(), k.public().to_json_key())).collect()),
        roles: Roles {
            root: RoleKeys { keyids: vec![fx.root_key.public().keyid().into()], threshold: 1 },
            timestamp: RoleKeys {
                keyids: vec![fx.ts_key.public().keyid().into(), policy_key.public().keyid().into()],
                threshold: 1,
            },
            policy: RoleKeys { keyids: vec![policy_key.public().keyid().into()], threshold: 1 },
        },
    }
}

/// Finding 4, client side: a new root giving the timestamp role a policy key is refused, and
/// the device stays on its root; a shipped anchor that already shares a key keeps enforcing
/// and reports itself degraded, naming the key and the roles.
#[test]
fn the_client_refuses_a_new_root_sharing_keys_and_reports_a_shared_anchor() {
    let fx = Fx::new();
    let p = fx.publish_policy(1, vec![ban("wechat", "wechat")], &[&fx.policy_key]);
    fx.publish_ts(1, p.clone(), &fx.ts_key);
    let mut s = fx.open();
    assert!(fx.update(&mut s).is_ok());
    assert_eq!(s.key_sharing(), None);
    let root2 = shared_root(&fx, 2, &fx.policy_key);
    std::fs::write(fx.repo.join("root/2.json"), dsse::sign(ROOT_TYPE, &root2.to_bytes(), &[&fx.root_key])).unwrap();
    let err = fx.update(&mut s).unwrap_err();
    assert!(matches!(err, UpdateError::SharedKeys { .. }), "{err}");
    assert_eq!(err.kind(), "shared-keys");
    assert_eq!(s.root().version, 1);
    std::fs::remove_file(fx.repo.join("root/2.json")).unwrap();

    // A device shipped with such an anchor.
    let anchor = dsse::sign(ROOT_TYPE, &shared_root(&fx, 1, &fx.policy_key).to_bytes(), &[&fx.root_key]);
    let store = fx._tmp.path().join("shared-state");
    let (mut shared, _) = TrustedState::open(&store, &anchor, &[]).unwrap();
    let t = FileTransport::new(&fx.repo);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert!(matches!(rt.block_on(shared.update(&t, fx.now, &[])), Ok(UpdateOutcome::NewPolicy(_))), "keeps enforcing");
    let problem = shared.key_sharing().expect("reported");
    assert!(problem.contains(fx.policy_key.public().keyid()) && problem.contains("policy role"), "{problem}");
    assert_eq!(shared.staleness(fx.now), Some(problem), "status shows the device degraded");
}

fn tool(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_embargo-policy")).args(args).output().expect("run embargo-policy")
}

/// The same through the admin tool binary: `init` with one key for every role fails naming
/// the problem, and `timestamp` ignores a planted unsigned timestamp.json claiming 2^64−2.
#[test]
fn the_admin_tool_refuses_shared_keys_and_ignores_a_planted_timestamp() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let (key, ts, pol, repo) = (d.join("one.key"), d.join("ts.key"), d.join("pol.key"), d.join("repo"));
    for k in [&key, &ts, &pol] {
        assert!(tool(&["keygen", &s(k)]).status.success());
    }
    let out = tool(&[
        "init",
        "--repo",
        &s(&repo),
        "--fleet",
        "gov",
        "--root-key",
        &s(&key),
        "--timestamp-key",
        &s(&key),
        "--policy-key",
        &s(&key),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timestamp role"), "{err}");
    assert!(!repo.join("root/1.json").exists());

    let ok = |args: &[&str]| {
        let out = tool(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&[
        "init",
        "--repo",
        &s(&repo),
        "--fleet",
        "gov",
        "--root-key",
        &s(&key),
        "--timestamp-key",
        &s(&ts),
        "--policy-key",
        &s(&pol),
    ]);
    let toml = d.join("p.toml");
    std::fs::write(&toml, embargo_policy::example::WECHAT_KASPERSKY_TOML).unwrap();
    ok(&["sign", "--repo", &s(&repo), "--key", &s(&pol), &s(&toml)]);
    let planted = Timestamp {
        fleet: "gov".into(),
        version: u64::MAX - 1,
        expires: Time::now().plus(DAY),
        policy: PolicyPointer { version: 1, sha256: "0".repeat(64), length: 1 },
    };
    let attacker = SigningKey::generate();
    std::fs::write(repo.join("timestamp.json"), dsse::sign(TIMESTAMP_TYPE, &planted.to_bytes(), &[&attacker])).unwrap();
    let out = ok(&["timestamp", "--repo", &s(&repo), "--key", &s(&ts)]);
    let version: u64 = out.split_whitespace().nth(1).unwrap().trim_start_matches('v').parse().unwrap();
    assert!(version <= Time::now().0 + repo::TIMESTAMP_VERSION_SLACK, "{out}");
    let out = ok(&["verify", &s(&repo), "--root", &s(&repo.join("root/1.json"))]);
    assert!(out.contains("policy v1"), "{out}");
}

/// Finding 2's second half: the compiled rule set is bounded on its own, so even a policy the
/// policy keys signed cannot make devices hold more than `compiled_budget(payload)` (4× the
/// payload plus 1 MiB, at most 192 MiB) of compiled index. Dense short signers cost ~6 payload
/// bytes each and far more than 24 bytes each once indexed.
#[test]
fn a_policy_compiling_past_its_bound_is_refused_while_parsing() {
    let mut text = String::from(
        r#"{"fleet":"gov-test","version":1,"issued":"2026-06-01T00:00:00Z","expires":"2026-07-01T00:00:00Z","rules":["#,
    );
    let mut n = 0u64;
    // 920,000 signers: just past a doubling of the index table (hashbrown grows at 7/8 full).
    for r in 0..10 {
        if r > 0 {
            text.push(',');
        }
        text.push_str(&format!(r#"{{"id":"r{r}","action":"remove","match":["#));
        for m in 0..10 {
            if m > 0 {
                text.push(',');
            }
            let signers: Vec<String> = (0..9_200)
                .map(|_| {
                    n += 1;
                    format!("\"{}\"", radix36(n))
                })
                .collect();
            text.push_str(&format!(r#"{{"signer":[{}]}}"#, signers.join(",")));
        }
        text.push_str("]}");
    }
    text.push_str("]}");
    let budget = embargo_policy::metadata::compiled_budget(text.len());
    assert_eq!(budget, text.len() * 4 + 1024 * 1024);
    let err = match Policy::parse_compiled(text.as_bytes(), &[]) {
        Ok((_, set)) => panic!("compiled to ~{} bytes, budget {budget}", set.approx_bytes()),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("compiled rules would take more than") && err.contains(&budget.to_string()), "{err}");

    // The same shape at a tenth of the size compiles: the bound is not hit by ordinary policies.
    let small = text.split(r#"{"id":"r1""#).next().unwrap().trim_end_matches(',').to_owned() + "]}";
    let (header, set) = Policy::parse_compiled(small.as_bytes(), &[]).unwrap();
    assert_eq!(header.rule_count, 1);
    assert!(set.approx_bytes() <= embargo_policy::metadata::compiled_budget(small.len()));
}

fn radix36(mut x: u64) -> String {
    let mut s = String::new();
    loop {
        s.push(b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize] as char);
        x /= 36;
        if x == 0 {
            return s;
        }
    }
}

/// A `trust.json` written before signers were recorded still opens; without known signers a
/// policy-role change resets the floor (the old behaviour), and the next verified policy
/// records its signers again.
#[test]
fn a_trust_file_without_recorded_signers_opens_and_falls_back_to_resetting() {
    let fx = Fx::new();
    let v2 = fx.publish_policy(2, vec![ban("wechat", "wechat")], &[&fx.policy_key]);
    fx.publish_ts(1, v2, &fx.ts_key);
    let mut s = fx.open();
    assert!(fx.update(&mut s).is_ok());
    assert_eq!(s.policy().unwrap().signed_by, vec![fx.policy_key.public().keyid().to_owned()]);
    let path = fx.store.join("trust.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(state["policy"].as_object_mut().unwrap().remove("signed_by").is_some());
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();

    let mut old = fx.open();
    assert_eq!(old.policy().unwrap().version, 2);
    assert!(old.policy().unwrap().signed_by.is_empty());
    let second = SigningKey::generate();
    fx.rotate(Some(&spec(&[&fx.policy_key, &second], 1)));
    let v1 = fx.publish_policy(1, vec![], &[&second]);
    fx.publish_ts(2, v1, &fx.ts_key);
    assert!(matches!(fx.update(&mut old), Ok(UpdateOutcome::NewPolicy(_))), "floor reset: no signers known");
    assert_eq!(old.policy().unwrap().signed_by, vec![second.public().keyid().to_owned()]);
}
