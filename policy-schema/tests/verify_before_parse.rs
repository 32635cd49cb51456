//! Issue 11, finding 2: no policy bytes reach the parser before the policy signatures verify.
//!
//! An attacker holding the timestamp key (or, before finding 3 was fixed, write access to the
//! repository) points devices at a 64 MiB policy of dense rules that the policy keys never
//! signed. Parsing it would compile millions of index entries (hundreds of MB). The update is
//! run in a child process (this test binary re-executed) that reads the policy through the real
//! file transport; its peak RSS (VmHWM) must stay within the document's size plus
//! [`OVERHEAD_MIB`]: the fetched bytes, decoded in place, hashed and signature-checked, and
//! nothing parsed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use embargo_policy::dsse;
use embargo_policy::keys::SigningKey;
use embargo_policy::metadata::{limits, PolicyPointer, Time, Timestamp, POLICY_TYPE, TIMESTAMP_TYPE};
use embargo_policy::repo::{self, RoleSpec};
use embargo_policy::transport::FileTransport;
use embargo_policy::trust::{sha256_hex, Signers, TrustedState, UpdateError};

/// What the child may use beyond the fetched document: the test binary, the runtime, the
/// anchor, buffers of a few KiB. Measured about 6–8 MiB; parsing the payload would add several
/// hundred.
const OVERHEAD_MIB: u64 = 24;
const CHILD_ENV: &str = "EMBARGO_VERIFY_BEFORE_PARSE_CHILD";

/// A policy payload of `target` bytes: rules whose matchers carry the longest signer lists the
/// schema allows, each signer a distinct short string (cheap to write, expensive to index).
fn dense_payload(target: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(target + 1024);
    out.extend_from_slice(
        br#"{"fleet":"gov-test","version":7,"issued":"2026-06-01T00:00:00Z","expires":"2026-07-01T00:00:00Z","rules":["#,
    );
    let mut n: u64 = 0;
    let mut rule = 0;
    'rules: loop {
        if rule > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!(r#"{{"id":"r{rule}","action":"remove","match":["#).as_bytes());
        for m in 0..limits::MAX_MATCHERS {
            if m > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"signer":["#);
            for s in 0..limits::MAX_LIST {
                if s > 0 {
                    out.push(b',');
                }
                out.push(b'"');
                let mut x = n;
                loop {
                    out.push(b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize]);
                    x /= 36;
                    if x == 0 {
                        break;
                    }
                }
                out.push(b'"');
                n += 1;
            }
            out.extend_from_slice(b"]}");
            if out.len() >= target {
                out.extend_from_slice(b"]}");
                break 'rules;
            }
        }
        out.extend_from_slice(b"]}");
        rule += 1;
    }
    out.extend_from_slice(b"]}");
    out
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The child: one update against the repository named in the environment. Prints the error
/// kind and its peak RSS. Does nothing unless run by the parent test (it has no meaning alone).
#[test]
fn child_process_entry_point() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let dir = Path::new(&dir);
    let anchor = std::fs::read(dir.join("repo/root/1.json")).unwrap();
    let mut state = TrustedState::from_anchor(&anchor).unwrap();
    let t = FileTransport::new(dir.join("repo"));
    let now = Time::parse("2026-06-01T00:00:00Z").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let result = rt.block_on(state.update(&t, now, &[]));
    let err = result.expect_err("an unsigned policy must be refused");
    let ok = matches!(&err, UpdateError::Signatures { signers: Signers::Policy, .. });
    println!("CHILD-RESULT kind={} policy-signatures={ok} hwm_kib={}", err.kind(), peak_rss_kib());
}

#[test]
fn an_unsigned_64_mib_policy_never_reaches_the_parser() {
    if !Path::new("/proc/self/status").exists() {
        eprintln!("SKIP: needs /proc/self/status (Linux) to read the child's peak RSS");
        assert!(std::env::var("EMBARGO_REQUIRE_TOOLS").is_err(), "EMBARGO_REQUIRE_TOOLS=1: /proc is required");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let now = Time::parse("2026-06-01T00:00:00Z").unwrap();
    let (root, ts, pol) = (SigningKey::generate(), SigningKey::generate(), SigningKey::generate());
    let spec = |k: &SigningKey| RoleSpec { keys: vec![k.public().clone()], threshold: 1 };
    repo::init(&repo_dir, "gov-test", &[&root], 1, &spec(&ts), &spec(&pol), Duration::from_secs(365 * 86_400), now)
        .unwrap();

    // Just under the policy cap once base64-encoded in its envelope.
    let payload = dense_payload((limits::POLICY_BYTES as usize - 256 * 1024) / 4 * 3);
    assert!(serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_ok(), "the payload is valid JSON");
    let attacker = SigningKey::generate();
    let envelope = dsse::sign(POLICY_TYPE, &payload, &[&attacker]);
    drop(payload);
    assert!(envelope.len() as u64 <= limits::POLICY_BYTES && envelope.len() > 63 * 1024 * 1024, "{}", envelope.len());
    let sha = sha256_hex(&envelope);
    std::fs::create_dir_all(repo_dir.join("policy")).unwrap();
    std::fs::write(repo_dir.join("policy").join(format!("{sha}.json")), &envelope).unwrap();
    // The timestamp is genuinely signed: the attacker holds the online key.
    let stamp = Timestamp {
        fleet: "gov-test".into(),
        version: 1,
        expires: now.plus(Duration::from_secs(86_400)),
        policy: PolicyPointer { version: 7, sha256: sha, length: envelope.len() as u64 },
    };
    std::fs::write(repo_dir.join("timestamp.json"), dsse::sign(TIMESTAMP_TYPE, &stamp.to_bytes(), &[&ts])).unwrap();
    let doc_kib = envelope.len() as u64 / 1024;
    drop(envelope);

    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_entry_point", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let at = stdout.find("CHILD-RESULT").unwrap_or_else(|| panic!("no result: {stdout}"));
    let line = stdout[at..].lines().next().unwrap();
    assert!(line.contains("kind=signatures policy-signatures=true"), "{line}");
    let hwm: u64 = line.rsplit("hwm_kib=").next().unwrap().parse().unwrap();
    let bound = doc_kib + OVERHEAD_MIB * 1024;
    eprintln!("child peak RSS {} MiB; document {} MiB; bound {} MiB", hwm / 1024, doc_kib / 1024, bound / 1024);
    assert!(hwm <= bound, "peak RSS {hwm} KiB over the bound {bound} KiB: unsigned bytes were parsed");
}
