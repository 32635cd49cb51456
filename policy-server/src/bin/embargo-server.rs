//! `embargo-server --repo DIR --listen ADDR --tls-cert F --tls-key F [--timestamp-key F --timestamp-ttl D
//! --state F]
//! [--client-ca F] [--admin-ca F] [--database URL] [--admin-password-file F] [limits]
//! [--event-retention D] [--event-max-per-device N] [--event-prune-interval D]`
//! `embargo-server fleet --database URL` prints the compliance summary.
//! Thin: parses arguments, sets up logging (EMBARGO_LOG), runs until Ctrl-C or SIGTERM.
//! Exit codes: 0 clean shutdown, 1 runtime failure, 64 bad usage or configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "embargo-server",
    version,
    about = "Serve an embargo policy repository over HTTPS",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[arg(long, required = true)]
    repo: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: String,
    #[arg(long, required = true)]
    tls_cert: Option<PathBuf>,
    #[arg(long, required = true)]
    tls_key: Option<PathBuf>,
    /// Private timestamp key: re-sign timestamp.json on a schedule.
    #[arg(long)]
    timestamp_key: Option<PathBuf>,
    /// Validity of each re-signed timestamp (re-signed every quarter of it).
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    timestamp_ttl: Duration,
    /// The timestamp signer's state file (last version signed, pinned root); default: beside the
    /// repository directory, REPO.timestamp-state.json (as `embargo-policy timestamp --state`).
    #[arg(long, value_name = "FILE", requires = "timestamp_key")]
    state: Option<PathBuf>,
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
    /// Where reports are stored: sqlite://PATH or postgres://… . Default (when reports or the
    /// admin view are enabled by --client-ca or --admin-ca): `embargo-fleet.db` beside the
    /// repository directory.
    #[arg(long)]
    database: Option<String>,
    /// A file holding the admin password for the /admin/ sign-in form.
    #[arg(long)]
    admin_password_file: Option<PathBuf>,
    #[command(flatten)]
    staleness: StalenessArgs,
    /// Audit events received longer ago than this are deleted (by a background task).
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    event_retention: Duration,
    /// At most this many audit events are kept per device (the newest).
    #[arg(long, default_value_t = embargo_server::store::Retention::default().max_per_device)]
    event_max_per_device: u64,
    /// How often the background task applies the two event bounds above.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    event_prune_interval: Duration,
}

#[derive(clap::Args)]
struct StalenessArgs {
    /// The agents' sync interval, for staleness.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    report_interval: Duration,
    /// A device not seen for more than this many intervals is stale.
    #[arg(long, default_value_t = 3)]
    stale_intervals: u64,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the fleet's compliance summary (the /admin/ page's tables) from the database.
    Fleet {
        #[arg(long)]
        database: String,
        /// Print JSON instead of text (always complete: every rule and device).
        #[arg(long)]
        json: bool,
        /// Print at most this many rules (those some device must still act on first) and this
        /// many devices per device list; the summary says how many it left out.
        #[arg(long, default_value_t = embargo_server::summary::TEXT_LIMIT, conflicts_with = "all")]
        limit: usize,
        /// Print every rule and device (a policy of 100,000 rules prints 100,000 lines).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        staleness: StalenessArgs,
    },
}

impl StalenessArgs {
    fn get(&self) -> embargo_server::summary::Staleness {
        embargo_server::summary::Staleness {
            interval_secs: self.report_interval.as_secs().max(1),
            intervals: self.stale_intervals.max(1),
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

fn fleet_command(
    database: &str,
    json: bool,
    limit: Option<usize>,
    staleness: embargo_server::summary::Staleness,
) -> ExitCode {
    // Reading a summary must not create an empty database where the admin mistyped a path.
    if let Some(path) = database.strip_prefix("sqlite://") {
        if !std::path::Path::new(path).is_file() {
            eprintln!("embargo-server fleet: {path}: no such database");
            return ExitCode::from(embargo_policy::cli::EXIT_USAGE);
        }
    }
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("embargo-server: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        let store = embargo_server::store::Store::open(database).await?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let s = embargo_server::summary::summary(&store, now, staleness).await?;
        store.close().await;
        anyhow::Ok(s)
    });
    match result {
        Ok(s) if json => {
            println!("{}", serde_json::to_string_pretty(&s).expect("summary serializes"));
            ExitCode::SUCCESS
        }
        Ok(s) => {
            print!("{}", embargo_server::summary::to_text(&s, limit));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("embargo-server fleet: {e:#}");
            ExitCode::from(1)
        }
    }
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
    if let Some(Command::Fleet { database, json, limit, all, staleness }) = &args.command {
        return fleet_command(database, *json, (!*all).then_some(*limit), staleness.get());
    }
    let (Some(repo), Some(tls_cert), Some(tls_key)) = (args.repo.clone(), args.tls_cert.clone(), args.tls_key.clone())
    else {
        return usage("--repo, --tls-cert and --tls-key are required".into());
    };
    if !repo.join("root").is_dir() {
        return usage(format!("{}: not a repository (no root/ directory)", repo.display()));
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
    let tls = match embargo_server::tls_setup(&tls_cert, &tls_key, args.client_ca.as_deref(), args.admin_ca.as_deref())
    {
        Ok(t) => t,
        Err(e) => return usage(e.to_string()),
    };
    let signer = match &args.timestamp_key {
        None => None,
        Some(p) => match embargo_policy::keys::SigningKey::read(p) {
            Ok(key) => {
                let state = match &args.state {
                    Some(s) => s.clone(),
                    None => match embargo_policy::repo::default_signer_state(&repo) {
                        Ok(s) => s,
                        Err(e) => return usage(e.to_string()),
                    },
                };
                Some(embargo_server::TimestampSigner { key, ttl: args.timestamp_ttl, state })
            }
            Err(e) => return usage(e.to_string()),
        },
    };
    let admin_password = match &args.admin_password_file {
        None => None,
        Some(p) => match std::fs::read_to_string(p) {
            Ok(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Ok(_) => return usage(format!("{}: the admin password file is empty", p.display())),
            Err(e) => return usage(format!("{}: {e}", p.display())),
        },
    };
    if args.event_retention.is_zero() || args.event_max_per_device == 0 || args.event_prune_interval.is_zero() {
        return usage("--event-retention, --event-max-per-device and --event-prune-interval must be above zero".into());
    }
    let fleet_enabled = args.client_ca.is_some() || args.admin_ca.is_some() || args.database.is_some();
    let database = args.database.clone().unwrap_or_else(|| {
        let dir = repo.canonicalize().unwrap_or(repo.clone());
        let parent = dir.parent().map(|p| p.to_path_buf()).unwrap_or(dir);
        format!("sqlite://{}", parent.join("embargo-fleet.db").display())
    });
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("embargo-server: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen).await?;
        tracing::info!(addr = %listener.local_addr()?, repo = %repo.display(), "serving");
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        let fleet = if fleet_enabled {
            let store = embargo_server::store::Store::open(&database).await?;
            tracing::info!(database = %database.split('@').next_back().unwrap_or(""), "fleet store open");
            let mut fleet =
                embargo_server::web::Fleet::new(store, admin_password, args.staleness.get(), limits.body_timeout);
            fleet.retention = embargo_server::store::Retention {
                max_age: args.event_retention,
                max_per_device: args.event_max_per_device,
                every: args.event_prune_interval,
            };
            Some(std::sync::Arc::new(fleet))
        } else {
            None
        };
        let options = embargo_server::Options { repo: repo.clone(), limits, signer, fleet };
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
