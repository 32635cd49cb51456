//! The binary AndroidManifest.xml (AXML) inside an APK: the root `<manifest>` element's
//! `package`, `android:versionCode` (+ `android:versionCodeMajor`) and `android:versionName`.
//!
//! The reader stops at the first element (the manifest is the root), so it never walks the rest
//! of the document. Strings are decoded only when asked for, by index, from the pool's offset
//! table; every offset and length is checked against the chunk that holds it, so a hostile pool
//! (huge counts, offsets past the end, overlong lengths) is an error, never a panic or an
//! allocation larger than the manifest itself.
//!
//! Format: `ResourceTypes.h` in AOSP `frameworks/base/libs/androidfw` (ResChunk_header,
//! ResStringPool_header, ResXMLTree_node, ResXMLTree_attrExt, ResXMLTree_attribute, Res_value).
//! Attributes are matched by resource id first (`0x0101021b` versionCode, `0x0101021c`
//! versionName, `0x01010576` versionCodeMajor; obfuscators strip names but not ids), then by
//! name in the android namespace, as the platform's own parser does.

use super::zip::{le16, le32};

const RES_XML_TYPE: u16 = 0x0003;
const RES_STRING_POOL_TYPE: u16 = 0x0001;
const RES_XML_RESOURCE_MAP_TYPE: u16 = 0x0180;
const RES_XML_START_ELEMENT_TYPE: u16 = 0x0102;
const UTF8_FLAG: u32 = 1 << 8;

const ATTR_VERSION_CODE: u32 = 0x0101_021b;
const ATTR_VERSION_NAME: u32 = 0x0101_021c;
const ATTR_VERSION_CODE_MAJOR: u32 = 0x0101_0576;
const ANDROID_NS: &str = "http://schemas.android.com/apk/res/android";

const TYPE_REFERENCE: u8 = 0x01;
const TYPE_STRING: u8 = 0x03;
const TYPE_INT_DEC: u8 = 0x10;
const TYPE_INT_HEX: u8 = 0x11;
const NO_INDEX: u32 = 0xffff_ffff;
/// Longest string decoded from the pool (package names are at most 255 characters; a version
/// name longer than this is refused rather than allocated).
const MAX_STRING: usize = 4096;
/// Attributes looked at on the manifest element.
const MAX_ATTRS: usize = 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AxmlError {
    #[error("not a binary XML document")]
    NotAxml,
    #[error("malformed binary manifest: {0}")]
    Malformed(&'static str),
    #[error("the root element is <{0}>, not <manifest>")]
    NotManifest(String),
    #[error("the manifest has no package attribute")]
    NoPackage,
    #[error("invalid package name {0:?}")]
    BadPackage(String),
}

fn bad(what: &'static str) -> AxmlError {
    AxmlError::Malformed(what)
}

/// What the manifest says about the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub package: String,
    /// `versionCodeMajor << 32 | versionCode`, as `PackageInfo.getLongVersionCode()`.
    pub version_code: Option<u64>,
    /// `None` when absent or a resource reference (resolving it needs resources.arsc).
    pub version_name: Option<String>,
}

struct StringPool<'a> {
    chunk: &'a [u8],
    count: usize,
    utf8: bool,
    strings_start: usize,
}

impl<'a> StringPool<'a> {
    fn parse(chunk: &'a [u8]) -> Result<Self, AxmlError> {
        let header_size = usize::from(le16(chunk, 2));
        if header_size < 28 || header_size > chunk.len() {
            return Err(bad("string pool header"));
        }
        let count = le32(chunk, 8) as usize;
        let flags = le32(chunk, 16);
        let strings_start = le32(chunk, 20) as usize;
        // The offset table must fit in the chunk: this bounds `count` by the chunk's size.
        if count.checked_mul(4).and_then(|n| n.checked_add(header_size)).is_none_or(|end| end > chunk.len()) {
            return Err(bad("string pool offsets run past the chunk"));
        }
        if count > 0 && (strings_start < header_size || strings_start > chunk.len()) {
            return Err(bad("string pool data offset"));
        }
        Ok(Self { chunk, count, utf8: flags & UTF8_FLAG != 0, strings_start })
    }

