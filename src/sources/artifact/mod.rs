//! Artifacts built in CI: an OCI registry (`image`), S3-compatible object storage (`object`) or a plain
//! download (`url`), pulled with a read-only credential, verified, and handed to the pipeline as files to
//! unpack. The credential with write access to production still never leaves production.
//!
//! Two steps, so the cheap question is asked first: [`resolve`] says *what* would be deployed (an image tag's
//! manifest digest, by one `HEAD`; an object's key, from the template) without downloading anything, and
//! [`download`] fetches it into a private directory, checking every byte against its digest: the manifest
//! against the digest it was resolved to or the trigger pinned, each layer against the manifest, an object
//! against the `sha256` the trigger pinned, and, with `verify`, a detached signature against the configured
//! key. Nothing reaches the release directory until all of that passed.
//!
//! Failures are typed here, at the source: refused credentials, a missing tag or object, a digest mismatch
//! and a bad signature are permanent (never retried); connection errors and 5xx are transient; 429 and S3's
//! `SlowDown` are rate limits (the upstream's circuit opens).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::config::{self, AppConfig, ImageKind, ImageSource, ObjectSource, Source, UrlSource};
use crate::model::failure::{Failure, Kind};
use crate::sources::signature::SigError;

mod pick;
mod verify;
pub use pick::{audit_sha, image_moves_forward, wanted, Live};
pub use verify::{verify_local, SIGNATURE_FILE};

/// What a deploy will fetch, decided before anything is downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Where it comes from, for people: `oci://reg/acme/api:main@sha256:...`, `s3://bucket/key`, a URL.
    pub location: String,
    /// An image's tag; an object's or URL's resolved key or URL.
    pub name: String,
    /// An image's manifest digest (`sha256:<hex>`); unknown for objects until downloaded.
    pub digest: Option<String>,
}

/// What was downloaded and verified.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The digest (`sha256:<hex>`) of the manifest (image) or of the object's bytes.
    pub digest: String,
    /// Tarballs to unpack into the release directory, in order (none for a container image).
    pub files: Vec<PathBuf>,
    /// Lines for the log and the audit ("signature by minisign key ... verified").
    pub notes: Vec<String>,
}

/// The part of a request that says which version: an image tag the trigger named, the `{sha}` of a templated
/// location, the digest a trigger pinned.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    pub tag: Option<String>,
    pub version: Option<String>,
    pub digest: Option<String>,
}

/// Signatures, token answers: small things, read with a cap so a hostile server cannot fill memory.
pub(crate) const SMALL_MAX: u64 = 64 * 1024;

/// An `AsyncWrite` that refuses to take more than `left` bytes: what a registry sends beyond what it
/// declared (or beyond `max_artifact_size`) is an error, not a full disk.
struct Capped<W> {
    inner: W,
    left: u64,
    what: &'static str,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Capped<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            let what = self.what;
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("{what} is larger than its manifest or max_artifact_size allows"),
            )));
        }
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            this.left -= *n as u64;
        }
        polled
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body, at most `max` bytes.
pub(crate) async fn read_capped(r: reqwest::Response, max: u64, what: &str) -> Result<Vec<u8>, Failure> {
    let mut body = r.bytes_stream();
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Failure::transient(format!("reading {what} broke off: {e}")))?;
        if (out.len() + chunk.len()) as u64 > max {
            return Err(permanent(format!(
                "{what} is larger than {max} bytes; refusing it"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `fut` within `limit` (`fetch_timeout`): a server that trickles must not hold the app's lock for ever.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(Failure::transient(format!(
            "{what} took longer than fetch_timeout ({}s)",
            limit.as_secs()
        )))
    })
}

pub(super) fn permanent(m: String) -> Failure {
    Failure::permanent(m)
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Reads a credential file (mode checked like every secret), trimmed.
pub(crate) fn read_secret(path: &Path) -> Result<String, Failure> {
    config::check_private_file(path).map_err(permanent)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| permanent(format!("cannot read {}: {e}", path.display())))?;
    let t = text.trim();
    if t.is_empty() || t.contains(['\n', '\r']) {
        return Err(permanent(format!(
            "{} must hold exactly one line (the credential)",
            path.display()
        )));
    }
    Ok(t.to_string())
}

