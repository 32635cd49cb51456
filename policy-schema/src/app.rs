//! An app as the agent sees it: the identity every source produces and every rule matches,
//! and the kinds of app there are. This module imports nothing else of the crate: rules,
//! matcher, version ordering and the inventory all build on it.
//!
//! These are wire types: `embargoctl inventory --json` emits them (see `inventory`) and rules
//! name kinds, so changes are versioned with those formats.

use serde::{Deserialize, Serialize};

/// Where an app is installed: for the whole system, or for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Scope {
    #[default]
    System,
    User(u32),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::System => f.write_str("system"),
            Scope::User(uid) => write!(f, "user({uid})"),
        }
    }
}

/// `{kind, id, name?, version?, publisher?, signers, sha256?, paths, scope}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub kind: Kind,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    #[serde(default)]
    pub signers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub scope: Scope,
}

impl App {
    pub fn new(kind: Kind, id: impl Into<String>) -> Self {
        Self {
            kind,
            id: id.into(),
            name: None,
            version: None,
            publisher: None,
            signers: Vec::new(),
            sha256: None,
            paths: Vec::new(),
            scope: Scope::System,
        }
    }
}

/// The kinds of app the agent knows. `windows` and `msix` are reserved so a policy written for
/// a mixed fleet today verifies on Linux agents; no Linux source produces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Deb,
    Rpm,
    Flatpak,
    Snap,
    Appimage,
    Desktop,
    File,
    Android,
    Macos,
    Ios,
    Windows,
    Msix,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Deb,
        Kind::Rpm,
        Kind::Flatpak,
        Kind::Snap,
        Kind::Appimage,
        Kind::Desktop,
        Kind::File,
        Kind::Android,
        Kind::Macos,
        Kind::Ios,
        Kind::Windows,
        Kind::Msix,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deb => "deb",
            Kind::Rpm => "rpm",
            Kind::Flatpak => "flatpak",
            Kind::Snap => "snap",
            Kind::Appimage => "appimage",
            Kind::Desktop => "desktop",
            Kind::File => "file",
            Kind::Android => "android",
            Kind::Macos => "macos",
            Kind::Ios => "ios",
            Kind::Windows => "windows",
            Kind::Msix => "msix",
        }
    }

    pub fn index(self) -> usize {
        Kind::ALL.iter().position(|k| *k == self).expect("kind is in ALL")
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL.iter().copied().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown kind {s:?}"))
    }
}

/// Packages no removal may ever touch and no exported deny rule may name, on any system: the
/// package managers, the base system and the agent (shared by the agent and `export`).
pub const ALWAYS_PROTECTED: &[&str] = &[
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
    "glibc",
    "base-files",
    "bash",
    "coreutils",
    "systemd",
    "init",
    "embargo-agent",
];
