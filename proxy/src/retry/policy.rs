//! `envoy.config.route.v3.RetryPolicy` validated into [`RetryPolicy`], with Envoy's defaults.
//!
//! Every condition Envoy documents for `retry_on` that Ferry implements is parsed into
//! [`RetryOn`]; unknown or unimplemented names, retry priorities, option predicates and host
//! predicates other than `previous_hosts` are refused by name rather than silently ignored, so a
//! route never retries differently from what its author asked for.

use std::time::Duration;

use http::StatusCode;
use xds_proto::envoy::config::route::v3 as route_pb;

use super::InvalidRetryPolicy;
use super::backoff::Backoff;
use crate::route::matcher::{HeaderMatch, RequestHead};

/// The `retry_on` conditions, one flag each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, a reset, a connect failure or a per-try timeout.
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504, plus resets and per-try timeouts.
    pub gateway_error: bool,
    /// `reset`: no response at all (disconnect, reset, per-try timeout).
    pub reset: bool,
    /// `connect-failure`: the connection could not be made.
    pub connect_failure: bool,
    /// `refused-stream`: HTTP/2 REFUSED_STREAM.
    pub refused_stream: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `retriable-status-codes`: any of [`RetryPolicy::retriable_status_codes`].
    pub retriable_status_codes: bool,
    /// `retriable-headers`: a response header matches [`RetryPolicy::retriable_headers`].
    pub retriable_headers: bool,
    /// `cancelled`: grpc-status 1.
    pub grpc_cancelled: bool,
    /// `deadline-exceeded`: grpc-status 4.
    pub grpc_deadline_exceeded: bool,
    /// `resource-exhausted`: grpc-status 8.
    pub grpc_resource_exhausted: bool,
    /// `internal`: grpc-status 13.
    pub grpc_internal: bool,
    /// `unavailable`: grpc-status 14.
    pub grpc_unavailable: bool,
    /// `reset-before-request`: a reset before the request went out. Ferry counts the failures
    /// it knows happened before any byte was sent: connect failures and refused streams.
    pub reset_before_request: bool,
    /// `envoy-ratelimited`: the response carries `x-envoy-ratelimited`.
    pub envoy_ratelimited: bool,
    /// `http3-post-connect-failure`: accepted; Ferry has no HTTP/3 upstreams, so it never fires.
    pub http3_post_connect_failure: bool,
}

impl RetryOn {
    /// Parses Envoy's comma-separated `retry_on` (also the `x-envoy-retry-on` header syntax).
    pub fn parse(list: &str) -> Result<Self, InvalidRetryPolicy> {
        let mut on = Self::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let flag = match name {
                "5xx" => &mut on.five_xx,
                "gateway-error" => &mut on.gateway_error,
                "reset" => &mut on.reset,
                "connect-failure" => &mut on.connect_failure,
                "refused-stream" => &mut on.refused_stream,
                "retriable-4xx" => &mut on.retriable_4xx,
                "retriable-status-codes" => &mut on.retriable_status_codes,
                "retriable-headers" => &mut on.retriable_headers,
                "cancelled" => &mut on.grpc_cancelled,
                "deadline-exceeded" => &mut on.grpc_deadline_exceeded,
                "resource-exhausted" => &mut on.grpc_resource_exhausted,
                "internal" => &mut on.grpc_internal,
                "unavailable" => &mut on.grpc_unavailable,
                "reset-before-request" => &mut on.reset_before_request,
                "envoy-ratelimited" => &mut on.envoy_ratelimited,
                "http3-post-connect-failure" => &mut on.http3_post_connect_failure,
                other => {
                    return Err(InvalidRetryPolicy::new(
                        "retry_on",
                        format!("unknown condition {other:?}"),
                    ));
                }
            };
            *flag = true;
        }
        Ok(on)
    }

    /// Whether any gRPC condition is set (the response's `grpc-status` must then be read).
    pub fn any_grpc(&self) -> bool {
        self.grpc_cancelled
            || self.grpc_deadline_exceeded
            || self.grpc_resource_exhausted
            || self.grpc_internal
            || self.grpc_unavailable
    }

    /// Whether a `grpc-status` code is retriable under these conditions.
    pub fn grpc_status(&self, code: u32) -> bool {
        match code {
            1 => self.grpc_cancelled,
            4 => self.grpc_deadline_exceeded,
            8 => self.grpc_resource_exhausted,
            13 => self.grpc_internal,
            14 => self.grpc_unavailable,
            _ => false,
        }
    }
}

