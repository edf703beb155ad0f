//! The per-request retry state machine: after each attempt, [`RetryState::decide`] says whether
//! to retry (and how long to back off first) or stop, and which response flag a stop carries:
//! URX when retries ran out on a retriable outcome, UO when the retry budget or `max_retries`
//! circuit breaker refused it.
//!
//! Internal callers may tune a request with Envoy's headers ([`HeaderOverrides`]):
//! `x-envoy-max-retries`, `x-envoy-retry-on`, `x-envoy-retry-grpc-on`,
//! `x-envoy-upstream-rq-timeout-ms` and `x-envoy-upstream-rq-per-try-timeout-ms`. The HTTP
//! connection manager decides whether the caller is internal; these headers are stripped before
//! the request goes upstream.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use rand::Rng;

use super::policy::{RetryOn, RetryPolicy};
use crate::cluster::UpstreamError;
use crate::error::ResponseFlag;

/// `x-envoy-max-retries`.
pub const MAX_RETRIES: &str = "x-envoy-max-retries";
/// `x-envoy-retry-on`.
pub const RETRY_ON: &str = "x-envoy-retry-on";
/// `x-envoy-retry-grpc-on`.
pub const RETRY_GRPC_ON: &str = "x-envoy-retry-grpc-on";
/// `x-envoy-upstream-rq-timeout-ms`.
pub const RQ_TIMEOUT_MS: &str = "x-envoy-upstream-rq-timeout-ms";
/// `x-envoy-upstream-rq-per-try-timeout-ms`.
pub const RQ_PER_TRY_TIMEOUT_MS: &str = "x-envoy-upstream-rq-per-try-timeout-ms";
/// `x-envoy-attempt-count`.
pub const ATTEMPT_COUNT: &str = "x-envoy-attempt-count";

/// How an attempt failed without a response, as far as retry conditions care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The connection could not be established (refused, timed out, handshake failed).
    ConnectFailure,
    /// The connection or stream was reset / closed before a complete response head.
    Reset,
    /// HTTP/2 REFUSED_STREAM: the upstream did not process the request.
    RefusedStream,
    /// The per-try timeout fired.
    PerTryTimeout,
    /// A circuit breaker refused the attempt; never retried.
    Overflow,
}

impl From<&UpstreamError> for FailureKind {
    fn from(e: &UpstreamError) -> Self {
        match e {
            UpstreamError::Overflow => Self::Overflow,
            UpstreamError::Reset(_) => Self::Reset,
            UpstreamError::RefusedStream(_) => Self::RefusedStream,
            UpstreamError::ConnectFailure(_)
            | UpstreamError::ConnectTimeout
            | UpstreamError::Handshake(_)
            | UpstreamError::TransportNotImplemented(_) => Self::ConnectFailure,
        }
    }
}

/// The result of one attempt.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// A response head arrived (trailers-only gRPC responses carry `grpc-status` here).
    Response {
        /// Its status.
        status: StatusCode,
        /// Its headers.
        headers: &'a HeaderMap,
    },
    /// No response.
    Failure(FailureKind),
}

/// What the router does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Wait `backoff`, then send another attempt (to another host if the policy says so).
    Retry {
        /// The jittered back-off before the next attempt.
        backoff: Duration,
    },
    /// The outcome is final and not retriable: pass it on.
    Done,
    /// Retriable, but `num_retries` is used up: pass it on with flag URX.
    Exhausted,
    /// Retriable, but the budget or `max_retries` circuit breaker refused: flag UO.
    Overflow,
}

impl Decision {
    /// The response flag a final decision adds to the request's log entry.
    pub fn response_flag(&self) -> Option<ResponseFlag> {
        match self {
            Self::Exhausted => Some(ResponseFlag::UpstreamRetryLimitExceeded),
            Self::Overflow => Some(ResponseFlag::UpstreamOverflow),
            Self::Retry { .. } | Self::Done => None,
        }
    }
}

