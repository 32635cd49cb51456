//! Listing the files beneath a folder root: iterative (no recursion, no depth limit), through
//! directory fds opened beneath the root (so a path longer than PATH_MAX is still reached, in
//! chunks), never following symlinks, never crossing a mount (a bind mount inside a watched
//! folder is not entered), and with each directory visited once by device and inode (no loop).
//!
//! The bounds are per batch, in entries and in bytes of the listed paths: a walk that reaches
//! either stops, keeps where it was (one name and one `readdir` cookie per level of the current
//! path, no open fd), and the caller continues it in a later turn of the core loop. So a scan
//! never holds more than one batch of paths, whatever the tree (issue 10, finding 8: one batch
//! of 200,000 long paths peaked the root daemon at 491 MiB).

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, OFlags};

use crate::safefs::{self, FileId};

/// Longest path handed to one `openat2` (PATH_MAX is 4096; a margin for the kernel's own use).
const CHUNK: usize = 2048;

/// Whether `rel` is too long to be resolved in one call.
pub fn is_long(rel: &Path) -> bool {
    rel.as_os_str().len() >= CHUNK
}

/// Opens `rel` beneath `root` with `flags`, resolving at most [`CHUNK`] bytes per call, each
/// step beneath the directory the previous one opened (same rules: no symlinks, no `..`, no
/// mount crossing).
pub fn open_long(root: &OwnedFd, rel: &Path, flags: OFlags) -> std::io::Result<OwnedFd> {
    let comps: Vec<&OsStr> = rel.iter().collect();
    let mut base: Option<OwnedFd> = None;
    let mut chunk = PathBuf::new();
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        if !chunk.as_os_str().is_empty() && chunk.as_os_str().len() + c.len() + 1 >= CHUNK {
            let dir = safefs::open_beneath(base.as_ref().unwrap_or(root), &chunk, OFlags::PATH | OFlags::DIRECTORY)?;
            base = Some(dir);
            chunk = PathBuf::new();
        }
        chunk.push(c);
        if last {
            return safefs::open_beneath(base.as_ref().unwrap_or(root), &chunk, flags);
        }
    }
    safefs::open_beneath(base.as_ref().unwrap_or(root), Path::new(""), flags)
}

/// One directory on the walk's current path: its name beneath the one above (empty for the
/// start), its identity once opened, and where its listing resumes (the `readdir` cookie after
/// the last entry taken; 0 = from the beginning).
struct Level {
    name: OsString,
    id: Option<FileId>,
    resume: i64,
}

/// A walk in progress beneath one root, depth first. It holds only the current path (one
/// name and one cookie per level) and no open file descriptor between batches: its memory is
/// bounded by the depth of the tree, not by how many files or directories it has.
pub struct Walk {
    start: PathBuf,
    /// The directories from `start` down to the one being listed; empty before the first
    /// batch and when the walk is complete.
    levels: Vec<Level>,
    started: bool,
    /// Whether the walk started at the root itself (a completed pass then covers the root).
    pub whole_root: bool,
}

/// How much one batch of a walk may list before it stops (continued in a later loop turn).
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    /// Directory entries (files and directories).
    pub entries: usize,
    /// Bytes of the listed files' paths and of the directory paths opened (relative to the
    /// root; opening one resolves its whole path).
    pub path_bytes: usize,
}

/// Which part of a [`Batch`] stopped a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Entries,
    PathBytes,
}

impl Walk {
    pub fn new(start: PathBuf) -> Self {
        let whole_root = start.as_os_str().is_empty();
        Self { start, levels: Vec::new(), started: false, whole_root }
    }

    pub fn done(&self) -> bool {
        self.started && self.levels.is_empty()
    }

    /// The directory of the deepest level, relative to the root.
    fn current_dir(&self) -> PathBuf {
        let mut p = self.start.clone();
        for l in self.levels.iter().skip(1) {
            p.push(&l.name);
        }
        p
    }

