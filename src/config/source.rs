//! Where an app's releases come from: a git repository, or an artifact built in CI (an OCI image, an S3
//! object, a plain download).
//!
//! An app names exactly one source, and each source's keys are refused on the others, so a half-edited config
//! fails here instead of fetching from somewhere nobody meant. Every value that later becomes a URL part or a
//! command argument is checked to be one plain word.

use std::path::PathBuf;

use super::files::ConfigDir;
use super::raw::RawApp;

/// Where an app's releases come from. Every source ends in the same place: a complete directory under
/// `releases/`, recorded before it is written, switched to atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A git repository (`repo`): a bare mirror fetched over SSH or HTTPS, checked out.
    Git,
    /// An OCI registry (`image` + `tag`): resolved to a digest, pulled by digest.
    Image(ImageSource),
    /// S3-compatible object storage (`object = "s3://bucket/key"`).
    Object(ObjectSource),
    /// A plain download (`url`).
    Url(UrlSource),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    /// `host[:port]`.
    pub registry: String,
    /// `acme/api`.
    pub repository: String,
    pub kind: ImageKind,
    /// Basic credentials (`registry_username` + `registry_password_file`), or a bearer token file.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    /// Talk plain HTTP to the registry (a registry on loopback or a private network only).
    pub plain_http: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// An OCI artifact whose layers are tarballs: they become the release directory.
    Artifact,
    /// A container image the activate steps run (`HAUL_IMAGE`, pinned by digest); layers are not pulled.
    Container,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSource {
    pub bucket: String,
    /// The key, possibly with `{sha}` (the version a trigger names).
    pub key: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); AWS when unset.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlSource {
    /// `https://...`, possibly with `{sha}`.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>`.
    pub token_file: Option<PathBuf>,
}

impl Source {
    /// Does the location name the version (`{sha}`), so a trigger must say which?
    pub(crate) fn is_templated(&self) -> bool {
        match self {
            Source::Object(o) => o.key.contains("{sha}"),
            Source::Url(u) => u.url.contains("{sha}"),
            Source::Git | Source::Image(_) => false,
        }
    }
    pub(crate) fn is_artifact(&self) -> bool {
        !matches!(self, Source::Git)
    }
}

/// What `repo` shows for an artifact app (status, audit, page): where it comes from, without credentials.
pub(crate) fn source_display(source: &Source) -> Option<String> {
    match source {
        Source::Git => None,
        Source::Image(i) => Some(format!("oci://{}/{}", i.registry, i.repository)),
        Source::Object(o) => Some(format!("s3://{}/{}", o.bucket, o.key)),
        Source::Url(u) => Some(crate::model::url::shown(&u.url)),
    }
}

/// The one source an app names: `repo`, `image`, `object` or `url`.
pub(crate) fn parse(a: &RawApp, dir: &ConfigDir) -> Result<Source, String> {
    check_one_source(a)?;
    if let Some(image) = &a.image {
        parse_image(image, a, dir).map(Source::Image)
    } else if let Some(object) = &a.object {
        parse_object(object, a, dir).map(Source::Object)
    } else if let Some(url) = &a.url {
        parse_url(url, a, dir).map(Source::Url)
    } else {
        Ok(Source::Git)
    }
}

/// Exactly one source, and no key that belongs to another one: registry keys on a git app are a half-edited
/// config, not settings to ignore.
fn check_one_source(a: &RawApp) -> Result<(), String> {
    let named = [
        !a.repo.is_empty(),
        a.image.is_some(),
        a.object.is_some(),
        a.url.is_some(),
    ];
    match named.iter().filter(|n| **n).count() {
        0 => {
            return Err(
                "needs a source: `repo` (git), `image` (OCI registry), `object` (s3://...) or `url`".into(),
            )
        }
        1 => {}
        _ => {
            return Err(
                "names more than one source; use exactly one of `repo`, `image`, `object` or `url`".into(),
            )
        }
    }
    let image_keys = a.registry_username.is_some()
        || a.registry_password_file.is_some()
        || a.registry_token_file.is_some()
        || a.image_kind.is_some()
        || a.plain_http;
    if image_keys && a.image.is_none() {
        return Err("registry_* keys, image_kind and plain_http go with `image`".into());
    }
    let s3_keys = a.s3_endpoint.is_some()
        || a.s3_region.is_some()
        || a.s3_access_key_id_file.is_some()
        || a.s3_secret_access_key_file.is_some();
    if s3_keys && a.object.is_none() {
        return Err("s3_* keys go with `object`".into());
    }
    if a.url_token_file.is_some() && a.url.is_none() {
        return Err("url_token_file goes with `url`".into());
    }
    Ok(())
}

