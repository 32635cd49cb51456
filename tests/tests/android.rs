//! Android identity against the real tools: APKs built by `aapt` and signed by `apksigner`
//! (keys from `keytool`) are read by `embargo_agent::android` and compared with `aapt dump
//! badging`, `apksigner verify --print-certs`, `apksigner lineage` and `androguard`; ABX files
//! written by Android's own serializer (`makeabx.jar`, AOSP's `BinaryXmlSerializer`) are read
//! and compared with their text twins; a `kind = "android"` policy is compiled and matched
//! against the APK identities.
//!
//! Fixtures (with origins and licenses): `agent/tests/fixtures/android/README.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use embargo_agent::android::{self, abx, apk, axml, packages_xml, xml};
use embargo_e2e::need;
use embargo_policy::matcher::{RuleSet, Strength};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/fixtures/android")
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

/// The SDK's debug keystore password for its debug key; `<alias>-secret` for the others.
fn password(alias: &str) -> String {
    if alias == "androiddebugkey" {
        "android".into()
    } else {
        format!("{alias}-secret")
    }
}

/// A keystore with one key pair (`alg` RSA or EC).
fn keystore(dir: &Path, alias: &str, alg: &str, dname: &str) -> PathBuf {
    let ks = dir.join(format!("{alias}.jks"));
    let mut cmd = Command::new("keytool");
    cmd.args(["-genkeypair", "-keystore"]).arg(&ks);
    let pass = password(alias);
    cmd.args(["-storepass", &pass, "-keypass", &pass, "-alias", alias, "-keyalg", alg, "-validity", "10000"]);
    cmd.args(["-dname", dname]);
    if alg == "RSA" {
        cmd.args(["-keysize", "2048"]);
    } else {
        cmd.args(["-groupname", "secp256r1"]);
    }
    run(&mut cmd);
    ks
}

fn signer_args(ks: &Path, alias: &str) -> Vec<String> {
    vec![
        "--ks".into(),
        ks.display().to_string(),
        "--ks-key-alias".into(),
        alias.into(),
        "--ks-pass".into(),
        format!("pass:{}", password(alias)),
    ]
}

/// An unsigned APK with just a manifest, built by aapt.
fn unsigned_apk(dir: &Path, name: &str, package: &str) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("AndroidManifest.xml"),
        format!("<manifest xmlns:android=\"http://schemas.android.com/apk/res/android\" package=\"{package}\">\n  <application/>\n</manifest>\n"),
    )
    .unwrap();
    let apk = dir.join(format!("{name}.apk"));
    run(Command::new("aapt").args(["package", "-f", "-M"]).arg(src.join("AndroidManifest.xml")).arg("-F").arg(&apk));
    apk
}

/// Replaces the APK's manifest with `axml` (aapt remove + aapt add, run where the new file is).
fn replace_manifest(apk: &Path, axml: &[u8]) {
    let work = apk.with_extension("manifest");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("AndroidManifest.xml"), axml).unwrap();
    run(Command::new("aapt").arg("remove").arg(apk).arg("AndroidManifest.xml"));
    run(Command::new("aapt").current_dir(&work).arg("add").arg(apk).arg("AndroidManifest.xml"));
}

fn sign(apk: &Path, args: &[String]) {
    run(Command::new("apksigner").arg("sign").args(args).arg(apk));
}

fn badging_package(apk: &Path) -> String {
    let out = run(Command::new("aapt").args(["dump", "badging"]).arg(apk));
    let line = out.lines().find(|l| l.starts_with("package: ")).expect("badging has a package line");
    line.split("name='").nth(1).and_then(|s| s.split('\'').next()).expect("package name").to_owned()
}

/// `Signer #N certificate SHA-256 digest` lines of `apksigner verify --print-certs`.
fn apksigner_certs(apk: &Path, min_sdk: u32) -> Vec<String> {
    let out = run(Command::new("apksigner")
        .args(["verify", "--print-certs", "--min-sdk-version", &min_sdk.to_string()])
        .arg(apk));
    out.lines()
        .filter(|l| l.starts_with("Signer #") && l.contains(" certificate SHA-256 digest: "))
        .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        .collect()
}

/// The certificates of the APK's v3 lineage, oldest first (`apksigner lineage --print-certs`).
fn apksigner_lineage(apk: &Path) -> Vec<String> {
    let out = run(Command::new("apksigner").args(["lineage", "--print-certs", "--in"]).arg(apk));
    out.lines()
        .filter(|l| l.contains("in lineage certificate SHA-256 digest: "))
        .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        .collect()
}

