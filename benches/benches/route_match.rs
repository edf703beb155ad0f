//! Criterion micro-benchmark of the hot path's first step: choosing a virtual host and a route.
//!
//! The table is shaped like the outbound route configuration Istio sends a sidecar for one port
//! (`"9080"`): one virtual host per service with all of its names (short, namespaced, FQDN,
//! with and without the port), the VirtualService's matches (headers, prefixes, a regex) in
//! front of a default route. `cargo bench -p ferry-benches --bench route_match`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_proxy::route::{RequestHead, RouteTable};
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{Value, json};
use xds_proto::envoy::config::route::v3::RouteConfiguration;

/// Services in the table; a mid-sized mesh.
const SERVICES: usize = 200;

fn virtual_host(i: usize) -> Value {
    let name = format!("svc{i}");
    let fqdn = format!("{name}.default.svc.cluster.local");
    let cluster = |subset: &str| format!("outbound|9080|{subset}|{fqdn}");
    json!({
        "name": format!("{fqdn}:9080"),
        "domains": [
            fqdn, format!("{fqdn}:9080"), name, format!("{name}:9080"),
            format!("{name}.default"), format!("{name}.default:9080"),
            format!("{name}.default.svc"), format!("{name}.default.svc:9080"),
            format!("10.0.{}.{}", i / 250, i % 250), format!("10.0.{}.{}:9080", i / 250, i % 250),
        ],
        "routes": [
            {"match": {"prefix": "/", "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]},
             "route": {"cluster": cluster("v2")}},
            {"match": {"prefix": "/api/v2/"}, "route": {"cluster": cluster("v2"), "prefix_rewrite": "/api/"}},
            {"match": {"safe_regex": {"regex": "/products/[0-9]+/reviews"}}, "route": {"cluster": cluster("v3")}},
            {"match": {"prefix": "/"},
             "route": {"weighted_clusters": {"clusters": [
                 {"name": cluster("v1"), "weight": 80}, {"name": cluster("v2"), "weight": 20}]}}},
        ],
    })
}

fn table() -> RouteTable {
    let mut virtual_hosts: Vec<Value> = (0..SERVICES).map(virtual_host).collect();
    virtual_hosts.push(json!({"name": "allow_any", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster"}}]}));
    let config = json!({"name": "9080", "virtual_hosts": virtual_hosts});
    let proto: RouteConfiguration =
        xds_proto::json::from_value(config).expect("valid route config");
    RouteTable::try_from(&proto).expect("ferry-proxy accepts the table")
}

fn bench(c: &mut Criterion) {
    let table = table();
    let plain = HeaderMap::new();
    let mut jason = HeaderMap::new();
    jason.insert("end-user", HeaderValue::from_static("jason"));
    let get = Method::GET;
    let head = |authority, path_and_query, headers| RequestHead {
        method: &get,
        scheme: "http",
        authority,
        path_and_query,
        headers,
    };
    let cases = [
        (
            "fqdn default route",
            head(
                "svc150.default.svc.cluster.local:9080",
                "/index.html",
                &plain,
            ),
        ),
        ("short name header match", head("svc7", "/", &jason)),
        (
            "regex route",
            head("svc99:9080", "/products/42/reviews", &plain),
        ),
        ("unknown host passthrough", head("example.com", "/", &plain)),
    ];
    let mut group = c.benchmark_group("route_match");
    for (name, request) in &cases {
        assert!(table.route(request).is_some(), "{name} must match a route");
        group.bench_function(*name, |b| {
            b.iter(|| black_box(table.route(black_box(request)).is_some()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
