//! The audit log: JSON lines, each carrying the SHA-256 of the line before it, fsynced.
//!
//! `{"schema_version":1,"seq":N,"time":"…","prev":"<hex>","event":{"type":…},"hash":"<hex>"}`
//! where `hash = sha256(prev || serialized event line without hash)`. Editing, dropping or
//! reordering a line breaks the chain, which `verify` reports with the first bad sequence number.
//! The events are `evidence::AuditEvent`s; lines written before the schema version existed have
//! none (read as 0) and still verify, because a version of 0 is not serialized.
//!
//! **Rotation** (issue 10, finding 11): when the current file (`audit.log`) passes
//! [`Rotation::max_bytes`] it is renamed to `audit.log.<first seq, 20 digits>` and a new
//! `audit.log` starts whose first line is an `audit-rotated` record chained (`prev`) to the last
//! hash of the renamed file — one chain across files. At most [`Rotation::keep`] rotated files
//! are kept; before the oldest is deleted an `audit-dropped` record naming its sequence range and
//! last hash is appended, so a verifier knows what was dropped (the oldest kept line's `prev`
//! must equal a dropped file's last hash) and a silent deletion is detected.
//! Crash safety: the rename is the only step that moves lines; a crash after it leaves no
//! `audit.log`, and `open` continues the chain from the newest rotated file. A crash between the
//! drop record and the unlink leaves the file (dropped again later). A last line without its
//! newline (a write in progress, or cut by a crash) is ignored by readers and the verifier.
//!
//! **Reads**: the last [`TAIL_ENTRIES`] entries (at most [`TAIL_BYTES`] of their lines, kept as
//! text: a parsed entry costs several times its line, and the idle daemon's memory is bounded
//! by PRODUCT.md) are kept in memory, so `embargoctl events` and
//! `--follow` are answered on the core loop without touching the disk; older pages are read
//! with [`read_page`] and the whole chain checked with [`verify_files`], both off the loop
//! (`handlers`), each bounded in the bytes it reads per request.

use std::collections::VecDeque;
use std::io::{BufRead as _, Read as _, Seek as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use embargo_policy::metadata::Time;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The version of the line format (and of `evidence::AuditEvent`) this build writes.
pub const AUDIT_SCHEMA_VERSION: u32 = 1;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Entries kept in memory for `events` (the newest ones).
pub const TAIL_ENTRIES: usize = 1000;
/// Most bytes of lines the in-memory tail holds (whichever of this and `TAIL_ENTRIES` is
/// reached first).
pub const TAIL_BYTES: usize = 256 << 10;
/// Most entries one `events` answer carries.
pub const EVENTS_PAGE: usize = 1000;
/// Most bytes of log one `events` request reads from disk (older entries than the tail).
pub const PAGE_READ_BYTES: u64 = 8 << 20;
/// Longest line readers accept; a longer one is reported as damaged.
pub const MAX_LINE: usize = 1 << 20;
/// Default `[enforcement] audit_max_bytes`.
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 64 << 20;
/// Default `[enforcement] audit_keep_files`.
pub const DEFAULT_AUDIT_KEEP_FILES: usize = 8;
/// Bytes read from the end of the current file at start to find the chain's end and the tail.
const OPEN_TAIL_BYTES: u64 = 4 << 20;

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

/// One line of the in-memory tail, as written (without its newline).
#[derive(Debug)]
struct TailLine {
    seq: u64,
    line: Box<[u8]>,
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

/// When the current file is rotated, and how many rotated files are kept
/// (`[enforcement] audit_max_bytes`, `audit_keep_files`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Self { max_bytes: DEFAULT_AUDIT_MAX_BYTES, keep: DEFAULT_AUDIT_KEEP_FILES }
    }
}

#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: std::fs::File,
    seq: u64,
    last: String,
    /// The sequence of the current file's first line (0: the file is empty).
    first_seq: u64,
    /// The current file's size.
    bytes: u64,
    rotation: Rotation,
    /// The newest entries' lines, oldest first (at most `TAIL_ENTRIES` and `TAIL_BYTES`).
    tail: VecDeque<TailLine>,
    /// Bytes of the lines in `tail`.
    tail_bytes: usize,
}

/// One page of `events`: `entries` (those the caller may see), `next` (the last sequence looked
/// at: the `since` of the following page), `more` (whether entries after `next` exist), and
/// `hidden` (entries looked at and left out by the caller's filter).
#[derive(Debug, Default, Serialize)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub next: u64,
    pub more: bool,
    pub hidden: usize,
}

