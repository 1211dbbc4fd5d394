//! The status page (`GET /`, `GET /deploys/<id>`): small, server-rendered HTML with no JavaScript and no build
//! step. Every app with its live release, sha, actor and age; a timeline of recent deploys coloured by outcome
//! with their durations; each deploy's log. Links are relative, so the page works behind a reverse proxy's
//! path prefix. It shows no secrets: no configuration, only what the audit log and the (already redacted)
//! deploy logs say, and no repository URL even there ([`Sources`]). `status_page = false` turns it off.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write;

use crate::config::AppConfig;
use crate::model::State;
use crate::store::{AppSummary, DeployRow};

/// What the page shows where a configured source location was.
pub const SOURCE_MARK: &str = "[source]";

/// The source locations of every app, which the page never shows: a deploy log's `==> fetch <url>` line, a
/// git error quoting the repository, a reason naming a mirror all show `[source]` there instead. Each
/// location is looked for as configured and as [`crate::model::url::shown`] prints it (credentials masked,
/// query dropped), the longest first; a `{sha}` in a location matches the hex a trigger filled in. The log
/// file itself is untouched: `haul logs` shows it whole (redacted of credentials, as every log line is).
#[derive(Default)]
pub struct Sources {
    by_app: HashMap<String, Vec<Vec<String>>>,
}

impl Sources {
    pub fn of<'a>(apps: impl IntoIterator<Item = &'a AppConfig>) -> Sources {
        let by_app = apps
            .into_iter()
            .map(|app| {
                let mut forms: Vec<String> = app
                    .source_locations()
                    .into_iter()
                    .flat_map(|l| [crate::model::url::shown(&l), l])
                    .collect();
                forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
                forms.dedup();
                let patterns = forms
                    .iter()
                    .map(|f| f.split("{sha}").map(String::from).collect::<Vec<_>>())
                    // A pattern must start with text to look for (a bare `{sha}` would be every hex word).
                    .filter(|pieces| !pieces[0].is_empty())
                    .collect();
                (app.name.clone(), patterns)
            })
            .collect();
        Sources { by_app }
    }

    /// `text` (of a deploy of `app`) with each of that app's source locations replaced by [`SOURCE_MARK`].
    pub fn hide<'t>(&self, app: &str, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for pieces in self.by_app.get(app).map_or(&[][..], Vec::as_slice) {
            if let Some(replaced) = replace_location(&out, pieces) {
                out = Cow::Owned(replaced);
            }
        }
        out
    }
}

/// Replaces every occurrence of `pieces` joined by shas (hex runs of 4 to 64, what fills a `{sha}`), or
/// `None` when there is none.
fn replace_location(text: &str, pieces: &[String]) -> Option<String> {
    let (first, rest_pieces) = pieces.split_first()?;
    let mut out = String::new();
    let mut rest = text;
    let mut changed = false;
    while let Some(i) = rest.find(first.as_str()) {
        let after = &rest[i + first.len()..];
        match filled_len(after, rest_pieces) {
            Some(n) => {
                out.push_str(&rest[..i]);
                out.push_str(SOURCE_MARK);
                rest = &after[n..];
                changed = true;
            }
            None => {
                out.push_str(&rest[..i + first.len()]);
                rest = after;
            }
        }
    }
    changed.then(|| out + rest)
}

/// How much of `text` is a sha, `pieces[0]`, a sha, `pieces[1]`, ...: the longest such prefix.
fn filled_len(text: &str, pieces: &[String]) -> Option<usize> {
    let Some((piece, more)) = pieces.split_first() else {
        return Some(0);
    };
    let hex = text.bytes().take_while(u8::is_ascii_hexdigit).count().min(64);
    (4..=hex).rev().find_map(|n| {
        let after = text[n..].strip_prefix(piece.as_str())?;
        filled_len(after, more).map(|m| n + piece.len() + m)
    })
}

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
        State::Failed | State::RolledBack | State::Interrupted | State::Expired | State::CiFailed => "bad",
        State::Running | State::Queued | State::Deferred | State::AwaitingApproval | State::AwaitingCi => {
            "busy"
        }
        State::Ignored | State::Superseded | State::Forwarded => "quiet",
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
    /// The deploy window is closed: why, and when it opens.
    pub window_closed: Option<String>,
}

