//! Stopping what runs a banned file: every process whose executable is that inode.

use crate::safefs::FileId;

/// Kills every process whose executable is `id`. Returns their pids.
pub fn kill_processes_running(id: FileId) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt as _;
    let mut killed = Vec::new();
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else { return killed };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        // stat of /proc/<pid>/exe follows the magic link to the executable's inode.
        let Ok(m) = std::fs::metadata(e.path().join("exe")) else { continue };
        if m.dev() == id.dev && m.ino() == id.ino {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                if rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok() {
                    killed.push(pid);
                }
            }
        }
    }
    killed
}
