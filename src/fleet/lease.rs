//! A conductor's lease: one holder per app, by compare-and-set on `conductor.<app>` in the leases bucket.
//!
//! Every write to a lease key is a publish that names the revision it replaces and carries a TTL, so a holder
//! that stops renewing loses the lease when the engine expires its last write, and a taker can never leave a
//! key that does not expire. The revision of the write that took the lease is its **epoch**: it only grows,
//! so a host can refuse a directive from a conductor older than one it has seen. A holder keeps a local
//! deadline a little short of the TTL and stops acting as the conductor when it passes without a renewal,
//! even while it cannot reach the engine to hear that someone else took over.
//!
//! The value says who holds it: `{"holder": host, "instance": a per-process id, "epoch": 0 on the taking
//! write (its own revision), the epoch after}`. A released lease is a value with no holder and a 1 s TTL.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv::Operation;
use serde::{Deserialize, Serialize};

use super::engine::{Engine, FleetError};

/// A held lease stops counting this long before the engine would expire it.
const FENCE_MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct LeaseValue {
    #[serde(default)]
    holder: String,
    #[serde(default)]
    instance: String,
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    at_ms: i64,
}

/// What a lease key says, as read (possibly from a lagging replica: for display and for a guess at the
/// revision to replace, never for a decision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Nobody holds it; the next taker replaces `revision` (0: the key never held anything).
    Free { revision: u64 },
    Held {
        holder: String,
        instance: String,
        epoch: u64,
        revision: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Holding {
    revision: u64,
    epoch: u64,
    deadline: Instant,
}

/// One app's lease, as seen by one process.
pub struct Lease {
    app: String,
    host: String,
    instance: String,
    ttl: Duration,
    holding: Option<Holding>,
}

impl Lease {
    pub fn new(app: &str, host: &str, instance: &str, ttl: Duration) -> Lease {
        Lease {
            app: app.to_string(),
            host: host.to_string(),
            instance: instance.to_string(),
            ttl,
            holding: None,
        }
    }

    pub fn app(&self) -> &str {
        &self.app
    }

    pub fn key(app: &str) -> String {
        format!("conductor.{app}")
    }

    /// The epoch this process holds the lease under, while its local deadline has not passed.
    pub fn epoch(&self) -> Option<u64> {
        self.holding
            .filter(|h| Instant::now() < h.deadline)
            .map(|h| h.epoch)
    }

    /// Reads the key (for display, or to guess the revision a takeover must replace).
    pub async fn read(engine: &Engine, app: &str) -> Result<LeaseState, FleetError> {
        let entry = engine
            .leases
            .entry(Lease::key(app))
            .await
            .map_err(|e| FleetError::Unreachable(super::engine::chain(&e)))?;
        Ok(match entry {
            None => LeaseState::Free { revision: 0 },
            Some(e) if e.operation != Operation::Put => LeaseState::Free { revision: e.revision },
            Some(e) => match serde_json::from_slice::<LeaseValue>(&e.value) {
                Ok(v) if !v.holder.is_empty() => LeaseState::Held {
                    epoch: if v.epoch == 0 { e.revision } else { v.epoch },
                    holder: v.holder,
                    instance: v.instance,
                    revision: e.revision,
                },
                // Released, or not a value haul wrote: whoever replaces it takes the lease.
                _ => LeaseState::Free { revision: e.revision },
            },
        })
    }

    /// Takes the lease if it is free, renews it if this process holds it. `Ok(true)`: held, for at least
    /// until the local deadline. `Ok(false)`: someone else holds it. An error: the engine could not say;
    /// a holding survives it until its deadline.
    pub async fn campaign(&mut self, engine: &Engine) -> Result<bool, FleetError> {
        if let Some(h) = self.holding {
            if Instant::now() >= h.deadline {
                self.holding = None;
            } else {
                return self.renew(engine, h).await;
            }
        }
        let expected = match Lease::read(engine, &self.app).await? {
            LeaseState::Free { revision } => revision,
            // Still this process's, though its deadline passed (the engine was away): renewed by
            // compare-and-set under the same epoch, so nobody waits out the TTL of a holder that is alive.
            LeaseState::Held {
                instance,
                epoch,
                revision,
                ..
            } if instance == self.instance => {
                let h = Holding {
                    revision,
                    epoch,
                    deadline: Instant::now(),
                };
                return self.renew(engine, h).await;
            }
            LeaseState::Held { .. } => return Ok(false),
        };
        let started = Instant::now();
        let value = self.value(0);
        match engine
            .publish_cas(self.subject(), value, expected, self.ttl)
            .await
        {
            Ok(revision) => {
                self.hold(revision, revision, started);
                Ok(true)
            }
            Err(FleetError::Conflict) => Ok(false),
            Err(FleetError::Unknown(why)) => {
                // Did the taking write land? Only a value naming this process, newer than what it replaced.
                match Lease::read(engine, &self.app).await {
                    Ok(LeaseState::Held {
                        instance,
                        epoch,
                        revision,
                        ..
                    }) if instance == self.instance && revision > expected => {
                        self.hold(revision, epoch, started);
                        Ok(true)
                    }
                    Ok(_) => Ok(false),
                    Err(_) => Err(FleetError::Unknown(why)),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn renew(&mut self, engine: &Engine, h: Holding) -> Result<bool, FleetError> {
        let started = Instant::now();
        match engine
            .publish_cas(self.subject(), self.value(h.epoch), h.revision, self.ttl)
            .await
        {
            Ok(revision) => {
                self.hold(revision, h.epoch, started);
                Ok(true)
            }
            Err(FleetError::Conflict) => {
                self.holding = None;
                Ok(false)
            }
            Err(FleetError::Unknown(why)) => match Lease::read(engine, &self.app).await {
                Ok(LeaseState::Held {
                    instance,
                    epoch,
                    revision,
                    ..
                }) if instance == self.instance && epoch == h.epoch => {
                    self.hold(revision, epoch, started);
                    Ok(true)
                }
                Ok(_) => {
                    self.holding = None;
                    Ok(false)
                }
                // Still unknown: the holding stands until its deadline, no longer.
                Err(_) => Err(FleetError::Unknown(why)),
            },
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (at shutdown), so another host takes over within a second instead of a TTL.
    pub async fn release(&mut self, engine: &Engine) -> Result<(), FleetError> {
        let Some(h) = self.holding.take() else {
            return Ok(());
        };
        let released = serde_json::to_vec(&LeaseValue {
            holder: String::new(),
            instance: String::new(),
            epoch: h.epoch,
            at_ms: crate::model::now_ms(),
        })
        .unwrap_or_default();
        match engine
            .publish_cas(
                self.subject(),
                released.into(),
                h.revision,
                Duration::from_secs(1),
            )
            .await
        {
            Ok(_) | Err(FleetError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn hold(&mut self, revision: u64, epoch: u64, started: Instant) {
        let deadline = started + self.ttl.saturating_sub(FENCE_MARGIN);
        self.holding = Some(Holding {
            revision,
            epoch,
            deadline,
        });
    }

    fn subject(&self) -> String {
        format!("$KV.{}.{}", super::LEASES_BUCKET, Lease::key(&self.app))
    }

    fn value(&self, epoch: u64) -> bytes::Bytes {
        let v = LeaseValue {
            holder: self.host.clone(),
            instance: self.instance.clone(),
            epoch,
            at_ms: crate::model::now_ms(),
        };
        serde_json::to_vec(&v).unwrap_or_default().into()
    }
}
