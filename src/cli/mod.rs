//! The command line: parses arguments, dispatches to the library, and maps every error to an exit code in one
//! place ([`main`]). Read commands work without a daemon: they read the audit database and the log files.

pub mod demo;
pub mod docs;
pub mod init;

use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::config::{self, Config};
use crate::deploy::queue;
use crate::deploy::release;
use crate::infra::state_dir::StateDir;
use crate::model::{self, DeployId, State};
use crate::server::control::{self, ControlRequest};
use crate::server::runtime::Runtime;
use crate::store::{self, DeployRow, Enqueued};

#[derive(Parser, Debug)]
#[command(
    name = "haul",
    version,
    about = "A pull-based deploy agent: production pulls, signed triggers, atomic releases, an audit trail."
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, global = true, env = "HAUL_CONFIG", default_value = config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: webhooks, control socket, one deploy worker per app.
    Serve,
    /// Deploy an app now (through the daemon if it runs, in-process otherwise).
    Deploy {
        app: String,
        /// A commit on the configured branch (default: the branch tip).
        #[arg(long)]
        sha: Option<String>,
        /// Queue it and print the deploy id without following the log.
        #[arg(long)]
        no_follow: bool,
    },
    /// Put an earlier release back (default: the one before the live one), with the same lock, audit and
    /// activate steps as a deploy.
    Rollback {
        app: String,
        /// A release id (see `haul status` / `haul history`) or a commit sha.
        #[arg(long)]
        to: Option<String>,
        /// Queue it and print the deploy id without following the log.
        #[arg(long)]
        no_follow: bool,
    },
    /// Every app: live release, sha, last outcome and its age, queue.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The audit log, newest first.
    History {
        app: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One deploy's log.
    Logs {
        deploy_id: String,
        /// The audit row and the log lines as JSON.
        #[arg(long, conflicts_with = "follow")]
        json: bool,
        /// Keep printing until the deploy finishes.
        #[arg(long, short)]
        follow: bool,
    },
    /// Validate the configuration, keys and secrets without starting anything.
    Check,
    /// Print a systemd unit for this configuration (Type=notify, watchdog, hardening).
    SystemdUnit {
        /// The user (and group) to run as.
        #[arg(long)]
        user: Option<String>,
        /// The haul binary's installed path (default: this binary).
        #[arg(long)]
        exe: Option<PathBuf>,
    },
    /// Set up a new app on this server: deploy key, webhook secret, config; prints what to paste where.
    Init {
        /// The app's name (letters, digits, '-', '_', '.'); its webhook URL is /hooks/APP.
        app: String,
        /// The repository, e.g. git@github.com:acme/blog.git.
        #[arg(long)]
        repo: String,
        /// The only branch deployed.
        #[arg(long, default_value = "main")]
        branch: String,
        /// The app's directory: releases/ and the `current` symlink [default: /srv/APP].
        #[arg(long)]
        path: Option<PathBuf>,
        /// Where the deploy key goes, as KEYS_DIR/APP [default: <config dir>/keys].
        #[arg(long)]
        keys_dir: Option<PathBuf>,
        /// Where the webhook secret goes, as SECRETS_DIR/APP [default: <config dir>/secrets].
        #[arg(long)]
        secrets_dir: Option<PathBuf>,
        /// haul's state directory (used only when a new config is written).
        #[arg(long, default_value = "/var/lib/haul")]
        state_dir: PathBuf,
        /// The address your forge reaches haul at (through your TLS proxy), e.g. https://deploy.example.com.
        #[arg(long)]
        public_url: String,
        /// How webhooks are signed.
        #[arg(long, default_value = "github",
              value_parser = ["github", "gitlab", "gitea", "forgejo", "bitbucket", "standard"])]
        provider: String,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `haul man | man -l -`.
    Man,
    /// A self-contained demo: a throw-away repo and config, a signed webhook, a release landing.
    Demo {
        /// Port for the demo daemon (default: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Exit after the first deploy instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
}

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