    fn get(&self, index: u32) -> Result<Option<String>, AxmlError> {
        if index == NO_INDEX {
            return Ok(None);
        }
        let i = index as usize;
        if i >= self.count {
            return Err(bad("string index out of range"));
        }
        let header_size = usize::from(le16(self.chunk, 2));
        let off = le32(self.chunk, header_size + 4 * i) as usize;
        let at = self.strings_start.checked_add(off).ok_or(bad("string offset"))?;
        let data = self.chunk.get(at..).ok_or(bad("string offset past the pool"))?;
        if self.utf8 {
            // u8/u16 UTF-16 length (skipped), then u8/u16 UTF-8 byte length, then the bytes.
            let (_, n1) = utf8_len(data)?;
            let (len, n2) = utf8_len(data.get(n1..).ok_or(bad("string length"))?)?;
            if len > MAX_STRING {
                return Err(bad("string longer than 4 KiB"));
            }
            let bytes = data.get(n1 + n2..n1 + n2 + len).ok_or(bad("string runs past the pool"))?;
            Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
        } else {
            let (len, n) = utf16_len(data)?;
            if len > MAX_STRING {
                return Err(bad("string longer than 4 KiB"));
            }
            let bytes = data.get(n..n + 2 * len).ok_or(bad("string runs past the pool"))?;
            let units = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
            Ok(Some(char::decode_utf16(units).map(|c| c.unwrap_or('\u{fffd}')).collect()))
        }
    }
}

fn utf8_len(d: &[u8]) -> Result<(usize, usize), AxmlError> {
    let b0 = *d.first().ok_or(bad("string length"))?;
    if b0 & 0x80 == 0 {
        Ok((usize::from(b0), 1))
    } else {
        let b1 = *d.get(1).ok_or(bad("string length"))?;
        Ok(((usize::from(b0 & 0x7f) << 8) | usize::from(b1), 2))
    }
}

fn utf16_len(d: &[u8]) -> Result<(usize, usize), AxmlError> {
    if d.len() < 2 {
        return Err(bad("string length"));
    }
    let w0 = le16(d, 0);
    if w0 & 0x8000 == 0 {
        Ok((usize::from(w0), 2))
    } else {
        if d.len() < 4 {
            return Err(bad("string length"));
        }
        Ok(((usize::from(w0 & 0x7fff) << 16) | usize::from(le16(d, 2)), 4))
    }
}

/// Whether `name` is a package name Android accepts for an installable APK: two or more
/// dot-separated segments, each a Java-identifier-like run of ASCII letters, digits and `_` not
/// starting with a digit, at most 255 bytes (`FrameworkParsingPackageUtils.validateName` with
/// `requireSeparator`).
pub fn valid_package_name(name: &str) -> bool {
    valid_name(name, 2)
}

/// As [`valid_package_name`], but one segment is enough: the platform's own package is `android`
/// (framework-res.apk), and packages.xml lists it.
pub fn valid_installed_package_name(name: &str) -> bool {
    valid_name(name, 1)
}

fn valid_name(name: &str, min_segments: usize) -> bool {
    if name.is_empty() || name.len() > 255 {
        return false;
    }
    let mut segments = 0;
    for seg in name.split('.') {
        segments += 1;
        let mut chars = seg.chars();
        match chars.next() {
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
            _ => return false,
        }
        if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return false;
        }
    }
    segments >= min_segments
}

/// Reads the manifest fields from a whole binary AndroidManifest.xml.
pub fn parse_manifest(doc: &[u8]) -> Result<Manifest, AxmlError> {
    if doc.len() < 8 || le16(doc, 0) != RES_XML_TYPE {
        return Err(AxmlError::NotAxml);
    }
    let header_size = usize::from(le16(doc, 2));
    let total = (le32(doc, 4) as usize).min(doc.len());
    if header_size < 8 || header_size > total {
        return Err(bad("document header"));
    }
    let mut pool: Option<StringPool<'_>> = None;
    let mut res_map: &[u8] = &[];
    let mut pos = header_size;
    while pos + 8 <= total {
        let ty = le16(doc, pos);
        let hsize = usize::from(le16(doc, pos + 2));
        let size = le32(doc, pos + 4) as usize;
        if size < 8 || hsize < 8 || hsize > size || size > total - pos {
            return Err(bad("chunk size"));
        }
        let chunk = &doc[pos..pos + size];
        match ty {
            RES_STRING_POOL_TYPE if pool.is_none() => pool = Some(StringPool::parse(chunk)?),
            RES_XML_RESOURCE_MAP_TYPE => res_map = &chunk[hsize..],
            RES_XML_START_ELEMENT_TYPE => {
                let pool = pool.as_ref().ok_or(bad("element before the string pool"))?;
                return manifest_element(chunk, hsize, pool, res_map);
            }
            _ => {}
        }
        pos += size;
    }
    Err(bad("no element"))
}

