//! What `/data/system/packages.xml` says is installed, in either encoding (ABX since Android 12,
//! text where `persist.sys.binary_xml=false`), and the per-user state in
//! `/data/system/users/<user>/package-restrictions.xml`.
//!
//! Schema (AOSP `Settings.writePackageLPr`, `PackageSignatures.writeXml`,
//! `Settings.writePackageRestrictionsLPr`): `<packages>` holds `<package name codePath version
//! installer publicFlags privateFlags userId|sharedUserId …>` elements, each with a `<sigs
//! count schemeVersion>` child listing `<cert index [key]>` (the current signer(s)) and
//! optionally `<pastSigs>` (rotation history). A certificate's DER `key` is written only the
//! first time it appears in the file; later `<cert>`s anywhere in the file (other packages,
//! `<shared-user>`, `<install-initiator-sigs>`) refer to it by `index`, so the index table is
//! file-global. `<updated-package>` marks a system package whose update is installed.
//!
//! Bounds: the XML layer's (`xml`), plus `MAX_PACKAGES` packages, certificate indexes below
//! `MAX_CERT_INDEX` and at most `MAX_CERT_KEYS` distinct keys; a `<cert>` whose index was never
//! given a key is reported in `warnings` (at most `MAX_WARNINGS` kept) and skipped, as AOSP
//! skips it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sha2::{Digest as _, Sha256};

use super::xml::{self, Attr, Event, XmlError};

pub const MAX_PACKAGES: usize = 100_000;
pub const MAX_CERT_INDEX: i64 = 1_000_000;
pub const MAX_CERT_KEYS: usize = 100_000;
pub const MAX_WARNINGS: usize = 32;

/// `ApplicationInfo.FLAG_SYSTEM`.
pub const FLAG_SYSTEM: i64 = 1;
/// `ApplicationInfo.FLAG_UPDATED_SYSTEM_APP`.
pub const FLAG_UPDATED_SYSTEM_APP: i64 = 1 << 7;
/// `ApplicationInfo.PRIVATE_FLAG_PRIVILEGED`.
pub const PRIVATE_FLAG_PRIVILEGED: i64 = 1 << 3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackagesError {
    #[error("{0}")]
    Xml(#[from] XmlError),
    #[error("{file}: {what}")]
    Schema { file: &'static str, what: String },
}

fn schema(file: &'static str, what: impl Into<String>) -> PackagesError {
    PackagesError::Schema { file, what: what.into() }
}

/// One `<package>` of packages.xml.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstalledPackage {
    pub name: String,
    pub real_name: Option<String>,
    pub code_path: String,
    /// `version` (the long version code).
    pub version: Option<i64>,
    pub installer: Option<String>,
    pub public_flags: i64,
    pub private_flags: i64,
    /// `userId` (app id), or the shared user's id for `sharedUserId` packages.
    pub app_id: Option<i64>,
    /// `<sigs schemeVersion>`: 1 JAR, 2 v2, 3 v3.
    pub scheme_version: Option<i64>,
    /// SHA-256 of each current signer certificate (`<sigs><cert>`), in file order.
    pub signers: Vec<[u8; 32]>,
    /// SHA-256 of each earlier certificate in the rotation history (`<sigs><pastSigs><cert>`).
    pub past_signers: Vec<[u8; 32]>,
    /// Listed under `<updated-package>` too: a system package with an installed update.
    pub has_system_copy: bool,
}

impl InstalledPackage {
    pub fn is_system(&self) -> bool {
        self.public_flags & FLAG_SYSTEM != 0
    }

    pub fn is_privileged(&self) -> bool {
        self.private_flags & PRIVATE_FLAG_PRIVILEGED != 0
    }

    /// An update over a system package: it can be rolled back to the system copy, never removed.
    pub fn is_updated_system(&self) -> bool {
        self.public_flags & FLAG_UPDATED_SYSTEM_APP != 0 || self.has_system_copy
    }

    /// Signer certificates (current, then history) as lowercase hex.
    pub fn signers_hex(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for d in self.signers.iter().chain(&self.past_signers) {
            let h = hex::encode(d);
            if !out.contains(&h) {
                out.push(h);
            }
        }
        out
    }
}

/// packages.xml, read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PackageDb {
    /// By package name (a name appears once in a valid file; a repeated one keeps the last,
    /// as `Settings` does).
    pub packages: BTreeMap<String, InstalledPackage>,
    /// Problems that AOSP tolerates too (a `<cert>` index without a key, a repeated package).
    pub warnings: Vec<String>,
    /// Whether the file was ABX (else text XML).
    pub binary: bool,
}

