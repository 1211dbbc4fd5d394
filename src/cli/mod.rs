//! The command line: parses arguments, dispatches to the library, and maps every error to an exit code in one
//! place ([`main`]). Read commands work without a daemon: they read the audit database and the log files.

pub(crate) mod args;
pub(crate) mod demo;
mod demo_fleet;
pub(crate) mod docs;
mod follow;
pub(crate) mod init;
pub(crate) mod init_source;
mod manual;
mod tables;

pub use args::{Cli, Command};
use follow::follow;
use manual::deploy;
use tables::{history, status, HistoryRow};

use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::{self, Config};
use crate::deploy::queue;
use crate::deploy::release;
use crate::infra::state_dir::StateDir;
use crate::model::{self, DeployId, State};
use crate::server::control::{self, ControlRequest};
use crate::server::runtime::Runtime;
use crate::store::{self, DeployRow, Enqueued};

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl Exit {
    fn usage(m: impl Into<String>) -> Exit {
        Exit {
            code: 2,
            message: m.into(),
        }
    }
    fn failed(m: impl Into<String>) -> Exit {
        Exit {
            code: 1,
            message: m.into(),
        }
    }
}

impl From<anyhow::Error> for Exit {
    fn from(e: anyhow::Error) -> Exit {
        Exit {
            code: 1,
            message: format!("{e:#}"),
        }
    }
}

impl From<config::ConfigError> for Exit {
    fn from(e: config::ConfigError) -> Exit {
        Exit::usage(e.to_string())
    }
}

impl From<store::StoreError> for Exit {
    fn from(e: store::StoreError) -> Exit {
        Exit::failed(e.to_string())
    }
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    crate::infra::logging::init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("haul: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(()) => 0,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("haul: {}", e.message);
            }
            e.code
        }
    }
}

/// Where this configuration keeps its state.
fn dirs(cfg: &Config) -> StateDir {
    StateDir::new(&cfg.state_dir)
}

async fn dispatch(cli: Cli) -> Result<(), Exit> {
    // Commands that need no configuration (it may not exist yet).
    match cli.command {
        Command::Demo { port, once, fleet } => {
            return match fleet {
                Some(n) => crate::cli::demo_fleet::run(n, once).await,
                None => crate::cli::demo::run(port, once).await,
            }
            .map_err(Exit::from)
        }
        Command::Completions { shell } => {
            return crate::cli::docs::completions(shell, &mut std::io::stdout())
                .map_err(|e| Exit::failed(e.to_string()))
        }
        Command::Man => {
            return crate::cli::docs::man_page(&mut std::io::stdout())
                .map_err(|e| Exit::failed(e.to_string()))
        }
        Command::SystemdUnit { package: true, .. } => {
            print!("{}", crate::ops::systemd::package_unit());
            return Ok(());
        }
        Command::Init(init) => {
            let opts = crate::cli::init::InitOptions::from_args(*init, cli.config);
            return crate::cli::init::run(opts).await.map_err(Exit::from);
        }
        _ => {}
    }
    let cfg = Config::load(&cli.config)?;
    match cli.command {
        Command::Serve => crate::server::daemon::run(cfg).await.map_err(Exit::from),
        Command::Deploy {
            app,
            sha,
            local,
            override_window,
            no_follow,
        } => {
            let req = ControlRequest::Deploy {
                app,
                sha,
                local,
                override_window,
            };
            deploy(&cfg, req, no_follow).await
        }
        Command::Rollback { app, to, no_follow } => {
            deploy(&cfg, ControlRequest::Rollback { app, to }, no_follow).await
        }
        Command::Pause { app, all: _, reason } => {
            manual::hold(&cfg, ControlRequest::Pause { app, reason }).await
        }
        Command::Resume { app, all: _ } => manual::hold(&cfg, ControlRequest::Resume { app }).await,
        Command::Approve { app } => manual::hold(&cfg, ControlRequest::Approve { app }).await,
        Command::Reject { app } => manual::hold(&cfg, ControlRequest::Reject { app }).await,
        Command::Status { json } => status(&cfg, json),
        Command::History { app, limit, json } => history(&cfg, app.as_deref(), limit, json),
        Command::Logs {
            deploy_id,
            follow,
            json,
        } => logs(&cfg, &deploy_id, follow, json).await,
        Command::Check => check(&cfg),
        Command::Fleet { command } => match command {
            crate::cli::args::FleetCommand::Status { app, json, watch } => {
                fleet_status(&cfg, app.as_deref(), json, watch).await
            }
            crate::cli::args::FleetCommand::Abort { app } => fleet_steer(&cfg, &app, Steer::Abort).await,
            crate::cli::args::FleetCommand::Resume { app } => fleet_steer(&cfg, &app, Steer::Resume).await,
            crate::cli::args::FleetCommand::Rollback { app, no_follow } => {
                fleet_steer(&cfg, &app, Steer::Rollback { follow: !no_follow }).await
            }
            crate::cli::args::FleetCommand::Deploy { app, sha, no_follow } => {
                manual::fleet_deploy(&cfg, app, sha, no_follow).await
            }
        },
        Command::SystemdUnit { user, exe, .. } => {
            let exe = exe
                .or_else(|| std::env::current_exe().ok())
                .unwrap_or_else(|| PathBuf::from("/usr/local/bin/haul"));
            print!("{}", crate::ops::systemd::unit(&cfg, &exe, user.as_deref()));
            Ok(())
        }
        Command::Demo { .. } | Command::Init(_) | Command::Completions { .. } | Command::Man => Ok(()),
    }
}

