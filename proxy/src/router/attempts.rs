//! Upstream tries: host selection, the per-try and route timeouts, and retries per the route's
//! `RetryPolicy` (other host with `previous_hosts`, jittered backoff). Only requests whose body
//! is already complete when routed (GET and other bodiless requests) are retried: Envoy would
//! buffer a body to replay it, Ferry does not buffer yet and sends those exactly once.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Response, StatusCode};
use tokio::time::Instant;

use crate::body::{self, Body};
use crate::cluster::{Cluster, LbContext, UpstreamError};
use crate::error::ResponseFlag;
use crate::http_connection_manager::local_reply;
use crate::route::RetryPolicy;

/// What one try needs besides the host.
pub(crate) struct Tries<'a> {
    pub(crate) cluster: &'a Arc<Cluster>,
    pub(crate) ctx: LbContext<'a>,
    pub(crate) retry: Option<&'a RetryPolicy>,
    pub(crate) route_timeout: Option<std::time::Duration>,
    pub(crate) include_attempt_count: bool,
    pub(crate) auto_host_rewrite: bool,
}

enum Outcome {
    Response(Response<Body>),
    Failed(UpstreamError),
    TryTimeout,
    RouteTimeout,
}

fn failure_reply(error: &UpstreamError) -> Response<Body> {
    let flag = error.response_flag();
    let body = match flag {
        ResponseFlag::UpstreamOverflow => {
            "upstream connect error or disconnect/reset before headers. reset reason: overflow"
        }
        ResponseFlag::UpstreamConnectionFailure => {
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
        }
        _ => {
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
        }
    };
    let mut reply = local_reply(StatusCode::SERVICE_UNAVAILABLE, body, Some(flag));
    if flag == ResponseFlag::UpstreamOverflow {
        reply
            .headers_mut()
            .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    }
    reply
}

fn timeout_reply() -> Response<Body> {
    local_reply(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream request timeout",
        Some(ResponseFlag::UpstreamRequestTimeout),
    )
}

