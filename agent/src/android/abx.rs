//! Android Binary XML (ABX, magic `ABX\0`): the encoding of `/data/system/packages.xml` and
//! other system XML since Android 12.
//!
//! Format (AOSP `BinaryXmlSerializer` / `BinaryXmlPullParser` / `FastDataInput`): after the
//! magic, a stream of tokens; a token byte is `(type << 4) | event`. START_TAG/END_TAG carry an
//! interned name; each attribute follows its START_TAG as an ATTRIBUTE token (event 15) whose
//! type says how its value is written: UTF string, interned string, u16-length byte arrays
//! (rendered hex or base64), big-endian i32/i64 (decimal or hex), float/double bits, booleans
//! without payload. A UTF string is a u16 byte length then *modified* UTF-8 (Java's `DataOutput`
//! flavour: NUL as `C0 80`, supplementary characters as surrogate pairs or 4-byte sequences). An
//! interned string is a u16 index into a per-document table, `0xFFFF` meaning "a new string
//! follows, append it".
//!
//! Bounds: see `xml` (depth, attributes, value size, events); plus the interned table is capped
//! at 65,535 entries as AOSP caps it, references past the table are errors, unknown type or
//! event nibbles are errors (AOSP throws too), and a document that ends inside an element is an
//! error rather than a silent END_DOCUMENT, so a packages.xml caught mid-write is refused and the
//! last good reading kept. Every byte of state comes from the input, so memory is bounded by the
//! (size-capped) input.

use super::xml::{
    Attr, Event, Pull, TextRun, Value, XmlError, ABX_MAGIC, MAX_ATTRS, MAX_DEPTH, MAX_ELEMENT_BYTES, MAX_EVENTS,
};

const START_DOCUMENT: u8 = 0;
const END_DOCUMENT: u8 = 1;
const START_TAG: u8 = 2;
const END_TAG: u8 = 3;
const TEXT: u8 = 4;
const CDSECT: u8 = 5;
const ENTITY_REF: u8 = 6;
const IGNORABLE_WHITESPACE: u8 = 7;
const PROCESSING_INSTRUCTION: u8 = 8;
const COMMENT: u8 = 9;
const DOCDECL: u8 = 10;
const ATTRIBUTE: u8 = 15;

const TYPE_NULL: u8 = 1 << 4;
const TYPE_STRING: u8 = 2 << 4;
const TYPE_STRING_INTERNED: u8 = 3 << 4;
const TYPE_BYTES_HEX: u8 = 4 << 4;
const TYPE_BYTES_BASE64: u8 = 5 << 4;
const TYPE_INT: u8 = 6 << 4;
const TYPE_INT_HEX: u8 = 7 << 4;
const TYPE_LONG: u8 = 8 << 4;
const TYPE_LONG_HEX: u8 = 9 << 4;
const TYPE_FLOAT: u8 = 10 << 4;
const TYPE_DOUBLE: u8 = 11 << 4;
const TYPE_BOOLEAN_TRUE: u8 = 12 << 4;
const TYPE_BOOLEAN_FALSE: u8 = 13 << 4;

/// Interned strings per document (AOSP stops interning at this count).
pub const MAX_INTERNED: usize = 65_535;

pub struct AbxReader<'a> {
    b: &'a [u8],
    pos: usize,
    interned: Vec<String>,
    depth: usize,
    events: usize,
    text: TextRun,
    done: bool,
}