/// Envoy's request headers that tune retries and timeouts for internal callers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOverrides {
    /// `x-envoy-max-retries`.
    pub max_retries: Option<u32>,
    /// `x-envoy-retry-on` and `x-envoy-retry-grpc-on`, merged (invalid names are ignored, as
    /// Envoy does for headers).
    pub retry_on: Option<RetryOn>,
    /// `x-envoy-upstream-rq-timeout-ms`: `Some(None)` disables the route timeout (0).
    pub timeout: Option<Option<Duration>>,
    /// `x-envoy-upstream-rq-per-try-timeout-ms`.
    pub per_try_timeout: Option<Duration>,
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn header_retry_on(headers: &HeaderMap, name: &str) -> Option<RetryOn> {
    let value = headers.get(name)?.to_str().ok()?;
    let known: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|n| RetryOn::parse(n).is_ok())
        .collect();
    RetryOn::parse(&known.join(",")).ok()
}

fn merge(a: RetryOn, b: RetryOn) -> RetryOn {
    RetryOn {
        five_xx: a.five_xx || b.five_xx,
        gateway_error: a.gateway_error || b.gateway_error,
        reset: a.reset || b.reset,
        connect_failure: a.connect_failure || b.connect_failure,
        refused_stream: a.refused_stream || b.refused_stream,
        retriable_4xx: a.retriable_4xx || b.retriable_4xx,
        retriable_status_codes: a.retriable_status_codes || b.retriable_status_codes,
        retriable_headers: a.retriable_headers || b.retriable_headers,
        grpc_cancelled: a.grpc_cancelled || b.grpc_cancelled,
        grpc_deadline_exceeded: a.grpc_deadline_exceeded || b.grpc_deadline_exceeded,
        grpc_resource_exhausted: a.grpc_resource_exhausted || b.grpc_resource_exhausted,
        grpc_internal: a.grpc_internal || b.grpc_internal,
        grpc_unavailable: a.grpc_unavailable || b.grpc_unavailable,
        reset_before_request: a.reset_before_request || b.reset_before_request,
        envoy_ratelimited: a.envoy_ratelimited || b.envoy_ratelimited,
        http3_post_connect_failure: a.http3_post_connect_failure || b.http3_post_connect_failure,
    }
}

impl HeaderOverrides {
    /// The request headers that tune retries and timeouts (kept for internal callers by the
    /// HTTP connection manager, consumed and stripped by the router).
    pub const NAMES: [&'static str; 5] = [
        MAX_RETRIES,
        RETRY_ON,
        RETRY_GRPC_ON,
        RQ_TIMEOUT_MS,
        RQ_PER_TRY_TIMEOUT_MS,
    ];

    /// Reads the override headers; malformed values are ignored, as Envoy does.
    pub fn parse(headers: &HeaderMap) -> Self {
        let retry_on = match (
            header_retry_on(headers, RETRY_ON),
            header_retry_on(headers, RETRY_GRPC_ON),
        ) {
            (Some(a), Some(b)) => Some(merge(a, b)),
            (a, b) => a.or(b),
        };
        Self {
            max_retries: header_u64(headers, MAX_RETRIES)
                .map(|n| n.min(u64::from(u32::MAX)) as u32),
            retry_on,
            timeout: header_u64(headers, RQ_TIMEOUT_MS)
                .map(|ms| Some(Duration::from_millis(ms)).filter(|d| !d.is_zero())),
            per_try_timeout: header_u64(headers, RQ_PER_TRY_TIMEOUT_MS)
                .map(Duration::from_millis)
                .filter(|d| !d.is_zero()),
        }
    }

    /// Removes the override headers (and any inbound attempt count) before forwarding.
    pub fn strip(headers: &mut HeaderMap) {
        for name in [
            MAX_RETRIES,
            RETRY_ON,
            RETRY_GRPC_ON,
            RQ_TIMEOUT_MS,
            RQ_PER_TRY_TIMEOUT_MS,
            ATTEMPT_COUNT,
        ] {
            headers.remove(name);
        }
    }

