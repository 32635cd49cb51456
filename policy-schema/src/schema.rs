//! JSON Schema (draft 2020-12) of the signed formats, the rule model and the inventory, for
//! `embargo-policy schema`. Written by hand to stay readable; a test checks that every field
//! the Rust types serialize is described and that no described field is unknown to them.

use serde_json::{json, Value};

fn string(max: usize) -> Value {
    json!({"type": "string", "maxLength": max})
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time", "description": "RFC 3339 UTC, e.g. 2026-12-01T00:00:00Z"})
}

fn obj(required: &[&str], props: Value) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": required, "properties": props})
}

pub fn schema() -> Value {
    use crate::metadata::limits::*;
    let kinds: Vec<&str> = crate::rules::Kind::ALL.iter().map(|k| k.as_str()).collect();
    let sha = json!({"type": "string", "pattern": "^[0-9a-f]{64}$"});
    let role = obj(
        &["keyids", "threshold"],
        json!({
            "keyids": {"type": "array", "items": string(128), "maxItems": MAX_KEYIDS_PER_ROLE},
            "threshold": {"type": "integer", "minimum": 1}
        }),
    );
    let matcher = json!({
        "type": "object", "additionalProperties": false, "minProperties": 1,
        "description": "All present conditions must hold (AND).",
        "properties": {
            "kind": {"enum": kinds},
            "id": {"type": "string", "maxLength": PATTERN_LEN, "description": "exact or glob (* ?), case-sensitive"},
            "name": {"type": "string", "maxLength": PATTERN_LEN, "description": "case-insensitive glob"},
            "publisher": {"type": "string", "maxLength": PATTERN_LEN, "description": "case-insensitive glob"},
            "signer": {"type": "array", "items": string(PATTERN_LEN), "maxItems": MAX_LIST},
            "sha256": {"type": "array", "items": sha, "maxItems": MAX_LIST},
            "version": {"type": "string", "maxLength": PATTERN_LEN, "description": "e.g. <8.0.40 or >=1.0, <2.0"}
        }
    });
    let rule = obj(
        &["id", "action", "match"],
        json!({
            "id": string(RULE_ID_LEN),
            "description": string(DESCRIPTION_LEN),
            "action": {"enum": ["audit", "quarantine", "remove"]},
            "match": {"type": "array", "items": {"$ref": "#/$defs/matcher"}, "minItems": 1, "maxItems": MAX_MATCHERS},
            "except": {"type": "array", "items": {"$ref": "#/$defs/matcher"}, "maxItems": MAX_MATCHERS},
            "tags": {"type": "array", "items": string(TAG_LEN), "maxItems": MAX_TAGS}
        }),
    );
    let app = obj(
        &["kind", "id"],
        json!({
            "kind": {"enum": kinds},
            "id": {"type": "string"},
            "name": {"type": "string"},
            "version": {"type": "string"},
            "publisher": {"type": "string"},
            "signers": {"type": "array", "items": {"type": "string"}},
            "sha256": sha,
            "paths": {"type": "array", "items": {"type": "string"}},
            "scope": {"oneOf": [{"const": "system"}, obj(&["user"], json!({"user": {"type": "integer", "minimum": 0}}))]}
        }),
    );
    let verdict = obj(
        &["rule", "action", "strength"],
        json!({
            "rule": {"type": "string"},
            "action": {"enum": ["audit", "quarantine", "remove"]},
            "strength": {"enum": ["weak", "strong"]},
            "description": {"type": "string"}
        }),
    );
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "embargo formats",
        "$defs": {
            "envelope": obj(&["payloadType", "payload", "signatures"], json!({
                "payloadType": {"enum": [crate::metadata::ROOT_TYPE, crate::metadata::TIMESTAMP_TYPE, crate::metadata::POLICY_TYPE]},
                "payload": {"type": "string", "contentEncoding": "base64"},
                "signatures": {"type": "array", "minItems": 1, "maxItems": crate::dsse::MAX_SIGNATURES,
                    "items": obj(&["sig"], json!({"keyid": string(128), "sig": {"type": "string", "contentEncoding": "base64"}}))}
            })),
            "root": obj(&["fleet", "version", "expires", "keys", "roles"], json!({
                "fleet": string(FLEET_LEN),
                "version": {"type": "integer", "minimum": 1},
                "expires": time(),
                "keys": {"type": "object", "maxProperties": MAX_KEYS, "additionalProperties":
                    obj(&["keytype", "public"], json!({"keytype": {"const": "ed25519"}, "public": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}))},
                "roles": obj(&["root", "timestamp", "policy"], json!({"root": role, "timestamp": role, "policy": role}))
            })),
            "timestamp": obj(&["fleet", "version", "expires", "policy"], json!({
                "fleet": string(FLEET_LEN),
                "version": {"type": "integer", "minimum": 0},
                "expires": time(),
                "policy": obj(&["version", "sha256", "length"], json!({
                    "version": {"type": "integer", "minimum": 1}, "sha256": sha, "length": {"type": "integer", "minimum": 1, "maximum": POLICY_BYTES}
                }))
            })),
            "policy": obj(&["fleet", "version", "issued", "expires", "rules"], json!({
                "fleet": string(FLEET_LEN),
                "version": {"type": "integer", "minimum": 1},
                "issued": time(),
                "expires": time(),
                "rules": {"type": "array", "items": {"$ref": "#/$defs/rule"}, "maxItems": MAX_RULES}
            })),
            "rule": rule,
            "matcher": matcher,
            "app": app,
            "verdict": verdict,
            "inventory": obj(&["schema_version", "apps"], json!({
                "schema_version": {"const": crate::inventory::INVENTORY_SCHEMA_VERSION},
                "apps": {"type": "array", "items": obj(&["app"], json!({"app": {"$ref": "#/$defs/app"}, "verdict": {"$ref": "#/$defs/verdict"}}))}
            }))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{App, Scope};
    use crate::inventory::{Inventory, InventoryEntry};
    use crate::matcher::{Strength, Verdict};
    use crate::metadata::*;
    use crate::rules::*;

    /// Every key of `value` (recursively through objects) must be a property of `schema`, and
    /// every property of `schema` must appear in `value` (the sample is fully populated).
    fn same_fields(def: &str, value: &Value) {
        let s = schema();
        let props = s["$defs"][def]["properties"].as_object().unwrap_or_else(|| panic!("{def} has properties"));
        let obj = value.as_object().unwrap();
        let mut a: Vec<&String> = props.keys().collect();
        let mut b: Vec<&String> = obj.keys().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "schema of {def} and the Rust type disagree");
    }

    #[test]
    fn schema_describes_exactly_the_serialized_fields() {
        let full_matcher = Matcher {
            kind: Some(Kind::Deb),
            id: Some("a".into()),
            name: Some("b".into()),
            publisher: Some("c".into()),
            signer: vec!["d".into()],
            sha256: vec!["e".repeat(64)],
            version: Some("<1".into()),
        };
        same_fields("matcher", &serde_json::to_value(&full_matcher).unwrap());
        let rule = Rule {
            id: "r".into(),
            description: "d".into(),
            action: Action::Remove,
            matchers: vec![full_matcher.clone()],
            except: vec![full_matcher],
            tags: vec!["t".into()],
        };
        same_fields("rule", &serde_json::to_value(&rule).unwrap());
        let policy = Policy { fleet: "f".into(), version: 1, issued: Time(0), expires: Time(1), rules: vec![rule] };
        same_fields("policy", &serde_json::to_value(&policy).unwrap());
        let ts = Timestamp {
            fleet: "f".into(),
            version: 1,
            expires: Time(1),
            policy: PolicyPointer { version: 1, sha256: "a".repeat(64), length: 1 },
        };
        same_fields("timestamp", &serde_json::to_value(&ts).unwrap());
        let app = App {
            kind: Kind::Deb,
            id: "x".into(),
            name: Some("n".into()),
            version: Some("1".into()),
            publisher: Some("p".into()),
            signers: vec!["s".into()],
            sha256: Some("a".repeat(64)),
            paths: vec!["/x".into()],
            scope: Scope::User(1000),
        };
        same_fields("app", &serde_json::to_value(&app).unwrap());
        let verdict =
            Verdict { rule: "r".into(), action: Action::Audit, strength: Strength::Weak, description: "d".into() };
        same_fields("verdict", &serde_json::to_value(&verdict).unwrap());
        let inv = Inventory { schema_version: 1, apps: vec![InventoryEntry { app, verdict: Some(verdict) }] };
        same_fields("inventory", &serde_json::to_value(&inv).unwrap());
        same_fields(
            "envelope",
            &serde_json::from_slice(&crate::dsse::sign("t", b"x", &[&crate::keys::SigningKey::generate()])).unwrap(),
        );
    }
}
