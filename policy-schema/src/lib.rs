//! embargo-policy: the signed channel and the rule model shared by the agent, the server and the
//! admin tool.
//!
//! Layout:
//! - `dsse`: envelopes, PAE, signing and threshold verification over raw bytes.
//! - `keys`: Ed25519 public keys and private key files.
//! - `metadata`: the root, timestamp and policy payloads, parsed strictly.
//! - `trust`: the client's trusted state and the whole update check (root chain, timestamp,
//!   policy, rollback/freeze/fast-forward), persisted atomically.
//! - `transport`: the `Fetch` trait transports implement, and the file:// transport.
//! - `https` (feature `https`): the hardened HTTPS transport.
//! - `app`: the app identity that sources produce and the kinds of app (imports nothing else).
//! - `limits`: the bounds on payload shapes and fetched documents.
//! - `rules`, `matcher`, `version`, `glob`: the rule format, the indexed matcher, version
//!   ordering and globs.
//! - `inventory`: the inventory wire format (apps with verdicts).
//! - `authoring`: the admin's TOML policy format and its linter (errors with file:line).
//! - `repo`: repository operations of the admin tool (init, rotate-root, sign, timestamp).
//! - `example`: the example WeChat/Kaspersky policy.
//! - `export`: `embargo-policy export`, the signed policy in MDM and peer-tool formats.
//! - `cli`: the command-line contract of every binary (usage errors exit 64).
//! - `cli_spec`: the hidden `--dump-cli-spec` the package's man pages and completions come from.
#![forbid(unsafe_code)]

pub mod app;
pub mod authoring;
pub mod cli;
pub mod cli_spec;
pub mod dsse;
pub mod example;
pub mod export;
pub mod fsutil;
pub mod glob;
#[cfg(feature = "https")]
pub mod https;
pub mod inventory;
pub mod keys;
pub mod limits;
pub mod matcher;
pub mod metadata;
pub mod normalize;
mod policy_parser;
pub mod repo;
pub mod report;
pub mod rules;
pub mod schema;
/// The admin-TOML module's former name, kept for code written against it.
pub use authoring as source;
pub mod transport;
pub mod trust;
pub mod version;
