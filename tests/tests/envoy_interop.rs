//! A real Envoy 1.40 against ferry-control's ADS server, over state-of-the-world (`GRPC`) and
//! delta (`DELTA_GRPC`): Envoy must ACK every resource of every type (server-side ACK state and
//! Envoy's own `update_rejected` counters) and route traffic to real upstream servers on
//! loopback by the VirtualService: weighted split, header match and timeout.
//!
//! The resources are Istio-shaped (names, retry policy, EDS clusters, catch-all listener) and
//! come from a fixed generator until the translator is merged. Envoy is found and started by
//! `ferry_tests::envoy` (skipped without it, except under `CI`, where the tests fail).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use ferry_control::app::{self, Running, ServeOptions, Sources};
use ferry_control::model::Model;
use ferry_control::model::proxy::ProxyNode;
use ferry_control::xds::cache::ResourceType;
use ferry_control::xds::connection::Protocol;
use ferry_control::xds::debounce::DebounceConfig;
use ferry_control::xds::{GenerateError, Resources};
use ferry_tests::envoy::Envoy;
use ferry_tests::net::{self, Protocol as Http};
use ferry_tests::poll::{PATIENCE, poll_until};
use http::Method;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use xds_proto::json::from_yaml_str;

const HOST: &str = "reviews.default.svc.cluster.local";
const NODE_ID: &str =
    "sidecar~127.0.0.1~productpage-v1-6b746f74dc-9stvs.default~default.svc.cluster.local";

/// An upstream HTTP server answering its name, except `/hang`, which never answers.
async fn upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        if req.uri().path().starts_with("/hang") {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(name))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Istio's default retry policy (no `retries` in the VirtualService).
const RETRY: &str = r#"{ retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", num_retries: 2, retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts, typed_config: { "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }], host_selection_retry_max_attempts: "5" }"#;

fn cluster(subset: &str) -> String {
    let name = format!("outbound|9080|{subset}|{HOST}");
    format!(
        r#"
name: "{name}"
type: EDS
eds_cluster_config:
  eds_config: {{ ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3 }}
  service_name: "{name}"
connect_timeout: 10s
lb_policy: LEAST_REQUEST
circuit_breakers:
  thresholds:
  - {{ max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295, max_retries: 4294967295, track_remaining: true }}
outlier_detection: {{ consecutive_5xx: 5, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 10, enforcing_success_rate: 0 }}
common_lb_config: {{}}
metadata:
  filter_metadata:
    istio:
      services: [{{ host: {HOST}, name: reviews, namespace: default }}]
      subset: "{subset}"
"#
    )
}

fn assignment(subset: &str, ports: &[(u16, &str)]) -> String {
    let endpoints: String = ports
        .iter()
        .map(|(port, version)| {
            format!(
                r#"
  - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
    metadata: {{ filter_metadata: {{ istio: {{ workload: "reviews-{version};default;reviews;{version};Kubernetes" }} }} }}
    load_balancing_weight: 1"#
            )
        })
        .collect();
    format!(
        r#"
cluster_name: "outbound|9080|{subset}|{HOST}"
endpoints:
- locality: {{}}
  load_balancing_weight: 1
  lb_endpoints:{endpoints}
"#
    )
}

fn http_listener(name: &str, address: &str, port: u16, bind: bool) -> String {
    format!(
        r#"
name: "{name}"
address: {{ socket_address: {{ address: {address}, port_value: {port} }} }}
bind_to_port: {bind}
traffic_direction: OUTBOUND
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: outbound_0.0.0.0_9080
      rds:
        config_source: {{ ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3 }}
        route_config_name: "9080"
      use_remote_address: false
      stream_idle_timeout: 0s
      upgrade_configs: [{{ upgrade_type: websocket }}]
      http_filters:
      - name: envoy.filters.http.fault
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault }}
      - name: envoy.filters.http.cors
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }}
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    )
}

const VIRTUAL_OUTBOUND: &str = r#"
name: virtualOutbound
address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
use_original_dst: true
traffic_direction: OUTBOUND
filter_chains:
- name: virtualOutbound-catchall-tcp
  filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: PassthroughCluster
      cluster: PassthroughCluster
"#;

const SPECIAL_CLUSTERS: [&str; 2] = [
    "{ name: BlackHoleCluster, type: STATIC, connect_timeout: 10s }",
    r#"
name: PassthroughCluster
type: ORIGINAL_DST
connect_timeout: 10s
lb_policy: CLUSTER_PROVIDED
circuit_breakers:
  thresholds: [{ max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295, max_retries: 4294967295 }]
"#,
];

