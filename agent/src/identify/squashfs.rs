//! Reads the desktop entry embedded in a type-2 AppImage: the squashfs image appended to the ELF
//! runtime, its root directory, and the one `*.desktop` file there (following one symlink, as
//! linuxdeploy links it to `usr/share/applications/`).
//!
//! Everything here is untrusted input read as root, so the reader is small and bounded: reads go
//! through the already opened fd (`pread`), every offset is checked against the file, metadata
//! blocks are at most 8 KiB, a cursor reads at most `MAX_META_BLOCKS` of them, directories and
//! the desktop entry are size-capped, decompression output is capped, paths are resolved inside
//! the image only, and one symlink hop at most. Compression: gzip (zlib), zstd and xz (with or
//! without its BCJ filters; the xz dictionary is capped at the largest squashfs block, 1 MiB);
//! lzo, lz4 and lzma are reported as unsupported and the caller falls back to the file name.
//!
//! Format: squashfs 4.0 (https://dr-emann.github.io/squashfs/ and the kernel's squashfs_fs.h).

use std::fs::File;
use std::os::unix::fs::FileExt as _;

/// Largest desktop entry read from an image.
pub const DESKTOP_MAX: u64 = 64 * 1024;
const METADATA_BLOCK: usize = 8192;
const MAX_META_BLOCKS: usize = 16;
const MAX_DIR_LISTING: usize = 64 * 1024;
const MAX_PATH_DEPTH: usize = 8;
const NO_FRAGMENT: u32 = 0xffff_ffff;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SquashError {
    #[error("no squashfs image after the ELF runtime")]
    NoImage,
    #[error("squashfs compression {0} is not supported (gzip, xz and zstd are)")]
    Unsupported(u16),
    #[error("malformed squashfs: {0}")]
    Malformed(&'static str),
    #[error("no desktop entry in the image's root directory")]
    NoDesktopEntry,
    #[error("reading the image: {0}")]
    Io(String),
}

fn bad(what: &'static str) -> SquashError {
    SquashError::Malformed(what)
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, SquashError> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or(bad("truncated record"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, SquashError> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes"))).ok_or(bad("truncated record"))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, SquashError> {
    b.get(at..at + 8).map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes"))).ok_or(bad("truncated record"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Gzip,
    Xz,
    Zstd,
}

/// Largest xz dictionary a squashfs block may declare: mksquashfs's dictionary is at most the
/// block size, which is at most 1 MiB.
const MAX_XZ_DICT: usize = 1 << 20;

fn decompress(c: Compression, data: &[u8], limit: usize) -> Result<Vec<u8>, SquashError> {
    match c {
        Compression::Gzip => miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(data, limit)
            .map_err(|_| bad("gzip block does not decompress within its size")),
        Compression::Xz => crate::xz::decode_to_vec(data, limit as u64, MAX_XZ_DICT).map_err(|e| match e {
            crate::xz::XzError::TooLarge { .. } => bad("xz block decompresses beyond its size"),
            crate::xz::XzError::Dictionary { .. } => bad("xz dictionary larger than a squashfs block"),
            _ => bad("xz block does not decompress"),
        }),
        Compression::Zstd => {
            use std::io::Read as _;
            // The decoder keeps a whole window before it yields a byte: a frame declaring a
            // huge window could make it inflate a small block into gigabytes first. A squashfs
            // block never needs a window larger than the block itself.
            if zstd_window(data).is_none_or(|w| w > limit as u64) {
                return Err(bad("zstd frame window larger than the block"));
            }
            let mut input = data;
            let decoder = ruzstd::decoding::StreamingDecoder::new(&mut input).map_err(|_| bad("zstd block header"))?;
            let mut out = Vec::new();
            decoder.take(limit as u64 + 1).read_to_end(&mut out).map_err(|_| bad("zstd block does not decompress"))?;
            if out.len() > limit {
                return Err(bad("zstd block decompresses beyond its size"));
            }
            Ok(out)
        }
    }
}

/// The window size a zstd frame header declares (RFC 8878 §3.1.1.1), or `None` when `data` does
/// not start with a zstd frame header.
pub(crate) fn zstd_window(data: &[u8]) -> Option<u64> {
    if data.get(..4)? != [0x28, 0xb5, 0x2f, 0xfd] {
        return None;
    }
    let fhd = *data.get(4)?;
    let single_segment = fhd & 0x20 != 0;
    if !single_segment {
        let wd = *data.get(5)?;
        let base = 1u64 << (10 + u32::from(wd >> 3));
        return Some(base + base / 8 * u64::from(wd & 7));
    }
    // Single segment: the window is the frame content size.
    let dict_len = [0, 1, 2, 4][usize::from(fhd & 3)];
    let at = 5 + dict_len;
    let fcs = match fhd >> 6 {
        0 => u64::from(*data.get(at)?),
        1 => u64::from(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?)) + 256,
        2 => u64::from(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?)),
        _ => u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?),
    };
    Some(fcs)
}

