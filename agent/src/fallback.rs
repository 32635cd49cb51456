//! The scan fallback for directories beyond the watch bounds (issue 10, finding 9; the watches
//! themselves are `source::dirwatch`). While a root has unwatched directories the core loop
//! rescans it every `watch_fallback_interval`, and about a second after activity in a watched
//! directory with an unwatched child (at most one rescan per second, however much activity);
//! while none has, there is no timer at all. Each rescan is an ordinary scan (bounded per loop
//! turn by `max_files_per_scan`), which also restores watches once the tree fits the bounds.
//! However short the interval or busy the activity, the next pass waits at least
//! `COST_FACTOR` times as long as the last one took, so the fallback holds the loop at most a
//! fifth of the time.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::enforce::Enforcer;
use crate::evidence::AuditEvent;
use crate::source::dirwatch::{DirWatch, Limits};

/// How soon after activity in a directory at the bound the fallback looks.
const AFTER_ACTIVITY: Duration = Duration::from_secs(1);

/// The next pass waits at least this many times the last pass's duration.
const COST_FACTOR: u32 = 4;

/// The folder watcher with the configured bounds, or `None` (logged; status degraded) when
/// inotify cannot start.
pub(crate) fn start_dir_watch(
    cfg: &Config,
    events: mpsc::UnboundedSender<notify::Result<notify::Event>>,
) -> Option<DirWatch> {
    let limits = Limits::new(cfg.max_watches_per_root, cfg.max_watches_per_uid);
    tracing::info!(
        per_root = limits.per_root,
        per_uid = limits.per_uid,
        total = limits.total,
        max_user_watches = limits.kernel_max,
        "folder watch bounds"
    );
    match DirWatch::start(limits, events) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the folder watcher: folders are covered by the reconcile after each sync only");
            None
        }
    }
}

impl Enforcer {
    /// After a scan: the bounds it reached go to the audit log (once per degradation of a
    /// root), and the fallback is armed while some root has unwatched directories.
    pub(crate) fn after_watching(&mut self) {
        let Some(dirs) = self.folders.dirs.as_mut() else { return };
        for note in dirs.take_notes() {
            self.evidence.emit(AuditEvent::WatchBound {
                root: note.root.display().to_string(),
                uid: note.uid,
                bound: note.bound.name().into(),
                limit: note.bound.limit(),
                detail: note.bound.to_string(),
            });
        }
        self.arm_fallback();
    }

    /// Arms the fallback's timer if some root has unwatched directories and it is not armed.
    fn arm_fallback(&mut self) {
        let degraded = self.folders.dirs.as_ref().is_some_and(|d| !d.degraded_roots().is_empty());
        if degraded && self.fallback_at.is_none() {
            let wait = self.cfg.watch_fallback_interval.max(self.folders.fallback_cost * COST_FACTOR);
            self.fallback_at = Some(tokio::time::Instant::now() + wait);
        }
    }

    /// Activity next to unwatched directories: the fallback runs within a second.
    pub(crate) fn fallback_soon(&mut self) {
        let wait = AFTER_ACTIVITY.min(self.cfg.watch_fallback_interval).max(self.folders.fallback_cost * COST_FACTOR);
        let soon = tokio::time::Instant::now() + wait;
        self.fallback_at = Some(self.fallback_at.map_or(soon, |at| at.min(soon)));
    }

    /// The fallback's turn: every root with unwatched directories is rescanned (which re-arms
    /// the timer if one still has them).
    pub fn run_fallback(&mut self) {
        self.fallback_at = None;
        let roots = self.folders.dirs.as_ref().map(DirWatch::degraded_roots).unwrap_or_default();
        let started = Instant::now();
        for root in roots {
            // A pass over it still being continued (a root larger than one scan batch) is
            // not restarted: it would never complete, and completing is what clears the bound.
            if self.folders.walking(&root) {
                continue;
            }
            if self.folders.root_paths().contains(&root) {
                let t = Instant::now();
                self.scan_path(&root, t);
                let unwatched = self.folders.dirs.as_ref().map_or(0, |d| d.unwatched(&root));
                tracing::debug!(root = %root.display(), elapsed_us = t.elapsed().as_micros() as u64, unwatched, "scan fallback pass");
            }
        }
        // Re-armed with this pass's cost (the scans above armed it with the last one's).
        self.folders.fallback_cost = started.elapsed();
        self.fallback_at = None;
        self.arm_fallback();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::Config;

    const BASE: &str =
        "[policy]\nrepository = \"https://policy.example.invalid/\"\nroot = \"/etc/embargo/root.json\"\n";

    fn parse(enforcement: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/embargo/agent.toml"), &format!("{BASE}[enforcement]\n{enforcement}\n"))
            .map_err(|e| e.to_string())
    }

    /// The watch bounds parse, and values that would disable them or turn the fallback into a
    /// busy loop are refused naming the key.
    #[test]
    fn watch_bounds_are_validated() {
        let c =
            parse("max_watches_per_root = 100\nmax_watches_per_uid = 200\nwatch_fallback_interval = \"2s\"").unwrap();
        assert_eq!((c.max_watches_per_root, c.max_watches_per_uid), (100, 200));
        assert_eq!(c.watch_fallback_interval, std::time::Duration::from_secs(2));
        for (text, key) in [
            ("max_watches_per_root = 0", "max_watches_per_root"),
            ("max_watches_per_uid = 0", "max_watches_per_uid"),
            ("watch_fallback_interval = \"500ms\"", "watch_fallback_interval"),
            ("watch_fallback_interval = \"soon\"", "watch_fallback_interval"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
