//! `flatpak --user` removals from a user's own installation, end to end with the real flatpak:
//! the agent (root) runs flatpak as the installation's owner, never as root against a tree the
//! user controls. The installation is made with the real flatpak (as root, from a local
//! repository) and then handed to uid 65534 (`nobody`) with `chown -R`: flatpak 1.14 cannot
//! install apps as a user without a system bus (its parental-controls check), but uninstalls as
//! one without any.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use embargo_e2e::flatpak::{deployed, LocalRepo};
use embargo_e2e::*;
use embargo_policy::example::WECHAT_KASPERSKY_TOML;

const WAIT: Duration = Duration::from_secs(30);
const WECHAT: &str = "com.tencent.WeChat";
const EDITOR: &str = "org.example.Editor";
const NOBODY: u32 = 65534;

/// Whether this test can run: root (embargod as root, the user as nobody) and the tools.
fn can_run() -> bool {
    if !is_root() {
        return !skip("needs root to run embargod as root and the installation's owner as nobody");
    }
    need(&["flatpak", "setpriv", "chown"])
}

/// A repository with WeChat and an editor, and `home/flatpak`, a user installation in a home
/// directory owned by nobody (the user), with `apps` installed, everything in it nobody's.
struct UserInstallation {
    tmp: tempfile::TempDir,
    home: PathBuf,
    inst: PathBuf,
}

