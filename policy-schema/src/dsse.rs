//! DSSE envelopes: PAE encoding, strict envelope decoding, Ed25519 signing and threshold verification.
//!
//! This module owns the byte-level trust decision. It never parses a payload: callers get the
//! verified payload bytes only after a threshold of distinct trusted keys has signed
//! `PAE(payloadType, payload)`, and they parse exactly those bytes.
//! Keyids in signatures are hints; a signature counts only once per distinct public key.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::keys::{PublicKey, SigningKey};

/// Most signatures an envelope may carry. More is an error, not a slow path.
pub const MAX_SIGNATURES: usize = 32;
/// Longest keyid hint accepted in a signature.
const MAX_KEYID_LEN: usize = 128;

/// Errors decoding an envelope. Verification failures are [`ThresholdError`].
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("envelope payload is not valid base64")]
    Base64,
    #[error("envelope carries {0} signatures (at most {MAX_SIGNATURES})")]
    TooManySignatures(usize),
    #[error("envelope carries no signatures")]
    NoSignatures,
    #[error("a signature keyid is longer than {MAX_KEYID_LEN} bytes")]
    KeyidTooLong,
    #[error("payloadType {found:?} where {expected:?} was expected")]
    WrongPayloadType { expected: String, found: String },
}

/// Why a threshold was not met. Each count is reported so an operator can tell a missing
/// signature from a forged, unknown or duplicated one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{valid} valid signature(s) from distinct trusted keys, {threshold} required \
     ({duplicate} duplicate, {unknown} from keys not trusted for this role, {invalid} invalid)"
)]
pub struct ThresholdError {
    /// Distinct trusted keys whose signature verified.
    pub valid: usize,
    pub threshold: usize,
    /// Valid signatures by a key that had already been counted.
    pub duplicate: usize,
    /// Signatures that no trusted key of the role verifies but that are well-formed: unknown keys.
    pub unknown: usize,
    /// Signatures that are not even well-formed (wrong length, bad base64).
    pub invalid: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope<'a> {
    #[serde(rename = "payloadType", borrow)]
    payload_type: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    payload: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    signatures: Vec<RawSignature<'a>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature<'a> {
    #[serde(default, borrow)]
    keyid: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    sig: std::borrow::Cow<'a, str>,
}

/// A decoded, not yet verified, envelope. The PAE bytes are built once and the payload is a
/// slice of them, so a large policy is held in memory once.
pub struct Envelope {
    payload_type: String,
    /// The PAE is `pae[pae_start..]`; the payload `pae[payload_start..]`.
    pae: Vec<u8>,
    pae_start: usize,
    payload_start: usize,
    signatures: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("payload_type", &self.payload_type)
            .field("payload_len", &self.payload().len())
            .field("signatures", &self.signatures.len())
            .finish()
    }
}

/// `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = pae_header(payload_type, payload.len());
    out.extend_from_slice(payload);
    out
}

fn pae_header(payload_type: &str, payload_len: usize) -> Vec<u8> {
    format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload_len).into_bytes()
}

/// Decodes standard or URL-safe base64, padded or not, as DSSE requires of verifiers.
fn decode_b64_into(text: &str, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let url_safe = memchr::memchr2(b'-', b'_', text.as_bytes()).is_some();
    let padded = text.ends_with('=');
    let engine = match (url_safe, padded) {
        (false, true) => &STANDARD,
        (false, false) => &STANDARD_NO_PAD,
        (true, true) => &URL_SAFE,
        (true, false) => &URL_SAFE_NO_PAD,
    };
    engine.decode_vec(text, out).map_err(|_| EnvelopeError::Base64)
}

/// The number of bytes `text` decodes to, or `None` when no valid base64 has its length.
fn decoded_len(text: &str) -> Option<usize> {
    let n = text.trim_end_matches('=').len();
    let tail = match n % 4 {
        0 => 0,
        2 => 1,
        3 => 2,
        _ => return None,
    };
    Some(n / 4 * 3 + tail)
}

