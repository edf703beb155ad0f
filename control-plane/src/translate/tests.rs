//! Behaviour tests of the translation on a hand-built Bookinfo model (the golden tests in
//! `tests/golden.rs` cover whole outputs from manifests).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use xds_proto::json::to_value;

use super::*;
use crate::model::{Config, Endpoint, Protocol, Resolution, Service, ServicePort};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn endpoint(ip: &str, app: &str, version: &str, sa: &str) -> Endpoint {
    Endpoint {
        address: ip.into(),
        ports: BTreeMap::new(),
        labels: labels(&[
            ("app", app),
            ("version", version),
            ("security.istio.io/tlsMode", "istio"),
        ]),
        service_account: Some(sa.into()),
        locality: "us-east1/us-east1-b".into(),
        weight: 1,
        ready: true,
    }
}

fn http_service(name: &str, vip: &str, endpoints: Vec<Endpoint>) -> Service {
    Service {
        hostname: format!("{name}.default.svc.cluster.local"),
        name: name.into(),
        namespace: "default".into(),
        addresses: vec![vip.parse().unwrap()],
        ports: vec![ServicePort {
            name: "http".into(),
            port: 9080,
            target_port: Some(9080),
            protocol: Protocol::Http,
        }],
        resolution: Resolution::Static,
        mesh_external: false,
        export_to: Vec::new(),
        endpoints,
    }
}

pub(crate) fn bookinfo() -> Model {
    let mut model = Model::default();
    let services = [
        http_service(
            "productpage",
            "10.96.0.10",
            vec![endpoint(
                "10.1.0.10",
                "productpage",
                "v1",
                "bookinfo-productpage",
            )],
        ),
        http_service(
            "reviews",
            "10.96.0.11",
            vec![
                endpoint("10.1.0.21", "reviews", "v1", "bookinfo-reviews"),
                endpoint("10.1.0.22", "reviews", "v2", "bookinfo-reviews"),
                endpoint("10.1.0.23", "reviews", "v3", "bookinfo-reviews"),
            ],
        ),
        http_service(
            "ratings",
            "10.96.0.12",
            vec![endpoint("10.1.0.30", "ratings", "v1", "bookinfo-ratings")],
        ),
    ];
    for s in services {
        model.services.insert(s.hostname.clone(), s);
    }
    model
}

pub(crate) fn config<T: serde::de::DeserializeOwned>(name: &str, yaml: &str) -> Config<T> {
    Config {
        name: name.into(),
        namespace: "default".into(),
        origin: format!("test/{name}"),
        spec: serde_yaml_ng::from_str(yaml).unwrap(),
    }
}

pub(crate) fn productpage() -> ProxyNode {
    ProxyNode {
        id: "sidecar~10.1.0.10~productpage-v1.default~default.svc.cluster.local".into(),
        kind: "sidecar".into(),
        ips: vec!["10.1.0.10".parse().unwrap()],
        pod: "productpage-v1".into(),
        namespace: "default".into(),
        labels: labels(&[("app", "productpage"), ("version", "v1")]),
        service_account: "bookinfo-productpage".into(),
    }
}

/// The productpage proxy, as if its pod ran in `namespace`.
fn productpage_in(namespace: &str) -> ProxyNode {
    ProxyNode {
        id: format!("sidecar~10.1.0.10~productpage-v1.{namespace}~{namespace}.svc.cluster.local"),
        namespace: namespace.into(),
        ..productpage()
    }
}

fn json_of<M: prost::Message + prost::Name>(items: &[M]) -> Vec<Value> {
    items.iter().map(|m| to_value(m).unwrap()).collect()
}

fn find<'a>(items: &'a [Value], key: &str, name: &str) -> &'a Value {
    items
        .iter()
        .find(|v| v[key] == name)
        .unwrap_or_else(|| panic!("no {name} in {items:#?}"))
}

fn vhost<'a>(routes: &'a [Value], config: &str, vhost: &str) -> &'a Value {
    let rc = find(routes, "name", config);
    rc["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vhost)
        .unwrap()
}

