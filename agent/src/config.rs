//! Agent configuration: raw TOML (unknown keys are errors) validated once into [`Config`].
//!
//! Every error names the file and line (`agent.toml:12:1: ...`); `embargod` exits 64 on them so a
//! supervisor stops restarting a daemon that cannot start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use embargo_policy::rules::Kind;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: Option<toml::Spanned<String>>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    tags: Vec<String>,
    policy: toml::Spanned<RawPolicy>,
    #[serde(default)]
    watch: Vec<toml::Spanned<RawWatch>>,
    #[serde(default)]
    enforcement: Option<toml::Spanned<RawEnforcement>>,
    #[serde(default)]
    exec: Option<toml::Spanned<RawExec>>,
    report: Option<RawReport>,
}

/// `[report]`: where compliance reports go (the fleet server), separate from the repository,
/// which may be a CDN or `file://`. The HTTPS client is `[policy]`'s (ca, client certificate).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReport {
    url: toml::Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    on_timeout: Option<toml::Spanned<String>>,
    #[serde(default)]
    deadline: Option<toml::Spanned<String>>,
    #[serde(default)]
    mounts: Option<toml::Spanned<Vec<toml::Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    repository: toml::Spanned<String>,
    root: PathBuf,
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    client_cert: Option<PathBuf>,
    #[serde(default)]
    client_key: Option<PathBuf>,
    #[serde(default)]
    interval: Option<toml::Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    kind: toml::Spanned<String>,
    paths: Vec<toml::Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnforcement {
    /// How long quarantined files of `remove` rules are kept before they are purged.
    #[serde(default)]
    retention: Option<String>,
    /// Most apps one policy update may act on; over it, none are acted on ("needs confirmation").
    #[serde(default)]
    max_actions_per_update: Option<usize>,
    /// Most directory entries one scan batch of a root lists; a larger root is scanned in
    /// several batches (continued in later loop turns) and shown degraded.
    #[serde(default)]
    max_files_per_scan: Option<usize>,
    /// Largest file (logical size, so sparse files count whole) the agent reads for its sha256;
    /// a larger one is "unhashed: over cap" (see docs/threat-model-agent.md).
    #[serde(default)]
    max_hash_bytes: Option<u64>,
    /// Most inventory entries remembered per folder root and per file owner (uid); beyond,
    /// files are enforced at each look but not remembered, and status is degraded.
    #[serde(default)]
    max_inventory_entries: Option<usize>,
    /// Most bytes of listed paths one scan batch of a root holds; like `max_files_per_scan`,
    /// reaching it continues the scan in the next loop turn and shows the root degraded.
    #[serde(default)]
    max_scan_path_bytes: Option<usize>,
    /// Most bytes (paths plus app details) the inventory remembers per folder root and per
    /// file owner (uid); beyond, like `max_inventory_entries`.
    #[serde(default)]
    max_inventory_bytes: Option<usize>,
    /// Most inotify watches (one per directory) per folder root; directories beyond it are
    /// covered by the scan fallback and status is degraded (`source::dirwatch`).
    #[serde(default)]
    max_watches_per_root: Option<usize>,
    /// Most inotify watches on directories owned by one uid, over all roots.
    #[serde(default)]
    max_watches_per_uid: Option<usize>,
    /// How often a root with unwatched directories is rescanned.
    #[serde(default)]
    watch_fallback_interval: Option<String>,
    /// Size past which the audit log is rotated (the hash chain runs on across files).
    #[serde(default)]
    audit_max_bytes: Option<u64>,
    /// Rotated audit log files kept; older ones are deleted, each recorded in the chain.
    #[serde(default)]
    audit_keep_files: Option<usize>,
    /// Most quarantined items kept per file owner (uid); beyond, that owner's oldest are purged.
    #[serde(default)]
    quarantine_max_items_per_uid: Option<usize>,
    /// Most bytes (allocated, so sparse files count what they use) kept in quarantine per owner.
    #[serde(default)]
    quarantine_max_bytes_per_uid: Option<u64>,
}

/// The per-owner bound of the quarantine store (issue 10, finding 11; docs/threat-model-agent.md
/// "Quarantine store and audit log bounds").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantineQuota {
    pub max_items: usize,
    pub max_bytes: u64,
}

