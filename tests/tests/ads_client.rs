//! ferry-proxy's ADS client against the scriptable ADS server on loopback: ACK/NACK exactly per
//! the xDS protocol (SotW and delta), RDS/EDS following LDS/CDS, warming, reconnect with backoff,
//! and the admin endpoints that report it all.

use std::sync::Arc;
use std::time::Duration;

use ferry_proxy::admin::{self, AdminState, Lifecycle};
use ferry_proxy::snapshot::ConfigStore;
use ferry_proxy::stats::Store;
use ferry_proxy::xds::{self, Backoff, Client, ServerState, Tracker};
use ferry_tests::ads::AdsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xds_proto::envoy::config::bootstrap::v3::Bootstrap;
use xds_proto::envoy::config::cluster::v3::Cluster;
use xds_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::envoy::config::listener::v3::Listener;
use xds_proto::envoy::config::route::v3::RouteConfiguration;
use xds_proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use xds_proto::google::protobuf::Any;
use xds_proto::type_url::{CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION};

fn bootstrap(port: u16, api_type: &str) -> Arc<Bootstrap> {
    let yaml = format!(
        r#"
node: {{ id: "sidecar~127.0.0.1~app.default~default.svc.cluster.local", cluster: app.default }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}
dynamic_resources:
  lds_config: {{ ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3 }}
  cds_config: {{ ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3 }}
  ads_config:
    api_type: {api_type}
    set_node_on_first_message_only: true
    transport_api_version: V3
    grpc_services: [ {{ envoy_grpc: {{ cluster_name: xds-grpc }} }} ]
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }} ] }} ]
"#
    );
    Arc::new(xds_proto::json::from_yaml_str(&yaml).expect("test bootstrap parses"))
}

fn listener(name: &str, rds: &str, filter_type: &str) -> Any {
    let typed_config = if filter_type == "hcm" {
        serde_json::json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "rds": { "route_config_name": rds, "config_source": { "ads": {}, "resource_api_version": "V3" } },
            "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }]
        })
    } else {
        serde_json::json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy",
            "stat_prefix": name,
            "settings": { "op_timeout": "1s" }
        })
    };
    let listener: Listener = xds_proto::json::from_value(serde_json::json!({
        "name": name,
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
        "filter_chains": [{ "filters": [{ "name": "main", "typed_config": typed_config }] }]
    }))
    .expect("test listener parses");
    xds_proto::any::pack(&listener)
}

fn eds_cluster(name: &str) -> Any {
    let cluster: Cluster = xds_proto::json::from_value(serde_json::json!({
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "eds_cluster_config": { "eds_config": { "ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3" } }
    }))
    .expect("test cluster parses");
    xds_proto::any::pack(&cluster)
}

fn assignment(name: &str, port: u32) -> Any {
    let cla: ClusterLoadAssignment = xds_proto::json::from_value(serde_json::json!({
        "cluster_name": name,
        "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
            "socket_address": { "address": "127.0.0.1", "port_value": port } } } }] }]
    }))
    .expect("test assignment parses");
    xds_proto::any::pack(&cla)
}

fn route(name: &str, cluster: &str) -> Any {
    let config: RouteConfiguration = xds_proto::json::from_value(serde_json::json!({
        "name": name,
        "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [{
            "match": { "prefix": "/" }, "route": { "cluster": cluster } }] }]
    }))
    .expect("test route parses");
    xds_proto::any::pack(&config)
}

fn garbage(type_url: &str) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value: vec![0x0a, 0xff, 0xff, 0xff],
    }
}

struct Proxy {
    tracker: Arc<Tracker>,
    store: Arc<ConfigStore>,
    client: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.client.abort();
    }
}

fn start_proxy(server: &AdsServer, api_type: &str, backoff: Backoff) -> Proxy {
    let stats = Arc::new(Store::default());
    let store = Arc::new(ConfigStore::new(ferry_proxy::cluster::ClusterManager::new(
        stats.clone(),
    )));
    let tracker = Tracker::new(
        bootstrap(server.addr().port(), api_type),
        store.clone(),
        stats,
    )
    .expect("bootstrap accepted");
    let config = tracker.ads_config().cloned().expect("ads configured");
    let client = Client::spawn_with_backoff(config, Arc::clone(&tracker), backoff);
    Proxy {
        tracker,
        store,
        client,
    }
}

