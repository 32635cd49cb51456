//! `embargo-policy`: the admin tool. Thin: parses arguments and calls the library.
//! Exit codes: 0 success, 1 failure (verification, lint, I/O), 64 bad usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use embargo_policy::inventory::Inventory;
use embargo_policy::keys::SigningKey;
use embargo_policy::matcher::RuleSet;
use embargo_policy::metadata::Time;
use embargo_policy::repo::{self, RoleSpec};
use embargo_policy::trust::{TrustedState, UpdateOutcome};

#[derive(Parser)]
#[command(name = "embargo-policy", version, about = "Create, sign, publish and verify embargo policy repositories")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an Ed25519 key: FILE (private, mode 0600) and FILE.pub. The secret is never printed.
    Keygen { file: PathBuf },
    /// Create a repository with root v1.
    Init {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        fleet: String,
        /// Private root keys (all sign root v1).
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        root_threshold: u32,
        /// Timestamp keys (private or .pub).
        #[arg(long = "timestamp-key", required = true)]
        timestamp_keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        timestamp_threshold: u32,
        /// Policy keys (private or .pub).
        #[arg(long = "policy-key", required = true)]
        policy_keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        policy_threshold: u32,
        /// How long root v1 is valid.
        #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
        expires: Duration,
    },
    /// Publish root N+1, signed by a threshold of root N's keys and of its own.
    RotateRoot {
        #[arg(long)]
        repo: PathBuf,
        /// Private keys of the current root.
        #[arg(long = "old-root-key", required = true)]
        old_root_keys: Vec<PathBuf>,
        /// Private keys of the new root (they sign it too).
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        root_threshold: u32,
        /// New timestamp keys; omitted: unchanged.
        #[arg(long = "timestamp-key")]
        timestamp_keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        timestamp_threshold: u32,
        /// New policy keys; omitted: unchanged.
        #[arg(long = "policy-key")]
        policy_keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        policy_threshold: u32,
        #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
        expires: Duration,
    },
    /// Sign a TOML policy and publish it as policy/<sha256>.json.
    Sign {
        #[arg(long)]
        repo: PathBuf,
        /// Private policy keys.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Override the version (default: the TOML's, else the newest published + 1).
        #[arg(long)]
        version: Option<u64>,
        policy: PathBuf,
    },
    /// Re-sign timestamp.json to point at the newest policy.
    Timestamp {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
        expires: Duration,
        /// The signer's state file (last version signed, pinned root); default: beside the
        /// repository directory, REPO.timestamp-state.json.
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Verify a repository (directory or https:// URL) exactly as the agent does.
    Verify {
        /// Repository directory, file:// URL or https:// URL.
        repo: String,
        /// The trust anchor (a root.json shipped to devices).
        #[arg(long)]
        root: PathBuf,
        /// Trust only this CA for https.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Evaluate expiry at this time (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<String>,
    },
    /// Check TOML policies; errors are printed as file:line:col: message.
    Lint {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show which apps of an inventory (embargoctl inventory --json) a TOML policy would act on.
    Impact {
        #[arg(long)]
        inventory: PathBuf,
        policy: PathBuf,
        /// Device tags to evaluate tagged rules with.
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of the formats.
    Schema,
    /// Turn the policy into an MDM's or peer tool's own format; what cannot be carried over is
    /// reported on stderr (see docs/export.md).
    Export(ExportArgs),
}

#[derive(clap::Args)]
struct ExportArgs {
    #[arg(long, value_enum)]
    format: embargo_policy::export::Format,
    /// A repository (directory, file:// or https:// URL), verified as the agent verifies it.
    #[arg(long, requires = "root", conflicts_with = "policy")]
    repo: Option<String>,
    /// The trust anchor the repository is verified against.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Trust only this CA for https.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// An unsigned TOML policy source, for review before signing.
    #[arg(required_unless_present = "repo")]
    policy: Option<PathBuf>,
    /// The fleet to record for a TOML source (and to derive Apple identifiers from).
    #[arg(long, conflicts_with = "repo")]
    fleet: Option<String>,
    /// `embargoctl inventory --json` output: resolves matchers the format cannot express.
    #[arg(long)]
    inventory: Option<PathBuf>,
    /// Export the rules that apply to devices carrying this tag.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// apple-mdm: the profile's PayloadIdentifier (default embargo.<fleet>.banned-apps).
    #[arg(long)]
    payload_identifier: Option<String>,
    /// Exit 2 without writing anything when a matcher could not be exported.
    #[arg(long)]
    strict: bool,
    /// Write here instead of stdout.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = match embargo_policy::cli::parse_args::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("embargo-policy: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn private_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<SigningKey>> {
    paths.iter().map(|p| SigningKey::read(p).map_err(anyhow::Error::from)).collect()
}

fn role(paths: &[PathBuf], threshold: u32) -> anyhow::Result<RoleSpec> {
    let keys = paths.iter().map(|p| repo::read_public(p)).collect::<Result<Vec<_>, _>>()?;
    Ok(RoleSpec { keys, threshold })
}

fn read_source(path: &Path) -> anyhow::Result<embargo_policy::authoring::PolicySource> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    embargo_policy::authoring::parse(&path.display().to_string(), &text).map_err(|diags| {
        for d in &diags {
            eprintln!("{d}");
        }
        anyhow::anyhow!("{}: {} problem(s)", path.display(), diags.len())
    })
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    let now = Time::now();
    match command {
        Command::Keygen { file } => {
            let public = repo::keygen(&file)?;
            println!("keyid {}", public.keyid());
            println!("private key: {} (mode 0600)", file.display());
            println!("public key:  {}.pub", file.display());
        }
        Command::Init {
            repo: dir,
            fleet,
            root_keys,
            root_threshold,
            timestamp_keys,
            timestamp_threshold,
            policy_keys,
            policy_threshold,
            expires,
        } => {
            let roots = private_keys(&root_keys)?;
            let refs: Vec<&SigningKey> = roots.iter().collect();
            repo::init(
                &dir,
                &fleet,
                &refs,
                root_threshold,
                &role(&timestamp_keys, timestamp_threshold)?,
                &role(&policy_keys, policy_threshold)?,
                expires,
                now,
            )?;
            println!("created {} (fleet {fleet}, root v1)", dir.join("root/1.json").display());
            println!("ship root/1.json to devices as their trust anchor (/etc/embargo/root.json)");
        }
        Command::RotateRoot {
            repo: dir,
            old_root_keys,
            root_keys,
            root_threshold,
            timestamp_keys,
            timestamp_threshold,
            policy_keys,
            policy_threshold,
            expires,
        } => {
            let old = private_keys(&old_root_keys)?;
            let new = private_keys(&root_keys)?;
            let ts = if timestamp_keys.is_empty() { None } else { Some(role(&timestamp_keys, timestamp_threshold)?) };
            let pol = if policy_keys.is_empty() { None } else { Some(role(&policy_keys, policy_threshold)?) };
            let v = repo::rotate_root(
                &dir,
                &old.iter().collect::<Vec<_>>(),
                &new.iter().collect::<Vec<_>>(),
                root_threshold,
                ts.as_ref(),
                pol.as_ref(),
                expires,
                now,
            )?;
            println!("published root v{v}");
        }
        Command::Sign { repo: dir, keys, version, policy } => {
            let mut source = read_source(&policy)?;
            if version.is_some() {
                source.version = version;
            }
            let keys = private_keys(&keys)?;
            let p = repo::sign_policy(&dir, source, &keys.iter().collect::<Vec<_>>(), now)?;
            println!("published policy v{} -> {} ({} bytes)", p.version, p.path.display(), p.length);
            println!("run `embargo-policy timestamp` to make devices pick it up");
        }
        Command::Timestamp { repo: dir, keys, expires, state } => {
            let keys = private_keys(&keys)?;
            let state = match state {
                Some(s) => s,
                None => repo::default_signer_state(&dir)?,
            };
            let ts = repo::timestamp_with_state(&dir, &state, &keys.iter().collect::<Vec<_>>(), None, expires, now)?;
            println!(
                "timestamp v{} -> policy v{} ({}), expires {}",
                ts.version, ts.policy.version, ts.policy.sha256, ts.expires
            );
        }
        Command::Verify { repo: location, root, ca, at } => {
            let anchor = std::fs::read(&root).with_context(|| root.display().to_string())?;
            let mut state = TrustedState::from_anchor(&anchor)?;
            let at = match at {
                Some(t) => Time::parse(&t).map_err(anyhow::Error::msg)?,
                None => now,
            };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let result = if location.starts_with("https://") {
                let mut opts = embargo_policy::https::HttpsOptions::new(if location.ends_with('/') {
                    location.clone()
                } else {
                    format!("{location}/")
                });
                if let Some(ca) = ca {
                    opts.ca_pem = Some(std::fs::read(&ca).with_context(|| ca.display().to_string())?);
                }
                let t = embargo_policy::https::HttpsTransport::new(opts).map_err(anyhow::Error::msg)?;
                runtime.block_on(state.update(&t, at, &[]))
            } else if location.contains("://") && !location.starts_with("file://") {
                bail!("{location}: only https:// and file:// repositories are supported");
            } else {
                let dir = location.strip_prefix("file://").unwrap_or(&location);
                let t = embargo_policy::transport::FileTransport::new(dir);
                runtime.block_on(state.update(&t, at, &[]))
            };
            match result {
                Ok(outcome) => {
                    let p = state.policy().expect("a successful first update trusts a policy");
                    let t = state.timestamp().expect("a successful update trusts a timestamp");
                    println!("OK: fleet {} root v{}", state.root().fleet, state.root().version);
                    println!("timestamp v{} expires {}", t.version, t.expires);
                    println!(
                        "policy v{} sha256 {} ({} rules) issued {} expires {}",
                        p.version, p.sha256, p.rule_count, p.issued, p.expires
                    );
                    if let UpdateOutcome::NewPolicy(rules) = outcome {
                        println!("compiled {} rules for a device without tags", rules.len());
                    }
                }
                Err(e) => {
                    eprintln!("verification FAILED [{}]: {e}", e.kind());
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Command::Lint { files } => {
            let mut bad = 0;
            for f in &files {
                match read_source(f) {
                    Ok(src) => println!("{}: ok ({} rules)", f.display(), src.rules.len()),
                    Err(_) => bad += 1,
                }
            }
            if bad > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Impact { inventory, policy, tags, json } => {
            let bytes = std::fs::read(&inventory).with_context(|| inventory.display().to_string())?;
            let inv = Inventory::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", inventory.display()))?;
            let set = RuleSet::compile(read_source(&policy)?.rules, &tags);
            let mut hits = Vec::new();
            for entry in &inv.apps {
                if let Some(v) = set.verdict(&entry.app) {
                    hits.push(embargo_policy::inventory::InventoryEntry {
                        app: entry.app.clone(),
                        verdict: Some(v.to_owned()),
                    });
                }
            }
            if json {
                let out = Inventory { schema_version: embargo_policy::inventory::INVENTORY_SCHEMA_VERSION, apps: hits };
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for h in &hits {
                    let v = h.verdict.as_ref().expect("hits carry verdicts");
                    println!(
                        "{:<10} {:<9} {:<6} {:<30} {} {}",
                        v.action,
                        h.app.kind,
                        v.strength,
                        h.app.id,
                        v.rule,
                        h.app.paths.first().map(String::as_str).unwrap_or("")
                    );
                }
                println!("{} of {} apps would be acted on", hits.len(), inv.apps.len());
            }
        }
        Command::Schema => println!("{}", serde_json::to_string_pretty(&embargo_policy::schema::schema())?),
        Command::Export(args) => return export(args, now),
    }
    Ok(ExitCode::SUCCESS)
}

fn export(a: ExportArgs, now: Time) -> anyhow::Result<ExitCode> {
    use embargo_policy::export::{self, ExportError};
    let read = |p: &Path| std::fs::read(p).with_context(|| p.display().to_string());
    let loaded = match (&a.repo, &a.policy) {
        (Some(location), _) => {
            let root = a.root.as_deref().expect("clap requires --root with --repo");
            let anchor = read(root)?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            if location.starts_with("https://") {
                let base = if location.ends_with('/') { location.clone() } else { format!("{location}/") };
                let mut opts = embargo_policy::https::HttpsOptions::new(base);
                if let Some(ca) = &a.ca {
                    opts.ca_pem = Some(read(ca)?);
                }
                let t = embargo_policy::https::HttpsTransport::new(opts).map_err(anyhow::Error::msg)?;
                runtime.block_on(export::load_verified(&t, &anchor, now))
            } else if location.contains("://") && !location.starts_with("file://") {
                bail!("{location}: only https:// and file:// repositories are supported");
            } else {
                let t =
                    embargo_policy::transport::FileTransport::new(location.strip_prefix("file://").unwrap_or(location));
                runtime.block_on(export::load_verified(&t, &anchor, now))
            }
        }
        (None, Some(path)) => export::load_toml(&path.display().to_string(), &read(path)?, a.fleet.clone()),
        (None, None) => unreachable!("clap requires a policy or --repo"),
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(e @ ExportError::Verification(_)) => {
            eprintln!("embargo-policy export: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let inventory = match &a.inventory {
        Some(p) => Some(Inventory::parse(&read(p)?).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?),
        None => None,
    };
    let opts = export::Options { inventory, tags: a.tags, payload_identifier: a.payload_identifier };
    let out = export::export(a.format, &loaded, &opts)?;
    eprint!("{}", out.report.render(a.format));
    if a.strict && out.report.lossy() {
        eprintln!(
            "embargo-policy export: --strict: {} matcher(s) could not be exported; nothing written",
            out.report.dropped.len()
        );
        return Ok(ExitCode::from(2));
    }
    match &a.output {
        Some(path) => std::fs::write(path, &out.bytes).with_context(|| path.display().to_string())?,
        None => std::io::Write::write_all(&mut std::io::stdout().lock(), &out.bytes)?,
    }
    Ok(ExitCode::SUCCESS)
}
