//! Hashing off the core loop: a small, fixed pool of threads that compute the sha256 of files the
//! loop has already opened, each read capped in bytes and in time, and report back to the loop.
//!
//! Why: a file's hash is the one piece of identification that costs time proportional to its
//! size, and a user controls the size (a 1 TiB sparse file costs them 4 KiB). The loop never
//! reads a file whole; it hands the opened fd to this pool and goes on answering requests and
//! enforcing. What comes back is either the hash or why there is none ([`Unhashed`]).
//!
//! Bounds (see docs/threat-model-agent.md, "Core bounds (harden2)"):
//! - `HASH_WORKERS` threads; the loop keeps at most `MAX_IN_FLIGHT` decide-jobs queued or running
//!   (the rest wait as paths, not open fds, in the loop's backlog).
//! - A file larger than the configured `max_hash_bytes` is never read: it is "unhashed: over cap"
//!   (its logical size counts, so a sparse file is judged by what reading it would cost, not by the
//!   few blocks it occupies).
//! - A read that takes longer than `HASH_TIME_CAP` stops: "unhashed: too slow".
//! - A file whose size or change time moved while it was read is "changed": the hash is thrown
//!   away (never reused after a write) and the file is looked at again.

use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

/// Threads hashing at once (the devices are small; the loop stays free either way).
pub const HASH_WORKERS: usize = 2;

/// Decide-jobs the loop keeps queued or running; more wait in its backlog as paths.
pub const MAX_IN_FLIGHT: usize = 8;

/// Longest one file is read for its hash.
pub const HASH_TIME_CAP: Duration = Duration::from_secs(120);

/// Files at most this large are hashed right on the loop before a decision (one or two reads,
/// like identification itself), so a flood of small files never queues.
pub const INLINE_DECIDE_BYTES: u64 = 64 * 1024;

/// Most paths waiting for a free pool slot; beyond, a path is dropped (status says how many)
/// and picked up again by the next scan.
pub const MAX_BACKLOG: usize = 10_000;

/// Files at most this large are hashed right on the loop after a move (a few milliseconds);
/// larger ones go to the pool.
pub const INLINE_HASH_BYTES: u64 = 8 * 1024 * 1024;

/// Why a file has no hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhashed {
    /// Larger than `max_hash_bytes`; not read at all.
    OverCap {
        size: u64,
        allocated: u64,
        cap: u64,
    },
    /// Reading stopped at `HASH_TIME_CAP` after `read` bytes.
    TooSlow {
        read: u64,
    },
    /// Its size or change time changed while it was read.
    Changed,
    Io(String),
}

impl std::fmt::Display for Unhashed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unhashed::OverCap { size, allocated, cap } => {
                write!(f, "unhashed: over cap ({size} bytes, {allocated} allocated")?;
                if allocated.saturating_mul(2) < *size {
                    write!(f, ", sparse")?;
                }
                write!(f, "; max_hash_bytes = {cap})")
            }
            Unhashed::TooSlow { read } => {
                write!(f, "unhashed: too slow ({read} bytes read in {}s)", HASH_TIME_CAP.as_secs())
            }
            Unhashed::Changed => write!(f, "unhashed: changed while it was read"),
            Unhashed::Io(e) => write!(f, "unhashed: {e}"),
        }
    }
}

/// What the pool is asked to do.
pub struct Job {
    pub token: u64,
    pub file: std::fs::File,
}

/// What comes back to the loop.
pub struct Done {
    pub token: u64,
    pub file: std::fs::File,
    pub result: Result<String, Unhashed>,
}

/// The size, allocated bytes and change time of an open file (what a write changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub allocated: u64,
    pub ctime: (i64, i64),
    pub mtime: (i64, i64),
}

pub fn stamp(file: &std::fs::File) -> std::io::Result<Stamp> {
    let st = rustix::fs::fstat(file)?;
    Ok(Stamp {
        size: st.st_size as u64,
        allocated: (st.st_blocks as u64).saturating_mul(512),
        ctime: (st.st_ctime, st.st_ctime_nsec as i64),
        mtime: (st.st_mtime, st.st_mtime_nsec as i64),
    })
}