/// `auto_host_rewrite`: Host and the URI's authority become the endpoint's hostname.
fn rewrite_authority(request: &mut http::Request<Body>, hostname: &str) {
    if hostname.is_empty() {
        return;
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if let (Ok(uri), Ok(host)) = (
        http::Uri::try_from(format!("http://{hostname}{path}")),
        HeaderValue::from_str(hostname),
    ) {
        *request.uri_mut() = uri;
        request.headers_mut().insert(http::header::HOST, host);
    }
}

fn grpc_status(response: &Response<Body>) -> Option<u32> {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

impl Tries<'_> {
    /// Sends `parts` + `body`, retrying as the policy allows. `Ok` is the upstream's response,
    /// `Err` a local reply (no host, failure, timeout), already counted on the cluster.
    pub(crate) async fn send(
        self,
        parts: http::request::Parts,
        body: Body,
        replayable: bool,
    ) -> Result<Response<Body>, Response<Body>> {
        let started = Instant::now();
        let deadline = self.route_timeout.map(|t| started + t);
        let retries = match (self.retry, replayable) {
            (Some(policy), true) => policy.num_retries,
            _ => 0,
        };
        // The head is copied for re-sending only when a retry is possible at all.
        let retry_head = (retries > 0).then(|| {
            (
                parts.method.clone(),
                parts.uri.clone(),
                parts.version,
                parts.headers.clone(),
            )
        });
        let mut first = Some(http::Request::from_parts(parts, body));
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut attempt: u32 = 0;
        // Holds the retry budget slot of the retry in flight.
        let mut _retry_guard: Option<crate::circuit_breaker::Guard> = None;
        loop {
            attempt += 1;
            let excluded: &[SocketAddr] = match self.retry {
                Some(policy) if policy.previous_hosts => &tried,
                _ => &[],
            };
            let ctx = LbContext {
                excluded,
                ..self.ctx
            };
            let Some(host) = self.cluster.select_host(&ctx) else {
                return Err(local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no healthy upstream",
                    Some(ResponseFlag::NoHealthyUpstream),
                ));
            };
            tracing::Span::current()
                .record("upstream.addr", tracing::field::display(host.address()));
            tried.push(host.address());
            let copy = || {
                retry_head.as_ref().map(|(method, uri, version, headers)| {
                    let mut request = http::Request::new(body::empty());
                    *request.method_mut() = method.clone();
                    *request.uri_mut() = uri.clone();
                    *request.version_mut() = *version;
                    *request.headers_mut() = headers.clone();
                    request
                })
            };
            // A later try always has a copy: retries are admitted only when `retries > 0`.
            let Some(mut request) = first.take().or_else(copy) else {
                return Err(local_reply(StatusCode::INTERNAL_SERVER_ERROR, "", None));
            };
            if self.auto_host_rewrite {
                rewrite_authority(&mut request, host.hostname());
            }
            if self.include_attempt_count
                && let Ok(value) = HeaderValue::from_str(&attempt.to_string())
            {
                request.headers_mut().insert("x-envoy-attempt-count", value);
            }
            let per_try = self.retry.and_then(|p| p.per_try_timeout);
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let limit = match (per_try, remaining) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // The cluster applies its circuit breaker and feeds outlier detection.
            let sent = self.cluster.send(&host, request);
            let outcome = match limit {
                Some(limit) => match tokio::time::timeout(limit, sent).await {
                    Ok(Ok(response)) => Outcome::Response(response),
                    Ok(Err(error)) => Outcome::Failed(error),
                    Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => {
                        Outcome::RouteTimeout
                    }
                    Err(_) => Outcome::TryTimeout,
                },
                None => match sent.await {
                    Ok(response) => Outcome::Response(response),
                    Err(error) => Outcome::Failed(error),
                },
            };
            let retriable = self.retry.is_some_and(|p| match &outcome {
                Outcome::Response(r) => p.retry_response(r.status(), grpc_status(r)),
                Outcome::Failed(UpstreamError::Overflow) => false,
                Outcome::Failed(
                    UpstreamError::ConnectFailure(_) | UpstreamError::ConnectTimeout,
                ) => p.retry_connect_failure(),
                Outcome::Failed(_) | Outcome::TryTimeout => p.retry_reset(),
                Outcome::RouteTimeout => false,
            });
            if matches!(outcome, Outcome::TryTimeout | Outcome::RouteTimeout)
                && let Some(detector) = self.cluster.outlier_detector()
            {
                detector.record(host.address(), crate::outlier::Outcome::Timeout);
            }
            let mut retry_flag = None;
            if retriable && attempt <= retries {
                // Retries are admitted by the cluster's retry budget / max_retries breaker.
                match self
                    .cluster
                    .circuit_breakers()
                    .for_priority(false)
                    .try_acquire_retry()
                {
                    Some(guard) => {
                        let backoff = self.retry.map(|p| p.backoff(attempt)).unwrap_or_default();
                        let wake = Instant::now() + backoff;
                        if deadline.is_none_or(|d| wake < d) {
                            tracing::debug!(
                                attempt,
                                backoff_ms = backoff.as_millis() as u64,
                                "retrying"
                            );
                            _retry_guard = Some(guard);
                            tokio::time::sleep_until(wake).await;
                            continue;
                        }
                    }
                    None => {
                        tracing::debug!(attempt, "retry refused by the retry budget");
                        retry_flag = Some(ResponseFlag::UpstreamOverflow);
                    }
                }
            } else if retriable {
                retry_flag = Some(ResponseFlag::UpstreamRetryLimitExceeded);
            }
            let result = match outcome {
                Outcome::Response(response) => Ok(response),
                Outcome::Failed(error) => {
                    tracing::debug!(%error, "upstream request failed");
                    Err(failure_reply(&error))
                }
                Outcome::TryTimeout | Outcome::RouteTimeout => {
                    tracing::debug!("upstream request timeout");
                    Err(timeout_reply())
                }
            };
            let mut result = result;
            if let Some(flag) = retry_flag {
                match &mut result {
                    Ok(r) | Err(r) => r.extensions_mut().insert(flag),
                };
            }
            let status = match &result {
                Ok(r) | Err(r) => r.status(),
            };
            self.cluster.record_response(status);
            return result;
        }
    }
}
