//! Running apps: find processes whose executable is banned and stop them (SIGKILL through a
//! pidfd), on every policy update and at start-up.
//!
//! Owns: the process sweep. Does not own: the decision (the exec gate's [`Judge`]), the action
//! cap's budget (the caller passes what is left), the audit log (the caller records the
//! report).
//!
//! A process's executable is judged by opening `/proc/PID/exe` (the file itself, even deleted
//! or renamed) and reading through that fd, never by its path. A kill first takes a pidfd, then
//! checks that `/proc/PID/exe` is still the judged (device, inode), then signals the pidfd: a pid
//! reused in between is never killed.
//!
//! AppImages: the type-2 runtime forks; the child (still executing the AppImage file) serves
//! the squashfs over FUSE at `/tmp/.mount_XXXXXX` with the AppImage's own path as the mount
//! source (it passes that path as argv[0] to libfuse), and the parent execs `AppRun` from the
//! mount, which starts the app, all from the mount. Killing the runtime alone leaves them
//! running (pages already mapped). So for every banned runtime we read *its* mountinfo
//! (`/proc/RUNTIME/mountinfo`: its namespace, not ours), take the FUSE mounts whose source is
//! the runtime's file, and stop every process whose executable lives on such a mount (same
//! device number), before the runtime. An app extracted with `--appimage-extract` runs plain
//! files: only hash rules on those files catch it.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use embargo_policy::matcher::RuleSet;

use crate::exec_gate::{parse_mountinfo, process_uid, GateMode, Judge, Judgement, OwnedPaths, Protected};

/// Why a process is stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Its executable is banned.
    Exe,
    /// It runs from the FUSE mount of a banned AppImage runtime.
    AppImageMount { runtime_pid: i32, appimage: PathBuf, mount_point: PathBuf },
    /// Its executable is a file of a banned package the agent could not remove ("needs
    /// admin"), matched by path ([`OwnedPaths`]), whatever the rule set says of the file.
    NeedsAdmin,
}

/// One process the sweep stopped (or, in monitor mode or past the cap, would have).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub pid: i32,
    pub uid: Option<u32>,
    pub exe: PathBuf,
    pub rule: String,
    pub reason: StopReason,
    /// Whether SIGKILL was sent (false in monitor mode, past the cap, or when it failed).
    pub killed: bool,
    /// Why not, when not killed.
    pub note: Option<String>,
}

/// What one sweep found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub scanned: usize,
    pub stopped: Vec<Stopped>,
    /// Banned processes left running because they are protected.
    pub spared: Vec<(i32, PathBuf, String)>,
    /// Banned processes not killed because `max_kills` was reached.
    pub capped: usize,
    pub errors: Vec<String>,
}

/// A process and its judged executable.
struct Proc {
    pid: i32,
    dev: u64,
    ino: u64,
    exe: PathBuf,
    verdict: Option<String>,
    appimage: bool,
    /// The verdict is the needs-admin paths', not the rule set's.
    needs_admin: bool,
}

/// A banned process found by [`scan`], not yet stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub pid: i32,
    pub uid: Option<u32>,
    /// (device, inode) of its executable when judged: a kill first checks it is still that.
    pub dev: u64,
    pub ino: u64,
    pub exe: PathBuf,
    pub rule: String,
    pub reason: StopReason,
}

/// What one scan found: the processes to stop (in the order to stop them), and what it left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    pub scanned: usize,
    pub targets: Vec<Target>,
    /// Banned processes left running because they are protected.
    pub spared: Vec<(i32, PathBuf, String)>,
    pub errors: Vec<String>,
}

/// Sweeps every process once: [`scan`], then [`stop`] with `max_kills`.
pub fn sweep(rules: &RuleSet, judge: &Judge, protected: &Protected, mode: GateMode, max_kills: usize) -> SweepReport {
    stop(scan(rules, judge, protected), mode, max_kills)
}

