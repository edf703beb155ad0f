use xds_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;

use super::*;

fn parse(yaml: &str) -> Result<LoadAssignment, InvalidCluster> {
    let proto: ClusterLoadAssignment =
        xds_proto::json::from_yaml_str(yaml).expect("valid CLA YAML");
    LoadAssignment::try_from(&proto)
}

/// An EDS response as istiod sends it for two pods, one injected and one not.
const ISTIO_EDS: &str = r#"
cluster_name: outbound|9080||reviews.default.svc.cluster.local
endpoints:
- locality: { region: us-east1, zone: us-east1-b }
  load_balancing_weight: 2
  lb_endpoints:
  - endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 9080 } } }
    health_status: HEALTHY
    metadata:
      filter_metadata:
        envoy.transport_socket_match: { tlsMode: istio }
        istio: { workload: "reviews-v1;default;reviews;v1;Kubernetes" }
    load_balancing_weight: 1
  - endpoint: { address: { socket_address: { address: 10.0.0.2, port_value: 9080 } } }
    health_status: DRAINING
    load_balancing_weight: 3
- locality: { region: us-west1 }
  priority: 1
  lb_endpoints:
  - endpoint: { address: { socket_address: { address: "::1", port_value: 9080 } }, hostname: pod-c }
policy: { overprovisioning_factor: 200 }
"#;

#[test]
fn istio_eds_is_accepted() {
    let la = parse(ISTIO_EDS).unwrap();
    assert_eq!(
        la.cluster_name,
        "outbound|9080||reviews.default.svc.cluster.local"
    );
    assert_eq!(la.overprovisioning_factor, 200);
    assert_eq!(la.localities.len(), 2);
    let first = &la.localities[0];
    assert_eq!(first.weight, Some(2));
    assert_eq!(first.priority, 0);
    assert_eq!(first.locality.zone, "us-east1-b");
    let a = &first.endpoints[0];
    assert_eq!(
        a.address,
        EndpointAddress::Ip("10.0.0.1:9080".parse().unwrap())
    );
    assert_eq!(a.health, HealthStatus::Healthy);
    assert_eq!(
        a.transport_socket_match.get("tlsMode").map(String::as_str),
        Some("istio")
    );
    let b = &first.endpoints[1];
    assert_eq!(b.weight, 3);
    assert!(!b.health.is_healthy());
    let c = &la.localities[1].endpoints[0];
    assert_eq!(
        c.address,
        EndpointAddress::Ip("[::1]:9080".parse().unwrap())
    );
    assert_eq!(c.hostname, "pod-c");
    assert_eq!(c.weight, 1);
    assert_eq!(la.localities[1].priority, 1);
}

#[test]
fn default_overprovisioning_factor_is_140() {
    let la = parse("cluster_name: a").unwrap();
    assert_eq!(la.overprovisioning_factor, 140);
    assert!(la.localities.is_empty());
}

#[test]
fn health_statuses() {
    assert!(HealthStatus::Unknown.is_healthy());
    assert!(HealthStatus::Healthy.is_healthy());
    assert!(HealthStatus::Degraded.is_healthy());
    assert!(!HealthStatus::Unhealthy.is_healthy());
    assert!(!HealthStatus::Draining.is_healthy());
    assert!(!HealthStatus::Timeout.is_healthy());
}

#[test]
fn invalid_assignments_are_refused_by_field() {
    let ep = |addr: &str| {
        format!(
            "cluster_name: c\nendpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {addr} }} }} ] }} ]"
        )
    };
    let cases = [
        (ep("{ socket_address: { address: reviews, port_value: 1 } }"), "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"),
        (ep("{ socket_address: { address: 10.0.0.1, port_value: 70000 } }"), "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value"),
        (ep("{ socket_address: { address: 10.0.0.1, named_port: http } }"), "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.named_port"),
        (ep("{ socket_address: { address: 10.0.0.1, port_value: 1, protocol: UDP } }"), "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.protocol"),
        (ep("{ pipe: { path: /tmp/x } }"), "endpoints[0].lb_endpoints[0].endpoint.address.pipe"),
        ("cluster_name: c\nendpoints: [ { lb_endpoints: [ { endpoint_name: x } ] } ]".to_owned(), "endpoints[0].lb_endpoints[0].endpoint_name"),
        ("cluster_name: c\nendpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 1 } } }, load_balancing_weight: 0 } ] } ]".to_owned(), "endpoints[0].lb_endpoints[0].load_balancing_weight"),
        ("cluster_name: c\nendpoints: [ { load_balancing_weight: 0 } ]".to_owned(), "endpoints[0].load_balancing_weight"),
        ("cluster_name: c\npolicy: { overprovisioning_factor: 0 }".to_owned(), "policy.overprovisioning_factor"),
        ("cluster_name: c\npolicy: { drop_overloads: [ { category: x, drop_percentage: { numerator: 1 } } ] }".to_owned(), "policy.drop_overloads"),
        ("cluster_name: c\nendpoints: [ { lb_endpoints: [ {} ] } ]".to_owned(), "endpoints[0].lb_endpoints[0].endpoint"),
    ];
    for (yaml, field) in cases {
        let err = parse(&yaml).expect_err(&yaml);
        assert_eq!(err.field, field, "{yaml}: {err}");
        assert_eq!(err.name, "c");
    }
}
