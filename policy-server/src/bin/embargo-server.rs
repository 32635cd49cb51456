//! `embargo-server --repo DIR --listen ADDR --tls-cert F --tls-key F [--timestamp-key F --timestamp-ttl D]`
//! Thin: parses arguments, sets up logging (EMBARGO_LOG), runs until Ctrl-C or SIGTERM.
//! Exit codes: 0 clean shutdown, 1 runtime failure, 64 bad usage or configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(name = "embargo-server", version, about = "Serve an embargo policy repository over HTTPS")]
struct Args {
    #[arg(long)]
    repo: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: String,
    #[arg(long)]
    tls_cert: PathBuf,
    #[arg(long)]
    tls_key: PathBuf,
    /// Private timestamp key: re-sign timestamp.json on a schedule.
    #[arg(long)]
    timestamp_key: Option<PathBuf>,
    /// Validity of each re-signed timestamp (re-signed every quarter of it).
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    timestamp_ttl: Duration,
}

fn main() -> ExitCode {
    let args = match embargo_policy::cli::parse_args::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("EMBARGO_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let usage = |msg: String| {
        eprintln!("embargo-server: {msg}");
        ExitCode::from(embargo_policy::cli::EXIT_USAGE)
    };
    if !args.repo.join("root").is_dir() {
        return usage(format!("{}: not a repository (no root/ directory)", args.repo.display()));
    }
    let tls = match embargo_server::tls_config(&args.tls_cert, &args.tls_key) {
        Ok(t) => t,
        Err(e) => return usage(e.to_string()),
    };
    let signer = match &args.timestamp_key {
        None => None,
        Some(p) => match embargo_policy::keys::SigningKey::read(p) {
            Ok(key) => Some(embargo_server::TimestampSigner { key, ttl: args.timestamp_ttl }),
            Err(e) => return usage(e.to_string()),
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("embargo-server: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen).await?;
        tracing::info!(addr = %listener.local_addr()?, repo = %args.repo.display(), "serving");
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        embargo_server::run(listener, tls, args.repo.clone(), signer, shutdown).await.map_err(anyhow::Error::from)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embargo-server: {e:#}");
            ExitCode::from(1)
        }
    }
}