#[test]
fn plain_services_get_istio_names_and_defaults() {
    let out = generate(&bookinfo(), &productpage(), &Options::default());
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let clusters = json_of(&out.clusters);
    let names: Vec<&str> = clusters
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "BlackHoleCluster",
            "InboundPassthroughCluster",
            "PassthroughCluster",
            "inbound|9080||",
            "outbound|9080||productpage.default.svc.cluster.local",
            "outbound|9080||ratings.default.svc.cluster.local",
            "outbound|9080||reviews.default.svc.cluster.local",
        ]
    );
    let reviews = find(
        &clusters,
        "name",
        "outbound|9080||reviews.default.svc.cluster.local",
    );
    assert_eq!(reviews["type"], "EDS");
    assert_eq!(reviews["lb_policy"], "LEAST_REQUEST");
    assert_eq!(reviews["connect_timeout"], "10s");
    assert_eq!(
        reviews["eds_cluster_config"]["eds_config"]["ads"],
        json!({})
    );
    assert_eq!(
        reviews["circuit_breakers"]["thresholds"][0]["max_requests"],
        4294967295u32
    );
    assert_eq!(
        reviews["transport_socket_matches"][0]["name"],
        "tlsMode-istio"
    );
    let endpoints = json_of(&out.endpoints);
    let cla = find(
        &endpoints,
        "cluster_name",
        "outbound|9080||reviews.default.svc.cluster.local",
    );
    assert_eq!(
        cla["endpoints"][0]["lb_endpoints"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(cla["endpoints"][0]["locality"]["zone"], "us-east1-b");

    let listeners = json_of(&out.listeners);
    let names: Vec<&str> = listeners
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["0.0.0.0_9080", "virtualInbound", "virtualOutbound"]);
    let port = find(&listeners, "name", "0.0.0.0_9080");
    assert_eq!(port["bind_to_port"], false);
    let hcm = &port["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(hcm["rds"]["route_config_name"], "9080");

    let routes = json_of(&out.routes);
    let vh = vhost(&routes, "9080", "reviews.default.svc.cluster.local:9080");
    let domains: Vec<&str> = vh["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(domains.contains(&"reviews") && domains.contains(&"10.96.0.11:9080"));
    let route = &vh["routes"][0]["route"];
    assert_eq!(
        route["cluster"],
        "outbound|9080||reviews.default.svc.cluster.local"
    );
    assert_eq!(route["timeout"], "0s");
    assert_eq!(route["retry_policy"]["retry_on"], route::DEFAULT_RETRY_ON);
    assert_eq!(route["retry_policy"]["num_retries"], 2);
    vhost(&routes, "9080", "allow_any");
}

#[test]
fn canary_split_with_subsets() {
    let mut model = bookinfo();
    model.virtual_services.push(config(
        "reviews",
        r#"
hosts: [reviews]
http:
- route:
  - destination: {host: reviews, subset: v1}
    weight: 80
  - destination: {host: reviews, subset: v2}
    weight: 20
"#,
    ));
    model.destination_rules.push(config(
        "reviews",
        r#"
host: reviews
subsets:
- {name: v1, labels: {version: v1}}
- name: v2
  labels: {version: v2}
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
"#,
    ));
    let out = generate(&model, &productpage(), &Options::default());
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let routes = json_of(&out.routes);
    let vh = vhost(&routes, "9080", "reviews.default.svc.cluster.local:9080");
    let weighted = &vh["routes"][0]["route"]["weighted_clusters"]["clusters"];
    assert_eq!(
        weighted[0]["name"],
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
    assert_eq!(weighted[0]["weight"], 80);
    assert_eq!(weighted[1]["weight"], 20);
    let clusters = json_of(&out.clusters);
    let v2 = find(
        &clusters,
        "name",
        "outbound|9080|v2|reviews.default.svc.cluster.local",
    );
    assert_eq!(
        v2.get("lb_policy"),
        None,
        "ROUND_ROBIN is the proto default"
    );
    let v1 = find(
        &clusters,
        "name",
        "outbound|9080|v1|reviews.default.svc.cluster.local",
    );
    assert_eq!(v1["lb_policy"], "LEAST_REQUEST");
    let sni = &v1["transport_socket_matches"][0]["transport_socket"]["typed_config"]["sni"];
    assert_eq!(sni, "outbound_.9080_.v1_.reviews.default.svc.cluster.local");
    let endpoints = json_of(&out.endpoints);
    let cla = find(
        &endpoints,
        "cluster_name",
        "outbound|9080|v2|reviews.default.svc.cluster.local",
    );
    let lb = cla["endpoints"][0]["lb_endpoints"].as_array().unwrap();
    assert_eq!(lb.len(), 1);
    assert_eq!(
        lb[0]["endpoint"]["address"]["socket_address"]["address"],
        "10.1.0.22"
    );
}

#[test]
fn local_mode_is_an_explicit_http_proxy_on_the_instance_ip() {
    let mut proxy = productpage();
    proxy.ips = vec!["10.1.0.10".parse().unwrap()];
    let out = generate(&bookinfo(), &proxy, &Options::local_mesh());
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let listeners = json_of(&out.listeners);
    let names: Vec<&str> = listeners
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["virtualInbound", "virtualOutbound"]);
    let outbound = find(&listeners, "name", "virtualOutbound");
    assert_eq!(
        outbound["address"]["socket_address"]["address"],
        "10.1.0.10"
    );
    assert_eq!(outbound["address"]["socket_address"]["port_value"], 15001);
    let hcm = &outbound["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(hcm["rds"]["route_config_name"], "15001");
    let routes = json_of(&out.routes);
    assert_eq!(routes.len(), 1);
    let vh = vhost(&routes, "15001", "reviews.default.svc.cluster.local:9080");
    let domains = vh["domains"].as_array().unwrap();
    assert!(domains.contains(&json!("reviews:9080")));
    assert!(!domains.contains(&json!("reviews")));
    let clusters = json_of(&out.clusters);
    let reviews = find(
        &clusters,
        "name",
        "outbound|9080||reviews.default.svc.cluster.local",
    );
    assert_eq!(reviews.get("transport_socket_matches"), None);
    let inbound = find(&clusters, "name", "inbound|9080||");
    assert_eq!(
        inbound["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
            ["address"],
        "10.1.0.10"
    );
}

#[test]
fn unsupported_rule_is_refused_whole_and_reported() {
    let mut model = bookinfo();
    model.destination_rules.push(config(
        "reviews",
        r#"
host: reviews
trafficPolicy:
  tunnel: {targetHost: proxy, targetPort: 8080}
subsets: [{name: v1, labels: {version: v1}}]
"#,
    ));
    let out = generate(&model, &productpage(), &Options::default());
    assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
    assert!(out.errors[0].field.contains("tunnel"));
    assert!(out.clusters.iter().all(|c| !c.name.contains("|v1|")));
}

#[test]
fn subset_policy_overrides_field_by_field_and_port_level_does_not_inherit() {
    use crate::api::DestinationRule;
    let rule: Config<DestinationRule> = config(
        "reviews",
        r#"
host: reviews
trafficPolicy:
  loadBalancer: {simple: RANDOM}
  outlierDetection: {consecutive5xxErrors: 3}
subsets:
- name: v2
  labels: {version: v2}
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 5}}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: ROUND_ROBIN}
- name: v3
  labels: {version: v3}
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 7}}
"#,
    );
    let subsets = traffic_policy::subsets(&rule);
    let v3 = traffic_policy::effective(Some(&rule), &subsets[1], 9080);
    assert!(v3.load_balancer.is_some() && v3.outlier_detection.is_some());
    assert!(v3.connection_pool.is_some());
    // v2's port-level entry replaces everything on 9080: no outlier detection inherited.
    let v2 = traffic_policy::effective(Some(&rule), &subsets[0], 9080);
    assert!(v2.outlier_detection.is_none() && v2.connection_pool.is_none());
    assert_eq!(
        v2.load_balancer.and_then(|lb| lb.simple),
        Some(crate::api::destination_rule::SimpleLb::RoundRobin)
    );
    // On another port the subset's own fields apply over the rule's.
    let other = traffic_policy::effective(Some(&rule), &subsets[0], 8080);
    assert!(other.connection_pool.is_some() && other.outlier_detection.is_some());
}

