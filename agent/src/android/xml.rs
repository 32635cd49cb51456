//! One event stream for Android's two XML encodings: Android Binary XML (see `abx`) and text XML
//! (this module, over quick-xml). `packages_xml` reads either through [`Pull`], so the schema
//! code exists once; [`open`] sniffs the first four bytes for `ABX\0` exactly as AOSP's
//! `Xml.resolvePullParser` does.
//!
//! Bounds (both encodings): element depth `MAX_DEPTH`, attributes per element `MAX_ATTRS`, text
//! and attribute values `MAX_VALUE` bytes, `MAX_ELEMENT_BYTES` of attribute names and values per
//! element, events per document `MAX_EVENTS`. The input itself is a slice the caller has already
//! read with a size cap. Namespaces, DTD entities and external references are not supported
//! (Android's writers never produce them): an unknown entity is an error, a DOCTYPE is skipped,
//! never expanded.

use std::borrow::Cow;

/// Deepest element nesting accepted (packages.xml is 4 levels deep).
pub const MAX_DEPTH: usize = 64;
/// Attributes per element (a `<package>` has about 25).
pub const MAX_ATTRS: usize = 256;
/// Longest text or attribute value (ABX caps strings and byte arrays at 65,535 bytes; text XML
/// hex-encodes certificates, so twice that plus slack).
pub const MAX_VALUE: usize = 256 * 1024;
/// Bytes of attribute values per element (ABX attributes can reference one interned string
/// many times: this keeps one element's decoded size near what the input could spell out).
pub const MAX_ELEMENT_BYTES: usize = 1024 * 1024;
/// Events per document (a 2,000-package file has about 20,000).
pub const MAX_EVENTS: usize = 5_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    #[error("malformed {format} at byte {offset}: {what}")]
    Malformed { format: &'static str, offset: usize, what: String },
    #[error("{format} limit hit at byte {offset}: {what}")]
    Limit { format: &'static str, offset: usize, what: &'static str },
}

/// An attribute value, typed when the document is ABX (text XML values are all `Str`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Str(String),
    BytesHex(Vec<u8>),
    BytesBase64(Vec<u8>),
    Int(i32),
    IntHex(i32),
    Long(i64),
    LongHex(i64),
    Float(f32),
    Double(f64),
    Bool(bool),
}

impl Value {
    /// The value as `BinaryXmlPullParser.getAttributeValue` renders it (what `abx2xml` prints).
    pub fn text(&self) -> Cow<'_, str> {
        fn signed_hex(neg: bool, abs: u64) -> String {
            if neg {
                format!("-{abs:x}")
            } else {
                format!("{abs:x}")
            }
        }
        match self {
            Value::Null => Cow::Borrowed(""),
            Value::Str(s) => Cow::Borrowed(s),
            Value::BytesHex(b) => Cow::Owned(hex::encode(b)),
            Value::BytesBase64(b) => {
                use base64::Engine as _;
                Cow::Owned(base64::engine::general_purpose::STANDARD.encode(b))
            }
            Value::Int(v) => Cow::Owned(v.to_string()),
            Value::IntHex(v) => Cow::Owned(signed_hex(*v < 0, u64::from(v.unsigned_abs()))),
            Value::Long(v) => Cow::Owned(v.to_string()),
            Value::LongHex(v) => Cow::Owned(signed_hex(*v < 0, v.unsigned_abs())),
            Value::Float(v) => Cow::Owned(v.to_string()),
            Value::Double(v) => Cow::Owned(v.to_string()),
            Value::Bool(v) => Cow::Borrowed(if *v { "true" } else { "false" }),
        }
    }

    /// An integer written as decimal in text XML (`XmlUtils.readIntAttribute`).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) | Value::IntHex(v) => Some(i64::from(*v)),
            Value::Long(v) | Value::LongHex(v) => Some(*v),
            Value::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// An integer written as hex in text XML (`attributeLongHex`: `ft`, `ut`).
    pub fn as_i64_hex(&self) -> Option<i64> {
        match self {
            Value::Str(s) => {
                let s = s.trim();
                match s.strip_prefix('-') {
                    Some(h) => i64::from_str_radix(h, 16).ok().map(|v| -v),
                    None => u64::from_str_radix(s, 16).ok().map(|v| v as i64),
                }
            }
            other => other.as_i64(),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Str(s) => match s.trim() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// Bytes written as hex in text XML (`attributeBytesHex`, e.g. a signer certificate).
    pub fn as_bytes_hex(&self) -> Option<Cow<'_, [u8]>> {
        match self {
            Value::BytesHex(b) | Value::BytesBase64(b) => Some(Cow::Borrowed(b)),
            Value::Str(s) => hex::decode(s.trim()).ok().map(Cow::Owned),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub name: String,
    pub value: Value,
}

/// A pull-parser event. Whitespace-only text is not reported; adjacent text pieces (text,
/// CDATA, entity references) are reported as one `Text`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start { name: String, attrs: Vec<Attr> },
    End { name: String },
    Text(String),
}

/// Text collected between markup (both readers: text XML and ABX), and the event held back
/// behind it: text is reported before the element event that ends it, and whitespace-only text
/// not at all.
#[derive(Default)]
pub(super) struct TextRun {
    text: String,
    pending: Option<Event>,
}

impl TextRun {
    /// Appends `s`; false (nothing appended) when the text would pass `MAX_VALUE`.
    pub(super) fn push(&mut self, s: &str) -> bool {
        if self.text.len() + s.len() > MAX_VALUE {
            return false;
        }
        self.text.push_str(s);
        true
    }

    /// Emits collected text (if any is not whitespace) before `next`.
    pub(super) fn flush_then(&mut self, next: Event) -> Event {
        let text = std::mem::take(&mut self.text);
        if text.trim().is_empty() {
            next
        } else {
            self.pending = Some(next);
            Event::Text(text)
        }
    }

    /// The event held back behind text emitted last time.
    pub(super) fn take_pending(&mut self) -> Option<Event> {
        self.pending.take()
    }

    /// What is left at the end of the document (whitespace-only text is not an event).
    pub(super) fn finish(&mut self) -> Option<Event> {
        let text = std::mem::take(&mut self.text);
        (!text.trim().is_empty()).then_some(Event::Text(text))
    }
}

/// A source of [`Event`]s; `Ok(None)` is the end of a well-formed document.
pub trait Pull {
    fn next_event(&mut self) -> Result<Option<Event>, XmlError>;
}

pub const ABX_MAGIC: &[u8; 4] = b"ABX\0";

/// A reader for `bytes`: ABX if they start with `ABX\0`, else text XML.
pub fn open(bytes: &[u8]) -> Box<dyn Pull + '_> {
    if bytes.starts_with(ABX_MAGIC) {
        Box::new(super::abx::AbxReader::new(bytes))
    } else {
        Box::new(TextReader::new(bytes))
    }
}

