//! Snaps: what is installed under a root (`<root>/snap/<name>/current/meta/snap.yaml`, and the
//! `.snap` files in `<root>/var/lib/snapd/snaps`), and removal through `snap remove`.
//!
//! snap.yaml is read for its top-level scalar keys only (`name`, `version`, `summary`) — enough
//! for identity, without a YAML dependency. The publisher is not in snap.yaml; snapd's assertions
//! are not read yet, so snap rules match on name (a weak match). snapd cannot run on this
//! project's machines: removal is tested against a stand-in `snap` command, and the test says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use embargo_policy::app::Kind;

use super::package::{always_protected, InstalledPackage, Package, PackageManager, Removal};

/// snapd: snaps under a root (removal only meaningful for `/`, where snapd lives).
pub struct Snap;

impl PackageManager for Snap {
    fn kind(&self) -> Kind {
        Kind::Snap
    }
    fn removed_by(&self) -> &'static str {
        "snap remove"
    }
    fn has_database(&self, root: &Path) -> bool {
        root.join("snap").is_dir()
    }
    fn db_dir(&self, root: &Path) -> PathBuf {
        root.join("snap")
    }
    fn watch_dirs(&self, root: &Path) -> Vec<PathBuf> {
        vec![root.join("snap"), root.join("var/lib/snapd/snaps")]
    }
    fn is_db_change(&self, root: &Path, path: &Path) -> bool {
        path.parent() == Some(root.join("snap").as_path())
            || path.parent() == Some(root.join("var/lib/snapd/snaps").as_path())
    }
    fn installed(&self, root: &Path) -> std::io::Result<Vec<InstalledPackage>> {
        installed(root)
    }
    fn protected(&self, p: &Package) -> Option<String> {
        protected(p)
    }
    fn remove(&self, _root: &Path, p: &Package, dry_run: bool) -> Result<Removal, String> {
        if dry_run {
            // snapd has no dry run; a snap's removal takes no other snap with it.
            return Ok(protected(p).map_or(Removal::Purged, Removal::Protected));
        }
        remove(p)
    }
}

/// snapd's notion of a package that must stay: the bases and snapd itself.
pub fn protected(p: &Package) -> Option<String> {
    if matches!(p.name.as_str(), "core" | "core18" | "core20" | "core22" | "core24" | "snapd" | "bare") {
        return Some(format!("{} is a base or snapd itself", p.name));
    }
    always_protected(p)
}

/// Top-level `key: value` scalars of a snap.yaml.
pub fn yaml_scalars(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with([' ', '\t', '#', '-']))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches(['\'', '"']).to_owned()))
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .collect()
}

/// Installed snaps under `root`.
pub fn installed(root: &Path) -> std::io::Result<Vec<InstalledPackage>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root.join("snap")).into_iter().flatten().flatten() {
        let dir_name = e.file_name().to_string_lossy().into_owned();
        if dir_name == "bin" || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let meta = e.path().join("current/meta/snap.yaml");
        let Ok(text) = std::fs::read_to_string(&meta) else { continue };
        let fields = yaml_scalars(&text);
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
        let Some(name) = get("name") else {
            tracing::warn!(path = %meta.display(), "snap.yaml without a name; skipped");
            continue;
        };
        let p = Package::new(name.clone(), get("version").unwrap_or_default());
        out.push(InstalledPackage { package: p, files: vec![format!("snap/{dir_name}/current")] });
    }
    Ok(out)
}

/// `snap remove --purge <name>` (only meaningful for the root `/`, where snapd lives).
pub fn remove(p: &Package) -> Result<Removal, String> {
    if let Some(why) = protected(p) {
        return Ok(Removal::Protected(why));
    }
    let out =
        Command::new("snap").args(["remove", "--purge", &p.name]).output().map_err(|e| format!("running snap: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("has \"install-snap\" change in progress") || err.contains("change in progress") {
            return Ok(Removal::Busy);
        }
        return Err(format!("snap remove {}: {}", p.name, err.trim()));
    }
    Ok(Removal::Purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_format_snap_yaml() {
        // The shape snapd writes (from a real snap, fields trimmed).
        let text = "name: wechat-unofficial\nversion: '3.9.2'\nsummary: WeChat client\ndescription: |\n  name: not-this\n  multi-line\narchitectures:\n  - amd64\nconfinement: strict\napps:\n  wechat:\n    command: bin/wechat\n";
        let f = yaml_scalars(text);
        assert!(f.contains(&("name".into(), "wechat-unofficial".into())));
        assert!(f.contains(&("version".into(), "3.9.2".into())));
        assert!(!f.iter().any(|(_, v)| v == "not-this"));
    }
}