/// `haul fleet status`: read straight from the engine (the daemon need not run on this host).
/// `[fleet]`, and (if named) a fleet app of it.
fn fleet_config<'c>(cfg: &'c Config, app: Option<&str>) -> Result<&'c crate::config::FleetConfig, Exit> {
    let Some(fc) = &cfg.fleet else {
        return Err(Exit::usage(format!(
            "{} has no [fleet] section: this host deploys on its own (see the README, Fleet)",
            cfg.path.display()
        )));
    };
    if let Some(a) = app {
        let known = cfg.app(a).map_err(Exit::usage)?;
        if known.fleet.is_none() {
            return Err(Exit::usage(format!(
                "app {a:?} is not a fleet app (set fleet = true in [apps.{a}])"
            )));
        }
    }
    Ok(fc)
}

async fn connect_engine(cfg: &Config, fc: &crate::config::FleetConfig) -> Result<crate::fleet::Engine, Exit> {
    crate::fleet::Engine::connect(fc).await.map_err(|e| {
        Exit::failed(format!(
            "{e}; check [fleet] nats in {} and that the engine runs",
            cfg.path.display()
        ))
    })
}

#[derive(Clone, Copy)]
enum Steer {
    Abort,
    Resume,
    Rollback { follow: bool },
}

/// `haul fleet abort APP` (halts the app's rollout), `haul fleet resume APP` (continues it from the wave it
/// halted in) or `haul fleet rollback APP` (the release before, handed to the conductor, followed until
/// the fleet has it), in the engine, naming who asked and from which host.
async fn fleet_steer(cfg: &Config, app: &str, steer: Steer) -> Result<(), Exit> {
    let fc = fleet_config(cfg, Some(app))?;
    let engine = connect_engine(cfg, fc).await?;
    let user = std::env::var("USER").unwrap_or_else(|_| "someone".into());
    let who = format!("{user} on {}", fc.host);
    let result = match steer {
        Steer::Abort => engine.abort(app, &who).await.map(|id| {
            eprintln!("rollout {id} of {app} halted: no further wave starts (`haul fleet status {app}`)");
        }),
        Steer::Resume => engine.resume(app, &who).await.map(|id| {
            eprintln!(
                "rollout {id} of {app} resumed from the wave it halted in (`haul fleet status {app} --watch`)"
            );
        }),
        Steer::Rollback { follow } => match engine.rollback(app, &user, &fc.host).await {
            Ok(plan) => {
                eprintln!(
                    "rollback of {app} handed to its conductor: rollout {} ({}) back to {}",
                    plan.rollout,
                    crate::model::short_sha(&plan.from_sha),
                    crate::model::short_sha(&plan.to_sha)
                );
                if follow {
                    follow_rollback(&engine, app, &plan).await
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(e),
        },
    };
    engine.close().await;
    let verb = match steer {
        Steer::Abort => "abort the rollout of",
        Steer::Resume => "resume the rollout of",
        Steer::Rollback { .. } => "roll back",
    };
    result.map_err(|e| Exit::failed(format!("cannot {verb} {app}: {e}")))
}

/// Follows a rollback until its rollout is done or halted, or the conductor refused it.
async fn follow_rollback(
    engine: &crate::fleet::Engine,
    app: &str,
    plan: &crate::fleet::RollbackPlan,
) -> Result<(), crate::fleet::FleetError> {
    let mine = format!("rollback of {} ", plan.rollout);
    let mut shown = String::new();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let Ok(status) = engine.status(Some(app)).await else {
            continue;
        };
        let Some(a) = status.apps.into_iter().next() else {
            continue;
        };
        let r = &a.rollout;
        if r.refused.as_deref().is_some_and(|x| x.contains(&plan.proposal)) {
            return Err(crate::fleet::FleetError::Refused(
                r.refused.clone().unwrap_or_default(),
            ));
        }
        let ours = r.sha.as_deref() == Some(plan.to_sha.as_str())
            && r.trigger.as_deref().is_some_and(|t| t.starts_with(&mine));
        if !ours {
            continue;
        }
        let phase = r.phase.clone().unwrap_or_default();
        let line = format!(
            "rollout {} to {}: {phase} (wave {}/{})",
            r.id.as_deref().unwrap_or("-"),
            crate::model::short_sha(&plan.to_sha),
            (r.wave + 1).min(r.waves),
            r.waves
        );
        if line != shown {
            eprintln!("{line}");
            shown = line;
        }
        match phase.as_str() {
            "done" => return Ok(()),
            "halted" => {
                return Err(crate::fleet::FleetError::Refused(format!(
                    "the rollback's rollout {} halted: {} (`haul fleet status {app}`)",
                    r.id.as_deref().unwrap_or("-"),
                    r.failures.join(", ")
                )))
            }
            _ => {}
        }
    }
}

async fn fleet_status(cfg: &Config, app: Option<&str>, json: bool, watch: bool) -> Result<(), Exit> {
    let fc = fleet_config(cfg, app)?;
    let engine = connect_engine(cfg, fc).await?;
    if watch {
        // Redrawn in place on a terminal; one frame after another when piped. A read that fails is shown,
        // and the next second tries again (the engine may be electing a leader).
        let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
        loop {
            let frame = match engine.status(app).await {
                Ok(s) => s.render(),
                Err(e) => format!("cannot read the fleet's status: {e}\n"),
            };
            let stamp = crate::model::compact_utc(crate::model::now_ms());
            if tty {
                print!("\x1b[H\x1b[2J");
            }
            print!("haul fleet status ({stamp}, every 1s; Ctrl-C to stop)\n{frame}\n");
            let _ = std::io::Write::flush(&mut std::io::stdout());
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
    // A one-shot read rides out a leader election (a few seconds at most): four tries, backing off with
    // jitter, and only for an engine that cannot answer; anything else is reported at once.
    let mut attempt = 0;
    let status = loop {
        match engine.status(app).await {
            Err(crate::fleet::FleetError::Unreachable(_)) if attempt < 3 => {
                attempt += 1;
                let wait = crate::model::failure::backoff(
                    attempt,
                    std::time::Duration::from_millis(250),
                    std::time::Duration::from_secs(2),
                );
                tokio::time::sleep(wait).await;
            }
            other => break other,
        }
    }
    .map_err(|e| {
        Exit::failed(format!(
            "cannot read the fleet's status: {e} (try again in a few seconds)"
        ))
    })?;
    engine.close().await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).map_err(|e| Exit::failed(e.to_string()))?
        );
    } else {
        print!("{}", status.render());
    }
    Ok(())
}

