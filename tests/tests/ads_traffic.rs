//! Real traffic through listeners and routes that arrive over ADS: route updates apply to the
//! next request, a NACKed update leaves the previous config serving, and the control plane can
//! stop and come back while requests keep being answered.

use std::sync::Arc;
use std::time::Duration;

use ferry_proxy::cluster::ClusterManager;
use ferry_proxy::listener::manager::ListenerManager;
use ferry_proxy::snapshot::ConfigStore;
use ferry_proxy::stats::Store;
use ferry_proxy::xds::{Backoff, Client, ServerState, Tracker};
use ferry_tests::ads::AdsServer;
use ferry_tests::net;
use ferry_tests::poll::poll_until;
use xds_proto::envoy::config::listener::v3::Listener;
use xds_proto::envoy::config::route::v3::RouteConfiguration;
use xds_proto::google::protobuf::Any;
use xds_proto::type_url::{CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION};

const WAIT: Duration = Duration::from_secs(30);

fn listener(filter: &str) -> Any {
    let typed_config = match filter {
        "hcm" => serde_json::json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "http",
            "rds": { "route_config_name": "r", "config_source": { "ads": {}, "resource_api_version": "V3" } },
            "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }]
        }),
        _ => serde_json::json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy",
            "stat_prefix": "redis",
            "settings": { "op_timeout": "1s" }
        }),
    };
    let listener: Listener = xds_proto::json::from_value(serde_json::json!({
        "name": "http",
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
        "filter_chains": [{ "filters": [{ "name": "main", "typed_config": typed_config }] }]
    }))
    .expect("test listener parses");
    xds_proto::any::pack(&listener)
}

fn direct(body: &str) -> Any {
    let config: RouteConfiguration = xds_proto::json::from_value(serde_json::json!({
        "name": "r",
        "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [{
            "match": { "prefix": "/" },
            "direct_response": { "status": 200, "body": { "inline_string": body } } }] }]
    }))
    .expect("test route parses");
    xds_proto::any::pack(&config)
}

async fn body(addr: std::net::SocketAddr) -> Option<String> {
    net::get(addr, "app", "/")
        .await
        .ok()
        .map(|reply| reply.text())
}

async fn until_body(addr: std::net::SocketAddr, want: &str) {
    poll_until(&format!("body {want}"), WAIT, || async {
        (body(addr).await.as_deref() == Some(want)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn traffic_follows_updates_survives_nack_and_control_plane_restart() {
    let mut server = AdsServer::start().await.expect("ADS server starts");
    server.set(CLUSTER, "1", vec![]);
    server.set(LISTENER, "1", vec![listener("hcm")]);
    server.set(ROUTE_CONFIGURATION, "1", vec![direct("v1")]);

    let stats = Arc::new(Store::default());
    let store = Arc::new(ConfigStore::new(ClusterManager::new(stats.clone())));
    let tracker = Tracker::new(
        ferry_tests::bootstrap::ads_sidecar(&server.uri()),
        store.clone(),
        stats.clone(),
    )
    .expect("bootstrap accepted");
    let config = tracker.ads_config().cloned().expect("ads configured");
    let client = Client::spawn_with_backoff(
        config,
        tracker.clone(),
        Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
    );
    let listeners = ListenerManager::new(store.clone(), stats);
    listeners.reconcile().await;
    let reconciler = tokio::spawn(listeners.clone().run());

    let addr = poll_until("listener bound", WAIT, || async {
        listeners.listener_addr("http")
    })
    .await;
    assert_eq!(tracker.server_state(), ServerState::Live);
    until_body(addr, "v1").await;

    // A route update applies to the next request.
    server.set(ROUTE_CONFIGURATION, "2", vec![direct("v2")]);
    until_body(addr, "v2").await;

    // A NACKed listener update changes nothing.
    server.set(LISTENER, "2", vec![listener("redis")]);
    server
        .wait_sotw(|r| r.type_url == LISTENER && r.error_detail.is_some())
        .await;
    assert_eq!(body(addr).await.as_deref(), Some("v2"));

    // The control plane goes away: the last good config keeps serving.
    server.stop().await;
    for _ in 0..20 {
        assert_eq!(body(addr).await.as_deref(), Some("v2"));
    }
    // It comes back: the client reconnects, resubscribes, and follows new updates.
    server.set(LISTENER, "3", vec![listener("hcm")]);
    server.restart().await.expect("ADS server restarts");
    server.set(ROUTE_CONFIGURATION, "3", vec![direct("v3")]);
    until_body(addr, "v3").await;

    client.abort();
    reconciler.abort();
}

/// An HTTP/1.1 upstream answering every request with `name`.
async fn upstream(name: &'static str) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("upstream binds");
    let addr = listener.local_addr().expect("upstream address");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(name.as_bytes())),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

fn routed_to(cluster: &str) -> Any {
    let config: RouteConfiguration = xds_proto::json::from_value(serde_json::json!({
        "name": "r",
        "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [{
            "match": { "prefix": "/" }, "route": { "cluster": cluster } }] }]
    }))
    .expect("test route parses");
    xds_proto::any::pack(&config)
}