fn manifest_element(chunk: &[u8], hsize: usize, pool: &StringPool<'_>, res_map: &[u8]) -> Result<Manifest, AxmlError> {
    let ext = chunk.get(hsize..hsize + 20).ok_or(bad("element header"))?;
    let name = pool.get(le32(ext, 4))?.unwrap_or_default();
    if name != "manifest" {
        return Err(AxmlError::NotManifest(name.chars().take(64).collect()));
    }
    let attr_start = usize::from(le16(ext, 8));
    let attr_size = usize::from(le16(ext, 10));
    let attr_count = usize::from(le16(ext, 12)).min(MAX_ATTRS);
    if attr_size < 20 {
        return Err(bad("attribute size"));
    }
    let res_id = |name_index: u32| -> Option<u32> {
        let i = name_index as usize;
        (i < res_map.len() / 4).then(|| le32(res_map, 4 * i))
    };
    let mut package = None;
    let (mut code, mut major, mut version_name) = (None, None, None);
    for k in 0..attr_count {
        let at = hsize + attr_start + k * attr_size;
        let a = chunk.get(at..at + 20).ok_or(bad("attribute runs past the element"))?;
        let (ns, name_idx, raw, data_type, data) = (le32(a, 0), le32(a, 4), le32(a, 8), a[15], le32(a, 16));
        let which = match res_id(name_idx) {
            Some(ATTR_VERSION_CODE) => Some(ATTR_VERSION_CODE),
            Some(ATTR_VERSION_NAME) => Some(ATTR_VERSION_NAME),
            Some(ATTR_VERSION_CODE_MAJOR) => Some(ATTR_VERSION_CODE_MAJOR),
            Some(id) if id != 0 => None,
            _ => {
                let attr_name = pool.get(name_idx)?.unwrap_or_default();
                let in_android = ns != NO_INDEX && pool.get(ns)?.as_deref() == Some(ANDROID_NS);
                match (attr_name.as_str(), in_android, ns == NO_INDEX) {
                    ("package", _, true) => {
                        package = string_value(pool, raw, data_type, data)?;
                        None
                    }
                    ("versionCode", true, _) => Some(ATTR_VERSION_CODE),
                    ("versionName", true, _) => Some(ATTR_VERSION_NAME),
                    ("versionCodeMajor", true, _) => Some(ATTR_VERSION_CODE_MAJOR),
                    _ => None,
                }
            }
        };
        match which {
            Some(ATTR_VERSION_CODE) => code = int_value(pool, raw, data_type, data)?,
            Some(ATTR_VERSION_CODE_MAJOR) => major = int_value(pool, raw, data_type, data)?,
            Some(ATTR_VERSION_NAME) => version_name = string_value(pool, raw, data_type, data)?,
            _ => {}
        }
    }
    let package = package.ok_or(AxmlError::NoPackage)?;
    if !valid_package_name(&package) {
        return Err(AxmlError::BadPackage(package.chars().take(300).collect()));
    }
    let version_code = match (code, major) {
        (None, None) => None,
        (c, m) => Some((u64::from(m.unwrap_or(0)) << 32) | u64::from(c.unwrap_or(0))),
    };
    Ok(Manifest { package, version_code, version_name })
}

/// A string attribute: the typed value if it is a string, else the raw string; references
/// (`@string/…`) are not resolved.
fn string_value(pool: &StringPool<'_>, raw: u32, data_type: u8, data: u32) -> Result<Option<String>, AxmlError> {
    match data_type {
        TYPE_STRING => pool.get(data),
        TYPE_REFERENCE => Ok(None),
        _ => pool.get(raw),
    }
}

/// An integer attribute (as the platform reads it: decimal or hex typed ints, or a string of
/// digits in the raw value).
fn int_value(pool: &StringPool<'_>, raw: u32, data_type: u8, data: u32) -> Result<Option<u32>, AxmlError> {
    match data_type {
        TYPE_INT_DEC | TYPE_INT_HEX => Ok(Some(data)),
        TYPE_STRING => Ok(pool.get(data)?.and_then(|s| s.trim().parse::<i64>().ok()).map(|v| v as u32)),
        TYPE_REFERENCE => Ok(None),
        _ => Ok(pool.get(raw)?.and_then(|s| s.trim().parse::<i64>().ok()).map(|v| v as u32)),
    }
}

