//! Distributed tracing through real ferry-proxy instances on loopback, configured the way istiod
//! configures sidecars (HCM `tracing` with the `envoy.tracers.zipkin` provider):
//! - two sidecars in series (an outbound one, then the callee's inbound one) report one trace
//!   to a Zipkin collector: the outbound CLIENT span is the parent of the inbound SERVER span,
//!   both carry Envoy's standard tags, and the application sees the B3 context;
//! - an invalid `tracing` block arriving over ADS is NACKed naming the field, and the last good
//!   config keeps serving;
//! - with the `envoy.tracers.opentelemetry` provider the same chain is exported over OTLP/gRPC
//!   and the W3C `traceparent` of the caller is continued;
//! - an HCM `tracing` without provider uses the bootstrap's `tracing.http`;
//! - a real Envoy 1.40 as the client sidecar and ferry-proxy as the server sidecar form one
//!   trace (Envoy's CLIENT span is the parent of ferry-proxy's SERVER span), with the Zipkin
//!   tracer (B3) and with the OpenTelemetry tracer (W3C, OTLP). Under `CI` a missing Envoy fails
//!   those tests; otherwise they are skipped with a message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_proxy::app::Running;
use ferry_proxy::cluster::ClusterManager;
use ferry_proxy::listener::manager::ListenerManager;
use ferry_proxy::snapshot::ConfigStore;
use ferry_proxy::stats::Store;
use ferry_proxy::xds::{Backoff, Client, Tracker};
use ferry_tests::ads::AdsServer;
use ferry_tests::bootstrap;
use ferry_tests::collector::{OtlpReceiver, ZipkinCollector};
use ferry_tests::net;
use ferry_tests::poll::{PATIENCE, poll_until};
use ferry_tests::tracing_sidecar::{
    envoy_productpage, istio_tracing, json_cluster, json_h2_cluster, listener, otel_cluster,
    otel_tracing, sidecar, sidecar_with, tags,
};
use ferry_tests::upstream::Upstream;
use serde_json::{Value, json};
use xds_proto::envoy::config::listener::v3::Listener;
use xds_proto::google::protobuf::Any;
use xds_proto::type_url::{CLUSTER, LISTENER};

const WAIT: Duration = Duration::from_secs(30);

fn stat(running: &Running, name: &str) -> u64 {
    running
        .stats
        .counters()
        .into_iter()
        .find_map(|(n, v)| (n == name).then_some(v))
        .unwrap_or(0)
}

#[tokio::test]
async fn two_sidecars_in_series_report_one_trace_per_request() {
    let collector = ZipkinCollector::start().await.expect("collector starts");
    let app = Upstream::echo("reviews-v1").await.expect("upstream starts");
    let zipkin = bootstrap::static_cluster("zipkin", collector.addr);
    let (inbound, inbound_addr) = zipkin_inbound_sidecar(app.addr, collector.addr).await;
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
        assert_eq!(
            client["name"], "0.0.0.0_9080/*",
            "the route's decorator names the span"
        );
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
            // The span ends with the response body, whose size it counts.
            let size: u64 = t["response_size"].parse().expect("response_size");
            assert!(size > 100, "{t:?}");
        }
        assert_eq!(ct["upstream_cluster"], "outbound|9080||reviews");
        assert_eq!(ct["upstream_address"], inbound_addr.to_string());
        assert_eq!(st["upstream_address"], app.addr.to_string());
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
    let tracker = Tracker::new(
        ferry_tests::bootstrap::ads_sidecar(&server.uri()),
        store.clone(),
        stats.clone(),
    )
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

/// The `reviews` server-side sidecar in front of `app` with the HCM `tracing` block `tracing`,
/// reporting through `collector` (the provider's cluster); returns it and its inbound
/// listener's address.
async fn inbound_sidecar(
    app: SocketAddr,
    tracing: Value,
    collector: String,
) -> (Running, SocketAddr) {
    let inbound = sidecar(
        "reviews",
        listener("inbound_9080", "INBOUND", "inbound|9080||", tracing),
        &[bootstrap::static_cluster("inbound|9080||", app), collector],
    )
    .await;
    let addr = inbound
        .listeners
        .listener_addr("inbound_9080")
        .expect("inbound bound");
    (inbound, addr)
}

/// [`inbound_sidecar`] exporting OTLP to `receiver`.
async fn otel_inbound_sidecar(app: SocketAddr, receiver: SocketAddr) -> (Running, SocketAddr) {
    inbound_sidecar(app, otel_tracing("reviews.default"), otel_cluster(receiver)).await
}

