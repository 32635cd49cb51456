//! `embargoctl`: talks to embargod over its Unix socket. Thin: formats what the daemon says.
//! Exit codes: 0 ok (status: healthy), 1 failed (status: degraded), 3 daemon unreachable,
//! 4 permission denied, 64 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use embargo_agent::escape::{escape, escape_json};
use embargo_agent::proto::{Request, Response, Status};

/// Every text line goes through `emit` with its untrusted parts made visible (`escape`: a file
/// name cannot forge a line or send terminal codes); JSON goes through `print_json`.
macro_rules! println {
    ($($arg:tt)*) => {
        emit(&escape(&format!($($arg)*)))
    };
}

/// Writes one line to stdout. A closed stdout (`embargoctl … | head`) ends the program
/// normally (exit 0) instead of panicking; any other write error exits 1.
fn emit(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("embargoctl: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// JSON output: pretty or one line, with bidi and invisible characters in strings escaped.
fn print_json(v: &impl serde::Serialize, pretty: bool) {
    let text = if pretty { serde_json::to_string_pretty(v) } else { serde_json::to_string(v) }.expect("json");
    emit(&escape_json(&text));
}

#[derive(Parser)]
#[command(name = "embargoctl", version, about = "Query and control the embargo agent")]
struct Args {
    /// Control socket (default: `socket` of /etc/embargo/agent.toml, else /run/embargo/embargod.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Daemon, policy, sources, enforcement and quarantine at a glance (exit 0 healthy, 1 degraded, 3 unreachable).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Sync the policy now (root).
    Sync,
    /// Rescan every watched location now (root).
    Scan,
    /// Apps seen and their verdicts.
    Inventory {
        #[arg(long)]
        json: bool,
    },
    /// Identify PATH as the agent would and name the rule that would act on it.
    Check {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The quarantine store.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// The audit log (hash-chained, rotated by size).
    Events {
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
        /// Check the whole hash chain across the rotated files instead of listing (root; exit 1 if it breaks).
        #[arg(long, conflicts_with = "follow")]
        verify: bool,
    },
    /// Act on apps a policy update held back for exceeding the action cap (root).
    Confirm,
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// Quarantined items, oldest first (every page, or one page with --limit).
    List {
        #[arg(long)]
        json: bool,
        /// Show at most N items (one page; the daemon answers at most 500 at once).
        #[arg(long)]
        limit: Option<usize>,
        /// Start after the item with this id (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Put a quarantined file back where it was, or unsuspend a suspended Android app (root).
    Restore { id: String },
    /// Delete a quarantined file for good; a suspended Android app's entry only once the app is gone (root).
    Purge { id: String },
}

fn default_socket() -> PathBuf {
    std::fs::read_to_string(embargo_agent::config::DEFAULT_CONFIG)
        .ok()
        .and_then(|t| embargo_agent::Config::parse(embargo_agent::config::DEFAULT_CONFIG.as_ref(), &t).ok())
        .map(|c| c.socket)
        .unwrap_or_else(|| embargo_agent::config::DEFAULT_SOCKET.into())
}

fn main() -> ExitCode {
    let args = match embargo_policy::cli::parse_args::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let socket = args.socket.unwrap_or_else(default_socket);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let call = |req: Request, timeout: Duration| rt.block_on(embargo_agent::control::call(&socket, req, timeout));
    let short = Duration::from_secs(10);
    let result = match args.command {
        Command::Status { json } => match call(Request::Status, short) {
            Err(e) => {
                if json {
                    print_json(
                        &serde_json::json!({"schema_version": 1, "daemon": {"health": "unreachable"}, "error": e}),
                        false,
                    );
                }
                eprintln!("embargoctl: {}", escape(&e));
                return ExitCode::from(3);
            }
            Ok(r) => match decode::<Status>(r) {
                Err(code) => return code,
                Ok(s) => {
                    if json {
                        print_json(&s, true);
                    } else {
                        print_status(&s);
                    }
                    return ExitCode::from(if s.daemon.health == "healthy" { 0 } else { 1 });
                }
            },
        },
        Command::Sync => call(Request::Sync, Duration::from_secs(180)),
        Command::Scan => call(Request::Scan, Duration::from_secs(600)),
        Command::Confirm => call(Request::Confirm, Duration::from_secs(600)),
        Command::Inventory { json } => {
            // Page by page (the daemon answers at most `INVENTORY_PAGE` entries at once).
            let mut apps: Vec<serde_json::Value> = Vec::new();
            let mut offset = 0;
            let r = loop {
                let r = call(Request::Inventory { offset, limit: None }, short);
                let Ok(page) = &r else { break r };
                let next = page.result.as_ref().and_then(|v| v.get("next")).and_then(|n| n.as_u64());
                if let Some(list) = page.result.as_ref().and_then(|v| v.get("apps")).and_then(|a| a.as_array()) {
                    apps.extend(list.iter().cloned());
                }
                match next {
                    Some(n) if page.ok && n as usize > offset => offset = n as usize,
                    _ => {
                        let mut whole = r;
                        if let Ok(Response { result: Some(serde_json::Value::Object(o)), .. }) = &mut whole {
                            o.remove("next");
                            // Kept out of the inventory document (its format is strict); said
                            // on stderr instead.
                            if let Some(n) = o.remove("hidden").and_then(|h| h.as_u64()).filter(|n| *n > 0) {
                                eprintln!("embargoctl: {n} inventory entries of other users are not shown");
                            }
                            o.insert("apps".into(), serde_json::Value::Array(std::mem::take(&mut apps)));
                        }
                        break whole;
                    }
                }
            };
            return show(r, |v| {
                if json {
                    print_json(v, true);
                } else {
                    let inv: embargo_policy::inventory::Inventory = serde_json::from_value(v.clone())
                        .unwrap_or(embargo_policy::inventory::Inventory { schema_version: 1, apps: vec![] });
                    println!("{:<9} {:<36} {:<16} {:<30} {:<34} PATH", "KIND", "ID", "VERSION", "PUBLISHER", "VERDICT");
                    for e in &inv.apps {
                        let verdict = e
                            .verdict
                            .as_ref()
                            .map(|v| format!("{} ({}, {})", v.action, v.rule, v.strength))
                            .unwrap_or_else(|| "allowed".into());
                        println!(
                            "{:<9} {:<36} {:<16} {:<30} {:<34} {}",
                            e.app.kind,
                            e.app.id,
                            e.app.version.as_deref().unwrap_or("-"),
                            e.app.publisher.as_deref().unwrap_or("-"),
                            verdict,
                            e.app.paths.first().map(String::as_str).unwrap_or("")
                        );
                    }
                    println!("{} apps", inv.apps.len());
                }
            });
        }
        Command::Check { path, json } => {
            let app = match identify(&path) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("embargoctl: {}: {}", escape(&path.display().to_string()), escape(&e));
                    return ExitCode::from(1);
                }
            };
            let r = call(Request::Evaluate { app: app.clone() }, short);
            return show(r, |v| {
                if json {
                    print_json(&serde_json::json!({"app": app, "verdicts": v}), false);
                } else {
                    println!(
                        "{} {} (name {:?}, sha256 {})",
                        app.kind,
                        app.id,
                        app.name.as_deref().unwrap_or(""),
                        app.sha256.as_deref().unwrap_or("-")
                    );
                    if let Some(v) = &app.version {
                        println!("  version {}", escape(v));
                    }
                    for s in &app.signers {
                        println!("  signer {}", escape(s));
                    }
                    match v.as_array().and_then(|a| a.first()) {
                        None => println!("allowed: no rule applies"),
                        Some(top) => println!(
                            "{}: rule {} ({} match){}",
                            top["action"].as_str().unwrap_or("?"),
                            top["rule"].as_str().unwrap_or("?"),
                            top["strength"].as_str().unwrap_or("?"),
                            top["description"].as_str().map(|d| format!(" — {d}")).unwrap_or_default()
                        ),
                    }
                }
            });
        }
        Command::Quarantine { command } => match command {
            QuarantineCommand::List { json, limit, after } => {
                // Page by page (the daemon answers at most `QUARANTINE_PAGE` items at once).
                let mut items: Vec<serde_json::Value> = Vec::new();
                let mut after = after;
                let (next, hidden) = loop {
                    let want = limit.map(|l| l.saturating_sub(items.len()));
                    let r = call(Request::QuarantineList { after: after.clone(), limit: want }, short);
                    let v = match r {
                        Err(e) => {
                            eprintln!("embargoctl: {}", escape(&e));
                            return ExitCode::from(3);
                        }
                        Ok(r) => match decode::<serde_json::Value>(r) {
                            Ok(v) => v,
                            Err(code) => return code,
                        },
                    };
                    items.extend(v["items"].as_array().into_iter().flatten().cloned());
                    let hidden = v["hidden"].as_u64().unwrap_or(0);
                    let next = v["next"].as_str().map(str::to_owned);
                    match &next {
                        Some(n) if limit.is_none_or(|l| items.len() < l) && after.as_ref() != Some(n) => {
                            after = Some(n.clone())
                        }
                        _ => break (next, hidden),
                    }
                };
                if hidden > 0 {
                    eprintln!("embargoctl: {hidden} quarantined items of other users are not shown");
                }
                if let (Some(n), Some(_)) = (&next, limit) {
                    eprintln!("embargoctl: more items follow: --after {}", escape(n));
                }
                if json {
                    print_json(&items, true);
                } else {
                    for m in &items {
                        if let Some(s) = m.get("suspension").filter(|s| s.is_object()) {
                            // An Android app suspended through its package manager.
                            let users: Vec<String> = s["users"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|u| u.as_u64())
                                .map(|u| u.to_string())
                                .collect();
                            println!(
                                "{}  {}  rule {}  suspended {} for users {} ({})",
                                m["id"].as_str().unwrap_or(""),
                                m["quarantined_at"].as_str().unwrap_or(""),
                                m["rule"].as_str().unwrap_or(""),
                                s["package"].as_str().unwrap_or(""),
                                users.join(","),
                                s["state"].as_str().unwrap_or("")
                            );
                            continue;
                        }
                        println!(
                            "{}  {}  rule {}  {}  {}",
                            m["id"].as_str().unwrap_or(""),
                            m["quarantined_at"].as_str().unwrap_or(""),
                            m["rule"].as_str().unwrap_or(""),
                            m["sha256"].as_str().map(|s| &s[..s.len().min(12)]).unwrap_or(""),
                            m["original_path"].as_str().unwrap_or("")
                        );
                    }
                }
                return ExitCode::SUCCESS;
            }
            QuarantineCommand::Restore { id } => call(Request::QuarantineRestore { id }, short),
            QuarantineCommand::Purge { id } => call(Request::QuarantinePurge { id }, short),
        },
        Command::Events { verify: true, json, .. } => {
            // The daemon reads every rotated file for this, off its loop; it may take a while.
            let r = call(Request::EventsVerify, Duration::from_secs(600));
            let v = match r {
                Err(e) => {
                    eprintln!("embargoctl: {}", escape(&e));
                    return ExitCode::from(3);
                }
                Ok(r) => match decode::<serde_json::Value>(r) {
                    Ok(v) => v,
                    Err(code) => return code,
                },
            };
            let ok = v["chain_ok"] == true;
            if json {
                print_json(&v, true);
            } else if ok {
                let s = &v["summary"];
                println!(
                    "audit log chain verified: {} entries (seq {}..{}) in {} files{}",
                    s["entries"],
                    s["first_seq"],
                    s["last_seq"],
                    s["files"],
                    s["dropped_through"]
                        .as_u64()
                        .map(|d| format!("; entries 1..{d} were in rotated files deleted beyond audit_keep_files, as the chain records"))
                        .unwrap_or_default()
                );
            } else {
                println!("audit log chain BROKEN: {}", v["error"].as_str().unwrap_or("?"));
            }
            return ExitCode::from(if ok { 0 } else { 1 });
        }
        Command::Events { follow, json, .. } => {
            let mut since = 0;
            loop {
                let r = match call(Request::Events { since, limit: 1000 }, short) {
                    Err(e) => {
                        eprintln!("embargoctl: {}", escape(&e));
                        return ExitCode::from(3);
                    }
                    Ok(r) => r,
                };
                let v = match decode::<serde_json::Value>(r) {
                    Ok(v) => v,
                    Err(code) => return code,
                };
                for e in v["entries"].as_array().into_iter().flatten() {
                    since = since.max(e["seq"].as_u64().unwrap_or(0));
                    if json {
                        print_json(e, false);
                    } else {
                        println!("{:>6} {} {}", e["seq"], e["time"].as_str().unwrap_or(""), e["event"]);
                    }
                }
                // Entries the caller may not see still move the cursor on.
                since = since.max(v["next"].as_u64().unwrap_or(0));
                if v["more"] == true {
                    continue;
                }
                if !follow {
                    return ExitCode::SUCCESS;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };
    show(result, |v| print_json(v, true))
}

fn decode<T: serde::de::DeserializeOwned>(r: Response) -> Result<T, ExitCode> {
    if !r.ok {
        eprintln!("embargoctl: {}", escape(&r.error.unwrap_or_default()));
        return Err(ExitCode::from(if r.code.as_deref() == Some("denied") { 4 } else { 1 }));
    }
    serde_json::from_value(r.result.unwrap_or_default()).map_err(|e| {
        eprintln!("embargoctl: unexpected reply: {e}");
        ExitCode::from(1)
    })
}

fn show(r: Result<Response, String>, print: impl FnOnce(&serde_json::Value)) -> ExitCode {
    match r {
        Err(e) => {
            eprintln!("embargoctl: {}", escape(&e));
            ExitCode::from(3)
        }
        Ok(r) => match decode::<serde_json::Value>(r) {
            Ok(v) => {
                print(&v);
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}

/// Identifies a file with the caller's own permissions, as the agent would.
fn identify(path: &std::path::Path) -> Result<embargo_policy::app::App, String> {
    use embargo_policy::rules::Kind;
    let abs = std::path::absolute(path).map_err(|e| e.to_string())?;
    let parent = abs.parent().ok_or("no parent directory")?;
    let name = abs.file_name().ok_or("no file name")?;
    let dir = embargo_agent::safefs::open_root(parent).map_err(|e| e.to_string())?;
    let (mut file, meta) = embargo_agent::safefs::open_file_beneath(&dir, name.as_ref()).map_err(|e| e.to_string())?;
    for kind in [Kind::Appimage, Kind::Desktop, Kind::File] {
        if let Some(app) = embargo_agent::identify::identify(kind, parent, name.as_ref(), &mut file, &meta)
            .map_err(|e| e.to_string())?
        {
            return Ok(app);
        }
    }
    Err("not identifiable".into())
}

fn print_status(s: &Status) {
    let d = &s.daemon;
    println!(
        "embargod {} (pid {}, up {}s) mode {} — {}",
        d.version,
        d.pid,
        d.uptime_secs,
        d.mode,
        d.health.to_uppercase()
    );
    for r in &d.reasons {
        println!("  ! {r}");
    }
    let p = &s.policy;
    println!(
        "policy   fleet {} · root v{} · policy {} ({} rules) · sha256 {}",
        p.fleet,
        p.root_version,
        p.policy_version.map(|v| format!("v{v}")).unwrap_or_else(|| "none".into()),
        p.rule_count,
        p.sha256.as_deref().map(|h| &h[..12]).unwrap_or("-")
    );
    println!(
        "         issued {} · expires {} · timestamp {} expires {}",
        p.issued.as_deref().unwrap_or("-"),
        p.expires.as_deref().unwrap_or("-"),
        p.timestamp_version.map(|v| format!("v{v}")).unwrap_or_else(|| "-".into()),
        p.timestamp_expires.as_deref().unwrap_or("-")
    );
    println!(
        "         repository {} · last sync {} · last attempt {}",
        p.repository,
        p.last_success.as_deref().unwrap_or("never"),
        p.last_attempt.as_deref().unwrap_or("never")
    );
    if let Some(e) = &p.last_error {
        println!("         last error [{}] {}", e.kind, e.message);
    }
    println!("sources");
    for src in &s.sources {
        println!("  {:<9} {:<45} {:>5} apps  {}", src.kind, src.path, src.apps_seen, src.watch);
    }
    let c = &s.enforcement.counters;
    println!(
        "enforcement  detected {} · quarantined {} · audited {} · restored {} · purged {} · failed {}",
        c.detected, c.quarantined, c.audited, c.restored, c.purged, c.failed
    );
    for a in s.enforcement.last_actions.iter().take(5) {
        println!(
            "  {} {} {} [{} / {} match] {} in {} µs",
            a.time, a.action, a.result, a.rule, a.strength, a.path, a.micros
        );
    }
    println!(
        "quarantine   {} items, {} bytes · pending confirmation {} · pending reports {}",
        s.quarantine.items, s.quarantine.bytes, s.pending.needs_confirmation, s.pending.reports
    );
    if let Some(g) = &s.exec_gate {
        println!(
            "exec gate    denied {} · allowed {} · cache hits {} · kernel-cached {} · deadline {} · queue full {} · spared {} · marks {} · processes killed {}",
            g.denied, g.allowed, g.cache_hits, g.kernel_cached, g.deadline, g.queue_full, g.spared, g.marks, c.processes_killed
        );
    }
    if let Some(r) = &s.pending.report {
        let accepted = match (r.last_accepted, r.last_accepted_at) {
            (Some(seq), Some(at)) => format!("seq {seq} at {}", embargo_policy::metadata::Time(at)),
            _ => "never".into(),
        };
        println!(
            "reports      pending {}{} · last accepted {accepted} · dropped {}{}",
            r.pending,
            r.oldest_pending.map(|s| format!(" (oldest seq {s})")).unwrap_or_default(),
            r.dropped,
            r.last_error.as_ref().map(|e| format!(" · last error: {e}")).unwrap_or_default()
        );
    }
}
