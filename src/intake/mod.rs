//! Intake: turns the raw bytes and headers of a webhook into a typed decision, and nothing else.
//!
//! This is the trust boundary. It is pure and cheap on purpose: it never touches git, the network, the disk or
//! a shell, so every decision that can be made without fetching (signature, event, branch filter, deletion,
//! tag) is made here, can be tested with a table of cases, and can be fuzzed. Signatures are checked over the
//! raw body, in constant time, before a single byte of JSON is parsed.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use base64::Engine;
use subtle::ConstantTimeEq;

use crate::config::{AppConfig, Provider, Source, Track};
use crate::model::{self, DeployRequest, Trigger};

/// What a verified webhook asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Queue this deploy.
    Deploy(DeployRequest),
    /// A push this app does not deploy (another branch, a tag, a deletion): recorded in the audit as ignored,
    /// never fetched.
    Ignore(DeployRequest, String),
    /// The forge checking that the hook works.
    Ping,
    /// A signed event that is not a push (issues, stars, ...): answered, not recorded.
    OtherEvent(String),
}

/// Why a webhook was refused. Nothing is recorded or queued for any of these.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("missing signature header {0}")]
    MissingSignature(&'static str),
    #[error("signature does not match")]
    BadSignature,
    #[error("timestamp is outside the 5-minute window (replayed, or a clock is wrong)")]
    Stale,
    #[error("malformed request: {0}")]
    Malformed(String),
}

impl Rejected {
    pub fn status(&self) -> u16 {
        match self {
            Rejected::MissingSignature(_) | Rejected::BadSignature | Rejected::Stale => 401,
            Rejected::Malformed(_) => 400,
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

/// Standard Webhooks: how far a timestamp may be from now.
pub const STANDARD_TOLERANCE_SECS: i64 = 5 * 60;

/// Verifies and parses one webhook delivery for `app`, whose webhook secrets (current, then previous) are
/// `secrets`. `now_secs` is the current Unix time (a parameter, so tests can replay published vectors).
pub fn evaluate(
    app: &AppConfig,
    provider: Provider,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
    now_secs: i64,
) -> Result<Accepted, Rejected> {
    match provider {
        Provider::Github => github(app, secrets, headers, body),
        Provider::Gitlab => gitlab(app, secrets, headers, body, now_secs),
        Provider::Gitea => gitea(app, secrets, headers, body, "gitea"),
        Provider::Forgejo => gitea(app, secrets, headers, body, "forgejo"),
        Provider::Bitbucket => bitbucket(app, secrets, headers, body),
        Provider::Standard => standard(app, secrets, headers, body, now_secs),
        Provider::Distribution => distribution(app, secrets, headers, body),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn first_header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| header(headers, n))
}

fn delivery(headers: &HeaderMap, names: &[&str]) -> Result<Option<String>, Rejected> {
    match first_header(headers, names) {
        Some(d) if model::is_valid_delivery_id(d) => Ok(Some(d.to_string())),
        Some(_) => Err(Rejected::Malformed(format!(
            "{} is not a valid delivery id",
            names[0]
        ))),
        None => Ok(None),
    }
}

/// The delivery id of a forge that always sends one: without it, replays could not be recognised.
fn required_delivery(headers: &HeaderMap, names: &[&str]) -> Result<String, Rejected> {
    delivery(headers, names)?.ok_or_else(|| {
        Rejected::Malformed(format!(
            "missing delivery id header ({}); the forge always sends one",
            names.join(" or ")
        ))
    })
}

/// Constant-time check of a hex HMAC-SHA256 against every configured secret.
pub fn verify_hmac_sha256_hex(secrets: &[Vec<u8>], body: &[u8], hex_sig: &str) -> bool {
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    verify_hmac_sha256(secrets.iter().map(Vec::as_slice), &[body], &sig)
}

fn verify_hmac_sha256<'a>(keys: impl IntoIterator<Item = &'a [u8]>, parts: &[&[u8]], sig: &[u8]) -> bool {
    if sig.len() != 32 {
        return false;
    }
    let mut ok = false;
    // Every key is tried, whatever the result, so timing does not say which one matched.
    for key in keys {
        let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
            continue;
        };
        for p in parts {
            mac.update(p);
        }
        ok |= mac.verify_slice(sig).is_ok();
    }
    ok
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// `sha256=<hex>` over `body` with `secret`: what GitHub and Bitbucket send (used by the demo and tests).
pub fn sign_github(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret, &[body])))
}

/// The key a Standard Webhooks secret stands for: `whsec_<base64>` decodes to its bytes; anything else is
/// used as it is.
fn standard_key(secret: &[u8]) -> Vec<u8> {
    match secret.strip_prefix(b"whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|_| secret.to_vec()),
        None => secret.to_vec(),
    }
}

/// `v1,<base64>`: a Standard Webhooks signature of `id.timestamp.body`.
pub fn sign_standard(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac_sha256(
        &standard_key(secret),
        &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
    );
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac))
}

/// Verifies the Standard Webhooks headers: any `v1` signature in the list, made with any secret, within the
/// timestamp window.
fn verify_standard(
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
    now_secs: i64,
) -> Result<String, Rejected> {
    let sigs = header(headers, "webhook-signature").ok_or(Rejected::MissingSignature("webhook-signature"))?;
    let id = header(headers, "webhook-id")
        .ok_or_else(|| Rejected::Malformed("missing webhook-id header".into()))?;
    if !model::is_valid_delivery_id(id) {
        return Err(Rejected::Malformed("webhook-id is not a valid message id".into()));
    }
    let ts = header(headers, "webhook-timestamp")
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or_else(|| Rejected::Malformed("missing or non-numeric webhook-timestamp header".into()))?;
    let keys: Vec<Vec<u8>> = secrets.iter().map(|s| standard_key(s)).collect();
    let ts_text = ts.to_string();
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts_text.as_bytes(), b".", body];
    let mut ok = false;
    for entry in sigs.split(' ').filter(|e| !e.is_empty()).take(16) {
        let Some(b64) = entry.strip_prefix("v1,") else {
            continue;
        };
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            continue;
        };
        ok |= verify_hmac_sha256(keys.iter().map(Vec::as_slice), &parts, &sig);
    }
    if !ok {
        return Err(Rejected::BadSignature);
    }
    // Checked after the signature, so an unsigned request learns nothing about the clock.
    if now_secs.abs_diff(ts) > STANDARD_TOLERANCE_SECS.unsigned_abs() {
        return Err(Rejected::Stale);
    }
    Ok(id.to_string())
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Rejected> {
    serde_json::from_slice(body)
        .map_err(|e| Rejected::Malformed(format!("payload is not valid JSON of the expected shape: {e}")))
}

