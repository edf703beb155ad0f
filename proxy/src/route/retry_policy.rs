//! Envoy's `RetryPolicy` as validated config: which outcomes are retried (`retry_on`), how many
//! times, per-try timeout, the `previous_hosts` host predicate and the backoff. Istio puts its
//! default policy (2 retries on `connect-failure,refused-stream,unavailable,cancelled,
//! retriable-status-codes`) on every route, so this must be accepted for a mesh to work.

use std::time::Duration;

use xds_proto::envoy::config::route::v3 as route_pb;

use super::{Invalid, duration};

/// The `retry_on` conditions Ferry implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, connect failures, resets and per-try timeouts.
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504, connect failures, per-try timeouts.
    pub gateway_error: bool,
    /// `reset`: the upstream reset or closed before answering (and per-try timeouts).
    pub reset: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `refused-stream`: HTTP/2 REFUSED_STREAM (reported by the pool as a reset).
    pub refused_stream: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `retriable-status-codes`: the listed codes.
    pub retriable_status_codes: bool,
    /// gRPC `cancelled` (1).
    pub grpc_cancelled: bool,
    /// gRPC `deadline-exceeded` (4).
    pub grpc_deadline_exceeded: bool,
    /// gRPC `resource-exhausted` (8).
    pub grpc_resource_exhausted: bool,
    /// gRPC `internal` (13).
    pub grpc_internal: bool,
    /// gRPC `unavailable` (14).
    pub grpc_unavailable: bool,
}

/// A validated retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Conditions.
    pub on: RetryOn,
    /// Retries after the first try (Envoy's default 1).
    pub num_retries: u32,
    /// Timeout of each try (`None`: only the route timeout applies).
    pub per_try_timeout: Option<Duration>,
    /// `envoy.retry_host_predicates.previous_hosts`: retry on another host.
    pub previous_hosts: bool,
    /// Status codes for `retriable-status-codes`.
    pub retriable_status_codes: Vec<u16>,
    /// Backoff base interval (Envoy default 25 ms).
    pub backoff_base: Duration,
    /// Backoff cap (Envoy default 10x base).
    pub backoff_max: Duration,
}

fn unsupported(field: String) -> Invalid {
    Invalid::new(field, "not implemented by ferry-proxy")
}

