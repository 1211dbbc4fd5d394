//! `[fleet]` and `[apps.NAME.rollout]`: the hosts that deploy an app together through NATS JetStream.
//!
//! Without `[fleet]` haul never touches NATS. With it, every app that says `fleet = true` is deployed across
//! every host whose config has that app with `fleet = true`; the engine's addresses and this host's name are
//! checked here, the credential files' modes at preflight like every other secret.

use std::path::PathBuf;
use std::time::Duration;

use super::files::ConfigDir;
use super::raw::{RawFleet, RawRollout};
use super::units::duration_or;

/// How this host reaches the fleet's engine, and what it is called there.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The NATS servers (`nats://` or `tls://`), any of which may be down.
    pub servers: Vec<String>,
    /// This host's name in the fleet: letters, digits, `-` and `_` (a NATS subject token).
    pub host: String,
    /// A NATS credentials file (user JWT and nkey seed).
    pub credentials_file: Option<PathBuf>,
    /// A user of the servers' own config (`authorization { users = [...] }`) and the file holding its
    /// password: what a cluster without an operator uses instead of `credentials_file`.
    pub user_password: Option<(String, PathBuf)>,
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate and its key, for servers that verify clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// How many engine nodes keep each of haul's buckets (3 for a 3-node cluster; 1 for a lone server).
    pub replicas: usize,
    /// How long a conductor's lease lasts without a renewal. Longer than the engine's leader failover (4-7 s).
    pub lease_ttl: Duration,
}

/// How a fleet app's release moves across its hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// Hosts deployed first, alone.
    pub canary: usize,
    /// Then waves of at most this many hosts.
    pub max_parallel: usize,
    /// How long a wave stays healthy before the next starts.
    pub soak: Duration,
    /// Failed or unhealthy hosts tolerated before the rollout halts.
    pub max_failures: usize,
}

impl Default for Rollout {
    fn default() -> Rollout {
        Rollout {
            canary: 1,
            max_parallel: 1,
            soak: Duration::ZERO,
            max_failures: 0,
        }
    }
}

/// A name that is one NATS subject token and one KV key token: what a host and a fleet app must be.
pub(crate) fn is_valid_fleet_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

pub(crate) fn parse(raw: RawFleet, dir: &ConfigDir) -> Result<FleetConfig, String> {
    if raw.nats.is_empty() {
        return Err(
            "[fleet] nats must list the engine's servers, e.g. nats = [\"nats://10.0.0.5:4222\"]".into(),
        );
    }
    for url in &raw.nats {
        check_server(url)?;
    }
    let host = match raw.host {
        Some(h) => h,
        None => default_host()?,
    };
    if !is_valid_fleet_name(&host) {
        return Err(format!(
            "[fleet] host {host:?} must be letters, digits, '-' and '_' (at most 64, starting with a letter or digit); set host = \"web-3\""
        ));
    }
    let tls_client = match (raw.tls_cert_file, raw.tls_key_file) {
        (Some(c), Some(k)) => Some((dir.resolve(&c), dir.resolve(&k))),
        (None, None) => None,
        _ => {
            return Err(
                "[fleet] tls_cert_file and tls_key_file go together (a client certificate and its key)"
                    .into(),
            )
        }
    };
    let user_password = match (raw.user, raw.password_file) {
        (Some(u), Some(p)) if !u.is_empty() && raw.credentials_file.is_none() => Some((u, dir.resolve(&p))),
        (None, None) => None,
        (Some(_), Some(_)) if raw.credentials_file.is_some() => {
            return Err("[fleet] user and password_file replace credentials_file: set one or the other".into())
        }
        _ => {
            return Err(
                "[fleet] user and password_file go together (a user of the servers' authorization block and the file of its password)"
                    .into(),
            )
        }
    };
    let replicas = raw.replicas.unwrap_or(3);
    if !(1..=5).contains(&replicas) {
        return Err("[fleet] replicas must be between 1 and 5 (3 for a 3-node cluster)".into());
    }
    let lease_ttl = duration_or(
        "[fleet] lease_ttl",
        raw.lease_ttl.as_deref(),
        Duration::from_secs(15),
    )?;
    if lease_ttl < Duration::from_secs(10) || lease_ttl.subsec_nanos() != 0 {
        return Err("[fleet] lease_ttl must be whole seconds and at least 10s (the engine takes 4-7 s to replace a lost leader)".into());
    }
    Ok(FleetConfig {
        servers: raw.nats,
        host,
        credentials_file: raw.credentials_file.map(|p| dir.resolve(&p)),
        user_password,
        tls_ca_file: raw.tls_ca_file.map(|p| dir.resolve(&p)),
        tls_client,
        replicas,
        lease_ttl,
    })
}

