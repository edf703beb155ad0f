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

#[test]
fn rules_keep_their_identity_and_resolve_short_host_names() {
    let model = mesh();
    assert_eq!(model.virtual_services.len(), 2);
    let ratings = &model.virtual_services[0];
    assert_eq!(
        (ratings.name.as_str(), ratings.namespace.as_str()),
        ("ratings", "default")
    );
    assert_eq!(ratings.origin, "istio.yaml#2");
    assert_eq!(ratings.spec.hosts, ["ratings.default.svc.cluster.local"]);
    let http = &ratings.spec.http[0];
    assert_eq!(
        http.route[0].destination.host,
        "ratings.default.svc.cluster.local"
    );
    assert_eq!(
        http.mirror.as_ref().map(|m| m.host.as_str()),
        Some("details.default.svc.cluster.local")
    );
    assert_eq!(
        ratings.spec.tcp[0].route[0].destination.host,
        "api.example.com"
    );

    let reviews = &model.virtual_services[1];
    assert_eq!(reviews.spec.hosts, ["reviews.default.svc.cluster.local"]);
    let hosts: Vec<&str> = reviews.spec.http[0]
        .route
        .iter()
        .map(|r| r.destination.host.as_str())
        .collect();
    assert_eq!(hosts, ["reviews.default.svc.cluster.local"; 2]);
    assert_eq!(model.destination_rules.len(), 1);
    assert_eq!(
        model.destination_rules[0].spec.host,
        "reviews.default.svc.cluster.local"
    );
    assert_eq!(model.destination_rules[0].spec.subsets.len(), 3);
    assert_eq!(model.sidecars.len(), 1);
    assert_eq!(model.peer_authentications.len(), 1);
    assert_eq!(model.authorization_policies.len(), 1);
    assert_eq!(model.service_entries.len(), 3);
    assert_eq!(model.workload_entries.len(), 1);
}

#[test]
fn service_entry_with_dns_resolves_its_host() {
    let model = mesh();
    let api = service(&model, "api.example.com");
    assert_eq!(api.resolution, Resolution::Dns);
    assert!(api.mesh_external);
    assert!(api.addresses.is_empty());
    assert_eq!(api.ports[0].protocol, Protocol::Https);
    assert_eq!(api.endpoints.len(), 1);
    assert_eq!(api.endpoints[0].address, "api.example.com");
    assert_eq!(api.endpoints[0].ports, ports(&[("https", 443)]));
}

#[test]
fn static_service_entries_with_workload_entries_and_inline_endpoints() {
    let model = mesh();
    let db = service(&model, "db.legacy.internal");
    assert_eq!(db.resolution, Resolution::Static);
    assert!(!db.mesh_external);
    assert_eq!(db.addresses, ["240.0.0.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(db.ports[0].protocol, Protocol::Tcp);
    assert_eq!(db.endpoints.len(), 1, "{:#?}", db.endpoints);
    let vm = endpoint(db, "10.1.0.5");
    assert_eq!(vm.ports, ports(&[("tcp-postgres", 15432)]));
    assert_eq!(vm.service_account.as_deref(), Some("legacy-db"));
    assert_eq!(vm.locality, "us-east1/us-east1-c");
    assert_eq!(vm.weight, 3);
    assert_eq!(vm.labels["version"], "v9");

    for host in ["payments.internal", "payments-backup.internal"] {
        let payments = service(&model, host);
        assert_eq!(payments.namespace, "default");
        assert_eq!(payments.ports[0].target_port, Some(9443));
        assert_eq!(
            endpoint(payments, "10.2.0.1").ports,
            ports(&[("http-pay", 9443)])
        );
        assert_eq!(
            endpoint(payments, "10.2.0.2").ports,
            ports(&[("http-pay", 9444)])
        );
        assert_eq!(endpoint(payments, "10.2.0.1").weight, 1);
    }
}

#[test]
fn a_refused_rule_is_reported_and_the_rest_is_kept() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
        metadata: {name: bad}\nspec: {hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: nope}}]}]}\n\
        ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
        metadata: {name: reviews}\nspec: {host: reviews, circuitBreaker: {}}\n\
        ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n\
        metadata: {name: good, namespace: prod}\n\
        spec: {hosts: [reviews, reviews.default], tcp: [{route: [{destination: {host: reviews.default}}]}]}\n\
        ---\napiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{port: 80}]}\n";
    let (model, errors) = ferry_control::source::dir::model_from_yaml(yaml, "inline.yaml");
    let fields: Vec<(&str, &str)> = errors
        .iter()
        .map(|e| (e.origin.as_str(), e.field.as_str()))
        .collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        fields.contains(&("inline.yaml#0", "spec.http[0].route[0].destination.subset")),
        "{fields:?}"
    );
    assert!(
        errors[1].to_string().contains("circuitBreaker"),
        "{}",
        errors[1]
    );
    assert_eq!(model.virtual_services.len(), 1);
    assert_eq!(
        model.virtual_services[0].spec.hosts,
        [
            "reviews.prod.svc.cluster.local",
            "reviews.default.svc.cluster.local"
        ]
    );
    let tcp = &model.virtual_services[0].spec.tcp[0];
    assert_eq!(
        tcp.route[0].destination.host,
        "reviews.default.svc.cluster.local"
    );
    assert!(
        model
            .services
            .contains_key("reviews.default.svc.cluster.local")
    );
}

