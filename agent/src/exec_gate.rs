//! The exec gate: every `execve` of a file on a gated filesystem waits for our answer
//! (fanotify `FAN_OPEN_EXEC_PERM`), and a file the published rule set bans fails with EPERM.
//!
//! Owns: the fanotify group, its marks, the decision cache, the reader / worker / mount-watcher
//! threads and their counters. Does not own: the rule set (it reads the `Arc<RuleSet>` the core
//! publishes through a `watch` channel), the audit log (it hands [`GateEvent`]s to a bounded
//! channel the caller drains), or any action on files (it never moves, hashes for evidence, or
//! kills; `running` stops processes).
//!
//! **Architecture Invariant:** every permission event read from the group is answered exactly
//! once, by the reader (own pid, cache hit, queue full, deadline passed, error) or by a worker
//! (decision), whichever comes first; the answer is written before any event is emitted, and
//! the gate threads never wait for another process (no exec, no NSS, no synchronous logging,
//! no waiting on the core loop), so no process that waits for us can be waited for by us.
//!
//! Flow of one exec:
//! 1. The reader thread reads the event. Events from our own process are allowed at once.
//! 2. It `fstat`s the event's fd and looks up (device, inode) in the decision cache; an entry
//!    whose change time, modification time and size still match answers at once (the fast path:
//!    one read, one fstat, one lookup, one write, one close).
//! 3. Otherwise the event goes to a bounded queue; a full queue is answered `on_timeout` at once.
//!    A worker identifies the file through the event's fd (AppImage magic and embedded desktop
//!    entry, else a plain file by name; sha256 only when a hash rule could change the verdict),
//!    answers, and caches the verdict.
//! 4. An event not answered by its deadline is answered `on_timeout` by the reader; the worker's
//!    later verdict still fills the cache.
//!
//! Exemptions (no self-deadlock): events whose pid is ours are allowed before anything else;
//! with `exempt_children`, a deny for a process whose parent is us (the package managers and
//! tools the agent spawns) becomes an allow (`Spared`). A deny for a binary `protected` names
//! (essential packages, package managers, the agent) becomes an allow too. Monitor mode turns
//! every deny into an allow recorded as `WouldDeny`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embargo_policy::app::{App, Scope};
use embargo_policy::matcher::RuleSet;
use embargo_policy::rules::{Action, Kind};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyEvent, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
};
use tokio::sync::{mpsc, watch};

/// What to answer when the gate cannot decide in time (deadline passed, queue full, error),
/// like fapolicyd's failure actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTimeout {
    Allow,
    Deny,
}

impl OnTimeout {
    fn answer(self) -> Answer {
        match self {
            OnTimeout::Allow => Answer::Allow,
            OnTimeout::Deny => Answer::Deny,
        }
    }
}

/// `Enforce` denies banned execs; `Monitor` allows them and records `WouldDeny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateMode {
    Enforce,
    Monitor,
}

/// Which filesystems the gate marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkScope {
    /// Every mounted filesystem that can hold executables (pseudo filesystems and `noexec`
    /// mounts are skipped), including those mounted later.
    AllFilesystems,
    /// Only mounts whose mount point is one of these directories or beneath one (tests and the
    /// bench: a private tmpfs, never the whole machine), including those mounted later.
    Under(Vec<PathBuf>),
}

#[derive(Debug, Clone)]
pub struct GateConfig {
    pub mode: GateMode,
    pub on_timeout: OnTimeout,
    /// How long an exec may wait for a verdict before it gets `on_timeout`.
    pub deadline: Duration,
    /// Events waiting for a worker; one more is answered `on_timeout` at once.
    pub queue: usize,
    /// Worker threads identifying files (each may be busy with one slow file).
    pub workers: usize,
    /// Decision cache entries; when full it is emptied (counted in `cache_resets`).
    pub cache_entries: usize,
    pub scope: MarkScope,
    /// Turn a deny for a direct child of this process into an allow (see the module header).
    pub exempt_children: bool,
    /// Nice value of the reader thread: every exec on a gated filesystem waits for it, so it
    /// should not queue behind batch work; -14 as fapolicyd's shipped `nice_val`. Workers keep
    /// the default: hashing a large file must not starve the machine.
    pub reader_nice: i32,
    /// Files whose execs never reach the gate (an inode ignore mark): the dynamic loaders,
    /// which every dynamically linked exec opens for exec too (see [`dynamic_loaders`]). Each
    /// costs one wake-up per exec otherwise, and the gate never denies them (they are
    /// protected, and `ld.so /path/file` maps the file without an exec event of its own).
    pub pass_through: Vec<PathBuf>,
    /// Let the kernel remember allowed verdicts (an inode ignore mark per allowed file, see
    /// "The kernel cache" in docs/exec-gate.md): repeated execs of an allowed file owned by root
    /// and writable by no one else, on a local filesystem, then never wake the gate at all.
    pub kernel_cache: bool,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            mode: GateMode::Enforce,
            on_timeout: OnTimeout::Allow,
            deadline: Duration::from_secs(1),
            queue: 256,
            workers: 2,
            cache_entries: 65_536,
            scope: MarkScope::AllFilesystems,
            exempt_children: true,
            reader_nice: -14,
            pass_through: Vec::new(),
            kernel_cache: true,
        }
    }
}

/// The verdict on one executable file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    Allow,
    /// A rule bans the file (action quarantine or remove).
    Deny {
        rule: String,
    },
    /// A rule with action `audit` matches: the exec runs and is recorded.
    Audit {
        rule: String,
    },
}

/// Files of banned packages the agent could not remove ("needs admin"), by path: an exec of
/// one is denied naming the package's rule, whatever the file holds. Matched against the path
/// of the exec's opened fd (as this process's mount namespace names it), so a reinstall of the
/// same package (new inodes, same paths) is denied too; a copy elsewhere is not (hash rules are
/// for that).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OwnedPaths {
    /// Files (exact paths) and the rule that bans their package.
    pub files: HashMap<PathBuf, String>,
    /// Directories everything beneath which is the package's (a flatpak or snap deployment).
    pub dirs: HashMap<PathBuf, String>,
}

