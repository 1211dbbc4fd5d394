//! Upstreams: what haul owes each forge it fetches from. Per upstream host (shared by every app that uses it):
//! a fetch budget (`max_fetches_per_minute`, a token bucket: work beyond it waits, and meanwhile newer requests
//! coalesce in the queue) and a circuit that a rate-limit answer opens for as long as the forge asked
//! (`Retry-After`), during which nothing fetches from that host. This is what makes "a retry loop got our deploy
//! key rate-limited" impossible.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The longest a circuit stays open on one rate-limit answer, whatever the forge says.
pub const MAX_OPEN: Duration = Duration::from_secs(3600);
/// How long a circuit stays open when the forge gave no `Retry-After`.
pub const DEFAULT_OPEN: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Upstream {
    open_until: Option<Instant>,
    tokens: f64,
    refilled: Option<Instant>,
}

#[derive(Default)]
pub struct Upstreams {
    inner: Mutex<HashMap<String, Upstream>>,
}

/// The process-wide registry: every app's fetches to one host share it.
pub fn global() -> &'static Upstreams {
    static G: OnceLock<Upstreams> = OnceLock::new();
    G.get_or_init(Upstreams::default)
}

impl Upstreams {
    /// How long the circuit of `upstream` stays open, if it is.
    pub fn open_for(&self, upstream: &str) -> Option<Duration> {
        let now = Instant::now();
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(upstream)
            .and_then(|u| u.open_until)
            .filter(|t| *t > now)
            .map(|t| t - now)
    }

    /// A rate-limit answer: nothing fetches from `upstream` for `for_`.
    pub fn open(&self, upstream: &str, for_: Duration) {
        let until = Instant::now() + for_.min(MAX_OPEN);
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let u = map.entry(upstream.to_string()).or_default();
        u.open_until = Some(u.open_until.map_or(until, |t| t.max(until)));
    }

    /// Takes one fetch from the budget, or says how long to wait for one.
    pub fn take(&self, upstream: &str, per_minute: u32) -> Result<(), Duration> {
        let per_minute = f64::from(per_minute.max(1));
        let rate = per_minute / 60.0;
        let now = Instant::now();
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let u = map.entry(upstream.to_string()).or_default();
        let last = u.refilled.unwrap_or_else(|| {
            u.tokens = per_minute;
            now
        });
        u.tokens = (u.tokens + now.duration_since(last).as_secs_f64() * rate).min(per_minute);
        u.refilled = Some(now);
        if u.tokens >= 1.0 {
            u.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - u.tokens) / rate))
        }
    }
}

/// A deploy waits at most this long for a rate-limit circuit to close; beyond it, the deploy fails and says so.
pub const MAX_CIRCUIT_WAIT: Duration = Duration::from_secs(600);

/// What one guarded operation cost.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub attempts: u32,
    /// Time spent waiting: backoff, budget, circuit.
    pub waited: Duration,
    /// Set if the upstream rate-limited us: how long it asked us to stay away.
    pub rate_limited: Option<Duration>,
}