/// The over-cap check, done before any read (on the loop: one fstat).
pub fn over_cap(file: &std::fs::File, cap: u64) -> Result<(), Unhashed> {
    let s = stamp(file).map_err(|e| Unhashed::Io(e.to_string()))?;
    if s.size > cap {
        return Err(Unhashed::OverCap { size: s.size, allocated: s.allocated, cap });
    }
    Ok(())
}

/// Hashes `file` from its start, within `cap` bytes and `HASH_TIME_CAP`, and checks nothing
/// changed it meanwhile.
pub fn hash_capped(file: &mut std::fs::File, cap: u64) -> Result<String, Unhashed> {
    use std::io::Seek as _;
    let io = |e: std::io::Error| Unhashed::Io(e.to_string());
    let before = stamp(file).map_err(io)?;
    if before.size > cap {
        return Err(Unhashed::OverCap { size: before.size, allocated: before.allocated, cap });
    }
    file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
    let deadline = Instant::now() + HASH_TIME_CAP;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        read += n as u64;
        if read > cap {
            // It grew past the cap while being read.
            return Err(Unhashed::Changed);
        }
        h.update(&buf[..n]);
        if Instant::now() > deadline {
            return Err(Unhashed::TooSlow { read });
        }
    }
    if stamp(file).map_err(io)? != before || read != before.size {
        return Err(Unhashed::Changed);
    }
    Ok(hex::encode(h.finalize()))
}

/// The pool: `HASH_WORKERS` threads fed by one queue. Dropping it ends the threads after their
/// current file (the process does not wait for them on shutdown).
pub struct HashPool {
    jobs: std::sync::mpsc::Sender<Job>,
    results: Option<mpsc::UnboundedReceiver<Done>>,
    cap: u64,
    next: u64,
}

impl HashPool {
    pub fn new(cap: u64) -> std::io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let (done_tx, results) = mpsc::unbounded_channel();
        for i in 0..HASH_WORKERS {
            let rx = rx.clone();
            let done_tx = done_tx.clone();
            std::thread::Builder::new().name(format!("embargo-hash-{i}")).spawn(move || loop {
                let job = match rx.lock() {
                    Ok(r) => r.recv(),
                    Err(_) => return,
                };
                let Ok(Job { token, mut file }) = job else { return };
                let result = hash_capped(&mut file, cap);
                if done_tx.send(Done { token, file, result }).is_err() {
                    return;
                }
            })?;
        }
        Ok(Self { jobs, results: Some(results), cap, next: 0 })
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Queues `file` for hashing; the result comes back with the returned token.
    pub fn submit(&mut self, file: std::fs::File) -> u64 {
        self.next += 1;
        let token = self.next;
        // The workers only stop when this sender is dropped, so the send cannot fail while
        // `self` lives; a failure would only lose the hash, which `Done` never arriving shows.
        let _ = self.jobs.send(Job { token, file });
        token
    }

    /// The receiving end of the results, for the loop (once).
    pub fn take_results(&mut self) -> Option<mpsc::UnboundedReceiver<Done>> {
        self.results.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_terabyte_is_over_the_cap_without_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("huge");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(1 << 40).unwrap();
        let mut f = std::fs::File::open(&p).unwrap();
        let e = hash_capped(&mut f, 1 << 30).unwrap_err();
        assert!(matches!(e, Unhashed::OverCap { size, .. } if size == 1 << 40), "{e:?}");
        assert!(e.to_string().contains("over cap") && e.to_string().contains("sparse"), "{e}");
    }

    #[test]
    fn a_small_file_hashes_and_matches_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("small");
        std::fs::write(&p, b"abc").unwrap();
        let mut f = std::fs::File::open(&p).unwrap();
        assert_eq!(
            hash_capped(&mut f, 1 << 20).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