impl<'a> AbxReader<'a> {
    /// A reader over a whole document (magic included; a wrong magic is reported by the first
    /// `next_event`).
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { b: bytes, pos: 0, interned: Vec::new(), depth: 0, events: 0, text: TextRun::default(), done: false }
    }

    fn malformed(&self, what: impl Into<String>) -> XmlError {
        XmlError::Malformed { format: "ABX", offset: self.pos, what: what.into() }
    }

    fn limit(&self, what: &'static str) -> XmlError {
        XmlError::Limit { format: "ABX", offset: self.pos, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], XmlError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| self.malformed("truncated"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, XmlError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, XmlError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    fn i32(&mut self) -> Result<i32, XmlError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn i64(&mut self) -> Result<i64, XmlError> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn utf(&mut self) -> Result<String, XmlError> {
        let n = usize::from(self.u16()?);
        let at = self.pos;
        let bytes = self.take(n)?;
        decode_modified_utf8(bytes).ok_or_else(|| XmlError::Malformed {
            format: "ABX",
            offset: at,
            what: "string is not modified UTF-8".into(),
        })
    }

    fn interned(&mut self) -> Result<String, XmlError> {
        let r = self.u16()?;
        if r == 0xffff {
            let s = self.utf()?;
            if self.interned.len() < MAX_INTERNED {
                self.interned.push(s.clone());
            }
            Ok(s)
        } else {
            self.interned
                .get(usize::from(r))
                .cloned()
                .ok_or_else(|| self.malformed(format!("interned string reference {r} past the table")))
        }
    }

    fn bytes(&mut self) -> Result<Vec<u8>, XmlError> {
        let n = usize::from(self.u16()?);
        Ok(self.take(n)?.to_vec())
    }

    fn value(&mut self, ty: u8) -> Result<Value, XmlError> {
        Ok(match ty {
            TYPE_NULL => Value::Null,
            TYPE_STRING => Value::Str(self.utf()?),
            TYPE_STRING_INTERNED => Value::Str(self.interned()?),
            TYPE_BYTES_HEX => Value::BytesHex(self.bytes()?),
            TYPE_BYTES_BASE64 => Value::BytesBase64(self.bytes()?),
            TYPE_INT => Value::Int(self.i32()?),
            TYPE_INT_HEX => Value::IntHex(self.i32()?),
            TYPE_LONG => Value::Long(self.i64()?),
            TYPE_LONG_HEX => Value::LongHex(self.i64()?),
            TYPE_FLOAT => Value::Float(f32::from_bits(self.i32()? as u32)),
            TYPE_DOUBLE => Value::Double(f64::from_bits(self.i64()? as u64)),
            TYPE_BOOLEAN_TRUE => Value::Bool(true),
            TYPE_BOOLEAN_FALSE => Value::Bool(false),
            t => return Err(self.malformed(format!("unknown value type {:#x}", t >> 4))),
        })
    }

    /// A text-like token's payload: a UTF string, or nothing for TYPE_NULL.
    fn text_payload(&mut self, ty: u8) -> Result<Option<String>, XmlError> {
        match ty {
            TYPE_STRING => Ok(Some(self.utf()?)),
            TYPE_NULL => Ok(None),
            t => Err(self.malformed(format!("text token with value type {:#x}", t >> 4))),
        }
    }

    fn push_text(&mut self, s: &str) -> Result<(), XmlError> {
        if self.text.push(s) {
            Ok(())
        } else {
            Err(self.limit("text longer than 256 KiB"))
        }
    }

    fn flush_then(&mut self, next: Event) -> Event {
        self.text.flush_then(next)
    }

    fn start_tag(&mut self) -> Result<Event, XmlError> {
        if self.depth == MAX_DEPTH {
            return Err(self.limit("elements nested deeper than 64"));
        }
        let name = self.interned()?;
        let mut attrs = Vec::new();
        let mut total = 0usize;
        while self.b.get(self.pos).is_some_and(|t| t & 0x0f == ATTRIBUTE) {
            if attrs.len() == MAX_ATTRS {
                return Err(self.limit("more than 256 attributes on one element"));
            }
            let t = self.u8()?;
            let name = self.interned()?;
            let value = self.value(t & 0xf0)?;
            total += name.len()
                + match &value {
                    Value::Str(s) => s.len(),
                    Value::BytesHex(b) | Value::BytesBase64(b) => b.len(),
                    _ => 8,
                };
            if total > MAX_ELEMENT_BYTES {
                return Err(self.limit("attribute values of one element over 1 MiB"));
            }
            attrs.push(Attr { name, value });
        }
        self.depth += 1;
        Ok(Event::Start { name, attrs })
    }
}

impl Pull for AbxReader<'_> {
    fn next_event(&mut self) -> Result<Option<Event>, XmlError> {
        if let Some(e) = self.text.take_pending() {
            return Ok(Some(e));
        }
        if self.done {
            return Ok(None);
        }
        if self.pos == 0 {
            if !self.b.starts_with(ABX_MAGIC) {
                return Err(self.malformed("no ABX\\0 magic (or an unsupported ABX version)"));
            }
            self.pos = 4;
        }
        loop {
            self.events += 1;
            if self.events > MAX_EVENTS {
                return Err(self.limit("more than 5,000,000 events"));
            }
            if self.pos == self.b.len() {
                // AOSP reads EOF as END_DOCUMENT; inside an element it is a truncated file.
                return self.end_document();
            }
            let token = self.u8()?;
            let (event, ty) = (token & 0x0f, token & 0xf0);
            match event {
                START_DOCUMENT => {}
                END_DOCUMENT => return self.end_document(),
                START_TAG => {
                    let start = self.start_tag()?;
                    return Ok(Some(self.flush_then(start)));
                }
                END_TAG => {
                    let name = self.interned()?;
                    self.depth = self.depth.checked_sub(1).ok_or_else(|| self.malformed("unmatched end tag"))?;
                    return Ok(Some(self.flush_then(Event::End { name })));
                }
                TEXT | CDSECT => {
                    if let Some(s) = self.text_payload(ty)? {
                        self.push_text(&s)?;
                    }
                }
                ENTITY_REF => {
                    if let Some(name) = self.text_payload(ty)? {
                        let c =
                            resolve_entity(&name).ok_or_else(|| self.malformed(format!("unknown entity &{name};")))?;
                        self.push_text(&c.to_string())?;
                    }
                }
                IGNORABLE_WHITESPACE | PROCESSING_INSTRUCTION | COMMENT | DOCDECL => {
                    self.text_payload(ty)?;
                }
                ATTRIBUTE => return Err(self.malformed("attribute outside a start tag")),
                e => return Err(self.malformed(format!("unknown event {e}"))),
            }
        }
    }
}

