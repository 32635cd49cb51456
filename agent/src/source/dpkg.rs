//! Debian packages: what dpkg has installed under a root, and removal through dpkg itself.
//!
//! Reading: `<root>/var/lib/dpkg/status` (dpkg renames a new one into place, so the directory is
//! watched, with its `updates/` journal) and `info/<pkg>[:<arch>].list` for files.
//! Removal: never by deleting files. The agent takes dpkg's frontend lock (as apt does; if
//! another frontend holds it, a transaction is in progress and the agent waits), asks dpkg
//! what the purge would do (`--dry-run`), and purges only if nothing else would be removed
//! or broken; otherwise the package is reported as needing an admin.
//! Essential and required packages, and the package managers, are never touched.

use std::path::{Path, PathBuf};
use std::process::Command;

use embargo_policy::app::{App, Kind};

use super::package::{
    always_protected, app_of, executables_of, try_lock_file, FrontendLock, InstalledPackage, Package, PackageManager,
    Removal,
};

/// dpkg: the `deb` package manager.
pub struct Dpkg;

impl PackageManager for Dpkg {
    fn kind(&self) -> Kind {
        Kind::Deb
    }
    fn removed_by(&self) -> &'static str {
        "dpkg --purge"
    }
    fn has_database(&self, root: &Path) -> bool {
        admindir(root).join("status").exists()
    }
    fn db_dir(&self, root: &Path) -> PathBuf {
        admindir(root)
    }
    fn watch_dirs(&self, root: &Path) -> Vec<PathBuf> {
        vec![admindir(root), admindir(root).join("updates")]
    }
    fn is_db_change(&self, root: &Path, path: &Path) -> bool {
        let admin = admindir(root);
        path == admin.join("status") || path.parent() == Some(admin.join("updates").as_path())
    }
    fn installed(&self, root: &Path) -> std::io::Result<Vec<InstalledPackage>> {
        self.installed_since(root, &|_| None)
    }
    fn installed_since(
        &self,
        root: &Path,
        known: &dyn Fn(&Package) -> Option<Vec<String>>,
    ) -> std::io::Result<Vec<InstalledPackage>> {
        Ok(installed(root)?
            .into_iter()
            .map(|p| {
                let files = known(&p).unwrap_or_else(|| executables_of(files(root, &p)));
                InstalledPackage { package: p, files }
            })
            .collect())
    }
    fn protected(&self, p: &Package) -> Option<String> {
        protected(p)
    }
    fn remove(&self, root: &Path, p: &Package, dry_run: bool) -> Result<Removal, String> {
        purge(root, p, dry_run)
    }
}

/// Debian's notion of a package that must stay: Essential, Priority: required, or a package
/// manager / the agent itself.
pub fn protected(p: &Package) -> Option<String> {
    if p.essential {
        return Some(format!("{} is Essential", p.name));
    }
    if p.priority.as_deref() == Some("required") {
        return Some(format!("{} has Priority: required", p.name));
    }
    always_protected(p)
}

/// Parses a dpkg status file. Malformed paragraphs (no Package) are skipped and counted.
pub fn parse_status(text: &str) -> (Vec<Package>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for para in text.split("\n\n") {
        let mut fields: Vec<(&str, String)> = Vec::new();
        for line in para.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some((_, v)) = fields.last_mut() {
                    v.push('\n');
                    v.push_str(line.trim());
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim(), v.trim().to_owned()));
            }
        }
        if fields.is_empty() {
            continue;
        }
        let get = |k: &str| fields.iter().find(|(f, _)| f.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
        let Some(name) = get("Package").filter(|n| !n.is_empty() && n.len() <= 256) else {
            bad += 1;
            continue;
        };
        let status = get("Status").unwrap_or_default();
        out.push(Package {
            name,
            version: get("Version").unwrap_or_default(),
            architecture: get("Architecture").unwrap_or_default(),
            maintainer: get("Maintainer"),
            essential: get("Essential").is_some_and(|v| v == "yes"),
            priority: get("Priority"),
            installed: status.ends_with(" installed"),
            signer: None,
            owner: None,
        });
    }
    (out, bad)
}

pub fn admindir(root: &Path) -> PathBuf {
    root.join("var/lib/dpkg")
}