    /// The overall route timeout after the header override.
    pub fn route_timeout(&self, configured: Option<Duration>) -> Option<Duration> {
        self.timeout.unwrap_or(configured)
    }
}

/// One request's retry bookkeeping.
#[derive(Debug)]
pub struct RetryState<'a> {
    policy: Option<Cow<'a, RetryPolicy>>,
    max_retries: u32,
    retries: u32,
    per_try_timeout: Option<Duration>,
    tried: Vec<SocketAddr>,
}

impl<'a> RetryState<'a> {
    /// Starts the state for a request on a route with `policy` (None = no retries unless the
    /// caller's `x-envoy-retry-on` asks for them).
    pub fn new(policy: Option<&'a RetryPolicy>, overrides: &HeaderOverrides) -> Self {
        let mut policy = policy.map(Cow::Borrowed);
        if let Some(on) = overrides.retry_on {
            let p = policy.get_or_insert_with(|| Cow::Owned(RetryPolicy::default()));
            let merged = merge(p.retry_on, on);
            p.to_mut().retry_on = merged;
        }
        let max_retries = match &policy {
            None => 0,
            Some(p) => overrides.max_retries.unwrap_or(p.num_retries),
        };
        let per_try_timeout = overrides
            .per_try_timeout
            .or_else(|| policy.as_ref().and_then(|p| p.per_try_timeout));
        Self {
            policy,
            max_retries,
            retries: 0,
            per_try_timeout,
            tried: Vec::new(),
        }
    }

    /// Whether this request may be retried at all (a policy with retries left); when not, the
    /// router need not keep the request body for replay.
    pub fn may_retry(&self) -> bool {
        self.policy.is_some() && self.retries < self.max_retries
    }

    /// The 1-based number of the attempt about to be (or just) sent.
    pub fn attempt(&self) -> u32 {
        self.retries + 1
    }

    /// The value for `x-envoy-attempt-count`.
    pub fn attempt_count_header(&self) -> HeaderValue {
        HeaderValue::from(self.attempt())
    }

