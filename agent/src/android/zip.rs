//! The few ZIP structures an APK identity needs, read from an opened file with positioned reads:
//! the end-of-central-directory record (EOCD), the central directory (streamed, never held
//! whole), and one entry's data (stored or deflated, size-capped).
//!
//! Everything here is untrusted input read as root. The reader never reads the archive whole:
//! the EOCD search reads at most the last 64 KiB + 22 bytes, the central directory is walked in
//! 64 KiB windows with an entry-count cap, and an entry is read only when its compressed and
//! declared sizes are under the caller's cap (decompression output is capped too, so a deflate
//! bomb stops at the cap). ZIP64 archives are refused: APKs are limited to 4 GiB by the
//! platform's own tools, and refusing keeps the offsets 32-bit.
//!
//! Format: PKWARE APPNOTE.TXT §4.3 (only the parts APKs use).

use std::fs::File;
use std::os::unix::fs::FileExt as _;

const EOCD_SIG: u32 = 0x0605_4b50;
const CDH_SIG: u32 = 0x0201_4b50;
const LFH_SIG: u32 = 0x0403_4b50;
const EOCD_LEN: u64 = 22;
const MAX_COMMENT: u64 = 0xffff;
/// Central-directory entries walked at most (Android's own build tools stay far below this; a
/// large app has a few thousand files).
pub const MAX_ENTRIES: usize = 250_000;
/// Central-directory window read per positioned read.
const WINDOW: usize = 64 * 1024;
/// Longest entry name considered (longer names are skipped, never allocated).
const MAX_NAME: usize = 4096;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ZipError {
    #[error("not a ZIP archive (no end-of-central-directory record)")]
    NotZip,
    #[error("ZIP64 archives are not supported")]
    Zip64,
    #[error("malformed ZIP: {0}")]
    Malformed(&'static str),
    #[error("the central directory has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("entry {name} is {size} bytes, over the {cap}-byte cap")]
    TooLarge { name: String, size: u64, cap: u64 },
    #[error("entry {name} uses compression method {method} (stored and deflate are supported)")]
    Method { name: String, method: u16 },
    #[error("entry {0} does not decompress to its declared size")]
    Corrupt(String),
    #[error("reading the archive: {0}")]
    Io(String),
}

fn bad(what: &'static str) -> ZipError {
    ZipError::Malformed(what)
}

fn io(e: std::io::Error) -> ZipError {
    ZipError::Io(e.to_string())
}

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads exactly `len` bytes at `offset`, or fails naming a truncated archive.
pub(crate) fn read_at(file: &File, offset: u64, len: usize) -> Result<Vec<u8>, ZipError> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            bad("truncated archive")
        } else {
            io(e)
        }
    })?;
    Ok(buf)
}

/// Where the central directory is, from the EOCD record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eocd {
    /// File offset of the EOCD record itself.
    pub offset: u64,
    pub cd_offset: u64,
    pub cd_size: u64,
    pub entries: u64,
    pub file_len: u64,
}

/// Finds the EOCD: the last record whose comment length reaches exactly the end of the file (as
/// apksig requires, so a comment cannot hide a second EOCD).
pub fn find_eocd(file: &File) -> Result<Eocd, ZipError> {
    let file_len = file.metadata().map_err(io)?.len();
    if file_len < EOCD_LEN {
        return Err(ZipError::NotZip);
    }
    let tail_len = file_len.min(EOCD_LEN + MAX_COMMENT);
    let tail_start = file_len - tail_len;
    let tail = read_at(file, tail_start, tail_len as usize)?;
    let mut pos = tail.len() - EOCD_LEN as usize;
    loop {
        if le32(&tail, pos) == EOCD_SIG {
            let comment = u64::from(le16(&tail, pos + 20));
            if pos as u64 + EOCD_LEN + comment == tail_len {
                let disk = le16(&tail, pos + 4);
                let cd_disk = le16(&tail, pos + 6);
                let entries_here = le16(&tail, pos + 8);
                let entries = le16(&tail, pos + 10);
                let cd_size = le32(&tail, pos + 12);
                let cd_offset = le32(&tail, pos + 16);
                if entries == 0xffff || cd_size == 0xffff_ffff || cd_offset == 0xffff_ffff {
                    return Err(ZipError::Zip64);
                }
                if disk != 0 || cd_disk != 0 || entries_here != entries {
                    return Err(bad("multi-disk archive"));
                }
                let offset = tail_start + pos as u64;
                let (cd_offset, cd_size) = (u64::from(cd_offset), u64::from(cd_size));
                if cd_offset.checked_add(cd_size).is_none_or(|end| end > offset) {
                    return Err(bad("central directory runs past the end-of-central-directory record"));
                }
                return Ok(Eocd { offset, cd_offset, cd_size, entries: u64::from(entries), file_len });
            }
        }
        if pos == 0 {
            return Err(ZipError::NotZip);
        }
        pos -= 1;
    }
}