/// Envoy's name for the previous-hosts retry host predicate.
pub const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

/// The typed config of the previous-hosts predicate (matched by suffix of its type URL).
pub const PREVIOUS_HOSTS_TYPE: &str = ".PreviousHostsPredicate";

/// A route's retry policy, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The conditions that make an attempt retriable.
    pub retry_on: RetryOn,
    /// `num_retries` (Envoy's default 1 when a policy exists).
    pub num_retries: u32,
    /// `per_try_timeout`; `None` = only the route timeout applies.
    pub per_try_timeout: Option<Duration>,
    /// `retry_back_off` (default base 25 ms, max 10x base).
    pub backoff: Backoff,
    /// `retriable_status_codes` (used when `retriable-status-codes` is set).
    pub retriable_status_codes: Vec<u16>,
    /// `retriable_headers` (used when `retriable-headers` is set).
    pub retriable_headers: Vec<HeaderMatch>,
    /// `retry_host_predicate` contains `previous_hosts`: retries avoid hosts already tried.
    pub previous_hosts: bool,
    /// `host_selection_retry_max_attempts` (default 1): how many times host selection is
    /// repeated to satisfy the host predicate before settling for a previous host.
    pub host_selection_max_attempts: u32,
}

impl Default for RetryPolicy {
    /// A policy with no conditions and Envoy's defaults, the base for header-only retries.
    fn default() -> Self {
        Self {
            retry_on: RetryOn::default(),
            num_retries: 1,
            per_try_timeout: None,
            backoff: Backoff::default(),
            retriable_status_codes: Vec::new(),
            retriable_headers: Vec::new(),
            previous_hosts: false,
            host_selection_max_attempts: 1,
        }
    }
}

fn duration(
    d: &xds_proto::google::protobuf::Duration,
    field: &str,
) -> Result<Duration, InvalidRetryPolicy> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(InvalidRetryPolicy::new(
            field,
            "invalid or negative duration",
        ));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

impl TryFrom<&route_pb::RetryPolicy> for RetryPolicy {
    type Error = InvalidRetryPolicy;

    fn try_from(p: &route_pb::RetryPolicy) -> Result<Self, Self::Error> {
        let refuse = |set: bool, field: &str| {
            if set {
                Err(InvalidRetryPolicy::new(field, "not implemented"))
            } else {
                Ok(())
            }
        };
        refuse(p.retry_priority.is_some(), "retry_priority")?;
        refuse(
            !p.retry_options_predicates.is_empty(),
            "retry_options_predicates",
        )?;
        refuse(p.per_try_idle_timeout.is_some(), "per_try_idle_timeout")?;
        refuse(
            p.rate_limited_retry_back_off.is_some(),
            "rate_limited_retry_back_off",
        )?;
        refuse(
            !p.retriable_request_headers.is_empty(),
            "retriable_request_headers",
        )?;
        refuse(p.refresh_cluster_on_retry, "refresh_cluster_on_retry")?;

        let retry_on = RetryOn::parse(&p.retry_on)?;
        let per_try_timeout = match &p.per_try_timeout {
            None => None,
            Some(d) => Some(duration(d, "per_try_timeout")?).filter(|d| !d.is_zero()),
        };
        let backoff = match &p.retry_back_off {
            None => Backoff::default(),
            Some(b) => {
                let base = match &b.base_interval {
                    Some(d) => duration(d, "retry_back_off.base_interval")?,
                    None => {
                        return Err(InvalidRetryPolicy::new(
                            "retry_back_off.base_interval",
                            "required",
                        ));
                    }
                };
                if base < Duration::from_millis(1) {
                    return Err(InvalidRetryPolicy::new(
                        "retry_back_off.base_interval",
                        "must be at least 1ms",
                    ));
                }
                let max = match &b.max_interval {
                    Some(d) => duration(d, "retry_back_off.max_interval")?,
                    None => base * 10,
                };
                if max < base {
                    return Err(InvalidRetryPolicy::new(
                        "retry_back_off.max_interval",
                        "must not be less than base_interval",
                    ));
                }
                Backoff::new(base, max)
            }
        };
        let mut retriable_status_codes = Vec::with_capacity(p.retriable_status_codes.len());
        for (i, code) in p.retriable_status_codes.iter().enumerate() {
            match u16::try_from(*code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                Some(c) => retriable_status_codes.push(c.as_u16()),
                None => {
                    return Err(InvalidRetryPolicy::new(
                        format!("retriable_status_codes[{i}]"),
                        format!("{code} is not an HTTP status code"),
                    ));
                }
            }
        }
        let mut retriable_headers = Vec::with_capacity(p.retriable_headers.len());
        for (i, m) in p.retriable_headers.iter().enumerate() {
            let field = format!("retriable_headers[{i}]");
            let matcher = HeaderMatch::from_proto(m, &field)
                .map_err(|e| InvalidRetryPolicy::new(e.field, e.reason))?;
            retriable_headers.push(matcher);
        }
        let mut previous_hosts = false;
        for (i, predicate) in p.retry_host_predicate.iter().enumerate() {
            let type_url = match &predicate.config_type {
                Some(route_pb::retry_policy::retry_host_predicate::ConfigType::TypedConfig(a)) => {
                    a.type_url.as_str()
                }
                None => "",
            };
            if predicate.name == PREVIOUS_HOSTS || type_url.ends_with(PREVIOUS_HOSTS_TYPE) {
                previous_hosts = true;
            } else {
                return Err(InvalidRetryPolicy::new(
                    format!("retry_host_predicate[{i}].name"),
                    format!("host predicate {:?} is not implemented", predicate.name),
                ));
            }
        }
        let host_selection_max_attempts = match p.host_selection_retry_max_attempts {
            n if n < 0 => {
                return Err(InvalidRetryPolicy::new(
                    "host_selection_retry_max_attempts",
                    "must not be negative",
                ));
            }
            0 => 1,
            n => u32::try_from(n).unwrap_or(u32::MAX),
        };
        Ok(Self {
            retry_on,
            num_retries: p.num_retries.map_or(1, |n| n.value),
            per_try_timeout,
            backoff,
            retriable_status_codes,
            retriable_headers,
            previous_hosts,
            host_selection_max_attempts,
        })
    }
}