impl Page {
    /// Adds one looked-at entry; `false` once the page is full (`limit`).
    fn offer(&mut self, e: &Entry, limit: usize, keep: &mut impl FnMut(&Entry) -> bool) -> bool {
        if self.entries.len() >= limit {
            self.more = true;
            return false;
        }
        if keep(e) {
            self.entries.push(e.clone());
        } else {
            self.hidden += 1;
        }
        self.next = e.seq;
        true
    }
}

fn open_current(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).read(true).mode(0o600).custom_flags(O_NOFOLLOW).open(path)
}

/// The log is never opened through a symlink.
const O_NOFOLLOW: i32 = 0o400000;

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let _ = embargo_policy::fsutil::sync_dir(dir);
    }
}

/// Reads lines of at most `MAX_LINE` bytes; a last line without its newline is reported as
/// incomplete (a write in progress or cut short), which readers skip.
struct Lines {
    r: std::io::BufReader<std::fs::File>,
    buf: Vec<u8>,
}

enum Line<'a> {
    Complete(&'a [u8]),
    Incomplete,
}

impl Lines {
    fn new(f: std::fs::File) -> Self {
        Self { r: std::io::BufReader::with_capacity(64 << 10, f), buf: Vec::new() }
    }

    /// The next line (without its newline) and the bytes it took, or `None` at the end.
    fn next_line(&mut self) -> std::io::Result<Option<(Line<'_>, usize)>> {
        self.buf.clear();
        let n = (&mut self.r).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        if self.buf.last() != Some(&b'\n') {
            if self.buf.len() > MAX_LINE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a line longer than {MAX_LINE} bytes"),
                ));
            }
            return Ok(Some((Line::Incomplete, n)));
        }
        Ok(Some((Line::Complete(&self.buf[..n - 1]), n)))
    }
}

/// The complete, parsable entries in the last `max` bytes of `f` (of length `len`), oldest first,
/// at most `TAIL_ENTRIES`.
fn read_tail(f: &std::fs::File, len: u64, max: u64) -> std::io::Result<VecDeque<Entry>> {
    let start = len.saturating_sub(max);
    let mut f = f.try_clone()?;
    f.seek(std::io::SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.take(max).read_to_end(&mut bytes)?;
    let mut text = &bytes[..];
    if start > 0 {
        // The first line is probably cut: start after it.
        let cut = text.iter().position(|b| *b == b'\n').map_or(text.len(), |i| i + 1);
        text = &text[cut..];
    }
    let mut out = VecDeque::new();
    let mut lines = text.split(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        // The last piece has no newline after it: empty, or a write in progress.
        if lines.peek().is_none() {
            break;
        }
        if let Ok(e) = serde_json::from_slice::<Entry>(line) {
            out.push_back(e);
            if out.len() > TAIL_ENTRIES {
                out.pop_front();
            }
        }
    }
    Ok(out)
}

/// The length of `f` (of length `len`) up to and including its last newline (0 if none).
fn complete_prefix(f: &std::fs::File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        std::os::unix::fs::FileExt::read_exact_at(f, chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The first parsable entry of the file at `path`.
fn first_entry(path: &Path) -> std::io::Result<Option<Entry>> {
    let mut lines = Lines::new(std::fs::File::open(path)?);
    while let Some((line, _)) = lines.next_line()? {
        if let Line::Complete(l) = line {
            if let Ok(e) = serde_json::from_slice::<Entry>(l) {
                return Ok(Some(e));
            }
        }
    }
    Ok(None)
}

/// The last complete, parsable entry of the file at `path`.
fn last_entry(path: &Path) -> std::io::Result<Option<Entry>> {
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    Ok(read_tail(&f, len, OPEN_TAIL_BYTES)?.pop_back())
}

/// The rotated files beside the log at `path` (`<name>.<first seq, 20 digits>`), oldest first.
pub fn rotated_files(path: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let mut out = Vec::new();
    for e in std::fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })? {
        let e = e?;
        let Some(n) = e.file_name().to_str().map(str::to_owned) else { continue };
        let Some(digits) = n.strip_prefix(&prefix) else { continue };
        if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(first) = digits.parse::<u64>() {
                out.push((first, dir.join(&n)));
            }
        }
    }
    out.sort();
    Ok(out)
}

