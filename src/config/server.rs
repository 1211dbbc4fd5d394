//! The daemon-wide settings at the top of `haul.toml`: where it listens and keeps its state, and the limits
//! that protect the webhook endpoint from clients that are slow, large or many.
//!
//! Everything here but `state_dir` has a default, so a small config names only where haul keeps its state.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::files::ConfigDir;
use super::raw::RawConfig;
use super::units::{duration_or, parse_duration, size_or};

/// The top-level settings, validated; [`super::Config`] carries them as its own fields.
pub(crate) struct ServerSettings {
    pub(crate) listen: String,
    pub(crate) state_dir: PathBuf,
    pub(crate) max_body_bytes: usize,
    pub(crate) body_timeout: Duration,
    pub(crate) header_timeout: Duration,
    pub(crate) stop_grace: Duration,
    pub(crate) log_retention: Option<Duration>,
    pub(crate) rate_limit_per_minute: u32,
    pub(crate) allow_ips: Vec<IpNet>,
    pub(crate) client_ip_header: Option<String>,
    pub(crate) status_page: bool,
    pub(crate) public_url: Option<String>,
}

pub(crate) fn parse(raw: &RawConfig, dir: &ConfigDir) -> Result<ServerSettings, String> {
    let max_body_bytes = size_or("max_body", raw.max_body.as_deref(), 1024 * 1024)?;
    if max_body_bytes < 1024 {
        return Err("max_body must be at least 1KiB".into());
    }
    let body_timeout = duration_or(
        "body_timeout",
        raw.body_timeout.as_deref(),
        Duration::from_secs(10),
    )?;
    let header_timeout = duration_or(
        "header_timeout",
        raw.header_timeout.as_deref(),
        Duration::from_secs(10),
    )?;
    let log_retention = parse_log_retention(raw.log_retention.as_deref())?;
    let stop_grace = duration_or("stop_grace", raw.stop_grace.as_deref(), Duration::from_secs(30))?;
    let allow_ips = raw
        .allow_ips
        .iter()
        .map(|cidr| parse_network(cidr))
        .collect::<Result<_, _>>()?;
    if let Some(h) = &raw.client_ip_header {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            return Err(format!("client_ip_header: {h:?} is not a header name"));
        }
    }
    Ok(ServerSettings {
        listen: raw.listen.clone(),
        state_dir: dir.resolve(&raw.state_dir),
        max_body_bytes,
        body_timeout,
        header_timeout,
        stop_grace,
        log_retention,
        rate_limit_per_minute: raw.rate_limit_per_minute.unwrap_or(600),
        allow_ips,
        client_ip_header: raw.client_ip_header.clone(),
        status_page: raw.status_page.unwrap_or(true),
        public_url: raw.public_url.as_deref().map(parse_public_url).transpose()?,
    })
}

/// `public_url`: an http(s) URL without credentials, query or fragment; kept without a trailing `/`.
fn parse_public_url(u: &str) -> Result<String, String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| format!("public_url: {u:?} is not an http(s) URL"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty()
        || host.contains('@')
        || u.contains(['?', '#'])
        || u.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "public_url: {u:?} must be where people reach haul (\"https://deploy.example.com\"), without credentials, query or fragment"
        ));
    }
    Ok(u.trim_end_matches('/').to_string())
}

/// 90 days unless set; `"forever"` keeps every log.
fn parse_log_retention(value: Option<&str>) -> Result<Option<Duration>, String> {
    match value {
        None => Ok(Some(Duration::from_secs(90 * 24 * 3600))),
        Some("forever") => Ok(None),
        Some(s) => {
            let d = parse_duration(s).map_err(|e| format!("log_retention: {e}"))?;
            if d < Duration::from_secs(24 * 3600) || d > Duration::from_secs(100 * 365 * 24 * 3600) {
                return Err("log_retention must be between 1d and 100y (or \"forever\")".into());
            }
            Ok(Some(d))
        }
    }
}

/// An `allow_ips` entry: a CIDR network, or one address (a network of one).
fn parse_network(cidr: &str) -> Result<IpNet, String> {
    cidr.parse::<IpNet>()
        .or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("allow_ips: {cidr:?} is not an address or a CIDR network like \"192.0.2.0/24\""))
}