/// Runs `op` (one fetch, one download) against `host` within its budget and circuit, retrying transient and
/// rate-limited failures a bounded number of times (`attempts` in all) with backoff and full jitter. A
/// permanent failure returns at once: exactly one attempt. Every source (git, registry, object store, URL)
/// goes through here, so none of them can loop.
pub async fn guarded<T, F, Fut>(
    host: &str,
    per_minute: u32,
    attempts: u32,
    note: &(dyn Fn(&str) + Sync),
    mut op: F,
) -> (Result<T, crate::model::failure::Failure>, Report)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::model::failure::Failure>>,
{
    use crate::model::failure::{self, Failure, Kind};
    let attempts = attempts.max(1);
    let upstreams = global();
    let mut report = Report::default();
    loop {
        // The circuit: an upstream that rate-limited us is left alone until it said we may come back.
        if let Some(open) = upstreams.open_for(host) {
            if open > MAX_CIRCUIT_WAIT {
                let f = Failure {
                    kind: Kind::RateLimited,
                    message: format!(
                        "{host} rate-limited us; its circuit stays open for {}s more, so haul is not fetching (it will deploy on the next trigger after that)",
                        open.as_secs()
                    ),
                    retry_after: Some(open),
                };
                return (Err(f), report);
            }
            note(&format!(
                "  ! {host} is rate-limiting us (circuit open): waiting {:.1}s before fetching",
                open.as_secs_f64()
            ));
            tracing::warn!(upstream = %host, "circuit open: waiting {:.1}s", open.as_secs_f64());
            report.waited += open;
            tokio::time::sleep(open).await;
        }
        // The budget: a storm of triggers waits here (and coalesces in the queue) instead of hammering.
        while let Err(wait) = upstreams.take(host, per_minute) {
            note(&format!(
                "  ! fetch budget for {host} spent (max_fetches_per_minute = {per_minute}): waiting {:.1}s",
                wait.as_secs_f64()
            ));
            report.waited += wait;
            tokio::time::sleep(wait).await;
        }
        report.attempts += 1;
        let attempt = report.attempts;
        match op().await {
            Ok(v) => return (Ok(v), report),
            Err(f) if f.kind == Kind::RateLimited => {
                let open = f.retry_after.unwrap_or(DEFAULT_OPEN);
                upstreams.open(host, open);
                report.rate_limited = Some(open);
                note(&format!(
                    "  ! fetch attempt {attempt}/{attempts} was rate-limited by {host} (Retry-After {}s): circuit open",
                    open.as_secs()
                ));
                tracing::warn!(upstream = %host, "rate-limited; circuit open for {}s", open.as_secs());
                if attempt >= attempts {
                    let f = Failure {
                        message: format!(
                            "{} (after {attempt} attempts; circuit open for {}s)",
                            f.message,
                            open.as_secs()
                        ),
                        ..f
                    };
                    return (Err(f), report);
                }
            }
            Err(f) if f.kind == Kind::Transient && attempt < attempts => {
                let wait = failure::backoff(attempt - 1, Duration::from_secs(1), Duration::from_secs(30));
                note(&format!(
                    "  ! fetch attempt {attempt}/{attempts} failed (transient): {f}; retrying in {:.1}s",
                    wait.as_secs_f64()
                ));
                tracing::warn!(upstream = %host, attempt, "failed (transient), retrying: {f}");
                report.waited += wait;
                tokio::time::sleep(wait).await;
            }
            Err(mut f) => {
                if attempt > 1 {
                    f.message = format!("{} (after {attempt} attempts)", f.message);
                }
                return (Err(f), report);
            }
        }
    }
}

/// rustls needs its crypto chosen once per process: ring (no C toolchain, no cmake), for the HTTP clients
/// of artifacts and commit statuses.
pub fn tls() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another part of the process installed one first: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `Retry-After` (seconds or an HTTP date) or GitHub's `x-ratelimit-reset` (epoch seconds), from lines of a git
/// HTTP trace.
pub fn retry_after(lines: &[String]) -> Option<Duration> {
    for line in lines.iter().rev() {
        let lower = line.to_ascii_lowercase();
        if let Some(i) = lower.find("retry-after:") {
            let v = line[i + "retry-after:".len()..].trim();
            if let Ok(secs) = v.parse::<u64>() {
                return Some(Duration::from_secs(secs));
            }
            if let Ok(t) = httpdate::parse_http_date(v) {
                return Some(t.duration_since(std::time::SystemTime::now()).unwrap_or_default());
            }
        }
        if let Some(i) = lower.find("x-ratelimit-reset:") {
            if let Ok(epoch) = line[i + "x-ratelimit-reset:".len()..].trim().parse::<u64>() {
                let at = std::time::UNIX_EPOCH + Duration::from_secs(epoch);
                return Some(
                    at.duration_since(std::time::SystemTime::now())
                        .unwrap_or_default(),
                );
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_and_circuit() {
        let u = Upstreams::default();
        for _ in 0..3 {
            assert_eq!(u.take("h", 3), Ok(()));
        }
        let wait = u.take("h", 3).expect_err("over budget");
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert_eq!(u.open_for("h"), None);
        u.open("h", Duration::from_secs(5));
        assert!(u.open_for("h").is_some_and(|d| d <= Duration::from_secs(5)));
        u.open("h", Duration::from_secs(99_999));
        assert!(u.open_for("h").is_some_and(|d| d <= MAX_OPEN));
    }

    #[test]
    fn retry_after_forms() {
        let l = |s: &str| vec![s.to_string()];
        assert_eq!(
            retry_after(&l("12:00:00.0 http.c:700 <= Recv header: Retry-After: 7")),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&l("Retry-After: Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&l("nothing here")), None);
    }
}
