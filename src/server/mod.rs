//! The running daemon: start-up, the webhook door (HTTP), the control socket, the poll timers, liveness, and
//! (with `[fleet]`) the fleet agent.
//! Wires the layers below together; holds no deploy logic of its own.

pub mod control;
pub(crate) mod daemon;
pub(crate) mod fleet;
pub(crate) mod http;
pub(crate) mod liveness;
pub(crate) mod poll;
pub(crate) mod runtime;
