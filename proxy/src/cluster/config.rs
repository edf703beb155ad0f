//! `ClusterConfig`: an `envoy.config.cluster.v3.Cluster` validated once, at config time.
//!
//! Every field that changes behaviour is either implemented or refused with an
//! [`InvalidCluster`] naming it; fields that only tune Envoy internals Ferry does not have (stats
//! matchers, buffer limits, update merge windows) are accepted and documented where they are
//! read. Protocol options and transport sockets live in [`super::protocol`] and
//! [`super::transport`], the resilience fields in [`super::resilience`].

use std::time::Duration;

use xds_proto::envoy::config::cluster::v3 as proto;
use xds_proto::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig,
};

use super::InvalidCluster;
use super::load_assignment::{AddressKind, LoadAssignment};
use super::resilience::{CircuitBreakers, OutlierDetection};
use crate::pool::PoolSettings;

pub use super::dns::DnsConfig;
use super::transport::TransportSockets;

/// Envoy's default `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default `common_lb_config.healthy_panic_threshold`, in percent.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;
/// Envoy's default `cleanup_interval` for ORIGINAL_DST hosts.
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(5);

/// A validated cluster definition.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// The cluster's xDS name (`outbound|9080|v1|reviews.default.svc.cluster.local`).
    pub name: String,
    /// The name stats are reported under (`alt_stat_name`, else `name`).
    pub stat_name: String,
    /// How the cluster finds its hosts.
    pub discovery: Discovery,
    /// The inline `load_assignment` (STATIC, STRICT_DNS, LOGICAL_DNS).
    pub load_assignment: Option<LoadAssignment>,
    /// The load balancing policy with its parameters.
    pub lb_policy: LbPolicy,
    /// `common_lb_config.healthy_panic_threshold` in percent: below this share of healthy hosts a
    /// priority level balances over all its hosts. 0 disables panic mode.
    pub healthy_panic_threshold: f64,
    /// `common_lb_config.locality_weighted_lb_config`: pick a locality by its weight first.
    pub locality_weighted: bool,
    /// Connection pool settings (protocol, timeouts, limits).
    pub pool: PoolSettings,
    /// `transport_socket` / `transport_socket_matches`.
    pub transport: TransportSockets,
    /// `circuit_breakers` (what is enforced: see [`CircuitBreakers`]).
    pub circuit_breakers: CircuitBreakers,
    /// `outlier_detection`, run by the cluster's `outlier::Detector`.
    pub outlier_detection: Option<OutlierDetection>,
}

/// The cluster's discovery type.
#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    /// `STATIC`: the inline load assignment's IP addresses.
    Static,
    /// `STRICT_DNS`: every address each hostname resolves to is a host.
    StrictDns(DnsConfig),
    /// `LOGICAL_DNS`: one logical host at the first address the hostname resolves to.
    LogicalDns(DnsConfig),
    /// `EDS`: endpoints from the `ClusterLoadAssignment` with this service name.
    Eds {
        /// `eds_cluster_config.service_name`, or the cluster name when empty.
        service_name: String,
    },
    /// `ORIGINAL_DST`: the connection's original destination is the host.
    OriginalDst {
        /// How long an unused host is kept (`cleanup_interval`).
        cleanup_interval: Duration,
    },
}

/// `lb_policy` with the matching `*_lb_config`.
#[derive(Debug, Clone, PartialEq)]
pub enum LbPolicy {
    /// `ROUND_ROBIN`, weighted (smooth / EDF) when endpoint weights differ.
    RoundRobin,
    /// `LEAST_REQUEST`: power of `choice_count` choices on active requests.
    LeastRequest {
        /// `least_request_lb_config.choice_count` (default 2).
        choice_count: u32,
    },
    /// `RANDOM`, weighted.
    Random,
    /// `RING_HASH` (xxHash64, Envoy's ring construction).
    RingHash {
        /// `ring_hash_lb_config.minimum_ring_size` (default 1024).
        minimum_ring_size: u64,
        /// `ring_hash_lb_config.maximum_ring_size` (default 8M).
        maximum_ring_size: u64,
    },
    /// `MAGLEV`.
    Maglev {
        /// `maglev_lb_config.table_size` (default 65537, prime).
        table_size: u64,
    },
    /// `CLUSTER_PROVIDED` (ORIGINAL_DST clusters).
    ClusterProvided,
}

