//! Bounds on what a payload may contain. Byte caps on the documents bound memory; these bound
//! the shapes inside them so that a signed-but-absurd document is refused with a clear reason.

pub const FLEET_LEN: usize = 128;
pub const MAX_KEYS: usize = 64;
pub const MAX_KEYIDS_PER_ROLE: usize = 64;
pub const MAX_RULES: usize = 200_000;
pub const RULE_ID_LEN: usize = 128;
pub const DESCRIPTION_LEN: usize = 1024;
pub const MAX_MATCHERS: usize = 64;
pub const PATTERN_LEN: usize = 256;
pub const MAX_LIST: usize = 10_000;
pub const MAX_TAGS: usize = 64;
pub const TAG_LEN: usize = 64;
/// Byte caps on fetched documents.
pub const ROOT_BYTES: u64 = 64 * 1024;
pub const TIMESTAMP_BYTES: u64 = 16 * 1024;
pub const POLICY_BYTES: u64 = 64 * 1024 * 1024;
pub const MAX_ROOT_ROTATIONS: u64 = 1024;
/// The compiled rule set may take at most this many times the payload's bytes...
pub const COMPILED_PER_PAYLOAD_BYTE: usize = 4;
/// ...plus this much (small policies have fixed overheads)...
pub const COMPILED_BASE_BYTES: usize = 1024 * 1024;
/// ...and never more than this, whatever the payload.
pub const COMPILED_MAX_BYTES: usize = 192 * 1024 * 1024;
