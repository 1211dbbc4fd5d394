//! haul: a pull-based deploy agent. The production server holds a read-only credential and pulls; a signed
//! trigger says when.
//!
//! # Layout
//! - [`intake`]: webhook bytes + headers -> a verified, typed decision (pure; the trust boundary).
//! - [`page`]: the server-rendered status page.
//! - [`http`], [`control`]: the daemon's two doors (forge webhooks; the local `haul deploy` socket).
//! - [`poll`]: the `poll = "5m"` timer: `git ls-remote`, and a deploy request when the remote moved.
//! - [`queue`]: per app, one running deploy and one pending slot; newest wins; start-up recovery.
//! - [`pipeline`]: fetch -> resolve -> checkout -> build -> switch -> activate (-> roll back).
//! - [`httpc`]: a minimal loopback HTTP client (health checks, the demo).
//! - [`git`], [`release`], [`runner`]: the mirror and fetch, the on-disk release contract, the one subprocess runner.
//! - [`upstream`]: per forge host: the fetch budget and the rate-limit circuit.
//! - [`store`]: the audit log in SQLite, the only module that speaks SQL.
//! - [`notify`]: notifications (webhook, Slack, ntfy, email) and the dead-man's switch.
//! - [`metrics`]: Prometheus counters, histograms and scrape-time gauges.
//! - [`systemd`]: sd_notify (ready, watchdog, status, stopping) and `haul systemd-unit`.
//! - [`daemon`], [`cli`], [`demo`]: the daemon as a library function, the command line, the demo.
//! - [`model`], [`config`], [`failure`]: the shared vocabulary, the configuration contract, typed failures.

pub mod artifact;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod deploylog;
pub mod docs;
pub mod failure;
pub mod git;
pub mod http;
pub mod httpc;
pub mod init;
pub mod intake;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod page;
pub mod pipeline;
pub mod poll;
pub mod queue;
pub mod registry;
pub mod release;
pub mod runner;
pub mod scratch;
pub mod signature;
pub mod store;
pub mod systemd;
pub mod unpack;
pub mod upstream;
