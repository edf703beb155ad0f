//! Envoy's response code details (`%RESPONSE_CODE_DETAILS%`) and upstream transport failure
//! reason (`%UPSTREAM_TRANSPORT_FAILURE_REASON%`), with Envoy 1.40's strings. The router knows
//! why an upstream attempt failed (the connect error, a reset, a per-try or route timeout), so
//! its local replies carry a [`Details`] extension; every other response's details follow from
//! its response flags ([`response_code_details`]). Checked against a real Envoy 1.40 for the same
//! requests (`tests/tests/access_log.rs`).

use std::borrow::Cow;

use crate::cluster::UpstreamError;
use crate::error::{ResponseFlag, ResponseFlags};

/// Why the router answered locally, carried in the reply's extensions for the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Details {
    /// `RESPONSE_CODE_DETAILS` (Envoy's string, no whitespace).
    pub code: Cow<'static, str>,
    /// `UPSTREAM_TRANSPORT_FAILURE_REASON` (spaces as `_`, as Envoy logs it).
    pub transport_failure_reason: Option<String>,
}

/// Envoy's `StreamResetReason` strings, with `_` for spaces as details use them.
fn reset_reason(error: &UpstreamError) -> &'static str {
    match error {
        UpstreamError::ConnectFailure(_) | UpstreamError::Handshake(_) => {
            "remote_connection_failure"
        }
        UpstreamError::TransportNotImplemented(_) => "local_connection_failure",
        UpstreamError::ConnectTimeout => "connection_timeout",
        UpstreamError::Reset(_) => "connection_termination",
        UpstreamError::RefusedStream(_) => "remote_refused_stream_reset",
        UpstreamError::Overflow => "overflow",
    }
}

/// The system's text for an OS error (`Connection refused`), without Rust's `(os error N)`.
fn os_error_text(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

impl Details {
    /// A reply that answers for the router with Envoy's fixed detail string.
    pub const fn fixed(code: &'static str) -> Self {
        Self {
            code: Cow::Borrowed(code),
            transport_failure_reason: None,
        }
    }

    /// The details of a reply for an upstream failure:
    /// `upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}`
    /// and the transport failure reason `delayed_connect_error:_Connection_refused`, as Envoy
    /// 1.40 logs a refused connect.
    pub fn upstream_failure(error: &UpstreamError) -> Self {
        let transport = match error {
            UpstreamError::ConnectFailure(io) => {
                Some(format!("delayed connect error: {}", os_error_text(io)))
            }
            UpstreamError::TransportNotImplemented(what) => Some((*what).to_owned()),
            _ => None,
        }
        .map(|reason| reason.replace(char::is_whitespace, "_"));
        let code = match &transport {
            Some(reason) => format!(
                "upstream_reset_before_response_started{{{}|{reason}}}",
                reset_reason(error)
            ),
            None => format!(
                "upstream_reset_before_response_started{{{}}}",
                reset_reason(error)
            ),
        };
        Self {
            code: Cow::Owned(code),
            transport_failure_reason: transport,
        }
    }

    /// The route timeout fired (`response_timeout`), or a per-try timeout ended the last
    /// attempt (`upstream_per_try_timeout`).
    pub const fn timeout(per_try: bool) -> Self {
        Self::fixed(if per_try {
            "upstream_per_try_timeout"
        } else {
            "response_timeout"
        })
    }

    /// Attaches these details to a local reply.
    pub fn attach<B>(self, reply: &mut http::Response<B>) {
        reply.extensions_mut().insert(self);
    }
}

/// `RESPONSE_CODE_DETAILS` for a response without [`Details`], derived from its flags: Envoy's
/// detail strings for the local replies ferry-proxy makes, `via_upstream` for an upstream's
/// answer, `direct_response` for a route's direct response or redirect.
pub fn response_code_details(flags: ResponseFlags, upstream_answered: bool) -> &'static str {
    use ResponseFlag as F;
    // The most telling flag: a failure's own flag before URX and DI, which join others.
    let flag = flags
        .iter()
        .find(|f| !matches!(f, F::UpstreamRetryLimitExceeded | F::DelayInjected))
        .or_else(|| flags.iter().next());
    match flag {
        Some(F::NoRouteFound) => "route_not_found",
        Some(F::NoClusterFound) => "cluster_not_found",
        Some(F::NoHealthyUpstream) => "no_healthy_upstream",
        Some(F::UpstreamRequestTimeout) => "response_timeout",
        Some(F::UpstreamOverflow) => "upstream_reset_before_response_started{overflow}",
        Some(F::UpstreamConnectionFailure) => {
            "upstream_reset_before_response_started{remote_connection_failure}"
        }
        Some(F::UpstreamConnectionTermination) => {
            "upstream_reset_before_response_started{connection_termination}"
        }
        Some(F::UpstreamRemoteReset) => {
            "upstream_reset_before_response_started{remote_refused_stream_reset}"
        }
        Some(F::FaultInjected) => "fault_filter_abort",
        Some(F::DownstreamConnectionTermination) => "downstream_remote_disconnect",
        Some(F::UnauthorizedExternalService) => "ext_authz_denied",
        Some(F::UpstreamRetryLimitExceeded | F::DelayInjected) | None if upstream_answered => {
            "via_upstream"
        }
        Some(F::UpstreamRetryLimitExceeded) => {
            "upstream_reset_before_response_started{retry_limit_exceeded}"
        }
        Some(F::DelayInjected) | None => "direct_response",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connect_reads_as_in_envoy_1_40() {
        let refused = UpstreamError::ConnectFailure(std::io::Error::from_raw_os_error(111));
        let d = Details::upstream_failure(&refused);
        assert_eq!(
            d.code,
            "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}"
        );
        assert_eq!(
            d.transport_failure_reason.as_deref(),
            Some("delayed_connect_error:_Connection_refused")
        );
    }

    #[test]
    fn resets_and_timeouts_use_envoys_reset_reasons() {
        let reset = Details::upstream_failure(&UpstreamError::Reset("eof".into()));
        assert_eq!(
            reset.code,
            "upstream_reset_before_response_started{connection_termination}"
        );
        assert_eq!(reset.transport_failure_reason, None);
        assert_eq!(
            Details::upstream_failure(&UpstreamError::ConnectTimeout).code,
            "upstream_reset_before_response_started{connection_timeout}"
        );
        assert_eq!(
            Details::upstream_failure(&UpstreamError::RefusedStream("x".into())).code,
            "upstream_reset_before_response_started{remote_refused_stream_reset}"
        );
        assert_eq!(Details::timeout(false).code, "response_timeout");
        assert_eq!(Details::timeout(true).code, "upstream_per_try_timeout");
    }

    #[test]
    fn details_follow_the_response_flag() {
        use ResponseFlag as F;
        assert_eq!(
            response_code_details(Default::default(), true),
            "via_upstream"
        );
        assert_eq!(
            response_code_details(Default::default(), false),
            "direct_response"
        );
        assert_eq!(
            response_code_details(F::NoRouteFound.into(), false),
            "route_not_found"
        );
        assert_eq!(
            response_code_details(F::UpstreamRequestTimeout.into(), true),
            "response_timeout"
        );
        assert_eq!(
            response_code_details(F::NoHealthyUpstream.into(), false),
            "no_healthy_upstream"
        );
    }
}
