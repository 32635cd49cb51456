//! The one place with `unsafe`: system calls std and rustix's safe API do not cover.
//!
//! `release_code_pages` is the idle trim (ARCHITECTURE.md, "Idle footprint"): after a quiet
//! second the daemon drops its page-table entries for the clean, read-only file-backed pages of
//! its executable and the libraries it started with (code, read-only data). Those pages stay in
//! the kernel's page cache, shared and reclaimable like any file cache, so the daemon's resident
//! set shrinks to what it really holds (heap, stacks, relocated data) and the next event maps
//! the code it needs back in with minor faults (the first event after a trim costs a fraction
//! of a millisecond more; the latency bench measures it).

use std::path::{Path, PathBuf};

/// One mapping from /proc/self/smaps that is safe to drop: private, not writable, backed by a
/// file we started with, and without a single anonymous (copied-on-write) page.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Clean {
    start: usize,
    end: usize,
}

/// Libraries linked at start-up and never unloaded. Modules loaded later (NSS) are left alone:
/// only mappings that cannot be unmapped and replaced under us are touched.
fn is_startup_library(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
    ["libc.so", "libm.so", "libgcc_s.so", "ld-linux", "libpthread.so", "libdl.so", "librt.so"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Parses smaps text into the mappings that may be dropped.
fn clean_mappings(smaps: &str, exe: Option<&Path>) -> Vec<Clean> {
    let mut out = Vec::new();
    // (range, eligible so far) of the mapping whose fields are being read.
    let mut current: Option<(Clean, bool)> = None;
    let flush = |cur: Option<(Clean, bool)>, out: &mut Vec<Clean>| {
        if let Some((c, true)) = cur {
            out.push(c);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
                flush(current.take(), &mut out);
                continue;
            };
            flush(current.take(), &mut out);
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).map(PathBuf::from);
            let private_read_only = perms.len() == 4 && !perms.contains('w') && perms.ends_with('p');
            let ours = path.as_deref().is_some_and(|p| Some(p) == exe || is_startup_library(p));
            current = Some((Clean { start, end }, private_read_only && ours && start < end));
        } else if first == "Anonymous:" {
            // Any copied-on-write page (relocations, breakpoints) would be lost: skip the mapping.
            if fields.next() != Some("0") {
                if let Some((_, eligible)) = current.as_mut() {
                    *eligible = false;
                }
            }
        }
    }
    flush(current.take(), &mut out);
    out
}

/// Drops this process's mappings of clean, read-only pages of its executable and start-up
/// libraries; returns the bytes of address space advised. Errors only when /proc is unreadable.
pub fn release_code_pages() -> std::io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe").ok();
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for m in clean_mappings(&smaps, exe.as_deref()) {
        // SAFETY: the range is exactly one private, non-writable mapping of a file this process
        // started with and never unmaps (the executable or a start-up library), and it holds no
        // anonymous pages, so every page in it is an unmodified copy of the file. MADV_DONTNEED
        // on such a mapping only removes page-table entries: the next access faults the same
        // bytes back in from the page cache. No Rust object is invalidated.
        let advised = unsafe {
            rustix::mm::madvise(m.start as *mut std::ffi::c_void, m.end - m.start, rustix::mm::Advice::LinuxDontNeed)
        };
        if advised.is_ok() {
            released += m.end - m.start;
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c8a00000-55d0c8ab0000 r--p 00000000 08:01 1234                       /opt/embargo/bin/embargod
Size:                704 kB
Rss:                 700 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd
55d0c8ab0000-55d0c8e00000 r-xp 000b0000 08:01 1234                       /opt/embargo/bin/embargod
Anonymous:             0 kB
55d0c8e00000-55d0c8e29000 r--p 00400000 08:01 1234                       /opt/embargo/bin/embargod
Anonymous:           164 kB
55d0c8e29000-55d0c8e2b000 rw-p 00429000 08:01 1234                       /opt/embargo/bin/embargod
Anonymous:             8 kB
55d0c9000000-55d0c9024000 rw-p 00000000 00:00 0                          [heap]
Anonymous:           144 kB
7f0000000000-7f0000028000 r--p 00000000 08:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f0000028000-7f000019d000 r-xp 00028000 08:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f0000200000-7f0000210000 r-xp 00000000 08:01 77                         /usr/lib/x86_64-linux-gnu/libnss_files.so.2
Anonymous:             0 kB
7f0000300000-7f0000310000 r--s 00000000 08:01 55                         /opt/embargo/bin/embargod
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
7ffd00010000-7ffd00031000 rw-p 00000000 00:00 0                          [stack]
Anonymous:            64 kB
";

    #[test]
    fn only_clean_private_read_only_mappings_of_startup_files_are_dropped() {
        let got = clean_mappings(SMAPS, Some(Path::new("/opt/embargo/bin/embargod")));
        assert_eq!(
            got,
            vec![
                Clean { start: 0x55d0c8a00000, end: 0x55d0c8ab0000 },
                Clean { start: 0x55d0c8ab0000, end: 0x55d0c8e00000 },
                Clean { start: 0x7f0000000000, end: 0x7f0000028000 },
                Clean { start: 0x7f0000028000, end: 0x7f000019d000 },
            ],
            "relocated (anonymous) data, writable, shared, heap, stack, vdso and late-loaded modules stay"
        );
        assert!(clean_mappings(SMAPS, Some(Path::new("/other"))).iter().all(|c| c.start >= 0x7f0000000000));
    }

    #[test]
    fn release_shrinks_the_resident_set_and_the_code_still_runs() {
        fn rss_file_kb() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        let before = rss_file_kb();
        let released = release_code_pages().unwrap();
        let after = rss_file_kb();
        assert!(released > 0, "nothing eligible in this test binary's mappings");
        assert!(after < before, "RssFile {before} kB -> {after} kB");
        // Code and read-only data fault back in with the same bytes: parsing, formatting and
        // hashing still give the known answers.
        assert_eq!(clean_mappings(SMAPS, Some(Path::new("/opt/embargo/bin/embargod"))).len(), 4);
        assert_eq!(embargo_policy::trust::sha256_hex(b"abc").get(..8), Some("ba7816bf"));
    }
}
