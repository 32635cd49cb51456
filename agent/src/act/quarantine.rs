//! The quarantine store: reversible removal of banned files, with evidence.
//!
//! Layout (root-only, 0700): `<id>.bin` is the quarantined file itself (moved, not copied, when
//! it is on the store's filesystem), `<id>.json` its manifest (original path, owner, mode,
//! sha256, rule, time, device and inode).
//!
//! Order of a quarantine, each step through fds (see `safefs`): the file was opened beneath its
//! root and hashed (or, when its verdict could not depend on the hash, it is hashed through the
//! same fd right after the move and `complete` fills the manifest's sha256); its parent is opened beneath the root and the name is checked to still be
//! that inode; processes running it are killed; the manifest is attached to the inode as an
//! xattr; the name is renamed into the store with RENAME_NOREPLACE; the stored name is checked to
//! be the same inode (else it is moved back and the race reported); modes are stripped through
//! the fd; the manifest file is written atomically.
//! **Crash safety:** a crash after the rename leaves `<id>.bin` with its xattr, from which
//! `recover` rebuilds the manifest (hashing the stored file when the sha256 was not taken yet);
//! a crash before it leaves the file where it was.
//!
//! A second kind of entry records an Android app suspended through its package manager
//! (`Manifest::suspension`; no `<id>.bin`, nothing moved): written as an intent before the first
//! `cmd package suspend` runs, so a crash at any later instant leaves an entry that restore (an
//! idempotent `cmd package unsuspend` per user listed) undoes. `recover` keeps such entries;
//! `restore` and `purge` here refuse them (the daemon routes them to the package worker).

use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use embargo_policy::metadata::Time;
use embargo_policy::rules::Action;
use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};

use crate::safefs::{self, FileId, Meta};

const XATTR: &str = "trusted.embargo.manifest";
/// Largest file copied into the main store when its filesystem has no per-filesystem store.
pub const COPY_MAX: u64 = 1 << 30;
/// Share of the main store's filesystem a copy must leave free.
pub const COPY_RESERVE_PERCENT: u64 = 5;
/// Name of the per-filesystem store at the top of a filesystem other than the main store's.
pub const FS_STORE: &str = ".embargo-quarantine";
const XATTR_USER: &str = "user.embargo.manifest";
pub const MANIFEST_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: the file changed while it was being quarantined (replaced or renamed); nothing was moved")]
    Raced { path: String },
    #[error("no quarantined item {0:?}")]
    NoSuchItem(String),
    #[error("{path}: something already exists at the original location; not overwritten")]
    Occupied { path: String },
    /// Acting on this file could act on something outside the watched root or on another user's
    /// file (see `check_acceptable`); reported, nothing touched.
    #[error("{path}: refused, nothing touched: {reason}")]
    Refused { path: String, reason: String },
}

/// What was quarantined, where from, and why. Written beside the file and returned by `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    pub id: String,
    pub original_path: String,
    pub root: String,
    pub rel: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub size: u64,
    pub sha256: String,
    pub rule: String,
    pub action: Action,
    pub app_kind: String,
    pub app_id: String,
    pub quarantined_at: Time,
    /// For `remove` rules on unmanaged apps: purged after this time.
    pub purge_after: Option<Time>,
    pub dev: u64,
    pub ino: u64,
    /// Processes that were running the file and were killed.
    #[serde(default)]
    pub killed_pids: Vec<i32>,
    /// `root` and `rel` as bytes (hex), present only when they are not valid UTF-8: names are
    /// bytes on Linux, and `root`/`rel`/`original_path` above are then lossy (U+FFFD) for
    /// display only. Restore uses these. Manifests written before this field load unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rel_hex: Option<String>,
    /// The per-filesystem store holding `<id>.bin` when the file was on another filesystem than
    /// the main store (see `QuarantineStore::fs_store`); absent: the main store. The manifest
    /// itself is always in the main store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_dir: Option<String>,
    /// An Android app suspended through `cmd package suspend` instead of a moved file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspension: Option<Suspension>,
    /// Bytes the file had allocated on disk when it was quarantined (what it costs its owner's
    /// quota; a sparse file counts its data, not its length). Absent in older manifests: `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<u64>,
}

/// Bytes `f` has allocated on disk (st_blocks × 512).
pub fn allocated_bytes(f: &std::fs::File) -> std::io::Result<u64> {
    Ok((rustix::fs::fstat(f)?.st_blocks as u64).saturating_mul(512))
}

/// What a suspension entry undoes: `cmd package unsuspend --user U PACKAGE` for each user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suspension {
    pub package: String,
    /// The users the agent suspended it for (or was about to: see `state`).
    pub users: Vec<u32>,
    /// `intent`: written before the suspend commands ran (a crash may have left any of them
    /// done or not); `suspended`: their results are in.
    pub state: String,
}

pub const SUSPENSION_INTENT: &str = "intent";
pub const SUSPENSION_DONE: &str = "suspended";

/// Writes a manifest into the store directory `dir` atomically (the package worker writes a
/// suspension's intent with this, off the loop; the store directory is the agent's own).
pub fn write_manifest_in(dir: &Path, m: &Manifest) -> Result<(), QuarantineError> {
    let mut bytes = serde_json::to_vec_pretty(m).expect("manifest serializes");
    bytes.push(b'\n');
    embargo_policy::fsutil::write_atomic(dir, &format!("{}.json", m.id), &bytes, 0o600).map_err(io(dir.display()))
}

/// The hex of `p`'s bytes when `p` is not valid UTF-8 (else its `&str` form is lossless).
fn hex_unless_utf8(p: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt as _;
    p.to_str().is_none().then(|| hex::encode(p.as_os_str().as_bytes()))
}

fn path_from(text: &str, hex: Option<&str>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    match hex.and_then(|h| hex::decode(h).ok()) {
        Some(bytes) => PathBuf::from(std::ffi::OsString::from_vec(bytes)),
        None => PathBuf::from(text),
    }
}

impl Manifest {
    /// What the item costs its owner's quarantine quota, in bytes.
    pub fn cost(&self) -> u64 {
        self.allocated.unwrap_or(self.size)
    }