impl OwnedPaths {
    /// The rule whose needs-admin package owns `path`.
    pub fn rule_for(&self, path: &Path) -> Option<&str> {
        if let Some(r) = self.files.get(path) {
            return Some(r);
        }
        if self.dirs.is_empty() {
            return None;
        }
        path.ancestors().skip(1).find_map(|a| self.dirs.get(a)).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.files.len() + self.dirs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decides one file from its opened fd and the path it was executed by (for names only).
/// [`judge_exec`] is the real one; tests inject a slow one.
pub type Judge = dyn Fn(&RuleSet, &mut File, &Path) -> std::io::Result<Judgement> + Send + Sync;

/// Says whether the gate has applied a rule set ([`ExecGate::policy_applied`]).
pub type PolicyApplied = dyn Fn(&Arc<RuleSet>) -> bool + Send + Sync;

/// Names what must never be denied or killed (essential packages, package managers, the agent).
pub type Protected = dyn Fn(&Path) -> bool + Send + Sync;

/// What the gate answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Allow,
    Deny,
}

/// Who executed what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecInfo {
    pub pid: i32,
    /// Real uid of the process (`None` when it was gone before we looked).
    pub uid: Option<u32>,
    /// The executed file as the gate's mount namespace names it.
    pub path: PathBuf,
}

/// Why a deny became an allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpareReason {
    /// The binary is protected (essential package, package manager, the agent).
    Protected,
    /// The process is a direct child of the agent.
    AgentChild,
}

/// Evidence the gate hands to the caller (core wraps it in its audit event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateEvent {
    Denied {
        exec: ExecInfo,
        rule: String,
    },
    /// Monitor mode: this exec would have been denied.
    WouldDeny {
        exec: ExecInfo,
        rule: String,
    },
    Audited {
        exec: ExecInfo,
        rule: String,
    },
    Spared {
        exec: ExecInfo,
        rule: String,
        reason: SpareReason,
    },
    /// No verdict by the deadline: answered `on_timeout`.
    Deadline {
        exec: ExecInfo,
        answer: Answer,
    },
    /// The queue was full: answered `on_timeout`.
    QueueFull {
        exec: ExecInfo,
        answer: Answer,
    },
    /// Identification failed: answered `on_timeout`.
    Failed {
        exec: ExecInfo,
        error: String,
        answer: Answer,
    },
    /// A filesystem (or, where that is refused, a mount) is gated from now on.
    Marked {
        mount_point: PathBuf,
        fstype: String,
        per_mount: bool,
    },
    MarkFailed {
        mount_point: PathBuf,
        error: String,
    },
    /// The kernel dropped events (the execs they stood for were allowed).
    Overflow,
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("fanotify_init (needs CAP_SYS_ADMIN and a kernel with fanotify): {0}")]
    Init(nix::Error),
    #[error("reading {path}: {error}")]
    Mountinfo { path: String, error: std::io::Error },
    #[error("starting the gate's threads: {0}")]
    Thread(std::io::Error),
    #[error("eventfd: {0}")]
    Eventfd(std::io::Error),
}

/// Counters for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateStats {
    pub events: u64,
    pub allowed: u64,
    pub denied: u64,
    pub own_pid: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_resets: u64,
    pub deadline: u64,
    pub queue_full: u64,
    pub errors: u64,
    pub spared: u64,
    pub overflows: u64,
    pub hashed: u64,
    /// Events the caller's channel had no room for.
    pub events_dropped: u64,
    pub marks: u64,
    pub policy_updates: u64,
    /// Allowed files whose next execs the kernel lets through without an event (ignore marks
    /// placed since start).
    pub kernel_cached: u64,
    /// Times every kernel-cached verdict was dropped (a rule-set change, or the bound reached).
    pub kernel_flushes: u64,
}

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    own_pid: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache_resets: AtomicU64,
    deadline: AtomicU64,
    queue_full: AtomicU64,
    errors: AtomicU64,
    spared: AtomicU64,
    overflows: AtomicU64,
    hashed: AtomicU64,
    events_dropped: AtomicU64,
    marks: AtomicU64,
    policy_updates: AtomicU64,
    kernel_cached: AtomicU64,
    kernel_flushes: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> GateStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GateStats {
            events: g(&self.events),
            allowed: g(&self.allowed),
            denied: g(&self.denied),
            own_pid: g(&self.own_pid),
            cache_hits: g(&self.cache_hits),
            cache_misses: g(&self.cache_misses),
            cache_resets: g(&self.cache_resets),
            deadline: g(&self.deadline),
            queue_full: g(&self.queue_full),
            errors: g(&self.errors),
            spared: g(&self.spared),
            overflows: g(&self.overflows),
            hashed: g(&self.hashed),
            events_dropped: g(&self.events_dropped),
            marks: g(&self.marks),
            policy_updates: g(&self.policy_updates),
            kernel_cached: g(&self.kernel_cached),
            kernel_flushes: g(&self.kernel_flushes),
        }
    }
}

thread_local! {
    /// Whether the judge on this thread hashed (for the `hashed` counter).
    static HASHED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The real judge: identifies the opened executable and asks the rule set.
///
/// An ELF with the AppImage magic is an `appimage` app (id and name from its embedded desktop
/// entry when the squashfs can be read, else from the file name); anything else is a `file`
/// app named by its file name. The sha256 is read only when it can change the verdict: a hash
/// matcher exists and nothing bans the file yet (or only `audit` does), or the verdict has an
/// `except` on sha256.
pub fn judge_exec(rules: &RuleSet, file: &mut File, path: &Path) -> std::io::Result<Judgement> {
    let mut app = exec_app(file, path)?;
    let verdict = |app: &App| rules.verdict(app).map(|v| (v.rule.to_owned(), v.action, v.except_by_hash));
    let mut v = verdict(&app);
    let need_hash = match &v {
        Some((_, action, except_by_hash)) => {
            *except_by_hash || (*action == Action::Audit && rules.has_sha256_matchers())
        }
        None => rules.has_sha256_matchers(),
    };
    if need_hash {
        app.sha256 = Some(crate::identify::sha256_of(file)?);
        HASHED.with(|h| h.set(true));
        v = verdict(&app);
    }
    Ok(match v {
        None => Judgement::Allow,
        Some((rule, Action::Audit, _)) => Judgement::Audit { rule },
        Some((rule, _, _)) => Judgement::Deny { rule },
    })
}

/// What an executable is, from its first bytes (and an AppImage's desktop entry), unhashed.
pub fn exec_app(file: &mut File, path: &Path) -> std::io::Result<App> {
    let meta = file.metadata()?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut head = [0u8; 16];
    let n = file.read_at(&mut head, 0)?;
    let mut app = if crate::identify::is_appimage(&head[..n]) {
        let mut a = App::new(Kind::Appimage, file_name.clone());
        a.name = Some(crate::identify::appimage_name(&file_name));
        if let Ok((desktop_file, text)) = crate::squashfs::appimage_desktop_entry(file) {
            let entry = crate::identify::parse_desktop(&text);
            let id = desktop_file.strip_suffix(".desktop").unwrap_or(&desktop_file);
            if !id.is_empty() {
                a.id = id.to_owned();
            }
            a.name = entry.name.or(entry.appimage_name).or(a.name);
            a.version = entry.appimage_version;
        }
        a
    } else {
        let mut a = App::new(Kind::File, file_name.clone());
        a.name = Some(file_name);
        a
    };
    app.paths.push(path.display().to_string());
    app.scope = if meta.uid() == 0 { Scope::System } else { Scope::User(meta.uid()) };
    Ok(app)
}

/// (device, inode): what the cache is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
}

