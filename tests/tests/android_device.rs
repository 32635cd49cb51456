//! The `android` package manager end to end on a simulated device tree: `data/system/packages.xml`
//! (Android Binary XML, written with the agent's ABX writer in the layout `PackageManagerService`
//! writes), `data/app/~~…/PKG-…/base.apk` code directories, the real embargo-server, embargod
//! and embargoctl.
//!
//! Android's `cmd` (and `pm`) cannot run here: they talk to the `package` system service over
//! binder. The test writes a stand-in `cmd` script and puts it first on embargod's `PATH` (the
//! agent finds `cmd` on `PATH`, as it finds dpkg and rpm; on a device init's `PATH` holds
//! `/system/bin`). The stand-in records its argument list and applies the change to the
//! simulated tree: `package uninstall --user all PKG` renames a packages.xml without `PKG` into
//! place (prepared by the test, as `ResilientAtomicFile` renames the new file) and deletes the
//! code directory; anything else fails. The recorded argument lists are checked against AOSP's
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
    let script = format!(
        r#"#!/bin/sh
# Stand-in for Android's cmd (see the test file's header): records the argv, applies the change.
{{ for a in "$@"; do printf '%s\n' "$a"; done; echo --; }} >> '{log}'
tree='{tree}'
if [ "$1" = package ] && [ "$2" = install-abandon ] && [ $# -eq 3 ] && [ -d "$tree/data/app/vmdl$3.tmp" ]; then
  rm -rf "$tree/data/app/vmdl$3.tmp"
  echo Success
  exit 0
fi
if [ "$1" = package ] && [ "$2" = uninstall ] && [ "$3" = --user ] && [ "$4" = all ] && [ $# -eq 5 ]; then
  new='{after}'/"$5".xml
  [ -f "$new" ] || {{ echo "Failure [DELETE_FAILED_INTERNAL_ERROR]"; exit 1; }}
  rm -rf "$tree"/data/app/~~*/"$5"-*
  cp "$new" "$tree/data/system/packages.xml.new" && mv "$tree/data/system/packages.xml.new" "$tree/data/system/packages.xml"
  echo Success
  exit 0
fi
echo "Unknown command: $*" >&2
exit 1
"#,
        log = log.display(),
        tree = tree.display(),
        after = after.display(),
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
    let mut dev = Device::new(POLICY);
    dev.agent_env = vec![("PATH".into(), path)];
    let extra = format!("\n[[watch]]\nkind = \"android\"\npaths = [\"{}\"]\n", tree.display());
    dev.reconfigure(|text| text + &extra);
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
