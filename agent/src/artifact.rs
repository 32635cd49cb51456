//! Installer packages read in-process, through the opened fd, with every size bounded: the
//! `control` file of a `.deb` and the identifying tags of an `.rpm` header.
//!
//! Root used to hand every `.deb` in a watched folder to `dpkg-deb`, which extracts the whole
//! control archive to /tmp first: a 197 KiB package with a zstd-bombed `control.tar` made root
//! write gigabytes while enforcement waited. Nothing here runs a tool, writes a file, or holds
//! more than the bounds below; a package that exceeds one is refused with an error naming it.
//!
//! - `.deb`: an `ar` archive (`debian-binary` first, at most `MAX_AR_MEMBERS` members scanned);
//!   the `control.tar[.gz|.xz|.zst]` member (at most `MAX_MEMBER` bytes) is decompressed as a
//!   stream into a tar reader that stops at `./control` (at most `MAX_CONTROL` bytes); at most
//!   `MAX_CONTROL_TAR` decompressed bytes are read before it, and a zstd frame declaring a window
//!   over `MAX_ZSTD_WINDOW` is refused before decoding (the decoder holds a window before it
//!   yields anything), as is an xz stream declaring a dictionary over `MAX_XZ_DICT`. gzip:
//!   miniz_oxide; zstd: ruzstd; xz: xz4rust through `crate::xz` (all pure Rust; the xz decoder
//!   streams its output, so the cap bounds it).
//! - `.rpm`: lead (96 bytes), signature header, header. Index counts at most `MAX_RPM_INDEX`,
//!   data stores at most `MAX_RPM_DATA` (rpm's own limits); only the index and the few strings
//!   named (NAME, VERSION, RELEASE, EPOCH, ARCH, VENDOR; each at most `MAX_RPM_STRING`) are read.
//!
//! This module reads; it never decides or moves anything.

use std::io::Write;
use std::os::unix::fs::FileExt as _;

/// Members of the `ar` archive looked at before `control.tar*`.
pub const MAX_AR_MEMBERS: usize = 8;
/// Largest compressed `control.tar*` member read.
pub const MAX_MEMBER: u64 = 16 << 20;
/// Decompressed bytes of the control archive read before `./control` is found.
pub const MAX_CONTROL_TAR: u64 = 64 << 20;
/// Largest `./control` file.
pub const MAX_CONTROL: u64 = 1 << 20;
/// Largest zstd window accepted (zstd's own default limit for decoders is 128 MiB; control
/// archives are small and dpkg's compressor never needs more than a few MiB).
pub const MAX_ZSTD_WINDOW: u64 = 16 << 20;
/// Largest xz dictionary a control archive may declare (xz's presets up to -7; dpkg-deb's
/// default is 8 MiB): the decoder allocates what the stream declares, so this bounds it.
pub const MAX_XZ_DICT: usize = 16 << 20;
/// Largest pax extended header or GNU long name read.
const MAX_TAR_META: u64 = 64 << 10;
/// rpm's own bounds on a header (`hdrchkTags`, `hdrchkData`).
pub const MAX_RPM_INDEX: u32 = 0xffff;
pub const MAX_RPM_DATA: u32 = 0x0fff_ffff;
/// Longest rpm tag string read.
pub const MAX_RPM_STRING: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("reading the package: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a Debian package: {0}")]
    Deb(String),
    #[error("not an rpm package: {0}")]
    Rpm(String),
    #[error("{what} exceeds {limit} bytes; refused (a decompression bomb or a damaged package)")]
    TooLarge { what: &'static str, limit: u64 },
}

fn deb(msg: impl Into<String>) -> ArtifactError {
    ArtifactError::Deb(msg.into())
}

fn rpm(msg: impl Into<String>) -> ArtifactError {
    ArtifactError::Rpm(msg.into())
}

/// Reads exactly `buf.len()` bytes at `off`; a short file is a truncated package.
fn read_at(file: &std::fs::File, buf: &mut [u8], off: u64) -> Result<bool, std::io::Error> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64)? {
            0 => return Ok(false),
            n => done += n,
        }
    }
    Ok(true)
}

