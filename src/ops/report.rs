//! Commit statuses: an app with `[apps.NAME.report]` tells its forge how each deploy of a commit went, on the
//! commit itself (and so on every pull request that holds it): `pending` while it waits or deploys, then
//! success or failure, linking to the status page's `deploys/<id>`.
//!
//! The audit log is the outbox. One task reads the deploys that changed since it last looked, compares each
//! with what it last told the forge (the `reports` table), and sends what changed, one status at a time, so
//! a restart neither repeats a status nor loses one, and no deploy ever waits for a forge. Each request goes
//! through the upstream circuit like a fetch: a few attempts for transient failures, with backoff and
//! jitter; a 429 (or GitHub's 403 rate limit) opens the circuit for its `Retry-After`; a refusal (401, 403,
//! 404, 422) is logged once and never retried. Whatever the outcome, a status is tried once per change of
//! state: nothing here can loop. The token is read from its private file for each request and never
//! reaches a log, the page or the audit.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, ReportConfig, StatusApi};
use crate::model::failure::{Failure, Kind};
use crate::model::{self, State};
use crate::store::{self, ReportRow, Store};

/// How often the audit is looked at for changes.
const EVERY: Duration = Duration::from_secs(1);
/// Requests per minute to one forge API host (its rate limits are the token's, not the deploy key's).
const PER_MINUTE: u32 = 60;
/// Attempts for one status (transient failures and rate limits).
const ATTEMPTS: u32 = 3;
/// The most of a description any forge shows (GitHub keeps 140 characters).
const MAX_DESCRIPTION: usize = 140;

/// What a commit status says, whatever the forge calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Deferred, awaiting an approval or CI.
    Waiting,
    Deploying,
    Live,
    /// Failed, rolled back, interrupted, or CI failed on it.
    Failed,
    /// Told as waiting or deploying once, then superseded, ignored or expired: it will not go live.
    NotDeployed,
}

/// What to tell of a deploy now in `state`, having last told `reported` (none: nothing to tell).
pub(crate) fn phase(state: State, reported: Option<State>) -> Option<Phase> {
    if reported == Some(state) {
        return None;
    }
    Some(match state {
        State::Queued | State::Forwarded => return None,
        State::Deferred | State::AwaitingApproval | State::AwaitingCi => Phase::Waiting,
        State::Running => Phase::Deploying,
        State::Succeeded => Phase::Live,
        State::Failed | State::RolledBack | State::Interrupted | State::CiFailed => Phase::Failed,
        // A request the forge never heard of stays unheard of: only a status once set is closed.
        State::Superseded | State::Ignored | State::Expired if reported.is_some() => Phase::NotDeployed,
        State::Superseded | State::Ignored | State::Expired => return None,
    })
}

/// Each forge's word for a phase.
fn forge_state(api: StatusApi, p: Phase) -> &'static str {
    match (api, p) {
        (StatusApi::Bitbucket, Phase::Waiting | Phase::Deploying) => "INPROGRESS",
        (StatusApi::Bitbucket, Phase::Live) => "SUCCESSFUL",
        (StatusApi::Bitbucket, Phase::Failed) => "FAILED",
        (StatusApi::Bitbucket, Phase::NotDeployed) => "STOPPED",
        (StatusApi::Gitlab, Phase::Deploying) => "running",
        (StatusApi::Gitlab, Phase::Failed) => "failed",
        (StatusApi::Gitlab, Phase::NotDeployed) => "canceled",
        (StatusApi::Gitea, Phase::NotDeployed) => "warning",
        (StatusApi::Github, Phase::NotDeployed) => "error",
        (_, Phase::Waiting | Phase::Deploying) => "pending",
        (_, Phase::Live) => "success",
        (_, Phase::Failed) => "failure",
    }
}

/// One status to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) method_path: String,
    pub(crate) body: serde_json::Value,
}

/// The request for `sha` in `phase`: the path under the API root, and the body, per the forge's docs.
pub(crate) fn request(
    r: &ReportConfig,
    context: &str,
    sha: &str,
    p: Phase,
    description: &str,
    target_url: Option<&str>,
) -> Status {
    let state = forge_state(r.api, p);
    let mut body = serde_json::Map::new();
    let path = match r.api {
        StatusApi::Github | StatusApi::Gitea => {
            body.insert("state".into(), state.into());
            body.insert("context".into(), context.into());
            format!("/repos/{}/statuses/{sha}", r.repository)
        }
        StatusApi::Gitlab => {
            body.insert("state".into(), state.into());
            body.insert("name".into(), context.into());
            format!("/projects/{}/statuses/{sha}", r.repository.replace('/', "%2F"))
        }
        StatusApi::Bitbucket => {
            body.insert("state".into(), state.into());
            body.insert("key".into(), context.into());
            body.insert("name".into(), context.into());
            format!("/repositories/{}/commit/{sha}/statuses/build", r.repository)
        }
    };
    body.insert("description".into(), description.into());
    if let Some(u) = target_url {
        let key = if r.api == StatusApi::Bitbucket {
            "url"
        } else {
            "target_url"
        };
        body.insert(key.into(), u.into());
    }
    Status {
        method_path: path,
        body: serde_json::Value::Object(body),
    }
}

