//! What people and scrapers read from the daemon: the status page (`/`, `/deploys/<id>`), `/metrics` and
//! `/healthz`. Read-only: nothing here changes the queue or the audit.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{error, HttpState};

fn html(body: String) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "this server".into(), |h| h.trim().to_string())
}

/// `GET /`: every app and the recent deploys.
pub(super) async fn status_index(State(st): State<Arc<HttpState>>) -> Response {
    if !st.status_page {
        return error(
            StatusCode::NOT_FOUND,
            "the status page is off (status_page = false)",
        );
    }
    let env = st.queue.env();
    let now = crate::model::now_ms();
    let apps: Vec<(String, Option<String>, Option<String>)> = env
        .apps
        .values()
        .map(|a| {
            let closed = a.windows.as_ref().and_then(|w| match w.state(now) {
                crate::config::WindowState::Open => None,
                crate::config::WindowState::Closed { until, why } => Some(match until {
                    Some(t) => format!("{why}; opens at {}", crate::config::shown_instant(t, w)),
                    None => why,
                }),
            });
            (a.name.clone(), crate::deploy::release::current(&a.path), closed)
        })
        .collect();
    let data = env
        .store
        .call(move |c| {
            let mut views = Vec::new();
            for (name, live_release, window_closed) in apps {
                let summary = crate::store::summary(c, &name)?;
                let live = match &live_release {
                    Some(r) => crate::store::live_deploy(c, &name, r)?,
                    None => None,
                };
                views.push(crate::ops::page::AppView {
                    name,
                    live_release,
                    live,
                    summary,
                    window_closed,
                });
            }
            views.sort_by(|a, b| a.name.cmp(&b.name));
            Ok((views, crate::store::history(c, None, 50)?))
        })
        .await;
    let fleet = match &st.fleet {
        Some(f) => fleet_section(f, &st.sources).await,
        None => String::new(),
    };
    match data {
        Ok((views, recent)) => html(
            crate::ops::page::index(&hostname(), &views, &recent, &st.sources, crate::model::now_ms())
                .replace("</body></html>", &format!("{fleet}</body></html>")),
        ),
        Err(e) => {
            tracing::error!("status page: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit database is not answering",
            )
        }
    }
}

/// The page shows at most the last 256 KiB of a log: a chatty build must not make every page view expensive.
fn log_tail(path: &std::path::Path, id: &crate::model::DeployId) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 256 * 1024;
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut buf = Vec::new();
    if len > MAX {
        f.seek(SeekFrom::Start(len - MAX)).ok()?;
    }
    f.take(MAX).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    if len > MAX {
        // Start at a whole line.
        let rest = text.split_once('\n').map_or(text.as_str(), |(_, r)| r);
        Some(format!(
            "[the first {} KiB are not shown: `haul logs {id}` has all of it]\n{rest}",
            (len - MAX) / 1024
        ))
    } else {
        Some(text)
    }
}

/// `GET /deploys/<id>`: one deploy and its log.
pub(super) async fn status_deploy(
    State(st): State<Arc<HttpState>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    if !st.status_page {
        return error(
            StatusCode::NOT_FOUND,
            "the status page is off (status_page = false)",
        );
    }
    let Some(id) = id.ok().and_then(|Path(id)| crate::model::DeployId::parse(&id)) else {
        return error(StatusCode::NOT_FOUND, "no such deploy");
    };
    let env = st.queue.env();
    let lookup = id.clone();
    match env.store.call(move |c| crate::store::get(c, &lookup)).await {
        Ok(Some(row)) => {
            let log = log_tail(&env.dirs.log_of(&id), &id);
            html(crate::ops::page::deploy(
                &row,
                log.as_deref(),
                &st.sources,
                crate::model::now_ms(),
            ))
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "no such deploy"),
        Err(e) => {
            tracing::error!("status page: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit database is not answering",
            )
        }
    }
}

