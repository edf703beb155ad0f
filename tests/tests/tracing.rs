//! Distributed tracing through real ferry-proxy instances on loopback, configured the way istiod
//! configures sidecars (HCM `tracing` with the `envoy.tracers.zipkin` provider):
//! - two sidecars in series (an outbound one, then the callee's inbound one) report one trace
//!   to a Zipkin collector: the outbound CLIENT span is the parent of the inbound SERVER span,
//!   both carry Envoy's standard tags, and the application sees the B3 context;
//! - an invalid `tracing` block arriving over ADS is NACKed naming the field, and the last good
//!   config keeps serving.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_proxy::app::{self, Running};
use ferry_proxy::cluster::ClusterManager;
use ferry_proxy::listener::manager::ListenerManager;
use ferry_proxy::snapshot::ConfigStore;
use ferry_proxy::stats::Store;
use ferry_proxy::xds::{Backoff, Client, Tracker};
use ferry_tests::ads::AdsServer;
use ferry_tests::bootstrap;
use ferry_tests::collector::ZipkinCollector;
use ferry_tests::net;
use ferry_tests::poll::{PATIENCE, poll_until};
use ferry_tests::upstream::Upstream;
use serde_json::{Value, json};
use xds_proto::envoy::config::listener::v3::Listener;
use xds_proto::google::protobuf::Any;
use xds_proto::type_url::{CLUSTER, LISTENER};

const WAIT: Duration = Duration::from_secs(30);

/// The `tracing` block istiod puts on a sidecar HCM (sampling raised to 100%).
fn istio_tracing(endpoint_version: &str) -> Value {
    json!({
        "client_sampling": { "value": 100.0 },
        "random_sampling": { "value": 100.0 },
        "overall_sampling": { "value": 100.0 },
        "custom_tags": [
            { "tag": "istio.canonical_service", "literal": { "value": "reviews" } },
            { "tag": "istio.mesh_id", "literal": { "value": "cluster.local" } },
            { "tag": "istio.authorization.dry_run.allow_policy.name", "metadata": {
                "kind": { "request": {} },
                "metadata_key": { "key": "envoy.filters.http.rbac", "path": [{ "key": "shadow_effective_policy_id" }] } } }
        ],
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": "zipkin",
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": endpoint_version,
                "trace_id_128bit": true,
                "shared_span_context": false,
                "collector_hostname": "zipkin.istio-system.svc.cluster.local"
            }
        }
    })
}

/// A sidecar listener `name` (traffic_direction `direction`) whose HCM traces and routes
/// everything to `cluster`, or answers `direct` when given.
fn listener(name: &str, direction: &str, cluster: &str, tracing: Value) -> Value {
    json!({
        "name": name,
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
        "traffic_direction": direction,
        "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "tracing": tracing,
            "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }],
            "route_config": { "name": name, "virtual_hosts": [{ "name": "all", "domains": ["*"],
                "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster },
                    "decorator": { "operation": format!("{name}/*") } }] }] }
        } }] }]
    })
}

async fn sidecar(node: &str, listener: Value, clusters: &[String]) -> Running {
    let listener_yaml = serde_yaml_ng::to_string(&json!([listener])).expect("yaml");
    let indented: String = listener_yaml.lines().map(|l| format!("\n  {l}")).collect();
    let yaml = format!(
        "node: {{ id: \"sidecar~127.0.0.1~{node}.default~default.svc.cluster.local\", cluster: \"{node}.default\" }}\n{}",
        bootstrap::static_resources(&[indented], clusters)
    );
    let bootstrap = xds_proto::json::from_yaml_str(&yaml).expect("bootstrap parses");
    app::start(bootstrap).await.expect("sidecar starts")
}

fn stat(running: &Running, name: &str) -> u64 {
    running
        .stats
        .counters()
        .into_iter()
        .find_map(|(n, v)| (n == name).then_some(v))
        .unwrap_or(0)
}

