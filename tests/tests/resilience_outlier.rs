//! Outlier ejection end to end: the real ferry-proxy library in-process (listener, router,
//! cluster, load balancer, outlier detector), three chaos upstreams on loopback, a real client.
//!
//! Timing is Envoy's (`interval`, `base_ejection_time` multiplied by the number of ejections)
//! and runs on tokio's clock: traffic flows on the real clock, and between phases the test
//! pauses the clock, advances it past (or short of) an ejection time, and resumes. So "no
//! traffic for the ejection time" is checked at a virtual 25 s without waiting 25 s, and no
//! assertion depends on the machine's speed.

#![allow(clippy::unwrap_used)] // test setup: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_proxy::cluster::{ClusterConfig, ClusterManager, LbContext, LoadAssignment};
use ferry_tests::bootstrap::{
    http_listener_with, lb_endpoints, start_proxy as start, static_cluster_over, static_resources,
};
use ferry_tests::net::{self, Protocol};
use ferry_tests::upstream::{Behaviour, Chaos};
use http::{Method, StatusCode};

/// A listener `http` to a ROUND_ROBIN cluster `svc` over `addrs` with `outlier_detection`.
fn bootstrap(addrs: &[SocketAddr], outlier: &str, panic_threshold: u32) -> String {
    let routes = r#"[{ match: { prefix: "/" }, route: { cluster: svc, timeout: 0s } }]"#;
    let listener = http_listener_with("http", "", routes);
    let panic =
        format!("common_lb_config: {{ healthy_panic_threshold: {{ value: {panic_threshold} }} }}");
    let outlier = format!("outlier_detection: {{ {outlier} }}");
    let cluster = static_cluster_over("svc", addrs, &["lb_policy: ROUND_ROBIN", &panic, &outlier]);
    static_resources(&[listener], &[cluster])
}

const OUTLIER: &str =
    "consecutive_5xx: 3, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 50";

/// Sends `n` requests; returns how many each upstream served (by its name) and the 5xx count.
async fn traffic(proxy: SocketAddr, n: usize) -> (BTreeMap<String, usize>, usize) {
    let mut served = BTreeMap::new();
    let mut errors = 0;
    for _ in 0..n {
        let request = net::request(Method::GET, "svc", "/", &[]).expect("request");
        let reply = net::send(proxy, Protocol::Http1, request)
            .await
            .expect("response");
        if reply.status == StatusCode::OK {
            *served.entry(reply.text()).or_insert(0) += 1;
        } else {
            errors += 1;
        }
    }
    (served, errors)
}

/// Moves tokio's clock forward by `by` in one-second steps (so the detector's interval timer
/// ticks as it would), then lets it run on the real clock again.
async fn advance(by: Duration) {
    tokio::time::pause();
    let mut left = by;
    while !left.is_zero() {
        let step = left.min(Duration::from_secs(1));
        tokio::time::advance(step).await;
        left -= step;
    }
    tokio::time::resume();
}

/// Sends requests until `up` has served one more (it is back in the rotation).
async fn until_served(proxy: SocketAddr, up: &Chaos) {
    let before = up.hits();
    for _ in 0..100 {
        traffic(proxy, 1).await;
        if up.hits() > before {
            return;
        }
    }
    panic!("{} never got traffic again", up.name());
}