/// PAE of a base64 payload text, in a new buffer.
fn build_pae(payload_type: &str, text: &str) -> Result<Vec<u8>, EnvelopeError> {
    let payload_len = decoded_len(text).ok_or(EnvelopeError::Base64)?;
    let header = pae_header(payload_type, payload_len);
    let mut buf = Vec::with_capacity(header.len() + payload_len);
    buf.extend_from_slice(&header);
    decode_b64_into(text, &mut buf)?;
    if buf.len() != header.len() + payload_len {
        return Err(EnvelopeError::Base64);
    }
    Ok(buf)
}

/// Decodes the base64 text at `range` of `bytes` in place, to the text's own start, and writes
/// `header` right before it, so that the PAE is `bytes[range.start - header.len()..]` with no
/// copy of the megabytes decoded (the caller checked that the header fits before the text).
///
/// All but the last chunk of text (whole groups, no padding) goes through the SIMD decoder in
/// place (output never overtakes input: every 4 text bytes become 3); the last chunk (padding,
/// canonical trailing bits) through the `base64` crate's strict engine, like every small
/// envelope, into a small buffer copied behind the rest.
fn decode_in_place(
    bytes: &mut Vec<u8>,
    header: &[u8],
    range: std::ops::Range<usize>,
    payload_len: usize,
) -> Result<(), EnvelopeError> {
    const TAIL: usize = 16 * 1024;
    let text = &bytes[range.clone()];
    let url_safe = memchr::memchr2(b'-', b'_', text).is_some();
    let padded = text.last() == Some(&b'=');
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let engine = match (url_safe, padded) {
        (false, true) => &STANDARD,
        (false, false) => &STANDARD_NO_PAD,
        (true, true) => &URL_SAFE,
        (true, false) => &URL_SAFE_NO_PAD,
    };
    let simd = if url_safe { &base64_simd::URL_SAFE_NO_PAD } else { &base64_simd::STANDARD_NO_PAD };
    // The middle: a multiple of 4 text bytes, leaving 1..=TAIL bytes (at least one whole group
    // when there is one) for the strict engine.
    let middle = range.len().saturating_sub(1) / TAIL * TAIL;
    let decoded = if middle > 0 {
        simd.decode_inplace(&mut bytes[range.start..range.start + middle]).map_err(|_| EnvelopeError::Base64)?.len()
    } else {
        0
    };
    let mut out = vec![0u8; TAIL / 4 * 3];
    let n =
        engine.decode_slice(&bytes[range.start + middle..range.end], &mut out).map_err(|_| EnvelopeError::Base64)?;
    let w = range.start + decoded;
    bytes[w..w + n].copy_from_slice(&out[..n]);
    let pae_start = range.start - header.len();
    bytes[pae_start..range.start].copy_from_slice(header);
    let w = w + n;
    if w - range.start != payload_len {
        return Err(EnvelopeError::Base64);
    }
    bytes.truncate(w);
    bytes.shrink_to_fit();
    Ok(())
}

