//! haul: a pull-based deploy agent. The production server holds a read-only credential and pulls; a signed
//! trigger says when.
//!
//! # Layout
//! One folder per layer; a folder imports only the layers below it (the tidy test in `tests/it/tidy.rs`
//! keeps this true; ARCHITECTURE.md has the map and each folder's invariants).
//! - [`model`]: the shared vocabulary (ids, triggers, states, requests, failure kinds); imports nothing of haul.
//! - [`infra`]: the one subprocess runner, deploy logs, locks, scratch paths, the loopback HTTP client, metrics.
//! - [`config`]: the configuration contract: raw TOML -> a validated `Config`.
//! - [`store`]: the audit log in SQLite, the only code that speaks SQL.
//! - [`intake`]: webhook bytes + headers -> a verified, typed decision (pure; the trust boundary).
//! - [`sources`]: git mirrors and artifacts, their verification, the per-upstream budget and circuit.
//! - [`deploy`]: the per-app queue, the pipeline (fetch -> build -> switch -> activate -> roll back), releases.
//! - [`fleet`]: many hosts through NATS JetStream: the engine connection, conductor leases, heartbeats.
//! - [`ops`]: notifications and the dead-man's switch, the status page, systemd.
//! - [`server`]: the daemon: the webhook door, the control socket, poll timers, liveness.
//! - [`cli`]: the command line, `haul init`, `haul demo`, completions and the man page.

pub mod cli;
pub mod config;
pub mod deploy;
pub mod fleet;
pub(crate) mod infra;
pub mod intake;
pub mod model;
pub(crate) mod ops;
pub mod server;
pub(crate) mod sources;
pub mod store;
