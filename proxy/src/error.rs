//! Why a request failed, which side failed, and how that maps to a status code and Envoy's
//! response flags (UH, UF, UO, NR, URX, UT, ...). One module owns the mapping so access logs,
//! stats and retries agree.

/// Envoy's response flags, as they appear in access logs and Istio's `response_flags` label.
/// Declared in Envoy's `CoreResponseFlag` order; a [`ResponseFlags`] set prints them in
/// [`ResponseFlag::LOG_ORDER`], the order Envoy 1.40 sets (and logs) them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ResponseFlag {
    /// UH: no healthy upstream host.
    NoHealthyUpstream,
    /// UT: upstream request timeout.
    UpstreamRequestTimeout,
    /// UR: upstream remote reset.
    UpstreamRemoteReset,
    /// UF: upstream connection failure.
    UpstreamConnectionFailure,
    /// UC: upstream connection termination.
    UpstreamConnectionTermination,
    /// UO: upstream overflow (circuit breaker).
    UpstreamOverflow,
    /// NR: no route configured.
    NoRouteFound,
    /// DI: delay injected by the fault filter.
    DelayInjected,
    /// FI: fault (abort) injected by the fault filter.
    FaultInjected,
    /// UAEX: unauthorized (external authorization / RBAC).
    UnauthorizedExternalService,
    /// DC: downstream connection termination.
    DownstreamConnectionTermination,
    /// URX: upstream retry limit exceeded.
    UpstreamRetryLimitExceeded,
    /// NC: upstream cluster not found.
    NoClusterFound,
}

impl ResponseFlag {
    /// Every flag, in Envoy's order.
    pub const ALL: [ResponseFlag; 13] = [
        Self::NoHealthyUpstream,
        Self::UpstreamRequestTimeout,
        Self::UpstreamRemoteReset,
        Self::UpstreamConnectionFailure,
        Self::UpstreamConnectionTermination,
        Self::UpstreamOverflow,
        Self::NoRouteFound,
        Self::DelayInjected,
        Self::FaultInjected,
        Self::UnauthorizedExternalService,
        Self::DownstreamConnectionTermination,
        Self::UpstreamRetryLimitExceeded,
        Self::NoClusterFound,
    ];

    /// The order Envoy 1.40 prints a response's flags in: the order its filters set them in
    /// (fault filter, then the router's retry verdict, then the last attempt's failure), so
    /// `URX,UF` and `URX,UT`, as a real Envoy 1.40 logs them.
    pub const LOG_ORDER: [ResponseFlag; 13] = [
        Self::DelayInjected,
        Self::FaultInjected,
        Self::UnauthorizedExternalService,
        Self::NoRouteFound,
        Self::NoClusterFound,
        Self::UpstreamRetryLimitExceeded,
        Self::UpstreamOverflow,
        Self::NoHealthyUpstream,
        Self::UpstreamRequestTimeout,
        Self::UpstreamRemoteReset,
        Self::UpstreamConnectionFailure,
        Self::UpstreamConnectionTermination,
        Self::DownstreamConnectionTermination,
    ];

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

    fn bit(self) -> u16 {
        1 << (self as u8)
    }
}

/// The flags of one response. Envoy reports every flag that applies (`URX,UF`: the retries ran
/// out and the last attempt failed to connect), so a response carries a set in its extensions,
/// printed in [`ResponseFlag::LOG_ORDER`], comma-separated, `-` when empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    /// Adds a flag.
    pub fn insert(&mut self, flag: ResponseFlag) {
        self.0 |= flag.bit();
    }

    /// Whether the set has `flag`.
    pub fn contains(self, flag: ResponseFlag) -> bool {
        self.0 & flag.bit() != 0
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flags, in the order Envoy logs them.
    pub fn iter(self) -> impl Iterator<Item = ResponseFlag> {
        ResponseFlag::LOG_ORDER
            .into_iter()
            .filter(move |flag| self.contains(*flag))
    }

    /// The flags a response (or request) carries in its extensions.
    pub fn of(extensions: &http::Extensions) -> Self {
        extensions.get::<Self>().copied().unwrap_or_default()
    }

    /// Adds `flag` to the set carried in `extensions`.
    pub fn add_to(extensions: &mut http::Extensions, flag: ResponseFlag) {
        let mut flags = Self::of(extensions);
        flags.insert(flag);
        extensions.insert(flags);
    }
}

impl From<ResponseFlag> for ResponseFlags {
    fn from(flag: ResponseFlag) -> Self {
        Self(flag.bit())
    }
}

impl FromIterator<ResponseFlag> for ResponseFlags {
    fn from_iter<I: IntoIterator<Item = ResponseFlag>>(flags: I) -> Self {
        let mut set = Self::default();
        for flag in flags {
            set.insert(flag);
        }
        set
    }
}

impl std::fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, flag) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(flag.code())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_in_envoys_log_order_whatever_the_insertion_order() {
        let flags: ResponseFlags = [
            ResponseFlag::UpstreamRetryLimitExceeded,
            ResponseFlag::UpstreamRequestTimeout,
        ]
        .into_iter()
        .collect();
        assert_eq!(flags.to_string(), "URX,UT");
        let mut extensions = http::Extensions::new();
        assert_eq!(ResponseFlags::of(&extensions).to_string(), "-");
        ResponseFlags::add_to(&mut extensions, ResponseFlag::UpstreamRetryLimitExceeded);
        ResponseFlags::add_to(&mut extensions, ResponseFlag::UpstreamConnectionFailure);
        ResponseFlags::add_to(&mut extensions, ResponseFlag::UpstreamConnectionFailure);
        assert_eq!(ResponseFlags::of(&extensions).to_string(), "URX,UF");
        let all: ResponseFlags = ResponseFlag::ALL.into_iter().rev().collect();
        assert_eq!(all.to_string(), "DI,FI,UAEX,NR,NC,URX,UO,UH,UT,UR,UF,UC,DC");
    }

    #[test]
    fn every_flag_is_listed_once_in_declaration_order() {
        for (i, flag) in ResponseFlag::ALL.into_iter().enumerate() {
            assert_eq!(flag as usize, i, "{}", flag.code());
            let logged = ResponseFlag::LOG_ORDER
                .iter()
                .filter(|f| **f == flag)
                .count();
            assert_eq!(logged, 1, "{} in LOG_ORDER", flag.code());
        }
    }
}
