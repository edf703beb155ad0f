//! A route's `max_stream_duration` block: the limit on a whole stream and how a `grpc-timeout`
//! request header may replace it. Istio emits it on every route of a VirtualService with a
//! `timeout` (`max_stream_duration` and `grpc_timeout_header_max` both set to the timeout).
//!
//! The effective limit is chosen as Envoy's `ConnectionManagerImpl::refreshDurationTimeout`
//! does. Ferry enforces it where it enforces the route timeout, on the wait for the upstream's
//! response headers (504, flag UT); Envoy also bounds the response body's streaming with it,
//! which Ferry does not yet.

use std::time::Duration;

use http::HeaderMap;
use xds_proto::envoy::config::route::v3::route_action::MaxStreamDuration as MaxStreamDurationPb;

use super::{Invalid, duration};

/// A validated `RouteAction.max_stream_duration`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaxStreamDuration {
    /// `max_stream_duration`: `None` = unset, `Some(ZERO)` = explicitly no limit.
    pub max_stream_duration: Option<Duration>,
    /// `grpc_timeout_header_max`: `None` = ignore `grpc-timeout`; `Some(ZERO)` = honour it
    /// uncapped.
    pub grpc_timeout_header_max: Option<Duration>,
    /// `grpc_timeout_header_offset`, subtracted from the (capped) `grpc-timeout`.
    pub grpc_timeout_header_offset: Option<Duration>,
}

impl MaxStreamDuration {
    /// Validates the proto; `field` prefixes error paths.
    pub(crate) fn from_proto(m: &MaxStreamDurationPb, field: &str) -> Result<Self, Invalid> {
        let opt = |d: &Option<xds_proto::google::protobuf::Duration>, name: &str| {
            d.as_ref()
                .map(|d| duration(d, &format!("{field}.{name}")))
                .transpose()
        };
        Ok(Self {
            max_stream_duration: opt(&m.max_stream_duration, "max_stream_duration")?,
            grpc_timeout_header_max: opt(&m.grpc_timeout_header_max, "grpc_timeout_header_max")?,
            grpc_timeout_header_offset: opt(
                &m.grpc_timeout_header_offset,
                "grpc_timeout_header_offset",
            )?,
        })
    }

    /// The stream's limit for a request with `headers`; `None` = no limit. A present
    /// `grpc-timeout` is used only when `grpc_timeout_header_max` is set: capped by it (unless
    /// zero), then reduced by the offset (down to zero, which expires at once, as in Envoy).
    pub fn limit(&self, headers: &HeaderMap) -> Option<Duration> {
        let header = self
            .grpc_timeout_header_max
            .and_then(|max| Some((max, grpc_timeout(headers)?)));
        match header {
            Some((max, mut timeout)) => {
                if !max.is_zero() {
                    timeout = timeout.min(max);
                }
                if !timeout.is_zero()
                    && let Some(offset) = self.grpc_timeout_header_offset
                {
                    timeout = timeout.saturating_sub(offset);
                }
                Some(timeout)
            }
            None => self.max_stream_duration.filter(|d| !d.is_zero()),
        }
    }
}

/// The deprecated `RouteAction.max_grpc_timeout` with its `grpc_timeout_offset`. Istio sets it on
/// every sidecar route (to the VirtualService `timeout`, or `0s`), so refusing it would refuse
/// Istio. For a gRPC request it replaces the route `timeout`, as Envoy's router computes it: the
/// client's `grpc-timeout` (absent = infinite) less the offset, capped by `max` unless zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxGrpcTimeout {
    /// `max_grpc_timeout`; zero = no cap.
    pub max: Duration,
    /// `grpc_timeout_offset`, subtracted from a `grpc-timeout` larger than it.
    pub offset: Option<Duration>,
}

impl MaxGrpcTimeout {
    /// The timeout for a gRPC request with `headers`; `None` = no timeout.
    pub fn timeout(&self, headers: &HeaderMap) -> Option<Duration> {
        let mut timeout = grpc_timeout(headers).unwrap_or(Duration::ZERO);
        if let Some(offset) = self.offset
            && timeout > offset
        {
            timeout -= offset;
        }
        if !self.max.is_zero() && (timeout.is_zero() || timeout > self.max) {
            timeout = self.max;
        }
        Some(timeout).filter(|t| !t.is_zero())
    }
}

/// Whether the request is gRPC (`content-type: application/grpc...`), as Envoy decides it.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.strip_prefix("application/grpc").is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')
            })
        })
}

