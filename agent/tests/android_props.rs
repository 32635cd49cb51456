//! Property tests over the Android parsers with hostile input: random bytes, and valid documents
//! (APK zip + signing block + manifest, ABX packages.xml) with bytes overwritten and length,
//! count and offset fields replaced by huge values. Every parse must return (an error is fine)
//! without panicking, and the peak heap the parse allocates must stay within a bound set by the
//! input's size and the documented caps, never by a size or count the input declares.

// The counting allocator is the only unsafe code here: measuring heap needs a GlobalAlloc (as in
// policy-schema/benches/policy_scale.rs).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write as _;

use embargo_agent::android::{abx, apk, axml, packages_xml, xml};
use proptest::prelude::*;

/// Counts this thread's live heap bytes and their peak (tests run on several threads; each
/// measures its own allocations).
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|l| {
            let now = l.get() + layout.size();
            l.set(now);
            let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
        });
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(layout.size())));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the peak bytes it had live at once.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

fn prefixed(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// A v3 scheme value: one signer, one certificate, a proof-of-rotation lineage of `lineage`.
fn v3_value(cert: &[u8], lineage: &[&[u8]]) -> Vec<u8> {
    let mut por = 1u32.to_le_bytes().to_vec();
    for c in lineage {
        let mut signed = prefixed(c);
        signed.extend_from_slice(&0x0103u32.to_le_bytes());
        let mut node = prefixed(&signed);
        node.extend_from_slice(&0u32.to_le_bytes());
        node.extend_from_slice(&0x0103u32.to_le_bytes());
        node.extend(prefixed(&[1, 2, 3]));
        por.extend(prefixed(&node));
    }
    let mut attr = 0x3ba0_6f8cu32.to_le_bytes().to_vec();
    attr.extend(por);
    let mut signed_data = prefixed(&prefixed(&[1; 40]));
    signed_data.extend(prefixed(&prefixed(cert)));
    signed_data.extend_from_slice(&28u32.to_le_bytes());
    signed_data.extend_from_slice(&0x7fff_ffffu32.to_le_bytes());
    signed_data.extend(prefixed(&prefixed(&attr)));
    let mut signer = prefixed(&signed_data);
    signer.extend_from_slice(&28u32.to_le_bytes());
    signer.extend_from_slice(&0x7fff_ffffu32.to_le_bytes());
    signer.extend(prefixed(&prefixed(&[9; 20])));
    signer.extend(prefixed(&[7; 30]));
    prefixed(&prefixed(&signer))
}

fn signing_block(pairs: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (id, v) in pairs {
        body.extend_from_slice(&(v.len() as u64 + 4).to_le_bytes());
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(v);
    }
    let size = (body.len() + 8 + 16) as u64;
    let mut b = size.to_le_bytes().to_vec();
    b.extend(body);
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(b"APK Sig Block 42");
    b
}

/// A ZIP with the given entries (deflated when `deflate`), an optional signing block before the
/// central directory.
fn apk_bytes(entries: &[(&str, Vec<u8>)], deflate: bool, block: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cd = Vec::new();
    for (name, data) in entries {
        let (method, stored) =
            if deflate { (8u16, miniz_oxide::deflate::compress_to_vec(data, 6)) } else { (0u16, data.clone()) };
        let off = out.len() as u32;
        let header = |sig: u32, central: bool| {
            let mut h = sig.to_le_bytes().to_vec();
            if central {
                h.extend_from_slice(&20u16.to_le_bytes());
            }
            h.extend_from_slice(&20u16.to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes());
            h.extend_from_slice(&method.to_le_bytes());
            h.extend_from_slice(&[0; 8]); // time, date, crc
            h.extend_from_slice(&(stored.len() as u32).to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes());
            if central {
                h.extend_from_slice(&[0; 10]); // comment len, disk, internal and external attrs
                h.extend_from_slice(&off.to_le_bytes());
            }
            h.extend_from_slice(name.as_bytes());
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend_from_slice(&stored);
        cd.extend(header(0x0201_4b50, true));
    }
    if let Some(b) = block {
        out.extend(b);
    }
    let cd_off = out.len() as u32;
    out.extend_from_slice(&cd);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(cd.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_off.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

fn identify_bytes(bytes: &[u8]) -> (Result<apk::ApkIdentity, apk::ApkError>, usize) {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    peak_of(|| apk::identify_apk(&f))
}

/// What a parse of an APK of `len` bytes may hold at once: the manifest cap twice (compressed
/// and inflated), the v2/v3/v3.1 values, and a few windows, plus four times the file (every
/// read is bounded by the file's own size).
fn apk_bound(len: usize) -> usize {
    2 * apk::MANIFEST_MAX as usize + 3 * apk::SCHEME_MAX as usize + 4 * len + 512 * 1024
}

/// Damage: overwrite bytes, and plant huge little-endian u16/u32/u64 values (the shapes of
/// lengths, counts and offsets).
fn damage() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    prop::collection::vec((any::<usize>(), 0u8..5, any::<u8>()), 1..12)
}

fn apply(bytes: &mut [u8], damage: &[(usize, u8, u8)]) {
    if bytes.is_empty() {
        return;
    }
    for &(at, kind, byte) in damage {
        let at = at % bytes.len();
        let planted: &[u8] = match kind {
            0 => &[byte],
            1 => &[0xff, 0xff],
            2 => &[0xff, 0xff, 0xff, 0x7f],
            3 => &[0xff; 8],
            _ => &[0, 0, 0, 0],
        };
        let end = (at + planted.len()).min(bytes.len());
        bytes[at..end].copy_from_slice(&planted[..end - at]);
    }
}

fn valid_apk(deflate: bool, with_v3: bool, v1: bool) -> Vec<u8> {
    let manifest = axml::encode_manifest("com.tencent.mm", Some(2800), Some("8.0.49"), None, false);
    let mut entries = vec![("AndroidManifest.xml", manifest), ("classes.dex", vec![0x64; 300])];
    if v1 {
        entries.push(("META-INF/CERT.RSA", vec![0x30, 0x82, 0x01, 0x00, 0x06, 0x09]));
    }
    let block = with_v3.then(|| {
        signing_block(&[
            (0x7109_871a, v3_value(&[0x30, 0x03, 1, 2, 3], &[])),
            (0xf053_68c0, v3_value(&[0x30, 0x03, 4, 5, 6], &[&[0x30, 0x01, 9], &[0x30, 0x03, 4, 5, 6]])),
            (0x4272_6577, vec![0; 64]),
        ])
    });
    apk_bytes(&entries, deflate, block)
}

#[test]
fn the_valid_apk_builders_are_read() {
    let (id, _) = identify_bytes(&valid_apk(true, true, false));
    let id = id.unwrap();
    assert_eq!(id.manifest.package, "com.tencent.mm");
    assert_eq!(id.scheme, Some(apk::Scheme::V3));
    assert_eq!(id.lineage.len(), 1, "the lineage's last node is the current signer");
    let (id, _) = identify_bytes(&valid_apk(false, false, false));
    let id = id.unwrap();
    assert_eq!((id.scheme, id.signer_error), (None, None), "unsigned");
    let (id, _) = identify_bytes(&valid_apk(false, false, true));
    let id = id.unwrap();
    assert!(matches!(id.signer_error, Some(apk::ApkError::V1 { .. })), "a bogus v1 block is reported");
}

#[test]
fn declared_sizes_do_not_allocate() {
    // A manifest entry declaring 4 GiB - 1 uncompressed, a signing block declaring 2^63 bytes,
    // a central directory declaring 65,535 entries: errors, with small peaks.
    let mut bytes = valid_apk(false, true, false);
    let cd = bytes.windows(4).rposition(|w| w == [0x50, 0x4b, 0x01, 0x02]).unwrap();
    let first_cd = bytes.windows(4).position(|w| w == [0x50, 0x4b, 0x01, 0x02]).unwrap();
    bytes[first_cd + 24..first_cd + 28].copy_from_slice(&[0xfe, 0xff, 0xff, 0xff]);
    let (r, peak) = identify_bytes(&bytes);
    assert!(matches!(r, Err(apk::ApkError::Zip(_))), "{r:?}");
    assert!(peak < 1024 * 1024, "peak {peak}");
    let mut bytes = valid_apk(false, true, false);
    let magic = bytes.windows(16).position(|w| w == b"APK Sig Block 42").unwrap();
    bytes[magic - 8..magic].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let (r, peak) = identify_bytes(&bytes);
    // The manifest still identifies the app; the damaged signing block is the reported reason
    // there is no signer.
    let id = r.unwrap();
    assert_eq!(id.manifest.package, "com.tencent.mm");
    assert!(matches!(id.signer_error, Some(apk::ApkError::SigningBlockTooLarge(_))), "{:?}", id.signer_error);
    assert!(id.signers.is_empty());
    assert!(peak < 1024 * 1024, "peak {peak}");
    let _ = cd;
}

fn abx_doc(packages: &[(String, i64, Vec<u8>)]) -> Vec<u8> {
    let mut w = abx::AbxWriter::new();
    w.start("packages");
    for (i, (name, version, key)) in packages.iter().enumerate() {
        w.start("package")
            .attr("name", &xml::Value::Str(name.clone()))
            .attr("version", &xml::Value::Long(*version))
            .attr("publicFlags", &xml::Value::Int(i as i32))
            .attr("ft", &xml::Value::LongHex(0x18c0b1d2e30));
        w.start("sigs").attr("count", &xml::Value::Int(1)).attr("schemeVersion", &xml::Value::Int(3));
        w.start("cert").attr("index", &xml::Value::Int((i % 3) as i32));
        if i < 3 {
            w.attr("key", &xml::Value::BytesHex(key.clone()));
        }
        w.end("cert").end("sigs").end("package");
    }
    w.end("packages");
    w.finish()
}

fn abx_bound(len: usize) -> usize {
    8 * len + 2 * xml::MAX_ELEMENT_BYTES + 256 * 1024
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn apk_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048), tail_zip in any::<bool>()) {
        let mut bytes = bytes;
        if tail_zip {
            // Make the EOCD search succeed so the walk goes further.
            bytes.extend_from_slice(&[0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0, 1, 0, 1, 0, 46, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        let (_, peak) = identify_bytes(&bytes);
        prop_assert!(peak <= apk_bound(bytes.len()), "peak {} for {} bytes", peak, bytes.len());
    }

    #[test]
    fn apk_damaged(deflate in any::<bool>(), v3 in any::<bool>(), v1 in any::<bool>(), d in damage()) {
        let mut bytes = valid_apk(deflate, v3, v1);
        apply(&mut bytes, &d);
        let (_, peak) = identify_bytes(&bytes);
        prop_assert!(peak <= apk_bound(bytes.len()), "peak {} for {} bytes", peak, bytes.len());
    }

    #[test]
    fn axml_damaged(utf8 in any::<bool>(), d in damage(), cut in any::<usize>()) {
        let mut doc = axml::encode_manifest("com.example.app", Some(7), Some("1.0"), Some(1), utf8);
        apply(&mut doc, &d);
        let cut = cut % (doc.len() + 1);
        let (_, peak) = peak_of(|| axml::parse_manifest(&doc[..cut]));
        prop_assert!(peak <= 64 * 1024, "peak {}", peak);
    }

    #[test]
    fn abx_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let mut doc = b"ABX\0".to_vec();
        doc.extend(bytes);
        let (_, peak) = peak_of(|| packages_xml::read_packages(&doc));
        prop_assert!(peak <= abx_bound(doc.len()), "peak {}", peak);
        let (_, peak) = peak_of(|| xml::events(&mut abx::AbxReader::new(&doc)).map(|e| e.len()));
        prop_assert!(peak <= abx_bound(doc.len()) + 64 * doc.len(), "peak {}", peak);
    }

    #[test]
    fn abx_damaged(
        pkgs in prop::collection::vec(("[a-z]{1,8}\\.[a-z]{1,8}", any::<i64>(), prop::collection::vec(any::<u8>(), 0..64)), 1..20),
        d in damage(),
    ) {
        let mut doc = abx_doc(&pkgs);
        let clean = packages_xml::read_packages(&doc);
        prop_assert!(clean.is_ok(), "{:?}", clean);
        apply(&mut doc, &d);
        let (_, peak) = peak_of(|| packages_xml::read_packages(&doc));
        prop_assert!(peak <= abx_bound(doc.len()), "peak {}", peak);
    }

    #[test]
    fn package_restrictions_damaged(d in damage(), random in prop::collection::vec(any::<u8>(), 0..2048)) {
        // AOSP's serializer wrote this one (makeabx); damaged, and random bytes after the magic.
        let mut doc = include_bytes!("fixtures/android/generated/package-restrictions-0.xml.abx").to_vec();
        prop_assert!(packages_xml::read_package_restrictions(&doc).is_ok());
        apply(&mut doc, &d);
        let (_, peak) = peak_of(|| packages_xml::read_package_restrictions(&doc));
        prop_assert!(peak <= abx_bound(doc.len()), "peak {}", peak);
        let mut doc = b"ABX\0".to_vec();
        doc.extend(random);
        let (_, peak) = peak_of(|| packages_xml::read_package_restrictions(&doc));
        prop_assert!(peak <= abx_bound(doc.len()), "peak {}", peak);
    }

    #[test]
    fn text_xml_random(s in "(<[a-z]{1,3}( [a-z]{1,3}=\"[^\"<]{0,8}\")*/?>|</[a-z]{1,3}>|[^<]{0,8}|&[a-z#0-9]{0,5};){0,40}") {
        let (_, peak) = peak_of(|| packages_xml::read_packages(s.as_bytes()));
        prop_assert!(peak <= abx_bound(s.len()) + 64 * 1024, "peak {}", peak);
    }
}

#[test]
fn abx_interned_amplification_is_capped() {
    // One 60 KB interned string referenced by 256 attributes would decode to 15 MB from a
    // 61 KB document; the per-element budget refuses it first.
    let big = "x".repeat(60_000);
    let mut doc = b"ABX\0\x10\x32\xff\xff\x00\x01r".to_vec();
    doc.extend_from_slice(&[0x3f, 0xff, 0xff, 0x00, 0x01, b'a', 0xff, 0xff]);
    doc.extend_from_slice(&(big.len() as u16).to_be_bytes());
    doc.extend_from_slice(big.as_bytes());
    for _ in 0..255 {
        doc.extend_from_slice(&[0x3f, 0x00, 0x01, 0x00, 0x02]);
    }
    doc.extend_from_slice(&[0x33, 0x00, 0x00, 0x11]);
    let (r, peak) = peak_of(|| xml::events(&mut abx::AbxReader::new(&doc)).map(|e| e.len()));
    assert!(peak < 4 * 1024 * 1024, "peak {peak}");
    assert!(matches!(r, Err(xml::XmlError::Limit { .. })), "{r:?}");
}