/// What must still hold for a cached verdict to apply: any write, truncate, chmod, chown,
/// link or rename changes the change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ctime: (i64, i64),
    mtime: (i64, i64),
    size: i64,
}

/// A change time this close to now may be shared with a write still to come in the same
/// timestamp tick (coarse clocks tick every few ms): such files are not cached ("racy" entries,
/// as git treats its index).
const RACY: Duration = Duration::from_millis(100);

fn stamp_of(st: &rustix::fs::Stat) -> (FileKey, Stamp) {
    (
        FileKey { dev: st.st_dev, ino: st.st_ino },
        Stamp {
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            size: st.st_size,
        },
    )
}

/// Whether the kernel may remember an allow for this file (see [`Shared::kernel_cache`]): a
/// regular file owned by root that neither its group nor others may write, so only root can
/// change what it holds.
fn only_root_writes(st: &rustix::fs::Stat) -> bool {
    let mode = st.st_mode;
    mode & 0o170000 == 0o100000 && st.st_uid == 0 && mode & 0o022 == 0
}

/// Filesystems whose files change only through this kernel's write paths, each of which raises
/// the modify event that clears an ignore mark: ext2/3/4, xfs, btrfs, tmpfs, f2fs (and the
/// read-only squashfs and iso9660). FUSE, network and overlay filesystems can change a file
/// behind the kernel's back, so their files are never kernel-cached.
fn local_fs(fd: BorrowedFd<'_>) -> bool {
    const LOCAL: &[i64] = &[
        0xEF53,      // ext2, ext3, ext4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0xF2F5_2010, // f2fs
        0x7371_7368, // squashfs
        0x9660,      // iso9660
    ];
    // `f_type`'s integer type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::fstatfs(fd).is_ok_and(|f| LOCAL.contains(&(f.f_type as i64)))
}

fn is_racy(s: &Stamp) -> bool {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let ctime = Duration::new(s.ctime.0.max(0) as u64, s.ctime.1.clamp(0, 999_999_999) as u32);
    now.saturating_sub(ctime) < RACY
}

struct Cache {
    generation: u64,
    /// The generation of the needs-admin paths the entries were judged under.
    owned_gen: u64,
    map: HashMap<FileKey, (Stamp, Arc<Judgement>)>,
}

/// One permission event between reading and answering.
struct Pending {
    event: FanotifyEvent,
    pid: i32,
    deadline: Instant,
    answered: AtomicBool,
}

impl Pending {
    fn fd(&self) -> BorrowedFd<'_> {
        self.event.fd().expect("pending events carry an fd")
    }
}

struct Job {
    pending: Arc<Pending>,
    rules: Arc<RuleSet>,
    generation: u64,
    key: FileKey,
    stamp: Stamp,
    /// Owned by root and writable by no one else (see [`only_root_writes`]).
    only_root_writes: bool,
    /// The needs-admin paths' generation when the event was read.
    owned_gen: u64,
}

/// The kernel cache: the rule set its ignore marks were placed under, and how many were placed
/// since the last flush.
struct Ignores {
    rules: Arc<RuleSet>,
    owned_gen: u64,
    count: usize,
}

struct Shared {
    fan: Fanotify,
    cfg: GateConfig,
    counters: Counters,
    cache: Mutex<Cache>,
    judge: Arc<Judge>,
    protected: Arc<Protected>,
    events: mpsc::Sender<GateEvent>,
    self_pid: i32,
    stopping: AtomicBool,
    /// The marks; closed (and flushed) when the reader stops, so no event can arrive that no
    /// one reads.
    marks: Mutex<Marks>,
    ignores: Mutex<Ignores>,
    /// Needs-admin packages' files ([`ExecGate::set_owned_paths`]) and their generation.
    owned: std::sync::RwLock<Arc<OwnedPaths>>,
    owned_gen: AtomicU64,
}

impl Shared {
    /// Answers `p` unless someone already did; returns whether this call answered.
    fn respond(&self, p: &Pending, answer: Answer) -> bool {
        self.respond_counting(p, answer, None)
    }

    /// [`Shared::respond`], bumping `also` (when this call answers) before the answer is out.
    fn respond_counting(&self, p: &Pending, answer: Answer, also: Option<&AtomicU64>) -> bool {
        if p.answered.swap(true, Ordering::AcqRel) {
            return false;
        }
        if let Some(c) = also {
            bump(c);
        }
        let r = match answer {
            Answer::Allow => Response::FAN_ALLOW,
            Answer::Deny => Response::FAN_DENY,
        };
        // Counted before the write, so whoever sees the exec's outcome sees the count too.
        bump(match answer {
            Answer::Allow => &self.counters.allowed,
            Answer::Deny => &self.counters.denied,
        });
        if let Err(e) = self.fan.write_response(FanotifyResponse::new(p.fd(), r)) {
            // Nothing else can be done: the kernel answers it (allow) when the group closes.
            bump(&self.counters.errors);
            tracing::error!(pid = p.pid, error = %e, "cannot answer a permission event");
        }
        true
    }

    /// Removes every mark (no new events), then allows every event already queued. Called
    /// when the reader stops for any reason: a worker may keep the group open, and an event
    /// that no one reads would block its process for good.
    fn disarm(&self) {
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        marks.closed = true;
        let root = File::open("/");
        for kind in [MarkFlags::FAN_MARK_FILESYSTEM, MarkFlags::FAN_MARK_MOUNT, MarkFlags::empty()] {
            if let Ok(root) = &root {
                if let Err(e) = self.fan.mark(MarkFlags::FAN_MARK_FLUSH | kind, MaskFlags::empty(), root, None::<&str>)
                {
                    tracing::error!(error = %e, "flushing the gate's marks");
                }
            }
        }
        drop(marks);
        while let Ok(events) = self.fan.read_events() {
            if events.is_empty() {
                break;
            }
            for ev in events {
                if let Some(fd) = ev.fd() {
                    let _ = self.fan.write_response(FanotifyResponse::new(fd, Response::FAN_ALLOW));
                }
            }
        }
    }

