//! Distribution: a registry's own notifications (Docker Distribution's webhook). The registry signs nothing;
//! it sends the bearer token it was configured with, and an envelope of events in which only the newest push
//! of a tag to this app's repository counts.

use http::HeaderMap;
use serde::Deserialize;

use super::decide::decide_image;
use super::payload::{parse, Named};
use super::verify::{check_token, header};
use super::{Accepted, Rejected};
use crate::config::{AppConfig, Source};
use crate::model;

#[derive(Deserialize)]
struct DistributionEnvelope {
    events: Vec<DistributionEvent>,
}

#[derive(Deserialize)]
struct DistributionEvent {
    id: Option<String>,
    action: Option<String>,
    target: Option<DistributionTarget>,
    actor: Option<Named>,
}

#[derive(Deserialize)]
struct DistributionTarget {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    digest: Option<String>,
    repository: Option<String>,
    tag: Option<String>,
}

pub(super) fn evaluate(
    app: &AppConfig,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, Rejected> {
    let auth = header(headers, "authorization").ok_or(Rejected::MissingSignature("Authorization"))?;
    let token = auth.strip_prefix("Bearer ").ok_or(Rejected::BadSignature)?.trim();
    check_token(secrets, token)?;
    let env: DistributionEnvelope = parse(body)?;
    let Source::Image(img) = &app.source else {
        return Ok(Accepted::OtherEvent("registry event".into()));
    };
    // The newest push of a tagged manifest to this repository; pulls, blob events and other repositories are
    // not this app's business.
    let push = env.events.into_iter().rev().find(|e| {
        e.action.as_deref() == Some("push")
            && e.target.as_ref().is_some_and(|t| {
                t.repository.as_deref() == Some(img.repository.as_str())
                    && t.tag.as_deref().is_some_and(|t| !t.is_empty())
                    && t.media_type
                        .as_deref()
                        .is_some_and(|m| m.contains("manifest") || m.contains("index"))
            })
    });
    let Some(ev) = push else {
        return Ok(Accepted::OtherEvent("registry event".into()));
    };
    let id = ev
        .id
        .ok_or_else(|| Rejected::Malformed("registry event has no id".into()))?;
    if !model::is_valid_delivery_id(&id) {
        return Err(Rejected::Malformed(
            "registry event id is not a valid delivery id".into(),
        ));
    }
    let (tag, digest) = ev.target.map_or((None, None), |t| (t.tag, t.digest));
    let actor = ev.actor.and_then(|a| a.name).unwrap_or_else(|| "registry".into());
    decide_image(app, "distribution", Some(id), tag, digest, &actor)
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use crate::config::{AppConfig, Provider};
    use crate::intake::test_support::*;
    use crate::intake::{evaluate, Accepted, Rejected};

    /// Registry notifications: what an image app accepts, and every bad input refused with nothing recorded.
    #[test]
    fn registry_notifications_fail_closed() {
        let now = 1_800_000_000;
        let app = image_app("");
        let digest = format!("sha256:{}", "a".repeat(64));
        let secrets = [SECRET.to_vec()];
        let body = distribution_body("acme/api", "main", &digest);
        let h = signed(Provider::Distribution, "", &body, now);
        let eval = |app: &AppConfig, p: Provider, h: &HeaderMap, b: &str| {
            evaluate(app, p, &secrets, h, b.as_bytes(), now)
        };
        match eval(&app, Provider::Distribution, &h, &body) {
            Ok(Accepted::Deploy(r)) => {
                assert_eq!(r.git_ref.as_deref(), Some("refs/tags/main"));
                assert_eq!(r.sha.as_deref(), Some("a".repeat(64).as_str()));
                assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
                assert_eq!(r.delivery_id.as_deref(), Some("ev-1"));
                assert_eq!(r.actor, "pusher");
            }
            other => panic!("registry push gave {other:?}"),
        }
        let bad_token = headers(&[("authorization", "Bearer not the secret at all")]);
        assert_eq!(
            eval(&app, Provider::Distribution, &bad_token, &body),
            Err(Rejected::BadSignature)
        );
        assert_eq!(
            eval(&app, Provider::Distribution, &HeaderMap::new(), &body),
            Err(Rejected::MissingSignature("Authorization"))
        );
        let basic = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(
            eval(&app, Provider::Distribution, &basic, &body),
            Err(Rejected::BadSignature)
        );
        // Another tag: recorded as ignored; another repository or a pull: not this app's business.
        assert!(matches!(
            eval(
                &app,
                Provider::Distribution,
                &h,
                &distribution_body("acme/api", "dev", &digest)
            ),
            Ok(Accepted::Ignore(..))
        ));
        assert!(matches!(
            eval(
                &app,
                Provider::Distribution,
                &h,
                &distribution_body("acme/other", "main", &digest)
            ),
            Ok(Accepted::OtherEvent(_))
        ));
        assert!(matches!(
            eval(
                &app,
                Provider::Distribution,
                &h,
                &body.replace("\"push\"", "\"pull\"")
            ),
            Ok(Accepted::OtherEvent(_))
        ));
        // Malformed digests and tags, and bodies that are not envelopes.
        for bad in [
            distribution_body("acme/api", "main", "sha256:abc"),
            distribution_body("acme/api", "main", &format!("sha512:{}", "a".repeat(128))),
            distribution_body("acme/api", "main", &format!("sha256:{}", "A".repeat(64))),
            distribution_body("acme/api", "-main", &digest),
            distribution_body("acme/api", "v1#x", &digest),
            distribution_body("acme/api", "v1%2F..", &digest),
            body.replace("\"id\":\"ev-1\"", "\"id\":\"ev 1\\n\""),
            "{}".to_string(),
            "not json".to_string(),
        ] {
            assert!(
                matches!(
                    eval(&app, Provider::Distribution, &h, &bad),
                    Err(Rejected::Malformed(_))
                ),
                "{bad}"
            );
        }
    }
}
