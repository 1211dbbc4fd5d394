//! One conversation with an OCI registry: the distribution API calls haul makes itself. Tag digests (`HEAD`,
//! what a poll repeats every interval), manifests, the tag list and signatures are small, so they are read
//! here with a cap, hashed here, and every answer is typed here: a 429 stops at the first answer and its
//! `Retry-After` is honoured; a refused account is permanent. Layers, the large part, go through the OCI
//! client (`oci-client`), which checks every byte against the manifest's digest, with the token this session
//! obtained.
//!
//! Credentials: Basic (`registry_username` + `registry_password_file`) or a bearer token file, sent at once;
//! when the registry answers 401 with a Bearer challenge (Docker Hub, GHCR), the account (or nobody) is
//! exchanged for a pull-only token at the challenge's realm, once per session.

use reqwest::{header, Method, Response, StatusCode};
use sha2::{Digest, Sha256};

use crate::config::{AppConfig, ImageSource};
use crate::model::failure::Failure;
use crate::sources::artifact::{
    http_client, http_send_failure, http_status_failure, read_capped, read_secret,
};

/// The most a manifest or a tag list may be: far beyond any real one, small enough for memory.
pub const MANIFEST_MAX: u64 = 4 * 1024 * 1024;

/// Every manifest type haul reads: image manifests and (for container images) indexes.
pub const MANIFEST_TYPES: [&str; 4] = [
    oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
    oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

pub struct Session<'a> {
    app: &'a AppConfig,
    img: &'a ImageSource,
    client: reqwest::Client,
    base: String,
    basic: Option<(String, String)>,
    /// The `Authorization` header sent now: Basic, a configured token, or the token exchanged for.
    auth: Option<String>,
    /// A bearer token (configured, or exchanged once): what the OCI client gets for the layers.
    bearer: Option<String>,
    exchanged: bool,
}