/// A value that ends up as one argument or one URL part: not empty, not an option, no spaces or control
/// characters.
pub(crate) fn is_plain_word(v: &str) -> bool {
    !(v.is_empty() || v.starts_with('-') || v.chars().any(|c| c.is_control() || c == ' '))
}

fn plain_word(key: &str, v: &str) -> Result<(), String> {
    if is_plain_word(v) {
        Ok(())
    } else {
        Err(format!("{key} {v:?} is not valid"))
    }
}

/// `image = "registry.example.com/acme/api"` with its `registry_*`, `image_kind` and `plain_http` keys.
fn parse_image(image: &str, a: &RawApp, dir: &ConfigDir) -> Result<ImageSource, String> {
    plain_word("image", image)?;
    if image.contains("://")
        || image.contains('@')
        || image.rsplit('/').next().is_some_and(|l| l.contains(':'))
    {
        return Err(format!(
            "image {image:?} is `registry.example.com/acme/api` (no scheme, tag or digest: the tag goes in `tag`)"
        ));
    }
    let (registry, repository) = image
        .split_once('/')
        .filter(|(r, rest)| (r.contains('.') || r.contains(':') || *r == "localhost") && !rest.is_empty())
        .ok_or_else(|| {
            format!("image {image:?} must start with the registry host, like `ghcr.io/acme/api`")
        })?;
    if !repository.split('/').all(|c| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    }) {
        return Err(format!(
            "image {image:?}: the repository part must be lowercase letters, digits, '.', '_', '-' and '/'"
        ));
    }
    let kind = match a.image_kind.as_deref() {
        None | Some("artifact") => ImageKind::Artifact,
        Some("container") => ImageKind::Container,
        Some(other) => {
            return Err(format!(
                "image_kind {other:?} must be \"artifact\" or \"container\""
            ))
        }
    };
    if a.registry_username.is_some() != a.registry_password_file.is_some() {
        return Err("registry_username and registry_password_file go together".into());
    }
    if a.registry_token_file.is_some() && a.registry_username.is_some() {
        return Err("use registry_token_file or registry_username + registry_password_file, not both".into());
    }
    Ok(ImageSource {
        registry: registry.to_string(),
        repository: repository.to_string(),
        kind,
        username: a.registry_username.clone(),
        password_file: a.registry_password_file.as_deref().map(|p| dir.resolve(p)),
        token_file: a.registry_token_file.as_deref().map(|p| dir.resolve(p)),
        plain_http: a.plain_http,
    })
}

/// `object = "s3://bucket/key"` with its `s3_*` keys.
fn parse_object(object: &str, a: &RawApp, dir: &ConfigDir) -> Result<ObjectSource, String> {
    plain_word("object", object)?;
    let (bucket, key) = object
        .strip_prefix("s3://")
        .and_then(|r| r.split_once('/'))
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or_else(|| format!("object {object:?} must be s3://bucket/key"))?;
    check_template("object", key)?;
    if let Some(e) = &a.s3_endpoint {
        if !(e.starts_with("https://") || e.starts_with("http://")) || e.chars().any(char::is_control) {
            return Err(format!("s3_endpoint {e:?} must be an http:// or https:// URL"));
        }
    }
    if a.s3_access_key_id_file.is_some() != a.s3_secret_access_key_file.is_some() {
        return Err("s3_access_key_id_file and s3_secret_access_key_file go together".into());
    }
    let region = a.s3_region.clone().unwrap_or_else(|| "us-east-1".into());
    plain_word("s3_region", &region)?;
    Ok(ObjectSource {
        bucket: bucket.to_string(),
        key: key.to_string(),
        endpoint: a.s3_endpoint.clone(),
        region,
        access_key_id_file: a.s3_access_key_id_file.as_deref().map(|p| dir.resolve(p)),
        secret_access_key_file: a.s3_secret_access_key_file.as_deref().map(|p| dir.resolve(p)),
    })
}

/// `url = "https://..."` with its `url_token_file`.
fn parse_url(url: &str, a: &RawApp, dir: &ConfigDir) -> Result<UrlSource, String> {
    plain_word("url", url)?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!(
            "url {url:?} must be https:// (or http:// on a private network)"
        ));
    }
    if url
        .split_once("://")
        .is_some_and(|(_, r)| r.split('/').next().is_some_and(|a| a.contains('@')))
    {
        return Err("url must not carry credentials; put a token in url_token_file".into());
    }
    check_template("url", url)?;
    Ok(UrlSource {
        url: url.to_string(),
        token_file: a.url_token_file.as_deref().map(|p| dir.resolve(p)),
    })
}

