//! `/clusters`: every active cluster and its hosts in Envoy's text format
//! (`NAME::HOST:PORT::health_flags::healthy`), or `?format=json` as `envoy.admin.v3.Clusters`.
//! Hosts come from the accepted load assignments (EDS or inline); per-host counters come from
//! the stats store when the upstream side records them as `cluster.NAME.host.ADDR.STAT`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use xds_proto::any::unpack;
use xds_proto::envoy::admin::v3::{
    ClusterStatus, Clusters, HostHealthStatus, HostStatus, SimpleMetric,
};
use xds_proto::envoy::config::cluster::v3::Cluster;
use xds_proto::envoy::config::core::v3::{Address, HealthStatus, address, socket_address};
use xds_proto::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint::HostIdentifier};
use xds_proto::json::JsonError;

use crate::xds::Tracker;
use crate::xds::resources::{Domain, Kind};
use crate::xds::state::Origin;

/// The per-host counters `/clusters` prints.
const HOST_STATS: [&str; 6] = [
    "cx_active",
    "cx_connect_fail",
    "cx_total",
    "rq_active",
    "rq_error",
    "rq_total",
];

/// `HOST:PORT` of an address, as Envoy prints it.
pub fn address_string(address: Option<&Address>) -> String {
    match address.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => {
            let port = match &s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => p.to_string(),
                Some(socket_address::PortSpecifier::NamedPort(p)) => p.clone(),
                None => "0".to_owned(),
            };
            if s.address.contains(':') {
                format!("[{}]:{port}", s.address)
            } else {
                format!("{}:{port}", s.address)
            }
        }
        Some(address::Address::Pipe(p)) => format!("unix://{}", p.path),
        _ => String::new(),
    }
}

/// Envoy's `health_flags` for an EDS health status.
fn health_flags(status: i32) -> &'static str {
    match HealthStatus::try_from(status) {
        Ok(HealthStatus::Unhealthy | HealthStatus::Timeout) => "/failed_eds_health",
        Ok(HealthStatus::Draining) => "/eds_status_draining",
        Ok(HealthStatus::Degraded) => "/degraded_eds_health",
        _ => "healthy",
    }
}

/// Every active cluster with its hosts, as Envoy's admin proto.
pub fn cluster_statuses(tracker: &Tracker) -> Clusters {
    let values: BTreeMap<String, u64> = tracker.stats().counters().into_iter().collect();
    tracker.with_state(|state| {
        let mut statuses = Vec::new();
        for (name, slot) in state.slots(Kind::Cluster) {
            let Some(entry) = &slot.active else { continue };
            let Domain::Cluster(config) = &entry.domain else {
                continue;
            };
            let eds = config.eds_service_name().map(str::to_owned);
            let assignment: Option<ClusterLoadAssignment> = match &eds {
                Some(service) => state
                    .slots(Kind::Endpoint)
                    .get(service)
                    .and_then(|s| s.active.as_ref())
                    .and_then(|e| unpack(&e.raw).ok()),
                None => unpack::<Cluster>(&entry.raw)
                    .ok()
                    .and_then(|c| c.load_assignment),
            };
            let mut hosts = Vec::new();
            for locality in assignment.iter().flat_map(|a| a.endpoints.iter()) {
                for lb in &locality.lb_endpoints {
                    let Some(HostIdentifier::Endpoint(endpoint)) = &lb.host_identifier else {
                        continue;
                    };
                    let addr = address_string(endpoint.address.as_ref());
                    let stats = HOST_STATS
                        .iter()
                        .map(|stat| SimpleMetric {
                            r#type: 0,
                            value: values
                                .get(&format!("cluster.{name}.host.{addr}.{stat}"))
                                .copied()
                                .unwrap_or(0),
                            name: (*stat).to_owned(),
                        })
                        .collect();
                    hosts.push(HostStatus {
                        address: endpoint.address.clone(),
                        stats,
                        health_status: Some(HostHealthStatus {
                            eds_health_status: lb.health_status,
                            ..Default::default()
                        }),
                        weight: lb.load_balancing_weight.as_ref().map_or(1, |w| w.value),
                        hostname: endpoint.hostname.clone(),
                        priority: locality.priority,
                        locality: locality.locality.clone(),
                        ..Default::default()
                    });
                }
            }
            statuses.push(ClusterStatus {
                name: name.clone(),
                added_via_api: slot.origin == Origin::Dynamic,
                host_statuses: hosts,
                observability_name: name.clone(),
                eds_service_name: eds.unwrap_or_default(),
                ..Default::default()
            });
        }
        Clusters {
            cluster_statuses: statuses,
        }
    })
}

/// Envoy's text format.
pub fn render_text(clusters: &Clusters) -> String {
    let mut out = String::new();
    for cluster in &clusters.cluster_statuses {
        let name = &cluster.name;
        let _ = writeln!(
            out,
            "{name}::observability_name::{}",
            cluster.observability_name
        );
        let _ = writeln!(out, "{name}::added_via_api::{}", cluster.added_via_api);
        if !cluster.eds_service_name.is_empty() {
            let _ = writeln!(
                out,
                "{name}::eds_service_name::{}",
                cluster.eds_service_name
            );
        }
        for host in &cluster.host_statuses {
            let addr = address_string(host.address.as_ref());
            for stat in &host.stats {
                let _ = writeln!(out, "{name}::{addr}::{}::{}", stat.name, stat.value);
            }
            let locality = host.locality.clone().unwrap_or_default();
            let eds = host
                .health_status
                .as_ref()
                .map_or(0, |h| h.eds_health_status);
            let _ = writeln!(out, "{name}::{addr}::hostname::{}", host.hostname);
            let _ = writeln!(out, "{name}::{addr}::health_flags::{}", health_flags(eds));
            let _ = writeln!(out, "{name}::{addr}::weight::{}", host.weight);
            let _ = writeln!(out, "{name}::{addr}::region::{}", locality.region);
            let _ = writeln!(out, "{name}::{addr}::zone::{}", locality.zone);
            let _ = writeln!(out, "{name}::{addr}::sub_zone::{}", locality.sub_zone);
            let _ = writeln!(out, "{name}::{addr}::canary::false");
            let _ = writeln!(out, "{name}::{addr}::priority::{}", host.priority);
            let _ = writeln!(out, "{name}::{addr}::success_rate::-1");
            let _ = writeln!(out, "{name}::{addr}::local_origin_success_rate::-1");
        }
    }
    out
}

/// `?format=json`.
pub fn render_json(clusters: &Clusters) -> Result<serde_json::Value, JsonError> {
    xds_proto::json::to_value(clusters)
}
