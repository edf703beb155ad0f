//! `LoadAssignment`: a validated `ClusterLoadAssignment` (EDS, or a cluster's inline
//! `load_assignment`): localities with priorities and weights, endpoints with weights, EDS
//! health status and the metadata that selects a transport socket.
//!
//! EDS and STATIC endpoints must be IP addresses (Envoy resolves nothing for them); DNS clusters
//! accept hostnames, which [`super::dns`] resolves.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use xds_proto::envoy::config::core::v3 as core;
use xds_proto::envoy::config::endpoint::v3 as proto;

use super::InvalidCluster;
use super::transport::{TRANSPORT_SOCKET_MATCH, string_fields};

/// Envoy's default `policy.overprovisioning_factor` (percent).
pub const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;

/// A validated `ClusterLoadAssignment`: the endpoints of one EDS cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadAssignment {
    /// The cluster (EDS service name) this assignment fills.
    pub cluster_name: String,
    /// The localities, in the order given.
    pub localities: Vec<LocalityEndpoints>,
    /// `policy.overprovisioning_factor` in percent (default 140).
    pub overprovisioning_factor: u32,
}

/// One `LocalityLbEndpoints`.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalityEndpoints {
    /// Where these endpoints run.
    pub locality: Locality,
    /// Priority level: 0 is the highest.
    pub priority: u32,
    /// `load_balancing_weight` (used with `locality_weighted_lb_config`).
    pub weight: Option<u32>,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// `envoy.config.core.v3.Locality`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub sub_zone: String,
}

/// One `LbEndpoint`.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Where to connect.
    pub address: EndpointAddress,
    /// `endpoint.hostname` (informational, shown in `/clusters`).
    pub hostname: String,
    /// `load_balancing_weight` (default 1).
    pub weight: u32,
    /// EDS health status.
    pub health: HealthStatus,
    /// `filter_metadata["envoy.transport_socket_match"]` (e.g. `tlsMode: istio`).
    pub transport_socket_match: BTreeMap<String, String>,
}

/// An endpoint's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    /// An IP socket address.
    Ip(SocketAddr),
    /// A hostname and port for DNS clusters.
    Hostname {
        /// The name to resolve.
        host: String,
        /// The port.
        port: u16,
    },
}

/// `envoy.config.core.v3.HealthStatus` as EDS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// UNKNOWN: treated as healthy.
    Unknown,
    /// HEALTHY.
    Healthy,
    /// UNHEALTHY: excluded unless the priority is in panic.
    Unhealthy,
    /// DRAINING: excluded unless the priority is in panic.
    Draining,
    /// TIMEOUT: excluded like UNHEALTHY (as Envoy does).
    Timeout,
    /// DEGRADED: treated as healthy (Ferry has no degraded tier).
    Degraded,
}

impl HealthStatus {
    /// Whether the load balancer may pick this endpoint outside panic mode.
    pub fn is_healthy(self) -> bool {
        matches!(self, Self::Unknown | Self::Healthy | Self::Degraded)
    }

    /// Envoy's name for the status, for `/clusters`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "UNKNOWN",
            Self::Healthy => "HEALTHY",
            Self::Unhealthy => "UNHEALTHY",
            Self::Draining => "DRAINING",
            Self::Timeout => "TIMEOUT",
            Self::Degraded => "DEGRADED",
        }
    }
}

/// Which addresses an assignment may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddressKind {
    /// IP addresses only (EDS, STATIC).
    Ip,
    /// Hostnames allowed (STRICT_DNS, LOGICAL_DNS).
    Hostname,
}

impl TryFrom<&proto::ClusterLoadAssignment> for LoadAssignment {
    type Error = InvalidCluster;

    fn try_from(cla: &proto::ClusterLoadAssignment) -> Result<Self, InvalidCluster> {
        Self::parse(cla, AddressKind::Ip, &cla.cluster_name)
    }
}

