//! `haul init` for an app built in CI (`--image`, `--object`, `--url`): the source's keys, where its read-only
//! credentials go (files of mode 0600 this run does not create: only the person has them), the signature key
//! setting (minisign, on by default: an artifact haul cannot check is not deployed), and the exact commands
//! CI runs to push, sign and tell haul.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::bail;

/// Which kind of artifact an app is built into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    Image,
    Object,
    Url,
}

/// What `--image` / `--object` / `--url` asked for, checked.
#[derive(Debug, Clone)]
pub struct ArtifactPlan {
    pub kind: ArtifactKind,
    /// `host/repository`, `s3://bucket/key`, or `https://...`.
    pub location: String,
    /// An image's tag (or glob).
    pub tag: String,
    pub registry_username: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// (config key, file, what goes in it).
    pub credentials: Vec<(&'static str, PathBuf, &'static str)>,
    /// Where the CI's minisign public key goes.
    pub verify_key: PathBuf,
    /// Where a URL's bearer token would go (commented out in the config).
    pub url_token: PathBuf,
}

/// `haul init`'s arguments for an app built in CI (flattened into `haul init`'s own).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ArtifactArgs {
    /// Or an OCI artifact CI pushes: registry.example.com/acme/blog.
    #[arg(long, group = "source")]
    pub image: Option<String>,
    /// Or a tarball CI uploads to S3: s3://bucket/blog-{sha}.tar.gz.
    #[arg(long, group = "source")]
    pub object: Option<String>,
    /// Or a tarball CI publishes: https://artifacts.example.com/blog-{sha}.tar.gz.
    #[arg(long, group = "source")]
    pub url: Option<String>,
    /// The image's tag (or glob) [default: main].
    #[arg(long, requires = "image")]
    pub tag: Option<String>,
    /// A pull-only registry account (else a token file).
    #[arg(long, requires = "image")]
    pub registry_username: Option<String>,
    /// An S3-compatible endpoint (omit for AWS).
    #[arg(long, requires = "object")]
    pub s3_endpoint: Option<String>,
    /// The bucket's region.
    #[arg(long, requires = "object")]
    pub s3_region: Option<String>,
}

impl ArtifactArgs {
    pub fn is_set(&self) -> bool {
        self.image.is_some() || self.object.is_some() || self.url.is_some()
    }
}

pub fn plan(a: &ArtifactArgs, app: &str, keys_dir: &Path) -> anyhow::Result<ArtifactPlan> {
    let key = |suffix: &str| keys_dir.join(format!("{app}.{suffix}"));
    let (kind, location) = match (&a.image, &a.object, &a.url) {
        (Some(i), None, None) => (ArtifactKind::Image, i.clone()),
        (None, Some(o), None) => (ArtifactKind::Object, o.clone()),
        (None, None, Some(u)) => (ArtifactKind::Url, u.clone()),
        _ => bail!("give one source: --repo, --image, --object or --url"),
    };
    if location.is_empty() || location.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("{location:?} is not a location haul can fetch from");
    }
    let mut credentials = Vec::new();
    match kind {
        ArtifactKind::Image => {
            if location.contains("://") || location.contains('@') || !location.contains('/') {
                bail!(
                    "--image {location:?}: give the registry host and repository, no scheme, tag or digest: registry.example.com/acme/{app}"
                );
            }
            match &a.registry_username {
                Some(_) => credentials.push((
                    "registry_password_file",
                    key("registry-password"),
                    "the pull-only account's password",
                )),
                None => credentials.push((
                    "registry_token_file",
                    key("registry-token"),
                    "a pull-only token (GHCR: a classic token with read:packages only)",
                )),
            }
        }
        ArtifactKind::Object => {
            if !location.starts_with("s3://")
                || location["s3://".len()..]
                    .split_once('/')
                    .is_none_or(|(b, k)| b.is_empty() || k.is_empty())
            {
                bail!("--object {location:?}: give s3://BUCKET/KEY (the key may hold {{sha}})");
            }
            credentials.push((
                "s3_access_key_id_file",
                key("s3-key-id"),
                "the access key id of a key that may only read this bucket",
            ));
            credentials.push((
                "s3_secret_access_key_file",
                key("s3-secret"),
                "its secret access key",
            ));
        }
        ArtifactKind::Url => {
            if !location.starts_with("https://") {
                bail!("--url {location:?}: give an https:// URL (never credentials in it; {{sha}} may stand in it)");
            }
        }
    }
    if a.tag.is_some() && kind != ArtifactKind::Image {
        bail!("--tag is for --image");
    }
    if (a.s3_endpoint.is_some() || a.s3_region.is_some()) && kind != ArtifactKind::Object {
        bail!("--s3-endpoint and --s3-region are for --object");
    }
    Ok(ArtifactPlan {
        kind,
        location,
        tag: a.tag.clone().unwrap_or_else(|| "main".into()),
        registry_username: a.registry_username.clone(),
        s3_endpoint: a.s3_endpoint.clone(),
        s3_region: a.s3_region.clone(),
        credentials,
        verify_key: key("ci.pub"),
        url_token: key("url-token"),
    })
}