/// The fields of a `.deb`'s `control` file that identify it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DebControl {
    pub package: String,
    pub version: Option<String>,
    pub maintainer: Option<String>,
    pub architecture: Option<String>,
}

/// Reads the `control` file of the `.deb` opened as `file` (see the module header for bounds).
pub fn deb_control(file: &std::fs::File) -> Result<DebControl, ArtifactError> {
    let len = file.metadata()?.len();
    let mut magic = [0u8; 8];
    if !read_at(file, &mut magic, 0)? || &magic != b"!<arch>\n" {
        return Err(deb("no ar archive magic"));
    }
    let mut pos = 8u64;
    for i in 0..MAX_AR_MEMBERS {
        let mut h = [0u8; 60];
        if !read_at(file, &mut h, pos)? {
            return Err(deb("no control.tar member"));
        }
        if &h[58..60] != b"`\n" {
            return Err(deb(format!("damaged ar member header at offset {pos}")));
        }
        let name = std::str::from_utf8(&h[..16]).map_err(|_| deb("ar member name is not text"))?;
        let name = name.trim_end_matches(' ').trim_end_matches('/');
        let size: u64 = std::str::from_utf8(&h[48..58])
            .ok()
            .and_then(|s| s.trim_end_matches(' ').parse().ok())
            .ok_or_else(|| deb(format!("ar member {name:?}: bad size")))?;
        let data = pos + 60;
        if data.checked_add(size).is_none_or(|end| end > len) {
            return Err(deb(format!("ar member {name:?} runs past the end of the file")));
        }
        if i == 0 {
            let mut v = [0u8; 4];
            if name != "debian-binary" || size < 4 || !read_at(file, &mut v, data)? || &v[..2] != b"2." {
                return Err(deb("the first member is not debian-binary 2.x"));
            }
        } else if let Some(suffix) = name.strip_prefix("control.tar") {
            if size > MAX_MEMBER {
                return Err(ArtifactError::TooLarge { what: "the control.tar member", limit: MAX_MEMBER });
            }
            let mut member = vec![0u8; size as usize];
            if !read_at(file, &mut member, data)? {
                return Err(deb("control.tar member truncated"));
            }
            let control = control_from_tar(suffix, &member)?;
            return parse_control(&control);
        }
        pos = data + size + (size & 1);
    }
    Err(deb(format!("no control.tar member among the first {MAX_AR_MEMBERS}")))
}

/// Decompresses a control archive (`suffix` names the compression) as a stream into the tar
/// reader, and returns `./control`.
fn control_from_tar(suffix: &str, member: &[u8]) -> Result<Vec<u8>, ArtifactError> {
    let mut sink = TarSink::default();
    let result: Result<(), String> = match suffix {
        "" => sink.write_all(member).map_err(|e| e.to_string()),
        ".gz" => gunzip(member, &mut sink),
        ".xz" => crate::xz::decode(member, MAX_CONTROL_TAR + 1, MAX_XZ_DICT, |piece| {
            sink.write_all(piece).map_err(|e| e.to_string())
        })
        .map(|_| ())
        .map_err(|e| {
            let bound = match e {
                crate::xz::XzError::Dictionary { .. } => Some(ArtifactError::TooLarge {
                    what: "the xz dictionary of control.tar.xz",
                    limit: MAX_XZ_DICT as u64,
                }),
                crate::xz::XzError::TooLarge { .. } => Some(ArtifactError::TooLarge {
                    what: "the control archive (decompressed, before ./control)",
                    limit: MAX_CONTROL_TAR,
                }),
                _ => None,
            };
            if sink.error.is_none() {
                sink.error = bound;
            }
            e.to_string()
        }),
        ".zst" => unzstd(member, &mut sink),
        other => return Err(deb(format!("control.tar{other}: compression not supported"))),
    };
    if let Some(control) = sink.control {
        return Ok(control);
    }
    if let Some(e) = sink.error {
        return Err(e);
    }
    match result {
        Err(e) if !matches!(sink.state, TarState::Done) => Err(deb(format!("control.tar{suffix}: {e}"))),
        _ => Err(deb("the control archive has no ./control")),
    }
}

