//! `[apps.NAME.report]`: where an app's deploys are told back to the forge, as commit statuses on the commit
//! that was (or was to be) deployed. Delivery is `ops::report`'s; this is the setting, checked.

use std::path::PathBuf;

use serde::Deserialize;

use super::files::ConfigDir;

/// `[apps.NAME.report]` as written.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReport {
    pub(crate) provider: String,
    pub(crate) repository: String,
    pub(crate) token_file: PathBuf,
    pub(crate) api_url: Option<String>,
    pub(crate) context: Option<String>,
}

/// Whose commit-status API a report goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusApi {
    /// `POST /repos/{owner}/{repo}/statuses/{sha}` (GitHub and GitHub Enterprise's `/api/v3`).
    Github,
    /// `POST /projects/{path}/statuses/{sha}` (GitLab's `/api/v4`).
    Gitlab,
    /// `POST /repos/{owner}/{repo}/statuses/{sha}` (Gitea's and Forgejo's `/api/v1`).
    Gitea,
    /// `POST /repositories/{workspace}/{slug}/commit/{sha}/statuses/build` (Bitbucket Cloud's `/2.0`).
    Bitbucket,
}

/// A checked `[apps.NAME.report]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportConfig {
    pub api: StatusApi,
    /// As written (`github`, `gitlab`, `gitea`, `forgejo`, `bitbucket`): what logs and `haul check` say.
    pub provider: String,
    /// `owner/name` (GitLab: `group/subgroup/name`).
    pub repository: String,
    /// A token that can only write commit statuses; a private file, read at each report.
    pub token_file: PathBuf,
    /// The API root, without a trailing `/`.
    pub api_url: String,
    /// The status's name on the commit (GitHub's `context`, GitLab's `name`, Bitbucket's `key`).
    pub context: String,
}

/// The longest context any of the forges keeps (Bitbucket's `key`).
const MAX_CONTEXT: usize = 40;

pub(crate) fn parse(raw: RawReport, app: &str, dir: &ConfigDir) -> Result<ReportConfig, String> {
    let at = format!("[apps.{app}.report]");
    let (api, default_api) = match raw.provider.as_str() {
        "github" => (StatusApi::Github, Some("https://api.github.com")),
        "gitlab" => (StatusApi::Gitlab, Some("https://gitlab.com/api/v4")),
        "gitea" | "forgejo" => (StatusApi::Gitea, None),
        "bitbucket" => (StatusApi::Bitbucket, Some("https://api.bitbucket.org/2.0")),
        other => {
            return Err(format!(
                "{at} provider: {other:?} is not one of github, gitlab, gitea, forgejo, bitbucket"
            ))
        }
    };
    let api_url = match (raw.api_url.as_deref(), default_api) {
        (Some(u), _) => u.trim_end_matches('/').to_string(),
        (None, Some(d)) => d.to_string(),
        (None, None) => {
            return Err(format!(
                "{at} api_url: {} has no one public instance; set the API root, e.g. \"https://git.example.com/api/v1\"",
                raw.provider
            ))
        }
    };
    check_api_url(&api_url).map_err(|e| format!("{at} api_url: {e}"))?;
    let nested = api == StatusApi::Gitlab;
    check_repository(&raw.repository, nested).map_err(|e| format!("{at} repository: {e}"))?;
    let context = raw.context.unwrap_or_else(|| format!("haul/{app}"));
    if context.is_empty() || context.chars().count() > MAX_CONTEXT || context.chars().any(|c| c.is_control())
    {
        return Err(format!(
            "{at} context: {context:?} must be 1 to {MAX_CONTEXT} printable characters (Bitbucket keeps no more)"
        ));
    }
    Ok(ReportConfig {
        api,
        provider: raw.provider,
        repository: raw.repository,
        token_file: dir.resolve(&raw.token_file),
        api_url,
        context,
    })
}