/// `GET /`.
pub fn index(host: &str, apps: &[AppView], recent: &[DeployRow], sources: &Sources, now: i64) -> String {
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
        let mut queue = match (&a.summary.running, a.summary.queued) {
            (Some(r), q) => format!(
                "running <a href=\"deploys/{0}\">{0}</a>{1}",
                esc(r.id.as_str()),
                if q > 0 { ", 1 pending" } else { "" }
            ),
            (None, 0) => "idle".into(),
            (None, q) => format!("{q} pending"),
        };
        if a.summary.awaiting_ci > 0 {
            queue = format!("{queue} · <span class=\"pill busy\">awaiting CI</span>");
        }
        if a.summary.awaiting_approval > 0 {
            queue = format!(
                "{queue} · <span class=\"pill busy\">awaiting approval</span> <span class=\"reason\">(`haul approve {}`)</span>",
                esc(&a.name)
            );
        }
        if let Some(w) = &a.window_closed {
            queue = format!(
                "{queue} · <span class=\"pill quiet\">window closed</span> <span class=\"reason\">{}</span>",
                esc(w)
            );
        }
        // Paused: who, since when and why, and what it holds.
        if let Some(hold) = &a.summary.hold {
            queue =
                format!(
                "<span class=\"pill busy\">paused</span> by {} {} ago{}{} <span class=\"reason\">({})</span>",
                esc(&hold.actor),
                esc(&crate::model::age(now - hold.since_ms)),
                hold.reason.as_deref().map(|r| format!(": {}", esc(r))).unwrap_or_default(),
                if a.summary.deferred > 0 { " · 1 deferred" } else { "" },
                if hold.app == "*" { "`haul resume --all`" } else { "`haul resume`" }
            );
        }
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
            esc(&sources.hide(&r.app, r.reason.as_deref().unwrap_or(""))),
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
pub fn deploy(row: &DeployRow, log: Option<&str>, sources: &Sources, now: i64) -> String {
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
        esc(&sources.hide(&row.app, row.reason.as_deref().unwrap_or(""))),
        esc(&log.map_or(Cow::Borrowed("This request never ran, so it has no log."), |l| {
            sources.hide(&row.app, l)
        }))
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the deploy page showed the log's `==> fetch <url>` line, and reasons naming a mirror, so
    /// the page told anyone who could read it where every repository lives. Each case: an app's source keys,
    /// a line of its log, and the line as the page shows it.
    #[test]
    fn regression_the_page_showed_repository_urls() {
        fn check(source: &str, line: &str, want: &str) {
            let ssh = if source.contains("git@") {
                "deploy_key = \"k\"\nknown_hosts = \"kh\"\n"
            } else {
                ""
            };
            let text = format!("state_dir = \"/tmp/s\"\n[apps.a]\npath = \"/srv/a\"\n{ssh}{source}\n");
            let cfg = crate::config::Config::parse(std::path::Path::new("/etc/haul/haul.toml"), &text)
                .unwrap_or_else(|e| panic!("{source}: {e}"));
            let sources = Sources::of(cfg.apps.values());
            assert_eq!(sources.hide("a", line), want, "{source}");
            assert_eq!(
                sources.hide("another app", line),
                line,
                "only the app's own deploys"
            );
        }
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let digest = format!("sha256:{}", "e".repeat(64));
        let token_repo = "repo = \"https://x-access-token:ghs_abc@github.com/acme/blog.git\"";
        let cases: Vec<(&str, String, String)> = vec![
            (
                token_repo,
                "==> fetch https://x-access-token:***@github.com/acme/blog.git (branch main)".into(),
                "==> fetch [source] (branch main)".into(),
            ),
            (
                token_repo,
                "fatal: repository 'https://x-access-token:ghs_abc@github.com/acme/blog.git/' not found".into(),
                "fatal: repository '[source]/' not found".into(),
            ),
            (
                "repo = \"git@github.com:acme/blog.git\"",
                "==> fetch git@github.com:acme/blog.git (branch main)".into(),
                "==> fetch [source] (branch main)".into(),
            ),
            (
                "repo = \"ssh://git@git.internal:2222/srv/blog.git\"",
                "ssh: connect to ssh://git@git.internal:2222/srv/blog.git refused".into(),
                "ssh: connect to [source] refused".into(),
            ),
            (
                "repo = \"git@github.com:acme/blog.git\"\nmirrors = [\"https://cache.internal/acme/blog.git\", \"https://cache.internal/acme/blog\"]",
                format!("    fetched from mirror https://cache.internal/acme/blog.git; the primary has {sha} on refs/heads/main"),
                format!("    fetched from mirror [source]; the primary has {sha} on refs/heads/main"),
            ),
            (
                "repo = \"git/blog\"",
                "==> fetch /etc/haul/git/blog (branch main)".into(),
                "==> fetch [source] (branch main)".into(),
            ),
            (
                "url = \"https://dl.example.com/builds/{sha}/site.tar.gz?X-Amz-Signature=abc\"",
                format!("    https://dl.example.com/builds/{sha}/site.tar.gz?…"),
                "    [source]".into(),
            ),
            (
                "url = \"https://dl.example.com/builds/{sha}/site.tar.gz\"",
                format!("GET https://dl.example.com/builds/{}/site.tar.gz: 404", &sha[..7]),
                "GET [source]: 404".into(),
            ),
            (
                "object = \"s3://builds/worker/{sha}.tar.gz\"\ns3_endpoint = \"https://minio.internal:9000\"",
                format!("    deploying {digest} (s3://builds/worker/{sha}.tar.gz)"),
                format!("    deploying {digest} ([source])"),
            ),
            (
                "object = \"s3://builds/worker/{sha}.tar.gz\"\ns3_endpoint = \"https://minio.internal:9000\"",
                format!("error: https://minio.internal:9000/builds/worker/{sha}.tar.gz: 403"),
                "error: [source]/[source]: 403".into(),
            ),
            (
                "image = \"ghcr.io/acme/api\"\ntag = \"v*\"",
                format!("    oci://ghcr.io/acme/api:v1.2.0@{digest}"),
                format!("    [source]:v1.2.0@{digest}"),
            ),
            (
                "image = \"ghcr.io/acme/api\"\ntag = \"v*\"",
                "HEAD https://ghcr.io/v2/acme/api/manifests/v1.2.0: 401".into(),
                "HEAD https://[source]/manifests/v1.2.0: 401".into(),
            ),
            (
                "url = \"https://dl.example.com/builds/{sha}/site.tar.gz\"",
                "a hex word too short to be a sha: https://dl.example.com/builds/abc/site.tar.gz".into(),
                "a hex word too short to be a sha: https://dl.example.com/builds/abc/site.tar.gz".into(),
            ),
            (
                token_repo,
                "==> build step 1/2: npm ci".into(),
                "==> build step 1/2: npm ci".into(),
            ),
        ];
        for (source, line, want) in &cases {
            check(source, line, want);
        }
    }

    #[test]
    fn escapes_everything_from_outside() {
        assert_eq!(
            esc("<script>alert('x')&\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&amp;&quot;&lt;/script&gt;"
        );
    }
}