#[test]
fn explicit_retries_split_status_codes_and_zero_attempts_disable() {
    let mut model = bookinfo();
    model.virtual_services.push(config(
        "ratings",
        r#"
hosts: [ratings]
http:
- match: [{uri: {prefix: /a}}]
  retries: {attempts: 3, perTryTimeout: 2s, retryOn: "gateway-error,503,429"}
  route: [{destination: {host: ratings}}]
- retries: {attempts: 0}
  route: [{destination: {host: ratings}}]
"#,
    ));
    let out = generate(&model, &productpage(), &Options::default());
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let routes = json_of(&out.routes);
    let vh = vhost(&routes, "9080", "ratings.default.svc.cluster.local:9080");
    let retry = &vh["routes"][0]["route"]["retry_policy"];
    assert_eq!(retry["retry_on"], "gateway-error,retriable-status-codes");
    assert_eq!(retry["retriable_status_codes"], json!([503, 429]));
    assert_eq!(retry["num_retries"], 3);
    assert_eq!(retry["per_try_timeout"], "2s");
    assert_eq!(vh["routes"][1]["route"].get("retry_policy"), None);
}

#[test]
fn rules_not_exported_to_the_proxy_namespace_do_not_apply_to_it() {
    let mut model = bookinfo();
    let mut vs: Config<crate::api::VirtualService> = config(
        "reviews",
        "hosts: [reviews]\nexportTo: [\".\"]\nhttp:\n- timeout: 7s\n  route:\n  - destination: {host: reviews}\n",
    );
    vs.namespace = "default".into();
    model.virtual_services.push(vs);
    model.destination_rules.push(config(
        "reviews",
        "host: reviews\nexportTo: [\".\"]\ntrafficPolicy:\n  loadBalancer: {simple: RANDOM}\n",
    ));
    let in_default = productpage();
    let elsewhere = productpage_in("web");

    let lb_and_timeout = |proxy: &ProxyNode| {
        let out = generate(&model, proxy, &Options::default());
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let clusters = json_of(&out.clusters);
        let cluster = find(
            &clusters,
            "name",
            "outbound|9080||reviews.default.svc.cluster.local",
        );
        let routes = json_of(&out.routes);
        let vh = vhost(&routes, "9080", "reviews.default.svc.cluster.local:9080");
        (
            cluster["lb_policy"].clone(),
            vh["routes"][0]["route"]["timeout"].clone(),
        )
    };
    // Exported to `.`: applies in its own namespace...
    assert_eq!(lb_and_timeout(&in_default), (json!("RANDOM"), json!("7s")));
    // ...and not to a proxy of another namespace, which gets Istio's defaults.
    let (lb, timeout) = lb_and_timeout(&elsewhere);
    assert_eq!(lb, json!("LEAST_REQUEST"));
    assert_ne!(timeout, json!("7s"));
}

