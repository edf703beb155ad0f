//! Clusters: one `outbound|PORT||HOST` per visible service port plus one per DestinationRule
//! subset, `inbound|PORT||` per port this proxy's workload serves, and Istio's special clusters
//! (`BlackHoleCluster`, `PassthroughCluster`, `InboundPassthroughCluster`). The discovery type
//! follows the service's resolution (EDS, STRICT_DNS, LOGICAL_DNS, ORIGINAL_DST); policies from
//! DestinationRules are applied by [`super::traffic_policy`].

use std::collections::{BTreeMap, HashMap};

use xds_proto::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster,
    circuit_breakers::Thresholds,
    cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, EdsClusterConfig, LbPolicy},
};
use xds_proto::envoy::config::core::v3::{
    BindConfig, Http2ProtocolOptions, Metadata, SocketAddress, socket_address,
};
use xds_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    },
};
use xds_proto::google::protobuf::{ListValue, Struct, Value, value::Kind};

use crate::model::{Protocol, Resolution, Service, ServicePort};

use super::endpoint::load_assignment;
use super::envoy::{MAX_U32, ads_config_source, any, seconds, u32_value};
use super::names::{self, BLACK_HOLE_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER};
use super::scope::{InboundTarget, Scope};
use super::tls;
use super::traffic_policy::{self, Subset};

/// Key of the upstream HTTP protocol options in `typed_extension_protocol_options`.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Connect timeout Istio uses unless a DestinationRule says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;

/// All clusters for the proxy, with the EDS assignments of the EDS ones.
pub fn build(scope: &Scope<'_>) -> (Vec<Cluster>, Vec<ClusterLoadAssignment>) {
    let mut clusters = vec![
        black_hole(),
        passthrough(),
        inbound_passthrough(scope.options.local_mode),
    ];
    let mut assignments = Vec::new();
    for service in scope.services() {
        let rule = scope.destination_rule(service);
        for port in &service.ports {
            let mut subsets = vec![Subset::default()];
            if let Some(rule) = rule {
                subsets.extend(traffic_policy::subsets(rule));
            }
            for subset in &subsets {
                let name = names::outbound_cluster(port.port, &subset.name, &service.hostname);
                let mut cluster = outbound(scope, service, port, &name, &subset.labels);
                traffic_policy::apply(scope, rule, subset, service, port, &mut cluster);
                let eds = matches!(
                    cluster.cluster_discovery_type,
                    Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
                );
                if eds {
                    assignments.push(load_assignment(
                        &name,
                        service,
                        port,
                        &subset.labels,
                        scope.auto_mtls(),
                    ));
                }
                clusters.push(cluster);
            }
        }
    }
    for target in scope.inbound_targets() {
        clusters.push(inbound(&target));
    }
    (clusters, assignments)
}

fn discovery(t: DiscoveryType) -> Option<ClusterDiscoveryType> {
    Some(ClusterDiscoveryType::Type(t as i32))
}

/// Istio's default thresholds: everything unlimited, remaining capacity tracked.
pub fn default_thresholds() -> Thresholds {
    Thresholds {
        max_connections: Some(u32_value(MAX_U32)),
        max_pending_requests: Some(u32_value(MAX_U32)),
        max_requests: Some(u32_value(MAX_U32)),
        max_retries: Some(u32_value(MAX_U32)),
        track_remaining: true,
        ..Default::default()
    }
}

fn default_circuit_breakers() -> Option<CircuitBreakers> {
    Some(CircuitBreakers {
        thresholds: vec![default_thresholds()],
        ..Default::default()
    })
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// `istio` metadata naming the service behind a cluster, as Istio attaches it (tools read it).
fn service_metadata(service: &Service, port: &ServicePort, subset: &str) -> Metadata {
    let mut svc = HashMap::new();
    svc.insert("host".to_string(), string_value(&service.hostname));
    svc.insert("name".to_string(), string_value(&service.name));
    svc.insert("namespace".to_string(), string_value(&service.namespace));
    let mut istio = HashMap::new();
    istio.insert(
        "services".to_string(),
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![Value {
                    kind: Some(Kind::StructValue(Struct { fields: svc })),
                }],
            })),
        },
    );
    istio.insert(
        "default_original_port".to_string(),
        Value {
            kind: Some(Kind::NumberValue(f64::from(port.port))),
        },
    );
    if !subset.is_empty() {
        istio.insert("subset".to_string(), string_value(subset));
    }
    let mut filter_metadata = HashMap::new();
    filter_metadata.insert("istio".to_string(), Struct { fields: istio });
    Metadata {
        filter_metadata,
        ..Default::default()
    }
}

/// Upstream HTTP/2 with prior knowledge, for `http2` and `grpc` ports.
pub fn http2_protocol_options() -> HttpProtocolOptions {
    HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    }
}

