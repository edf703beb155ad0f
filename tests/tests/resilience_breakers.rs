//! Circuit breakers and mirroring end to end: the real ferry-proxy library started in-process
//! from a static bootstrap, real upstreams on loopback, a real HTTP client.
//!
//! Breakers: a gated upstream holds requests in flight (no timing assumptions), the test fills
//! each limit (`max_requests`, `max_connections`, `max_pending_requests`) exactly, and checks
//! that exactly the excess gets an immediate 503 with `x-envoy-overloaded: true` (flag UO,
//! counted in `upstream_rq_pending_overflow`) while the requests within the limits succeed once
//! the gate opens. Mirroring: shadows that hang or fail never slow or fail the original, each
//! `request_mirror_policies` entry gets its own copy with the body and a `-shadow` Host, and a
//! body over the buffer limit is not mirrored.

#![allow(clippy::unwrap_used)] // test setup: a failed unwrap is a failed test

use std::net::SocketAddr;

use bytes::Bytes;
use ferry_proxy::app::Running;
use ferry_tests::bootstrap::{
    http_listener_with, start_proxy as start, static_cluster_over, static_resources,
};
use ferry_tests::net::{self, Protocol, Reply};
use ferry_tests::poll::{PATIENCE, poll_until};
use ferry_tests::upstream::{Behaviour, Chaos, Upstream};
use http::{Method, StatusCode};

/// A STATIC cluster `name` over `endpoints` with `extra` fields (breakers...).
fn cluster(name: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    static_cluster_over(name, endpoints, &[extra])
}

/// One listener `http` routing everything to cluster `svc` with `route_extra` route-action
/// fields, plus `clusters`.
fn bootstrap(route_extra: &str, clusters: &[String]) -> String {
    bootstrap_with_routes(
        &format!(
            r#"{{ match: {{ prefix: "/" }}, route: {{ cluster: svc, timeout: 0s, {route_extra} }} }}"#
        ),
        clusters,
    )
}

/// One listener `http` with `routes` (a YAML flow list's items), plus `clusters`.
fn bootstrap_with_routes(routes: &str, clusters: &[String]) -> String {
    let listener = http_listener_with("http", "", &format!("[{routes}]"));
    static_resources(&[listener], clusters)
}

async fn send(proxy: SocketAddr, method: Method, body: Bytes) -> Reply {
    send_to(proxy, method, "/", body).await
}

async fn send_to(proxy: SocketAddr, method: Method, path: &str, body: Bytes) -> Reply {
    let mut request = net::request(method, "svc", path, &[]).expect("request");
    *request.body_mut() = body;
    net::send(proxy, Protocol::Http1, request)
        .await
        .expect("response")
}

fn spawn_get(proxy: SocketAddr) -> tokio::task::JoinHandle<Reply> {
    spawn_get_path(proxy, "/")
}

fn spawn_get_path(proxy: SocketAddr, path: &'static str) -> tokio::task::JoinHandle<Reply> {
    tokio::spawn(async move { send_to(proxy, Method::GET, path, Bytes::new()).await })
}

fn counter(proxy: &Running, cluster: &str, name: &str) -> u64 {
    proxy
        .stats
        .counter_value(&format!("cluster.{cluster}.{name}"))
}

fn gauge(proxy: &Running, cluster: &str, name: &str) -> i64 {
    proxy
        .stats
        .gauge_value(&format!("cluster.{cluster}.{name}"))
}

fn assert_overflow(reply: &Reply) {
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(reply.header("x-envoy-overloaded"), Some("true"));
    assert!(reply.text().contains("overflow"), "{}", reply.text());
}

fn breakers(max_connections: u32, max_pending: u32, max_requests: u32) -> String {
    format!(
        "circuit_breakers: {{ thresholds: [{{ max_connections: {max_connections}, max_pending_requests: {max_pending}, max_requests: {max_requests} }}] }}"
    )
}