impl LoadAssignment {
    /// Validates an assignment; `owner` names the cluster in errors.
    pub(crate) fn parse(
        cla: &proto::ClusterLoadAssignment,
        kind: AddressKind,
        owner: &str,
    ) -> Result<Self, InvalidCluster> {
        if !cla.named_endpoints.is_empty() {
            return Err(InvalidCluster::not_implemented(owner, "named_endpoints"));
        }
        let mut overprovisioning_factor = DEFAULT_OVERPROVISIONING_FACTOR;
        if let Some(policy) = &cla.policy {
            if !policy.drop_overloads.is_empty() {
                return Err(InvalidCluster::not_implemented(
                    owner,
                    "policy.drop_overloads",
                ));
            }
            if policy.endpoint_stale_after.is_some() {
                return Err(InvalidCluster::not_implemented(
                    owner,
                    "policy.endpoint_stale_after",
                ));
            }
            if policy.weighted_priority_health {
                return Err(InvalidCluster::not_implemented(
                    owner,
                    "policy.weighted_priority_health",
                ));
            }
            if let Some(f) = policy.overprovisioning_factor {
                if f.value == 0 {
                    return Err(InvalidCluster::new(
                        owner,
                        "policy.overprovisioning_factor",
                        "must be greater than 0",
                    ));
                }
                overprovisioning_factor = f.value;
            }
        }
        let localities = cla
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, l)| {
                locality(l, kind, owner).map_err(|e| e.within(&format!("endpoints[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            cluster_name: cla.cluster_name.clone(),
            localities,
            overprovisioning_factor,
        })
    }
}

fn locality(
    l: &proto::LocalityLbEndpoints,
    kind: AddressKind,
    owner: &str,
) -> Result<LocalityEndpoints, InvalidCluster> {
    if l.lb_config.is_some() {
        return Err(InvalidCluster::not_implemented(
            owner,
            "leds_cluster_locality_config",
        ));
    }
    if l.proximity.is_some() {
        return Err(InvalidCluster::not_implemented(owner, "proximity"));
    }
    let weight = match l.load_balancing_weight {
        Some(w) if w.value == 0 => {
            return Err(InvalidCluster::new(
                owner,
                "load_balancing_weight",
                "must be at least 1",
            ));
        }
        w => w.map(|w| w.value),
    };
    let endpoints: Vec<Endpoint> = l
        .lb_endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| endpoint(e, kind, owner).map_err(|e| e.within(&format!("lb_endpoints[{i}]"))))
        .collect::<Result<_, _>>()?;
    let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
    if total > u64::from(u32::MAX) {
        return Err(InvalidCluster::new(
            owner,
            "lb_endpoints",
            "the sum of endpoint weights exceeds 4294967295",
        ));
    }
    let locality = l
        .locality
        .as_ref()
        .map_or_else(Locality::default, |loc| Locality {
            region: loc.region.clone(),
            zone: loc.zone.clone(),
            sub_zone: loc.sub_zone.clone(),
        });
    Ok(LocalityEndpoints {
        locality,
        priority: l.priority,
        weight,
        endpoints,
    })
}

