//! Identifying a file as an app, from an already opened fd (never by path, never by running it).
//!
//! - `appimage`: ELF magic and the AppImage magic `AI\x01`/`AI\x02` at offset 8, or (the magic is
//!   optional) an ELF with a squashfs after its section headers, or a file named `*.AppImage`. When the desktop
//!   entry embedded in the squashfs can be read (`squashfs`: gzip or zstd images), the id is its
//!   desktop file id (`com.tencent.WeChat.desktop` → `com.tencent.WeChat`), the name its `Name=`
//!   (else `X-AppImage-Name=`) and the version its `X-AppImage-Version=`, so renaming the file does
//!   not change what the app is. Otherwise (type 1, other compressions, damaged images) the id is
//!   the file name and the name comes from it (`WeChat-x86_64.AppImage` → `WeChat`).
//! - `desktop`: a freedesktop `.desktop` entry; id is the desktop file id (path under the
//!   applications dir, `/` → `-`), name is `Name=`, and the `Exec=` target is listed in `paths`.
//! - `file`: any regular file, by name and sha256.
//!
//! Every app carries the sha256 of its file. This module reads; it never moves anything.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use embargo_policy::app::{App, Scope};
use embargo_policy::rules::Kind;
use sha2::{Digest as _, Sha256};

use crate::safefs::Meta;

pub mod squashfs;

/// Largest desktop entry read.
const DESKTOP_MAX: u64 = 256 * 1024;

pub fn sha256_of(file: &mut std::fs::File) -> std::io::Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Whether the first bytes are an AppImage (type 1 or 2).
pub fn is_appimage(head: &[u8]) -> bool {
    head.len() >= 11 && &head[..4] == b"\x7fELF" && &head[8..10] == b"AI" && (head[10] == 1 || head[10] == 2)
}

/// `WeChat-x86_64.AppImage` → `WeChat`; `my_tool_1.2.AppImage` → `my`.
pub fn appimage_name(file_name: &str) -> String {
    let stem = file_name.strip_suffix(".AppImage").or_else(|| file_name.strip_suffix(".appimage")).unwrap_or(file_name);
    stem.split(['-', '_']).next().filter(|s| !s.is_empty()).unwrap_or(stem).to_owned()
}

/// A parsed `[Desktop Entry]`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DesktopEntry {
    pub name: Option<String>,
    pub exec: Option<String>,
    pub is_application: bool,
    /// `X-AppImage-Name=` and `X-AppImage-Version=` (AppImage desktop integration keys).
    pub appimage_name: Option<String>,
    pub appimage_version: Option<String>,
}

pub fn parse_desktop(text: &str) -> DesktopEntry {
    let mut e = DesktopEntry::default();
    let mut in_main = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_main = line == "[Desktop Entry]";
            continue;
        }
        if !in_main || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        match k.trim() {
            "Name" => e.name = Some(v.trim().to_owned()),
            "Exec" => e.exec = Some(v.trim().to_owned()),
            "Type" => e.is_application = v.trim() == "Application",
            "X-AppImage-Name" => e.appimage_name = Some(v.trim().to_owned()),
            "X-AppImage-Version" => e.appimage_version = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    e
}

/// The program an `Exec=` line runs: its first word, unquoted.
pub fn exec_target(exec: &str) -> Option<String> {
    let first = exec.trim_start();
    let word = if let Some(rest) = first.strip_prefix('"') {
        rest.split('"').next()?
    } else {
        first.split_whitespace().next()?
    };
    (!word.is_empty()).then(|| word.to_owned())
}

/// Identifies the opened file `rel` under a root of `kind` at `root_path`, with its sha256.
/// `None`: not an app of that kind.
pub fn identify(
    kind: Kind,
    root_path: &Path,
    rel: &Path,
    file: &mut std::fs::File,
    meta: &Meta,
) -> std::io::Result<Option<App>> {
    let Some(mut app) = identify_unhashed(kind, root_path, rel, file, meta)? else { return Ok(None) };
    app.sha256 = Some(sha256_of(file)?);
    Ok(Some(app))
}