/// Stops the targets of `scan` (none in monitor mode; none past `max_kills`, reported as
/// `capped`).
pub fn stop(scan: Scan, mode: GateMode, max_kills: usize) -> SweepReport {
    let mut report =
        SweepReport { scanned: scan.scanned, spared: scan.spared, errors: scan.errors, ..Default::default() };
    let mut kills = 0;
    for t in scan.targets {
        let mut stopped =
            Stopped { pid: t.pid, uid: t.uid, exe: t.exe, rule: t.rule, reason: t.reason, killed: false, note: None };
        if mode == GateMode::Monitor {
            stopped.note = Some("monitor mode".into());
        } else if kills >= max_kills {
            report.capped += 1;
            stopped.note = Some(format!("action cap reached ({max_kills} kills)"));
        } else {
            match kill_if_same(t.pid, t.dev, t.ino) {
                Ok(true) => {
                    kills += 1;
                    stopped.killed = true;
                }
                Ok(false) => stopped.note = Some("exited or changed before the kill".into()),
                Err(e) => {
                    stopped.note = Some(format!("kill failed: {e}"));
                    report.errors.push(format!("pid {}: kill failed: {e}", t.pid));
                }
            }
        }
        report.stopped.push(stopped);
    }
    report
}

/// Finds every process whose executable is banned (and those running from a banned AppImage's
/// mount), protected ones set apart; kills nothing.
pub fn scan(rules: &RuleSet, judge: &Judge, protected: &Protected) -> Scan {
    scan_with_owned(rules, &OwnedPaths::default(), judge, protected)
}

/// [`scan`], and also the processes whose executable is a needs-admin package's file: the path
/// `/proc/PID/exe` names (as this mount namespace names it, the same name the exec gate matches
/// with [`OwnedPaths::rule_for`]) is looked up first, and a match needs no judging at all (the
/// gate does the same). Such a process is stopped naming the package's rule
/// ([`StopReason::NeedsAdmin`]).
pub fn scan_with_owned(rules: &RuleSet, owned: &OwnedPaths, judge: &Judge, protected: &Protected) -> Scan {
    let mut report = Scan::default();
    let me = std::process::id() as i32;
    let mut judged: HashMap<(u64, u64), (Option<String>, bool)> = HashMap::new();
    let mut procs = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        report.errors.push("cannot list /proc".into());
        return report;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        // Kernel threads and processes that exited have no executable: nothing to judge.
        let Ok(mut file) = File::open(format!("/proc/{pid}/exe")) else { continue };
        let Ok(meta) = file.metadata() else { continue };
        report.scanned += 1;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let key = (meta.dev(), meta.ino());
        if let Some(rule) = owned.rule_for(&exe) {
            let verdict = Some(rule.to_owned());
            procs.push(Proc { pid, dev: key.0, ino: key.1, exe, verdict, appimage: false, needs_admin: true });
            continue;
        }
        let (verdict, appimage) = match judged.get(&key) {
            Some(v) => v.clone(),
            None => {
                let mut head = [0u8; 16];
                let n = file.read_at(&mut head, 0).unwrap_or(0);
                let appimage = crate::identify::is_appimage(&head[..n]);
                let verdict = match judge(rules, &mut file, &exe) {
                    Ok(Judgement::Deny { rule }) => Some(rule),
                    Ok(_) => None,
                    Err(e) => {
                        report.errors.push(format!("pid {pid} ({}): {e}", exe.display()));
                        None
                    }
                };
                judged.insert(key, (verdict.clone(), appimage));
                (verdict, appimage)
            }
        };
        procs.push(Proc { pid, dev: key.0, ino: key.1, exe, verdict, appimage, needs_admin: false });
    }

    // (pid, rule, reason) to stop: processes on banned runtimes' mounts first, then the
    // banned executables themselves (runtimes last, so their mounts stay up until their apps
    // are gone).
    let mut targets: Vec<(usize, String, StopReason)> = Vec::new();
    for runtime in procs.iter().filter(|p| p.appimage && p.verdict.is_some()) {
        let rule = runtime.verdict.clone().unwrap_or_default();
        for (mount_point, dev) in runtime_mounts(runtime.pid, &runtime.exe) {
            for (i, p) in procs.iter().enumerate() {
                if p.dev == dev && p.pid != runtime.pid && !targets.iter().any(|(t, _, _)| *t == i) {
                    let reason = StopReason::AppImageMount {
                        runtime_pid: runtime.pid,
                        appimage: runtime.exe.clone(),
                        mount_point: mount_point.clone(),
                    };
                    targets.push((i, rule.clone(), reason));
                }
            }
        }
    }
    for (i, p) in procs.iter().enumerate() {
        if let Some(rule) = &p.verdict {
            if !targets.iter().any(|(t, _, _)| *t == i) {
                let reason = if p.needs_admin { StopReason::NeedsAdmin } else { StopReason::Exe };
                targets.push((i, rule.clone(), reason));
            }
        }
    }
    for (i, rule, reason) in targets {
        let p = &procs[i];
        if protected(&p.exe) {
            report.spared.push((p.pid, p.exe.clone(), rule));
            continue;
        }
        report.targets.push(Target {
            pid: p.pid,
            uid: process_uid(p.pid),
            dev: p.dev,
            ino: p.ino,
            exe: p.exe.clone(),
            rule,
            reason,
        });
    }
    report
}