impl RetryPolicy {
    pub(crate) fn from_proto(p: &route_pb::RetryPolicy, field: &str) -> Result<Self, Invalid> {
        let f = |s: &str| format!("{field}.{s}");
        let refuse_if = |set: bool, name: &str| {
            if set {
                Err(unsupported(f(name)))
            } else {
                Ok(())
            }
        };
        refuse_if(p.retry_priority.is_some(), "retry_priority")?;
        refuse_if(
            !p.retry_options_predicates.is_empty(),
            "retry_options_predicates",
        )?;
        refuse_if(
            p.rate_limited_retry_back_off.is_some(),
            "rate_limited_retry_back_off",
        )?;
        refuse_if(!p.retriable_headers.is_empty(), "retriable_headers")?;
        refuse_if(
            !p.retriable_request_headers.is_empty(),
            "retriable_request_headers",
        )?;
        refuse_if(p.per_try_idle_timeout.is_some(), "per_try_idle_timeout")?;
        let mut on = RetryOn::default();
        for token in p
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let flag = match token {
                "5xx" => &mut on.five_xx,
                "gateway-error" => &mut on.gateway_error,
                "reset" => &mut on.reset,
                "connect-failure" => &mut on.connect_failure,
                "refused-stream" => &mut on.refused_stream,
                "retriable-4xx" => &mut on.retriable_4xx,
                "retriable-status-codes" => &mut on.retriable_status_codes,
                "cancelled" => &mut on.grpc_cancelled,
                "deadline-exceeded" => &mut on.grpc_deadline_exceeded,
                "resource-exhausted" => &mut on.grpc_resource_exhausted,
                "internal" => &mut on.grpc_internal,
                "unavailable" => &mut on.grpc_unavailable,
                other => {
                    return Err(Invalid::new(
                        f("retry_on"),
                        format!("retry condition {other:?} is not implemented"),
                    ));
                }
            };
            *flag = true;
        }
        let mut previous_hosts = false;
        for (i, predicate) in p.retry_host_predicate.iter().enumerate() {
            let type_url = match &predicate.config_type {
                Some(route_pb::retry_policy::retry_host_predicate::ConfigType::TypedConfig(a)) => {
                    a.type_url.as_str()
                }
                None => "",
            };
            if predicate.name == "envoy.retry_host_predicates.previous_hosts"
                || type_url.ends_with(".PreviousHostsPredicate")
            {
                previous_hosts = true;
            } else {
                return Err(Invalid::new(
                    f(&format!("retry_host_predicate[{i}]")),
                    format!("host predicate {} is not implemented", predicate.name),
                ));
            }
        }
        let mut retriable_status_codes = Vec::new();
        for (i, code) in p.retriable_status_codes.iter().enumerate() {
            let code = u16::try_from(*code)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| {
                    Invalid::new(
                        f(&format!("retriable_status_codes[{i}]")),
                        "not an HTTP status",
                    )
                })?;
            retriable_status_codes.push(code);
        }
        let per_try_timeout = match &p.per_try_timeout {
            Some(d) => Some(duration(d, &f("per_try_timeout"))?).filter(|d| !d.is_zero()),
            None => None,
        };
        let (mut backoff_base, mut backoff_max) = (Duration::from_millis(25), None);
        if let Some(b) = &p.retry_back_off {
            if let Some(base) = &b.base_interval {
                backoff_base = duration(base, &f("retry_back_off.base_interval"))?;
            }
            if let Some(max) = &b.max_interval {
                backoff_max = Some(duration(max, &f("retry_back_off.max_interval"))?);
            }
        }
        Ok(Self {
            on,
            num_retries: p.num_retries.map_or(1, |n| n.value),
            per_try_timeout,
            previous_hosts,
            retriable_status_codes,
            backoff_base,
            backoff_max: backoff_max.unwrap_or(backoff_base * 10),
        })
    }

    /// Whether a response with this status (and gRPC status, from headers) should be retried.
    pub fn retry_response(&self, status: http::StatusCode, grpc_status: Option<u32>) -> bool {
        let code = status.as_u16();
        (self.on.five_xx && status.is_server_error())
            || (self.on.gateway_error && matches!(code, 502..=504))
            || (self.on.retriable_4xx && code == 409)
            || (self.on.retriable_status_codes && self.retriable_status_codes.contains(&code))
            || grpc_status.is_some_and(|g| {
                (self.on.grpc_cancelled && g == 1)
                    || (self.on.grpc_deadline_exceeded && g == 4)
                    || (self.on.grpc_resource_exhausted && g == 8)
                    || (self.on.grpc_internal && g == 13)
                    || (self.on.grpc_unavailable && g == 14)
            })
    }

    /// Whether a failed connect should be retried.
    pub fn retry_connect_failure(&self) -> bool {
        self.on.connect_failure || self.on.five_xx || self.on.gateway_error
    }

    /// Whether a reset before the response (or a per-try timeout) should be retried.
    pub fn retry_reset(&self) -> bool {
        self.on.reset || self.on.five_xx || self.on.refused_stream || self.on.gateway_error
    }

    /// The backoff before retry number `retry` (1-based): full jitter up to
    /// `base * 2^(retry-1)`, capped at the maximum.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .backoff_base
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(self.backoff_max);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::random_range(0..=millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<RetryPolicy, Invalid> {
        let pb: route_pb::RetryPolicy = xds_proto::json::from_yaml_str(yaml).expect("yaml");
        RetryPolicy::from_proto(&pb, "retry_policy")
    }

    #[test]
    fn istio_default_policy_is_accepted() {
        let p = policy(
            r#"
retry_on: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes
num_retries: 2
retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts, typed_config: { '@type': type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }]
host_selection_retry_max_attempts: 5
"#,
        )
        .expect("accepted");
        assert_eq!(p.num_retries, 2);
        assert!(p.previous_hosts && p.retry_connect_failure() && p.retry_reset());
        assert!(p.retry_response(http::StatusCode::OK, Some(14)));
        assert!(!p.retry_response(http::StatusCode::SERVICE_UNAVAILABLE, None));
        assert!(p.backoff(1) <= Duration::from_millis(25));
        assert!(p.backoff(10) <= Duration::from_millis(250));
    }

    #[test]
    fn conditions_and_refusals() {
        let p =
            policy("{ retry_on: \"5xx,retriable-status-codes\", retriable_status_codes: [429] }")
                .unwrap();
        assert_eq!(p.num_retries, 1);
        assert!(p.retry_response(http::StatusCode::BAD_GATEWAY, None));
        assert!(p.retry_response(http::StatusCode::TOO_MANY_REQUESTS, None));
        assert!(!p.retry_response(http::StatusCode::NOT_FOUND, None));
        let e = policy("{ retry_on: envoy-ratelimited }").unwrap_err();
        assert_eq!(e.field, "retry_policy.retry_on");
    }
}
