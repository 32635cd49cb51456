//! A user's crafted `.deb` cannot grow the agent: its `control.tar.xz` (about a hundred KB)
//! decompresses to a tar entry of 160 MiB. The agent reads installer artifacts in-process, as
//! root; the xz decoder now streams its output under the control archive's cap (64 MiB) and a
//! dictionary cap (16 MiB). The decoder before it (lzma-rs) held an LZMA2 block's whole output
//! in memory before writing any: the agent's peak grew by the whole 160 MiB (tried).

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use embargo_e2e::*;
use embargo_policy::example::WECHAT_KASPERSKY_TOML;

/// A ustar header for a regular file `name` of `size` bytes.
fn tar_header(name: &str, size: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// `xz -1` of a tar stream: a header for `./junk` of `size` bytes, then that many zeros.
fn xz_bomb(size: u64) -> Vec<u8> {
    let mut child =
        Command::new("xz").args(["-1", "-c", "-T1"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&tar_header("./junk", size)).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..size >> 20 {
            stdin.write_all(&zeros).unwrap();
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// An `ar` archive of `members` (name, bytes), as dpkg-deb writes a `.deb`.
fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        out.extend_from_slice(
            format!("{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", name, 0, 0, 0, "100644", data.len()).as_bytes(),
        );
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}

fn vm(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap().to_owned();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn an_xz_bomb_in_a_deb_does_not_grow_the_agent() {
    if !need(&["xz"]) {
        return;
    }
    let bomb = xz_bomb(160 << 20);
    assert!(bomb.len() < 1 << 20, "the bomb is {} bytes", bomb.len());
    let deb = ar(&[("debian-binary", b"2.0\n"), ("control.tar.xz", &bomb), ("data.tar.xz", &bomb)]);
    let dev = Device::new(WECHAT_KASPERSKY_TOML);
    let pid = dev.agent.as_ref().unwrap().0.id();
    let before = vm(pid, "VmHWM:");
    dev.install("Downloads/holiday-photos_1.0.deb", &deb);
    let path = dev.home.join("Downloads/holiday-photos_1.0.deb");
    let out = dev.ctl(&["check", &path.display().to_string()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let after = vm(pid, "VmHWM:");
    eprintln!("embargod VmHWM {before} kB -> {after} kB; check: {text}");
    assert!(
        after < before + 48 * 1024,
        "the agent's peak grew from {before} kB to {after} kB reading a {} byte .deb",
        deb.len()
    );
    // And it still answers, with the file seen.
    eventually("status answers", Duration::from_secs(10), || dev.status().map(|_| ()));
}
