//! `verify = { ... }`: the key an artifact's detached signature must be made with.
//!
//! This is configuration only; the checking is `sources::signature`'s. Git apps are pinned by sha, so only an
//! artifact may carry one.

use std::path::PathBuf;

use super::files::ConfigDir;
use super::raw::RawVerify;
use super::source::is_plain_word;
use super::Source;

/// How an artifact's detached signature is checked (`verify = { ... }`); the checking is
/// `sources::signature`'s.
#[derive(Debug, Clone)]
pub enum Verifier {
    Minisign {
        key_file: PathBuf,
    },
    Ssh {
        allowed_signers: PathBuf,
        identity: String,
        namespace: String,
    },
}

pub(crate) fn parse(
    v: Option<&RawVerify>,
    source: &Source,
    dir: &ConfigDir,
) -> Result<Option<Verifier>, String> {
    match v {
        None => Ok(None),
        Some(_) if !source.is_artifact() => {
            Err("verify applies to artifacts (image, object, url); git apps are pinned by sha".into())
        }
        Some(v) => parse_verify(v, dir).map(Some),
    }
}

/// Exactly one kind of key; the ssh one also names who signs and in which namespace.
fn parse_verify(v: &RawVerify, dir: &ConfigDir) -> Result<Verifier, String> {
    match (&v.minisign_key, &v.ssh_allowed_signers) {
        (Some(k), None) => {
            if v.ssh_identity.is_some() || v.ssh_namespace.is_some() {
                return Err("verify: ssh_identity and ssh_namespace go with ssh_allowed_signers".into());
            }
            Ok(Verifier::Minisign {
                key_file: dir.resolve(k),
            })
        }
        (None, Some(signers)) => {
            let identity = v
                .ssh_identity
                .clone()
                .ok_or("verify: ssh_allowed_signers needs ssh_identity (the principal CI signs as)")?;
            let namespace = v.ssh_namespace.clone().unwrap_or_else(|| "haul".into());
            for (k, val) in [("ssh_identity", &identity), ("ssh_namespace", &namespace)] {
                if !is_plain_word(val) {
                    return Err(format!("verify: {k} {val:?} is not valid"));
                }
            }
            Ok(Verifier::Ssh {
                allowed_signers: dir.resolve(signers),
                identity,
                namespace,
            })
        }
        _ => Err("verify needs exactly one of minisign_key or ssh_allowed_signers".into()),
    }
}