impl ClusterConfig {
    /// The EDS service name to subscribe to, for EDS clusters (`eds_cluster_config.service_name`,
    /// or the cluster name when empty); `None` for other types.
    pub fn eds_service_name(&self) -> Option<&str> {
        match &self.discovery {
            Discovery::Eds { service_name } => Some(service_name),
            _ => None,
        }
    }
}

impl TryFrom<&proto::Cluster> for ClusterConfig {
    type Error = InvalidCluster;

    fn try_from(cluster: &proto::Cluster) -> Result<Self, InvalidCluster> {
        let name = cluster.name.as_str();
        if name.is_empty() {
            return Err(InvalidCluster::new(name, "name", "must not be empty"));
        }
        refuse_unsupported(cluster)?;
        let discovery = discovery(cluster)?;
        let load_assignment = match &cluster.load_assignment {
            None => None,
            Some(cla) => {
                let kind = match discovery {
                    Discovery::StrictDns(_) | Discovery::LogicalDns(_) => AddressKind::Hostname,
                    _ => AddressKind::Ip,
                };
                let la = LoadAssignment::parse(cla, kind, name)
                    .map_err(|e| e.within("load_assignment"))?;
                Some(la)
            }
        };
        match (&discovery, &load_assignment) {
            (Discovery::StrictDns(_) | Discovery::LogicalDns(_) | Discovery::Static, None) => {
                // Envoy accepts a STATIC cluster without endpoints (it is just empty).
            }
            (Discovery::LogicalDns(_), Some(la)) => {
                let count: usize = la.localities.iter().map(|l| l.endpoints.len()).sum();
                if count != 1 {
                    return Err(InvalidCluster::new(
                        name,
                        "load_assignment",
                        "LOGICAL_DNS clusters must have exactly one endpoint",
                    ));
                }
            }
            (Discovery::OriginalDst { .. }, Some(_)) => {
                return Err(InvalidCluster::new(
                    name,
                    "load_assignment",
                    "ORIGINAL_DST clusters must not have a load_assignment",
                ));
            }
            _ => {}
        }
        let lb_policy = lb_policy(cluster, &discovery)?;
        let (healthy_panic_threshold, locality_weighted) = common_lb(cluster)?;
        let connect_timeout = match &cluster.connect_timeout {
            Some(d) => duration(name, "connect_timeout", d)?,
            None => DEFAULT_CONNECT_TIMEOUT,
        };
        let mut pool = super::protocol::pool_settings(cluster)?;
        pool.connect_timeout = connect_timeout;
        Ok(Self {
            name: name.to_owned(),
            stat_name: if cluster.alt_stat_name.is_empty() {
                name.to_owned()
            } else {
                cluster.alt_stat_name.clone()
            },
            discovery,
            load_assignment,
            lb_policy,
            healthy_panic_threshold,
            locality_weighted,
            pool,
            transport: TransportSockets::try_from(cluster)?,
            circuit_breakers: match &cluster.circuit_breakers {
                Some(cb) => CircuitBreakers::parse(cb, name)?,
                None => CircuitBreakers::default(),
            },
            outlier_detection: cluster
                .outlier_detection
                .as_ref()
                .map(|od| OutlierDetection::parse(od, name))
                .transpose()?,
        })
    }
}