/// One line a person reads on the commit: what happened, without control or bidi characters.
pub(crate) fn description(row: &ReportRow, p: Phase) -> String {
    let short = row.sha.as_deref().map(model::short_sha).unwrap_or("");
    let why = row
        .reason
        .as_deref()
        .and_then(|r| r.lines().next())
        .unwrap_or("")
        .trim();
    let text = match p {
        Phase::Deploying => format!("haul is deploying {short}"),
        Phase::Live => format!("{short} is live"),
        _ if why.is_empty() => row.state.as_str().replace('_', " "),
        _ => format!("{}: {why}", row.state.as_str().replace('_', " ")),
    };
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .filter(|c| !model::is_hidden(*c))
        .collect();
    if clean.chars().count() <= MAX_DESCRIPTION {
        clean
    } else {
        let mut s: String = clean.chars().take(MAX_DESCRIPTION - 1).collect();
        s.push('…');
        s
    }
}

/// One app's reporting: its settings and the context it reports under (a fleet host's name appended).
struct Target {
    cfg: ReportConfig,
    context: String,
}

/// Starts the reporter if any app reports; it stops with `stop`.
pub fn spawn(cfg: &Config, store: Store, stop: watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>> {
    let host = cfg.fleet.as_ref().map(|f| f.host.clone());
    let targets: HashMap<String, Target> = cfg
        .apps
        .values()
        .filter_map(|a| {
            let r = a.report.clone()?;
            let context = match (&a.fleet, &host) {
                // Each host of a fleet says how its own deploy went, under its own name.
                (Some(_), Some(h)) => {
                    let full = format!("{}/{h}", r.context);
                    full.chars().take(40).collect()
                }
                _ => r.context.clone(),
            };
            Some((a.name.clone(), Target { cfg: r, context }))
        })
        .collect();
    if targets.is_empty() {
        return None;
    }
    let public_url = cfg.public_url.clone();
    Some(tokio::spawn(run(targets, public_url, store, stop)))
}

async fn run(
    targets: HashMap<String, Target>,
    public_url: Option<String>,
    store: Store,
    mut stop: watch::Receiver<bool>,
) {
    // A restart tells what changed in the last quarter of an hour, not the whole history, and keeps
    // watching every request of a reporting app still waiting or running, however old.
    let since = model::now_ms() - 15 * 60 * 1000;
    let apps: Vec<String> = targets.keys().cloned().collect();
    let start = store
        .call(move |c| Ok((store::report_floor(c, since)?, store::report_open(c, &apps)?)))
        .await;
    let Ok((floor, open)) = start else {
        tracing::error!("commit statuses are off: the audit log cannot be read");
        return;
    };
    let mut cursor = Cursor {
        after: targets.keys().map(|a| (a.clone(), floor)).collect(),
        open: open.into_iter().collect(),
    };
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("commit statuses are off: {e}");
            return;
        }
    };
    loop {
        pass(&targets, public_url.as_deref(), &store, &client, &mut cursor).await;
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Where the reporter is in the audit log: per reporting app, every deploy after `after` is new to it;
/// `open` are the deploys before that which may still change (waiting, queued, running).
struct Cursor {
    after: HashMap<String, i64>,
    open: std::collections::BTreeSet<i64>,
}

/// Reads the deploys that are new or still open, and tells what changed of each.
async fn pass(
    targets: &HashMap<String, Target>,
    public_url: Option<&str>,
    store: &Store,
    client: &reqwest::Client,
    cursor: &mut Cursor,
) {
    let after: Vec<(String, i64)> = cursor.after.iter().map(|(a, s)| (a.clone(), *s)).collect();
    let open: Vec<i64> = cursor.open.iter().copied().collect();
    let rows = store
        .call(move |c| {
            let mut rows = store::report_rows_at(c, &open)?;
            for (app, seq) in &after {
                rows.extend(store::report_rows(c, app, *seq, 500)?);
            }
            Ok(rows)
        })
        .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("commit statuses: cannot read the audit log: {e}");
            return;
        }
    };
    for row in rows {
        let Some(t) = targets.get(&row.app) else {
            continue;
        };
        if let Some(a) = cursor.after.get_mut(&row.app) {
            *a = (*a).max(row.seq);
        }
        tell(t, &row, public_url, store, client).await;
        if row.state.is_final() {
            cursor.open.remove(&row.seq);
        } else {
            cursor.open.insert(row.seq);
        }
    }
}

