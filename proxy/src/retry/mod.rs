//! Retries as Envoy's router does them: a validated [`RetryPolicy`] per route, a per-request
//! [`RetryState`] that decides after each attempt whether to try again (and which response flag
//! ends the request), jittered exponential [`backoff`], request bodies teed for [`replay`], and
//! retry [`budget`]s that keep retries from multiplying an outage.
//!
//! [`driver::run`] owns the loop (send, observe, decide, back off, pick another host); the router
//! (`router/attempts.rs`) only supplies host selection and request building, so every rule is
//! here and tested without I/O.
//!
//! Default budget: when a cluster configures no `retry_budget`, retries are admitted by Envoy's
//! `max_retries` (3 concurrent) and by Ferry's ratio budget, modelled on Linkerd's: over a
//! sliding 10 s window, retries may be at most 20% of the original requests plus 10 per second.
//! A fully failing cluster therefore sees about 1.2x its offered load, not `1 + num_retries`
//! times. See `docs/retries.md`.

pub mod backoff;
pub mod budget;
pub mod decision;
pub mod driver;
pub mod policy;
pub mod replay;

pub use backoff::Backoff;
pub use budget::{RatioBudget, RecentRequests, RetryBudget};
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
