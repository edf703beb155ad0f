//! The attempt loop the router runs for one request: send, classify, feed outlier detection,
//! ask [`RetryState::decide`], back off, and try again on another host, all within the route
//! timeout and per-try timeouts, with retries admitted by the cluster's circuit breaker.
//!
//! It is generic only over the one closure that sends an attempt, so the router keeps host
//! selection, request building (body replay, `x-envoy-attempt-count`) and header mutation, and
//! this loop is tested on tokio's paused clock against scripted upstreams.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use tokio::time::Instant;

use super::decision::{Decision, FailureKind, Outcome, RetryState};
use crate::body::Body;
use crate::circuit_breaker::CircuitBreaker;
use crate::cluster::UpstreamError;
use crate::error::ResponseFlag;
use crate::http_connection_manager::local_reply;
use crate::outlier;

/// What one attempt produced.
#[derive(Debug)]
enum Got {
    Response(Response<Body>),
    Error(UpstreamError),
    PerTryTimeout,
}

/// The timeouts of one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    /// The route timeout (after `x-envoy-upstream-rq-timeout-ms`), covering all attempts.
    pub route: Option<Duration>,
}

fn timeout_reply() -> Response<Body> {
    local_reply(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream request timeout",
        Some(ResponseFlag::UpstreamRequestTimeout),
    )
}

/// The local reply for an upstream failure, Envoy's wording and flag.
pub fn failure_reply(error: &UpstreamError) -> Response<Body> {
    let flag = error.response_flag();
    if flag == ResponseFlag::UpstreamOverflow {
        return crate::circuit_breaker::overflow_reply();
    }
    let body = match flag {
        ResponseFlag::UpstreamConnectionFailure => {
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
        }
        ResponseFlag::UpstreamRemoteReset => {
            "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset"
        }
        _ => {
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
        }
    };
    local_reply(StatusCode::SERVICE_UNAVAILABLE, body, Some(flag))
}

fn outlier_outcome(error: &UpstreamError) -> Option<outlier::Outcome> {
    outlier::Outcome::from_result(Err(error))
}

/// Runs attempts until one is final. `send(attempt, excluded)` picks a host for attempt number
/// `attempt` (1-based, for `x-envoy-attempt-count`), avoiding the `excluded` hosts when it can,
/// and returns it with the future sending the request there (`None` = no healthy upstream,
/// 503 UH, never retried). The returned response carries the response flag extension (UT,
/// URX, UO, UF, UC, UH) when one applies.
pub async fn run<F, Fut>(
    state: &mut RetryState<'_>,
    timeouts: Timeouts,
    breaker: Option<&Arc<CircuitBreaker>>,
    outlier: Option<&outlier::Detector>,
    mut send: F,
) -> Response<Body>
where
    F: FnMut(u32, &[SocketAddr]) -> Option<(SocketAddr, Fut)>,
    Fut: Future<Output = Result<Response<Body>, UpstreamError>>,
{
    let deadline = timeouts.route.map(|t| Instant::now() + t);
    let mut retry_guard = None;
    loop {
        let attempt = state.attempt();
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let per_try = match (state.per_try_timeout(), remaining) {
            (Some(p), Some(r)) => Some(p.min(r)),
            (p, r) => p.or(r),
        };
        let Some((host, sent)) = send(attempt, state.excluded()) else {
            return local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                Some(ResponseFlag::NoHealthyUpstream),
            );
        };
        state.record_host(host);
        let got = match per_try {
            Some(t) => match tokio::time::timeout(t, sent).await {
                Ok(Ok(response)) => Got::Response(response),
                Ok(Err(error)) => Got::Error(error),
                Err(_) => Got::PerTryTimeout,
            },
            None => match sent.await {
                Ok(response) => Got::Response(response),
                Err(error) => Got::Error(error),
            },
        };
        let recorded = match &got {
            Got::Response(r) => Some(outlier::Outcome::Response(r.status().as_u16())),
            Got::Error(e) => outlier_outcome(e),
            Got::PerTryTimeout => Some(outlier::Outcome::Timeout),
        };
        if let (Some(d), Some(o)) = (outlier, recorded) {
            d.record(host, o);
        }
        if matches!(got, Got::PerTryTimeout) && deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::debug!(attempt, upstream = %host, "upstream request timeout");
            return timeout_reply();
        }
        let decision = match &got {
            Got::Response(r) => decide(
                state,
                &Outcome::Response {
                    status: r.status(),
                    headers: r.headers(),
                },
                breaker,
                &mut retry_guard,
            ),
            Got::Error(e) => decide(
                state,
                &Outcome::Failure(FailureKind::from(e)),
                breaker,
                &mut retry_guard,
            ),
            Got::PerTryTimeout => decide(
                state,
                &Outcome::Failure(FailureKind::PerTryTimeout),
                breaker,
                &mut retry_guard,
            ),
        };
        tracing::debug!(attempt, upstream = %host, ?decision, "upstream attempt finished");
        if let Decision::Retry { backoff } = decision {
            drop(got);
            if !back_off(backoff, deadline).await {
                return timeout_reply();
            }
            continue;
        }
        let mut reply = match got {
            Got::Response(response) => response,
            Got::Error(error) => failure_reply(&error),
            Got::PerTryTimeout => timeout_reply(),
        };
        // A response keeps one flag: the retry verdict (URX/UO) wins over UF/UC/UT, which the
        // verdict implies.
        if let Some(flag) = decision.response_flag() {
            reply.extensions_mut().insert(flag);
        }
        return reply;
    }
}

fn decide(
    state: &mut RetryState<'_>,
    outcome: &Outcome<'_>,
    breaker: Option<&Arc<CircuitBreaker>>,
    guard: &mut Option<crate::circuit_breaker::Guard>,
) -> Decision {
    let mut rng = rand::rng();
    state.decide(
        outcome,
        || match breaker {
            None => true,
            Some(b) => match b.try_acquire_retry() {
                Some(g) => {
                    *guard = Some(g);
                    true
                }
                None => false,
            },
        },
        &mut rng,
    )
}

/// Sleeps the back-off unless it would run past the deadline; false = the route timed out.
async fn back_off(backoff: Duration, deadline: Option<Instant>) -> bool {
    let wake = Instant::now() + backoff;
    match deadline {
        Some(d) if wake >= d => {
            tokio::time::sleep_until(d).await;
            false
        }
        _ => {
            tokio::time::sleep_until(wake).await;
            true
        }
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
