//! The control-socket protocol between `embargoctl` and `embargod`: one JSON line each way.
//! `{"v":1,"request":{"method":"status"}}` → `{"ok":true,"result":{...}}` or
//! `{"ok":false,"code":"denied","error":"..."}`. These types are the API boundary (they derive
//! serde); the daemon's internal state does not.

use embargo_policy::app::App;
use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;
pub const STATUS_SCHEMA_VERSION: u32 = 1;
/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    pub v: u32,
    pub request: Request,
}

/// Most inventory entries one `inventory` answer carries (the daemon never builds more at once).
pub const INVENTORY_PAGE: usize = 1000;
/// Most manifests one `quarantine list` answer carries.
pub const QUARANTINE_PAGE: usize = 500;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    /// One page of the inventory: at most `limit` (≤ `INVENTORY_PAGE`) entries from `offset`;
    /// the answer's `next` is the offset of the following page, absent on the last one.
    Inventory {
        #[serde(default)]
        offset: usize,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Which rule would act on this app (the client identified it).
    Evaluate {
        app: App,
    },
    /// One page of the quarantine store, oldest first: at most `limit` (≤ `QUARANTINE_PAGE`)
    /// items after the id `after`; the answer's `next` is the `after` of the following page,
    /// absent on the last one.
    QuarantineList {
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Audit log entries after `since`, at most `limit` (≤ `audit::EVENTS_PAGE`); the answer's
    /// `next` is the `since` of the following page and `more` says whether there is one.
    Events {
        since: u64,
        limit: usize,
    },
    /// Checks the audit log's whole hash chain across its rotated files (root; off the loop,
    /// one at a time).
    EventsVerify,
    Sync,
    Scan,
    QuarantineRestore {
        id: String,
    },
    QuarantinePurge {
        id: String,
    },
    /// Act on what a policy update held back for exceeding the action cap.
    Confirm,
}

impl Request {
    /// Whether the request changes anything (root only).
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Request::Sync
                | Request::Scan
                | Request::QuarantineRestore { .. }
                | Request::QuarantinePurge { .. }
                | Request::Confirm
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Self {
        Self {
            ok: true,
            result: Some(serde_json::to_value(result).expect("result serializes")),
            code: None,
            error: None,
        }
    }

    pub fn err(code: &str, error: impl Into<String>) -> Self {
        Self { ok: false, result: None, code: Some(code.into()), error: Some(error.into()) }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub mode: String,
    pub health: String,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncError {
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PolicyStatus {
    pub repository: String,
    pub fleet: String,
    pub root_version: u64,
    pub policy_version: Option<u64>,
    pub issued: Option<String>,
    pub expires: Option<String>,
    pub timestamp_version: Option<u64>,
    pub timestamp_expires: Option<String>,
    pub rule_count: usize,
    pub sha256: Option<String>,
    pub last_success: Option<String>,
    pub last_attempt: Option<String>,
    pub last_error: Option<SyncError>,
    pub stale: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceStatus {
    pub kind: String,
    pub path: String,
    pub apps_seen: usize,
    pub watch: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionRecord {
    pub time: String,
    pub action: String,
    pub result: String,
    pub rule: String,
    pub strength: String,
    pub app_kind: String,
    pub app_id: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_id: Option<String>,
    /// From the filesystem event (or scan) to the action being done.
    pub micros: u64,
    /// Who owns what was acted on: the file's owner, or a package's installation's user;
    /// absent for system packages and in records written before it existed. Non-root callers
    /// of `events` and `status` see the records they own (issue 10, finding 14).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
    /// The app's version as the agent read it (package version, APK version code, an
    /// AppImage's `X-AppImage-Version`), when it knows one; fleet reports carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Counters {
    pub detected: u64,
    pub audited: u64,
    pub quarantined: u64,
    pub purged: u64,
    pub restored: u64,
    pub failed: u64,
    pub protected_skipped: u64,
    pub rescans: u64,
    pub events: u64,
    /// Files no hash could be taken of (over `max_hash_bytes`, too slow, unreadable).
    #[serde(default)]
    pub unhashed: u64,
    /// Execs the exec gate denied.
    #[serde(default)]
    pub exec_denied: u64,
    /// Banned processes the running-process sweep killed.
    #[serde(default)]
    pub processes_killed: u64,
}

/// The exec gate's counters (`exec_gate::GateStats`), in `status` when `[exec] enabled`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct ExecGateStatus {
    pub events: u64,
    pub allowed: u64,
    pub denied: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_resets: u64,
    pub deadline: u64,
    pub queue_full: u64,
    pub errors: u64,
    pub spared: u64,
    pub overflows: u64,
    pub hashed: u64,
    pub events_dropped: u64,
    pub marks: u64,
    pub policy_updates: u64,
    /// Allowed files left to the kernel's cache (their next execs raise no event).
    #[serde(default)]
    pub kernel_cached: u64,
    #[serde(default)]
    pub kernel_flushes: u64,
}

/// A file the agent did not hash, and why (status shows the most recent ones).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnhashedRecord {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnforcementStatus {
    pub counters: Counters,
    pub last_actions: Vec<ActionRecord>,
    /// Files in the inventory without a hash, and why (at most `UNHASHED_SHOWN`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unhashed: Vec<UnhashedRecord>,
}

/// Most unhashed files `status` lists (the counter counts them all).
pub const UNHASHED_SHOWN: usize = 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuarantineStatus {
    pub items: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingStatus {
    /// Apps a policy update would act on, held back because they exceed the action cap.
    pub needs_confirmation: usize,
    /// Reports spooled and not yet acknowledged by the fleet server (0 without `[report]`).
    pub reports: usize,
    /// The reporter's state, when `[report]` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::report::ReportStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub schema_version: u32,
    pub daemon: DaemonStatus,
    pub policy: PolicyStatus,
    pub sources: Vec<SourceStatus>,
    pub enforcement: EnforcementStatus,
    pub quarantine: QuarantineStatus,
    pub pending: PendingStatus,
    /// The exec gate's counters; absent when `[exec]` is not enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_gate: Option<ExecGateStatus>,
}