/// Prometheus scrape: counters as recorded, gauges read now from the store and the upstream registry.
pub(super) async fn metrics(State(st): State<Arc<HttpState>>) -> Response {
    let env = st.queue.env();
    let m = crate::infra::metrics::get();
    let apps: Vec<(String, String)> = env
        .apps
        .values()
        .map(|a| (a.name.clone(), a.upstream()))
        .collect();
    let names: Vec<String> = apps.iter().map(|(a, _)| a.clone()).collect();
    let summaries = env
        .store
        .call(move |c| {
            names
                .iter()
                .map(|a| crate::store::summary(c, a).map(|s| (a.clone(), s)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
    if let Ok(summaries) = summaries {
        for (app, s) in summaries {
            let label = crate::infra::metrics::AppLabel { app };
            m.queue_depth.get_or_create(&label).set(s.queued as i64);
            m.deferred.get_or_create(&label).set(s.deferred as i64);
            m.awaiting_approval
                .get_or_create(&label)
                .set(s.awaiting_approval as i64);
            m.awaiting_ci.get_or_create(&label).set(s.awaiting_ci as i64);
            m.paused.get_or_create(&label).set(i64::from(s.hold.is_some()));
            if let Some(w) = env.apps.get(&label.app).and_then(|a| a.windows.as_ref()) {
                let open = w.state(crate::model::now_ms()) == crate::config::WindowState::Open;
                m.window_open.get_or_create(&label).set(i64::from(open));
            }
            if let Some(t) = s.last_success.and_then(|r| r.finished_at) {
                m.last_success.get_or_create(&label).set(t / 1000);
            }
        }
    }
    for (_, upstream) in apps {
        let open = crate::infra::upstream::global().open_for(&upstream).is_some();
        m.circuit_open
            .get_or_create(&crate::infra::metrics::UpstreamLabel { upstream })
            .set(i64::from(open));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

/// For the reverse proxy and uptime checks: 200 while the daemon, its database and its workers are alive.
/// The whole fleet, as this host's engine connection sees it: every fleet app's rollout and its hosts.
async fn fleet_section(agent: &crate::fleet::AgentHandle, sources: &crate::ops::page::Sources) -> String {
    use crate::ops::page::esc;
    let status = match agent.status().await {
        Ok(s) => s,
        Err(e) => {
            return format!(
                "<h2>Fleet</h2><p class=\"reason\">{}</p>",
                esc(&format!("{}: {e}", agent.health_line()))
            )
        }
    };
    let mut h = String::from("<h2>Fleet</h2>");
    for a in &status.apps {
        let r = &a.rollout;
        h.push_str(&format!(
            "<h3>{} <span class=\"pill\">{}</span></h3><p class=\"sub\">rollout <code>{}</code> of <code>{}</code> · wave {}/{} · conductor {} (epoch {})</p>",
            esc(&a.app),
            esc(r.phase.as_deref().unwrap_or("no rollout yet")),
            esc(r.id.as_deref().unwrap_or("-")),
            esc(r.sha.as_deref().map_or("-", crate::model::short_sha)),
            (r.wave + 1).min(r.waves),
            r.waves,
            esc(r.conductor.as_deref().unwrap_or("none")),
            r.epoch.map_or("-".to_string(), |e| e.to_string()),
        ));
        if let Some(t) = &r.trigger {
            h.push_str(&format!("<p class=\"sub\">from {}</p>", esc(t)));
        }
        if !r.taken_away.is_empty() {
            let shas: Vec<&str> = r.taken_away.iter().map(|s| crate::model::short_sha(s)).collect();
            h.push_str(&format!(
                "<p class=\"sub\">taken away by a rollback (webhooks and polls skip them): <code>{}</code></p>",
                esc(&shas.join(", "))
            ));
        }
        for f in &r.failures {
            h.push_str(&format!(
                "<p class=\"reason\">failed: {}</p>",
                esc(&sources.hide(&a.app, f))
            ));
        }
        if let Some(why) = &r.refused {
            h.push_str(&format!(
                "<p class=\"reason\">refused: {}</p>",
                esc(&sources.hide(&a.app, why))
            ));
        }
        h.push_str("<table><tr><th>host</th><th>phase</th><th>live sha</th><th>release</th><th>last</th><th>heartbeat</th></tr>");
        for host in &a.hosts {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}s ago</td></tr>",
                esc(&host.host),
                esc(&host.phase),
                esc(host.live_sha.as_deref().map_or("-", crate::model::short_sha)),
                esc(host.live_release.as_deref().unwrap_or("-")),
                esc(host.outcome.as_deref().unwrap_or("-")),
                host.heartbeat_age_s
            ));
        }
        h.push_str("</table>");
    }
    h
}

pub(super) async fn healthz(State(st): State<Arc<HttpState>>) -> Response {
    // A fleet host that lost the engine still serves its releases: 200, and the body says so (a load
    // balancer must not drop a serving fleet because its control plane is away).
    let fleet = st
        .fleet
        .as_ref()
        .map(|f| format!("{}\n", f.health_line()))
        .unwrap_or_default();
    match st.liveness.check().await {
        Ok(()) => (StatusCode::OK, format!("ok\n{fleet}")).into_response(),
        Err(problem) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {problem}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the deploy page loaded and escaped whole logs, however large.
    #[test]
    fn regression_the_page_shows_only_a_logs_tail() {
        let dir =
            std::env::temp_dir().join(format!("haul-tail-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("x.log");
        let line = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";
        std::fs::write(&path, line.repeat(5000) + "the last line\n").expect("write");
        let id = crate::model::DeployId::new(0);
        let tail = log_tail(&path, &id).expect("tail");
        assert!(tail.len() <= 256 * 1024 + 200, "{}", tail.len());
        assert!(tail.starts_with("[the first ") && tail.ends_with("the last line\n"));
        std::fs::write(&path, "short\n").expect("write");
        assert_eq!(log_tail(&path, &id).as_deref(), Some("short\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Regression: `/metrics` recomputed each app's upstream from `repo`, so an S3 app's `haul_circuit_open`
    /// gauge was labelled with its bucket, not the endpoint whose circuit it is.
    #[tokio::test]
    async fn regression_the_circuit_gauge_of_an_s3_app_names_its_endpoint() {
        use http_body_util::BodyExt;
        let dir = crate::infra::scratch::TestDir::new("haul-metrics");
        let text = format!(
            "state_dir = {:?}\n[apps.worker]\nobject = \"s3://builds/worker/worker.tar.gz\"\n\
             s3_endpoint = \"https://minio.internal:9000\"\npath = {:?}\n",
            dir.path("state"),
            dir.path("srv")
        );
        let cfg = crate::config::Config::parse(&dir.path("haul.toml"), &text).expect("config");
        std::fs::create_dir_all(dir.path("state")).expect("state dir");
        let store = crate::store::Store::open(&dir.path("state/haul.db")).expect("store");
        let queue = crate::deploy::queue::Queue::new(crate::deploy::queue::Env::new(&cfg, store));
        let state = Arc::new(HttpState::new(&cfg, queue, Default::default()));
        let body = metrics(State(state))
            .await
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("haul_circuit_open{upstream=\"minio.internal:9000\"}"),
            "{text}"
        );
        assert!(!text.contains("upstream=\"builds\""), "{text}");
    }
}