impl PackageDb {
    fn warn(&mut self, w: String) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(w);
        }
    }
}

fn attr<'a>(attrs: &'a [Attr], name: &str) -> Option<&'a xml::Value> {
    attrs.iter().find(|a| a.name == name).map(|a| &a.value)
}

fn attr_str(attrs: &[Attr], name: &str) -> Option<String> {
    attr(attrs, name).map(|v| v.text().into_owned())
}

fn attr_i64(attrs: &[Attr], name: &str) -> Option<i64> {
    attr(attrs, name).and_then(xml::Value::as_i64)
}

/// Where a `<cert>` is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CertList {
    Current,
    Past,
    /// Shared-user or installer signatures: only the index table is updated.
    Other,
}

/// Reads packages.xml (`bytes` = the whole file, read with a size cap), ABX or text.
pub fn read_packages(bytes: &[u8]) -> Result<PackageDb, PackagesError> {
    const FILE: &str = "packages.xml";
    let mut reader = xml::open(bytes);
    let mut db = PackageDb { binary: bytes.starts_with(xml::ABX_MAGIC), ..Default::default() };
    let mut keys: HashMap<i64, [u8; 32]> = HashMap::new();
    let mut stack: Vec<String> = Vec::new();
    let mut current: Option<InstalledPackage> = None;
    let mut updated: BTreeSet<String> = BTreeSet::new();
    let mut saw_root = false;
    while let Some(ev) = reader.next_event()? {
        match ev {
            Event::Start { name, attrs } => {
                let parent = stack.last().map(String::as_str);
                match (stack.len(), name.as_str()) {
                    (0, "packages") => saw_root = true,
                    (0, other) => return Err(schema(FILE, format!("root element is <{other}>, not <packages>"))),
                    (1, "package") => {
                        let pkg_name = attr_str(&attrs, "name")
                            .filter(|n| super::axml::valid_installed_package_name(n))
                            .ok_or_else(|| schema(FILE, "a <package> without a valid name"))?;
                        if db.packages.len() >= MAX_PACKAGES {
                            return Err(schema(FILE, format!("more than {MAX_PACKAGES} packages")));
                        }
                        current = Some(InstalledPackage {
                            name: pkg_name,
                            real_name: attr_str(&attrs, "realName"),
                            code_path: attr_str(&attrs, "codePath").unwrap_or_default(),
                            version: attr_i64(&attrs, "version"),
                            installer: attr_str(&attrs, "installer").filter(|s| !s.is_empty()),
                            public_flags: attr_i64(&attrs, "publicFlags").or(attr_i64(&attrs, "flags")).unwrap_or(0),
                            private_flags: attr_i64(&attrs, "privateFlags").unwrap_or(0),
                            app_id: attr_i64(&attrs, "userId").or(attr_i64(&attrs, "sharedUserId")),
                            ..Default::default()
                        });
                    }
                    (1, "updated-package") => {
                        if let Some(n) = attr_str(&attrs, "name") {
                            updated.insert(n);
                        }
                    }
                    (2, "sigs") if parent == Some("package") => {
                        if let Some(p) = current.as_mut() {
                            p.scheme_version = attr_i64(&attrs, "schemeVersion");
                        }
                    }
                    (_, "cert") => {
                        let list = match (stack.len(), parent) {
                            (3, Some("sigs")) if stack[1] == "package" => CertList::Current,
                            (4, Some("pastSigs")) if stack[1] == "package" && stack[2] == "sigs" => CertList::Past,
                            _ => CertList::Other,
                        };
                        let digest = cert(&attrs, &mut keys, &mut db)?;
                        if let (Some(d), Some(p)) = (digest, current.as_mut()) {
                            match list {
                                CertList::Current if !p.signers.contains(&d) => p.signers.push(d),
                                CertList::Past if !p.past_signers.contains(&d) => p.past_signers.push(d),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
                stack.push(name);
            }
            Event::End { .. } => {
                stack.pop();
                if stack.len() == 1 {
                    if let Some(p) = current.take() {
                        if db.packages.contains_key(&p.name) {
                            db.warn(format!("package {} is listed twice; the last entry is kept", p.name));
                        }
                        db.packages.insert(p.name.clone(), p);
                    }
                }
            }
            Event::Text(_) => {}
        }
    }
    if !saw_root {
        return Err(schema(FILE, "no <packages> element"));
    }
    for name in updated {
        if let Some(p) = db.packages.get_mut(&name) {
            p.has_system_copy = true;
        }
    }
    Ok(db)
}

/// Resolves one `<cert index [key]>`: registers a key at its index, returns the certificate's
/// SHA-256 (or `None`, with a warning, for an index never given a key).
fn cert(
    attrs: &[Attr],
    keys: &mut HashMap<i64, [u8; 32]>,
    db: &mut PackageDb,
) -> Result<Option<[u8; 32]>, PackagesError> {
    const FILE: &str = "packages.xml";
    let index = attr_i64(attrs, "index").ok_or_else(|| schema(FILE, "a <cert> without an index"))?;
    if !(0..MAX_CERT_INDEX).contains(&index) {
        return Err(schema(FILE, format!("<cert> index {index} is out of range")));
    }
    if let Some(key) = attr(attrs, "key") {
        let der = key.as_bytes_hex().ok_or_else(|| schema(FILE, format!("<cert index={index}> key is not hex")))?;
        let digest: [u8; 32] = Sha256::digest(&der).into();
        if !keys.contains_key(&index) && keys.len() >= MAX_CERT_KEYS {
            return Err(schema(FILE, format!("more than {MAX_CERT_KEYS} distinct certificates")));
        }
        keys.insert(index, digest);
        return Ok(Some(digest));
    }
    match keys.get(&index) {
        Some(d) => Ok(Some(*d)),
        None => {
            db.warn(format!("<cert index={index}> refers to a certificate never written"));
            Ok(None)
        }
    }
}

/// Most `<suspend-params>` kept per package and user (each names one suspending package).
pub const MAX_SUSPENDERS: usize = 16;

/// One user's state for one package (`package-restrictions.xml` `<pkg>`; absent attributes take
/// the platform's defaults). Names as AOSP `Settings.readPackageRestrictionsLPr` reads them:
/// `inst` (default true), `stopped`, `nl` (not launched), `hidden` (or the legacy `blocked`),
/// `suspended`, `enabled` (`COMPONENT_ENABLED_STATE_*`), and `<suspend-params
/// suspending-package=…>` children, one per package that suspended it (Android 10+; a
/// `suspended="true"` without any counts as suspended by the platform, `android`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPackageState {
    pub installed: bool,
    pub hidden: bool,
    pub suspended: bool,
    pub stopped: bool,
    pub not_launched: bool,
    /// `COMPONENT_ENABLED_STATE_*`: 0 default, 1 enabled, 2 disabled, 3 disabled-user,
    /// 4 disabled-until-used.
    pub enabled: i64,
    /// Who suspended it (`suspending-package`; `cmd package suspend` run by uid 0 records
    /// `root`), at most [`MAX_SUSPENDERS`].
    pub suspended_by: Vec<String>,
}

impl Default for UserPackageState {
    fn default() -> Self {
        Self {
            installed: true,
            hidden: false,
            suspended: false,
            stopped: false,
            not_launched: false,
            enabled: 0,
            suspended_by: Vec::new(),
        }
    }
}

impl UserPackageState {
    /// Whether `suspender` (e.g. `root`) holds a suspension of it.
    pub fn suspended_by(&self, suspender: &str) -> bool {
        self.suspended && self.suspended_by.iter().any(|s| s == suspender)
    }
}

/// Reads one user's `package-restrictions.xml`: package name → state. Packages not listed are
/// installed for that user with default state.
pub fn read_package_restrictions(bytes: &[u8]) -> Result<BTreeMap<String, UserPackageState>, PackagesError> {
    const FILE: &str = "package-restrictions.xml";
    let mut reader = xml::open(bytes);
    let mut out: BTreeMap<String, UserPackageState> = BTreeMap::new();
    let mut depth = 0usize;
    let mut saw_root = false;
    // The `<pkg>` being read (its `<suspend-params>` children add to it).
    let mut current: Option<(String, UserPackageState)> = None;
    let finish = |cur: &mut Option<(String, UserPackageState)>, out: &mut BTreeMap<String, UserPackageState>| {
        if let Some((name, mut st)) = cur.take() {
            if st.suspended && st.suspended_by.is_empty() {
                st.suspended_by.push("android".into());
            }
            out.insert(name, st);
        }
    };
    while let Some(ev) = reader.next_event()? {
        match ev {
            Event::Start { name, attrs } => {
                match (depth, name.as_str()) {
                    (0, "package-restrictions") => saw_root = true,
                    (0, other) => {
                        return Err(schema(FILE, format!("root element is <{other}>, not <package-restrictions>")))
                    }
                    (1, "pkg") => {
                        let Some(pkg) = attr_str(&attrs, "name") else {
                            return Err(schema(FILE, "a <pkg> without a name"));
                        };
                        if out.len() >= MAX_PACKAGES {
                            return Err(schema(FILE, format!("more than {MAX_PACKAGES} packages")));
                        }
                        let b = |n: &str, d: bool| attr(&attrs, n).and_then(xml::Value::as_bool).unwrap_or(d);
                        let state = UserPackageState {
                            installed: b("inst", true),
                            hidden: b("hidden", false) || b("blocked", false),
                            suspended: b("suspended", false),
                            stopped: b("stopped", false),
                            not_launched: b("nl", false),
                            enabled: attr_i64(&attrs, "enabled").unwrap_or(0),
                            suspended_by: Vec::new(),
                        };
                        current = Some((pkg, state));
                    }
                    (2, "suspend-params") => {
                        if let (Some((_, st)), Some(by)) = (current.as_mut(), attr_str(&attrs, "suspending-package")) {
                            // AOSP derives `suspended` from the params map as well.
                            st.suspended = true;
                            if st.suspended_by.len() < MAX_SUSPENDERS && !st.suspended_by.contains(&by) {
                                st.suspended_by.push(by);
                            }
                        }
                    }
                    _ => {}
                }
                depth += 1;
            }
            Event::End { .. } => {
                depth = depth.saturating_sub(1);
                if depth == 1 {
                    finish(&mut current, &mut out);
                }
            }
            Event::Text(_) => {}
        }
    }
    finish(&mut current, &mut out);
    if !saw_root {
        return Err(schema(FILE, "no <package-restrictions> element"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"<?xml version='1.0' encoding='utf-8' standalone='yes' ?>
<packages>
<version sdkVersion="34" databaseVersion="3" />
<updated-package name="com.android.chrome" codePath="/system/app/Chrome" version="1" />
<package name="android" codePath="/system/framework/framework-res.apk" publicFlags="1" version="28" userId="1000">
<sigs count="1" schemeVersion="2"><cert index="7" key="30820001" /></sigs>
</package>
<package name="com.tencent.mm" codePath="/data/app/~~aGVsbG8=/com.tencent.mm-d29ybGQ=" publicFlags="810073668" privateFlags="0" ft="18c0b1d2e30" version="2800" userId="10234" installer="com.android.vending">
<sigs count="1" schemeVersion="3">
<cert index="0" key="308201a2" />
<pastSigs count="2"><cert index="1" key="3082aa" flags="23"/><cert index="0" flags="23"/></pastSigs>
</sigs>
</package>
<package name="com.example.clone" codePath="/data/app/~~x/com.example.clone-y" publicFlags="0" version="1" userId="10235">
<sigs count="1" schemeVersion="2"><cert index="0" /></sigs>
</package>
<package name="com.android.chrome" codePath="/data/app/~~c/com.android.chrome-d" publicFlags="129" privateFlags="8" version="2" userId="10100">
<sigs count="1" schemeVersion="2"><cert index="7" /></sigs>
</package>
</packages>
"#;

    #[test]
    fn text_packages_xml_with_shared_cert_indexes() {
        let db = read_packages(TEXT.as_bytes()).unwrap();
        assert!(!db.binary);
        let mm = &db.packages["com.tencent.mm"];
        let k0: [u8; 32] = Sha256::digest([0x30, 0x82, 0x01, 0xa2]).into();
        let k1: [u8; 32] = Sha256::digest([0x30, 0x82, 0xaa]).into();
        assert_eq!(mm.signers, vec![k0]);
        assert_eq!(mm.past_signers, vec![k1, k0]);
        assert_eq!(mm.version, Some(2800));
        assert_eq!(mm.installer.as_deref(), Some("com.android.vending"));
        assert_eq!(mm.scheme_version, Some(3));
        assert!(!mm.is_system());
        // The second package names its signer by index only: it resolves to the first's key.
        assert_eq!(db.packages["com.example.clone"].signers, vec![k0]);
        let chrome = &db.packages["com.android.chrome"];
        assert!(chrome.is_system() && chrome.is_privileged() && chrome.is_updated_system());
        // chrome names index 7, which the platform package (listed earlier) wrote.
        assert_eq!(chrome.signers, db.packages["android"].signers);
        assert!(db.packages["android"].is_system());
        assert!(db.warnings.is_empty(), "{:?}", db.warnings);
    }

    #[test]
    fn schema_errors_name_the_problem() {
        let e = read_packages(b"<settings/>").unwrap_err();
        assert!(e.to_string().contains("not <packages>"), "{e}");
        let e = read_packages(b"<packages><package name=\"x/y\"/></packages>").unwrap_err();
        assert!(e.to_string().contains("valid name"), "{e}");
        let e =
            read_packages(b"<packages><package name=\"a.b\"><sigs><cert index=\"-1\"/></sigs></package></packages>")
                .unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn package_restrictions() {
        let doc = br#"<package-restrictions><pkg name="com.tencent.mm" inst="false" /><pkg name="a.b" suspended="true" enabled="3"/></package-restrictions>"#;
        let r = read_package_restrictions(doc).unwrap();
        assert!(!r["com.tencent.mm"].installed);
        assert!(r["a.b"].installed && r["a.b"].suspended);
        assert_eq!(r["a.b"].enabled, 3);
        // A bare `suspended="true"` is the platform's (AOSP: `oldSuspendingPackage = "android"`).
        assert!(r["a.b"].suspended_by("android") && !r["a.b"].suspended_by("root"));
    }

    #[test]
    fn package_restrictions_suspend_params_name_who_suspended() {
        let doc = br#"<package-restrictions>
<pkg name="com.tencent.mm" stopped="true" nl="true" suspended="true"><suspend-params suspending-package="root" /><suspend-params suspending-package="com.example.dpc"><dialog-info message="x"/></suspend-params></pkg>
<pkg name="com.example.plain" />
<pkg name="com.example.old" blocked="true" />
</package-restrictions>"#;
        let r = read_package_restrictions(doc).unwrap();
        let mm = &r["com.tencent.mm"];
        assert!(mm.installed && mm.stopped && mm.not_launched && mm.suspended);
        assert_eq!(mm.suspended_by, ["root", "com.example.dpc"]);
        assert!(mm.suspended_by("root"));
        assert_eq!(r["com.example.plain"], UserPackageState::default());
        assert!(r["com.example.old"].hidden, "the legacy name of hidden");
    }
}
