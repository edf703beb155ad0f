//! The attempt loop the router runs for one request: send, classify, ask
//! [`RetryState::decide`], back off, and try again on another host, all within the route
//! timeout and per-try timeouts, with retries admitted by the cluster's circuit breaker (retry
//! budget / `max_retries`, see [`super::budget`]) and only while the request body can still be
//! replayed ([`super::Replay`]).
//!
//! It is generic only over the one closure that sends an attempt, so the router keeps host
//! selection, request building (body replay, `x-envoy-attempt-count`) and header mutation, and
//! this loop is tested on tokio's paused clock against scripted upstreams. Responses and
//! connection errors reach outlier detection through `Cluster::send`; only per-try timeouts,
//! which drop the attempt's future, are reported here.

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
use crate::cluster::stats::RetryStats;
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

/// The cluster-side parts the loop consults: the breaker that admits retries, the outlier
/// detector told about per-try timeouts, and the counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Upstream<'a> {
    /// Admits retries (`retry_budget` / `max_retries` and the default ratio budget).
    pub breaker: Option<&'a Arc<CircuitBreaker>>,
    /// Told about per-try timeouts.
    pub outlier: Option<&'a outlier::Detector>,
    /// `upstream_rq_retry*`, `upstream_rq_per_try_timeout`, `upstream_rq_timeout`.
    pub stats: Option<&'a RetryStats>,
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

fn count(counter: Option<&Arc<crate::stats::Counter>>) {
    if let Some(c) = counter {
        c.inc();
    }
}

/// Runs attempts until one is final. `send(attempt, excluded)` picks a host for attempt number
/// `attempt` (1-based, for `x-envoy-attempt-count`), avoiding the `excluded` hosts when it can,
/// and returns it with the future sending the request there (`None` = no healthy upstream,
/// 503 UH, never retried). `replayable()` says whether the request body can still be sent
/// again; when it cannot, the outcome in hand is final. `Ok` is the upstream's response, `Err`
/// a local reply; either carries the response flag extension (UT, URX, UO, UF, UC, UH) when one
/// applies.
pub async fn run<F, Fut>(
    state: &mut RetryState<'_>,
    timeouts: Timeouts,
    upstream: Upstream<'_>,
    replayable: impl Fn() -> bool,
    mut send: F,
) -> Result<Response<Body>, Response<Body>>
where
    F: FnMut(u32, &[SocketAddr]) -> Option<(SocketAddr, Fut)>,
    Fut: Future<Output = Result<Response<Body>, UpstreamError>>,
{
    let deadline = timeouts.route.map(|t| Instant::now() + t);
    let stats = upstream.stats;
    let mut retry_guard = None;
    loop {
        let attempt = state.attempt();
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let per_try = match (state.per_try_timeout(), remaining) {
            (Some(p), Some(r)) => Some(p.min(r)),
            (p, r) => p.or(r),
        };
        let Some((host, sent)) = send(attempt, state.excluded()) else {
            return Err(local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                Some(ResponseFlag::NoHealthyUpstream),
            ));
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
        if matches!(got, Got::PerTryTimeout) {
            if let Some(d) = upstream.outlier {
                d.record(host, outlier::Outcome::Timeout);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                tracing::debug!(attempt, upstream = %host, "upstream request timeout");
                count(stats.map(|s| &s.timeout));
                return Err(timeout_reply());
            }
            count(stats.map(|s| &s.per_try_timeout));
        }
        let outcome = match &got {
            Got::Response(r) => Outcome::Response {
                status: r.status(),
                headers: r.headers(),
            },
            Got::Error(e) => Outcome::Failure(FailureKind::from(e)),
            Got::PerTryTimeout => Outcome::Failure(FailureKind::PerTryTimeout),
        };
        let decision = if replayable() {
            decide(state, &outcome, upstream.breaker, &mut retry_guard)
        } else {
            Decision::Done
        };
        tracing::debug!(attempt, upstream = %host, ?decision, "upstream attempt finished");
        match decision {
            Decision::Retry { backoff } => {
                count(stats.map(|s| &s.retry));
                drop(got);
                if !back_off(backoff, deadline).await {
                    count(stats.map(|s| &s.timeout));
                    return Err(timeout_reply());
                }
                continue;
            }
            Decision::Done if attempt > 1 => count(stats.map(|s| &s.success)),
            Decision::Done => {}
            Decision::Exhausted => count(stats.map(|s| &s.limit_exceeded)),
            Decision::Overflow => count(stats.map(|s| &s.overflow)),
        }
        let mut reply = match got {
            Got::Response(response) => Ok(response),
            Got::Error(error) => Err(failure_reply(&error)),
            Got::PerTryTimeout => Err(timeout_reply()),
        };
        // A response keeps one flag: the retry verdict (URX/UO) wins over UF/UC/UT, which the
        // verdict implies.
        if let Some(flag) = decision.response_flag() {
            let (Ok(r) | Err(r)) = &mut reply;
            r.extensions_mut().insert(flag);
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
