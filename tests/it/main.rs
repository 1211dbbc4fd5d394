//! haul's integration tests: one binary, real servers on loopback (sshd + git-shell, the haul daemon), no
//! mocks. Each test gets its own temporary directory and ports. Run with `./scripts/test`.

mod artifact_servers;
mod artifacts;
mod controls;
mod faults;
mod fleet;
mod forges;
mod fuzz;
mod nats;
mod ops;
mod replays;
mod report;
mod spine;
mod support;
mod tidy;
