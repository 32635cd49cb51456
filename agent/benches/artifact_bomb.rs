//! Finding 7's bound: the time and peak memory to refuse a `.deb` whose zstd control archive
//! inflates to 8 GiB (a ~260 KiB file; `dpkg-deb` run by root used to extract all of it to
//! /tmp). The in-process reader stops at `MAX_CONTROL_TAR` decompressed bytes.
//! Run: `cargo bench -p embargo-agent --bench artifact_bomb`.

use std::io::Write as _;
use std::time::{Duration, Instant};

use embargo_agent::artifact;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let runs: usize = std::env::var("EMBARGO_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let deb = artifact::testdata::zstd_bomb_deb(8);
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&deb).unwrap();
    let before = vm_hwm_kib();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let r = artifact::deb_control(&f);
        times.push(t.elapsed());
        assert!(matches!(r, Err(artifact::ArtifactError::TooLarge { .. })), "{r:?}");
    }
    let after = vm_hwm_kib();
    times.sort();
    println!(
        "zstd-bombed .deb ({} KiB, 8 GiB inflated): refused in median {:?}, p90 {:?}, max {:?} over {runs} runs; peak RSS {} KiB before, {} KiB after (+{} KiB); cap {} MiB decompressed",
        deb.len() >> 10,
        pct(&times, 0.5),
        pct(&times, 0.9),
        times[times.len() - 1],
        before,
        after,
        after.saturating_sub(before),
        artifact::MAX_CONTROL_TAR >> 20
    );
}