/// [`inbound_sidecar`] reporting Zipkin HTTP_JSON to `collector`.
async fn zipkin_inbound_sidecar(app: SocketAddr, collector: SocketAddr) -> (Running, SocketAddr) {
    let zipkin = bootstrap::static_cluster("zipkin", collector);
    inbound_sidecar(app, istio_tracing("HTTP_JSON"), zipkin).await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn opentelemetry_provider_exports_otlp_and_propagates_traceparent() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let receiver = OtlpReceiver::start().await.expect("receiver starts");
    let app = Upstream::echo("reviews-v1").await.expect("upstream starts");
    let (inbound, inbound_addr) = otel_inbound_sidecar(app.addr, receiver.addr).await;
    let outbound = sidecar(
        "productpage",
        listener(
            "0.0.0.0_9080",
            "OUTBOUND",
            "outbound|9080||reviews",
            otel_tracing("productpage.default"),
        ),
        &[
            bootstrap::static_cluster("outbound|9080||reviews", inbound_addr),
            otel_cluster(receiver.addr),
        ],
    )
    .await;
    let outbound_addr = outbound
        .listeners
        .listener_addr("0.0.0.0_9080")
        .expect("outbound bound");
    // A caller's sampled W3C context is continued.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut seen_by_app = Vec::new();
    for i in 0..5 {
        let traceparent = format!("00-{caller_trace}-00f067aa0ba902b{i}-01");
        let request = net::request(
            http::Method::GET,
            "reviews:9080",
            "/",
            &[("traceparent", &traceparent)],
        )
        .expect("request");
        let reply = net::send(outbound_addr, net::Protocol::Http1, request)
            .await
            .expect("request through both sidecars");
        assert_eq!(reply.status, 200, "{}", reply.text());
        let echoed: Value = serde_json::from_str(&reply.text()).expect("echo json");
        seen_by_app.push(echoed["headers"].clone());
    }
    let resources = poll_until("10 OTLP spans", PATIENCE, || async {
        let resources = receiver.resource_spans();
        let n: usize = resources
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        (n >= 10).then_some(resources)
    })
    .await;
    let mut spans = Vec::new();
    for r in &resources {
        let service = r
            .resource
            .as_ref()
            .expect("resource")
            .attributes
            .iter()
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref()?.value.clone());
        for s in r.scope_spans.iter().flat_map(|s| &s.spans) {
            spans.push((service.clone(), s.clone()));
        }
    }
    assert_eq!(spans.len(), 10);
    for (service, span) in &spans {
        assert_eq!(
            hex(&span.trace_id),
            caller_trace,
            "the caller's trace continues"
        );
        match SpanKind::try_from(span.kind) {
            Ok(SpanKind::Client) => {
                assert_eq!(
                    service,
                    &Some(Any::StringValue("productpage.default".into()))
                );
                assert!(hex(&span.parent_span_id).starts_with("00f067aa0ba902b"));
                let server = spans
                    .iter()
                    .find(|(_, s)| s.parent_span_id == span.span_id)
                    .map(|(_, s)| s)
                    .expect("a server span child of each client span");
                assert_eq!(server.kind, SpanKind::Server as i32);
                let app = seen_by_app
                    .iter()
                    .find(|h| {
                        h["traceparent"]
                            .as_str()
                            .is_some_and(|t| t.contains(&hex(&server.span_id)))
                    })
                    .expect("the app saw the server span's traceparent");
                assert!(
                    app["traceparent"]
                        .as_str()
                        .unwrap_or_default()
                        .ends_with("-01")
                );
            }
            Ok(SpanKind::Server) => {
                assert_eq!(service, &Some(Any::StringValue("reviews.default".into())));
            }
            other => panic!("unexpected span kind {other:?}"),
        }
        assert!(span.attributes.iter().any(|a| a.key == "http.status_code"));
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    }
    for running in [&outbound, &inbound] {
        assert_eq!(stat(running, "tracing.opentelemetry.spans_sent"), 5);
        assert_eq!(stat(running, "tracing.opentelemetry.reports_sent"), 1);
    }
}