impl Envelope {
    /// Decodes an envelope from borrowed bytes into a new PAE buffer. Nothing here is trusted yet.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let raw: RawEnvelope<'_> = serde_json::from_slice(bytes)?;
        let signatures = Self::signatures_of(&raw)?;
        let pae = build_pae(&raw.payload_type, &raw.payload)?;
        let payload_start = pae.len() - decoded_len(&raw.payload).ok_or(EnvelopeError::Base64)?;
        Ok(Self { payload_type: raw.payload_type.into_owned(), pae, pae_start: 0, payload_start, signatures })
    }

    /// The signatures of a raw envelope, checked for count and keyid length. A malformed
    /// signature is kept as empty bytes and counted as invalid later, so one bad signature among
    /// good ones does not hide the good ones.
    fn signatures_of(raw: &RawEnvelope<'_>) -> Result<Vec<(String, Vec<u8>)>, EnvelopeError> {
        if raw.signatures.len() > MAX_SIGNATURES {
            return Err(EnvelopeError::TooManySignatures(raw.signatures.len()));
        }
        if raw.signatures.is_empty() {
            return Err(EnvelopeError::NoSignatures);
        }
        let mut signatures = Vec::with_capacity(raw.signatures.len());
        for s in &raw.signatures {
            if s.keyid.len() > MAX_KEYID_LEN {
                return Err(EnvelopeError::KeyidTooLong);
            }
            let mut sig = Vec::new();
            if decode_b64_into(&s.sig, &mut sig).is_err() {
                sig.clear();
            }
            signatures.push((s.keyid.to_string(), sig));
        }
        Ok(signatures)
    }

    /// Decodes an envelope, reusing `bytes` for the PAE: the base64 payload is decoded in place
    /// behind the PAE header, so a large policy is held in memory once, not twice.
    pub fn decode_owned(mut bytes: Vec<u8>) -> Result<Self, EnvelopeError> {
        let (payload_type, signatures, text_range) = {
            let raw: RawEnvelope<'_> = serde_json::from_slice(&bytes)?;
            let signatures = Self::signatures_of(&raw)?;
            // Where the payload text sits inside `bytes`, when serde could borrow it (no
            // escapes), and its decoded length (taken here, from the `str` serde has already
            // checked, rather than checking the megabytes of text as UTF-8 a second time);
            // otherwise it was unescaped into a copy.
            let range = match &raw.payload {
                std::borrow::Cow::Borrowed(t) => {
                    let start = t.as_ptr() as usize - bytes.as_ptr() as usize;
                    Ok((start..start + t.len(), decoded_len(t)))
                }
                std::borrow::Cow::Owned(t) => Err(t.clone()),
            };
            (raw.payload_type.into_owned(), signatures, range)
        };
        let (pae, pae_start, payload_start) = match text_range {
            Ok((range, payload_len)) => {
                let payload_len = payload_len.ok_or(EnvelopeError::Base64)?;
                let header = pae_header(&payload_type, payload_len);
                if header.len() <= range.start {
                    let pae_start = range.start - header.len();
                    decode_in_place(&mut bytes, &header, range.clone(), payload_len)?;
                    (bytes, pae_start, range.start)
                } else {
                    let text = std::str::from_utf8(&bytes[range]).map_err(|_| EnvelopeError::Base64)?;
                    (build_pae(&payload_type, text)?, 0, header.len())
                }
            }
            Err(text) => {
                drop(bytes);
                let pae = build_pae(&payload_type, &text)?;
                let start = pae.len() - decoded_len(&text).ok_or(EnvelopeError::Base64)?;
                (pae, 0, start)
            }
        };
        Ok(Self { payload_type, pae, pae_start, payload_start, signatures })
    }

    pub fn payload_type(&self) -> &str {
        &self.payload_type
    }

    /// The payload bytes. Callers must not act on them before [`Envelope::verify`] succeeded.
    pub fn payload(&self) -> &[u8] {
        &self.pae[self.payload_start..]
    }

    /// Rejects an envelope whose authenticated type is not `expected`.
    pub fn expect_type(&self, expected: &str) -> Result<(), EnvelopeError> {
        if self.payload_type != expected {
            return Err(EnvelopeError::WrongPayloadType {
                expected: expected.to_owned(),
                found: self.payload_type.clone(),
            });
        }
        Ok(())
    }

    /// Counts distinct keys of `trusted` whose signature over the PAE verifies, and fails unless
    /// there are at least `threshold`. Keyids are hints only: a signature is first tried against
    /// the key its keyid names (so the common case costs one verification per signature), and any signature that fails that is tried against every
    /// other trusted key, so a wrong or forged keyid can neither make a key count twice nor hide
    /// a valid signature.
    pub fn verify(&self, trusted: &[&PublicKey], threshold: usize) -> Result<usize, ThresholdError> {
        self.verify_signers(trusted, threshold).map(|signers| signers.len())
    }

    /// Like [`Envelope::verify`], and returns the indices (into `trusted`) of the distinct keys
    /// whose signature verified: the client records them so that a later root can be checked
    /// against the signatures the trusted policy already carries.
    ///
    /// Signatures are checked one after the other on the calling thread: each costs one SHA-512
    /// pass over the PAE, and nothing else runs beside them (no parse of unverified bytes).
    pub fn verify_signers(&self, trusted: &[&PublicKey], threshold: usize) -> Result<Vec<usize>, ThresholdError> {
        // A threshold of zero would trust unsigned documents; formats reject it, and so do we.
        let threshold = threshold.max(1);
        let sigs: Vec<Option<ed25519_dalek::Signature>> =
            self.signatures.iter().map(|(_, s)| ed25519_dalek::Signature::from_slice(s).ok()).collect();
        let hinted: Vec<Option<usize>> =
            self.signatures.iter().map(|(keyid, _)| trusted.iter().position(|k| k.keyid() == keyid)).collect();
        let mut counted = vec![false; trusted.len()];
        let mut settled = vec![false; sigs.len()];
        let (mut valid, mut duplicate, mut unknown, mut invalid) = (0, 0, 0, 0);
        // Phase 1: each signature against its hinted key. All of them, even past the threshold:
        // the keys that signed are recorded (see above).
        for (i, sig) in sigs.iter().enumerate() {
            let (Some(sig), Some(k)) = (sig, hinted[i]) else { continue };
            if trusted[k].verify_strict(&self.pae[self.pae_start..], sig) {
                settled[i] = true;
                if counted[k] {
                    duplicate += 1;
                } else {
                    counted[k] = true;
                    valid += 1;
                }
            }
        }
        let signers = |counted: &[bool]| (0..counted.len()).filter(|&k| counted[k]).collect::<Vec<usize>>();
        if valid >= threshold {
            return Ok(signers(&counted));
        }
        // Phase 2 (failure path, also for precise diagnostics): every unsettled signature
        // against every key, uncounted keys first.
        for (i, sig) in sigs.iter().enumerate() {
            if settled[i] {
                continue;
            }
            let Some(sig) = sig else {
                invalid += 1;
                continue;
            };
            let mut order: Vec<usize> = (0..trusted.len()).filter(|&k| !counted[k]).collect();
            order.extend((0..trusted.len()).filter(|&k| counted[k]));
            match order.into_iter().find(|&k| trusted[k].verify_strict(&self.pae[self.pae_start..], sig)) {
                Some(k) if counted[k] => duplicate += 1,
                Some(k) => {
                    counted[k] = true;
                    valid += 1;
                }
                None => unknown += 1,
            }
        }
        if valid >= threshold {
            Ok(signers(&counted))
        } else {
            Err(ThresholdError { valid, threshold, duplicate, unknown, invalid })
        }
    }
}

