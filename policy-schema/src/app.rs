//! An app as the agent sees it: the identity every source produces and every rule matches.
//!
//! This is a wire type: `embargoctl inventory --json` emits it and `embargo-policy impact
//! --inventory` reads it, so it carries a schema version (`Inventory::schema_version`).

use serde::{Deserialize, Serialize};

use crate::rules::Kind;

/// Current version of the inventory format.
pub const INVENTORY_SCHEMA_VERSION: u32 = 1;

/// Where an app is installed: for the whole system, or for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Scope {
    #[default]
    System,
    User(u32),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::System => f.write_str("system"),
            Scope::User(uid) => write!(f, "user({uid})"),
        }
    }
}

/// `{kind, id, name?, version?, publisher?, signers, sha256?, paths, scope}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub kind: Kind,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    #[serde(default)]
    pub signers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub scope: Scope,
}

impl App {
    pub fn new(kind: Kind, id: impl Into<String>) -> Self {
        Self {
            kind,
            id: id.into(),
            name: None,
            version: None,
            publisher: None,
            signers: Vec::new(),
            sha256: None,
            paths: Vec::new(),
            scope: Scope::System,
        }
    }
}

/// An inventory as `embargoctl inventory --json` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub schema_version: u32,
    pub apps: Vec<InventoryEntry>,
}

/// One app and, when the agent wrote it, the agent's verdict on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryEntry {
    pub app: App,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<crate::matcher::Verdict>,
}

impl Inventory {
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let inv: Inventory = serde_json::from_slice(bytes).map_err(|e| format!("inventory: {e}"))?;
        if inv.schema_version != INVENTORY_SCHEMA_VERSION {
            return Err(format!(
                "inventory schema_version {} is not supported (this build reads {INVENTORY_SCHEMA_VERSION})",
                inv.schema_version
            ));
        }
        Ok(inv)
    }
}
