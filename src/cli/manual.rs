//! `haul deploy` and `haul rollback`: through the running daemon's control socket, or, when none answers,
//! in this process under the same per-app lock, with the same queue, pipeline and notifications.

use super::*;

pub(super) async fn deploy(cfg: &Config, req: ControlRequest, no_follow: bool) -> Result<(), Exit> {
    cfg.app(req.app()).map_err(Exit::usage)?;
    // Validated here too, so a typo is a usage error before anything is asked of the daemon.
    let apps = queue::Env::app_map(cfg);
    req.to_request(&apps, "check").map_err(Exit::usage)?;
    match control::request(&dirs(cfg).socket(), &req)
        .await
        .map_err(Exit::failed)?
    {
        Some(reply) => queued(cfg, reply, no_follow).await,
        None => deploy_in_process(cfg, req, no_follow).await,
    }
}

/// `haul fleet deploy APP [--sha SHA]`: handed to the fleet through this host's running daemon, as a webhook
/// would be (one flow); never deployed on this host alone.
pub(super) async fn fleet_deploy(
    cfg: &Config,
    app: String,
    sha: Option<String>,
    no_follow: bool,
) -> Result<(), Exit> {
    fleet_config(cfg, Some(&app))?;
    let req = ControlRequest::Deploy {
        app: app.clone(),
        sha,
        local: false,
        override_window: false,
    };
    let apps = queue::Env::app_map(cfg);
    req.to_request(&apps, "check").map_err(Exit::usage)?;
    match control::request(&dirs(cfg).socket(), &req)
        .await
        .map_err(Exit::failed)?
    {
        Some(reply) => {
            queued(cfg, reply, no_follow).await?;
            eprintln!("follow the rollout with `haul fleet status {app} --watch`");
            Ok(())
        }
        None => Err(Exit::failed(format!(
            "no haul daemon runs on this host to hand the deploy of {app} to the fleet: start it (`haul serve`, or `systemctl start haul`), or deploy this host alone with `haul deploy {app} --local`"
        ))),
    }
}

/// `haul pause` and `haul resume`: through the running daemon (which wakes what a resume lets run), or,
/// without one, recorded here (with the same notifications) for the daemon to find when it starts.
pub(super) async fn hold(cfg: &Config, req: ControlRequest) -> Result<(), Exit> {
    if req.app() != "*" {
        cfg.app(req.app()).map_err(Exit::usage)?;
    }
    let message = match control::request(&dirs(cfg).socket(), &req)
        .await
        .map_err(Exit::failed)?
    {
        Some(reply) if reply.ok => reply.message.unwrap_or_default(),
        Some(reply) => {
            return Err(Exit::failed(
                reply.error.unwrap_or_else(|| "the daemon refused".into()),
            ))
        }
        None => {
            crate::server::runtime::prepare_dirs(cfg).map_err(Exit::failed)?;
            let Runtime { env, notify_rx } = Runtime::open(cfg)?;
            let (done_tx, done_rx) = tokio::sync::watch::channel(false);
            let delivery = crate::ops::notify::spawn_delivery(cfg, env.store.clone(), notify_rx, done_rx);
            let queue = queue::Queue::new(env);
            let said = match control::permitted(&req, &control::local_peer(), &queue).await {
                Ok(()) => control::hold(&req, &control::local_actor(), &queue).await,
                Err(why) => Err(why),
            };
            let _ = done_tx.send(true);
            drop(queue);
            let _ = delivery.await;
            format!(
                "{} (no daemon is running: recorded for when it starts)",
                said.map_err(Exit::failed)?
            )
        }
    };
    eprintln!("{message}");
    Ok(())
}

/// The daemon's answer to a deploy or rollback: followed to its end unless `no_follow`.
async fn queued(cfg: &Config, reply: control::ControlReply, no_follow: bool) -> Result<(), Exit> {
    let id = match (reply.ok, reply.deploy_id.as_deref().and_then(DeployId::parse)) {
        (true, Some(id)) => id,
        _ => {
            return Err(Exit::failed(
                reply
                    .error
                    .unwrap_or_else(|| "the daemon refused the request".into()),
            ))
        }
    };
    eprintln!("queued {id} on the running daemon");
    if no_follow {
        println!("{id}");
        return Ok(());
    }
    let row = follow(cfg, &id, true).await?;
    finish_line(&row)
}