/// Converts a proto duration, refusing negative or out-of-range values.
pub(crate) fn duration(
    name: &str,
    field: &str,
    d: &xds_proto::google::protobuf::Duration,
) -> Result<Duration, InvalidCluster> {
    // google.protobuf.Duration's own range (about 10,000 years): anything larger is malformed,
    // and bounding it keeps deadline arithmetic from overflowing.
    const MAX_SECONDS: i64 = 315_576_000_000;
    if d.seconds < 0 || d.seconds > MAX_SECONDS || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(InvalidCluster::new(
            name,
            field,
            "invalid or negative duration",
        ));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Fields whose behaviour Ferry does not implement: refused by name rather than ignored.
#[allow(deprecated)]
fn refuse_unsupported(c: &proto::Cluster) -> Result<(), InvalidCluster> {
    let name = c.name.as_str();
    let checks: [(&str, bool); 15] = [
        (
            "per_connection_buffer_high_watermark_timeout",
            c.per_connection_buffer_high_watermark_timeout
                .is_some_and(|d| d.seconds != 0 || d.nanos != 0),
        ),
        ("use_tcp_for_dns_lookups", c.use_tcp_for_dns_lookups),
        (
            "transport_socket_matcher",
            c.transport_socket_matcher.is_some(),
        ),
        ("health_checks", !c.health_checks.is_empty()),
        ("lb_subset_config", c.lb_subset_config.is_some()),
        ("upstream_bind_config", c.upstream_bind_config.is_some()),
        ("load_balancing_policy", c.load_balancing_policy.is_some()),
        ("lrs_server", c.lrs_server.is_some()),
        ("upstream_config", c.upstream_config.is_some()),
        ("preconnect_policy", c.preconnect_policy.is_some()),
        (
            "connection_pool_per_downstream_connection",
            c.connection_pool_per_downstream_connection,
        ),
        (
            "typed_dns_resolver_config",
            c.typed_dns_resolver_config.is_some(),
        ),
        ("dns_resolvers", !c.dns_resolvers.is_empty()),
        ("dns_resolution_config", c.dns_resolution_config.is_some()),
        ("queuing_policies", c.queuing_policies.is_some()),
    ];
    if let Some((field, _)) = checks.iter().find(|(_, set)| *set) {
        return Err(InvalidCluster::not_implemented(name, *field));
    }
    // Accepted as they stand: `close_connections_on_host_health_failure` and
    // `ignore_health_on_host_removal` need active health checks and `lrs_report_endpoint_metrics`
    // an LRS server (both refused above); `wait_for_warm_on_init` orders Envoy's own init,
    // `track_timeout_budgets` and `track_cluster_stats` only add stats.
    for (i, filter) in c.filters.iter().enumerate() {
        // Istio attaches `istio.metadata_exchange` to outbound clusters; it only carries peer
        // metadata for telemetry over mTLS, so it does not change where or how requests go.
        if filter.name != "istio.metadata_exchange" {
            return Err(InvalidCluster::new(
                name,
                format!("filters[{i}]"),
                format!(
                    "upstream network filter {:?} is not implemented",
                    filter.name
                ),
            ));
        }
    }
    Ok(())
}

#[allow(deprecated)]
fn discovery(c: &proto::Cluster) -> Result<Discovery, InvalidCluster> {
    let name = c.name.as_str();
    let kind = match &c.cluster_discovery_type {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t)
            .map_err(|_| InvalidCluster::new(name, "type", format!("unknown type {t}")))?,
        Some(ClusterDiscoveryType::ClusterType(custom)) => {
            return Err(InvalidCluster::new(
                name,
                "cluster_type",
                format!("custom cluster type {:?} is not implemented", custom.name),
            ));
        }
    };
    if kind != DiscoveryType::Eds && c.eds_cluster_config.is_some() {
        return Err(InvalidCluster::new(
            name,
            "eds_cluster_config",
            "only valid for EDS clusters",
        ));
    }
    Ok(match kind {
        DiscoveryType::Static => Discovery::Static,
        DiscoveryType::StrictDns => Discovery::StrictDns(DnsConfig::parse(c)?),
        DiscoveryType::LogicalDns => Discovery::LogicalDns(DnsConfig::parse(c)?),
        DiscoveryType::Eds => {
            let service_name = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| name.to_owned());
            Discovery::Eds { service_name }
        }
        DiscoveryType::OriginalDst => Discovery::OriginalDst {
            cleanup_interval: match &c.cleanup_interval {
                Some(d) => duration(name, "cleanup_interval", d)?,
                None => DEFAULT_CLEANUP_INTERVAL,
            },
        },
    })
}

