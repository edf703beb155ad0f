//! Criterion micro-benchmark of per-request header work: the route's header mutations (what an
//! Istio VirtualService's `headers: {request: {set, add, remove}}` becomes, at route and virtual
//! host level) on a realistic request and response, and `x-request-id` generation.
//! Each mutation case includes copying the header map, which is also measured on its own.
//! `cargo bench -p ferry-benches --bench header_handling`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_proxy::route::{RequestHead, RouteTable};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::json;
use xds_proto::envoy::config::route::v3::RouteConfiguration;

fn header(name: &str, value: &str) -> serde_json::Value {
    json!({"header": {"key": name, "value": value}})
}

fn table() -> RouteTable {
    let config = json!({
        "name": "9080",
        "virtual_hosts": [{
            "name": "reviews.default.svc.cluster.local:9080",
            "domains": ["reviews", "reviews:9080", "reviews.default.svc.cluster.local"],
            "request_headers_to_add": [header("x-mesh-vhost", "reviews")],
            "response_headers_to_remove": ["x-internal-debug"],
            "routes": [{
                "match": {"prefix": "/"},
                "route": {"cluster": "outbound|9080|v1|reviews.default.svc.cluster.local"},
                "request_headers_to_add": [
                    header("x-canary", "false"),
                    {"header": {"key": "x-env", "value": "prod"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                ],
                "request_headers_to_remove": ["x-debug", "cookie"],
                "response_headers_to_add": [
                    {"header": {"key": "cache-control", "value": "no-store"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                ],
            }],
        }],
    });
    let proto: RouteConfiguration =
        xds_proto::json::from_value(config).expect("valid route config");
    RouteTable::try_from(&proto).expect("ferry-proxy accepts the table")
}

/// A request as a browser-facing app sends it through a sidecar with tracing on.
fn request_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "reviews:9080"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("content-type", "application/json"),
        ("cookie", "session=6f1c0d2e; theme=dark"),
        ("x-request-id", "4b0a5c36-2a0d-4a7e-9d6f-5d3e1f6c7b8a"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "1"),
        ("x-forwarded-proto", "http"),
        ("x-debug", "1"),
    ] {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}

fn response_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("content-type", "application/json"),
        ("content-length", "358"),
        ("date", "Sat, 21 Nov 2026 16:00:00 GMT"),
        ("x-internal-debug", "cache=miss"),
        ("x-envoy-upstream-service-time", "3"),
    ] {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}

fn bench(c: &mut Criterion) {
    let table = table();
    let request = request_headers();
    let response = response_headers();
    let get = Method::GET;
    let head = RequestHead {
        method: &get,
        scheme: "http",
        authority: "reviews:9080",
        path_and_query: "/reviews/0",
        headers: &request,
    };
    let selected = table.route(&head).expect("the route matches");
    let mut group = c.benchmark_group("header_handling");
    group.bench_function("copy request headers", |b| {
        b.iter(|| black_box(black_box(&request).clone()))
    });
    group.bench_function("request mutations", |b| {
        b.iter(|| {
            let mut headers = black_box(&request).clone();
            table.mutate_request(&selected, None, &mut headers);
            black_box(headers)
        })
    });
    group.bench_function("response mutations", |b| {
        b.iter(|| {
            let mut headers = black_box(&response).clone();
            table.mutate_response(&selected, None, &mut headers);
            black_box(headers)
        })
    });
    group.bench_function("x-request-id", |b| {
        b.iter(|| black_box(ferry_proxy::http_connection_manager::uuid_v4()))
    });
    group.finish();
    let mut mutated = request.clone();
    table.mutate_request(&selected, None, &mut mutated);
    assert!(!mutated.contains_key("cookie") && mutated["x-env"] == "prod");
}

criterion_group!(benches, bench);
criterion_main!(benches);