/// Reads a whole document into a list of events (for tests and comparisons; the schema
/// readers stream).
pub fn events(reader: &mut dyn Pull) -> Result<Vec<Event>, XmlError> {
    let mut out = Vec::new();
    while let Some(e) = reader.next_event()? {
        out.push(e);
    }
    Ok(out)
}

/// Text XML, through quick-xml, with the module's limits.
pub struct TextReader<'a> {
    reader: quick_xml::Reader<&'a [u8]>,
    depth: usize,
    events: usize,
    text: TextRun,
    pending_end: Option<String>,
    done: bool,
}

impl<'a> TextReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        let mut reader = quick_xml::Reader::from_reader(bytes);
        reader.config_mut().check_end_names = true;
        Self { reader, depth: 0, events: 0, text: TextRun::default(), pending_end: None, done: false }
    }

    fn offset(&self) -> usize {
        self.reader.buffer_position() as usize
    }

    fn malformed(&self, what: impl std::fmt::Display) -> XmlError {
        XmlError::Malformed { format: "text XML", offset: self.offset(), what: what.to_string() }
    }

    fn limit(&self, what: &'static str) -> XmlError {
        XmlError::Limit { format: "text XML", offset: self.offset(), what }
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

    fn start(&self, e: &quick_xml::events::BytesStart<'_>) -> Result<Event, XmlError> {
        let qname = e.name();
        let name = std::str::from_utf8(qname.as_ref()).map_err(|_| self.malformed("element name is not UTF-8"))?;
        let mut attrs = Vec::new();
        let mut total = 0usize;
        for a in e.attributes() {
            let a = a.map_err(|err| self.malformed(err))?;
            if attrs.len() == MAX_ATTRS {
                return Err(self.limit("more than 256 attributes on one element"));
            }
            if a.value.len() > MAX_VALUE {
                return Err(self.limit("attribute value longer than 256 KiB"));
            }
            total += a.key.as_ref().len() + a.value.len();
            if total > MAX_ELEMENT_BYTES {
                return Err(self.limit("attribute values of one element over 1 MiB"));
            }
            let key = std::str::from_utf8(a.key.as_ref()).map_err(|_| self.malformed("attribute name is not UTF-8"))?;
            let value = a.normalized_value(quick_xml::XmlVersion::Implicit1_0).map_err(|err| self.malformed(err))?;
            attrs.push(Attr { name: key.to_owned(), value: Value::Str(value.into_owned()) });
        }
        Ok(Event::Start { name: name.to_owned(), attrs })
    }
}