/// Signs `payload` as `payload_type` with each key and returns the envelope's JSON bytes.
pub fn sign(payload_type: &str, payload: &[u8], keys: &[&SigningKey]) -> Vec<u8> {
    let message = pae(payload_type, payload);
    let signatures = keys
        .iter()
        .map(|k| RawSignature {
            keyid: k.public().keyid().into(),
            sig: base64::engine::general_purpose::STANDARD.encode(k.sign(&message)).into(),
        })
        .collect();
    let raw = RawEnvelope {
        payload_type: payload_type.into(),
        payload: base64::engine::general_purpose::STANDARD.encode(payload).into(),
        signatures,
    };
    let mut out = serde_json::to_vec_pretty(&raw).expect("an envelope always serializes");
    out.push(b'\n');
    out
}

/// Re-encodes an envelope with the given signatures, for tests and tools that assemble
/// signatures by hand (e.g. duplicating one). The payload is taken as is.
pub fn assemble(payload_type: &str, payload: &[u8], signatures: &[(String, Vec<u8>)]) -> Vec<u8> {
    let raw = RawEnvelope {
        payload_type: payload_type.into(),
        payload: base64::engine::general_purpose::STANDARD.encode(payload).into(),
        signatures: signatures
            .iter()
            .map(|(keyid, sig)| RawSignature {
                keyid: keyid.as_str().into(),
                sig: base64::engine::general_purpose::STANDARD.encode(sig).into(),
            })
            .collect(),
    };
    serde_json::to_vec(&raw).expect("an envelope always serializes")
}

