//! Failures typed at their source, because the type decides what happens next: a `Permanent` failure is
//! never retried (retrying an unknown branch or a rejected key is how deploy keys get rate-limited), a
//! `Transient` one is retried a bounded number of times with backoff and jitter, and a `RateLimited` one waits.
//! Nothing above the layer that produced a failure parses its message.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Permanent,
    Transient,
    RateLimited,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Permanent => "permanent",
            Kind::Transient => "transient",
            Kind::RateLimited => "rate-limited",
        }
    }
}

/// A failure with its kind and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: Kind,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn permanent(message: impl Into<String>) -> Failure {
        Failure {
            kind: Kind::Permanent,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn transient(message: impl Into<String>) -> Failure {
        Failure {
            kind: Kind::Transient,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// Exponential backoff with full jitter: a random wait in `[0, min(cap, base * 2^attempt)]`.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let ceiling = exp.min(cap);
    ceiling.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        for attempt in 0..40 {
            let d = backoff(attempt, Duration::from_secs(1), Duration::from_secs(30));
            assert!(d <= Duration::from_secs(30));
        }
    }
}
