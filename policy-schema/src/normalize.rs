//! The one normal form of names and publishers for matching, applied to both sides (the rule's
//! pattern when it is compiled, the app's value when it is matched), so that spellings a user can
//! choose but a person reads as the same name match the same rules.
//!
//! `fold(s)`: default-ignorable code points removed (zero-width space and joiners, bidi
//! controls, soft hyphen, variation selectors, tags, …), then NFKC (full-width `ＷｅＣｈａｔ`,
//! ligatures, compatibility forms, NFD sequences → their composed form), then case folded
//! (`to_lowercase` plus the full folds it lacks: `ß`→`ss`, final `ς`→`σ`), then NFKC again
//! (lowercasing can leave a non-normalised sequence). This is Unicode's NFKC_Casefold in effect
//! for names.
//!
//! Not done, by decision: a UTS #39 confusables skeleton (Cyrillic `а` for Latin `a`, `rn` for
//! `m`). It needs a large table, maps distinct real names onto each other (false bans), and the
//! names it would catch are only display names: rules on ids, signers and hashes do not depend
//! on them. Revisit with a mixed-script check if look-alike evasion is seen.
//!
//! ASCII input takes a fast path (lowercase only): nothing in ASCII is ignorable or changed by NFKC.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization as _;

/// Whether `c` is a Default_Ignorable_Code_Point (Unicode 15 DerivedCoreProperties.txt).
pub fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// The matching form of a name or publisher (see the module header).
pub fn fold(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        return if s.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(s.to_ascii_lowercase())
        } else {
            Cow::Borrowed(s)
        };
    }
    let nfkc: String = s.chars().filter(|&c| !is_default_ignorable(c)).nfkc().collect();
    let mut lower = String::with_capacity(nfkc.len());
    for c in nfkc.chars() {
        match c {
            'ß' | 'ẞ' => lower.push_str("ss"),
            'ς' => lower.push('σ'),
            c => lower.extend(c.to_lowercase()),
        }
    }
    Cow::Owned(lower.nfkc().filter(|&c| !is_default_ignorable(c)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_name_fold_to_one_form() {
        for s in [
            "WeChat",
            "ＷｅＣｈａｔ",                   // full-width
            "We\u{200B}Chat",                 // zero-width space
            "W\u{200D}e\u{2060}C\u{FEFF}hat", // joiners, word joiner, BOM
            "We\u{AD}Chat",                   // soft hyphen
            "WE\u{202E}CHAT",                 // bidi override
            "We\u{FE0F}Chat",                 // variation selector
        ] {
            assert_eq!(fold(s), "wechat", "{s:?}");
        }
        // NFD and NFC spellings meet.
        assert_eq!(fold("Cafe\u{301}"), fold("Café"));
        assert_eq!(fold("Straße"), "strasse");
        assert_eq!(fold("ﬁrefox"), "firefox", "ligature");
        assert_eq!(fold("微信"), "微信");
        assert!(matches!(fold("wechat"), Cow::Borrowed(_)));
    }

    /// Finding 5: NFD, full-width, zero-width and bidi spellings of a banned name match the
    /// name rule, exact and glob; and a rule written in such a spelling matches the plain name.
    #[test]
    fn name_rules_match_every_spelling_of_the_name() {
        use crate::app::App;
        use crate::matcher::RuleSet;
        use crate::rules::Kind;
        let toml = "[[rule]]\nid = \"glob\"\naction = \"quarantine\"\n[[rule.match]]\nkind = \"appimage\"\nname = \"*wechat*\"\n\n[[rule]]\nid = \"exact\"\naction = \"quarantine\"\n[[rule.match]]\nkind = \"desktop\"\nname = \"Ｃａｆé\"\n";
        let set = RuleSet::compile(crate::source::parse("t.toml", toml).unwrap().rules, &[]);
        for name in ["My ＷｅＣｈａｔ", "We\u{200B}Chat", "WE\u{202E}CHAT", "W\u{FE0F}eChat Desktop"] {
            let mut a = App::new(Kind::Appimage, "x");
            a.name = Some(name.into());
            assert_eq!(set.verdict(&a).map(|v| v.rule), Some("glob"), "{name:?}");
        }
        for name in ["Cafe\u{301}", "CAFÉ", "caf\u{200C}é"] {
            let mut a = App::new(Kind::Desktop, "x");
            a.name = Some(name.into());
            assert_eq!(set.verdict(&a).map(|v| v.rule), Some("exact"), "{name:?}");
        }
        let mut other = App::new(Kind::Appimage, "x");
        other.name = Some("WeCha".into());
        assert!(set.verdict(&other).is_none());
    }
}
