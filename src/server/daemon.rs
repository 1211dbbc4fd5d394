//! The daemon as a library function, so tests run the real thing: [`start`] checks everything that can be
//! checked and binds its sockets (so a port clash or a bad secret fails the start, not the first webhook), and
//! [`Daemon::serve`] runs the HTTP server, the control socket and one worker per app until `shutdown`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::watch;

use crate::config::Config;
use crate::deploy::queue::Queue;
use crate::infra::lock::{self, FileLock};
use crate::model;
use crate::ops::systemd;
use crate::server::control;
use crate::server::http::{self, HttpState};
use crate::server::liveness::health_loop;
use crate::server::runtime::{self, Runtime};
use crate::store;

pub struct Daemon {
    pub addr: SocketAddr,
    listener: tokio::net::TcpListener,
    control: tokio::net::UnixListener,
    queue: Arc<Queue>,
    http: Arc<HttpState>,
    /// With `[fleet]`: the agent (heartbeats, conductor leases).
    fleet: Option<crate::fleet::AgentHandle>,
    /// How long a running deploy may go on after a stop is asked for, before its process group is killed (it
    /// is then recorded as interrupted at the next start).
    stop_grace: Duration,
    notify_rx: tokio::sync::mpsc::UnboundedReceiver<crate::model::event::Event>,
    cfg: Config,
    _instance: FileLock,
}

/// Prepares the state dir, takes the single-instance lock, loads secrets and binds the sockets.
pub async fn start(cfg: Config) -> anyhow::Result<Daemon> {
    let dirs = runtime::prepare_dirs(&cfg).map_err(anyhow::Error::msg)?;
    let lock_path = dirs.instance_lock();
    let Some(instance) =
        lock::try_lock(&lock_path).with_context(|| format!("cannot lock {}", lock_path.display()))?
    else {
        bail!(
            "another haul daemon is already running with state_dir {}; stop it first (or give this one its own state_dir)",
            cfg.state_dir.display()
        );
    };
    // A private key others can read, a missing known_hosts or verify key, an unreadable secret: refused here,
    // not in the middle of a deploy, and exactly what `haul check` reports.
    let secrets = crate::config::preflight(&cfg).map_err(|problems| {
        anyhow::anyhow!(
            "{} problem(s) in {}; nothing was started (`haul check` lists them too):\n  {}",
            problems.len(),
            cfg.path.display(),
            problems.join("\n  ")
        )
    })?;
    let Runtime { mut env, notify_rx } = Runtime::open(&cfg)?;
    let now = model::now_ms();
    env.store
        .call(move |c| store::prune_deliveries(c, now, store::REPLAY_MEMORY_MS))
        .await?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (listen)", cfg.listen))?;
    let addr = listener.local_addr()?;
    let control = control::bind(&dirs.socket())
        .with_context(|| format!("cannot create the control socket {}", dirs.socket().display()))?;
    let fleet = crate::server::fleet::start(&cfg, &mut env, &secrets);
    let queue = Queue::new(env);
    let fleet = fleet.map(|(agent, cell)| {
        let _ = cell.set(queue.clone());
        agent
    });
    let mut http = HttpState::new(&cfg, queue.clone(), secrets);
    http.fleet = fleet.clone();
    let http = Arc::new(http);
    Ok(Daemon {
        addr,
        listener,
        control,
        queue,
        http,
        fleet,
        stop_grace: cfg.stop_grace,
        notify_rx,
        cfg,
        _instance: instance,
    })
}

