//! Package-manager installs, end to end with the real tools: .deb packages built with dpkg-deb
//! and installed with the real dpkg into a throwaway root that embargod watches; removal through
//! the real dpkg; installers (.deb, .rpm built with rpmbuild) caught in a download folder.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use embargo_e2e::flatpak::{flatpak, LocalRepo};
use embargo_e2e::*;
use embargo_policy::example::WECHAT_KASPERSKY_TOML;

const WAIT: Duration = Duration::from_secs(20);

/// An empty dpkg database under `root`.
fn dpkg_root(root: &Path) {
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log", "usr/bin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
}

/// A .deb with one executable, `/usr/bin/<name>`.
fn build_deb(dir: &Path, name: &str, version: &str, depends: Option<&str>) -> PathBuf {
    let tree = dir.join(format!("{name}-tree"));
    std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
    let mut control = format!("Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Test <test@example.invalid>\nDescription: {name} for tests\n");
    if let Some(d) = depends {
        control.push_str(&format!("Depends: {d}\n"));
    }
    std::fs::write(tree.join("DEBIAN/control"), control).unwrap();
    let exe = tree.join("usr/bin").join(name);
    std::fs::write(&exe, format!("#!/bin/sh\necho {name}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join(format!("{name}_{version}_all.deb"));
    let o = Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&tree).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn dpkg(root: &Path) -> Command {
    let mut c = Command::new("dpkg");
    c.arg(format!("--root={}", root.display())).args(["--force-script-chrootless", "--force-not-root"]);
    c
}

fn install(root: &Path, debs: &[&Path], frontend_locked: bool) {
    let mut c = dpkg(root);
    if frontend_locked {
        c.env("DPKG_FRONTEND_LOCKED", "1");
    }
    let o = c.arg("-i").args(debs).output().unwrap();
    assert!(o.status.success(), "dpkg -i: {}", String::from_utf8_lossy(&o.stderr));
}

/// dpkg's status of a package (`install ok installed`, …), or `None` if dpkg does not know it.
fn dpkg_status(root: &Path, name: &str) -> Option<String> {
    let o = Command::new("dpkg-query")
        .arg(format!("--root={}", root.display()))
        .args(["-W", "-f=${Status}", name])
        .output()
        .unwrap();
    Some(String::from_utf8_lossy(&o.stdout).into_owned()).filter(|s| o.status.success() && !s.is_empty())
}

fn installed(root: &Path, name: &str) -> bool {
    dpkg_status(root, name).is_some_and(|s| s.ends_with(" installed"))
}

/// Purged: dpkg no longer knows the package at all (or only as not-installed).
fn purged(root: &Path, name: &str) -> bool {
    dpkg_status(root, name).is_none_or(|s| s.ends_with("not-installed"))
}

fn deb_device(root: &Path) -> Device {
    Device::with_config(
        WECHAT_KASPERSKY_TOML,
        "1d",
        &format!("\n[[watch]]\nkind = \"deb\"\npaths = [\"{}\"]\n", root.display()),
    )
}

/// A throwaway dpkg root and a device whose agent watches it; `None` (skipped) without dpkg.
fn deb_setup() -> Option<(tempfile::TempDir, PathBuf, Device)> {
    if !need(&["dpkg", "dpkg-deb", "dpkg-query"]) {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("sysroot");
    dpkg_root(&root);
    let dev = deb_device(&root);
    Some((tmp, root, dev))
}

fn last_result(dev: &Device) -> String {
    dev.status().map(|s| s["enforcement"]["last_actions"].to_string()).unwrap_or_default()
}

#[test]
fn a_banned_deb_installed_with_dpkg_is_purged_with_dpkg() {
    let Some((tmp, root, dev)) = deb_setup() else { return };
    let wechat = build_deb(tmp.path(), "wechat", "4.0.1-1", None);
    let firefox = build_deb(tmp.path(), "firefox-esr", "115.0-1", None);
    install(&root, &[&wechat, &firefox], false);
    eventually("wechat purged by the agent", WAIT, || purged(&root, "wechat").then_some(()));
    assert!(!root.join("usr/bin/wechat").exists());
    assert!(installed(&root, "firefox-esr"), "an allowed package stays");
    let listed =
        Command::new("dpkg").arg(format!("--root={}", root.display())).args(["-l", "wechat"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("ii  wechat"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
    let actions = last_result(&dev);
    assert!(actions.contains("removed by dpkg --purge") && actions.contains("\"app_id\":\"wechat\""), "{actions}");
    let events = String::from_utf8_lossy(&dev.ctl(&["events", "--json"]).stdout).into_owned();
    assert!(events.contains("removed by dpkg --purge"), "{events}");
}

#[test]
fn a_banned_deb_another_package_depends_on_is_not_removed() {
    let Some((tmp, root, dev)) = deb_setup() else { return };
    let wechat = build_deb(tmp.path(), "wechat", "4.0.1-1", None);
    let plugin = build_deb(tmp.path(), "wechat-plugin", "1.0-1", Some("wechat"));
    install(&root, &[&wechat, &plugin], false);
    let actions =
        eventually("needs admin reported", WAIT, || Some(last_result(&dev)).filter(|a| a.contains("needs admin")));
    assert!(actions.contains("other packages depend on wechat"), "{actions}");
    assert!(installed(&root, "wechat") && installed(&root, "wechat-plugin"), "nothing was removed");
    assert!(!root.join("usr/bin/wechat").exists(), "the banned package's executable is quarantined");
    assert!(root.join("usr/bin/wechat-plugin").exists(), "the dependent package is untouched");
    let q = dev.quarantine_list();
    assert!(q.iter().any(|m| m["original_path"].as_str().is_some_and(|p| p.ends_with("/usr/bin/wechat"))), "{q:?}");
}

/// Holds dpkg's frontend lock the way apt does (a POSIX record lock) until dropped.
fn hold_frontend_lock(root: &Path) -> OwnedFd {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let fd = rustix::fs::open(
        root.join("var/lib/dpkg/lock-frontend"),
        OFlags::RDWR | OFlags::CREATE,
        Mode::from_raw_mode(0o640),
    )
    .unwrap();
    rustix::fs::fcntl_lock(&fd, FlockOperation::NonBlockingLockExclusive).unwrap();
    fd
}

#[test]
fn a_package_installed_while_the_lock_is_held_is_removed_after_it_is_released() {
    let Some((tmp, root, dev)) = deb_setup() else { return };
    let wechat = build_deb(tmp.path(), "wechat", "4.0.1-1", None);
    let lock = hold_frontend_lock(&root);
    // Like apt: the frontend lock is held, dpkg runs under it.
    install(&root, &[&wechat], true);
    let s = eventually("the agent to wait for the lock", WAIT, || {
        dev.status().filter(|s| s["daemon"]["reasons"].to_string().contains("waiting for the package manager's lock"))
    });
    assert!(installed(&root, "wechat"), "left alone while the lock is held: {s}");
    drop(lock);
    eventually("wechat purged once the lock is released", WAIT, || purged(&root, "wechat").then_some(()));
}

#[test]
fn banned_installers_in_downloads_are_quarantined_before_anyone_installs_them() {
    if !need(&["dpkg-deb", "rpmbuild", "rpm"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let wechat = build_deb(tmp.path(), "wechat", "4.0.1-1", None);
    let firefox = build_deb(tmp.path(), "firefox-esr", "115.0-1", None);
    let kesl = build_rpm(tmp.path(), "kesl", "11.4.0", None);
    // Renamed into ~/Downloads under names that do not give them away.
    let d_wechat = dev.install("Downloads/installer-a.deb", &std::fs::read(&wechat).unwrap());
    let d_kesl = dev.install("Downloads/security-update.rpm", &std::fs::read(&kesl).unwrap());
    let d_firefox = dev.install("Downloads/browser.deb", &std::fs::read(&firefox).unwrap());
    eventually("the wechat .deb quarantined", WAIT, || (!d_wechat.exists()).then_some(()));
    eventually("the kesl .rpm quarantined", WAIT, || (!d_kesl.exists()).then_some(()));
    let entry = eventually("the allowed .deb seen", WAIT, || dev.inventory_has(&d_firefox));
    assert_eq!(entry["app"]["kind"], "deb");
    assert_eq!(entry["app"]["id"], "firefox-esr");
    assert!(d_firefox.exists());
    let q = dev.quarantine_list();
    let kinds: Vec<(String, String)> = q
        .iter()
        .map(|m| (m["app_kind"].as_str().unwrap().to_owned(), m["app_id"].as_str().unwrap().to_owned()))
        .collect();
    assert!(
        kinds.contains(&("deb".into(), "wechat".into())) && kinds.contains(&("rpm".into(), "kesl".into())),
        "{kinds:?}"
    );
}

/// An rpm with one executable, `/usr/bin/<name>`, built with the real rpmbuild.
fn build_rpm(dir: &Path, name: &str, version: &str, requires: Option<&str>) -> PathBuf {
    let spec = dir.join(format!("{name}.spec"));
    let req = requires.map(|r| format!("Requires: {r}\n")).unwrap_or_default();
    std::fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: {version}\nRelease: 1\nSummary: test\nLicense: none\nBuildArch: noarch\nAutoReqProv: no\n{req}%description\ntest\n%install\nmkdir -p %{{buildroot}}/usr/bin\nprintf 'binary' > %{{buildroot}}/usr/bin/{name}\nchmod 755 %{{buildroot}}/usr/bin/{name}\n%files\n/usr/bin/{name}\n"
        ),
    )
    .unwrap();
    let top = dir.join("rpmbuild");
    let o = Command::new("rpmbuild")
        .args(["-bb", "--define", &format!("_topdir {}", top.display())])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(o.status.success(), "rpmbuild: {}", String::from_utf8_lossy(&o.stderr));
    top.join(format!("RPMS/noarch/{name}-{version}-1.noarch.rpm"))
}

fn rpm_cmd(root: &Path) -> Command {
    let mut c = Command::new("rpm");
    c.arg(format!("--root={}", root.display())).arg("--dbpath=/var/lib/rpm");
    c
}

fn rpm_installed(root: &Path, name: &str) -> bool {
    rpm_cmd(root).args(["-q", name]).output().unwrap().status.success()
}

#[test]
fn a_banned_rpm_is_erased_with_rpm_and_one_another_needs_is_not() {
    if !need(&["rpm", "rpmbuild"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("sysroot");
    std::fs::create_dir_all(root.join("var/lib/rpm")).unwrap();
    let o = rpm_cmd(&root).arg("--initdb").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dev = Device::with_config(
        WECHAT_KASPERSKY_TOML,
        "1d",
        &format!("\n[[watch]]\nkind = \"rpm\"\npaths = [\"{}\"]\n", root.display()),
    );
    // kesl alone: erased. wechat with a package that requires it: left installed, needs admin.
    let kesl = build_rpm(tmp.path(), "kesl", "11.4.0", None);
    let o = rpm_cmd(&root).arg("-i").arg(&kesl).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eventually("kesl erased by the agent", WAIT, || (!rpm_installed(&root, "kesl")).then_some(()));
    assert!(!root.join("usr/bin/kesl").exists());
    // The database says erased as soon as `rpm -e` commits; the agent records the result when
    // the package worker reports back, a moment later.
    eventually("kesl's removal recorded", WAIT, || {
        Some(last_result(&dev)).filter(|a| a.contains("removed by rpm -e") && a.contains("\"app_id\":\"kesl\""))
    });

    let wechat = build_rpm(tmp.path(), "wechat", "4.0.1", None);
    let plugin = build_rpm(tmp.path(), "wechat-plugin", "1.0", Some("wechat"));
    let o = rpm_cmd(&root).arg("-i").arg(&wechat).arg(&plugin).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let actions = eventually("needs admin reported", WAIT, || {
        Some(last_result(&dev)).filter(|a| a.contains("needs admin") && a.contains("wechat"))
    });
    assert!(actions.contains("other packages depend on wechat"), "{actions}");
    assert!(rpm_installed(&root, "wechat") && rpm_installed(&root, "wechat-plugin"));
    assert!(!root.join("usr/bin/wechat").exists(), "the banned package's executable is quarantined");
    assert!(root.join("usr/bin/wechat-plugin").exists());
    let inv = String::from_utf8_lossy(&dev.ctl(&["inventory", "--json"]).stdout).into_owned();
    assert!(inv.contains("\"kind\":\"rpm\"") || inv.contains("\"kind\": \"rpm\""), "{inv}");
}

#[test]
fn a_banned_flatpak_is_uninstalled_with_flatpak() {
    if !need(&["flatpak"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let user_dir = tmp.path().join("flatpak-user");
    // A tiny runtime and two apps, exported into a local repository (offline); the runtime is
    // installed into the watched installation itself (root-owned: root runs flatpak there).
    let repo = LocalRepo::new(tmp.path(), &user_dir);
    repo.add_app("com.tencent.WeChat");
    repo.add_app("org.example.Editor");
    let dev = Device::with_config(
        WECHAT_KASPERSKY_TOML,
        "1d",
        &format!("\n[[watch]]\nkind = \"flatpak\"\npaths = [\"{}\"]\n", user_dir.display()),
    );
    repo.install(&user_dir, &["org.example.Editor//stable"]);
    repo.install(&user_dir, &["com.tencent.WeChat//stable"]);
    let list = || {
        String::from_utf8_lossy(&flatpak(&user_dir, &["list", "--app", "--columns=application"]).stdout).into_owned()
    };
    eventually("WeChat uninstalled by the agent", WAIT, || (!list().contains("com.tencent.WeChat")).then_some(()));
    assert!(list().contains("org.example.Editor"), "an allowed app stays: {}", list());
    // flatpak's list changes before the removal's result reaches the core loop: wait for it.
    let actions = eventually("the removal recorded", WAIT, || {
        let a = last_result(&dev);
        a.contains("removed by flatpak uninstall").then_some(a)
    });
    assert!(actions.contains("com.tencent.WeChat"), "{actions}");
    // A root-owned installation under root-owned directories: root ran it, as before.
    let me = std::fs::metadata(&user_dir).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    assert!(actions.contains(&format!("run as uid {me}")), "{actions}");
    let inv = String::from_utf8_lossy(&dev.ctl(&["inventory"]).stdout).into_owned();
    assert!(inv.contains("org.example.Editor"), "{inv}");
}

/// snapd cannot run on this project's machines: snaps are real-format `snap.yaml` fixtures, and
/// removal goes to a stand-in `snap` command on the agent's PATH that records the call and
/// removes the snap's directory, as `snap remove` would.
#[test]
fn a_banned_snap_is_removed_through_a_stand_in_snap_command() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("sysroot");
    for (name, version) in [("wechat-unofficial", "3.9.2"), ("firefox", "128.0")] {
        let rev = root.join(format!("snap/{name}/x1/meta"));
        std::fs::create_dir_all(&rev).unwrap();
        std::fs::write(
            rev.join("snap.yaml"),
            format!("name: {name}\nversion: '{version}'\nsummary: {name} for tests\ndescription: |\n  name: not-this\narchitectures:\n  - amd64\nconfinement: strict\napps:\n  {name}:\n    command: bin/{name}\n"),
        )
        .unwrap();
        std::os::unix::fs::symlink("x1", root.join(format!("snap/{name}/current"))).unwrap();
    }
    std::fs::create_dir_all(root.join("var/lib/snapd/snaps")).unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let standin = bin.join("snap");
    std::fs::write(
        &standin,
        "#!/bin/sh\n# Stand-in for snapd's snap command (snapd cannot run here).\necho \"$@\" >> \"$EMBARGO_TEST_SNAP_ROOT/snap-calls.log\"\nif [ \"$1\" = remove ]; then\n  name=\"$2\"; [ \"$2\" = --purge ] && name=\"$3\"\n  rm -rf \"$EMBARGO_TEST_SNAP_ROOT/snap/$name\"\nfi\n",
    )
    .unwrap();
    std::fs::set_permissions(&standin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = format!("{WECHAT_KASPERSKY_TOML}\n[[rule]]\nid = \"wechat-snap\"\naction = \"remove\"\n[[rule.match]]\nkind = \"snap\"\nid = \"wechat-*\"\n");
    let mut dev = Device::with_config(
        &policy,
        "1d",
        &format!("\n[[watch]]\nkind = \"snap\"\npaths = [\"{}\"]\n", root.display()),
    );
    // Start again with the stand-in first on PATH (the first start may already have tried the real one).
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    dev.restart_with_env(&[("PATH", path), ("EMBARGO_TEST_SNAP_ROOT", root.display().to_string())]);
    eventually("the banned snap removed", WAIT, || (!root.join("snap/wechat-unofficial").exists()).then_some(()));
    let calls = std::fs::read_to_string(root.join("snap-calls.log")).unwrap();
    assert_eq!(calls.trim(), "remove --purge wechat-unofficial", "{calls}");
    assert!(root.join("snap/firefox/current/meta/snap.yaml").exists(), "an allowed snap stays");
    let inv = String::from_utf8_lossy(&dev.ctl(&["inventory", "--json"]).stdout).into_owned();
    assert!(inv.contains("\"id\":\"firefox\"") || inv.contains("\"id\": \"firefox\""), "{inv}");
    assert!(last_result(&dev).contains("removed by snap remove"));
}

/// Version 1 of the cap tests' policy: nothing installed here is banned.
const CAP_V1: &str =
    "[[rule]]\nid = \"other\"\naction = \"remove\"\n[[rule.match]]\nkind = \"deb\"\nid = \"never-installed\"\n";

/// Version 2 bans the `capped-*` packages (remove) and `Capped` AppImages (quarantine).
fn cap_v2() -> String {
    format!(
        "{CAP_V1}[[rule]]\nid = \"capped\"\naction = \"remove\"\n[[rule.match]]\nkind = \"deb\"\nid = \"capped-*\"\n\
         [[rule]]\nid = \"capped-files\"\naction = \"quarantine\"\n[[rule.match]]\nkind = \"appimage\"\nname = \"*Capped*\"\n"
    )
}

/// A dpkg root with the `names` installed by the real dpkg, and an agent watching it (and the
/// AppImage folders) with `max_actions_per_update = 2`, enforcing [`CAP_V1`].
fn cap_setup(names: &[&str]) -> Option<(tempfile::TempDir, PathBuf, Device)> {
    if !need(&["dpkg", "dpkg-deb", "dpkg-query"]) {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("sysroot");
    dpkg_root(&root);
    let debs: Vec<PathBuf> = names.iter().map(|n| build_deb(tmp.path(), n, "1.0-1", None)).collect();
    install(&root, &debs.iter().map(PathBuf::as_path).collect::<Vec<_>>(), false);
    let dev = Device::with_config(
        CAP_V1,
        "1d",
        &format!(
            "\n[[watch]]\nkind = \"deb\"\npaths = [\"{}\"]\n\n[enforcement]\nmax_actions_per_update = 2\n",
            root.display()
        ),
    );
    Some((tmp, root, dev))
}

/// Publishes v2, syncs, and checks the update was held back: status and audit say "needs
/// confirmation" for `held` apps, and the packages are still installed.
fn publish_over_the_cap(dev: &Device, root: &Path, names: &[&str], held: usize) {
    dev.publish(&cap_v2());
    let out = dev.ctl(&["sync"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = dev.status().unwrap();
    let events = String::from_utf8_lossy(&dev.ctl(&["events", "--json"]).stdout).into_owned();
    assert_eq!(s["policy"]["policy_version"], 2, "{s}");
    assert_eq!(s["pending"]["needs_confirmation"], held, "{s}\n{events}");
    assert!(s["daemon"]["reasons"].to_string().contains("need confirmation"), "{s}");
    for n in names {
        assert!(installed(root, n), "{n} purged although the update was over the cap");
    }
    assert!(events.contains("\"type\":\"needs-confirmation\""), "{events}");
    assert!(events.contains("needs confirmation") && !events.contains("removed by dpkg --purge"), "{events}");
}

/// The cap covers package removals: three banned packages in one update over a cap of two are
/// not purged until an admin confirms; then all three are.
#[test]
fn three_packages_over_the_cap_wait_for_confirm() {
    let names = ["capped-a", "capped-b", "capped-c"];
    let Some((_tmp, root, dev)) = cap_setup(&names) else { return };
    eventually("the packages seen under v1", WAIT, || {
        dev.status().filter(|s| s["sources"].to_string().contains("\"apps_seen\":3")).map(|_| ())
    });
    publish_over_the_cap(&dev, &root, &names, 3);
    // A rescan does not act on them either.
    assert!(dev.ctl(&["scan"]).status.success());
    assert!(names.iter().all(|n| installed(&root, n)), "held back across rescans");
    let out = dev.ctl(&["confirm"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for n in names {
        eventually(&format!("{n} purged after confirm"), WAIT, || purged(&root, n).then_some(()));
    }
    assert_eq!(dev.status().unwrap()["pending"]["needs_confirmation"], 0);
    let events = String::from_utf8_lossy(&dev.ctl(&["events", "--json"]).stdout).into_owned();
    assert!(events.contains("\"type\":\"confirmed\""), "{events}");
}

/// The same with packages and files in one update: two packages and two AppImages are four acts
/// over a cap of two, so none happens until confirm; a new arrival is acted on meanwhile.
#[test]
fn packages_and_files_count_together_against_the_cap() {
    let names = ["capped-a", "capped-b"];
    let Some((_tmp, root, dev)) = cap_setup(&names) else { return };
    let files: Vec<_> = (0..2)
        .map(|i| dev.install(&format!("Downloads/Capped-{i}.AppImage"), &appimage(&format!("capped {i}"))))
        .collect();
    for f in &files {
        eventually("each AppImage seen under v1", WAIT, || dev.inventory_has(f));
    }
    publish_over_the_cap(&dev, &root, &names, 4);
    assert!(files.iter().all(|f| f.exists()), "over the cap: no file moved either");
    // A new arrival is not part of the update: it is acted on at once.
    let fresh = dev.install("Applications/Capped-new.AppImage", &appimage("capped new"));
    eventually("a new arrival quarantined", WAIT, || (!fresh.exists()).then_some(()));
    assert!(names.iter().all(|n| installed(&root, n)) && files.iter().all(|f| f.exists()));
    let out = dev.ctl(&["confirm"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for n in names {
        eventually(&format!("{n} purged after confirm"), WAIT, || purged(&root, n).then_some(()));
    }
    assert!(files.iter().all(|f| !f.exists()), "confirmed: the files are quarantined");
}