/// Parses a `grpc-timeout` header (gRPC over HTTP/2: at most 8 ASCII digits and a unit
/// `H M S m u n`); a malformed value counts as absent, as in Envoy.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn headers(grpc_timeout: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = grpc_timeout {
            h.insert("grpc-timeout", HeaderValue::from_static(v));
        }
        h
    }

    fn msd(max: Option<u64>, header_max: Option<u64>, offset: Option<u64>) -> MaxStreamDuration {
        MaxStreamDuration {
            max_stream_duration: max.map(S),
            grpc_timeout_header_max: header_max.map(S),
            grpc_timeout_header_offset: offset.map(S),
        }
    }

    #[test]
    fn parses_grpc_timeout_units() {
        let cases = [
            ("1H", S(3600)),
            ("2M", S(120)),
            ("3S", S(3)),
            ("250m", Duration::from_millis(250)),
            ("7u", Duration::from_micros(7)),
            ("9n", Duration::from_nanos(9)),
            ("99999999S", S(99_999_999)),
        ];
        for (v, want) in cases {
            assert_eq!(grpc_timeout(&headers(Some(v))), Some(want), "{v}");
        }
        for bad in ["", "S", "1", "1x", "-1S", "123456789S", "1.5S"] {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(bad).unwrap());
            assert_eq!(grpc_timeout(&h), None, "{bad:?}");
        }
    }

    #[test]
    fn stream_limit_without_header() {
        assert_eq!(
            msd(Some(5), Some(5), None).limit(&headers(None)),
            Some(S(5))
        );
        assert_eq!(msd(Some(0), Some(0), None).limit(&headers(None)), None);
        assert_eq!(msd(None, None, None).limit(&headers(None)), None);
    }

    #[test]
    fn grpc_timeout_is_ignored_without_header_max() {
        assert_eq!(
            msd(Some(5), None, None).limit(&headers(Some("1S"))),
            Some(S(5))
        );
    }

    #[test]
    fn grpc_timeout_is_capped_by_header_max() {
        let m = msd(Some(5), Some(5), None);
        assert_eq!(m.limit(&headers(Some("2S"))), Some(S(2)));
        assert_eq!(m.limit(&headers(Some("60S"))), Some(S(5)));
        // Zero max: the header applies uncapped, even beyond max_stream_duration.
        assert_eq!(
            msd(Some(5), Some(0), None).limit(&headers(Some("60S"))),
            Some(S(60))
        );
        // A malformed header falls back to max_stream_duration.
        assert_eq!(m.limit(&headers(Some("soon"))), Some(S(5)));
    }

    #[test]
    fn offset_is_subtracted_after_the_cap() {
        let m = msd(None, Some(10), Some(3));
        assert_eq!(m.limit(&headers(Some("60S"))), Some(S(7)));
        assert_eq!(m.limit(&headers(Some("2S"))), Some(Duration::ZERO));
        assert_eq!(m.limit(&headers(None)), None);
    }

    #[test]
    fn converts_proto_and_refuses_negative() {
        let pb = MaxStreamDurationPb {
            max_stream_duration: Some(xds_proto::google::protobuf::Duration {
                seconds: 5,
                nanos: 0,
            }),
            grpc_timeout_header_max: Some(xds_proto::google::protobuf::Duration {
                seconds: 5,
                nanos: 0,
            }),
            grpc_timeout_header_offset: None,
        };
        assert_eq!(
            MaxStreamDuration::from_proto(&pb, "r").unwrap(),
            msd(Some(5), Some(5), None)
        );
        let negative = MaxStreamDurationPb {
            grpc_timeout_header_offset: Some(xds_proto::google::protobuf::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..pb
        };
        let err = MaxStreamDuration::from_proto(&negative, "r").unwrap_err();
        assert!(err.field.ends_with("grpc_timeout_header_offset"), "{err:?}");
    }

    fn grpc(value: Option<&'static str>) -> HeaderMap {
        let mut h = headers(value);
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        h
    }

    #[test]
    fn max_grpc_timeout_follows_envoys_router() {
        let capped = MaxGrpcTimeout {
            max: S(2),
            offset: None,
        };
        assert_eq!(
            capped.timeout(&grpc(None)),
            Some(S(2)),
            "absent header: the cap"
        );
        assert_eq!(capped.timeout(&grpc(Some("1S"))), Some(S(1)));
        assert_eq!(capped.timeout(&grpc(Some("5S"))), Some(S(2)));
        let uncapped = MaxGrpcTimeout {
            max: Duration::ZERO,
            offset: Some(Duration::from_millis(500)),
        };
        assert_eq!(
            uncapped.timeout(&grpc(None)),
            None,
            "Istio's 0s: no timeout"
        );
        assert_eq!(
            uncapped.timeout(&grpc(Some("3S"))),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            uncapped.timeout(&grpc(Some("100m"))),
            Some(Duration::from_millis(100)),
            "offset only when smaller"
        );
    }

    #[test]
    fn grpc_requests_are_recognised_by_content_type() {
        for (ct, want) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert("content-type", HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&h), want, "{ct}");
        }
    }
}