    /// Lets the kernel answer the next execs of an allowed file itself: an ignore mark for
    /// `FAN_OPEN_EXEC_PERM` on its inode (evictable, so it never pins the inode), which the
    /// kernel clears on the file's next modification (write, truncate, copy or clone into it)
    /// and which we flush on every rule-set change. Only when the verdict was reached under the
    /// rule set in force, the file is one only root can change ([`only_root_writes`]: a user
    /// cannot write it through a shared mapping, which raises no modify event) and lives on a
    /// local filesystem ([`local_fs`]).
    fn kernel_cache(&self, fd: BorrowedFd<'_>, job: &Job) {
        if !self.cfg.kernel_cache || !job.only_root_writes || !local_fs(fd) {
            return;
        }
        let mut ig = self.ignores.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&ig.rules, &job.rules) || ig.owned_gen != job.owned_gen {
            return;
        }
        if ig.count >= self.cfg.cache_entries.max(1) {
            self.flush_ignores(&mut ig);
            bump(&self.counters.cache_resets);
        }
        let mask = MaskFlags::FAN_OPEN_EXEC_PERM;
        let add = MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_IGNORED_MASK;
        let placed = self
            .fan
            .mark(add | MarkFlags::FAN_MARK_EVICTABLE, mask, fd, None::<&str>)
            .or_else(|_| self.fan.mark(add, mask, fd, None::<&str>));
        if placed.is_err() {
            return;
        }
        ig.count += 1;
        // A write after the reader's fstat but before the mark raised its modify event before
        // there was a mark to clear: look again (the stamp is older than RACY, so any such write
        // changed it), and take the mark back if the file changed.
        let same = rustix::fs::fstat(fd).is_ok_and(|st| {
            let (key, stamp) = stamp_of(&st);
            key == job.key && stamp == job.stamp && only_root_writes(&st)
        });
        if !same {
            let remove = MarkFlags::FAN_MARK_REMOVE | MarkFlags::FAN_MARK_IGNORED_MASK;
            if let Err(e) = self.fan.mark(remove, mask, fd, None::<&str>) {
                // Cannot happen short of a kernel bug; dropping the whole kernel cache is safe.
                tracing::error!(error = %e, "taking back a kernel-cached verdict; flushing them all");
                self.flush_ignores(&mut ig);
            }
            return;
        }
        bump(&self.counters.kernel_cached);
    }

    /// Drops every kernel-cached verdict (the group's inode marks), then puts the pass-through
    /// marks back. Called with the `ignores` lock held.
    fn flush_ignores(&self, ig: &mut Ignores) {
        match File::open("/") {
            Ok(root) => {
                if let Err(e) = self.fan.mark(MarkFlags::FAN_MARK_FLUSH, MaskFlags::empty(), &root, None::<&str>) {
                    tracing::error!(error = %e, "flushing the kernel-cached verdicts");
                }
            }
            Err(e) => tracing::error!(error = %e, "flushing the kernel-cached verdicts: open /"),
        }
        for path in &self.cfg.pass_through {
            pass_through(self, path);
        }
        ig.count = 0;
        bump(&self.counters.kernel_flushes);
    }

    /// A new rule set is published: no verdict of the old one may stay with the kernel.
    fn policy_changed(&self, rules: Arc<RuleSet>) {
        let mut ig = self.ignores.lock().unwrap_or_else(|e| e.into_inner());
        ig.rules = rules;
        if ig.count > 0 {
            self.flush_ignores(&mut ig);
        }
    }

    fn emit(&self, ev: GateEvent) {
        if self.events.try_send(ev).is_err() {
            bump(&self.counters.events_dropped);
        }
    }

    fn exec_info(&self, p: &Pending) -> ExecInfo {
        ExecInfo { pid: p.pid, uid: process_uid(p.pid), path: fd_path(p.fd()) }
    }

    /// The answer for a verdict, after monitor mode, exemptions and protection, and the event
    /// to record (`fresh`: the verdict was just reached, not read from the cache).
    fn settle(&self, p: &Pending, j: &Judgement, fresh: bool) -> (Answer, Option<GateEvent>) {
        match j {
            Judgement::Allow => (Answer::Allow, None),
            Judgement::Audit { rule } => {
                (Answer::Allow, fresh.then(|| GateEvent::Audited { exec: self.exec_info(p), rule: rule.clone() }))
            }
            Judgement::Deny { rule } => {
                let exec = self.exec_info(p);
                let rule = rule.clone();
                if self.cfg.mode == GateMode::Monitor {
                    return (Answer::Allow, Some(GateEvent::WouldDeny { exec, rule }));
                }
                if let Some(reason) = self.spare(p.pid, &exec.path) {
                    bump(&self.counters.spared);
                    return (Answer::Allow, Some(GateEvent::Spared { exec, rule, reason }));
                }
                (Answer::Deny, Some(GateEvent::Denied { exec, rule }))
            }
        }
    }

    fn spare(&self, pid: i32, path: &Path) -> Option<SpareReason> {
        if self.cfg.exempt_children && parent_pid(pid) == Some(self.self_pid) {
            return Some(SpareReason::AgentChild);
        }
        (self.protected)(path).then_some(SpareReason::Protected)
    }

    /// A failure answer (`on_timeout`), spared like a deny when it denies.
    fn fail_answer(&self, p: &Pending) -> Answer {
        let a = self.cfg.on_timeout.answer();
        if a == Answer::Deny && self.spare(p.pid, &fd_path(p.fd())).is_some() {
            return Answer::Allow;
        }
        a
    }
}

/// The path an fd refers to, as this process's mount namespace names it.
fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Real uid of `pid`, from /proc/PID/status.
pub fn process_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// Parent pid of `pid`, from /proc/PID/stat (the field after the parenthesised command name).
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A running gate. Dropping it (or [`ExecGate::stop`]) answers what is pending, closes the
/// group and joins the threads; a crash closes the group too and the kernel allows every
/// pending exec.
pub struct ExecGate {
    shared: Arc<Shared>,
    stop: Arc<OwnedFd>,
    /// Stops the rule-set watcher (dropping it does too).
    stop_policy: Option<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The needs-admin paths in force, for the running-process sweeps ([`Self::subscribe_owned`]).
    owned_tx: watch::Sender<Arc<OwnedPaths>>,
}

impl std::fmt::Debug for ExecGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecGate").field("stats", &self.stats()).finish()
    }
}

impl ExecGate {
    /// Arms the gate with the real judge: marks the filesystems in `cfg.scope` and starts its
    /// threads. `events` should have room for bursts; a full channel drops (counted) events,
    /// never an answer.
    pub fn start(
        cfg: GateConfig,
        rules: watch::Receiver<Arc<RuleSet>>,
        protected: Arc<Protected>,
        events: mpsc::Sender<GateEvent>,
    ) -> Result<ExecGate, GateError> {
        Self::start_with_judge(cfg, rules, protected, events, Arc::new(judge_exec))
    }

