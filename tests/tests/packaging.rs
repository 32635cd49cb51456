//! The packages, installed with the real package managers into throwaway roots, and the
//! systemd unit checked by systemd-analyze. The packages are built by `packaging/build.sh` into
//! `target/packages/`
//! (`.ci/run` builds revision 1 and revision 2 of the .deb, for the upgrade test); without them
//! these tests skip, unless EMBARGO_REQUIRE_TOOLS=1.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use embargo_e2e::{bin, need, skip};

fn target_dir() -> PathBuf {
    bin("embargod").parent().unwrap().parent().unwrap().to_path_buf()
}

fn find(dir: &Path, prefix: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(ext)))
        .collect();
    v.sort();
    v
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

fn dpkg(root: &Path) -> Command {
    let mut c = Command::new("dpkg");
    c.arg(format!("--root={}", root.display())).args([
        "--force-script-chrootless",
        "--force-not-root",
        "--force-depends",
    ]);
    c
}

#[test]
fn the_deb_installs_upgrades_keeping_state_and_purges_cleanly() {
    let debs = find(&target_dir().join("packages"), "embargo-agent_", ".deb");
    if debs.len() < 2 && skip("needs two revisions of embargo-agent .deb in target/packages (packaging/build.sh)") {
        return;
    }
    if !need(&["dpkg"]) {
        return;
    }
    let (first, second) = (&debs[0], &debs[debs.len() - 1]);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let out = run(dpkg(&root).arg("-i").arg(first));
    let _ = out;
    // Every file in its place with the right mode.
    for (p, m) in [
        ("usr/bin/embargod", 0o755),
        ("usr/bin/embargoctl", 0o755),
        ("lib/systemd/system/embargod.service", 0o644),
        ("etc/embargo/agent.toml", 0o644),
        ("var/lib/embargo", 0o700),
        ("etc/embargo", 0o755),
        ("usr/share/man/man8/embargod.8.gz", 0o644),
        ("usr/share/man/man8/embargoctl.8.gz", 0o644),
        ("usr/share/man/man5/agent.toml.5.gz", 0o644),
        ("usr/share/bash-completion/completions/embargoctl", 0o644),
        ("usr/share/doc/embargo-agent/changelog.Debian.gz", 0o644),
        ("usr/share/doc/embargo-agent/copyright", 0o644),
    ] {
        assert_eq!(mode(&root.join(p)), m, "{p}");
    }
    // deb-systemd-helper enabled the unit inside the throwaway root (no systemd runs there).
    let wants = root.join("etc/systemd/system/multi-user.target.wants/embargod.service");
    assert!(wants.symlink_metadata().is_ok(), "embargod.service is not enabled in the root");
    let status = run(dpkg(&root).args(["-s", "embargo-agent"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(status.contains("/etc/embargo/agent.toml"), "agent.toml is a conffile: {status}");
    // The packaged binary runs, and refuses to start without a trust anchor.
    let out = Command::new(root.join("usr/bin/embargod"))
        .args(["--config", root.join("etc/embargo/agent.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("trust anchor"), "{}", String::from_utf8_lossy(&out.stderr));

    // State placed by a running agent, and an admin's edit of the config.
    let state = root.join("var/lib/embargo");
    std::fs::create_dir_all(state.join("quarantine")).unwrap();
    std::fs::create_dir_all(state.join("trust")).unwrap();
    std::fs::write(state.join("quarantine/q1.bin"), "quarantined bytes").unwrap();
    std::fs::write(state.join("quarantine/q1.json"), "{\"id\":\"q1\"}").unwrap();
    std::fs::write(state.join("trust/trust.json"), "{\"schema_version\":1}").unwrap();
    let cfg = root.join("etc/embargo/agent.toml");
    let edited = std::fs::read_to_string(&cfg).unwrap().replace("policy.example.invalid", "policy.gov.example");
    std::fs::write(&cfg, &edited).unwrap();

    // Upgrade to the next build: state and the edit survive.
    run(dpkg(&root).arg("-i").arg(second));
    let status = run(dpkg(&root).args(["-s", "embargo-agent"]));
    let second_version = second.file_name().unwrap().to_str().unwrap().split('_').nth(1).unwrap().to_owned();
    assert!(status.contains(&format!("Version: {second_version}")), "{status}");
    assert_eq!(std::fs::read_to_string(state.join("quarantine/q1.bin")).unwrap(), "quarantined bytes");
    assert!(state.join("quarantine/q1.json").exists() && state.join("trust/trust.json").exists());
    assert_eq!(mode(&state), 0o700);
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), edited, "conffile edit kept");

    // Remove keeps state; purge removes it.
    run(dpkg(&root).args(["-r", "embargo-agent"]));
    assert!(!root.join("usr/bin/embargod").exists());
    assert!(state.join("trust/trust.json").exists(), "remove keeps state");
    run(dpkg(&root).args(["--purge", "embargo-agent"]));
    assert!(!state.exists(), "purge removes state");
    assert!(wants.symlink_metadata().is_err(), "purge leaves the unit enabled");
    assert!(!cfg.exists(), "purge removes the conffile");
    let listed =
        Command::new("dpkg").arg(format!("--root={}", root.display())).args(["-l", "embargo-agent"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("ii  embargo-agent"));
}

#[test]
fn the_rpm_installs_and_erases_in_a_throwaway_root() {
    let rpms: Vec<PathBuf> = find(&target_dir().join("packages"), "embargo-agent-", ".rpm")
        .into_iter()
        .filter(|p| !p.to_str().unwrap().contains("-debuginfo-"))
        .collect();
    if rpms.is_empty() && skip("needs embargo-agent .rpm in target/packages (packaging/build.sh)") {
        return;
    }
    if !need(&["rpm"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let r = format!("--root={}", root.display());
    run(Command::new("rpm").args([r.as_str(), "--initdb"]));
    // The throwaway root has no shell, so the scriptlets (which need one) are not run here; they
    // are plain sh (packaging/rpm/*.sh). Dependencies (libc) are not in the empty root either.
    run(Command::new("rpm").args([r.as_str(), "-i", "--nodeps", "--noscripts"]).arg(&rpms[rpms.len() - 1]));
    let q = run(Command::new("rpm").args([r.as_str(), "-q", "embargo-agent"]));
    assert!(q.starts_with("embargo-agent-"), "{q}");
    for (p, m) in [
        ("usr/bin/embargod", 0o755),
        ("usr/bin/embargoctl", 0o755),
        ("usr/lib/systemd/system/embargod.service", 0o644),
        ("etc/embargo/agent.toml", 0o644),
        ("usr/lib/systemd/system-preset/80-embargo-agent.preset", 0o644),
        ("usr/share/man/man8/embargod.8.gz", 0o644),
        ("usr/share/man/man5/agent.toml.5.gz", 0o644),
        ("usr/share/zsh/site-functions/_embargoctl", 0o644),
    ] {
        assert_eq!(mode(&root.join(p)), m, "{p}");
    }
    let configs = run(Command::new("rpm").args([r.as_str(), "-qc", "embargo-agent"]));
    assert!(configs.contains("/etc/embargo/agent.toml"), "{configs}");
    let scripts = run(Command::new("rpm").args([r.as_str(), "-q", "--scripts", "embargo-agent"]));
    assert!(scripts.contains("install -d -m 0700 /var/lib/embargo"), "{scripts}");
    run(Command::new("rpm").args([r.as_str(), "-e", "--noscripts", "embargo-agent"]));
    assert!(!root.join("usr/bin/embargod").exists());
    let q = Command::new("rpm").args([r.as_str(), "-q", "embargo-agent"]).output().unwrap();
    assert!(!q.status.success());
}

#[test]
fn systemd_analyze_accepts_the_unit() {
    if !need(&["systemd-analyze"]) {
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/embargod.service");
    let text = std::fs::read_to_string(&src).unwrap();
    // Verify checks that ExecStart= exists; point it at the binary this test run built.
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("embargod.service");
    std::fs::write(&unit, text.replace("/usr/bin/embargod", bin("embargod").to_str().unwrap())).unwrap();
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{err}");
    assert!(!err.contains("Unknown") && !err.contains("unknown") && !err.contains("Failed"), "warnings:\n{err}");
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "RestartPreventExitStatus=64",
        "OOMScoreAdjust=-500",
        "NoNewPrivileges=yes",
        "MemoryDenyWriteExecute=yes",
        "CapabilityBoundingSet=",
        "RuntimeDirectory=embargo",
        "StateDirectory=embargo",
    ] {
        assert!(text.contains(key), "unit lacks {key}");
    }
}

#[test]
fn the_packaged_default_config_parses() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config/agent.toml");
    let out = Command::new(bin("embargod")).args(["--config", src.to_str().unwrap()]).output().unwrap();
    // It parses (no line-numbered error); what stops it is the absent trust anchor.
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trust anchor") && err.contains("/etc/embargo/root.json"), "{err}");
}

/// What `--help` shows at one level: the subcommands under "Commands:" and every option and
/// positional value name under the other headings ("Options:", "Arguments:", custom ones).
#[derive(Debug, Default)]
struct Help {
    subcommands: Vec<String>,
    options: Vec<String>,
}

fn help_of(bin: &Path, path: &[String]) -> Help {
    let out = run(Command::new(bin).args(path).arg("--help"));
    let mut help = Help::default();
    let mut heading = String::new();
    for line in out.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            heading = line.trim_end_matches(':').to_owned();
            continue;
        }
        let Some(item) = line.strip_prefix("  ") else { continue };
        // Continuation lines of a wrapped description are indented further than items.
        let continued = item.starts_with(' ');
        // The item is everything before the two spaces that start its description.
        let item = item.trim_start().split("  ").next().unwrap_or("");
        if item.is_empty() || heading.starts_with("Usage") {
            continue;
        }
        if heading == "Commands" {
            if !continued {
                help.subcommands.push(item.split([' ', ',']).next().unwrap().to_owned());
            }
        } else if item.starts_with(['-', '<', '[']) {
            for word in item.split([' ', ',', '=', '[', ']']).filter(|w| !w.is_empty()) {
                let word = word.trim_end_matches("...");
                // A lone `-` is a list bullet in a description ("Possible values: - amapi: …").
                if (word.starts_with('-') && word != "-") || word.starts_with('<') {
                    help.options.push(word.to_owned());
                }
            }
        }
    }
    help
}

/// The page as `man -l` renders it (plain text, wide, no hyphenation), failing on any warning.
fn render_man(page: &Path) -> String {
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANWIDTH", "200")
        .env("MAN_KEEP_FORMATTING", "")
        .env("MANROFFOPT", "-rHY=0")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "man -l {}: {err}", page.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The part of a rendered page from the heading line `from` to the next line that is a heading
/// of `headings` (indented subsection headings included).
fn page_section<'a>(text: &'a str, from: &str, headings: &[String]) -> &'a str {
    let start = text
        .lines()
        .find(|l| l.trim() == from)
        .map(|l| l.as_ptr() as usize - text.as_ptr() as usize)
        .unwrap_or_else(|| panic!("the page has no heading {from:?}:\n{text}"));
    let rest = &text[start..];
    let mut end = rest.len();
    let mut offset = 0;
    for (i, line) in rest.split_inclusive('\n').enumerate() {
        let t = line.trim();
        if i > 0 && t != from && headings.iter().any(|h| h == t) {
            end = offset;
            break;
        }
        offset += line.len();
    }
    &rest[..end]
}

/// Walks `bin --help` and every `bin SUB... --help`, checking that the man page names each
/// subcommand (as a "bin sub" heading) and, in that subcommand's part of the page, each option.
fn check_page_against_help(bin: &Path, page: &Path) {
    let name = bin.file_name().unwrap().to_str().unwrap().to_owned();
    let text = render_man(page);
    // Every heading a part of the page may end at: the top-level sections, and each subcommand.
    let mut headings: Vec<String> =
        text.lines().filter(|l| !l.starts_with(' ') && !l.trim().is_empty()).map(|l| l.trim().to_owned()).collect();
    let mut queue = vec![Vec::<String>::new()];
    let mut checked = 0;
    while let Some(path) = queue.pop() {
        let help = help_of(bin, &path);
        let here = std::iter::once(name.clone()).chain(path.iter().cloned()).collect::<Vec<_>>().join(" ");
        for sub in &help.subcommands {
            let full = format!("{here} {sub}");
            assert!(text.lines().any(|l| l.trim() == full), "{}: no section for `{full}`", page.display());
            headings.push(full);
            if sub != "help" {
                queue.push(path.iter().cloned().chain([sub.clone()]).collect());
            }
        }
        let part = if path.is_empty() {
            page_section(&text, "OPTIONS", &headings)
        } else {
            page_section(&text, &here, &headings)
        };
        for opt in &help.options {
            assert!(
                part.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']').any(|w| w == opt.as_str()),
                "{}: `{here}` shows {opt} in --help, its part of the page does not:\n{part}",
                page.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 2, "{name}: only {checked} options found in --help: the parser is broken");
}

#[test]
fn the_man_pages_name_every_subcommand_and_option_the_packaged_binaries_show() {
    let dir = target_dir().join("packages");
    let (agent, admin) = (find(&dir, "embargo-agent_", ".deb"), find(&dir, "embargo-admin_", ".deb"));
    if (agent.is_empty() || admin.is_empty())
        && skip("needs the embargo-agent and embargo-admin .deb in target/packages (packaging/build.sh)")
    {
        return;
    }
    if !need(&["dpkg-deb", "man"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for deb in [&agent[agent.len() - 1], &admin[admin.len() - 1]] {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(tmp.path()));
    }
    let root = tmp.path();
    for (bin, page) in [
        ("embargod", "man8/embargod.8.gz"),
        ("embargoctl", "man8/embargoctl.8.gz"),
        ("embargo-policy", "man1/embargo-policy.1.gz"),
        ("embargo-server", "man8/embargo-server.8.gz"),
    ] {
        check_page_against_help(&root.join("usr/bin").join(bin), &root.join("usr/share/man").join(page));
        // Completions for the three shells, each knowing the binary's subcommands.
        let help = help_of(&root.join("usr/bin").join(bin), &[]);
        for completion in [
            format!("usr/share/bash-completion/completions/{bin}"),
            format!("usr/share/zsh/vendor-completions/_{bin}"),
            format!("usr/share/fish/vendor_completions.d/{bin}.fish"),
        ] {
            let text = std::fs::read_to_string(root.join(&completion)).unwrap_or_else(|e| panic!("{completion}: {e}"));
            for sub in &help.subcommands {
                assert!(text.contains(sub.as_str()), "{completion} does not complete `{bin} {sub}`");
            }
        }
    }
    // agent.toml(5): every documented key, rendered.
    let text = render_man(&root.join("usr/share/man/man5/agent.toml.5.gz"));
    for section in embargo_agent::config_doc::SECTIONS {
        for key in section.keys {
            assert!(text.contains(&format!("{} = ", key.name)), "agent.toml(5) lacks {}:\n{text}", key.name);
        }
    }
}

#[test]
fn the_man_page_check_fails_on_a_page_that_lacks_the_binarys_commands() {
    let dir = target_dir().join("packages");
    let agent = find(&dir, "embargo-agent_", ".deb");
    if agent.is_empty() && skip("needs the embargo-agent .deb in target/packages (packaging/build.sh)") {
        return;
    }
    if !need(&["dpkg-deb", "man"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(&agent[agent.len() - 1]).arg(tmp.path()));
    // embargod's page against embargoctl's --help: its subcommands are nowhere on that page.
    let (bin, page) = (tmp.path().join("usr/bin/embargoctl"), tmp.path().join("usr/share/man/man8/embargod.8.gz"));
    let caught = std::panic::catch_unwind(|| check_page_against_help(&bin, &page));
    let message = caught.expect_err("a page without embargoctl's subcommands passed the check");
    let text = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("no section for `embargoctl status`"), "{text}");
}

/// Section names of an ELF file, from readelf.
fn elf_sections(file: &Path) -> String {
    run(Command::new("readelf").arg("--section-headers").arg("--wide").arg(file))
}

#[test]
fn the_packaged_binaries_are_stripped_with_their_debug_info_in_the_debug_packages() {
    let dir = target_dir().join("packages");
    let debs = find(&dir, "embargo-agent_", ".deb");
    let ddebs = find(&dir, "embargo-agent-dbgsym_", ".ddeb");
    let rpms: Vec<PathBuf> = find(&dir, "embargo-agent-", ".rpm")
        .into_iter()
        .filter(|p| !p.to_str().unwrap().contains("-debuginfo-"))
        .collect();
    if (debs.is_empty() || ddebs.is_empty() || rpms.is_empty())
        && skip("needs the .deb, .ddeb and .rpm packages in target/packages (packaging/build.sh)")
    {
        return;
    }
    if !need(&["dpkg-deb", "readelf", "rpm2cpio", "cpio"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let deb_root = tmp.path().join("deb");
    for deb in [&debs[debs.len() - 1], &ddebs[ddebs.len() - 1]] {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&deb_root));
    }
    let rpm_root = tmp.path().join("rpm");
    std::fs::create_dir_all(&rpm_root).unwrap();
    let debuginfo = find(&dir, "embargo-agent-debuginfo-", ".rpm");
    for rpm in [&rpms[rpms.len() - 1], &debuginfo[debuginfo.len() - 1]] {
        let cpio = run(Command::new("sh").arg("-c").arg(format!(
            "rpm2cpio '{}' | (cd '{}' && cpio -idm --quiet) && echo ok",
            rpm.display(),
            rpm_root.display()
        )));
        assert!(cpio.contains("ok"));
    }
    for root in [&deb_root, &rpm_root] {
        for bin in ["embargod", "embargoctl"] {
            let path = root.join("usr/bin").join(bin);
            let sections = elf_sections(&path);
            assert!(
                !sections.contains(".debug_info") && !sections.contains(".symtab"),
                "{} is not stripped",
                path.display()
            );
            eprintln!("{}: {} bytes", path.display(), std::fs::metadata(&path).unwrap().len());
        }
    }
    // The debug info is somewhere in the debug packages: .build-id files (ddeb), <bin>.debug (rpm).
    let debug_files = |root: &Path| -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut dirs = vec![root.join("usr/lib/debug")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().unwrap().is_dir() {
                    dirs.push(e.path());
                } else if e.path().extension().is_some_and(|x| x == "debug") {
                    out.push(e.path());
                }
            }
        }
        out
    };
    for root in [&deb_root, &rpm_root] {
        let files = debug_files(root);
        assert!(files.len() >= 2, "{}: debug files {files:?}", root.display());
        for f in files {
            assert!(elf_sections(&f).contains(".debug_line"), "{} has no line tables", f.display());
        }
    }
}