impl Envelope {
    /// The raw signatures (keyid hint, signature bytes), for tools that re-assemble envelopes.
    pub fn signatures(&self) -> &[(String, Vec<u8>)] {
        &self.signatures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_test_vector_byte_for_byte() {
        let got = pae("http://example.com/HelloWorld", b"hello world");
        assert_eq!(got, b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec());
    }

    #[test]
    fn empty_payload_pae() {
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn decoded_envelope_rebuilds_exact_pae() {
        let key = SigningKey::generate();
        for payload in [&b""[..], b"x", b"hello world", &[0u8; 1000][..], &[7u8; 1001][..]] {
            let env = sign("application/x", payload, &[&key]);
            let dec = Envelope::decode(&env).unwrap();
            assert_eq!(dec.payload(), payload);
            assert_eq!(dec.pae, pae("application/x", payload));
            assert_eq!(dec.verify(&[key.public()], 1), Ok(1));
        }
    }

    #[test]
    fn url_safe_base64_is_accepted_when_valid() {
        let key = SigningKey::generate();
        let payload = [0xfbu8, 0xff, 0xfe, 0x3e];
        let env = sign("t", &payload, &[&key]);
        let text = String::from_utf8(env).unwrap();
        let std_b64 = base64::engine::general_purpose::STANDARD.encode(payload);
        let url_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload);
        assert_ne!(std_b64, url_b64);
        let text = text.replace(&std_b64, &url_b64);
        let dec = Envelope::decode(text.as_bytes()).unwrap();
        assert_eq!(dec.payload(), payload);
        assert_eq!(dec.verify(&[key.public()], 1), Ok(1));
    }

    /// Payloads larger than one decode chunk go through the SIMD decoder in the middle and the
    /// strict decoder at the end: every base64 flavour DSSE allows decodes to the same bytes,
    /// and a bad character, stray padding or mixed alphabet anywhere is an error.
    #[test]
    fn large_payloads_decode_in_place_in_every_flavour_and_reject_corruption() {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
        let key = SigningKey::generate();
        for len in [16 * 1024 * 3 / 4 - 1, 100_000, 100_001, 100_002] {
            let payload: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0]).collect();
            let signed = String::from_utf8(sign("application/x", &payload, &[&key])).unwrap();
            let std_text = STANDARD.encode(&payload);
            assert!(signed.contains(&std_text));
            for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                let text = signed.replace(&std_text, &engine.encode(&payload));
                let dec = Envelope::decode_owned(text.clone().into_bytes()).unwrap();
                assert_eq!(dec.payload(), payload, "len {len}");
                assert!(dec.pae[dec.pae_start..] == pae("application/x", &payload), "len {len}");
                assert_eq!(dec.verify(&[key.public()], 1), Ok(1));
                let start = text.find(&engine.encode(&payload)).unwrap();
                for (at, bad) in [(20_000, b'*'), (20_000, b'='), (5, b'.'), (17_000, b'\\')] {
                    let mut corrupt = text.clone().into_bytes();
                    corrupt[start + at.min(len / 2)] = bad;
                    let err = Envelope::decode_owned(corrupt);
                    assert!(err.is_err(), "{:?} at {at} decoded", bad as char);
                }
            }
            // Both alphabets in one text: '+' kept in one place, '-' in another.
            let url = URL_SAFE.encode(&payload);
            if let (Some(a), Some(b)) = (url.find('-'), std_text.rfind('+')) {
                if a != b {
                    let mut mixed = url.clone().into_bytes();
                    mixed[b] = b'+';
                    mixed[a] = b'-';
                    let text = signed.replace(&std_text, std::str::from_utf8(&mixed).unwrap());
                    assert!(matches!(Envelope::decode_owned(text.into_bytes()), Err(EnvelopeError::Base64)));
                }
            }
        }
    }

    #[test]
    fn unknown_envelope_fields_are_rejected() {
        let err = Envelope::decode(br#"{"payloadType":"t","payload":"","signatures":[{"keyid":"","sig":""}],"x":1}"#);
        assert!(matches!(err, Err(EnvelopeError::Json(_))));
    }

    #[test]
    fn duplicate_envelope_fields_are_rejected() {
        let err = Envelope::decode(
            br#"{"payloadType":"t","payloadType":"u","payload":"","signatures":[{"keyid":"","sig":""}]}"#,
        );
        assert!(matches!(err, Err(EnvelopeError::Json(_))), "{err:?}");
    }
}