impl<'a> Session<'a> {
    pub fn new(app: &'a AppConfig, img: &'a ImageSource) -> Result<Session<'a>, Failure> {
        let scheme = if img.plain_http { "http" } else { "https" };
        let basic = match (&img.username, &img.password_file) {
            (Some(u), Some(p)) => Some((u.clone(), read_secret(p)?)),
            _ => None,
        };
        let bearer = match (&basic, &img.token_file) {
            (None, Some(t)) => Some(read_secret(t)?),
            _ => None,
        };
        let auth = match (&basic, &bearer) {
            (Some((u, p)), _) => Some(format!(
                "Basic {}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{u}:{p}"))
            )),
            (None, Some(t)) => Some(format!("Bearer {t}")),
            (None, None) => None,
        };
        Ok(Session {
            app,
            img,
            client: http_client(app)?,
            base: format!("{scheme}://{}/v2/{}", img.registry, img.repository),
            basic,
            auth,
            exchanged: bearer.is_some(),
            bearer,
        })
    }

    /// The credentials the OCI client uses for the layers: the account (the client exchanges it for tokens
    /// itself, and again when one expires during a long pull), a configured token, or nobody.
    pub fn oci_auth(&self) -> oci_client::secrets::RegistryAuth {
        use oci_client::secrets::RegistryAuth;
        match (&self.basic, &self.img.token_file, &self.bearer) {
            (Some((u, p)), _, _) => RegistryAuth::Basic(u.clone(), p.clone()),
            (None, Some(_), Some(t)) => RegistryAuth::Bearer(t.clone()),
            _ => RegistryAuth::Anonymous,
        }
    }

    /// `method` on `<base>/<path>`; on a Bearer challenge, one token exchange and one more try. `Ok(None)` is a
    /// 404; other failures are typed.
    async fn send(&mut self, method: Method, path: &str, accept: &str) -> Result<Option<Response>, Failure> {
        let url = format!("{}/{path}", self.base);
        let mut r = self.request(method.clone(), &url, accept).await?;
        if r.status() == StatusCode::UNAUTHORIZED && !self.exchanged {
            let challenge = r
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(parse_challenge);
            if let Some(ch) = challenge {
                self.exchanged = true;
                let token = self.pull_token(&ch).await?;
                self.auth = Some(format!("Bearer {token}"));
                self.bearer = Some(token);
                r = self.request(method, &url, accept).await?;
            }
        }
        match r.status() {
            s if s.is_success() => Ok(Some(r)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(http_status_failure(self.app, &url, &r)),
        }
    }

    async fn request(&self, method: Method, url: &str, accept: &str) -> Result<Response, Failure> {
        let mut req = self.client.request(method, url).header(header::ACCEPT, accept);
        if let Some(a) = &self.auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        req.send().await.map_err(|e| http_send_failure(url, e))
    }

    fn what(&self) -> String {
        format!("{}/{}", self.img.registry, self.img.repository)
    }

    /// A tag's manifest digest by one `HEAD` (a GET, hashed, if the registry does not say).
    pub async fn tag_digest(&mut self, tag: &str) -> Result<String, Failure> {
        let accept = MANIFEST_TYPES.join(", ");
        let what = self.what();
        let missing = || Failure::permanent(format!("{what} has no tag {tag}"));
        let r = self
            .send(Method::HEAD, &format!("manifests/{tag}"), &accept)
            .await?
            .ok_or_else(missing)?;
        if let Some(d) = r
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            return Ok(d.to_string());
        }
        let bytes = self.manifest(tag, &MANIFEST_TYPES).await?.ok_or_else(missing)?;
        Ok(format!("sha256:{}", hex::encode(Sha256::digest(&bytes))))
    }

    /// A manifest's bytes (at most [`MANIFEST_MAX`]); `None` if there is none by that reference.
    pub async fn manifest(&mut self, reference: &str, accept: &[&str]) -> Result<Option<Vec<u8>>, Failure> {
        let Some(r) = self
            .send(Method::GET, &format!("manifests/{reference}"), &accept.join(", "))
            .await?
        else {
            return Ok(None);
        };
        read_capped(r, MANIFEST_MAX, "a manifest").await.map(Some)
    }

    /// The repository's tags (one page of up to 1,000; at most [`MANIFEST_MAX`] of JSON).
    pub async fn tags(&mut self) -> Result<Vec<String>, Failure> {
        let r = self
            .send(Method::GET, "tags/list?n=1000", "application/json")
            .await?
            .ok_or_else(|| Failure::permanent(format!("{} does not exist", self.what())))?;
        let bytes = read_capped(r, MANIFEST_MAX, "the tag list").await?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::permanent(format!("the tag list of {} is not JSON: {e}", self.what())))?;
        Ok(v.get("tags")
            .and_then(|t| t.as_array())
            .map(|a| a.iter().filter_map(|t| t.as_str().map(String::from)).collect())
            .unwrap_or_default())
    }

    /// A small blob (a signature), at most `max` bytes, checked against its digest.
    pub async fn small_blob(&mut self, digest: &str, max: u64) -> Result<Vec<u8>, Failure> {
        let r = self
            .send(Method::GET, &format!("blobs/{digest}"), "*/*")
            .await?
            .ok_or_else(|| Failure::permanent(format!("{} has no blob {digest}", self.what())))?;
        let bytes = read_capped(r, max, "a blob").await?;
        let got = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if got != digest {
            return Err(Failure::permanent(format!(
                "blob {digest} from {} hashes to {got}: tampered with; refusing it",
                self.what()
            )));
        }
        Ok(bytes)
    }

    /// Exchanges the account (or nobody) for a pull token at the challenge's realm.
    async fn pull_token(&self, challenge: &[(String, String)]) -> Result<String, Failure> {
        let get = |k: &str| challenge.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let realm =
            get("realm").ok_or_else(|| Failure::permanent("the registry's auth challenge has no realm"))?;
        if !(realm.starts_with("https://") || (self.img.plain_http && realm.starts_with("http://"))) {
            return Err(Failure::permanent(format!(
                "the registry's token realm {realm:?} is not https://"
            )));
        }
        let mut query = vec![(
            "scope".to_string(),
            format!("repository:{}:pull", self.img.repository),
        )];
        if let Some(service) = get("service") {
            query.push(("service".to_string(), service));
        }
        let mut req = self.client.get(&realm).query(&query);
        if let Some((u, p)) = &self.basic {
            req = req.basic_auth(u, Some(p));
        }
        let r = req.send().await.map_err(|e| http_send_failure(&realm, e))?;
        if !r.status().is_success() {
            return Err(http_status_failure(self.app, &realm, &r));
        }
        let bytes = read_capped(
            r,
            crate::sources::artifact::SMALL_MAX,
            "the registry's token answer",
        )
        .await?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::permanent(format!(
                "the registry's token service answered something else than a token: {e}"
            ))
        })?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| Failure::permanent("the registry's token service answered without a token"))
    }
}

/// `realm="...",service="...",scope="..."` from a Bearer challenge.
fn parse_challenge(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = &rest[eq + 1..];
        let (value, next) = match after.strip_prefix('"') {
            Some(q) => match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            },
            None => match after.find(',') {
                Some(c) => (&after[..c], &after[c..]),
                None => (after, ""),
            },
        };
        out.push((key, value.to_string()));
        rest = next.trim_start_matches([',', ' ']);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges() {
        let c = parse_challenge(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull,push""#,
        );
        assert_eq!(
            c,
            [
                ("realm".to_string(), "https://auth.docker.io/token".to_string()),
                ("service".to_string(), "registry.docker.io".to_string()),
                (
                    "scope".to_string(),
                    "repository:library/ubuntu:pull,push".to_string()
                ),
            ]
        );
        assert_eq!(
            parse_challenge("realm=x"),
            [("realm".to_string(), "x".to_string())]
        );
        assert!(parse_challenge("").is_empty());
    }
}
