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
use tokio::sync::watch;

use super::decision::{Decision, FailureKind, Outcome, RetryState};
use crate::access_log::Details;
use crate::body::Body;
use crate::circuit_breaker::CircuitBreaker;
use crate::cluster::UpstreamError;
use crate::cluster::stats::RetryStats;
use crate::error::{ResponseFlag, ResponseFlags};
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
#[derive(Debug, Clone, Default)]
pub struct Timeouts {
    /// The route timeout (after `x-envoy-upstream-rq-timeout-ms`), covering all attempts.
    pub route: Option<Duration>,
    /// Turns true when the downstream request is complete (its body ended): as in Envoy, the
    /// route timeout starts then. `None`: the request is complete already.
    pub request_end: Option<watch::Receiver<bool>>,
}

/// Resolves when the route timeout fires; never without one.
async fn route_timer(timeouts: Timeouts) {
    let Some(limit) = timeouts.route else {
        return std::future::pending().await;
    };
    if let Some(mut end) = timeouts.request_end {
        // A dropped sender means the body is gone (ended or failed): start the timer.
        let _ = end.wait_for(|ended| *ended).await;
    }
    tokio::time::sleep(limit).await;
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

/// The 504 for a route timeout or, when a per-try timeout ended the last attempt, for that.
fn timeout_reply(per_try: bool) -> Response<Body> {
    let mut reply = local_reply(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream request timeout",
        Some(ResponseFlag::UpstreamRequestTimeout),
    );
    Details::timeout(per_try).attach(&mut reply);
    reply
}

/// The local reply for an upstream failure: Envoy 1.40's wording (`retried and the latest
/// reset reason: ...` once retries ran), flag and response code details.
pub fn failure_reply(error: &UpstreamError, retried: bool) -> Response<Body> {
    let flag = error.response_flag();
    let mut reply = if flag == ResponseFlag::UpstreamOverflow {
        crate::circuit_breaker::overflow_reply()
    } else {
        let reason = match error {
            UpstreamError::Reset(_) => "connection termination",
            UpstreamError::RefusedStream(_) => "remote refused stream reset",
            UpstreamError::ConnectTimeout => "connection timeout",
            UpstreamError::TransportNotImplemented(_) => "local connection failure",
            _ => "remote connection failure",
        };
        let retried = if retried {
            "retried and the latest "
        } else {
            ""
        };
        let mut reply = local_reply(StatusCode::SERVICE_UNAVAILABLE, "", Some(flag));
        *reply.body_mut() = crate::body::full(format!(
            "upstream connect error or disconnect/reset before headers. {retried}reset reason: {reason}"
        ));
        reply.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        reply
    };
    Details::upstream_failure(error).attach(&mut reply);
    reply
}

fn count(counter: Option<&crate::stats::Counter>) {
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
    let stats = upstream.stats;
    let route = route_timer(timeouts);
    tokio::pin!(route);
    let mut retry_guard = None;
    loop {
        let attempt = state.attempt();
        let Some((host, sent)) = send(attempt, state.excluded()) else {
            return Err(local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                Some(ResponseFlag::NoHealthyUpstream),
            ));
        };
        state.record_host(host);
        let per_try = state.per_try_timeout();
        let per_try_timer = async {
            match per_try {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let got = tokio::select! {
            biased;
            result = sent => match result {
                Ok(response) => Got::Response(response),
                Err(error) => Got::Error(error),
            },
            () = &mut route => {
                tracing::debug!(attempt, upstream = %host, "upstream request timeout");
                if let Some(d) = upstream.outlier {
                    d.record(host, outlier::Outcome::Timeout);
                }
                count(stats.map(|s| &*s.timeout));
                return Err(timeout_reply(false));
            }
            () = per_try_timer => Got::PerTryTimeout,
        };
        if matches!(got, Got::PerTryTimeout) {
            if let Some(d) = upstream.outlier {
                d.record(host, outlier::Outcome::Timeout);
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
                tokio::select! {
                    biased;
                    () = &mut route => {
                        count(stats.map(|s| &*s.timeout));
                        return Err(timeout_reply(false));
                    }
                    () = tokio::time::sleep(backoff) => continue,
                }
            }
            Decision::Done if attempt > 1 => count(stats.map(|s| &s.success)),
            Decision::Done => {}
            Decision::Exhausted => count(stats.map(|s| &s.limit_exceeded)),
            Decision::Overflow => count(stats.map(|s| &s.overflow)),
        }
        let mut reply = match got {
            Got::Response(response) => Ok(response),
            Got::Error(error) => Err(failure_reply(&error, attempt > 1)),
            Got::PerTryTimeout => Err(timeout_reply(true)),
        };
        // The retry verdict (URX/UO) joins the last attempt's flag (UF/UC/UT): Envoy 1.40 logs
        // `URX,UF`, `URX,UT` (see `ResponseFlags`' print order).
        if let Some(flag) = decision.response_flag() {
            let (Ok(r) | Err(r)) = &mut reply;
            ResponseFlags::add_to(r.extensions_mut(), flag);
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

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