/// No daemon: run the same pipeline here, under the same per-app lock.
/// SIGINT, SIGTERM or SIGHUP (a closed SSH session): the name of the one that came.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

async fn deploy_in_process(cfg: &Config, req: ControlRequest, no_follow: bool) -> Result<(), Exit> {
    eprintln!("no daemon is running; running it in this process");
    crate::server::runtime::prepare_dirs(cfg).map_err(Exit::failed)?;
    // Told like a daemon's deploy: the notification targets hear how it ended (and of anything `recover`
    // finds interrupted), before this command exits.
    let Runtime { env, notify_rx } = Runtime::open(cfg)?;
    let store = env.store.clone();
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let delivery = crate::ops::notify::spawn_delivery(cfg, store.clone(), notify_rx, done_rx);
    let told = || async {
        let _ = done_tx.send(true);
    };
    let app = req.app().to_string();
    let gatekeeper = queue::Queue::new(env.clone());
    control::permitted(&req, &control::local_peer(), &gatekeeper)
        .await
        .map_err(Exit::failed)?;
    drop(gatekeeper);
    let request = req
        .to_request(&env.apps, &control::local_actor())
        .map_err(Exit::usage)?;
    // What a killed daemon (or a killed `haul deploy`) left behind is cleaned up first, as a daemon's start
    // would: its step ended, its row interrupted, its half-built release removed.
    queue::recover(&env, &app).await.map_err(Exit::failed)?;
    let now = model::now_ms();
    let Enqueued::Recorded { id, .. } = store.call(move |c| store::enqueue(c, &request, now)).await? else {
        return Err(Exit::failed("the request was not recorded"));
    };
    if no_follow {
        println!("{id}");
    }
    // Follow our own log while the pipeline runs.
    let follower = {
        let cfg = cfg.clone();
        let id = id.clone();
        tokio::spawn(async move { follow(&cfg, &id, true).await })
    };
    let ran = tokio::select! {
        ran = queue::run_next(&env, &app) => ran.map_err(Exit::failed)?,
        signal = interrupted() => {
            // Dropping the deploy killed its step's process group; record it as a restart would.
            follower.abort();
            queue::recover(&env, &app).await.map_err(Exit::failed)?;
            told().await;
            drop(env);
            let _ = delivery.await;
            return Err(Exit::failed(format!(
                "{signal}: deploy {id} was interrupted; `current` points at a complete release (see `haul status`)"
            )));
        }
    };
    told().await;
    drop(env);
    let _ = delivery.await;
    let row = follower.await.map_err(|e| Exit::failed(e.to_string()))??;
    if ran.is_none() {
        return Err(Exit::failed("the request was taken by another haul process"));
    }
    finish_line(&row)
}

pub(super) fn finish_line(row: &DeployRow) -> Result<(), Exit> {
    let took = match (row.started_at, row.finished_at) {
        (Some(s), Some(f)) => format!(" in {:.1}s", (f - s) as f64 / 1000.0),
        _ => String::new(),
    };
    let reason = row.reason.as_deref().unwrap_or("");
    let color = std::io::stderr().is_terminal();
    let paint = |code: &str, s: &str| {
        if color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    if row.state == State::Forwarded {
        eprintln!(
            "{} {}: {reason} (deploy {}; `haul fleet status {}` shows the rollout)",
            paint("1;36", "handed to the fleet"),
            row.app,
            row.id,
            row.app
        );
        return Ok(());
    }
    if row.state == State::Succeeded {
        eprintln!(
            "{} {}: {reason}{took} (deploy {})",
            paint("1;32", "deployed"),
            row.app,
            row.id
        );
        Ok(())
    } else {
        eprintln!(
            "{} {}: {reason}{took} (deploy {}; full log: haul logs {})",
            paint("1;31", row.state.as_str()),
            row.app,
            row.id,
            row.id
        );
        Err(Exit {
            code: 1,
            message: String::new(),
        })
    }
}
