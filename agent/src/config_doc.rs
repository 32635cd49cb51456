//! The documentation of every `agent.toml` key: the one source the packaged `agent.toml(5)` man
//! page is generated from (`packaging/docgen`), checked against the parser in [`crate::config`]
//! by the tests below (every key the parser accepts is documented, every documented key parses,
//! every documented default is what the parser uses when the key is absent).

/// One table of the file (the top level has `header: ""`).
#[derive(Debug)]
pub struct Section {
    /// TOML header as written in the file: `""`, `"[policy]"`, `"[[watch]]"`.
    pub header: &'static str,
    /// Key path used in the tests' probe files: `""` for the top level, else the table name.
    pub table: &'static str,
    /// Whether the table may appear several times (`[[watch]]`).
    pub array: bool,
    pub required: bool,
    pub doc: &'static str,
    pub keys: &'static [Key],
}

/// One key.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    /// The value's type as the man page names it.
    pub kind: &'static str,
    pub required: bool,
    /// Keys of the same table that must be set with this one.
    pub requires: &'static [&'static str],
    /// The value used when the key is absent, as TOML (`None`: absent means "not set").
    pub default: Option<&'static str>,
    /// A valid value, as TOML (the tests parse it).
    pub example: &'static str,
    pub doc: &'static str,
}

