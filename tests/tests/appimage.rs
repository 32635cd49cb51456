//! AppImages as they really are: an ELF runtime with a squashfs image appended, built here with
//! the real `mksquashfs`. The agent reads the embedded desktop entry (gzip and zstd images,
//! plain or symlinked entries, fragments or whole blocks, compressed or not), falls back to the
//! file name when it cannot (xz), never panics on damaged images, and a renamed WeChat AppImage
//! is still quarantined by the example policy.

use std::path::Path;
use std::time::Duration;

use embargo_agent::squashfs::{appimage_desktop_entry, SquashError};
use embargo_e2e::*;
use embargo_policy::example::WECHAT_KASPERSKY_TOML;

fn entry_of(bytes: &[u8], dir: &Path) -> Result<(String, String), SquashError> {
    let path = dir.join("probe.AppImage");
    std::fs::write(&path, bytes).unwrap();
    appimage_desktop_entry(&std::fs::File::open(&path).unwrap())
}

#[test]
fn the_embedded_desktop_entry_is_read_from_real_images() {
    if !need(&["mksquashfs"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let variants: &[&[&str]] = &[
        &["-comp", "gzip"],
        &["-comp", "zstd"],
        &["-comp", "gzip", "-no-fragments"],
        &["-comp", "zstd", "-no-fragments", "-b", "4096"],
        &["-comp", "gzip", "-noI", "-noD", "-noF"],
        &["-comp", "xz"],
        &["-comp", "xz", "-Xbcj", "x86", "-no-fragments"],
        &["-comp", "xz", "-Xdict-size", "25%", "-b", "65536"],
    ];
    for args in variants {
        for symlinked in [false, true] {
            let spec = RealAppImage {
                symlinked,
                mksquashfs_args: args,
                ..RealAppImage::new("com.tencent.WeChat", "WeChat", "4.0.1.11")
            };
            let (file, text) =
                entry_of(&spec.build(tmp.path()), tmp.path()).unwrap_or_else(|e| panic!("{args:?} {symlinked}: {e}"));
            assert_eq!(file, "com.tencent.WeChat.desktop", "{args:?}");
            assert!(text.starts_with("[Desktop Entry]\n") && text.contains("\nName=WeChat\n"), "{args:?}: {text}");
            assert!(text.ends_with("X-AppImage-Version=4.0.1.11\n"), "{args:?}: {text}");
        }
    }
}

#[test]
fn a_root_with_many_entries_spanning_metadata_blocks_is_listed() {
    if !need(&["mksquashfs"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // 700 long names sort before the desktop entry: the root listing spans several 8 KiB
    // metadata blocks and several directory headers (at most 256 entries each).
    for args in [&["-comp", "zstd"][..], &["-comp", "gzip", "-noI"][..]] {
        let spec = RealAppImage {
            padding_files: 700,
            mksquashfs_args: args,
            ..RealAppImage::new("org.example.Tool", "Tool", "1.0")
        };
        let (file, text) = entry_of(&spec.build(tmp.path()), tmp.path()).unwrap();
        assert_eq!(file, "org.example.Tool.desktop");
        assert!(text.contains("\nName=Tool\n"), "{text}");
    }
}

#[test]
fn unsupported_compression_and_non_images_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(entry_of(&appimage("no squashfs here"), tmp.path()), Err(SquashError::NoImage));
    assert_eq!(entry_of(b"#!/bin/sh\n", tmp.path()), Err(SquashError::NoImage));
    if !need(&["mksquashfs"]) {
        return;
    }
    for (comp, id) in [("lzo", 3), ("lz4", 5)] {
        let spec = RealAppImage {
            mksquashfs_args: &["-comp", comp],
            ..RealAppImage::new("com.tencent.WeChat", "WeChat", "1")
        };
        assert_eq!(entry_of(&spec.build(tmp.path()), tmp.path()), Err(SquashError::Unsupported(id)), "{comp}");
    }
}

/// Damaged images of every kind (flipped bits anywhere in the squashfs, truncation) give an
/// error or an entry, never a panic, a hang or an unbounded allocation.
#[test]
fn damaged_images_never_panic() {
    if !need(&["mksquashfs"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = std::fs::metadata("/bin/true").unwrap().len() as usize;
    for args in [
        &["-comp", "gzip"][..],
        &["-comp", "zstd"][..],
        &["-comp", "gzip", "-noI", "-noD", "-noF"][..],
        &["-comp", "xz", "-Xbcj", "x86"][..],
    ] {
        let spec = RealAppImage {
            symlinked: true,
            mksquashfs_args: args,
            ..RealAppImage::new("com.tencent.WeChat", "WeChat", "1")
        };
        let good = spec.build(tmp.path());
        let image_len = good.len() - runtime;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as usize
        };
        let mut errors = 0;
        for round in 0..1500 {
            let mut bad = good.clone();
            if round % 10 == 0 {
                bad.truncate(runtime + next() % image_len);
            } else {
                // The superblock, the tables at the end (where the structure lives), or anywhere.
                for _ in 0..1 + next() % 4 {
                    let at = match next() % 3 {
                        0 => next() % 96,
                        1 => image_len - 1 - next() % 4096.min(image_len),
                        _ => next() % image_len,
                    };
                    bad[runtime + at] ^= 1 << (next() % 8);
                }
            }
            errors += usize::from(entry_of(&bad, tmp.path()).is_err());
        }
        assert!(errors > 0, "no damage was ever noticed: the mutations do not reach the parser");
    }
}

#[test]
fn a_renamed_wechat_appimage_is_still_quarantined_and_real_images_show_their_identity() {
    if !need(&["mksquashfs"]) {
        return;
    }
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let work = tempfile::tempdir().unwrap();
    let wechat = RealAppImage {
        symlinked: true,
        mksquashfs_args: &["-comp", "zstd"],
        ..RealAppImage::new("com.tencent.WeChat", "WeChat", "4.0.1.11")
    }
    .build(work.path());
    let firefox = RealAppImage::new("org.mozilla.firefox", "Firefox", "133.0").build(work.path());
    let allowed = dev.install("Applications/browser.AppImage", &firefox);
    let banned = dev.install("Downloads/notes.AppImage", &wechat);
    eventually("the renamed WeChat to leave ~/Downloads", Duration::from_secs(15), || (!banned.exists()).then_some(()));
    let items = dev.quarantine_list();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["rule"], "wechat");
    assert_eq!(items[0]["original_path"], banned.to_str().unwrap());
    let entry = eventually("Firefox in the inventory", Duration::from_secs(15), || dev.inventory_has(&allowed));
    assert_eq!(entry["app"]["kind"], "appimage", "{entry}");
    assert_eq!(entry["app"]["id"], "org.mozilla.firefox", "{entry}");
    assert_eq!(entry["app"]["name"], "Firefox", "{entry}");
    assert_eq!(entry["app"]["version"], "133.0", "{entry}");
    assert!(entry.get("verdict").is_none(), "{entry}");
    assert!(allowed.exists());
}
