//! The fault injection filter (`envoy.filters.http.fault`) as Istio emits it: a per-route
//! `HTTPFault` in `typed_per_filter_config` with a fixed delay and/or an abort (HTTP status or
//! gRPC status), each applied to a percentage of requests.
//!
//! Faults are decided once per request ([`Fault::decide`]) before the router runs: a delay holds
//! the request (flag DI), an abort answers locally (flag FI) without touching the upstream.
//! Header-controlled faults (`x-envoy-fault-*`), rate limits, upstream-cluster and node filters
//! and `max_active_faults` are refused by name: a chaos test must never be silently different.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use rand::Rng;
use xds_proto::envoy::extensions::filters::common::fault::v3 as common_pb;
use xds_proto::envoy::extensions::filters::http::fault::v3 as fault_pb;
use xds_proto::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use xds_proto::google::protobuf::Any;

use crate::body::{self, Body};
use crate::error::{ResponseFlag, ResponseFlags};

/// The filter name Istio keys `typed_per_filter_config` with.
pub const FILTER_NAME: &str = "envoy.filters.http.fault";

/// A fault configuration Ferry cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault: {field}: {reason}")]
pub struct InvalidFault {
    /// The field inside `HTTPFault`, e.g. `abort.header_abort`.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
}

impl InvalidFault {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Envoy's `FractionalPercent`: `numerator` out of 100, 10 000 or 1 000 000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    numerator: u32,
    denominator: u32,
}

impl Fraction {
    /// Every request.
    pub const ALWAYS: Self = Self {
        numerator: 100,
        denominator: 100,
    };

    /// Converts the proto; an absent percentage is 0%, as the proto default is in Envoy.
    pub fn from_proto(p: Option<&FractionalPercent>) -> Self {
        let Some(p) = p else {
            return Self {
                numerator: 0,
                denominator: 100,
            };
        };
        let denominator = match DenominatorType::try_from(p.denominator) {
            Ok(DenominatorType::TenThousand) => 10_000,
            Ok(DenominatorType::Million) => 1_000_000,
            _ => 100,
        };
        Self {
            numerator: p.numerator.min(denominator),
            denominator,
        }
    }

    /// Draws whether this request is in the fraction.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> bool {
        self.numerator > 0 && rng.random_range(0..self.denominator) < self.numerator
    }
}

/// How an abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortKind {
    /// An HTTP status.
    Http(StatusCode),
    /// A gRPC status, sent as a trailers-only response with HTTP 200.
    Grpc(u32),
}

/// A validated per-route `HTTPFault`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// `delay`: a fixed delay and its percentage.
    pub delay: Option<(Duration, Fraction)>,
    /// `abort`: the answer and its percentage.
    pub abort: Option<(AbortKind, Fraction)>,
    /// `abort.response_body` (Envoy's default "fault filter abort").
    pub abort_body: String,
}

/// What was decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Injection {
    /// Hold the request this long first (flag DI).
    pub delay: Option<Duration>,
    /// Then answer locally instead of forwarding (flag FI).
    pub abort: Option<AbortKind>,
}

impl TryFrom<&fault_pb::HttpFault> for Fault {
    type Error = InvalidFault;

