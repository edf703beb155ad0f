//! The Istio-style pieces tracing tests are built from: the HCM `tracing` blocks istiod sends
//! (Zipkin, OpenTelemetry), a traced sidecar listener, in-process ferry-proxy sidecars, the
//! JSON clusters and bootstrap of a real Envoy client sidecar, and a span's tags.

use std::collections::HashMap;
use std::net::SocketAddr;

use ferry_proxy::app::{self, Running};
use serde_json::{Value, json};

use crate::bootstrap;

/// The `tracing` block istiod puts on a sidecar HCM (sampling raised to 100%).
pub fn istio_tracing(endpoint_version: &str) -> Value {
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
pub fn listener(name: &str, direction: &str, cluster: &str, tracing: Value) -> Value {
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

/// A ferry-proxy sidecar (in-process) for `node` with `listener` and `clusters`.
pub async fn sidecar(node: &str, listener: Value, clusters: &[String]) -> Running {
    sidecar_with(node, "", listener, clusters).await
}

/// [`sidecar`] with more top-level bootstrap YAML (`extra`, e.g. a `tracing:` block).
pub async fn sidecar_with(
    node: &str,
    extra: &str,
    listener: Value,
    clusters: &[String],
) -> Running {
    let listener_yaml = serde_yaml_ng::to_string(&json!([listener])).expect("yaml");
    let indented: String = listener_yaml.lines().map(|l| format!("\n  {l}")).collect();
    let yaml = format!(
        "node: {{ id: \"sidecar~127.0.0.1~{node}.default~default.svc.cluster.local\", cluster: \"{node}.default\" }}\n{extra}{}",
        bootstrap::static_resources(&[indented], clusters)
    );
    let bootstrap = xds_proto::json::from_yaml_str(&yaml).expect("bootstrap parses");
    app::start(bootstrap).await.expect("sidecar starts")
}

/// A Zipkin v2 span's tags.
pub fn tags(span: &Value) -> HashMap<String, String> {
    span["tags"]
        .as_object()
        .expect("tags")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// The `tracing` block for an `envoy.tracers.opentelemetry` provider exporting to cluster `otel`.
pub fn otel_tracing(service_name: &str) -> Value {
    json!({
        "random_sampling": { "value": 100.0 },
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": { "envoy_grpc": { "cluster_name": "otel" } },
                "service_name": service_name
            }
        }
    })
}

/// A STATIC HTTP/2 cluster `otel` (gRPC) to `addr`.
pub fn otel_cluster(addr: SocketAddr) -> String {
    format!(
        r#"
  - name: otel
    type: STATIC
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: otel
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: "{}", port_value: {} }} }} }} }}] }}]"#,
        addr.ip(),
        addr.port()
    )
}

/// A STATIC cluster `name` (JSON) with the one endpoint `addr`.
pub fn json_cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": {
            "address": { "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } } } }] }] }
    })
}

/// The bootstrap of a real Envoy as the `productpage` client sidecar with `listener` and
/// `clusters`.
pub fn envoy_productpage(listener: Value, clusters: Vec<Value>) -> String {
    json!({
        "node": { "id": "sidecar~127.0.0.1~productpage.default~default.svc.cluster.local", "cluster": "productpage.default" },
        "static_resources": { "listeners": [listener], "clusters": clusters }
    })
    .to_string()
}

/// [`json_cluster`] speaking HTTP/2 upstream (for gRPC).
pub fn json_h2_cluster(name: &str, addr: SocketAddr) -> Value {
    let mut cluster = json_cluster(name, addr);
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} }
        }
    });
    cluster
}
