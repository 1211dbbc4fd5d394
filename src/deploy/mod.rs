//! Turning a request into a live release: the per-app queue (one running, one pending, newest wins, start-up
//! recovery), the pipeline (fetch, build, switch, activate, health, roll back) and the on-disk release
//! contract. Knows nothing of HTTP or of how notifications are delivered.

pub mod fleet;
mod gates;
pub(crate) mod pipeline;
pub(crate) mod queue;
pub mod release;
#[cfg(test)]
pub(crate) mod testkit;
