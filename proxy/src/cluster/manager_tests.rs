use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use http_body_util::BodyExt;
use xds_proto::envoy::config::cluster::v3::Cluster as ProtoCluster;
use xds_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;

use super::*;
use crate::cluster::{ClusterStats, LbContext};
use crate::pool::tests::upstream;

fn cluster(yaml: &str) -> Arc<ClusterConfig> {
    let proto: ProtoCluster = xds_proto::json::from_yaml_str(yaml).unwrap();
    Arc::new(ClusterConfig::try_from(&proto).unwrap())
}

fn assignment(name: &str, ips: &[&str]) -> Arc<LoadAssignment> {
    let endpoints: Vec<String> = ips
        .iter()
        .map(|ip| {
            format!("{{ endpoint: {{ address: {{ socket_address: {{ address: \"{ip}\", port_value: 80 }} }} }} }}")
        })
        .collect();
    let yaml = format!(
        "cluster_name: {name}\nendpoints: [ {{ lb_endpoints: [ {} ] }} ]",
        endpoints.join(", ")
    );
    let proto: ClusterLoadAssignment = xds_proto::json::from_yaml_str(&yaml).unwrap();
    Arc::new(LoadAssignment::try_from(&proto).unwrap())
}

fn configs(list: &[Arc<ClusterConfig>]) -> BTreeMap<String, Arc<ClusterConfig>> {
    list.iter().map(|c| (c.name.clone(), c.clone())).collect()
}

fn assignments(list: &[Arc<LoadAssignment>]) -> BTreeMap<String, Arc<LoadAssignment>> {
    list.iter()
        .map(|a| (a.cluster_name.clone(), a.clone()))
        .collect()
}

fn host_for(cluster: &Cluster, ip: &str) -> Arc<crate::cluster::Host> {
    let addr: SocketAddr = format!("{ip}:80").parse().unwrap();
    cluster
        .hosts()
        .into_iter()
        .find(|h| h.address() == addr)
        .unwrap()
}

const EDS: &str = "name: reviews\ntype: EDS\neds_cluster_config: { eds_config: { ads: {} } }";

#[test]
fn static_cluster_round_robins_over_its_endpoints() {
    let manager = ClusterManager::default();
    let config = cluster(
        r#"
name: static
type: STATIC
load_assignment:
  cluster_name: static
  endpoints:
  - lb_endpoints:
    - endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 80 } } }
    - endpoint: { address: { socket_address: { address: 10.0.0.2, port_value: 80 } } }
"#,
    );
    let set = manager.update(&configs(&[config]), &BTreeMap::new());
    let cluster = set.get("static").unwrap();
    assert!(cluster.is_warm());
    let picks: Vec<_> = (0..4)
        .map(|_| {
            cluster
                .select_host(&LbContext::default())
                .unwrap()
                .address()
                .to_string()
        })
        .collect();
    assert_eq!(
        picks,
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.1:80", "10.0.0.2:80"]
    );
}

#[test]
fn eds_cluster_waits_for_its_assignment() {
    let manager = ClusterManager::default();
    let config = cluster(EDS);
    let set = manager.update(&configs(std::slice::from_ref(&config)), &BTreeMap::new());
    let cluster = set.get("reviews").unwrap().clone();
    assert!(!cluster.is_warm());
    assert!(cluster.select_host(&LbContext::default()).is_none());
    assert_eq!(cluster.stats().upstream_cx_none_healthy.get(), 1);
    let set = manager.update(
        &configs(&[config]),
        &assignments(&[assignment("reviews", &["10.0.0.1"])]),
    );
    assert!(Arc::ptr_eq(set.get("reviews").unwrap(), &cluster));
    assert!(cluster.is_warm());
    assert!(cluster.select_host(&LbContext::default()).is_some());
}

