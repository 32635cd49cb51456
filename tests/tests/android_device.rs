//! The `android` package manager end to end on a simulated device tree: `data/system/packages.xml`
//! (Android Binary XML, written with the agent's ABX writer in the layout `PackageManagerService`
//! writes), `data/app/~~…/PKG-…/base.apk` code directories, the real embargo-server, embargod
//! and embargoctl.
//!
//! Android's `cmd` (and `pm`) cannot run here: they talk to the `package` system service over
//! binder. The test puts a stand-in `cmd` first on embargod's `PATH` (the agent finds `cmd` on
//! `PATH`, as it finds dpkg and rpm; on a device init's `PATH` holds `/system/bin`): a wrapper that
//! sources `agent/tests/fixtures/android/cmd-standin.sh`, the script `packaging/android/check.sh`
//! also runs for the aarch64 build. The stand-in records its argument list and applies the change
//! to the simulated tree: `package uninstall --user all PKG` renames a packages.xml without `PKG`
//! into place (prepared by the test, as `ResilientAtomicFile` renames the new file) and deletes the
//! code directory; `package suspend --user U --dialogMessage MSG PKG` and `package unsuspend --user
//! U PKG` rename user U's `package-restrictions.xml` with the app suspended by `root` (or not) into
//! place (prepared by the test in ABX, as Android writes it) and print what `runSuspend` prints;
//! anything else fails. The recorded argument lists are checked against AOSP's
//! `PackageManagerShellCommand` usage (docs/android.md, "PackageManager (what is done)").

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use embargo_agent::android::{self, abx::AbxWriter, xml::Value};
use embargo_e2e::*;

const WAIT: Duration = Duration::from_secs(20);

/// (package name, code path, version code, ApplicationInfo flags)
type Pkg = (&'static str, &'static str, i64, i32);

const SYSTEM: Pkg = ("com.tencent.soter.soterserver", "/system/priv-app/SoterService", 3, 1);
const ALLOWED: Pkg = ("org.example.maps", "/data/app/~~bWFwcw==/org.example.maps-Zm9vYmFy==", 120, 0);
const BANNED: Pkg = ("com.tencent.mm", "/data/app/~~d2VjaGF0/com.tencent.mm-YmFubmVk==", 2_480, 0);

fn packages_abx(pkgs: &[Pkg]) -> Vec<u8> {
    let mut w = AbxWriter::new();
    w.start("packages");
    w.start("version").attr("sdkVersion", &Value::Int(34)).end("version");
    for (name, code, version, flags) in pkgs {
        w.start("package")
            .attr("name", &Value::Str((*name).into()))
            .attr("codePath", &Value::Str((*code).into()))
            .attr("version", &Value::Long(*version))
            .attr("flags", &Value::Int(*flags))
            .end("package");
    }
    w.end("packages");
    w.finish()
}

fn installed_names(tree: &Path) -> Vec<String> {
    let bytes = std::fs::read(tree.join("data/system/packages.xml")).unwrap();
    android::read_packages(&bytes).unwrap().packages.into_keys().collect()
}

/// The argument lists the stand-in recorded, one per call.
fn calls(log: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.split_terminator("--\n").map(|c| c.lines().map(str::to_owned).collect()).collect()
}

