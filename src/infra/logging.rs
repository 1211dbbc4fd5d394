//! The daemon's own log (stderr; journald under systemd). Every line emitted while a deploy runs is inside a
//! `deploy{id=… app=…}` span, so it carries the same id as the audit row and the deploy's log file.
//! `HAUL_LOG` sets the level: error, warn, info (default) or debug.

use tracing_subscriber::fmt;

pub fn init() {
    let level = match std::env::var("HAUL_LOG").as_deref() {
        Ok("error") => tracing::Level::ERROR,
        Ok("warn") => tracing::Level::WARN,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    let _ = fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