impl ArtifactPlan {
    /// The source's keys in `[apps.APP]`, each with what it does. `q` quotes a path or string for TOML.
    pub fn section(&self, q: &dyn Fn(&str) -> String) -> String {
        let mut s = String::new();
        let _ = self.write_section(&mut s, q);
        s
    }

    fn write_section(&self, s: &mut String, q: &dyn Fn(&str) -> String) -> std::fmt::Result {
        match self.kind {
            ArtifactKind::Image => {
                writeln!(
                    s,
                    "# The OCI artifact CI pushes; haul resolves the tag to a digest and pulls by digest."
                )?;
                writeln!(s, "image = {}\ntag = {}", q(&self.location), q(&self.tag))?;
                if let Some(u) = &self.registry_username {
                    writeln!(s, "# A pull-only account.\nregistry_username = {}", q(u))?;
                }
            }
            ArtifactKind::Object => {
                writeln!(
                    s,
                    "# The tarball CI uploads ({{sha}}: the commit the trigger names)."
                )?;
                writeln!(s, "object = {}", q(&self.location))?;
                if let Some(e) = &self.s3_endpoint {
                    writeln!(
                        s,
                        "# An S3-compatible store (omit for AWS).\ns3_endpoint = {}",
                        q(e)
                    )?;
                }
                if let Some(r) = &self.s3_region {
                    writeln!(s, "s3_region = {}", q(r))?;
                }
            }
            ArtifactKind::Url => {
                writeln!(
                    s,
                    "# The tarball CI publishes ({{sha}}: the commit the trigger names)."
                )?;
                writeln!(s, "url = {}", q(&self.location))?;
                writeln!(
                    s,
                    "# When the URL needs a bearer token (a file of mode 0600):\n# url_token_file = {}",
                    q(&self.url_token.to_string_lossy())
                )?;
            }
        }
        for (key, path, what) in &self.credentials {
            writeln!(
                s,
                "# {what} (a file of mode 0600).\n{key} = {}",
                q(&path.to_string_lossy())
            )?;
        }
        writeln!(
            s,
            "# Only artifacts signed by CI's minisign key deploy; the audit names the key and the digest.\nverify = {{ minisign_key = {} }}",
            q(&self.verify_key.to_string_lossy())
        )
    }

