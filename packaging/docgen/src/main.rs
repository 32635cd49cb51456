//! `embargo-docgen`: what the packages carry besides the binaries, generated at package build
//! time (`packaging/build.sh`) so none of it can drift from the code:
//!
//! - `man`: the man pages of the four binaries, from the clap command tree each *built binary*
//!   prints with its hidden `--dump-cli-spec` (so subcommands and options appear as soon as they
//!   are in the code), and `agent.toml(5)` from `embargo_agent::config_doc`, the table the
//!   config tests check against the parser.
//! - `completions`: bash, zsh and fish completions from the same command trees (clap_complete).
//! - `copyright`: a machine-readable (DEP-5) copyright file naming the project and every crate
//!   statically linked into a package's binaries, from `cargo tree` (exactly the crates the
//!   build links: normal dependencies, no build scripts' or proc-macros' dependencies) and
//!   `cargo metadata` (authors), with the full text of each license.
//!
//! A dev-only tool: it is never installed, and the binaries link neither clap_mangen nor
//! clap_complete.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use anyhow::{bail, ensure, Context as _, Result};
use clap::builder::{PossibleValue, PossibleValuesParser, ValueHint, ValueRange};
use clap::{Arg, ArgAction, Command, Parser, Subcommand};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "embargo-docgen", about = "Generate the packages' man pages, completions and copyright files")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Man pages (uncompressed roff) of the binaries in BIN_DIR and agent.toml(5), into OUT/man<N>/.
    Man {
        #[arg(long)]
        bin_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The date the pages carry (YYYY-MM-DD; build.sh passes the last commit's).
        #[arg(long)]
        date: String,
        /// The packaged default agent.toml, shown as the example in agent.toml(5).
        #[arg(long)]
        example_config: PathBuf,
    },
    /// bash, zsh and fish completions of the binaries in BIN_DIR, into OUT/{bash,zsh,fish}/.
    Completions {
        #[arg(long)]
        bin_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// The DEP-5 copyright file of the package whose binaries come from the crates PACKAGE...
    Copyright {
        /// The Debian package name (Upstream-Name is "embargo").
        #[arg(long)]
        deb: String,
        /// Workspace crates whose binaries the package ships.
        #[arg(long = "package", required = true)]
        packages: Vec<String>,
        /// Directory of the license texts (packaging/licenses).
        #[arg(long)]
        licenses: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

/// The binaries, their man section, and the prose clap does not hold (exit codes, files, see
/// also). Options and subcommands are never listed here: they come from the binaries.
struct Page {
    bin: &'static str,
    section: &'static str,
    exit_status: &'static [(&'static str, &'static str)],
    files: &'static [(&'static str, &'static str)],
    environment: &'static [(&'static str, &'static str)],
    see_also: &'static str,
}

const PAGES: &[Page] = &[
    Page {
        bin: "embargod",
        section: "8",
        exit_status: &[
            ("0", "Clean shutdown (SIGTERM or SIGINT)."),
            ("1", "Runtime failure; systemd restarts the agent."),
            (
                "64",
                "Bad usage, bad configuration or a missing trust anchor; the message names the file and line. \
                 The unit's RestartPreventExitStatus=64 stops restarting it.",
            ),
        ],
        files: &[
            ("/etc/embargo/agent.toml", "The configuration, see agent.toml(5)."),
            ("/etc/embargo/root.json", "The fleet's trust anchor (root metadata of its policy repository)."),
            ("/var/lib/embargo/", "Verified policy metadata, the quarantine store and the audit log."),
            ("/run/embargo/embargod.sock", "The control socket embargoctl(8) talks to."),
            ("/lib/systemd/system/embargod.service", "The systemd unit (Type=notify, watchdog)."),
        ],
        environment: &[(
            "EMBARGO_LOG",
            "Log filter, e.g. \"warn,embargo_agent=debug\" (default \"warn,embargo_agent=info\").",
        )],
        see_also: "embargoctl(8), agent.toml(5), embargo-policy(1), embargo-server(8), systemctl(1)",
    },
    Page {
        bin: "embargoctl",
        section: "8",
        exit_status: &[
            ("0", "Success; for status: the agent is healthy."),
            ("1", "The request failed; for status: the agent is degraded (the reasons are listed)."),
            ("3", "The agent is not reachable (not running, or wrong socket)."),
            ("4", "Permission denied: the request needs root."),
            ("64", "Bad usage."),
        ],
        files: &[
            ("/run/embargo/embargod.sock", "The default control socket (the socket key of agent.toml, if set)."),
            ("/etc/embargo/agent.toml", "Read for the socket path when --socket is not given."),
        ],
        environment: &[],
        see_also: "embargod(8), agent.toml(5)",
    },
    Page {
        bin: "embargo-policy",
        section: "1",
        exit_status: &[
            ("0", "Success."),
            ("1", "Failure: verification, lint, or I/O; the message says which file and why."),
            ("64", "Bad usage."),
        ],
        files: &[],
        environment: &[],
        see_also: "embargo-server(8), embargod(8), agent.toml(5)",
    },
    Page {
        bin: "embargo-server",
        section: "8",
        exit_status: &[
            ("0", "Clean shutdown (SIGTERM or SIGINT)."),
            ("1", "Runtime failure."),
            ("64", "Bad usage or configuration (not a repository, unreadable TLS certificate or key)."),
        ],
        files: &[],
        environment: &[("EMBARGO_LOG", "Log filter (default \"info\").")],
        see_also: "embargo-policy(1), embargod(8)",
    },
];

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Man { bin_dir, out, date, example_config } => {
            for page in PAGES {
                let cmd = command_of(&bin_dir, page.bin)?;
                let dir = out.join(format!("man{}", page.section));
                std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
                let path = dir.join(format!("{}.{}", page.bin, page.section));
                std::fs::write(&path, man_page(cmd, page, &date)?).with_context(|| path.display().to_string())?;
            }
            let example = std::fs::read_to_string(&example_config)
                .with_context(|| format!("the example config {}", example_config.display()))?;
            let dir = out.join("man5");
            std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
            std::fs::write(dir.join("agent.toml.5"), config_page(&date, &example))?;
        }
        Cmd::Completions { bin_dir, out } => {
            for page in PAGES {
                let mut cmd = command_of(&bin_dir, page.bin)?;
                for (shell, dir, file) in [
                    (clap_complete::Shell::Bash, "bash", page.bin.to_owned()),
                    (clap_complete::Shell::Zsh, "zsh", format!("_{}", page.bin)),
                    (clap_complete::Shell::Fish, "fish", format!("{}.fish", page.bin)),
                ] {
                    let dir = out.join(dir);
                    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
                    let mut buf = Vec::new();
                    clap_complete::generate(shell, &mut cmd, page.bin, &mut buf);
                    std::fs::write(dir.join(file), buf)?;
                }
            }
        }
        Cmd::Copyright { deb, packages, licenses, out } => {
            let text = copyright(&deb, &packages, &licenses)?;
            std::fs::write(&out, text).with_context(|| out.display().to_string())?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Command trees: from the binaries' JSON back to clap::Command.

/// Runs `BIN_DIR/bin --dump-cli-spec` and rebuilds its command tree.
fn command_of(bin_dir: &Path, bin: &str) -> Result<Command> {
    let path = bin_dir.join(bin);
    let out =
        Process::new(&path).arg("--dump-cli-spec").output().with_context(|| format!("running {}", path.display()))?;
    ensure!(
        out.status.success(),
        "{} --dump-cli-spec failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value =
        serde_json::from_slice(&out.stdout).with_context(|| format!("{} --dump-cli-spec: not JSON", path.display()))?;
    ensure!(v["spec_version"] == 1, "{}: spec_version {} (this generator reads 1)", path.display(), v["spec_version"]);
    let cmd = build_command(&v["command"]).with_context(|| format!("{}'s command tree", path.display()))?;
    ensure!(cmd.get_name() == bin, "{} calls itself {:?}", path.display(), cmd.get_name());
    Ok(cmd)
}

/// Generated text lives as long as the generator (a short-lived process); clap's builder takes
/// `&'static str` without its `string` feature.
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

fn opt_str(v: &Value, key: &str) -> Option<&'static str> {
    v[key].as_str().map(leak)
}

fn strs(v: &Value, key: &str) -> Vec<&'static str> {
    v[key].as_array().into_iter().flatten().filter_map(Value::as_str).map(leak).collect()
}

fn flag(v: &Value, key: &str) -> bool {
    v[key].as_bool().unwrap_or(false)
}

fn build_command(v: &Value) -> Result<Command> {
    let name = v["name"].as_str().context("a command without a name")?;
    // The dump is of the built tree: help/version flags and `help` subcommands are in it
    // already, so clap must not add its own again.
    let mut c = Command::new(leak(name))
        .disable_help_flag(true)
        .disable_version_flag(true)
        .disable_help_subcommand(true)
        .visible_aliases(strs(v, "aliases"))
        .hide(flag(v, "hide"))
        .subcommand_required(flag(v, "subcommand_required"))
        .arg_required_else_help(flag(v, "arg_required_else_help"));
    if let Some(s) = opt_str(v, "version") {
        c = c.version(s);
    }
    if let Some(s) = opt_str(v, "about") {
        c = c.about(s);
    }
    if let Some(s) = opt_str(v, "long_about") {
        c = c.long_about(s);
    }
    if let Some(s) = opt_str(v, "before_help") {
        c = c.before_help(s);
    }
    if let Some(s) = opt_str(v, "after_help") {
        c = c.after_help(s);
    }
    if let Some(s) = opt_str(v, "after_long_help") {
        c = c.after_long_help(s);
    }
    for a in v["args"].as_array().into_iter().flatten() {
        c = c.arg(build_arg(a).with_context(|| format!("{name}: argument {}", a["id"]))?);
    }
    for s in v["subcommands"].as_array().into_iter().flatten() {
        c = c.subcommand(build_command(s).with_context(|| format!("subcommand of {name}"))?);
    }
    Ok(c)
}

fn build_arg(v: &Value) -> Result<Arg> {
    let id = v["id"].as_str().context("an argument without an id")?;
    let action = match v["action"].as_str() {
        Some("set") => ArgAction::Set,
        Some("append") => ArgAction::Append,
        Some("set_true") => ArgAction::SetTrue,
        Some("set_false") => ArgAction::SetFalse,
        Some("count") => ArgAction::Count,
        Some("help") => ArgAction::Help,
        Some("help_short") => ArgAction::HelpShort,
        Some("help_long") => ArgAction::HelpLong,
        Some("version") => ArgAction::Version,
        other => bail!("action {other:?} is not one this generator knows (update cli_spec and docgen together)"),
    };
    let hint = match v["value_hint"].as_str() {
        Some("any_path") => ValueHint::AnyPath,
        Some("file_path") => ValueHint::FilePath,
        Some("dir_path") => ValueHint::DirPath,
        Some("executable_path") => ValueHint::ExecutablePath,
        Some("command_name") => ValueHint::CommandName,
        Some("command_string") => ValueHint::CommandString,
        Some("command_with_arguments") => ValueHint::CommandWithArguments,
        Some("username") => ValueHint::Username,
        Some("hostname") => ValueHint::Hostname,
        Some("url") => ValueHint::Url,
        Some("email_address") => ValueHint::EmailAddress,
        Some("other") => ValueHint::Other,
        _ => ValueHint::Unknown,
    };
    let mut a = Arg::new(leak(id))
        .action(action.clone())
        .required(flag(v, "required"))
        .hide(flag(v, "hide"))
        .last(flag(v, "last"))
        .trailing_var_arg(flag(v, "trailing_var_arg"))
        .allow_hyphen_values(flag(v, "allow_hyphen_values"))
        .hide_default_value(flag(v, "hide_default_value"))
        .hide_possible_values(flag(v, "hide_possible_values"))
        .visible_aliases(strs(v, "aliases"))
        .value_hint(hint);
    if let Some(l) = opt_str(v, "long") {
        a = a.long(l);
    }
    if let Some(s) = v["short"].as_str().and_then(|s| s.chars().next()) {
        a = a.short(s);
    }
    let shorts: Vec<char> = strs(v, "short_aliases").iter().filter_map(|s| s.chars().next()).collect();
    a = a.visible_short_aliases(shorts);
    if let Some(i) = v["index"].as_u64() {
        a = a.index(usize::try_from(i)?);
    }
    if let Some(s) = opt_str(v, "help") {
        a = a.help(s);
    }
    if let Some(s) = opt_str(v, "long_help") {
        a = a.long_help(s);
    }
    if let Some(s) = opt_str(v, "help_heading") {
        a = a.help_heading(s);
    }
    if v["value_names"].is_array() {
        a = a.value_names(strs(v, "value_names"));
    }
    if let Some([min, max]) = v["num_args"].as_array().map(Vec::as_slice) {
        let min = usize::try_from(min.as_u64().context("num_args")?)?;
        let max = usize::try_from(max.as_u64().context("num_args")?)?;
        a = a.num_args(if max == usize::MAX { ValueRange::new(min..) } else { ValueRange::new(min..=max) });
    }
    if let Some(d) = v["value_delimiter"].as_str().and_then(|s| s.chars().next()) {
        a = a.value_delimiter(d);
    }
    let defaults = strs(v, "default_values");
    if !defaults.is_empty() {
        a = a.default_values(defaults);
    }
    let possible: Vec<PossibleValue> = v["possible_values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let mut pv = PossibleValue::new(leak(p["name"].as_str()?)).hide(flag(p, "hide"));
            if let Some(h) = opt_str(p, "help") {
                pv = pv.help(h);
            }
            Some(pv)
        })
        .collect();
    if !possible.is_empty() && action.takes_values() {
        a = a.value_parser(PossibleValuesParser::new(possible));
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// Man pages.

fn roff_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, line) in s.lines().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let line = line.replace('\\', "\\e").replace('-', "\\-");
        // A line starting with . or ' would be a roff request.
        if line.starts_with('.') || line.starts_with('\'') {
            out.push_str("\\&");
        }
        out.push_str(&line);
    }
    out
}

/// clap_mangen's rendering of one section, with its `.SH` heading lines removed (the caller
/// places it under its own heading).
fn without_headings(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> Result<String> {
    let mut buf = Vec::new();
    render(&mut buf)?;
    let text = String::from_utf8(buf)?;
    Ok(text.lines().filter(|l| !l.starts_with(".SH ")).map(|l| format!("{l}\n")).collect())
}

/// Every visible subcommand below `cmd`, depth first, with its full invocation ("embargoctl
/// quarantine restore").
fn subcommands<'a>(cmd: &'a Command, prefix: &str, out: &mut Vec<(String, &'a Command)>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("{prefix} {}", sub.get_name());
        out.push((full.clone(), sub));
        // clap's `help` subcommand holds a copy of every sibling (for `help <command>`): not
        // commands of their own.
        if sub.get_name() != "help" {
            subcommands(sub, &full, out);
        }
    }
}

fn man_page(cmd: Command, page: &Page, date: &str) -> Result<Vec<u8>> {
    let version = cmd.get_version().unwrap_or_default().to_owned();
    let man = clap_mangen::Man::new(cmd.clone())
        .title(page.bin.to_uppercase())
        .section(page.section)
        .date(date)
        .source(format!("embargo {version}"))
        .manual("embargo manual");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    // One page per binary: each subcommand's synopsis, description and options in a COMMANDS
    // section, instead of clap_mangen's list of separate per-subcommand pages.
    let mut subs = Vec::new();
    subcommands(&cmd, page.bin, &mut subs);
    if !subs.is_empty() {
        writeln!(out, ".SH COMMANDS")?;
        for (full, sub) in subs {
            writeln!(out, ".SS \"{}\"", roff_escape(&full))?;
            let sub_man = clap_mangen::Man::new(sub.clone().bin_name(leak(&full)));
            out.extend(without_headings(|w| sub_man.render_synopsis_section(w))?.into_bytes());
            if let Some(about) = sub.get_long_about().or(sub.get_about()) {
                writeln!(out, ".PP\n{}", roff_escape(&about.to_string()))?;
            }
            if sub.get_arguments().any(|a| !a.is_hide_set()) {
                writeln!(out, ".PP\nOptions:")?;
                out.extend(without_headings(|w| sub_man.render_options_section(w))?.into_bytes());
            }
        }
    }
    let mut extra = String::new();
    let table = |out: &mut String, heading: &str, rows: &[(&str, &str)]| {
        if !rows.is_empty() {
            let _ = writeln!(out, ".SH {heading}");
            for (k, v) in rows {
                let _ = writeln!(out, ".TP\n\\fB{}\\fR\n{}", roff_escape(k), roff_escape(v));
            }
        }
    };
    table(&mut extra, "EXIT STATUS", page.exit_status);
    table(&mut extra, "ENVIRONMENT", page.environment);
    table(&mut extra, "FILES", page.files);
    let _ = writeln!(extra, ".SH SEE ALSO\n{}", roff_escape(page.see_also));
    let _ = writeln!(extra, ".SH VERSION\n{}", roff_escape(&version));
    out.extend(extra.into_bytes());
    Ok(out)
}

/// agent.toml(5), from the config documentation table.
fn config_page(date: &str, example: &str) -> String {
    use embargo_agent::config_doc::SECTIONS;
    let mut s = String::new();
    let version = env!("CARGO_PKG_VERSION");
    let _ = writeln!(s, ".TH AGENT.TOML 5 \"{date}\" \"embargo {version}\" \"embargo manual\"");
    let _ = writeln!(s, ".SH NAME\nagent.toml \\- configuration of the embargo agent, embargod(8)");
    let _ = writeln!(s, ".SH SYNOPSIS\n\\fI/etc/embargo/agent.toml\\fR");
    let _ = writeln!(
        s,
        ".SH DESCRIPTION\nembargod(8) reads this TOML file once at start. Unknown keys and bad values are errors: \
         embargod then exits with status 64 and a message naming the file, line and column \
         (journalctl \\-u embargod). Relative paths are taken relative to the directory of the file."
    );
    for section in SECTIONS {
        let heading = if section.header.is_empty() { "TOP-LEVEL KEYS".to_owned() } else { section.header.to_owned() };
        let _ = writeln!(s, ".SH \"{}\"", roff_escape(&heading));
        let mut doc = section.doc.to_owned();
        if section.required {
            doc.push_str(" Required.");
        } else if section.array {
            doc.push_str(" May appear several times.");
        }
        let _ = writeln!(s, "{}", roff_escape(&doc));
        for key in section.keys {
            let mut head = format!("\\fB{}\\fR = \\fI{}\\fR", roff_escape(key.name), roff_escape(key.kind));
            if key.required {
                head.push_str(" (required)");
            } else if let Some(d) = key.default {
                let _ = write!(head, " (default: {})", roff_escape(d));
            }
            let _ = writeln!(s, ".TP\n{head}\n{}", roff_escape(key.doc));
        }
    }
    let _ = writeln!(s, ".SH EXAMPLE\nThe file the embargo\\-agent package installs:\n.PP\n.nf\n.RS 4");
    let _ = writeln!(s, "{}", roff_escape(example.trim_end()));
    let _ = writeln!(s, ".RE\n.fi");
    let _ = writeln!(
        s,
        ".SH FILES\n.TP\n\\fB/etc/embargo/agent.toml\\fR\nThis file (a conffile: edits survive upgrades).\n\
         .TP\n\\fB/etc/embargo/root.json\\fR\nThe trust anchor named by \\fBroot\\fR."
    );
    let _ = writeln!(s, ".SH SEE ALSO\nembargod(8), embargoctl(8), embargo\\-policy(1)");
    s
}

// ---------------------------------------------------------------------------------------------
// DEP-5 copyright.

/// License short names whose text Debian systems carry in /usr/share/common-licenses (lintian
/// wants a reference there, not a copy).
const COMMON_LICENSES: &[&str] = &["Apache-2.0", "CC0-1.0", "MPL-2.0"];

struct Crate {
    name: String,
    version: String,
    license: String,
    authors: Vec<String>,
    repository: Option<String>,
}

fn cargo(args: &[&str]) -> Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Process::new(&cargo).args(args).output().with_context(|| format!("running {cargo} {args:?}"))?;
    ensure!(out.status.success(), "{cargo} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// The crates linked into the binaries of `packages`: `cargo tree` resolves features exactly as
/// the build does; `-e normal,no-proc-macro` leaves out what only runs at build time.
fn linked_crates(packages: &[String]) -> Result<Vec<Crate>> {
    let mut args = vec!["tree", "--locked", "-e", "normal,no-proc-macro", "--prefix", "none", "-f", "{p}"];
    for p in packages {
        args.extend(["-p", p.as_str()]);
    }
    let tree = cargo(&args)?;
    let mut ids = BTreeSet::new();
    for line in tree.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut words = line.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else { continue };
        ids.insert((name.to_owned(), version.trim_start_matches('v').to_owned()));
    }
    let meta: Value = serde_json::from_str(&cargo(&["metadata", "--locked", "--format-version", "1"])?)?;
    let mut crates = Vec::new();
    for p in meta["packages"].as_array().context("cargo metadata: no packages")? {
        let (name, version) = (p["name"].as_str().unwrap_or(""), p["version"].as_str().unwrap_or(""));
        if !ids.remove(&(name.to_owned(), version.to_owned())) {
            continue;
        }
        let license = p["license"].as_str().with_context(|| {
            format!("{name} {version} declares no SPDX license (only a license file): add it by hand")
        })?;
        crates.push(Crate {
            name: name.to_owned(),
            version: version.to_owned(),
            license: license.to_owned(),
            authors: p["authors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            repository: p["repository"].as_str().map(str::to_owned),
        });
    }
    ensure!(ids.is_empty(), "cargo tree names crates cargo metadata does not know: {ids:?}");
    crates.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Ok(crates)
}

/// An SPDX expression as a DEP-5 license field: `OR`/`AND` in lower case, `WITH X` as `with X
/// exception`, the old `/` as `or`, and a parenthesised first operand as DEP-5's comma
/// (lower precedence). Also returns the short names it uses.
fn dep5_license(spdx: &str) -> Result<(String, Vec<String>)> {
    let mut s = spdx.replace(" / ", " OR ").replace('/', " OR ");
    if let Some(rest) = s.strip_prefix('(') {
        let (inner, tail) = rest.split_once(')').with_context(|| format!("unbalanced license expression {spdx:?}"))?;
        let tail = tail.trim();
        let tail = tail
            .strip_prefix("AND ")
            .with_context(|| format!("license expression {spdx:?}: only (A) AND B is handled"))?;
        s = format!("{inner}, AND {tail}");
    }
    ensure!(!s.contains('(') && !s.contains(')'), "license expression {spdx:?}: nested parentheses are not handled");
    let mut names = Vec::new();
    let mut out = Vec::new();
    let mut words = s.split_whitespace().peekable();
    while let Some(w) = words.next() {
        match w {
            "OR" => out.push("or".to_owned()),
            "AND" => out.push("and".to_owned()),
            "WITH" => {
                let exc = words.next().with_context(|| format!("{spdx:?}: WITH without an exception"))?;
                names.push(exc.to_owned());
                out.push(format!("with {} exception", exc.trim_end_matches("-exception")));
            }
            name => {
                let (bare, comma) = name.strip_suffix(',').map_or((name, ""), |b| (b, ","));
                names.push(bare.to_owned());
                out.push(format!("{bare}{comma}"));
            }
        }
    }
    Ok((out.join(" "), names))
}

fn dep5_text(text: &str) -> String {
    text.trim_end()
        .lines()
        .map(|l| if l.trim().is_empty() { " .".to_owned() } else { format!(" {}", l.trim_end()) })
        .collect::<Vec<_>>()
        .join("\n")
}

fn copyright(deb: &str, packages: &[String], licenses: &Path) -> Result<String> {
    let crates = linked_crates(packages)?;
    let mut s = String::new();
    let _ = writeln!(s, "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/");
    let _ = writeln!(s, "Upstream-Name: embargo");
    let _ = writeln!(s, "Upstream-Contact: embargo maintainers <embargo@example.invalid>");
    let _ = writeln!(s, "Source: https://example.invalid/embargo");
    let _ = writeln!(
        s,
        "Comment: {deb} ships Rust binaries, which link their dependencies statically. Each\n \
         \"Files: vendor/<crate>-<version>/*\" paragraph names one crate compiled into them, at the\n \
         path `cargo vendor --versioned-dirs vendor` gives its source (from Cargo.lock). Generated\n \
         by packaging/docgen at package build time from `cargo tree` and `cargo metadata`."
    );
    let _ = writeln!(s, "\nFiles: *\nCopyright: 2026 The embargo authors\nLicense: Apache-2.0");
    let mut used = BTreeSet::from(["Apache-2.0".to_owned()]);
    let workspace: BTreeSet<&str> = ["embargo-agent", "embargo-policy", "embargo-server"].into();
    for c in &crates {
        if workspace.contains(c.name.as_str()) {
            continue;
        }
        let (license, names) = dep5_license(&c.license).with_context(|| format!("crate {} {}", c.name, c.version))?;
        for n in names {
            used.insert(n);
        }
        let holders = if c.authors.is_empty() {
            format!("The {} authors{}", c.name, c.repository.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())
        } else {
            c.authors.join("\n           ")
        };
        let _ = writeln!(s, "\nFiles: vendor/{}-{}/*\nCopyright: {holders}\nLicense: {license}", c.name, c.version);
    }
    for name in &used {
        if COMMON_LICENSES.contains(&name.as_str()) {
            let _ = writeln!(
                s,
                "\nLicense: {name}\n On Debian systems, the full text of this license is in\n /usr/share/common-licenses/{name}."
            );
            continue;
        }
        let path = licenses.join(name);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("no text for license {name} (used by a linked crate): add it as {}", path.display())
        })?;
        let short = name.trim_end_matches("-exception");
        let header = if name.ends_with("-exception") {
            // DEP-5 spells "Apache-2.0 WITH LLVM-exception" as "Apache-2.0 with LLVM exception"; the
            // exception's paragraph carries the combined name.
            format!("Apache-2.0 with {short} exception")
        } else {
            name.clone()
        };
        let _ = writeln!(s, "\nLicense: {header}\n{}", dep5_text(&text));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdx_expressions_become_dep5_license_fields() {
        for (spdx, dep5) in [
            ("MIT OR Apache-2.0", "MIT or Apache-2.0"),
            ("MIT/Apache-2.0", "MIT or Apache-2.0"),
            ("Apache-2.0 / MIT", "Apache-2.0 or MIT"),
            ("Apache-2.0 AND ISC", "Apache-2.0 and ISC"),
            ("(MIT OR Apache-2.0) AND Unicode-3.0", "MIT or Apache-2.0, and Unicode-3.0"),
            (
                "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT",
                "Apache-2.0 with LLVM exception or Apache-2.0 or MIT",
            ),
        ] {
            assert_eq!(dep5_license(spdx).unwrap().0, dep5, "{spdx}");
        }
        assert!(dep5_license("(MIT OR (Apache-2.0 AND ISC))").is_err());
    }

    #[test]
    fn a_spec_round_trips_through_clap() {
        let original = Command::new("tool")
            .version("1.0")
            .subcommand(Command::new("run").about("Run").arg(Arg::new("json").long("json").action(ArgAction::SetTrue)));
        let spec = embargo_policy::cli_spec::spec(original);
        let mut rebuilt = build_command(&spec["command"]).unwrap();
        rebuilt.build();
        let run = rebuilt.find_subcommand("run").unwrap();
        assert_eq!(run.get_about().unwrap().to_string(), "Run");
        assert!(run.get_arguments().any(|a| a.get_long() == Some("json")));
        assert!(rebuilt.get_arguments().any(|a| a.get_long() == Some("help")));
        assert!(rebuilt.find_subcommand("help").is_some());
    }
}
