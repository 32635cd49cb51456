//! Escaping of untrusted text (file names, app ids, rule descriptions, error messages that
//! quote them) before it reaches a terminal or a log line.
//!
//! File names are chosen by the users the agent constrains. A name holding `\n` forges a line in
//! `embargoctl` output or in the daemon's log; `\x1b[` rewrites the terminal; U+202E (right-to-left
//! override) and zero-width characters make one name look like another. Every such character is
//! shown as a visible escape instead: C0 and C1 controls and DEL, the bidi controls (U+061C,
//! U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), zero-width and other invisible format
//! characters (U+200B–U+200D, U+2060–U+2064, U+FEFF, U+180E, U+00AD), and the backslash itself
//! (so an escape in the output always came from us). `\n`, `\r`, `\t` are shown as such; others
//! as `\u{…}`.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal or log unescaped.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\\' | '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// `s` with every character of `needs_escape` written as a visible escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// JSON text with the invisible and bidi characters inside its strings written as `\uXXXX`
/// (serde_json already escapes controls; it leaves U+202E and friends raw). The result is the
/// same JSON value.
pub fn escape_json(json: &str) -> Cow<'_, str> {
    if !json.chars().any(|c| needs_escape(c) && !matches!(c, '\\' | '\n' | '\r' | '\t')) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if needs_escape(c) && !matches!(c, '\\' | '\n' | '\r' | '\t') {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_escape_codes_bidi_and_zero_width_are_made_visible() {
        let name = "WeChat\n2026-11-30 INFO quarantined \x1b[2K\u{202E}gepj.exe\u{200B}\\";
        let e = escape(name);
        assert!(!e.chars().any(needs_escape_raw), "{e}");
        assert_eq!(e, "WeChat\\n2026-11-30 INFO quarantined \\u{1b}[2K\\u{202e}gepj.exe\\u{200b}\\\\");
        assert!(matches!(escape("plain-name_1.0.AppImage"), Cow::Borrowed(_)));
        assert_eq!(escape("Ünïcödé 微信"), "Ünïcödé 微信");
    }

    fn needs_escape_raw(c: char) -> bool {
        needs_escape(c) && c != '\\'
    }

    #[test]
    fn json_stays_the_same_value() {
        let v = serde_json::json!({"path": "a\u{202E}b\n\u{1b}", "k": "\u{200B}"});
        let text = serde_json::to_string_pretty(&v).unwrap();
        let e = escape_json(&text);
        assert!(!e.contains('\u{202E}') && !e.contains('\u{200B}') && !e.contains('\u{1b}'));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&e).unwrap(), v);
    }
}