/// Sets the status the deploy's state calls for, if it changed since it was last told, and records it.
async fn tell(
    t: &Target,
    row: &ReportRow,
    public_url: Option<&str>,
    store: &Store,
    client: &reqwest::Client,
) {
    let (Some(sha), Some(p)) = (row.sha.as_deref(), phase(row.state, row.reported)) else {
        return;
    };
    if !model::is_full_sha(sha) {
        return;
    }
    let url = public_url.map(|u| format!("{u}/deploys/{}", row.id));
    // A deploy that started and ended between two looks was still pending once: said so first, so the
    // commit shows when it started.
    let missed_start =
        row.started && row.reported != Some(State::Running) && matches!(p, Phase::Live | Phase::Failed);
    let phases: &[Phase] = if missed_start {
        &[Phase::Deploying, p]
    } else {
        &[p]
    };
    for &p in phases {
        let status = request(&t.cfg, &t.context, sha, p, &description(row, p), url.as_deref());
        send(row, t, client, &status).await;
    }
    let (id, state, now) = (row.id.clone(), row.state, model::now_ms());
    if let Err(e) = store
        .call(move |c| store::mark_reported(c, &id, state, now))
        .await
    {
        tracing::warn!(app = %row.app, deploy_id = %row.id, "commit statuses: cannot record what was told: {e}");
    }
}

fn client() -> Result<reqwest::Client, String> {
    crate::infra::upstream::tls();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(20))
        // Never follow: a redirect is not where the token was meant to go.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("haul/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot set up HTTP: {e}"))
}

/// Sets one status, within the API host's budget and circuit; what could not be told is logged once.
async fn send(row: &ReportRow, t: &Target, client: &reqwest::Client, status: &Status) {
    let url = format!("{}{}", t.cfg.api_url, status.method_path);
    let host = t
        .cfg
        .api_url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("")
        .to_string();
    let note = |_: &str| {};
    let (result, report) = crate::infra::upstream::guarded(&host, PER_MINUTE, ATTEMPTS, &note, || {
        attempt(client, &t.cfg, &url, &status.body)
    })
    .await;
    let state = status.body["state"].as_str().unwrap_or("");
    match result {
        Ok(()) => {
            tracing::info!(app = %row.app, deploy_id = %row.id, "commit status {state} set on {} ({} {})", model::short_sha(row.sha.as_deref().unwrap_or("")), t.cfg.provider, t.cfg.repository)
        }
        Err(f) => tracing::error!(
            app = %row.app,
            deploy_id = %row.id,
            "could not set the commit status {state} on {} ({} {}) after {} attempt(s): {f}; {}",
            model::short_sha(row.sha.as_deref().unwrap_or("")),
            t.cfg.provider,
            t.cfg.repository,
            report.attempts,
            if f.kind == Kind::Permanent {
                "not retried: check report.token_file (a token that may write commit statuses), repository and api_url"
            } else {
                "the next change of this deploy is told again"
            }
        ),
    }
}

async fn attempt(
    client: &reqwest::Client,
    r: &ReportConfig,
    url: &str,
    body: &serde_json::Value,
) -> Result<(), Failure> {
    crate::config::check_private_file(&r.token_file)
        .map_err(|e| Failure::permanent(format!("report.token_file: {e}")))?;
    let token = std::fs::read_to_string(&r.token_file).map_err(|e| {
        Failure::permanent(format!(
            "cannot read report.token_file {}: {e}",
            r.token_file.display()
        ))
    })?;
    let token = token.trim();
    let req = client.post(url).json(body);
    let req = match r.api {
        StatusApi::Github => req
            .bearer_auth(token)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28"),
        StatusApi::Gitlab => req.header("private-token", token),
        StatusApi::Gitea => req.header("authorization", format!("token {token}")),
        StatusApi::Bitbucket => req.bearer_auth(token),
    };
    let shown = crate::model::url::shown(url);
    let resp = req
        .send()
        .await
        .map_err(|e| Failure::transient(format!("cannot reach {shown}: {}", without_url(&e))))?;
    let code = resp.status().as_u16();
    if (200..300).contains(&code) {
        return Ok(());
    }
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let retry_after = header("retry-after")
        .map(|v| format!("Retry-After: {v}"))
        .or_else(|| header("x-ratelimit-reset").map(|v| format!("x-ratelimit-reset: {v}")))
        .and_then(|l| crate::infra::upstream::retry_after(&[l]));
    // GitHub answers its rate limits 403 (or 429) with no requests left, or a Retry-After.
    let limited = code == 429
        || (code == 403
            && (header("x-ratelimit-remaining").as_deref() == Some("0") || header("retry-after").is_some()));
    Err(match code {
        _ if limited => Failure {
            kind: Kind::RateLimited,
            message: format!("{shown} answered {code}: rate-limited"),
            retry_after,
        },
        401 | 403 => Failure::permanent(format!("{shown} answered {code}: the forge refused the token")),
        404 => Failure::permanent(format!(
            "{shown} answered 404: no such repository or commit for this token"
        )),
        c if c >= 500 => Failure::transient(format!("{shown} answered {c}")),
        c => Failure::permanent(format!("{shown} answered {c}")),
    })
}

