//! `embargod [--config /etc/embargo/agent.toml]` — runs the agent in the foreground.
//! `embargod --demo DIR` — builds and runs the demo device in DIR (see README).
//! Exit codes: 0 clean shutdown, 1 runtime failure, 64 bad usage or configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use embargo_agent::{AgentError, Config};

#[derive(Parser)]
#[command(name = "embargod", version, about = "The embargo agent: enforces the signed app blocklist")]
struct Args {
    #[arg(long, default_value = embargo_agent::config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Build a demo device in this directory and run it (no root needed).
    #[arg(long, conflicts_with = "config")]
    demo: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = match embargo_policy::cli::parse_args::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    // The demo narrates on stdout; its log stays quiet unless EMBARGO_LOG asks.
    let default_filter = if args.demo.is_some() { "warn" } else { "warn,embargo_agent=info" };
    // `Targets` (not EnvFilter): the same `warn,embargo_agent=debug` syntax without a regex
    // engine in a daemon that should stay small.
    use tracing_subscriber::field::MakeExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter: tracing_subscriber::filter::Targets = std::env::var("EMBARGO_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| default_filter.parse().expect("the default filter parses"));
    // Field values (file names, app ids, errors quoting them) are user-chosen: each is escaped
    // (`escape`) so a name cannot forge a log line or send terminal codes.
    let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = embargo_agent::escape::escape(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{field}={text}")
        }
    })
    .delimited(" ");

    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).fmt_fields(fields))
        .with(filter)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("embargod: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(dir) = args.demo {
        return match runtime.block_on(embargo_agent::demo::run(&dir, shutdown())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("embargod --demo: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("embargod: {e}");
            return ExitCode::from(embargo_policy::cli::EXIT_USAGE);
        }
    };
    match runtime.block_on(embargo_agent::run(cfg, shutdown())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(AgentError::Config(e)) => {
            eprintln!("embargod: {e}");
            ExitCode::from(embargo_policy::cli::EXIT_USAGE)
        }
        Err(AgentError::Runtime(e)) => {
            eprintln!("embargod: {e}");
            ExitCode::from(1)
        }
    }
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
