//! An APK's identity from its opened file: the manifest (see `axml`) and the signer
//! certificates, from the APK Signing Block (v3.1 and v3 with their rotation lineage, else v2)
//! or, for APKs signed only with the JAR scheme (v1), from the PKCS#7 `SignedData` in
//! `META-INF/*.RSA|DSA|EC`.
//!
//! Identity is *extracted*, not verified: no digest or signature is checked here. That is the
//! right trade for a ban: Android verifies the signature at install and refuses an APK whose
//! signing block does not verify, so a file that claims a certificate it was not signed with is
//! a file that cannot be installed; and a genuinely signed APK cannot hide its certificate.
//! Verifying would also mean reading the whole file (digests cover every byte).
//!
//! Bounds (hostile input, read as root): reads are positioned reads on the opened fd; the
//! manifest entry is capped at `MANIFEST_MAX` (compressed, declared and inflated); the signing
//! block at `SIG_BLOCK_MAX` with at most `MAX_PAIRS` ID-value pairs, of which only the v2/v3
//! values are read (each capped at `SCHEME_MAX`); at most `MAX_SIGNERS` signers and
//! `MAX_CERTS` certificates are collected; v1 signature files are capped at `V1_MAX` and at most
//! `MAX_V1_FILES` are read. Format: source.android.com "APK Signature Scheme v2/v3" and AOSP
//! apksig (`ApkSigningBlockUtils`, `V3SchemeConstants`, `SigningCertificateLineage`).

use std::fs::File;

use sha2::{Digest as _, Sha256};

use super::axml::{self, AxmlError, Manifest};
use super::zip::{self, ZipError};

/// Largest AndroidManifest.xml read (real manifests are a few KiB to a few hundred KiB).
pub const MANIFEST_MAX: u64 = 4 * 1024 * 1024;
/// Largest APK Signing Block accepted (real blocks are a few KiB, or up to 4 KiB-aligned
/// padding; source stamps and Play metadata add tens of KiB).
pub const SIG_BLOCK_MAX: u64 = 16 * 1024 * 1024;
/// Largest v2/v3/v3.1 scheme value read.
pub const SCHEME_MAX: u64 = 1024 * 1024;
/// ID-value pairs walked in the signing block.
pub const MAX_PAIRS: usize = 256;
/// Signers per scheme block considered.
pub const MAX_SIGNERS: usize = 16;
/// Certificates collected in all (signers, lineage, v1).
pub const MAX_CERTS: usize = 64;
/// Largest v1 signature block file (`META-INF/*.RSA`) read.
pub const V1_MAX: u64 = 256 * 1024;
/// v1 signature block files read at most.
pub const MAX_V1_FILES: usize = 8;

const SIG_BLOCK_MAGIC: &[u8; 16] = b"APK Sig Block 42";
const V2_ID: u32 = 0x7109_871a;
const V3_ID: u32 = 0xf053_68c0;
const V31_ID: u32 = 0x1b93_ad61;
const PROOF_OF_ROTATION_ID: u32 = 0x3ba0_6f8c;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ApkError {
    #[error("{0}")]
    Zip(#[from] ZipError),
    #[error("AndroidManifest.xml: {0}")]
    Manifest(#[from] AxmlError),
    #[error("no AndroidManifest.xml in the archive")]
    NoManifest,
    #[error("APK Signing Block: {0}")]
    SigningBlock(&'static str),
    #[error("APK Signing Block is {0} bytes, over the {SIG_BLOCK_MAX}-byte cap")]
    SigningBlockTooLarge(u64),
    #[error("signature scheme v{scheme}: {what}")]
    Scheme { scheme: &'static str, what: &'static str },
    #[error("v1 signature {file}: {what}")]
    V1 { file: String, what: &'static str },
}

/// Which signature scheme the signer certificates came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    V31,
    V3,
    V2,
    V1,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::V31 => "v3.1",
            Scheme::V3 => "v3",
            Scheme::V2 => "v2",
            Scheme::V1 => "v1",
        }
    }
}

/// One signer certificate: the SHA-256 of its DER encoding, as `apksigner verify --print-certs`
/// prints it and as policies name signers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    pub sha256: [u8; 32],
    pub der_len: usize,
}

impl Cert {
    fn of(der: &[u8]) -> Self {
        Self { sha256: Sha256::digest(der).into(), der_len: der.len() }
    }