impl Pull for TextReader<'_> {
    fn next_event(&mut self) -> Result<Option<Event>, XmlError> {
        use quick_xml::events::Event as Q;
        if let Some(e) = self.text.take_pending() {
            return Ok(Some(e));
        }
        if let Some(name) = self.pending_end.take() {
            self.depth -= 1;
            return Ok(Some(self.flush_then(Event::End { name })));
        }
        if self.done {
            return Ok(None);
        }
        loop {
            self.events += 1;
            if self.events > MAX_EVENTS {
                return Err(self.limit("more than 5,000,000 events"));
            }
            let ev = self.reader.read_event().map_err(|e| self.malformed(e))?;
            match ev {
                Q::Start(e) | Q::Empty(e) if self.depth == MAX_DEPTH => {
                    let _ = e;
                    return Err(self.limit("elements nested deeper than 64"));
                }
                Q::Start(e) => {
                    let start = self.start(&e)?;
                    self.depth += 1;
                    return Ok(Some(self.flush_then(start)));
                }
                Q::Empty(e) => {
                    let start = self.start(&e)?;
                    if let Event::Start { name, .. } = &start {
                        self.pending_end = Some(name.clone());
                    }
                    self.depth += 1;
                    return Ok(Some(self.flush_then(start)));
                }
                Q::End(e) => {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    self.depth = self.depth.checked_sub(1).ok_or_else(|| self.malformed("unmatched end tag"))?;
                    return Ok(Some(self.flush_then(Event::End { name })));
                }
                Q::Text(t) => {
                    let s = t.xml10_content().map_err(|e| self.malformed(e))?;
                    self.push_text(&s)?;
                }
                Q::CData(t) => {
                    let s = std::str::from_utf8(&t).map_err(|_| self.malformed("CDATA is not UTF-8"))?.to_owned();
                    self.push_text(&s)?;
                }
                Q::GeneralRef(r) => {
                    let c = match r.resolve_char_ref().map_err(|e| self.malformed(e))? {
                        Some(c) => c.to_string(),
                        None => {
                            let name = r.decode().map_err(|e| self.malformed(e))?;
                            quick_xml::escape::resolve_predefined_entity(&name)
                                .ok_or_else(|| self.malformed(format!("unknown entity &{name};")))?
                                .to_owned()
                        }
                    };
                    self.push_text(&c)?;
                }
                Q::Eof => {
                    if self.depth != 0 {
                        return Err(self.malformed("document ends inside an element"));
                    }
                    self.done = true;
                    return Ok(self.text.finish());
                }
                Q::Decl(_) | Q::PI(_) | Q::Comment(_) | Q::DocType(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_reader_events() {
        let doc = br#"<?xml version='1.0'?><a x="1 &amp; 2"><b/>hi &lt;there&gt;<![CDATA[!]]></a>"#;
        let ev = events(&mut TextReader::new(doc)).unwrap();
        assert_eq!(
            ev,
            vec![
                Event::Start {
                    name: "a".into(),
                    attrs: vec![Attr { name: "x".into(), value: Value::Str("1 & 2".into()) }]
                },
                Event::Start { name: "b".into(), attrs: vec![] },
                Event::End { name: "b".into() },
                Event::Text("hi <there>!".into()),
                Event::End { name: "a".into() },
            ]
        );
    }

    #[test]
    fn text_reader_limits_and_errors() {
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert!(matches!(events(&mut TextReader::new(deep.as_bytes())), Err(XmlError::Limit { .. })));
        let many: String = format!("<a {}/>", (0..300).map(|i| format!("a{i}=\"\"")).collect::<Vec<_>>().join(" "));
        assert!(matches!(events(&mut TextReader::new(many.as_bytes())), Err(XmlError::Limit { .. })));
        assert!(events(&mut TextReader::new(b"<a>&foo;</a>")).is_err());
        assert!(events(&mut TextReader::new(b"<a><b></a>")).is_err());
        assert!(events(&mut TextReader::new(b"<a>")).is_err());
    }

    #[test]
    fn typed_values_render_as_aosp_does() {
        assert_eq!(Value::IntHex(-255).text(), "-ff");
        assert_eq!(Value::LongHex(0x18c0b1d2e30).text(), "18c0b1d2e30");
        assert_eq!(Value::BytesHex(vec![0x30, 0x82]).text(), "3082");
        assert_eq!(Value::Str("18c0b1d2e30".into()).as_i64_hex(), Some(0x18c0b1d2e30));
        assert_eq!(Value::Str("3082".into()).as_bytes_hex().as_deref(), Some(&[0x30, 0x82][..]));
    }
}