/// The secrets a deploy log must never show for this app (read only to be redacted).
pub fn secrets(app: &AppConfig) -> Vec<String> {
    let files: Vec<&PathBuf> = match &app.source {
        Source::Image(i) => i.password_file.iter().chain(&i.token_file).collect(),
        Source::Object(o) => o.secret_access_key_file.iter().collect(),
        Source::Url(u) => u.token_file.iter().collect(),
        Source::Git => Vec::new(),
    };
    files
        .into_iter()
        .filter_map(|f| read_secret(f).ok())
        .filter(|s| s.len() >= 4)
        .collect()
}

/// `{sha}` filled in with a validated version.
pub(super) fn fill(template: &str, version: Option<&str>) -> Result<String, Failure> {
    if !template.contains("{sha}") {
        return Ok(template.to_string());
    }
    match version {
        Some(v) if crate::model::is_sha_prefix(v) => Ok(template.replace("{sha}", &v.to_ascii_lowercase())),
        Some(v) => Err(permanent(format!("{v:?} is not a sha; only a sha fills {{sha}}"))),
        None => Err(permanent(format!(
            "{template} is named by {{sha}}: the trigger must say which (a webhook's \"sha\", or `haul deploy --sha`)"
        ))),
    }
}

/// Decides what to fetch. For an image this asks the registry (one `HEAD`); for the others it is local.
pub async fn resolve(app: &AppConfig, wanted: &Wanted) -> Result<Resolved, Failure> {
    match &app.source {
        Source::Image(img) => {
            let mut session = crate::sources::registry::Session::new(app, img)?;
            let tag = image_tag(app, img, wanted, &mut session).await?;
            let digest = session.tag_digest(&tag).await?;
            if !crate::model::is_sha256_digest(&digest) {
                return Err(permanent(format!(
                    "the registry answered {digest:?} for tag {tag}; haul deploys sha256 digests only"
                )));
            }
            Ok(Resolved {
                location: format!("oci://{}/{}:{tag}@{digest}", img.registry, img.repository),
                name: tag,
                digest: Some(digest),
            })
        }
        Source::Object(o) => {
            let key = fill(&o.key, wanted.version.as_deref())?;
            Ok(Resolved {
                location: format!("s3://{}/{key}", o.bucket),
                name: key,
                digest: None,
            })
        }
        Source::Url(u) => {
            let url = fill(&u.url, wanted.version.as_deref())?;
            Ok(Resolved {
                location: crate::model::url::shown(&url),
                name: url,
                digest: None,
            })
        }
        Source::Git => Err(permanent("a git app has no artifact".into())),
    }
}

/// The tag to deploy: the one a trigger named (if it matches), the configured one, or the newest matching.
async fn image_tag(
    app: &AppConfig,
    img: &ImageSource,
    wanted: &Wanted,
    session: &mut crate::sources::registry::Session<'_>,
) -> Result<String, Failure> {
    let glob = match &app.track {
        config::Track::Tags(g) => g.clone(),
        config::Track::Branch(b) => b.clone(),
    };
    if let Some(t) = &wanted.tag {
        if !config::glob_match(&glob, t) {
            return Err(permanent(format!("tag {t} does not match this app's tag {glob}")));
        }
        return Ok(t.clone());
    }
    if !glob.contains(['*', '?']) {
        return Ok(glob);
    }
    let tags = session.tags().await?;
    newest(
        tags.iter()
            .filter(|t| crate::model::is_oci_tag(t) && config::glob_match(&glob, t)),
    )
    .cloned()
    .ok_or_else(|| permanent(format!("no tag matching {glob} in {}", img.repository)))
}

/// The newest by version order (`v1.10` after `v1.9`), as `git tag --sort=v:refname` would say.
fn newest<'a>(tags: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    tags.max_by(|a, b| crate::sources::git::version_cmp(a, b))
}