    /// The watched root the file was in, losslessly.
    pub fn root_path(&self) -> PathBuf {
        path_from(&self.root, self.root_hex.as_deref())
    }

    /// The file's path relative to its root, losslessly.
    pub fn rel_path(&self) -> PathBuf {
        path_from(&self.rel, self.rel_hex.as_deref())
    }

    /// The original path's bytes.
    pub fn original_path_bytes(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStringExt as _;
        self.root_path().join(self.rel_path()).into_os_string().into_vec()
    }
}

/// One item to quarantine.
pub struct Request<'a> {
    pub root_path: &'a Path,
    pub root_fd: &'a OwnedFd,
    pub rel: &'a Path,
    pub file: &'a std::fs::File,
    pub meta: &'a Meta,
    pub sha256: &'a str,
    pub rule: &'a str,
    pub action: Action,
    pub app_kind: &'a str,
    pub app_id: &'a str,
    pub purge_after: Option<Time>,
}

#[derive(Debug)]
pub struct QuarantineStore {
    dir: PathBuf,
    fd: OwnedFd,
    /// The main store's filesystem.
    dev: u64,
    counter: std::sync::atomic::AtomicU64,
}

fn io(path: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> QuarantineError {
    move |source| QuarantineError::Io { path: path.to_string(), source }
}

/// Whether the agent may act on a file (kill what runs it, move it, strip its mode), given its
/// current fstat and the owner of the watched root it is in ("the folder's user":
/// `/home/alice/Downloads` → alice).
/// - More than one hard link: refused. The other name may be outside the watched roots (another
///   user's file, a setuid binary where `fs.protected_hardlinks=0`), and killing or stripping the
///   inode would act there.
/// - Not owned by the folder's user: refused, unless the root is root-owned (`/opt`, a
///   system-wide root), which accepts files of any owner: only a file with one name, which is
///   inside the root, gets there.
pub fn check_acceptable(m: &Meta, root_owner: u32) -> Result<(), String> {
    if m.nlink != 1 {
        return Err(format!("the file has {} hard links (another name may be outside the watched roots)", m.nlink));
    }
    if root_owner != 0 && m.uid != root_owner {
        return Err(format!("the file is owned by uid {}, not by uid {root_owner} who owns the watched folder", m.uid));
    }
    Ok(())
}

/// `fs.protected_hardlinks` (read once): with 0, users may hard link files they do not own into
/// their folders. Such files are refused anyway (`check_acceptable`), but the device is weaker
/// and `status` says so. `None`: could not be read.
pub fn hardlinks_protected() -> Option<bool> {
    static READ: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *READ.get_or_init(|| std::fs::read_to_string("/proc/sys/fs/protected_hardlinks").ok().map(|v| v.trim() != "0"))
}

impl QuarantineStore {
    /// Opens (creating) the store directory, mode 0700.
    pub fn open(dir: &Path) -> Result<Self, QuarantineError> {
        embargo_policy::fsutil::ensure_dir(dir, 0o700).map_err(io(dir.display()))?;
        let fd = safefs::open_root(dir).map_err(io(dir.display()))?;
        let dev = safefs::meta(&fd).map_err(io(dir.display()))?.id.dev;
        Ok(Self { dir: dir.to_path_buf(), fd, dev, counter: std::sync::atomic::AtomicU64::new(0) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn new_id(&self) -> String {
        let n = self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        format!("q{t:x}{n:04x}")
    }

    /// The per-filesystem store for files on filesystem `dev` under `root_path`:
    /// `<top>/.embargo-quarantine`, where `<top>` is the highest ancestor of the root still on
    /// `dev` (the mount point). Used only when `<top>` is root-owned and not writable by others
    /// unless sticky (so no user can rename the store away), and the store directory is ours:
    /// created 0700, opened without following links, root-owned, 0700, on `dev`. `None`: no
    /// such store; the caller falls back to the bounded copy.
    fn fs_store(&self, root_path: &Path, dev: u64) -> Option<(OwnedFd, PathBuf)> {
        use std::os::unix::fs::MetadataExt as _;
        let mut top = root_path;
        while let Some(parent) = top.parent() {
            if std::fs::symlink_metadata(parent).ok()?.dev() != dev {
                break;
            }
            top = parent;
        }
        let top_fd = safefs::open_root(top).ok()?;
        let t = safefs::meta(&top_fd).ok()?;
        if t.id.dev != dev || t.uid != 0 || (t.mode & 0o022 != 0 && t.mode & 0o1000 == 0) {
            tracing::warn!(top = %top.display(), "no per-filesystem quarantine store: the filesystem's top directory is not root-owned and protected");
            return None;
        }
        let _ = rustix::fs::mkdirat(&top_fd, FS_STORE, rustix::fs::Mode::from_raw_mode(0o700));
        let fd = safefs::open_beneath(&top_fd, Path::new(FS_STORE), OFlags::PATH | OFlags::DIRECTORY).ok()?;
        let m = safefs::meta(&fd).ok()?;
        if m.id.dev != dev || m.uid != rustix::process::geteuid().as_raw() || m.mode & 0o077 != 0 {
            tracing::warn!(store = %top.join(FS_STORE).display(), "refusing a per-filesystem quarantine store not owned by us with mode 0700");
            return None;
        }
        Some((fd, top.join(FS_STORE)))
    }

    /// The directory holding `m`'s payload, checked as `fs_store` checks it.
    fn payload_dir(&self, m: &Manifest) -> Result<OwnedFd, QuarantineError> {
        let Some(dir) = &m.payload_dir else {
            return rustix::fs::openat(
                &self.fd,
                ".",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| io(self.dir.display())(e.into()));
        };
        let fd = safefs::open_root(Path::new(dir)).map_err(io(dir))?;
        let meta = safefs::meta(&fd).map_err(io(dir))?;
        if meta.uid != rustix::process::geteuid().as_raw() || meta.mode & 0o077 != 0 {
            return Err(QuarantineError::Refused {
                path: dir.clone(),
                reason: "the per-filesystem quarantine store is not ours with mode 0700".into(),
            });
        }
        Ok(fd)
    }

    /// The checks before a quarantine or an in-place delete acts: the name (through its
    /// parent's fd, beneath the root) still is the judged inode, and that inode — which the act
    /// kills and moves or unlinks — has one link and the folder's user (or root) as its owner.
    /// Returns the path as shown, the parent's fd and the name in it.
    fn still_acceptable<'r>(r: &Request<'r>) -> Result<(String, OwnedFd, &'r std::ffi::OsStr), QuarantineError> {
        let shown = r.root_path.join(r.rel).display().to_string();
        let (parent, name) = safefs::open_parent_beneath(r.root_fd, r.rel).map_err(io(&shown))?;
        match safefs::meta_at(&parent, name) {
            Ok(m) if m.id == r.meta.id => {}
            Ok(_) | Err(_) => return Err(QuarantineError::Raced { path: shown }),
        }
        let now = safefs::meta(r.file).map_err(io(&shown))?;
        let root_owner = safefs::meta(r.root_fd).map_err(io(r.root_path.display()))?.uid;
        check_acceptable(&now, root_owner)
            .map_err(|reason| QuarantineError::Refused { path: shown.clone(), reason })?;
        Ok((shown, parent, name))
    }

    /// Quarantines one file (see the module header for the order of steps).
    pub fn quarantine(&self, r: Request<'_>) -> Result<Manifest, QuarantineError> {
        let (shown, parent, name) = Self::still_acceptable(&r)?;
        let killed_pids = super::process::kill_processes_running(r.meta.id);
        let id = self.new_id();
        let mut manifest = Manifest {
            schema_version: MANIFEST_SCHEMA_VERSION,
            id: id.clone(),
            original_path: shown.clone(),
            root: r.root_path.display().to_string(),
            rel: r.rel.display().to_string(),
            uid: r.meta.uid,
            gid: r.meta.gid,
            mode: r.meta.mode,
            size: r.meta.size,
            sha256: r.sha256.to_owned(),
            rule: r.rule.to_owned(),
            action: r.action,
            app_kind: r.app_kind.to_owned(),
            app_id: r.app_id.to_owned(),
            quarantined_at: Time::now(),
            purge_after: r.purge_after,
            dev: r.meta.id.dev,
            ino: r.meta.id.ino,
            killed_pids,
            root_hex: hex_unless_utf8(r.root_path),
            rel_hex: hex_unless_utf8(r.rel),
            payload_dir: None,
            suspension: None,
            allocated: Some(allocated_bytes(r.file).unwrap_or(r.meta.size)),
        };
        // On another filesystem than the main store: move into that filesystem's own store, so
        // the quarantine stays a rename (no copy of a large or sparse file onto the system disk).
        let fs_store = if r.meta.id.dev != self.dev { self.fs_store(r.root_path, r.meta.id.dev) } else { None };
        if let Some((_, dir)) = &fs_store {
            manifest.payload_dir = Some(dir.display().to_string());
        }
        let record = serde_json::to_vec(&manifest).expect("manifest serializes");
        let tagged = safefs::set_xattr(r.file, XATTR, &record)
            .or_else(|_| safefs::set_xattr(r.file, XATTR_USER, &record))
            .is_ok();
        if !tagged || fs_store.is_some() {
            // No xattrs here, or a per-filesystem store (which `recover` does not scan): make
            // the manifest durable before the move instead.
            self.write_manifest(&manifest)?;
        }
        let bin = format!("{id}.bin");
        let target = fs_store.as_ref().map_or(&self.fd, |(fd, _)| fd);
        match safefs::rename_noreplace(&parent, name, target, bin.as_ref()) {
            Ok(()) => {
                let moved = safefs::meta_at(target, &bin).map_err(io(&shown))?;
                if moved.id != r.meta.id {
                    // Someone swapped the name between our check and the rename: put back
                    // what we took, untouched, and report.
                    let _ = safefs::rename_noreplace(target, bin.as_ref(), &parent, name);
                    let _ = self.remove_manifest(&id);
                    return Err(QuarantineError::Raced { path: shown });
                }
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
                if let Err(reason) = self.copy_fits(manifest.cost()) {
                    let _ = self.remove_manifest(&id);
                    return Err(QuarantineError::Refused { path: shown, reason });
                }
                self.copy_in(&r, &parent, name, &bin, &record).inspect_err(|_| {
                    let _ = self.remove_manifest(&id);
                })?;
            }
            Err(e) => {
                let _ = self.remove_manifest(&id);
                return Err(io(&shown)(e));
            }
        }
        // Strip every permission bit through the fd: the store is root-only anyway, and the
        // original mode is in the manifest for restore.
        let _ = safefs::fchmod(r.file, 0o400);
        manifest.quarantined_at = Time::now();
        // Moved before its hash: the caller hashes through the fd and `complete` writes the
        // manifest once (the xattr, or the manifest written above, covers a crash meanwhile).
        if !r.sha256.is_empty() || !tagged || fs_store.is_some() {
            self.write_manifest(&manifest)?;
        }
        Ok(manifest)
    }

    /// Whether a copy of `size` allocated bytes into the main store is allowed: at most
    /// `COPY_MAX`, and the store's filesystem keeps `COPY_RESERVE_PERCENT` of its space free
    /// afterwards. (The copy keeps holes, so a sparse file costs its data only.)
    fn copy_fits(&self, size: u64) -> Result<(), String> {
        if size > COPY_MAX {
            return Err(format!(
                "on another filesystem with no per-filesystem store, and more data ({size} bytes allocated) than the {COPY_MAX}-byte copy limit"
            ));
        }
        let st = rustix::fs::fstatvfs(&self.fd).map_err(|e| format!("statvfs of the store: {e}"))?;
        let avail = st.f_bavail.saturating_mul(st.f_frsize);
        let reserve = st.f_blocks.saturating_mul(st.f_frsize) / 100 * COPY_RESERVE_PERCENT;
        if avail < size.saturating_add(reserve) {
            return Err(format!(
                "copying {size} bytes would leave the store's filesystem under {COPY_RESERVE_PERCENT}% free"
            ));
        }
        Ok(())
    }

    /// The store is on another filesystem: copy through the fd, make it durable, then unlink the
    /// original name if it still is the same inode.
    fn copy_in(
        &self,
        r: &Request<'_>,
        parent: &OwnedFd,
        name: &std::ffi::OsStr,
        bin: &str,
        record: &[u8],
    ) -> Result<(), QuarantineError> {
        let shown = r.root_path.join(r.rel).display().to_string();
        let fd = rustix::fs::openat(
            &self.fd,
            bin,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            rustix::fs::Mode::from_raw_mode(0o400),
        )
        .map_err(|e| io(&shown)(e.into()))?;
        let mut out = std::fs::File::from(fd);
        if let Err(e) = copy_sparse(r.file, &out, r.meta.size, COPY_MAX) {
            let _ = safefs::unlink_at(&self.fd, bin);
            return Err(io(&shown)(e));
        }
        let _ = safefs::set_xattr(&out, XATTR, record).or_else(|_| safefs::set_xattr(&out, XATTR_USER, record));
        out.flush().and_then(|()| out.sync_all()).map_err(io(&shown))?;
        match safefs::meta_at(parent, name) {
            Ok(m) if m.id == r.meta.id => safefs::unlink_at(parent, name).map_err(io(&shown)),
            _ => {
                let _ = safefs::unlink_at(&self.fd, bin);
                Err(QuarantineError::Raced { path: shown })
            }
        }
    }

    /// Deletes a banned file where it is, instead of quarantining it (its owner's quarantine
    /// quota cannot hold it: see `quota`). The same checks as `quarantine` come first (the name
    /// still is that inode, one link, the folder's user's file), then processes running it are
    /// killed and the name unlinked through its parent's fd. Returns the killed pids.
    pub fn delete_in_place(&self, r: &Request<'_>) -> Result<Vec<i32>, QuarantineError> {
        let (shown, parent, name) = Self::still_acceptable(r)?;
        let killed = super::process::kill_processes_running(r.meta.id);
        // Whatever the name holds by now is in the folder's user's own directory (or a
        // root-owned one), so unlinking it removes only a name that user could remove.
        safefs::unlink_at(&parent, name).map_err(io(&shown))?;
        Ok(killed)
    }

    /// Completes and writes the manifest of an item moved before its hash was known (the
    /// `Manifest` that `quarantine` returned, updated in place): the sha256 taken through the fd after the move
    /// (empty if it could not be read), and the rule that the hash confirmed or brought.
    pub fn complete(
        &self,
        m: &mut Manifest,
        sha256: &str,
        rule: &str,
        action: Action,
        purge_after: Option<Time>,
    ) -> Result<(), QuarantineError> {
        m.sha256 = sha256.to_owned();
        m.rule = rule.to_owned();
        m.action = action;
        m.purge_after = purge_after;
        self.write_manifest(m)
    }

    pub fn write_manifest(&self, m: &Manifest) -> Result<(), QuarantineError> {
        write_manifest_in(&self.dir, m)
    }

    /// Drops an entry's manifest (a suspension undone, or one whose app is gone).
    pub fn forget(&self, id: &str) -> Result<(), QuarantineError> {
        if !Self::valid_id(id) {
            return Err(QuarantineError::NoSuchItem(id.into()));
        }
        self.remove_manifest(id).map_err(io(self.dir.display()))?;
        let _ = embargo_policy::fsutil::sync_dir(&self.dir);
        Ok(())
    }

    fn refuse_suspension(m: &Manifest) -> Result<(), QuarantineError> {
        match &m.suspension {
            Some(s) => Err(QuarantineError::Refused {
                path: m.original_path.clone(),
                reason: format!("{} is a suspended Android app, undone through its package manager", s.package),
            }),
            None => Ok(()),
        }
    }

    fn remove_manifest(&self, id: &str) -> std::io::Result<()> {
        match safefs::unlink_at(&self.fd, format!("{id}.json")) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn valid_id(id: &str) -> bool {
        id.len() <= 64 && id.starts_with('q') && id[1..].bytes().all(|b| b.is_ascii_hexdigit())
    }

    pub fn get(&self, id: &str) -> Result<Manifest, QuarantineError> {
        if !Self::valid_id(id) {
            return Err(QuarantineError::NoSuchItem(id.into()));
        }
        let path = self.dir.join(format!("{id}.json"));
        let bytes = embargo_policy::fsutil::read_capped(&path, 1 << 20).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                QuarantineError::NoSuchItem(id.into())
            } else {
                io(path.display())(e)
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| io(path.display())(std::io::Error::other(e)))
    }

    /// Every quarantined item, oldest first.
    pub fn list(&self) -> Vec<Manifest> {
        let mut out: Vec<Manifest> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(str::to_owned))
            .filter_map(|id| self.get(&id).ok())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Puts a quarantined file back where it was, with its mode and owner. Refuses to overwrite.
    pub fn restore(&self, id: &str) -> Result<Manifest, QuarantineError> {
        let m = self.get(id)?;
        Self::refuse_suspension(&m)?;
        let root = safefs::open_root(&m.root_path()).map_err(io(&m.root))?;
        let rel = m.rel_path();
        let name = rel.file_name().ok_or_else(|| QuarantineError::NoSuchItem(id.into()))?.to_owned();
        let parent =
            safefs::mkdirs_beneath(&root, rel.parent().unwrap_or(Path::new(""))).map_err(io(&m.original_path))?;
        let bin = format!("{id}.bin");
        let store = self.payload_dir(&m)?;
        let payload = rustix::fs::openat(
            &store,
            bin.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| io(&m.original_path)(e.into()))?;
        if m.payload_dir.is_some()
            && safefs::meta(&payload).map_err(io(&m.original_path))?.id != (FileId { dev: m.dev, ino: m.ino })
        {
            // A per-filesystem store holds the very inode that was moved; anything else there
            // is not restored (and not chowned to the user).
            return Err(QuarantineError::Refused {
                path: m.original_path.clone(),
                reason: "the stored payload is not the inode that was quarantined".into(),
            });
        }
        if safefs::meta_at(&parent, name.as_os_str()).is_ok() {
            return Err(QuarantineError::Occupied { path: m.original_path.clone() });
        }
        match safefs::rename_noreplace(&store, bin.as_ref(), &parent, &name) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
                let fd = rustix::fs::openat(
                    &parent,
                    &name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    rustix::fs::Mode::from_raw_mode(0o600),
                )
                .map_err(|e| io(&m.original_path)(e.into()))?;
                let out = std::fs::File::from(fd);
                // Holes stay holes on the way back too.
                let stored = std::fs::File::from(payload.try_clone().map_err(io(&m.original_path))?);
                copy_sparse(&stored, &out, m.size, u64::MAX).map_err(io(&m.original_path))?;
                out.sync_all().map_err(io(&m.original_path))?;
                restore_owner(&out, &m);
                safefs::unlink_at(&store, &bin).map_err(io(&m.original_path))?;
                self.remove_manifest(id).map_err(io(self.dir.display()))?;
                return Ok(m);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(QuarantineError::Occupied { path: m.original_path.clone() })
            }
            Err(e) => return Err(io(&m.original_path)(e)),
        }
        restore_owner(&payload, &m);
        self.remove_manifest(id).map_err(io(self.dir.display()))?;
        let _ = embargo_policy::fsutil::sync_dir(&self.dir);
        Ok(m)
    }

    /// Deletes a quarantined file and its manifest for good.
    pub fn purge(&self, id: &str) -> Result<Manifest, QuarantineError> {
        let m = self.get(id)?;
        Self::refuse_suspension(&m)?;
        match safefs::unlink_at(self.payload_dir(&m)?, format!("{id}.bin")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&m.original_path)(e)),
        }
        self.remove_manifest(id).map_err(io(self.dir.display()))?;
        let _ = embargo_policy::fsutil::sync_dir(&self.dir);
        Ok(m)
    }

    /// Purges items whose retention has passed. Returns them.
    pub fn purge_expired(&self, now: Time) -> Vec<Manifest> {
        self.list()
            .into_iter()
            .filter(|m| m.purge_after.is_some_and(|t| t <= now))
            .filter_map(|m| self.purge(&m.id).ok())
            .collect()
    }

    /// After a crash: rebuilds manifests of stored files from their xattr, and drops manifests
    /// whose file is gone (a restore that finished moving but not cleaning up). Returns what it fixed.
    pub fn recover(&self) -> Vec<String> {
        let mut fixed = Vec::new();
        let names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        // A set, so recovery stays linear in the store's size (20,000 items: two lookups each).
        let present: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        for n in &names {
            if n.starts_with('.') && n.contains(".tmp.") {
                // A manifest write that a crash interrupted before its rename.
                if safefs::unlink_at(&self.fd, n).is_ok() {
                    fixed.push(format!("removed interrupted write {n}"));
                }
                continue;
            }
            if let Some(id) = n.strip_suffix(".bin") {
                if present.contains(format!("{id}.json").as_str()) {
                    continue;
                }
                let Ok(fd) = rustix::fs::openat(
                    &self.fd,
                    n.as_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                ) else {
                    continue;
                };
                let record = safefs::get_xattr(&fd, XATTR).or_else(|_| safefs::get_xattr(&fd, XATTR_USER));
                if let Some(mut m) = record.ok().and_then(|r| serde_json::from_slice::<Manifest>(&r).ok()) {
                    if m.sha256.is_empty() {
                        m.sha256 = self.hash_stored(&m).unwrap_or_default();
                    }
                    if self.write_manifest(&m).is_ok() {
                        fixed.push(format!("rebuilt manifest of {id} ({})", m.original_path));
                    }
                }
            } else if let Some(id) = n.strip_suffix(".json") {
                // A suspension has no payload: it stays until restored (its intent, too: the
                // commands may have run before a crash, and restore undoes them).
                if self.get(id).is_ok_and(|m| m.suspension.is_some()) {
                    continue;
                }
                // A payload in a per-filesystem store is looked up there.
                let elsewhere = self.get(id).ok().filter(|m| m.payload_dir.is_some());
                let payload_there = match &elsewhere {
                    Some(m) => self.payload_dir(m).is_ok_and(|d| {
                        safefs::meta_at(&d, format!("{id}.bin"))
                            .is_ok_and(|p| p.id == FileId { dev: m.dev, ino: m.ino })
                    }),
                    None => present.contains(format!("{id}.bin").as_str()),
                };
                if Self::valid_id(id) && !payload_there {
                    // The payload was restored (or never moved): the manifest is stale.
                    if self.remove_manifest(id).is_ok() {
                        fixed.push(format!("dropped stale manifest {id}"));
                    }
                } else if let Ok(mut m) = self.get(id) {
                    // Moved before it was hashed, and the daemon stopped before the hash.
                    if m.sha256.is_empty() {
                        if let Some(sha) = self.hash_stored(&m) {
                            m.sha256 = sha;
                            if self.write_manifest(&m).is_ok() {
                                fixed.push(format!("hashed {id} ({})", m.original_path));
                            }
                        }
                    }
                }
            }
        }
        fixed
    }
}