/// A minimal AXML writer, for tests and benches: a `<manifest>` root with `package` and any of
/// versionCode / versionName / versionCodeMajor (typed as aapt2 types them), in a UTF-16 or
/// UTF-8 string pool, plus one `<application>` child. The real encoder is aapt's; this exists
/// because aapt here has no android.jar and so cannot write android: attributes.
pub fn encode_manifest(
    package: &str,
    version_code: Option<u32>,
    version_name: Option<&str>,
    version_code_major: Option<u32>,
    utf8: bool,
) -> Vec<u8> {
    // Strings: attribute names first (so the resource map covers them), then the rest.
    let mut ids: Vec<u32> = Vec::new();
    let mut strings: Vec<String> = Vec::new();
    for (present, name, id) in [
        (version_code.is_some(), "versionCode", ATTR_VERSION_CODE),
        (version_name.is_some(), "versionName", ATTR_VERSION_NAME),
        (version_code_major.is_some(), "versionCodeMajor", ATTR_VERSION_CODE_MAJOR),
    ] {
        if present {
            strings.push(name.into());
            ids.push(id);
        }
    }
    let mut add = |s: &str| {
        strings.push(s.into());
        (strings.len() - 1) as u32
    };
    let ns_i = add(ANDROID_NS);
    add("android");
    add("manifest");
    add("application");
    let package_attr_i = add("package");
    let package_val_i = add(package);
    let name_val_i = version_name.map(&mut add);
    // (ns, name, raw value, Res_value type, data) per attribute.
    let mut attrs: Vec<(u32, u32, u32, u8, u32)> = Vec::new();
    let mut k = 0u32;
    if let Some(c) = version_code {
        attrs.push((ns_i, k, NO_INDEX, TYPE_INT_DEC, c));
        k += 1;
    }
    if let Some(vi) = name_val_i {
        attrs.push((ns_i, k, vi, TYPE_STRING, vi));
        k += 1;
    }
    if let Some(m) = version_code_major {
        attrs.push((ns_i, k, NO_INDEX, TYPE_INT_DEC, m));
    }
    attrs.push((NO_INDEX, package_attr_i, package_val_i, TYPE_STRING, package_val_i));
    let idx = |s: &str| strings.iter().position(|x| *x == s).expect("interned") as u32;

    let mut pool_data = Vec::new();
    let mut offsets = Vec::new();
    for s in &strings {
        offsets.push(pool_data.len() as u32);
        if utf8 {
            let n16 = s.encode_utf16().count();
            for n in [n16, s.len()] {
                if n > 0x7f {
                    pool_data.push(0x80 | (n >> 8) as u8);
                }
                pool_data.push(n as u8);
            }
            pool_data.extend_from_slice(s.as_bytes());
            pool_data.push(0);
        } else {
            let units: Vec<u16> = s.encode_utf16().collect();
            if units.len() > 0x7fff {
                pool_data.extend_from_slice(&((0x8000 | (units.len() >> 16)) as u16).to_le_bytes());
            }
            pool_data.extend_from_slice(&(units.len() as u16).to_le_bytes());
            for u in units {
                pool_data.extend_from_slice(&u.to_le_bytes());
            }
            pool_data.extend_from_slice(&[0, 0]);
        }
    }
    while pool_data.len() % 4 != 0 {
        pool_data.push(0);
    }
    let mut pool = Vec::new();
    let strings_start = 28 + 4 * offsets.len();
    pool.extend_from_slice(&RES_STRING_POOL_TYPE.to_le_bytes());
    pool.extend_from_slice(&28u16.to_le_bytes());
    pool.extend_from_slice(&((strings_start + pool_data.len()) as u32).to_le_bytes());
    pool.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
    pool.extend_from_slice(&0u32.to_le_bytes());
    pool.extend_from_slice(&(if utf8 { UTF8_FLAG } else { 0 }).to_le_bytes());
    pool.extend_from_slice(&(strings_start as u32).to_le_bytes());
    pool.extend_from_slice(&0u32.to_le_bytes());
    for o in &offsets {
        pool.extend_from_slice(&o.to_le_bytes());
    }
    pool.extend_from_slice(&pool_data);

    let mut map = Vec::new();
    map.extend_from_slice(&RES_XML_RESOURCE_MAP_TYPE.to_le_bytes());
    map.extend_from_slice(&8u16.to_le_bytes());
    map.extend_from_slice(&((8 + 4 * ids.len()) as u32).to_le_bytes());
    for id in &ids {
        map.extend_from_slice(&id.to_le_bytes());
    }

    let node = |ty: u16, body: &[u8]| -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&ty.to_le_bytes());
        n.extend_from_slice(&16u16.to_le_bytes());
        n.extend_from_slice(&((16 + body.len()) as u32).to_le_bytes());
        n.extend_from_slice(&1u32.to_le_bytes());
        n.extend_from_slice(&NO_INDEX.to_le_bytes());
        n.extend_from_slice(body);
        n
    };
    let (ns, prefix) = (idx(ANDROID_NS), idx("android"));
    let ns_body = [prefix.to_le_bytes(), ns.to_le_bytes()].concat();
    let element = |name: u32, attrs: &[(u32, u32, u32, u8, u32)]| -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&NO_INDEX.to_le_bytes());
        b.extend_from_slice(&name.to_le_bytes());
        b.extend_from_slice(&20u16.to_le_bytes());
        b.extend_from_slice(&20u16.to_le_bytes());
        b.extend_from_slice(&(attrs.len() as u16).to_le_bytes());
        b.extend_from_slice(&[0u8; 6]);
        for &(ns, name, raw, ty, data) in attrs {
            b.extend_from_slice(&ns.to_le_bytes());
            b.extend_from_slice(&name.to_le_bytes());
            b.extend_from_slice(&raw.to_le_bytes());
            b.extend_from_slice(&8u16.to_le_bytes());
            b.push(0);
            b.push(ty);
            b.extend_from_slice(&data.to_le_bytes());
        }
        b
    };
    let end_element = |name: u32| [NO_INDEX.to_le_bytes(), name.to_le_bytes()].concat();
    let mut body = Vec::new();
    body.extend(pool);
    body.extend(map);
    body.extend(node(0x0100, &ns_body));
    body.extend(node(RES_XML_START_ELEMENT_TYPE, &element(idx("manifest"), &attrs)));
    body.extend(node(RES_XML_START_ELEMENT_TYPE, &element(idx("application"), &[])));
    body.extend(node(0x0103, &end_element(idx("application"))));
    body.extend(node(0x0103, &end_element(idx("manifest"))));
    body.extend(node(0x0101, &ns_body));
    let mut doc = Vec::new();
    doc.extend_from_slice(&RES_XML_TYPE.to_le_bytes());
    doc.extend_from_slice(&8u16.to_le_bytes());
    doc.extend_from_slice(&((8 + body.len()) as u32).to_le_bytes());
    doc.extend(body);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_encoder_wrote_in_both_pool_encodings() {
        for utf8 in [false, true] {
            let doc = encode_manifest("com.tencent.mm", Some(2800), Some("8.0.49"), None, utf8);
            let m = parse_manifest(&doc).unwrap();
            assert_eq!(m.package, "com.tencent.mm");
            assert_eq!(m.version_code, Some(2800));
            assert_eq!(m.version_name.as_deref(), Some("8.0.49"));
            let doc = encode_manifest("org.example.big", Some(7), None, Some(3), utf8);
            let m = parse_manifest(&doc).unwrap();
            assert_eq!(m.version_code, Some((3 << 32) | 7));
            assert_eq!(m.version_name, None);
        }
    }

    #[test]
    fn package_names_are_validated() {
        assert!(valid_package_name("com.tencent.mm"));
        assert!(valid_package_name("a_b.c9"));
        assert!(!valid_package_name("mm"));
        assert!(valid_installed_package_name("android"));
        assert!(!valid_installed_package_name("android/.."));
        assert!(!valid_package_name("com..mm"));
        assert!(!valid_package_name("com.9mm"));
        assert!(!valid_package_name("com.tencent.mm/../x"));
        let doc = encode_manifest("com.bad name", None, None, None, true);
        assert!(matches!(parse_manifest(&doc), Err(AxmlError::BadPackage(_))));
    }

    #[test]
    fn truncations_are_errors_not_panics() {
        let doc = encode_manifest("com.tencent.mm", Some(1), Some("1"), None, false);
        for n in 0..doc.len() {
            let _ = parse_manifest(&doc[..n]);
        }
    }
}
