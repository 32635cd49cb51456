//! Helpers for the agent's unit tests only.
//!
//! `skip` is the unit tests' side of the suite's skip accounting (the end-to-end tests have
//! the same in `tests/src/lib.rs`): a skipped test is reported as `SKIPPED <test>: <why>`,
//! counted and named by `scripts/test.sh` through `EMBARGO_SKIP_LOG`, and is a failure under
//! `EMBARGO_REQUIRE_TOOLS=1` (set by `.ci/run`).

/// Reports a skipped test and returns true; fails instead under EMBARGO_REQUIRE_TOOLS=1.
pub fn skip(why: &str) -> bool {
    assert!(std::env::var("EMBARGO_REQUIRE_TOOLS").as_deref() != Ok("1"), "{why} (EMBARGO_REQUIRE_TOOLS=1)");
    // libtest names each test's thread after the test.
    let test = std::thread::current().name().unwrap_or("unnamed test").to_owned();
    let line = format!("SKIPPED {test}: {why}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("EMBARGO_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
    true
}

/// Whether the tests run as root; otherwise reports the skip (see [`skip`]).
pub fn root_or_skip(why: &str) -> bool {
    rustix::process::geteuid().is_root() || !skip(why)
}