#[test]
fn hosts_that_stay_keep_their_state_across_eds_updates() {
    let stats = Arc::new(Store::default());
    let manager = ClusterManager::new(stats.clone());
    let config = cluster(EDS);
    let set = manager.update(
        &configs(std::slice::from_ref(&config)),
        &assignments(&[assignment("reviews", &["10.0.0.1", "10.0.0.2"])]),
    );
    let cluster = set.get("reviews").unwrap().clone();
    let kept = host_for(&cluster, "10.0.0.1");
    kept.stats().rq_total.inc();
    assert_eq!(cluster.stats().membership_total.get(), 2);

    let set = manager.update(
        &configs(&[config]),
        &assignments(&[assignment("reviews", &["10.0.0.1", "10.0.0.3"])]),
    );
    let same = set.get("reviews").unwrap();
    assert!(
        Arc::ptr_eq(same, &cluster),
        "unchanged cluster must be kept"
    );
    let after = host_for(same, "10.0.0.1");
    assert!(Arc::ptr_eq(&kept, &after), "host state must survive");
    assert_eq!(after.stats().rq_total.get(), 1);
    let addrs: Vec<String> = same
        .hosts()
        .iter()
        .map(|h| h.address().to_string())
        .collect();
    assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.3:80"]);
    let total = stats
        .gauges()
        .into_iter()
        .find(|(n, _)| n == "cluster.reviews.membership_total");
    assert_eq!(total, Some(("cluster.reviews.membership_total".into(), 2)));
}

#[test]
fn a_changed_cluster_adopts_hosts_with_the_same_connection_settings() {
    let manager = ClusterManager::default();
    let la = assignments(&[assignment("reviews", &["10.0.0.1"])]);
    let set = manager.update(&configs(&[cluster(EDS)]), &la);
    let before = host_for(set.get("reviews").unwrap(), "10.0.0.1");

    // A different balancer, same pool settings: new cluster, same host.
    let set = manager.update(
        &configs(&[cluster(&format!("{EDS}\nlb_policy: RANDOM"))]),
        &la,
    );
    assert!(Arc::ptr_eq(
        &before,
        &host_for(set.get("reviews").unwrap(), "10.0.0.1")
    ));

    // A different connect timeout: the host gets new connections.
    let set = manager.update(
        &configs(&[cluster(&format!("{EDS}\nconnect_timeout: 1s"))]),
        &la,
    );
    assert!(!Arc::ptr_eq(
        &before,
        &host_for(set.get("reviews").unwrap(), "10.0.0.1")
    ));
}

#[test]
fn removed_clusters_leave_the_set() {
    let manager = ClusterManager::default();
    let set = manager.update(
        &configs(&[cluster(EDS), cluster("name: other")]),
        &BTreeMap::new(),
    );
    assert_eq!(set.iter().count(), 2);
    let set = manager.update(&configs(&[cluster("name: other")]), &BTreeMap::new());
    assert!(set.get("reviews").is_none());
    assert!(set.get("other").is_some());
}

#[test]
fn responses_are_counted_by_status_class() {
    let stats = Arc::new(Store::default());
    let manager = ClusterManager::new(stats.clone());
    let set = manager.update(&configs(&[cluster("name: a")]), &BTreeMap::new());
    let a = set.get("a").unwrap();
    a.record_response(http::StatusCode::OK);
    a.record_response(http::StatusCode::NO_CONTENT);
    a.record_response(http::StatusCode::SERVICE_UNAVAILABLE);
    let get = |name: &str| {
        stats
            .counters()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    };
    assert_eq!(get("cluster.a.upstream_rq_2xx"), Some(2));
    assert_eq!(get("cluster.a.upstream_rq_5xx"), Some(1));
    assert_eq!(get("cluster.a.upstream_rq_4xx"), Some(0));
}

