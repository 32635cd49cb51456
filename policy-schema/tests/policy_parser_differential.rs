//! Differential property tests: the hand-written policy parser (`Policy::parse_compiled`) must
//! accept exactly the documents the strict serde parser (`Policy::parse_compiled_serde`) accepts,
//! compile them to the same rule set, and never panic — on valid policies, on mutations of
//! them, on JSON-shaped documents built from valid and invalid pieces, and on arbitrary bytes.

use embargo_policy::app::App;
use embargo_policy::metadata::{Policy, Time};
use embargo_policy::rules::Kind;
use proptest::prelude::*;

fn example_policy() -> Vec<u8> {
    let src = embargo_policy::authoring::parse("p.toml", embargo_policy::example::WECHAT_KASPERSKY_TOML).unwrap();
    Policy { fleet: "f".into(), version: 7, issued: Time(0), expires: Time(1_000_000), rules: src.rules }.to_bytes()
}

fn probe_apps() -> Vec<App> {
    let mut apps = Vec::new();
    for kind in [Kind::Deb, Kind::Android, Kind::Macos, Kind::Flatpak, Kind::Appimage] {
        for id in ["com.tencent.xin", "com.tencent.mm", "wechat", "com.kaspersky.kes", "com.kaspersky.allowed", "x"] {
            let mut a = App::new(kind, id);
            a.name = Some("WeChat".into());
            a.version = Some("1.0".into());
            a.signers = vec!["2Y8XE5CQ94".into()];
            apps.push(a);
        }
    }
    apps
}

/// Both parsers on `bytes`: the same accept/refuse, and on accept the same header and verdicts.
fn same(bytes: &[u8]) -> Result<(), TestCaseError> {
    let fast = Policy::parse_compiled(bytes, &["mobile".into()]);
    let slow = Policy::parse_compiled_serde(bytes, &["mobile".into()]);
    match (&fast, &slow) {
        (Ok((hf, sf)), Ok((hs, ss))) => {
            prop_assert_eq!(hf, hs);
            prop_assert_eq!(sf.len(), ss.len());
            for app in probe_apps() {
                prop_assert_eq!(sf.matches(&app), ss.matches(&app), "{:?}", app);
            }
        }
        (Err(_), Err(_)) => {}
        _ => prop_assert!(
            false,
            "parsers disagree on {:?}: hand-written {:?}, serde {:?}",
            String::from_utf8_lossy(bytes),
            fast.as_ref().map(|(h, _)| h).map_err(|e| e.to_string()),
            slow.as_ref().map(|(h, _)| h).map_err(|e| e.to_string())
        ),
    }
    Ok(())
}

#[test]
fn the_example_policy_parses_the_same_both_ways() {
    let bytes = example_policy();
    Policy::parse_compiled(&bytes, &[]).expect("the example policy parses");
    same(&bytes).unwrap();
}

