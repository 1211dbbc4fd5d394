//! The fleet: many hosts deploying the same apps through one NATS JetStream engine.
//!
//! Only a config with `[fleet]` reaches this layer; without it haul never opens a NATS connection. What is
//! here so far is the fleet's spine, on which rollouts will run:
//!
//! - `engine`: the connection (short pings, bounded reconnect backoff with jitter) and haul's buckets.
//! - `lease`: one conductor per app, by compare-and-set on a key with a per-message TTL; the revision of the
//!   write that took the lease is its fencing epoch.
//! - `hosts`: each host's heartbeat record (what it has live, per fleet app) and the fleet's status as
//!   `haul fleet status` shows it.
//! - `rollout`: proposals (triggers handed over), the conductor's decision (one forge fetch, a release
//!   bundle in the object store), the waves.
//! - `steer`: people steering a rollout: abort, resume, and the fleet's rollback (sticky against
//!   automatic triggers).
//! - `assigned`: each host's side: the assignment's claim verified again here, its bundle downloaded, its
//!   deploy submitted (or its refusal recorded).
//! - `agent`: the daemon's loop that keeps the heartbeat and the campaigns going, and says whether the
//!   engine is reachable (`/healthz`, `haul_fleet_engine_up`).
//!
//! Decisions are made by compare-and-set results, never by a read: a read may come from a lagging replica.
//! A write that timed out may have landed, so it is read back before anything is concluded.

mod agent;
mod artifact;
mod assigned;
mod engine;
mod hosts;
mod lease;
mod rollout;
mod steer;

pub use agent::{spawn, AgentHandle, AgentParts, AppReport, Reporter};
pub use engine::{Engine, FleetError};
pub use hosts::{AppStatus, FleetStatus, HostStatus, RolloutStatus};
pub use lease::{Lease, LeaseState};
pub use rollout::{Assignment, Proposal, Submitter, Verifier};
pub use steer::RollbackPlan;

/// The KV bucket of the conductors' leases (`conductor.<app>`): one value per key, TTL'd messages.
pub const LEASES_BUCKET: &str = "haul_leases";
/// The KV bucket of the hosts' heartbeats (`<host>`): one value per key.
pub const HOSTS_BUCKET: &str = "haul_hosts";
/// The KV bucket of the rollouts: `proposal.<app>.<deploy-id>` (a trigger a host handed over),
/// `desired.<app>` (the release the conductor decided on), `rollout.<app>` (its progress) and
/// `assign.<app>.<host>` (what a host is to deploy).
pub const FLEET_BUCKET: &str = "haul_fleet";
/// The object store of the release bundles (`<app>/<sha>.bundle`).
pub const RELEASES_STORE: &str = "haul_releases";