/// The default `quarantine_max_items_per_uid`.
pub const DEFAULT_QUARANTINE_MAX_ITEMS_PER_UID: usize = 1000;
/// The default `quarantine_max_bytes_per_uid`.
pub const DEFAULT_QUARANTINE_MAX_BYTES_PER_UID: u64 = 8 << 30;

impl Default for QuarantineQuota {
    fn default() -> Self {
        Self { max_items: DEFAULT_QUARANTINE_MAX_ITEMS_PER_UID, max_bytes: DEFAULT_QUARANTINE_MAX_BYTES_PER_UID }
    }
}

/// The default `max_scan_path_bytes`: 8 MiB of paths per scan batch (some 100,000 typical
/// paths; 10,000 of the 800-byte paths of the review's attack), so a scan's own memory stays
/// in the tens of MiB whatever the tree.
pub const DEFAULT_MAX_SCAN_PATH_BYTES: usize = 8 << 20;

/// The default `max_hash_bytes`: larger than any app we know of, small enough that hashing it
/// on one pool thread takes seconds, not hours.
pub const DEFAULT_MAX_HASH_BYTES: u64 = 4 << 30;

/// The `[exec]` section: the fanotify exec gate and the running-process sweep
/// (docs/exec-gate.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    /// Whether the gate and the sweep run (default false: the gate needs CAP_SYS_ADMIN).
    pub enabled: bool,
    /// What an exec gets when the gate cannot decide in time.
    pub on_timeout: crate::exec_gate::OnTimeout,
    /// How long an exec may wait for a verdict (default 1 s).
    pub deadline: Duration,
    /// Only mounts at or beneath these directories are gated (`None`: every local filesystem).
    pub mounts: Option<Vec<PathBuf>>,
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            on_timeout: crate::exec_gate::OnTimeout::Allow,
            deadline: Duration::from_secs(1),
            mounts: None,
        }
    }
}

/// Enforce acts; monitor turns every action into audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Monitor,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

/// Where policies come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repository {
    /// `https://…/` (ends with `/`).
    Https(String),
    /// A local directory (`file:///…`).
    Dir(PathBuf),
}

impl std::fmt::Display for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Repository::Https(u) => f.write_str(u),
            Repository::Dir(p) => write!(f, "file://{}", p.display()),
        }
    }
}

/// One watched location: a kind of source and path patterns (a `*` component matches any
/// directory name, e.g. `/home/*/Applications`, and picks up directories that appear later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub kind: Kind,
    pub patterns: Vec<PathBuf>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub mode: Mode,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub tags: Vec<String>,
    pub repository: Repository,
    pub root: PathBuf,
    pub ca: Option<PathBuf>,
    pub client_identity: Option<(PathBuf, PathBuf)>,
    pub interval: Duration,
    pub watches: Vec<Watch>,
    pub retention: Duration,
    pub max_actions_per_update: usize,
    /// See `RawEnforcement::max_files_per_scan` (default 200,000).
    pub max_files_per_scan: usize,
    /// See `RawEnforcement::max_hash_bytes` (default 4 GiB).
    pub max_hash_bytes: u64,
    /// See `RawEnforcement::max_inventory_entries` (default 20,000).
    pub max_inventory_entries: usize,
    /// See `RawEnforcement::max_scan_path_bytes` (default 8 MiB).
    pub max_scan_path_bytes: usize,
    /// See `RawEnforcement::max_inventory_bytes` (default 16 MiB).
    pub max_inventory_bytes: usize,
    /// See `RawEnforcement::max_watches_per_root` (default 8,192).
    pub max_watches_per_root: usize,
    /// See `RawEnforcement::max_watches_per_uid` (default 16,384).
    pub max_watches_per_uid: usize,
    /// See `RawEnforcement::watch_fallback_interval` (default 60 s).
    pub watch_fallback_interval: Duration,
    /// `audit_max_bytes` and `audit_keep_files` (defaults 64 MiB, 8 files).
    pub audit_rotation: crate::audit::Rotation,
    /// `quarantine_max_items_per_uid` and `quarantine_max_bytes_per_uid` (defaults 1000, 8 GiB).
    pub quarantine_quota: QuarantineQuota,
    /// The `[exec]` section (exec gate and running-process sweep).
    pub exec: ExecConfig,
    /// `[report] url`, without a trailing `/` (reports go to `<url>/v1/reports`); `None`: the
    /// agent does not report.
    pub report_url: Option<String>,
}

