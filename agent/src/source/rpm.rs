//! RPM packages: what rpm has installed under a root, and removal through rpm itself.
//!
//! Reading goes through the real `rpm --root R -qa` (the rpmdb format — sqlite, ndb or bdb — is
//! rpm's business): name, epoch:version-release, vendor, the signing key id, files. The database
//! directory (`var/lib/rpm` or `usr/lib/sysimage/rpm`) is watched; rpm writes it when a
//! transaction commits.
//! Removal: rpm's transaction lock (`.rpm.lock`, a POSIX record lock) is taken without waiting
//! (busy = a transaction is running); `rpm -e --test` shows whether other packages need it; only
//! then `rpm -e`. `dnf` is not used even where present: `rpm -e` removes exactly one package.

use std::path::{Path, PathBuf};
use std::process::Command;

use embargo_policy::app::Kind;

use super::package::{
    always_protected, executables_of, try_lock_file, FrontendLock, InstalledPackage, Package, PackageManager, Removal,
};

/// rpm: the `rpm` package manager.
pub struct Rpm;

impl PackageManager for Rpm {
    fn kind(&self) -> Kind {
        Kind::Rpm
    }
    fn removed_by(&self) -> &'static str {
        "rpm -e"
    }
    fn has_database(&self, root: &Path) -> bool {
        dbpath(root).is_some()
    }
    fn db_dir(&self, root: &Path) -> PathBuf {
        dbpath(root).unwrap_or_else(|| root.join("var/lib/rpm"))
    }
    fn is_db_change(&self, root: &Path, path: &Path) -> bool {
        let admin = self.db_dir(root);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        path.parent() == Some(admin.as_path())
            && matches!(name, "rpmdb.sqlite" | "Packages" | "Packages.db" | "Index.db" | "rpmdb.sqlite-wal")
    }
    fn installed(&self, root: &Path) -> std::io::Result<Vec<InstalledPackage>> {
        installed(root)
    }
    fn protected(&self, p: &Package) -> Option<String> {
        protected(p)
    }
    fn remove(&self, root: &Path, p: &Package, dry_run: bool) -> Result<Removal, String> {
        erase(root, p, dry_run)
    }
}

/// rpm's notion of a package that must stay: the package managers and the agent, and what
/// every rpm system needs to boot (rpm has no Essential flag; these are the packages dnf's
/// `protected_packages` and the base install keep).
pub fn protected(p: &Package) -> Option<String> {
    const BASE: &[&str] = &["filesystem", "setup", "kernel", "kernel-core", "systemd-udev", "shadow-utils"];
    if BASE.contains(&p.name.as_str()) {
        return Some(format!("{} is part of the base system", p.name));
    }
    always_protected(p)
}

/// The rpmdb directory under `root`, if there is one.
pub fn dbpath(root: &Path) -> Option<PathBuf> {
    ["var/lib/rpm", "usr/lib/sysimage/rpm"].iter().map(|d| root.join(d)).find(|d| d.is_dir())
}

/// `rpm` for `root`, always with the database path found there (rpm's compiled-in default
/// differs between distributions; Debian's is `~/.rpmdb`).
fn rpm(root: &Path) -> Command {
    let mut c = Command::new("rpm");
    if root != Path::new("/") {
        c.arg(format!("--root={}", root.display()));
    }
    if let Some(db) = dbpath(root).and_then(|d| d.strip_prefix(root).ok().map(Path::to_path_buf)) {
        c.arg(format!("--dbpath=/{}", db.display()));
    }
    c
}

const SEP: &str = "@@embargo@@";

/// Installed packages (with their files) under `root`.
pub fn installed(root: &Path) -> std::io::Result<Vec<InstalledPackage>> {
    let qf = format!("{SEP}%{{NAME}}\\t%{{EPOCHNUM}}:%{{VERSION}}-%{{RELEASE}}\\t%{{ARCH}}\\t%{{VENDOR}}\\t%{{RSAHEADER:pgpsig}}\\n[%{{FILENAMES}}\\n]");
    let out = rpm(root).args(["-qa", "--qf", &qf]).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("rpm -qa: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut pkgs = Vec::new();
    for block in text.split(SEP).filter(|b| !b.trim().is_empty()) {
        let mut lines = block.lines();
        let head: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
        let [name, evr, arch, vendor, sig] = head[..] else { continue };
        let version = evr.strip_prefix("0:").unwrap_or(evr).to_owned();
        let signer = sig.rsplit("Key ID ").next().filter(|_| sig.contains("Key ID ")).map(|k| k.trim().to_owned());
        let p = Package {
            name: name.to_owned(),
            version,
            architecture: arch.to_owned(),
            maintainer: (vendor != "(none)" && !vendor.is_empty()).then(|| vendor.to_owned()),
            essential: false,
            priority: None,
            installed: true,
            signer,
            owner: None,
        };
        let files = executables_of(lines.filter(|l| !l.is_empty() && *l != "(contains no files)").map(str::to_owned));
        pkgs.push(InstalledPackage { package: p, files });
    }
    Ok(pkgs)
}

/// Takes rpm's transaction lock without waiting. `Ok(None)`: a transaction holds it.
pub fn try_lock(root: &Path) -> std::io::Result<Option<FrontendLock>> {
    let Some(db) = dbpath(root) else { return Err(std::io::Error::other("no rpmdb")) };
    try_lock_file(&db.join(".rpm.lock"), 0o644)
}

/// Erases `p` through rpm, if and only if no other installed package needs it (`dry_run`: only
/// `rpm -e --test`).
pub fn erase(root: &Path, p: &Package, dry_run: bool) -> Result<Removal, String> {
    if let Some(why) = protected(p) {
        return Ok(Removal::Protected(why));
    }
    // Check the lock, then release it: rpm takes it itself for the erase (it has no frontend
    // protocol); a transaction starting in between makes rpm fail with a lock message, retried.
    match try_lock(root).map_err(|e| format!("rpm lock under {}: {e}", root.display()))? {
        None => return Ok(Removal::Busy),
        Some(lock) => drop(lock),
    }
    let test = rpm(root).args(["-e", "--test", &p.name]).output().map_err(|e| format!("running rpm: {e}"))?;
    let said = format!("{}{}", String::from_utf8_lossy(&test.stdout), String::from_utf8_lossy(&test.stderr));
    if !test.status.success() {
        if said.contains("Failed dependencies") || said.contains("is needed by") {
            return Ok(Removal::NeedsAdmin(
                said.lines().filter(|l| l.contains("is needed by")).map(str::trim).collect::<Vec<_>>().join("; "),
            ));
        }
        if said.contains("lock") {
            return Ok(Removal::Busy);
        }
        return Err(format!("rpm -e --test {}: {}", p.name, said.trim()));
    }
    if dry_run {
        return Ok(Removal::Purged);
    }
    let out = rpm(root).args(["-e", &p.name]).output().map_err(|e| format!("running rpm: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("lock") {
            return Ok(Removal::Busy);
        }
        return Err(format!("rpm -e {}: {}", p.name, err.trim()));
    }
    Ok(Removal::Purged)
}
