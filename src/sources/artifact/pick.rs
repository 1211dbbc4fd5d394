//! Which version of an artifact a trigger means, and whether deploying it would go forward: the rules a
//! single host's pipeline and a fleet's conductor apply alike, so that a replayed or out-of-order trigger is
//! refused by the same words wherever it lands.

use super::{Fetched, Resolved, Wanted};
use crate::config::{AppConfig, Source};

/// Which version a request names: an image's tag (`refs/tags/<tag>`) or pinned digest (a 64-hex `sha` is
/// the manifest digest), a templated location's `{sha}`. An error is why the deploy fails.
pub fn wanted(
    app: &AppConfig,
    sha: Option<&str>,
    git_ref: Option<&str>,
    digest: Option<&str>,
) -> Result<Wanted, String> {
    let is_image = matches!(app.source, Source::Image(_));
    let wanted = Wanted {
        tag: git_ref
            .and_then(|r| r.strip_prefix("refs/tags/"))
            .map(String::from),
        version: if is_image { None } else { sha.map(String::from) },
        digest: match (is_image, sha, digest) {
            (true, Some(s), _) if crate::model::is_full_sha(s) && s.len() == 64 => {
                Some(format!("sha256:{s}"))
            }
            (_, _, d) => d.map(String::from),
        },
    };
    if let (true, Some(s)) = (is_image, sha) {
        if wanted.digest.is_none() {
            return Err(format!("{s:?} is not a manifest digest: an image is deployed by its full sha256 (64 hex digits), or by its tag"));
        }
    }
    Ok(wanted)
}

/// What was live before, as far as the forward rule needs it.
pub struct Live<'a> {
    /// The ref it was deployed as (an image's `refs/tags/<tag>`).
    pub git_ref: Option<&'a str>,
    /// Its audit sha (an image's digest, hex).
    pub sha: Option<&'a str>,
    /// Where it was deployed (a release id, a rollout id), for the refusal's words.
    pub what: &'a str,
}

/// An error is why the trigger is ignored. An image never goes back on an automatic trigger: not to an
/// older tag than the live one (a tag glob), not to a digest the tag no longer points at, and what is live
/// already is not pulled again. A person may deploy any digest of the repository (`resolved` then takes the
/// pinned one).
pub fn image_moves_forward(
    app: &AppConfig,
    automatic: bool,
    live: &Live<'_>,
    wanted: &Wanted,
    resolved: &mut Resolved,
) -> Result<(), String> {
    let live_tag = live.git_ref.and_then(|r| r.strip_prefix("refs/tags/"));
    if let (true, true, Some(l)) = (automatic, app.track.is_glob(), live_tag) {
        if crate::sources::git::version_cmp(&resolved.name, l).is_lt() {
            return Err(format!(
                "tag {} is older than the live {l}: a replayed or out-of-order trigger; nothing deployed",
                resolved.name
            ));
        }
    }
    let current = resolved.digest.clone().unwrap_or_default();
    match &wanted.digest {
        // A trigger's digest must still be what the tag points at: an old delivery never rolls back.
        Some(pinned) if *pinned != current && automatic => {
            return Err(format!(
                "the trigger named {pinned}, but tag {} now points at {current}: a replayed or out-of-order trigger; nothing deployed",
                resolved.name
            ))
        }
        Some(pinned) => resolved.digest = Some(pinned.clone()),
        None => {}
    }
    let hex = resolved
        .digest
        .as_deref()
        .map(|d| d.trim_start_matches("sha256:"));
    if automatic && hex.is_some() && hex == live.sha {
        return Err(format!(
            "{} is already live as {}; nothing downloaded",
            resolved.location, live.what
        ));
    }
    Ok(())
}

/// What the audit calls the sha: the digest, unless a templated location is named by a version.
pub fn audit_sha(app: &AppConfig, wanted: &Wanted, fetched: &Fetched) -> String {
    let hex = fetched.digest.trim_start_matches("sha256:").to_string();
    if !matches!(app.source, Source::Image(_)) && app.source.is_templated() {
        wanted
            .version
            .clone()
            .map(|v| v.to_ascii_lowercase())
            .unwrap_or(hex)
    } else {
        hex
    }
}
