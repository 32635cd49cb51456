//! Listing the files beneath a folder root: iterative (no recursion, no depth limit), through
//! directory fds opened beneath the root (so a path longer than PATH_MAX is still reached, in
//! chunks), never following symlinks, never crossing a mount (a bind mount inside a watched
//! folder is not entered), and with each directory visited once by device and inode (no loop).
//!
//! The one bound that stays is entries per batch: a walk that reaches it stops, keeps where it
//! was, and the caller continues it in a later turn of the core loop.

use std::collections::HashSet;
use std::ffi::OsStr;
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

/// A walk in progress beneath one root.
pub struct Walk {
    /// Directories still to list, relative to the root.
    pending: Vec<PathBuf>,
    visited: HashSet<FileId>,
    /// Whether the walk started at the root itself (a completed pass then covers the root).
    pub whole_root: bool,
}

impl Walk {
    pub fn new(start: PathBuf) -> Self {
        let whole_root = start.as_os_str().is_empty();
        Self { pending: vec![start], visited: HashSet::new(), whole_root }
    }

    pub fn done(&self) -> bool {
        self.pending.is_empty()
    }

    /// Lists up to `max` entries (files and directories) into `files` (paths relative to the
    /// root). Returns true when the walk is complete, false when it stopped at the bound.
    pub fn run(&mut self, root: &OwnedFd, max: usize, files: &mut Vec<PathBuf>) -> bool {
        self.run_with(root, max, files, &mut |_, _, _| {})
    }

    /// [`Walk::run`], calling `on_dir` with each directory (relative to the root), its opened
    /// fd and metadata before it is listed (the watcher watches it there, so nothing created
    /// in it after the listing goes unseen).
    pub fn run_with(
        &mut self,
        root: &OwnedFd,
        max: usize,
        files: &mut Vec<PathBuf>,
        on_dir: &mut dyn FnMut(&Path, &OwnedFd, &safefs::Meta),
    ) -> bool {
        let mut seen = 0usize;
        while let Some(dir) = self.pending.pop() {
            if seen >= max {
                self.pending.push(dir);
                return false;
            }
            let fd = match open_long(root, &dir, OFlags::RDONLY | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(_) => {
                    // Not a directory: the start may name a file.
                    if !dir.as_os_str().is_empty()
                        && open_long(root, &dir, OFlags::PATH).and_then(|fd| safefs::meta(&fd)).is_ok_and(|m| m.is_file)
                    {
                        files.push(dir);
                    }
                    continue;
                }
            };
            let Ok(m) = safefs::meta(&fd) else { continue };
            if !self.visited.insert(m.id) {
                continue;
            }
            on_dir(&dir, &fd, &m);
            let Ok(mut entries) = rustix::fs::Dir::new(fd) else { continue };
            let mut subdirs = Vec::new();
            while let Some(Ok(e)) = entries.next() {
                let name = e.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                seen += 1;
                let rel = dir.join(OsStr::from_bytes(name));
                match e.file_type() {
                    FileType::Directory => subdirs.push(rel),
                    FileType::RegularFile => files.push(rel),
                    FileType::Unknown => {
                        // Filesystems without d_type: ask, without following a symlink.
                        match open_long(root, &rel, OFlags::PATH).and_then(|fd| safefs::meta(&fd)) {
                            Ok(m) if m.is_dir => subdirs.push(rel),
                            Ok(m) if m.is_file => files.push(rel),
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            // Depth first, in listing order.
            self.pending.extend(subdirs.into_iter().rev());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(root: &Path, max: usize) -> (Vec<PathBuf>, usize) {
        let fd = safefs::open_root(root).unwrap();
        let mut w = Walk::new(PathBuf::new());
        let mut files = Vec::new();
        let mut batches = 1;
        while !w.run(&fd, max, &mut files) {
            batches += 1;
        }
        files.sort();
        (files, batches)
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
