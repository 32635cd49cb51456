//! Property tests: arbitrary bytes (and mutations of valid documents) fed to every parser that
//! sees untrusted input must produce a value or an error, never a panic.

use embargo_policy::dsse::{self, Envelope};
use embargo_policy::keys::SigningKey;
use embargo_policy::metadata::{Policy, Root, Timestamp, POLICY_TYPE};
use proptest::prelude::*;

fn valid_policy_envelope() -> (Vec<u8>, SigningKey) {
    let key = SigningKey::generate();
    let src = embargo_policy::authoring::parse("p.toml", embargo_policy::example::WECHAT_KASPERSKY_TOML).unwrap();
    let p = Policy {
        fleet: "f".into(),
        version: 1,
        issued: embargo_policy::metadata::Time(0),
        expires: embargo_policy::metadata::Time(10),
        rules: src.rules,
    };
    (dsse::sign(POLICY_TYPE, &p.to_bytes(), &[&key]), key)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(env) = Envelope::decode(&bytes) {
            let key = SigningKey::generate();
            let _ = env.verify(&[key.public()], 1);
        }
        let _ = Root::parse(&bytes);
        let _ = Timestamp::parse(&bytes);
        let _ = Policy::parse(&bytes);
        let _ = embargo_policy::inventory::Inventory::parse(&bytes);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = embargo_policy::authoring::parse("fuzz.toml", text);
            let _ = embargo_policy::version::Constraint::parse(text);
        }
    }

    #[test]
    fn json_shaped_input_never_panics(text in r#"\{("[a-z]{1,8}":(\d{1,3}|"[ -~]{0,12}"|\[\]|\{\}|null|true),?){0,6}\}"#) {
        let _ = Envelope::decode(text.as_bytes());
        let _ = Root::parse(text.as_bytes());
        let _ = Timestamp::parse(text.as_bytes());
        let _ = Policy::parse(text.as_bytes());
    }

    #[test]
    fn mutated_valid_envelopes_never_panic_and_never_verify_when_payload_changes(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
    ) {
        let (env_bytes, key) = valid_policy_envelope();
        let original = Envelope::decode(&env_bytes).unwrap().payload().to_vec();
        let mut bytes = env_bytes.clone();
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] ^= b | 1;
        }
        if let Ok(env) = Envelope::decode(&bytes) {
            let ok = env.verify(&[key.public()], 1).is_ok();
            if env.payload() != original.as_slice() || env.payload_type() != POLICY_TYPE {
                prop_assert!(!ok, "a changed payload or type verified");
            }
            let _ = Policy::parse(env.payload());
        }
    }

    #[test]
    fn versions_compare_without_panic_and_antisymmetrically(a in "[0-9a-z.~^:+_-]{0,12}", b in "[0-9a-z.~^:+_-]{0,12}") {
        for kind in [embargo_policy::rules::Kind::Deb, embargo_policy::rules::Kind::Rpm] {
            let ab = embargo_policy::version::compare(kind, &a, &b);
            let ba = embargo_policy::version::compare(kind, &b, &a);
            prop_assert_eq!(ab, ba.reverse(), "{} vs {}", a, b);
        }
    }

    #[test]
    fn globs_never_panic(p in "[a-z*?.]{0,20}", t in "[a-z.]{0,30}") {
        let _ = embargo_policy::glob::glob_match(&p, &t);
    }
}
