//! The status page (`GET /`, `GET /deploys/<id>`): small, server-rendered HTML with no JavaScript and no build
//! step. Every app with its live release, sha, actor and age; a timeline of recent deploys coloured by outcome
//! with their durations; each deploy's log. Links are relative, so the page works behind a reverse proxy's
//! path prefix. It shows no secrets: no repository URLs, no configuration, only what the audit log and the
//! (already redacted) deploy logs say. `status_page = false` turns it off.

use std::fmt::Write;

use crate::model::State;
use crate::store::{AppSummary, DeployRow};

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn short(sha: Option<&str>) -> &str {
    sha.map_or("-", crate::model::short_sha)
}

fn age(now: i64, then: Option<i64>) -> String {
    then.map_or_else(|| "-".into(), |t| crate::model::age(now - t))
}

fn took(r: &DeployRow) -> String {
    match (r.started_at, r.finished_at) {
        (Some(s), Some(f)) => format!("{:.1}s", (f - s) as f64 / 1000.0),
        (Some(_), None) => "running".into(),
        _ => "-".into(),
    }
}

fn class(s: State) -> &'static str {
    match s {
        State::Succeeded => "ok",
        State::Failed | State::RolledBack | State::Interrupted => "bad",
        State::Running | State::Queued => "busy",
        State::Ignored | State::Superseded => "quiet",
    }
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;padding:0 1rem;color:#1d2330;background:#fafbfc}\
h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.05rem;margin:2rem 0 .6rem}.sub{color:#5b6475;margin:0 0 1.5rem}\
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #e3e6ea}th,td{text-align:left;padding:.45rem .6rem;border-bottom:1px solid #eef0f3;vertical-align:top}\
th{font-weight:600;font-size:.8rem;text-transform:uppercase;letter-spacing:.03em;color:#5b6475;background:#f4f6f8}\
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace}.pill{display:inline-block;padding:.05rem .5rem;border-radius:999px;font-size:.8rem;font-weight:600}\
.ok .pill,.pill.ok{background:#dcf5e3;color:#116329}.bad .pill,.pill.bad{background:#fde2e1;color:#a40e26}.busy .pill,.pill.busy{background:#fff4cc;color:#7a5b00}\
.quiet .pill,.pill.quiet{background:#eef0f3;color:#5b6475}tr.ok td:first-child{border-left:4px solid #2da44e}tr.bad td:first-child{border-left:4px solid #cf222e}\
tr.busy td:first-child{border-left:4px solid #d4a72c}tr.quiet td:first-child{border-left:4px solid #d0d7de}.reason{color:#3d4452;max-width:34rem}\
pre{background:#0f1419;color:#e6e1cf;padding:1rem;border-radius:6px;overflow-x:auto;font:12.5px/1.5 ui-monospace,Menlo,monospace}a{color:#0969da}";

fn head(title: &str, refresh: bool) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">{}<title>{}</title><style>{STYLE}</style></head><body>",
        if refresh { "<meta http-equiv=\"refresh\" content=\"10\">" } else { "" },
        esc(title)
    )
}

/// One app's line on the page.
pub struct AppView {
    pub name: String,
    pub live_release: Option<String>,
    pub live: Option<DeployRow>,
    pub summary: AppSummary,
}

/// `GET /`.
pub fn index(host: &str, apps: &[AppView], recent: &[DeployRow], now: i64) -> String {
    let mut h = head(&format!("haul · {host}"), true);
    let _ = write!(
        h,
        "<h1>haul on {}</h1><p class=\"sub\">{} app(s) · refreshed every 10s</p>",
        esc(host),
        apps.len()
    );
    h.push_str("<h2>Apps</h2><table><tr><th>App</th><th>Live release</th><th>Sha</th><th>Deployed by</th><th>Live since</th><th>Last outcome</th><th>Queue</th></tr>");
    for a in apps {
        let last = a.summary.last.as_ref();
        let cls = last.map_or("quiet", |r| class(r.state));
        let queue = match (&a.summary.running, a.summary.queued) {
            (Some(r), q) => format!(
                "running <a href=\"deploys/{0}\">{0}</a>{1}",
                esc(r.id.as_str()),
                if q > 0 { ", 1 pending" } else { "" }
            ),
            (None, 0) => "idle".into(),
            (None, q) => format!("{q} pending"),
        };
        let _ = write!(
            h,
            "<tr class=\"{cls}\"><td><strong>{}</strong></td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{queue}</td></tr>",
            esc(&a.name),
            esc(a.live_release.as_deref().unwrap_or("none yet")),
            esc(short(a.live.as_ref().and_then(|r| r.sha.as_deref()))),
            esc(a.live.as_ref().map_or("-", |r| r.actor.as_str())),
            age(now, a.live.as_ref().and_then(|r| r.finished_at)),
            last.map_or_else(
                || "-".to_string(),
                |r| format!("<a href=\"deploys/{}\"><span class=\"pill {cls}\">{}</span></a> {}", esc(r.id.as_str()), r.state, age(now, r.finished_at))
            ),
        );
    }
    h.push_str("</table><h2>Recent deploys</h2><table><tr><th>When</th><th>App</th><th>Outcome</th><th>Sha</th><th>Trigger</th><th>Actor</th><th>Took</th><th>Why</th></tr>");
    for r in recent {
        let cls = class(r.state);
        let _ = write!(
            h,
            "<tr class=\"{cls}\"><td><a href=\"deploys/{id}\">{when}</a></td><td>{}</td><td><span class=\"pill {cls}\">{}</span></td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"reason\">{}</td></tr>",
            esc(&r.app),
            r.state,
            esc(short(r.sha.as_deref())),
            r.trigger.as_str(),
            esc(&r.actor),
            took(r),
            esc(r.reason.as_deref().unwrap_or("")),
            id = esc(r.id.as_str()),
            when = age(now, Some(r.requested_at)),
        );
    }
    if recent.is_empty() {
        h.push_str("<tr><td colspan=\"8\">Nothing deployed yet.</td></tr>");
    }
    h.push_str("</table></body></html>");
    h
}

/// `GET /deploys/<id>`.
pub fn deploy(row: &DeployRow, log: Option<&str>, now: i64) -> String {
    let cls = class(row.state);
    let mut h = head(&format!("haul · {} · {}", row.app, row.id), !row.state.is_final());
    let _ = write!(
        h,
        "<p><a href=\"../\">&larr; all apps</a></p><h1>{} <span class=\"pill {cls}\">{}</span></h1><p class=\"sub\">deploy <code>{}</code> · {} by {} · sha <code>{}</code> · requested {} · took {}</p><p class=\"reason\">{}</p><pre>{}</pre></body></html>",
        esc(&row.app),
        row.state,
        esc(row.id.as_str()),
        row.trigger.as_str(),
        esc(&row.actor),
        esc(row.sha.as_deref().unwrap_or("-")),
        age(now, Some(row.requested_at)),
        took(row),
        esc(row.reason.as_deref().unwrap_or("")),
        esc(log.unwrap_or("This request never ran, so it has no log."))
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_from_outside() {
        assert_eq!(
            esc("<script>alert('x')&\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&amp;&quot;&lt;/script&gt;"
        );
    }
}