    pub fn hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// What an APK is and who signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApkIdentity {
    pub manifest: Manifest,
    /// The scheme the signers were read from; `None` for an unsigned APK.
    pub scheme: Option<Scheme>,
    /// Current signer certificate(s) of that scheme (the first signer first).
    pub signers: Vec<Cert>,
    /// Earlier certificates from a v3 proof-of-rotation lineage, oldest first (the current
    /// signer's own certificate is not repeated here).
    pub lineage: Vec<Cert>,
    /// Why no signer could be read from a damaged signature section (then `signers` is empty and
    /// the identity rests on the manifest alone).
    pub signer_error: Option<ApkError>,
}

impl ApkIdentity {
    /// Every certificate a signer rule may name: current signers, then the lineage.
    pub fn all_signers_hex(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in self.signers.iter().chain(self.lineage.iter()) {
            let h = c.hex();
            if !out.contains(&h) {
                out.push(h);
            }
        }
        out
    }
}

/// Reads the identity of the APK in `file` (an opened regular file; never read whole).
pub fn identify_apk(file: &File) -> Result<ApkIdentity, ApkError> {
    let eocd = zip::find_eocd(file)?;
    let mut v1_files = 0usize;
    let entries = zip::find_entries(
        file,
        &eocd,
        |name| {
            if name == "AndroidManifest.xml" {
                return true;
            }
            if is_v1_signature_file(name) && v1_files < MAX_V1_FILES {
                v1_files += 1;
                return true;
            }
            false
        },
        1 + MAX_V1_FILES,
    )?;
    let manifest_entry = entries.iter().find(|e| e.name == "AndroidManifest.xml").ok_or(ApkError::NoManifest)?;
    let manifest = axml::parse_manifest(&zip::read_entry(file, &eocd, manifest_entry, MANIFEST_MAX)?)?;

    let mut id = ApkIdentity { manifest, scheme: None, signers: Vec::new(), lineage: Vec::new(), signer_error: None };
    // A damaged signature section does not hide what the manifest says: the identity keeps its
    // package and version (id and version rules still match), with no signers and the reason.
    if let Err(e) = read_signers(file, &eocd, &entries, &mut id) {
        id.scheme = None;
        id.signers.clear();
        id.lineage.clear();
        id.signer_error = Some(e);
    }
    Ok(id)
}

/// Fills the identity's signers from the signing block, or from v1 when there is none.
fn read_signers(file: &File, eocd: &zip::Eocd, entries: &[zip::Entry], id: &mut ApkIdentity) -> Result<(), ApkError> {
    if let Some(block) = signing_block_values(file, eocd)? {
        // v3.1 targets newer platforms with a rotated key; v3 then covers older ones. A ban
        // must match either, so both are collected (v3.1's signer first).
        for (scheme, value) in [(Scheme::V31, &block.v31), (Scheme::V3, &block.v3)] {
            if let Some(v) = value {
                parse_v3(v, scheme, id)?;
                id.scheme.get_or_insert(scheme);
            }
        }
        if id.scheme.is_none() {
            if let Some(v) = &block.v2 {
                for_each_signer(v, "2", |signed_data, _| {
                    let mut sd = Reader::new(signed_data, "2");
                    sd.prefixed()?; // digests
                    first_certs(sd.prefixed()?, "2", &mut id.signers)
                })?;
                id.scheme = Some(Scheme::V2);
            }
        }
    }
    if id.scheme.is_none() {
        for e in entries.iter().filter(|e| e.name != "AndroidManifest.xml") {
            let bytes = zip::read_entry(file, eocd, e, V1_MAX)?;
            let der = pkcs7_signer_cert(&bytes).map_err(|what| ApkError::V1 { file: e.name.clone(), what })?;
            push_cert(&mut id.signers, Cert::of(der));
        }
        if !id.signers.is_empty() {
            id.scheme = Some(Scheme::V1);
        }
    }
    Ok(())
}

/// `META-INF/X.RSA`, `.DSA` or `.EC` (upper case, as the platform's JAR verifier wants), not in
/// a subdirectory.
fn is_v1_signature_file(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("META-INF/") else { return false };
    !rest.contains('/') && [".RSA", ".DSA", ".EC"].iter().any(|ext| rest.len() > ext.len() && rest.ends_with(ext))
}

