//! Exemptions an admin made by restoring a file from quarantine: the restored *content* (its
//! sha256 and size), not the inode, is left alone until the policy changes. A user who
//! overwrites the restored inode with another build gets a different hash, so nothing of the
//! exemption carries over to it.
//!
//! Persisted deliberately in `<state_dir>/exemptions.json` (written atomically, mode 0600), so a
//! restart does not undo an admin's restore; a new policy clears the file (the admin's decision
//! was about the policy in force). A damaged file is moved aside as `exemptions.json.damaged` and
//! the agent starts with no exemptions (the safe side: restored files are judged again).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "exemptions.json";

/// One restored content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exemption {
    pub sha256: String,
    pub size: u64,
    /// Where it was restored to, by which quarantine item and admin (for the record).
    pub path: String,
    pub quarantine_id: String,
    pub uid: u32,
}

#[derive(Debug, Default)]
pub struct Exemptions {
    dir: PathBuf,
    by_sha: BTreeMap<String, Exemption>,
}

impl Exemptions {
    /// Loads `<state_dir>/exemptions.json` (none: empty).
    pub fn load(state_dir: &Path) -> Self {
        let mut e = Self { dir: state_dir.to_path_buf(), by_sha: BTreeMap::new() };
        let path = state_dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Exemption>>(&bytes) {
                Ok(list) => e.by_sha = list.into_iter().map(|x| (x.sha256.clone(), x)).collect(),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "damaged exemptions file moved aside; starting with none");
                    let _ = std::fs::rename(&path, state_dir.join(format!("{FILE}.damaged")));
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(path = %path.display(), error = %err, "cannot read the exemptions file"),
        }
        e
    }

    /// Whether content with this hash is exempt.
    pub fn contains(&self, sha256: &str) -> bool {
        self.by_sha.contains_key(sha256)
    }

    /// Whether some exempt content has this size (then a file of that size is hashed before a
    /// verdict acts on it, so the exemption can be checked).
    pub fn has_size(&self, size: u64) -> bool {
        self.by_sha.values().any(|x| x.size == size)
    }

    pub fn add(&mut self, x: Exemption) {
        self.by_sha.insert(x.sha256.clone(), x);
        self.save();
    }

    /// A new policy: every exemption ends.
    pub fn clear(&mut self) {
        if !self.by_sha.is_empty() {
            self.by_sha.clear();
            self.save();
        }
    }

    fn save(&self) {
        let list: Vec<&Exemption> = self.by_sha.values().collect();
        let bytes = match serde_json::to_vec_pretty(&list) {
            Ok(b) => b,
            Err(e) => return tracing::error!(error = %e, "cannot serialise the exemptions"),
        };
        if let Err(e) = embargo_policy::fsutil::write_atomic(&self.dir, FILE, &bytes, 0o600) {
            tracing::error!(dir = %self.dir.display(), error = %e, "cannot write the exemptions file (they hold until restart)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(sha: &str) -> Exemption {
        Exemption { sha256: sha.into(), size: 3, path: "/p".into(), quarantine_id: "q".into(), uid: 0 }
    }

    #[test]
    fn persisted_cleared_and_damage_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Exemptions::load(dir.path());
        assert!(e.by_sha.is_empty());
        e.add(x("aa"));
        let e2 = Exemptions::load(dir.path());
        assert!(e2.contains("aa") && e2.has_size(3) && !e2.contains("bb"));
        e.clear();
        assert!(Exemptions::load(dir.path()).by_sha.is_empty());
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert!(Exemptions::load(dir.path()).by_sha.is_empty());
        assert!(dir.path().join("exemptions.json.damaged").exists());
    }
}
