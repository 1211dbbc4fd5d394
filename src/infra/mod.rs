//! The machine's plumbing, shared by every layer above: the one subprocess runner, deploy log files, `flock`
//! locks, scratch paths, the loopback HTTP client, metrics and the daemon's log format. Knows nothing of apps'
//! sources, the queue or HTTP serving.

pub mod deploylog;
pub mod httpc;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod runner;
pub mod scratch;
pub mod state_dir;
pub mod upstream;