#[test]
fn services_not_exported_to_the_proxy_namespace_are_invisible_to_it() {
    let mut model = bookinfo();
    let mut export = |host: &str, to: &[&str]| {
        let service = model
            .services
            .get_mut(&format!("{host}.default.svc.cluster.local"))
            .unwrap();
        service.export_to = to.iter().map(|e| e.to_string()).collect();
    };
    export("reviews", &["."]);
    export("ratings", &["web"]);
    export("productpage", &["~"]);
    let in_default = productpage();
    let in_web = productpage_in("web");

    let clusters = |proxy: &ProxyNode| {
        let out = generate(&model, proxy, &Options::default());
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let mut names: Vec<String> = out
            .clusters
            .iter()
            .map(|c| c.name.clone())
            .chain(
                out.endpoints
                    .iter()
                    .map(|e| format!("eds {}", e.cluster_name)),
            )
            .filter(|n| n.contains("|9080|"))
            .collect();
        names.sort();
        names
    };
    // `.`: its own namespace only; `web`: that namespace only (not even its own); `~`: nobody,
    // though the workload behind it still gets its inbound cluster.
    assert_eq!(
        clusters(&in_default),
        [
            "eds outbound|9080||reviews.default.svc.cluster.local",
            "inbound|9080||",
            "outbound|9080||reviews.default.svc.cluster.local",
        ]
    );
    assert_eq!(
        clusters(&in_web),
        [
            "eds outbound|9080||ratings.default.svc.cluster.local",
            "inbound|9080||",
            "outbound|9080||ratings.default.svc.cluster.local",
        ]
    );
}

#[test]
fn retry_budget_follows_istio_apply_retry_budget() {
    let mut model = bookinfo();
    model.destination_rules.push(config(
        "reviews",
        "host: reviews\ntrafficPolicy:\n  retryBudget: {percent: 5, minRetryConcurrency: 0, budgetInterval: 10s}\n",
    ));
    let out = generate(&model, &productpage(), &Options::default());
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let clusters = json_of(&out.clusters);
    let cluster = find(
        &clusters,
        "name",
        "outbound|9080||reviews.default.svc.cluster.local",
    );
    // 0 is proto3's unset: Istio's default 3; the interval passes through.
    assert_eq!(
        cluster["circuit_breakers"]["thresholds"][0]["retry_budget"],
        json!({
            "budget_percent": {"value": 5.0},
            "min_retry_concurrency": 3,
            "budget_interval": "10s",
        })
    );
}