/// The simulated device tree with `installed` in its packages.xml, and the stand-in `cmd`
/// (uninstall: renames a prepared packages.xml without the package into place and deletes its
/// code directory; install-abandon: deletes the staging directory). Returns the tree, the
/// stand-in's log and a PATH with the stand-in first.
fn device_tree(work: &Path, installed: &[Pkg]) -> (PathBuf, PathBuf, String) {
    let tree = work.join("device");
    let after = work.join("after");
    std::fs::create_dir_all(tree.join("data/system")).unwrap();
    std::fs::create_dir_all(&after).unwrap();
    for (_, code, _, _) in [ALLOWED, BANNED] {
        let dir = tree.join(code.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        // Not read by the package source (identity comes from packages.xml).
        std::fs::write(dir.join("base.apk"), b"PK\x05\x06").unwrap();
    }
    std::fs::write(tree.join("data/system/packages.xml"), packages_abx(installed)).unwrap();
    // What packages.xml is after each uninstall the stand-in may be asked for.
    std::fs::write(after.join(format!("{}.xml", BANNED.0)), packages_abx(&[SYSTEM, ALLOWED])).unwrap();
    std::fs::write(after.join(format!("{}.xml", ALLOWED.0)), packages_abx(&[SYSTEM, BANNED])).unwrap();

    let bin_dir = work.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let log = work.join("cmd.log");
    // The stand-in lives in a file shared with packaging/android/check.sh (which runs it for the
    // aarch64 build under qemu); this wrapper gives it the paths and sources it.
    let standin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/fixtures/android/cmd-standin.sh");
    let script = format!(
        "#!/bin/sh\n# Stand-in for Android's cmd (see the test file's header).\nlog='{log}' tree='{tree}' after='{after}'\n. '{standin}'\n",
        log = log.display(),
        tree = tree.display(),
        after = after.display(),
        standin = standin.display(),
    );
    std::fs::write(bin_dir.join("cmd"), script).unwrap();
    std::fs::set_permissions(bin_dir.join("cmd"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The stand-in comes first on embargod's PATH.
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());

    (tree, log, path)
}

const POLICY: &str = "expires = \"30d\"\n[[rule]]\nid = \"tencent\"\naction = \"remove\"\n\
                      [[rule.match]]\nkind = \"android\"\nid = \"com.tencent.*\"\n";

/// A device whose agent watches `tree` as an android root with `path` as its PATH. Started
/// without the android root, then restarted with it and the stand-in on PATH (the first agent
/// has no android root, so it never looks for `cmd`).
fn device(tree: &Path, path: String) -> Device {
    device_with(tree, path, POLICY, "enforce")
}

fn device_with(tree: &Path, path: String, policy: &str, mode: &str) -> Device {
    let mut dev = Device::new(policy);
    dev.agent_env = vec![("PATH".into(), path)];
    let extra = format!("\n[[watch]]\nkind = \"android\"\npaths = [\"{}\"]\n", tree.display());
    let mode = format!("mode = \"{mode}\"");
    dev.reconfigure(|text| text.replacen("mode = \"enforce\"", &mode, 1) + &extra);
    dev
}

#[test]
fn the_agent_uninstalls_a_banned_app_through_cmd_and_leaves_system_and_allowed_apps() {
    let work = tempfile::tempdir().unwrap();
    let (tree, log, path) = device_tree(work.path(), &[SYSTEM, ALLOWED, BANNED]);
    // Every Tencent package is banned: the system one must be left alone all the same.
    let dev = device(&tree, path);
    let removed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually("the banned app uninstalled", WAIT, || {
            (installed_names(&tree) == [SYSTEM.0, ALLOWED.0].map(str::to_owned)).then_some(())
        })
    }));
    if removed.is_err() {
        let agent_log = std::fs::read_to_string(dev.tmp.path().join("embargod.log")).unwrap_or_default();
        panic!("not uninstalled; cmd calls {:?}; embargod's log:\n{agent_log}", calls(&log));
    }
    assert!(!tree.join(BANNED.1.trim_start_matches('/')).exists());
    assert!(tree.join(ALLOWED.1.trim_start_matches('/')).join("base.apk").exists());
    // The agent read the new packages.xml (two apps), and ran nothing else.
    eventually("the agent to see two apps", WAIT, || {
        dev.status()?["sources"].as_array()?.iter().any(|s| s["kind"] == "android" && s["apps_seen"] == 2).then_some(())
    });
    // AOSP `PackageManagerShellCommand.runUninstall`: options (`--user all` = USER_ALL, all
    // users) then exactly one positional, the package (a second would name a split).
    assert_eq!(calls(&log), vec![vec!["package", "uninstall", "--user", "all", BANNED.0]]);
    assert_eq!(calls(&log)[0], android::cmd::uninstall(BANNED.0));
}

