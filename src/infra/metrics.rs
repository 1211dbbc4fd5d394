//! Prometheus metrics (`GET /metrics`): deploys by app and outcome, deploy and stage durations, last success
//! per app, queue depth, webhook requests by provider and result, fetches by upstream and result, and circuit
//! state. Counters and histograms are recorded where things happen; gauges that the store or the upstream
//! registry already know are read at scrape time, so they can never drift.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppOutcome {
    pub app: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabel {
    pub app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppStage {
    pub app: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderResult {
    // Static strings: counted on every webhook, so the lookup allocates nothing.
    pub provider: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamResult {
    pub upstream: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppPhase {
    pub app: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppState {
    pub app: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
}

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    pub deploys: Family<AppOutcome, Counter>,
    pub deploy_seconds: Hist<AppLabel>,
    pub stage_seconds: Hist<AppStage>,
    pub last_success: Family<AppLabel, Gauge>,
    pub queue_depth: Family<AppLabel, Gauge>,
    pub deferred: Family<AppLabel, Gauge>,
    pub paused: Family<AppLabel, Gauge>,
    pub window_open: Family<AppLabel, Gauge>,
    pub awaiting_approval: Family<AppLabel, Gauge>,
    pub awaiting_ci: Family<AppLabel, Gauge>,
    pub webhooks: Family<ProviderResult, Counter>,
    pub fetches: Family<UpstreamResult, Counter>,
    pub circuit_open: Family<UpstreamLabel, Gauge>,
    /// Fleet hosts only (empty, so absent, without `[fleet]`).
    pub fleet_engine_up: Family<HostLabel, Gauge>,
    pub fleet_conductor: Family<AppLabel, Gauge>,
    /// On the conductor: 1 for the rollout's phase, 0 for the others.
    pub fleet_rollout_phase: Family<AppPhase, Gauge>,
    /// On the conductor: the app's hosts by state (`live`: on the rollout's release, `deploying`, `lost`, `other`).
    pub fleet_hosts: Family<AppState, Gauge>,
    registry: Registry,
}

fn deploy_buckets() -> Histogram {
    Histogram::new([0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0])
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            deploys: Family::default(),
            deploy_seconds: Family::new_with_constructor(deploy_buckets),
            stage_seconds: Family::new_with_constructor(deploy_buckets),
            last_success: Family::default(),
            queue_depth: Family::default(),
            deferred: Family::default(),
            paused: Family::default(),
            window_open: Family::default(),
            awaiting_approval: Family::default(),
            awaiting_ci: Family::default(),
            webhooks: Family::default(),
            fetches: Family::default(),
            circuit_open: Family::default(),
            fleet_engine_up: Family::default(),
            fleet_conductor: Family::default(),
            fleet_rollout_phase: Family::default(),
            fleet_hosts: Family::default(),
            registry: Registry::with_prefix("haul"),
        };
        let mut r = Registry::with_prefix("haul");
        r.register(
            "deploys",
            "Deploys that ended, by app and outcome",
            m.deploys.clone(),
        );
        r.register(
            "deploy_duration_seconds",
            "Time from start to outcome of a deploy",
            m.deploy_seconds.clone(),
        );
        r.register(
            "stage_duration_seconds",
            "Time spent in each stage of a deploy",
            m.stage_seconds.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "When the app last deployed successfully (Unix time)",
            m.last_success.clone(),
        );
        r.register(
            "queue_depth",
            "Requests waiting to deploy, per app",
            m.queue_depth.clone(),
        );
        r.register(
            "deferred",
            "Automatic triggers held by a pause, per app (the newest runs on `haul resume`)",
            m.deferred.clone(),
        );
        r.register(
            "paused",
            "1 while the app is paused (`haul pause`), its automatic triggers deferred",
            m.paused.clone(),
        );
        r.register(
            "window_open",
            "For an app with deploy windows: 1 while automatic triggers may deploy, 0 while they are deferred",
            m.window_open.clone(),
        );
        r.register(
            "awaiting_approval",
            "Requests waiting for `haul approve`, per app (approve = true)",
            m.awaiting_approval.clone(),
        );
        r.register(
            "awaiting_ci",
            "Requests waiting for CI to pass on their commit, per app (gate = \"ci\")",
            m.awaiting_ci.clone(),
        );
        r.register(
            "webhook_requests",
            "Webhook requests by provider and result",
            m.webhooks.clone(),
        );
        r.register("fetches", "git fetches by upstream and result", m.fetches.clone());
        r.register(
            "circuit_open",
            "1 while an upstream's rate-limit circuit is open",
            m.circuit_open.clone(),
        );
        r.register(
            "fleet_engine_up",
            "1 while this fleet host reaches the NATS JetStream engine (absent without [fleet])",
            m.fleet_engine_up.clone(),
        );
        r.register(
            "fleet_conductor",
            "1 while this host holds the app's conductor lease",
            m.fleet_conductor.clone(),
        );
        r.register(
            "fleet_rollout_phase",
            "On the app's conductor: 1 for the phase its rollout is in (canary, waves, reverting, halted, done)",
            m.fleet_rollout_phase.clone(),
        );
        r.register(
            "fleet_hosts",
            "On the app's conductor: its hosts by state (live on the rollout's release, deploying, lost, other)",
            m.fleet_hosts.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// The conductor's view of one app's rollout: its phase, and its hosts counted by state.
pub fn fleet_rollout(app: &str, phase: &str, hosts: &[(&str, i64)]) {
    let m = get();
    for p in ["canary", "waves", "reverting", "halted", "done"] {
        let label = AppPhase {
            app: app.to_string(),
            phase: p.to_string(),
        };
        m.fleet_rollout_phase
            .get_or_create(&label)
            .set(i64::from(p == phase));
    }
    for (state, n) in hosts {
        let label = AppState {
            app: app.to_string(),
            state: state.to_string(),
        };
        m.fleet_hosts.get_or_create(&label).set(*n);
    }
}

pub fn webhook(provider: &'static str, result: &'static str) {
    get()
        .webhooks
        .get_or_create(&ProviderResult { provider, result })
        .inc();
}

pub fn fetch(upstream: &str, result: &str) {
    get()
        .fetches
        .get_or_create(&UpstreamResult {
            upstream: upstream.to_string(),
            result: result.to_string(),
        })
        .inc();
}

pub fn stage(app: &str, stage: &str, took: Duration) {
    get()
        .stage_seconds
        .get_or_create(&AppStage {
            app: app.to_string(),
            stage: stage.to_string(),
        })
        .observe(took.as_secs_f64());
}

pub fn deploy_finished(app: &str, outcome: &str, took: Option<Duration>) {
    let m = get();
    m.deploys
        .get_or_create(&AppOutcome {
            app: app.to_string(),
            outcome: outcome.to_string(),
        })
        .inc();
    if let Some(t) = took {
        m.deploy_seconds
            .get_or_create(&AppLabel { app: app.to_string() })
            .observe(t.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prometheus_text() {
        webhook("github", "queued");
        deploy_finished("blog", "succeeded", Some(Duration::from_secs(3)));
        stage("blog", "fetch", Duration::from_millis(300));
        let text = get().encode();
        assert!(
            text.contains("haul_webhook_requests_total{provider=\"github\",result=\"queued\"}"),
            "{text}"
        );
        assert!(
            text.contains("haul_deploys_total{app=\"blog\",outcome=\"succeeded\"} 1"),
            "{text}"
        );
        assert!(text.contains("haul_stage_duration_seconds_bucket{"), "{text}");
        assert!(text.contains("# EOF"));
    }
}
