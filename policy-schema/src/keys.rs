//! Ed25519 keys: public keys as they appear in root metadata, and private key files for the admin tool.
//!
//! Verification uses ed25519-dalek 2's `verify_strict`, which rejects small-order public keys and
//! non-canonical signature encodings (see ARCHITECTURE.md, "Why ed25519-dalek").
//! A keyid is the lowercase hex SHA-256 of the 32 public key bytes; root metadata that lists a key
//! under any other keyid is rejected, so one key cannot appear twice under two names.
//! Private key material is never printed: `SigningKey` has no `Display` and its `Debug` shows the keyid.

use std::io::Write as _;
use std::path::Path;

use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not an embargo Ed25519 private key file: {reason}")]
    Format { path: String, reason: String },
    #[error("{path}: private key file is readable by group or others (mode {mode:o}); chmod 600 it")]
    Permissions { path: String, mode: u32 },
    #[error("public key is not a valid Ed25519 point: {0}")]
    BadPublic(String),
}

/// An Ed25519 public key together with its keyid.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
    keyid: String,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.keyid)
    }
}

pub fn keyid_of(public: &[u8; 32]) -> String {
    hex::encode(Sha256::digest(public))
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|e| KeyError::BadPublic(e.to_string()))?;
        if key.is_weak() {
            return Err(KeyError::BadPublic("small-order (weak) key".into()));
        }
        Ok(Self { key, keyid: keyid_of(bytes) })
    }

    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn verify_strict(&self, message: &[u8], sig: &ed25519_dalek::Signature) -> bool {
        self.key.verify_strict(message, sig).is_ok()
    }

    /// The form used in root metadata.
    pub fn to_json_key(&self) -> JsonKey {
        JsonKey { keytype: "ed25519".into(), public: hex::encode(self.to_bytes()) }
    }
}

/// A key as written in root metadata: `{"keytype": "ed25519", "public": "<64 hex>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonKey {
    pub keytype: String,
    pub public: String,
}

impl JsonKey {
    pub fn to_public(&self) -> Result<PublicKey, KeyError> {
        if self.keytype != "ed25519" {
            return Err(KeyError::BadPublic(format!("unsupported keytype {:?}", self.keytype)));
        }
        let mut bytes = [0u8; 32];
        if self.public.len() != 64 || self.public.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(KeyError::BadPublic("public must be 64 lowercase hex digits".into()));
        }
        hex::decode_to_slice(&self.public, &mut bytes).map_err(|e| KeyError::BadPublic(e.to_string()))?;
        PublicKey::from_bytes(&bytes)
    }
}

/// A private signing key. Zeroized on drop by ed25519-dalek.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public.keyid)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keytype: String,
    keyid: String,
    private: String,
}

impl SigningKey {
    pub fn generate() -> Self {
        Self::from_dalek(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    fn from_dalek(key: ed25519_dalek::SigningKey) -> Self {
        let bytes = key.verifying_key().to_bytes();
        let public = PublicKey { key: key.verifying_key(), keyid: keyid_of(&bytes) };
        Self { key, public }
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Writes the key to a new file created with mode 0600. Refuses to overwrite.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let io = |source| KeyError::Io { path: path.display().to_string(), source };
        let body = KeyFile {
            keytype: "ed25519".into(),
            keyid: self.public.keyid.clone(),
            private: hex::encode(self.key.to_bytes()),
        };
        let mut text = serde_json::to_vec_pretty(&body).expect("key file serializes");
        text.push(b'\n');
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc_o_nofollow())
            .open(path)
            .map_err(io)?;
        file.write_all(&text).map_err(io)?;
        file.sync_all().map_err(io)?;
        // The secret is in `text`; wipe the copy we made.
        text.iter_mut().for_each(|b| *b = 0);
        Ok(())
    }

    /// Reads a private key file; refuses files readable by group or others.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        use std::os::unix::fs::PermissionsExt as _;
        let p = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Io { path: p.clone(), source })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path: p, mode });
        }
        let text = std::fs::read(path).map_err(|source| KeyError::Io { path: p.clone(), source })?;
        let fmt = |reason: &str| KeyError::Format { path: p.clone(), reason: reason.to_owned() };
        let file: KeyFile = serde_json::from_slice(&text).map_err(|e| fmt(&e.to_string()))?;
        if file.keytype != "ed25519" {
            return Err(fmt("keytype is not ed25519"));
        }
        let mut seed = [0u8; 32];
        hex::decode_to_slice(&file.private, &mut seed).map_err(|_| fmt("private is not 64 hex digits"))?;
        let key = Self::from_dalek(ed25519_dalek::SigningKey::from_bytes(&seed));
        seed.iter_mut().for_each(|b| *b = 0);
        if key.public.keyid != file.keyid {
            return Err(fmt("keyid does not match the private key"));
        }
        Ok(key)
    }
}

/// O_NOFOLLOW, so a key file is never written through a planted symlink.
fn libc_o_nofollow() -> i32 {
    // Value from <fcntl.h> on Linux (all architectures we build for use 0o400000).
    0o400000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_and_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let key = SigningKey::generate();
        key.write_new(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = SigningKey::read(&path).unwrap();
        assert_eq!(back.public(), key.public());
        assert!(key.write_new(&path).is_err(), "must not overwrite");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(SigningKey::read(&path), Err(KeyError::Permissions { .. })));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = SigningKey::generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(&hex::encode(key.key.to_bytes())));
        assert!(shown.contains(key.public().keyid()));
    }
}
