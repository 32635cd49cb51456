//! Flatpak: apps deployed in an installation (system `/var/lib/flatpak` or per-user
//! `~/.local/share/flatpak`), and removal through the real `flatpak uninstall`.
//!
//! Reading needs no flatpak process: an installed app is `<inst>/app/<id>/<arch>/<branch>/active`,
//! and its origin is the remote whose ref `repo/refs/remotes/<origin>/app/<id>/<arch>/<branch>`
//! the installation's ostree repository holds. flatpak touches `<inst>/.changed` after every
//! install or uninstall; the daemon watches that. Removal runs `flatpak uninstall` for exactly
//! that installation (`--system`, or `--user` with `FLATPAK_USER_DIR`); apps have no dependents.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use embargo_policy::app::Kind;
use rustix::fs::OFlags;

use super::package::{always_protected, InstalledPackage, Package, PackageManager, Removal};
use crate::safefs;

/// flatpak: apps of one installation (the configured root is the installation directory).
pub struct Flatpak;

impl PackageManager for Flatpak {
    fn kind(&self) -> Kind {
        Kind::Flatpak
    }
    fn removed_by(&self) -> &'static str {
        "flatpak uninstall"
    }
    fn has_database(&self, root: &Path) -> bool {
        root.is_dir()
    }
    fn db_dir(&self, root: &Path) -> PathBuf {
        root.to_path_buf()
    }
    fn is_db_change(&self, root: &Path, path: &Path) -> bool {
        path == root.join(".changed") || path == root.join("app")
    }
    fn installed(&self, root: &Path) -> std::io::Result<Vec<InstalledPackage>> {
        installed(root)
    }
    fn protected(&self, p: &Package) -> Option<String> {
        protected(p)
    }
    fn remove(&self, root: &Path, p: &Package, dry_run: bool) -> Result<Removal, String> {
        if dry_run {
            // An app has no dependents (runtimes are not read as apps), so removal takes
            // nothing else with it; flatpak has no dry run to ask.
            return Ok(protected(p).map_or(Removal::Purged, Removal::Protected));
        }
        uninstall(root, p)
    }
}

/// Flatpak's notion of a package that must stay: only runtimes and the platform are shared,
/// and they are not read as apps; the names every manager keeps are kept here too.
pub fn protected(p: &Package) -> Option<String> {
    if p.name.starts_with("org.freedesktop.Platform") || p.name.starts_with("org.gnome.Platform") {
        return Some(format!("{} is a runtime", p.name));
    }
    always_protected(p)
}

pub const SYSTEM_INSTALLATION: &str = "/var/lib/flatpak";

/// Most entries read from one directory of an installation (`app/`, `app/<id>/`, the remotes):
/// a user's installation is the user's to fill, and the read must stay bounded. Beyond it the
/// rest is not looked at and a warning names the directory.
pub const MAX_DIR_ENTRIES: usize = 10_000;

/// The subdirectories of `rel` beneath the installation `inst` (opened without following a
/// symlink anywhere, never leaving the installation: `safefs`), names that are not UTF-8 left out.
/// A missing or unreadable directory has none.
fn dirs(inst: &OwnedFd, rel: &Path) -> Vec<String> {
    let Ok(fd) = safefs::open_beneath(inst, rel, OFlags::RDONLY | OFlags::DIRECTORY) else { return Vec::new() };
    let Ok(dup) = rustix::io::dup(&fd) else { return Vec::new() };
    let Ok(mut entries) = rustix::fs::Dir::new(dup) else { return Vec::new() };
    let mut out = Vec::new();
    let mut seen = 0usize;
    while let Some(Ok(e)) = entries.next() {
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        seen += 1;
        if seen > MAX_DIR_ENTRIES {
            tracing::warn!(dir = %rel.display(), "more than {MAX_DIR_ENTRIES} entries in a flatpak installation directory; the rest not looked at");
            break;
        }
        let is_dir = match e.file_type() {
            rustix::fs::FileType::Directory => true,
            // The filesystem did not say: lstat (a symlink is not a directory here).
            rustix::fs::FileType::Unknown => safefs::meta_at(&fd, name).is_ok_and(|m| m.is_dir),
            _ => false,
        };
        if let (true, Ok(name)) = (is_dir, std::str::from_utf8(name)) {
            out.push(name.to_owned());
        }
    }
    out
}

