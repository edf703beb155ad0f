//! Retries as Envoy's router does them: a validated [`RetryPolicy`] per route, a per-request
//! [`RetryState`] that decides after each attempt whether to try again (and which response flag
//! ends the request), jittered exponential [`backoff`], and retry [`budget`]s that keep retries
//! from multiplying an outage.
//!
//! The router owns the loop (send, observe, ask [`RetryState::decide`], sleep, pick another host);
//! this module owns every rule so the loop stays a few lines and the rules are tested without I/O.

pub mod backoff;
pub mod budget;
pub mod decision;
pub mod driver;
pub mod policy;
pub mod replay;

pub use backoff::Backoff;
pub use budget::{RatioBudget, RetryBudget};
pub use decision::{Decision, FailureKind, HeaderOverrides, Outcome, RetryState};
pub use policy::{RetryOn, RetryPolicy};
pub use replay::Replay;

/// A `retry_policy` Ferry cannot accept; the route module attaches the route configuration name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("retry_policy.{field}: {reason}")]
pub struct InvalidRetryPolicy {
    /// The field inside `retry_policy`, e.g. `retry_on` or `retry_priority`.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
}

impl InvalidRetryPolicy {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<InvalidRetryPolicy> for crate::route::Invalid {
    fn from(e: InvalidRetryPolicy) -> Self {
        crate::route::Invalid::new(format!("retry_policy.{}", e.field), e.reason)
    }
}
