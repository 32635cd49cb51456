//! The demo device (`embargod --demo DIR`, the README's first command): generated keys, a
//! file:// repository signed with the example WeChat/Kaspersky policy, a home directory with
//! watched folders; then a banned WeChat AppImage and an allowed one are "installed", the banned
//! one is quarantined within milliseconds, `embargoctl status` is shown, and the agent keeps
//! enforcing until Ctrl-C. Everything lives under DIR; no root needed.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use embargo_policy::keys::SigningKey;
use embargo_policy::metadata::Time;
use embargo_policy::repo::{self, RoleSpec};

use crate::proto::{Request, Status};

const MARKER: &str = ".embargo-demo";

/// Writes a complete demo device under `dir` and returns the path of its agent.toml.
pub fn build(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    if dir.exists() {
        if !dir.join(MARKER).exists() && std::fs::read_dir(dir)?.next().is_some() {
            bail!("{} exists and is not a demo directory; refusing to touch it", dir.display());
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let dir = std::path::absolute(dir)?;
    for d in
        ["keys", "home/alice/Applications", "home/alice/Downloads", "home/alice/.local/share/applications", "staging"]
    {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::write(dir.join(MARKER), "created by embargod --demo\n")?;
    let now = Time::now();
    let (root, ts, pol) = (SigningKey::generate(), SigningKey::generate(), SigningKey::generate());
    for (k, name) in [(&root, "root.key"), (&ts, "timestamp.key"), (&pol, "policy.key")] {
        k.write_new(&dir.join("keys").join(name)).map_err(anyhow::Error::msg)?;
    }
    let repo_dir = dir.join("repo");
    let one = |k: &SigningKey| RoleSpec { keys: vec![k.public().clone()], threshold: 1 };
    repo::init(&repo_dir, "demo-fleet", &[&root], 1, &one(&ts), &one(&pol), Duration::from_secs(365 * 86400), now)?;
    let source = embargo_policy::authoring::parse(
        embargo_policy::example::WECHAT_KASPERSKY_FILE,
        embargo_policy::example::WECHAT_KASPERSKY_TOML,
    )
    .map_err(|d| anyhow::anyhow!("example policy: {d:?}"))?;
    repo::sign_policy(&repo_dir, source, &[&pol], now)?;
    repo::timestamp(&repo_dir, &[&ts], None, Duration::from_secs(86400), now)?;
    let cfg = format!(
        r#"# Demo device: everything under {d}
mode = "enforce"
state_dir = "state"
socket = "embargod.sock"

[policy]
repository = "file://{d}/repo"
root = "repo/root/1.json"
interval = "30s"

[[watch]]
kind = "appimage"
paths = ["{d}/home/*/Applications", "{d}/home/*/Downloads"]

[[watch]]
kind = "desktop"
paths = ["{d}/home/*/.local/share/applications"]
"#,
        d = dir.display()
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg)?;
    Ok(path)
}

async fn status(socket: &Path) -> Option<Status> {
    let r = crate::control::call(socket, Request::Status, Duration::from_secs(2)).await.ok()?;
    serde_json::from_value(r.result?).ok()
}

/// Installs `bytes` as `dest` the way installers do: written elsewhere, renamed into place.
fn install(staging: &Path, dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = staging.join(dest.file_name().context("file name")?);
    std::fs::write(&tmp, bytes)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

pub async fn run(dir: &Path, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    println!("== embargo demo device in {}", dir.display());
    let cfg_path = build(dir)?;
    let dir = std::path::absolute(dir)?;
    println!("   generated root, timestamp and policy keys        {}/keys/", dir.display());
    println!("   signed the example WeChat/Kaspersky policy into  file://{}/repo/", dir.display());
    println!("   agent config                                     {}", cfg_path.display());
    let cfg = crate::Config::load(&cfg_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let socket = cfg.socket.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut agent = tokio::spawn(crate::run(cfg, async {
        let _ = stop_rx.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = status(&socket).await {
            if s.policy.policy_version.is_some() && !s.sources.is_empty() {
                println!(
                    "== embargod is up: policy v{} verified ({} rules), watching {} folders",
                    s.policy.policy_version.unwrap_or(0),
                    s.policy.rule_count,
                    s.sources.len()
                );
                break;
            }
        }
        if agent.is_finished() || Instant::now() > deadline {
            let _ = stop_tx.send(());
            match agent.await {
                Ok(Err(e)) => bail!("the agent stopped: {e}"),
                _ => bail!("the agent did not come up within 20s"),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let home = dir.join("home/alice");
    let banned = home.join("Downloads/WeChat-x86_64.AppImage");
    let allowed = home.join("Applications/Firefox-x86_64.AppImage");
    println!("== alice installs Firefox-x86_64.AppImage into ~/Applications and downloads WeChat-x86_64.AppImage");
    install(&dir.join("staging"), &allowed, &crate::identify::fake_appimage(b"firefox payload"))?;
    let started = Instant::now();
    install(&dir.join("staging"), &banned, &crate::identify::fake_appimage(b"wechat payload"))?;
    while banned.exists() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    if banned.exists() {
        println!("!! WeChat was not quarantined within 10 s");
    } else {
        println!(
            "== WeChat-x86_64.AppImage quarantined {:.1} ms after it appeared (observed from outside the agent)",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    println!("   Firefox-x86_64.AppImage {}", if allowed.exists() { "left alone" } else { "MISSING" });
    // Let the allowed app be seen before showing status.
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("== embargoctl --socket {} status", socket.display());
    let ctl =
        std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("embargoctl"))).filter(|p| p.exists());
    match ctl {
        Some(ctl) => {
            let out = tokio::process::Command::new(ctl).arg("--socket").arg(&socket).arg("status").output().await?;
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
        None => println!("{}", serde_json::to_string_pretty(&status(&socket).await).unwrap_or_default()),
    }
    println!("== still enforcing: drop files into {}/home/*/Downloads or Applications; Ctrl-C to stop", dir.display());
    println!("   try: embargoctl --socket {} quarantine list", socket.display());
    tokio::select! {
        () = shutdown => {}
        r = &mut agent => return r.map_err(anyhow::Error::from)?.map_err(|e| anyhow::anyhow!("{e}")),
    }
    println!("== stopping");
    let _ = stop_tx.send(());
    agent.await?.map_err(|e| anyhow::anyhow!("{e}"))
}