/// Whether `<branch dir>/active` is flatpak's deployment link: a symlink to a directory beside
/// it (a single name, never a path that could lead elsewhere).
fn is_deployed(inst: &OwnedFd, branch: &Path) -> bool {
    let Ok(dir) = safefs::open_beneath(inst, branch, OFlags::PATH | OFlags::DIRECTORY) else { return false };
    let Ok(target) = rustix::fs::readlinkat(&dir, "active", Vec::new()) else { return false };
    let target = target.as_bytes();
    !target.is_empty()
        && !target.contains(&b'/')
        && target != b"."
        && target != b".."
        && safefs::meta_at(&dir, target).is_ok_and(|m| m.is_dir)
}

/// Installed apps under installation `inst`, with their deployed files' top directory. Root
/// reads a tree its owner controls: every directory is opened beneath the installation without
/// following a symlink (`safefs`), so a planted link shows nothing from outside it.
pub fn installed(inst: &Path) -> std::io::Result<Vec<InstalledPackage>> {
    let root = safefs::open_root(inst)?;
    // An installation a user owns is that user's: its apps are in the user's scope (the system
    // installation, and any root owns, are the system's).
    let owner = Some(safefs::meta(&root)?.uid).filter(|&uid| uid != 0 && inst != Path::new(SYSTEM_INSTALLATION));
    let mut out = Vec::new();
    let remotes = dirs(&root, Path::new("repo/refs/remotes"));
    for id in dirs(&root, Path::new("app")) {
        let app = Path::new("app").join(&id);
        for arch in dirs(&root, &app) {
            for branch in dirs(&root, &app.join(&arch)) {
                if !is_deployed(&root, &app.join(&arch).join(&branch)) {
                    continue;
                }
                let origin = remotes
                    .iter()
                    .find(|r| {
                        let rel =
                            Path::new("repo/refs/remotes").join(r).join("app").join(&id).join(&arch).join(&branch);
                        safefs::open_beneath(&root, &rel, OFlags::PATH).and_then(safefs::meta).is_ok_and(|m| m.is_file)
                    })
                    .cloned();
                let mut p = Package::new(id.clone(), branch.clone());
                p.architecture = arch.clone();
                p.maintainer = origin;
                p.owner = owner;
                // Paths are shown relative to the installation (which is the root here).
                out.push(InstalledPackage { package: p, files: vec![format!("app/{id}/{arch}/{branch}/active")] });
            }
        }
    }
    Ok(out)
}

/// Who runs `flatpak --user` for one user installation: its owner (uid 0 only for an
/// installation root owns, reached through root-owned directories only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// The owner's home directory (from `/etc/passwd`; `/` when the uid has no entry).
    pub home: PathBuf,
}

/// Most bytes of `/etc/passwd` read (a root-owned file; the bound only keeps a damaged one from
/// growing the worker's memory).
const PASSWD_MAX: u64 = 16 * 1024 * 1024;

/// One `/etc/passwd` entry: name, uid, home.
fn passwd() -> Vec<(String, u32, PathBuf)> {
    use std::io::Read as _;
    let mut text = String::new();
    let read = std::fs::File::open("/etc/passwd").and_then(|f| f.take(PASSWD_MAX).read_to_string(&mut text));
    if let Err(e) = read {
        tracing::warn!(error = %e, "cannot read /etc/passwd; flatpak user installations are matched to no home");
    }
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let uid = f.get(2)?.parse().ok()?;
            Some((f[0].to_owned(), uid, PathBuf::from(f.get(5)?)))
        })
        .collect()
}

/// Whether a directory lets someone other than root replace its entries: owned by another
/// user, or writable by a group or by others without the sticky bit (which keeps others from
/// renaming root's entries, as in `/tmp`).
fn writable_by_non_root(m: &safefs::Meta) -> bool {
    let sticky = m.mode & 0o1000 != 0;
    m.uid != 0 || (!sticky && (m.mode & 0o002 != 0 || (m.mode & 0o020 != 0 && m.gid != 0)))
}