    /// The person's steps: the credential files, the signing key, and what CI runs. Returns the next step.
    pub fn write_steps(
        &self,
        t: &mut String,
        mut step: u32,
        app: &str,
        hook_url: &str,
        secret: &Path,
        ci_notifies: bool,
    ) -> Result<u32, std::fmt::Error> {
        if !self.credentials.is_empty() {
            step += 1;
            writeln!(t, "\n{step}. Put the read-only credentials in their files (haul check says which are missing):\n")?;
            for (_, path, what) in &self.credentials {
                writeln!(
                    t,
                    "     ( umask 077; cat > {} )    # {what}",
                    super::init::sh(path)
                )?;
            }
        }
        step += 1;
        let key = super::init::sh(&self.verify_key);
        writeln!(
            t,
            "\n{step}. Make CI's signing key, once, where CI keeps secrets (not on this server):\n\n     \
             minisign -G -W -p ci.pub -s ci.key    # ci.key becomes a CI secret\n\n   \
             and copy ci.pub to {key} on this server."
        )?;
        step += 1;
        let secret = super::init::sh(secret);
        writeln!(
            t,
            "\n{step}. In CI, after the build (dist/ holds what goes live), with GIT_SHA the commit built and the\n   \
             webhook secret ({secret}) as the CI secret HAUL_SECRET:\n"
        )?;
        let body = match self.kind {
            ArtifactKind::Image => {
                let at = format!("{}:{}", self.location, self.tag);
                writeln!(
                    t,
                    "     tar -czf {app}.tar.gz -C dist .\n     \
                     oras push {at} {app}.tar.gz:application/vnd.oci.image.layer.v1.tar+gzip\n     \
                     digest=$(oras resolve {at})\n     \
                     oras manifest fetch {}@$digest > manifest.json\n     \
                     minisign -S -s ci.key -m manifest.json\n     \
                     oras push {}:sha256-${{digest#sha256:}}.minisig manifest.json.minisig",
                    self.location, self.location
                )?;
                format!(
                    "{{\\\"tag\\\":\\\"{}\\\",\\\"digest\\\":\\\"$digest\\\"}}",
                    self.tag
                )
            }
            ArtifactKind::Object | ArtifactKind::Url => {
                let name = self
                    .location
                    .rsplit('/')
                    .next()
                    .unwrap_or("artifact.tar.gz")
                    .replace("{sha}", "$GIT_SHA");
                writeln!(
                    t,
                    "     tar -czf {name} -C dist .\n     minisign -S -s ci.key -m {name}"
                )?;
                if self.kind == ArtifactKind::Object {
                    let target = self.location.replace("{sha}", "$GIT_SHA");
                    let endpoint = self
                        .s3_endpoint
                        .as_deref()
                        .map(|e| format!(" --endpoint-url {e}"))
                        .unwrap_or_default();
                    writeln!(
                        t,
                        "     aws s3 cp{endpoint} {name} {target}    # a CI key that may write the bucket\n     \
                         aws s3 cp{endpoint} {name}.minisig {target}.minisig"
                    )?;
                } else {
                    writeln!(
                        t,
                        "     # publish {name} and {name}.minisig side by side at {}",
                        self.location.replace("{sha}", "$GIT_SHA")
                    )?;
                }
                writeln!(t, "     sha256=$(sha256sum {name} | cut -d' ' -f1)")?;
                "{\\\"sha\\\":\\\"$GIT_SHA\\\",\\\"sha256\\\":\\\"$sha256\\\"}".to_string()
            }
        };
        if !ci_notifies {
            writeln!(
                t,
                "\n   The registry tells haul of the push itself (its notifications, below): CI only pushes and signs."
            )?;
            return Ok(step);
        }
        writeln!(
            t,
            "     id=msg_$(date +%s%N) ts=$(date +%s) body=\"{body}\"\n     \
             sig=$(printf '%s' \"$id.$ts.$body\" | openssl dgst -sha256 -hmac \"$HAUL_SECRET\" -binary | base64)\n     \
             curl -fsS -H \"webhook-id: $id\" -H \"webhook-timestamp: $ts\" -H \"webhook-signature: v1,$sig\" -d \"$body\" {hook_url}\n\n   \
             CI then holds a key that writes the artifact store and a secret that can only say \"look\": nothing\n   \
             that can write to this server. haul downloads, checks the digest and the signature, and deploys."
        )?;
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ArtifactArgs {
        ArtifactArgs::default()
    }

    #[test]
    fn each_kind_names_its_credentials_and_bad_locations_are_refused() {
        let keys = Path::new("/etc/haul/keys");
        let p = plan(
            &ArtifactArgs {
                image: Some("ghcr.io/acme/api".into()),
                ..args()
            },
            "api",
            keys,
        )
        .expect("image");
        assert_eq!(p.credentials[0].0, "registry_token_file");
        assert_eq!(p.verify_key, keys.join("api.ci.pub"));
        let p = plan(
            &ArtifactArgs {
                object: Some("s3://builds/api-{sha}.tar.gz".into()),
                ..args()
            },
            "api",
            keys,
        )
        .expect("object");
        assert_eq!(p.credentials.len(), 2);
        let p = plan(
            &ArtifactArgs {
                url: Some("https://a.example/x.tgz".into()),
                ..args()
            },
            "api",
            keys,
        )
        .expect("url");
        assert!(p.credentials.is_empty());
        for (a, says) in [
            (
                ArtifactArgs {
                    image: Some("https://ghcr.io/acme/api".into()),
                    ..args()
                },
                "no scheme",
            ),
            (
                ArtifactArgs {
                    image: Some("ghcr.io/acme/api@sha256:00".into()),
                    ..args()
                },
                "no scheme",
            ),
            (
                ArtifactArgs {
                    object: Some("s3://bucket".into()),
                    ..args()
                },
                "s3://BUCKET/KEY",
            ),
            (
                ArtifactArgs {
                    url: Some("http://a.example/x.tgz".into()),
                    ..args()
                },
                "https://",
            ),
            (
                ArtifactArgs {
                    url: Some("https://a/x".into()),
                    tag: Some("v1".into()),
                    ..args()
                },
                "--tag is for",
            ),
            (
                ArtifactArgs {
                    image: Some("a/b".into()),
                    url: Some("https://a/x".into()),
                    ..args()
                },
                "one source",
            ),
        ] {
            let e = plan(&a, "api", keys).expect_err(says).to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