impl AuditLog {
    /// Opens with the default rotation.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Self::open_with(path, Rotation::default())
    }

    /// Opens (creating, mode 0600, never through a symlink) and finds the chain's end: the last
    /// entry of the current file, else (a crash right after a rotation's rename) of the newest
    /// rotated file. Reads at most a few MiB, whatever the log's size.
    pub fn open_with(path: &Path, rotation: Rotation) -> std::io::Result<Self> {
        let file = open_current(path)?;
        let mut bytes = file.metadata()?.len();
        // A last line without its newline is a write cut short (power loss): that entry was
        // never complete, so it is cut off rather than merged with the next line.
        if bytes > 0 {
            let mut last = [0u8; 1];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut last, bytes - 1)?;
            if last[0] != b'\n' {
                let keep = complete_prefix(&file, bytes)?;
                tracing::warn!(path = %path.display(), cut = bytes - keep, "the audit log ends in a cut line: removed");
                file.set_len(keep)?;
                file.sync_data()?;
                bytes = keep;
            }
        }
        let tail = read_tail(&file, bytes, OPEN_TAIL_BYTES)?;
        let first_seq = if bytes == 0 { 0 } else { first_entry(path)?.map_or(0, |e| e.seq) };
        let (seq, last) = match tail.back() {
            Some(e) => (e.seq, e.hash.clone()),
            None => match rotated_files(path)?.last() {
                Some((_, p)) => last_entry(p)?.map_or((0, GENESIS.to_owned()), |e| (e.seq, e.hash)),
                None => (0, GENESIS.to_owned()),
            },
        };
        let mut log = Self {
            path: path.to_path_buf(),
            file,
            seq,
            last,
            first_seq,
            bytes,
            rotation,
            tail: VecDeque::new(),
            tail_bytes: 0,
        };
        for e in &tail {
            log.remember(e.seq, serde_json::to_vec(e).expect("entry serializes"));
        }
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one typed event and fsyncs it.
    pub fn append_event(&mut self, event: &crate::evidence::AuditEvent) -> std::io::Result<Entry> {
        self.append(serde_json::to_value(event).map_err(std::io::Error::other)?)
    }

    /// Appends one event and fsyncs it; rotates when the file has passed its bound (a failed
    /// rotation is logged, and tried again after the next append).
    pub fn append(&mut self, event: serde_json::Value) -> std::io::Result<Entry> {
        let e = self.write(event)?;
        if self.bytes >= self.rotation.max_bytes {
            if let Err(err) = self.rotate() {
                tracing::error!(error = %err, path = %self.path.display(), "rotating the audit log failed");
            }
        }
        Ok(e)
    }

    fn write(&mut self, event: serde_json::Value) -> std::io::Result<Entry> {
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
        let written = line.len();
        line.pop();
        self.file.sync_data()?;
        self.seq = e.seq;
        self.last = e.hash.clone();
        self.bytes += written as u64;
        if self.first_seq == 0 {
            self.first_seq = e.seq;
        }
        self.remember(e.seq, line);
        Ok(e)
    }

    /// Adds a line to the in-memory tail, dropping the oldest past its bounds (the newest line
    /// is always kept).
    fn remember(&mut self, seq: u64, line: Vec<u8>) {
        self.tail_bytes += line.len();
        self.tail.push_back(TailLine { seq, line: line.into_boxed_slice() });
        while self.tail.len() > 1 && (self.tail.len() > TAIL_ENTRIES || self.tail_bytes > TAIL_BYTES) {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some(t) = self.tail.pop_front() {
            self.tail_bytes -= t.line.len();
        }
    }

    /// Renames the current file to `<name>.<its first seq>`, starts a new one with an
    /// `audit-rotated` record chained to the old file's last hash, and deletes rotated files
    /// beyond `keep`, each after an `audit-dropped` record (see the module header).
    pub fn rotate(&mut self) -> std::io::Result<()> {
        if self.bytes == 0 {
            return Ok(());
        }
        // A file whose first line did not parse is still rotated (named after the next entry):
        // it must not grow without bound.
        let first = if self.first_seq == 0 { self.seq + 1 } else { self.first_seq };
        let name = self.path.file_name().and_then(|n| n.to_str()).unwrap_or("audit.log").to_owned();
        let rotated = self.path.with_file_name(format!("{name}.{first:020}"));
        if std::fs::symlink_metadata(&rotated).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} already exists; not overwritten", rotated.display()),
            ));
        }
        std::fs::rename(&self.path, &rotated)?;
        sync_dir(&self.path);
        let (last_seq, last_hash) = (self.seq, self.last.clone());
        self.file = open_current(&self.path)?;
        self.bytes = 0;
        self.first_seq = 0;
        self.write(serde_json::json!({
            "type": "audit-rotated",
            "previous": rotated.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
            "first_seq": first,
            "last_seq": last_seq,
            "last_hash": last_hash,
        }))?;
        sync_dir(&self.path);
        self.prune()
    }

    /// Deletes the oldest rotated files beyond `keep`, each after a record of what it held.
    fn prune(&mut self) -> std::io::Result<()> {
        let files = rotated_files(&self.path)?;
        let excess = files.len().saturating_sub(self.rotation.keep);
        for (first, p) in files.into_iter().take(excess) {
            let last = last_entry(&p)?;
            self.write(serde_json::json!({
                "type": "audit-dropped",
                "file": p.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
                "first_seq": first,
                "last_seq": last.as_ref().map(|e| e.seq),
                "last_hash": last.as_ref().map(|e| e.hash.clone()),
            }))?;
            std::fs::remove_file(&p)?;
            // What is gone from disk is not served from memory either.
            if let Some(last) = &last {
                while self.tail.front().is_some_and(|e| e.seq <= last.seq) {
                    self.forget_oldest();
                }
            }
            tracing::info!(file = %p.display(), "deleted a rotated audit log file beyond audit_keep_files");
        }
        sync_dir(&self.path);
        Ok(())
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Entries after `since` from memory, if the in-memory tail reaches back that far (else
    /// `None`: the caller reads them from disk with [`read_page`], off the loop).
    pub fn tail_page(&self, since: u64, limit: usize, mut keep: impl FnMut(&Entry) -> bool) -> Option<Page> {
        let mut page = Page { next: since, ..Page::default() };
        if since >= self.seq {
            return Some(page);
        }
        if self.tail.front().is_none_or(|e| e.seq > since + 1) {
            return None;
        }
        for t in self.tail.iter().filter(|t| t.seq > since) {
            // Lines this process wrote itself: they parse (one that did not would be skipped).
            let Ok(e) = serde_json::from_slice::<Entry>(&t.line) else { continue };
            if !page.offer(&e, limit, &mut keep) {
                break;
            }
        }
        Some(page)
    }
}

/// Entries after `since` read from the files (rotated and current) of the log at `path`: at most
/// `limit` kept ones, reading at most `PAGE_READ_BYTES`. For the control socket, off the loop.
pub fn read_page(path: &Path, since: u64, limit: usize, mut keep: impl FnMut(&Entry) -> bool) -> std::io::Result<Page> {
    let mut files = rotated_files(path)?;
    // The file holding `since + 1`: the newest rotated one starting at or before it.
    let start = files.iter().rposition(|(first, _)| *first <= since + 1).unwrap_or(0);
    files.drain(..start);
    files.push((u64::MAX, path.to_path_buf()));
    let mut page = Page { next: since, ..Page::default() };
    let mut read = 0u64;
    for (_, p) in files {
        let f = match std::fs::File::open(&p) {
            Ok(f) => f,
            // Rotated away meanwhile (the next page continues from `next`).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut lines = Lines::new(f);
        while let Some((line, n)) = lines.next_line()? {
            read += n as u64;
            let Line::Complete(l) = line else { break };
            let Ok(e) = serde_json::from_slice::<Entry>(l) else { continue };
            if e.seq <= since {
                continue;
            }
            if !page.offer(&e, limit, &mut keep) {
                return Ok(page);
            }
            if read >= PAGE_READ_BYTES {
                page.more = true;
                return Ok(page);
            }
        }
    }
    Ok(page)
}

/// What [`verify_files`] checked.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub files: usize,
    pub entries: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Entries up to this sequence were in rotated files deleted beyond `audit_keep_files`,
    /// as an `audit-dropped` record in the chain says.
    pub dropped_through: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{file}: line {line}: the chain breaks (seq {seq}): {reason}")]
    Broken { file: String, line: u64, seq: u64, reason: String },
    #[error(
        "the oldest kept entry is seq {first}: entries 1..{before} are missing and no audit-dropped record accounts for them"
    )]
    Unaccounted { first: u64, before: u64 },
}

