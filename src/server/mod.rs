//! The running daemon: start-up, the webhook door (HTTP), the control socket, the poll timers, liveness.
//! Wires the layers below together; holds no deploy logic of its own.

pub mod control;
pub(crate) mod daemon;
pub(crate) mod http;
pub(crate) mod liveness;
pub(crate) mod poll;
pub(crate) mod runtime;