/// Decides who runs flatpak for the user installation `inst`, from an `fstat` of the directory
/// opened without following a symlink in any component of its path (`safefs::open_root`).
///
/// Refused, with the reason naming the path: a symlink or a non-directory; an installation in
/// a user's home (by `/etc/passwd`) owned by someone else; a root-owned installation any of
/// whose ancestors a non-root user could rename or replace (flatpak would then run as root on
/// whatever they put there).
pub fn run_as(inst: &Path) -> Result<RunAs, String> {
    let shown = inst.display();
    let fd = safefs::open_root(inst).map_err(|e| match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => {
            format!("flatpak installation {shown} is reached through a symlink: refused")
        }
        Some(code) if code == rustix::io::Errno::NOTDIR.raw_os_error() => {
            format!("flatpak installation {shown} is not a directory (or is reached through a non-directory): refused")
        }
        _ => format!("flatpak installation {shown}: {e}"),
    })?;
    let m = safefs::meta(&fd).map_err(|e| format!("flatpak installation {shown}: {e}"))?;
    if !m.is_dir {
        return Err(format!("flatpak installation {shown} is not a directory: refused"));
    }
    let users = passwd();
    let home = |uid: u32| users.iter().find(|(_, u, _)| *u == uid).map(|(_, _, h)| h.clone());
    // The user whose home holds the installation (the deepest home, `/` never counts).
    let holder = users
        .iter()
        .filter(|(_, _, h)| h.parent().is_some() && inst.starts_with(h))
        .max_by_key(|(_, _, h)| h.components().count());
    if let Some((name, uid, _)) = holder {
        if m.uid != *uid && m.uid != 0 {
            return Err(format!(
                "flatpak installation {shown} is owned by uid {} but sits in the home of {name} (uid {uid}): refused",
                m.uid
            ));
        }
    }
    if m.uid == 0 {
        // Root runs flatpak only where no one else can swap what the path leads to.
        let mut dir = PathBuf::from("/");
        for c in inst.components().skip(1) {
            dir.push(c);
            let am = safefs::open_root(&dir)
                .and_then(safefs::meta)
                .map_err(|e| format!("flatpak installation {shown}: {}: {e}", dir.display()))?;
            if writable_by_non_root(&am) {
                return Err(format!(
                    "flatpak installation {shown} is owned by root but {} can be changed by uid {} or its group: \
                     root would run flatpak where a user can swap the installation; refused",
                    dir.display(),
                    am.uid
                ));
            }
        }
    }
    Ok(RunAs { uid: m.uid, gid: m.gid, home: home(m.uid).unwrap_or_else(|| PathBuf::from("/")) })
}

/// The search path flatpak is run with: the agent's own (set by whoever started it as root,
/// never by a user), else the usual system one.
fn search_path() -> std::ffi::OsString {
    std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into())
}