#[test]
fn headless_external_name_and_broken_services() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\n\
        spec: {clusterIP: None, selector: {app: db}, ports: [{name: tcp, port: 5432}]}\n\
        ---\napiVersion: v1\nkind: Service\nmetadata: {name: ext}\n\
        spec: {type: ExternalName, externalName: example.com, ports: [{name: https, port: 443}]}\n\
        ---\napiVersion: v1\nkind: Service\nmetadata: {name: badip}\nspec: {clusterIP: 10.0.0.300}\n\
        ---\napiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {}\n";
    let (model, errors) = ferry_control::source::dir::model_from_yaml(yaml, "k.yaml");
    let db = service(&model, "db.default.svc.cluster.local");
    assert_eq!(db.resolution, Resolution::Passthrough);
    assert!(db.addresses.is_empty());
    let ext = service(&model, "ext.default.svc.cluster.local");
    assert_eq!(ext.resolution, Resolution::Dns);
    assert!(ext.mesh_external);
    assert_eq!(ext.endpoints[0].address, "example.com");
    assert!(
        !model
            .services
            .contains_key("badip.default.svc.cluster.local")
    );
    let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{reasons:#?}");
    assert!(
        reasons[0].starts_with("k.yaml#2 Service default/badip: spec.clusterIP:"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("duplicate object, already defined at k.yaml#0"),
        "{reasons:?}"
    );
}

#[test]
fn service_entry_hosts_do_not_override_services_and_cidrs_are_refused() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{port: 80}]}\n\
        ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: clash}\n\
        spec: {hosts: [reviews.default.svc.cluster.local, other.example.com], resolution: DNS, \
        ports: [{number: 80, name: http, protocol: HTTP}]}\n\
        ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: range}\n\
        spec: {hosts: [range.example.com], addresses: [10.9.0.0/16], resolution: NONE, \
        ports: [{number: 80, name: tcp, protocol: TCP}]}\n";
    let (model, errors) = ferry_control::source::dir::model_from_yaml(yaml, "se.yaml");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(
        service(&model, "reviews.default.svc.cluster.local").name,
        "reviews"
    );
    assert_eq!(
        service(&model, "other.example.com").endpoints[0].address,
        "other.example.com"
    );
    assert!(!model.services.contains_key("range.example.com"));
    assert!(
        errors.iter().any(|e| e.field == "spec.addresses[0]"),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.field == "spec.hosts" && e.reason.contains("already defined"))
    );
}

#[test]
fn subsets_are_checked_against_resolved_hosts() {
    // `reviews.default` from namespace prod names the same service as `reviews` in default.
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
        metadata: {name: reviews, namespace: default}\nspec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}\n\
        ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: prod}\n\
        spec: {hosts: [reviews.default], http: [{route: [{destination: {host: reviews.default, subset: v1}}]}]}\n\
        ---\napiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n";
    let (model, errors) = ferry_control::source::dir::model_from_yaml(yaml, "x.yaml");
    assert!(errors.is_empty(), "{errors:#?}");
    let route = &model.virtual_services[0].spec.http[0].route[0];
    assert_eq!(route.destination.host, "reviews.default.svc.cluster.local");
    assert_eq!(route.destination.subset.as_deref(), Some("v1"));
}

#[test]
fn the_local_mesh_sample_builds_a_clean_model() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/local-mesh");
    let (model, errors) = model_from_dir(&dir).expect("samples/local-mesh");
    assert!(errors.is_empty(), "{errors:#?}");
    let reviews = service(&model, "reviews.default.svc.cluster.local");
    let addresses: Vec<&str> = reviews
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(addresses, ["127.0.0.2", "127.0.0.3"]);
    assert_eq!(model.virtual_services.len(), 1);
    assert_eq!(model.destination_rules.len(), 1);
}
