//! Debian packages: what dpkg has installed under a root, and removal through dpkg itself.
//!
//! Reading: `<root>/var/lib/dpkg/status` (dpkg renames a new one into place, so the directory is
//! watched, with its `updates/` journal) and `info/<pkg>[:<arch>].list` for files.
//! Removal: never by deleting files. The agent takes dpkg's frontend lock (as apt does; if
//! another frontend holds it, a transaction is in progress and the agent waits), asks dpkg
//! what the purge would do (`--dry-run`), and purges only if nothing else would be removed
//! or broken; otherwise the package is reported as needing an admin.
//! Essential and required packages, and the package managers, are never touched.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use embargo_policy::app::{App, Scope};
use embargo_policy::rules::Kind;

/// Packages never acted on, whatever a policy says.
pub const PROTECTED: &[&str] = &[
    "dpkg",
    "apt",
    "apt-utils",
    "libapt-pkg6.0",
    "rpm",
    "dnf",
    "yum",
    "flatpak",
    "snapd",
    "libc6",
    "base-files",
    "bash",
    "coreutils",
    "systemd",
    "init",
    "embargo-agent",
];

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub maintainer: Option<String>,
    pub essential: bool,
    pub priority: Option<String>,
    pub installed: bool,
    /// Signing key id (rpm); dpkg records none.
    pub signer: Option<String>,
}

impl Package {
    /// Why this package must never be acted on, if it must not.
    pub fn protected(&self) -> Option<String> {
        if self.essential {
            return Some(format!("{} is Essential", self.name));
        }
        if self.priority.as_deref() == Some("required") {
            return Some(format!("{} has Priority: required", self.name));
        }
        if PROTECTED.contains(&self.name.as_str()) {
            return Some(format!("{} is a package manager or the agent itself", self.name));
        }
        None
    }
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
    app_of(Kind::Deb, root, p, files(root, p))
}

/// The app identity of a package of `kind` whose files (absolute in `root`) are `files`.
pub fn app_of(kind: Kind, root: &Path, p: &Package, files: Vec<String>) -> App {
    let mut a = App::new(kind, p.name.clone());
    a.name = Some(p.name.clone());
    a.version = Some(p.version.clone());
    a.publisher = p.maintainer.clone();
    a.paths = files.into_iter().map(|f| root.join(f.trim_start_matches('/')).display().to_string()).collect();
    a.signers = p.signer.iter().cloned().collect();
    a.scope = Scope::System;
    a
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

/// A package manager's lock (a POSIX record lock), held until dropped.
pub struct FrontendLock(#[allow(dead_code)] OwnedFd);

impl FrontendLock {
    pub fn new(fd: OwnedFd) -> Self {
        Self(fd)
    }
}

/// Takes `<admindir>/lock-frontend` without waiting. `Ok(None)`: another frontend holds it (a
/// transaction is in progress).
pub fn try_lock(root: &Path) -> std::io::Result<Option<FrontendLock>> {
    use rustix::fs::{Mode, OFlags};
    let path = admindir(root).join("lock-frontend");
    let fd = rustix::fs::open(
        &path,
        OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o640),
    )?;
    // dpkg and apt use POSIX record locks (F_SETLK), as rustix's fcntl_lock does: they conflict.
    match rustix::fs::fcntl_lock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(FrontendLock(fd))),
        Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::ACCESS) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What a removal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Purged,
    /// dpkg would have to remove or break other packages: not done.
    NeedsAdmin(String),
    /// Another package-manager transaction holds the lock: try again once it ends.
    Busy,
    Protected(String),
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

/// Purges `p` through dpkg, if and only if that removes nothing else.
pub fn purge(root: &Path, p: &Package) -> Result<Removal, String> {
    if let Some(why) = p.protected() {
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
        assert!(p[0].protected().is_none());
        assert!(p[1].protected().is_some());
        assert!(!p[2].installed);
    }
}