impl Daemon {
    /// Serves until `shutdown` resolves: then stops accepting, lets running deploys finish within
    /// `stop_grace`, and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Notifications first, so recovery's "interrupted" events are told.
        let notifier = self.queue.env().notifier.clone();
        // Delivery goes on until the workers are done, so a deploy that ends during the grace is still told.
        let (workers_done_tx, workers_done_rx) = watch::channel(false);
        let notify_tasks = match notifier {
            Some(n) => crate::ops::notify::spawn(
                &self.cfg,
                self.queue.env().store.clone(),
                n,
                self.notify_rx,
                stop_rx.clone(),
                workers_done_rx,
            ),
            None => Vec::new(),
        };
        // Commit statuses: read from the audit log, so they need nothing from the workers.
        let report_task =
            crate::ops::report::spawn(&self.cfg, self.queue.env().store.clone(), stop_rx.clone());
        let mut workers = self.queue.spawn_workers(stop_rx.clone());
        workers.extend(crate::server::poll::spawn(self.queue.clone(), stop_rx.clone()));
        let control = tokio::spawn(control::serve(self.control, self.queue.clone(), stop_rx.clone()));
        tracing::info!(
            "haul listening on http://{} ({} app(s))",
            self.addr,
            self.queue.env().apps.len()
        );
        let liveness = self.http.liveness.clone();
        let server = tokio::spawn(http::serve(self.listener, self.http, stop_rx.clone()));
        systemd::notify(&format!(
            "READY=1\nSTATUS=serving {} app(s) on {}",
            self.queue.env().apps.len(),
            self.addr
        ));
        liveness.watch(
            self.queue.clone(),
            workers.iter().map(|w| w.abort_handle()).collect(),
        );
        let health = systemd::watchdog_interval()
            .map(|every| tokio::spawn(health_loop(liveness, every, stop_rx.clone())));
        shutdown.await;
        systemd::notify("STOPPING=1\nSTATUS=stopping: waiting for running deploys");
        tracing::info!(
            "stopping: no new requests; waiting up to {:.0}s for running deploys",
            self.stop_grace.as_secs_f64()
        );
        let _ = stop_tx.send(true);
        let _ = control.await;
        if let Some(h) = health {
            let _ = h.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        // One deadline for all: a running deploy may finish within the grace; then it is cancelled, which kills
        // its step's process group, and the next start records it as interrupted.
        let deadline = tokio::time::Instant::now() + self.stop_grace;
        for w in workers {
            let abort = w.abort_handle();
            if tokio::time::timeout_at(deadline, w).await.is_err() {
                tracing::warn!("a deploy was still running after the grace period; stopping it");
                abort.abort();
            }
        }
        let _ = workers_done_tx.send(true);
        // Give up this host's conductor leases, so another host takes over within a second.
        if let Some(f) = &self.fleet {
            f.stop().await;
        }
        // Let notifications already on their way go out (bounded: a target that hangs is not waited for).
        for t in notify_tasks.into_iter().chain(report_task) {
            let _ = tokio::time::timeout(Duration::from_secs(6), t).await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// `haul serve`: start and serve until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let daemon = start(cfg).await?;
    daemon.serve(shutdown_signal()).await
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::deploy::testkit::parse_in;
    use crate::infra::scratch::TestDir;

    fn private(path: &std::path::Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    /// Regression: the daemon's start checked keys and secrets but neither `known_hosts` nor the `verify` key
    /// files, which `haul check` did; a missing one failed the first deploy instead of the start.
    #[tokio::test]
    async fn regression_the_daemon_refuses_what_haul_check_refuses() {
        let dir = TestDir::new("haul-preflight");
        private(&dir.path("key"), "not really a key");
        private(&dir.path("secret"), "a webhook secret that is long enough");
        std::fs::write(dir.path("known_hosts"), "# no host keys yet\n").expect("write");
        let toml = r#"listen = "127.0.0.1:0"
[apps.blog]
repo = "git@github.com:acme/blog.git"
deploy_key = "key"
known_hosts = "known_hosts"
path = "srv/blog"
[apps.blog.webhook]
provider = "github"
secret_file = "secret"

[apps.worker]
url = "https://downloads.example/worker.tar.gz"
path = "srv/worker"
verify = { minisign_key = "missing.pub" }
"#;
        let cfg = parse_in(&dir.0, toml);
        let checked = crate::config::preflight(&cfg).expect_err("haul check finds problems");
        assert_eq!(checked.len(), 2, "{checked:?}");
        let err = match super::start(cfg).await {
            Ok(_) => panic!("the daemon started with an empty known_hosts and a missing verify key"),
            Err(e) => e.to_string(),
        };
        for problem in &checked {
            assert!(err.contains(problem.as_str()), "{err:?} does not say {problem:?}");
        }
        assert!(
            err.contains("known_hosts") && err.contains("verify.minisign_key"),
            "{err}"
        );
        assert!(
            !dir.path("state/haul.db").exists(),
            "nothing was started, not even the audit database"
        );
    }
}
