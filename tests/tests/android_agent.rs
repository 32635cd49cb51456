//! The Android integration end to end: real APKs built by `aapt` and signed by `apksigner`
//! (keys from `keytool`), the real embargo-server, embargod and embargoctl.
//!
//! - `.apk` files in a watched folder are identified by package name, version code and signer
//!   (`identify.rs` → `android::identify_apk`), so `kind = "android"` rules match them whatever
//!   the file is called.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use embargo_e2e::*;

const WAIT: Duration = Duration::from_secs(15);

fn gone(p: &Path) -> Option<()> {
    (!p.exists()).then_some(())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A keystore with one RSA key pair; the password is `<alias>-secret`.
fn keystore(dir: &Path, alias: &str, dname: &str) -> PathBuf {
    let ks = dir.join(format!("{alias}.jks"));
    let pass = format!("{alias}-secret");
    run(Command::new("keytool")
        .args(["-genkeypair", "-keystore"])
        .arg(&ks)
        .args(["-storepass", &pass, "-keypass", &pass, "-alias", alias, "-keyalg", "RSA", "-keysize", "2048"])
        .args(["-validity", "10000", "-dname", dname]));
    ks
}

/// An APK with just a manifest for `package`, built by aapt and signed (v1+v2+v3) by apksigner.
fn signed_apk(dir: &Path, name: &str, package: &str, ks: &Path, alias: &str) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("AndroidManifest.xml"),
        format!("<manifest xmlns:android=\"http://schemas.android.com/apk/res/android\" package=\"{package}\">\n  <application/>\n</manifest>\n"),
    )
    .unwrap();
    let apk = dir.join(format!("{name}.apk"));
    run(Command::new("aapt").args(["package", "-f", "-M"]).arg(src.join("AndroidManifest.xml")).arg("-F").arg(&apk));
    run(Command::new("apksigner")
        .args(["sign", "--ks"])
        .arg(ks)
        .args(["--ks-key-alias", alias, "--ks-pass", &format!("pass:{alias}-secret"), "--min-sdk-version", "24"])
        .arg(&apk));
    apk
}

/// The first `Signer #1 certificate SHA-256 digest` of `apksigner verify --print-certs`.
fn apksigner_cert(apk: &Path) -> String {
    let out = run(Command::new("apksigner").args(["verify", "--print-certs", "--min-sdk-version", "24"]).arg(apk));
    let line = out.lines().find(|l| l.contains(" certificate SHA-256 digest: ")).expect("a signer line");
    line.rsplit(' ').next().unwrap().to_owned()
}

#[test]
fn banned_apks_are_quarantined_by_package_and_by_signer_whatever_their_file_name() {
    if !need(&["aapt", "apksigner", "keytool"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let k_banned = keystore(work.path(), "tencent", "CN=Tencent Stand-in");
    let k_other = keystore(work.path(), "someone", "CN=Someone Else");
    // WeChat's package under an innocent file name; another package signed by the banned key;
    // an allowed app.
    let wechat = signed_apk(work.path(), "wechat", "com.tencent.mm", &k_other, "someone");
    let by_signer = signed_apk(work.path(), "notes", "org.example.notes", &k_banned, "tencent");
    let allowed = signed_apk(work.path(), "maps", "org.example.maps", &k_other, "someone");
    let banned_signer = apksigner_cert(&by_signer);
    let policy = format!(
        "expires = \"30d\"\n\
         [[rule]]\nid = \"wechat\"\naction = \"quarantine\"\n\
         [[rule.match]]\nkind = \"android\"\nid = \"com.tencent.mm\"\n\
         [[rule.match]]\nkind = \"android\"\nsigner = [\"{banned_signer}\"]\n"
    );
    let dev = Device::new(&policy);

    // `embargoctl check` reads the APK: package, signer, verdict.
    let out = dev.ctl(&["check", by_signer.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("android org.example.notes "), "{text}");
    assert!(text.contains(&format!("signer {banned_signer}")), "{text}");
    assert!(text.contains("quarantine: rule wechat (strong match)"), "{text}");

    let allowed_dest = dev.install("Downloads/maps.apk", &std::fs::read(&allowed).unwrap());
    let renamed = dev.install("Downloads/holiday-photos.apk", &std::fs::read(&wechat).unwrap());
    let signed = dev.install("Downloads/notes-1.0.apk", &std::fs::read(&by_signer).unwrap());
    eventually("the renamed WeChat APK to leave Downloads", WAIT, || gone(&renamed));
    eventually("the banned-signer APK to leave Downloads", WAIT, || gone(&signed));
    let entry = eventually("the allowed APK in the inventory", WAIT, || dev.inventory_has(&allowed_dest));
    assert!(entry.get("verdict").is_none(), "{entry}");
    assert_eq!(entry["app"]["id"], "org.example.maps", "{entry}");
    assert!(allowed_dest.exists());

    let mut quarantined: Vec<(String, String)> = dev
        .quarantine_list()
        .iter()
        .map(|m| (m["rule"].as_str().unwrap_or("").to_owned(), m["original_path"].as_str().unwrap_or("").to_owned()))
        .collect();
    quarantined.sort();
    let mut expected =
        vec![("wechat".to_owned(), renamed.display().to_string()), ("wechat".to_owned(), signed.display().to_string())];
    expected.sort();
    assert_eq!(quarantined, expected);
}
