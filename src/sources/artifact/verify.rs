//! An artifact downloaded and verified on another machine (a fleet's conductor), checked again here from
//! nothing but the files and this host's own config: the manifest or the file must hash to the digest
//! deployed, each layer to the digest its manifest declares, and with `verify` the detached signature must
//! hold for this host's own key. What another host says it checked counts for nothing.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{check_signature, fill, layers_of, permanent, Fetched};
use crate::config::{AppConfig, ImageKind, Source};
use crate::model::failure::Failure;

/// Where a download keeps the detached signature it checked, beside what it signs.
pub const SIGNATURE_FILE: &str = "signature";

/// The files of `dir` (as [`super::download`] left them) checked as an artifact of `digest`; `version` is a
/// templated location's `{sha}`. Permanent failures only: what is here does not change by trying again.
pub async fn verify_local(
    app: &AppConfig,
    dir: &Path,
    digest: &str,
    version: Option<&str>,
) -> Result<Fetched, Failure> {
    if !crate::model::is_sha256_digest(digest) {
        return Err(permanent(format!("{digest:?} is not a sha256 digest")));
    }
    let mut notes = vec![format!(
        "checking the package from the fleet's engine against {digest}"
    )];
    let (data, name, files) = match &app.source {
        Source::Image(img) => {
            let manifest_file = dir.join("manifest.json");
            let (got, _) = hash_file(&manifest_file, 4 * 1024 * 1024).await?;
            if got != digest {
                return Err(permanent(format!(
                    "the package's manifest hashes to {got}, not {digest}: tampered with; refusing it"
                )));
            }
            let mut files = Vec::new();
            if img.kind == ImageKind::Artifact {
                let manifest = std::fs::read(&manifest_file)
                    .map_err(|e| permanent(format!("cannot read {}: {e}", manifest_file.display())))?;
                for (i, layer) in layers_of(app, digest, &manifest)?.iter().enumerate() {
                    let path = dir.join(format!("layer-{i}"));
                    let (got, size) = hash_file(&path, layer.size as u64).await?;
                    if got != layer.digest || size != layer.size as u64 {
                        return Err(permanent(format!(
                            "layer {} of {digest} in the package is {size} bytes hashing to {got}, but the manifest says {} bytes of {}: tampered with; refusing it",
                            i + 1,
                            layer.size,
                            layer.digest
                        )));
                    }
                    files.push(path);
                }
                notes.push(format!("{} layer(s) match the manifest", files.len()));
            }
            (manifest_file, None, files)
        }
        Source::Object(o) => {
            let key = fill(&o.key, version)?;
            let name = key.rsplit('/').next().map(str::to_string);
            let file = dir.join("object");
            check_file(app, &file, digest).await?;
            (file.clone(), name, vec![file])
        }
        Source::Url(u) => {
            let url = fill(&u.url, version)?;
            let name = url
                .split(['?', '#'])
                .next()
                .and_then(|p| p.rsplit('/').next())
                .map(str::to_string);
            let file = dir.join("download");
            check_file(app, &file, digest).await?;
            (file.clone(), name, vec![file])
        }
        Source::Git => return Err(permanent("a git app has no artifact".into())),
    };
    if let Some(v) = &app.verify {
        let sig_file = dir.join(SIGNATURE_FILE);
        let sig = match std::fs::metadata(&sig_file) {
            Ok(m) if m.len() > super::SMALL_MAX => {
                return Err(permanent("the package's signature is larger than 64 KiB".into()))
            }
            Ok(_) => std::fs::read(&sig_file)
                .map_err(|e| permanent(format!("cannot read {}: {e}", sig_file.display())))?,
            Err(_) => {
                return Err(permanent(format!(
                    "{digest} is not signed: the package carries no signature, and verify wants a signature by {}; refusing it",
                    v.describe()
                )))
            }
        };
        notes.push(check_signature(v, &data, &sig, digest, name.as_deref()).await?);
    }
    Ok(Fetched {
        digest: digest.to_string(),
        files,
        notes,
    })
}

async fn check_file(app: &AppConfig, file: &Path, digest: &str) -> Result<(), Failure> {
    let (got, _) = hash_file(file, app.max_artifact_bytes).await?;
    if got != digest {
        return Err(permanent(format!(
            "the package's file hashes to {got}, not {digest}: tampered with; refusing it"
        )));
    }
    Ok(())
}

/// `sha256:<hex>` of a file and its size, refusing one larger than `max` bytes.
async fn hash_file(path: &Path, max: u64) -> Result<(String, u64), Failure> {
    let p: PathBuf = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&p)
            .map_err(|e| permanent(format!("the package has no {}: {e}", p.display())))?;
        let mut reader = file.take(max.saturating_add(1));
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n: u64 = 0;
        loop {
            let k = reader
                .read(&mut buf)
                .map_err(|e| permanent(format!("cannot read {}: {e}", p.display())))?;
            if k == 0 {
                break;
            }
            n += k as u64;
            hasher.update(&buf[..k]);
        }
        if n > max {
            return Err(permanent(format!(
                "{} is larger than the {max} bytes it may be; refusing it",
                p.display()
            )));
        }
        Ok((format!("sha256:{}", hex::encode(hasher.finalize())), n))
    })
    .await
    .map_err(|e| permanent(format!("hashing did not finish: {e}")))?
}
