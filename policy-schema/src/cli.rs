//! The command-line contract every embargo binary shares.

use std::process::ExitCode;

/// Exit code for bad usage or bad config (EX_USAGE): the systemd unit's
/// `RestartPreventExitStatus=64` stops restarting a daemon that cannot start as configured.
pub const EXIT_USAGE: u8 = 64;

/// Parses the command line. A usage error is printed and becomes exit code 64; `--help` and
/// `--version` are printed and exit 0. `--dump-cli-spec` alone prints the command tree for the
/// package's man pages and completions (see [`crate::cli_spec`]) and exits 0.
pub fn parse_args<T: clap::Parser>() -> Result<T, ExitCode> {
    if crate::cli_spec::requested() {
        println!("{}", crate::cli_spec::spec(T::command()));
        return Err(ExitCode::SUCCESS);
    }
    T::try_parse().map_err(|e| {
        let _ = e.print();
        ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 })
    })
}
