//! An inventory as `embargoctl inventory --json` writes it and `embargo-policy impact
//! --inventory` reads it: apps with the agent's verdicts. A wire type with a schema version.

use serde::{Deserialize, Serialize};

use crate::app::App;

/// Current version of the inventory format.
pub const INVENTORY_SCHEMA_VERSION: u32 = 1;

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