pub const DEFAULT_CONFIG: &str = "/etc/embargo/agent.toml";
pub const DEFAULT_SOCKET: &str = "/run/embargo/embargod.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/embargo";

/// A configuration error, with its location when it has one.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub location: Option<(usize, usize)>,
    pub message: String,
}

/// Directories an agent must never treat as install roots: acting there would touch the system
/// itself (packages are removed through their package manager, never by deleting files).
const PROTECTED_ROOTS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/proc",
    "/sbin",
    "/sys",
    "/usr",
    "/run",
    "/var/lib/dpkg",
    "/var/lib/rpm",
];

/// The install-folder kinds (files identified and moved beneath watched folders).
pub const FOLDER_KINDS: &[Kind] = &[Kind::Appimage, Kind::Desktop, Kind::File];

/// Whether watch paths of `kind` are package-manager roots (read through the package database
/// and acted on through the package manager) rather than install folders. Derived from the
/// registry of package managers, so a new manager is a new watchable kind.
pub fn is_package_kind(kind: Kind) -> bool {
    crate::source::package::manager_for(kind).is_some()
}

/// Whether this build can watch sources of `kind`.
pub fn is_watch_kind(kind: Kind) -> bool {
    FOLDER_KINDS.contains(&kind) || is_package_kind(kind)
}