/// The files a package installed (from `info/<pkg>.list` or `info/<pkg>:<arch>.list`).
pub fn files(root: &Path, p: &Package) -> Vec<String> {
    let info = admindir(root).join("info");
    for name in [format!("{}:{}.list", p.name, p.architecture), format!("{}.list", p.name)] {
        if let Ok(text) = std::fs::read_to_string(info.join(name)) {
            return text.lines().filter(|l| !l.is_empty() && *l != "/.").map(str::to_owned).collect();
        }
    }
    Vec::new()
}

/// The app identity of an installed package.
pub fn to_app(root: &Path, p: &Package) -> App {
    app_of(Kind::Deb, root, p, &files(root, p))
}

/// Reads the installed packages under `root`.
pub fn installed(root: &Path) -> std::io::Result<Vec<Package>> {
    let text = std::fs::read_to_string(admindir(root).join("status"))?;
    let (pkgs, bad) = parse_status(&text);
    if bad > 0 {
        tracing::warn!(root = %root.display(), bad, "dpkg status has paragraphs without a Package field; skipped");
    }
    Ok(pkgs.into_iter().filter(|p| p.installed).collect())
}

/// Takes `<admindir>/lock-frontend` without waiting. `Ok(None)`: another frontend holds it (a
/// transaction is in progress).
pub fn try_lock(root: &Path) -> std::io::Result<Option<FrontendLock>> {
    try_lock_file(&admindir(root).join("lock-frontend"), 0o640)
}

fn dpkg_cmd(root: &Path) -> Command {
    let mut c = Command::new("dpkg");
    if root != Path::new("/") {
        c.arg(format!("--root={}", root.display())).args(["--force-script-chrootless", "--force-not-root"]);
    }
    // We hold the frontend lock ourselves (the apt protocol).
    c.env("DPKG_FRONTEND_LOCKED", "1");
    c
}

/// Purges `p` through dpkg, if and only if that removes nothing else (`dry_run`: only asks).
pub fn purge(root: &Path, p: &Package, dry_run: bool) -> Result<Removal, String> {
    if let Some(why) = protected(p) {
        return Ok(Removal::Protected(why));
    }
    let Some(_lock) = try_lock(root).map_err(|e| format!("dpkg lock under {}: {e}", root.display()))? else {
        return Ok(Removal::Busy);
    };
    let dry =
        dpkg_cmd(root).args(["--dry-run", "--purge", &p.name]).output().map_err(|e| format!("running dpkg: {e}"))?;
    let said = format!("{}{}", String::from_utf8_lossy(&dry.stdout), String::from_utf8_lossy(&dry.stderr));
    if !dry.status.success() {
        if said.contains("dependency problems") || said.contains("depends on") {
            return Ok(Removal::NeedsAdmin(
                said.lines().filter(|l| l.contains("depends on")).collect::<Vec<_>>().join("; "),
            ));
        }
        if said.contains("lock") {
            return Ok(Removal::Busy);
        }
        return Err(format!("dpkg --dry-run --purge {}: {}", p.name, said.trim()));
    }
    if dry_run {
        return Ok(Removal::Purged);
    }
    let out = dpkg_cmd(root).args(["--purge", &p.name]).output().map_err(|e| format!("running dpkg: {e}"))?;
    if !out.status.success() {
        return Err(format!("dpkg --purge {}: {}", p.name, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(Removal::Purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_paragraphs() {
        let text = "Package: wechat\nStatus: install ok installed\nPriority: optional\nMaintainer: Tencent <x@y>\nArchitecture: amd64\nVersion: 4.0.1-1\nDescription: chat\n more text\n\nPackage: dpkg\nEssential: yes\nStatus: install ok installed\nVersion: 1.21\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nVersion: 2\n";
        let (p, bad) = parse_status(text);
        assert_eq!(bad, 1);
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].name.as_str(), p[0].version.as_str(), p[0].installed), ("wechat", "4.0.1-1", true));
        assert_eq!(p[0].maintainer.as_deref(), Some("Tencent <x@y>"));
        assert!(protected(&p[0]).is_none());
        assert!(protected(&p[1]).is_some());
        assert!(!p[2].installed);
    }
}