/// Checks the whole chain across the rotated files and the current one, reading them line by
/// line (memory stays bounded whatever their size). The oldest kept file may start after seq
/// 1 only if an `audit-dropped` record in the chain names the last hash before it. Retried
/// (up to 3 times) when a rotation changed the files while they were read.
pub fn verify_files(path: &Path) -> Result<Summary, VerifyError> {
    let listing = || rotated_files(path).ok();
    let mut attempt = 0;
    loop {
        let before = listing();
        let r = verify_once(path);
        attempt += 1;
        if r.is_ok() || attempt >= 3 || listing() == before {
            return r;
        }
    }
}

fn verify_once(path: &Path) -> Result<Summary, VerifyError> {
    let shown = |p: &Path| p.display().to_string();
    let mut files = rotated_files(path).map_err(|source| VerifyError::Io { file: shown(path), source })?;
    files.push((u64::MAX, path.to_path_buf()));
    let mut sum = Summary { files: 0, entries: 0, first_seq: 0, last_seq: 0, dropped_through: None };
    let mut prev: Option<String> = None;
    // The oldest kept entry's (seq, prev) when it is not seq 1, until a drop record accounts for it.
    let mut start: Option<(u64, String)> = None;
    let mut accounted = false;
    let n_files = files.len();
    for (i, (_, p)) in files.into_iter().enumerate() {
        let f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && i + 1 == n_files => break,
            Err(source) => return Err(VerifyError::Io { file: shown(&p), source }),
        };
        sum.files += 1;
        let mut lines = Lines::new(f);
        let mut line_no = 0u64;
        loop {
            let next = lines.next_line().map_err(|source| VerifyError::Io { file: shown(&p), source })?;
            let Some((line, _)) = next else { break };
            line_no += 1;
            let broken = |seq: u64, reason: &str| VerifyError::Broken {
                file: shown(&p),
                line: line_no,
                seq,
                reason: reason.to_owned(),
            };
            let l = match line {
                Line::Complete(l) => l,
                // Only the current file's last line may be a write in progress.
                Line::Incomplete if i + 1 == n_files => break,
                Line::Incomplete => return Err(broken(sum.last_seq + 1, "a rotated file ends in a cut line")),
            };
            if l.is_empty() {
                continue;
            }
            let e: Entry =
                serde_json::from_slice(l).map_err(|err| broken(sum.last_seq + 1, &format!("does not parse: {err}")))?;
            match &prev {
                None if e.seq == 1 => {
                    if e.prev != GENESIS {
                        return Err(broken(e.seq, "the first entry does not start the chain"));
                    }
                }
                None => start = Some((e.seq, e.prev.clone())),
                Some(h) => {
                    if e.seq != sum.last_seq + 1 {
                        return Err(broken(e.seq, &format!("expected seq {}", sum.last_seq + 1)));
                    }
                    if e.prev != *h {
                        return Err(broken(e.seq, "prev is not the hash of the entry before"));
                    }
                }
            }
            if e.hash != hash_of(&e) {
                return Err(broken(e.seq, "the entry does not match its hash (edited)"));
            }
            if e.event.get("type").and_then(|t| t.as_str()) == Some("audit-dropped") {
                if let Some((first, first_prev)) = &start {
                    let last_seq = e.event.get("last_seq").and_then(|v| v.as_u64());
                    let last_hash = e.event.get("last_hash").and_then(|v| v.as_str());
                    if last_seq == Some(first - 1) && last_hash == Some(first_prev.as_str()) {
                        accounted = true;
                        sum.dropped_through = last_seq;
                    }
                }
            }
            if sum.entries == 0 {
                sum.first_seq = e.seq;
            }
            sum.entries += 1;
            sum.last_seq = e.seq;
            prev = Some(e.hash);
        }
    }
    if let (Some((first, _)), false) = (&start, accounted) {
        return Err(VerifyError::Unaccounted { first: *first, before: first - 1 });
    }
    Ok(sum)
}

