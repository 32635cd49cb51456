//! What every package manager provides: the [`PackageManager`] trait, the shared [`Package`] and
//! [`Removal`] types, the lock helper, and the ONE registry table [`MANAGERS`].
//!
//! Adding a package manager (Android's is next) is one file implementing [`PackageManager`]
//! plus one line in [`MANAGERS`]; the config's package kinds, the package roots in the core loop
//! and status all derive from the table. A manager reads and removes; it never decides (that is
//! `decide`) and never runs on its own (the act layer calls `remove`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use embargo_policy::app::{App, Kind, Scope};

/// Every package manager this build knows. A new one is one line here.
pub static MANAGERS: &[&dyn PackageManager] =
    &[&super::dpkg::Dpkg, &super::rpm::Rpm, &super::flatpak::Flatpak, &super::snap::Snap, &super::android::Android];

/// The manager that produces apps of `kind`, if one does.
pub fn manager_for(kind: Kind) -> Option<&'static dyn PackageManager> {
    MANAGERS.iter().copied().find(|m| m.kind() == kind)
}

/// One installed package, as a package manager describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub maintainer: Option<String>,
    /// dpkg's `Essential: yes`.
    pub essential: bool,
    /// dpkg's `Priority:`.
    pub priority: Option<String>,
    pub installed: bool,
    /// Signing key id (rpm); dpkg records none.
    pub signer: Option<String>,
    /// The user whose own installation holds the package (a user's flatpak installation, by
    /// its directory's owner); `None` for system packages. Its app is that user's (`Scope::User`),
    /// so the records of what was done to it are shown to that user.
    pub owner: Option<u32>,
}

impl Package {
    /// A package with only a name and version (the rest empty).
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            architecture: String::new(),
            maintainer: None,
            essential: false,
            priority: None,
            installed: true,
            signer: None,
            owner: None,
        }
    }
}

/// An installed package and the files that identify and act on it (absolute inside its root, as
/// the database lists them): its executables for dpkg and rpm ([`executables_of`]), its
/// deployment for flatpak and snap — not every directory it shares with other packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPackage {
    pub package: Package,
    pub files: Vec<String>,
}

/// The files of a package's file list that are programs, judged by where they are installed
/// (`…/bin/`, `…/sbin/`, `…/games/`, `…/libexec/…`), without a stat per file: a real system's
/// database lists ~150,000 files for ~1,000 packages, nearly all of them data and directories.
/// An entry that other entries are listed beneath is a directory and is left out.
pub fn executables_of(files: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut files: Vec<String> = files.into_iter().collect();
    files.sort_unstable();
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let is_dir = files.get(i + 1).is_some_and(|next| {
            next.len() > f.len() && next.starts_with(f.as_str()) && next.as_bytes()[f.len()] == b'/'
        });
        let mut parts = f.rsplit('/');
        let _name = parts.next();
        let dir = parts.next().unwrap_or("");
        if !is_dir && (matches!(dir, "bin" | "sbin" | "games") || f.contains("/libexec/")) {
            out.push(f.clone());
        }
    }
    out
}

/// What a removal did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Removed (dry run: would be removed, and nothing else with it).
    Purged,
    /// Removed by a package-manager process that ran as this uid (a user's own flatpak
    /// installation is changed with its owner's rights, not root's); recorded in the evidence.
    PurgedAs(u32),
    /// The manager would have to remove or break other packages: not done.
    NeedsAdmin(String),
    /// Another package-manager transaction holds the lock: try again once it ends.
    Busy,
    Protected(String),
}

/// What a reversible quarantine through the package manager did (Android: `cmd package
/// suspend` per user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suspension {
    /// `users`: suspended now (a command that timed out counts: its effect is unknown, and
    /// undoing it is harmless); `already`: held a suspension of ours before; `failed`: the
    /// users whose command failed, with why.
    Suspended {
        users: Vec<u32>,
        already: Vec<u32>,
        failed: Vec<(u32, String)>,
    },
    /// Installed for no user: nothing to suspend.
    NotInstalled,
    Protected(String),
}