/// Sends SIGKILL to `pid` through a pidfd if its executable is still (`dev`, `ino`); returns
/// whether it did.
pub fn kill_if_same(pid: i32, dev: u64, ino: u64) -> std::io::Result<bool> {
    let Some(raw) = rustix::process::Pid::from_raw(pid) else { return Ok(false) };
    let pidfd = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    // The pidfd pins this process: if /proc/PID/exe is still the judged file now, the signal
    // goes to the process we judged, whatever happens to the pid number afterwards.
    let same = std::fs::metadata(format!("/proc/{pid}/exe")).is_ok_and(|m| m.dev() == dev && m.ino() == ino);
    if !same {
        return Ok(false);
    }
    match rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::SRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// FUSE mounts (mount point, device) a runtime serves: its own mountinfo's `fuse*` mounts
/// whose source is the runtime's file.
fn runtime_mounts(pid: i32, exe: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else { return Vec::new() };
    mounts_served_by(&text, exe)
}

fn mounts_served_by(mountinfo: &str, exe: &Path) -> Vec<(PathBuf, u64)> {
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    parse_mountinfo(mountinfo)
        .into_iter()
        .filter(|m| m.fstype == "fuse" || m.fstype.starts_with("fuse."))
        .filter(|m| m.source == exe)
        .map(|m| (m.mount_point, m.dev))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_serves_the_fuse_mounts_named_after_its_file() {
        let text = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
50 22 0:55 / /tmp/.mount_WeChaXy12 ro,nosuid,nodev,relatime - fuse.WeChat.AppImage /home/a/WeChat.AppImage ro,user_id=1000
51 22 0:56 / /tmp/.mount_OtherAb34 ro,nosuid,nodev,relatime - fuse.Other.AppImage /home/a/Other.AppImage ro,user_id=1000
52 22 0:57 / /home/a/fake ro - ext4 /home/a/WeChat.AppImage ro
";
        let got = mounts_served_by(text, Path::new("/home/a/WeChat.AppImage"));
        assert_eq!(got, vec![(PathBuf::from("/tmp/.mount_WeChaXy12"), rustix::fs::makedev(0, 55))]);
        let deleted = mounts_served_by(text, Path::new("/home/a/WeChat.AppImage (deleted)"));
        assert_eq!(deleted.len(), 1);
        assert!(mounts_served_by(text, Path::new("/home/a/Nope.AppImage")).is_empty());
    }
}