/// Reads every line of one file; a line that does not parse is `None` (reported by `verify`).
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

/// Checks the chain of one un-rotated file's entries; `Err(seq)` names the first entry that does
/// not follow from the one before.
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
        // The verifier of rotated logs reads an old single file the same way.
        let sum = verify_files(&p).unwrap();
        assert_eq!((sum.files, sum.entries, sum.dropped_through), (1, 3, None));
    }

    fn small(p: &Path) -> AuditLog {
        AuditLog::open_with(p, Rotation { max_bytes: 2000, keep: 2 }).unwrap()
    }

    /// Finding 11: past `max_bytes` the log rotates; the chain runs on across files; files beyond
    /// `keep` are deleted with a record of what they held, so the chain still verifies and says
    /// what was dropped; reads page through rotated files.
    #[test]
    fn rotation_keeps_one_chain_across_files_and_records_what_it_drops() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("audit.log");
        let mut log = small(&p);
        for i in 0..60 {
            log.append(serde_json::json!({"type": "start", "pid": i})).unwrap();
        }
        let files = rotated_files(&p).unwrap();
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(std::fs::metadata(&p).unwrap().len() < 4000);
        let sum = verify_files(&p).unwrap();
        assert_eq!(sum.last_seq, log.seq());
        let dropped = sum.dropped_through.expect("older files were dropped, and the chain says so");
        assert_eq!(sum.first_seq, dropped + 1);
        // The new file's first line chains to the last line of the file before it.
        let first_now = first_entry(&p).unwrap().unwrap();
        assert_eq!(first_now.event["type"], "audit-rotated");
        assert_eq!(first_now.prev, last_entry(&files[1].1).unwrap().unwrap().hash);
        // Reopening continues the chain.
        drop(log);
        let mut log = small(&p);
        log.append(serde_json::json!({"type": "start", "pid": 99})).unwrap();
        assert_eq!(verify_files(&p).unwrap().last_seq, log.seq());
        // Paging from the start begins at the oldest kept entry and reaches the newest.
        let mut since = 0;
        let mut seen = Vec::new();
        loop {
            let page = read_page(&p, since, 7, |_| true).unwrap();
            seen.extend(page.entries.iter().map(|e| e.seq));
            since = page.next;
            if !page.more {
                break;
            }
        }
        assert_eq!(seen.first(), Some(&(dropped + 1)));
        assert_eq!(seen.last(), Some(&log.seq()));
        assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
        // The tail answers recent pages from memory, and says when it cannot.
        let recent = log.tail_page(log.seq() - 3, 100, |_| true).unwrap();
        assert_eq!(recent.entries.len(), 3);
        assert!(log.tail_page(0, 10, |_| true).is_none(), "older entries are read from disk, off the loop");
    }

    #[test]
    fn a_tampered_or_silently_deleted_rotated_file_is_detected() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("audit.log");
        let mut log = small(&p);
        for i in 0..60 {
            log.append(serde_json::json!({"type": "start", "pid": i})).unwrap();
        }
        let files = rotated_files(&p).unwrap();
        let newest = &files[1].1;
        let text = std::fs::read_to_string(newest).unwrap();
        let line = text.lines().nth(2).unwrap();
        let edited = line.replacen("\"pid\":", "\"pid\":1", 1);
        assert_ne!(line, edited);
        std::fs::write(newest, text.replacen(line, &edited, 1)).unwrap();
        let err = verify_files(&p).unwrap_err();
        assert!(matches!(err, VerifyError::Broken { line: 3, .. }), "{err}");
        std::fs::write(newest, &text).unwrap();
        assert!(verify_files(&p).is_ok());
        // Deleting the oldest kept file without a record is not silent.
        std::fs::remove_file(&files[0].1).unwrap();
        let err = verify_files(&p).unwrap_err();
        assert!(matches!(err, VerifyError::Unaccounted { .. }), "{err}");
    }

    /// A kill -9 right after the rotation's rename (no current file yet) or in the middle of a
    /// line leaves a chain that verifies once the daemon runs again.
    #[test]
    fn a_crash_during_rotation_leaves_a_chain_that_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("audit.log");
        let mut log = AuditLog::open_with(&p, Rotation { max_bytes: u64::MAX, keep: 2 }).unwrap();
        for i in 0..5 {
            log.append(serde_json::json!({"type": "start", "pid": i})).unwrap();
        }
        drop(log);
        std::fs::rename(&p, p.with_file_name(format!("audit.log.{:020}", 1))).unwrap();
        let mut log = small(&p);
        assert_eq!(log.seq(), 5, "the chain continues from the rotated file");
        log.append(serde_json::json!({"type": "start", "pid": 5})).unwrap();
        assert_eq!(verify_files(&p).unwrap().entries, 6);
        // A cut last line (the write in progress when the process died) is ignored.
        drop(log);
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"{\"seq\":7,\"ti").unwrap();
        assert_eq!(verify_files(&p).unwrap().last_seq, 6);
        assert_eq!(read_page(&p, 0, 100, |_| true).unwrap().entries.len(), 6);
        // The next start cuts it off, and the chain goes on.
        let mut log = small(&p);
        log.append(serde_json::json!({"type": "start", "pid": 6})).unwrap();
        assert_eq!(verify_files(&p).unwrap().last_seq, 7);
    }
}
