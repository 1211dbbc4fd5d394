//! Placeholder replaced by the real module (being written).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
}
impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 4 << 30, max_entries: 1_000_000 }
    }
}
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{0}")]
    Unsafe(String),
    #[error("{0}")]
    TooBig(String),
    #[error("{0}")]
    Io(String),
}
pub struct Unpacked {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
}
pub fn unpack(_src: impl std::io::Read, _dest: &std::path::Path, _limits: &Limits) -> Result<Unpacked, UnpackError> {
    Err(UnpackError::Io("not yet".into()))
}