/// One ref update as a forge reports it.
struct Change {
    git_ref: String,
    sha: Option<String>,
    deleted: bool,
}

#[derive(Deserialize)]
struct GithubPush {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    #[serde(default)]
    deleted: bool,
    pusher: Option<Named>,
    sender: Option<Login>,
}

#[derive(Deserialize)]
struct Named {
    name: Option<String>,
}

#[derive(Deserialize)]
struct Login {
    login: Option<String>,
    username: Option<String>,
    full_name: Option<String>,
}

fn required_ref(r: Option<String>) -> Result<String, Rejected> {
    r.ok_or_else(|| Rejected::Malformed("push payload has no \"ref\"".into()))
}

fn required_sha(s: Option<String>) -> Result<String, Rejected> {
    s.ok_or_else(|| Rejected::Malformed("push payload has no \"after\" sha".into()))
}

fn github(
    app: &AppConfig,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, Rejected> {
    let sig =
        header(headers, "x-hub-signature-256").ok_or(Rejected::MissingSignature("X-Hub-Signature-256"))?;
    let hex_sig = sig.strip_prefix("sha256=").ok_or(Rejected::BadSignature)?;
    if !verify_hmac_sha256_hex(secrets, body, hex_sig) {
        return Err(Rejected::BadSignature);
    }
    let event = header(headers, "x-github-event")
        .ok_or_else(|| Rejected::Malformed("missing X-GitHub-Event header".into()))?;
    let delivery_id = Some(required_delivery(headers, &["x-github-delivery"])?);
    match event {
        "ping" => return Ok(Accepted::Ping),
        "push" => {}
        "package" | "registry_package" if matches!(app.source, Source::Image(_)) => {
            return github_package(app, delivery_id, body)
        }
        other => return Ok(Accepted::OtherEvent(model::clean_actor(other))),
    }
    let push: GithubPush = parse(body)?;
    let actor = push
        .pusher
        .and_then(|p| p.name)
        .or_else(|| push.sender.and_then(|s| s.login))
        .unwrap_or_default();
    let change = Change {
        git_ref: required_ref(push.git_ref)?,
        sha: Some(required_sha(push.after)?),
        deleted: push.deleted,
    };
    decide(app, "github", delivery_id, vec![change], &actor)
}

/// GitHub's `package` / `registry_package` event: a container version published to GHCR.
#[derive(Deserialize)]
struct GithubPackageEvent {
    action: Option<String>,
    package: Option<GithubPackage>,
    registry_package: Option<GithubPackage>,
    sender: Option<Login>,
}

#[derive(Deserialize)]
struct GithubPackage {
    name: Option<String>,
    package_version: Option<GithubPackageVersion>,
}

#[derive(Deserialize)]
struct GithubPackageVersion {
    version: Option<String>,
    name: Option<String>,
    container_metadata: Option<GithubContainer>,
}

#[derive(Deserialize)]
struct GithubContainer {
    tag: Option<GithubTag>,
}

#[derive(Deserialize)]
struct GithubTag {
    name: Option<String>,
    digest: Option<String>,
}

fn github_package(app: &AppConfig, delivery_id: Option<String>, body: &[u8]) -> Result<Accepted, Rejected> {
    let ev: GithubPackageEvent = parse(body)?;
    if !matches!(ev.action.as_deref(), Some("published" | "updated")) {
        return Ok(Accepted::OtherEvent(format!(
            "package {}",
            model::clean_actor(ev.action.as_deref().unwrap_or("event"))
        )));
    }
    let Some(pkg) = ev.package.or(ev.registry_package) else {
        return Err(Rejected::Malformed("package event has no \"package\"".into()));
    };
    let Source::Image(img) = &app.source else {
        return Ok(Accepted::OtherEvent("package".into()));
    };
    // Another package of the same owner: not this app's business.
    let ours = img.repository.rsplit('/').next().unwrap_or("");
    if !pkg.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(ours)) {
        return Ok(Accepted::OtherEvent(format!(
            "package {}",
            model::clean_actor(pkg.name.as_deref().unwrap_or("?"))
        )));
    }
    let version = pkg.package_version;
    let tag = version
        .as_ref()
        .and_then(|v| v.container_metadata.as_ref())
        .and_then(|c| c.tag.as_ref());
    let digest = version
        .as_ref()
        .and_then(|v| v.version.clone().or_else(|| v.name.clone()))
        .filter(|d| model::is_sha256_digest(d))
        .or_else(|| {
            tag.and_then(|t| t.digest.clone())
                .filter(|d| model::is_sha256_digest(d))
        });
    // An untagged version (a platform's manifest of a multi-arch push, say) is not any tag's new version.
    let Some(tag) = tag.and_then(|t| t.name.clone()).filter(|t| !t.is_empty()) else {
        return Ok(Accepted::OtherEvent("untagged package version".into()));
    };
    let tag = Some(tag);
    let actor = ev.sender.and_then(|s| s.login).unwrap_or_default();
    decide_image(app, "github", delivery_id, tag, digest, &actor)
}

/// The registry's own notification (Docker Distribution's webhook): a JSON envelope of events, authenticated
/// by the `Authorization` header the registry was configured to send.
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