/// Raw deflate after a gzip header (RFC 1952), streamed in 32 KiB pieces.
fn gunzip(data: &[u8], out: &mut TarSink) -> Result<(), String> {
    use miniz_oxide::inflate::stream::{inflate, InflateState};
    use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};
    if data.len() < 10 || data[..3] != [0x1f, 0x8b, 8] {
        return Err("not gzip".into());
    }
    let flags = data[3];
    let mut at = 10usize;
    let need = |at: usize| if at > data.len() { Err("truncated gzip header".to_string()) } else { Ok(at) };
    if flags & 4 != 0 {
        let xlen = usize::from(u16::from_le_bytes([*data.get(at).ok_or("gzip")?, *data.get(at + 1).ok_or("gzip")?]));
        at = need(at + 2 + xlen)?;
    }
    for bit in [8u8, 16] {
        if flags & bit != 0 {
            let nul = data.get(at..).and_then(|d| d.iter().position(|&b| b == 0)).ok_or("truncated gzip header")?;
            at += nul + 1;
        }
    }
    if flags & 2 != 0 {
        at = need(at + 2)?;
    }
    let mut state = InflateState::new_boxed(DataFormat::Raw);
    let mut input = &data[at..];
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let r = inflate(&mut state, input, &mut buf, MZFlush::None);
        input = &input[r.bytes_consumed..];
        out.write_all(&buf[..r.bytes_written]).map_err(|e| e.to_string())?;
        match r.status {
            Ok(MZStatus::StreamEnd) => return Ok(()),
            Ok(_) if r.bytes_consumed > 0 || r.bytes_written > 0 => {}
            Err(MZError::Buf) | Ok(_) => return Err("truncated gzip stream".into()),
            Err(e) => return Err(format!("gzip stream: {e:?}")),
        }
    }
}

