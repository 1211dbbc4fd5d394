//! The daemon's own log (stderr; journald under systemd). Every line emitted while a deploy runs is inside a
//! `deploy{id=… app=…}` span, so it carries the same id as the audit row and the deploy's log file.
//! `HAUL_LOG` sets the level: error, warn, info (default) or debug.

use tracing_subscriber::fmt;
use tracing_subscriber::layer::SubscriberExt;

pub fn init() {
    let level = match std::env::var("HAUL_LOG").as_deref() {
        Ok("error") => tracing::Level::ERROR,
        Ok("warn") => tracing::Level::WARN,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    // The NATS client's own connection chatter ("connected successfully", "event: closed") only from debug
    // on: haul says what the engine's state means for the fleet itself.
    let nats = if level >= tracing::Level::DEBUG {
        level
    } else {
        tracing::Level::WARN.min(level)
    };
    let targets = tracing_subscriber::filter::Targets::new()
        .with_default(level)
        .with_target("async_nats", nats);
    let subscriber = fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .finish()
        .with(targets);
    let _ = tracing::subscriber::set_global_default(subscriber);
}