#[test]
fn alt_stat_name_names_the_stats() {
    let stats = Arc::new(Store::default());
    let manager = ClusterManager::new(stats.clone());
    let set = manager.update(
        &configs(&[cluster("name: a\nalt_stat_name: b")]),
        &BTreeMap::new(),
    );
    set.get("a").unwrap().record_response(http::StatusCode::OK);
    assert!(
        stats
            .counters()
            .iter()
            .any(|(n, v)| n == "cluster.b.upstream_rq_2xx" && *v == 1)
    );
}

#[tokio::test]
async fn original_dst_routes_to_the_original_destination() {
    let manager = ClusterManager::default();
    let config =
        cluster("name: PassthroughCluster\ntype: ORIGINAL_DST\nlb_policy: CLUSTER_PROVIDED");
    let set = manager.update(&configs(&[config]), &BTreeMap::new());
    let cluster = set.get("PassthroughCluster").unwrap();
    assert!(cluster.select_host(&LbContext::default()).is_none());
    let dst: SocketAddr = "10.1.2.3:8080".parse().unwrap();
    let ctx = LbContext {
        original_dst: Some(dst),
        ..LbContext::default()
    };
    let a = cluster.select_host(&ctx).unwrap();
    assert_eq!(a.address(), dst);
    assert!(Arc::ptr_eq(&a, &cluster.select_host(&ctx).unwrap()));
}