impl AbxReader<'_> {
    fn end_document(&mut self) -> Result<Option<Event>, XmlError> {
        if self.depth != 0 {
            return Err(self.malformed("document ends inside an element"));
        }
        self.done = true;
        Ok(self.text.finish())
    }
}

/// The entities `BinaryXmlSerializer.entityRef` can write.
fn resolve_entity(name: &str) -> Option<char> {
    Some(match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => {
            let num = name.strip_prefix('#')?;
            let v = match num.strip_prefix(['x', 'X']) {
                Some(h) => u32::from_str_radix(h, 16).ok()?,
                None => num.parse().ok()?,
            };
            char::from_u32(v)?
        }
    })
}

/// Java's modified UTF-8, as `FastDataInput.readUTF` accepts it: standard UTF-8 (including
/// 4-byte sequences, which Android's `FastDataOutput` writes), `C0 80` for NUL, and surrogate
/// pairs written as two 3-byte sequences. Lone surrogates become U+FFFD.
pub fn decode_modified_utf8(b: &[u8]) -> Option<String> {
    if let Ok(s) = std::str::from_utf8(b) {
        return Some(s.to_owned());
    }
    let mut units: Vec<u16> = Vec::with_capacity(b.len());
    let mut out = String::with_capacity(b.len());
    let flush = |units: &mut Vec<u16>, out: &mut String| {
        out.extend(char::decode_utf16(units.drain(..)).map(|c| c.unwrap_or('\u{fffd}')));
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let cont = |k: usize| b.get(i + k).copied().filter(|x| x & 0xc0 == 0x80).map(|x| u32::from(x & 0x3f));
        let (cp, n) = if c < 0x80 {
            (u32::from(c), 1)
        } else if c & 0xe0 == 0xc0 {
            ((u32::from(c & 0x1f) << 6) | cont(1)?, 2)
        } else if c & 0xf0 == 0xe0 {
            ((u32::from(c & 0x0f) << 12) | (cont(1)? << 6) | cont(2)?, 3)
        } else if c & 0xf8 == 0xf0 {
            ((u32::from(c & 0x07) << 18) | (cont(1)? << 12) | (cont(2)? << 6) | cont(3)?, 4)
        } else {
            return None;
        };
        if cp >= 0x10000 {
            flush(&mut units, &mut out);
            out.push(char::from_u32(cp)?);
        } else {
            units.push(cp as u16);
        }
        i += n;
    }
    flush(&mut units, &mut out);
    Some(out)
}

/// A minimal ABX writer (the subset packages.xml uses), for tests, property tests and benches.
/// The oracle encoder is AOSP's own (`makeabx.jar`); this one exists so tests can build
/// hostile and very large documents quickly.
#[derive(Debug, Default)]
pub struct AbxWriter {
    pub out: Vec<u8>,
    interned: Vec<String>,
}

impl AbxWriter {
    pub fn new() -> Self {
        let mut w = Self { out: ABX_MAGIC.to_vec(), interned: Vec::new() };
        w.out.push(0x10 | START_DOCUMENT);
        w
    }