fn identify(path: &Path) -> apk::ApkIdentity {
    let f = std::fs::File::open(path).unwrap();
    apk::identify_apk(&f).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Made {
    apk: PathBuf,
    scheme: apk::Scheme,
    min_sdk: u32,
}

/// Builds the APK matrix: v1-only (RSA and EC), v2-only, v3-only, all schemes, v3 with a
/// rotation lineage, and a debug-signed one (the SDK's debug keystore shape).
fn apk_matrix(dir: &Path) -> (BTreeMap<&'static str, Made>, Vec<PathBuf>) {
    let k1 = keystore(dir, "alpha", "RSA", "CN=Alpha Release, O=Example");
    let k2 = keystore(dir, "bravo", "EC", "CN=Bravo Release, O=Example");
    let debug = keystore(dir, "androiddebugkey", "RSA", "CN=Android Debug, O=Android, C=US");
    let off = |s: &str| [format!("--{s}-signing-enabled"), "false".into()];
    let mut m = BTreeMap::new();
    let mut add = |name: &'static str, package: &str, scheme, min_sdk: u32, args: Vec<String>| {
        let apk = unsigned_apk(dir, name, package);
        let mut a = args;
        a.extend(["--min-sdk-version".into(), min_sdk.to_string()]);
        sign(&apk, &a);
        m.insert(name, Made { apk, scheme, min_sdk });
    };
    let cat = |parts: &[&[String]]| parts.concat();
    add("v1-rsa", "com.tencent.mm", apk::Scheme::V1, 21, cat(&[&signer_args(&k1, "alpha"), &off("v2"), &off("v3")]));
    add("v1-ec", "com.kms.free", apk::Scheme::V1, 21, cat(&[&signer_args(&k2, "bravo"), &off("v2"), &off("v3")]));
    add(
        "v2",
        "com.kaspersky.secure.connection",
        apk::Scheme::V2,
        24,
        cat(&[&signer_args(&k2, "bravo"), &off("v1"), &off("v3")]),
    );
    add("v3", "org.example.notes", apk::Scheme::V3, 28, cat(&[&signer_args(&k1, "alpha"), &off("v1"), &off("v2")]));
    add("all", "org.example.maps", apk::Scheme::V3, 21, signer_args(&k2, "bravo"));
    add(
        "debug",
        "org.example.debugapp",
        apk::Scheme::V2,
        21,
        cat(&[&signer_args(&debug, "androiddebugkey"), &off("v3")]),
    );
    let lineage = dir.join("lineage");
    let mut rot = vec!["rotate".into(), "--out".into(), lineage.display().to_string(), "--old-signer".into()];
    rot.extend(signer_args(&k1, "alpha"));
    rot.push("--new-signer".into());
    rot.extend(signer_args(&k2, "bravo"));
    run(Command::new("apksigner").args(&rot));
    let mut next = signer_args(&k1, "alpha");
    next.push("--next-signer".into());
    next.extend(signer_args(&k2, "bravo"));
    next.extend(["--lineage".into(), lineage.display().to_string()]);
    add("v3-rotated", "com.tencent.wework", apk::Scheme::V3, 21, next);
    (m, vec![k1, k2, debug])
}