    /// [`ExecGate::start`] with another judge (tests inject a slow one).
    pub fn start_with_judge(
        cfg: GateConfig,
        mut rules: watch::Receiver<Arc<RuleSet>>,
        protected: Arc<Protected>,
        events: mpsc::Sender<GateEvent>,
        judge: Arc<Judge>,
    ) -> Result<ExecGate, GateError> {
        let fan = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT
                | InitFlags::FAN_CLOEXEC
                | InitFlags::FAN_NONBLOCK
                // Only permission events are marked, and each stands for one blocked task, so the
                // queue is bounded by the number of tasks; the default limit would instead drop
                // events on overflow, and a dropped permission event is an allowed exec.
                | InitFlags::FAN_UNLIMITED_QUEUE,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC | EventFFlags::O_NOATIME,
        )
        .map_err(GateError::Init)?;
        let stop = Arc::new(
            rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK)
                .map_err(|e| GateError::Eventfd(e.into()))?,
        );
        let current = rules.borrow_and_update().clone();
        let shared = Arc::new(Shared {
            fan,
            cfg: cfg.clone(),
            counters: Counters::default(),
            cache: Mutex::new(Cache { generation: 0, owned_gen: 0, map: HashMap::new() }),
            judge,
            protected,
            events,
            self_pid: std::process::id() as i32,
            stopping: AtomicBool::new(false),
            marks: Mutex::new(Marks::default()),
            ignores: Mutex::new(Ignores { rules: current.clone(), owned_gen: 0, count: 0 }),
            owned: std::sync::RwLock::new(Arc::new(OwnedPaths::default())),
            owned_gen: AtomicU64::new(0),
        });
        update_marks(&shared)?;
        for path in &cfg.pass_through {
            pass_through(&shared, path);
        }
        let (job_tx, job_rx) = std_mpsc::sync_channel::<Job>(cfg.queue.max(1));
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.to_owned()).spawn(f).map_err(GateError::Thread)
        };
        for i in 0..cfg.workers.max(1) {
            let (s, rx) = (shared.clone(), job_rx.clone());
            // Not joined on stop: a worker stuck reading a file (a hung FUSE server) must not
            // hold up shutdown; it exits once its read returns (the queue is closed by then).
            spawn(&format!("gate-worker-{i}"), Box::new(move || worker(&s, &rx)))?;
        }
        {
            let (s, stop) = (shared.clone(), stop.clone());
            threads.push(spawn("gate-mounts", Box::new(move || watch_mounts(&s, &stop)))?);
        }
        let (stop_policy, policy_stopped) = tokio::sync::oneshot::channel();
        {
            let (s, rules) = (shared.clone(), rules.clone());
            threads.push(spawn("gate-policy", Box::new(move || watch_policy(&s, rules, policy_stopped)))?);
        }
        {
            let (s, stop) = (shared.clone(), stop.clone());
            let reader = Reader { shared: s, rules, current, generation: 0, jobs: job_tx, pending: VecDeque::new() };
            threads.push(spawn("gate-reader", Box::new(move || reader.run(&stop)))?);
        }
        let (owned_tx, _) = watch::channel(Arc::new(OwnedPaths::default()));
        Ok(ExecGate { shared, stop, stop_policy: Some(stop_policy), threads, owned_tx })
    }

    pub fn stats(&self) -> GateStats {
        self.shared.counters.snapshot()
    }

    /// Whether the kernel-cached verdicts of every rule set before `rules` are gone (the
    /// gate's rule-set watcher flushes them shortly after a new set is published). The
    /// running-process scan waits for this, so a process started through a stale kernel-cached
    /// allow before the flush is already running when the scan lists the processes.
    pub fn policy_applied(&self) -> Arc<PolicyApplied> {
        let s = self.shared.clone();
        Arc::new(move |rules: &Arc<RuleSet>| {
            Arc::ptr_eq(&s.ignores.lock().unwrap_or_else(|e| e.into_inner()).rules, rules)
        })
    }

    /// Replaces the needs-admin packages' files whose execs are denied. Like a rule-set change,
    /// it drops every cached verdict (ours and the kernel's) before it returns, so no exec
    /// after this call is answered from a verdict reached without it.
    /// Then it tells the [`Self::subscribe_owned`] receivers (the sweeps: processes already
    /// running from those files are stopped too).
    pub fn set_owned_paths(&self, owned: OwnedPaths) {
        let s = &self.shared;
        let owned = Arc::new(owned);
        let mut ig = s.ignores.lock().unwrap_or_else(|e| e.into_inner());
        *s.owned.write().unwrap_or_else(|e| e.into_inner()) = owned.clone();
        let gen = s.owned_gen.fetch_add(1, Ordering::AcqRel) + 1;
        {
            let mut c = s.cache.lock().unwrap_or_else(|e| e.into_inner());
            c.map.clear();
            c.owned_gen = gen;
        }
        ig.owned_gen = gen;
        if ig.count > 0 {
            s.flush_ignores(&mut ig);
        }
        drop(ig);
        self.owned_tx.send_replace(owned);
    }

    /// The needs-admin paths in force, changed by every [`Self::set_owned_paths`] (after its
    /// caches are dropped).
    pub fn subscribe_owned(&self) -> watch::Receiver<Arc<OwnedPaths>> {
        self.owned_tx.subscribe()
    }

    /// Answers what is pending (allow), stops the threads and closes the group.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = rustix::io::write(&*self.stop, &1u64.to_ne_bytes());
        drop(self.stop_policy.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ExecGate {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Reader {
    shared: Arc<Shared>,
    rules: watch::Receiver<Arc<RuleSet>>,
    current: Arc<RuleSet>,
    generation: u64,
    jobs: std_mpsc::SyncSender<Job>,
    pending: VecDeque<Arc<Pending>>,
}

/// Reads per wake-up before deadlines are looked at again.
const BATCH: usize = 256;

/// Fewer events than this in one read means the read did not fill nix's 4096-byte buffer (24
/// bytes per permission event without info records), so the queue was empty at that moment.
const DRAINED_BELOW: usize = 4096 / 24 - 1;

impl Reader {
    fn run(mut self, stop: &OwnedFd) {
        set_thread_nice(self.shared.cfg.reader_nice);
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve(stop)));
        if served.is_err() {
            tracing::error!("the gate's reader panicked; disarming");
        }
        // However the loop ended: no new event can arrive, and every event read or queued is
        // answered.
        self.shared.disarm();
        self.finish();
    }

    fn serve(&mut self, stop: &OwnedFd) {
        let s = self.shared.clone();
        loop {
            let next = self.expire();
            let timeout = next.map(|d| {
                let left = d.saturating_duration_since(Instant::now());
                rustix::event::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: left.subsec_nanos() as i64 }
            });
            let mut fds = [
                rustix::event::PollFd::new(&s.fan, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(stop, rustix::event::PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "gate poll failed; stopping the gate");
                    break;
                }
            }
            if !fds[1].revents().is_empty() {
                break;
            }
            if fds[0].revents().is_empty() {
                continue;
            }
            for _ in 0..BATCH {
                match s.fan.read_events() {
                    Ok(events) if events.is_empty() => break,
                    Ok(events) => {
                        // A read that did not fill the buffer drained the queue: back to poll
                        // without another read that would only say EAGAIN (one syscall less
                        // per exec).
                        let drained = events.len() < DRAINED_BELOW;
                        for ev in events {
                            if !self.handle(ev) {
                                return;
                            }
                        }
                        if drained {
                            break;
                        }
                    }
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "reading fanotify events failed; stopping the gate");
                        return;
                    }
                }
            }
        }
    }

    /// Stopping: whatever is still pending is allowed (the kernel would do the same on close).
    fn finish(&mut self) {
        for p in self.pending.drain(..) {
            self.shared.respond(&p, Answer::Allow);
        }
    }

    /// Answers overdue events `on_timeout`; returns the next deadline.
    fn expire(&mut self) -> Option<Instant> {
        let now = Instant::now();
        while let Some(p) = self.pending.front() {
            if p.answered.load(Ordering::Acquire) {
                self.pending.pop_front();
                continue;
            }
            if p.deadline > now {
                return Some(p.deadline);
            }
            let p = self.pending.pop_front().expect("front exists");
            let answer = self.shared.fail_answer(&p);
            if self.shared.respond_counting(&p, answer, Some(&self.shared.counters.deadline)) {
                let exec = self.shared.exec_info(&p);
                self.shared.emit(GateEvent::Deadline { exec, answer });
            }
        }
        None
    }

    /// Handles one event; false when the gate must stop (an ABI it does not understand).
    fn handle(&mut self, ev: FanotifyEvent) -> bool {
        let s = &self.shared;
        if !ev.check_version() {
            // The layout is not the one we were built for: we cannot answer, so we close the
            // group (the kernel then allows everything pending) rather than leave execs hanging.
            tracing::error!(version = ev.version(), "fanotify metadata version mismatch; stopping the gate");
            return false;
        }
        if ev.mask().contains(MaskFlags::FAN_Q_OVERFLOW) || ev.fd().is_none() {
            bump(&s.counters.overflows);
            s.emit(GateEvent::Overflow);
            return true;
        }
        bump(&s.counters.events);
        let pid = ev.pid();
        // The deadline is set when the event goes to the queue; cache hits need no clock.
        let mut p = Pending { event: ev, pid, deadline: Instant::now(), answered: false.into() };
        if pid == s.self_pid {
            bump(&s.counters.own_pid);
            s.respond(&p, Answer::Allow);
            return true;
        }
        let st = match rustix::fs::fstat(p.fd()) {
            Ok(st) => st,
            Err(e) => {
                let answer = s.fail_answer(&p);
                s.respond(&p, answer);
                bump(&s.counters.errors);
                s.emit(GateEvent::Failed { exec: s.exec_info(&p), error: format!("fstat: {e}"), answer });
                return true;
            }
        };
        let (key, stamp) = stamp_of(&st);
        if self.rules.has_changed().unwrap_or(false) {
            self.current = self.rules.borrow_and_update().clone();
            self.generation += 1;
            bump(&s.counters.policy_updates);
            let mut c = s.cache.lock().unwrap_or_else(|e| e.into_inner());
            c.generation = self.generation;
            c.map.clear();
        }
        let cached = {
            let c = s.cache.lock().unwrap_or_else(|e| e.into_inner());
            c.map.get(&key).filter(|(st, _)| *st == stamp).map(|(_, j)| j.clone())
        };
        if let Some(j) = cached {
            bump(&s.counters.cache_hits);
            let (answer, event) = s.settle(&p, &j, false);
            s.respond(&p, answer);
            if let Some(e) = event {
                s.emit(e);
            }
            return true;
        }
        bump(&s.counters.cache_misses);
        p.deadline = Instant::now() + s.cfg.deadline;
        let p = Arc::new(p);
        let job = Job {
            pending: p.clone(),
            rules: self.current.clone(),
            generation: self.generation,
            key,
            stamp,
            only_root_writes: only_root_writes(&st),
            owned_gen: s.owned_gen.load(Ordering::Acquire),
        };
        match self.jobs.try_send(job) {
            Ok(()) => self.pending.push_back(p),
            Err(_) => {
                let answer = s.fail_answer(&p);
                s.respond_counting(&p, answer, Some(&s.counters.queue_full));
                s.emit(GateEvent::QueueFull { exec: s.exec_info(&p), answer });
            }
        }
        true
    }
}

