//! The connection to the fleet's NATS JetStream engine, and haul's buckets in it.
//!
//! The client pings every 2 s (a frozen server is noticed in seconds, not minutes), reconnects on its own
//! with a capped, jittered backoff, and bounds every JetStream request and acknowledgement. Errors are
//! sorted into what the caller must do differently: a lost compare-and-set, a write whose outcome is
//! unknown (read it back), an engine that cannot be reached (keep serving, try later), and a refusal that
//! will not go away by retrying (a bucket with another shape, a missing permission).

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, kv};
use bytes::Bytes;

use super::{FLEET_BUCKET, HOSTS_BUCKET, LEASES_BUCKET, RELEASES_STORE};
use crate::config::FleetConfig;

/// How long a JetStream request or a publish acknowledgement may take: past the engine's normal answers
/// (about 1 ms on a LAN) and short enough that a lost leader is reported within a renewal period.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a deleted TTL'd value leaves its marker (the engine's minimum is 1 s).
const MARKER_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    /// Someone else's write came first (a lost compare-and-set).
    #[error("another write came first")]
    Conflict,
    /// The write may or may not have landed: read it back.
    #[error("the engine did not acknowledge the write in time ({0}); it may have landed")]
    Unknown(String),
    /// The engine, or the part of it this needs, cannot be reached now; nothing changed.
    #[error("the fleet's engine cannot be reached: {0}")]
    Unreachable(String),
    /// The engine refused, and will refuse again (a permission, a bucket's shape, a bad value).
    #[error("the fleet's engine refused: {0}")]
    Refused(String),
}

/// A connection to the engine, with haul's buckets open.
#[derive(Clone)]
pub struct Engine {
    client: async_nats::Client,
    js: jetstream::Context,
    pub(super) leases: kv::Store,
    pub(super) hosts: kv::Store,
    /// Proposals, desired releases, rollouts and assignments.
    pub(super) fleet: kv::Store,
    /// The release bundles, one per (app, sha).
    pub(super) releases: jetstream::object_store::ObjectStore,
    servers: String,
}

impl Engine {
    /// Connects (each server tried once) and opens, or creates, haul's buckets.
    pub async fn connect(cfg: &FleetConfig) -> Result<Engine, FleetError> {
        // async-nats' TLS uses rustls' process-wide provider; haul's is ring (as for the artifact clients).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let servers = cfg.servers.join(", ");
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("haul {} ({})", cfg.host, env!("CARGO_PKG_VERSION")))
            .ping_interval(Duration::from_secs(2))
            .connection_timeout(Duration::from_secs(3))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .reconnect_delay_callback(reconnect_delay);
        if cfg.servers.iter().any(|s| s.starts_with("tls://")) {
            opts = opts.require_tls(true);
        }
        if let Some(path) = &cfg.credentials_file {
            opts = opts.credentials_file(path).await.map_err(|e| {
                FleetError::Refused(format!("cannot read credentials_file {}: {e}", path.display()))
            })?;
        }
        if let Some((user, file)) = &cfg.user_password {
            let password = std::fs::read_to_string(file).map_err(|e| {
                FleetError::Refused(format!("cannot read password_file {}: {e}", file.display()))
            })?;
            opts = opts.user_and_password(user.clone(), password.trim_end_matches(['\r', '\n']).to_string());
        }
        if let Some(ca) = &cfg.tls_ca_file {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &cfg.tls_client {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        let client = opts
            .connect(cfg.servers.clone())
            .await
            .map_err(|e| FleetError::Unreachable(format!("cannot connect to {servers}: {}", chain(&e))))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(REQUEST_TIMEOUT);
        let leases = bucket(&js, LEASES_BUCKET, cfg.replicas, Some(MARKER_TTL)).await?;
        let hosts = bucket(&js, HOSTS_BUCKET, cfg.replicas, None).await?;
        let fleet = bucket(&js, FLEET_BUCKET, cfg.replicas, None).await?;
        let releases = object_store(&js, cfg.replicas).await?;
        Ok(Engine {
            client,
            js,
            leases,
            hosts,
            fleet,
            releases,
            servers,
        })
    }

    /// Whether the connection is up right now (a write may still fail: the engine may have no quorum).
    pub fn connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    pub fn servers(&self) -> &str {
        &self.servers
    }

    /// Publishes `value` to `subject` only if the subject's last message is `expected` (0: none), with a
    /// per-message TTL; the new revision. The one write path for TTL'd keys: async-nats'
    /// `create_with_ttl` drops the TTL when the key holds a tombstone, and `update` has no TTL.
    pub(super) async fn publish_cas(
        &self,
        subject: String,
        value: Bytes,
        expected: u64,
        ttl: Duration,
    ) -> Result<u64, FleetError> {
        let msg = jetstream::message::PublishMessage::build()
            .payload(value)
            .expected_last_subject_sequence(expected)
            .ttl(ttl);
        let ack = self
            .js
            .send_publish(subject, msg)
            .await
            .map_err(publish_error)?
            .await
            .map_err(publish_error)?;
        Ok(ack.sequence)
    }

    /// Closes the connection, sending what is buffered first.
    pub async fn close(self) {
        let _ = self.client.drain().await;
    }
}

/// Opens a bucket, creating it on first use: one value per key, on `replicas` nodes.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
    markers: Option<Duration>,
) -> Result<kv::Store, FleetError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let config = kv::Config {
        bucket: name.to_string(),
        description: "haul's fleet state (see haul's README, Fleet)".into(),
        history: 1,
        num_replicas: replicas,
        limit_markers: markers,
        ..Default::default()
    };
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another host created it first, or the engine is away: one more look tells which.
        Err(create) => js.get_key_value(name).await.map_err(|_| {
            let msg = format!(
                "cannot open or create the bucket {name} ({} replicas): {}",
                replicas,
                chain(&create)
            );
            match create.kind() {
                jetstream::context::CreateKeyValueErrorKind::TimedOut => FleetError::Unreachable(msg),
                _ if js_code(&create) == Some(10008) => FleetError::Unreachable(msg),
                _ => FleetError::Refused(msg),
            }
        }),
    }
}