fn lb_policy(c: &proto::Cluster, discovery: &Discovery) -> Result<LbPolicy, InvalidCluster> {
    use proto::cluster::LbPolicy as P;
    let name = c.name.as_str();
    let policy = P::try_from(c.lb_policy).map_err(|_| {
        InvalidCluster::new(
            name,
            "lb_policy",
            format!("unknown lb_policy {}", c.lb_policy),
        )
    })?;
    let original_dst = matches!(discovery, Discovery::OriginalDst { .. });
    if original_dst != (policy == P::ClusterProvided) {
        return Err(InvalidCluster::new(
            name,
            "lb_policy",
            "ORIGINAL_DST clusters need CLUSTER_PROVIDED, and only they may use it",
        ));
    }
    match (&c.lb_config, policy) {
        (Some(LbConfig::RoundRobinLbConfig(rr)), _) if rr.slow_start_config.is_some() => {
            return Err(InvalidCluster::not_implemented(
                name,
                "round_robin_lb_config.slow_start_config",
            ));
        }
        (Some(LbConfig::LeastRequestLbConfig(lr)), _) if lr.slow_start_config.is_some() => {
            return Err(InvalidCluster::not_implemented(
                name,
                "least_request_lb_config.slow_start_config",
            ));
        }
        (Some(LbConfig::OriginalDstLbConfig(od)), _)
            if od.use_http_header
                || od.upstream_port_override.is_some()
                || od.metadata_key.is_some() =>
        {
            return Err(InvalidCluster::not_implemented(
                name,
                "original_dst_lb_config",
            ));
        }
        _ => {}
    }
    Ok(match policy {
        P::RoundRobin => LbPolicy::RoundRobin,
        P::Random => LbPolicy::Random,
        P::ClusterProvided => LbPolicy::ClusterProvided,
        P::LeastRequest => {
            let mut choice_count = 2;
            if let Some(LbConfig::LeastRequestLbConfig(lr)) = &c.lb_config {
                if let Some(n) = lr.choice_count {
                    if n.value < 2 {
                        return Err(InvalidCluster::new(
                            name,
                            "least_request_lb_config.choice_count",
                            "must be at least 2",
                        ));
                    }
                    choice_count = n.value;
                }
                if lr.active_request_bias.is_some() {
                    return Err(InvalidCluster::not_implemented(
                        name,
                        "least_request_lb_config.active_request_bias",
                    ));
                }
            }
            LbPolicy::LeastRequest { choice_count }
        }
        P::RingHash => {
            let (mut min, mut max) = (1024, 8 * 1024 * 1024);
            if let Some(LbConfig::RingHashLbConfig(rh)) = &c.lb_config {
                if rh.hash_function != 0 {
                    return Err(InvalidCluster::not_implemented(
                        name,
                        "ring_hash_lb_config.hash_function (only XX_HASH)",
                    ));
                }
                min = rh.minimum_ring_size.map_or(min, |v| v.value);
                max = rh.maximum_ring_size.map_or(max, |v| v.value);
            }
            if min == 0 || min > 8 * 1024 * 1024 || max > 8 * 1024 * 1024 || min > max {
                return Err(InvalidCluster::new(
                    name,
                    "ring_hash_lb_config",
                    "need 0 < minimum_ring_size <= maximum_ring_size <= 8388608",
                ));
            }
            LbPolicy::RingHash {
                minimum_ring_size: min,
                maximum_ring_size: max,
            }
        }
        P::Maglev => {
            let mut table_size = 65537;
            if let Some(LbConfig::MaglevLbConfig(m)) = &c.lb_config {
                table_size = m.table_size.map_or(table_size, |v| v.value);
            }
            if !is_prime(table_size) || table_size > 5_000_011 {
                return Err(InvalidCluster::new(
                    name,
                    "maglev_lb_config.table_size",
                    "must be a prime number no larger than 5000011",
                ));
            }
            LbPolicy::Maglev { table_size }
        }
        P::LoadBalancingPolicyConfig => {
            return Err(InvalidCluster::not_implemented(
                name,
                "lb_policy LOAD_BALANCING_POLICY_CONFIG",
            ));
        }
    })
}

fn common_lb(c: &proto::Cluster) -> Result<(f64, bool), InvalidCluster> {
    use proto::cluster::common_lb_config::LocalityConfigSpecifier as L;
    let name = c.name.as_str();
    let Some(common) = &c.common_lb_config else {
        return Ok((DEFAULT_PANIC_THRESHOLD, false));
    };
    let threshold = common
        .healthy_panic_threshold
        .as_ref()
        .map_or(DEFAULT_PANIC_THRESHOLD, |p| p.value);
    if !(0.0..=100.0).contains(&threshold) {
        return Err(InvalidCluster::new(
            name,
            "common_lb_config.healthy_panic_threshold",
            "must be between 0 and 100",
        ));
    }
    if common.close_connections_on_host_set_change {
        return Err(InvalidCluster::not_implemented(
            name,
            "common_lb_config.close_connections_on_host_set_change",
        ));
    }
    if common.override_host_status.is_some() {
        return Err(InvalidCluster::not_implemented(
            name,
            "common_lb_config.override_host_status",
        ));
    }
    if let Some(ch) = &common.consistent_hashing_lb_config
        && (ch.use_hostname_for_hashing || ch.hash_balance_factor.is_some())
    {
        return Err(InvalidCluster::not_implemented(
            name,
            "common_lb_config.consistent_hashing_lb_config",
        ));
    }
    let locality_weighted = match &common.locality_config_specifier {
        None => false,
        Some(L::LocalityWeightedLbConfig(_)) => true,
        Some(L::ZoneAwareLbConfig(_)) => {
            return Err(InvalidCluster::not_implemented(
                name,
                "common_lb_config.zone_aware_lb_config",
            ));
        }
    };
    Ok((threshold, locality_weighted))
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