/// Flushes the kernel-cached verdicts as soon as a new rule set is published (the reader only
/// sees the change on its next event, and execs of kernel-cached files raise none).
fn watch_policy(s: &Shared, mut rules: watch::Receiver<Arc<RuleSet>>, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            // Without the watcher no verdict may be left to the kernel.
            tracing::error!(error = %e, "exec gate: cannot watch the rule set; the kernel cache is off");
            let mut ig = s.ignores.lock().unwrap_or_else(|e| e.into_inner());
            ig.rules = Arc::new(RuleSet::compile(Vec::new(), &[]));
            s.flush_ignores(&mut ig);
            return;
        }
    };
    rt.block_on(async {
        loop {
            tokio::select! {
                _ = &mut stop => return,
                changed = rules.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let current = rules.borrow_and_update().clone();
                    s.policy_changed(current);
                }
            }
        }
    });
}

/// Sets this thread's nice value (Linux keeps one per thread); failures only cost latency.
fn set_thread_nice(nice: i32) {
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(tid) = tid {
        if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
            tracing::debug!(error = %e, nice, "cannot set the gate reader's nice value");
        }
    }
}

fn worker(s: &Shared, jobs: &Mutex<std_mpsc::Receiver<Job>>) {
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        if s.stopping.load(Ordering::Acquire) {
            continue;
        }
        let p = &job.pending;
        let path = fd_path(p.fd());
        HASHED.with(|h| h.set(false));
        let owned_rule = s.owned.read().unwrap_or_else(|e| e.into_inner()).rule_for(&path).map(str::to_owned);
        let verdict = match owned_rule {
            Some(rule) => Ok(Judgement::Deny { rule }),
            None => p.fd().try_clone_to_owned().map(File::from).and_then(|mut file| {
                HASHED.with(|h| h.set(false));
                let judge = &s.judge;
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| judge(&job.rules, &mut file, &path)))
                    .unwrap_or_else(|_| Err(std::io::Error::other("the judge panicked")))
            }),
        };
        if HASHED.with(|h| h.get()) {
            bump(&s.counters.hashed);
        }
        match verdict {
            Ok(j) => {
                let (answer, event) = s.settle(p, &j, true);
                // Cached before answering, so the process's next exec already finds it.
                if !is_racy(&job.stamp) {
                    let mut c = s.cache.lock().unwrap_or_else(|e| e.into_inner());
                    if c.generation == job.generation && c.owned_gen == job.owned_gen {
                        if c.map.len() >= s.cfg.cache_entries.max(1) {
                            c.map.clear();
                            bump(&s.counters.cache_resets);
                        }
                        c.map.insert(job.key, (job.stamp, Arc::new(j.clone())));
                    }
                    drop(c);
                    if j == Judgement::Allow {
                        s.kernel_cache(p.fd(), &job);
                    }
                }
                let answered = s.respond(p, answer);
                // After the deadline the reader answered and recorded it; the verdict still
                // went to the cache above.
                if answered {
                    if let Some(e) = event {
                        s.emit(e);
                    }
                }
            }
            Err(e) => {
                bump(&s.counters.errors);
                let answer = s.fail_answer(p);
                if s.respond(p, answer) {
                    s.emit(GateEvent::Failed { exec: s.exec_info(p), error: e.to_string(), answer });
                }
            }
        }
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u64,
    pub dev: u64,
    pub mount_point: PathBuf,
    pub options: String,
    pub fstype: String,
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text (lines it cannot read are skipped).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let (major, minor) = f.get(2)?.split_once(':')?;
            Some(MountEntry {
                mount_id: f.first()?.parse().ok()?,
                dev: rustix::fs::makedev(major.parse().ok()?, minor.parse().ok()?),
                mount_point: PathBuf::from(unescape(f.get(4)?)),
                options: (*f.get(5)?).to_owned(),
                fstype: (*r.first()?).to_owned(),
                source: unescape(r.get(1).copied().unwrap_or("")),
            })
        })
        .collect()
}