impl RetryPolicy {
    /// Validates `p` found at `field` (e.g. `virtual_hosts[0].routes[1].route.retry_policy`),
    /// the refusal naming the full field path for the NACK.
    pub(crate) fn from_proto(
        p: &route_pb::RetryPolicy,
        field: &str,
    ) -> Result<Self, crate::route::Invalid> {
        Self::try_from(p)
            .map_err(|e| crate::route::Invalid::new(format!("{field}.{}", e.field), e.reason))
    }

    /// Whether a response (status and headers, trailers-only gRPC included) is retriable.
    pub fn is_retriable_response(&self, status: StatusCode, headers: &http::HeaderMap) -> bool {
        let on = &self.retry_on;
        let code = status.as_u16();
        if on.five_xx && status.is_server_error() {
            return true;
        }
        if on.gateway_error && matches!(code, 502..=504) {
            return true;
        }
        if on.retriable_4xx && code == 409 {
            return true;
        }
        if on.envoy_ratelimited && headers.contains_key("x-envoy-ratelimited") {
            return true;
        }
        if on.retriable_status_codes && self.retriable_status_codes.contains(&code) {
            return true;
        }
        if on.any_grpc()
            && let Some(grpc) = headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u32>().ok())
            && on.grpc_status(grpc)
        {
            return true;
        }
        if on.retriable_headers && !self.retriable_headers.is_empty() {
            let head = RequestHead {
                method: &http::Method::GET,
                scheme: "http",
                authority: "",
                path_and_query: "",
                headers,
            };
            return self.retriable_headers.iter().any(|m| m.matches(&head));
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_proto::google::protobuf::{Duration as PbDuration, UInt32Value};

    fn pb(retry_on: &str) -> route_pb::RetryPolicy {
        route_pb::RetryPolicy {
            retry_on: retry_on.into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_match_envoy() {
        let p = RetryPolicy::try_from(&pb("5xx")).expect("valid");
        assert_eq!(p.num_retries, 1);
        assert_eq!(p.per_try_timeout, None);
        assert_eq!(
            p.backoff,
            Backoff::new(Duration::from_millis(25), Duration::from_millis(250))
        );
        assert_eq!(p.host_selection_max_attempts, 1);
        assert!(!p.previous_hosts);
    }

    #[test]
    fn istio_default_policy_parses() {
        let mut p =
            pb("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes");
        p.num_retries = Some(UInt32Value { value: 2 });
        p.host_selection_retry_max_attempts = 5;
        p.retry_host_predicate = vec![route_pb::retry_policy::RetryHostPredicate {
            name: PREVIOUS_HOSTS.into(),
            config_type: None,
        }];
        p.retry_back_off = Some(route_pb::retry_policy::RetryBackOff {
            base_interval: Some(PbDuration {
                seconds: 0,
                nanos: 25_000_000,
            }),
            max_interval: None,
        });
        let p = RetryPolicy::try_from(&p).expect("valid");
        assert!(p.retry_on.connect_failure && p.retry_on.refused_stream);
        assert!(p.retry_on.grpc_unavailable && p.retry_on.grpc_cancelled);
        assert!(!p.retry_on.five_xx);
        assert_eq!(p.num_retries, 2);
        assert!(p.previous_hosts);
        assert_eq!(p.host_selection_max_attempts, 5);
        assert_eq!(p.backoff.max(), Duration::from_millis(250));
    }

    #[test]
    fn unknown_and_unimplemented_fields_are_refused_by_name() {
        let e = RetryPolicy::try_from(&pb("5xx,bogus")).expect_err("refused");
        assert_eq!(e.field, "retry_on");
        assert!(e.reason.contains("bogus"));
        let mut p = pb("5xx");
        p.retry_priority = Some(Default::default());
        assert_eq!(
            RetryPolicy::try_from(&p).expect_err("refused").field,
            "retry_priority"
        );
        let mut p = pb("5xx");
        p.retry_host_predicate = vec![route_pb::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.omit_canary_hosts".into(),
            config_type: None,
        }];
        assert_eq!(
            RetryPolicy::try_from(&p).expect_err("refused").field,
            "retry_host_predicate[0].name"
        );
        let mut p = pb("retriable-status-codes");
        p.retriable_status_codes = vec![1000];
        assert_eq!(
            RetryPolicy::try_from(&p).expect_err("refused").field,
            "retriable_status_codes[0]"
        );
    }

    #[test]
    fn response_conditions() {
        let empty = http::HeaderMap::new();
        let p = RetryPolicy::try_from(&pb("gateway-error")).expect("valid");
        assert!(p.is_retriable_response(StatusCode::BAD_GATEWAY, &empty));
        assert!(!p.is_retriable_response(StatusCode::INTERNAL_SERVER_ERROR, &empty));
        let p = RetryPolicy::try_from(&pb("5xx")).expect("valid");
        assert!(p.is_retriable_response(StatusCode::INTERNAL_SERVER_ERROR, &empty));
        assert!(!p.is_retriable_response(StatusCode::CONFLICT, &empty));
        let p = RetryPolicy::try_from(&pb("retriable-4xx")).expect("valid");
        assert!(p.is_retriable_response(StatusCode::CONFLICT, &empty));
        assert!(!p.is_retriable_response(StatusCode::NOT_FOUND, &empty));
        let mut p = pb("retriable-status-codes");
        p.retriable_status_codes = vec![418];
        let p = RetryPolicy::try_from(&p).expect("valid");
        assert!(p.is_retriable_response(StatusCode::IM_A_TEAPOT, &empty));
        assert!(!p.is_retriable_response(StatusCode::SERVICE_UNAVAILABLE, &empty));
    }

    #[test]
    fn grpc_and_header_conditions() {
        let p = RetryPolicy::try_from(&pb("unavailable,cancelled")).expect("valid");
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert!(p.is_retriable_response(StatusCode::OK, &h));
        h.insert("grpc-status", http::HeaderValue::from_static("13"));
        assert!(!p.is_retriable_response(StatusCode::OK, &h));

        let mut p = pb("retriable-headers");
        p.retriable_headers = vec![route_pb::HeaderMatcher {
            name: "x-retry-me".into(),
            header_match_specifier: Some(
                route_pb::header_matcher::HeaderMatchSpecifier::PresentMatch(true),
            ),
            ..Default::default()
        }];
        let p = RetryPolicy::try_from(&p).expect("valid");
        let mut h = http::HeaderMap::new();
        assert!(!p.is_retriable_response(StatusCode::OK, &h));
        h.insert("x-retry-me", http::HeaderValue::from_static("1"));
        assert!(p.is_retriable_response(StatusCode::OK, &h));
    }
}