#[tokio::test]
async fn requests_beyond_max_requests_get_an_immediate_503_uo_while_the_rest_succeed() {
    let (up, gate) = Upstream::gated("slow").await.unwrap();
    let yaml = bootstrap("", &[cluster("svc", &[up.addr], &breakers(1024, 1024, 3))]);
    let (proxy, addr) = start(&yaml).await;
    let held: Vec<_> = (0..3).map(|_| spawn_get(addr)).collect();
    poll_until("three requests at the upstream", PATIENCE, || async {
        (gate.arrived() == 3).then_some(())
    })
    .await;
    for _ in 0..4 {
        assert_overflow(&send(addr, Method::GET, Bytes::new()).await);
    }
    assert_eq!(counter(&proxy, "svc", "upstream_rq_pending_overflow"), 4);
    assert_eq!(gauge(&proxy, "svc", "circuit_breakers.default.rq_open"), 1);
    gate.open();
    for h in held {
        let reply = h.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "released");
    }
    assert_eq!(
        gate.arrived(),
        3,
        "overflowed requests never reached the upstream"
    );
    poll_until("the breaker closed", PATIENCE, || async {
        (gauge(&proxy, "svc", "circuit_breakers.default.rq_open") == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn requests_beyond_max_connections_wait_and_beyond_max_pending_requests_overflow() {
    let (up, gate) = Upstream::gated("slow").await.unwrap();
    let yaml = bootstrap("", &[cluster("svc", &[up.addr], &breakers(2, 2, 1024))]);
    let (proxy, addr) = start(&yaml).await;
    let mut held: Vec<_> = (0..2).map(|_| spawn_get(addr)).collect();
    poll_until("two requests on the two connections", PATIENCE, || async {
        (gate.arrived() == 2).then_some(())
    })
    .await;
    held.extend((0..2).map(|_| spawn_get(addr)));
    poll_until("two requests pending", PATIENCE, || async {
        (gauge(&proxy, "svc", "upstream_rq_pending_active") == 2).then_some(())
    })
    .await;
    for _ in 0..3 {
        assert_overflow(&send(addr, Method::GET, Bytes::new()).await);
    }
    assert_eq!(counter(&proxy, "svc", "upstream_rq_pending_overflow"), 3);
    assert_eq!(gate.arrived(), 2, "pending requests wait for a connection");
    gate.open();
    for h in held {
        assert_eq!(h.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(gate.arrived(), 4);
    assert_eq!(
        counter(&proxy, "svc", "upstream_cx_total"),
        2,
        "never more than max_connections"
    );
}

#[tokio::test]
async fn per_host_max_connections_queue_requests_on_the_hosts_connection() {
    let (up, gate) = Upstream::gated("slow").await.unwrap();
    let limits = "circuit_breakers: { thresholds: [{ max_pending_requests: 1 }], per_host_thresholds: [{ max_connections: 1 }] }";
    let yaml = bootstrap("", &[cluster("svc", &[up.addr], limits)]);
    let (proxy, addr) = start(&yaml).await;
    let held = vec![spawn_get(addr)];
    poll_until(
        "one request on the host's one connection",
        PATIENCE,
        || async { (gate.arrived() == 1).then_some(()) },
    )
    .await;
    let held: Vec<_> = held.into_iter().chain([spawn_get(addr)]).collect();
    poll_until("one request pending", PATIENCE, || async {
        (gauge(&proxy, "svc", "upstream_rq_pending_active") == 1).then_some(())
    })
    .await;
    assert_overflow(&send(addr, Method::GET, Bytes::new()).await);
    gate.open();
    for h in held {
        assert_eq!(h.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(counter(&proxy, "svc", "upstream_cx_total"), 1);
}

#[tokio::test]
async fn high_priority_routes_have_their_own_thresholds() {
    let (up, gate) = Upstream::gated("slow").await.unwrap();
    let thresholds = "circuit_breakers: { thresholds: [{ priority: DEFAULT, max_requests: 1 }, { priority: HIGH, max_requests: 2 }] }";
    let routes = r#"{ match: { prefix: "/high" }, route: { cluster: svc, timeout: 0s, priority: HIGH } }, { match: { prefix: "/" }, route: { cluster: svc, timeout: 0s } }"#;
    let yaml = bootstrap_with_routes(routes, &[cluster("svc", &[up.addr], thresholds)]);
    let (_proxy, addr) = start(&yaml).await;
    let mut held = vec![spawn_get(addr)];
    poll_until("the default request in flight", PATIENCE, || async {
        (gate.arrived() == 1).then_some(())
    })
    .await;
    assert_overflow(&send(addr, Method::GET, Bytes::new()).await);
    for n in [2, 3] {
        held.push(spawn_get_path(addr, "/high"));
        poll_until("high-priority requests in flight", PATIENCE, || async {
            (gate.arrived() == n).then_some(())
        })
        .await;
    }
    assert_overflow(&send_to(addr, Method::GET, "/high", Bytes::new()).await);
    gate.open();
    for h in held {
        assert_eq!(h.await.unwrap().status, StatusCode::OK);
    }
}

const MIRRORS: &str = "request_mirror_policies: [{ cluster: hang }, { cluster: broken, runtime_fraction: { default_value: { numerator: 100 } } }]";

#[tokio::test]
async fn a_hanging_or_failing_mirror_never_slows_or_fails_the_original() {
    let primary = Chaos::start("primary", Behaviour::Ok).await.unwrap();
    let hang = Chaos::start("hang", Behaviour::Hang).await.unwrap();
    let broken = Chaos::start("broken", Behaviour::Status(503))
        .await
        .unwrap();
    let yaml = bootstrap(
        MIRRORS,
        &[
            cluster("svc", &[primary.addr], ""),
            cluster("hang", &[hang.addr], ""),
            cluster("broken", &[broken.addr], ""),
        ],
    );
    let (_proxy, addr) = start(&yaml).await;
    for i in 0..5 {
        let body = Bytes::from(format!("payload {i}"));
        let reply = send(addr, Method::POST, body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "primary");
    }
    // Every shadow arrived with its body while the hanging one never answered.
    hang.wait_hits(5).await;
    broken.wait_hits(5).await;
    assert_eq!(primary.hits(), 5);
    for shadow in [&hang, &broken] {
        let mut bodies: Vec<Bytes> = shadow.seen().iter().map(|s| s.body.clone()).collect();
        bodies.sort();
        let expected: Vec<Bytes> = (0..5)
            .map(|i| Bytes::from(format!("payload {i}")))
            .collect();
        assert_eq!(bodies, expected, "{}", shadow.name());
        for seen in shadow.seen() {
            assert_eq!(seen.method, Method::POST);
            assert_eq!(seen.header("host"), Some("svc-shadow"));
        }
    }
    for seen in primary.seen() {
        assert_eq!(seen.header("host"), Some("svc"));
    }
}

#[tokio::test]
async fn a_body_over_the_buffer_limit_is_not_mirrored() {
    let primary = Chaos::start("primary", Behaviour::Ok).await.unwrap();
    let shadow = Chaos::start("shadow", Behaviour::Ok).await.unwrap();
    let yaml = bootstrap(
        "request_mirror_policies: [{ cluster: shadow }]",
        &[
            cluster("svc", &[primary.addr], ""),
            cluster("shadow", &[shadow.addr], ""),
        ],
    )
    .replace(
        "routes: [{ match",
        "per_request_buffer_limit_bytes: 16, routes: [{ match",
    );
    let (proxy, addr) = start(&yaml).await;
    let large = Bytes::from(vec![b'x'; 100]);
    let reply = send(addr, Method::POST, large.clone()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        primary.seen()[0].body,
        large,
        "the primary gets the whole body"
    );
    assert_eq!(counter(&proxy, "shadow", "upstream_rq_shadow_too_large"), 1);
    let reply = send(addr, Method::POST, Bytes::from_static(b"small")).await;
    assert_eq!(reply.status, StatusCode::OK);
    shadow.wait_hits(1).await;
    let seen = shadow.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, Bytes::from_static(b"small"));
}