async fn wait_live(tracker: &Tracker) {
    // Wall-clock guard: paused tokio time would fire a tokio timeout while sockets are busy.
    let started = std::time::SystemTime::now();
    let mut state = tracker.watch_state();
    while *state.borrow_and_update() != ServerState::Live {
        assert!(
            started.elapsed().unwrap_or_default() < Duration::from_secs(30),
            "not live within 30s"
        );
        tokio::select! {
            _ = state.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// Waits (polling the store, never sleeping for timing) until `pred` holds.
async fn wait_store(store: &ConfigStore, pred: impl Fn(&ferry_proxy::snapshot::Snapshot) -> bool) {
    let started = std::time::SystemTime::now();
    while !pred(&store.load()) {
        assert!(
            started.elapsed().unwrap_or_default() < Duration::from_secs(30),
            "store never matched"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn initial_config(server: &AdsServer) {
    server.set(CLUSTER, "1", vec![eds_cluster("c")]);
    server.set(LISTENER, "1", vec![listener("l", "r", "hcm")]);
}

#[tokio::test]
async fn sotw_acks_follows_references_and_warms() {
    let server = AdsServer::start().await.unwrap();
    initial_config(&server).await;
    let proxy = start_proxy(&server, "GRPC", Backoff::default());

    // The first request carries the node; later ones do not (set_node_on_first_message_only).
    let first = server.wait_sotw(|_| true).await;
    assert_eq!(first.type_url, CLUSTER);
    assert!(first.node.as_ref().unwrap().id.starts_with("sidecar~"));

    let ack = server
        .wait_sotw(|r| r.type_url == CLUSTER && !r.response_nonce.is_empty())
        .await;
    assert_eq!(ack.version_info, "1");
    assert!(ack.error_detail.is_none() && ack.node.is_none());
    let eds = server
        .wait_sotw(|r| r.type_url == CLUSTER_LOAD_ASSIGNMENT)
        .await;
    assert_eq!(eds.resource_names, ["c"]);
    let rds = server
        .wait_sotw(|r| r.type_url == ROUTE_CONFIGURATION)
        .await;
    assert_eq!(rds.resource_names, ["r"]);

    // Warming: neither the listener nor the EDS cluster is active yet.
    let _ = server
        .wait_sotw(|r| r.type_url == LISTENER && r.version_info == "1")
        .await;
    assert_eq!(proxy.tracker.server_state(), ServerState::Initializing);
    let snapshot = proxy.store.load();
    assert!(snapshot.resources.listeners.is_empty());
    assert!(!snapshot.resources.clusters.contains_key("c"));
    assert!(snapshot.resources.clusters.contains_key("xds-grpc"));

    server.set(CLUSTER_LOAD_ASSIGNMENT, "e1", vec![assignment("c", 8080)]);
    server.set(ROUTE_CONFIGURATION, "r1", vec![route("r", "c")]);
    wait_live(&proxy.tracker).await;
    let snapshot = proxy.store.load();
    assert!(snapshot.resources.listeners.contains_key("l"));
    assert!(snapshot.resources.routes.contains_key("r"));
    assert!(snapshot.resources.clusters.contains_key("c"));
    assert!(snapshot.resources.load_assignments.contains_key("c"));
    let rds_ack = server
        .wait_sotw(|r| r.type_url == ROUTE_CONFIGURATION && r.version_info == "r1")
        .await;
    assert!(!rds_ack.response_nonce.is_empty());

    // An updated listener referencing "r2" warms while the old one keeps serving "r"; once
    // "r2" arrives it activates and "r" is unsubscribed and forgotten.
    server.set(LISTENER, "2", vec![listener("l", "r2", "hcm")]);
    let rds = server
        .wait_sotw(|r| r.type_url == ROUTE_CONFIGURATION && r.resource_names == ["r", "r2"])
        .await;
    assert_eq!(rds.version_info, "r1");
    assert!(proxy.store.load().resources.routes.contains_key("r"));
    server.set(
        ROUTE_CONFIGURATION,
        "r2",
        vec![route("r", "c"), route("r2", "c")],
    );
    let rds = server
        .wait_sotw(|r| r.type_url == ROUTE_CONFIGURATION && r.resource_names == ["r2"])
        .await;
    assert_eq!(rds.version_info, "r2");
    wait_store(&proxy.store, |s| {
        s.resources.routes.keys().eq(["r2"]) && s.resources.listeners.contains_key("l")
    })
    .await;
}

#[tokio::test]
async fn sotw_nacks_keep_the_previous_config() {
    let server = AdsServer::start().await.unwrap();
    server.set(CLUSTER, "1", vec![eds_cluster("c")]);
    server.set(LISTENER, "1", vec![listener("l", "r", "hcm")]);
    server.set(CLUSTER_LOAD_ASSIGNMENT, "1", vec![assignment("c", 8080)]);
    server.set(ROUTE_CONFIGURATION, "1", vec![route("r", "c")]);
    let proxy = start_proxy(&server, "GRPC", Backoff::default());
    wait_live(&proxy.tracker).await;
    let before = proxy.store.load();

    // An unsupported extension: NACK naming the listener and the field.
    server.set(LISTENER, "2", vec![listener("l", "r", "redis")]);
    let nack = server
        .wait_sotw(|r| r.type_url == LISTENER && r.error_detail.is_some())
        .await;
    assert_eq!(
        nack.version_info, "1",
        "a NACK keeps the last ACKed version"
    );
    let detail = nack.error_detail.unwrap();
    assert_eq!(detail.code, 3);
    assert!(detail.message.contains("listener l"), "{}", detail.message);
    assert!(
        detail.message.contains("filter_chains[0].filters[0]"),
        "{}",
        detail.message
    );

    // A malformed resource: NACK naming the kind and index; nothing of the response applied.
    server.set_named(
        CLUSTER,
        "2",
        vec![
            ("c".into(), eds_cluster("c")),
            ("bad".into(), garbage(CLUSTER)),
        ],
    );
    let nack = server
        .wait_sotw(|r| r.type_url == CLUSTER && r.error_detail.is_some())
        .await;
    assert_eq!(nack.version_info, "1");
    assert!(
        nack.error_detail
            .unwrap()
            .message
            .starts_with("CDS resource [0]"),
        "sorted by name, the garbage resource comes first"
    );

    // An unknown type URL.
    let nonce = server.send_sotw(DiscoveryResponse {
        version_info: "x".into(),
        type_url: "type.googleapis.com/foo.v1.Bar".into(),
        ..Default::default()
    });
    let nack = server.wait_sotw(|r| r.response_nonce == nonce).await;
    assert_eq!(nack.type_url, "type.googleapis.com/foo.v1.Bar");
    assert!(
        nack.error_detail
            .unwrap()
            .message
            .contains("unsupported resource type")
    );

    let after = proxy.store.load();
    assert_eq!(after.generation, before.generation, "nothing was applied");
    assert!(after.resources.listeners.contains_key("l"));
    let stats = proxy.tracker.stats().counters();
    let get = |name: &str| stats.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    assert_eq!(get("listener_manager.lds.update_rejected"), Some(1));
    assert_eq!(get("cluster_manager.cds.update_rejected"), Some(1));
    assert_eq!(get("listener_manager.lds.update_success"), Some(1));
}

#[tokio::test]
async fn delta_acks_nacks_and_removes() {
    let server = AdsServer::start().await.unwrap();
    server.set(CLUSTER, "1", vec![eds_cluster("a"), eds_cluster("b")]);
    server.set(
        CLUSTER_LOAD_ASSIGNMENT,
        "1",
        vec![assignment("a", 8080), assignment("b", 8081)],
    );
    server.set(LISTENER, "1", vec![]);
    let proxy = start_proxy(&server, "DELTA_GRPC", Backoff::default());
    wait_live(&proxy.tracker).await;

    let subscribe = server
        .wait_delta(|r| {
            r.type_url == CLUSTER_LOAD_ASSIGNMENT && !r.resource_names_subscribe.is_empty()
        })
        .await;
    let mut names = subscribe.resource_names_subscribe.clone();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    let ack = server
        .wait_delta(|r| r.type_url == CLUSTER && !r.response_nonce.is_empty())
        .await;
    assert!(ack.error_detail.is_none());

    // Removal: the cluster goes, and its endpoints are unsubscribed.
    server.set(CLUSTER, "2", vec![eds_cluster("a")]);
    let unsubscribe = server
        .wait_delta(|r| {
            r.type_url == CLUSTER_LOAD_ASSIGNMENT && !r.resource_names_unsubscribe.is_empty()
        })
        .await;
    assert_eq!(unsubscribe.resource_names_unsubscribe, ["b"]);
    wait_store(&proxy.store, |s| {
        !s.resources.clusters.contains_key("b") && !s.resources.load_assignments.contains_key("b")
    })
    .await;

    // NACK: by nonce, with error_detail; nothing applied.
    let nonce = server.send_delta(DeltaDiscoveryResponse {
        type_url: CLUSTER.into(),
        resources: vec![xds_proto::envoy::service::discovery::v3::Resource {
            name: "z".into(),
            version: "9".into(),
            resource: Some(garbage(CLUSTER)),
            ..Default::default()
        }],
        removed_resources: vec!["a".into()],
        ..Default::default()
    });
    let nack = server.wait_delta(|r| r.response_nonce == nonce).await;
    let detail = nack.error_detail.expect("NACK carries error_detail");
    assert_eq!(detail.code, 3);
    assert!(
        detail.message.contains("CDS resource [0]"),
        "{}",
        detail.message
    );
    assert!(proxy.store.load().resources.clusters.contains_key("a"));
}

#[tokio::test(start_paused = true)]
async fn reconnect_with_backoff_resumes_subscriptions() {
    let mut server = AdsServer::start().await.unwrap();
    server.set(CLUSTER, "1", vec![eds_cluster("c")]);
    server.set(CLUSTER_LOAD_ASSIGNMENT, "1", vec![assignment("c", 8080)]);
    server.set(LISTENER, "1", vec![]);
    let proxy = start_proxy(&server, "DELTA_GRPC", Backoff::default());
    wait_live(&proxy.tracker).await;
    assert_eq!(server.streams_opened(), 1);

    server.stop().await;
    // Connection attempts fail while it is down; the last good config keeps serving.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(proxy.store.load().resources.clusters.contains_key("c"));
    assert_eq!(proxy.tracker.server_state(), ServerState::Live);

    let seen = server.requests().len();
    server.restart().await.unwrap();
    let resumed = server
        .wait_for_from(seen, |r| {
            matches!(r, ferry_tests::ads::Recorded::Delta(d)
            if d.type_url == CLUSTER_LOAD_ASSIGNMENT && d.resource_names_subscribe == ["c"])
        })
        .await;
    let ferry_tests::ads::Recorded::Delta(resumed) = resumed else {
        unreachable!()
    };
    assert_eq!(
        resumed
            .initial_resource_versions
            .get("c")
            .map(String::as_str),
        Some("1")
    );
    assert!(server.streams_opened() >= 2);
    let cds = server
        .wait_for_from(
            seen,
            |r| matches!(r, ferry_tests::ads::Recorded::Delta(d) if d.type_url == CLUSTER),
        )
        .await;
    let ferry_tests::ads::Recorded::Delta(cds) = cds else {
        unreachable!()
    };
    assert_eq!(
        cds.initial_resource_versions.get("c").map(String::as_str),
        Some("1")
    );
    assert!(cds.node.is_some(), "a new stream sends the node again");
}

async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin accepts");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request written");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response read");
    let status = response[9..12].parse().expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn admin_endpoints_report_config_and_readiness() {
    let server = AdsServer::start().await.unwrap();
    initial_config(&server).await;
    let proxy = start_proxy(&server, "GRPC", Backoff::default());
    let addr = admin::address(proxy.tracker.bootstrap()).unwrap().unwrap();
    let lifecycle = Lifecycle::new();
    let (addr, _admin) = admin::serve(
        addr,
        AdminState::new(proxy.tracker.clone(), lifecycle.clone()),
    )
    .await
    .unwrap();
    assert_ne!(addr.port(), 0, "the bound port is reported");

    let (status, body) = http(addr, "GET", "/ready").await;
    assert_eq!((status, body.trim()), (503, "INITIALIZING"));

    server.set(CLUSTER_LOAD_ASSIGNMENT, "e1", vec![assignment("c", 8080)]);
    server.set(ROUTE_CONFIGURATION, "r1", vec![route("r", "c")]);
    wait_live(&proxy.tracker).await;
    let (status, body) = http(addr, "GET", "/ready").await;
    assert_eq!((status, body.trim()), (200, "LIVE"));

    let (status, body) = http(addr, "GET", "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    let configs = dump["configs"].as_array().unwrap();
    let find = |suffix: &str| {
        configs
            .iter()
            .find(|c| c["@type"].as_str().unwrap().ends_with(suffix))
            .unwrap_or_else(|| panic!("{suffix} in {dump}"))
    };
    assert!(find("BootstrapConfigDump")["bootstrap"]["node"]["id"].is_string());
    let listeners = find("ListenersConfigDump");
    assert_eq!(listeners["version_info"], "1");
    assert_eq!(listeners["dynamic_listeners"][0]["name"], "l");
    assert_eq!(
        listeners["dynamic_listeners"][0]["active_state"]["version_info"],
        "1"
    );
    assert_eq!(
        listeners["dynamic_listeners"][0]["active_state"]["listener"]["@type"],
        "type.googleapis.com/envoy.config.listener.v3.Listener"
    );
    let clusters = find("ClustersConfigDump");
    assert_eq!(
        clusters["static_clusters"][0]["cluster"]["name"],
        "xds-grpc"
    );
    assert_eq!(clusters["dynamic_active_clusters"][0]["version_info"], "1");
    assert_eq!(
        find("RoutesConfigDump")["dynamic_route_configs"][0]["version_info"],
        "r1"
    );
    assert_eq!(
        find("EndpointsConfigDump")["dynamic_endpoint_configs"][0]["endpoint_config"]["cluster_name"],
        "c"
    );

    let (_, body) = http(addr, "GET", "/clusters").await;
    assert!(
        body.contains("c::127.0.0.1:8080::health_flags::healthy"),
        "{body}"
    );
    assert!(body.contains("c::added_via_api::true"), "{body}");
    let (_, body) = http(addr, "GET", "/clusters?format=json").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["cluster_statuses"].as_array().unwrap().len() >= 2);

    let (_, body) = http(addr, "GET", "/stats").await;
    assert!(
        body.contains("listener_manager.lds.update_success: 1\n"),
        "{body}"
    );
    assert!(
        body.contains("control_plane.connected_state: 1\n"),
        "{body}"
    );
    // pilot-agent's readiness query.
    let (_, body) = http(
        addr,
        "GET",
        "/stats?usedonly&filter=%5E%28server%5C.state%7Clistener_manager%5C.workers_started%29",
    )
    .await;
    assert_eq!(
        body,
        "listener_manager.workers_started: 1\nserver.state: 0\n"
    );
    let (_, body) = http(addr, "GET", "/stats/prometheus").await;
    assert!(
        body.contains("# TYPE envoy_cluster_manager_cds_update_success counter"),
        "{body}"
    );
    assert!(
        body.contains("envoy_cluster_update_attempt{envoy_cluster_name=\"c\"} 1"),
        "{body}"
    );

    let (status, _) = http(addr, "GET", "/quitquitquit").await;
    assert_eq!(status, 405);
    let (status, _) = http(addr, "POST", "/drain_listeners?inboundonly").await;
    assert_eq!(status, 200);
    assert_eq!(
        *lifecycle.drain().borrow(),
        Some(admin::DrainScope::InboundOnly)
    );
    let (status, _) = http(addr, "POST", "/quitquitquit").await;
    assert_eq!(status, 200);
    assert!(lifecycle.is_shutting_down());
    let (status, body) = http(addr, "GET", "/ready").await;
    assert_eq!((status, body.trim()), (503, "DRAINING"));
}

#[tokio::test]
async fn static_only_bootstrap_is_live_at_once() {
    let bootstrap: Bootstrap = xds_proto::json::from_yaml_str(
        "static_resources: { clusters: [ { name: s, type: STATIC, connect_timeout: 1s } ] }",
    )
    .unwrap();
    let store = Arc::new(ConfigStore::default());
    let (tracker, client) = xds::start(
        Arc::new(bootstrap),
        store.clone(),
        Arc::new(Store::default()),
    )
    .unwrap();
    assert!(client.is_none());
    assert_eq!(tracker.server_state(), ServerState::Live);
    assert!(store.load().resources.clusters.contains_key("s"));
}