/// Downloads what `resolved` names into `dir` (private to this deploy) and verifies it.
pub async fn download(
    app: &AppConfig,
    resolved: &Resolved,
    wanted: &Wanted,
    dir: &Path,
) -> Result<Fetched, Failure> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| permanent(format!("cannot create {}: {e}", dir.display())))?;
    let mut fetched = match &app.source {
        Source::Image(img) => download_image(app, img, resolved, dir).await?,
        Source::Object(o) => download_object(app, o, &resolved.name, dir).await?,
        Source::Url(u) => download_url(app, u, &resolved.name, dir).await?,
        Source::Git => return Err(permanent("a git app has no artifact".into())),
    };
    if let Some(pinned) = &wanted.digest {
        if *pinned != fetched.digest && !matches!(app.source, Source::Image(_)) {
            return Err(permanent(format!(
                "{} has digest {}, but the trigger pinned {pinned}: refusing it (tampered with, or not the upload the trigger meant)",
                resolved.location, fetched.digest
            )));
        }
        fetched
            .notes
            .push(format!("digest {pinned} matches the trigger's"));
    }
    Ok(fetched)
}

// ---------------------------------------------------------------------------------------------------------
// OCI registries

/// What an artifact's manifest may be: an image manifest (an index has no layers to unpack).
const IMAGE_MANIFESTS: [&str; 2] = [
    oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
];

/// The OCI client for layers: plain HTTP only when configured, bounded connect and read times.
fn oci(app: &AppConfig, img: &ImageSource) -> Result<oci_client::Client, Failure> {
    use oci_client::client::{ClientConfig, ClientProtocol};
    crate::infra::upstream::tls();
    let config = ClientConfig {
        protocol: if img.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(app.fetch_timeout.min(Duration::from_secs(120))),
        max_concurrent_download: 2,
        platform_resolver: None,
        user_agent: concat!("haul/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    };
    Ok(oci_client::Client::new(config))
}

/// Types an OCI client error at its source.
fn oci_failure(app: &AppConfig, what: &str, e: oci_client::errors::OciDistributionError) -> Failure {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    let registry = match &app.source {
        Source::Image(i) => format!("{}/{}", i.registry, i.repository),
        _ => String::new(),
    };
    let denied = || {
        permanent(format!(
            "the registry refused haul's credentials for {registry} ({what}): check registry_username / registry_password_file (or registry_token_file) for app {}; not retried",
            app.name
        ))
    };
    let missing = || permanent(format!("{registry} has no {what}"));
    let rate_limited = || Failure {
        kind: Kind::RateLimited,
        message: format!("the registry {registry} answered 429 Too Many Requests ({what})"),
        retry_after: None,
    };
    match e {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => denied(),
        E::ImageManifestNotFoundError(_) => missing(),
        E::RegistryError { envelope, .. } => {
            let codes: Vec<&C> = envelope.errors.iter().map(|x| &x.code).collect();
            if codes.iter().any(|c| matches!(c, C::Toomanyrequests)) {
                rate_limited()
            } else if codes.iter().any(|c| matches!(c, C::Unauthorized | C::Denied)) {
                denied()
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    C::ManifestUnknown | C::NameUnknown | C::NotFound | C::BlobUnknown
                )
            }) {
                missing()
            } else {
                permanent(format!("the registry {registry} refused {what}: {envelope}"))
            }
        }
        E::ServerError { code: 429, .. } => rate_limited(),
        E::ServerError { code: 401 | 403, .. } => denied(),
        E::ServerError { code: 404, .. } => missing(),
        E::ServerError { code, message, .. } if code >= 500 => Failure::transient(format!(
            "the registry {registry} answered {code} ({what}): {}",
            message.chars().take(200).collect::<String>()
        )),
        E::RequestError(r) if r.is_connect() || r.is_timeout() || r.is_request() || r.is_body() => {
            Failure::transient(format!("cannot reach the registry {registry} ({what}): {r}"))
        }
        E::DigestError(d) => permanent(format!(
            "{what} from {registry} does not match its digest ({d}): tampered with or corrupted; refusing it"
        )),
        E::IoError(io) if io.kind() == std::io::ErrorKind::FileTooLarge => {
            permanent(format!("{what} from {registry}: {io}; refusing it"))
        }
        E::IoError(io) => Failure::transient(format!("{what} from {registry}: {io}")),
        other => permanent(format!("{what} from {registry}: {other}")),
    }
}