/// One central-directory entry: what is needed to read its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub method: u16,
    pub flags: u16,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub local_offset: u64,
}

/// Walks the central directory and returns the entries for which `want(name)` is true (at most
/// `max_wanted` of them). Names that are not UTF-8 or longer than 4 KiB are skipped.
pub fn find_entries(
    file: &File,
    eocd: &Eocd,
    mut want: impl FnMut(&str) -> bool,
    max_wanted: usize,
) -> Result<Vec<Entry>, ZipError> {
    let mut found = Vec::new();
    let end = eocd.cd_offset + eocd.cd_size;
    let mut pos = eocd.cd_offset;
    let mut buf: Vec<u8> = Vec::with_capacity(WINDOW);
    let mut buf_start = pos;
    let mut count = 0usize;
    // Ensures `buf` holds [at, at + len) (len <= WINDOW + header), refilling from `at`.
    let fill = |buf: &mut Vec<u8>, buf_start: &mut u64, at: u64, len: usize| -> Result<(), ZipError> {
        if at >= *buf_start && at + len as u64 <= *buf_start + buf.len() as u64 {
            return Ok(());
        }
        if at + len as u64 > end {
            return Err(bad("central directory entry runs past the directory"));
        }
        let n = ((end - at) as usize).min(WINDOW.max(len));
        *buf = read_at(file, at, n)?;
        *buf_start = at;
        Ok(())
    };
    while pos < end {
        count += 1;
        if count > MAX_ENTRIES {
            return Err(ZipError::TooManyEntries);
        }
        fill(&mut buf, &mut buf_start, pos, 46)?;
        let h = &buf[(pos - buf_start) as usize..];
        if le32(h, 0) != CDH_SIG {
            return Err(bad("central directory entry signature"));
        }
        let flags = le16(h, 8);
        let method = le16(h, 10);
        let compressed_size = u64::from(le32(h, 20));
        let uncompressed_size = u64::from(le32(h, 24));
        let name_len = usize::from(le16(h, 28));
        let extra_len = usize::from(le16(h, 30));
        let comment_len = usize::from(le16(h, 32));
        let local_offset = u64::from(le32(h, 42));
        if name_len <= MAX_NAME {
            fill(&mut buf, &mut buf_start, pos, 46 + name_len)?;
            let at = (pos - buf_start) as usize + 46;
            if let Ok(name) = std::str::from_utf8(&buf[at..at + name_len]) {
                if found.len() < max_wanted && want(name) {
                    if compressed_size == 0xffff_ffff || uncompressed_size == 0xffff_ffff || local_offset == 0xffff_ffff
                    {
                        return Err(ZipError::Zip64);
                    }
                    found.push(Entry {
                        name: name.to_owned(),
                        method,
                        flags,
                        compressed_size,
                        uncompressed_size,
                        local_offset,
                    });
                }
            }
        }
        pos += 46 + (name_len + extra_len + comment_len) as u64;
    }
    if pos != end {
        return Err(bad("central directory size does not match its entries"));
    }
    Ok(found)
}

/// Reads and, if deflated, inflates one entry, refusing anything over `cap` bytes (declared,
/// compressed or produced).
pub fn read_entry(file: &File, eocd: &Eocd, entry: &Entry, cap: u64) -> Result<Vec<u8>, ZipError> {
    let too_large = |size| ZipError::TooLarge { name: entry.name.clone(), size, cap };
    if entry.uncompressed_size > cap {
        return Err(too_large(entry.uncompressed_size));
    }
    if entry.compressed_size > cap {
        return Err(too_large(entry.compressed_size));
    }
    if entry.flags & 1 != 0 {
        return Err(bad("encrypted entry"));
    }
    let lfh = read_at(file, entry.local_offset, 30)?;
    if le32(&lfh, 0) != LFH_SIG {
        return Err(bad("local file header signature"));
    }
    let data_start = entry.local_offset + 30 + u64::from(le16(&lfh, 26)) + u64::from(le16(&lfh, 28));
    // The data must lie before the central directory (or the signing block before it).
    if data_start.checked_add(entry.compressed_size).is_none_or(|e| e > eocd.cd_offset) {
        return Err(bad("entry data runs into the central directory"));
    }
    let raw = read_at(file, data_start, entry.compressed_size as usize)?;
    let out = match entry.method {
        0 => raw,
        8 => miniz_oxide::inflate::decompress_to_vec_with_limit(&raw, cap as usize).map_err(|e| {
            if matches!(e.status, miniz_oxide::inflate::TINFLStatus::HasMoreOutput) {
                too_large(cap + 1)
            } else {
                ZipError::Corrupt(entry.name.clone())
            }
        })?,
        m => return Err(ZipError::Method { name: entry.name.clone(), method: m }),
    };
    if out.len() as u64 != entry.uncompressed_size {
        return Err(ZipError::Corrupt(entry.name.clone()));
    }
    Ok(out)
}