/// Opens the release bundles' object store, creating it on first use.
async fn object_store(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<jetstream::object_store::ObjectStore, FleetError> {
    if let Ok(store) = js.get_object_store(RELEASES_STORE).await {
        return Ok(store);
    }
    let config = jetstream::object_store::Config {
        bucket: RELEASES_STORE.to_string(),
        description: Some("haul's release bundles (see haul's README, Fleet)".into()),
        num_replicas: replicas,
        ..Default::default()
    };
    match js.create_object_store(config).await {
        Ok(store) => Ok(store),
        Err(create) => js.get_object_store(RELEASES_STORE).await.map_err(|_| {
            FleetError::Unreachable(format!(
                "cannot open or create the object store {RELEASES_STORE}: {}",
                chain(&create)
            ))
        }),
    }
}

/// What a failed publish means for the caller.
fn publish_error(e: jetstream::context::PublishError) -> FleetError {
    match e.kind() {
        PublishErrorKind::WrongLastSequence => FleetError::Conflict,
        // Another compare-and-set on the same key was in flight on the leader: this one lost too.
        PublishErrorKind::Other if js_code(&e) == Some(10164) => FleetError::Conflict,
        PublishErrorKind::TimedOut => FleetError::Unknown(chain(&e)),
        PublishErrorKind::StreamNotFound | PublishErrorKind::BrokenPipe => FleetError::Unreachable(chain(&e)),
        _ => FleetError::Refused(chain(&e)),
    }
}

/// The JetStream error code somewhere in an error's sources.
pub(super) fn js_code(e: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(js) = err.downcast_ref::<jetstream::Error>() {
            return Some(js.error_code().0);
        }
        cur = err.source();
    }
    None
}

/// An error and its sources, on one line.
pub(super) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = err.source();
    }
    out
}

/// Reconnect backoff: 0 for the first attempt, then doubling from 250 ms to 5 s, each delay jittered to
/// between half and all of it, so that a fleet that lost its engine does not come back in lockstep.
fn reconnect_delay(attempt: usize) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let exp = attempt.saturating_sub(2).min(5) as u32;
    let base = Duration::from_millis(250)
        .saturating_mul(1 << exp)
        .min(Duration::from_secs(5));
    base.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_back_off_with_jitter_and_a_cap() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        for attempt in 2..40 {
            let d = reconnect_delay(attempt);
            assert!(
                d >= Duration::from_millis(125) && d <= Duration::from_secs(5),
                "{attempt}: {d:?}"
            );
        }
        let late: Vec<Duration> = (0..50).map(|_| reconnect_delay(30)).collect();
        assert!(late.iter().all(|d| *d >= Duration::from_millis(2500)));
        assert!(late.iter().any(|d| *d != late[0]), "jittered");
    }

    #[test]
    fn publish_errors_are_sorted() {
        use jetstream::context::PublishError;
        assert_eq!(
            publish_error(PublishError::new(PublishErrorKind::WrongLastSequence)),
            FleetError::Conflict
        );
        assert!(matches!(
            publish_error(PublishError::new(PublishErrorKind::TimedOut)),
            FleetError::Unknown(_)
        ));
        assert!(matches!(
            publish_error(PublishError::new(PublishErrorKind::StreamNotFound)),
            FleetError::Unreachable(_)
        ));
        assert!(matches!(
            publish_error(PublishError::new(PublishErrorKind::Other)),
            FleetError::Refused(_)
        ));
    }
}