    fn try_from(f: &fault_pb::HttpFault) -> Result<Self, Self::Error> {
        let refuse = |set: bool, field: &str| {
            if set {
                Err(InvalidFault::new(field, "not implemented"))
            } else {
                Ok(())
            }
        };
        refuse(!f.upstream_cluster.is_empty(), "upstream_cluster")?;
        refuse(!f.headers.is_empty(), "headers")?;
        refuse(!f.downstream_nodes.is_empty(), "downstream_nodes")?;
        refuse(f.max_active_faults.is_some(), "max_active_faults")?;
        refuse(f.response_rate_limit.is_some(), "response_rate_limit")?;
        // The *_runtime fields only rename runtime keys; Ferry has no runtime overrides, which
        // is what Envoy does with an empty runtime, so they change nothing.
        let delay = match &f.delay {
            None => None,
            Some(d) => {
                use common_pb::fault_delay::FaultDelaySecifier as S;
                let fixed = match &d.fault_delay_secifier {
                    Some(S::FixedDelay(p)) => {
                        if p.seconds < 0 || p.nanos < 0 || p.nanos >= 1_000_000_000 {
                            return Err(InvalidFault::new(
                                "delay.fixed_delay",
                                "invalid or negative duration",
                            ));
                        }
                        Duration::new(p.seconds as u64, p.nanos as u32)
                    }
                    Some(S::HeaderDelay(_)) => {
                        return Err(InvalidFault::new(
                            "delay.header_delay",
                            "header-controlled faults are not implemented",
                        ));
                    }
                    None => return Err(InvalidFault::new("delay", "fixed_delay is required")),
                };
                Some((fixed, Fraction::from_proto(d.percentage.as_ref())))
            }
        };
        let abort = match &f.abort {
            None => None,
            Some(a) => {
                use fault_pb::fault_abort::ErrorType;
                let kind = match a.error_type {
                    Some(ErrorType::HttpStatus(code)) => {
                        match u16::try_from(code).ok().filter(|c| (200..600).contains(c)) {
                            Some(c) => match StatusCode::from_u16(c) {
                                Ok(s) => AbortKind::Http(s),
                                Err(_) => {
                                    return Err(InvalidFault::new(
                                        "abort.http_status",
                                        "invalid status",
                                    ));
                                }
                            },
                            None => {
                                return Err(InvalidFault::new(
                                    "abort.http_status",
                                    "must be in [200, 600)",
                                ));
                            }
                        }
                    }
                    Some(ErrorType::GrpcStatus(code)) => AbortKind::Grpc(code),
                    Some(ErrorType::HeaderAbort(_)) => {
                        return Err(InvalidFault::new(
                            "abort.header_abort",
                            "header-controlled faults are not implemented",
                        ));
                    }
                    None => {
                        return Err(InvalidFault::new(
                            "abort",
                            "http_status or grpc_status is required",
                        ));
                    }
                };
                Some((kind, Fraction::from_proto(a.percentage.as_ref())))
            }
        };
        let abort_body = f
            .abort
            .as_ref()
            .map(|a| a.response_body.clone())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| "fault filter abort".to_owned());
        Ok(Self {
            delay,
            abort,
            abort_body,
        })
    }
}

impl Fault {
    /// Converts a `typed_per_filter_config` value (an `HTTPFault` in an `Any`).
    pub fn from_any(any: &Any) -> Result<Self, InvalidFault> {
        let f: fault_pb::HttpFault = xds_proto::any::unpack(any)
            .map_err(|e| InvalidFault::new("typed_config", e.to_string()))?;
        Self::try_from(&f)
    }

    /// Decides delay and abort for one request (independent draws, as Envoy).
    pub fn decide<R: Rng + ?Sized>(&self, rng: &mut R) -> Injection {
        Injection {
            delay: self
                .delay
                .and_then(|(d, fraction)| fraction.sample(rng).then_some(d)),
            abort: self
                .abort
                .and_then(|(kind, fraction)| fraction.sample(rng).then_some(kind)),
        }
    }

    /// Runs an injection: waits out the delay, then returns the abort reply if one was drawn
    /// (None = forward the request; the caller adds [`ResponseFlag::DelayInjected`] to its log
    /// entry if [`Injection::delay`] was set).
    pub async fn inject(&self, injection: Injection) -> Option<Response<Body>> {
        if let Some(delay) = injection.delay {
            tracing::debug!(delay_ms = delay.as_millis() as u64, "fault delay injected");
            tokio::time::sleep(delay).await;
        }
        let kind = injection.abort?;
        tracing::debug!(?kind, "fault abort injected");
        Some(self.abort_reply(kind))
    }