    /// The per-try timeout (the router caps it by what is left of the route timeout).
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.per_try_timeout
    }

    /// Host selection attempts allowed to find a host the predicate accepts.
    pub fn host_selection_max_attempts(&self) -> u32 {
        self.policy
            .as_ref()
            .map_or(1, |p| p.host_selection_max_attempts)
    }

    /// Records the host an attempt went to.
    pub fn record_host(&mut self, host: SocketAddr) {
        if !self.tried.contains(&host) {
            self.tried.push(host);
        }
    }

    /// Hosts the load balancer should avoid for the next attempt (`previous_hosts`).
    pub fn excluded(&self) -> &[SocketAddr] {
        match &self.policy {
            Some(p) if p.previous_hosts => &self.tried,
            _ => &[],
        }
    }

    /// Whether the outcome matches the policy's conditions (ignoring how many retries remain).
    pub fn is_retriable(&self, outcome: &Outcome<'_>) -> bool {
        let Some(policy) = &self.policy else {
            return false;
        };
        let on = &policy.retry_on;
        match outcome {
            Outcome::Response { status, headers } => policy.is_retriable_response(*status, headers),
            Outcome::Failure(kind) => {
                let any_reset = on.five_xx || on.gateway_error || on.reset;
                match kind {
                    FailureKind::Overflow => false,
                    FailureKind::ConnectFailure => {
                        any_reset || on.connect_failure || on.reset_before_request
                    }
                    FailureKind::RefusedStream => {
                        any_reset || on.refused_stream || on.reset_before_request
                    }
                    FailureKind::Reset | FailureKind::PerTryTimeout => any_reset,
                }
            }
        }
    }

    /// Decides what follows `outcome`. `admit` is asked only when a retry is otherwise due; it
    /// takes a slot from the cluster's retry budget / `max_retries` breaker (false = refused).
    pub fn decide<R: Rng + ?Sized>(
        &mut self,
        outcome: &Outcome<'_>,
        admit: impl FnOnce() -> bool,
        rng: &mut R,
    ) -> Decision {
        if !self.is_retriable(outcome) {
            return Decision::Done;
        }
        if self.retries >= self.max_retries {
            return Decision::Exhausted;
        }
        if !admit() {
            return Decision::Overflow;
        }
        self.retries += 1;
        let backoff = self
            .policy
            .as_ref()
            .map_or(Duration::ZERO, |p| p.backoff.delay(self.retries, rng));
        Decision::Retry { backoff }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use xds_proto::envoy::config::route::v3 as route_pb;

    fn policy(retry_on: &str, num_retries: u32) -> RetryPolicy {
        RetryPolicy::try_from(&route_pb::RetryPolicy {
            retry_on: retry_on.into(),
            num_retries: Some(xds_proto::google::protobuf::UInt32Value { value: num_retries }),
            ..Default::default()
        })
        .expect("valid policy")
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(1)
    }

    #[test]
    fn retries_until_exhausted_then_urx() {
        let p = policy("5xx", 2);
        let mut s = RetryState::new(Some(&p), &HeaderOverrides::default());
        let h = HeaderMap::new();
        let bad = Outcome::Response {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers: &h,
        };
        assert_eq!(s.attempt(), 1);
        assert!(matches!(
            s.decide(&bad, || true, &mut rng()),
            Decision::Retry { .. }
        ));
        assert_eq!(s.attempt(), 2);
        assert!(matches!(
            s.decide(&bad, || true, &mut rng()),
            Decision::Retry { .. }
        ));
        let last = s.decide(&bad, || true, &mut rng());
        assert_eq!(last, Decision::Exhausted);
        assert_eq!(
            last.response_flag(),
            Some(ResponseFlag::UpstreamRetryLimitExceeded)
        );
        assert_eq!(s.attempt_count_header(), HeaderValue::from_static("3"));
    }

    #[test]
    fn success_and_non_matching_outcomes_are_done() {
        let p = policy("connect-failure", 3);
        let mut s = RetryState::new(Some(&p), &HeaderOverrides::default());
        let h = HeaderMap::new();
        let ok = Outcome::Response {
            status: StatusCode::OK,
            headers: &h,
        };
        let five = Outcome::Response {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers: &h,
        };
        assert_eq!(s.decide(&ok, || true, &mut rng()), Decision::Done);
        assert_eq!(s.decide(&five, || true, &mut rng()), Decision::Done);
        let reset = Outcome::Failure(FailureKind::Reset);
        assert_eq!(s.decide(&reset, || true, &mut rng()), Decision::Done);
        let refused = Outcome::Failure(FailureKind::ConnectFailure);
        assert!(matches!(
            s.decide(&refused, || true, &mut rng()),
            Decision::Retry { .. }
        ));
    }

    #[test]
    fn failure_kinds_follow_envoy() {
        let p = policy("5xx", 1);
        let s = RetryState::new(Some(&p), &HeaderOverrides::default());
        for kind in [
            FailureKind::ConnectFailure,
            FailureKind::Reset,
            FailureKind::RefusedStream,
            FailureKind::PerTryTimeout,
        ] {
            assert!(s.is_retriable(&Outcome::Failure(kind)), "{kind:?}");
        }
        assert!(!s.is_retriable(&Outcome::Failure(FailureKind::Overflow)));
        let p = policy("reset-before-request", 1);
        let s = RetryState::new(Some(&p), &HeaderOverrides::default());
        assert!(s.is_retriable(&Outcome::Failure(FailureKind::ConnectFailure)));
        assert!(s.is_retriable(&Outcome::Failure(FailureKind::RefusedStream)));
        assert!(!s.is_retriable(&Outcome::Failure(FailureKind::Reset)));
        let p = policy("refused-stream", 1);
        let s = RetryState::new(Some(&p), &HeaderOverrides::default());
        assert!(s.is_retriable(&Outcome::Failure(FailureKind::RefusedStream)));
        assert!(!s.is_retriable(&Outcome::Failure(FailureKind::Reset)));
    }

    #[test]
    fn refused_admission_is_overflow() {
        let p = policy("5xx", 2);
        let mut s = RetryState::new(Some(&p), &HeaderOverrides::default());
        let d = s.decide(&Outcome::Failure(FailureKind::Reset), || false, &mut rng());
        assert_eq!(d, Decision::Overflow);
        assert_eq!(d.response_flag(), Some(ResponseFlag::UpstreamOverflow));
        assert_eq!(s.attempt(), 1);
    }

    #[test]
    fn no_policy_never_retries() {
        let mut s = RetryState::new(None, &HeaderOverrides::default());
        let d = s.decide(
            &Outcome::Failure(FailureKind::ConnectFailure),
            || true,
            &mut rng(),
        );
        assert_eq!(d, Decision::Done);
    }

    #[test]
    fn header_overrides_apply() {
        let mut h = HeaderMap::new();
        h.insert(MAX_RETRIES, HeaderValue::from_static("4"));
        h.insert(RETRY_ON, HeaderValue::from_static("5xx,nonsense"));
        h.insert(RETRY_GRPC_ON, HeaderValue::from_static("unavailable"));
        h.insert(RQ_TIMEOUT_MS, HeaderValue::from_static("0"));
        h.insert(RQ_PER_TRY_TIMEOUT_MS, HeaderValue::from_static("150"));
        let o = HeaderOverrides::parse(&h);
        assert_eq!(o.max_retries, Some(4));
        assert_eq!(o.timeout, Some(None));
        assert_eq!(o.route_timeout(Some(Duration::from_secs(15))), None);
        assert_eq!(o.per_try_timeout, Some(Duration::from_millis(150)));
        let on = o.retry_on.expect("retry-on parsed");
        assert!(on.five_xx && on.grpc_unavailable);

        let s = RetryState::new(None, &o);
        assert_eq!(s.max_retries, 4);
        assert!(s.may_retry());
        assert!(!RetryState::new(None, &HeaderOverrides::default()).may_retry());
        assert_eq!(s.per_try_timeout(), Some(Duration::from_millis(150)));
        assert!(s.is_retriable(&Outcome::Failure(FailureKind::Reset)));

        HeaderOverrides::strip(&mut h);
        assert!(h.is_empty());
        assert_eq!(
            HeaderOverrides::default().route_timeout(Some(Duration::from_secs(15))),
            Some(Duration::from_secs(15))
        );
    }

    #[test]
    fn previous_hosts_are_excluded_only_with_the_predicate() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let p = policy("5xx", 1);
        let mut s = RetryState::new(Some(&p), &HeaderOverrides::default());
        s.record_host(addr);
        assert!(s.excluded().is_empty());
        let mut p = policy("5xx", 1);
        p.previous_hosts = true;
        let mut s = RetryState::new(Some(&p), &HeaderOverrides::default());
        s.record_host(addr);
        s.record_host(addr);
        assert_eq!(s.excluded(), &[addr]);
    }

    #[test]
    fn backoff_is_bounded_by_the_policy() {
        let p = policy("5xx", 5);
        let mut s = RetryState::new(Some(&p), &HeaderOverrides::default());
        let mut r = rng();
        for retry in 1..=5 {
            match s.decide(&Outcome::Failure(FailureKind::Reset), || true, &mut r) {
                Decision::Retry { backoff } => assert!(backoff <= p.backoff.ceiling(retry)),
                other => panic!("expected a retry, got {other:?}"),
            }
        }
    }
}
