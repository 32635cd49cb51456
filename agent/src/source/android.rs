//! Android's package manager: the root is the device root (`/` on a device, a simulated tree in
//! tests). What is installed comes from `<root>/data/system/packages.xml` (Android Binary XML or
//! text, read by `crate::android`); removal is `cmd package uninstall --user all PKG`.
//!
//! `cmd` is found on `PATH`, as `dpkg` and `rpm` are: on a device init gives services a `PATH`
//! holding `/system/bin` (where `cmd` lives), and tests put a stand-in first on it. A user
//! cannot change the daemon's environment.
//!
//! packages.xml is rewritten by `ResilientAtomicFile`: a backup copy, a new file renamed into
//! place. A file that does not parse (caught mid-write: truncated ABX is an error by design) is
//! read from `packages-backup.xml` when that exists (AOSP's own rule); otherwise the read fails
//! and the loop keeps the last good list.
//!
//! Quarantine is `cmd package suspend --user U` for each user who has the app (per-user state
//! from `<root>/data/system/users/<U>/package-restrictions.xml`), restore `cmd package
//! unsuspend`; see `docs/android.md` for why suspend and how a crash is survived. Every `cmd`
//! runs with a deadline (`run_bounded`), on the package worker. Staging directories and their
//! APKs are opened beneath the device root through `safefs`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use embargo_policy::app::{App, Kind, Scope};
use rustix::fs::OFlags;

use super::package::{InstalledPackage, Package, PackageManager, Removal, Suspension};
use crate::android::{self, UserPackageState};
use crate::safefs;

pub struct Android;

/// Signer digests travel in [`Package::signer`] joined by this (hex never contains it), so the
/// generic package types need no Android field; [`Android::app`] splits them again.
const SIGNER_SEP: char = ',';

fn system_dir(root: &Path) -> PathBuf {
    root.join("data/system")
}

fn app_dir(root: &Path) -> PathBuf {
    root.join("data/app")
}

/// Most install sessions staged at once that are looked at, and APKs per session.
const MAX_SESSIONS: usize = 64;
const MAX_SESSION_APKS: usize = 16;
/// Most entries of `data/app` (or of one staging directory) listed per read: a device has one
/// per installed app (`~~…`) plus the sessions in flight.
const MAX_DIR_ENTRIES: usize = 100_000;
/// Most users whose `package-restrictions.xml` is read (Android's own limit is far lower).
pub const MAX_USERS: usize = 256;
/// How long one `cmd` may run before it (and whatever it started) is killed and the call
/// reported as timed out. `cmd package suspend` and `uninstall` return in well under a second
/// on a device; a hung binder call must not hold the package worker.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of a `cmd`'s stdout and of its stderr kept.
const CMD_OUTPUT_MAX: u64 = 64 * 1024;
/// Who `cmd package suspend` run by uid 0 records as the suspending package
/// (`PackageManagerShellCommand.runSuspend`: `callingPackage = "root"` for `ROOT_UID`).
pub const ROOT_SUSPENDER: &str = "root";

/// Marks a staged install (in [`Package::architecture`]): `install-session <ID>`. Its
/// [`Package::name`] is `<package>@vmdl<ID>` (`@` is never in a package name), so a staged
/// update never collides with the installed package of the same name.
const SESSION: &str = "install-session ";

/// The names in the directory `dir` (an fd opened for reading), `.` and `..` left out, with
/// whether each is a directory (`None`: the filesystem did not say), at most `max`.
fn list_dir(dir: &OwnedFd, max: usize) -> Vec<(std::ffi::OsString, Option<bool>)> {
    let Ok(fd) = rustix::io::dup(dir) else { return Vec::new() };
    let Ok(mut entries) = rustix::fs::Dir::new(fd) else { return Vec::new() };
    let mut out = Vec::new();
    while let Some(Ok(e)) = entries.next() {
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let is_dir = match e.file_type() {
            rustix::fs::FileType::Directory => Some(true),
            rustix::fs::FileType::Unknown => None,
            _ => Some(false),
        };
        out.push((OsStr::from_bytes(name).to_owned(), is_dir));
        if out.len() == max {
            tracing::warn!("more than {max} directory entries; the rest not looked at");
            break;
        }
    }
    out
}