async fn download_image(
    app: &AppConfig,
    img: &ImageSource,
    resolved: &Resolved,
    dir: &Path,
) -> Result<Fetched, Failure> {
    let digest = resolved
        .digest
        .clone()
        .ok_or_else(|| permanent("an image is pulled by digest, and none was resolved".into()))?;
    let mut session = crate::sources::registry::Session::new(app, img)?;
    let accepted: &[&str] = match img.kind {
        ImageKind::Artifact => &IMAGE_MANIFESTS,
        ImageKind::Container => &crate::sources::registry::MANIFEST_TYPES,
    };
    let manifest = session.manifest(&digest, accepted).await?.ok_or_else(|| {
        permanent(format!(
            "{}/{} has no manifest {digest}",
            img.registry, img.repository
        ))
    })?;
    // The registry's word is not enough: the bytes must hash to the digest deployed.
    let got = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
    if got != digest {
        return Err(permanent(format!(
            "the manifest the registry served for {digest} hashes to {got}: tampered with; refusing it"
        )));
    }
    let manifest_file = dir.join("manifest.json");
    tokio::fs::write(&manifest_file, &manifest)
        .await
        .map_err(|e| permanent(format!("cannot write {}: {e}", manifest_file.display())))?;
    let mut notes = Vec::new();
    if let Some(v) = &app.verify {
        // The signature covers the manifest, which pins every layer by digest.
        let sig_tag = format!("{}-{}{}", "sha256", hex_of(&digest), v.suffix());
        let sig = image_signature(app, img, &mut session, &sig_tag).await?;
        keep_signature(dir, &sig).await?;
        notes.push(check_signature(v, &manifest_file, &sig, &digest, None).await?);
    }
    let mut files = Vec::new();
    if img.kind == ImageKind::Artifact {
        let client = oci(app, img)?;
        let auth = session.oci_auth();
        let by_digest =
            oci_client::Reference::with_digest(img.registry.clone(), img.repository.clone(), digest.clone());
        // Keyed as the client looks it up (`docker.io` is `index.docker.io` to it).
        client
            .store_auth_if_needed(by_digest.resolve_registry(), &auth)
            .await;
        let layers = layers_of(app, &digest, &manifest)?;
        for (i, layer) in layers.iter().enumerate() {
            let path = dir.join(format!("layer-{i}"));
            let file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| permanent(format!("cannot create {}: {e}", path.display())))?;
            // The client checks every byte against the layer's digest (and the registry's header); the cap
            // holds the registry to the size the manifest declared.
            let file = Capped {
                inner: file,
                left: layer.size as u64,
                what: "a layer",
            };
            client
                .pull_blob(&by_digest, layer, file)
                .await
                .map_err(|e| oci_failure(app, &format!("layer {}", layer.digest), e))?;
            files.push(path);
        }
    }
    Ok(Fetched { digest, files, notes })
}

