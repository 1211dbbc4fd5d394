//! Where releases come from: git mirrors and artifacts (OCI registries, S3-compatible object storage, plain
//! URLs), their verification (digests, signatures, safe unpacking), every network call through the per-upstream
//! fetch budget and rate-limit circuit (`infra::upstream`). Knows nothing of the queue, the store or HTTP serving.

pub mod artifact;
pub mod git;
pub mod registry;
pub mod signature;
pub mod unpack;