/// Filesystems that cannot hold files anyone executes.
const PSEUDO: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "efivarfs",
    "nsfs",
    "rpc_pipefs",
    "selinuxfs",
];

fn in_scope(scope: &MarkScope, m: &MountEntry) -> bool {
    if PSEUDO.contains(&m.fstype.as_str()) || m.options.split(',').any(|o| o == "noexec") {
        return false;
    }
    match scope {
        MarkScope::AllFilesystems => true,
        MarkScope::Under(dirs) => dirs.iter().any(|d| m.mount_point.starts_with(d)),
    }
}

#[derive(Default)]
struct Marks {
    /// Superblocks marked whole (FAN_MARK_FILESYSTEM).
    filesystems: HashSet<u64>,
    /// Mounts marked one by one where a filesystem mark was refused.
    mounts: HashSet<u64>,
    /// Mounts whose marking failed (reported once).
    failed: HashSet<u64>,
    /// Set when the gate stops: nothing is marked any more.
    closed: bool,
}

/// Marks every mount in scope not marked yet (under the marks lock, so never after disarm).
fn update_marks(s: &Shared) -> Result<(), GateError> {
    let mut marks = s.marks.lock().unwrap_or_else(|e| e.into_inner());
    if marks.closed {
        return Ok(());
    }
    marks.update(s)
}

impl Marks {
    /// Marks every mount in scope not marked yet.
    fn update(&mut self, s: &Shared) -> Result<(), GateError> {
        let path = "/proc/self/mountinfo";
        let text =
            std::fs::read_to_string(path).map_err(|error| GateError::Mountinfo { path: path.to_owned(), error })?;
        for m in parse_mountinfo(&text) {
            if !in_scope(&s.cfg.scope, &m)
                || self.filesystems.contains(&m.dev)
                || self.mounts.contains(&m.mount_id)
                || self.failed.contains(&m.mount_id)
            {
                continue;
            }
            match mark(s, &m) {
                Ok(per_mount) => {
                    if per_mount {
                        self.mounts.insert(m.mount_id);
                    } else {
                        self.filesystems.insert(m.dev);
                    }
                    bump(&s.counters.marks);
                    s.emit(GateEvent::Marked { mount_point: m.mount_point, fstype: m.fstype, per_mount });
                }
                Err(MarkError::Moved) => {} // Tried again on the next mount table change.
                Err(MarkError::Failed(error)) => {
                    self.failed.insert(m.mount_id);
                    tracing::warn!(mount = %m.mount_point.display(), %error, "cannot gate this mount");
                    s.emit(GateEvent::MarkFailed { mount_point: m.mount_point, error });
                }
            }
        }
        Ok(())
    }
}

enum MarkError {
    /// The mount point no longer leads to that mount (it was moved or shadowed).
    Moved,
    Failed(String),
}

/// Marks the filesystem of `m` (or only that mount, where the kernel refuses a filesystem
/// mark); returns whether the mark is per mount.
///
/// The mount point is opened `O_PATH` without following symlinks (no FUSE server is asked to
/// open anything) and checked to be that very mount (statx mount id); the mark then names the
/// opened object through `/proc/self/fd`, so a rename or symlink swap in between cannot make
/// the gate mark something else.
fn mark(s: &Shared, m: &MountEntry) -> Result<bool, MarkError> {
    use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxFlags, CWD};
    let fd = rustix::fs::openat2(
        CWD,
        &m.mount_point,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS,
    )
    .map_err(|_| MarkError::Moved)?;
    let sx = rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC, StatxFlags::MNT_ID)
        .map_err(|e| MarkError::Failed(format!("statx: {e}")))?;
    if sx.stx_mnt_id != m.mount_id {
        return Err(MarkError::Moved);
    }
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let mask = MaskFlags::FAN_OPEN_EXEC_PERM;
    let cwd = std::fs::File::open("/").map_err(|e| MarkError::Failed(format!("open /: {e}")))?;
    match s.fan.mark(
        MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
        mask,
        cwd.as_fd(),
        Some(proc_path.as_str()),
    ) {
        Ok(()) => Ok(false),
        Err(first) => s
            .fan
            .mark(MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT, mask, cwd.as_fd(), Some(proc_path.as_str()))
            .map(|()| true)
            .map_err(|e| MarkError::Failed(format!("filesystem mark: {first}; mount mark: {e}"))),
    }
}