fn push_cert(list: &mut Vec<Cert>, c: Cert) {
    if list.len() < MAX_CERTS && !list.contains(&c) {
        list.push(c);
    }
}

#[derive(Default)]
struct BlockValues {
    v2: Option<Vec<u8>>,
    v3: Option<Vec<u8>>,
    v31: Option<Vec<u8>>,
}

/// Reads the signing block's v2/v3/v3.1 values, or `None` if the APK has no signing block.
fn signing_block_values(file: &File, eocd: &zip::Eocd) -> Result<Option<BlockValues>, ApkError> {
    let cd = eocd.cd_offset;
    if cd < 32 {
        return Ok(None);
    }
    let footer = zip::read_at(file, cd - 24, 24)?;
    if &footer[8..24] != SIG_BLOCK_MAGIC {
        return Ok(None);
    }
    let size = u64::from_le_bytes(footer[..8].try_into().expect("8 bytes"));
    if size > SIG_BLOCK_MAX {
        return Err(ApkError::SigningBlockTooLarge(size));
    }
    // The block is `u64 size` + pairs + `u64 size` + magic; `size` counts all but the first u64.
    if size < 24 || size + 8 > cd {
        return Err(ApkError::SigningBlock("size field"));
    }
    let start = cd - size - 8;
    let head = zip::read_at(file, start, 8)?;
    if u64::from_le_bytes(head[..8].try_into().expect("8 bytes")) != size {
        return Err(ApkError::SigningBlock("the two size fields differ"));
    }
    let pairs_end = cd - 24;
    let mut pos = start + 8;
    let mut out = BlockValues::default();
    let mut n = 0;
    while pos < pairs_end {
        n += 1;
        if n > MAX_PAIRS {
            return Err(ApkError::SigningBlock("too many ID-value pairs"));
        }
        if pairs_end - pos < 12 {
            return Err(ApkError::SigningBlock("truncated ID-value pair"));
        }
        let h = zip::read_at(file, pos, 12)?;
        let len = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
        let id = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        if len < 4 || len > pairs_end - pos - 8 {
            return Err(ApkError::SigningBlock("ID-value pair length"));
        }
        let slot = match id {
            V2_ID => Some(&mut out.v2),
            V3_ID => Some(&mut out.v3),
            V31_ID => Some(&mut out.v31),
            _ => None,
        };
        if let Some(slot) = slot {
            let value_len = len - 4;
            if value_len > SCHEME_MAX {
                return Err(ApkError::SigningBlock("a signature scheme block is over 1 MiB"));
            }
            if slot.is_none() {
                *slot = Some(zip::read_at(file, pos + 12, value_len as usize)?);
            }
        }
        pos += 8 + len;
    }
    Ok(Some(out))
}

/// A little-endian reader over length-prefixed (u32) fields, naming its scheme in errors.
struct Reader<'a> {
    b: &'a [u8],
    scheme: &'static str,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], scheme: &'static str) -> Self {
        Self { b, scheme }
    }

    fn err(&self, what: &'static str) -> ApkError {
        ApkError::Scheme { scheme: self.scheme, what }
    }

    fn u32(&mut self) -> Result<u32, ApkError> {
        if self.b.len() < 4 {
            return Err(self.err("truncated field"));
        }
        let v = u32::from_le_bytes(self.b[..4].try_into().expect("4 bytes"));
        self.b = &self.b[4..];
        Ok(v)
    }

    fn prefixed(&mut self) -> Result<&'a [u8], ApkError> {
        let n = self.u32()? as usize;
        if n > self.b.len() {
            return Err(self.err("length prefix runs past its container"));
        }
        let (v, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(v)
    }

    fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
}

/// Calls `f(signed_data, rest_of_signer)` for each signer of a v2/v3 block (at most
/// `MAX_SIGNERS`).
fn for_each_signer<'a>(
    value: &'a [u8],
    scheme: &'static str,
    mut f: impl FnMut(&'a [u8], &'a [u8]) -> Result<(), ApkError>,
) -> Result<(), ApkError> {
    let mut outer = Reader::new(value, scheme);
    let mut signers = Reader::new(outer.prefixed()?, scheme);
    let mut n = 0;
    while !signers.is_empty() {
        n += 1;
        if n > MAX_SIGNERS {
            return Err(signers.err("more than 16 signers"));
        }
        let mut signer = Reader::new(signers.prefixed()?, scheme);
        let signed_data = signer.prefixed()?;
        f(signed_data, signer.b)?;
    }
    if n == 0 {
        return Err(outer.err("no signers"));
    }
    Ok(())
}

