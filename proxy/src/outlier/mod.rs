//! Outlier detection (Envoy's passive health checking): hosts that fail in a row, or whose
//! success rate falls well below their peers', are ejected from load balancing for a time that
//! grows with each ejection. The [`Detector`] is fed every attempt's result by the router
//! ([`Detector::record`]), ejects inline for consecutive failures, and on its interval timer
//! returns hosts whose ejection time has passed, runs the success-rate and failure-percentage
//! sweeps, and decays the ejection multiplier of hosts that stay healthy.
//!
//! State is keyed by host address and lives in the cluster's runtime, not in the config
//! snapshot, so an EDS update keeps the history of the hosts that remain
//! ([`Detector::update_hosts`]). All timing uses tokio's clock, so tests run on paused time.

mod detector;
mod success_rate;

pub use detector::{Detector, EjectionReason};

/// What one attempt to a host produced, as outlier detection classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The host answered with this HTTP status (an external-origin result).
    Response(u16),
    /// The connection could not be made (local origin; a 503 when not split).
    ConnectFailed,
    /// The request timed out (local origin; a 504 when not split).
    Timeout,
    /// The connection was reset before a response (local origin; a 503 when not split).
    Reset,
    /// The connection was made (local origin success; only counted when split).
    ConnectSuccess,
}

impl Outcome {
    /// The status code Envoy substitutes for a local-origin event when errors are not split.
    fn as_status(self) -> Option<u16> {
        match self {
            Self::Response(code) => Some(code),
            Self::ConnectFailed | Self::Reset => Some(503),
            Self::Timeout => Some(504),
            Self::ConnectSuccess => None,
        }
    }

    fn is_local_origin(self) -> bool {
        !matches!(self, Self::Response(_))
    }
}

impl Outcome {
    /// Classifies an upstream attempt's result; `None` for results that say nothing about the
    /// host (circuit breaker overflow, a transport Ferry does not implement).
    pub fn from_result(
        result: Result<http::StatusCode, &crate::cluster::UpstreamError>,
    ) -> Option<Self> {
        use crate::cluster::UpstreamError as E;
        match result {
            Ok(status) => Some(Self::Response(status.as_u16())),
            Err(E::Overflow | E::TransportNotImplemented(_)) => None,
            Err(E::Reset(_) | E::RefusedStream(_)) => Some(Self::Reset),
            Err(E::ConnectFailure(_) | E::ConnectTimeout | E::Handshake(_)) => {
                Some(Self::ConnectFailed)
            }
        }
    }
}