/// The dynamic loaders present on this machine (for `GateConfig::pass_through`).
pub fn dynamic_loaders() -> Vec<PathBuf> {
    [
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/ld-linux-aarch64.so.1",
        "/lib/ld-linux-armhf.so.3",
        "/lib/ld-linux.so.2",
        "/lib/ld-linux-riscv64-lp64d.so.1",
        "/lib64/ld64.so.2",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| p.exists())
    .collect()
}

/// Puts an inode ignore mark for exec on `path` (surviving modification), so the filesystem
/// marks report no exec of it.
fn pass_through(s: &Shared, path: &Path) {
    let mask = MaskFlags::FAN_OPEN_EXEC_PERM;
    let Ok(cwd) = File::open("/") else { return };
    let r =
        s.fan.mark(MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_IGNORE_SURV, mask, &cwd, Some(path)).or_else(|_| {
            // Kernels before 6.0 know only the older ignored mask.
            s.fan.mark(
                MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_IGNORED_MASK | MarkFlags::FAN_MARK_IGNORED_SURV_MODIFY,
                mask,
                &cwd,
                Some(path),
            )
        });
    if let Err(e) = r {
        tracing::warn!(path = %path.display(), error = %e, "cannot let this file's execs pass the gate");
    }
}

/// Re-marks whenever the mount table changes (the kernel flags /proc/self/mountinfo with
/// POLLPRI), so a filesystem mounted after start is gated within one wake-up.
fn watch_mounts(s: &Shared, stop: &OwnedFd) {
    let Ok(mountinfo) = File::open("/proc/self/mountinfo") else {
        tracing::error!("cannot open /proc/self/mountinfo: filesystems mounted from now on are not gated");
        return;
    };
    loop {
        let mut fds = [
            rustix::event::PollFd::new(&mountinfo, rustix::event::PollFlags::PRI),
            rustix::event::PollFd::new(stop, rustix::event::PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "mount watch failed: filesystems mounted from now on are not gated");
                return;
            }
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        if !fds[0].revents().is_empty() {
            // Reading the file to its end re-arms the notification.
            let _ = std::io::copy(&mut (&mountinfo), &mut std::io::sink());
            let _ = rustix::fs::seek(&mountinfo, rustix::fs::SeekFrom::Start(0));
            if let Err(e) = update_marks(s) {
                tracing::warn!(error = %e, "re-marking after a mount change");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
30 22 0:25 / /dev/shm rw,nosuid,nodev,noexec shared:4 - tmpfs tmpfs rw
41 22 0:40 / /tmp/gate\\040dir/fs rw,relatime shared:20 - tmpfs embargo rw,size=1024k
42 41 0:41 / /tmp/gate\\040dir/fs/late rw,relatime shared:21 - tmpfs embargo rw
50 22 0:55 / /tmp/.mount_WeChaXy12 ro,nosuid,nodev,relatime shared:30 - fuse.WeChat.AppImage /home/a/WeChat.AppImage ro,user_id=1000
";

    #[test]
    fn mountinfo_is_parsed_with_escapes() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 6);
        assert_eq!(m[3].mount_point, Path::new("/tmp/gate dir/fs"));
        assert_eq!(m[3].dev, rustix::fs::makedev(0, 40));
        assert_eq!(m[5].fstype, "fuse.WeChat.AppImage");
        assert_eq!(m[5].source, "/home/a/WeChat.AppImage");
        assert_eq!(m[5].mount_id, 50);
    }

    #[test]
    fn scope_skips_pseudo_and_noexec_and_stays_under_its_dirs() {
        let m = parse_mountinfo(MOUNTINFO);
        let all: Vec<_> = m.iter().filter(|e| in_scope(&MarkScope::AllFilesystems, e)).map(|e| e.mount_id).collect();
        assert_eq!(all, vec![22, 41, 42, 50], "proc and the noexec /dev/shm are skipped");
        let under = MarkScope::Under(vec![PathBuf::from("/tmp/gate dir")]);
        let some: Vec<_> = m.iter().filter(|e| in_scope(&under, e)).map(|e| e.mount_id).collect();
        assert_eq!(some, vec![41, 42], "the root filesystem is never marked for a private scope");
    }

    #[test]
    fn parent_and_uid_of_this_process() {
        let me = std::process::id() as i32;
        assert_eq!(parent_pid(me), Some(rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get())));
        assert_eq!(process_uid(me), Some(rustix::process::getuid().as_raw()));
    }

    #[test]
    fn the_judge_hashes_only_when_a_hash_could_change_the_verdict() {
        use embargo_policy::rules::{Matcher, Rule};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        let bytes = b"\x7fELF\x02\x01\x01\x00 a plain tool";
        std::fs::write(&path, bytes).unwrap();
        let rule = |id: &str, m: Matcher| Rule {
            id: id.into(),
            description: String::new(),
            action: Action::Remove,
            matchers: vec![m],
            except: vec![],
            tags: vec![],
        };
        let by_name =
            || rule("by-name", Matcher { kind: Some(Kind::File), id: Some("tool".into()), ..Default::default() });
        let by_hash = |h: String| rule("by-hash", Matcher { sha256: vec![h], ..Default::default() });
        let judge = |rules: Vec<Rule>| {
            HASHED.with(|h| h.set(false));
            let set = RuleSet::compile(rules, &[]);
            let j = judge_exec(&set, &mut File::open(&path).unwrap(), &path).unwrap();
            (j, HASHED.with(|h| h.get()))
        };
        let deny = |r: &str| Judgement::Deny { rule: r.into() };
        let mine = embargo_policy::trust::sha256_hex(bytes);
        let other = "ab".repeat(32);
        assert_eq!(judge(vec![]), (Judgement::Allow, false), "no rules: nothing read");
        assert_eq!(judge(vec![by_name()]), (deny("by-name"), false), "no hash rule: not hashed");
        assert_eq!(judge(vec![by_name(), by_hash(other.clone())]), (deny("by-name"), false), "banned anyway");
        assert_eq!(judge(vec![by_hash(other)]), (Judgement::Allow, true), "a hash rule could match: hashed");
        assert_eq!(judge(vec![by_hash(mine)]), (deny("by-hash"), true));
    }

    #[test]
    fn racy_change_times_are_not_cached() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let fresh = Stamp { ctime: (now.as_secs() as i64, 0), mtime: (0, 0), size: 0 };
        let old = Stamp { ctime: (now.as_secs() as i64 - 5, 0), ..fresh };
        assert!(is_racy(&Stamp { ctime: (now.as_secs() as i64, now.subsec_nanos() as i64), ..fresh }));
        assert!(!is_racy(&old));
    }
}