/// [`identify`] without the sha256: what the file is, read from its first bytes and metadata
/// only, so a verdict that no hash can change is reached without reading a large file whole
/// (the daemon hashes after the move then; see `Daemon::enforce_file`).
pub fn identify_unhashed(
    kind: Kind,
    root_path: &Path,
    rel: &Path,
    file: &mut std::fs::File,
    meta: &Meta,
) -> std::io::Result<Option<App>> {
    let file_name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let full = root_path.join(rel).display().to_string();
    let scope = if meta.uid == 0 { Scope::System } else { Scope::User(meta.uid) };
    let mut head = [0u8; 16];
    file.seek(SeekFrom::Start(0))?;
    let n = read_up_to(file, &mut head)?;
    let artifact =
        if matches!(kind, Kind::Appimage | Kind::File) { installer_artifact(&file_name, file)? } else { None };
    let mut app = match kind {
        _ if artifact.is_some() => artifact.expect("checked"),
        Kind::Appimage => {
            // The `AI\x02` bytes are optional (the kernel and the type-2 runtime ignore them), so
            // an ELF with a squashfs after its section headers, or anything named *.AppImage
            // (type 1, a script), is a candidate too.
            let elf = head[..n].starts_with(b"\x7fELF");
            let named = file_name.to_ascii_lowercase().ends_with(".appimage");
            if !(is_appimage(&head[..n]) || named || elf && crate::squashfs::has_image_after_elf(file)) {
                return Ok(None);
            }
            let mut a = App::new(Kind::Appimage, file_name.clone());
            a.name = Some(appimage_name(&file_name));
            match crate::squashfs::appimage_desktop_entry(file) {
                Ok((desktop_file, text)) => {
                    let entry = parse_desktop(&text);
                    let id = desktop_file.strip_suffix(".desktop").unwrap_or(&desktop_file);
                    if !id.is_empty() {
                        a.id = id.to_owned();
                    }
                    a.name = entry.name.or(entry.appimage_name).or(a.name);
                    a.version = entry.appimage_version;
                }
                Err(e) => tracing::debug!(path = %full, "AppImage desktop entry not read: {e}"),
            }
            a
        }
        Kind::Desktop => {
            if !file_name.ends_with(".desktop") || meta.size > DESKTOP_MAX {
                return Ok(None);
            }
            let mut text = String::new();
            file.seek(SeekFrom::Start(0))?;
            file.take(DESKTOP_MAX).read_to_string(&mut text).ok();
            let entry = parse_desktop(&text);
            if !entry.is_application {
                return Ok(None);
            }
            let id = rel.to_string_lossy().trim_end_matches(".desktop").replace('/', "-");
            let mut a = App::new(Kind::Desktop, id);
            a.name = entry.name;
            if let Some(t) = entry.exec.as_deref().and_then(exec_target) {
                a.paths.push(t);
            }
            a
        }
        _ => {
            let mut a = App::new(Kind::File, file_name.clone());
            a.name = Some(file_name.clone());
            a
        }
    };
    app.paths.insert(0, full);
    app.scope = scope;
    Ok(Some(app))
}

