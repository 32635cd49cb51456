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

use std::path::{Path, PathBuf};
use std::process::Command;

use embargo_policy::app::{App, Kind, Scope};

use super::package::{InstalledPackage, Package, PackageManager, Removal};
use crate::android;

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

/// Marks a staged install (in [`Package::architecture`]): `install-session <ID>`. Its
/// [`Package::name`] is `<package>@vmdl<ID>` (`@` is never in a package name), so a staged
/// update never collides with the installed package of the same name.
const SESSION: &str = "install-session ";

/// The staging directories `<root>/data/app/vmdl<ID>.tmp` there now, with their session ids.
fn staging_dirs(root: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(app_dir(root)) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(android::staging_session) else { continue };
        // Not following a symlink: only a real directory is a session.
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push((id, e.path()));
        }
        if out.len() == MAX_SESSIONS {
            tracing::warn!(root = %root.display(), "more than {MAX_SESSIONS} install sessions staged; the rest not looked at");
            break;
        }
    }
    out
}

/// The APKs staged in install sessions that already identify (a half-written APK does not yet;
/// its close-write brings another read).
fn staged(root: &Path) -> Vec<InstalledPackage> {
    let mut out = Vec::new();
    for (id, dir) in staging_dirs(root) {
        let Ok(fd) = crate::safefs::open_root(&dir) else { continue };
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".apk")).take(MAX_SESSION_APKS) {
            let Ok((file, meta)) = crate::safefs::open_file_beneath(&fd, Path::new(&e.file_name())) else { continue };
            if !meta.is_file {
                continue;
            }
            match android::identify_apk(&file) {
                Ok(apk) => {
                    let rel = format!("/{}", dir.join(e.file_name()).strip_prefix(root).unwrap_or(&dir).display());
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

/// Runs `cmd ARGV…`. `runUninstall` and `install-abandon` print `Success` (or `Failure
/// [reason]`) and exit 0 (or 1).
fn run_cmd(argv: &[String]) -> Result<Removal, String> {
    let out = Command::new("cmd").args(argv).output().map_err(|e| format!("running cmd: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.lines().any(|l| l.trim() == "Success") {
        Ok(Removal::Purged)
    } else {
        Err(format!(
            "cmd {} failed ({}): {} {}",
            argv.join(" "),
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
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
}