/// A policy whose first 256 rules compile past the size bound (checked every 256 rules) and
/// whose rule `bad_at` has an unknown action: the error reported is whichever comes first in
/// the document.
fn over_budget_with_a_bad_rule(bad_at: usize) -> Vec<u8> {
    let mut text = String::from(
        r#"{"fleet":"f","version":1,"issued":"2026-06-01T00:00:00Z","expires":"2026-07-01T00:00:00Z","rules":["#,
    );
    let mut n = 0u64;
    for r in 0..300 {
        if r > 0 {
            text.push(',');
        }
        let action = if r == bad_at { "nope" } else { "remove" };
        text.push_str(&format!(r#"{{"id":"r{r}","action":"{action}","match":[{{"#));
        if r < 256 {
            // 3,600 × 256 = 921,600 distinct short signers: ~6 payload bytes each, far more
            // once indexed, just past a doubling of the signer table (as in channel_hardening.rs).
            let signers: Vec<String> = (0..3_600)
                .map(|_| {
                    n += 1;
                    format!("\"{}\"", radix36(n))
                })
                .collect();
            text.push_str(&format!(r#""signer":[{}]}}]}}"#, signers.join(",")));
        } else {
            text.push_str(&format!(r#""id":"app{r}"}}]}}"#));
        }
    }
    text.push_str("]}");
    text.into_bytes()
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

#[test]
fn errors_come_in_document_order() {
    for (bad_at, expected) in [(280, "compiled rules would take more than"), (100, "unknown action")] {
        let doc = over_budget_with_a_bad_rule(bad_at);
        let one = Policy::parse_compiled(&doc, &[]).map(|_| ()).unwrap_err().to_string();
        assert!(one.contains(expected), "bad rule at {bad_at}: {one}");
        assert!(Policy::parse_compiled_serde(&doc, &[]).is_err());
    }
    // A duplicate id (found where rules are indexed) before a bad rule (found where they are
    // parsed): the duplicate is named.
    let rules: Vec<String> = (0..300)
        .map(|r| {
            let id = if r == 5 { 1 } else { r };
            let action = if r == 280 { "nope" } else { "remove" };
            format!(r#"{{"id":"r{id}","action":"{action}","match":[{{"id":"app{r}"}}]}}"#)
        })
        .collect();
    let doc = format!(
        r#"{{"fleet":"f","version":1,"issued":"2026-06-01T00:00:00Z","expires":"2026-07-01T00:00:00Z","rules":[{}]}}"#,
        rules.join(",")
    );
    let one = Policy::parse_compiled(doc.as_bytes(), &[]).map(|_| ()).unwrap_err().to_string();
    assert!(one.contains(r#"rule id "r1" is used twice"#), "{one}");
    // A duplicate and nothing else wrong (the parser's first pass defers the id check to
    // after the last rule; its second pass names the id and where, as the serde path does).
    let rules: Vec<String> = (0..300)
        .map(|r| {
            let id = if r == 299 { 3 } else { r };
            format!(r#"{{"id":"r{id}","action":"remove","match":[{{"id":"app{r}"}}]}}"#)
        })
        .collect();
    let doc = format!(
        r#"{{"fleet":"f","version":1,"issued":"2026-06-01T00:00:00Z","expires":"2026-07-01T00:00:00Z","rules":[{}]}}"#,
        rules.join(",")
    );
    let one = Policy::parse_compiled(doc.as_bytes(), &[]).map(|_| ()).unwrap_err().to_string();
    let serde = Policy::parse_compiled_serde(doc.as_bytes(), &[]).map(|_| ()).unwrap_err().to_string();
    assert!(one.contains(r#"rule id "r3" is used twice"#), "{one}");
    assert!(serde.contains(r#"rule id "r3" is used twice"#), "{serde}");
    // Without the bad rule the bound alone refuses it, and it is the bound that is named.
    let doc = over_budget_with_a_bad_rule(usize::MAX);
    let one = Policy::parse_compiled(&doc, &[]).map(|_| ()).unwrap_err().to_string();
    assert!(one.contains("compiled rules would take more than"), "{one}");
}

/// Hand-picked edge cases of strict JSON and of the policy's shape.
#[test]
fn edge_cases_are_refused_or_accepted_alike() {
    let rule = r#"{"id":"r","action":"remove","match":[{"id":"x"}]}"#;
    let doc = |fields: &str| {
        format!(r#"{{"fleet":"f","issued":"2026-01-01T00:00:00Z","expires":"2027-01-01T00:00:00Z",{fields}}}"#)
    };
    let cases = [
        doc(&format!(r#""version":1,"rules":[{rule}]"#)),
        doc(&format!(r#""version":1,"rules":[{rule},]"#)),
        doc(&format!(r#""version":01,"rules":[{rule}]"#)),
        doc(&format!(r#""version":1.0,"rules":[{rule}]"#)),
        doc(&format!(r#""version":1e2,"rules":[{rule}]"#)),
        doc(&format!(r#""version":-1,"rules":[{rule}]"#)),
        doc(&format!(r#""version":-0,"rules":[{rule}]"#)),
        doc(&format!(r#""version":18446744073709551615,"rules":[{rule}]"#)),
        doc(&format!(r#""version":18446744073709551616,"rules":[{rule}]"#)),
        doc(&format!(r#""version":null,"rules":[{rule}]"#)),
        doc(&format!(r#""version":"1","rules":[{rule}]"#)),
        doc(&format!(r#""version":1,"version":1,"rules":[{rule}]"#)),
        doc(&format!(r#""version":1,"rules":[{rule}],"extra":1"#)),
        doc(r#""version":1"#),
        doc(r#""version":1,"rules":[]"#),
        doc(r#""version":1,"rules":null"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"x","id":"y"}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"x","size":1}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"x","kind":null}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"x","kind":"deb"}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"x","kind":"Deb"}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"x","name":null}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"x","signer":null}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"x","sha256":[]}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"\u0078"}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"\u0069d":"x"}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"\ud83d\ude00"}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"\ud83d"}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"\ude00x"}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"a\qb"}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"a	b"}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"delete","match":[{"id":"x"}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","match":[{"id":"x"}]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"x"}],"description":null}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"x"}],"tags":["mobile"]}]"#),
        doc(r#""version":1,"rules":[{"id":"r","action":"remove","match":[{"id":"x"}],"except":[{"id":"y"}]}]"#),
        doc(&format!(r#""version":1,"rules":[{rule},{rule}]"#)),
        doc(&format!(r#""version":1,"rules":[{rule}]}} "#)),
        doc(&format!(r#""version":1,"rules":[{rule}]  "#)),
        format!(" \n\t{}\r\n", doc(&format!(r#""version":1,"rules":[{rule}]"#))),
        format!("\u{feff}{}", doc(&format!(r#""version":1,"rules":[{rule}]"#))),
        "[]".into(),
        "".into(),
        "null".into(),
        "{}".into(),
    ];
    for case in &cases {
        same(case.as_bytes()).unwrap();
    }
    let err = Policy::parse_compiled(cases[12].as_bytes(), &[]).unwrap_err().to_string();
    assert!(err.contains("unknown field `extra`") && err.contains("line 1 column"), "{err}");
    let err = Policy::parse_compiled(cases[3].as_bytes(), &[]).unwrap_err().to_string();
    assert!(err.contains("floating-point"), "{err}");
}

/// Pieces of a JSON policy, valid and invalid, to assemble documents from.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#""x""#.to_string()),
        Just(r#""com.tencent.*""#.to_string()),
        Just(format!("\"{}\"", "ab".repeat(32))),
        Just(format!("[\"{}\"]", "0f".repeat(32))),
        Just(r#"["2Y8XE5CQ94"]"#.to_string()),
        Just(r#""<2.0""#.to_string()),
        Just(r#""deb""#.to_string()),
        Just("null".to_string()),
        Just("1".to_string()),
        Just("1.5".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("true".to_string()),
        Just(r#""\u0041\n""#.to_string()),
    ]
}

fn matcher() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec!["kind", "id", "name", "publisher", "signer", "sha256", "version", "size"]);
    prop::collection::vec((key, value()), 0..4).prop_map(|fields| {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    })
}

fn rule() -> impl Strategy<Value = String> {
    let id = prop::sample::select(vec!["\"r1\"", "\"r2\"", "\"\"", "1", "null"]);
    let action = prop::sample::select(vec!["\"remove\"", "\"audit\"", "\"quarantine\"", "\"drop\"", "null"]);
    let extra = prop::sample::select(vec![
        "",
        ",\"description\":\"d\"",
        ",\"tags\":[\"mobile\"]",
        ",\"tags\":[\"desk\"]",
        ",\"except\":[{\"id\":\"x\"}]",
        ",\"id\":\"dup\"",
        ",\"other\":1",
    ]);
    (id, action, prop::collection::vec(matcher(), 0..3), extra, any::<bool>()).prop_map(
        |(id, action, ms, extra, has_action)| {
            let action = if has_action { format!(",\"action\":{action}") } else { String::new() };
            format!("{{\"id\":{id}{action},\"match\":[{}]{extra}}}", ms.join(","))
        },
    )
}

fn document() -> impl Strategy<Value = String> {
    let version = prop::sample::select(vec!["1", "0", "01", "-1", "2.0", "\"1\"", "99999999999999999999"]);
    (version, prop::collection::vec(rule(), 0..4), any::<bool>()).prop_map(|(version, rules, tail)| {
        format!(
            r#"{{"fleet":"f","version":{version},"issued":"2026-01-01T00:00:00Z","expires":"2027-01-01T00:00:00Z","rules":[{}]}}{}"#,
            rules.join(","),
            if tail { "" } else { " " }
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn assembled_documents_parse_alike(doc in document()) {
        same(doc.as_bytes())?;
    }

    #[test]
    fn mutated_valid_policies_parse_alike(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4)
    ) {
        let mut bytes = example_policy();
        for (i, b, op) in edits {
            let at = i.index(bytes.len());
            match op {
                0 => bytes[at] = b,
                1 => { bytes.remove(at); }
                _ => bytes.insert(at, b),
            }
        }
        same(&bytes)?;
    }

    #[test]
    fn mutated_valid_policies_with_json_bytes_parse_alike(
        edits in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(br#"{}[],:"\ 0-1.eEnul/u"#.to_vec())), 1..3)
    ) {
        let mut bytes = example_policy();
        for (i, b) in edits {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        same(&bytes)?;
    }

    #[test]
    fn arbitrary_bytes_parse_alike(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        same(&bytes)?;
    }
}