    /// The local reply for an abort, with flag FI.
    pub fn abort_reply(&self, kind: AbortKind) -> Response<Body> {
        let mut response = match kind {
            AbortKind::Http(status) => {
                let mut r = Response::new(body::full(self.abort_body.clone()));
                *r.status_mut() = status;
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                r
            }
            AbortKind::Grpc(code) => {
                let mut r = Response::new(body::empty());
                let headers = r.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                headers.insert("grpc-status", HeaderValue::from(code));
                if let Ok(message) = HeaderValue::from_str(&self.abort_body) {
                    headers.insert("grpc-message", message);
                }
                r
            }
        };
        ResponseFlags::add_to(response.extensions_mut(), ResponseFlag::FaultInjected);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use xds_proto::google::protobuf::Duration as PbDuration;

    fn percent(numerator: u32) -> Option<FractionalPercent> {
        Some(FractionalPercent {
            numerator,
            denominator: DenominatorType::Hundred as i32,
        })
    }

    fn istio_fault(delay_pct: u32, abort: fault_pb::fault_abort::ErrorType) -> fault_pb::HttpFault {
        fault_pb::HttpFault {
            delay: Some(common_pb::FaultDelay {
                percentage: percent(delay_pct),
                fault_delay_secifier: Some(common_pb::fault_delay::FaultDelaySecifier::FixedDelay(
                    PbDuration {
                        seconds: 5,
                        nanos: 0,
                    },
                )),
            }),
            abort: Some(fault_pb::FaultAbort {
                percentage: percent(100),
                error_type: Some(abort),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn delay_then_http_abort() {
        let f = Fault::try_from(&istio_fault(
            100,
            fault_pb::fault_abort::ErrorType::HttpStatus(503),
        ))
        .expect("valid");
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let injection = f.decide(&mut rng);
        assert_eq!(injection.delay, Some(Duration::from_secs(5)));
        let start = tokio::time::Instant::now();
        let reply = f.inject(injection).await.expect("aborted");
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ResponseFlags::of(reply.extensions()).to_string(), "FI");
    }

    #[test]
    fn grpc_abort_is_trailers_only() {
        let f = Fault::try_from(&istio_fault(
            0,
            fault_pb::fault_abort::ErrorType::GrpcStatus(14),
        ))
        .expect("valid");
        let injection = f.decide(&mut rand::rngs::StdRng::seed_from_u64(3));
        assert_eq!(injection.delay, None, "0% never delays");
        let reply = f.abort_reply(injection.abort.expect("abort drawn"));
        assert_eq!(reply.status(), StatusCode::OK);
        assert_eq!(reply.headers()["grpc-status"], "14");
        assert_eq!(reply.headers()["content-type"], "application/grpc");
    }

    #[test]
    fn percentages_are_respected() {
        let half = Fraction::from_proto(Some(&FractionalPercent {
            numerator: 5000,
            denominator: DenominatorType::TenThousand as i32,
        }));
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let hits = (0..10_000).filter(|_| half.sample(&mut rng)).count();
        assert!((4_500..5_500).contains(&hits), "{hits}");
        assert!(!Fraction::from_proto(None).sample(&mut rng));
        assert!(Fraction::ALWAYS.sample(&mut rng));
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let mut f = istio_fault(100, fault_pb::fault_abort::ErrorType::HttpStatus(503));
        f.max_active_faults = Some(xds_proto::google::protobuf::UInt32Value { value: 1 });
        assert_eq!(
            Fault::try_from(&f).expect_err("refused").field,
            "max_active_faults"
        );
        let f = istio_fault(
            100,
            fault_pb::fault_abort::ErrorType::HeaderAbort(Default::default()),
        );
        assert_eq!(
            Fault::try_from(&f).expect_err("refused").field,
            "abort.header_abort"
        );
        let f = istio_fault(100, fault_pb::fault_abort::ErrorType::HttpStatus(99));
        assert_eq!(
            Fault::try_from(&f).expect_err("refused").field,
            "abort.http_status"
        );
    }

    #[test]
    fn from_any_checks_the_type() {
        let f = istio_fault(100, fault_pb::fault_abort::ErrorType::HttpStatus(500));
        let any = xds_proto::any::pack(&f);
        assert!(Fault::from_any(&any).is_ok());
        let wrong = xds_proto::any::pack(&common_pb::FaultDelay::default());
        assert_eq!(
            Fault::from_any(&wrong).expect_err("wrong type").field,
            "typed_config"
        );
    }
}
