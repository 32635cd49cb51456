//! A local, offline flatpak repository for the tests, built with the real flatpak tools: a tiny
//! runtime (`org.example.Platform//1`) and apps on it (`<id>//stable`, one shell script each),
//! exported into `<base>/repo`, and user installations (`flatpak --user` with
//! `FLATPAK_USER_DIR`) that install from it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The runtime every test app uses.
pub const RUNTIME: &str = "org.example.Platform";

/// `flatpak --user ARGS` against the installation `user_dir`, as the caller (root in the tests).
pub fn flatpak(user_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("flatpak").arg("--user").args(args).env("FLATPAK_USER_DIR", user_dir).output().unwrap()
}

pub fn flatpak_ok(user_dir: &Path, args: &[&str]) {
    let o = flatpak(user_dir, args);
    assert!(o.status.success(), "flatpak {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn run_ok(mut c: Command) {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// flatpak's default architecture here (`x86_64`, …).
pub fn default_arch() -> String {
    String::from_utf8(Command::new("flatpak").arg("--default-arch").output().unwrap().stdout).unwrap().trim().to_owned()
}

/// A repository at `<base>/repo` holding the runtime; apps are added with [`LocalRepo::add_app`].
/// Building needs the runtime installed: `build_inst` is the installation the builds use.
pub struct LocalRepo {
    pub repo: PathBuf,
    base: PathBuf,
    build_inst: PathBuf,
}

impl LocalRepo {
    /// Exports the runtime into `<base>/repo` (readable by everyone, so other users can install
    /// from it) and installs it into `build_inst`, added as remote `local`.
    pub fn new(base: &Path, build_inst: &Path) -> Self {
        let repo = base.join("repo");
        let arch = default_arch();
        let rt = base.join("runtime");
        std::fs::create_dir_all(rt.join("files")).unwrap();
        std::fs::create_dir_all(rt.join("usr")).unwrap();
        std::fs::write(
            rt.join("metadata"),
            format!("[Runtime]\nname={RUNTIME}\nruntime={RUNTIME}/{arch}/1\nsdk={RUNTIME}/{arch}/1\n"),
        )
        .unwrap();
        let mut c = Command::new("flatpak");
        c.args(["build-export", "--runtime"]).arg(&repo).arg(&rt).arg("1");
        run_ok(c);
        let r = Self { repo, base: base.to_path_buf(), build_inst: build_inst.to_path_buf() };
        r.add_remote(build_inst);
        flatpak_ok(build_inst, &["install", "-y", "--noninteractive", "local", &format!("{RUNTIME}//1")]);
        r
    }

    /// Adds this repository to installation `inst` as remote `local` (no GPG: a local test
    /// repository).
    pub fn add_remote(&self, inst: &Path) {
        flatpak_ok(inst, &["remote-add", "--if-not-exists", "--no-gpg-verify", "local", self.repo.to_str().unwrap()]);
    }

    /// Builds app `id` (branch `stable`) and exports it into the repository.
    pub fn add_app(&self, id: &str) {
        let dir = self.base.join(format!("build-{id}"));
        let with_inst = |mut c: Command| {
            c.env("FLATPAK_USER_DIR", &self.build_inst);
            run_ok(c)
        };
        let mut c = Command::new("flatpak");
        c.args(["build-init"]).arg(&dir).args([id, RUNTIME, RUNTIME, "1"]);
        with_inst(c);
        std::fs::create_dir_all(dir.join("files/bin")).unwrap();
        std::fs::write(dir.join("files/bin/app"), "#!/bin/sh\necho app\n").unwrap();
        let mut c = Command::new("flatpak");
        c.args(["build-finish", "--command=app"]).arg(&dir);
        with_inst(c);
        let mut c = Command::new("flatpak");
        c.arg("build-export").arg(&self.repo).arg(&dir).arg("stable");
        with_inst(c);
    }

    /// Installs `refs` (e.g. `com.tencent.WeChat//stable`; the runtime comes along) into the
    /// user installation `inst` from this repository.
    pub fn install(&self, inst: &Path, refs: &[&str]) {
        self.add_remote(inst);
        let mut args = vec!["install", "-y", "--noninteractive", "local"];
        args.extend_from_slice(refs);
        flatpak_ok(inst, &args);
    }
}

/// Whether app `id` (branch `stable`) is deployed in installation `inst` (its `active` link is
/// there), read without running flatpak.
pub fn deployed(inst: &Path, id: &str) -> bool {
    std::fs::symlink_metadata(inst.join(format!("app/{id}/{}/stable/active", default_arch()))).is_ok()
}