fn eds_cluster(name: &str) -> Any {
    let cluster: xds_proto::envoy::config::cluster::v3::Cluster =
        xds_proto::json::from_value(serde_json::json!({
            "name": name,
            "type": "EDS",
            "connect_timeout": "1s",
            "eds_cluster_config": { "eds_config": { "ads": {}, "resource_api_version": "V3" } }
        }))
        .expect("test cluster parses");
    xds_proto::any::pack(&cluster)
}

fn assignment(name: &str, addr: std::net::SocketAddr) -> Any {
    let cla: xds_proto::envoy::config::endpoint::v3::ClusterLoadAssignment =
        xds_proto::json::from_value(serde_json::json!({
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                "address": addr.ip().to_string(), "port_value": addr.port() } } } }] }]
        }))
        .expect("test assignment parses");
    xds_proto::any::pack(&cla)
}

#[tokio::test]
async fn eds_updates_move_traffic_between_upstreams() {
    let (blue, _blue) = upstream("blue").await;
    let (green, _green) = upstream("green").await;
    let server = AdsServer::start().await.expect("ADS server starts");
    server.set(CLUSTER, "1", vec![eds_cluster("app")]);
    server.set(CLUSTER_LOAD_ASSIGNMENT, "1", vec![assignment("app", blue)]);
    server.set(LISTENER, "1", vec![listener("hcm")]);
    server.set(ROUTE_CONFIGURATION, "1", vec![routed_to("app")]);

    let stats = Arc::new(Store::default());
    let store = Arc::new(ConfigStore::new(ClusterManager::new(stats.clone())));
    let tracker = Tracker::new(
        ferry_tests::bootstrap::ads_sidecar(&server.uri()),
        store.clone(),
        stats.clone(),
    )
    .expect("bootstrap accepted");
    let client = Client::spawn(tracker.ads_config().cloned().expect("ads"), tracker.clone());
    let listeners = ListenerManager::new(store, stats);
    listeners.reconcile().await;
    let reconciler = tokio::spawn(listeners.clone().run());
    let addr = poll_until("listener bound", WAIT, || async {
        listeners.listener_addr("http")
    })
    .await;
    until_body(addr, "blue").await;

    // `/listeners?format=json` reports the port the OS gave the port-0 listener, as Envoy does.
    let lookup = listeners.clone();
    let state = ferry_proxy::admin::AdminState::new(tracker.clone(), Default::default())
        .with_listener_addrs(move |name| lookup.listener_addr(name));
    let (admin, _admin) = ferry_proxy::admin::serve(([127, 0, 0, 1], 0).into(), state)
        .await
        .expect("admin binds");
    let reply = net::get(admin, "admin", "/listeners?format=json")
        .await
        .expect("admin answers");
    let json: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
    let status = &json["listener_statuses"][0];
    assert_eq!(status["name"], "http");
    assert_eq!(
        status["local_address"]["socket_address"]["port_value"],
        u64::from(addr.port())
    );
    let reply = net::get(admin, "admin", "/listeners")
        .await
        .expect("admin answers");
    assert_eq!(reply.text(), format!("http::{addr}\n"));

    server.set(CLUSTER_LOAD_ASSIGNMENT, "2", vec![assignment("app", green)]);
    until_body(addr, "green").await;
    for _ in 0..20 {
        assert_eq!(body(addr).await.as_deref(), Some("green"));
    }
    client.abort();
    reconciler.abort();
}