#[test]
fn a_banned_apk_staged_for_install_gets_its_session_abandoned() {
    if !need(&["aapt"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (tree, log, path) = device_tree(work.path(), &[SYSTEM, ALLOWED]);
    let dev = device(&tree, path);
    eventually("the agent to see two apps", WAIT, || {
        dev.status()?["sources"].as_array()?.iter().any(|s| s["kind"] == "android" && s["apps_seen"] == 2).then_some(())
    });
    // A WeChat APK built by aapt (unsigned: the id rule needs only the manifest), staged the
    // way PackageInstaller stages a session: `data/app/vmdl<SESSION>.tmp/base.apk`. The
    // directory is renamed into place whole so the test does not depend on when the agent's
    // watch on the new directory starts.
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("AndroidManifest.xml"),
        "<manifest xmlns:android=\"http://schemas.android.com/apk/res/android\" package=\"com.tencent.mm\">\n  <application/>\n</manifest>\n",
    )
    .unwrap();
    let session = work.path().join("vmdl1234567.tmp");
    std::fs::create_dir_all(&session).unwrap();
    let out = std::process::Command::new("aapt")
        .args(["package", "-f", "-M"])
        .arg(src.join("AndroidManifest.xml"))
        .arg("-F")
        .arg(session.join("base.apk"))
        .output()
        .unwrap();
    assert!(out.status.success(), "aapt: {}", String::from_utf8_lossy(&out.stderr));
    let staged = tree.join("data/app/vmdl1234567.tmp");
    std::fs::rename(&session, &staged).unwrap();
    eventually("the staged session abandoned", WAIT, || gone_dir(&staged));
    // AOSP `install-abandon` (alias `install-destroy`): the session id, nothing else.
    assert_eq!(calls(&log), vec![vec!["package", "install-abandon", "1234567"]]);
    assert_eq!(calls(&log)[0], android::cmd::install_abandon(1_234_567));
    assert_eq!(installed_names(&tree), [SYSTEM.0, ALLOWED.0].map(str::to_owned), "nothing uninstalled");
}

fn gone_dir(p: &Path) -> Option<()> {
    (!p.exists()).then_some(())
}

/// One user's `package-restrictions.xml` in ABX (as `Settings.writePackageRestrictionsLPr`
/// writes it): the banned app installed or not, suspended by `root` (`cmd package suspend` run
/// as uid 0) or not, and the allowed app in its default state.
fn restrictions_abx(installed: bool, suspended_by_root: bool) -> Vec<u8> {
    let mut w = AbxWriter::new();
    w.start("package-restrictions");
    w.start("pkg").attr("name", &Value::Str(BANNED.0.into())).attr("ceDataInode", &Value::Long(81_234));
    if !installed {
        w.attr("inst", &Value::Bool(false));
    }
    if suspended_by_root {
        w.attr("suspended", &Value::Bool(true));
        w.start("suspend-params").attr("suspending-package", &Value::Str("root".into()));
        w.start("dialog-info").attr("message", &Value::Str("x".into())).end("dialog-info");
        w.end("suspend-params");
    }
    w.end("pkg");
    w.start("pkg").attr("name", &Value::Str(ALLOWED.0.into())).attr("stopped", &Value::Bool(true)).end("pkg");
    w.start("preferred-activities").end("preferred-activities");
    w.end("package-restrictions");
    w.finish()
}

/// Users of the simulated device: (user id, has the banned app, already suspended by root).
/// Writes each user's file and the two states the stand-in switches between.
fn add_users(work: &Path, tree: &Path, users: &[(u32, bool, bool)]) {
    for &(u, installed, suspended) in users {
        let dir = tree.join(format!("data/system/users/{u}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("package-restrictions.xml"), restrictions_abx(installed, suspended)).unwrap();
        if installed {
            let after = work.join(format!("after/restrictions/{u}"));
            std::fs::create_dir_all(&after).unwrap();
            std::fs::write(after.join("suspended.xml"), restrictions_abx(true, true)).unwrap();
            std::fs::write(after.join("unsuspended.xml"), restrictions_abx(true, false)).unwrap();
        }
    }
}

/// Whether user `u` of the tree has the banned app suspended by root.
fn suspended_for(tree: &Path, u: u32) -> bool {
    let bytes = std::fs::read(tree.join(format!("data/system/users/{u}/package-restrictions.xml"))).unwrap();
    android::read_package_restrictions(&bytes).unwrap().get(BANNED.0).is_some_and(|s| s.suspended_by("root"))
}

const QUARANTINE_POLICY: &str = "expires = \"30d\"\n[[rule]]\nid = \"tencent\"\naction = \"quarantine\"\n\
                                 [[rule.match]]\nkind = \"android\"\nid = \"com.tencent.*\"\n";

fn suspend_argv(user: u32) -> Vec<String> {
    android::cmd::suspend(BANNED.0, user, &embargo_agent::source::android::suspend_message("tencent"))
}

/// The audit log's action records for `app_id`, as `embargoctl events --json` shows them.
fn actions_for(dev: &Device, app_id: &str) -> Vec<serde_json::Value> {
    // One JSON entry per line.
    let out = dev.ctl(&["events", "--json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"]["type"] == "action" && e["event"]["record"]["app_id"] == app_id)
        .map(|e| e["event"].clone())
        .collect()
}

fn agent_log(dev: &Device) -> String {
    std::fs::read_to_string(dev.tmp.path().join("embargod.log")).unwrap_or_default()
}

#[test]
fn a_quarantined_app_is_suspended_for_each_user_who_has_it_and_restore_unsuspends_it() {
    let work = tempfile::tempdir().unwrap();
    let (tree, log, path) = device_tree(work.path(), &[SYSTEM, ALLOWED, BANNED]);
    // User 0 and 10 have it; 11 does not (`inst=false`); 12 has it already suspended by root
    // (not by the agent: no entry of ours lists it).
    add_users(work.path(), &tree, &[(0, true, false), (10, true, false), (11, false, false), (12, true, true)]);
    let mut dev = device_with(&tree, path, QUARANTINE_POLICY, "enforce");
    let entry = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually("a suspension entry in the quarantine list", WAIT, || {
            dev.quarantine_list()
                .into_iter()
                .find(|m| m["suspension"]["state"] == "suspended" && m["suspension"]["package"] == BANNED.0)
        })
    }))
    .unwrap_or_else(|_| panic!("no suspension; cmd calls {:?}; embargod's log:\n{}", calls(&log), agent_log(&dev)));
    assert_eq!(entry["suspension"]["users"], serde_json::json!([0, 10]));
    assert_eq!((entry["rule"].as_str(), entry["app_kind"].as_str()), (Some("tencent"), Some("android")));
    assert!(suspended_for(&tree, 0) && suspended_for(&tree, 10), "the stand-in applied both");
    // AOSP `runSuspend`: options `--user U` (one user: `all` is not accepted there) and
    // `--dialogMessage MSG` (one argument: no shell), then the package; one call per user that
    // has the app and is not suspended by root already. Nothing for user 11 or 12, nothing for
    // the system app that the same rule matches, no uninstall.
    assert_eq!(calls(&log), vec![suspend_argv(0), suspend_argv(10)]);
    assert_eq!(calls(&log)[0][..5], ["package", "suspend", "--user", "0", "--dialogMessage"]);
    eventually("the system app recorded as protected", WAIT, || {
        actions_for(&dev, SYSTEM.0)
            .iter()
            .any(|a| a["record"]["result"].as_str().is_some_and(|r| r.starts_with("protected")))
            .then_some(())
    });
    assert_eq!(installed_names(&tree), [BANNED.0, SYSTEM.0, ALLOWED.0].map(str::to_owned), "nothing uninstalled");
    let id = entry["id"].as_str().unwrap().to_owned();
    // The text list names it as a suspension.
    let text = String::from_utf8(dev.ctl(&["quarantine", "list"]).stdout).unwrap();
    assert!(text.contains(&format!("suspended {} for users 0,10", BANNED.0)), "{text}");
    // Purge refuses while the app is installed (it would have to uninstall it).
    let out = dev.ctl(&["quarantine", "purge", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("still installed"), "{out:?}");
    // Restore: AOSP `unsuspend --user U PKG` for each user the entry lists.
    let out = dev.ctl(&["quarantine", "restore", &id]);
    assert!(out.status.success(), "restore: {out:?}\n{}", agent_log(&dev));
    assert_eq!(calls(&log)[2..], [android::cmd::unsuspend(BANNED.0, 0), android::cmd::unsuspend(BANNED.0, 10)]);
    assert!(!suspended_for(&tree, 0) && !suspended_for(&tree, 10));
    assert!(suspended_for(&tree, 12), "another suspension is not the agent's to lift");
    assert!(dev.quarantine_list().is_empty());
    // The restore holds across a restart and later reads (the app at that version is exempt
    // until the policy changes): another banned app installed afterwards is suspended, this one
    // is not again (both are decided on the same read of packages.xml).
    dev.stop_agent();
    dev.start_agent();
    const WEWORK: Pkg = ("com.tencent.wework", "/data/app/~~d2V3b3Jr/com.tencent.wework-eHl6==", 100, 0);
    let next = tree.join("data/system/packages.xml.new");
    std::fs::write(&next, packages_abx(&[SYSTEM, ALLOWED, BANNED, WEWORK])).unwrap();
    std::fs::rename(&next, tree.join("data/system/packages.xml")).unwrap();
    eventually("the other banned app suspended", WAIT, || {
        calls(&log).iter().any(|c| c.last().map(String::as_str) == Some(WEWORK.0)).then_some(())
    });
    let again: Vec<_> =
        calls(&log)[4..].iter().filter(|c| c.last().map(String::as_str) == Some(BANNED.0)).cloned().collect();
    assert!(again.is_empty(), "the restored app was suspended again: {again:?}");
}

#[test]
fn a_kill_between_the_suspend_and_the_entry_leaves_an_entry_that_restore_undoes() {
    let work = tempfile::tempdir().unwrap();
    let (tree, log, path) = device_tree(work.path(), &[SYSTEM, ALLOWED]);
    add_users(work.path(), &tree, &[(0, true, false)]);
    let mut dev = device_with(&tree, path, QUARANTINE_POLICY, "enforce");
    eventually("the agent to see two apps", WAIT, || {
        dev.status()?["sources"].as_array()?.iter().any(|s| s["kind"] == "android" && s["apps_seen"] == 2).then_some(())
    });
    // The stand-in kills embargod (kill -9) right after the suspend took effect, before the
    // agent hears the result. Then the banned app is installed (packages.xml renamed into
    // place, as `ResilientAtomicFile` does).
    std::fs::write(work.path().join("after/kill-after-suspend"), "").unwrap();
    let next = tree.join("data/system/packages.xml.new");
    std::fs::write(&next, packages_abx(&[SYSTEM, ALLOWED, BANNED])).unwrap();
    std::fs::rename(&next, tree.join("data/system/packages.xml")).unwrap();
    eventually("the agent killed by the stand-in", WAIT, || dev.status().is_none().then_some(()));
    assert!(suspended_for(&tree, 0));
    // What survives the crash: the entry written before the command ran.
    let store = dev.state.join("quarantine");
    let intents: Vec<serde_json::Value> = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect();
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0]["suspension"]["state"], "intent");
    assert_eq!(intents[0]["suspension"]["users"], serde_json::json!([0]));
    // Restarted, the agent lists it (and does not suspend again).
    dev.start_agent();
    let entry = eventually("the entry listed after the restart", WAIT, || {
        dev.quarantine_list().into_iter().find(|m| m["suspension"]["package"] == BANNED.0)
    });
    let out = dev.ctl(&["quarantine", "restore", entry["id"].as_str().unwrap()]);
    assert!(out.status.success(), "restore: {out:?}\n{}", agent_log(&dev));
    assert!(!suspended_for(&tree, 0), "restore undid the suspension the crash left");
    assert_eq!(calls(&log), vec![suspend_argv(0), android::cmd::unsuspend(BANNED.0, 0)]);
    assert!(dev.quarantine_list().is_empty());
}