fn unzstd(data: &[u8], out: &mut TarSink) -> Result<(), String> {
    use std::io::Read as _;
    match crate::squashfs::zstd_window(data) {
        None => return Err("not a zstd frame".into()),
        Some(w) if w > MAX_ZSTD_WINDOW => {
            out.error =
                Some(ArtifactError::TooLarge { what: "the zstd window of control.tar.zst", limit: MAX_ZSTD_WINDOW });
            return Err("window too large".into());
        }
        Some(_) => {}
    }
    let mut input = data;
    let mut decoder = ruzstd::decoding::StreamingDecoder::new(&mut input).map_err(|e| format!("zstd frame: {e}"))?;
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let n = decoder.read(&mut buf).map_err(|e| format!("zstd stream: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
    }
}

/// What the tar reader is in the middle of.
#[derive(Debug, Default)]
enum TarState {
    #[default]
    Header,
    /// Skipping an entry's data and padding.
    Skip(u64),
    /// Collecting an entry's data (`./control`, a pax header or a GNU long name), then skipping
    /// `pad` bytes.
    Take { left: u64, pad: u64, what: Taking },
    /// Found, or the end of the archive: the rest is ignored.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taking {
    Control,
    Pax,
    LongName,
}

/// A streaming tar reader fed by the decompressor: it counts every decompressed byte against
/// `MAX_CONTROL_TAR`, keeps only the current header and the entry it collects, and stops (by
/// failing the write) once `./control` is read, so the decompressor stops too.
#[derive(Debug, Default)]
struct TarSink {
    total: u64,
    header: Vec<u8>,
    state: TarState,
    taken: Vec<u8>,
    /// A name for the next entry from a pax `path=` record or a GNU long name.
    next_name: Option<Vec<u8>>,
    control: Option<Vec<u8>>,
    error: Option<ArtifactError>,
}

fn octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256: big-endian, the first byte's high bit is the marker.
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

impl TarSink {
    fn stop(&mut self, e: ArtifactError) -> std::io::Error {
        self.error = Some(e);
        self.state = TarState::Done;
        std::io::Error::other("stopped")
    }

    fn on_header(&mut self) -> Result<(), std::io::Error> {
        let h = std::mem::take(&mut self.header);
        if h.iter().all(|&b| b == 0) {
            self.state = TarState::Done;
            return Err(std::io::Error::other("end of archive"));
        }
        let size = octal(&h[124..136]).ok_or_else(|| self.stop(deb("control.tar: bad entry size")))?;
        let pad = (512 - size % 512) % 512;
        let mut name = h[..100].split(|&b| b == 0).next().unwrap_or_default().to_vec();
        if &h[257..262] == b"ustar" {
            let prefix = h[345..500].split(|&b| b == 0).next().unwrap_or_default();
            if !prefix.is_empty() {
                name = [prefix, b"/", &name].concat();
            }
        }
        if let Some(n) = self.next_name.take() {
            name = n;
        }
        let kind = h[156];
        let taking = match kind {
            b'x' => Some(Taking::Pax),
            b'L' => Some(Taking::LongName),
            b'0' | 0 if name == b"./control" || name == b"control" => Some(Taking::Control),
            _ => None,
        };
        self.state = match taking {
            Some(Taking::Control) if size > MAX_CONTROL => {
                return Err(self.stop(ArtifactError::TooLarge { what: "./control", limit: MAX_CONTROL }))
            }
            Some(t) if t != Taking::Control && size > MAX_TAR_META => {
                return Err(self.stop(ArtifactError::TooLarge { what: "a tar extended header", limit: MAX_TAR_META }))
            }
            Some(what) => TarState::Take { left: size, pad, what },
            None => TarState::Skip(size + pad),
        };
        self.finish_take()
    }

    /// Completes a collected entry whose last byte has arrived.
    fn finish_take(&mut self) -> Result<(), std::io::Error> {
        let TarState::Take { left: 0, pad, what } = self.state else { return Ok(()) };
        let data = std::mem::take(&mut self.taken);
        match what {
            Taking::Control => {
                self.control = Some(data);
                self.state = TarState::Done;
                return Err(std::io::Error::other("found ./control"));
            }
            Taking::LongName => {
                self.next_name = Some(data.split(|&b| b == 0).next().unwrap_or_default().to_vec());
            }
            Taking::Pax => {
                // Records: "<len> <key>=<value>\n".
                let mut rest = &data[..];
                while let Some(sp) = rest.iter().position(|&b| b == b' ') {
                    let Some(len) = std::str::from_utf8(&rest[..sp]).ok().and_then(|s| s.parse::<usize>().ok()) else {
                        break;
                    };
                    if len <= sp + 1 || len > rest.len() {
                        break;
                    }
                    let record = &rest[sp + 1..len - 1];
                    if let Some(path) = record.strip_prefix(b"path=") {
                        self.next_name = Some(path.to_vec());
                    }
                    rest = &rest[len..];
                }
            }
        }
        self.state = TarState::Skip(pad);
        Ok(())
    }
}

impl Write for TarSink {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        if matches!(self.state, TarState::Done) {
            return Err(std::io::Error::other("done"));
        }
        self.total += n as u64;
        if self.total > MAX_CONTROL_TAR {
            return Err(self.stop(ArtifactError::TooLarge {
                what: "the control archive (decompressed, before ./control)",
                limit: MAX_CONTROL_TAR,
            }));
        }
        while !buf.is_empty() {
            match &mut self.state {
                TarState::Done => return Err(std::io::Error::other("done")),
                TarState::Header => {
                    let k = (512 - self.header.len()).min(buf.len());
                    self.header.extend_from_slice(&buf[..k]);
                    buf = &buf[k..];
                    if self.header.len() == 512 {
                        self.on_header()?;
                    }
                }
                TarState::Skip(left) => {
                    let k = (*left).min(buf.len() as u64) as usize;
                    *left -= k as u64;
                    buf = &buf[k..];
                    if *left == 0 {
                        self.state = TarState::Header;
                    }
                }
                TarState::Take { left, .. } => {
                    let k = (*left).min(buf.len() as u64) as usize;
                    *left -= k as u64;
                    self.taken.extend_from_slice(&buf[..k]);
                    buf = &buf[k..];
                    self.finish_take()?;
                }
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The identifying fields of a control file (deb822: `Field: value`, continuation lines start
/// with a space or tab).
pub fn parse_control(text: &[u8]) -> Result<DebControl, ArtifactError> {
    let text = String::from_utf8_lossy(text);
    let mut c = DebControl::default();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim();
        let v = (!v.is_empty()).then(|| v.to_owned());
        match k.trim().to_ascii_lowercase().as_str() {
            "package" => c.package = v.unwrap_or_default(),
            "version" => c.version = v,
            "maintainer" => c.maintainer = v,
            "architecture" => c.architecture = v,
            _ => {}
        }
    }
    if c.package.is_empty() {
        return Err(deb("the control file has no Package field"));
    }
    Ok(c)
}

/// The identifying tags of an rpm header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RpmHeader {
    pub name: String,
    pub epoch: Option<u32>,
    pub version: String,
    pub release: String,
    pub arch: Option<String>,
    pub vendor: Option<String>,
}

impl RpmHeader {
    /// `[epoch:]version-release`, the epoch shown only when it is not 0 (as `rpm -q` does).
    pub fn evr(&self) -> String {
        match self.epoch {
            Some(e) if e != 0 => format!("{e}:{}-{}", self.version, self.release),
            _ => format!("{}-{}", self.version, self.release),
        }
    }
}

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_VENDOR: u32 = 1011;
const TAG_ARCH: u32 = 1022;
const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;
const TYPE_STRING_ARRAY: u32 = 8;
const TYPE_I18NSTRING: u32 = 9;

/// One header structure's position: where its index and data store start and its sizes.
struct HeaderAt {
    index: u64,
    count: u32,
    data: u64,
    data_len: u32,
}

fn header_at(file: &std::fs::File, off: u64, len: u64, what: &str) -> Result<HeaderAt, ArtifactError> {
    let mut h = [0u8; 16];
    if !read_at(file, &mut h, off)? {
        return Err(rpm(format!("{what} truncated")));
    }
    if h[..3] != [0x8e, 0xad, 0xe8] || h[3] != 1 {
        return Err(rpm(format!("{what}: no header magic")));
    }
    let count = u32::from_be_bytes(h[8..12].try_into().expect("4 bytes"));
    let data_len = u32::from_be_bytes(h[12..16].try_into().expect("4 bytes"));
    if count > MAX_RPM_INDEX {
        return Err(ArtifactError::TooLarge { what: "the rpm header's index count", limit: u64::from(MAX_RPM_INDEX) });
    }
    if data_len > MAX_RPM_DATA {
        return Err(ArtifactError::TooLarge { what: "the rpm header's data size", limit: u64::from(MAX_RPM_DATA) });
    }
    let index = off + 16;
    let data = index + 16 * u64::from(count);
    if data + u64::from(data_len) > len {
        return Err(rpm(format!("{what} runs past the end of the file")));
    }
    Ok(HeaderAt { index, count, data, data_len })
}

/// Reads the identifying tags of the `.rpm` opened as `file` (see the module header).
pub fn rpm_header(file: &std::fs::File) -> Result<RpmHeader, ArtifactError> {
    let len = file.metadata()?.len();
    let mut lead = [0u8; 96];
    if !read_at(file, &mut lead, 0)? || lead[..4] != [0xed, 0xab, 0xee, 0xdb] {
        return Err(rpm("no lead magic"));
    }
    let sig = header_at(file, 96, len, "signature header")?;
    // The signature header's data is padded to 8 bytes.
    let sig_end = sig.data + u64::from(sig.data_len);
    let h = header_at(file, sig_end.div_ceil(8) * 8, len, "header")?;
    let mut index = vec![0u8; 16 * h.count as usize];
    if !read_at(file, &mut index, h.index)? {
        return Err(rpm("header index truncated"));
    }
    let mut out = RpmHeader::default();
    let mut have_name = false;
    for e in index.chunks_exact(16) {
        let word = |i: usize| u32::from_be_bytes(e[i..i + 4].try_into().expect("4 bytes"));
        let (tag, ty, offset, count) = (word(0), word(4), word(8), word(12));
        if !matches!(tag, TAG_NAME | TAG_VERSION | TAG_RELEASE | TAG_EPOCH | TAG_VENDOR | TAG_ARCH) {
            continue;
        }
        if offset >= h.data_len || count == 0 {
            return Err(rpm(format!("tag {tag}: offset {offset} outside the data store")));
        }
        let at = h.data + u64::from(offset);
        let room = u64::from(h.data_len - offset);
        if tag == TAG_EPOCH {
            if ty != TYPE_INT32 || room < 4 {
                return Err(rpm("EPOCH is not an INT32 inside the data store"));
            }
            let mut b = [0u8; 4];
            read_at(file, &mut b, at)?;
            out.epoch = Some(u32::from_be_bytes(b));
            continue;
        }
        if !matches!(ty, TYPE_STRING | TYPE_STRING_ARRAY | TYPE_I18NSTRING) {
            return Err(rpm(format!("tag {tag} is not a string")));
        }
        let mut b = vec![0u8; room.min(MAX_RPM_STRING) as usize];
        read_at(file, &mut b, at)?;
        let Some(nul) = b.iter().position(|&c| c == 0) else {
            return Err(rpm(format!("tag {tag}: no terminated string within {MAX_RPM_STRING} bytes")));
        };
        let s = String::from_utf8_lossy(&b[..nul]).into_owned();
        match tag {
            TAG_NAME => {
                out.name = s;
                have_name = true;
            }
            TAG_VERSION => out.version = s,
            TAG_RELEASE => out.release = s,
            TAG_ARCH => out.arch = Some(s),
            _ => out.vendor = Some(s),
        }
    }
    if !have_name || out.name.is_empty() {
        return Err(rpm("the header has no NAME"));
    }
    Ok(out)
}

/// Builders of package bytes for the tests and the bench (no tool needed): an `ar` archive, a
/// ustar header, and the zstd-bombed `.deb` of finding 7.
pub mod testdata {
    pub fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut v = b"!<arch>\n".to_vec();
        for (name, data) in members {
            v.extend_from_slice(
                format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, 100644, data.len()).as_bytes(),
            );
            v.extend_from_slice(data);
            if data.len() % 2 == 1 {
                v.push(b'\n');
            }
        }
        v
    }

    pub fn tar_header(name: &str, size: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        if size < 8u64.pow(11) {
            h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        } else {
            // GNU base-256 for sizes octal cannot hold.
            h[124] = 0x80;
            h[128..136].copy_from_slice(&size.to_be_bytes());
        }
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    /// The bomb from the review: a zstd control.tar whose first entry claims 8 GiB of zeros
    /// made of RLE blocks (4 input bytes per 128 KiB), before any ./control.
    pub fn zstd_bomb_deb(gib: u64) -> Vec<u8> {
        let mut z = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x50]; // no content size, window 1 MiB
        let header = tar_header("./aaaa", gib << 30);
        let raw = 512u32;
        // A raw block (type 0) holding the tar header.
        z.extend_from_slice(&(raw << 3).to_le_bytes()[..3]);
        z.extend_from_slice(&header);
        let blocks = (gib << 30) / (128 << 10);
        for i in 0..blocks {
            let last = u32::from(i + 1 == blocks);
            z.extend_from_slice(&(last | (1 << 1) | ((128u32 << 10) << 3)).to_le_bytes()[..3]);
            z.push(0);
        }
        ar(&[("debian-binary", b"2.0\n"), ("control.tar.zst", &z), ("data.tar.zst", b"")])
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::*;
    use super::*;

    fn file_of(bytes: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn a_zstd_bombed_control_archive_is_refused_at_the_cap() {
        let deb = zstd_bomb_deb(8);
        assert!(deb.len() < 300 << 10, "the bomb is small: {} bytes", deb.len());
        let t = std::time::Instant::now();
        let e = deb_control(&file_of(&deb)).unwrap_err();
        assert!(matches!(e, ArtifactError::TooLarge { limit: MAX_CONTROL_TAR, .. }), "{e}");
        assert!(e.to_string().contains("decompression bomb"), "{e}");
        eprintln!("refused in {:?}", t.elapsed());
    }

    #[test]
    fn a_zstd_frame_declaring_a_huge_window_is_refused_before_decoding() {
        let mut z = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8]; // window 2^41
        z.extend_from_slice(&[1, 0, 0]);
        let deb = ar(&[("debian-binary", b"2.0\n"), ("control.tar.zst", &z)]);
        let e = deb_control(&file_of(&deb)).unwrap_err();
        assert!(matches!(e, ArtifactError::TooLarge { limit: MAX_ZSTD_WINDOW, .. }), "{e}");
    }

    #[test]
    fn an_uncompressed_control_archive_with_pax_and_prefix_names() {
        let control = b"Package: wechat\nVersion: 1:4.0-2\nMaintainer: Tencent <a@b>\nDescription: x\n more\n";
        let mut tar = tar_header("./big", 3000);
        tar.extend(vec![7u8; 3072]);
        let pax = b"18 path=./control\n";
        let mut ph = tar_header("PaxHeader/x", pax.len() as u64);
        ph[156] = b'x';
        tar.extend(ph);
        tar.extend_from_slice(pax);
        tar.extend(vec![0u8; 512 - pax.len()]);
        tar.extend(tar_header("renamed-by-pax", control.len() as u64));
        tar.extend_from_slice(control);
        tar.extend(vec![0u8; 512 - control.len() % 512]);
        tar.extend(vec![0u8; 1024]);
        let deb = ar(&[("debian-binary", b"2.0\n"), ("control.tar", &tar)]);
        let c = deb_control(&file_of(&deb)).unwrap();
        assert_eq!(
            c,
            DebControl {
                package: "wechat".into(),
                version: Some("1:4.0-2".into()),
                maintainer: Some("Tencent <a@b>".into()),
                architecture: None
            }
        );
    }

    #[test]
    fn rpm_headers_with_absurd_counts_are_refused() {
        let mut v = vec![0xed, 0xab, 0xee, 0xdb];
        v.resize(96, 0);
        v.extend_from_slice(&[0x8e, 0xad, 0xe8, 1, 0, 0, 0, 0]);
        v.extend_from_slice(&0x10000u32.to_be_bytes());
        v.extend_from_slice(&0u32.to_be_bytes());
        let e = rpm_header(&file_of(&v)).unwrap_err();
        assert!(matches!(e, ArtifactError::TooLarge { .. }), "{e}");
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// Any bytes: an answer or an error, never a panic, a hang or an unbounded read.
            #[test]
            fn any_bytes_after_a_deb_prefix(tail in proptest::collection::vec(any::<u8>(), 0..4096), kind in 0usize..4) {
                let name = ["control.tar", "control.tar.gz", "control.tar.xz", "control.tar.zst"][kind];
                let deb = ar(&[("debian-binary", b"2.0\n"), (name, &tail)]);
                let _ = deb_control(&file_of(&deb));
            }

            /// A valid archive with bytes flipped: never a panic.
            #[test]
            fn damaged_gzip_control_archives(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
                let control = b"Package: p\nVersion: 1\n";
                let mut tar = tar_header("./control", control.len() as u64);
                tar.extend_from_slice(control);
                tar.extend(vec![0u8; 512 - control.len() + 1024]);
                let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
                gz.extend(miniz_oxide::deflate::compress_to_vec(&tar, 6));
                gz.extend_from_slice(&[0; 8]);
                let mut deb = ar(&[("debian-binary", b"2.0\n"), ("control.tar.gz", &gz)]);
                let ok = deb_control(&file_of(&deb)).unwrap();
                prop_assert_eq!(ok.package, "p");
                for (at, b) in flips {
                    let n = deb.len();
                    deb[at % n] ^= b;
                }
                let _ = deb_control(&file_of(&deb));
            }

            #[test]
            fn any_bytes_after_an_rpm_lead(tail in proptest::collection::vec(any::<u8>(), 0..4096), count in 0u32..64, data in 0u32..4096) {
                let mut v = vec![0xed, 0xab, 0xee, 0xdb];
                v.resize(96, 0);
                for _ in 0..2 {
                    v.extend_from_slice(&[0x8e, 0xad, 0xe8, 1, 0, 0, 0, 0]);
                    v.extend_from_slice(&count.to_be_bytes());
                    v.extend_from_slice(&data.to_be_bytes());
                    v.extend_from_slice(&tail);
                }
                let _ = rpm_header(&file_of(&v));
            }
        }
    }
}
