//! Waiting for readiness by polling a condition, never by sleeping a fixed time.
//!
//! Tests must not depend on machine speed: a test waits until the thing it needs is observably
//! true (a port answers, an admin endpoint says `LIVE`, a config version shows up) and then
//! asserts. The deadline here is only a safety net so a broken build fails instead of hanging;
//! it is never the pass condition, so it is generous.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// The safety-net deadline tests use when they have no better bound: long enough that a loaded
/// two-core CI machine never hits it while the condition is merely slow.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// How long to wait between two checks of a condition.
const INTERVAL: Duration = Duration::from_millis(20);

/// A condition did not become true before the safety-net deadline.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {what}{}", last_error_suffix(.last_error))]
pub struct PollTimeout {
    /// What was being waited for, as the caller described it.
    pub what: String,
    /// The safety-net deadline that expired.
    pub timeout: Duration,
    /// The last error the condition reported, if it reported one.
    pub last_error: Option<String>,
}

fn last_error_suffix(last: &Option<String>) -> String {
    last.as_ref()
        .map(|e| format!(" (last error: {e})"))
        .unwrap_or_default()
}

/// Calls `check` until it returns `Some`, and returns that value.
///
/// # Panics
/// When `timeout` passes first; the message names `what`.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let result = try_poll(what, timeout, || {
        let fut = check();
        async move { fut.await.ok_or("not yet") }
    })
    .await;
    match result {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}

/// Calls `check` until it returns `Ok`, and returns that value.
///
/// # Panics
/// When `timeout` passes first; the message names `what` and the last error `check` returned,
/// which is usually the reason the test failed.
pub async fn poll_ok<T, E, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match try_poll(what, timeout, check).await {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}

/// Calls `check` until it returns `Ok`; a [`PollTimeout`] carrying the last error otherwise.
pub async fn try_poll<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> Result<T, PollTimeout>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut last_error = None;
    let polling = async {
        loop {
            match check().await {
                Ok(value) => return value,
                Err(e) => last_error = Some(e.to_string()),
            }
            tokio::time::sleep(INTERVAL).await;
        }
    };
    match tokio::time::timeout(timeout, polling).await {
        Ok(value) => Ok(value),
        Err(_) => Err(PollTimeout {
            what: what.to_owned(),
            timeout,
            last_error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn poll_until_returns_the_first_some() {
        let calls = AtomicU32::new(0);
        let value = poll_until("the third call", PATIENCE, || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            (n == 3).then_some(n)
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn try_poll_reports_the_last_error_on_timeout() {
        let err = try_poll("a miracle", Duration::from_secs(1), || async {
            Err::<(), _>("connection refused")
        })
        .await
        .unwrap_err();
        assert_eq!(err.last_error.as_deref(), Some("connection refused"));
        let message = err.to_string();
        assert!(message.contains("a miracle"), "{message}");
        assert!(message.contains("connection refused"), "{message}");
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 1s waiting for nothing")]
    async fn poll_until_panics_with_what_it_waited_for() {
        poll_until("nothing", Duration::from_secs(1), || async { None::<()> }).await;
    }
}