/// HTTPS, or plain HTTP to this machine only: the token must never cross a network in the clear.
fn check_api_url(url: &str) -> Result<(), String> {
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        let host = r.split(['/', ':']).next().unwrap_or("");
        let loopback = host == "localhost"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
            || r.starts_with("[::1]");
        if !loopback {
            return Err(format!(
                "{url:?} is plain HTTP to another machine: the token would cross the network in the clear; use https://"
            ));
        }
        r
    } else {
        return Err(format!("{url:?} is not an http(s) URL"));
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty()
        || host.contains('@')
        || url.contains(['?', '#'])
        || url.chars().any(char::is_whitespace)
    {
        return Err(format!(
            "{url:?} must be a plain API root (no credentials, query or fragment)"
        ));
    }
    Ok(())
}

/// `owner/name`, or for GitLab any depth of groups: each part of the characters forges allow in a path.
fn check_repository(r: &str, nested: bool) -> Result<(), String> {
    let parts: Vec<&str> = r.split('/').collect();
    let shape = if nested {
        parts.len() >= 2
    } else {
        parts.len() == 2
    };
    let fine = |p: &&str| {
        !p.is_empty()
            && *p != "."
            && *p != ".."
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if shape && parts.iter().all(fine) {
        Ok(())
    } else {
        Err(format!(
            "{r:?} is not {}",
            if nested {
                "a project path like \"group/name\" or \"group/subgroup/name\""
            } else {
                "\"owner/name\""
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(provider: &str, repository: &str, api_url: Option<&str>) -> RawReport {
        RawReport {
            provider: provider.into(),
            repository: repository.into(),
            token_file: "/etc/haul/keys/status".into(),
            api_url: api_url.map(str::to_string),
            context: None,
        }
    }

    fn dir() -> ConfigDir {
        ConfigDir::of(std::path::Path::new("/etc/haul/haul.toml"))
    }

    #[test]
    fn providers_default_their_public_api_and_a_context() {
        let r = parse(raw("github", "acme/blog", None), "blog", &dir()).expect("github");
        assert_eq!(
            (r.api, r.api_url.as_str(), r.context.as_str()),
            (StatusApi::Github, "https://api.github.com", "haul/blog")
        );
        let r = parse(raw("gitlab", "acme/web/blog", None), "blog", &dir()).expect("gitlab");
        assert_eq!(r.api_url, "https://gitlab.com/api/v4");
        let r = parse(
            raw("forgejo", "acme/blog", Some("https://codeberg.org/api/v1/")),
            "blog",
            &dir(),
        )
        .expect("forgejo");
        assert_eq!(
            (r.api, r.api_url.as_str()),
            (StatusApi::Gitea, "https://codeberg.org/api/v1")
        );
        let r = parse(
            raw("gitea", "acme/blog", Some("http://127.0.0.1:3000/api/v1")),
            "blog",
            &dir(),
        );
        assert!(r.is_ok(), "plain HTTP to this machine is fine");
    }

    #[test]
    fn bad_settings_are_refused_with_the_key() {
        for (provider, repo, url, says) in [
            ("gitea", "acme/blog", None, "api_url"),
            ("svn", "acme/blog", None, "provider"),
            (
                "github",
                "acme/blog",
                Some("http://api.example.com"),
                "in the clear",
            ),
            (
                "github",
                "acme/blog",
                Some("https://user:pw@api.github.com"),
                "no credentials",
            ),
            ("github", "acme/blog", Some("ftp://api.github.com"), "not an http"),
            ("github", "acme", None, "owner/name"),
            ("github", "acme/web/blog", None, "owner/name"),
            ("github", "acme/../blog", None, "owner/name"),
            ("gitlab", "acme/bl og", None, "group/name"),
        ] {
            let e = parse(raw(provider, repo, url), "blog", &dir()).expect_err(says);
            assert!(e.contains(says) && e.contains("[apps.blog.report]"), "{e}");
        }
        let mut r = raw("bitbucket", "acme/blog", None);
        r.context = Some("x".repeat(41));
        assert!(parse(r, "blog", &dir()).is_err_and(|e| e.contains("context")));
    }
}