#[test]
fn in_monitor_mode_a_quarantine_verdict_on_an_android_app_is_recorded_only() {
    let work = tempfile::tempdir().unwrap();
    let (tree, log, path) = device_tree(work.path(), &[SYSTEM, ALLOWED, BANNED]);
    add_users(work.path(), &tree, &[(0, true, false)]);
    let dev = device_with(&tree, path, QUARANTINE_POLICY, "monitor");
    let recorded = eventually("the verdict recorded", WAIT, || actions_for(&dev, BANNED.0).into_iter().next());
    assert_eq!(recorded["outcome"], "recorded", "{recorded}");
    assert!(calls(&log).is_empty(), "monitor mode ran {:?}", calls(&log));
    assert!(!suspended_for(&tree, 0));
    assert!(dev.quarantine_list().is_empty());
}

#[test]
fn an_apk_written_into_a_staging_dir_after_the_dir_appeared_gets_its_session_abandoned() {
    if !need(&["aapt"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (tree, log, path) = device_tree(work.path(), &[SYSTEM, ALLOWED]);
    let dev = device(&tree, path);
    eventually("the agent to see two apps", WAIT, || {
        dev.status()?["sources"].as_array()?.iter().any(|s| s["kind"] == "android" && s["apps_seen"] == 2).then_some(())
    });
    // PackageInstaller creates the session directory first and streams the APK into it later
    // (`install-write`): the directory is empty when it appears.
    let staged = tree.join("data/app/vmdl7654321.tmp");
    std::fs::create_dir(&staged).unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("AndroidManifest.xml"),
        "<manifest xmlns:android=\"http://schemas.android.com/apk/res/android\" package=\"com.tencent.mm\">\n  <application/>\n</manifest>\n",
    )
    .unwrap();
    let out = std::process::Command::new("aapt")
        .args(["package", "-f", "-M"])
        .arg(src.join("AndroidManifest.xml"))
        .arg("-F")
        .arg(work.path().join("built.apk"))
        .output()
        .unwrap();
    assert!(out.status.success(), "aapt: {}", String::from_utf8_lossy(&out.stderr));
    // Written in place (not renamed in): the agent sees the write in the staging directory.
    std::fs::write(staged.join("base.apk"), std::fs::read(work.path().join("built.apk")).unwrap()).unwrap();
    eventually("the staged session abandoned", WAIT, || gone_dir(&staged));
    assert_eq!(calls(&log), vec![android::cmd::install_abandon(7_654_321)]);
}

#[test]
fn a_hung_cmd_is_killed_after_its_deadline_while_the_agent_keeps_answering() {
    // Takes the 30 s deadline (`source::android::CMD_TIMEOUT`) once.
    let work = tempfile::tempdir().unwrap();
    let (tree, log, path) = device_tree(work.path(), &[SYSTEM, ALLOWED, BANNED]);
    add_users(work.path(), &tree, &[(0, true, false)]);
    std::fs::write(work.path().join("after/hang-suspend"), "").unwrap();
    let dev = device_with(&tree, path, QUARANTINE_POLICY, "enforce");
    let pid_file = work.path().join("after/hung.pid");
    let pid =
        eventually("the suspend to hang", WAIT, || std::fs::read_to_string(&pid_file).ok().filter(|p| !p.is_empty()));
    let pid = pid.trim().to_owned();
    // The command runs on the package worker: the core loop answers meanwhile.
    let t = std::time::Instant::now();
    assert!(dev.status().is_some(), "status while cmd hangs");
    assert!(t.elapsed() < Duration::from_secs(5), "status took {:?} while cmd hangs", t.elapsed());
    let failed = eventually("the hung suspend reported", Duration::from_secs(90), || {
        actions_for(&dev, BANNED.0).into_iter().find(|a| a["outcome"] == "failed")
    });
    let result = failed["record"]["result"].as_str().unwrap_or_default().to_owned();
    assert!(result.contains("did not finish within 30 s; killed"), "{result}");
    // Killed, not left running.
    let alive = || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"));
    eventually("the hung cmd killed", WAIT, || (!alive()).then_some(()));
    // Its outcome is unknown, so the entry keeps the user: restore would undo it.
    let entry = eventually("the entry listed", WAIT, || {
        dev.quarantine_list().into_iter().find(|m| m["suspension"]["package"] == BANNED.0)
    });
    assert_eq!(entry["suspension"]["users"], serde_json::json!([0]));
    assert_eq!(calls(&log), vec![suspend_argv(0)], "not retried");
}