/// The `flatpak uninstall` of `ref` for installation `inst`, and the uid it will run as
/// (`None`: the system installation, run as root with the agent's environment, as always).
fn uninstall_command(inst: &Path, r#ref: &str) -> Result<(Command, Option<u32>), String> {
    let mut c = Command::new("flatpak");
    let ran_as = if inst == Path::new(SYSTEM_INSTALLATION) {
        c.arg("--system");
        None
    } else {
        use std::os::unix::process::CommandExt as _;
        let who = run_as(inst).map_err(|e| format!("flatpak uninstall {ref}: {e}", ref = r#ref))?;
        c.arg("--user").env_clear().env("HOME", &who.home).env("FLATPAK_USER_DIR", inst).env("PATH", search_path());
        c.current_dir("/");
        if who.uid != 0 {
            // std drops the supplementary groups (setgroups(0)) when root sets a uid.
            c.uid(who.uid).gid(who.gid);
        }
        tracing::info!(installation = %inst.display(), uid = who.uid, "running flatpak --user uninstall as the installation's owner");
        Some(who.uid)
    };
    c.args(["uninstall", "-y", "--noninteractive", r#ref]);
    Ok((c, ran_as))
}

/// How long one `flatpak uninstall` may run before it is killed (its whole process group) and
/// the removal fails naming the timeout. flatpak waits without limit for the installation's
/// lock (`repo/.lock`), and a user installation's owner can hold that lock for ever; without a
/// deadline one such user would hold the package worker, and every later removal, for good.
/// An uninstall is a rename, a delete and a prune: seconds even for a large app.
pub const UNINSTALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Uninstalls `p` from installation `inst` with the real flatpak, within [`UNINSTALL_TIMEOUT`]:
/// `--system` for the system installation (as root, as before), else `--user` run as the
/// installation's owner ([`run_as`]) with an environment of its own (`HOME`,
/// `FLATPAK_USER_DIR`, `PATH`, nothing else of root's) in `/`: a user's installation is the
/// user's to change, so flatpak acts on it with no more than the user's rights. The result
/// names the uid it ran as ([`Removal::PurgedAs`]).
pub fn uninstall(inst: &Path, p: &Package) -> Result<Removal, String> {
    uninstall_within(inst, p, UNINSTALL_TIMEOUT)
}

/// [`uninstall`] with the deadline `timeout`.
pub fn uninstall_within(inst: &Path, p: &Package, timeout: std::time::Duration) -> Result<Removal, String> {
    if let Some(why) = protected(p) {
        return Ok(Removal::Protected(why));
    }
    let r#ref = format!("app/{}/{}/{}", p.name, p.architecture, p.version);
    let (c, ran_as) = uninstall_command(inst, &r#ref)?;
    let out = super::android::run_command_bounded(c, &format!("flatpak uninstall {ref}", ref = r#ref), timeout)?;
    if !out.status.success() {
        let err = out.stderr;
        if err.contains("lock") {
            return Ok(Removal::Busy);
        }
        return Err(format!("flatpak uninstall {}: {}", r#ref, err.trim()));
    }
    Ok(ran_as.map_or(Removal::Purged, Removal::PurgedAs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A deployed app in the layout flatpak writes: `app/<id>/<arch>/<branch>/<commit>/` with
    /// `active` linking to the commit, and its origin's ref under `repo/refs/remotes/`.
    fn deploy(inst: &Path, id: &str) {
        let branch = inst.join(format!("app/{id}/x86_64/stable"));
        std::fs::create_dir_all(branch.join("0123abcd/files")).unwrap();
        symlink("0123abcd", branch.join("active")).unwrap();
        let r = inst.join(format!("repo/refs/remotes/flathub/app/{id}/x86_64"));
        std::fs::create_dir_all(&r).unwrap();
        std::fs::write(r.join("stable"), "0123abcd\n").unwrap();
    }

    #[test]
    fn reading_an_installation_never_follows_its_owners_symlinks_out_of_it() {
        let tmp = tempfile::tempdir().unwrap();
        let inst = tmp.path().join("inst");
        let outside = tmp.path().join("outside");
        deploy(&inst, "org.example.Editor");
        // A whole app directory elsewhere, linked in as if it were installed here.
        deploy(&outside, "com.tencent.WeChat");
        symlink(outside.join("app/com.tencent.WeChat"), inst.join("app/com.tencent.WeChat")).unwrap();
        // An app whose `active` leads out of its branch directory.
        let branch = inst.join("app/com.example.Escape/x86_64/stable");
        std::fs::create_dir_all(&branch).unwrap();
        symlink(outside.join("app/com.tencent.WeChat/x86_64/stable/0123abcd"), branch.join("active")).unwrap();
        // A remote whose refs live elsewhere: the origin is not read through it.
        symlink(outside.join("repo/refs/remotes/flathub"), inst.join("repo/refs/remotes/planted")).unwrap();
        std::fs::create_dir_all(inst.join("app/org.example.Editor/x86_64/beta")).unwrap();
        symlink(
            inst.join("app/org.example.Editor/x86_64/stable/0123abcd"),
            inst.join("app/org.example.Editor/x86_64/beta/active"),
        )
        .unwrap();

        let found = installed(&inst).unwrap();
        let names: Vec<(&str, &str)> =
            found.iter().map(|p| (p.package.name.as_str(), p.package.version.as_str())).collect();
        assert_eq!(names, [("org.example.Editor", "stable")], "only what is really deployed here");
        assert_eq!(found[0].package.maintainer.as_deref(), Some("flathub"));
        assert_eq!(found[0].package.architecture, "x86_64");

        // The installation itself reached through a symlink is not read at all.
        symlink(&inst, tmp.path().join("inst-link")).unwrap();
        assert!(installed(&tmp.path().join("inst-link")).is_err());
    }

    #[test]
    fn an_installation_runs_as_its_owner_and_symlinks_or_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let inst = tmp.path().join("inst");
        std::fs::create_dir(&inst).unwrap();
        let me = rustix::process::geteuid().as_raw();
        if me != 0 {
            // Not root: the tempdir is the tester's own, so the installation's owner runs it.
            assert_eq!(run_as(&inst).unwrap().uid, me);
        }
        symlink(&inst, tmp.path().join("link")).unwrap();
        let e = run_as(&tmp.path().join("link")).unwrap_err();
        assert!(e.contains("symlink") && e.contains(&tmp.path().join("link").display().to_string()), "{e}");
        std::fs::create_dir(inst.join("real")).unwrap();
        symlink(&inst, tmp.path().join("parent-link")).unwrap();
        let e = run_as(&tmp.path().join("parent-link/real")).unwrap_err();
        assert!(e.contains("symlink"), "a symlink in any component: {e}");
        std::fs::write(tmp.path().join("file"), "").unwrap();
        let e = run_as(&tmp.path().join("file")).unwrap_err();
        assert!(e.contains("not a directory") && e.contains("file"), "{e}");
    }

    #[test]
    fn a_user_owned_installation_runs_as_that_user_and_root_owned_needs_root_owned_ancestors() {
        if !crate::testutil::root_or_skip("needs root to chown an installation to another uid") {
            return;
        }
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let user = tmp.path().join("user");
        std::fs::create_dir(&user).unwrap();
        std::os::unix::fs::chown(&user, Some(65534), Some(65533)).unwrap();
        let who = run_as(&user).unwrap();
        assert_eq!((who.uid, who.gid), (65534, 65533), "the owner's ids from fstat");

        // Root-owned, in a directory uid 65534 owns (and could swap): refused, naming it.
        let inside = user.join("inst");
        std::fs::create_dir(&inside).unwrap();
        let e = run_as(&inside).unwrap_err();
        assert!(e.contains(&user.display().to_string()) && e.contains("65534"), "{e}");
        // Root-owned under root-owned, non-writable directories: root runs it, as before.
        let rooted = tmp.path().join("rooted");
        std::fs::create_dir(&rooted).unwrap();
        assert_eq!(run_as(&rooted).unwrap().uid, 0);
        // A world-writable ancestor without the sticky bit is as bad as a foreign owner.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(run_as(&rooted).is_err());
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(run_as(&rooted).unwrap().uid, 0, "sticky: others cannot rename root's entries");
    }

    #[test]
    fn the_system_installation_is_uninstalled_as_before_and_a_user_one_with_its_own_environment() {
        let (c, ran_as) = uninstall_command(Path::new(SYSTEM_INSTALLATION), "app/a.B/x86_64/stable").unwrap();
        assert_eq!(ran_as, None, "root, as always");
        let args: Vec<_> = c.get_args().collect();
        assert_eq!(args, ["--system", "uninstall", "-y", "--noninteractive", "app/a.B/x86_64/stable"]);
        assert_eq!(c.get_envs().count(), 0, "the agent's environment, unchanged");
        assert_eq!(c.get_current_dir(), None);

        let tmp = tempfile::tempdir().unwrap();
        let inst = tmp.path().join("inst");
        std::fs::create_dir(&inst).unwrap();
        let (c, ran_as) = uninstall_command(&inst, "app/a.B/x86_64/stable").unwrap();
        assert_eq!(ran_as, Some(rustix::process::geteuid().as_raw()));
        assert_eq!(c.get_args().next().unwrap(), "--user");
        let mut envs: Vec<_> = c.get_envs().map(|(k, _)| k.to_str().unwrap().to_owned()).collect();
        envs.sort();
        assert_eq!(envs, ["FLATPAK_USER_DIR", "HOME", "PATH"]);
        assert_eq!(c.get_current_dir(), Some(Path::new("/")));
    }
}
