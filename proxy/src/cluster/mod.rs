//! Clusters: validated from `envoy.config.cluster.v3.Cluster` and `ClusterLoadAssignment`, and the
//! runtime state that outlives any one config snapshot (hosts, load balancer, connection pools,
//! and later outlier state), owned by the [`ClusterManager`].
//!
//! This file is the contract between the router (which picks a host and sends) and the upstream
//! side (which owns hosts, balancing and pools). The pieces live in submodules named after the
//! Envoy concept they implement: [`config`] (the `Cluster` proto), [`load_assignment`] (EDS),
//! [`resilience`] (circuit breakers and outlier detection, enforced by [`Cluster`]),
//! [`protocol`] and [`transport`] (how to talk to hosts), [`host`] (one endpoint and its pool),
//! [`priority`] (Envoy's priority/health/panic arithmetic), [`runtime`] (a live cluster),
//! [`manager`] (reconciliation across snapshots), [`dns`] (STRICT_DNS and LOGICAL_DNS) and
//! [`status`] (what admin `/clusters` prints).
//!
//! The router's side of the contract: `Cluster::select_host(&LbContext)` (`None` is 503 UH),
//! `Host::send` (errors carry their response flag and whether a retry is safe), and
//! `Cluster::record_response(status)` once per request, which feeds `upstream_rq_<class>xx`.
//!
//! `Cluster::send` enforces `circuit_breakers.max_requests` and feeds outlier detection (state
//! keyed by host address, so it survives EDS updates); see [`resilience`]. Not implemented yet:
//! upstream TLS (endpoints matched to a TLS transport socket fail at send with
//! [`UpstreamError::TransportNotImplemented`]). Accepted and ignored because they only tune
//! Envoy internals: `per_connection_buffer_limit_bytes`, `stats_matcher`,
//! `track_cluster_stats`, `common_lb_config.update_merge_window`, HPACK and frame-flood limits.

use std::net::SocketAddr;

use crate::error::ResponseFlag;

pub mod config;
pub mod dns;
pub mod host;
pub mod load_assignment;
pub mod manager;
mod original_dst;
pub mod priority;
pub mod protocol;
pub mod resilience;
pub mod runtime;
pub mod stats;
pub mod status;
pub mod transport;

pub use config::{ClusterConfig, Discovery, LbPolicy};
pub use dns::{DnsConfig, DnsLookupFamily};
pub use host::Host;
pub use load_assignment::{Endpoint, EndpointAddress, HealthStatus, LoadAssignment, Locality};
pub use manager::ClusterManager;
pub use priority::{HostEntry, HostSet};
pub use protocol::UpstreamProtocol;
pub use resilience::{CircuitBreakers, OutlierDetection, Thresholds};
pub use runtime::{Cluster, ClusterSet};
pub use stats::{ClusterStats, HostStats};
pub use transport::{TransportSocket, TransportSocketMatch, TransportSockets};

/// A cluster or load assignment that Ferry cannot accept; becomes the NACK's `error_detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster {name}: {field}: {reason}")]
pub struct InvalidCluster {
    /// The cluster (or load assignment's cluster) name.
    pub name: String,
    /// The field path, e.g. `lb_policy` or `load_assignment.endpoints[0].lb_endpoints[1]`.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
}

impl InvalidCluster {
    /// An error for `field` of cluster `name`.
    pub fn new(name: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The error for a field Ferry understands but does not implement yet.
    pub fn not_implemented(name: &str, field: impl Into<String>) -> Self {
        Self::new(name, field, "not implemented")
    }

    /// Prefixes the field path (`load_assignment.` + `endpoints[0]...`).
    pub(crate) fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

/// Why an upstream request failed: which side, whether a retry may help, and the response flag.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connect failed or was refused (UF).
    #[error("upstream connect failure: {0}")]
    ConnectFailure(std::io::Error),
    /// The connect did not finish within `connect_timeout` (UF).
    #[error("upstream connect timeout")]
    ConnectTimeout,
    /// The connection was reset or closed before a response (UC).
    #[error("upstream connection terminated: {0}")]
    Reset(String),
    /// A circuit breaker refused the request (UO).
    #[error("upstream overflow")]
    Overflow,
    /// The HTTP handshake on a fresh connection failed (UF): the peer does not speak the
    /// configured protocol (e.g. HTTP/2 prior knowledge against an HTTP/1.1-only server).
    #[error("upstream protocol handshake failed: {0}")]
    Handshake(String),
    /// The HTTP/2 upstream refused the stream (`REFUSED_STREAM`, or a GOAWAY before it was
    /// processed): nothing was processed, so any request may be retried (UR).
    #[error("upstream refused the stream: {0}")]
    RefusedStream(String),
    /// The endpoint needs a transport Ferry does not implement yet (TLS via
    /// `transport_socket_matches`); no bytes were sent (UF).
    #[error("upstream transport not implemented: {0}")]
    TransportNotImplemented(&'static str),
}

impl UpstreamError {
    /// The Envoy response flag for this failure.
    pub fn response_flag(&self) -> ResponseFlag {
        match self {
            Self::ConnectFailure(_)
            | Self::ConnectTimeout
            | Self::Handshake(_)
            | Self::TransportNotImplemented(_) => ResponseFlag::UpstreamConnectionFailure,
            Self::Reset(_) => ResponseFlag::UpstreamConnectionTermination,
            Self::RefusedStream(_) => ResponseFlag::UpstreamRemoteReset,
            Self::Overflow => ResponseFlag::UpstreamOverflow,
        }
    }

    /// Whether no connection could be made (Envoy's `connect-failure` retry condition).
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            Self::ConnectFailure(_)
                | Self::ConnectTimeout
                | Self::Handshake(_)
                | Self::TransportNotImplemented(_)
        )
    }

    /// Whether the upstream certainly did not process the request, so a retry is safe for any
    /// method (`connect-failure`, `refused-stream`).
    pub fn is_unprocessed(&self) -> bool {
        self.is_connect_failure() || matches!(self, Self::RefusedStream(_))
    }
}

/// What the load balancer may use to choose a host.
#[derive(Debug, Default, Clone, Copy)]
pub struct LbContext<'a> {
    /// The route's `hash_policy` result, for RING_HASH and MAGLEV.
    pub hash: Option<u64>,
    /// The downstream peer address.
    pub downstream: Option<SocketAddr>,
    /// The connection's original destination (ORIGINAL_DST clusters route there).
    pub original_dst: Option<SocketAddr>,
    /// Hosts to avoid (retry host predicate `previous_hosts`).
    pub excluded: &'a [SocketAddr],
}
