//! The running daemon: start-up, the webhook door (HTTP), the control socket, the poll timers, liveness.
//! Wires the layers below together; holds no deploy logic of its own.

pub mod control;
pub mod daemon;
pub mod http;
pub mod liveness;
pub mod poll;
pub mod runtime;