/// The first certificate of a signer's certificate sequence (the signer's own; any others are
/// its chain).
fn first_certs(certs: &[u8], scheme: &'static str, out: &mut Vec<Cert>) -> Result<(), ApkError> {
    let mut r = Reader::new(certs, scheme);
    if r.is_empty() {
        return Err(r.err("signer without a certificate"));
    }
    let der = r.prefixed()?;
    if der.is_empty() {
        return Err(r.err("empty certificate"));
    }
    push_cert(out, Cert::of(der));
    Ok(())
}

/// v3/v3.1 signer: signed data = digests, certificates, minSdk, maxSdk, additional attributes
/// (where the proof-of-rotation lineage lives).
fn parse_v3(value: &[u8], scheme: Scheme, id: &mut ApkIdentity) -> Result<(), ApkError> {
    let name = if scheme == Scheme::V31 { "3.1" } else { "3" };
    let (signers, lineage) = (&mut id.signers, &mut id.lineage);
    for_each_signer(value, name, |signed_data, _| {
        let mut sd = Reader::new(signed_data, name);
        sd.prefixed()?; // digests
        let certs = sd.prefixed()?;
        first_certs(certs, name, signers)?;
        sd.u32()?; // minSdk
        sd.u32()?; // maxSdk
        let mut attrs = Reader::new(sd.prefixed()?, name);
        let mut n = 0;
        while !attrs.is_empty() {
            n += 1;
            if n > 64 {
                return Err(attrs.err("more than 64 additional attributes"));
            }
            let mut attr = Reader::new(attrs.prefixed()?, name);
            if attr.u32()? == PROOF_OF_ROTATION_ID {
                parse_lineage(attr.b, name, lineage)?;
            }
        }
        Ok(())
    })?;
    // The lineage's last node is the current signer: keep only the earlier ones.
    let current = id.signers.clone();
    id.lineage.retain(|c| !current.contains(c));
    Ok(())
}

/// Proof of rotation: u32 version, then nodes, each length-prefixed: (signed data: cert,
/// signature algorithm), flags, signature algorithm, signature.
fn parse_lineage(value: &[u8], scheme: &'static str, out: &mut Vec<Cert>) -> Result<(), ApkError> {
    let mut r = Reader::new(value, scheme);
    if r.u32()? != 1 {
        return Err(r.err("unknown proof-of-rotation version"));
    }
    let mut n = 0;
    while !r.is_empty() {
        n += 1;
        if n > MAX_CERTS {
            return Err(r.err("proof-of-rotation lineage longer than 64"));
        }
        let mut node = Reader::new(r.prefixed()?, scheme);
        let mut signed = Reader::new(node.prefixed()?, scheme);
        let der = signed.prefixed()?;
        if der.is_empty() {
            return Err(r.err("empty certificate in the lineage"));
        }
        push_cert(out, Cert::of(der));
    }
    Ok(())
}

/// A DER TLV: tag byte, then contents.
struct Tlv<'a> {
    tag: u8,
    /// The whole encoding (tag, length and contents).
    raw: &'a [u8],
    body: &'a [u8],
}

/// Reads one DER TLV from the front of `b`, returning it and the rest. Only definite lengths up
/// to 4 bytes; indefinite (BER) lengths are refused, as the platform's verifier refuses them.
fn tlv(b: &[u8]) -> Result<(Tlv<'_>, &[u8]), &'static str> {
    let tag = *b.first().ok_or("truncated DER")?;
    if tag & 0x1f == 0x1f {
        return Err("multi-byte DER tag");
    }
    let l0 = *b.get(1).ok_or("truncated DER")?;
    let (len, hdr) = if l0 < 0x80 {
        (usize::from(l0), 2)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 {
            return Err("indefinite-length encoding");
        }
        if n > 4 {
            return Err("DER length over 4 bytes");
        }
        let bytes = b.get(2..2 + n).ok_or("truncated DER")?;
        (bytes.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x)), 2 + n)
    };
    let end = hdr.checked_add(len).ok_or("DER length")?;
    if end > b.len() {
        return Err("DER length runs past its container");
    }
    Ok((Tlv { tag, raw: &b[..end], body: &b[hdr..end] }, &b[end..]))
}