fn tags(span: &Value) -> HashMap<String, String> {
    span["tags"]
        .as_object()
        .expect("tags")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

#[tokio::test]
async fn two_sidecars_in_series_report_one_trace_per_request() {
    let collector = ZipkinCollector::start().await.expect("collector starts");
    let app = Upstream::echo("reviews-v1").await.expect("upstream starts");
    let zipkin = bootstrap::static_cluster("zipkin", collector.addr);
    let inbound = sidecar(
        "reviews",
        listener(
            "inbound_9080",
            "INBOUND",
            "inbound|9080||",
            istio_tracing("HTTP_JSON"),
        ),
        &[
            bootstrap::static_cluster("inbound|9080||", app.addr),
            zipkin.clone(),
        ],
    )
    .await;
    let inbound_addr: SocketAddr = inbound
        .listeners
        .listener_addr("inbound_9080")
        .expect("inbound bound");
    let outbound = sidecar(
        "productpage",
        listener(
            "0.0.0.0_9080",
            "OUTBOUND",
            "outbound|9080||reviews",
            istio_tracing("HTTP_JSON"),
        ),
        &[
            bootstrap::static_cluster("outbound|9080||reviews", inbound_addr),
            zipkin,
        ],
    )
    .await;
    let outbound_addr = outbound
        .listeners
        .listener_addr("0.0.0.0_9080")
        .expect("outbound bound");

    // Five requests: each proxy's reporter sends a batch at five spans (Envoy's
    // min_flush_spans), so no flush timer is waited for.
    let mut seen_by_app = Vec::new();
    for i in 0..5 {
        let reply = net::get(outbound_addr, "reviews:9080", &format!("/reviews/{i}"))
            .await
            .expect("request through both sidecars");
        assert_eq!(reply.status, 200, "{}", reply.text());
        let echoed: Value = serde_json::from_str(&reply.text()).expect("echo json");
        seen_by_app.push(echoed["headers"].clone());
    }
    let spans = poll_until("10 spans at the collector", PATIENCE, || async {
        let spans = collector.spans();
        (spans.len() >= 10).then_some(spans)
    })
    .await;
    assert_eq!(spans.len(), 10, "{spans:#?}");

    let mut traces: HashMap<String, Vec<Value>> = HashMap::new();
    for span in spans {
        let trace = span["traceId"].as_str().expect("traceId").to_owned();
        assert_eq!(trace.len(), 32, "trace_id_128bit");
        traces.entry(trace).or_default().push(span);
    }
    assert_eq!(traces.len(), 5, "one trace per request");
    for (trace, spans) in &traces {
        let client = spans
            .iter()
            .find(|s| s["kind"] == "CLIENT")
            .expect("client span");
        let server = spans
            .iter()
            .find(|s| s["kind"] == "SERVER")
            .expect("server span");
        assert!(
            client.get("parentId").is_none(),
            "the client span is the root"
        );
        assert_eq!(
            server["parentId"], client["id"],
            "client span is the server span's parent"
        );
        assert_ne!(server["id"], client["id"], "shared_span_context: false");
        assert_eq!(
            client["localEndpoint"]["serviceName"],
            "productpage.default"
        );
        assert_eq!(server["localEndpoint"]["serviceName"], "reviews.default");
        assert_eq!(client["name"], "0.0.0.0_9080/*", "the route's decorator names the span");
        assert_eq!(server["name"], "inbound_9080/*");
        let (ct, st) = (tags(client), tags(server));
        for t in [&ct, &st] {
            assert_eq!(t["component"], "proxy");
            assert_eq!(t["http.method"], "GET");
            assert_eq!(t["http.status_code"], "200");
            assert_eq!(t["response_flags"], "-");
            assert_eq!(t["istio.canonical_service"], "reviews");
            assert!(
                t["http.url"].starts_with("http://reviews:9080/reviews/"),
                "{t:?}"
            );
            assert!(!t.contains_key("error"));
            assert!(!t.contains_key("istio.authorization.dry_run.allow_policy.name"));
        }
        assert_eq!(ct["upstream_cluster"], "outbound|9080||reviews");
        assert_eq!(st["upstream_cluster"], "inbound|9080||");
        assert!(ct["node_id"].contains("productpage.default"));
        assert!(st["node_id"].contains("reviews.default"));
        // One request id across the hops.
        assert_eq!(ct["guid:x-request-id"], st["guid:x-request-id"]);
        // The application got the server span's context.
        let headers = seen_by_app
            .iter()
            .find(|h| h["x-b3-traceid"] == trace.as_str())
            .expect("the app saw this trace id");
        assert_eq!(headers["x-b3-spanid"], server["id"]);
        assert_eq!(headers["x-b3-parentspanid"], client["id"]);
        assert_eq!(headers["x-b3-sampled"], "1");
        assert_eq!(headers["x-request-id"], ct["guid:x-request-id"].as_str());
    }
    for (running, prefix) in [(&outbound, "0.0.0.0_9080"), (&inbound, "inbound_9080")] {
        assert_eq!(stat(running, "tracing.zipkin.spans_sent"), 5);
        assert_eq!(stat(running, "tracing.zipkin.reports_sent"), 1);
        assert_eq!(stat(running, "tracing.zipkin.reports_failed"), 0);
        assert_eq!(
            stat(running, &format!("http.{prefix}.tracing.random_sampling")),
            5
        );
    }
    assert_eq!(collector.reports(), 2);
}

fn ads_bootstrap(uri: &str) -> Arc<xds_proto::envoy::config::bootstrap::v3::Bootstrap> {
    let yaml = format!(
        r#"
node: {{ id: "sidecar~127.0.0.1~app.default~default.svc.cluster.local", cluster: app.default }}
dynamic_resources:
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [ {{ google_grpc: {{ target_uri: "{uri}", stat_prefix: ads }} }} ]
"#
    );
    Arc::new(xds_proto::json::from_yaml_str(&yaml).expect("bootstrap parses"))
}

fn packed(listener: Value) -> Any {
    let listener: Listener = xds_proto::json::from_value(listener).expect("listener parses");
    xds_proto::any::pack(&listener)
}

#[tokio::test]
async fn invalid_tracing_is_nacked_and_the_last_good_config_serves() {
    let app = Upstream::echo("app").await.expect("upstream starts");
    let cluster: xds_proto::envoy::config::cluster::v3::Cluster = xds_proto::json::from_yaml_str(
        &format!(
            "name: app\ntype: STATIC\nconnect_timeout: 1s\nload_assignment: {{ cluster_name: app, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}] }}",
            app.addr.port()
        ),
    )
    .expect("cluster parses");
    let server = AdsServer::start().await.expect("ADS server starts");
    server.set(CLUSTER, "1", vec![xds_proto::any::pack(&cluster)]);
    server.set(
        LISTENER,
        "1",
        vec![packed(listener(
            "http",
            "OUTBOUND",
            "app",
            istio_tracing("HTTP_JSON"),
        ))],
    );
    let stats = Arc::new(Store::default());
    let store = Arc::new(ConfigStore::new(ClusterManager::new(stats.clone())));
    let tracker = Tracker::new(ads_bootstrap(&server.uri()), store.clone(), stats.clone())
        .expect("bootstrap accepted");
    let client = Client::spawn_with_backoff(
        tracker.ads_config().cloned().expect("ads configured"),
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
    poll_until("traced listener serves", WAIT, || async {
        let reply = net::get(addr, "app", "/").await.ok()?;
        (reply.status == 200 && reply.text().contains("x-b3-traceid")).then_some(())
    })
    .await;

    server.set(
        LISTENER,
        "2",
        vec![packed(listener(
            "http",
            "OUTBOUND",
            "app",
            istio_tracing("HTTP_PROTO"),
        ))],
    );
    let nack = server
        .wait_sotw(|r| r.type_url == LISTENER && r.error_detail.is_some())
        .await;
    let detail = nack.error_detail.expect("error detail").message;
    assert!(
        detail.contains("tracing.provider.typed_config.collector_endpoint_version"),
        "{detail}"
    );
    let reply = net::get(addr, "app", "/").await.expect("still serving");
    assert_eq!(reply.status, 200);
    assert!(
        reply.text().contains("x-b3-traceid"),
        "the last good (traced) config serves"
    );

    client.abort();
    reconciler.abort();
}
