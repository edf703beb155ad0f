//! Clusters: validated from `envoy.config.cluster.v3.Cluster` and `ClusterLoadAssignment`, and the
//! runtime state that outlives any one config snapshot (hosts, load balancer, connection pools,
//! and later outlier state), owned by the [`ClusterManager`].
//!
//! This file is the contract between the router (which picks a host and sends) and the upstream
//! side (which owns hosts, balancing and pools).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::body::Body;
use crate::error::ResponseFlag;

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

/// A validated cluster definition.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// The cluster's xDS name (`outbound|9080|v1|reviews.default.svc.cluster.local`).
    pub name: String,
    /// The EDS service name (minimal stand-in until proxy-upstream's conversion merges).
    eds: Option<String>,
}

impl ClusterConfig {
    /// The EDS service name to subscribe to, for EDS clusters (`eds_cluster_config.service_name`,
    /// or the cluster name when empty); `None` for other types.
    pub fn eds_service_name(&self) -> Option<&str> {
        self.eds.as_deref()
    }
}

impl TryFrom<&xds_proto::envoy::config::cluster::v3::Cluster> for ClusterConfig {
    type Error = InvalidCluster;
    fn try_from(
        cluster: &xds_proto::envoy::config::cluster::v3::Cluster,
    ) -> Result<Self, InvalidCluster> {
        use xds_proto::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
        let eds = matches!(
            cluster.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
        )
        .then(|| {
            cluster
                .eds_cluster_config
                .as_ref()
                .map(|eds| eds.service_name.clone())
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| cluster.name.clone())
        });
        Ok(Self {
            name: cluster.name.clone(),
            eds,
        })
    }
}

/// A validated `ClusterLoadAssignment`: the endpoints of one EDS cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadAssignment {
    /// The cluster (EDS service name) this assignment fills.
    pub cluster_name: String,
}

impl TryFrom<&xds_proto::envoy::config::endpoint::v3::ClusterLoadAssignment> for LoadAssignment {
    type Error = InvalidCluster;
    fn try_from(
        cla: &xds_proto::envoy::config::endpoint::v3::ClusterLoadAssignment,
    ) -> Result<Self, InvalidCluster> {
        Ok(Self {
            cluster_name: cla.cluster_name.clone(),
        })
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
}

impl UpstreamError {
    /// The Envoy response flag for this failure.
    pub fn response_flag(&self) -> ResponseFlag {
        match self {
            Self::ConnectFailure(_) | Self::ConnectTimeout => {
                ResponseFlag::UpstreamConnectionFailure
            }
            Self::Reset(_) => ResponseFlag::UpstreamConnectionTermination,
            Self::Overflow => ResponseFlag::UpstreamOverflow,
        }
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

/// One upstream host with its connection pool.
#[derive(Debug)]
pub struct Host {
    address: SocketAddr,
}

impl Host {
    /// The host's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Sends a request over this host's pool (HTTP/1.1 or HTTP/2 per the cluster's protocol
    /// options), streaming both bodies. Connections are made with upgrades enabled, so
    /// `hyper::upgrade::on(response)` works for a `101 Switching Protocols`.
    pub async fn send(
        &self,
        _request: http::Request<Body>,
    ) -> Result<http::Response<Body>, UpstreamError> {
        Err(UpstreamError::Reset("pools are not implemented yet".into()))
    }

    /// Opens a raw TCP connection to the host (tcp_proxy).
    pub async fn connect(&self) -> Result<tokio::net::TcpStream, UpstreamError> {
        tokio::net::TcpStream::connect(self.address)
            .await
            .map_err(UpstreamError::ConnectFailure)
    }
}

/// A cluster with its runtime state: what the router picks hosts from.
#[derive(Debug)]
pub struct Cluster {
    /// The validated definition in force.
    pub config: Arc<ClusterConfig>,
}

impl Cluster {
    /// Picks a host for one request or connection; `None` means no healthy upstream (503, UH).
    pub fn select_host(&self, _ctx: &LbContext<'_>) -> Option<Arc<Host>> {
        None
    }
}

/// Every active cluster, by name, as one snapshot sees them.
#[derive(Debug, Default)]
pub struct ClusterSet {
    clusters: BTreeMap<String, Arc<Cluster>>,
}

impl ClusterSet {
    /// The cluster with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// All clusters, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<Cluster>)> {
        self.clusters.iter()
    }
}

/// Owns cluster runtime state across snapshots: a cluster whose config did not change keeps its
/// hosts, pools and balancer state; hosts that remain across an EDS update keep theirs.
#[derive(Debug, Default)]
pub struct ClusterManager {}

impl ClusterManager {
    /// A manager reporting into `stats`.
    pub fn new(_stats: Arc<crate::stats::Store>) -> Self {
        Self {}
    }

    /// Reconciles runtime state with the given definitions and assignments and returns the set
    /// the next snapshot should hold. Never fails: inputs are already validated.
    pub fn update(
        &self,
        _clusters: &BTreeMap<String, Arc<ClusterConfig>>,
        _assignments: &BTreeMap<String, Arc<LoadAssignment>>,
    ) -> Arc<ClusterSet> {
        Arc::new(ClusterSet::default())
    }
}