async fn three() -> [Chaos; 3] {
    [
        Chaos::start("a", Behaviour::Ok).await.unwrap(),
        Chaos::start("b", Behaviour::Ok).await.unwrap(),
        Chaos::start("c", Behaviour::Ok).await.unwrap(),
    ]
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_returns_and_is_ejected_twice_as_long_next_time() {
    let [a, b, c] = three().await;
    let yaml = bootstrap(&[a.addr, b.addr, c.addr], OUTLIER, 50);
    let (_proxy, addr) = start(&yaml).await;
    b.set(Behaviour::Status(503));
    // Round robin: b sees every third request; the third 503 in a row ejects it.
    let (_, errors) = traffic(addr, 9).await;
    assert_eq!(errors, 3);
    assert_eq!(b.hits(), 3);

    // Ejected: no traffic for the ejection time (30 s; checked at 25 s).
    let (served, errors) = traffic(addr, 20).await;
    assert_eq!((errors, b.hits()), (0, 3), "served: {served:?}");
    advance(Duration::from_secs(25)).await;
    let (_, errors) = traffic(addr, 20).await;
    assert_eq!((errors, b.hits()), (0, 3), "still ejected at 25 s");

    // Returned after 30 s (on the next interval tick).
    advance(Duration::from_secs(15)).await;
    until_served(addr, &b).await;
    assert_eq!(b.hits(), 4);

    // Still failing: ejected again after three more 503s, now for 2 x 30 s.
    traffic(addr, 9).await;
    let b_hits = b.hits();
    assert_eq!(
        b_hits, 6,
        "the returned host is ejected after three more 503s"
    );
    advance(Duration::from_secs(55)).await;
    let (_, errors) = traffic(addr, 20).await;
    assert_eq!(
        (errors, b.hits()),
        (0, b_hits),
        "still ejected at 55 s of 60"
    );
    advance(Duration::from_secs(15)).await;
    b.set(Behaviour::Ok);
    until_served(addr, &b).await;
    let (served, errors) = traffic(addr, 30).await;
    assert_eq!(errors, 0);
    assert_eq!(served.len(), 3, "all three serve again: {served:?}");
}

#[tokio::test]
async fn max_ejection_percent_bounds_how_many_endpoints_are_ejected() {
    let [a, b, c] = three().await;
    // 50% of three hosts: one ejection (33%) is allowed, a second (67%) is not.
    let yaml = bootstrap(&[a.addr, b.addr, c.addr], OUTLIER, 0);
    let (_proxy, addr) = start(&yaml).await;
    b.set(Behaviour::Status(503));
    c.set(Behaviour::Status(503));
    traffic(addr, 12).await;
    let (b_hits, c_hits) = (b.hits(), c.hits());
    let (served, _) = traffic(addr, 20).await;
    let b_more = b.hits() - b_hits;
    let c_more = c.hits() - c_hits;
    assert!(
        (b_more == 0) != (c_more == 0),
        "exactly one of b, c is ejected: b +{b_more}, c +{c_more}, served {served:?}"
    );
}

#[tokio::test]
async fn below_the_panic_threshold_ejected_endpoints_get_traffic_again() {
    let [a, b, c] = three().await;
    let outlier =
        "consecutive_5xx: 3, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 100";
    // Two of three ejected leaves 33% healthy, under a 50% panic threshold: balance over all.
    let yaml = bootstrap(&[a.addr, b.addr, c.addr], outlier, 50);
    let (_proxy, addr) = start(&yaml).await;
    b.set(Behaviour::Status(503));
    c.set(Behaviour::Status(503));
    traffic(addr, 12).await;
    let (b_hits, c_hits) = (b.hits(), c.hits());
    traffic(addr, 30).await;
    assert!(
        b.hits() > b_hits && c.hits() > c_hits,
        "in panic every host gets traffic"
    );

    // The same with a 0% threshold: both stay ejected and a serves everything.
    let [a, b, c] = three().await;
    let yaml = bootstrap(&[a.addr, b.addr, c.addr], outlier, 0);
    let (_proxy, addr) = start(&yaml).await;
    b.set(Behaviour::Status(503));
    c.set(Behaviour::Status(503));
    traffic(addr, 12).await;
    let (b_hits, c_hits) = (b.hits(), c.hits());
    let (served, errors) = traffic(addr, 30).await;
    assert_eq!(
        (errors, b.hits(), c.hits()),
        (0, b_hits, c_hits),
        "{served:?}"
    );
}

fn eds_cluster() -> Arc<ClusterConfig> {
    let yaml = format!(
        "name: svc\ntype: EDS\neds_cluster_config: {{ eds_config: {{ ads: {{}} }} }}\nlb_policy: ROUND_ROBIN\ncommon_lb_config: {{ healthy_panic_threshold: {{ value: 0 }} }}\noutlier_detection: {{ {OUTLIER} }}"
    );
    let proto: xds_proto::envoy::config::cluster::v3::Cluster =
        xds_proto::json::from_yaml_str(&yaml).expect("cluster parses");
    Arc::new(ClusterConfig::try_from(&proto).expect("valid cluster"))
}

fn eds(addrs: &[SocketAddr]) -> BTreeMap<String, Arc<LoadAssignment>> {
    let yaml = format!(
        "cluster_name: svc\nendpoints: [{{ lb_endpoints: [{}] }}]",
        lb_endpoints(addrs)
    );
    let proto: xds_proto::envoy::config::endpoint::v3::ClusterLoadAssignment =
        xds_proto::json::from_yaml_str(&yaml).expect("assignment parses");
    let la = LoadAssignment::try_from(&proto).expect("valid assignment");
    BTreeMap::from([("svc".to_owned(), Arc::new(la))])
}

/// Sends one request through the cluster as the router does: pick a host, send, read.
async fn through(cluster: &ferry_proxy::cluster::Cluster) -> SocketAddr {
    let host = cluster.select_host(&LbContext::default()).expect("a host");
    let request = http::Request::get("http://svc/")
        .body(ferry_proxy::body::full(Bytes::new()))
        .expect("request");
    let response = cluster.send(&host, request).await.expect("response");
    let _ = http_body_util::BodyExt::collect(response.into_body()).await;
    host.address()
}

#[tokio::test]
async fn ejection_survives_an_eds_update_for_hosts_that_remain() {
    let [a, b, c] = three().await;
    let d = Chaos::start("d", Behaviour::Ok).await.unwrap();
    b.set(Behaviour::Status(503));
    let manager = ClusterManager::default();
    let configs = BTreeMap::from([("svc".to_owned(), eds_cluster())]);
    let set = manager.update(&configs, &eds(&[a.addr, b.addr, c.addr]));
    let cluster = set.get("svc").expect("cluster").clone();
    for _ in 0..9 {
        through(&cluster).await;
    }
    let detector = cluster.outlier_detector().expect("outlier detection");
    assert_eq!(detector.ejected_hosts(), vec![b.addr]);
    // EDS replaces a with d; b remains and stays ejected.
    let set = manager.update(&configs, &eds(&[b.addr, c.addr, d.addr]));
    let cluster = set.get("svc").expect("cluster").clone();
    assert_eq!(detector.ejected_hosts(), vec![b.addr]);
    let mut picked = Vec::new();
    for _ in 0..12 {
        picked.push(through(&cluster).await);
    }
    assert!(
        !picked.contains(&b.addr),
        "ejected b got traffic: {picked:?}"
    );
    assert!(!picked.contains(&a.addr), "removed a got traffic");
    assert!(picked.contains(&d.addr) && picked.contains(&c.addr));
    assert_eq!(b.hits(), 3);
}
