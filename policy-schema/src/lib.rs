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
//! - `rules`, `matcher`, `version`, `glob`, `app`: the rule format, the indexed matcher, version
//!   ordering, and the app identity that sources produce.
//! - `source`: the admin's TOML policy format and its linter (errors with file:line).
//! - `repo`: repository operations of the admin tool (init, rotate-root, sign, timestamp).
//! - `example`: the example WeChat/Kaspersky policy.
//! - `cli`: the command-line contract of every binary (usage errors exit 64).
//! - `cli_spec`: the hidden `--dump-cli-spec` the package's man pages and completions come from.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod cli_spec;
pub mod dsse;
pub mod example;
pub mod fsutil;
pub mod glob;
#[cfg(feature = "https")]
pub mod https;
pub mod keys;
pub mod matcher;
pub mod metadata;
pub mod repo;
pub mod rules;
pub mod schema;
pub mod source;
pub mod transport;
pub mod trust;
pub mod version;