/// The parts of the superblock the reader needs; positions are absolute in the file.
struct Image<'f> {
    file: &'f File,
    base: u64,
    end: u64,
    compression: Compression,
    block_size: u32,
    root_inode: u64,
    inode_table: u64,
    directory_table: u64,
    fragment_table: u64,
}

/// A position in a metadata table: which block (offset from the table start) and where inside
/// its decompressed bytes.
#[derive(Debug, Clone, Copy)]
struct MetaRef {
    block: u64,
    offset: usize,
}

impl MetaRef {
    fn from_inode_ref(r: u64) -> Self {
        Self { block: r >> 16, offset: (r & 0xffff) as usize }
    }
}

/// Reads consecutive metadata blocks, decompressing as needed, at most `MAX_META_BLOCKS`.
struct MetaCursor<'a, 'f> {
    img: &'a Image<'f>,
    next: u64,
    buf: Vec<u8>,
    pos: usize,
    blocks: usize,
}

impl<'a, 'f> MetaCursor<'a, 'f> {
    fn new(img: &'a Image<'f>, table: u64, at: MetaRef) -> Result<Self, SquashError> {
        let next = table.checked_add(at.block).ok_or(bad("metadata reference overflows"))?;
        let mut c = Self { img, next, buf: Vec::new(), pos: 0, blocks: 0 };
        c.fill()?;
        if at.offset > c.buf.len() {
            return Err(bad("metadata offset beyond its block"));
        }
        c.pos = at.offset;
        Ok(c)
    }

    fn fill(&mut self) -> Result<(), SquashError> {
        if self.blocks >= MAX_META_BLOCKS {
            return Err(bad("metadata runs over too many blocks"));
        }
        self.blocks += 1;
        let header = self.img.read(self.next, 2)?;
        let h = u16::from_le_bytes([header[0], header[1]]);
        let len = usize::from(h & 0x7fff);
        if len == 0 || len > METADATA_BLOCK {
            return Err(bad("metadata block size"));
        }
        let raw = self.img.read(self.next + 2, len)?;
        let block = if h & 0x8000 != 0 { raw } else { decompress(self.img.compression, &raw, METADATA_BLOCK)? };
        if block.is_empty() {
            return Err(bad("empty metadata block"));
        }
        self.next += 2 + len as u64;
        self.buf.drain(..self.pos.min(self.buf.len()));
        self.pos = 0;
        self.buf.extend_from_slice(&block);
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>, SquashError> {
        while self.buf.len() - self.pos < n {
            self.fill()?;
        }
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(out)
    }
}

#[derive(Debug)]
enum Inode {
    Dir { block: u32, offset: u16, listing: usize },
    File { blocks_start: u64, size: u64, fragment: u32, frag_offset: u32, block_sizes: Vec<u32> },
    Symlink(Vec<u8>),
    Other,
}

impl<'f> Image<'f> {
    fn read(&self, pos: u64, len: usize) -> Result<Vec<u8>, SquashError> {
        let end = pos.checked_add(len as u64).ok_or(bad("offset overflows"))?;
        if pos < self.base || end > self.end {
            return Err(bad("offset outside the image"));
        }
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, pos).map_err(|e| SquashError::Io(e.to_string()))?;
        Ok(buf)
    }

