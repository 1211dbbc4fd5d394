//! Payload: the one JSON parse each provider makes, always after its signature has been checked, and the
//! pieces of payload several forges share. The shared shapes are one type on purpose: a field that fails to
//! parse must refuse a delivery the same way for every forge that carries it.

use serde::Deserialize;

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

pub(super) fn required_ref(r: Option<String>) -> Result<String, Rejected> {
    r.ok_or_else(|| Rejected::Malformed("push payload has no \"ref\"".into()))
}

pub(super) fn required_sha(s: Option<String>) -> Result<String, Rejected> {
    s.ok_or_else(|| Rejected::Malformed("push payload has no \"after\" sha".into()))
}