/// Opens the directory `rel` beneath `base` for listing (no symlink anywhere, never leaving
/// `base`: `safefs`).
fn open_dir_beneath(base: &OwnedFd, rel: &Path) -> std::io::Result<OwnedFd> {
    safefs::open_beneath(base, rel, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// The staging directories `<root>/data/app/vmdl<ID>.tmp` there now, with their session ids,
/// each opened beneath the device root (a symlinked `data/app` or session is not followed).
fn staging_dirs_fd(root: &Path) -> Vec<(u32, String, OwnedFd)> {
    let Ok(root_fd) = safefs::open_root(root) else { return Vec::new() };
    let Ok(app_fd) = open_dir_beneath(&root_fd, Path::new("data/app")) else { return Vec::new() };
    let mut out = Vec::new();
    for (name, _) in list_dir(&app_fd, MAX_DIR_ENTRIES) {
        let Some(name) = name.to_str() else { continue };
        let Some(id) = android::staging_session(name) else { continue };
        // Only a real directory is a session: opened without following a symlink.
        let Ok(fd) = open_dir_beneath(&app_fd, Path::new(name)) else { continue };
        out.push((id, name.to_owned(), fd));
        if out.len() == MAX_SESSIONS {
            tracing::warn!(root = %root.display(), "more than {MAX_SESSIONS} install sessions staged; the rest not looked at");
            break;
        }
    }
    out
}

/// The staging directories' paths (to watch).
fn staging_dirs(root: &Path) -> Vec<(u32, PathBuf)> {
    staging_dirs_fd(root).into_iter().map(|(id, name, _)| (id, app_dir(root).join(name))).collect()
}

/// The APKs staged in install sessions that already identify (a half-written APK does not yet;
/// its close-write brings another read). Every directory and file is opened beneath the device
/// root through `safefs`, so a session directory swapped for a symlink is never followed.
fn staged(root: &Path) -> Vec<InstalledPackage> {
    let mut out = Vec::new();
    for (id, dir_name, dir) in staging_dirs_fd(root) {
        let apks = list_dir(&dir, MAX_DIR_ENTRIES)
            .into_iter()
            .filter(|(n, is_dir)| *is_dir != Some(true) && n.as_bytes().ends_with(b".apk"))
            .take(MAX_SESSION_APKS);
        for (name, _) in apks {
            let Ok((file, meta)) = safefs::open_file_beneath(&dir, Path::new(&name)) else { continue };
            if !meta.is_file {
                continue;
            }
            match android::identify_apk(&file) {
                Ok(apk) => {
                    let rel = format!("/data/app/{dir_name}/{}", name.to_string_lossy());
                    let mut p = Package::new(
                        format!("{}@vmdl{id}", apk.manifest.package),
                        apk.manifest.version_code.map(|v| v.to_string()).unwrap_or_default(),
                    );
                    p.architecture = format!("{SESSION}{id}");
                    let signers = apk.all_signers_hex();
                    p.signer = (!signers.is_empty()).then(|| signers.join(&SIGNER_SEP.to_string()));
                    out.push(InstalledPackage { package: p, files: vec![rel] });
                }
                Err(e) => tracing::debug!(session = id, "staged APK not identified (yet): {e}"),
            }
        }
    }
    out
}

fn session_of(p: &Package) -> Option<u32> {
    p.architecture.strip_prefix(SESSION)?.parse().ok()
}

/// Reads one XML file beneath `dir` (capped), or its `-backup` twin when the main file does not
/// parse (AOSP's rule for `ResilientAtomicFile`). `Ok(None)`: neither exists.
fn read_with_backup<T>(
    dir: &OwnedFd,
    name: &str,
    backup: &str,
    parse: impl Fn(&[u8]) -> Result<T, String>,
) -> std::io::Result<Option<T>> {
    let read = |n: &str| -> std::io::Result<T> {
        let (file, _) = safefs::open_file_beneath(dir, Path::new(n))?;
        let bytes = android::read_xml_file(&file)?;
        parse(&bytes).map_err(|e| std::io::Error::other(format!("{n}: {e}")))
    };
    match read(name) {
        Ok(v) => Ok(Some(v)),
        Err(e) if safefs::meta_at(dir, backup).is_ok() => {
            tracing::warn!(error = %e, "{name} not readable; reading {backup}");
            read(backup).map(Some)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Each user's package state: the numeric directories of `<root>/data/system/users/`, each
/// with its `package-restrictions.xml` (ABX or text; a user without one has every package
/// installed in the default state). No `users` directory: user 0 alone, default state.
/// A file that does not parse (nor its backup) is an error naming it: acting per user on a
/// guess could suspend for the wrong users.
pub fn user_states(root: &Path) -> std::io::Result<Vec<(u32, BTreeMap<String, UserPackageState>)>> {
    let root_fd = safefs::open_root(root)?;
    let users_fd = match open_dir_beneath(&root_fd, Path::new("data/system/users")) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![(0, BTreeMap::new())]),
        Err(e) => return Err(e),
    };
    let mut ids: Vec<u32> = list_dir(&users_fd, MAX_DIR_ENTRIES)
        .into_iter()
        .filter(|(_, is_dir)| *is_dir != Some(false))
        .filter_map(|(n, _)| n.to_str().filter(|n| n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()))?.parse().ok())
        .collect();
    ids.sort_unstable();
    if ids.len() > MAX_USERS {
        tracing::warn!(root = %root.display(), "more than {MAX_USERS} users; the rest not looked at");
        ids.truncate(MAX_USERS);
    }
    let mut out = Vec::new();
    for id in ids {
        let Ok(dir) = open_dir_beneath(&users_fd, Path::new(&id.to_string())) else { continue };
        let parse = |b: &[u8]| android::read_package_restrictions(b).map_err(|e| e.to_string());
        let states = read_with_backup(&dir, "package-restrictions.xml", "package-restrictions-backup.xml", parse)
            .map_err(|e| std::io::Error::other(format!("user {id}: {e}")))?
            .unwrap_or_default();
        out.push((id, states));
    }
    if out.is_empty() {
        out.push((0, BTreeMap::new()));
    }
    Ok(out)
}

/// Reads the package database: packages.xml, or its backup when the main file does not parse.
pub fn read_db(root: &Path) -> std::io::Result<android::PackageDb> {
    let dir = system_dir(root);
    let read = |name: &str| -> std::io::Result<android::PackageDb> {
        let file = std::fs::File::open(dir.join(name))?;
        let bytes = android::read_xml_file(&file)?;
        android::read_packages(&bytes).map_err(|e| std::io::Error::other(format!("{name}: {e}")))
    };
    match read("packages.xml") {
        Ok(db) => Ok(db),
        Err(e) if dir.join("packages-backup.xml").exists() => {
            tracing::warn!(root = %root.display(), error = %e, "packages.xml not readable; reading packages-backup.xml");
            read("packages-backup.xml")
        }
        Err(e) => Err(e),
    }
}

/// The generic package record of an Android package.
pub fn to_package(p: &android::InstalledPackage) -> InstalledPackage {
    let protected = android::is_protected(p);
    let why = if p.is_system() {
        "a system app"
    } else if p.is_privileged() {
        "a privileged app"
    } else {
        "an update of a system app (it can only be rolled back)"
    };
    let signers = p.signers_hex();
    InstalledPackage {
        package: Package {
            name: p.name.clone(),
            version: p.version.map(|v| v.to_string()).unwrap_or_default(),
            architecture: String::new(),
            maintainer: p.installer.clone(),
            essential: protected,
            priority: protected.then(|| why.to_owned()),
            installed: true,
            signer: (!signers.is_empty()).then(|| signers.join(&SIGNER_SEP.to_string())),
            owner: None,
        },
        files: if p.code_path.is_empty() { Vec::new() } else { vec![p.code_path.clone()] },
    }
}

impl PackageManager for Android {
    fn kind(&self) -> Kind {
        Kind::Android
    }
    fn removed_by(&self) -> &'static str {
        "cmd package uninstall --user all"
    }
    fn has_database(&self, root: &Path) -> bool {
        system_dir(root).join("packages.xml").exists()
    }
    fn db_dir(&self, root: &Path) -> PathBuf {
        system_dir(root)
    }
    fn watch_dirs(&self, root: &Path) -> Vec<PathBuf> {
        vec![system_dir(root), app_dir(root)]
    }
    fn transient_watch_dirs(&self, root: &Path) -> Vec<PathBuf> {
        staging_dirs(root).into_iter().map(|(_, d)| d).collect()
    }
    fn is_db_change(&self, root: &Path, path: &Path) -> bool {
        let Some(parent) = path.parent() else { return false };
        let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        // The rename of the new file into place (or the backup appearing/going) ends a write.
        (parent == system_dir(root) && (name == "packages.xml" || name == "packages-backup.xml"))
            // A staging directory appearing, or an APK written in one.
            || (parent == app_dir(root) && android::staging_session(&name).is_some())
            || (parent.parent() == Some(app_dir(root).as_path())
                && parent.file_name().and_then(|n| n.to_str()).and_then(android::staging_session).is_some()
                && name.ends_with(".apk"))
    }
    fn installed(&self, root: &Path) -> std::io::Result<Vec<InstalledPackage>> {
        let db = read_db(root)?;
        for w in &db.warnings {
            tracing::warn!(root = %root.display(), "packages.xml: {w}");
        }
        let mut out: Vec<InstalledPackage> = db.packages.values().map(to_package).collect();
        out.extend(staged(root));
        Ok(out)
    }
    fn protected(&self, p: &Package) -> Option<String> {
        p.essential.then(|| format!("{} is {}", p.name, p.priority.as_deref().unwrap_or("a system app")))
    }
    fn remove(&self, root: &Path, p: &Package, dry_run: bool) -> Result<Removal, String> {
        if let Some(id) = session_of(p) {
            // A staged install: abandon the session before it commits.
            if !app_dir(root).join(format!("vmdl{id}.tmp")).is_dir() {
                return Err(format!("install session {id} is gone"));
            }
            if dry_run {
                return Ok(Removal::Purged);
            }
            return run_cmd(&android::cmd::install_abandon(id));
        }
        if let Some(why) = self.protected(p) {
            return Ok(Removal::Protected(why));
        }
        // Judge what is installed now, not what was read when the verdict was made.
        let db = read_db(root).map_err(|e| format!("reading packages.xml: {e}"))?;
        let Some(now) = db.packages.get(&p.name) else {
            return Err(format!("{} is not installed", p.name));
        };
        if android::is_protected(now) {
            return Ok(Removal::Protected(format!("{} is now a system, privileged or updated-system app", p.name)));
        }
        if dry_run {
            return Ok(Removal::Purged);
        }
        run_cmd(&android::cmd::uninstall(&p.name))
    }
    fn suspends(&self) -> bool {
        true
    }
    fn suspend(
        &self,
        root: &Path,
        p: &Package,
        rule: &str,
        intent: &mut dyn FnMut(&[u32]) -> Result<(), String>,
    ) -> Result<Suspension, String> {
        let message = suspend_message(rule);
        if session_of(p).is_some() {
            return Err(format!("{} is an install in flight, not an installed app", p.name));
        }
        if let Some(why) = self.protected(p) {
            return Ok(Suspension::Protected(why));
        }
        // Judge what is installed now, for whom, and who suspended it already.
        let db = read_db(root).map_err(|e| format!("reading packages.xml: {e}"))?;
        let Some(now) = db.packages.get(&p.name) else {
            return Err(format!("{} is not installed", p.name));
        };
        if android::is_protected(now) {
            return Ok(Suspension::Protected(format!("{} is now a system, privileged or updated-system app", p.name)));
        }
        let users = user_states(root).map_err(|e| format!("reading package-restrictions.xml: {e}"))?;
        let (mut todo, mut already) = (Vec::new(), Vec::new());
        for (user, states) in &users {
            let st = states.get(&p.name).cloned().unwrap_or_default();
            if !st.installed {
                continue;
            }
            if st.suspended_by(ROOT_SUSPENDER) {
                already.push(*user);
            } else {
                todo.push(*user);
            }
        }
        if todo.is_empty() && already.is_empty() {
            return Ok(Suspension::NotInstalled);
        }
        if todo.is_empty() {
            return Ok(Suspension::Suspended { users: Vec::new(), already, failed: Vec::new() });
        }
        // The intent is durable before the first command runs.
        intent(&todo)?;
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for user in todo {
            match Self::suspend_one(&p.name, user, &message) {
                Ok(()) => done.push(user),
                Err((unknown, why)) => {
                    tracing::warn!(package = %p.name, user, error = %why, "cmd package suspend failed");
                    if unknown {
                        // Timed out: it may have taken effect; restore undoes it either way.
                        done.push(user);
                    }
                    failed.push((user, why));
                }
            }
        }
        Ok(Suspension::Suspended { users: done, already, failed })
    }
    fn unsuspend(&self, root: &Path, package: &str, users: &[u32]) -> Result<(), String> {
        // A user who no longer has the app (or a package gone entirely) needs nothing undone.
        let db = read_db(root).map_err(|e| format!("reading packages.xml: {e}"))?;
        if !db.packages.contains_key(package) {
            return Ok(());
        }
        let states: BTreeMap<u32, BTreeMap<String, UserPackageState>> =
            user_states(root).map_err(|e| format!("reading package-restrictions.xml: {e}"))?.into_iter().collect();
        let mut errors = Vec::new();
        for &user in users {
            let Some(st) = states.get(&user) else { continue };
            if !st.get(package).cloned().unwrap_or_default().installed {
                continue;
            }
            let argv = android::cmd::unsuspend(package, user);
            match cmd(&argv) {
                Ok(out) if out.status.success() && suspended_state(&out, package).is_some() => {
                    if suspended_state(&out, package) == Some(true) {
                        tracing::info!(package, user, "unsuspended by the agent; another package still suspends it");
                    }
                }
                Ok(out) => errors.push(failure(&argv, &out)),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
    fn app(&self, root: &Path, p: &InstalledPackage) -> App {
        // A staged install's name is `<package>@vmdl<ID>`: its app is the package's.
        let name = p.package.name.split('@').next().unwrap_or_default().to_owned();
        let mut a = App::new(Kind::Android, name.clone());
        a.name = Some(name);
        a.version = Some(p.package.version.clone()).filter(|v| !v.is_empty());
        a.signers = p.package.signer.iter().flat_map(|s| s.split(SIGNER_SEP)).map(str::to_owned).collect();
        a.paths = p.files.iter().map(|f| root.join(f.trim_start_matches('/')).display().to_string()).collect();
        a.scope = Scope::System;
        a
    }
}

/// What a `cmd` run gave.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program ARGV…` with a deadline: stdin closed, stdout and stderr kept up to
/// `CMD_OUTPUT_MAX` bytes each, in its own process group. Past `timeout` the whole group is
/// killed (SIGKILL) and the call fails naming the timeout; when it exits, whatever it started and
/// left behind in its group is killed too, so nothing it started outlives it or holds its pipes.
/// The group is signalled only while its leader is unreaped (a zombie at worst), so its id cannot
/// have been reused by another process. Runs on the package worker, never on the loop.
pub fn run_bounded(program: &OsStr, argv: &[String], timeout: Duration) -> Result<CmdOutput, String> {
    let shown = format!("{} {}", program.to_string_lossy(), argv.join(" "));
    let mut c = Command::new(program);
    c.args(argv);
    run_command_bounded(c, &shown, timeout)
}

/// [`run_bounded`] for a command already set up (its environment, user, directory), shown in
/// errors as `shown`.
pub fn run_command_bounded(mut c: Command, shown: &str, timeout: Duration) -> Result<CmdOutput, String> {
    use std::os::unix::process::CommandExt as _;
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("running {shown}: {e}"))?;
    let pid = rustix::process::Pid::from_raw(child.id() as i32).ok_or_else(|| format!("running {shown}: no pid"))?;
    let (tx, rx) = std::sync::mpsc::channel::<(bool, Vec<u8>)>();
    let pipes: [(bool, Option<Box<dyn std::io::Read + Send>>); 2] = [
        (true, child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>)),
        (false, child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>)),
    ];
    for (is_out, pipe) in pipes {
        let Some(pipe) = pipe else { continue };
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.take(CMD_OUTPUT_MAX).read_to_end(&mut buf);
            let _ = tx.send((is_out, buf));
        });
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let exited = loop {
        // WNOWAIT: learn that it exited without reaping it (its pid stays reserved).
        let opts = rustix::process::WaitIdOptions::EXITED
            | rustix::process::WaitIdOptions::NOHANG
            | rustix::process::WaitIdOptions::NOWAIT;
        match rustix::process::waitid(rustix::process::WaitId::Pid(pid), opts) {
            Ok(Some(_)) => break true,
            Ok(None) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("waiting for {shown}: {e}"));
            }
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(nap.min(deadline.saturating_duration_since(Instant::now())));
        nap = (nap * 2).min(Duration::from_millis(50));
    };
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    let status = child.wait().map_err(|e| format!("waiting for {shown}: {e}"))?;
    if !exited {
        return Err(format!("{shown} did not finish within {} s; killed", timeout.as_secs_f32()));
    }
    // Every writer is gone (the group was killed), unless something left the group: give the
    // readers a moment, then go on with what they have.
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let grace = Instant::now() + Duration::from_secs(1);
    while let Ok((is_out, buf)) = rx.recv_timeout(grace.saturating_duration_since(Instant::now())) {
        if is_out {
            stdout = buf;
        } else {
            stderr = buf;
        }
    }
    Ok(CmdOutput {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Runs `cmd ARGV…` (`cmd` from `PATH`) within [`CMD_TIMEOUT`].
fn cmd(argv: &[String]) -> Result<CmdOutput, String> {
    run_bounded(OsStr::new("cmd"), argv, CMD_TIMEOUT)
}

fn failure(argv: &[String], out: &CmdOutput) -> String {
    format!("cmd {} failed ({}): {} {}", argv.join(" "), out.status, out.stdout.trim(), out.stderr.trim())
}

/// Runs `cmd ARGV…` for an uninstall or an abandon: `runUninstall` and `install-abandon` print
/// `Success` (or `Failure [reason]`) and exit 0 (or 1).
fn run_cmd(argv: &[String]) -> Result<Removal, String> {
    let out = cmd(argv)?;
    if out.status.success() && out.stdout.lines().any(|l| l.trim() == "Success") {
        Ok(Removal::Purged)
    } else {
        Err(failure(argv, &out))
    }
}

/// The suspended state `runSuspend` prints after a `suspend`/`unsuspend` (exit 0): `Package
/// PKG new suspended state: true|false`. `None`: no such line (an error: it printed the
/// exception and exited 1).
fn suspended_state(out: &CmdOutput, package: &str) -> Option<bool> {
    let prefix = format!("Package {package} new suspended state: ");
    out.stdout.lines().find_map(|l| match l.trim().strip_prefix(&prefix)? {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    })
}

impl Android {
    /// Suspends `package` for `user`. `Err((unknown, why))`: failed; `unknown` when the command
    /// did not finish (timed out or could not be waited for), so it may have taken effect.
    fn suspend_one(package: &str, user: u32, message: &str) -> Result<(), (bool, String)> {
        let argv = android::cmd::suspend(package, user, message);
        let out = cmd(&argv).map_err(|e| (true, e))?;
        match suspended_state(&out, package) {
            Some(true) if out.status.success() => Ok(()),
            _ => Err((false, failure(&argv, &out))),
        }
    }
}

/// The message a suspended app shows when its user tries to open it.
pub fn suspend_message(rule: &str) -> String {
    format!("Blocked by your organisation (embargo rule {rule})")
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<?xml version='1.0' encoding='utf-8' standalone='yes' ?>
<packages>
<package name="com.android.settings" codePath="/system/priv-app/Settings" version="34" flags="1" privateFlags="8" />
<package name="org.example.maps" codePath="/data/app/~~a==/org.example.maps-b==" version="7" flags="0" />
</packages>
"#;

    #[test]
    fn reads_protects_and_refuses_to_remove_system_apps() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data/system")).unwrap();
        std::fs::write(dir.path().join("data/system/packages.xml"), XML).unwrap();
        assert!(Android.has_database(dir.path()));
        assert!(Android.is_db_change(dir.path(), &dir.path().join("data/system/packages.xml")));
        assert!(!Android.is_db_change(dir.path(), &dir.path().join("data/system/packages.list")));
        // A staging directory appearing and an APK written in one; not other files there.
        assert!(Android.is_db_change(dir.path(), &dir.path().join("data/app/vmdl42.tmp")));
        assert!(Android.is_db_change(dir.path(), &dir.path().join("data/app/vmdl42.tmp/base.apk")));
        assert!(!Android.is_db_change(dir.path(), &dir.path().join("data/app/vmdl42.tmp/base.apk.part")));
        assert!(!Android.is_db_change(dir.path(), &dir.path().join("data/app/other/base.apk")));
        let got = Android.installed(dir.path()).unwrap();
        assert_eq!(got.len(), 2);
        let settings = got.iter().find(|p| p.package.name == "com.android.settings").unwrap();
        let maps = got.iter().find(|p| p.package.name == "org.example.maps").unwrap();
        assert!(Android.protected(&settings.package).is_some());
        assert_eq!(Android.protected(&maps.package), None);
        assert_eq!(
            Android.remove(dir.path(), &settings.package, true),
            Ok(Removal::Protected("com.android.settings is a system app".into()))
        );
        // Dry run: installed and not protected, so it would be removed.
        assert_eq!(Android.remove(dir.path(), &maps.package, true), Ok(Removal::Purged));
        let gone = Package::new("org.example.gone", "1");
        assert!(Android.remove(dir.path(), &gone, true).unwrap_err().contains("not installed"));
        let app = Android.app(dir.path(), maps);
        assert_eq!((app.id.as_str(), app.version.as_deref()), ("org.example.maps", Some("7")));
        assert_eq!(app.paths, [dir.path().join("data/app/~~a==/org.example.maps-b==").display().to_string()]);
    }

    #[test]
    fn a_damaged_packages_xml_falls_back_to_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("data/system");
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::write(sys.join("packages.xml"), b"ABX\0\x01").unwrap();
        assert!(read_db(dir.path()).is_err(), "a truncated ABX file is refused");
        std::fs::write(sys.join("packages-backup.xml"), XML).unwrap();
        assert_eq!(read_db(dir.path()).unwrap().packages.len(), 2);
    }

    fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether process `pid` is gone (or a zombie nobody reaped yet: it runs nothing).
    fn gone(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
    }

    #[test]
    fn a_hung_cmd_is_killed_with_what_it_started_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg");
        // It starts a background process, then hangs.
        let script = format!("sleep 600 & echo $! > '{}'; echo started; sleep 600", pidfile.display());
        let t = Instant::now();
        let r = run_bounded(OsStr::new("sh"), &["-c".into(), script], Duration::from_millis(300));
        let e = r.unwrap_err();
        assert!(e.contains("did not finish within 0.3 s; killed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5), "returned after {:?}", t.elapsed());
        let bg = std::fs::read_to_string(&pidfile).unwrap();
        eventually("the background process to be killed", || gone(bg.trim()));
    }

    #[test]
    fn a_cmd_that_exits_returns_its_output_and_leaves_nothing_running() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg");
        // It exits at once, leaving a background process holding its stdout open.
        let script = format!("sleep 600 & echo $! > '{}'; echo Success; echo oops >&2; exit 3", pidfile.display());
        let out = run_bounded(OsStr::new("sh"), &["-c".into(), script], Duration::from_secs(20)).unwrap();
        assert_eq!((out.stdout.as_str(), out.stderr.as_str(), out.status.code()), ("Success\n", "oops\n", Some(3)));
        let bg = std::fs::read_to_string(&pidfile).unwrap();
        eventually("the background process to be killed", || gone(bg.trim()));
        // A program that is not there is an error naming it.
        let e = run_bounded(OsStr::new("/nonexistent/cmd"), &[], Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("/nonexistent/cmd"), "{e}");
    }

    #[test]
    fn suspended_state_is_read_from_run_suspend_output() {
        let ok = |stdout: &str| CmdOutput {
            status: std::os::unix::process::ExitStatusExt::from_raw(0),
            stdout: stdout.into(),
            stderr: String::new(),
        };
        assert_eq!(
            suspended_state(&ok("Package com.tencent.mm new suspended state: true\n"), "com.tencent.mm"),
            Some(true)
        );
        assert_eq!(
            suspended_state(&ok("Package com.tencent.mm new suspended state: false\n"), "com.tencent.mm"),
            Some(false)
        );
        assert_eq!(suspended_state(&ok("Package com.tencent.mmx new suspended state: true\n"), "com.tencent.mm"), None);
        assert_eq!(
            suspended_state(&ok("java.lang.IllegalArgumentException: Unknown package\n"), "com.tencent.mm"),
            None
        );
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/android/generated").join(name)
    }

    #[test]
    fn per_user_state_from_each_users_package_restrictions() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("data/system/users");
        // No users directory: user 0 alone, every package installed.
        std::fs::create_dir_all(dir.path().join("data/system")).unwrap();
        assert_eq!(user_states(dir.path()).unwrap(), vec![(0, BTreeMap::new())]);
        for u in ["0", "10", "11", "not-a-user"] {
            std::fs::create_dir_all(users.join(u)).unwrap();
        }
        // User 0: ABX written by AOSP's serializer; user 10: text; user 11: none (defaults).
        std::fs::copy(fixture("package-restrictions-0.xml.abx"), users.join("0/package-restrictions.xml")).unwrap();
        std::fs::write(
            users.join("10/package-restrictions.xml"),
            "<package-restrictions><pkg name=\"com.tencent.mm\" inst=\"false\" /></package-restrictions>",
        )
        .unwrap();
        std::fs::write(users.join("userlist.xml"), "<users/>").unwrap();
        // A user directory that is a symlink to elsewhere is not followed.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("package-restrictions.xml"), "<bad").unwrap();
        std::os::unix::fs::symlink(&elsewhere, users.join("12")).unwrap();
        let got = user_states(dir.path()).unwrap();
        assert_eq!(got.iter().map(|(u, _)| *u).collect::<Vec<_>>(), [0, 10, 11]);
        let mm0 = &got[0].1["com.tencent.mm"];
        assert!(mm0.installed && mm0.suspended_by(ROOT_SUSPENDER));
        assert!(!got[1].1["com.tencent.mm"].installed);
        assert!(got[2].1.is_empty());
        // A damaged file is an error naming the user, unless its backup reads.
        std::fs::write(users.join("10/package-restrictions.xml"), b"ABX\0\x01").unwrap();
        let e = user_states(dir.path()).unwrap_err().to_string();
        assert!(e.contains("user 10") && e.contains("package-restrictions.xml"), "{e}");
        std::fs::write(users.join("10/package-restrictions-backup.xml"), "<package-restrictions/>").unwrap();
        assert!(user_states(dir.path()).unwrap()[1].1.is_empty());
    }

    #[test]
    fn staging_directories_are_opened_beneath_the_root_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("device");
        std::fs::create_dir_all(root.join("data/app/vmdl7.tmp")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside/vmdl8.tmp")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside/vmdl8.tmp"), root.join("data/app/vmdl8.tmp")).unwrap();
        assert_eq!(staging_dirs(&root), vec![(7, root.join("data/app/vmdl7.tmp"))]);
        // `data/app` itself swapped for a symlink: nothing is listed through it.
        std::fs::rename(root.join("data/app"), dir.path().join("app-real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("app-real"), root.join("data/app")).unwrap();
        assert!(staging_dirs(&root).is_empty());
        assert!(staged(&root).is_empty());
    }
}
