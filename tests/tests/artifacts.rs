//! Finding 7: `.deb` and `.rpm` packages are read in-process (`embargo_agent::artifact`), never by
//! root's `dpkg-deb`/`rpm`. These tests build real packages with `dpkg-deb --build` (gzip, xz,
//! zstd and no compression) and `rpmbuild`, and use the real tools as the oracle: the fields the
//! agent reads must equal what `dpkg-deb -f` and `rpm -qp --qf` print. The oracle runs as
//! `nobody` when the test runs as root (it never needs privilege for a file the test made).

use std::path::{Path, PathBuf};
use std::process::Command;

use embargo_agent::artifact;
use embargo_e2e::*;

/// `program args…`, as nobody when we are root; its stdout.
fn oracle(program: &str, args: &[&str]) -> String {
    let mut c = if is_root() && have("setpriv") {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", program]);
        c
    } else {
        Command::new(program)
    };
    let out = c.args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn world_readable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

fn build_deb(dir: &Path, name: &str, version: &str, maintainer: &str, compression: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let pkg = dir.join(format!("{name}-{compression}"));
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/bin")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: {maintainer}\nDescription: test\n two lines\n"),
    )
    .unwrap();
    // Some bulk in the control archive before and after ./control (md5sums, scripts).
    std::fs::write(pkg.join("DEBIAN/md5sums"), "d41d8cd98f00b204e9800998ecf8427e  usr/bin/x\n".repeat(500)).unwrap();
    std::fs::write(pkg.join("DEBIAN/postinst"), "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(pkg.join("DEBIAN/postinst"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(pkg.join("usr/bin/x"), "binary").unwrap();
    let out = dir.join(format!("{name}_{compression}.deb"));
    let o = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Z", compression, "--build"])
        .arg(&pkg)
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "dpkg-deb --build: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    out
}

#[test]
fn real_debs_in_every_compression_read_like_dpkg_deb() {
    if !need(&["dpkg-deb"]) {
        return;
    }
    let tmp = world_readable_tempdir();
    for (name, version, maint) in
        [("wechat", "1:4.0.1-2", "Tencent <wechat@tencent.com>"), ("kesl", "12.0.0.6672", "Kaspersky Lab <a@b.c>")]
    {
        for comp in ["gzip", "xz", "zstd", "none"] {
            let deb = build_deb(tmp.path(), name, version, maint, comp);
            let path = deb.to_str().unwrap();
            let want = oracle("dpkg-deb", &["-f", path, "Package", "Version", "Maintainer"]);
            let got =
                artifact::deb_control(&std::fs::File::open(&deb).unwrap()).unwrap_or_else(|e| panic!("{comp}: {e}"));
            let got = format!(
                "Package: {}\nVersion: {}\nMaintainer: {}\n",
                got.package,
                got.version.unwrap_or_default(),
                got.maintainer.unwrap_or_default()
            );
            assert_eq!(got, want, "{name} with {comp}");
        }
    }
}

#[test]
fn real_rpms_read_like_rpm_qp() {
    if !need(&["rpm", "rpmbuild"]) {
        return;
    }
    let tmp = world_readable_tempdir();
    for (name, epoch, version, vendor) in
        [("wechat", Some(3), "4.0.1", Some("Tencent")), ("kesl", None, "12.0.0", None)]
    {
        let spec = tmp.path().join(format!("{name}.spec"));
        let epoch_line = epoch.map(|e| format!("Epoch: {e}\n")).unwrap_or_default();
        let vendor_line = vendor.map(|v| format!("Vendor: {v}\n")).unwrap_or_default();
        std::fs::write(
            &spec,
            format!(
                "Name: {name}\n{epoch_line}Version: {version}\nRelease: 7\n{vendor_line}Summary: test\nLicense: none\nBuildArch: noarch\nAutoReqProv: no\n%description\ntest\n%install\nmkdir -p %{{buildroot}}/usr/bin\nprintf 'binary' > %{{buildroot}}/usr/bin/{name}\n%files\n/usr/bin/{name}\n"
            ),
        )
        .unwrap();
        let top = tmp.path().join("rpmbuild");
        let o = Command::new("rpmbuild")
            .args(["-bb", "--define", &format!("_topdir {}", top.display())])
            .arg(&spec)
            .output()
            .unwrap();
        assert!(o.status.success(), "rpmbuild: {}", String::from_utf8_lossy(&o.stderr));
        let rpm = top.join(format!("RPMS/noarch/{name}-{version}-7.noarch.rpm"));
        {
            use std::os::unix::fs::PermissionsExt as _;
            for d in [top.clone(), top.join("RPMS"), top.join("RPMS/noarch")] {
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            std::fs::set_permissions(&rpm, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let want = oracle(
            "rpm",
            &[
                "-qp",
                "--nosignature",
                "--nodigest",
                "--qf",
                "%{NAME}\\n%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n%{ARCH}\\n%{VENDOR}\\n",
                rpm.to_str().unwrap(),
            ],
        );
        let h = artifact::rpm_header(&std::fs::File::open(&rpm).unwrap()).unwrap();
        let got = format!(
            "{}\n{}:{}-{}\n{}\n{}\n",
            h.name,
            h.epoch.unwrap_or(0),
            h.version,
            h.release,
            h.arch.as_deref().unwrap_or(""),
            h.vendor.as_deref().unwrap_or("(none)")
        );
        assert_eq!(got, want, "{name}");
    }
}

/// The identification the agent does (`identify`) names the package from its control file, not
/// from its file name, with no tool run.
#[test]
fn a_renamed_deb_is_identified_by_its_control_file() {
    if !need(&["dpkg-deb"]) {
        return;
    }
    let tmp = world_readable_tempdir();
    let deb = build_deb(tmp.path(), "wechat", "4.0", "Tencent <a@b>", "zstd");
    let renamed = tmp.path().join("holiday-photos_1.0.deb");
    std::fs::rename(&deb, &renamed).unwrap();
    let root = embargo_agent::safefs::open_root(tmp.path()).unwrap();
    let (mut file, meta) =
        embargo_agent::safefs::open_file_beneath(&root, Path::new("holiday-photos_1.0.deb")).unwrap();
    let app = embargo_agent::identify::identify(
        embargo_policy::rules::Kind::File,
        tmp.path(),
        Path::new("holiday-photos_1.0.deb"),
        &mut file,
        &meta,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (app.kind, app.id.as_str(), app.version.as_deref()),
        (embargo_policy::rules::Kind::Deb, "wechat", Some("4.0"))
    );
}
