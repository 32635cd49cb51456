//! Flatpak: apps deployed in an installation (system `/var/lib/flatpak` or per-user
//! `~/.local/share/flatpak`), and removal through the real `flatpak uninstall`.
//!
//! Reading needs no flatpak process: an installed app is `<inst>/app/<id>/<arch>/<branch>/active`,
//! and its origin is the remote whose ref `repo/refs/remotes/<origin>/app/<id>/<arch>/<branch>`
//! the installation's ostree repository holds. flatpak touches `<inst>/.changed` after every
//! install or uninstall; the daemon watches that. Removal runs `flatpak uninstall` for exactly
//! that installation (`--system`, or `--user` with `FLATPAK_USER_DIR`); apps have no dependents.

use std::path::Path;
use std::process::Command;

use crate::dpkg::{Package, Removal};

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
pub fn installed(inst: &Path) -> std::io::Result<Vec<(Package, Vec<String>)>> {
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
                let p = Package {
                    name: id.clone(),
                    version: branch.clone(),
                    architecture: arch.clone(),
                    maintainer: origin,
                    essential: false,
                    priority: None,
                    installed: true,
                    signer: None,
                };
                // Paths are shown relative to the installation (which is the root here).
                out.push((p, vec![format!("app/{id}/{arch}/{branch}/active")]));
            }
        }
    }
    Ok(out)
}

/// Uninstalls `p` from installation `inst` with the real flatpak.
pub fn uninstall(inst: &Path, p: &Package) -> Result<Removal, String> {
    if let Some(why) = p.protected() {
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
