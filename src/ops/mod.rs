//! Watching production: notification delivery and the dead-man's switch, the status page, systemd
//! integration. Knows nothing of the queue or the pipeline: deploys reach it as events.

pub mod notify;
pub mod page;
pub mod report;
pub mod systemd;
