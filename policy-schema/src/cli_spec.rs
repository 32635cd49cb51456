//! The hidden `--dump-cli-spec` flag every binary accepts (through [`crate::cli::parse_args`]):
//! prints the binary's built clap command tree as JSON and exits 0.
//!
//! Why: the packages' man pages and shell completions are generated from the clap definitions
//! the binaries really parse with (`packaging/docgen` rebuilds a `clap::Command` from this JSON
//! and hands it to clap_mangen and clap_complete), so a new subcommand or option appears in
//! both without anyone listing it. Dumping data rather than linking the generators keeps them
//! out of the shipped binaries; the serializer is a few hundred bytes of code over serde_json,
//! which every binary links already.

use clap::builder::ValueHint;
use clap::{Arg, ArgAction, Command};
use serde_json::{json, Value};

/// The flag, accepted only as the sole argument (it is not a clap argument, so no binary's
/// `--help` or usage rules change).
pub const FLAG: &str = "--dump-cli-spec";

/// Version of the JSON layout; `embargo-docgen` refuses any other.
pub const SPEC_VERSION: u64 = 1;

/// Whether this process was started as `<binary> --dump-cli-spec`.
pub fn requested() -> bool {
    let mut args = std::env::args_os().skip(1);
    args.next().is_some_and(|a| a == FLAG) && args.next().is_none()
}

/// The built command tree of `cmd` (help and version flags and `help` subcommands included, as
/// `--help` shows them).
pub fn spec(mut cmd: Command) -> Value {
    cmd.build();
    json!({ "spec_version": SPEC_VERSION, "command": command(&cmd) })
}

fn text(s: Option<&clap::builder::StyledStr>) -> Value {
    s.map_or(Value::Null, |s| Value::String(s.to_string()))
}

fn command(cmd: &Command) -> Value {
    json!({
        "name": cmd.get_name(),
        "version": cmd.get_version(),
        "about": text(cmd.get_about()),
        "long_about": text(cmd.get_long_about()),
        "before_help": text(cmd.get_before_help()),
        "after_help": text(cmd.get_after_help()),
        "after_long_help": text(cmd.get_after_long_help()),
        "aliases": cmd.get_visible_aliases().collect::<Vec<_>>(),
        "hide": cmd.is_hide_set(),
        "subcommand_required": cmd.is_subcommand_required_set(),
        "arg_required_else_help": cmd.is_arg_required_else_help_set(),
        "args": cmd.get_arguments().map(arg).collect::<Vec<_>>(),
        "subcommands": cmd.get_subcommands().map(command).collect::<Vec<_>>(),
    })
}

fn arg(a: &Arg) -> Value {
    let action = match a.get_action() {
        ArgAction::Set => "set",
        ArgAction::Append => "append",
        ArgAction::SetTrue => "set_true",
        ArgAction::SetFalse => "set_false",
        ArgAction::Count => "count",
        ArgAction::Help => "help",
        ArgAction::HelpShort => "help_short",
        ArgAction::HelpLong => "help_long",
        ArgAction::Version => "version",
        // A future action the generator does not know: it refuses the spec, naming the arg.
        _ => "unknown",
    };
    let hint = match a.get_value_hint() {
        ValueHint::AnyPath => "any_path",
        ValueHint::FilePath => "file_path",
        ValueHint::DirPath => "dir_path",
        ValueHint::ExecutablePath => "executable_path",
        ValueHint::CommandName => "command_name",
        ValueHint::CommandString => "command_string",
        ValueHint::CommandWithArguments => "command_with_arguments",
        ValueHint::Username => "username",
        ValueHint::Hostname => "hostname",
        ValueHint::Url => "url",
        ValueHint::EmailAddress => "email_address",
        ValueHint::Other => "other",
        _ => "unknown",
    };
    json!({
        "id": a.get_id().as_str(),
        "long": a.get_long(),
        "short": a.get_short().map(String::from),
        "aliases": a.get_visible_aliases().unwrap_or_default(),
        "short_aliases": a.get_visible_short_aliases().unwrap_or_default().into_iter().map(String::from).collect::<Vec<_>>(),
        "help": text(a.get_help()),
        "long_help": text(a.get_long_help()),
        "help_heading": a.get_help_heading(),
        "value_names": a.get_value_names().map(|v| v.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
        "num_args": a.get_num_args().map(|r| json!([r.min_values(), r.max_values()])),
        "action": action,
        "index": a.get_index(),
        "required": a.is_required_set(),
        "global": a.is_global_set(),
        "hide": a.is_hide_set(),
        "last": a.is_last_set(),
        "trailing_var_arg": a.is_trailing_var_arg_set(),
        "allow_hyphen_values": a.is_allow_hyphen_values_set(),
        "value_delimiter": a.get_value_delimiter().map(String::from),
        "default_values": a.get_default_values().iter().map(|v| v.to_string_lossy()).collect::<Vec<_>>(),
        "hide_default_value": a.is_hide_default_value_set(),
        "possible_values": a.get_possible_values().iter().map(|p| json!({
            "name": p.get_name(),
            "help": text(p.get_help()),
            "hide": p.is_hide_set(),
        })).collect::<Vec<_>>(),
        "hide_possible_values": a.is_hide_possible_values_set(),
        "value_hint": hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_carries_subcommands_options_and_the_built_help_flags() {
        let cmd = Command::new("tool").version("1.2.3").about("A tool").subcommand_required(true).subcommand(
            Command::new("run")
                .about("Run it")
                .arg(Arg::new("json").long("json").action(ArgAction::SetTrue).help("As JSON"))
                .arg(Arg::new("path").value_hint(ValueHint::FilePath).required(true)),
        );
        let v = spec(cmd);
        assert_eq!(v["spec_version"], SPEC_VERSION);
        let c = &v["command"];
        assert_eq!(c["name"], "tool");
        assert_eq!(c["version"], "1.2.3");
        let longs: Vec<_> = c["args"].as_array().unwrap().iter().filter_map(|a| a["long"].as_str()).collect();
        assert!(longs.contains(&"help") && longs.contains(&"version"), "{longs:?}");
        let subs: Vec<_> = c["subcommands"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(subs, ["run", "help"]);
        let run = &c["subcommands"][0];
        let json_arg = run["args"].as_array().unwrap().iter().find(|a| a["id"] == "json").unwrap();
        assert_eq!(json_arg["action"], "set_true");
        assert_eq!(json_arg["help"], "As JSON");
        let path = run["args"].as_array().unwrap().iter().find(|a| a["id"] == "path").unwrap();
        assert_eq!((path["index"].as_u64(), path["required"].as_bool()), (Some(1), Some(true)));
        assert_eq!(path["value_hint"], "file_path");
    }
}
