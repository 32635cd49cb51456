//! Android: what an APK is (package, version, signer) and what packages.xml says is installed,
//! as the project's [`App`] identity (kind `android`, id = package name, version = long version
//! code, signers = certificate SHA-256 hex, no publisher).
//!
//! This module only reads; it never acts. It is built so the daemon integration (an `android`
//! source and package manager, see `docs/android.md`) needs no parsing of its own:
//! - `zip`, `axml`, `apk`: the APK identity from an opened fd, with positioned reads, never the
//!   whole file.
//! - `xml`, `abx`, `packages_xml`: packages.xml and package-restrictions.xml in ABX or text XML.
//! - this file: the `App`s, the device layout (`/data/app/~~…/PKG-…`, `vmdl<SESSION>.tmp`) and
//!   the `cmd package` argument lists the integration will run.
//!
//! Every parser here takes untrusted input as root and is bounded (see each module's header);
//! the bounds are also listed in `docs/android.md`.

pub mod abx;
pub mod apk;
pub mod axml;
pub mod packages_xml;
pub mod xml;
pub mod zip;

use std::io::Read as _;

use embargo_policy::app::App;
use embargo_policy::rules::Kind;

pub use apk::{identify_apk, ApkError, ApkIdentity};
pub use packages_xml::{read_package_restrictions, read_packages, InstalledPackage, PackageDb, UserPackageState};

/// Largest packages.xml (or package-restrictions.xml) read: a device with 2,000 packages has a
/// text file of a few MiB.
pub const PACKAGES_XML_MAX: u64 = 64 * 1024 * 1024;

/// The app identity of an APK file (kind `android`). `path` is listed in `paths`.
pub fn apk_app(id: &ApkIdentity, path: &str) -> App {
    let mut app = App::new(Kind::Android, id.manifest.package.clone());
    app.name = Some(id.manifest.package.clone());
    app.version = id.manifest.version_code.map(|v| v.to_string());
    app.signers = id.all_signers_hex();
    app.paths.push(path.to_owned());
    app
}

/// The app identity of an installed package (kind `android`); `paths` holds its code path.
pub fn installed_app(p: &InstalledPackage) -> App {
    let mut app = App::new(Kind::Android, p.name.clone());
    app.name = Some(p.name.clone());
    app.version = p.version.map(|v| v.to_string());
    app.signers = p.signers_hex();
    if !p.code_path.is_empty() {
        app.paths.push(p.code_path.clone());
    }
    app
}

/// Whether a package must never be uninstalled: system and privileged apps, and updates over
/// them (those can only be rolled back to the system copy), as Debian's essential packages.
pub fn is_protected(p: &InstalledPackage) -> bool {
    p.is_system() || p.is_privileged() || p.is_updated_system()
}

/// Reads a whole XML file from an opened fd, refusing more than `PACKAGES_XML_MAX` bytes.
pub fn read_xml_file(file: &std::fs::File) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    file.take(PACKAGES_XML_MAX + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > PACKAGES_XML_MAX {
        return Err(std::io::Error::other(format!("larger than the {PACKAGES_XML_MAX}-byte cap")));
    }
    Ok(buf)
}

/// The install session id of a staging directory name: `vmdl<id>.tmp` (ids are positive
/// 31-bit ints, `PackageInstallerService.allocateSessionIdLocked`).
pub fn staging_session(dir_name: &str) -> Option<u32> {
    let id = dir_name.strip_prefix("vmdl")?.strip_suffix(".tmp")?;
    if id.is_empty() || id.len() > 10 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse::<u32>().ok().filter(|&v| (1..=i32::MAX as u32).contains(&v))
}

/// The package name of an Android 11+ code directory name `PKG-<base64>` (the part before the
/// first `-`, as `PackageManagerServiceUtils.tryParsePackageName`), if it is a valid name.
pub fn code_dir_package(dir_name: &str) -> Option<&str> {
    let (pkg, _) = dir_name.split_once('-')?;
    axml::valid_package_name(pkg).then_some(pkg)
}

/// `cmd package` argument lists, as AOSP's `PackageManagerShellCommand` parses them (see
/// `docs/android.md` for the source lines). Run as root, `cmd package …` and `pm …` are the same.
pub mod cmd {
    /// Remove for every user (`uninstall` without `--user` is `USER_ALL`; `--user all` says so
    /// explicitly and is parsed by `UserHandle.parseUserArg`).
    pub fn uninstall(package: &str) -> Vec<String> {
        ["package", "uninstall", "--user", "all", package].map(str::to_owned).to_vec()
    }