#[tokio::test]
async fn hcm_tracing_without_provider_uses_the_bootstrap_tracer() {
    let collector = ZipkinCollector::start().await.expect("collector starts");
    let app = Upstream::echo("app").await.expect("upstream starts");
    let mut tracing = istio_tracing("HTTP_JSON");
    let provider = tracing
        .as_object_mut()
        .and_then(|t| t.remove("provider"))
        .expect("provider");
    let extra = format!(
        "tracing: {{ http: {} }}\n",
        serde_json::to_string(&provider).expect("json")
    );
    let proxy = sidecar_with(
        "app",
        &extra,
        listener("0.0.0.0_9080", "OUTBOUND", "app", tracing),
        &[
            bootstrap::static_cluster("app", app.addr),
            bootstrap::static_cluster("zipkin", collector.addr),
        ],
    )
    .await;
    let addr = proxy
        .listeners
        .listener_addr("0.0.0.0_9080")
        .expect("listener bound");
    for _ in 0..5 {
        let reply = net::get(addr, "app:9080", "/").await.expect("request");
        assert_eq!(reply.status, 200);
        assert!(reply.text().contains("x-b3-traceid"), "{}", reply.text());
    }
    let spans = poll_until("5 spans", PATIENCE, || async {
        let spans = collector.spans();
        (spans.len() >= 5).then_some(spans)
    })
    .await;
    assert!(spans.iter().all(|s| s["kind"] == "CLIENT"), "{spans:#?}");
}

/// Interop with a real Envoy 1.40 as the client sidecar: Envoy's CLIENT span (B3 it injected)
/// is the parent of ferry-proxy's SERVER span in one trace at the collector.
#[tokio::test]
async fn envoy_client_span_is_the_parent_of_the_ferry_server_span() {
    let collector = ZipkinCollector::start().await.expect("collector starts");
    let app = Upstream::echo("reviews-v1").await.expect("upstream starts");
    let (_inbound, inbound_addr) = zipkin_inbound_sidecar(app.addr, collector.addr).await;
    let envoy_bootstrap = envoy_productpage(
        listener(
            "0.0.0.0_9080",
            "OUTBOUND",
            "outbound|9080||reviews",
            istio_tracing("HTTP_JSON"),
        ),
        vec![
            json_cluster("outbound|9080||reviews", inbound_addr),
            json_cluster("zipkin", collector.addr),
        ],
    );
    let Some(_envoy) = envoy_client_sends_five(&envoy_bootstrap).await else {
        return;
    };
    let spans = poll_until("10 spans from Envoy and ferry-proxy", PATIENCE, || async {
        let spans = collector.spans();
        (spans.len() >= 10).then_some(spans)
    })
    .await;
    let clients: Vec<&Value> = spans.iter().filter(|s| s["kind"] == "CLIENT").collect();
    let servers: Vec<&Value> = spans.iter().filter(|s| s["kind"] == "SERVER").collect();
    assert_eq!((clients.len(), servers.len()), (5, 5), "{spans:#?}");
    for server in servers {
        assert_eq!(server["localEndpoint"]["serviceName"], "reviews.default");
        let client = clients
            .iter()
            .find(|c| c["id"] == server["parentId"])
            .unwrap_or_else(|| panic!("no Envoy client span is the parent of {server:#}"));
        assert_eq!(client["traceId"], server["traceId"]);
        assert_eq!(
            client["localEndpoint"]["serviceName"],
            "productpage.default"
        );
    }
}

/// Starts Envoy as the client sidecar from `bootstrap` and sends five requests through its
/// outbound listener to the ferry-proxy server sidecar behind it (five: each proxy's reporter
/// flushes at five spans). `None` when Envoy is not installed outside CI.
async fn envoy_client_sends_five(bootstrap: &str) -> Option<ferry_tests::envoy::Envoy> {
    let envoy = ferry_tests::envoy::Envoy::start(bootstrap).await?;
    let outbound_addr = envoy.wait_listener("0.0.0.0_9080").await;
    for i in 0..5 {
        let reply = net::get(outbound_addr, "reviews:9080", &format!("/reviews/{i}"))
            .await
            .expect("request through Envoy and ferry-proxy");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    Some(envoy)
}

/// W3C interop with a real Envoy 1.40 using the OpenTelemetry tracer as the client sidecar:
/// ferry-proxy continues Envoy's `traceparent`, and both export to the same OTLP receiver.
#[tokio::test]
async fn envoy_opentelemetry_client_span_is_the_parent_of_the_ferry_server_span() {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let receiver = OtlpReceiver::start().await.expect("receiver starts");
    let app = Upstream::echo("reviews-v1").await.expect("upstream starts");
    let (_inbound, inbound_addr) = otel_inbound_sidecar(app.addr, receiver.addr).await;
    let envoy_bootstrap = envoy_productpage(
        listener(
            "0.0.0.0_9080",
            "OUTBOUND",
            "outbound|9080||reviews",
            otel_tracing("productpage.default"),
        ),
        vec![
            json_cluster("outbound|9080||reviews", inbound_addr),
            json_h2_cluster("otel", receiver.addr),
        ],
    );
    let Some(_envoy) = envoy_client_sends_five(&envoy_bootstrap).await else {
        return;
    };
    let spans = poll_until(
        "10 OTLP spans from Envoy and ferry-proxy",
        PATIENCE,
        || async {
            let spans: Vec<_> = receiver
                .resource_spans()
                .into_iter()
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans)
                .collect();
            (spans.len() >= 10).then_some(spans)
        },
    )
    .await;
    let servers: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(servers.len(), 5, "{spans:#?}");
    for server in servers {
        let client = spans
            .iter()
            .find(|c| c.span_id == server.parent_span_id && c.kind == SpanKind::Client as i32)
            .unwrap_or_else(|| panic!("no Envoy client span is the parent of {server:?}"));
        assert_eq!(client.trace_id, server.trace_id);
    }
}