impl QuarantineStore {
    /// The sha256 of a stored payload, read through an fd opened without following links.
    fn hash_stored(&self, m: &Manifest) -> Option<String> {
        let fd = rustix::fs::openat(
            self.payload_dir(m).ok()?,
            format!("{}.bin", m.id).as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok()?;
        crate::identify::sha256_of(&mut std::fs::File::from(fd)).ok()
    }
}

/// Copies `src` (of length `size`) into `dst` keeping its holes: only the data ranges that
/// SEEK_DATA/SEEK_HOLE report are read and written, so a sparse file costs the store what it
/// costs its owner. Fails (the caller removes the partial copy) past `max_data` bytes of data,
/// which only a file written to while it is copied reaches (the caller checked its allocation).
fn copy_sparse(src: &std::fs::File, dst: &std::fs::File, size: u64, max_data: u64) -> std::io::Result<u64> {
    use rustix::fs::SeekFrom;
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0u8; 1 << 20];
    let (mut off, mut data) = (0u64, 0u64);
    while off < size {
        let start = match rustix::fs::seek(src, SeekFrom::Data(off)) {
            Ok(p) => p,
            // No data after `off`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            // A filesystem without SEEK_DATA: all of it is data.
            Err(rustix::io::Errno::INVAL) => off,
            Err(e) => return Err(e.into()),
        };
        let end = match rustix::fs::seek(src, SeekFrom::Hole(start)) {
            Ok(p) => p.min(size),
            Err(_) => size,
        };
        if end <= start {
            break;
        }
        let mut pos = start;
        while pos < end {
            let want = usize::try_from(end - pos).unwrap_or(usize::MAX).min(buf.len());
            let n = src.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                break;
            }
            data += n as u64;
            if data > max_data {
                return Err(std::io::Error::other(format!(
                    "more than {max_data} bytes of data (written to while being copied)"
                )));
            }
            dst.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
        }
        off = end;
    }
    dst.set_len(size)?;
    Ok(data)
}

