//! `/clusters`: every active cluster and its hosts in Envoy's text format
//! (`NAME::HOST:PORT::health_flags::healthy`), or `?format=json` as `envoy.admin.v3.Clusters`.
//! Hosts and their counters come from the live cluster runtime of the snapshot in force, so
//! DNS-resolved and ORIGINAL_DST hosts show up as they are used.

use std::fmt::Write as _;
use std::net::SocketAddr;

use xds_proto::envoy::admin::v3::{
    ClusterStatus, Clusters, HostHealthStatus, HostStatus, SimpleMetric,
};
use xds_proto::envoy::config::core::v3::{
    Address, HealthStatus as HealthProto, SocketAddress, address, socket_address,
};
use xds_proto::json::JsonError;

use crate::cluster::{HealthStatus, Host, HostEntry};
use crate::xds::Tracker;
use crate::xds::resources::Kind;
use crate::xds::state::Origin;

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

/// A `socket_address` for a bound address.
pub fn socket_address(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

fn health_proto(health: HealthStatus) -> HealthProto {
    match health {
        HealthStatus::Unknown => HealthProto::Unknown,
        HealthStatus::Healthy => HealthProto::Healthy,
        HealthStatus::Unhealthy => HealthProto::Unhealthy,
        HealthStatus::Draining => HealthProto::Draining,
        HealthStatus::Timeout => HealthProto::Timeout,
        HealthStatus::Degraded => HealthProto::Degraded,
    }
}

/// Envoy's `health_flags` for an EDS health status.
fn health_flags(status: i32) -> &'static str {
    match HealthProto::try_from(status) {
        Ok(HealthProto::Unhealthy | HealthProto::Timeout) => "/failed_eds_health",
        Ok(HealthProto::Draining) => "/eds_status_draining",
        Ok(HealthProto::Degraded) => "/degraded_eds_health",
        _ => "healthy",
    }
}

fn host_status(host: &Host, entry: Option<&HostEntry>) -> HostStatus {
    let stats = host.stats();
    let metric = |name: &str, value: u64| SimpleMetric {
        r#type: 0,
        value,
        name: name.to_owned(),
    };
    let health = entry.map_or(HealthStatus::Unknown, |e| e.health);
    HostStatus {
        address: Some(socket_address(host.address())),
        stats: vec![
            metric("cx_active", stats.cx_active.get()),
            metric("cx_total", stats.cx_total.get()),
            metric("rq_active", stats.rq_active.get()),
            metric("rq_error", stats.rq_error.get()),
            metric("rq_total", stats.rq_total.get()),
        ],
        health_status: Some(HostHealthStatus {
            eds_health_status: health_proto(health) as i32,
            ..Default::default()
        }),
        weight: entry.map_or(1, |e| e.weight),
        hostname: host.hostname().to_owned(),
        priority: entry.map_or(0, |e| e.priority),
        locality: entry.map(|e| xds_proto::envoy::config::core::v3::Locality {
            region: e.locality.region.clone(),
            zone: e.locality.zone.clone(),
            sub_zone: e.locality.sub_zone.clone(),
        }),
        ..Default::default()
    }
}

/// Every active cluster with its hosts, as Envoy's admin proto.
pub fn cluster_statuses(tracker: &Tracker) -> Clusters {
    let snapshot = tracker.store().load();
    let dynamic: std::collections::BTreeSet<String> = tracker.with_state(|state| {
        state
            .slots(Kind::Cluster)
            .iter()
            .filter(|(_, slot)| slot.origin == Origin::Dynamic)
            .map(|(name, _)| name.clone())
            .collect()
    });
    let cluster_statuses = snapshot
        .clusters
        .iter()
        .map(|(name, cluster)| {
            let set = cluster.host_set();
            let mut hosts: Vec<HostStatus> = set
                .entries()
                .iter()
                .map(|entry| host_status(&entry.host, Some(entry)))
                .collect();
            if hosts.is_empty() {
                // ORIGINAL_DST hosts exist only as connections make them.
                hosts = cluster
                    .hosts()
                    .iter()
                    .map(|h| host_status(h, None))
                    .collect();
            }
            ClusterStatus {
                name: name.clone(),
                added_via_api: dynamic.contains(name),
                host_statuses: hosts,
                observability_name: name.clone(),
                eds_service_name: cluster
                    .config
                    .eds_service_name()
                    .unwrap_or_default()
                    .to_owned(),
                ..Default::default()
            }
        })
        .collect();
    Clusters { cluster_statuses }
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