fn distribution(
    app: &AppConfig,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, Rejected> {
    let auth = header(headers, "authorization").ok_or(Rejected::MissingSignature("Authorization"))?;
    let token = auth.strip_prefix("Bearer ").ok_or(Rejected::BadSignature)?.trim();
    let mut ok = false;
    for s in secrets {
        ok |= bool::from(token.as_bytes().ct_eq(s));
    }
    if !ok {
        return Err(Rejected::BadSignature);
    }
    let env: DistributionEnvelope = parse(body)?;
    let Source::Image(img) = &app.source else {
        return Ok(Accepted::OtherEvent("registry event".into()));
    };
    // The newest push of a tagged manifest to this repository; pulls, blob events and other repositories are
    // not this app's business.
    let push = env.events.iter().rev().find(|e| {
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
        .clone()
        .ok_or_else(|| Rejected::Malformed("registry event has no id".into()))?;
    if !model::is_valid_delivery_id(&id) {
        return Err(Rejected::Malformed(
            "registry event id is not a valid delivery id".into(),
        ));
    }
    let target = ev.target.as_ref();
    let actor = ev
        .actor
        .as_ref()
        .and_then(|a| a.name.clone())
        .unwrap_or_else(|| "registry".into());
    decide_image(
        app,
        "distribution",
        Some(id),
        target.and_then(|t| t.tag.clone()),
        target.and_then(|t| t.digest.clone()),
        &actor,
    )
}

/// `decide` for an image app: the tag must be a valid tag this app deploys, the digest a sha256 digest.
fn decide_image(
    app: &AppConfig,
    provider: &str,
    delivery_id: Option<String>,
    tag: Option<String>,
    digest: Option<String>,
    actor: &str,
) -> Result<Accepted, Rejected> {
    if let Some(d) = &digest {
        if !model::is_sha256_digest(d) {
            return Err(Rejected::Malformed("digest is not sha256:<64 hex digits>".into()));
        }
    }
    let fixed = match &app.track {
        Track::Tags(g) if !g.contains(['*', '?']) => Some(g.clone()),
        _ => None,
    };
    let tag = match tag.or(fixed) {
        Some(t) if model::is_oci_tag(&t) => t,
        Some(_) => return Err(Rejected::Malformed("tag is not a valid image tag".into())),
        None => {
            return Err(Rejected::Malformed(
                "this app deploys tags matching a glob: the trigger must name the tag".into(),
            ))
        }
    };
    let git_ref = format!("refs/tags/{tag}");
    let request = DeployRequest {
        app: app.name.clone(),
        trigger: Trigger::Webhook,
        provider: Some(provider.to_string()),
        delivery_id,
        git_ref: Some(git_ref.clone()),
        sha: digest
            .as_deref()
            .map(|d| d.trim_start_matches("sha256:").to_string()),
        actor: model::clean_actor(actor),
        target: None,
        digest,
    };
    if app.track.wants(&git_ref) {
        Ok(Accepted::Deploy(request))
    } else {
        let reason = format!("tag {tag}: this app deploys {}", app.track.describe());
        Ok(Accepted::Ignore(request, reason))
    }
}

#[derive(Deserialize)]
struct GitlabPush {
    object_kind: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    user_username: Option<String>,
    user_name: Option<String>,
}

fn gitlab(
    app: &AppConfig,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
    now_secs: i64,
) -> Result<Accepted, Rejected> {
    // GitLab signs with Standard Webhooks when the hook has a signing token; otherwise it sends the secret
    // token as it is. A request carrying a signature is held to the signature.
    let delivery_id = if headers.contains_key("webhook-signature") {
        Some(verify_standard(secrets, headers, body, now_secs)?)
    } else {
        let token = header(headers, "x-gitlab-token").ok_or(Rejected::MissingSignature("X-Gitlab-Token"))?;
        let mut ok = false;
        for s in secrets {
            ok |= bool::from(token.as_bytes().ct_eq(s));
        }
        if !ok {
            return Err(Rejected::BadSignature);
        }
        delivery(
            headers,
            &["x-gitlab-webhook-uuid", "idempotency-key", "x-gitlab-event-uuid"],
        )?
    };
    let event = header(headers, "x-gitlab-event")
        .ok_or_else(|| Rejected::Malformed("missing X-Gitlab-Event header".into()))?;
    if event != "Push Hook" && event != "Tag Push Hook" {
        return Ok(Accepted::OtherEvent(model::clean_actor(event)));
    }
    let push: GitlabPush = parse(body)?;
    if !matches!(push.object_kind.as_deref(), Some("push" | "tag_push")) {
        return Err(Rejected::Malformed(
            "payload's object_kind is not push or tag_push".into(),
        ));
    }
    let actor = push.user_username.or(push.user_name).unwrap_or_default();
    let change = Change {
        git_ref: required_ref(push.git_ref)?,
        sha: Some(required_sha(push.after)?),
        deleted: false,
    };
    decide(app, "gitlab", delivery_id, vec![change], &actor)
}

#[derive(Deserialize)]
struct GiteaPush {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    pusher: Option<Login>,
    sender: Option<Login>,
}

fn gitea(
    app: &AppConfig,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
    flavour: &'static str,
) -> Result<Accepted, Rejected> {
    let (sig_headers, event_headers, delivery_headers): (&[&str], &[&str], &[&str]) = if flavour == "forgejo"
    {
        (
            &["x-forgejo-signature", "x-gitea-signature"],
            &["x-forgejo-event", "x-gitea-event"],
            &["x-forgejo-delivery", "x-gitea-delivery"],
        )
    } else {
        (&["x-gitea-signature"], &["x-gitea-event"], &["x-gitea-delivery"])
    };
    let missing = if flavour == "forgejo" {
        "X-Forgejo-Signature"
    } else {
        "X-Gitea-Signature"
    };
    let sig = first_header(headers, sig_headers).ok_or(Rejected::MissingSignature(missing))?;
    if !verify_hmac_sha256_hex(secrets, body, sig) {
        return Err(Rejected::BadSignature);
    }
    let event = first_header(headers, event_headers).ok_or_else(|| {
        Rejected::Malformed(format!(
            "missing X-{}-Event header",
            if flavour == "forgejo" { "Forgejo" } else { "Gitea" }
        ))
    })?;
    let delivery_id = Some(required_delivery(headers, delivery_headers)?);
    if event != "push" {
        return Ok(Accepted::OtherEvent(model::clean_actor(event)));
    }
    let push: GiteaPush = parse(body)?;
    let actor = push
        .pusher
        .and_then(|p| p.username.or(p.login).or(p.full_name))
        .or_else(|| push.sender.and_then(|s| s.username.or(s.login)))
        .unwrap_or_default();
    let change = Change {
        git_ref: required_ref(push.git_ref)?,
        sha: Some(required_sha(push.after)?),
        deleted: false,
    };
    decide(app, flavour, delivery_id, vec![change], &actor)
}

/// Bitbucket Cloud (`repo:push`) and Bitbucket Data Center (`repo:refs_changed`) share the signature header
/// but not the payload; both can carry several ref changes in one delivery.
#[derive(Deserialize)]
struct BitbucketPayload {
    push: Option<BbCloudPush>,
    changes: Option<Vec<BbServerChange>>,
    actor: Option<BbActor>,
}

#[derive(Deserialize)]
struct BbCloudPush {
    changes: Vec<BbCloudChange>,
}

#[derive(Deserialize)]
struct BbCloudChange {
    new: Option<BbCloudRef>,
    old: Option<BbCloudRef>,
}

#[derive(Deserialize)]
struct BbCloudRef {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    target: Option<BbTarget>,
}

#[derive(Deserialize)]
struct BbTarget {
    hash: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BbServerChange {
    ref_id: Option<String>,
    to_hash: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct BbActor {
    nickname: Option<String>,
    display_name: Option<String>,
    name: Option<String>,
    #[serde(rename = "displayName")]
    display_name_dc: Option<String>,
}

fn bitbucket(
    app: &AppConfig,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, Rejected> {
    let sig = header(headers, "x-hub-signature").ok_or(Rejected::MissingSignature("X-Hub-Signature"))?;
    let hex_sig = sig.strip_prefix("sha256=").ok_or(Rejected::BadSignature)?;
    if !verify_hmac_sha256_hex(secrets, body, hex_sig) {
        return Err(Rejected::BadSignature);
    }
    let event = header(headers, "x-event-key")
        .ok_or_else(|| Rejected::Malformed("missing X-Event-Key header".into()))?;
    let delivery_id = Some(required_delivery(headers, &["x-request-uuid", "x-request-id"])?);
    match event {
        "diagnostics:ping" => return Ok(Accepted::Ping),
        "repo:push" | "repo:refs_changed" => {}
        other => return Ok(Accepted::OtherEvent(model::clean_actor(other))),
    }
    let p: BitbucketPayload = parse(body)?;
    let mut changes = Vec::new();
    if let Some(push) = p.push {
        for c in push.changes {
            let (r, deleted) = match (c.new, c.old) {
                (Some(new), _) => (new, false),
                (None, Some(old)) => (old, true),
                (None, None) => continue,
            };
            let name = r
                .name
                .ok_or_else(|| Rejected::Malformed("a change has no ref name".into()))?;
            let prefix = match r.kind.as_deref() {
                Some("tag") | Some("annotated_tag") => "refs/tags/",
                _ => "refs/heads/",
            };
            changes.push(Change {
                git_ref: format!("{prefix}{name}"),
                sha: if deleted {
                    None
                } else {
                    r.target.and_then(|t| t.hash)
                },
                deleted,
            });
        }
    }
    for c in p.changes.unwrap_or_default() {
        changes.push(Change {
            git_ref: required_ref(c.ref_id)?,
            deleted: c.kind.as_deref() == Some("DELETE"),
            sha: c.to_hash,
        });
    }
    let actor = p
        .actor
        .and_then(|a| a.nickname.or(a.name).or(a.display_name).or(a.display_name_dc))
        .unwrap_or_default();
    decide(app, "bitbucket", delivery_id, changes, &actor)
}

/// What a CI job or a script sends with the `standard` provider (all fields optional).
#[derive(Deserialize)]
struct StandardPayload {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    sha: Option<String>,
    actor: Option<String>,
    /// An artifact: the image tag.
    tag: Option<String>,
    /// An artifact: the digest it must have (`sha256:<hex>`); `sha256` (bare hex) says the same.
    digest: Option<String>,
    sha256: Option<String>,
}

fn standard(
    app: &AppConfig,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
    now_secs: i64,
) -> Result<Accepted, Rejected> {
    let id = verify_standard(secrets, headers, body, now_secs)?;
    let p: StandardPayload = parse(body)?;
    match p.kind.as_deref() {
        None | Some("push") | Some("deploy") => {}
        Some("ping") => return Ok(Accepted::Ping),
        Some(other) => return Ok(Accepted::OtherEvent(model::clean_actor(other))),
    }
    let digest = match (p.digest, p.sha256) {
        (Some(d), _) => Some(d),
        (None, Some(h)) => Some(format!("sha256:{h}")),
        (None, None) => None,
    };
    let actor = p.actor.as_deref().unwrap_or("standard webhook");
    if matches!(app.source, Source::Image(_)) {
        let tag = p.tag.or_else(|| {
            p.git_ref
                .as_deref()
                .and_then(|r| r.strip_prefix("refs/tags/"))
                .map(String::from)
        });
        return decide_image(app, "standard", Some(id), tag, digest, actor);
    }
    if let Some(d) = &digest {
        if !model::is_sha256_digest(d) {
            return Err(Rejected::Malformed("digest is not sha256:<64 hex digits>".into()));
        }
    }
    let git_ref = match (p.git_ref, &app.track) {
        (Some(r), _) => r,
        (None, Track::Branch(b)) => format!("refs/heads/{b}"),
        (None, Track::Tags(_)) => {
            return Err(Rejected::Malformed(
                "this app deploys tags: the payload must name one in \"ref\"".into(),
            ))
        }
    };
    let change = Change {
        git_ref,
        sha: p.sha,
        deleted: false,
    };
    let decided = decide(app, "standard", Some(id), vec![change], actor)?;
    // An object or URL app: the digest the upload must have travels with the request.
    Ok(match decided {
        Accepted::Deploy(mut r) if app.source.is_artifact() => {
            r.digest = digest;
            Accepted::Deploy(r)
        }
        other => other,
    })
}

/// The part every forge shares once its payload is parsed: validate refs and shas, then filter. With several
/// changes (Bitbucket), the first one this app deploys wins.
fn decide(
    app: &AppConfig,
    provider: &str,
    delivery_id: Option<String>,
    changes: Vec<Change>,
    actor: &str,
) -> Result<Accepted, Rejected> {
    if changes.is_empty() {
        return Err(Rejected::Malformed("push payload names no ref".into()));
    }
    for c in &changes {
        if !model::is_valid_ref(&c.git_ref) {
            return Err(Rejected::Malformed(
                "push payload's ref is not a valid git ref name".into(),
            ));
        }
        if let Some(sha) = &c.sha {
            if !model::is_full_sha(sha) {
                return Err(Rejected::Malformed(
                    "push payload's sha is not a full commit sha".into(),
                ));
            }
        }
    }
    let request = |c: &Change, deleted: bool| DeployRequest {
        app: app.name.clone(),
        trigger: Trigger::Webhook,
        provider: Some(provider.to_string()),
        delivery_id: delivery_id.clone(),
        sha: if deleted { None } else { c.sha.clone() },
        git_ref: Some(c.git_ref.clone()),
        actor: model::clean_actor(actor),
        target: None,
        digest: None,
    };
    let is_deletion = |c: &Change| c.deleted || c.sha.as_deref().is_some_and(model::is_zero_sha);
    if let Some(c) = changes
        .iter()
        .find(|c| app.track.wants(&c.git_ref) && !is_deletion(c))
    {
        return Ok(Accepted::Deploy(request(c, false)));
    }
    let c = &changes[0];
    let reason = if is_deletion(c) {
        format!("{} was deleted; deletions are never deployed", c.git_ref)
    } else if let Some(tag) = c.git_ref.strip_prefix("refs/tags/") {
        format!("tag {tag}: this app deploys {}", app.track.describe())
    } else {
        format!("push to {}: this app deploys {}", c.git_ref, app.track.describe())
    };
    Ok(Accepted::Ignore(request(c, is_deletion(c)), reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &[u8] = b"It's a Secret to Everybody";

    fn app() -> AppConfig {
        crate::config::Config::parse(
            std::path::Path::new("/x/haul.toml"),
            "state_dir = \"/s\"\n[apps.blog]\nrepo = \"/r\"\npath = \"/p\"\n",
        )
        .expect("config")
        .apps
        .remove("blog")
        .expect("blog")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn githubs_published_vector() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
        assert_eq!(
            sign_github(SECRET, b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert!(verify_hmac_sha256_hex(
            &[SECRET.to_vec()],
            b"Hello, World!",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        ));
    }

    fn push_body(r: &str, after: &str) -> String {
        format!(r#"{{"ref":"{r}","after":"{after}","deleted":false,"pusher":{{"name":"octocat"}}}}"#)
    }

    #[test]
    fn github_table() {
        let app = app();
        let sha = "a".repeat(40);
        let ok = push_body("refs/heads/main", &sha);
        let sig = sign_github(SECRET, ok.as_bytes());
        let secrets = [b"an older secret that rotated".to_vec(), SECRET.to_vec()];
        type Want = Result<&'static str, Rejected>;
        type Case = (&'static str, Vec<(&'static str, String)>, String, Want);
        let cases: Vec<Case> = vec![
            (
                "valid",
                vec![
                    ("x-hub-signature-256", sig.clone()),
                    ("x-github-event", "push".into()),
                ],
                ok.clone(),
                Ok("deploy"),
            ),
            (
                "missing signature",
                vec![("x-github-event", "push".into())],
                ok.clone(),
                Err(Rejected::MissingSignature("X-Hub-Signature-256")),
            ),
            (
                "wrong secret",
                vec![
                    (
                        "x-hub-signature-256",
                        sign_github(b"nope nope nope nope", ok.as_bytes()),
                    ),
                    ("x-github-event", "push".into()),
                ],
                ok.clone(),
                Err(Rejected::BadSignature),
            ),
            (
                "tampered body",
                vec![
                    ("x-hub-signature-256", sig.clone()),
                    ("x-github-event", "push".into()),
                ],
                ok.replace("octocat", "mallory"),
                Err(Rejected::BadSignature),
            ),
            (
                "sha1 prefix",
                vec![
                    ("x-hub-signature-256", sig.replace("sha256=", "sha1=")),
                    ("x-github-event", "push".into()),
                ],
                ok.clone(),
                Err(Rejected::BadSignature),
            ),
            (
                "garbage signature",
                vec![
                    ("x-hub-signature-256", "sha256=zz".into()),
                    ("x-github-event", "push".into()),
                ],
                ok.clone(),
                Err(Rejected::BadSignature),
            ),
            (
                "ping",
                vec![
                    ("x-hub-signature-256", sig.clone()),
                    ("x-github-event", "ping".into()),
                ],
                ok.clone(),
                Ok("ping"),
            ),
            (
                "other event",
                vec![
                    ("x-hub-signature-256", sig.clone()),
                    ("x-github-event", "issues".into()),
                ],
                ok.clone(),
                Ok("other"),
            ),
        ];
        for (name, hs, body, want) in cases {
            let mut h = headers(&hs.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>());
            h.entry("x-github-delivery")
                .or_insert(HeaderValue::from_static("d-1"));
            let got = evaluate(&app, Provider::Github, &secrets, &h, body.as_bytes(), 0).map(|a| match a {
                Accepted::Deploy(_) => "deploy",
                Accepted::Ignore(..) => "ignore",
                Accepted::Ping => "ping",
                Accepted::OtherEvent(_) => "other",
            });
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn push_filters() {
        let app = app();
        let sha = "b".repeat(40);
        let zero = "0".repeat(40);
        let cases: Vec<(String, &str)> = vec![
            (push_body("refs/heads/main", &sha), "deploy"),
            (
                push_body("refs/heads/feature", &sha),
                "ignore: push to refs/heads/feature",
            ),
            (push_body("refs/tags/v1.0", &sha), "ignore: tag v1.0"),
            (
                push_body("refs/heads/main", &zero),
                "ignore: refs/heads/main was deleted",
            ),
            (push_body("refs/heads/main", "abc"), "malformed"),
            (push_body("refs/heads/-x", &sha), "malformed"),
            (push_body("refs/heads/a..b", &sha), "malformed"),
            (r#"{"after":"x"}"#.to_string(), "malformed"),
            ("not json".to_string(), "malformed"),
            ("[]".to_string(), "malformed"),
        ];
        for (body, want) in cases {
            let h = headers(&[
                ("x-hub-signature-256", &sign_github(SECRET, body.as_bytes())),
                ("x-github-event", "push"),
                ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ]);
            let got = match evaluate(&app, Provider::Github, &[SECRET.to_vec()], &h, body.as_bytes(), 0) {
                Ok(Accepted::Deploy(r)) => {
                    assert_eq!(r.sha.as_deref(), Some(sha.as_str()));
                    assert_eq!(r.actor, "octocat");
                    assert_eq!(
                        r.delivery_id.as_deref(),
                        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
                    );
                    "deploy".to_string()
                }
                Ok(Accepted::Ignore(_, reason)) => format!("ignore: {reason}"),
                Err(Rejected::Malformed(_)) => "malformed".to_string(),
                other => format!("{other:?}"),
            };
            assert!(got.starts_with(want), "{body}: got {got}, want {want}");
        }
    }

    #[test]
    fn standard_webhooks_published_vector() {
        // https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
        let secret = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign_standard(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", &format!("v1,bm90IHRoaXMgb25l {sig}")),
        ]);
        assert_eq!(
            verify_standard(&[secret.to_vec()], &h, body, 1614265330 + 299),
            Ok("msg_p5jXN8AQM9LWM0D4loKWxJek".into())
        );
        assert_eq!(
            verify_standard(&[secret.to_vec()], &h, body, 1614265330 + 301),
            Err(Rejected::Stale)
        );
        assert_eq!(
            verify_standard(&[secret.to_vec()], &h, body, 1614265330 - 301),
            Err(Rejected::Stale)
        );
        assert_eq!(
            verify_standard(
                &[b"whsec_AAAAAAAAAAAAAAAAAAAAAAAA".to_vec()],
                &h,
                body,
                1614265330
            ),
            Err(Rejected::BadSignature)
        );
    }

    fn app_with(extra: &str) -> AppConfig {
        crate::config::Config::parse(
            std::path::Path::new("/x/haul.toml"),
            &format!("state_dir = \"/s\"\n[apps.blog]\nrepo = \"/r\"\npath = \"/p\"\n{extra}\n"),
        )
        .expect("config")
        .apps
        .remove("blog")
        .expect("blog")
    }

    /// One signed request per provider, in that provider's own dialect.
    fn signed(provider: Provider, event: &str, body: &str, now: i64) -> HeaderMap {
        let sig = sign_github(SECRET, body.as_bytes());
        let bare = sig.trim_start_matches("sha256=").to_string();
        match provider {
            Provider::Github => headers(&[
                ("x-hub-signature-256", &sig),
                ("x-github-event", event),
                ("x-github-delivery", "d-1"),
            ]),
            Provider::Gitlab => headers(&[
                ("x-gitlab-token", std::str::from_utf8(SECRET).expect("utf8")),
                ("x-gitlab-event", event),
                ("x-gitlab-webhook-uuid", "d-1"),
            ]),
            Provider::Gitea => headers(&[
                ("x-gitea-signature", &bare),
                ("x-gitea-event", event),
                ("x-gitea-delivery", "d-1"),
            ]),
            Provider::Forgejo => headers(&[
                ("x-forgejo-signature", &bare),
                ("x-forgejo-event", event),
                ("x-forgejo-delivery", "d-1"),
            ]),
            Provider::Bitbucket => headers(&[
                ("x-hub-signature", &sig),
                ("x-event-key", event),
                ("x-request-uuid", "d-1"),
            ]),
            Provider::Standard => {
                let s = sign_standard(SECRET, "d-1", now, body.as_bytes());
                headers(&[
                    ("webhook-id", "d-1"),
                    ("webhook-timestamp", &now.to_string()),
                    ("webhook-signature", &s),
                ])
            }
            Provider::Distribution => headers(&[(
                "authorization",
                &format!("Bearer {}", std::str::from_utf8(SECRET).expect("utf8")),
            )]),
        }
    }

    fn payload(provider: Provider, r: &str, sha: &str) -> (String, &'static str) {
        match provider {
            Provider::Github => (push_body(r, sha), "push"),
            Provider::Gitlab => (
                format!(r#"{{"object_kind":"push","ref":"{r}","after":"{sha}","user_username":"octocat"}}"#),
                "Push Hook",
            ),
            Provider::Gitea | Provider::Forgejo => (
                format!(
                    r#"{{"ref":"{r}","after":"{sha}","pusher":{{"login":"octocat","username":"octocat"}}}}"#
                ),
                "push",
            ),
            Provider::Bitbucket => {
                let (kind, name) = match r.strip_prefix("refs/tags/") {
                    Some(t) => ("tag", t),
                    None => ("branch", r.trim_start_matches("refs/heads/")),
                };
                (
                    format!(
                        r#"{{"actor":{{"nickname":"octocat"}},"push":{{"changes":[{{"new":{{"type":"{kind}","name":"{name}","target":{{"hash":"{sha}"}}}},"old":null}}]}}}}"#
                    ),
                    "repo:push",
                )
            }
            Provider::Standard => (format!(r#"{{"ref":"{r}","sha":"{sha}","actor":"octocat"}}"#), ""),
            Provider::Distribution => (
                distribution_body("acme/api", r.trim_start_matches("refs/tags/"), sha),
                "",
            ),
        }
    }

    fn distribution_body(repo: &str, tag: &str, digest: &str) -> String {
        format!(
            r#"{{"events":[{{"id":"ev-1","timestamp":"2026-11-26T18:00:00Z","action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":400,"digest":"{digest}","repository":"{repo}","url":"http://127.0.0.1:5000/v2/{repo}/manifests/{digest}","tag":"{tag}"}},"request":{{"id":"r","addr":"127.0.0.1","host":"127.0.0.1:5000","method":"PUT","useragent":"skopeo"}},"actor":{{"name":"pusher"}},"source":{{"addr":"x:5000","instanceID":"i"}}}}]}}"#
        )
    }

    fn image_app(extra: &str) -> AppConfig {
        crate::config::Config::parse(
            std::path::Path::new("/x/haul.toml"),
            &format!("state_dir = \"/s\"\n[apps.api]\nimage = \"127.0.0.1:5000/acme/api\"\ntag = \"main\"\npath = \"/p\"\n{extra}\n"),
        )
        .expect("config")
        .apps
        .remove("api")
        .expect("api")
    }

    /// Registry notifications, GitHub package events and Standard Webhooks naming a digest: what an image or
    /// object app accepts, and every bad input refused with nothing recorded.
    #[test]
    fn artifact_triggers_fail_closed() {
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
        // Standard Webhooks from CI: a tag and a digest.
        let std_body = format!(r#"{{"tag":"main","digest":"{digest}","actor":"ci"}}"#);
        let sh = signed(Provider::Standard, "", &std_body, now);
        match eval(&app, Provider::Standard, &sh, &std_body) {
            Ok(Accepted::Deploy(r)) => assert_eq!(r.digest.as_deref(), Some(digest.as_str())),
            other => panic!("standard image trigger gave {other:?}"),
        }
        let bad_digest = r#"{"tag":"main","digest":"sha256:../../etc"}"#;
        let sh = signed(Provider::Standard, "", bad_digest, now);
        assert!(matches!(
            eval(&app, Provider::Standard, &sh, bad_digest),
            Err(Rejected::Malformed(_))
        ));
        // An object app: the commit names the key, the sha256 pins the bytes.
        let obj = crate::config::Config::parse(
            std::path::Path::new("/x/haul.toml"),
            "state_dir = \"/s\"\n[apps.o]\nobject = \"s3://b/app-{sha}.tgz\"\npath = \"/p\"\n",
        )
        .expect("config")
        .apps
        .remove("o")
        .expect("o");
        let sha = "c".repeat(40);
        let ob = format!(
            r#"{{"ref":"refs/heads/main","sha":"{sha}","sha256":"{}"}}"#,
            "b".repeat(64)
        );
        let sh = signed(Provider::Standard, "", &ob, now);
        match eval(&obj, Provider::Standard, &sh, &ob) {
            Ok(Accepted::Deploy(r)) => {
                assert_eq!(r.sha.as_deref(), Some(sha.as_str()));
                assert_eq!(r.digest, Some(format!("sha256:{}", "b".repeat(64))));
            }
            other => panic!("standard object trigger gave {other:?}"),
        }
        let ob_bad = format!(r#"{{"ref":"refs/heads/main","sha":"{sha}","sha256":"zz"}}"#);
        let sh = signed(Provider::Standard, "", &ob_bad, now);
        assert!(matches!(
            eval(&obj, Provider::Standard, &sh, &ob_bad),
            Err(Rejected::Malformed(_))
        ));
    }

    /// GitHub's own `package` example (tests/fixtures), with the test's package name, tag and digest.
    #[test]
    fn github_package_events() {
        let now = 1_800_000_000;
        let app = crate::config::Config::parse(
            std::path::Path::new("/x/haul.toml"),
            "state_dir = \"/s\"\n[apps.api]\nimage = \"ghcr.io/codertocat/hello-world-npm\"\ntag = \"main\"\npath = \"/p\"\n",
        )
        .expect("config")
        .apps
        .remove("api")
        .expect("api");
        let fixture = include_str!("../../tests/fixtures/github/package-published.json");
        let digest = format!("sha256:{}", "d".repeat(64));
        let mut v: serde_json::Value = serde_json::from_str(fixture).expect("fixture");
        v["package"]["package_version"]["version"] = digest.clone().into();
        v["package"]["package_version"]["container_metadata"]["tag"]["name"] = "main".into();
        let body = v.to_string();
        let h = signed(Provider::Github, "package", &body, now);
        match evaluate(
            &app,
            Provider::Github,
            &[SECRET.to_vec()],
            &h,
            body.as_bytes(),
            now,
        ) {
            Ok(Accepted::Deploy(r)) => {
                assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
                assert_eq!(r.git_ref.as_deref(), Some("refs/tags/main"));
                assert_eq!(r.actor, "Codertocat");
            }
            other => panic!("package event gave {other:?}"),
        }
        // GitHub's example as published: an untagged version of this app's package cannot be placed.
        let h = signed(Provider::Github, "package", fixture, now);
        let raw = evaluate(
            &app,
            Provider::Github,
            &[SECRET.to_vec()],
            &h,
            fixture.as_bytes(),
            now,
        );
        assert!(matches!(raw, Ok(Accepted::OtherEvent(_))), "{raw:?}");
        // Another package: not this app's; a tampered body: refused.
        v["package"]["name"] = "other".into();
        let other = v.to_string();
        let h = signed(Provider::Github, "package", &other, now);
        assert!(matches!(
            evaluate(
                &app,
                Provider::Github,
                &[SECRET.to_vec()],
                &h,
                other.as_bytes(),
                now
            ),
            Ok(Accepted::OtherEvent(_))
        ));
        assert_eq!(
            evaluate(
                &app,
                Provider::Github,
                &[SECRET.to_vec()],
                &h,
                body.as_bytes(),
                now
            ),
            Err(Rejected::BadSignature)
        );
    }

    /// The table every provider must pass: valid, wrong secret, missing header, tampered body, non-push event,
    /// unknown branch, tag, invalid ref.
    #[test]
    fn every_provider_fails_closed() {
        let app = app_with("");
        let sha = "c".repeat(40);
        let now = 1_800_000_000;
        // `distribution` is for image apps: its own table is `artifact_triggers_fail_closed`.
        for provider in Provider::ALL.into_iter().filter(|p| *p != Provider::Distribution) {
            let (body, event) = payload(provider, "refs/heads/main", &sha);
            let h = signed(provider, event, &body, now);
            let eval =
                |h: &HeaderMap, b: &str| evaluate(&app, provider, &[SECRET.to_vec()], h, b.as_bytes(), now);
            let name = provider.as_str();
            match eval(&h, &body) {
                Ok(Accepted::Deploy(r)) => {
                    assert_eq!(r.sha.as_deref(), Some(sha.as_str()), "{name}");
                    assert_eq!(r.actor, "octocat", "{name}");
                    assert_eq!(r.delivery_id.as_deref(), Some("d-1"), "{name}");
                    assert_eq!(r.provider.as_deref(), Some(name));
                }
                other => panic!("{name}: valid push gave {other:?}"),
            }
            // Wrong secret: the same request checked against another secret.
            let wrong = evaluate(
                &app,
                provider,
                &[b"another secret entirely!".to_vec()],
                &h,
                body.as_bytes(),
                now,
            );
            assert_eq!(wrong, Err(Rejected::BadSignature), "{name}: wrong secret");
            // Missing signature header.
            let mut stripped = h.clone();
            for k in [
                "x-hub-signature-256",
                "x-gitlab-token",
                "x-gitea-signature",
                "x-forgejo-signature",
                "x-hub-signature",
                "webhook-signature",
            ] {
                stripped.remove(k);
            }
            assert!(
                matches!(eval(&stripped, &body), Err(Rejected::MissingSignature(_))),
                "{name}: missing header"
            );
            // Tampered body (GitLab's plain token does not cover the body: that is GitLab's design, and why
            // haul prefers its signed mode when GitLab sends one).
            let tampered = body.replace("octocat", "mallory");
            if provider != Provider::Gitlab {
                assert_eq!(
                    eval(&h, &tampered),
                    Err(Rejected::BadSignature),
                    "{name}: tampered"
                );
            }
            // Unknown branch and a tag: ignored, never deployed.
            for (r, why) in [
                ("refs/heads/feature", "push to refs/heads/feature"),
                ("refs/tags/v1.0", "tag v1.0"),
            ] {
                let (b, e) = payload(provider, r, &sha);
                match eval(&signed(provider, e, &b, now), &b) {
                    Ok(Accepted::Ignore(_, reason)) => assert!(reason.starts_with(why), "{name}: {reason}"),
                    other => panic!("{name} {r}: {other:?}"),
                }
            }
            // An invalid ref is malformed, whoever signed it.
            let (b, e) = payload(provider, "refs/heads/--upload-pack=x", &sha);
            assert!(
                matches!(
                    eval(&signed(provider, e, &b, now), &b),
                    Err(Rejected::Malformed(_))
                ),
                "{name}: bad ref"
            );
        }
    }

    #[test]
    fn a_missing_delivery_id_is_refused() {
        let app = app_with("");
        let body = push_body("refs/heads/main", &"a".repeat(40));
        for provider in [
            Provider::Github,
            Provider::Gitea,
            Provider::Forgejo,
            Provider::Bitbucket,
        ] {
            let event = match provider {
                Provider::Bitbucket => "repo:push",
                _ => "push",
            };
            let mut h = signed(provider, event, &body, 0);
            for k in [
                "x-github-delivery",
                "x-gitea-delivery",
                "x-forgejo-delivery",
                "x-request-uuid",
            ] {
                h.remove(k);
            }
            let got = evaluate(&app, provider, &[SECRET.to_vec()], &h, body.as_bytes(), 0);
            assert!(
                matches!(got, Err(Rejected::Malformed(ref m)) if m.contains("delivery id")),
                "{provider:?}: {got:?}"
            );
        }
    }

    #[test]
    fn non_push_events_are_answered_not_recorded() {
        let app = app_with("");
        let now = 1_800_000_000;
        for (provider, event) in [
            (Provider::Github, "issues"),
            (Provider::Gitlab, "Merge Request Hook"),
            (Provider::Gitea, "pull_request"),
            (Provider::Forgejo, "issues"),
            (Provider::Bitbucket, "pullrequest:created"),
        ] {
            let body = "{}";
            let got = evaluate(
                &app,
                provider,
                &[SECRET.to_vec()],
                &signed(provider, event, body, now),
                body.as_bytes(),
                now,
            );
            assert!(
                matches!(got, Ok(Accepted::OtherEvent(_))),
                "{provider:?}: {got:?}"
            );
        }
        let body = r#"{"type":"ping"}"#;
        let got = evaluate(
            &app,
            Provider::Standard,
            &[SECRET.to_vec()],
            &signed(Provider::Standard, "", body, now),
            body.as_bytes(),
            now,
        );
        assert_eq!(got, Ok(Accepted::Ping));
    }

    #[test]
    fn tag_apps_deploy_matching_tags_only() {
        let app = app_with("tags = \"v*\"");
        let sha = "d".repeat(40);
        for (r, want) in [
            ("refs/tags/v1.2.0", "deploy"),
            ("refs/tags/nightly", "ignore"),
            ("refs/heads/main", "ignore"),
        ] {
            let body = push_body(r, &sha);
            let h = signed(Provider::Github, "push", &body, 0);
            let got = match evaluate(&app, Provider::Github, &[SECRET.to_vec()], &h, body.as_bytes(), 0) {
                Ok(Accepted::Deploy(req)) => {
                    assert_eq!(req.git_ref.as_deref(), Some(r));
                    "deploy"
                }
                Ok(Accepted::Ignore(..)) => "ignore",
                other => panic!("{r}: {other:?}"),
            };
            assert_eq!(got, want, "{r}");
        }
    }

    #[test]
    fn rotation_accepts_either_secret() {
        let app = app_with("");
        let body = push_body("refs/heads/main", &"e".repeat(40));
        let old = b"the old secret, still accepted".to_vec();
        let new = b"the new secret, now preferred".to_vec();
        for signer in [&old, &new] {
            let h = headers(&[
                ("x-hub-signature-256", &sign_github(signer, body.as_bytes())),
                ("x-github-event", "push"),
                ("x-github-delivery", "d-2"),
            ]);
            let got = evaluate(
                &app,
                Provider::Github,
                &[new.clone(), old.clone()],
                &h,
                body.as_bytes(),
                0,
            );
            assert!(matches!(got, Ok(Accepted::Deploy(_))), "{got:?}");
            let got = evaluate(
                &app,
                Provider::Github,
                std::slice::from_ref(&new),
                &h,
                body.as_bytes(),
                0,
            );
            assert_eq!(
                got.is_ok(),
                signer == &new,
                "once the old secret is removed it stops working"
            );
        }
    }

    #[test]
    fn bitbucket_picks_the_change_for_this_branch() {
        let app = app_with("");
        let sha = "f".repeat(40);
        let body = format!(
            r#"{{"actor":{{"nickname":"n"}},"push":{{"changes":[
                {{"new":{{"type":"branch","name":"feature","target":{{"hash":"{sha}"}}}},"old":null}},
                {{"new":{{"type":"branch","name":"main","target":{{"hash":"{sha}"}}}},"old":null}}]}}}}"#
        );
        let h = signed(Provider::Bitbucket, "repo:push", &body, 0);
        let got = evaluate(
            &app,
            Provider::Bitbucket,
            &[SECRET.to_vec()],
            &h,
            body.as_bytes(),
            0,
        );
        assert!(
            matches!(got, Ok(Accepted::Deploy(ref r)) if r.git_ref.as_deref() == Some("refs/heads/main")),
            "{got:?}"
        );
        // Data Center's shape, with a deletion of main.
        let body = format!(
            r#"{{"actor":{{"name":"admin"}},"changes":[{{"refId":"refs/heads/main","toHash":"{}","type":"DELETE"}}]}}"#,
            "0".repeat(40)
        );
        let h = signed(Provider::Bitbucket, "repo:refs_changed", &body, 0);
        let got = evaluate(
            &app,
            Provider::Bitbucket,
            &[SECRET.to_vec()],
            &h,
            body.as_bytes(),
            0,
        );
        assert!(
            matches!(got, Ok(Accepted::Ignore(_, ref why)) if why.contains("deleted")),
            "{got:?}"
        );
    }
}