fn restore_owner(fd: impl AsFd, m: &Manifest) {
    let _ = safefs::fchown(fd.as_fd(), m.uid, m.gid);
    let _ = safefs::fchmod(fd, m.mode);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quarantine_one(store: &QuarantineStore, root: &Path, name: &str) -> Manifest {
        quarantine_with_sha(store, root, name, "00")
    }

    fn quarantine_with_sha(store: &QuarantineStore, root: &Path, name: &str, sha256: &str) -> Manifest {
        quarantine_named(store, root, name.as_ref(), sha256).unwrap()
    }

    fn quarantine_named(
        store: &QuarantineStore,
        root: &Path,
        name: &std::ffi::OsStr,
        sha256: &str,
    ) -> Result<Manifest, QuarantineError> {
        use std::os::unix::fs::PermissionsExt as _;
        let p = root.join(name);
        std::fs::write(&p, b"payload").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o750)).unwrap();
        quarantine_existing(store, root, Path::new(name), sha256).0
    }

    /// Quarantines the existing file `root/rel` as the daemon does (opened beneath the root,
    /// rule "r"); with the metadata it was opened with.
    fn quarantine_existing(
        store: &QuarantineStore,
        root: &Path,
        rel: &Path,
        sha256: &str,
    ) -> (Result<Manifest, QuarantineError>, Meta) {
        let root_fd = safefs::open_root(root).unwrap();
        let (file, meta) = safefs::open_file_beneath(&root_fd, rel).unwrap();
        let r = store.quarantine(Request {
            root_path: root,
            root_fd: &root_fd,
            rel,
            file: &file,
            meta: &meta,
            sha256,
            rule: "r",
            action: Action::Quarantine,
            app_kind: "file",
            app_id: &rel.to_string_lossy(),
            purge_after: None,
        });
        (r, meta)
    }

    #[test]
    fn names_that_are_not_utf8_or_hold_newlines_or_are_255_bytes_quarantine_and_restore() {
        use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join(std::ffi::OsStr::from_bytes(b"r\xffoot"));
        std::fs::create_dir_all(&root).unwrap();
        let store = QuarantineStore::open(&tmp.path().join("q")).unwrap();
        let long = vec![b'W'; 255];
        for name in [&b"WeChat\xff.AppImage"[..], b"We\nChat.AppImage", &long, b"\xfe\n\x1b[31m\xe2\x80\xae"] {
            let name = std::ffi::OsStr::from_bytes(name);
            let m = quarantine_named(&store, &root, name, "00").unwrap_or_else(|e| panic!("{name:?}: {e}"));
            assert!(!root.join(name).exists(), "{name:?} still in place");
            // The manifest on disk names the file losslessly.
            let back = store.get(&m.id).unwrap();
            assert_eq!(back.original_path_bytes(), root.join(name).into_os_string().into_vec(), "{name:?}");
            store.restore(&m.id).unwrap_or_else(|e| panic!("restore {name:?}: {e}"));
            assert_eq!(std::fs::read(root.join(name)).unwrap(), b"payload", "{name:?} restored");
            std::fs::remove_file(root.join(name)).unwrap();
        }
        assert!(store.list().is_empty());
    }

    /// Finding 13: through a hard link under a banned name, the agent would have killed every
    /// process running a file outside the roots and stripped its mode.
    #[test]
    fn a_hard_link_to_a_file_outside_the_root_is_refused_and_nothing_is_touched() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // A program running from outside the root, and a second name for it inside.
        let prog = outside.join("sleeper");
        std::fs::copy("/bin/sleep", &prog).unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let mut child = std::process::Command::new(&prog).arg("30").spawn().unwrap();
        std::fs::hard_link(&prog, root.join("WeChat.AppImage")).unwrap();
        let store = QuarantineStore::open(&tmp.path().join("q")).unwrap();
        let (r, _) = quarantine_existing(&store, &root, Path::new("WeChat.AppImage"), "00");
        assert!(matches!(r, Err(QuarantineError::Refused { .. })), "{r:?}");
        assert!(r.unwrap_err().to_string().contains("2 hard links"));
        assert_eq!(std::fs::metadata(&prog).unwrap().mode() & 0o7777, 0o4755, "mode unchanged");
        assert!(root.join("WeChat.AppImage").exists(), "not moved");
        assert!(child.try_wait().unwrap().is_none(), "the program outside the root was not killed");
        assert!(store.list().is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Finding 13: a file not owned by the folder's user (the owner of the watched root) is
    /// refused; a root-owned root accepts any owner's file with one link.
    #[test]
    fn files_not_owned_by_the_folders_user_are_refused() {
        if !crate::testutil::root_or_skip("needs root to chown") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("alice-downloads");
        std::fs::create_dir_all(&root).unwrap();
        let store = QuarantineStore::open(&tmp.path().join("q")).unwrap();
        // A root-owned root: a file of uid 1000 in it is taken.
        std::fs::write(root.join("a"), b"payload").unwrap();
        std::os::unix::fs::chown(root.join("a"), Some(1000), Some(1000)).unwrap();
        let r = quarantine_named(&store, &root, "a".as_ref(), "00");
        assert!(r.is_ok(), "{r:?}");
        // Alice's folder: her file is taken, root's is refused and left alone.
        std::os::unix::fs::chown(&root, Some(1000), Some(1000)).unwrap();
        std::fs::write(root.join("b"), b"payload").unwrap();
        std::os::unix::fs::chown(root.join("b"), Some(1000), Some(1000)).unwrap();
        assert!(quarantine_named(&store, &root, "b".as_ref(), "00").is_ok());
        let r = quarantine_named(&store, &root, "c".as_ref(), "00");
        assert!(matches!(r, Err(QuarantineError::Refused { .. })), "{r:?}");
        assert!(root.join("c").exists());
    }

    /// A tmpfs mounted for the test (root only), unmounted on drop.
    struct Tmpfs(std::path::PathBuf);

    impl Tmpfs {
        fn mount(at: &Path) -> Option<Self> {
            std::fs::create_dir_all(at).unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs"])
                .arg(at)
                .status()
                .is_ok_and(|s| s.success());
            ok.then(|| Tmpfs(at.to_path_buf()))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }

    /// Finding 12: a 4 GiB sparse file (a few KiB on disk) on another filesystem than the store
    /// is quarantined by a rename into that filesystem's own store, not copied; and restored.
    #[test]
    fn a_sparse_file_on_another_filesystem_is_quarantined_by_rename_not_copied() {
        use std::os::unix::fs::MetadataExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let Some(fs) = Tmpfs::mount(&tmp.path().join("home")) else {
            crate::testutil::skip("needs root to mount a tmpfs");
            return;
        };
        let root = fs.0.join("alice/Downloads");
        std::fs::create_dir_all(&root).unwrap();
        let big = root.join("WeChat.AppImage");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(4 << 30).unwrap();
        drop(f);
        let store = QuarantineStore::open(&tmp.path().join("q")).unwrap();
        assert_ne!(std::fs::metadata(store.dir()).unwrap().dev(), std::fs::metadata(&root).unwrap().dev());
        let (m, meta) = quarantine_existing(&store, &root, Path::new("WeChat.AppImage"), "00");
        let m = m.unwrap_or_else(|e| panic!("{e}"));
        assert!(!big.exists());
        // Nothing of it in the main store but the manifest; the payload is the same inode, in
        // the tmpfs's own store, root-only.
        let main: u64 = std::fs::read_dir(store.dir()).unwrap().flatten().map(|e| e.metadata().unwrap().blocks()).sum();
        assert!(main < 64, "the main store holds {main} blocks");
        let per_fs = fs.0.join(".embargo-quarantine");
        let payload = std::fs::metadata(per_fs.join(format!("{}.bin", m.id))).unwrap();
        assert_eq!((payload.ino(), payload.len()), (meta.id.ino, 4 << 30));
        assert_eq!(std::fs::metadata(&per_fs).unwrap().mode() & 0o7777, 0o700);
        assert_eq!(store.list().len(), 1);
        assert!(store.recover().is_empty(), "recovery finds the payload in the per-filesystem store");
        store.restore(&m.id).unwrap();
        assert_eq!(std::fs::metadata(&big).unwrap().ino(), meta.id.ino, "restored by rename");
        assert!(store.list().is_empty());
    }

    /// Finding 12: where no per-filesystem store can be used (the filesystem's top directory is
    /// writable by all and not sticky), the copy into the main store keeps holes: a 4 GiB
    /// sparse file with 128 KiB of data costs the store about 128 KiB, is charged that to its
    /// owner (`allocated`), and restores with the same bytes and holes.
    #[test]
    fn a_sparse_file_copied_across_filesystems_allocates_only_its_data() {
        use std::os::unix::fs::{FileExt as _, MetadataExt as _, PermissionsExt as _};
        let tmp = tempfile::tempdir().unwrap();
        let Some(fs) = Tmpfs::mount(&tmp.path().join("home")) else {
            crate::testutil::skip("needs root to mount a tmpfs");
            return;
        };
        // Writable by all, not sticky: a user could rename a store there away, so none is used.
        std::fs::set_permissions(&fs.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        let root = fs.0.join("alice/Downloads");
        std::fs::create_dir_all(&root).unwrap();
        let big = root.join("WeChat.AppImage");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(4 << 30).unwrap();
        f.write_all_at(&[0xAB; 65536], 0).unwrap();
        f.write_all_at(&[0xCD; 65536], 2 << 30).unwrap();
        drop(f);
        let store = QuarantineStore::open(&tmp.path().join("q")).unwrap();
        let (m, _) = quarantine_existing(&store, &root, Path::new("WeChat.AppImage"), "00");
        let m = m.unwrap_or_else(|e| panic!("{e}"));
        assert!(!big.exists());
        assert!(m.payload_dir.is_none(), "copied into the main store");
        assert!(!fs.0.join(FS_STORE).exists(), "no per-filesystem store under a world-writable top");
        let stored = std::fs::metadata(store.dir().join(format!("{}.bin", m.id))).unwrap();
        assert_eq!(stored.len(), 4 << 30);
        let on_disk = stored.blocks() * 512;
        eprintln!("4 GiB sparse file with 128 KiB of data: {on_disk} bytes allocated in the store");
        assert!(on_disk < 4 << 20, "the copy allocated {on_disk} bytes");
        assert!(m.cost() < 4 << 20 && m.cost() >= 128 << 10, "charged {}", m.cost());
        store.restore(&m.id).unwrap();
        let back = std::fs::File::open(&big).unwrap();
        let mut buf = [0u8; 4];
        back.read_exact_at(&mut buf, 2 << 30).unwrap();
        assert_eq!(buf, [0xCD; 4]);
        back.read_exact_at(&mut buf, 1 << 30).unwrap();
        assert_eq!(buf, [0; 4]);
        assert!(back.metadata().unwrap().blocks() * 512 < 4 << 20, "restored sparse");
    }

    #[test]
    fn manifests_written_before_name_bytes_still_load() {
        let old = r#"{"schema_version":1,"id":"q1","original_path":"/r/a","root":"/r","rel":"a","uid":0,"gid":0,"mode":420,"size":1,"sha256":"00","rule":"r","action":"quarantine","app_kind":"file","app_id":"a","quarantined_at":"2026-01-01T00:00:00Z","purge_after":null,"dev":1,"ino":2}"#;
        let m: Manifest = serde_json::from_str(old).unwrap();
        assert_eq!(m.original_path_bytes(), b"/r/a");
    }

    #[test]
    fn a_crash_between_the_move_and_the_manifest_is_recovered_from_the_xattr() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let store = QuarantineStore::open(&tmp.path().join("q")).unwrap();
        let m = quarantine_one(&store, &root, "a");
        // Simulate the crash: the file is in the store, its manifest was never written.
        std::fs::remove_file(store.dir().join(format!("{}.json", m.id))).unwrap();
        assert!(store.list().is_empty());
        let fixed = store.recover();
        assert_eq!(fixed.len(), 1, "{fixed:?}");
        let back = store.get(&m.id).unwrap();
        assert_eq!((back.original_path, back.mode), (m.original_path.clone(), 0o750));
        // And it restores with its mode.
        store.restore(&m.id).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(std::fs::metadata(root.join("a")).unwrap().mode() & 0o7777, 0o750);
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"payload");
    }

    #[test]
    fn an_item_moved_before_its_hash_gets_it_from_complete_or_from_recovery() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let store = QuarantineStore::open(&tmp.path().join("q")).unwrap();
        let payload_sha = crate::identify::sha256_of(&mut {
            std::fs::write(tmp.path().join("ref"), b"payload").unwrap();
            std::fs::File::open(tmp.path().join("ref")).unwrap()
        })
        .unwrap();
        // The daemon completes it right after the move, possibly naming a more severe rule.
        let mut done = quarantine_with_sha(&store, &root, "a", "");
        assert!(store.get(&done.id).is_err(), "no manifest file until `complete`");
        store.complete(&mut done, &payload_sha, "r2", Action::Remove, Some(Time(7))).unwrap();
        assert_eq!(store.get(&done.id).unwrap(), done);
        assert_eq!(
            (done.sha256.as_str(), done.rule.as_str(), done.action),
            (payload_sha.as_str(), "r2", Action::Remove)
        );
        // It stopped between the move and the hash: the manifest is rebuilt from the xattr and
        // the stored file hashed...
        let m = quarantine_with_sha(&store, &root, "b", "");
        store.recover();
        assert_eq!(store.get(&m.id).unwrap().sha256, payload_sha);
        // ...and a manifest written without a hash (a filesystem without xattrs) gets it too.
        let m = quarantine_with_sha(&store, &root, "c", "");
        let mut unhashed = m.clone();
        unhashed.sha256.clear();
        store.write_manifest(&unhashed).unwrap();
        assert!(store.recover().iter().any(|f| f.starts_with(&format!("hashed {}", m.id))));
        assert_eq!(store.get(&m.id).unwrap().sha256, payload_sha);
        assert!(store.recover().is_empty(), "nothing left to fix");
    }

    #[test]
    fn a_crash_after_a_restore_moved_the_file_drops_the_stale_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let store = QuarantineStore::open(&tmp.path().join("q")).unwrap();
        let m = quarantine_one(&store, &root, "b");
        // Simulate the crash: the payload went back, the manifest stayed.
        std::fs::rename(store.dir().join(format!("{}.bin", m.id)), root.join("b")).unwrap();
        assert_eq!(store.recover().len(), 1);
        assert!(store.list().is_empty());
        assert!(root.join("b").exists());
    }

    #[test]
    fn suspension_entries_survive_recovery_and_are_not_restored_or_purged_as_files() {
        let tmp = tempfile::tempdir().unwrap();
        let store = QuarantineStore::open(&tmp.path().join("q")).unwrap();
        let m = Manifest {
            schema_version: MANIFEST_SCHEMA_VERSION,
            id: store.new_id(),
            original_path: "/dev-root/data/app/~~a/com.tencent.mm-b".into(),
            root: "/dev-root".into(),
            rel: "data/app/~~a/com.tencent.mm-b".into(),
            uid: 0,
            gid: 0,
            mode: 0,
            size: 0,
            sha256: String::new(),
            rule: "r".into(),
            action: Action::Quarantine,
            app_kind: "android".into(),
            app_id: "com.tencent.mm".into(),
            quarantined_at: Time(1),
            purge_after: None,
            dev: 0,
            ino: 0,
            killed_pids: Vec::new(),
            root_hex: None,
            rel_hex: None,
            payload_dir: None,
            allocated: None,
            suspension: Some(Suspension {
                package: "com.tencent.mm".into(),
                users: vec![0, 10],
                state: SUSPENSION_INTENT.into(),
            }),
        };
        write_manifest_in(store.dir(), &m).unwrap();
        // Without a `.bin`, a file entry's manifest would be dropped as stale; this one stays.
        assert!(store.recover().is_empty());
        assert_eq!(store.list(), vec![m.clone()]);
        assert!(matches!(store.restore(&m.id), Err(QuarantineError::Refused { .. })));
        assert!(matches!(store.purge(&m.id), Err(QuarantineError::Refused { .. })));
        store.forget(&m.id).unwrap();
        assert!(store.list().is_empty());
    }

    #[test]
    fn restore_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let store = QuarantineStore::open(&tmp.path().join("q")).unwrap();
        let m = quarantine_one(&store, &root, "c");
        std::fs::write(root.join("c"), "something new").unwrap();
        assert!(matches!(store.restore(&m.id), Err(QuarantineError::Occupied { .. })));
        assert_eq!(std::fs::read(root.join("c")).unwrap(), b"something new");
        assert_eq!(store.list().len(), 1, "still quarantined");
    }
}