/// Only `{sha}` may be filled in, and only once the trigger's value is validated.
fn check_template(key: &str, t: &str) -> Result<(), String> {
    let stripped = t.replace("{sha}", "");
    if stripped.contains('{') || stripped.contains('}') {
        return Err(format!("{key} {t:?}: the only placeholder is {{sha}}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::Source;
    use crate::config::{Config, ConfigError, Track};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/haul/haul.toml"), text)
    }

    #[test]
    fn artifact_sources() {
        let base = "state_dir = \"/tmp/s\"\n[apps.a]\npath = \"/srv/a\"\n";
        let ok = parse(&format!(
            "{base}image = \"reg.example.com:5000/acme/api\"\ntag = \"v*\"\nregistry_username = \"d\"\nregistry_password_file = \"pw\"\nverify = {{ minisign_key = \"k.pub\" }}\npoll = \"5m\"\n"
        ))
        .expect("image app");
        match &ok.apps["a"].source {
            Source::Image(i) => {
                assert_eq!(
                    (i.registry.as_str(), i.repository.as_str()),
                    ("reg.example.com:5000", "acme/api")
                );
                assert_eq!(i.password_file.as_deref(), Some(Path::new("/etc/haul/pw")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ok.apps["a"].track, Track::Tags("v*".into()));
        assert_eq!(ok.apps["a"].upstream(), "reg.example.com:5000");
        let obj = parse(&format!(
            "{base}object = \"s3://b/app-{{sha}}.tar.gz\"\ns3_endpoint = \"http://127.0.0.1:9\"\ns3_access_key_id_file = \"id\"\ns3_secret_access_key_file = \"key\"\n"
        ))
        .expect("object app");
        assert!(obj.apps["a"].source.is_templated());
        assert_eq!(obj.apps["a"].upstream(), "127.0.0.1:9");
        let cases = [
            (format!("{base}repo = \"/r\"\nimage = \"r.io/a/b\"\n"), "more than one source"),
            (base.to_string(), "needs a source"),
            (format!("{base}image = \"https://r.io/a/b\"\n"), "no scheme"),
            (format!("{base}image = \"r.io/a/b:main\"\n"), "no scheme, tag or digest"),
            (format!("{base}image = \"acme/api\"\n"), "registry host"),
            (format!("{base}image = \"r.io/Acme/api\"\n"), "lowercase"),
            (format!("{base}image = \"r.io/a/b\"\ntag = \"-x\"\n"), "tag"),
            (format!("{base}image = \"r.io/a/b\"\nimage_kind = \"vm\"\n"), "image_kind"),
            (format!("{base}image = \"r.io/a/b\"\nregistry_username = \"u\"\n"), "go together"),
            (format!("{base}repo = \"/r\"\nplain_http = true\n"), "go with `image`"),
            (format!("{base}object = \"b/key\"\n"), "s3://bucket/key"),
            (format!("{base}object = \"s3://b/{{version}}.tgz\"\n"), "only placeholder"),
            (format!("{base}object = \"s3://b/{{sha}}.tgz\"\npoll = \"1m\"\n"), "poll cannot watch"),
            (format!("{base}object = \"s3://b/k\"\ns3_endpoint = \"ftp://x\"\n"), "s3_endpoint"),
            (format!("{base}object = \"s3://b/k\"\ns3_access_key_id_file = \"x\"\n"), "go together"),
            (format!("{base}url = \"https://u:p@h/a.tgz\"\n"), "credentials"),
            (format!("{base}url = \"file:///etc/passwd\"\n"), "https://"),
            (format!("{base}repo = \"/r\"\nverify = {{ minisign_key = \"k\" }}\n"), "verify applies"),
            (format!("{base}url = \"https://h/a\"\nverify = {{ }}\n"), "exactly one"),
            (format!("{base}url = \"https://h/a\"\nverify = {{ ssh_allowed_signers = \"s\" }}\n"), "ssh_identity"),
            (format!("{base}url = \"https://h/a\"\ntag = \"v1\"\n"), "`tag` goes with `image`"),
            (
                format!("{base}repo = \"/r\"\n[apps.a.webhook]\nprovider = \"distribution\"\nsecret_file = \"/s\"\n"),
                "for image apps",
            ),
            (format!("{base}url = \"https://h/a\"\nmax_artifact_size = \"lots\"\n"), "max_artifact_size"),
        ];
        for (text, needle) in cases {
            let err = parse(&text).expect_err(&text).to_string();
            assert!(err.contains(needle), "{text:?} gave {err:?}, wanted {needle:?}");
        }
    }
}