/// An artifact's layers, as its manifest declares them: at least one, each a tarball, all together within
/// `max_artifact_size`.
pub(super) fn layers_of(
    app: &AppConfig,
    digest: &str,
    manifest: &[u8],
) -> Result<Vec<oci_client::manifest::OciDescriptor>, Failure> {
    let parsed: oci_client::manifest::OciImageManifest = serde_json::from_slice(manifest)
        .map_err(|e| permanent(format!("the manifest {digest} is not an image manifest: {e}")))?;
    if parsed.layers.is_empty() {
        return Err(permanent(format!("the artifact {digest} has no layers")));
    }
    if parsed.layers.iter().any(|l| l.size < 0) {
        return Err(permanent(format!(
            "the manifest {digest} declares a negative layer size"
        )));
    }
    let total = parsed
        .layers
        .iter()
        .fold(0u64, |t, l| t.saturating_add(l.size as u64));
    if total > app.max_artifact_bytes {
        return Err(permanent(format!(
            "the artifact's layers add up to {total} bytes, over max_artifact_size ({} bytes)",
            app.max_artifact_bytes
        )));
    }
    for (i, layer) in parsed.layers.iter().enumerate() {
        if !(layer.media_type.contains("tar") || layer.media_type.ends_with("octet-stream")) {
            return Err(permanent(format!(
                "layer {} of {digest} is {}, not a tarball: an artifact's layers must be tar or tar+gzip",
                i + 1,
                layer.media_type
            )));
        }
    }
    Ok(parsed.layers)
}

/// The detached signature of an image: the first layer of the artifact tagged `sha256-<hex>.minisig` (or
/// `.sig`), the name cosign made the convention for "the signature of that digest".
async fn image_signature(
    app: &AppConfig,
    img: &ImageSource,
    session: &mut crate::sources::registry::Session<'_>,
    sig_tag: &str,
) -> Result<Vec<u8>, Failure> {
    let Some(bytes) = session.manifest(sig_tag, &IMAGE_MANIFESTS).await? else {
        return Err(permanent(format!(
            "the artifact is not signed: {}/{} has no tag {sig_tag}, and verify wants a signature by {}; refusing it",
            img.registry,
            img.repository,
            app.verify.as_ref().map(|v| v.describe()).unwrap_or_default()
        )));
    };
    let parsed: oci_client::manifest::OciImageManifest = serde_json::from_slice(&bytes)
        .map_err(|e| permanent(format!("the signature artifact {sig_tag} is not a manifest: {e}")))?;
    let layer = parsed
        .layers
        .first()
        .ok_or_else(|| permanent(format!("the signature artifact {sig_tag} has no layer")))?;
    if !(0..=SMALL_MAX as i64).contains(&layer.size) {
        return Err(permanent(format!(
            "the signature in {sig_tag} is larger than 64 KiB"
        )));
    }
    session.small_blob(&layer.digest, SMALL_MAX).await
}

/// One network operation of `app`'s artifact source: within its upstream's circuit and budget, with
/// `fetch_attempts` bounded retries, each attempt within `fetch_timeout`; `note` hears of waits and retries.
pub async fn guarded<T, Fut>(
    app: &AppConfig,
    what: &str,
    note: &(dyn Fn(&str) + Sync),
    op: impl Fn() -> Fut,
) -> (Result<T, Failure>, crate::infra::upstream::Report)
where
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    crate::infra::upstream::guarded(
        &app.upstream(),
        app.max_fetches_per_minute,
        app.fetch_attempts,
        note,
        || within(app.fetch_timeout, what, op()),
    )
    .await
}

/// Keeps the detached signature beside what it signs, so that what was downloaded can be checked again
/// elsewhere (a fleet's hosts, from the conductor's package).
async fn keep_signature(dir: &Path, sig: &[u8]) -> Result<(), Failure> {
    let path = dir.join(SIGNATURE_FILE);
    tokio::fs::write(&path, sig)
        .await
        .map_err(|e| permanent(format!("cannot write {}: {e}", path.display())))
}

