//! Placeholder replaced by the real module (being written).
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verifier {
    Minisign { key_file: PathBuf },
    Ssh { allowed_signers: PathBuf, identity: String, namespace: String },
}
#[derive(Debug, thiserror::Error)]
pub enum SigError {
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Config(String),
}
impl Verifier {
    pub fn suffix(&self) -> &'static str {
        match self {
            Verifier::Minisign { .. } => ".minisig",
            Verifier::Ssh { .. } => ".sig",
        }
    }
    pub fn describe(&self) -> String {
        format!("{self:?}")
    }
    pub fn verify_file(&self, _data: &Path, _sig: &[u8]) -> Result<(), SigError> {
        Err(SigError::Config("not yet".into()))
    }
}