fn check_server(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .ok_or_else(|| format!("[fleet] nats: {url:?} must start with nats:// or tls://"))?;
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if rest.contains('@') {
        return Err(format!(
            "[fleet] nats: {url:?} carries a credential; put it in credentials_file instead"
        ));
    }
    let ok = hostport
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok || hostport.contains('/') {
        return Err(format!("[fleet] nats: {url:?} must be scheme://host:port"));
    }
    Ok(())
}

/// The machine's short host name (up to its first dot), when it makes a valid fleet name.
fn default_host() -> Result<String, String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    let short = name.split('.').next().unwrap_or_default().to_string();
    if rc != 0 || !is_valid_fleet_name(&short) {
        return Err(format!(
            "[fleet] host is not set and the host name {name:?} is not a valid fleet name; set host = \"web-3\""
        ));
    }
    Ok(short)
}

/// `fleet = true` and `[apps.NAME.rollout]`: `None` for an app that deploys on this host alone.
pub(crate) fn parse_app(name: &str, fleet: bool, raw: Option<RawRollout>) -> Result<Option<Rollout>, String> {
    if !fleet {
        return match raw {
            Some(_) => Err("a rollout section needs fleet = true".into()),
            None => Ok(None),
        };
    }
    if !is_valid_fleet_name(name) {
        return Err(
            "a fleet app's name is letters, digits, '-' and '_' (no '.': it is a NATS subject token)".into(),
        );
    }
    let r = raw.unwrap_or(RawRollout {
        canary: None,
        max_parallel: None,
        soak: None,
        max_failures: None,
    });
    let d = Rollout::default();
    let rollout = Rollout {
        canary: r.canary.unwrap_or(d.canary),
        max_parallel: r.max_parallel.unwrap_or(d.max_parallel),
        soak: duration_or("rollout.soak", r.soak.as_deref(), d.soak)?,
        max_failures: r.max_failures.unwrap_or(d.max_failures),
    };
    if rollout.max_parallel == 0 {
        return Err("rollout.max_parallel must be at least 1".into());
    }
    if rollout.canary > 100 || rollout.max_parallel > 1000 {
        return Err("rollout.canary is at most 100 and rollout.max_parallel at most 1000".into());
    }
    Ok(Some(rollout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(nats: &[&str], host: Option<&str>) -> RawFleet {
        RawFleet {
            nats: nats.iter().map(|s| s.to_string()).collect(),
            host: host.map(str::to_string),
            credentials_file: None,
            user: None,
            password_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            replicas: None,
            lease_ttl: None,
        }
    }

    fn dir() -> ConfigDir {
        ConfigDir::of(std::path::Path::new("/etc/haul/haul.toml"))
    }

    #[test]
    fn a_fleet_with_defaults() {
        let f = parse(
            raw(&["nats://10.0.0.5:4222", "tls://n2.example:4222"], Some("web-3")),
            &dir(),
        )
        .expect("valid");
        assert_eq!(f.host, "web-3");
        assert_eq!(f.replicas, 3);
        assert_eq!(f.lease_ttl, Duration::from_secs(15));
        assert!(f.tls_client.is_none());
    }

    #[test]
    fn bad_fleet_settings_name_the_key() {
        let cases: &[(RawFleet, &str)] = &[
            (raw(&[], Some("h")), "nats must list"),
            (raw(&["http://x:4222"], Some("h")), "must start with nats://"),
            (raw(&["nats://u:p@x:4222"], Some("h")), "carries a credential"),
            (raw(&["nats://x"], Some("h")), "scheme://host:port"),
            (raw(&["nats://x:0"], Some("h")), "scheme://host:port"),
            (raw(&["nats://x:4222/p"], Some("h")), "scheme://host:port"),
            (raw(&["nats://x:4222"], Some("web.3")), "host \"web.3\""),
            (raw(&["nats://x:4222"], Some("")), "host \"\""),
        ];
        for (r, want) in cases {
            let r = RawFleet {
                nats: r.nats.clone(),
                host: r.host.clone(),
                ..raw(&[], None)
            };
            let err = parse(r, &dir()).expect_err(want);
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
        let mut r = raw(&["nats://x:4222"], Some("h"));
        r.tls_cert_file = Some("c.pem".into());
        assert!(parse(r, &dir()).expect_err("half").contains("go together"));
        let mut r = raw(&["nats://x:4222"], Some("h"));
        r.user = Some("web-3".into());
        assert!(parse(r, &dir()).expect_err("half").contains("go together"));
        let mut r = raw(&["nats://x:4222"], Some("h"));
        r.user = Some("web-3".into());
        r.password_file = Some("nats.password".into());
        r.credentials_file = Some("nats.creds".into());
        assert!(parse(r, &dir()).expect_err("both").contains("one or the other"));
        let mut r = raw(&["nats://x:4222"], Some("h"));
        r.user = Some("web-3".into());
        r.password_file = Some("nats.password".into());
        let f = parse(r, &dir()).expect("a user and its password file");
        assert_eq!(
            f.user_password,
            Some(("web-3".into(), "/etc/haul/nats.password".into()))
        );
        let mut r = raw(&["nats://x:4222"], Some("h"));
        r.replicas = Some(0);
        assert!(parse(r, &dir()).expect_err("0").contains("replicas"));
        for ttl in ["5s", "12500ms"] {
            let mut r = raw(&["nats://x:4222"], Some("h"));
            r.lease_ttl = Some(ttl.into());
            assert!(parse(r, &dir()).expect_err(ttl).contains("lease_ttl"), "{ttl}");
        }
    }

    #[test]
    fn rollouts() {
        assert_eq!(parse_app("blog", false, None), Ok(None));
        assert_eq!(parse_app("blog", true, None), Ok(Some(Rollout::default())));
        let r = RawRollout {
            canary: Some(2),
            max_parallel: Some(5),
            soak: Some("30s".into()),
            max_failures: Some(1),
        };
        let got = parse_app("blog", true, Some(r)).expect("valid").expect("fleet");
        assert_eq!(
            (got.canary, got.max_parallel, got.soak, got.max_failures),
            (2, 5, Duration::from_secs(30), 1)
        );
        let empty = || RawRollout {
            canary: None,
            max_parallel: None,
            soak: None,
            max_failures: None,
        };
        assert!(parse_app("blog", false, Some(empty()))
            .expect_err("x")
            .contains("fleet = true"));
        assert!(parse_app("my.blog", true, None)
            .expect_err("x")
            .contains("no '.'"));
        let zero = RawRollout {
            max_parallel: Some(0),
            ..empty()
        };
        assert!(parse_app("blog", true, Some(zero))
            .expect_err("x")
            .contains("max_parallel"));
        let soak = RawRollout {
            soak: Some("soon".into()),
            ..empty()
        };
        assert!(parse_app("blog", true, Some(soak))
            .expect_err("x")
            .contains("rollout.soak"));
    }
}
