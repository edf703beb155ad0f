//! `ClusterLoadAssignment`s: a service port's ready endpoints, filtered by a subset's labels,
//! grouped by locality, with weights and the metadata Istio attaches (the `tlsMode` that
//! auto-mTLS keys on, and the workload identity). Used for EDS and for the inline
//! `load_assignment` of DNS clusters.

use std::collections::{BTreeMap, HashMap};

use xds_proto::envoy::config::core::v3::{Locality, Metadata};
use xds_proto::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};
use xds_proto::google::protobuf::{Struct, Value, value::Kind};

use crate::model::{Endpoint, Service, ServicePort};

use super::envoy::{socket_address, u32_value};
use super::names::TLS_MODE_LABEL;
use super::scope::endpoint_port;

/// Metadata key Envoy's `transport_socket_matches` read.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// True when `endpoint` carries every label of the subset.
pub fn selected(endpoint: &Endpoint, subset_labels: &BTreeMap<String, String>) -> bool {
    subset_labels
        .iter()
        .all(|(k, v)| endpoint.labels.get(k) == Some(v))
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn one_field(key: &str, value: &str) -> Struct {
    let mut fields = HashMap::new();
    fields.insert(key.to_string(), string_value(value));
    Struct { fields }
}

fn metadata(service: &Service, endpoint: &Endpoint, auto_mtls: bool) -> Option<Metadata> {
    let mut filter_metadata = HashMap::new();
    let tls_mode = endpoint.labels.get(TLS_MODE_LABEL).map(String::as_str);
    if auto_mtls && tls_mode == Some("istio") {
        filter_metadata.insert(
            TRANSPORT_SOCKET_MATCH.to_string(),
            one_field("tlsMode", "istio"),
        );
    }
    let workload = endpoint
        .labels
        .get("app")
        .or_else(|| endpoint.labels.get("app.kubernetes.io/name"))
        .cloned()
        .unwrap_or_default();
    let version = endpoint
        .labels
        .get("version")
        .or_else(|| endpoint.labels.get("app.kubernetes.io/version"))
        .cloned()
        .unwrap_or_default();
    // Istio's `workload` triple: name;namespace;app;version;cluster.
    let value = format!("{workload};{};{workload};{version};", service.namespace);
    filter_metadata.insert("istio".to_string(), one_field("workload", &value));
    Some(Metadata {
        filter_metadata,
        ..Default::default()
    })
}

fn locality(s: &str) -> Option<Locality> {
    if s.is_empty() {
        return None;
    }
    let mut parts = s.splitn(3, '/');
    Some(Locality {
        region: parts.next().unwrap_or_default().to_string(),
        zone: parts.next().unwrap_or_default().to_string(),
        sub_zone: parts.next().unwrap_or_default().to_string(),
    })
}

/// The assignment for `cluster_name`: `service`'s ready endpoints on `port` that carry
/// `subset_labels`, grouped by locality (sorted, so output is deterministic).
pub fn load_assignment(
    cluster_name: &str,
    service: &Service,
    port: &ServicePort,
    subset_labels: &BTreeMap<String, String>,
    auto_mtls: bool,
) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&str, Vec<LbEndpoint>> = BTreeMap::new();
    let implicit;
    let endpoints: &[Endpoint] = if service.endpoints.is_empty()
        && matches!(
            service.resolution,
            crate::model::Resolution::Dns | crate::model::Resolution::DnsRoundRobin
        )
        && !service.hostname.starts_with('*')
    {
        // A DNS ServiceEntry without endpoints resolves its own host.
        implicit = [Endpoint {
            address: service.hostname.clone(),
            ports: BTreeMap::new(),
            labels: BTreeMap::new(),
            service_account: None,
            locality: String::new(),
            weight: 1,
            ready: true,
        }];
        &implicit
    } else {
        &service.endpoints
    };
    for endpoint in endpoints {
        if !endpoint.ready || !selected(endpoint, subset_labels) {
            continue;
        }
        let Some(target) = endpoint_port(service, port, endpoint) else {
            continue;
        };
        by_locality
            .entry(endpoint.locality.as_str())
            .or_default()
            .push(LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                    address: Some(socket_address(&endpoint.address, target)),
                    ..Default::default()
                })),
                metadata: metadata(service, endpoint, auto_mtls),
                load_balancing_weight: Some(u32_value(endpoint.weight.max(1))),
                ..Default::default()
            });
    }
    let endpoints = by_locality
        .into_iter()
        .map(|(name, lb_endpoints)| {
            let weight = lb_endpoints
                .iter()
                .map(|e| e.load_balancing_weight.map_or(1, |w| w.value))
                .fold(0u32, u32::saturating_add);
            LocalityLbEndpoints {
                locality: locality(name),
                lb_endpoints,
                load_balancing_weight: Some(u32_value(weight)),
                ..Default::default()
            }
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_string(),
        endpoints,
        ..Default::default()
    }
}