    /// Lists entries (files and directories) into `files` (paths relative to the root) until
    /// the walk is complete (returns `None`) or `batch` is reached (returns which bound; the
    /// next call continues after the last entry taken). A directory is listed in place, so the
    /// bound holds inside one huge directory too.
    ///
    /// Between batches only the cookies are kept: a directory is re-opened by its path and
    /// must still be the same (device, inode); one replaced meanwhile (renamed away, another
    /// renamed in) is left, because that rename is itself an event that scans the new one.
    pub fn run(&mut self, root: &OwnedFd, batch: Batch, files: &mut Vec<PathBuf>) -> Option<Stop> {
        self.run_with(root, batch, files, &mut |_, _, _| {})
    }

    /// [`Walk::run`], calling `on_dir` with each directory (relative to the root), its opened
    /// fd and metadata before it is first listed (the watcher watches it there, so nothing
    /// created in it after the listing goes unseen); not again when a batch resumes in it.
    pub fn run_with(
        &mut self,
        root: &OwnedFd,
        batch: Batch,
        files: &mut Vec<PathBuf>,
        on_dir: &mut dyn FnMut(&Path, &OwnedFd, &safefs::Meta),
    ) -> Option<Stop> {
        if !self.started {
            self.started = true;
            self.levels.push(Level { name: OsString::new(), id: None, resume: 0 });
        }
        let (mut seen, mut bytes) = (0usize, 0usize);
        // Every batch gets past at least one entry (or finishes one directory) before a bound
        // may stop it, so a path longer than the bound cannot stall the walk.
        let mut progressed = false;
        'levels: while !self.levels.is_empty() {
            // Opening a directory resolves its whole path from the root: that work counts
            // toward the batch's bytes too, so a deep chain of directories yields the loop
            // between batches instead of holding it for O(depth²) lookups.
            if progressed && bytes >= batch.path_bytes {
                return Some(Stop::PathBytes);
            }
            let dir = self.current_dir();
            bytes += dir.as_os_str().len();
            let fd = match open_long(root, &dir, OFlags::RDONLY | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(_) => {
                    // Not a directory: the start may name a file.
                    if self.levels.len() == 1
                        && !dir.as_os_str().is_empty()
                        && open_long(root, &dir, OFlags::PATH).and_then(|fd| safefs::meta(&fd)).is_ok_and(|m| m.is_file)
                    {
                        bytes += dir.as_os_str().len();
                        files.push(dir);
                    }
                    self.levels.pop();
                    continue;
                }
            };
            let Ok(m) = safefs::meta(&fd) else {
                self.levels.pop();
                continue;
            };
            let depth = self.levels.len();
            let level = &mut self.levels[depth - 1];
            let first_opening = match level.id {
                None => {
                    level.id = Some(m.id);
                    true
                }
                Some(id) if id != m.id => {
                    self.levels.pop();
                    continue;
                }
                Some(_) => false,
            };
            // A directory that is its own ancestor is not entered (mounts are never crossed,
            // so this cannot happen on Linux; kept as a guard that costs nothing).
            if self.levels[..depth - 1].iter().any(|l| l.id == Some(m.id)) {
                self.levels.pop();
                continue;
            }
            if first_opening {
                on_dir(&dir, &fd, &m);
            }
            let resume = self.levels[depth - 1].resume;
            let Ok(mut entries) = rustix::fs::Dir::new(fd) else {
                self.levels.pop();
                continue;
            };
            if resume != 0 && entries.seek(resume).is_err() {
                self.levels.pop();
                continue;
            }
            loop {
                if progressed && seen >= batch.entries {
                    return Some(Stop::Entries);
                }
                if progressed && bytes >= batch.path_bytes {
                    return Some(Stop::PathBytes);
                }
                progressed = true;
                let e = match entries.read() {
                    Some(Ok(e)) => e,
                    // Listed to the end (or unreadable): back to the parent, after this one.
                    _ => {
                        self.levels.pop();
                        continue 'levels;
                    }
                };
                self.levels[depth - 1].resume = e.offset();
                let name = e.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                seen += 1;
                let rel = dir.join(OsStr::from_bytes(name));
                let is_dir = match e.file_type() {
                    FileType::Directory => true,
                    FileType::RegularFile => false,
                    FileType::Unknown => {
                        // Filesystems without d_type: ask, without following a symlink.
                        match open_long(root, &rel, OFlags::PATH).and_then(|fd| safefs::meta(&fd)) {
                            Ok(m) if m.is_dir => true,
                            Ok(m) if m.is_file => false,
                            _ => continue,
                        }
                    }
                    _ => continue,
                };
                if is_dir {
                    // Depth first: descend now; this directory resumes after the entry.
                    self.levels.push(Level { name: OsStr::from_bytes(name).to_owned(), id: None, resume: 0 });
                    continue 'levels;
                }
                bytes += rel.as_os_str().len();
                files.push(rel);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(root: &Path, max: usize) -> (Vec<PathBuf>, usize) {
        walk_all(root, Batch { entries: max, path_bytes: usize::MAX })
    }

    fn walk_all(root: &Path, batch: Batch) -> (Vec<PathBuf>, usize) {
        let fd = safefs::open_root(root).unwrap();
        let mut w = Walk::new(PathBuf::new());
        let mut files = Vec::new();
        let mut batches = 1;
        loop {
            let before = files.len();
            let stop = w.run(&fd, batch, &mut files);
            let listed: usize = files[before..].iter().map(|f| f.as_os_str().len()).sum();
            // A batch holds at most its bound plus the one path that crossed it.
            assert!(listed < batch.path_bytes.saturating_add(4096), "{listed} bytes in one batch");
            if stop.is_none() {
                break;
            }
            batches += 1;
        }
        assert!(w.done());
        files.sort();
        (files, batches)
    }

    /// The batch bound holds inside one directory (it is listed in place and resumed at its
    /// cookie), in entries and in path bytes, and every file is listed exactly once.
    #[test]
    fn one_huge_directory_is_listed_in_bounded_batches() {
        let tmp = tempfile::tempdir().unwrap();
        let long = "n".repeat(200);
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        for i in 0..500 {
            std::fs::write(tmp.path().join(format!("a/{long}{i:03}")), b"").unwrap();
        }
        for i in 0..20 {
            std::fs::write(tmp.path().join(format!("a/b/{i}")), b"").unwrap();
        }
        let (files, batches) = walk_all(tmp.path(), Batch { entries: usize::MAX, path_bytes: 10_000 });
        assert_eq!(files.len(), 520);
        let mut dedup = files.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), 520, "nothing listed twice");
        // 500 paths of 205 bytes: over 100 KB, so at least ten batches of 10 KB.
        assert!(batches >= 10, "{batches} batches");
        let (files, batches) = walk_all(tmp.path(), Batch { entries: 7, path_bytes: usize::MAX });
        assert_eq!(files.len(), 520);
        assert!(batches >= 522 / 7, "{batches} batches of 7 entries");
        // Bounds smaller than one path still make progress, one entry per batch.
        let (files, _) = walk_all(tmp.path(), Batch { entries: 1, path_bytes: 1 });
        assert_eq!(files.len(), 520);
    }