/// What a proxy forwarded for one request: its `x-request-id` and `x-b3-sampled`, read from the
/// echo upstream's answer. `id`: the `x-request-id` sent, if any.
async fn forwarded(proxy: SocketAddr, id: Option<&str>) -> (String, String) {
    let headers: Vec<(&str, &str)> = id.map(|id| ("x-request-id", id)).into_iter().collect();
    let request =
        net::request(http::Method::GET, "app:9080", "/decide", &headers).expect("request");
    let reply = net::send(proxy, net::Protocol::Http1, request)
        .await
        .expect("reply");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echo: Value = serde_json::from_slice(&reply.body).expect("echo JSON");
    let header = |name: &str| {
        echo["headers"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} upstream: {echo:#}"))
            .to_owned()
    };
    (header("x-request-id"), header("x-b3-sampled"))
}

/// Envoy's UUID request id extension carries the trace decision in `x-request-id` (`9` in the
/// version nibble when sampled), and with `use_request_id_for_trace_sampling` the random draw is
/// the id's number: a real Envoy 1.40 and ferry-proxy at the same 50% make the same decision for
/// the same id, in both orders (an Envoy hop then a ferry hop, and the reverse), without B3
/// headers between them, and the second hop leaves the id as the first packed it.
#[tokio::test]
async fn envoy_and_ferry_agree_on_the_decision_carried_in_x_request_id() {
    let collector = ZipkinCollector::start().await.expect("collector starts");
    let app = Upstream::echo("app").await.expect("upstream starts");
    let mut half = istio_tracing("HTTP_JSON");
    half["random_sampling"]["value"] = json!(50.0);
    let outbound = listener("0.0.0.0_9080", "OUTBOUND", "app", half);
    let ferry = sidecar(
        "productpage",
        outbound.clone(),
        &[
            bootstrap::static_cluster("app", app.addr),
            bootstrap::static_cluster("zipkin", collector.addr),
        ],
    )
    .await;
    let ferry_addr = ferry
        .listeners
        .listener_addr("0.0.0.0_9080")
        .expect("bound");
    let envoy_bootstrap = envoy_productpage(
        outbound,
        vec![
            json_cluster("app", app.addr),
            json_cluster("zipkin", collector.addr),
        ],
    );
    let Some(envoy) = ferry_tests::envoy::Envoy::start(&envoy_bootstrap).await else {
        return;
    };
    let envoy_addr = envoy.wait_listener("0.0.0.0_9080").await;
    let mut decisions = Vec::new();
    for (first, second) in [(envoy_addr, ferry_addr), (ferry_addr, envoy_addr)] {
        for _ in 0..30 {
            let (id, sampled) = forwarded(first, None).await;
            let packed = id.as_bytes()[14];
            assert_eq!(
                packed,
                if sampled == "1" { b'9' } else { b'4' },
                "{id} sampled={sampled}"
            );
            let (next_id, next_sampled) = forwarded(second, Some(&id)).await;
            assert_eq!(next_sampled, sampled, "second hop's decision for {id}");
            assert_eq!(next_id, id, "the second hop keeps the id");
            decisions.push(sampled);
        }
    }
    assert!(
        decisions.iter().any(|s| s == "1") && decisions.iter().any(|s| s == "0"),
        "50% sampling gave one outcome for 60 ids: {decisions:?}"
    );
}
