//! `android_inspect apk FILE…` prints each APK's app identity (package, version code, signer
//! SHA-256s) as JSON; `android_inspect packages PACKAGES_XML [PACKAGE_RESTRICTIONS_XML]` prints
//! the installed apps packages.xml lists (ABX or text) with their protection and per-user state.
//!
//! The Android parsers' smoke test on a device or under qemu (packaging/android/check.sh) until
//! the daemon's `android` source uses them; exit 1 on any unreadable input, naming it.

use std::process::ExitCode;

use embargo_agent::android;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("android_inspect: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("apk") if args.len() > 1 => {
            for path in &args[1..] {
                let f = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
                let id = android::identify_apk(&f).map_err(|e| format!("{path}: {e}"))?;
                let mut app = serde_json::to_value(android::apk_app(&id, path)).map_err(|e| e.to_string())?;
                app["scheme"] = id.scheme.map(|s| s.as_str()).into();
                app["version_name"] = id.manifest.version_name.clone().into();
                println!("{app}");
            }
            Ok(())
        }
        Some("packages") if args.len() > 1 => {
            let read = |p: &String| {
                let f = std::fs::File::open(p).map_err(|e| format!("{p}: {e}"))?;
                android::read_xml_file(&f).map_err(|e| format!("{p}: {e}"))
            };
            let db = android::read_packages(&read(&args[1])?).map_err(|e| format!("{}: {e}", args[1]))?;
            let users = match args.get(2) {
                Some(p) => Some(android::read_package_restrictions(&read(p)?).map_err(|e| format!("{p}: {e}"))?),
                None => None,
            };
            for p in db.packages.values() {
                let mut app = serde_json::to_value(android::installed_app(p)).map_err(|e| e.to_string())?;
                app["protected"] = android::is_protected(p).into();
                if let Some(u) = &users {
                    app["installed_for_user"] = u.get(&p.name).is_none_or(|s| s.installed).into();
                }
                println!("{app}");
            }
            eprintln!(
                "{} packages ({}), {} warnings",
                db.packages.len(),
                if db.binary { "ABX" } else { "text XML" },
                db.warnings.len()
            );
            Ok(())
        }
        _ => {
            Err("usage: android_inspect apk FILE... | android_inspect packages PACKAGES_XML [PACKAGE_RESTRICTIONS_XML]"
                .into())
        }
    }
}