/// Checks `sig` over `data`; `name` is the artifact's file name, which a minisign signature's signed comment
/// must match when it names one.
pub(super) async fn check_signature(
    v: &crate::sources::signature::Verifier,
    data: &Path,
    sig: &[u8],
    digest: &str,
    name: Option<&str>,
) -> Result<String, Failure> {
    let result = v.verify_file_named(data, sig, name).await;
    match result {
        Ok(()) => Ok(format!("signature by {} verified for {digest}", v.describe())),
        Err(SigError::Missing(m)) => Err(permanent(format!(
            "{digest} is not signed ({m}); verify expects a signature by {}: refusing it",
            v.describe()
        ))),
        Err(SigError::Invalid(m)) => Err(permanent(format!(
            "the signature of {digest} is not valid for {} ({m}): refusing it",
            v.describe()
        ))),
        Err(SigError::Config(m)) => Err(permanent(format!("cannot check signatures: {m}"))),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Object storage and URLs

/// Streams `body` into `path`, hashing as it goes, refusing more than `max` bytes.
async fn save_stream<S, E>(mut body: S, path: &Path, max: u64, what: &str) -> Result<String, Failure>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| permanent(format!("cannot create {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut n: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Failure::transient(format!("downloading {what} broke off: {e}")))?;
        n += chunk.len() as u64;
        if n > max {
            return Err(permanent(format!(
                "{what} is larger than max_artifact_size ({max} bytes); refusing it"
            )));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| permanent(format!("cannot write {}: {e}", path.display())))?;
    }
    file.flush()
        .await
        .map_err(|e| permanent(format!("cannot write {}: {e}", path.display())))?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

fn s3(app: &AppConfig, o: &ObjectSource) -> Result<object_store::aws::AmazonS3, Failure> {
    use object_store::aws::AmazonS3Builder;
    use object_store::{ClientOptions, RetryConfig};
    crate::infra::upstream::tls();
    let mut options = ClientOptions::new()
        .with_timeout(app.fetch_timeout)
        .with_connect_timeout(Duration::from_secs(10));
    // haul retries (bounded, jittered, circuit-aware); the store must not retry on its own.
    let retry = RetryConfig {
        max_retries: 0,
        retry_timeout: Duration::from_secs(1),
        ..RetryConfig::default()
    };
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&o.bucket)
        .with_region(&o.region)
        .with_retry(retry);
    if let Some(e) = &o.endpoint {
        options = options.with_allow_http(e.starts_with("http://"));
        b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
    }
    b = b.with_client_options(options);
    b = match (&o.access_key_id_file, &o.secret_access_key_file) {
        (Some(id), Some(secret)) => b
            .with_access_key_id(read_secret(id)?)
            .with_secret_access_key(read_secret(secret)?),
        // No keys: a public bucket. Never the instance-metadata service or the environment.
        _ => b.with_skip_signature(true),
    };
    b.build()
        .map_err(|e| permanent(format!("cannot set up S3 for app {}: {e}", app.name)))
}

fn s3_failure(app: &AppConfig, what: &str, e: object_store::Error) -> Failure {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => permanent(format!("{what} does not exist")),
        E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => permanent(format!(
            "the object store refused haul's keys for {what} ({}): check s3_access_key_id_file / s3_secret_access_key_file for app {}; not retried",
            first_line(&source.to_string()),
            app.name
        )),
        other => {
            let m = other.to_string();
            if m.contains("429") || m.contains("SlowDown") || m.contains("Too Many Requests") {
                Failure {
                    kind: Kind::RateLimited,
                    message: format!("the object store is rate-limiting haul ({what})"),
                    retry_after: None,
                }
            } else if m.contains(" 5") || m.contains("connect") || m.contains("timed out") || m.contains("error sending") {
                Failure::transient(format!("{what}: {}", first_line(&m)))
            } else {
                permanent(format!("{what}: {}", first_line(&m)))
            }
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

async fn download_object(
    app: &AppConfig,
    o: &ObjectSource,
    key: &str,
    dir: &Path,
) -> Result<Fetched, Failure> {
    use object_store::ObjectStoreExt;
    let store = s3(app, o)?;
    let what = format!("s3://{}/{key}", o.bucket);
    let path = object_store::path::Path::from(key);
    let got = store.get(&path).await.map_err(|e| s3_failure(app, &what, e))?;
    if got.meta.size > app.max_artifact_bytes {
        return Err(permanent(format!(
            "{what} is {} bytes, over max_artifact_size ({} bytes)",
            got.meta.size, app.max_artifact_bytes
        )));
    }
    let file = dir.join("object");
    let digest = save_stream(got.into_stream(), &file, app.max_artifact_bytes, &what).await?;
    let mut notes = vec![format!("downloaded {what} ({digest})")];
    if let Some(v) = &app.verify {
        let sig_key = format!("{key}{}", v.suffix());
        let sig = match store.get(&object_store::path::Path::from(sig_key.as_str())).await {
            Ok(r) if r.meta.size > SMALL_MAX => {
                return Err(permanent(format!(
                    "the signature s3://{}/{sig_key} is larger than 64 KiB",
                    o.bucket
                )))
            }
            Ok(r) => r
                .bytes()
                .await
                .map_err(|e| s3_failure(app, &format!("s3://{}/{sig_key}", o.bucket), e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(permanent(format!(
                "{what} ({digest}) is not signed: there is no s3://{}/{sig_key}, and verify wants a signature by {}; refusing it",
                o.bucket,
                v.describe()
            )))
            }
            Err(e) => return Err(s3_failure(app, &format!("s3://{}/{sig_key}", o.bucket), e)),
        };
        if sig.len() > 64 * 1024 {
            return Err(permanent(format!(
                "the signature s3://{}/{sig_key} is larger than 64 KiB",
                o.bucket
            )));
        }
        keep_signature(dir, &sig).await?;
        let name = key.rsplit('/').next();
        notes.push(check_signature(v, &file, &sig, &digest, name).await?);
    }
    Ok(Fetched {
        digest,
        files: vec![file],
        notes,
    })
}

/// A cheap look at an object (poll): its ETag, without downloading it.
pub async fn object_etag(app: &AppConfig, o: &ObjectSource) -> Result<String, Failure> {
    use object_store::ObjectStoreExt;
    let store = s3(app, o)?;
    let what = format!("s3://{}/{}", o.bucket, o.key);
    let meta = store
        .head(&object_store::path::Path::from(o.key.as_str()))
        .await
        .map_err(|e| s3_failure(app, &what, e))?;
    Ok(meta
        .e_tag
        .unwrap_or_else(|| format!("{}-{}", meta.size, meta.last_modified.timestamp_millis())))
}

/// The HTTP client for artifacts. Configured for HTTPS, it never follows a redirect to plain HTTP.
pub(crate) fn http_client(app: &AppConfig) -> Result<reqwest::Client, Failure> {
    crate::infra::upstream::tls();
    let https = match &app.source {
        Source::Image(i) => !i.plain_http,
        Source::Url(u) => u.url.starts_with("https://"),
        _ => true,
    };
    reqwest::Client::builder()
        .https_only(https)
        .connect_timeout(Duration::from_secs(10))
        .timeout(app.fetch_timeout)
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("haul/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| permanent(format!("cannot set up HTTP: {e}")))
}

/// Types an HTTP answer at its source.
pub(crate) fn http_status_failure(app: &AppConfig, url: &str, r: &reqwest::Response) -> Failure {
    let credential = match &app.source {
        Source::Image(_) => "registry_username / registry_password_file (or registry_token_file)",
        _ => "url_token_file",
    };
    let status = r.status();
    let shown = crate::model::url::shown(url);
    match status.as_u16() {
        401 | 403 => permanent(format!(
            "{shown} answered {status}: the registry refused haul's credentials ({credential}) for app {}; not retried",
            app.name
        )),
        404 | 410 => permanent(format!("{shown} answered {status}: there is no such artifact")),
        429 => Failure {
            kind: Kind::RateLimited,
            message: format!("{shown} answered 429 Too Many Requests"),
            retry_after: r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| crate::infra::upstream::retry_after(&[format!("Retry-After: {v}")])),
        },
        s if s >= 500 => Failure::transient(format!("{shown} answered {status}")),
        _ => permanent(format!("{shown} answered {status}")),
    }
}

pub(crate) fn http_send_failure(url: &str, e: reqwest::Error) -> Failure {
    Failure::transient(format!("cannot reach {}: {e}", crate::model::url::shown(url)))
}

async fn http_get(app: &AppConfig, u: &UrlSource, url: &str) -> Result<reqwest::Response, Failure> {
    let mut req = http_client(app)?.get(url);
    if let Some(t) = &u.token_file {
        req = req.bearer_auth(read_secret(t)?);
    }
    let r = req.send().await.map_err(|e| http_send_failure(url, e))?;
    if !r.status().is_success() {
        return Err(http_status_failure(app, url, &r));
    }
    Ok(r)
}

async fn download_url(app: &AppConfig, u: &UrlSource, url: &str, dir: &Path) -> Result<Fetched, Failure> {
    let r = http_get(app, u, url).await?;
    if r.content_length().is_some_and(|n| n > app.max_artifact_bytes) {
        return Err(permanent(format!(
            "{url} is larger than max_artifact_size ({} bytes)",
            app.max_artifact_bytes
        )));
    }
    let file = dir.join("download");
    let shown = crate::model::url::shown(url);
    let digest = save_stream(r.bytes_stream(), &file, app.max_artifact_bytes, &shown).await?;
    let mut notes = vec![format!("downloaded {shown} ({digest})")];
    if let Some(v) = &app.verify {
        let sig_url = format!("{url}{}", v.suffix());
        let sig = match http_get(app, u, &sig_url).await {
            Ok(r) => read_capped(r, SMALL_MAX, "the signature").await?,
            Err(f) if f.kind == Kind::Permanent && f.message.contains("no such artifact") => {
                return Err(permanent(format!(
                    "{shown} ({digest}) is not signed: {} does not exist, and verify wants a signature by {}; refusing it",
                    crate::model::url::shown(&sig_url),
                    v.describe()
                )))
            }
            Err(f) => return Err(f),
        };
        keep_signature(dir, &sig).await?;
        let name = url.split(['?', '#']).next().and_then(|p| p.rsplit('/').next());
        notes.push(check_signature(v, &file, &sig, &digest, name).await?);
    }
    Ok(Fetched {
        digest,
        files: vec![file],
        notes,
    })
}

/// A cheap look at a URL (poll): its ETag or Last-Modified, by `HEAD`.
pub async fn url_etag(app: &AppConfig, u: &UrlSource) -> Result<String, Failure> {
    let mut req = http_client(app)?.head(&u.url);
    if let Some(t) = &u.token_file {
        req = req.bearer_auth(read_secret(t)?);
    }
    let r = req.send().await.map_err(|e| http_send_failure(&u.url, e))?;
    if !r.status().is_success() {
        return Err(http_status_failure(app, &u.url, &r));
    }
    let h =
        |n: reqwest::header::HeaderName| r.headers().get(n).and_then(|v| v.to_str().ok()).map(String::from);
    h(reqwest::header::ETAG)
        .or_else(|| h(reqwest::header::LAST_MODIFIED))
        .ok_or_else(|| {
            permanent(format!(
                "{} sends neither ETag nor Last-Modified: poll cannot tell when it changes",
                u.url
            ))
        })
}

/// `HAUL_IMAGE` for a container image deployed by digest.
pub fn pinned_image(img: &ImageSource, digest_hex: &str) -> String {
    format!("{}/{}@sha256:{digest_hex}", img.registry, img.repository)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_order() {
        let tags: Vec<String> = ["v1.9", "v1.10", "v1.2", "v0.99"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(newest(tags.iter()).map(String::as_str), Some("v1.10"));
    }

    #[test]
    fn templates_take_only_shas() {
        assert_eq!(
            fill("a/{sha}.tgz", Some("ABCDEF1")).ok().as_deref(),
            Some("a/abcdef1.tgz")
        );
        assert!(fill("a/{sha}.tgz", Some("../x")).is_err());
        assert!(fill("a/{sha}.tgz", None).is_err());
        assert_eq!(fill("a/b.tgz", None).ok().as_deref(), Some("a/b.tgz"));
    }
}
