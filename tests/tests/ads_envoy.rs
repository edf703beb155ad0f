//! The xDS protocol, differentially: real Envoy 1.40 and ferry-proxy's ADS client are driven by
//! the same script from the same fixture (state of the world and delta), and must ACK and NACK
//! the same responses. This also proves the fixture itself speaks xDS the way Envoy expects, so
//! the other ADS tests are testing against something real.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_proxy::snapshot::ConfigStore;
use ferry_proxy::stats::Store;
use ferry_proxy::xds::{Backoff, Client, ServerState, Tracker};
use ferry_tests::ads::{AdsServer, Recorded};
use ferry_tests::envoy::Envoy;
use ferry_tests::net;
use ferry_tests::poll::poll_until;
use xds_proto::envoy::config::listener::v3::Listener;
use xds_proto::envoy::config::route::v3::RouteConfiguration;
use xds_proto::google::protobuf::Any;
use xds_proto::type_url::{CLUSTER, LISTENER, ROUTE_CONFIGURATION};

const WAIT: Duration = Duration::from_secs(30);

fn bootstrap(port: u16, api_type: &str) -> String {
    format!(
        r#"
node: {{ id: "sidecar~127.0.0.1~app.default~default.svc.cluster.local", cluster: app.default }}
dynamic_resources:
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
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
    )
}

fn listener() -> Any {
    let listener: Listener = xds_proto::json::from_value(serde_json::json!({
        "name": "http",
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "http",
                "rds": { "route_config_name": "r", "config_source": { "ads": {}, "resource_api_version": "V3" } },
                "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }]
            }
        }]}]
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

/// What a peer answered: (type URL, version it reported (SotW only), NACK?) per response.
fn answers(server: &AdsServer) -> BTreeSet<(String, String, bool)> {
    server
        .requests()
        .into_iter()
        .filter_map(|r| match r {
            Recorded::Sotw(r) if !r.response_nonce.is_empty() => {
                Some((r.type_url, r.version_info, r.error_detail.is_some()))
            }
            Recorded::Delta(r) if !r.response_nonce.is_empty() => {
                Some((r.type_url, String::new(), r.error_detail.is_some()))
            }
            _ => None,
        })
        .collect()
}

async fn nacked(server: &AdsServer) {
    server
        .wait_for(|r| match r {
            Recorded::Sotw(r) => r.type_url == LISTENER && r.error_detail.is_some(),
            Recorded::Delta(r) => r.type_url == LISTENER && r.error_detail.is_some(),
        })
        .await;
}

async fn acked_route(server: &AdsServer, version: &str, delta: bool) {
    let version = version.to_owned();
    server
        .wait_for(move |r| match r {
            Recorded::Sotw(r) => r.type_url == ROUTE_CONFIGURATION && r.version_info == version,
            Recorded::Delta(r) => {
                delta && r.type_url == ROUTE_CONFIGURATION && !r.response_nonce.is_empty()
            }
        })
        .await;
}

/// The script both peers go through; `get` reads the listener's answer.
async fn script<F, Fut>(server: &AdsServer, delta: bool, get: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<String>>,
{
    poll_until("v1 served", WAIT, || async {
        (get().await.as_deref() == Some("v1")).then_some(())
    })
    .await;
    // Malformed: NACKed, the previous config keeps serving.
    server.set_named(
        LISTENER,
        "2",
        vec![(
            "http".into(),
            Any {
                type_url: LISTENER.into(),
                value: vec![0x0a, 0xff, 0xff],
            },
        )],
    );
    nacked(server).await;
    assert_eq!(get().await.as_deref(), Some("v1"));
    // A good update after the NACK is ACKed and served.
    server.set(ROUTE_CONFIGURATION, "3", vec![direct("v3")]);
    acked_route(server, "3", delta).await;
    poll_until("v3 served", WAIT, || async {
        (get().await.as_deref() == Some("v3")).then_some(())
    })
    .await;
}

async fn fixture() -> AdsServer {
    let server = AdsServer::start().await.expect("ADS server starts");
    server.set(CLUSTER, "1", vec![]);
    server.set(LISTENER, "1", vec![listener()]);
    server.set(ROUTE_CONFIGURATION, "1", vec![direct("v1")]);
    server
}

async fn body(addr: std::net::SocketAddr) -> Option<String> {
    net::get(addr, "app", "/").await.ok().map(|r| r.text())
}

async fn differential(api_type: &str) {
    let delta = api_type == "DELTA_GRPC";

    let envoy_server = fixture().await;
    let Some(envoy) = Envoy::start(&bootstrap(envoy_server.addr().port(), api_type)).await else {
        return;
    };
    let envoy_addr = envoy.wait_listener("http").await;
    script(&envoy_server, delta, || body(envoy_addr)).await;
    drop(envoy);

    let ferry_server = fixture().await;
    let yaml = bootstrap(ferry_server.addr().port(), api_type);
    let bootstrap = Arc::new(xds_proto::json::from_yaml_str(&yaml).expect("bootstrap parses"));
    let stats = Arc::new(Store::default());
    let store = Arc::new(ConfigStore::new(ferry_proxy::cluster::ClusterManager::new(
        stats.clone(),
    )));
    let tracker =
        Tracker::new(bootstrap, store.clone(), stats.clone()).expect("bootstrap accepted");
    let client = Client::spawn_with_backoff(
        tracker.ads_config().cloned().expect("ads configured"),
        tracker.clone(),
        Backoff::default(),
    );
    let listeners = ferry_proxy::listener::manager::ListenerManager::new(store, stats);
    listeners.reconcile().await;
    let reconciler = tokio::spawn(listeners.clone().run());
    let ferry_addr = poll_until("ferry listener bound", WAIT, || async {
        listeners.listener_addr("http")
    })
    .await;
    assert_eq!(tracker.server_state(), ServerState::Live);
    script(&ferry_server, delta, || body(ferry_addr)).await;
    client.abort();
    reconciler.abort();

    let envoy_answers = answers(&envoy_server);
    assert!(
        envoy_answers.iter().any(|(_, _, nack)| *nack),
        "{envoy_answers:?}"
    );
    assert!(
        envoy_answers.iter().filter(|(_, _, nack)| !nack).count() >= 3,
        "{envoy_answers:?}"
    );
    assert_eq!(
        answers(&ferry_server),
        envoy_answers,
        "ferry-proxy and Envoy must ACK and NACK the same responses"
    );
}

#[tokio::test]
async fn sotw_acks_and_nacks_like_envoy() {
    differential("GRPC").await;
}

#[tokio::test]
async fn delta_acks_and_nacks_like_envoy() {
    differential("DELTA_GRPC").await;
}