    #[test]
    fn deeper_than_path_max_and_in_batches() {
        let tmp = tempfile::tempdir().unwrap();
        // 600 levels of 9-byte names: a path of 6,000 bytes, over PATH_MAX. Built through fds.
        let mut dir = safefs::open_root(tmp.path()).unwrap();
        let mut rel = PathBuf::new();
        for _ in 0..600 {
            rustix::fs::mkdirat(&dir, "deeplevel", rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
            dir = rustix::fs::openat(&dir, "deeplevel", OFlags::PATH | OFlags::DIRECTORY, rustix::fs::Mode::empty())
                .unwrap();
            rel.push("deeplevel");
        }
        let f = rustix::fs::openat(
            &dir,
            "x.AppImage",
            OFlags::CREATE | OFlags::WRONLY,
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .unwrap();
        drop(f);
        for i in 0..10 {
            std::fs::write(tmp.path().join(format!("decoy{i}")), b"x").unwrap();
        }
        let deep = rel.join("x.AppImage");
        assert!(deep.as_os_str().len() > 4096);
        let (files, batches) = all(tmp.path(), 1_000_000);
        assert_eq!(batches, 1);
        assert_eq!(files.len(), 11);
        assert!(files.contains(&deep));
        let (files, batches) = all(tmp.path(), 7);
        assert!(batches > 1, "the bound stops a walk");
        assert_eq!(files.len(), 11, "and continuing it finds everything once");
        let root = safefs::open_root(tmp.path()).unwrap();
        assert!(open_long(&root, &deep, OFlags::RDONLY).is_ok());
    }
}
