//! `embargo-server --repo DIR --listen ADDR --tls-cert F --tls-key F [--timestamp-key F --timestamp-ttl D]
//! [--client-ca F] [--admin-ca F] [limits]`
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
    /// CA (PEM) that issues device certificates: clients presenting one are identified as that
    /// device (its subject common name). Needed for reports.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// CA (PEM) that issues admin certificates (access to /admin/ without signing in).
    #[arg(long)]
    admin_ca: Option<PathBuf>,
    /// Connections open at once over all clients.
    #[arg(long, default_value_t = embargo_server::Limits::default().max_connections)]
    max_connections: usize,
    /// Connections open at once from one IP address.
    #[arg(long, default_value_t = embargo_server::Limits::default().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Time allowed for the TLS handshake.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// Time allowed to receive a request's header.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// A connection with nothing read for this long is closed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// A write making no progress (the client stopped reading) for this long closes the connection.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    write_timeout: Duration,
    /// Time allowed to receive a request body.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    body_timeout: Duration,
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
    if args.max_connections == 0 || args.max_connections_per_ip == 0 {
        return usage("--max-connections and --max-connections-per-ip must be at least 1".into());
    }
    let timeouts = [
        ("--handshake-timeout", args.handshake_timeout),
        ("--header-timeout", args.header_timeout),
        ("--idle-timeout", args.idle_timeout),
        ("--write-timeout", args.write_timeout),
        ("--body-timeout", args.body_timeout),
    ];
    if let Some((name, _)) = timeouts.iter().find(|(_, d)| d.is_zero()) {
        return usage(format!("{name} must be longer than zero"));
    }
    let limits = embargo_server::Limits {
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        handshake_timeout: args.handshake_timeout,
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        write_timeout: args.write_timeout,
        body_timeout: args.body_timeout,
    };
    let tls = match embargo_server::tls_setup(
        &args.tls_cert,
        &args.tls_key,
        args.client_ca.as_deref(),
        args.admin_ca.as_deref(),
    ) {
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
        let options = embargo_server::Options { repo: args.repo.clone(), limits, signer };
        embargo_server::run(listener, tls, options, shutdown).await.map_err(anyhow::Error::from)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embargo-server: {e:#}");
            ExitCode::from(1)
        }
    }
}