fn expect<'a>(b: &'a [u8], tag: u8, what: &'static str) -> Result<(Tlv<'a>, &'a [u8]), &'static str> {
    let (t, rest) = tlv(b)?;
    if t.tag != tag {
        return Err(what);
    }
    Ok((t, rest))
}

const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];

/// The DER of the certificate that signed a PKCS#7 SignedData (RFC 2315 / 5652): the one whose
/// issuer and serial number the first SignerInfo names; the first certificate if none matches.
fn pkcs7_signer_cert(b: &[u8]) -> Result<&[u8], &'static str> {
    let (content_info, _) = expect(b, 0x30, "not a PKCS#7 ContentInfo")?;
    let (oid, rest) = expect(content_info.body, 0x06, "ContentInfo without a content type")?;
    if oid.body != OID_SIGNED_DATA {
        return Err("not PKCS#7 SignedData");
    }
    let (explicit, _) = expect(rest, 0xa0, "SignedData content missing")?;
    let (signed_data, _) = expect(explicit.body, 0x30, "SignedData is not a SEQUENCE")?;
    let (_version, rest) = expect(signed_data.body, 0x02, "SignedData version")?;
    let (_digest_algs, rest) = expect(rest, 0x31, "SignedData digest algorithms")?;
    let (_encap, rest) = expect(rest, 0x30, "SignedData content info")?;
    let (certs, mut rest) = expect(rest, 0xa0, "SignedData carries no certificates")?;
    // Optional CRLs ([1]), then SignerInfos (SET).
    if rest.first() == Some(&0xa1) {
        rest = tlv(rest)?.1;
    }
    let wanted = match expect(rest, 0x31, "SignedData signer infos") {
        Ok((infos, _)) => first_signer_issuer_serial(infos.body).ok(),
        Err(_) => None,
    };
    let mut first = None;
    let mut list = certs.body;
    let mut n = 0;
    while !list.is_empty() {
        n += 1;
        if n > MAX_CERTS {
            return Err("more than 64 certificates");
        }
        let (cert, rest) = tlv(list)?;
        list = rest;
        if cert.tag != 0x30 {
            continue;
        }
        first.get_or_insert(cert.raw);
        if let (Some((issuer, serial)), Ok((cert_issuer, cert_serial))) = (wanted, cert_issuer_serial(cert.body)) {
            if issuer == cert_issuer && serial == cert_serial {
                return Ok(cert.raw);
            }
        }
    }
    first.ok_or("SignedData carries no certificates")
}

/// (issuer Name DER, serial INTEGER DER) of the first SignerInfo.
fn first_signer_issuer_serial(infos: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let (info, _) = expect(infos, 0x30, "SignerInfo")?;
    let (_version, rest) = expect(info.body, 0x02, "SignerInfo version")?;
    let (ias, _) = expect(rest, 0x30, "SignerInfo issuerAndSerialNumber")?;
    let (issuer, rest) = expect(ias.body, 0x30, "issuer")?;
    let (serial, _) = expect(rest, 0x02, "serial")?;
    Ok((issuer.raw, serial.raw))
}

/// (issuer, serial) of a Certificate's tbsCertificate.
fn cert_issuer_serial(cert_body: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let (tbs, _) = expect(cert_body, 0x30, "tbsCertificate")?;
    let mut rest = tbs.body;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.1;
    }
    let (serial, rest) = expect(rest, 0x02, "serial")?;
    let (_alg, rest) = expect(rest, 0x30, "signature algorithm")?;
    let (issuer, _) = expect(rest, 0x30, "issuer")?;
    Ok((issuer.raw, serial.raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_signature_file_names() {
        assert!(is_v1_signature_file("META-INF/CERT.RSA"));
        assert!(is_v1_signature_file("META-INF/ANDROIDD.EC"));
        assert!(!is_v1_signature_file("META-INF/.RSA"));
        assert!(!is_v1_signature_file("META-INF/sub/CERT.RSA"));
        assert!(!is_v1_signature_file("META-INF/CERT.SF"));
    }

    #[test]
    fn der_lengths_are_bounded() {
        assert!(tlv(&[0x30, 0x80, 0, 0]).is_err());
        assert!(tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_err());
        assert!(tlv(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(tlv(&[0x30, 0x02, 0x05, 0x00]).is_ok());
        assert!(pkcs7_signer_cert(&[]).is_err());
    }
}