fn endpoint(
    e: &proto::LbEndpoint,
    kind: AddressKind,
    owner: &str,
) -> Result<Endpoint, InvalidCluster> {
    use proto::lb_endpoint::HostIdentifier;
    let ep = match &e.host_identifier {
        Some(HostIdentifier::Endpoint(ep)) => ep,
        Some(HostIdentifier::EndpointName(_)) => {
            return Err(InvalidCluster::not_implemented(owner, "endpoint_name"));
        }
        None => return Err(InvalidCluster::new(owner, "endpoint", "is required")),
    };
    if !ep.additional_addresses.is_empty() {
        return Err(InvalidCluster::not_implemented(
            owner,
            "endpoint.additional_addresses",
        ));
    }
    let address = match &ep.address {
        Some(a) => address(a, kind, owner).map_err(|e| e.within("endpoint.address"))?,
        None => {
            return Err(InvalidCluster::new(
                owner,
                "endpoint.address",
                "is required",
            ));
        }
    };
    let weight = match e.load_balancing_weight {
        Some(w) if w.value == 0 => {
            return Err(InvalidCluster::new(
                owner,
                "load_balancing_weight",
                "must be at least 1",
            ));
        }
        Some(w) => w.value,
        None => 1,
    };
    let health = match core::HealthStatus::try_from(e.health_status) {
        Ok(core::HealthStatus::Unknown) => HealthStatus::Unknown,
        Ok(core::HealthStatus::Healthy) => HealthStatus::Healthy,
        Ok(core::HealthStatus::Unhealthy) => HealthStatus::Unhealthy,
        Ok(core::HealthStatus::Draining) => HealthStatus::Draining,
        Ok(core::HealthStatus::Timeout) => HealthStatus::Timeout,
        Ok(core::HealthStatus::Degraded) => HealthStatus::Degraded,
        Err(_) => {
            return Err(InvalidCluster::new(
                owner,
                "health_status",
                format!("unknown health status {}", e.health_status),
            ));
        }
    };
    // Only the transport-socket-match namespace changes behaviour; other metadata (Istio's
    // workload labels) is for telemetry and kept out of the data path.
    let transport_socket_match = e
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(TRANSPORT_SOCKET_MATCH))
        .map(|s| {
            string_fields(s).map_err(|key| {
                InvalidCluster::new(
                    owner,
                    format!("metadata.filter_metadata.{TRANSPORT_SOCKET_MATCH}.{key}"),
                    "only string values are supported",
                )
            })
        })
        .transpose()?
        .unwrap_or_default();
    Ok(Endpoint {
        address,
        hostname: ep.hostname.clone(),
        weight,
        health,
        transport_socket_match,
    })
}

/// Validates a socket address: TCP, numeric port, and an IP unless `kind` allows hostnames.
pub(crate) fn address(
    a: &core::Address,
    kind: AddressKind,
    owner: &str,
) -> Result<EndpointAddress, InvalidCluster> {
    use core::address::Address as A;
    use core::socket_address::PortSpecifier;
    let sa = match &a.address {
        Some(A::SocketAddress(sa)) => sa,
        Some(A::Pipe(_)) => return Err(InvalidCluster::not_implemented(owner, "pipe")),
        Some(A::EnvoyInternalAddress(_)) => {
            return Err(InvalidCluster::not_implemented(
                owner,
                "envoy_internal_address",
            ));
        }
        None => return Err(InvalidCluster::new(owner, "address", "is required")),
    };
    if sa.protocol != core::socket_address::Protocol::Tcp as i32 {
        return Err(InvalidCluster::new(
            owner,
            "socket_address.protocol",
            "only TCP is supported",
        ));
    }
    if !sa.resolver_name.is_empty() {
        return Err(InvalidCluster::not_implemented(
            owner,
            "socket_address.resolver_name",
        ));
    }
    let port = match &sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) => u16::try_from(*p).map_err(|_| {
            InvalidCluster::new(owner, "socket_address.port_value", "must be at most 65535")
        })?,
        Some(PortSpecifier::NamedPort(_)) => {
            return Err(InvalidCluster::not_implemented(
                owner,
                "socket_address.named_port",
            ));
        }
        None => {
            return Err(InvalidCluster::new(
                owner,
                "socket_address.port_value",
                "is required",
            ));
        }
    };
    match (sa.address.parse::<IpAddr>(), kind) {
        (Ok(ip), _) => Ok(EndpointAddress::Ip(SocketAddr::new(ip, port))),
        (Err(_), AddressKind::Hostname) if !sa.address.is_empty() => {
            Ok(EndpointAddress::Hostname {
                host: sa.address.clone(),
                port,
            })
        }
        (Err(_), _) => Err(InvalidCluster::new(
            owner,
            "socket_address.address",
            format!("{:?} is not an IP address", sa.address),
        )),
    }
}

#[cfg(test)]
#[path = "load_assignment_tests.rs"]
mod tests;
