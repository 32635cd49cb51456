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
    ] {
        assert_eq!(mode(&root.join(p)), m, "{p}");
    }
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
    assert!(!cfg.exists(), "purge removes the conffile");
    let listed =
        Command::new("dpkg").arg(format!("--root={}", root.display())).args(["-l", "embargo-agent"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("ii  embargo-agent"));
}

#[test]
fn the_rpm_installs_and_erases_in_a_throwaway_root() {
    let rpms = find(&target_dir().join("packages"), "embargo-agent-", ".rpm");
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