    /// Stop an install in flight (root may abandon any session: `isCallingUidOwner`).
    pub fn install_abandon(session: u32) -> Vec<String> {
        vec!["package".into(), "install-abandon".into(), session.to_string()]
    }

    /// Reversible quarantine for one user: the app stays installed and visible but cannot run,
    /// and the user sees `message` when they try.
    pub fn suspend(package: &str, user: u32, message: &str) -> Vec<String> {
        ["package", "suspend", "--user", &user.to_string(), "--dialogMessage", message, package]
            .map(str::to_owned)
            .to_vec()
    }

    /// Undo [`suspend`].
    pub fn unsuspend(package: &str, user: u32) -> Vec<String> {
        ["package", "unsuspend", "--user", &user.to_string(), package].map(str::to_owned).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_layout_names() {
        assert_eq!(staging_session("vmdl1234567.tmp"), Some(1_234_567));
        assert_eq!(staging_session("vmdl2147483647.tmp"), Some(i32::MAX as u32));
        assert_eq!(staging_session("vmdl2147483648.tmp"), None);
        assert_eq!(staging_session("vmdl0.tmp"), None);
        assert_eq!(staging_session("vmdl.tmp"), None);
        assert_eq!(staging_session("vmdl12x.tmp"), None);
        assert_eq!(staging_session("smdl12.tmp"), None);
        assert_eq!(code_dir_package("com.tencent.mm-d29ybGQ=="), Some("com.tencent.mm"));
        assert_eq!(code_dir_package("com.tencent.mm"), None);
        assert_eq!(code_dir_package("..-x"), None);
    }

    /// AOSP's `ShellCommand` option walk as `PackageManagerShellCommand` uses it: after the
    /// command word, arguments starting with `-` are options (each of `takes_value` consumes the
    /// next argument) until the first that does not; the rest are positional.
    fn aosp_parse<'a>(argv: &'a [String], takes_value: &[&str]) -> (Vec<(&'a str, Option<&'a str>)>, Vec<&'a str>) {
        assert_eq!(argv[0], "package", "cmd's service name");
        let mut it = argv[2..].iter().map(String::as_str).peekable();
        let mut opts = Vec::new();
        while let Some(a) = it.peek().copied().filter(|a| a.starts_with('-')) {
            it.next();
            let v = takes_value.contains(&a).then(|| it.next().expect("option value"));
            opts.push((a, v));
        }
        (opts, it.collect())
    }

    #[test]
    fn cmd_argv_parse_as_package_manager_shell_command_does() {
        // runUninstall: options -k, --user, --versionCode; then the package; a second positional
        // would make it remove only that split, so there must be none.
        let argv = cmd::uninstall("com.tencent.mm");
        assert_eq!(argv[1], "uninstall");
        let (opts, pos) = aosp_parse(&argv, &["--user", "--versionCode"]);
        assert_eq!(opts, vec![("--user", Some("all"))], "all users (UserHandle.parseUserArg(\"all\") = USER_ALL)");
        assert_eq!(pos, vec!["com.tencent.mm"], "no split name");
        // install-abandon takes the session id as its only argument.
        let argv = cmd::install_abandon(1_234_567);
        assert_eq!((argv[1].as_str(), aosp_parse(&argv, &[]).1), ("install-abandon", vec!["1234567"]));
        // runSuspend: --user, --dialogMessage (one argument, spaces and all: no shell), then packages.
        let argv = cmd::suspend("com.tencent.mm", 10, "Blocked by your organisation: rule wechat");
        assert_eq!(argv[1], "suspend");
        let (opts, pos) = aosp_parse(&argv, &["--user", "--dialogMessage"]);
        assert_eq!(
            opts,
            vec![("--user", Some("10")), ("--dialogMessage", Some("Blocked by your organisation: rule wechat"))]
        );
        assert_eq!(pos, vec!["com.tencent.mm"]);
        let argv = cmd::unsuspend("com.tencent.mm", 0);
        let (opts, pos) = aosp_parse(&argv, &["--user"]);
        assert_eq!((argv[1].as_str(), opts, pos), ("unsuspend", vec![("--user", Some("0"))], vec!["com.tencent.mm"]));
        // Package names come validated, so none can pose as an option.
        assert!(!axml::valid_installed_package_name("-k"));
    }

    #[test]
    fn protected_packages() {
        let mut p = InstalledPackage { name: "a.b".into(), ..Default::default() };
        assert!(!is_protected(&p));
        p.private_flags = packages_xml::PRIVATE_FLAG_PRIVILEGED;
        assert!(is_protected(&p));
        p.private_flags = 0;
        p.has_system_copy = true;
        assert!(is_protected(&p));
    }
}