#[test]
fn apk_identity_matches_aapt_and_apksigner() {
    if !need(&["aapt", "apksigner", "keytool"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (apks, _) = apk_matrix(dir.path());
    for (name, made) in &apks {
        let id = identify(&made.apk);
        assert_eq!(id.manifest.package, badging_package(&made.apk), "{name}: package");
        let theirs = apksigner_certs(&made.apk, made.min_sdk);
        assert_eq!(theirs.len(), 1, "{name}: one signer");
        assert_eq!(id.scheme, Some(made.scheme), "{name}: scheme");
        assert_eq!(id.signer_error, None, "{name}");
        assert_eq!(id.signers.iter().map(apk::Cert::hex).collect::<Vec<_>>(), theirs, "{name}: signer");
        let app = android::apk_app(&id, &made.apk.display().to_string());
        assert_eq!(app.id, id.manifest.package);
        assert_eq!(app.signers[0], theirs[0], "{name}: the app's first signer is the current one");
    }
    // The rotated APK: the lineage apksigner prints is ours, current signer last.
    let rotated = &apks["v3-rotated"];
    let id = identify(&rotated.apk);
    let mut lineage = apksigner_lineage(&rotated.apk);
    assert_eq!(lineage.len(), 2);
    assert_eq!(lineage.pop().unwrap(), id.signers[0].hex(), "the lineage ends at the current signer");
    assert_eq!(id.lineage.iter().map(apk::Cert::hex).collect::<Vec<_>>(), lineage);
    // The old signer is also what pre-v3 platforms see (v1/v2), and both are in the app.
    assert_eq!(apksigner_certs(&rotated.apk, 21)[0], id.signers[0].hex());
    assert_eq!(android::apk_app(&id, "x").signers.len(), 2);
}

#[test]
fn android_rules_match_apks_by_id_glob_signer_and_version() {
    if !need(&["aapt", "apksigner", "keytool"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k_banned = keystore(dir.path(), "tencent", "RSA", "CN=Tencent Stand-in");
    let k_other = keystore(dir.path(), "someone", "EC", "CN=Someone Else");
    let make = |file: &str, package: &str, ks: &Path, alias: &str, version: Option<u32>| {
        let apk = unsigned_apk(dir.path(), file, package);
        if let Some(v) = version {
            replace_manifest(&apk, &axml::encode_manifest(package, Some(v), Some("1.0"), None, true));
        }
        let mut a = signer_args(ks, alias);
        a.extend(["--min-sdk-version".into(), "24".into()]);
        sign(&apk, &a);
        let id = identify(&apk);
        android::apk_app(&id, &apk.display().to_string())
    };
    // A banned package under an innocent file name, a banned signer under another package name,
    // a Kaspersky app matched by glob, an old and a new version of a version-ranged app, and an
    // allowed app.
    let wechat_renamed = make("holiday-photos", "com.tencent.mm", &k_other, "someone", None);
    let by_signer = make("notes", "org.example.notes", &k_banned, "tencent", None);
    let kaspersky = make("vpn", "com.kaspersky.secure.connection", &k_other, "someone", None);
    let old_tool = make("tool-old", "org.example.tool", &k_other, "someone", Some(41));
    let new_tool = make("tool-new", "org.example.tool", &k_other, "someone", Some(1200));
    let allowed = make("maps", "org.example.maps", &k_other, "someone", None);
    let banned_signer = &by_signer.signers[0];
    let policy = format!(
        "expires = \"30d\"\n\
         [[rule]]\nid = \"wechat\"\naction = \"remove\"\n\
         [[rule.match]]\nkind = \"android\"\nid = \"com.tencent.mm\"\n\
         [[rule.match]]\nkind = \"android\"\nsigner = [\"{banned_signer}\"]\n\
         [[rule]]\nid = \"kaspersky\"\naction = \"quarantine\"\n\
         [[rule.match]]\nkind = \"android\"\nid = \"com.kaspersky.*\"\n\
         [[rule]]\nid = \"old-tool\"\naction = \"quarantine\"\n\
         [[rule.match]]\nkind = \"android\"\nid = \"org.example.tool\"\nversion = \"<1000\"\n"
    );
    let src = embargo_policy::source::parse("android.toml", &policy).unwrap_or_else(|d| panic!("{d:?}"));
    let set = RuleSet::compile(src.rules, &[]);
    let verdict = |app| set.verdict(app).map(|v| (v.rule.to_owned(), v.strength));
    assert_eq!(verdict(&wechat_renamed), Some(("wechat".into(), Strength::Weak)));
    assert_eq!(verdict(&by_signer), Some(("wechat".into(), Strength::Strong)));
    assert_eq!(verdict(&kaspersky), Some(("kaspersky".into(), Strength::Weak)));
    assert_eq!(old_tool.version.as_deref(), Some("41"));
    assert_eq!(verdict(&old_tool), Some(("old-tool".into(), Strength::Weak)));
    assert_eq!(new_tool.version.as_deref(), Some("1200"));
    assert_eq!(verdict(&new_tool), None, "versionCode 1200 is outside <1000 (numeric, not string, order)");
    assert_eq!(verdict(&allowed), None);
}

#[test]
fn apk_versions_match_androguard() {
    if !need(&["aapt", "apksigner", "keytool", "androguard"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ks = keystore(dir.path(), "vers", "RSA", "CN=Versions");
    // aapt without android.jar cannot write android: attributes, so these manifests are
    // encoded by axml::encode_manifest (both string-pool encodings), put into an aapt-built APK
    // with `aapt add`, signed by apksigner, and read back by androguard as the oracle.
    let cases: [(&str, Option<u32>, Option<&str>, bool); 5] = [
        ("com.tencent.mm", Some(2800), Some("8.0.49"), false),
        ("com.kms.free", Some(1), Some("11.104.4.10462 – ünïcode"), true),
        ("org.example.big", Some(2_147_483_647), None, false),
        ("org.example.noversion", None, Some("2.0"), true),
        ("org.example.nothing", None, None, false),
    ];
    for (i, (package, code, name, utf8)) in cases.iter().enumerate() {
        let apk = unsigned_apk(dir.path(), &format!("ver{i}"), package);
        replace_manifest(&apk, &axml::encode_manifest(package, *code, *name, None, *utf8));
        let mut a = signer_args(&ks, "vers");
        a.extend(["--min-sdk-version".into(), "24".into()]);
        sign(&apk, &a);
        let out = run(Command::new("androguard").arg("apkid").arg(&apk));
        let json: serde_json::Value = serde_json::from_str(&out).expect("androguard apkid JSON");
        let theirs = json.as_object().unwrap().values().next().unwrap().as_array().unwrap().clone();
        let id = identify(&apk);
        assert_eq!(theirs[0].as_str(), Some(id.manifest.package.as_str()), "{package}");
        let their_code = theirs[1].as_str().map(str::to_owned);
        assert_eq!(their_code, id.manifest.version_code.map(|v| v.to_string()), "{package}: versionCode");
        let their_name = theirs[2].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        assert_eq!(their_name, id.manifest.version_name, "{package}: versionName");
        assert_eq!(badging_package(&apk), id.manifest.package);
    }
}

/// A document as comparable data: (element, attributes as text, trimmed text) in order.
fn flatten(events: &[xml::Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            xml::Event::Start { name, attrs } => {
                let mut s = format!("<{name}");
                for a in attrs {
                    let _ = write!(s, " {}={:?}", a.name, a.value.text());
                }
                s
            }
            xml::Event::End { name } => format!("</{name}>"),
            xml::Event::Text(t) => format!("text {:?}", t.trim()),
        })
        .collect()
}

#[test]
fn abx_fixtures_decode_like_their_text_twins() {
    let dir = fixtures().join("abx");
    let mut compared = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let Some(stem) = name.strip_suffix(".abx") else { continue };
        let bytes = std::fs::read(&path).unwrap();
        let ours = xml::events(&mut abx::AbxReader::new(&bytes)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let twin = if stem.ends_with(".xml") { dir.join(stem) } else { dir.join(format!("{stem}.xml")) };
        if !twin.exists() {
            // pngouin-aosp_verify.abx has no twin: it must decode, and its content is checked
            // in `abx_aosp_verify_fixture`.
            assert!(!ours.is_empty(), "{name}");
            continue;
        }
        let text = std::fs::read(&twin).unwrap();
        // These fixtures come from the original makeabx, which keeps the type suffix in the
        // attribute name (`value-int`), so names compare as they are.
        let theirs = xml::events(&mut xml::TextReader::new(&text)).unwrap();
        let (ours, theirs) = (flatten(&ours), flatten(&theirs));
        assert_eq!(ours.len(), theirs.len(), "{name}: {ours:#?} vs {theirs:#?}");
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a, b, "{name}");
        }
        compared += 1;
    }
    assert_eq!(compared, 8, "every fixture with a twin was compared");
}

/// A packages.xml as a deterministic generator writes it: `n` packages, certificates shared
/// across packages (so most `<cert>`s are index-only), rotation history, system, privileged and
/// updated-system apps, shared users, and the elements a real file has that the reader skips.
/// `typed` writes makeabx's notation (typed attributes, for the ABX twin); otherwise the text
/// Android writes with `persist.sys.binary_xml=false`.
fn generate_packages_xml(n: usize, typed: bool) -> (String, BTreeMap<String, (Vec<String>, i64)>) {
    let t = |name: &str, ty: &str| if typed { format!("{name}-{ty}") } else { name.to_owned() };
    let mut s = String::from("<?xml version='1.0' encoding='utf-8' standalone='yes' ?>\n<packages>\n");
    let _ = writeln!(s, "<version {}=\"34\" {}=\"3\" fingerprint=\"google/panther/panther:14/UQ1A.240205.004/11269751:user/release-keys\" />", t("sdkVersion", "int"), t("databaseVersion", "int"));
    s.push_str("<permissions>\n<item name=\"android.permission.INTERNET\" package=\"android\" protection=\"0\" />\n</permissions>\n");
    // Certificate bytes stand in for DER (the reader hashes bytes; it does not parse X.509).
    let cert = |k: usize| {
        let mut der = vec![0x30, 0x82, (k >> 8) as u8, k as u8];
        der.extend((0..300).map(|i| (i * 7 + k * 13) as u8));
        der
    };
    let sha = |b: &[u8]| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(b))
    };
    let mut written = std::collections::BTreeSet::new();
    let mut expect = BTreeMap::new();
    let mut cert_xml = |k: usize, s: &mut String, extra: &str| {
        if written.insert(k) {
            let _ = write!(
                s,
                "<cert {}=\"{k}\" {}=\"{}\"{extra} />",
                t("index", "int"),
                t("key", "byteshex"),
                hex::encode(cert(k))
            );
        } else {
            let _ = write!(s, "<cert {}=\"{k}\"{extra} />", t("index", "int"));
        }
    };
    for i in 0..n {
        let name = match i % 50 {
            0 => format!("com.tencent.app{i}"),
            1 => format!("com.kaspersky.tool{i}"),
            _ => format!("org.example.pkg{i}.app"),
        };
        let system = i % 7 == 0;
        let privileged = i % 21 == 0;
        let updated = i % 35 == 0;
        let public_flags: i64 = 0x3088_be44 | i64::from(system) | (i64::from(updated) << 7);
        let private_flags: i64 = if privileged { 8 } else { 0 };
        let code_path =
            if system { format!("/system/app/P{i}") } else { format!("/data/app/~~r{i:04}==/{name}-c{i:04}==") };
        let version = 1000 + i as i64 * 3;
        let _ = writeln!(
            s,
            "<package name=\"{name}\" codePath=\"{code_path}\" nativeLibraryPath=\"{code_path}/lib\" primaryCpuAbi=\"arm64-v8a\" {}=\"{public_flags}\" {}=\"{private_flags}\" {}=\"18c0b1d2e30\" {}=\"18c0b1d{i:04x}\" {}=\"{version}\" {}=\"{}\" installer=\"com.android.vending\" {}=\"34\" domainSetId=\"00000000-0000-0000-0000-{i:012}\">",
            t("publicFlags", "int"), t("privateFlags", "int"), t("ft", "longhex"), t("ut", "longhex"),
            t("version", "long"), t("userId", "int"), 10000 + i, t("targetSdkVersion", "int"),
        );
        // Signers: 40 distinct keys shared round-robin; every ninth package rotated from an
        // older key.
        let current = i % 40;
        let rotated = i % 9 == 4;
        let _ = write!(
            s,
            "<sigs {}=\"1\" {}=\"{}\">",
            t("count", "int"),
            t("schemeVersion", "int"),
            if rotated { 3 } else { 2 }
        );
        cert_xml(current, &mut s, "");
        let mut signers = vec![sha(&cert(current))];
        if rotated {
            let old = 40 + i % 5;
            let _ = write!(s, "<pastSigs {}=\"2\">", t("count", "int"));
            cert_xml(old, &mut s, &format!(" {}=\"23\"", t("flags", "int")));
            cert_xml(current, &mut s, &format!(" {}=\"23\"", t("flags", "int")));
            s.push_str("</pastSigs>");
            signers.push(sha(&cert(old)));
        }
        s.push_str("</sigs>\n");
        let _ = write!(s, "<install-initiator-sigs {}=\"1\" {}=\"3\">", t("count", "int"), t("schemeVersion", "int"));
        cert_xml(45, &mut s, "");
        s.push_str("</install-initiator-sigs>\n");
        s.push_str("<proper-signing-keyset identifier=\"1\" />\n</package>\n");
        if updated {
            let _ = writeln!(
                s,
                "<updated-package name=\"{name}\" codePath=\"/system/app/P{i}\" {}=\"1\" {}=\"1\" />",
                t("ft", "longhex"),
                t("version", "long")
            );
        }
        expect.insert(name, (signers, version));
    }
    let _ = write!(
        s,
        "<shared-user name=\"android.uid.system\" {}=\"1000\"><sigs {}=\"1\" {}=\"3\">",
        t("userId", "int"),
        t("count", "int"),
        t("schemeVersion", "int")
    );
    cert_xml(46, &mut s, "");
    s.push_str("</sigs></shared-user>\n<keyset-settings version=\"1\"><keys><public-key identifier=\"1\" value=\"MIIBIjAN\" /></keys><lastIssuedKeyId value=\"1\" /></keyset-settings>\n</packages>\n");
    (s, expect)
}

fn check_generated(db: &packages_xml::PackageDb, expect: &BTreeMap<String, (Vec<String>, i64)>) {
    assert_eq!(db.packages.len(), expect.len());
    assert!(db.warnings.is_empty(), "{:?}", db.warnings);
    for (i, (name, (signers, version))) in expect.iter().enumerate() {
        let p = &db.packages[name];
        assert_eq!(&p.signers_hex(), signers, "{name}");
        assert_eq!(p.version, Some(*version), "{name}");
        assert_eq!(p.installer.as_deref(), Some("com.android.vending"));
        let _ = i;
    }
}

/// Generated packages.xml pairs committed in fixtures (so the reading test runs without java):
/// the text was written by `generate_packages_xml` and the ABX by makeabx.jar from its typed
/// twin. EMBARGO_REGEN_ANDROID_FIXTURES=1 rewrites them (needs java).
const GENERATED: [usize; 2] = [300, 500];

#[test]
fn makeabx_packages_xml_reads_like_text() {
    let gen_dir = fixtures().join("generated");
    let regen = std::env::var("EMBARGO_REGEN_ANDROID_FIXTURES").is_ok_and(|v| v == "1");
    for n in GENERATED {
        let (text, expect) = generate_packages_xml(n, false);
        let (typed, _) = generate_packages_xml(n, true);
        let text_path = gen_dir.join(format!("packages-{n}.xml"));
        let abx_path = gen_dir.join(format!("packages-{n}.xml.abx"));
        if regen {
            std::fs::create_dir_all(&gen_dir).unwrap();
            std::fs::write(&text_path, &text).unwrap();
            let typed_path = gen_dir.join(format!("packages-{n}-typed.xml"));
            std::fs::write(&typed_path, &typed).unwrap();
            run(Command::new("java").arg("-jar").arg(fixtures().join("makeabx/makeabx.jar")).arg(&typed_path));
            std::fs::rename(gen_dir.join(format!("packages-{n}-typed.xml.abx")), &abx_path).unwrap();
            std::fs::remove_file(&typed_path).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&text_path).unwrap(), text, "the committed text is the generator's");
        let from_text = android::read_packages(text.as_bytes()).unwrap();
        let abx_bytes = std::fs::read(&abx_path).unwrap();
        assert!(abx_bytes.starts_with(b"ABX\0"));
        let from_abx = android::read_packages(&abx_bytes).unwrap();
        assert!(from_abx.binary && !from_text.binary);
        assert_eq!(from_abx.packages, from_text.packages, "{n} packages: ABX and text read identically");
        check_generated(&from_abx, &expect);
        let systems = from_abx.packages.values().filter(|p| android::is_protected(p)).count();
        assert!(systems > n / 10, "the generator makes system apps");
    }
}

