//! The example policy shipped with embargo: WeChat and Kaspersky, across platforms, with their
//! real identifiers. The demo signs it; tests check that it bans what it says it bans.

/// The TOML source of the example policy.
pub const WECHAT_KASPERSKY_TOML: &str = include_str!("../policies/wechat-kaspersky.toml");
/// The file name under which tools and docs refer to it.
pub const WECHAT_KASPERSKY_FILE: &str = "wechat-kaspersky.toml";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::App;
    use crate::matcher::{RuleSet, Strength};
    use crate::rules::{Action, Kind};

    fn set() -> RuleSet {
        let src =
            crate::authoring::parse(WECHAT_KASPERSKY_FILE, WECHAT_KASPERSKY_TOML).expect("example policy lints clean");
        RuleSet::compile(src.rules, &[])
    }

    #[test]
    fn bans_wechat_and_kaspersky_everywhere_with_real_identifiers() {
        let set = set();
        let banned = [
            (Kind::Android, "com.tencent.mm", "wechat"),
            (Kind::Android, "com.tencent.wework", "wechat"),
            (Kind::Ios, "com.tencent.xin", "wechat"),
            (Kind::Macos, "com.tencent.xinWeChat", "wechat"),
            (Kind::Flatpak, "com.tencent.WeChat", "wechat"),
            (Kind::Deb, "wechat", "wechat"),
            (Kind::Rpm, "wechat", "wechat"),
            (Kind::Android, "com.kms.free", "kaspersky"),
            (Kind::Android, "com.kaspersky.secure.connection", "kaspersky"),
            (Kind::Deb, "kesl", "kaspersky"),
            (Kind::Deb, "kesl-gui", "kaspersky"),
            (Kind::Rpm, "klnagent64", "kaspersky"),
        ];
        for (kind, id, rule) in banned {
            let v = set.verdict(&App::new(kind, id)).unwrap_or_else(|| panic!("{kind} {id} must be banned"));
            assert_eq!((v.rule, v.action), (rule, Action::Remove), "{kind} {id}");
        }
        let mut mac = App::new(Kind::Macos, "com.example.renamed");
        mac.signers = vec!["2Y8XE5CQ94".into()];
        let v = set.verdict(&mac).unwrap();
        assert_eq!((v.rule, v.strength), ("kaspersky", Strength::Strong));
        let mut appimage = App::new(Kind::Appimage, "WeChat-x86_64.AppImage");
        appimage.name = Some("WeChat".into());
        assert_eq!(set.verdict(&appimage).unwrap().rule, "wechat");
    }

    #[test]
    fn leaves_lookalikes_alone() {
        let set = set();
        for (kind, id) in [
            (Kind::Android, "com.tencent.mmx"),
            (Kind::Deb, "wechat-theme"),
            (Kind::Flatpak, "org.signal.Signal"),
            (Kind::Android, "com.kasperskyfan.app"),
            (Kind::Deb, "firefox-esr"),
            (Kind::Ios, "com.tencent.xin.extra"),
        ] {
            assert!(set.verdict(&App::new(kind, id)).is_none(), "{kind} {id} must not be banned");
        }
    }
}
