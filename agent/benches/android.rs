//! Android identity figures (release build).
//!
//! 1. APK identity: a 100 MB APK (a 100 MB stored asset, built by `aapt` and signed v1+v2+v3 by
//!    `apksigner`) is identified — manifest and signer — 200 times from its opened fd. Bytes read
//!    per identification come from `/proc/self/io` `rchar` (every read and pread counts), which
//!    shows the file is not read whole. Hashing the file whole (what a sha256 rule costs) is
//!    timed once for scale.
//! 2. packages.xml: the committed 500-package file in ABX (written by AOSP's serializer,
//!    `makeabx.jar`) and its text twin are read 200 times each.
//!
//! Run: `cargo bench -p embargo-agent --bench android` (needs aapt, apksigner, keytool for part 1;
//! without them a synthetic APK of the same size and shape is built instead, and the output
//! says so). `EMBARGO_BENCH_RUNS` changes the repetition count.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use embargo_agent::android;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn rchar() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

fn ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A 100 MB APK built and signed by the real tools.
fn real_apk(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(
        dir.join("AndroidManifest.xml"),
        "<manifest xmlns:android=\"http://schemas.android.com/apk/res/android\" package=\"com.tencent.mm\"><application/></manifest>\n",
    )
    .unwrap();
    let mut f = std::fs::File::create(dir.join("assets/blob.bin")).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..100 {
        for b in chunk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    let apk = dir.join("big.apk");
    ok(Command::new("aapt")
        .args(["package", "-f", "-0", "bin", "-M"])
        .arg(dir.join("AndroidManifest.xml"))
        .arg("-A")
        .arg(dir.join("assets"))
        .arg("-F")
        .arg(&apk));
    ok(Command::new("keytool").args([
        "-genkeypair",
        "-keystore",
        &dir.join("k.jks").display().to_string(),
        "-storepass",
        "benchpass",
        "-keypass",
        "benchpass",
        "-alias",
        "k",
        "-keyalg",
        "RSA",
        "-keysize",
        "2048",
        "-validity",
        "1000",
        "-dname",
        "CN=Bench",
    ]));
    ok(Command::new("apksigner")
        .args(["sign", "--ks"])
        .arg(dir.join("k.jks"))
        .args(["--ks-pass", "pass:benchpass", "--min-sdk-version", "21"])
        .arg(&apk));
    apk
}

/// Without the tools: the same shape written directly (stored 100 MB entry, AXML manifest, a
/// v3-shaped signing block is not built here, so only the manifest path is exercised).
fn synthetic_apk(dir: &Path) -> std::path::PathBuf {
    let manifest = android::axml::encode_manifest("com.tencent.mm", Some(2800), Some("8.0.49"), None, false);
    let apk = dir.join("big.apk");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&apk).unwrap());
    let mut cd = Vec::new();
    let mut off = 0u32;
    for (name, len) in [("AndroidManifest.xml", manifest.len()), ("assets/blob.bin", 100 << 20)] {
        let mut h = vec![0x50, 0x4b, 0x03, 0x04, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        h.extend_from_slice(&(len as u32).to_le_bytes());
        h.extend_from_slice(&(len as u32).to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(name.as_bytes());
        let mut c = vec![0x50, 0x4b, 0x01, 0x02, 20, 0];
        c.extend_from_slice(&h[4..30]);
        c.extend_from_slice(&[0; 10]);
        c.extend_from_slice(&off.to_le_bytes());
        c.extend_from_slice(name.as_bytes());
        cd.extend(c);
        out.write_all(&h).unwrap();
        if name == "AndroidManifest.xml" {
            out.write_all(&manifest).unwrap();
        } else {
            out.write_all(&vec![0x5a; len]).unwrap();
        }
        off += (h.len() + len) as u32;
    }
    out.write_all(&cd).unwrap();
    let mut e = vec![0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0, 2, 0, 2, 0];
    e.extend_from_slice(&(cd.len() as u32).to_le_bytes());
    e.extend_from_slice(&off.to_le_bytes());
    e.extend_from_slice(&[0, 0]);
    out.write_all(&e).unwrap();
    drop(out);
    apk
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{what}: runs {}, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        times.len(),
        pct(&times, 0.5).as_secs_f64() * 1e3,
        pct(&times, 0.9).as_secs_f64() * 1e3,
        pct(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3
    );
}

fn main() {
    let runs: usize = std::env::var("EMBARGO_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let tmp = tempfile::tempdir().unwrap();
    let real = ["aapt", "apksigner", "keytool"].iter().all(|t| have(t));
    let apk = if real { real_apk(tmp.path()) } else { synthetic_apk(tmp.path()) };
    let size = std::fs::metadata(&apk).unwrap().len();
    println!(
        "APK: {} ({:.1} MB{})",
        apk.display(),
        size as f64 / 1e6,
        if real { ", aapt + apksigner v1/v2/v3" } else { ", SYNTHETIC: aapt/apksigner/keytool missing" }
    );
    let file = std::fs::File::open(&apk).unwrap();
    let mut times = Vec::with_capacity(runs);
    let mut read_bytes = Vec::with_capacity(runs);
    for _ in 0..runs {
        let before = rchar();
        let t = Instant::now();
        let id = android::identify_apk(&file).unwrap();
        times.push(t.elapsed());
        read_bytes.push(rchar() - before);
        assert_eq!(id.manifest.package, "com.tencent.mm");
        assert!(!real || !id.signers.is_empty());
    }
    read_bytes.sort_unstable();
    report("identify 100 MB APK (manifest + signer, fd already open)", times);
    println!(
        "  bytes read per identification: median {} (max {}) of {} ({:.4}% of the file)",
        read_bytes[read_bytes.len() / 2],
        read_bytes.last().unwrap(),
        size,
        *read_bytes.last().unwrap() as f64 * 100.0 / size as f64
    );
    let t = Instant::now();
    let mut f = std::fs::File::open(&apk).unwrap();
    let _ = embargo_agent::identify::sha256_of(&mut f).unwrap();
    println!("  for scale: sha256 of the whole file once: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/android/generated");
    for (label, file) in [("ABX", "packages-500.xml.abx"), ("text", "packages-500.xml")] {
        let bytes = std::fs::read(fixtures.join(file)).unwrap();
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let db = android::read_packages(&bytes).unwrap();
            times.push(t.elapsed());
            assert_eq!(db.packages.len(), 500);
        }
        report(&format!("read 500-package packages.xml, {label} ({} KB)", bytes.len() / 1000), times);
    }
}