#[test]
fn makeabx_fresh_conversion_reads_like_text() {
    if !need(&["java"]) {
        return;
    }
    // A size not committed, converted now by Android's serializer.
    let dir = tempfile::tempdir().unwrap();
    let (text, expect) = generate_packages_xml(257, false);
    let (typed, _) = generate_packages_xml(257, true);
    let typed_path = dir.path().join("packages.xml");
    std::fs::write(&typed_path, typed).unwrap();
    run(Command::new("java").arg("-jar").arg(fixtures().join("makeabx/makeabx.jar")).arg(&typed_path));
    let abx_bytes = std::fs::read(dir.path().join("packages.xml.abx")).unwrap();
    let from_abx = android::read_packages(&abx_bytes).unwrap();
    assert_eq!(from_abx.packages, android::read_packages(text.as_bytes()).unwrap().packages);
    check_generated(&from_abx, &expect);
    // package-restrictions.xml through the same serializer.
    let pr = dir.path().join("package-restrictions.xml");
    std::fs::write(
        &pr,
        "<package-restrictions>\n<pkg name=\"com.tencent.mm\" inst-bool=\"false\" />\n<pkg name=\"org.example.a\" suspended-bool=\"true\" enabled-int=\"3\" />\n</package-restrictions>\n",
    )
    .unwrap();
    run(Command::new("java").arg("-jar").arg(fixtures().join("makeabx/makeabx.jar")).arg(&pr));
    let r =
        android::read_package_restrictions(&std::fs::read(dir.path().join("package-restrictions.xml.abx")).unwrap())
            .unwrap();
    assert!(!r["com.tencent.mm"].installed);
    assert!(r["org.example.a"].installed && r["org.example.a"].suspended);
    assert_eq!(r["org.example.a"].enabled, 3);
}