/// Default watch set when the config has no `[[watch]]` (Linux desktop install locations).
pub fn default_watches() -> Vec<Watch> {
    let p = |s: &[&str]| s.iter().map(PathBuf::from).collect();
    vec![
        Watch { kind: Kind::Appimage, patterns: p(&["/home/*/Applications", "/home/*/Downloads", "/opt"]) },
        Watch {
            kind: Kind::Desktop,
            patterns: p(&[
                "/usr/share/applications",
                "/usr/local/share/applications",
                "/home/*/.local/share/applications",
            ]),
        },
    ]
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            location: None,
            message: e.to_string(),
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let at = |offset: usize, message: String| ConfigError {
            file: file.clone(),
            location: Some(embargo_policy::authoring::line_col(text, offset)),
            message,
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| at(e.span().map_or(0, |s| s.start), e.message().trim().to_owned()))?;
        let mode = match raw.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span().start)) {
            None | Some(("enforce", _)) => Mode::Enforce,
            Some(("monitor", _)) => Mode::Monitor,
            Some((other, at_)) => return Err(at(at_, format!("mode {other:?} is not \"enforce\" or \"monitor\""))),
        };
        let base = path.parent().unwrap_or(Path::new("/"));
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let pol = raw.policy.get_ref();
        let repo_text = pol.repository.get_ref();
        let repository = if let Some(rest) = repo_text.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(at(
                    pol.repository.span().start,
                    format!("{repo_text:?}: file:// URLs must be absolute (file:///dir)"),
                ));
            }
            Repository::Dir(PathBuf::from(rest))
        } else if repo_text.starts_with("https://") {
            let mut u = repo_text.clone();
            if !u.ends_with('/') {
                u.push('/');
            }
            Repository::Https(u)
        } else {
            return Err(at(
                pol.repository.span().start,
                format!("repository {repo_text:?} must be https:// or file://"),
            ));
        };
        let duration = |s: &toml::Spanned<String>, what: &str, min: Duration| {
            let d = humantime::parse_duration(s.get_ref())
                .map_err(|e| at(s.span().start, format!("{what} {:?}: {e}", s.get_ref())))?;
            if d < min {
                return Err(at(s.span().start, format!("{what} must be at least {}", humantime::format_duration(min))));
            }
            Ok(d)
        };
        let interval = match &pol.interval {
            None => Duration::from_secs(15 * 60),
            Some(s) => duration(s, "interval", Duration::from_secs(1))?,
        };
        let client_identity = match (&pol.client_cert, &pol.client_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((abs(c.clone()), abs(k.clone()))),
            _ => return Err(at(raw.policy.span().start, "client_cert and client_key go together".into())),
        };
        let mut watches = Vec::new();
        for w in &raw.watch {
            let kind_text = w.get_ref().kind.get_ref();
            let kind: Kind = kind_text.parse().map_err(|e: String| at(w.get_ref().kind.span().start, e))?;
            if !is_watch_kind(kind) {
                return Err(at(
                    w.get_ref().kind.span().start,
                    format!(
                        "watch kind {kind_text:?} is not built yet (this build watches appimage, desktop, file, deb, rpm, flatpak, snap, android)"
                    ),
                ));
            }
            let mut patterns = Vec::new();
            for p in &w.get_ref().paths {
                let pb = PathBuf::from(p.get_ref());
                if !pb.is_absolute() || pb.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                    return Err(at(
                        p.span().start,
                        format!("watch path {:?} must be absolute, without `..`", p.get_ref()),
                    ));
                }
                let norm: PathBuf = pb.components().collect();
                if !is_package_kind(kind) && PROTECTED_ROOTS.iter().any(|r| norm == Path::new(r)) {
                    return Err(at(
                        p.span().start,
                        format!("watch path {:?} is a protected system directory", p.get_ref()),
                    ));
                }
                patterns.push(norm);
            }
            if patterns.is_empty() {
                return Err(at(w.span().start, "a [[watch]] needs at least one path".into()));
            }
            watches.push(Watch { kind, patterns });
        }
        if raw.watch.is_empty() {
            watches = default_watches();
        }
        let (mut retention, mut max_actions, mut max_files) = (Duration::from_secs(30 * 86400), 100, 200_000);
        let mut max_hash_bytes = DEFAULT_MAX_HASH_BYTES;
        let mut max_inventory_entries = crate::source::inventory_map::DEFAULT_MAX_INVENTORY_ENTRIES;
        let mut max_scan_path_bytes = DEFAULT_MAX_SCAN_PATH_BYTES;
        let mut max_inventory_bytes = crate::source::inventory_map::DEFAULT_MAX_INVENTORY_BYTES;
        let mut max_watches_per_root = crate::source::dirwatch::DEFAULT_MAX_WATCHES_PER_ROOT;
        let mut max_watches_per_uid = crate::source::dirwatch::DEFAULT_MAX_WATCHES_PER_UID;
        let mut watch_fallback_interval = crate::source::dirwatch::DEFAULT_FALLBACK_INTERVAL;
        let mut audit_rotation = crate::audit::Rotation::default();
        let mut quarantine_quota = QuarantineQuota::default();
        if let Some(e) = &raw.enforcement {
            let s = e.span().start;
            let e = e.get_ref();
            if let Some(r) = &e.retention {
                retention = humantime::parse_duration(r).map_err(|err| at(s, format!("retention {r:?}: {err}")))?;
            }
            if let Some(m) = e.max_actions_per_update {
                if m == 0 {
                    return Err(at(s, "max_actions_per_update must be at least 1".into()));
                }
                max_actions = m;
            }
            if let Some(m) = e.max_files_per_scan {
                if m == 0 {
                    return Err(at(s, "max_files_per_scan must be at least 1".into()));
                }
                max_files = m;
            }
            if let Some(m) = e.max_hash_bytes {
                if m == 0 {
                    return Err(at(s, "max_hash_bytes must be at least 1".into()));
                }
                max_hash_bytes = m;
            }
            if let Some(m) = e.max_inventory_entries {
                if m == 0 {
                    return Err(at(s, "max_inventory_entries must be at least 1".into()));
                }
                max_inventory_entries = m;
            }
            if let Some(m) = e.max_scan_path_bytes {
                if m < 4096 {
                    return Err(at(s, "max_scan_path_bytes must be at least 4096 (one path)".into()));
                }
                max_scan_path_bytes = m;
            }
            if let Some(m) = e.max_inventory_bytes {
                if m < 65536 {
                    return Err(at(s, "max_inventory_bytes must be at least 65536".into()));
                }
                max_inventory_bytes = m;
            }
            if let Some(m) = e.max_watches_per_root {
                if m == 0 {
                    return Err(at(s, "max_watches_per_root must be at least 1".into()));
                }
                max_watches_per_root = m;
            }
            if let Some(m) = e.max_watches_per_uid {
                if m == 0 {
                    return Err(at(s, "max_watches_per_uid must be at least 1".into()));
                }
                max_watches_per_uid = m;
            }
            if let Some(r) = &e.watch_fallback_interval {
                let d = humantime::parse_duration(r)
                    .map_err(|err| at(s, format!("watch_fallback_interval {r:?}: {err}")))?;
                // A floor, so the fallback can never become a busy loop.
                if d < Duration::from_secs(1) {
                    return Err(at(s, format!("watch_fallback_interval {r:?} must be at least 1s")));
                }
                watch_fallback_interval = d;
            }
            if let Some(m) = e.audit_max_bytes {
                if m < 4096 {
                    return Err(at(s, "audit_max_bytes must be at least 4096".into()));
                }
                audit_rotation.max_bytes = m;
            }
            if let Some(m) = e.audit_keep_files {
                if m == 0 {
                    return Err(at(s, "audit_keep_files must be at least 1".into()));
                }
                audit_rotation.keep = m;
            }
            if let Some(m) = e.quarantine_max_items_per_uid {
                if m == 0 {
                    return Err(at(s, "quarantine_max_items_per_uid must be at least 1".into()));
                }
                quarantine_quota.max_items = m;
            }
            if let Some(m) = e.quarantine_max_bytes_per_uid {
                if m == 0 {
                    return Err(at(s, "quarantine_max_bytes_per_uid must be at least 1".into()));
                }
                quarantine_quota.max_bytes = m;
            }
        }
        let mut exec = ExecConfig::default();
        if let Some(e) = &raw.exec {
            let e = e.get_ref();
            exec.enabled = e.enabled.unwrap_or(false);
            if let Some(t) = &e.on_timeout {
                exec.on_timeout = match t.get_ref().as_str() {
                    "allow" => crate::exec_gate::OnTimeout::Allow,
                    "deny" => crate::exec_gate::OnTimeout::Deny,
                    other => {
                        return Err(at(t.span().start, format!("on_timeout {other:?} is not \"allow\" or \"deny\"")))
                    }
                };
            }
            if let Some(d) = &e.deadline {
                exec.deadline = duration(d, "deadline", Duration::from_millis(1))?;
                if exec.deadline > Duration::from_secs(60) {
                    return Err(at(
                        d.span().start,
                        "deadline must be at most 60s (every exec may wait that long)".into(),
                    ));
                }
            }
            if let Some(ms) = &e.mounts {
                let (ms, s) = (ms.get_ref(), ms.span().start);
                if ms.is_empty() {
                    return Err(at(
                        s,
                        "mounts must name at least one directory (leave it out to gate every filesystem)".into(),
                    ));
                }
                let mut dirs = Vec::new();
                for m in ms {
                    let pb = PathBuf::from(m.get_ref());
                    if !pb.is_absolute() || pb.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                        return Err(at(
                            m.span().start,
                            format!("exec mount {:?} must be absolute, without `..`", m.get_ref()),
                        ));
                    }
                    dirs.push(pb.components().collect());
                }
                exec.mounts = Some(dirs);
            }
        }
        let report_url = match &raw.report {
            None => None,
            Some(r) => {
                let u = r.url.get_ref();
                let rest = u.strip_prefix("https://").unwrap_or("");
                if rest.is_empty() || rest.starts_with('/') || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(at(r.url.span().start, format!("report url {u:?} must be https://host[/path]")));
                }
                Some(u.trim_end_matches('/').to_owned())
            }
        };
        for t in &raw.tags {
            if t.is_empty() || t.len() > 64 {
                return Err(at(0, format!("tag {t:?} must be 1..=64 characters")));
            }
        }
        Ok(Config {
            path: path.to_path_buf(),
            mode,
            state_dir: abs(raw.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into())),
            socket: abs(raw.socket.unwrap_or_else(|| DEFAULT_SOCKET.into())),
            tags: raw.tags,
            repository: match repository {
                Repository::Dir(d) => Repository::Dir(abs(d)),
                other => other,
            },
            root: abs(pol.root.clone()),
            ca: pol.ca.clone().map(abs),
            client_identity,
            interval,
            watches,
            retention,
            max_actions_per_update: max_actions,
            max_files_per_scan: max_files,
            max_hash_bytes,
            max_inventory_entries,
            max_scan_path_bytes,
            max_inventory_bytes,
            max_watches_per_root,
            max_watches_per_uid,
            watch_fallback_interval,
            audit_rotation,
            quarantine_quota,
            exec,
            report_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
mode = "enforce"
state_dir = "/var/lib/embargo"
socket = "/run/embargo/embargod.sock"
tags = ["mobile"]

[policy]
repository = "https://policy.example.org/fleet/"
root = "/etc/embargo/root.json"
ca = "/etc/embargo/ca.pem"
interval = "15m"

[[watch]]
kind = "appimage"
paths = ["/home/*/Applications", "/home/*/Downloads", "/opt"]
"#;

    #[test]
    fn the_documented_example_parses() {
        let c = Config::parse(Path::new("agent.toml"), GOOD).unwrap();
        assert_eq!(c.mode, Mode::Enforce);
        assert_eq!(c.repository, Repository::Https("https://policy.example.org/fleet/".into()));
        assert_eq!(c.interval, Duration::from_secs(900));
        assert_eq!(c.watches[0].patterns.len(), 3);
    }

    #[test]
    fn errors_name_the_line() {
        for (bad, line, needle) in [
            (GOOD.replace("interval = \"15m\"", "interval = \"15m\"\ncolour = \"red\""), 12, "colour"),
            (GOOD.replace("mode = \"enforce\"", "mode = \"block\""), 2, "block"),
            (GOOD.replace("https://policy", "http://policy"), 8, "https:// or file://"),
            (GOOD.replace("kind = \"appimage\"", "kind = \"ios\""), 14, "not built yet"),
            (GOOD.replace("\"/opt\"", "\"/usr\""), 15, "protected"),
            (GOOD.replace("interval = \"15m\"", "interval = \"soon\""), 11, "interval"),
        ] {
            let err = Config::parse(Path::new("agent.toml"), &bad).unwrap_err();
            assert_eq!(err.location.map(|l| l.0), Some(line), "{err}");
            assert!(err.to_string().starts_with(&format!("agent.toml:{line}:")), "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn the_exec_section_parses_and_bad_values_name_the_key() {
        let c = Config::parse(Path::new("agent.toml"), GOOD).unwrap();
        assert_eq!(c.exec, ExecConfig::default());
        let on = format!(
            "{GOOD}\n[exec]\nenabled = true\non_timeout = \"deny\"\ndeadline = \"250ms\"\nmounts = [\"/media/usb/\"]\n"
        );
        let c = Config::parse(Path::new("agent.toml"), &on).unwrap();
        assert!(c.exec.enabled);
        assert_eq!(c.exec.on_timeout, crate::exec_gate::OnTimeout::Deny);
        assert_eq!(c.exec.deadline, Duration::from_millis(250));
        assert_eq!(c.exec.mounts, Some(vec![PathBuf::from("/media/usb")]));
        for (bad, needle) in [
            ("on_timeout = \"maybe\"", "on_timeout"),
            ("deadline = \"2m\"", "deadline"),
            ("deadline = \"soon\"", "deadline"),
            ("mounts = []", "mounts"),
            ("mounts = [\"tmp\"]", "absolute"),
            ("colour = 1", "colour"),
        ] {
            let err = Config::parse(Path::new("agent.toml"), &format!("{GOOD}\n[exec]\n{bad}\n")).unwrap_err();
            assert!(err.to_string().contains(needle), "{bad}: {err}");
            assert_eq!(err.location.map(|l| l.0), Some(18), "{bad}: {err}");
        }
    }

    #[test]
    fn report_url_is_https_and_optional() {
        let p = Path::new("/etc/embargo/agent.toml");
        assert_eq!(Config::parse(p, GOOD).unwrap().report_url, None);
        let c = Config::parse(p, &format!("{GOOD}\n[report]\nurl = \"https://fleet.example.org/\"\n")).unwrap();
        assert_eq!(c.report_url.as_deref(), Some("https://fleet.example.org"));
        for bad in ["http://fleet.example.org", "https://", "file:///x"] {
            let e = Config::parse(p, &format!("{GOOD}\n[report]\nurl = \"{bad}\"\n")).unwrap_err().to_string();
            assert!(e.contains("report url") && e.contains("agent.toml:"), "{e}");
        }
    }
}
