//! The health gate run after `activate`: an HTTP check against the app on this machine, or a command.
//!
//! A release that fails it is rolled back, so a check that can never pass (a bad URL, zero retries) is refused
//! here rather than discovered as a rollback on the first deploy.

use std::time::Duration;

use super::raw::RawHealth;
use super::units::duration_or;

/// The health gate run after `activate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub check: HealthCheck,
    /// Limit for one attempt.
    pub timeout: Duration,
    /// Attempts before the release is declared unhealthy.
    pub retries: u32,
    /// Wait between attempts.
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// `GET http://host:port/path` must answer 2xx.
    Url { host: String, port: u16, path: String },
    /// A command, run like a step in the release directory, must exit 0.
    Command(String),
}

/// `[apps.X.health]`: exactly one of `url` or `command`, then the retry budget.
pub(crate) fn parse(h: RawHealth) -> Result<Health, String> {
    let check = match (h.url, h.command) {
        (Some(url), None) => {
            let (host, port, path) = parse_health_url(&url)?;
            HealthCheck::Url { host, port, path }
        }
        (None, Some(cmd)) if !cmd.trim().is_empty() => HealthCheck::Command(cmd),
        _ => return Err("health needs exactly one of `url` or `command`".into()),
    };
    let retries = h.retries.unwrap_or(5);
    if !(1..=100).contains(&retries) {
        return Err("health.retries must be between 1 and 100".into());
    }
    Ok(Health {
        check,
        timeout: duration_or("health.timeout", h.timeout.as_deref(), Duration::from_secs(30))?,
        retries,
        interval: duration_or("health.interval", h.interval.as_deref(), Duration::from_secs(2))?,
    })
}

/// `http://host[:port]/path` (plain HTTP: a health check talks to the app on this machine).
fn parse_health_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("health.url {url:?} must be http:// (the app, on this machine); use health.command for anything else"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.to_string(),
            p.parse::<u16>()
                .map_err(|_| format!("health.url {url:?} has a bad port"))?,
        ),
        _ => (authority.to_string(), 80),
    };
    if host.is_empty() || path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!("health.url {url:?} is not a URL"));
    }
    Ok((
        host.trim_start_matches('[').trim_end_matches(']').to_string(),
        port,
        path.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_urls() {
        assert_eq!(
            parse_health_url("http://127.0.0.1:8080/healthz"),
            Ok(("127.0.0.1".into(), 8080, "/healthz".into()))
        );
        assert_eq!(
            parse_health_url("http://localhost"),
            Ok(("localhost".into(), 80, "/".into()))
        );
        assert_eq!(
            parse_health_url("http://[::1]:9/x?y=1"),
            Ok(("::1".into(), 9, "/x?y=1".into()))
        );
        assert!(parse_health_url("https://example.com/").is_err());
        assert!(parse_health_url("http://h:99999/").is_err());
    }
}
