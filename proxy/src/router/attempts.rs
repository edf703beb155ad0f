//! The router's side of upstream tries: it turns one downstream request into attempts for
//! [`crate::retry::driver::run`], which owns the loop and every retry rule. Here live what needs
//! the cluster and the request: host selection with the `previous_hosts` predicate and
//! `host_selection_retry_max_attempts`, the request body tee for replay
//! ([`crate::retry::Replay`], up to the route's buffer limit), `x-envoy-attempt-count` on each
//! attempt (and on the response when the virtual host asks), the `x-envoy-*` overrides of
//! internal callers (read, then stripped before the request goes upstream), retry admission by
//! the cluster's circuit breaker, and the per-cluster retry counters.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response};

use crate::body::Body;
use crate::cluster::{Cluster, LbContext};
use crate::retry::decision::ATTEMPT_COUNT;
use crate::retry::driver::{self, Timeouts, Upstream};
use crate::retry::{HeaderOverrides, Replay, RetryPolicy, RetryState};

/// What the tries of one request need besides the request itself.
pub(crate) struct Tries<'a> {
    pub(crate) cluster: &'a Arc<Cluster>,
    pub(crate) ctx: LbContext<'a>,
    /// The route's (else the virtual host's) retry policy.
    pub(crate) retry: Option<&'a RetryPolicy>,
    /// The route timeout (after the `x-envoy-upstream-rq-timeout-ms` override), for all tries.
    pub(crate) route_timeout: Option<Duration>,
    /// The caller's `x-envoy-*` overrides (already stripped from the request).
    pub(crate) overrides: HeaderOverrides,
    /// `include_request_attempt_count`.
    pub(crate) include_attempt_count: bool,
    /// `include_attempt_count_in_response`.
    pub(crate) include_attempt_count_in_response: bool,
    pub(crate) auto_host_rewrite: bool,
    /// How much of the request body is kept for replay.
    pub(crate) buffer_limit: u64,
    /// The route's `priority` is HIGH: the cluster's HIGH circuit breakers apply.
    pub(crate) high_priority: bool,
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

impl Tries<'_> {
    /// Sends `parts` + `body`, retrying as the policy (and the caller's override headers)
    /// allow; `retriable: false` (upgrades) sends exactly once. `Ok` is the upstream's response,
    /// `Err` a local reply (no host, failure, timeout); both may carry a response flag
    /// (URX/UO/UT/UF/UC/UH) and are counted on the cluster.
    pub(crate) async fn send(
        self,
        parts: http::request::Parts,
        body: Body,
        retriable: bool,
    ) -> Result<Response<Body>, Response<Body>> {
        let mut state = RetryState::new(self.retry, &self.overrides);

        let host_selection_attempts = state.host_selection_max_attempts();
        let breaker = self
            .cluster
            .circuit_breakers()
            .for_priority(self.high_priority);
        breaker.record_request();
        // Nothing is kept when no retry can happen (no policy, or `x-envoy-max-retries: 0`).
        let may_retry = retriable && state.may_retry();
        let limit = if may_retry { self.buffer_limit } else { 0 };
        let replay = Replay::new(body, limit);
        let timeouts = Timeouts {
            route: self.route_timeout,
            request_end: Some(replay.request_end()),
        };
        // The head is copied for re-sending only when a retry can happen: copying every
        // request's header map showed up in profiles of the common no-retry case.
        let retry_head = may_retry.then(|| {
            (
                parts.method.clone(),
                parts.uri.clone(),
                parts.version,
                parts.headers.clone(),
            )
        });
        // A sampled request's span records the host of the last attempt.
        let span_slot = parts
            .extensions
            .get::<std::sync::Arc<crate::tracers::SpanSlot>>()
            .cloned();
        let mut first = Some(parts);
        let cluster = self.cluster;
        let ctx = self.ctx;
        let send = |attempt: u32, excluded: &[std::net::SocketAddr]| {
            let select = || cluster.select_host(&LbContext { excluded, ..ctx });
            let mut host = select()?;
            // The predicate rejects a previous host; re-select up to the configured attempts,
            // then settle for the last pick (Envoy's host_selection_retry_max_attempts).
            for _ in 0..host_selection_attempts {
                if !excluded.contains(&host.address()) {
                    break;
                }
                host = select()?;
            }
            tracing::Span::current()
                .record("upstream.addr", tracing::field::display(host.address()));
            if let Some(slot) = &span_slot {
                slot.set_upstream_host(host.address());
            }
            let body = replay.body_for_attempt();
            let mut request = match (first.take(), &retry_head) {
                (Some(parts), _) => http::Request::from_parts(parts, body),
                (None, Some((method, uri, version, headers))) => {
                    let mut request = http::Request::new(body);
                    *request.method_mut() = method.clone();
                    *request.uri_mut() = uri.clone();
                    *request.version_mut() = *version;
                    *request.headers_mut() = headers.clone();
                    // The pool records the retry's connection in a logged request's slot.
                    if let Some(slot) = &span_slot {
                        request.extensions_mut().insert(slot.clone());
                    }
                    request
                }
                // Later tries happen only when `may_retry`, which kept a copy.
                (None, None) => return None,
            };
            if self.include_attempt_count {
                request
                    .headers_mut()
                    .insert(ATTEMPT_COUNT, HeaderValue::from(attempt));
            }
            if self.auto_host_rewrite {
                rewrite_authority(&mut request, host.hostname());
            }
            let cluster = Arc::clone(cluster);
            let address = host.address();
            let high = self.high_priority;
            Some((address, async move {
                cluster.send_with_priority(&host, request, high).await
            }))
        };
        let upstream = Upstream {
            breaker: Some(breaker),
            outlier: cluster.outlier_detector().map(|d| &**d),
            stats: Some(&cluster.stats().retry),
        };
        let mut result = driver::run(
            &mut state,
            timeouts,
            upstream,
            || retriable && replay.is_replayable(),
            send,
        )
        .await;
        let attempts = state.attempt();
        let (Ok(response) | Err(response)) = &mut result;
        cluster.record_response(response.status());
        if self.include_attempt_count_in_response {
            response
                .headers_mut()
                .insert(ATTEMPT_COUNT, HeaderValue::from(attempts));
        }
        result
    }
}