/// Route `9080` as Istio renders the Bookinfo-style VirtualService: `end-user: jason` to v2,
/// `/hang` to v1 with a 0.5 s timeout, everything else split between v1 and v3 by `weights`.
fn route_9080((v1, v3): (u32, u32)) -> String {
    let domains: Vec<String> = [HOST, "reviews.default.svc", "reviews.default", "reviews"]
        .iter()
        .flat_map(|d| [d.to_string(), format!("{d}:9080")])
        .collect();
    format!(
        r#"
name: "9080"
validate_clusters: false
virtual_hosts:
- name: "{HOST}:9080"
  domains: {domains:?}
  routes:
  - name: jason
    match:
      prefix: /
      case_sensitive: true
      headers: [{{ name: end-user, string_match: {{ exact: jason }} }}]
    route:
      cluster: "outbound|9080|v2|{HOST}"
      timeout: 0s
      retry_policy: {RETRY}
    decorator: {{ operation: "{HOST}:9080/*" }}
  - name: hang
    match: {{ prefix: /hang }}
    route:
      cluster: "outbound|9080|v1|{HOST}"
      timeout: 0.5s
      retry_policy: {RETRY}
  - name: split
    match: {{ prefix: / }}
    route:
      weighted_clusters:
        clusters:
        - {{ name: "outbound|9080|v1|{HOST}", weight: {v1} }}
        - {{ name: "outbound|9080|v3|{HOST}", weight: {v3} }}
      timeout: 0s
      retry_policy: {RETRY}
- name: allow_any
  domains: ["*"]
  routes:
  - name: allow_any
    match: {{ prefix: / }}
    route: {{ cluster: PassthroughCluster, timeout: 0s }}
"#
    )
}

/// Istio-shaped resources for the productpage sidecar, pointing at the upstream servers.
fn bookinfo(ports: &BTreeMap<&str, u16>, weights: (u32, u32)) -> Resources {
    let mut r = Resources::default();
    let all: Vec<(u16, &str)> = ports.iter().map(|(v, p)| (*p, *v)).collect();
    for subset in ["", "v1", "v2", "v3"] {
        r.clusters
            .push(from_yaml_str(&cluster(subset)).expect("cluster"));
        let eps: Vec<(u16, &str)> = if subset.is_empty() {
            all.clone()
        } else {
            vec![(ports[subset], subset)]
        };
        r.endpoints
            .push(from_yaml_str(&assignment(subset, &eps)).expect("assignment"));
    }
    for special in SPECIAL_CLUSTERS {
        r.clusters
            .push(from_yaml_str(special).expect("special cluster"));
    }
    r.listeners
        .push(from_yaml_str(VIRTUAL_OUTBOUND).expect("virtualOutbound"));
    r.listeners.push(
        from_yaml_str(&http_listener("0.0.0.0_9080", "0.0.0.0", 9080, false)).expect("listener"),
    );
    // Local mode: the same listener bound on the sidecar's loopback address.
    r.listeners.push(
        from_yaml_str(&http_listener("127.0.0.1_9080", "127.0.0.1", 0, true)).expect("listener"),
    );
    r.routes
        .push(from_yaml_str(&route_9080(weights)).expect("route"));
    r
}

fn bootstrap(api_type: &str, xds: SocketAddr) -> String {
    ferry_tests::envoy::sidecar_bootstrap(api_type, NODE_ID, "127.0.0.1", xds)
}

/// A request to the sidecar for `reviews:9080`: (status, body).
async fn get(proxy: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let request = net::request(Method::GET, "reviews:9080", path, headers).ok()?;
    let reply = net::send(proxy, Http::Http1, request).await.ok()?;
    Some((reply.status.as_u16(), reply.text()))
}