#[test]
fn abx_aosp_verify_fixture() {
    // Written by AOSP's BinaryXmlSerializer with every attribute type and every text-like token
    // (pngouin/android-abx's aosp_verify harness); it has no text twin, so the expected values
    // here are the ones its generator wrote.
    let bytes = std::fs::read(fixtures().join("abx/pngouin-aosp_verify.abx")).unwrap();
    let ev = xml::events(&mut abx::AbxReader::new(&bytes)).unwrap();
    let xml::Event::Start { name, attrs } = &ev[0] else { panic!("{ev:?}") };
    assert_eq!(name, "root");
    let get = |n: &str| attrs.iter().find(|a| a.name == n).map(|a| a.value.clone()).unwrap();
    assert_eq!(get("str"), xml::Value::Str("hello".into()));
    assert_eq!(get("bh").text(), "deadbeef");
    assert_eq!(get("bb").text(), "AQID");
    assert_eq!(get("i"), xml::Value::Int(-42));
    assert_eq!(get("ih").text(), "-35014542", "Integer.toString(0xcafebabe, 16)");
    assert_eq!(get("f"), xml::Value::Float(3.5));
    assert_eq!(get("d").text(), "2.71828");
    assert_eq!(get("bt"), xml::Value::Bool(true));
    assert_eq!(get("bf"), xml::Value::Bool(false));
    // TEXT, CDSECT and the &amp; entity are one text; comment, PI, DOCDECL and ignorable
    // whitespace are not reported.
    assert_eq!(ev[1], xml::Event::Text("hello worldraw <not-a-tag>&".into()));
    assert_eq!(ev.len(), 5, "{ev:?}");
}