#[tokio::test(start_paused = true)]
async fn original_dst_hosts_are_cleaned_up_when_unused() {
    let manager = ClusterManager::default();
    let config =
        cluster("name: o\ntype: ORIGINAL_DST\nlb_policy: CLUSTER_PROVIDED\ncleanup_interval: 5s");
    let set = manager.update(&configs(&[config]), &BTreeMap::new());
    let cluster = set.get("o").unwrap();
    let ctx = LbContext {
        original_dst: Some("10.1.2.3:8080".parse().unwrap()),
        ..LbContext::default()
    };
    cluster.select_host(&ctx).unwrap();
    let settle = || async {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    };
    // First sweep: used since the start, kept.
    tokio::time::sleep(std::time::Duration::from_millis(5_001)).await;
    settle().await;
    assert_eq!(cluster.hosts().len(), 1);
    // Second sweep: unused for a whole interval, removed.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    settle().await;
    assert!(cluster.hosts().is_empty());
    assert_eq!(cluster.stats().membership_total.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn dns_clusters_re_resolve_at_the_refresh_rate() {
    let manager = ClusterManager::default();
    let config = cluster(
        r#"
name: refresh
type: STRICT_DNS
dns_refresh_rate: 2s
dns_lookup_family: V4_ONLY
load_assignment:
  cluster_name: refresh
  endpoints:
  - lb_endpoints:
    - endpoint: { address: { socket_address: { address: localhost, port_value: 9 } } }
"#,
    );
    let set = manager.update(&configs(&[config]), &BTreeMap::new());
    let cluster = set.get("refresh").unwrap().clone();
    cluster.warmed().await;
    let host = cluster.hosts()[0].clone();
    let updates = cluster.stats().update_success.get();
    for round in 1..=3 {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        for _ in 0..50 {
            if cluster.stats().update_success.get() >= updates + round {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(cluster.stats().update_success.get() >= updates + round);
    }
    // The same address again: the host (and its pool) is kept.
    assert!(Arc::ptr_eq(&host, &cluster.hosts()[0]));
}

#[tokio::test]
async fn logical_dns_cluster_has_one_host() {
    let manager = ClusterManager::default();
    let config = cluster(
        r#"
name: logical
type: LOGICAL_DNS
dns_lookup_family: V4_ONLY
load_assignment:
  cluster_name: logical
  endpoints:
  - lb_endpoints:
    - endpoint: { address: { socket_address: { address: localhost, port_value: 9 } } }
"#,
    );
    let set = manager.update(&configs(&[config]), &BTreeMap::new());
    let cluster = set.get("logical").unwrap().clone();
    tokio::time::timeout(std::time::Duration::from_secs(10), cluster.warmed())
        .await
        .expect("DNS cluster warms");
    let hosts = cluster.hosts();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].address(), "127.0.0.1:9".parse().unwrap());
}

#[tokio::test]
async fn strict_dns_cluster_resolves_localhost_from_etc_hosts() {
    let up = upstream(false, 1).await;
    let port = up.addr.port();
    let manager = ClusterManager::default();
    let config = cluster(&format!(
        r#"
name: dns
type: STRICT_DNS
dns_lookup_family: V4_ONLY
load_assignment:
  cluster_name: dns
  endpoints:
  - lb_endpoints:
    - endpoint: {{ address: {{ socket_address: {{ address: localhost, port_value: {port} }} }} }}
"#
    ));
    let set = manager.update(&configs(&[config]), &BTreeMap::new());
    let cluster = set.get("dns").unwrap().clone();
    tokio::time::timeout(std::time::Duration::from_secs(10), cluster.warmed())
        .await
        .expect("DNS cluster warms");
    let host = cluster
        .select_host(&LbContext::default())
        .expect("localhost resolved");
    assert_eq!(host.address(), up.addr);
    assert_eq!(host.hostname(), "localhost");
    let resp = host
        .send(
            http::Request::get("http://dns/x")
                .body(crate::body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"HTTP/1.1 /x");
    assert_eq!(up.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn in_flight_requests_finish_when_their_cluster_is_removed() {
    let up = upstream(false, 2).await;
    let manager = ClusterManager::default();
    let config = cluster(&format!(
        "name: c\nload_assignment: {{ cluster_name: c, endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }} ] }} ] }}",
        up.addr.port()
    ));
    let set = manager.update(&configs(&[config]), &BTreeMap::new());
    let host = set
        .get("c")
        .unwrap()
        .select_host(&LbContext::default())
        .unwrap();
    drop(set);
    let wait = || {
        http::Request::get("http://c/wait")
            .body(crate::body::empty())
            .unwrap()
    };
    let in_flight = tokio::spawn({
        let host = host.clone();
        async move { host.send(wait()).await.map(|r| r.status()) }
    });
    // Once the first request is at the upstream, remove the cluster, then release it.
    let mut tries = 0;
    while up.opened.load(Ordering::SeqCst) == 0 && tries < 1000 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        tries += 1;
    }
    let set = manager.update(&BTreeMap::new(), &BTreeMap::new());
    assert!(set.get("c").is_none());
    drop(host);
    let other = crate::cluster::Host::new(
        up.addr,
        String::new(),
        crate::cluster::TransportSocket::Plaintext,
        Arc::default(),
        ClusterStats::new(&Store::default(), "other"),
    );
    assert_eq!(other.send(wait()).await.unwrap().status(), 200);
    assert_eq!(in_flight.await.unwrap().unwrap(), 200);
}

#[tokio::test]
async fn selected_hosts_send_to_real_upstreams() {
    let a = upstream(false, 1).await;
    let b = upstream(false, 1).await;
    let manager = ClusterManager::default();
    let config = cluster(EDS);
    let la = format!(
        "cluster_name: reviews\nendpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}, {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }} ] }} ]",
        a.addr.port(),
        b.addr.port()
    );
    let proto: ClusterLoadAssignment = xds_proto::json::from_yaml_str(&la).unwrap();
    let la = Arc::new(LoadAssignment::try_from(&proto).unwrap());
    let set = manager.update(&configs(&[config]), &assignments(&[la]));
    let cluster = set.get("reviews").unwrap();
    for _ in 0..4 {
        let host = cluster.select_host(&LbContext::default()).unwrap();
        let resp = host
            .send(
                http::Request::get("http://reviews/")
                    .body(crate::body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        cluster.record_response(resp.status());
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(a.opened.load(Ordering::SeqCst), 1);
    assert_eq!(b.opened.load(Ordering::SeqCst), 1);
    assert_eq!(cluster.stats().upstream_rq_total.get(), 4);
    assert_eq!(cluster.stats().upstream_rq_class[1].get(), 4);
}