/// A send error's text without the URL it names (its path is the repository's; the host is shown apart).
fn without_url(e: &reqwest::Error) -> String {
    let mut e2 = e.to_string();
    if let Some(u) = e.url() {
        e2 = e2.replace(u.as_str(), "");
    }
    e2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(api: StatusApi, repository: &str) -> ReportConfig {
        ReportConfig {
            api,
            provider: "x".into(),
            repository: repository.into(),
            token_file: "/nonexistent".into(),
            api_url: "https://api.example.com".into(),
            context: "deploy/production".into(),
        }
    }

    #[test]
    fn phases_follow_the_deploy_and_close_only_what_was_opened() {
        assert_eq!(phase(State::Queued, None), None);
        assert_eq!(phase(State::Deferred, None), Some(Phase::Waiting));
        assert_eq!(
            phase(State::AwaitingCi, Some(State::Deferred)),
            Some(Phase::Waiting)
        );
        assert_eq!(
            phase(State::Running, Some(State::Deferred)),
            Some(Phase::Deploying)
        );
        assert_eq!(phase(State::Running, Some(State::Running)), None);
        assert_eq!(phase(State::Succeeded, None), Some(Phase::Live));
        for s in [
            State::Failed,
            State::RolledBack,
            State::Interrupted,
            State::CiFailed,
        ] {
            assert_eq!(phase(s, Some(State::Running)), Some(Phase::Failed));
        }
        assert_eq!(phase(State::Superseded, None), None, "never told: stays untold");
        assert_eq!(
            phase(State::Superseded, Some(State::Deferred)),
            Some(Phase::NotDeployed)
        );
        assert_eq!(
            phase(State::Expired, Some(State::AwaitingApproval)),
            Some(Phase::NotDeployed)
        );
    }

    #[test]
    fn each_forge_gets_its_own_path_and_words() {
        let sha = "a".repeat(40);
        let gh = request(
            &cfg(StatusApi::Github, "acme/blog"),
            "deploy/production",
            &sha,
            Phase::Live,
            "live",
            Some("https://d/deploys/1"),
        );
        assert_eq!(gh.method_path, format!("/repos/acme/blog/statuses/{sha}"));
        assert_eq!(
            gh.body,
            serde_json::json!({"state": "success", "context": "deploy/production", "description": "live", "target_url": "https://d/deploys/1"})
        );
        let gl = request(
            &cfg(StatusApi::Gitlab, "acme/web/blog"),
            "c",
            &sha,
            Phase::Deploying,
            "d",
            None,
        );
        assert_eq!(
            gl.method_path,
            format!("/projects/acme%2Fweb%2Fblog/statuses/{sha}")
        );
        assert_eq!(
            gl.body,
            serde_json::json!({"state": "running", "name": "c", "description": "d"})
        );
        let bb = request(
            &cfg(StatusApi::Bitbucket, "acme/blog"),
            "c",
            &sha,
            Phase::NotDeployed,
            "d",
            Some("u"),
        );
        assert_eq!(
            bb.method_path,
            format!("/repositories/acme/blog/commit/{sha}/statuses/build")
        );
        assert_eq!(
            bb.body,
            serde_json::json!({"state": "STOPPED", "key": "c", "name": "c", "description": "d", "url": "u"})
        );
        let gt = request(
            &cfg(StatusApi::Gitea, "acme/blog"),
            "c",
            &sha,
            Phase::Failed,
            "d",
            None,
        );
        assert_eq!(gt.body["state"], "failure");
    }

    #[test]
    fn descriptions_are_one_clean_short_line() {
        let row = ReportRow {
            seq: 1,
            id: "x".into(),
            app: "blog".into(),
            sha: Some("b".repeat(40)),
            state: State::Failed,
            reason: Some(format!("build failed\u{202E} {}\nsecond line", "y".repeat(300))),
            reported: None,
            started: true,
        };
        let d = description(&row, Phase::Failed);
        assert!(d.starts_with("failed: build failed"), "{d}");
        assert!(
            d.chars().count() <= MAX_DESCRIPTION && !d.contains('\u{202E}') && !d.contains('\n'),
            "{d}"
        );
        assert_eq!(description(&row, Phase::Live), "bbbbbbb is live");
    }
}