async fn logs(cfg: &Config, deploy_id: &str, follow_it: bool, json: bool) -> Result<(), Exit> {
    let id =
        DeployId::parse(deploy_id).ok_or_else(|| Exit::usage(format!("{deploy_id:?} is not a deploy id")))?;
    if follow_it {
        let row = follow(cfg, &id, false).await?;
        eprintln!("{}: {}", row.state, row.reason.as_deref().unwrap_or(""));
        return Ok(());
    }
    let path = dirs(cfg).log_of(&id);
    if json {
        let row = store::get(&store::open_read(&dirs(cfg).db())?, &id)?
            .ok_or_else(|| Exit::failed(format!("no deploy {id} in the audit log")))?;
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let out = serde_json::json!({
            "deploy": HistoryRow::from(&row),
            "log": log.lines().collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| Exit::failed(e.to_string()))?
        );
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Exit::failed(format!(
            "no log for {id} at {} ({e}); an ignored or superseded request never ran, so it has no log, and logs older than log_retention are deleted: see `haul history`",
            path.display()
        ))
    })?;
    print!("{text}");
    Ok(())
}

fn check(cfg: &Config) -> Result<(), Exit> {
    let problems = config::preflight(cfg).err().unwrap_or_default();
    println!("config {}: {} app(s)", cfg.path.display(), cfg.apps.len());
    for app in cfg.apps.values() {
        println!(
            "  {}: {} ({}) branch {} -> {}{}",
            app.name,
            app.repo,
            crate::sources::git::describe_transport(app),
            app.branch,
            app.path.display(),
            app.webhook
                .as_ref()
                .map(|w| match &w.repository {
                    Some(r) => format!(", webhook {} for {r}", w.provider.as_str()),
                    None => format!(", webhook {}", w.provider.as_str()),
                })
                .unwrap_or_default()
        );
        if let Some(r) = &app.report {
            println!(
                "    reports commit statuses to {} {} as {:?} ({}){}",
                r.provider,
                r.repository,
                r.context,
                r.api_url,
                if cfg.public_url.is_none() {
                    "; set public_url to link them to the status page"
                } else {
                    ""
                }
            );
        }
        // Who may do what to it over the control socket (root always may).
        for line in app.allow.describe(&cfg.allow) {
            println!("    may {line}");
        }
    }
    if problems.is_empty() {
        println!("ok");
        Ok(())
    } else {
        for p in &problems {
            println!("  problem: {p}");
        }
        Err(Exit::usage(format!(
            "{} problem(s) in {}",
            problems.len(),
            cfg.path.display()
        )))
    }
}
