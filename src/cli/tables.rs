//! `haul status` and `haul history`: aligned, coloured tables on a terminal, plain when piped, and
//! `--json` for scripts (the rows here are the CLI's wire types).

use super::*;
use serde::Serialize;

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
    /// Automatic triggers held by a pause or a closed window.
    deferred: usize,
    /// Waiting for `haul approve`.
    awaiting_approval: usize,
    /// Waiting for CI (`gate = "ci"`).
    awaiting_ci: usize,
    /// Who paused the app, when and why (`haul pause`); none while it is not paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    paused: Option<store::Hold>,
    /// With deploy windows: closed now, why, and when it opens (Unix ms); none while open.
    #[serde(skip_serializing_if = "Option::is_none")]
    window_closed: Option<WindowClosed>,
}

#[derive(Serialize)]
struct WindowClosed {
    why: String,
    until: Option<i64>,
    until_text: Option<String>,
}

pub(super) fn status(cfg: &Config, json: bool) -> Result<(), Exit> {
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
            deferred: summary.deferred,
            awaiting_approval: summary.awaiting_approval,
            awaiting_ci: summary.awaiting_ci,
            paused: summary.hold.clone(),
            window_closed: app.windows.as_ref().and_then(|w| match w.state(model::now_ms()) {
                crate::config::WindowState::Open => None,
                crate::config::WindowState::Closed { until, why } => Some(WindowClosed {
                    why,
                    until: until.map(|t| t.as_millisecond()),
                    until_text: until.map(|t| crate::config::shown_instant(t, w)),
                }),
            }),
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
                match (&r.running, r.queued, &r.paused) {
                    (_, _, Some(h)) => format!(
                        "PAUSED by {} {} ago{}{}",
                        h.actor,
                        model::age(now - h.since_ms),
                        h.reason.as_deref().map(|x| format!(" ({x})")).unwrap_or_default(),
                        if r.deferred > 0 { ", 1 deferred" } else { "" }
                    ),
                    (Some(id), q, None) => {
                        format!("running {id}{}", if q > 0 { ", 1 pending" } else { "" })
                    }
                    (None, 0, None) => "idle".into(),
                    (None, q, None) => format!("{q} pending"),
                } + &match (&r.window_closed, r.deferred) {
                    (Some(w), d) => format!(
                        ", window closed until {}{}",
                        w.until_text.as_deref().unwrap_or("(none within a year)"),
                        if d > 0 && r.paused.is_none() {
                            ", 1 deferred"
                        } else {
                            ""
                        }
                    ),
                    _ => String::new(),
                } + &if r.awaiting_approval > 0 {
                    format!(", 1 awaiting approval (`haul approve {}`)", r.app)
                } else {
                    String::new()
                } + if r.awaiting_ci > 0 { ", 1 awaiting CI" } else { "" },
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
        "running" | "queued" | "deferred" => "33",
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
pub(super) struct HistoryRow {
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
    #[serde(skip_serializing_if = "Option::is_none")]
    approved_by: Option<String>,
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
            approved_by: r.approved_by.clone(),
        }
    }
}

pub(super) fn history(cfg: &Config, app: Option<&str>, limit: usize, json: bool) -> Result<(), Exit> {
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
