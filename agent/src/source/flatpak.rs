//! Flatpak: apps deployed in an installation (system `/var/lib/flatpak` or per-user
//! `~/.local/share/flatpak`), and removal through the real `flatpak uninstall`.
//!
//! Reading needs no flatpak process: an installed app is `<inst>/app/<id>/<arch>/<branch>/active`,
//! and its origin is the remote whose ref `repo/refs/remotes/<origin>/app/<id>/<arch>/<branch>`
//! the installation's ostree repository holds. flatpak touches `<inst>/.changed` after every
//! install or uninstall; the daemon watches that. Removal runs `flatpak uninstall` for exactly
//! that installation (`--system`, or `--user` with `FLATPAK_USER_DIR`); apps have no dependents.

use std::path::{Path, PathBuf};
use std::process::Command;

use embargo_policy::app::Kind;

use super::package::{always_protected, InstalledPackage, Package, PackageManager, Removal};

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

fn dirs(p: &Path) -> Vec<String> {
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Installed apps under installation `inst`, with their deployed files' top directory.
pub fn installed(inst: &Path) -> std::io::Result<Vec<InstalledPackage>> {
    if !inst.join("app").is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for id in dirs(&inst.join("app")) {
        for arch in dirs(&inst.join("app").join(&id)) {
            for branch in dirs(&inst.join("app").join(&id).join(&arch)) {
                let active = inst.join("app").join(&id).join(&arch).join(&branch).join("active");
                if !active.exists() {
                    continue;
                }
                let origin = dirs(&inst.join("repo/refs/remotes")).into_iter().find(|r| {
                    inst.join("repo/refs/remotes").join(r).join("app").join(&id).join(&arch).join(&branch).is_file()
                });
                let mut p = Package::new(id.clone(), branch.clone());
                p.architecture = arch.clone();
                p.maintainer = origin;
                // Paths are shown relative to the installation (which is the root here).
                out.push(InstalledPackage { package: p, files: vec![format!("app/{id}/{arch}/{branch}/active")] });
            }
        }
    }
    Ok(out)
}

/// Uninstalls `p` from installation `inst` with the real flatpak.
pub fn uninstall(inst: &Path, p: &Package) -> Result<Removal, String> {
    if let Some(why) = protected(p) {
        return Ok(Removal::Protected(why));
    }
    let mut c = Command::new("flatpak");
    if inst == Path::new(SYSTEM_INSTALLATION) {
        c.arg("--system");
    } else {
        c.arg("--user").env("FLATPAK_USER_DIR", inst);
    }
    let r#ref = format!("app/{}/{}/{}", p.name, p.architecture, p.version);
    let out = c
        .args(["uninstall", "-y", "--noninteractive", &r#ref])
        .output()
        .map_err(|e| format!("running flatpak: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("lock") {
            return Ok(Removal::Busy);
        }
        return Err(format!("flatpak uninstall {}: {}", r#ref, err.trim()));
    }
    Ok(Removal::Purged)
}