/// Installer artifacts as they sit in download folders, identified without running them:
/// `.deb` (control: Package, Version, Maintainer) and `.rpm` (header: NAME, EPOCH:VERSION-RELEASE,
/// VENDOR), both read in-process with bounded sizes (`artifact`; by file name when they cannot be
/// read), `.flatpakref` (Name), `.apk` (package name, version code and
/// signers: `android::identify_apk`; by file name when it cannot be read). `.AppImage` files are handled as AppImages.
fn installer_artifact(file_name: &str, file: &mut std::fs::File) -> std::io::Result<Option<App>> {
    let lower = file_name.to_ascii_lowercase();
    let stem = |ext: &str| file_name[..file_name.len() - ext.len()].to_owned();
    let app = if lower.ends_with(".deb") {
        let mut a;
        match crate::artifact::deb_control(file) {
            Ok(c) => {
                a = App::new(Kind::Deb, c.package);
                a.version = c.version;
                a.publisher = c.maintainer;
            }
            Err(e) => {
                tracing::info!(file = ?file_name, "not read as a Debian package: {e}");
                a = App::new(Kind::Deb, stem(".deb").split('_').next().unwrap_or_default().to_owned());
            }
        }
        a.name = Some(a.id.clone());
        a
    } else if lower.ends_with(".rpm") {
        let mut a;
        match crate::artifact::rpm_header(file) {
            Ok(h) => {
                a = App::new(Kind::Rpm, h.name.clone());
                a.version = Some(h.evr());
                a.publisher = h.vendor.filter(|s| !s.is_empty());
            }
            Err(e) => {
                tracing::info!(file = ?file_name, "not read as an rpm package: {e}");
                // The name is the file name's up to the version.
                let s = stem(".rpm");
                let name = s
                    .split('-')
                    .take_while(|part| !part.starts_with(|c: char| c.is_ascii_digit()))
                    .collect::<Vec<_>>()
                    .join("-");
                a = App::new(Kind::Rpm, if name.is_empty() { s } else { name });
            }
        }
        a.name = Some(a.id.clone());
        a
    } else if lower.ends_with(".flatpakref") {
        let mut text = String::new();
        file.seek(SeekFrom::Start(0))?;
        file.take(64 * 1024).read_to_string(&mut text).ok();
        let name = text.lines().find_map(|l| l.trim().strip_prefix("Name=")).map(|s| s.trim().to_owned());
        let Some(name) = name else { return Ok(None) };
        let mut a = App::new(Kind::Flatpak, name.clone());
        a.name = Some(name);
        a
    } else if lower.ends_with(".apk") {
        // The package name, version code and signer certificates, read with positioned reads
        // from the opened fd (never the whole file). An APK that does not parse keeps the
        // file-name identity, so a sha256 rule still matches it.
        match crate::android::identify_apk(file) {
            Ok(id) => {
                let mut a = crate::android::apk_app(&id, "");
                // The caller puts the full path first; `apk_app`'s placeholder is dropped.
                a.paths.clear();
                a
            }
            Err(e) => {
                tracing::info!(file = ?file_name, "not read as an APK: {e}");
                let mut a = App::new(Kind::Android, file_name.to_owned());
                a.name = Some(stem(".apk"));
                a
            }
        }
    } else {
        return Ok(None);
    };
    Ok(Some(app))
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Bytes of a minimal file that identifies as an AppImage (an ELF header with the type-2 magic),
/// followed by `payload`. Used by the demo and tests to "install" an AppImage without a
/// squashfs; real AppImages carry the same 11 bytes.
pub fn fake_appimage(payload: &[u8]) -> Vec<u8> {
    let mut v = b"\x7fELF\x02\x01\x01\x00AI\x02\x00\x00\x00\x00\x00".to_vec();
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appimage_magic_and_names() {
        assert!(is_appimage(&fake_appimage(b"x")));
        assert!(!is_appimage(b"\x7fELF\x02\x01\x01\x00\x00\x00\x00"));
        assert!(!is_appimage(b"#!/bin/sh\n"));
        assert_eq!(appimage_name("WeChat-x86_64.AppImage"), "WeChat");
        assert_eq!(appimage_name("Firefox.AppImage"), "Firefox");
    }

    #[test]
    fn desktop_entries() {
        let e = parse_desktop("[Desktop Entry]\nType=Application\nName=WeChat\nExec=\"/opt/wechat/wechat\" %U\n[Desktop Action new]\nName=Other\n");
        assert_eq!(e.name.as_deref(), Some("WeChat"));
        assert!(e.is_application);
        assert_eq!(exec_target(e.exec.as_deref().unwrap()).as_deref(), Some("/opt/wechat/wechat"));
        assert_eq!(exec_target("env FOO=1 app").as_deref(), Some("env"));
    }
}