async fn dispatch(cli: Cli) -> Result<(), Exit> {
    // Commands that need no configuration (it may not exist yet).
    match cli.command {
        Command::Demo { port, once } => return crate::cli::demo::run(port, once).await.map_err(Exit::from),
        Command::Completions { shell } => {
            return crate::cli::docs::completions(shell, &mut std::io::stdout())
                .map_err(|e| Exit::failed(e.to_string()))
        }
        Command::Man => {
            return crate::cli::docs::man_page(&mut std::io::stdout())
                .map_err(|e| Exit::failed(e.to_string()))
        }
        Command::Init {
            app,
            repo,
            branch,
            path,
            keys_dir,
            secrets_dir,
            state_dir,
            public_url,
            provider,
        } => {
            let cfg_dir = cli
                .config
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            let opts = crate::cli::init::InitOptions {
                path: path.unwrap_or_else(|| PathBuf::from("/srv").join(&app)),
                keys_dir: keys_dir.unwrap_or_else(|| cfg_dir.join("keys")),
                secrets_dir: secrets_dir.unwrap_or_else(|| cfg_dir.join("secrets")),
                config: cli.config,
                app,
                repo,
                branch,
                state_dir,
                public_url,
                provider,
            };
            return crate::cli::init::run(opts).await.map_err(Exit::from);
        }
        _ => {}
    }
    let cfg = Config::load(&cli.config)?;
    match cli.command {
        Command::Serve => crate::server::daemon::run(cfg).await.map_err(Exit::from),
        Command::Deploy { app, sha, no_follow } => {
            deploy(&cfg, ControlRequest::Deploy { app, sha }, no_follow).await
        }
        Command::Rollback { app, to, no_follow } => {
            deploy(&cfg, ControlRequest::Rollback { app, to }, no_follow).await
        }
        Command::Status { json } => status(&cfg, json),
        Command::History { app, limit, json } => history(&cfg, app.as_deref(), limit, json),
        Command::Logs {
            deploy_id,
            follow,
            json,
        } => logs(&cfg, &deploy_id, follow, json).await,
        Command::Check => check(&cfg),
        Command::SystemdUnit { user, exe } => {
            let exe = exe
                .or_else(|| std::env::current_exe().ok())
                .unwrap_or_else(|| PathBuf::from("/usr/local/bin/haul"));
            print!("{}", crate::ops::systemd::unit(&cfg, &exe, user.as_deref()));
            Ok(())
        }
        Command::Demo { .. } | Command::Init { .. } | Command::Completions { .. } | Command::Man => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------------------
// deploy

/// Where this configuration keeps its state.
fn dirs(cfg: &Config) -> StateDir {
    StateDir::new(&cfg.state_dir)
}

async fn deploy(cfg: &Config, req: ControlRequest, no_follow: bool) -> Result<(), Exit> {
    cfg.app(req.app()).map_err(Exit::usage)?;
    // Validated here too, so a typo is a usage error before anything is asked of the daemon.
    let apps = queue::Env::app_map(cfg);
    req.to_request(&apps, "check").map_err(Exit::usage)?;
    match control::request(&dirs(cfg).socket(), &req)
        .await
        .map_err(Exit::failed)?
    {
        Some(reply) => {
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
        None => deploy_in_process(cfg, req, no_follow).await,
    }
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

fn finish_line(row: &DeployRow) -> Result<(), Exit> {
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

/// Prints a deploy's log as it grows until the deploy reaches a final state; follows the deploy that
/// superseded it, if any. Returns the final row.
async fn follow(cfg: &Config, id: &DeployId, pretty: bool) -> Result<DeployRow, Exit> {
    let mut id = id.clone();
    let color = pretty && std::io::stderr().is_terminal();
    loop {
        let path = dirs(cfg).log_of(&id);
        let mut started = None;
        let mut offset = 0u64;
        let mut partial = String::new();
        loop {
            let row = store::get(&store::open_read(&dirs(cfg).db())?, &id)?
                .ok_or_else(|| Exit::failed(format!("no deploy {id} in the audit log")))?;
            // Read what the log has now; if the deploy is final, this is the last read.
            if let Ok(mut f) = std::fs::File::open(&path) {
                if f.seek(SeekFrom::Start(offset)).is_ok() {
                    let mut buf = String::new();
                    if let Ok(n) = f.read_to_string(&mut buf) {
                        offset += n as u64;
                        partial.push_str(&buf);
                        while let Some(i) = partial.find('\n') {
                            let line: String = partial.drain(..=i).collect();
                            print_log_line(line.trim_end(), color, &mut started);
                        }
                    }
                }
            }
            if row.state == State::Superseded {
                if let Some(next) = row.superseded_by.clone() {
                    eprintln!("{id} was superseded by {next} before it started; following {next}");
                    id = next;
                    break;
                }
            }
            if row.state.is_final() {
                return Ok(row);
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
}

/// Prints one log line with the time elapsed since the deploy's first line (`+12s`), stages in bold.
fn print_log_line(line: &str, color: bool, start: &mut Option<std::time::SystemTime>) {
    let mut err = std::io::stderr().lock();
    // `2026-11-26T15:32:15Z ==> fetch ...`
    let (stamp, rest) = line.split_once(' ').unwrap_or(("", line));
    let at = humantime::parse_rfc3339(stamp).ok();
    let first = *start.get_or_insert_with(|| at.unwrap_or_else(std::time::SystemTime::now));
    let elapsed = at
        .and_then(|t| t.duration_since(first).ok())
        .map_or_else(String::new, |d| format!("+{}s", d.as_secs()));
    let _ = if !color {
        writeln!(err, "{elapsed:>5} {rest}")
    } else if rest.starts_with("==>") {
        writeln!(err, "\x1b[2m{elapsed:>5}\x1b[0m \x1b[1;36m{rest}\x1b[0m")
    } else {
        writeln!(err, "\x1b[2m{elapsed:>5}\x1b[0m {rest}")
    };
}

// ---------------------------------------------------------------------------------------------------------
// status, history, logs

/// `haul status --json`: the wire type.
#[derive(Serialize)]
struct AppStatus {
    app: String,
    live_release: Option<String>,
    live_sha: Option<String>,
    last_outcome: Option<String>,
    last_deploy_id: Option<String>,
    last_finished_at: Option<i64>,
    last_reason: Option<String>,
    running: Option<String>,
    queued: usize,
}

fn status(cfg: &Config, json: bool) -> Result<(), Exit> {
    let conn = store::open_read(&dirs(cfg).db()).ok();
    let mut rows = Vec::new();
    for app in cfg.apps.values() {
        let live = release::current(&app.path);
        let summary = match &conn {
            Some(c) => store::summary(c, &app.name)?,
            None => store::AppSummary::default(),
        };
        let live_sha = match (&conn, &live) {
            (Some(c), Some(r)) => store::release_sha(c, &app.name, r)?.sha,
            _ => None,
        };
        rows.push(AppStatus {
            app: app.name.clone(),
            live_release: live,
            live_sha,
            last_outcome: summary.last.as_ref().map(|r| r.state.to_string()),
            last_deploy_id: summary.last.as_ref().map(|r| r.id.to_string()),
            last_finished_at: summary.last.as_ref().and_then(|r| r.finished_at),
            last_reason: summary.last.as_ref().and_then(|r| r.reason.clone()),
            running: summary.running.as_ref().map(|r| r.id.to_string()),
            queued: summary.queued,
        });
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| Exit::failed(e.to_string()))?
        );
        return Ok(());
    }
    let now = model::now_ms();
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.app.clone(),
                r.live_release.clone().unwrap_or_else(|| "-".into()),
                r.live_sha
                    .as_deref()
                    .map(model::short_sha)
                    .unwrap_or("-")
                    .to_string(),
                r.last_outcome.clone().unwrap_or_else(|| "-".into()),
                r.last_finished_at
                    .map(|t| model::age(now - t))
                    .unwrap_or_else(|| "-".into()),
                match (&r.running, r.queued) {
                    (Some(id), q) => {
                        format!("running {id}{}", if q > 0 { ", 1 pending" } else { "" })
                    }
                    (None, 0) => "idle".into(),
                    (None, q) => format!("{q} pending"),
                },
            ]
        })
        .collect();
    print_table(&["APP", "LIVE RELEASE", "SHA", "LAST", "AGE", "QUEUE"], &table, 3);
    Ok(())
}

fn state_color(s: &str) -> &'static str {
    match s {
        "succeeded" => "32",
        "failed" | "rolled_back" | "interrupted" => "31",
        "running" | "queued" => "33",
        _ => "2",
    }
}

/// Aligned columns; on a terminal, the `outcome_col` column is coloured by outcome.
fn print_table(header: &[&str], rows: &[Vec<String>], outcome_col: usize) {
    let color = std::io::stdout().is_terminal();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let last = header.len() - 1;
    let mut out = std::io::stdout().lock();
    let head: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, h)| {
            if i == last {
                h.to_string()
            } else {
                format!("{h:<w$}", w = widths[i])
            }
        })
        .collect();
    let head = head.join("  ");
    let _ = if color {
        writeln!(out, "\x1b[1m{head}\x1b[0m")
    } else {
        writeln!(out, "{head}")
    };
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let padded = if i == last {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                };
                if color && i == outcome_col {
                    format!("\x1b[{}m{padded}\x1b[0m", state_color(c))
                } else {
                    padded
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  "));
    }
}

