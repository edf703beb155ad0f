//! The model built from testdata/mesh (a Bookinfo-like config dir): services, ports and
//! protocols, endpoints from EndpointSlices and from Pods, localities and service accounts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ferry_control::model::{Endpoint, Model, Protocol, Resolution, Service};
use ferry_control::source::dir::model_from_dir;

fn mesh_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/mesh")
}

fn mesh() -> Model {
    let (model, errors) = model_from_dir(&mesh_dir()).expect("testdata/mesh is readable");
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
    model
}

fn service<'a>(model: &'a Model, host: &str) -> &'a Service {
    model
        .services
        .get(host)
        .unwrap_or_else(|| panic!("no service {host}: {:?}", model.services.keys()))
}

fn endpoint<'a>(svc: &'a Service, address: &str) -> &'a Endpoint {
    svc.endpoints
        .iter()
        .find(|e| e.address == address)
        .unwrap_or_else(|| panic!("no endpoint {address} in {:#?}", svc.endpoints))
}

fn ports(pairs: &[(&str, u16)]) -> BTreeMap<String, u16> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn kubernetes_services_with_fqdn_cluster_ip_and_ports() {
    let model = mesh();
    let hosts: Vec<&str> = model.services.keys().map(String::as_str).collect();
    for host in [
        "details.default.svc.cluster.local",
        "productpage.default.svc.cluster.local",
        "ratings.default.svc.cluster.local",
        "reviews.default.svc.cluster.local",
    ] {
        assert!(hosts.contains(&host), "{host} missing from {hosts:?}");
    }
    let reviews = service(&model, "reviews.default.svc.cluster.local");
    assert_eq!(reviews.name, "reviews");
    assert_eq!(reviews.namespace, "default");
    assert_eq!(reviews.addresses, ["10.96.0.11".parse::<IpAddr>().unwrap()]);
    assert_eq!(reviews.resolution, Resolution::Static);
    assert!(!reviews.mesh_external);
    assert_eq!(reviews.ports.len(), 1);
    assert_eq!(reviews.ports[0].port, 9080);
    assert_eq!(reviews.ports[0].target_port, Some(9080));
    assert_eq!(reviews.ports[0].protocol, Protocol::Http);
    assert_eq!(
        model.namespaces["default"].labels["istio-injection"],
        "enabled"
    );
}

#[test]
fn protocols_are_inferred_and_udp_ports_left_out() {
    let model = mesh();
    let details = service(&model, "details.default.svc.cluster.local");
    let protocols: Vec<(&str, u16, Option<u16>, Protocol)> = details
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.port, p.target_port, p.protocol))
        .collect();
    assert_eq!(
        protocols,
        [
            ("web", 9080, Some(9080), Protocol::Http),
            ("grpc-status", 9090, Some(19090), Protocol::Grpc),
            ("metrics", 15020, Some(15020), Protocol::Unknown),
        ]
    );
}

#[test]
fn endpoints_from_endpoint_slices_carry_pod_identity_and_locality() {
    let model = mesh();
    let reviews = service(&model, "reviews.default.svc.cluster.local");
    assert_eq!(reviews.endpoints.len(), 3);
    let v1 = endpoint(reviews, "10.0.0.21");
    assert_eq!(v1.labels["version"], "v1");
    assert_eq!(v1.service_account.as_deref(), Some("bookinfo-reviews"));
    assert_eq!(v1.locality, "us-east1/us-east1-b");
    assert_eq!(v1.ports, ports(&[("http", 9080)]));
    assert!(v1.ready);
    assert_eq!(v1.weight, 1);
    assert_eq!(
        endpoint(reviews, "10.0.0.22").locality,
        "us-west1/us-west1-a"
    );
    let v3 = endpoint(reviews, "10.0.0.23");
    assert!(!v3.ready, "the slice says not ready");
    assert_eq!(v3.locality, "/us-central1-c", "zone from the slice");
}

#[test]
fn endpoints_from_selected_pods_when_no_endpoint_slice() {
    let model = mesh();
    let ratings = service(&model, "ratings.default.svc.cluster.local");
    // The Succeeded pod and the Pending pod without an IP are not endpoints.
    assert_eq!(ratings.endpoints.len(), 1, "{:#?}", ratings.endpoints);
    let ep = endpoint(ratings, "10.0.0.30");
    assert_eq!(
        ep.ports,
        ports(&[("http", 8080)]),
        "named targetPort resolved on the pod"
    );
    assert_eq!(ep.service_account.as_deref(), Some("bookinfo-ratings"));
    assert!(ep.ready);
    assert_eq!(ep.ports.len(), 1);
    assert_eq!(ratings.ports[0].target_port, None, "named target port");

    let details = service(&model, "details.default.svc.cluster.local");
    let ep = endpoint(details, "10.0.0.40");
    assert_eq!(
        ep.ports,
        ports(&[("web", 9080), ("grpc-status", 19090), ("metrics", 15020)])
    );
    assert_eq!(ep.service_account.as_deref(), Some("default"));
    let pp = service(&model, "productpage.default.svc.cluster.local");
    assert_eq!(pp.endpoints.len(), 1);
    assert_eq!(
        pp.endpoints[0].service_account.as_deref(),
        Some("bookinfo-productpage")
    );
}