#[test]
fn makeabx_package_restrictions_reads_like_text() {
    // `generated/package-restrictions-0.xml` is written as `Settings.writePackageRestrictionsLPr`
    // writes it in text; its `.abx` twin was made from the typed twin by makeabx.jar (AOSP's
    // BinaryXmlSerializer): booleans, ints, longs and a long-hex as Android types them, and
    // `<suspend-params suspending-package>` children (Android 10+).
    let dir = fixtures().join("generated");
    let text = std::fs::read(dir.join("package-restrictions-0.xml")).unwrap();
    let abx_bytes = std::fs::read(dir.join("package-restrictions-0.xml.abx")).unwrap();
    assert!(abx_bytes.starts_with(b"ABX\0"));
    let ours = flatten(&xml::events(&mut abx::AbxReader::new(&abx_bytes)).unwrap());
    let theirs = flatten(&xml::events(&mut xml::TextReader::new(&text)).unwrap());
    assert_eq!(ours, theirs, "same elements and attributes");
    let from_abx = android::read_package_restrictions(&abx_bytes).unwrap();
    assert_eq!(from_abx, android::read_package_restrictions(&text).unwrap());
    let mm = &from_abx["com.tencent.mm"];
    assert!(mm.installed && mm.stopped && mm.suspended && !mm.not_launched);
    assert_eq!(mm.suspended_by, ["root", "com.example.dpc"], "who suspended it, in file order");
    let wework = &from_abx["com.tencent.wework"];
    assert!(!wework.installed && wework.stopped && wework.not_launched && !wework.suspended);
    assert!(from_abx["org.example.maps"].installed && from_abx["org.example.maps"].not_launched);
    assert_eq!(from_abx["com.kaspersky.free"].enabled, 3, "COMPONENT_ENABLED_STATE_DISABLED_USER");
    assert!(from_abx["com.example.hidden"].hidden, "the legacy `blocked` name");
    assert_eq!(from_abx.len(), 5);
}