impl UserInstallation {
    fn new(apps: &[&str]) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        // nobody must reach its home: every directory above it is traversable.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let repo = LocalRepo::new(tmp.path(), &tmp.path().join("build-installation"));
        for app in [WECHAT, EDITOR] {
            repo.add_app(app);
        }
        let home = tmp.path().join("home");
        let inst = home.join("flatpak");
        let refs: Vec<String> = apps.iter().map(|a| format!("{a}//stable")).collect();
        repo.install(&inst, &refs.iter().map(String::as_str).collect::<Vec<_>>());
        let o = Command::new("chown").args(["-R", "-h", &format!("{NOBODY}:{NOBODY}")]).arg(&home).output().unwrap();
        assert!(o.status.success(), "chown: {}", String::from_utf8_lossy(&o.stderr));
        Self { tmp, home, inst }
    }

    fn watch(&self) -> String {
        format!("\n[[watch]]\nkind = \"flatpak\"\npaths = [\"{}\"]\n", self.inst.display())
    }

    /// `sh -c script` as the user (nobody), in `/`.
    fn as_user(&self, script: &str) {
        let o = Command::new("setpriv")
            .args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", "sh", "-c", script])
            .current_dir("/")
            .output()
            .unwrap();
        assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

fn last_actions(dev: &Device) -> String {
    dev.status().map(|s| s["enforcement"]["last_actions"].to_string()).unwrap_or_default()
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// The agent removes a banned app from an installation owned by an unprivileged user, and the
/// flatpak that did it ran as that user: flatpak creates the installation's `.removed/`
/// directory during an uninstall (it is not there before), and it is owned by that uid. On
/// today's main this fails: root runs flatpak, which refuses a user's installation
/// ("Refusing to operate on a user installation as root"), so the app stays.
#[test]
fn a_banned_app_in_a_users_installation_is_removed_by_flatpak_running_as_that_user() {
    if !can_run() {
        return;
    }
    let u = UserInstallation::new(&[WECHAT, EDITOR]);
    assert!(deployed(&u.inst, WECHAT) && deployed(&u.inst, EDITOR));
    assert!(!u.inst.join(".removed").exists(), "no uninstall has run yet");
    let dev = Device::with_config(WECHAT_KASPERSKY_TOML, "1d", &u.watch());
    eventually("WeChat removed from nobody's installation", WAIT, || (!deployed(&u.inst, WECHAT)).then_some(()));
    assert!(deployed(&u.inst, EDITOR), "an allowed app stays");
    let removed = std::fs::symlink_metadata(u.inst.join(".removed")).unwrap();
    assert_eq!((removed.uid(), removed.gid()), (NOBODY, NOBODY), "flatpak's own files are the user's: it ran as them");
    let actions = eventually("the removal recorded", WAIT, || {
        let a = last_actions(&dev);
        a.contains(WECHAT).then_some(a)
    });
    assert!(actions.contains(&format!("removed by flatpak uninstall run as uid {NOBODY}")), "{actions}");
    // The removal is that user's record: `embargoctl events` run as the user shows it (the app
    // is in the user's scope; before, a package's records were root's only).
    let ctl = dev.tmp.path().join("embargoctl-copy");
    std::fs::copy(bin("embargoctl"), &ctl).unwrap();
    std::fs::set_permissions(&ctl, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let seen = Command::new("setpriv")
        .args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups"])
        .arg(&ctl)
        .arg("--socket")
        .arg(&dev.socket)
        .args(["events", "--json"])
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&seen.stdout).into_owned();
    assert!(seen.contains(WECHAT) && seen.contains(&format!("\"owner_uid\":{NOBODY}")), "the user's events: {seen}");
    // The user's own flatpak agrees.
    let list = Command::new("setpriv")
        .args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", "flatpak", "--user"])
        .args(["list", "--app", "--columns=application"])
        .env_clear()
        .env("HOME", "/")
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("FLATPAK_USER_DIR", &u.inst)
        .current_dir("/")
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains(EDITOR) && !list.contains(WECHAT), "{list}");
}

/// The attack: while the agent watches the user's installation, the user renames it away and
/// puts a symlink to a root-owned directory in its place; then a policy banning their app
/// arrives. On today's main root runs `flatpak --user` with `FLATPAK_USER_DIR` at the path,
/// which now leads to the root-owned directory (flatpak's own "not as root" check stats the
/// symlink's target, which root owns), and flatpak initialises an ostree repository and
/// `.changed` in it: root writing where the user pointed. Now the removal is refused, naming
/// the path, and the target is untouched.
#[test]
fn a_symlink_swapped_in_for_the_installation_does_not_lead_root_out_of_it() {
    if !can_run() {
        return;
    }
    let u = UserInstallation::new(&[WECHAT]);
    // Root's own directory, outside every watched root.
    let target = u.tmp.path().join("root-owned");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("precious"), "root's\n").unwrap();
    let before = listing(&target);
    // No WeChat rule yet: the agent reads the installation and leaves WeChat alone.
    let dev = Device::with_config(KASPERSKY_ONLY, "1d", &u.watch());
    eventually("WeChat in the inventory", WAIT, || {
        String::from_utf8_lossy(&dev.ctl(&["inventory"]).stdout).contains(WECHAT).then_some(())
    });
    u.as_user(&format!(
        "mv {inst} {inst}.moved && ln -s {target} {inst}",
        inst = u.inst.display(),
        target = target.display()
    ));
    assert!(u.home.join("flatpak.moved").is_dir());
    // The ban arrives: the agent matches what it read (no re-read) and removes.
    dev.publish(WECHAT_KASPERSKY_TOML);
    let out = dev.ctl(&["sync"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let actions = eventually("the removal's outcome recorded", WAIT, || {
        let a = last_actions(&dev);
        a.contains(WECHAT).then_some(a)
    });
    assert_eq!(listing(&target), before, "root's directory untouched ({actions})");
    assert!(
        actions.contains("failed") && actions.contains("symlink") && actions.contains(&u.inst.display().to_string()),
        "refused, naming the installation: {actions}"
    );
    assert!(deployed(&u.home.join("flatpak.moved"), WECHAT), "nothing removed anywhere");
}

/// A symlink planted inside the user's own installation (its `.removed/`, where flatpak moves a
/// deployment before deleting it) pointing at a root-owned directory: flatpak now runs as the
/// user, so it cannot write there, and the directory is untouched. Not exploitable on today's
/// main either (flatpak refuses to run as root on an installation a user owns, so nothing ran
/// at all): this guards the new code path.
#[test]
fn a_symlink_planted_inside_the_installation_gets_only_the_users_rights() {
    if !can_run() {
        return;
    }
    let u = UserInstallation::new(&[WECHAT]);
    let target = u.tmp.path().join("root-owned");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("precious"), "root's\n").unwrap();
    let before = listing(&target);
    u.as_user(&format!("ln -s {} {}/.removed", target.display(), u.inst.display()));
    let dev = Device::with_config(WECHAT_KASPERSKY_TOML, "1d", &u.watch());
    let actions = eventually("the removal's outcome recorded", WAIT, || {
        let a = last_actions(&dev);
        a.contains(WECHAT).then_some(a)
    });
    assert_eq!(listing(&target), before, "root's directory untouched ({actions})");
    assert!(std::fs::symlink_metadata(u.inst.join(".removed")).unwrap().file_type().is_symlink());
}

/// The system installation is unchanged: root runs `flatpak --system uninstall` there, as
/// before, and the evidence names no uid. The real `/var/lib/flatpak` is never touched: the
/// agent runs in a mount namespace of its own (`unshare --mount`) where a throwaway
/// installation is bind-mounted over it, so the agent and the flatpak it runs see only that.
#[test]
fn the_system_installation_is_still_uninstalled_by_root_with_flatpak_system() {
    if !can_run() || !need(&["unshare", "mount"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = LocalRepo::new(tmp.path(), &tmp.path().join("build-installation"));
    for app in [WECHAT, EDITOR] {
        repo.add_app(app);
    }
    let system = tmp.path().join("system");
    let sys_flatpak = |args: &[&str]| {
        let o = Command::new("flatpak").arg("--system").args(args).env("FLATPAK_SYSTEM_DIR", &system).output().unwrap();
        assert!(o.status.success(), "flatpak --system {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    sys_flatpak(&["remote-add", "--no-gpg-verify", "local", repo.repo.to_str().unwrap()]);
    sys_flatpak(&[
        "install",
        "-y",
        "--noninteractive",
        "local",
        "org.example.Editor//stable",
        "com.tencent.WeChat//stable",
    ]);
    assert!(deployed(&system, WECHAT) && deployed(&system, EDITOR));
    let host_before = listing(Path::new(embargo_agent::flatpak::SYSTEM_INSTALLATION));

    let mut dev = Device::with_config(WECHAT_KASPERSKY_TOML, "1d", "");
    dev.stop_agent();
    let mut config = std::fs::read_to_string(&dev.config).unwrap();
    config.push_str(&format!(
        "\n[[watch]]\nkind = \"flatpak\"\npaths = [\"{}\"]\n",
        embargo_agent::flatpak::SYSTEM_INSTALLATION
    ));
    std::fs::write(&dev.config, config).unwrap();
    let agent = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind \"$1\" \"$2\" && exec \"$3\" --config \"$4\"",
            "sh",
        ])
        .arg(&system)
        .arg(embargo_agent::flatpak::SYSTEM_INSTALLATION)
        .arg(bin("embargod"))
        .arg(&dev.config)
        .env("EMBARGO_LOG", "warn,embargo_agent=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dev.tmp.path().join("embargod-ns.log")).unwrap())
        .spawn()
        .expect("start embargod in a mount namespace");
    dev.agent = Some(Running(agent));
    eventually("WeChat removed from the system installation", WAIT, || (!deployed(&system, WECHAT)).then_some(()));
    assert!(deployed(&system, EDITOR), "an allowed app stays");
    let actions = eventually("the removal recorded", WAIT, || {
        let a = last_actions(&dev);
        a.contains(WECHAT).then_some(a)
    });
    assert!(actions.contains("removed by flatpak uninstall") && !actions.contains("run as uid"), "{actions}");
    assert_eq!(listing(Path::new(embargo_agent::flatpak::SYSTEM_INSTALLATION)), host_before, "the real one untouched");
}

/// flatpak waits without limit for the installation's lock (`repo/.lock`, an ostree record
/// lock, taken to prune the repository after the app is undeployed), and in a user's
/// installation that file is the user's: holding a lock on it for ever made `flatpak
/// uninstall` wait for ever (seen: still waiting after 20 s), and with it the package worker and
/// every later removal. Now the removal is killed at its deadline and fails naming it. The lock
/// is held here by the test (the owner can take the same lock: the file is theirs); the removal
/// is called through the agent's library with a short deadline, the daemon's being
/// [`UNINSTALL_TIMEOUT`]. A regression guard for the deadline: today's main has no deadline (nor
/// `uninstall_within`), and runs no flatpak at all on an installation a user owns.
///
/// [`UNINSTALL_TIMEOUT`]: embargo_agent::flatpak::UNINSTALL_TIMEOUT
#[test]
fn a_lock_held_for_ever_on_a_users_installation_costs_the_removal_its_deadline() {
    use embargo_agent::source::package::Package;
    if !can_run() {
        return;
    }
    let u = UserInstallation::new(&[WECHAT]);
    let lock = std::fs::OpenOptions::new().read(true).write(true).open(u.inst.join("repo/.lock")).unwrap();
    rustix::fs::fcntl_lock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let mut p = Package::new(WECHAT, "stable");
    p.architecture = embargo_e2e::flatpak::default_arch();
    let started = std::time::Instant::now();
    let r = embargo_agent::flatpak::uninstall_within(&u.inst, &p, Duration::from_secs(2));
    let took = started.elapsed();
    let e = r.unwrap_err();
    assert!(e.contains("did not finish within 2 s") && e.contains(WECHAT), "{e}");
    assert!(took < Duration::from_secs(15), "killed at the deadline, not waited out: {took:?}");
}
