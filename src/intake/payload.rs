//! Payload: the one JSON parse each provider makes, always after its signature has been checked, and the
//! pieces of payload several forges share. The shared shapes are one type on purpose: a field that fails to
//! parse must refuse a delivery the same way for every forge that carries it.

use serde::Deserialize;

use super::decide::RepoName;
use super::Rejected;

pub(super) fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Rejected> {
    serde_json::from_slice(body)
        .map_err(|e| Rejected::Malformed(format!("payload is not valid JSON of the expected shape: {e}")))
}

/// A person or a system named by `name` (GitHub's pusher, a registry's actor).
#[derive(Deserialize)]
pub(super) struct Named {
    pub(super) name: Option<String>,
}

/// A forge account (GitHub's sender, Gitea's and Forgejo's pusher and sender).
#[derive(Deserialize)]
pub(super) struct Login {
    pub(super) login: Option<String>,
    pub(super) username: Option<String>,
    pub(super) full_name: Option<String>,
}

/// The repository a push is about, as GitHub, Gitea, Forgejo and Bitbucket Cloud name it (`owner/name`).
#[derive(Deserialize)]
pub(super) struct Repository {
    pub(super) full_name: Option<String>,
}

/// `repository.full_name`, for `decide::check_repository`.
pub(super) fn full_name(r: Option<&Repository>) -> Option<RepoName<'_>> {
    r?.full_name.as_deref().map(RepoName::Path)
}

pub(super) fn required_ref(r: Option<String>) -> Result<String, Rejected> {
    r.ok_or_else(|| Rejected::Malformed("push payload has no \"ref\"".into()))
}

pub(super) fn required_sha(s: Option<String>) -> Result<String, Rejected> {
    s.ok_or_else(|| Rejected::Malformed("push payload has no \"after\" sha".into()))
}

/// `gate_workflow` is the workflow's name, its file (`ci.yml`) or its path (`.github/workflows/ci.yml`, `.gitea/workflows/ci.yml`).
pub(super) fn workflow_matches(wanted: Option<&str>, name: Option<&str>, files: &[Option<&str>]) -> bool {
    let wanted = wanted.unwrap_or_default();
    if wanted.is_empty() {
        return false;
    }
    name == Some(wanted)
        || files.iter().flatten().any(|f| {
            // Gitea's run path carries the ref: `ci.yml@refs/heads/main`.
            let f = f.split('@').next().unwrap_or(f);
            f == wanted || f.ends_with(&format!("/{wanted}")) || wanted.ends_with(&format!("/{f}"))
        })
}
