//! The audit log: JSON lines, each carrying the SHA-256 of the line before it, fsynced.
//!
//! `{"schema_version":1,"seq":N,"time":"…","prev":"<hex>","event":{"type":…},"hash":"<hex>"}`
//! where `hash = sha256(prev || serialized event line without hash)`. Editing, dropping or
//! reordering a line breaks the chain, which `verify` reports with the first bad sequence number.
//! The events are `evidence::AuditEvent`s; lines written before the schema version existed have
//! none (read as 0) and still verify, because a version of 0 is not serialized.

use std::io::{BufRead as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use embargo_policy::metadata::Time;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The version of the line format (and of `evidence::AuditEvent`) this build writes.
pub const AUDIT_SCHEMA_VERSION: u32 = 1;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub schema_version: u32,
    pub seq: u64,
    pub time: Time,
    pub prev: String,
    pub event: serde_json::Value,
    #[serde(default)]
    pub hash: String,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn hash_of(e: &Entry) -> String {
    let unhashed = Entry { hash: String::new(), ..e.clone() };
    let mut h = Sha256::new();
    h.update(e.prev.as_bytes());
    h.update(serde_json::to_vec(&unhashed).expect("entry serializes"));
    hex::encode(h.finalize())
}

#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: std::fs::File,
    seq: u64,
    last: String,
}

impl AuditLog {
    /// Opens (creating, mode 0600, never through a symlink) and finds the chain's end.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .custom_flags(0o400000)
            .open(path)?;
        let (mut seq, mut last) = (0, GENESIS.to_owned());
        for e in read_entries(path)?.into_iter().flatten() {
            seq = e.seq;
            last = e.hash;
        }
        Ok(Self { path: path.to_path_buf(), file, seq, last })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one typed event and fsyncs it.
    pub fn append_event(&mut self, event: &crate::evidence::AuditEvent) -> std::io::Result<Entry> {
        self.append(serde_json::to_value(event).map_err(std::io::Error::other)?)
    }

    /// Appends one event and fsyncs it.
    pub fn append(&mut self, event: serde_json::Value) -> std::io::Result<Entry> {
        let mut e = Entry {
            schema_version: AUDIT_SCHEMA_VERSION,
            seq: self.seq + 1,
            time: Time::now(),
            prev: self.last.clone(),
            event,
            hash: String::new(),
        };
        e.hash = hash_of(&e);
        let mut line = serde_json::to_vec(&e).expect("entry serializes");
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.seq = e.seq;
        self.last = e.hash.clone();
        Ok(e)
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// Reads every line; a line that does not parse is `None` (reported by `verify`).
pub fn read_entries(path: &Path) -> std::io::Result<Vec<Option<Entry>>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(&l).ok())
        .collect())
}

/// Checks the chain; `Err(seq)` names the first entry that does not follow from the one before.
pub fn verify(entries: &[Option<Entry>]) -> Result<(), u64> {
    let mut prev = GENESIS.to_owned();
    for (i, e) in entries.iter().enumerate() {
        let Some(e) = e else { return Err(i as u64 + 1) };
        if e.prev != prev || e.hash != hash_of(e) || e.seq != i as u64 + 1 {
            return Err(e.seq);
        }
        prev = e.hash.clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_detects_edits_and_drops() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("audit.log");
        let mut log = AuditLog::open(&p).unwrap();
        for i in 0..3 {
            log.append(serde_json::json!({"n": i})).unwrap();
        }
        drop(log);
        let mut log = AuditLog::open(&p).unwrap();
        assert_eq!(log.seq(), 3);
        log.append(serde_json::json!({"n": 3})).unwrap();
        assert_eq!(verify(&read_entries(&p).unwrap()), Ok(()));
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replacen("{\"n\":1}", "{\"n\":9}", 1)).unwrap();
        assert_eq!(verify(&read_entries(&p).unwrap()), Err(2));
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&p, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        assert_eq!(verify(&read_entries(&p).unwrap()), Err(3));
    }

    /// A log written before lines carried a schema version (exact bytes of that format) still
    /// verifies, and new lines chain onto it.
    #[test]
    fn old_logs_still_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("audit.log");
        let mut prev = GENESIS.to_owned();
        let mut text = String::new();
        for seq in 1..=2u64 {
            let head = format!(
                r#"{{"seq":{seq},"time":"2026-01-01T00:00:00Z","prev":"{prev}","event":{{"pid":1,"type":"start"}},"hash":"#
            );
            let mut h = Sha256::new();
            h.update(prev.as_bytes());
            h.update(format!("{head}\"\"}}").as_bytes());
            let hash = hex::encode(h.finalize());
            text.push_str(&format!("{head}\"{hash}\"}}\n"));
            prev = hash;
        }
        std::fs::write(&p, &text).unwrap();
        assert_eq!(verify(&read_entries(&p).unwrap()), Ok(()));
        let mut log = AuditLog::open(&p).unwrap();
        log.append(serde_json::json!({"type": "start", "pid": 2})).unwrap();
        let entries = read_entries(&p).unwrap();
        assert_eq!(verify(&entries), Ok(()));
        assert_eq!(entries[0].as_ref().unwrap().schema_version, 0);
        assert_eq!(entries[2].as_ref().unwrap().schema_version, AUDIT_SCHEMA_VERSION);
    }
}
