//! The agent on a copy of a real system's dpkg database: the test machine's own `/var/lib/dpkg`
//! copied under a temp root, plus two throwaway packages (no maintainer scripts) installed into
//! that copy with the real dpkg. Only those two are ever purged: a copied real package's scripts
//! would run against the host. Shows: the database is read (without re-reading itself forever
//! through its own inotify events), the inventory lists a package's programs rather than every
//! directory it ships, only the banned packages are purged, and `status` answers within 100 ms
//! throughout the update that purges them (package reads and purges run off the core loop;
//! before they did, the slowest status here took 0.67–1.45 s).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use embargo_e2e::*;

const WAIT: Duration = Duration::from_secs(60);

const V1: &str =
    "[[rule]]\nid = \"other\"\naction = \"remove\"\n[[rule.match]]\nkind = \"deb\"\nid = \"never-installed\"\n";
const V2: &str =
    "[[rule]]\nid = \"copy\"\naction = \"remove\"\n[[rule.match]]\nkind = \"deb\"\nid = \"embargo-realcopy-*\"\n";

fn build_deb(dir: &Path, name: &str) -> PathBuf {
    let tree = dir.join(format!("{name}-tree"));
    std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
    std::fs::write(
        tree.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: Test <t@example.invalid>\nDescription: test\n"),
    )
    .unwrap();
    let exe = tree.join("usr/bin").join(name);
    std::fs::write(&exe, "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join(format!("{name}.deb"));
    let o = Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&tree).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn dpkg_status(root: &Path, name: &str) -> String {
    let o = Command::new("dpkg-query")
        .arg(format!("--root={}", root.display()))
        .args(["-W", "-f=${Status}", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_copy_of_the_real_dpkg_database_purges_only_the_banned_and_status_keeps_answering() {
    if !need(&["dpkg", "dpkg-deb", "dpkg-query", "cp"]) {
        return;
    }
    if !Path::new("/var/lib/dpkg/status").exists() {
        skip("needs this machine's dpkg database (/var/lib/dpkg/status)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("sysroot");
    std::fs::create_dir_all(root.join("var/lib")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    let o = Command::new("cp").args(["-a", "/var/lib/dpkg"]).arg(root.join("var/lib/")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names = ["embargo-realcopy-a", "embargo-realcopy-b"];
    let debs: Vec<PathBuf> = names.iter().map(|n| build_deb(tmp.path(), n)).collect();
    // No triggers: the copied packages' trigger scripts would run against the host.
    let o = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-not-root", "--no-triggers", "-i"])
        .args(&debs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dev =
        Device::with_config(V1, "1d", &format!("\n[[watch]]\nkind = \"deb\"\npaths = [\"{}\"]\n", root.display()));
    eventually("the copied database read", WAIT, || {
        let s = dev.status()?;
        let deb = s["sources"].as_array()?.iter().find(|r| r["kind"] == "deb")?.clone();
        (deb["apps_seen"].as_u64()? > 100).then_some(())
    });
    // The inventory names what identifies and acts on a package, not every shared directory.
    let inv_json = dev.ctl(&["inventory", "--json"]).stdout;
    let inv: serde_json::Value = serde_json::from_slice(&inv_json).unwrap();
    let apps = inv["apps"].as_array().unwrap();
    // Small because a package is its name, version and programs: listing every directory a
    // package ships made this 12 MB for ~900 packages. 1 KiB a package is ample for programs.
    eprintln!("inventory --json: {} bytes for {} apps", inv_json.len(), apps.len());
    assert!(inv_json.len() < apps.len() * 1024, "inventory --json is {} bytes for {} apps", inv_json.len(), apps.len());
    let ours = apps.iter().find(|e| e["app"]["id"] == names[0]).unwrap().clone();
    // The host's own dpkg is listed with its programs, not its directories and data files.
    let dpkg = apps.iter().find(|e| e["app"]["id"] == "dpkg" && e["app"]["kind"] == "deb").unwrap();
    let dpkg_paths = dpkg["app"]["paths"].as_array().unwrap();
    let dpkg_paths: Vec<&str> = dpkg_paths.iter().map(|p| p.as_str().unwrap()).collect();
    assert!(dpkg_paths.iter().any(|p| p.ends_with("/usr/bin/dpkg")), "{dpkg}");
    assert!(
        dpkg_paths.iter().all(|p| !p.ends_with("/usr/bin") && !p.ends_with("/libexec/dpkg") && !p.contains("/share/")),
        "{dpkg}"
    );
    let paths: Vec<&str> = ours["app"]["paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(paths, [root.join("usr/bin").join(names[0]).to_str().unwrap()], "{ours}");
    // The update purging both: status answers throughout. A poller asks `embargoctl status`
    // back to back, each call timed around the whole process run, from before the update until
    // both packages are gone and 20 calls more; the purge is watched on this thread.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (socket, stop) = (dev.socket.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut times = Vec::new();
            let mut after_stop = 0;
            while after_stop < 20 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    after_stop += 1;
                }
                let t = Instant::now();
                let out = Command::new(bin("embargoctl"))
                    .args(["--socket", socket.to_str().unwrap(), "status", "--json"])
                    .output()
                    .unwrap();
                let took = t.elapsed();
                assert!(out.status.code() != Some(3), "status unanswered");
                times.push(took);
            }
            times
        })
    };
    dev.publish(V2);
    let socket = dev.socket.clone();
    let syncer = std::thread::spawn(move || {
        Command::new(bin("embargoctl")).args(["--socket", socket.to_str().unwrap(), "sync"]).output().unwrap()
    });
    let deadline = Instant::now() + WAIT;
    while names.iter().any(|n| !dpkg_status(&root, n).is_empty()) {
        assert!(Instant::now() < deadline, "not purged in time");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut times = poller.join().unwrap();
    assert!(syncer.join().unwrap().status.success());
    times.sort();
    let worst = *times.last().unwrap();
    eprintln!(
        "status during and after the purge: {} calls, median {:?}, slowest {worst:?}",
        times.len(),
        times[times.len() / 2]
    );
    // Package reads and `dpkg --purge` run on the package worker, so the loop answers at once.
    // The bound covers starting the (debug) embargoctl process as well.
    assert!(worst <= Duration::from_millis(100), "status took {worst:?} during a purge (bound 100 ms)");
    assert!(dpkg_status(&root, "dpkg").ends_with(" installed"), "copied packages untouched");
}

/// Runs `embargoctl status` back to back, each call timed around the whole process run, until
/// `stop` is set, and 20 calls more.
fn poll_status(socket: PathBuf, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Vec<Duration> {
    let mut times = Vec::new();
    let mut after_stop = 0;
    while after_stop < 20 {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            after_stop += 1;
        }
        let t = Instant::now();
        let out = Command::new(bin("embargoctl"))
            .args(["--socket", socket.to_str().unwrap(), "status", "--json"])
            .output()
            .unwrap();
        times.push(t.elapsed());
        assert!(out.status.code() != Some(3), "status unanswered");
    }
    times
}

/// A package manager whose removal takes a second (as `rpm -e` on a large database or
/// `flatpak uninstall` do) does not hold up `status`: the removal runs on the package worker.
/// The package manager is the real dpkg behind a wrapper first on the agent's PATH that sleeps
/// one second before each `--purge` (dry run and purge) — the only stand-in, for the slowness.
#[test]
fn a_slow_package_manager_does_not_hold_up_status() {
    if !need(&["dpkg", "dpkg-deb", "dpkg-query", "sh", "sleep"]) {
        return;
    }
    let real = String::from_utf8(Command::new("sh").args(["-c", "command -v dpkg"]).output().unwrap().stdout).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("sysroot");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log", "usr/bin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let name = "embargo-realcopy-slow";
    let deb = build_deb(tmp.path(), name);
    let o = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-not-root", "-i"])
        .arg(&deb)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let wrappers = tmp.path().join("slow-bin");
    std::fs::create_dir_all(&wrappers).unwrap();
    let wrapper = wrappers.join("dpkg");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\ncase \" $* \" in *\" --purge \"*) sleep 1;; esac\nexec {} \"$@\"\n", real.trim()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut dev =
        Device::with_config(V1, "1d", &format!("\n[[watch]]\nkind = \"deb\"\npaths = [\"{}\"]\n", root.display()));
    let path = format!("{}:{}", wrappers.display(), std::env::var("PATH").unwrap_or_default());
    dev.restart_with_env(&[("PATH", path)]);
    eventually("the package read", WAIT, || {
        dev.status().filter(|s| s["sources"].to_string().contains("\"apps_seen\":1")).map(|_| ())
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (socket, stop) = (dev.socket.clone(), stop.clone());
        std::thread::spawn(move || poll_status(socket, stop))
    };
    dev.publish(V2);
    let started = Instant::now();
    let out = dev.ctl(&["sync"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + WAIT;
    while !dpkg_status(&root, name).is_empty() {
        assert!(Instant::now() < deadline, "not purged in time");
    }
    let purge = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut times = poller.join().unwrap();
    times.sort();
    let worst = *times.last().unwrap();
    eprintln!("slow dpkg: purge took {purge:?}; status: {} calls, slowest {worst:?}", times.len());
    assert!(purge >= Duration::from_secs(2), "the wrapper slowed the dry run and the purge ({purge:?})");
    assert!(worst <= Duration::from_millis(100), "status took {worst:?} while dpkg was slow (bound 100 ms)");
}