/// A package manager for one kind of app. Implementations are stateless (the root is passed in),
/// so one static value serves every root of that kind.
pub trait PackageManager: Sync {
    /// The kind of app its packages are.
    fn kind(&self) -> Kind;
    /// How removal is shown in evidence, e.g. "dpkg --purge".
    fn removed_by(&self) -> &'static str;
    /// Whether `root` holds this manager's database.
    fn has_database(&self, root: &Path) -> bool;
    /// The database directory (shown in status).
    fn db_dir(&self, root: &Path) -> PathBuf;
    /// The directories to watch, non-recursively, for database changes.
    fn watch_dirs(&self, root: &Path) -> Vec<PathBuf> {
        vec![self.db_dir(root)]
    }
    /// Directories that come and go (Android's install staging directories), watched
    /// non-recursively when a database change arrives (watching one already watched is a no-op).
    fn transient_watch_dirs(&self, root: &Path) -> Vec<PathBuf> {
        let _ = root;
        Vec::new()
    }
    /// Whether a filesystem event on `path` means the database changed (and not, say, our own
    /// lock file being opened).
    fn is_db_change(&self, root: &Path, path: &Path) -> bool;
    /// What is installed under `root`.
    fn installed(&self, root: &Path) -> std::io::Result<Vec<InstalledPackage>>;
    /// What is installed under `root`, reusing the files of packages unchanged since the last
    /// read (`known`), so managers with one file list per package (dpkg) read only what changed.
    fn installed_since(
        &self,
        root: &Path,
        known: &dyn Fn(&Package) -> Option<Vec<String>>,
    ) -> std::io::Result<Vec<InstalledPackage>> {
        let _ = known;
        self.installed(root)
    }
    /// Why this package must never be removed, whatever a policy says (the manager's own
    /// notion: Debian's Essential/required, the package managers, the agent itself, …).
    fn protected(&self, p: &Package) -> Option<String>;
    /// Removes `p` through the package manager, only if that removes nothing else. With
    /// `dry_run`, only asks the manager what removal would do.
    fn remove(&self, root: &Path, p: &Package, dry_run: bool) -> Result<Removal, String>;
    /// Whether the manager can quarantine a package reversibly itself ([`Self::suspend`]); else
    /// a `quarantine` verdict quarantines the package's executables and needs an admin.
    fn suspends(&self) -> bool {
        false
    }
    /// Quarantines `p` reversibly through the package manager, for rule `rule` (which the
    /// manager may show its users).
    /// `intent` is called with the users about to be acted on before any command runs, and
    /// must make them durable (crash safety: what it records is what restore undoes).
    fn suspend(
        &self,
        root: &Path,
        p: &Package,
        rule: &str,
        intent: &mut dyn FnMut(&[u32]) -> Result<(), String>,
    ) -> Result<Suspension, String> {
        let _ = (root, rule, intent);
        Err(format!("{} has no reversible quarantine", p.name))
    }
    /// Undoes [`Self::suspend`] for `users` (idempotent: a user for whom it is not suspended, or
    /// who no longer has it, needs nothing).
    fn unsuspend(&self, root: &Path, package: &str, users: &[u32]) -> Result<(), String> {
        let _ = (root, users);
        Err(format!("{package}: this package manager has no reversible quarantine"))
    }
    /// The app identity of an installed package (files absolute in `root`).
    fn app(&self, root: &Path, p: &InstalledPackage) -> App {
        app_of(self.kind(), root, &p.package, &p.files)
    }
}

pub use embargo_policy::app::ALWAYS_PROTECTED;

/// The common check: a package manager or the agent itself.
pub fn always_protected(p: &Package) -> Option<String> {
    ALWAYS_PROTECTED.contains(&p.name.as_str()).then(|| format!("{} is a package manager or the agent itself", p.name))
}

/// The app identity of a package of `kind` whose files (absolute in `root`) are `files`.
pub fn app_of(kind: Kind, root: &Path, p: &Package, files: &[String]) -> App {
    let mut a = App::new(kind, p.name.clone());
    a.name = Some(p.name.clone());
    a.version = Some(p.version.clone());
    a.publisher = p.maintainer.clone();
    a.paths = files.iter().map(|f| root.join(f.trim_start_matches('/')).display().to_string()).collect();
    a.signers = p.signer.iter().cloned().collect();
    a.scope = p.owner.map_or(Scope::System, Scope::User);
    a
}

/// A package manager's lock (a POSIX record lock), held until dropped.
pub struct FrontendLock(#[allow(dead_code)] OwnedFd);

/// Takes the record lock on `path` without waiting. `Ok(None)`: another process holds it (a
/// transaction is in progress).
pub fn try_lock_file(path: &Path, mode: u32) -> std::io::Result<Option<FrontendLock>> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(mode),
    )?;
    // dpkg, apt and rpm use POSIX record locks (F_SETLK), as rustix's fcntl_lock does: they
    // conflict.
    match rustix::fs::fcntl_lock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(FrontendLock(fd))),
        Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::ACCESS) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_manager_per_kind_and_every_kind_named() {
        let mut kinds: Vec<Kind> = MANAGERS.iter().map(|m| m.kind()).collect();
        let n = kinds.len();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), n, "two managers claim one kind");
        for k in [Kind::Deb, Kind::Rpm, Kind::Flatpak, Kind::Snap, Kind::Android] {
            assert!(manager_for(k).is_some(), "{k} has no manager");
        }
        assert!(manager_for(Kind::Appimage).is_none());
    }

    #[test]
    fn executables_by_location() {
        let files = [
            "/usr",
            "/usr/bin",
            "/usr/bin/wechat",
            "/usr/share/doc/wechat/copyright",
            "/usr/sbin/kesl",
            "/usr/libexec/wechat",
            "/usr/libexec/wechat/helper",
            "/usr/games/sol",
            "/opt/wechat/bin/wechat",
            "/usr/lib/wechat.so",
        ];
        // Sorted; directories (`/usr/bin`, `/usr/libexec/wechat`) and data files left out.
        assert_eq!(
            executables_of(files.map(str::to_owned)),
            [
                "/opt/wechat/bin/wechat",
                "/usr/bin/wechat",
                "/usr/games/sol",
                "/usr/libexec/wechat/helper",
                "/usr/sbin/kesl"
            ]
        );
    }
}