    fn utf(&mut self, s: &str) {
        self.out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn intern(&mut self, s: &str) {
        match self.interned.iter().position(|x| x == s) {
            Some(i) => self.out.extend_from_slice(&(i as u16).to_be_bytes()),
            None => {
                self.out.extend_from_slice(&0xffffu16.to_be_bytes());
                self.utf(s);
                self.interned.push(s.to_owned());
            }
        }
    }

    pub fn start(&mut self, name: &str) -> &mut Self {
        self.out.push(TYPE_STRING_INTERNED | START_TAG);
        self.intern(name);
        self
    }

    pub fn end(&mut self, name: &str) -> &mut Self {
        self.out.push(TYPE_STRING_INTERNED | END_TAG);
        self.intern(name);
        self
    }

    pub fn attr(&mut self, name: &str, value: &Value) -> &mut Self {
        let ty = match value {
            Value::Null => TYPE_NULL,
            Value::Str(_) => TYPE_STRING,
            Value::BytesHex(_) => TYPE_BYTES_HEX,
            Value::BytesBase64(_) => TYPE_BYTES_BASE64,
            Value::Int(_) => TYPE_INT,
            Value::IntHex(_) => TYPE_INT_HEX,
            Value::Long(_) => TYPE_LONG,
            Value::LongHex(_) => TYPE_LONG_HEX,
            Value::Float(_) => TYPE_FLOAT,
            Value::Double(_) => TYPE_DOUBLE,
            Value::Bool(true) => TYPE_BOOLEAN_TRUE,
            Value::Bool(false) => TYPE_BOOLEAN_FALSE,
        };
        self.out.push(ty | ATTRIBUTE);
        self.intern(name);
        match value {
            Value::Null | Value::Bool(_) => {}
            Value::Str(s) => self.utf(s),
            Value::BytesHex(b) | Value::BytesBase64(b) => {
                self.out.extend_from_slice(&(b.len() as u16).to_be_bytes());
                self.out.extend_from_slice(b);
            }
            Value::Int(v) | Value::IntHex(v) => self.out.extend_from_slice(&v.to_be_bytes()),
            Value::Long(v) | Value::LongHex(v) => self.out.extend_from_slice(&v.to_be_bytes()),
            Value::Float(v) => self.out.extend_from_slice(&v.to_bits().to_be_bytes()),
            Value::Double(v) => self.out.extend_from_slice(&v.to_bits().to_be_bytes()),
        }
        self
    }

    pub fn text(&mut self, s: &str) -> &mut Self {
        self.out.push(TYPE_STRING | TEXT);
        self.utf(s);
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(0x10 | END_DOCUMENT);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::super::xml::events;
    use super::*;

    #[test]
    fn the_worked_example_from_a_real_settings_file() {
        // settings_ssaid.xml bytes as published (blog.sdex.dev/ABX), up to the first setting.
        let mut doc = b"ABX\0\x10\x32\xff\xff\x00\x08settings\x6f\xff\xff\x00\x07version\xff\xff\xff\xff".to_vec();
        doc.extend_from_slice(b"\x32\xff\xff\x00\x07setting\x2f\xff\xff\x00\x02id\x00\x010");
        doc.extend_from_slice(b"\x33\x00\x02\x33\x00\x00\x11");
        let ev = events(&mut AbxReader::new(&doc)).unwrap();
        assert_eq!(
            ev[0],
            Event::Start {
                name: "settings".into(),
                attrs: vec![Attr { name: "version".into(), value: Value::Int(-1) }]
            }
        );
        assert_eq!(
            ev[1],
            Event::Start {
                name: "setting".into(),
                attrs: vec![Attr { name: "id".into(), value: Value::Str("0".into()) }]
            }
        );
        assert_eq!(ev.len(), 4);
    }

    #[test]
    fn modified_utf8() {
        assert_eq!(decode_modified_utf8(b"a\xc0\x80b").as_deref(), Some("a\0b"));
        // U+1F600 as a CESU-8 surrogate pair and as a 4-byte sequence.
        assert_eq!(decode_modified_utf8(b"\xed\xa0\xbd\xed\xb8\x80").as_deref(), Some("\u{1f600}"));
        assert_eq!(decode_modified_utf8("\u{1f600}".as_bytes()).as_deref(), Some("\u{1f600}"));
        assert_eq!(decode_modified_utf8(b"\xff"), None);
    }

    #[test]
    fn writer_round_trips_and_damage_is_an_error() {
        let mut w = AbxWriter::new();
        w.start("packages").attr("n", &Value::Long(5)).start("p").attr("k", &Value::BytesHex(vec![1, 2])).text("t");
        w.end("p").end("packages");
        let doc = w.finish();
        let ev = events(&mut AbxReader::new(&doc)).unwrap();
        assert_eq!(ev.len(), 5);
        // Cut anywhere inside the root element (after the magic and START_DOCUMENT).
        for n in 6..doc.len() - 1 {
            assert!(events(&mut AbxReader::new(&doc[..n])).is_err(), "prefix of {n} bytes");
        }
        let mut bad_ref = doc.clone();
        let at = bad_ref.len() - 3; // END_TAG's interned ref
        bad_ref[at] = 0x7f;
        assert!(events(&mut AbxReader::new(&bad_ref)).is_err());
    }
}