pub const SECTIONS: &[Section] = &[
    Section {
        header: "",
        table: "",
        array: false,
        required: true,
        doc: "Keys at the top of the file, before any table.",
        keys: &[
            Key {
                name: "mode",
                kind: "string",
                required: false,
                requires: &[],
                default: Some("\"enforce\""),
                example: "\"monitor\"",
                doc: "\"enforce\" acts on banned apps (quarantine, removal through the package manager); \"monitor\" \
                      only records in the audit log what enforcement would have done.",
            },
            Key {
                name: "state_dir",
                kind: "path",
                required: false,
                requires: &[],
                default: Some("\"/var/lib/embargo\""),
                example: "\"/var/lib/embargo-test\"",
                doc: "Trusted policy metadata, the quarantine store and the hash-chained audit log. Root only \
                      (mode 0700); kept on package removal, deleted on purge.",
            },
            Key {
                name: "socket",
                kind: "path",
                required: false,
                requires: &[],
                default: Some("\"/run/embargo/embargod.sock\""),
                example: "\"/run/embargo-test/embargod.sock\"",
                doc: "The control socket embargoctl talks to. Any local user may read the status; changing \
                      anything (sync, scan, confirm, quarantine restore/purge) needs root.",
            },
            Key {
                name: "tags",
                kind: "array of strings",
                required: false,
                requires: &[],
                default: Some("[]"),
                example: "[\"laptop\", \"finance\"]",
                doc: "Device tags. Rules that carry tags apply only to devices with at least one of them; \
                      rules without tags apply everywhere. Each tag is 1 to 64 characters.",
            },
        ],
    },
    Section {
        header: "[policy]",
        table: "policy",
        array: false,
        required: true,
        doc: "Where the signed policy comes from and how it is trusted.",
        keys: &[
            Key {
                name: "repository",
                kind: "string (URL)",
                required: true,
                requires: &[],
                default: None,
                example: "\"file:///usr/share/embargo/seed-repo/\"",
                doc: "The fleet's policy repository: an https:// URL (served by embargo-server or any static \
                      web server; a trailing / is added) or file:///dir for devices without a network.",
            },
            Key {
                name: "root",
                kind: "path",
                required: true,
                requires: &[],
                default: None,
                example: "\"/etc/embargo/root.json\"",
                doc: "The trust anchor: root metadata (root/1.json or a newer root/N.json) of the fleet's \
                      repository. Anything not signed under it is refused; without it embargod does not start \
                      (exit status 64).",
            },
            Key {
                name: "ca",
                kind: "path",
                required: false,
                requires: &[],
                default: None,
                example: "\"/etc/embargo/ca.pem\"",
                doc: "Trust only this CA (PEM) for the repository's TLS certificate. Without it the system's \
                      CA bundle is used.",
            },
            Key {
                name: "client_cert",
                kind: "path",
                required: false,
                requires: &["client_key"],
                default: None,
                example: "\"/etc/embargo/device.pem\"",
                doc: "Device certificate (PEM) for mutual TLS. Set together with client_key, or neither.",
            },
            Key {
                name: "client_key",
                kind: "path",
                required: false,
                requires: &["client_cert"],
                default: None,
                example: "\"/etc/embargo/device.key\"",
                doc: "Private key (PEM) of client_cert. Set together with client_cert, or neither.",
            },
            Key {
                name: "interval",
                kind: "duration",
                required: false,
                requires: &[],
                default: Some("\"15m\""),
                example: "\"1h 30m\"",
                doc: "How often the repository is polled, with \u{b1}20% jitter; failed attempts back off \
                      with jitter. At least 1s. Durations are written like \"90s\", \"15m\", \"1h 30m\", \"2d\".",
            },
        ],
    },
    Section {
        header: "[[watch]]",
        table: "watch",
        array: true,
        required: false,
        doc: "Where apps get installed; one table per kind of source. Without any [[watch]] table the \
              defaults apply: appimage in /home/*/Applications, /home/*/Downloads and /opt; desktop in \
              /usr/share/applications, /usr/local/share/applications and /home/*/.local/share/applications.",
        keys: &[
            Key {
                name: "kind",
                kind: "string",
                required: true,
                requires: &[],
                default: None,
                example: "\"desktop\"",
                doc: "The source: appimage, desktop (desktop entries), file (any file, by hash), deb, rpm, \
                      flatpak, snap or android. deb, rpm, flatpak, snap and android paths are package-manager \
                      roots, read through their package database and acted on through their package manager \
                      (android: the device root, `/` on a device; packages.xml is read and apps are removed \
                      with `cmd package uninstall`).",
            },
            Key {
                name: "paths",
                kind: "array of strings",
                required: true,
                requires: &[],
                default: None,
                example: "[\"/home/*/Applications\", \"/opt\"]",
                doc: "Absolute path patterns, at least one, without \"..\". A * component matches any \
                      directory name (/home/*/Applications) and picks up directories that appear later. \
                      System directories (/, /usr, /etc, /boot, ...) are refused as install folders.",
            },
        ],
    },
    Section {
        header: "[enforcement]",
        table: "enforcement",
        array: false,
        required: false,
        doc: "Limits on what enforcement does.",
        keys: &[
            Key {
                name: "retention",
                kind: "duration",
                required: false,
                requires: &[],
                default: Some("\"30d\""),
                example: "\"7d\"",
                doc: "Quarantined files of remove rules (unmanaged apps) are purged after this long.",
            },
            Key {
                name: "max_actions_per_update",
                kind: "integer",
                required: false,
                requires: &[],
                default: Some("100"),
                example: "5",
                doc: "A policy update that would act on more apps than this acts on none of them until an \
                      administrator runs \"embargoctl confirm\" (a guard against a mistaken policy). At least 1.",
            },
            Key {
                name: "max_files_per_scan",
                kind: "integer",
                required: false,
                requires: &[],
                default: Some("200000"),
                example: "50000",
                doc: "Most directory entries one scan of a watched folder looks at in one loop turn. A scan \
                      that reaches it degrades status (naming the folder), writes a scan-bound audit event, \
                      and continues where it stopped in the next turns. At least 1.",
            },
            Key {
                name: "max_hash_bytes",
                kind: "integer",
                required: false,
                requires: &[],
                default: Some("4294967296"),
                example: "1073741824",
                doc: "Largest file, in bytes of logical size (a sparse file counts whole), whose SHA-256 the \
                      agent takes. A larger file that only a hash rule could judge is reported \"unhashed: over \
                      cap\" in status and the audit log; verdicts that need no hash still act. At least 1.",
            },
            Key {
                name: "max_inventory_entries",
                kind: "integer",
                required: false,
                requires: &[],
                default: Some("20000"),
                example: "5000",
                doc: "Most inventory entries remembered per watched folder and per file owner. Beyond it, files \
                      are still enforced each time they are seen but not remembered, and status is degraded \
                      naming the folder or user. At least 1.",
            },
            Key {
                name: "max_inventory_bytes",
                kind: "integer",
                required: false,
                requires: &[],
                default: Some("16777216"),
                example: "4194304",
                doc: "Most bytes the inventory remembers per watched folder and per file owner: each entry \
                      counts its path, its app's strings and 256 bytes of structure, so long names cannot \
                      stay under max_inventory_entries and still take gigabytes. Beyond it, as for \
                      max_inventory_entries (enforced, not remembered; status degraded; one \
                      inventory-bound audit event). At least 65536.",
            },
            Key {
                name: "max_scan_path_bytes",
                kind: "integer",
                required: false,
                requires: &[],
                default: Some("8388608"),
                example: "1048576",
                doc: "Most bytes of file paths one scan batch of a watched folder lists before they are \
                      enforced, so a scan's memory is bounded whatever the tree. Reaching it, like \
                      max_files_per_scan, degrades status naming the folder, writes a scan-bound audit \
                      event, and continues the scan where it stopped in the next turns. At least 4096.",
            },
            Key {
                name: "max_watches_per_root",
                kind: "integer",
                required: false,
                requires: &[],
                default: Some("8192"),
                example: "2048",
                doc: "Most inotify watches (one per directory) the agent holds for one watched folder. Directories \
                      beyond it are not watched: they are rescanned every watch_fallback_interval and soon after \
                      activity in their watched parent, status is degraded naming the folder, the directories' \
                      owner and how many are unwatched, and the audit log records the bound once. Whatever the \
                      bounds, the agent's folder watches never exceed a quarter of fs.inotify.max_user_watches \
                      (read at start). At least 1.",
            },
            Key {
                name: "max_watches_per_uid",
                kind: "integer",
                required: false,
                requires: &[],
                default: Some("16384"),
                example: "4096",
                doc: "Most inotify watches on directories owned by one user, over all watched folders (so one \
                      user's tree cannot take the watches other users' folders need). Beyond it, as for \
                      max_watches_per_root. At least 1.",
            },
            Key {
                name: "watch_fallback_interval",
                kind: "duration",
                required: false,
                requires: &[],
                default: Some("\"60s\""),
                example: "\"5m\"",
                doc: "How often a watched folder with directories beyond a watch bound is rescanned (only while \
                      one is; otherwise the agent has no such timer). At least 1s.",
            },
            Key {
                name: "audit_max_bytes",
                kind: "integer",
                required: false,
                requires: &[],
                default: Some("67108864"),
                example: "16777216",
                doc: "Size in bytes past which the audit log (state_dir/audit.log) is rotated to \
                      audit.log.<first sequence>; the new file's first record chains to the last hash of the \
                      old one, so `embargoctl events --verify` checks one chain across files. At least 4096.",
            },
            Key {
                name: "audit_keep_files",
                kind: "integer",
                required: false,
                requires: &[],
                default: Some("8"),
                example: "4",
                doc: "Rotated audit log files kept. Before an older one is deleted, an audit-dropped record \
                      naming its sequence range and last hash is appended, so the deletion is part of the \
                      chain and never silent. At least 1.",
            },
            Key {
                name: "quarantine_max_items_per_uid",
                kind: "integer",
                required: false,
                requires: &[],
                default: Some("1000"),
                example: "200",
                doc: "Most quarantined items kept per file owner (uid other than root). A new quarantine \
                      beyond it purges that owner's oldest items first (never another user's); the hit is \
                      audited and status is degraded naming the uid and the bound. At least 1.",
            },
            Key {
                name: "quarantine_max_bytes_per_uid",
                kind: "integer",
                required: false,
                requires: &[],
                default: Some("8589934592"),
                example: "1073741824",
                doc: "Most bytes (allocated blocks, so a sparse file counts what it uses) kept in \
                      quarantine per file owner (uid other than root). Beyond it the owner's oldest items \
                      are purged first; a single banned file larger than the bound is deleted in place \
                      rather than kept, so the quota can never leave a banned file where it was. Audited, \
                      and status is degraded naming the uid and the bound. At least 1.",
            },
        ],
    },
    Section {
        header: "[exec]",
        table: "exec",
        array: false,
        required: false,
        doc: "The exec gate (fanotify FAN_OPEN_EXEC_PERM): banned files fail to execute with EPERM \
              wherever they are, and banned processes already running are stopped at start-up and after \
              every policy update. Needs CAP_SYS_ADMIN and fanotify; see docs/exec-gate.md.",
        keys: &[
            Key {
                name: "enabled",
                kind: "boolean",
                required: false,
                requires: &[],
                default: Some("false"),
                example: "true",
                doc: "Whether the gate and the running-process sweep run. In monitor mode the gate only \
                      records what it would deny and the sweep only records what it would stop.",
            },
            Key {
                name: "on_timeout",
                kind: "string",
                required: false,
                requires: &[],
                default: Some("\"allow\""),
                example: "\"deny\"",
                doc: "What an exec gets when the gate cannot decide within the deadline, its queue is full \
                      or identification fails: \"allow\" or \"deny\" (like fapolicyd's failure actions). \
                      Each such answer is recorded (exec-timeout audit event).",
            },
            Key {
                name: "deadline",
                kind: "duration",
                required: false,
                requires: &[],
                default: Some("\"1s\""),
                example: "\"250ms\"",
                doc: "Longest an exec waits for the gate's verdict before on_timeout applies. At least 1ms, \
                      at most 60s.",
            },
            Key {
                name: "mounts",
                kind: "array of paths",
                required: false,
                requires: &[],
                default: None,
                example: "[\"/media\", \"/tmp\"]",
                doc: "Gate only mounts whose mount point is one of these directories or beneath one \
                      (including mounts made later). Absent: every local filesystem that can hold \
                      executables (pseudo filesystems and noexec mounts are skipped).",
            },
        ],
    },
    Section {
        header: "[report]",
        table: "report",
        array: false,
        required: false,
        doc: "Compliance reports to the fleet server (embargo-server). Without this table the agent \
              does not report. Reports use [policy]'s ca, client_cert and client_key: the client \
              certificate is the device's identity.",
        keys: &[Key {
            name: "url",
            kind: "string",
            required: true,
            requires: &[],
            default: None,
            example: "\"https://fleet.example.org\"",
            doc: "Base https:// URL of the fleet server; reports are POSTed to <url>/v1/reports. Separate \
                  from the repository, which may be a CDN or file://. Reports are spooled under state_dir \
                  first (at most 64 reports or 4 MiB; beyond, the oldest are dropped and counted).",
        }],
    },
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::Config;

    const MINIMAL: &str =
        "[policy]\nrepository = \"https://policy.example.invalid/\"\nroot = \"/etc/embargo/root.json\"\n";

    /// The file MINIMAL with `key = value` added to `table` (an existing or a new table).
    fn with_key(section: &Section, key: &str, value: &str) -> String {
        match section.table {
            "" => format!("{key} = {value}\n{MINIMAL}"),
            // [policy] is in MINIMAL already: set the key there (replacing it if present).
            "policy" => {
                let kept: String =
                    MINIMAL.lines().filter(|l| !l.starts_with(&format!("{key} ="))).map(|l| format!("{l}\n")).collect();
                kept.replace("[policy]\n", &format!("[policy]\n{key} = {value}\n"))
            }
            _ => {
                // A table's required keys are filled in so the probe fails on `key` only.
                let mut s = format!("{MINIMAL}{}\n{key} = {value}\n", section.header);
                for k in section.keys.iter().filter(|k| k.required && k.name != key) {
                    s.push_str(&format!("{} = {}\n", k.name, k.example));
                }
                s
            }
        }
    }

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/embargo/agent.toml"), text).map_err(|e| e.to_string())
    }

    /// Every key the parser accepts, from serde's "unknown field `x`, expected one of ..." error.
    fn accepted_keys(section: &Section) -> BTreeSet<String> {
        let err = parse(&with_key(section, "zz_not_a_key", "1")).expect_err("an unknown key is refused");
        let (_, expected) = err.split_once("expected").unwrap_or_else(|| panic!("{}: {err}", section.header));
        expected.split('`').skip(1).step_by(2).map(str::to_owned).collect()
    }

    #[test]
    fn every_key_the_parser_accepts_is_documented_and_no_other() {
        for section in SECTIONS {
            let documented: BTreeSet<String> = section.keys.iter().map(|k| k.name.to_owned()).collect();
            let mut accepted = accepted_keys(section);
            if section.table.is_empty() {
                // The tables are documented as sections of their own.
                for s in SECTIONS.iter().filter(|s| !s.table.is_empty()) {
                    assert!(accepted.remove(s.table), "the parser has no table {:?}", s.header);
                }
            }
            assert_eq!(accepted, documented, "keys of {:?}: accepted by the parser vs documented", section.header);
        }
    }

    #[test]
    fn every_documented_example_parses() {
        for section in SECTIONS {
            for key in section.keys {
                let mut text = with_key(section, key.name, key.example);
                for partner in key.requires {
                    let p = section.keys.iter().find(|k| k.name == *partner).expect("a documented partner key");
                    text = text.replace(
                        &format!("{} = {}\n", key.name, key.example),
                        &format!("{} = {}\n{} = {}\n", key.name, key.example, p.name, p.example),
                    );
                }
                parse(&text).unwrap_or_else(|e| panic!("{} {}: {e}\n{text}", section.header, key.name));
            }
        }
    }

    #[test]
    fn every_documented_default_is_the_parsers_default() {
        let base = format!("{:?}", parse(MINIMAL).unwrap());
        for section in SECTIONS.iter().filter(|s| !s.array) {
            for key in section.keys {
                if let Some(default) = key.default {
                    let text = with_key(section, key.name, default);
                    let explicit = format!("{:?}", parse(&text).unwrap());
                    assert_eq!(
                        explicit, base,
                        "{} {} = {default} is not what an absent key means",
                        section.header, key.name
                    );
                }
            }
        }
    }

    #[test]
    fn the_watch_docs_name_every_kind_and_every_default_path() {
        let watch = SECTIONS.iter().find(|s| s.table == "watch").unwrap();
        let kind = watch.keys.iter().find(|k| k.name == "kind").unwrap();
        for k in embargo_policy::app::Kind::ALL.iter().filter(|k| crate::config::is_watch_kind(**k)) {
            assert!(kind.doc.contains(k.as_str()), "the kind doc lacks {k:?}");
        }
        for w in crate::config::default_watches() {
            for p in &w.patterns {
                let p = p.to_str().unwrap();
                assert!(watch.doc.contains(p), "the [[watch]] doc lacks the default {p}");
            }
        }
    }

    #[test]
    fn required_keys_are_required() {
        for section in SECTIONS.iter().filter(|s| s.table == "policy") {
            for key in section.keys.iter().filter(|k| k.required) {
                let without: String =
                    MINIMAL.lines().filter(|l| !l.starts_with(key.name)).map(|l| format!("{l}\n")).collect();
                let err = parse(&without).expect_err(key.name);
                assert!(err.contains(key.name), "{err}");
            }
        }
    }
}