    fn open(file: &'f File) -> Result<Self, SquashError> {
        let file_len = file.metadata().map_err(|e| SquashError::Io(e.to_string()))?.len();
        let mut elf = [0u8; 64];
        file.read_exact_at(&mut elf, 0).map_err(|_| SquashError::NoImage)?;
        if &elf[..4] != b"\x7fELF" || elf[5] != 1 {
            return Err(SquashError::NoImage);
        }
        // The image starts where the runtime's section header table ends.
        let (shoff, shentsize, shnum) = match elf[4] {
            2 => (u64_at(&elf, 0x28)?, u16_at(&elf, 0x3a)?, u16_at(&elf, 0x3c)?),
            1 => (u64::from(u32_at(&elf, 0x20)?), u16_at(&elf, 0x2e)?, u16_at(&elf, 0x30)?),
            _ => return Err(SquashError::NoImage),
        };
        let base = shoff
            .checked_add(u64::from(shentsize) * u64::from(shnum))
            .filter(|b| b.checked_add(96).is_some_and(|e| e <= file_len))
            .ok_or(SquashError::NoImage)?;
        let mut sb = [0u8; 96];
        file.read_exact_at(&mut sb, base).map_err(|_| SquashError::NoImage)?;
        if &sb[..4] != b"hsqs" {
            return Err(SquashError::NoImage);
        }
        if (u16_at(&sb, 28)?, u16_at(&sb, 30)?) != (4, 0) {
            return Err(bad("not squashfs 4.0"));
        }
        let compression = match u16_at(&sb, 20)? {
            1 => Compression::Gzip,
            4 => Compression::Xz,
            6 => Compression::Zstd,
            other => return Err(SquashError::Unsupported(other)),
        };
        let block_size = u32_at(&sb, 12)?;
        if !(4096..=1 << 20).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(bad("block size"));
        }
        let bytes_used = u64_at(&sb, 40)?;
        let end = base.checked_add(bytes_used).filter(|&e| e <= file_len).ok_or(bad("image longer than the file"))?;
        let at = |field: usize| -> Result<u64, SquashError> {
            let rel = u64_at(&sb, field)?;
            // 0xffff...: table absent.
            Ok(if rel == u64::MAX { u64::MAX } else { base.checked_add(rel).ok_or(bad("table offset"))? })
        };
        Ok(Self {
            file,
            base,
            end,
            compression,
            block_size,
            root_inode: u64_at(&sb, 32)?,
            inode_table: at(64)?,
            directory_table: at(72)?,
            fragment_table: at(80)?,
        })
    }

    fn inode(&self, r: MetaRef) -> Result<Inode, SquashError> {
        let mut c = MetaCursor::new(self, self.inode_table, r)?;
        let header = c.take(16)?;
        Ok(match u16_at(&header, 0)? {
            1 => {
                let b = c.take(16)?;
                let size = usize::from(u16_at(&b, 8)?);
                Inode::Dir { block: u32_at(&b, 0)?, offset: u16_at(&b, 10)?, listing: size.saturating_sub(3) }
            }
            8 => {
                let b = c.take(24)?;
                let size = u32_at(&b, 4)? as usize;
                Inode::Dir { block: u32_at(&b, 8)?, offset: u16_at(&b, 18)?, listing: size.saturating_sub(3) }
            }
            t @ (2 | 9) => {
                let (blocks_start, size, fragment, frag_offset) = if t == 2 {
                    let b = c.take(16)?;
                    (u64::from(u32_at(&b, 0)?), u64::from(u32_at(&b, 12)?), u32_at(&b, 4)?, u32_at(&b, 8)?)
                } else {
                    let b = c.take(40)?;
                    (u64_at(&b, 0)?, u64_at(&b, 8)?, u32_at(&b, 28)?, u32_at(&b, 32)?)
                };
                if size > DESKTOP_MAX {
                    return Err(bad("desktop entry larger than 64 KiB"));
                }
                let bs = u64::from(self.block_size);
                let count = if fragment == NO_FRAGMENT { size.div_ceil(bs) } else { size / bs } as usize;
                let raw = c.take(count * 4)?;
                let block_sizes = (0..count).map(|i| u32_at(&raw, i * 4)).collect::<Result<_, _>>()?;
                Inode::File { blocks_start, size, fragment, frag_offset, block_sizes }
            }
            3 | 10 => {
                let b = c.take(8)?;
                let len = u32_at(&b, 4)? as usize;
                if len == 0 || len > 4096 {
                    return Err(bad("symlink target length"));
                }
                Inode::Symlink(c.take(len)?)
            }
            _ => Inode::Other,
        })
    }

    /// (name, inode reference) of every entry of a directory.
    fn list(&self, block: u32, offset: u16, listing: usize) -> Result<Vec<(Vec<u8>, u64)>, SquashError> {
        if listing > MAX_DIR_LISTING {
            return Err(bad("directory listing too large"));
        }
        let mut c =
            MetaCursor::new(self, self.directory_table, MetaRef { block: block.into(), offset: offset.into() })?;
        let bytes = if listing == 0 { Vec::new() } else { c.take(listing)? };
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let count = u32_at(&bytes, at)? as usize + 1;
            let start = u32_at(&bytes, at + 4)?;
            at += 12;
            if count > 256 {
                return Err(bad("directory header count"));
            }
            for _ in 0..count {
                let offset = u16_at(&bytes, at)?;
                let name_len = usize::from(u16_at(&bytes, at + 6)?) + 1;
                let name = bytes.get(at + 8..at + 8 + name_len).ok_or(bad("truncated directory entry"))?;
                out.push((name.to_vec(), (u64::from(start) << 16) | u64::from(offset)));
                at += 8 + name_len;
            }
        }
        Ok(out)
    }

    fn file_contents(&self, inode: &Inode) -> Result<Vec<u8>, SquashError> {
        let Inode::File { blocks_start, size, fragment, frag_offset, block_sizes } = inode else {
            return Err(bad("not a regular file"));
        };
        let bs = self.block_size as usize;
        let mut out = Vec::new();
        let mut pos = self.base.checked_add(*blocks_start).ok_or(bad("data offset"))?;
        for &s in block_sizes {
            let len = (s & 0x00ff_ffff) as usize;
            if len == 0 {
                out.resize(out.len() + bs, 0);
                continue;
            }
            if len > bs {
                return Err(bad("data block larger than the block size"));
            }
            let raw = self.read(pos, len)?;
            pos = pos.saturating_add(len as u64);
            out.extend(if s & (1 << 24) != 0 { raw } else { decompress(self.compression, &raw, bs)? });
        }
        if *fragment != NO_FRAGMENT {
            if self.fragment_table == u64::MAX {
                return Err(bad("fragment without a fragment table"));
            }
            let index = u64::from(*fragment);
            let at = self.fragment_table.checked_add(index / 512 * 8).ok_or(bad("fragment table offset"))?;
            let pointer = u64_at(&self.read(at, 8)?, 0)?;
            let mut c = MetaCursor::new(self, self.base, MetaRef { block: pointer, offset: 0 })?;
            let skip = (index % 512) as usize * 16;
            c.take(skip)?;
            let entry = c.take(16)?;
            let (start, s) = (u64_at(&entry, 0)?, u32_at(&entry, 8)?);
            let len = (s & 0x00ff_ffff) as usize;
            if len == 0 || len > bs {
                return Err(bad("fragment block size"));
            }
            let raw = self.read(self.base.checked_add(start).ok_or(bad("fragment offset"))?, len)?;
            let block = if s & (1 << 24) != 0 { raw } else { decompress(self.compression, &raw, bs)? };
            let tail = (*size as usize).saturating_sub(out.len());
            let from = *frag_offset as usize;
            out.extend_from_slice(block.get(from..from + tail).ok_or(bad("fragment range"))?);
        }
        out.truncate(*size as usize);
        Ok(out)
    }

    /// Resolves `path` (components inside the image) from the root directory.
    fn lookup(&self, components: &[Vec<u8>]) -> Result<Inode, SquashError> {
        let mut inode = self.inode(MetaRef::from_inode_ref(self.root_inode))?;
        for name in components {
            let Inode::Dir { block, offset, listing } = inode else { return Err(bad("path through a non-directory")) };
            let entries = self.list(block, offset, listing)?;
            let (_, r) = entries.iter().find(|(n, _)| n == name).ok_or(SquashError::NoDesktopEntry)?;
            inode = self.inode(MetaRef::from_inode_ref(*r))?;
        }
        Ok(inode)
    }
}