/// `haul history --json`: the wire type.
#[derive(Serialize)]
struct HistoryRow {
    deploy_id: String,
    app: String,
    trigger: String,
    provider: Option<String>,
    delivery_id: Option<String>,
    git_ref: Option<String>,
    sha: Option<String>,
    actor: String,
    outcome: String,
    reason: Option<String>,
    release_id: Option<String>,
    previous_sha: Option<String>,
    superseded_by: Option<String>,
    requested_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
}

impl From<&DeployRow> for HistoryRow {
    fn from(r: &DeployRow) -> HistoryRow {
        HistoryRow {
            deploy_id: r.id.to_string(),
            app: r.app.clone(),
            trigger: r.trigger.as_str().into(),
            provider: r.provider.clone(),
            delivery_id: r.delivery_id.clone(),
            git_ref: r.git_ref.clone(),
            sha: r.sha.clone(),
            actor: r.actor.clone(),
            outcome: r.state.to_string(),
            reason: r.reason.clone(),
            release_id: r.release_id.clone(),
            previous_sha: r.previous_sha.clone(),
            superseded_by: r.superseded_by.as_ref().map(ToString::to_string),
            requested_at: r.requested_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

fn history(cfg: &Config, app: Option<&str>, limit: usize, json: bool) -> Result<(), Exit> {
    if let Some(a) = app {
        cfg.app(a).map_err(Exit::usage)?;
    }
    let conn = store::open_read(&dirs(cfg).db())?;
    let rows = store::history(&conn, app, limit)?;
    if json {
        let out: Vec<HistoryRow> = rows.iter().map(HistoryRow::from).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| Exit::failed(e.to_string()))?
        );
        return Ok(());
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let when = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(r.requested_at.max(0) as u64),
            )
            .to_string();
            let took = match (r.started_at, r.finished_at) {
                (Some(s), Some(f)) => format!("{:.1}s", (f - s) as f64 / 1000.0),
                _ => "-".into(),
            };
            vec![
                r.id.to_string(),
                r.app.clone(),
                r.trigger.as_str().into(),
                r.sha.as_deref().map(model::short_sha).unwrap_or("-").into(),
                r.actor.clone(),
                r.state.to_string(),
                when,
                took,
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "DEPLOY",
            "APP",
            "TRIGGER",
            "SHA",
            "ACTOR",
            "OUTCOME",
            "REQUESTED",
            "TOOK",
            "REASON",
        ],
        &table,
        5,
    );
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
    let problems = cfg.check_files();
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
                .map(|w| format!(", webhook {}", w.provider.as_str()))
                .unwrap_or_default()
        );
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
