//! Why a request failed, which side failed, and how that maps to a status code and Envoy's
//! response flags (UH, UF, UO, NR, URX, UT, ...). One module owns the mapping so access logs,
//! stats and retries agree.

/// Envoy's response flags, as they appear in access logs and Istio's `response_flags` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseFlag {
    /// UH: no healthy upstream host.
    NoHealthyUpstream,
    /// UF: upstream connection failure.
    UpstreamConnectionFailure,
    /// UO: upstream overflow (circuit breaker).
    UpstreamOverflow,
    /// NR: no route configured.
    NoRouteFound,
    /// URX: upstream retry limit exceeded.
    UpstreamRetryLimitExceeded,
    /// UT: upstream request timeout.
    UpstreamRequestTimeout,
    /// DC: downstream connection termination.
    DownstreamConnectionTermination,
    /// UC: upstream connection termination.
    UpstreamConnectionTermination,
    /// UR: upstream remote reset.
    UpstreamRemoteReset,
    /// DI: delay injected by the fault filter.
    DelayInjected,
    /// FI: fault (abort) injected by the fault filter.
    FaultInjected,
    /// UAEX: unauthorized (external authorization / RBAC).
    UnauthorizedExternalService,
    /// NC: upstream cluster not found.
    NoClusterFound,
}

impl ResponseFlag {
    /// The short code Envoy prints (`UH`, `NR`, ...).
    pub fn code(self) -> &'static str {
        match self {
            Self::NoHealthyUpstream => "UH",
            Self::UpstreamConnectionFailure => "UF",
            Self::UpstreamOverflow => "UO",
            Self::NoRouteFound => "NR",
            Self::UpstreamRetryLimitExceeded => "URX",
            Self::UpstreamRequestTimeout => "UT",
            Self::DownstreamConnectionTermination => "DC",
            Self::UpstreamConnectionTermination => "UC",
            Self::UpstreamRemoteReset => "UR",
            Self::DelayInjected => "DI",
            Self::FaultInjected => "FI",
            Self::UnauthorizedExternalService => "UAEX",
            Self::NoClusterFound => "NC",
        }
    }
}