/// Path components of a symlink target found in the root directory, resolved inside the image.
fn resolve_in_image(target: &[u8]) -> Result<Vec<Vec<u8>>, SquashError> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            name => parts.push(name.to_vec()),
        }
        if parts.len() > MAX_PATH_DEPTH {
            return Err(bad("symlink target too deep"));
        }
    }
    Ok(parts)
}

/// Whether a squashfs superblock (`hsqs`) follows the ELF section header table of `file`: the
/// shape of a type-2 AppImage whether or not it carries the optional `AI\x02` bytes (the kernel
/// and the runtime ignore them). True also for images this reader cannot decode.
pub fn has_image_after_elf(file: &File) -> bool {
    !matches!(Image::open(file), Err(SquashError::NoImage))
}

/// The desktop entry embedded in the AppImage open as `file`: its file name in the image's root
/// and its text. `Err` says why it could not be read; nothing here panics on any input.
pub fn appimage_desktop_entry(file: &File) -> Result<(String, String), SquashError> {
    let img = Image::open(file)?;
    let Inode::Dir { block, offset, listing } = img.inode(MetaRef::from_inode_ref(img.root_inode))? else {
        return Err(bad("root is not a directory"));
    };
    let mut desktop: Vec<(Vec<u8>, u64)> =
        img.list(block, offset, listing)?.into_iter().filter(|(n, _)| n.ends_with(b".desktop")).collect();
    desktop.sort();
    let (name, r) = desktop.into_iter().next().ok_or(SquashError::NoDesktopEntry)?;
    let name = String::from_utf8(name).map_err(|_| bad("desktop file name is not UTF-8"))?;
    let inode = match img.inode(MetaRef::from_inode_ref(r))? {
        Inode::Symlink(target) => img.lookup(&resolve_in_image(&target)?)?,
        other => other,
    };
    let text = img.file_contents(&inode)?;
    let text = String::from_utf8(text).map_err(|_| bad("desktop entry is not UTF-8"))?;
    Ok((name, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zstd frame header (no checksum, no dictionary) with window descriptor `wd`, then RLE
    /// blocks of `block` bytes each: 4 input bytes per block, the classic decompression bomb.
    fn rle_bomb(wd: u8, block: u32, blocks: usize) -> Vec<u8> {
        let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, wd];
        for i in 0..blocks {
            let last = u32::from(i + 1 == blocks);
            let header = last | (1 << 1) | (block << 3);
            f.extend_from_slice(&header.to_le_bytes()[..3]);
            f.push(b'A');
        }
        f
    }

    #[test]
    fn zstd_windows_are_read_from_the_frame_header() {
        assert_eq!(zstd_window(&rle_bomb(0x00, 16, 1)), Some(1 << 10));
        assert_eq!(zstd_window(&rle_bomb(0x18, 16, 1)), Some(8 << 10));
        assert_eq!(zstd_window(&rle_bomb(0x19, 16, 1)), Some((8 << 10) + 1024));
        assert_eq!(zstd_window(&rle_bomb(0xf8, 16, 1)), Some(1 << 41));
        assert_eq!(zstd_window(b"\x28\xb5\x2f"), None);
        assert_eq!(zstd_window(&[0x28, 0xb5, 0x2f, 0xfd, 0x20, 200]), Some(200), "single segment: content size");
    }

    #[test]
    fn zstd_bombs_are_refused_before_they_inflate() {
        // A huge window: refused from the header alone.
        let huge = rle_bomb(0xf8, 128 << 10, 64);
        assert_eq!(
            decompress(Compression::Zstd, &huge, METADATA_BLOCK),
            Err(bad("zstd frame window larger than the block"))
        );
        // A window that fits but far more output than the block may hold: cut at the limit.
        let long = rle_bomb(0x18, 8 << 10, 2000);
        assert!(decompress(Compression::Zstd, &long, METADATA_BLOCK).is_err());
        // And a well-formed small frame decodes.
        let ok = rle_bomb(0x18, 100, 1);
        assert_eq!(decompress(Compression::Zstd, &ok, METADATA_BLOCK), Ok(vec![b'A'; 100]));
    }

    #[test]
    fn gzip_bombs_are_cut_at_the_limit() {
        let big = miniz_oxide::deflate::compress_to_vec_zlib(&vec![0u8; 10 << 20], 9);
        assert!(big.len() < 64 << 10);
        assert!(decompress(Compression::Gzip, &big, 1 << 20).is_err());
    }
}