async fn interop(api_type: &str) {
    let ports: BTreeMap<&str, u16> = BTreeMap::from([
        ("v1", upstream("reviews-v1").await.port()),
        ("v2", upstream("reviews-v2").await.port()),
        ("v3", upstream("reviews-v3").await.port()),
    ]);
    // Until the translator lands, the model's contents select the VirtualService's weights:
    // an empty model is the 50/50 canary, any service in it means "all traffic to v3".
    let split = bookinfo(&ports, (50, 50));
    let all_v3 = bookinfo(&ports, (0, 100));
    let generator = move |model: &Model, proxy: &ProxyNode| -> Result<Resources, GenerateError> {
        assert_eq!(proxy.namespace, "default");
        Ok(if model.services.is_empty() {
            split.clone()
        } else {
            all_v3.clone()
        })
    };
    let (feed, sources) = Sources::channel();
    let models_tx = feed.models;
    models_tx.send_replace(Some(Arc::new(Model::default())));
    let options = ServeOptions {
        config_dir: ".".into(),
        kubernetes: false,
        xds_address: "127.0.0.1:0".parse().unwrap(),
        debug_address: "127.0.0.1:0".parse().unwrap(),
        local_mode: true,
        debounce: DebounceConfig::default(),
        mesh: Default::default(),
    };
    let running: Running = app::start(&options, sources, Arc::new(generator))
        .await
        .unwrap();
    let Some(envoy) = Envoy::start(&bootstrap(api_type, running.xds_address)).await else {
        return;
    };

    // Server side: every type sent and ACKed, nothing NACKed.
    let registry = running.server.registry();
    let status = poll_until("Envoy to ACK all four types", PATIENCE, || {
        let found = registry
            .find(NODE_ID)
            .filter(|c| c.types.len() == 4 && c.synced());
        async move { found }
    })
    .await;
    let protocol = if api_type == "DELTA_GRPC" {
        Protocol::Delta
    } else {
        Protocol::StateOfTheWorld
    };
    assert_eq!(status.protocol, protocol);
    for (ty, t) in &status.types {
        assert_eq!(t.last_nack, None, "{ty:?} NACKed");
        assert!(t.pushes >= 1, "{ty:?} never pushed");
    }
    for ty in ResourceType::PUSH_ORDER {
        assert_eq!(running.server.metrics().rejects(ty), 0);
    }

    // Envoy side (LIVE once `start` returns): nothing rejected, every resource active.
    let stats = envoy
        .admin_get("/stats?filter=update_(rejected|success)")
        .await
        .unwrap()
        .text();
    for line in stats.lines().filter(|l| l.contains("update_rejected")) {
        assert!(line.ends_with(": 0"), "rejected update: {line}\n{stats}");
    }
    for must in [
        "cluster_manager.cds.update_success",
        "listener_manager.lds.update_success",
        "rds.9080.update_success",
    ] {
        let line = stats
            .lines()
            .find(|l| l.contains(must))
            .unwrap_or_else(|| panic!("no {must} in\n{stats}"));
        assert!(!line.ends_with(": 0"), "{line}");
    }
    let dump = envoy.admin_get("/config_dump").await.unwrap().text();
    for name in [
        format!("outbound|9080|v2|{HOST}"),
        "PassthroughCluster".into(),
        "virtualOutbound".into(),
        "0.0.0.0_9080".into(),
    ] {
        assert!(
            dump.contains(&name),
            "{name} missing from Envoy's config_dump"
        );
    }

    // Traffic through the sidecar's bound listener, routed by the VirtualService.
    let proxy = envoy.wait_listener("127.0.0.1_9080").await;

    let (code, body) = get(
        proxy,
        "/",
        &[("Host", "reviews:9080"), ("end-user", "jason")],
    )
    .await
    .unwrap();
    assert_eq!((code, body.as_str()), (200, "reviews-v2"), "header match");

    let mut seen = BTreeMap::<String, u32>::new();
    for _ in 0..40 {
        let (code, body) = get(proxy, "/reviews/0", &[]).await.unwrap();
        assert_eq!(code, 200, "{body}");
        *seen.entry(body).or_default() += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["reviews-v1", "reviews-v3"],
        "50/50 split reaches both subsets and nothing else: {seen:?}"
    );

    let (code, body) = get(proxy, "/hang", &[]).await.unwrap();
    assert_eq!(code, 504, "route timeout: {body}");
    assert!(body.contains("upstream request timeout"), "{body}");

    // A live edit: the new weights are pushed (RDS only), ACKed, and followed.
    let route_version = status.types[&ResourceType::Route].sent_version.clone();
    let mut model = Model::default();
    model.services.insert("edited".into(), edited_service());
    models_tx.send_replace(Some(Arc::new(model)));
    let updated = poll_until("Envoy to ACK the edited routes", PATIENCE, || {
        let found = registry
            .find(NODE_ID)
            .filter(|c| c.synced() && c.types[&ResourceType::Route].sent_version != route_version);
        async move { found }
    })
    .await;
    assert_eq!(
        updated.types[&ResourceType::Cluster].pushes,
        status.types[&ResourceType::Cluster].pushes,
        "clusters did not change and were not re-pushed"
    );
    // The ACK precedes the route table reaching Envoy's worker thread by a moment.
    poll_until("the edited routes on Envoy's worker", PATIENCE, || async {
        get(proxy, "/reviews/0", &[])
            .await
            .filter(|(_, body)| body == "reviews-v3")
    })
    .await;
    for _ in 0..20 {
        let (code, body) = get(proxy, "/reviews/0", &[]).await.unwrap();
        assert_eq!((code, body.as_str()), (200, "reviews-v3"));
    }

    drop(envoy);
    running.shutdown().await.unwrap();
}

fn edited_service() -> ferry_control::model::Service {
    ferry_control::model::Service {
        hostname: "edited.default.svc.cluster.local".into(),
        name: "edited".into(),
        namespace: "default".into(),
        addresses: vec![],
        ports: vec![],
        resolution: ferry_control::model::Resolution::Static,
        mesh_external: false,
        export_to: vec![],
        endpoints: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_acks_and_routes_over_sotw_ads() {
    interop("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_acks_and_routes_over_delta_ads() {
    interop("DELTA_GRPC").await;
}
