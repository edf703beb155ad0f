//! The runtime view of clusters that Envoy's admin `/clusters` prints: circuit breaker limits,
//! and every host with its counters, health, weight, locality and priority, in Envoy's text
//! format (`NAME::HOST:PORT::STAT::VALUE`). The admin server serves it; this module owns it
//! because only the cluster side knows the live host set and per-host counters.

use std::fmt::Write as _;

use super::runtime::{Cluster, ClusterSet};

/// Envoy's `health_flags` value for a host.
fn health_flags(health: super::HealthStatus) -> &'static str {
    use super::HealthStatus as H;
    match health {
        H::Unknown | H::Healthy => "healthy",
        H::Unhealthy | H::Timeout => "/failed_eds_health",
        H::Draining => "/eds_status_draining",
        H::Degraded => "/degraded_eds_health",
    }
}

/// Every cluster in `set`, in Envoy's `/clusters` text format.
pub fn render_text(set: &ClusterSet) -> String {
    let mut out = String::new();
    for (_, cluster) in set.iter() {
        write_cluster(&mut out, cluster);
    }
    out
}

fn write_cluster(out: &mut String, cluster: &Cluster) {
    let name = cluster.name();
    let _ = writeln!(
        out,
        "{name}::observability_name::{}",
        cluster.config.stat_name
    );
    let thresholds = &cluster.config.circuit_breakers.thresholds;
    for (label, high) in [("default_priority", false), ("high_priority", true)] {
        let t = thresholds.iter().find(|t| t.high_priority == high);
        let limits = [
            ("max_connections", t.map_or(1024, |t| t.max_connections)),
            (
                "max_pending_requests",
                t.map_or(1024, |t| t.max_pending_requests),
            ),
            ("max_requests", t.map_or(1024, |t| t.max_requests)),
            ("max_retries", t.map_or(3, |t| t.max_retries)),
        ];
        for (stat, value) in limits {
            let _ = writeln!(out, "{name}::{label}::{stat}::{value}");
        }
    }
    let set = cluster.host_set();
    let entries = set.entries();
    let on_demand;
    let hosts: Vec<(&super::Host, Option<&super::HostEntry>)> = if entries.is_empty() {
        on_demand = cluster.hosts();
        on_demand.iter().map(|h| (&**h, None)).collect()
    } else {
        entries.iter().map(|e| (&*e.host, Some(e))).collect()
    };
    for (host, entry) in hosts {
        let addr = host.address();
        for (stat, value) in host.stats().values() {
            let _ = writeln!(out, "{name}::{addr}::{stat}::{value}");
        }
        let _ = writeln!(out, "{name}::{addr}::hostname::{}", host.hostname());
        let health = entry.map_or("healthy", |e| health_flags(e.health));
        let _ = writeln!(out, "{name}::{addr}::health_flags::{health}");
        let _ = writeln!(
            out,
            "{name}::{addr}::weight::{}",
            entry.map_or(1, |e| e.weight)
        );
        let locality = entry.map(|e| &e.locality);
        let _ = writeln!(
            out,
            "{name}::{addr}::region::{}",
            locality.map_or("", |l| &l.region)
        );
        let _ = writeln!(
            out,
            "{name}::{addr}::zone::{}",
            locality.map_or("", |l| &l.zone)
        );
        let _ = writeln!(
            out,
            "{name}::{addr}::sub_zone::{}",
            locality.map_or("", |l| &l.sub_zone)
        );
        let _ = writeln!(out, "{name}::{addr}::canary::false");
        let _ = writeln!(
            out,
            "{name}::{addr}::priority::{}",
            entry.map_or(0, |e| e.priority)
        );
        let _ = writeln!(out, "{name}::{addr}::success_rate::-1");
        let _ = writeln!(out, "{name}::{addr}::local_origin_success_rate::-1");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use xds_proto::envoy::config::cluster::v3::Cluster as ProtoCluster;

    use super::*;
    use crate::cluster::{ClusterConfig, ClusterManager};

    #[test]
    fn renders_hosts_with_health_and_counters() {
        let proto: ProtoCluster = xds_proto::json::from_yaml_str(
            r#"
name: web
circuit_breakers: { thresholds: [ { max_connections: 7 } ] }
load_assignment:
  cluster_name: web
  endpoints:
  - locality: { zone: z1 }
    priority: 1
    lb_endpoints:
    - endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 80 } }, hostname: pod-a }
      health_status: DRAINING
      load_balancing_weight: 3
"#,
        )
        .unwrap();
        let config = Arc::new(ClusterConfig::try_from(&proto).unwrap());
        let manager = ClusterManager::default();
        let set = manager.update(
            &BTreeMap::from([("web".to_owned(), config)]),
            &BTreeMap::new(),
        );
        let text = render_text(&set);
        for line in [
            "web::default_priority::max_connections::7",
            "web::high_priority::max_retries::3",
            "web::10.0.0.1:80::cx_total::0",
            "web::10.0.0.1:80::rq_active::0",
            "web::10.0.0.1:80::hostname::pod-a",
            "web::10.0.0.1:80::health_flags::/eds_status_draining",
            "web::10.0.0.1:80::weight::3",
            "web::10.0.0.1:80::zone::z1",
            "web::10.0.0.1:80::priority::1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