fn outbound(
    scope: &Scope<'_>,
    service: &Service,
    port: &ServicePort,
    name: &str,
    subset_labels: &BTreeMap<String, String>,
) -> Cluster {
    let subset = name.split('|').nth(2).unwrap_or_default();
    let mut cluster = Cluster {
        name: name.to_string(),
        connect_timeout: Some(seconds(DEFAULT_CONNECT_TIMEOUT_SECS)),
        lb_policy: LbPolicy::LeastRequest as i32,
        circuit_breakers: default_circuit_breakers(),
        metadata: Some(service_metadata(service, port, subset)),
        ..Default::default()
    };
    match service.resolution {
        Resolution::Static => {
            cluster.cluster_discovery_type = discovery(DiscoveryType::Eds);
            cluster.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads_config_source()),
                service_name: name.to_string(),
            });
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            let (kind, assignment) = if service.resolution == Resolution::Dns {
                let la = load_assignment(name, service, port, subset_labels, false);
                (DiscoveryType::StrictDns, la)
            } else {
                let mut la = load_assignment(name, service, port, subset_labels, false);
                // LOGICAL_DNS takes exactly one host: Istio keeps the first.
                la.endpoints.truncate(1);
                if let Some(first) = la.endpoints.first_mut() {
                    first.lb_endpoints.truncate(1);
                }
                (DiscoveryType::LogicalDns, la)
            };
            cluster.cluster_discovery_type = discovery(kind);
            cluster.load_assignment = Some(assignment);
            cluster.dns_lookup_family = DnsLookupFamily::V4Only as i32;
            // Deprecated in favour of the typed DNS cluster, but what Istio still emits.
            #[allow(deprecated)]
            {
                cluster.dns_refresh_rate = Some(seconds(60));
                cluster.respect_dns_ttl = true;
            }
        }
        Resolution::Passthrough => {
            cluster.cluster_discovery_type = discovery(DiscoveryType::OriginalDst);
            cluster.lb_policy = LbPolicy::ClusterProvided as i32;
        }
    }
    if matches!(port.protocol, Protocol::Http2 | Protocol::Grpc) {
        cluster.typed_extension_protocol_options.insert(
            HTTP_PROTOCOL_OPTIONS.to_string(),
            any(&http2_protocol_options()),
        );
    }
    // Auto-mTLS: only for in-mesh services with known endpoints; DestinationRule `tls` replaces it.
    if scope.auto_mtls() && !service.mesh_external && service.resolution == Resolution::Static {
        let sni = names::istio_mtls_sni(port.port, subset, &service.hostname);
        let context = tls::istio_mutual(sni, &service_accounts(service));
        cluster.transport_socket_matches = tls::auto_mtls_matches(&context);
    }
    cluster
}

/// The SPIFFE IDs of a service's workloads: the SANs Istio mTLS expects.
pub fn service_accounts(service: &Service) -> Vec<String> {
    let mut ids: Vec<String> = service
        .endpoints
        .iter()
        .filter_map(|e| e.service_account.as_deref())
        .map(|sa| names::spiffe_id(&service.namespace, sa))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn inbound(target: &InboundTarget<'_>) -> Cluster {
    use xds_proto::envoy::config::endpoint::v3::{
        Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
    };
    let name = names::inbound_cluster(target.target_port);
    let assignment = ClusterLoadAssignment {
        cluster_name: name.clone(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(super::envoy::socket_address(
                        &target.endpoint.address,
                        target.target_port,
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut cluster = Cluster {
        name,
        cluster_discovery_type: discovery(DiscoveryType::Static),
        connect_timeout: Some(seconds(DEFAULT_CONNECT_TIMEOUT_SECS)),
        lb_policy: LbPolicy::LeastRequest as i32,
        circuit_breakers: default_circuit_breakers(),
        load_assignment: Some(assignment),
        metadata: Some(service_metadata(target.service, target.port, "")),
        ..Default::default()
    };
    if matches!(target.port.protocol, Protocol::Http2 | Protocol::Grpc) {
        cluster.typed_extension_protocol_options.insert(
            HTTP_PROTOCOL_OPTIONS.to_string(),
            any(&http2_protocol_options()),
        );
    }
    cluster
}

/// Drops everything: destinations Istio refuses (unknown hosts under `REGISTRY_ONLY`, 15001
/// looped back to itself).
pub fn black_hole() -> Cluster {
    Cluster {
        name: BLACK_HOLE_CLUSTER.to_string(),
        cluster_discovery_type: discovery(DiscoveryType::Static),
        connect_timeout: Some(seconds(DEFAULT_CONNECT_TIMEOUT_SECS)),
        ..Default::default()
    }
}

/// Forwards to the address the client dialled (unknown destinations under `ALLOW_ANY`).
pub fn passthrough() -> Cluster {
    Cluster {
        name: PASSTHROUGH_CLUSTER.to_string(),
        cluster_discovery_type: discovery(DiscoveryType::OriginalDst),
        connect_timeout: Some(seconds(DEFAULT_CONNECT_TIMEOUT_SECS)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        circuit_breakers: default_circuit_breakers(),
        ..Default::default()
    }
}

/// Inbound traffic to a port no service declares: forwarded to the original destination from
/// 127.0.0.6, the source address Istio uses so the workload's own iptables rules let it through
/// (not in local mode, where there are no such rules).
pub fn inbound_passthrough(local_mode: bool) -> Cluster {
    let mut cluster = Cluster {
        name: INBOUND_PASSTHROUGH_CLUSTER.to_string(),
        cluster_discovery_type: discovery(DiscoveryType::OriginalDst),
        connect_timeout: Some(seconds(DEFAULT_CONNECT_TIMEOUT_SECS)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        circuit_breakers: default_circuit_breakers(),
        upstream_bind_config: Some(BindConfig {
            source_address: Some(SocketAddress {
                address: "127.0.0.6".to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    if local_mode {
        cluster.upstream_bind_config = None;
    }
    cluster
}
