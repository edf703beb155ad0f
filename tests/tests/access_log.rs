//! HTTP access logs through a real ferry-proxy on loopback, configured as istiod configures a
//! sidecar with `meshConfig.accessLogFile` (Envoy's file logger with Istio's text format) plus a
//! JSON logger: one line per request, written when the response ends, with the response code,
//! flags (`NR`, `UF`), the upstream cluster and host, the request id and the body sizes; and the
//! same requests through ferry-proxy and a real Envoy 1.40 give the same Istio JSON lines, field
//! by field (under `CI` a missing Envoy fails that test; otherwise it is skipped with a message).

use std::time::Duration;

use ferry_proxy::app;
use ferry_tests::bootstrap;
use ferry_tests::envoy::Envoy;
use ferry_tests::net::{self, ClosedPort};
use ferry_tests::poll::poll_until;
use ferry_tests::upstream::{Behaviour, Chaos, Upstream};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Istio's default text format (`meshConfig.accessLogFormat` unset).
const ISTIO_FORMAT: &str = ferry_control::translate::hcm_access_log::ISTIO_TEXT_FORMAT;
/// Istio's default JSON fields (`accessLogEncoding: JSON`), one operator per key.
const ISTIO_JSON_FIELDS: &[(&str, &str)] =
    ferry_control::translate::hcm_access_log::ISTIO_JSON_FIELDS;

/// The listener `http` (YAML list item for [`bootstrap::static_resources`]) whose HCM logs with
/// `access_log` and routes with `routes`.
fn logged_listener(access_log: Value, routes: Value) -> String {
    let listener = json!([{
        "name": "http",
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
        "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "http",
            "access_log": access_log,
            "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }],
            "route_config": { "name": "r", "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": routes }] }
        } }] }]
    }]);
    serde_yaml_ng::to_string(&listener)
        .expect("yaml")
        .lines()
        .map(|l| format!("\n  {l}"))
        .collect()
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn requests_are_logged_in_istio_text_format_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text_path = dir.path().join("access.log");
    let json_path = dir.path().join("access.json");
    let app = Upstream::echo("app").await.expect("upstream starts");
    let closed = ClosedPort::bind().expect("closed port");
    let access_log = json!([
        { "name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": text_path.to_string_lossy(),
            "log_format": { "text_format_source": { "inline_string": ISTIO_FORMAT } } } },
        { "name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": json_path.to_string_lossy(),
            "log_format": { "json_format": {
                "code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%",
                "cluster": "%UPSTREAM_CLUSTER%", "sent": "%BYTES_SENT%",
                "received": "%BYTES_RECEIVED%", "request_id": "%REQ(X-REQUEST-ID)%" } } } }
    ]);
    let routes = json!([
        { "name": "to-app", "match": { "prefix": "/app" }, "route": { "cluster": "app" } },
        { "name": "to-closed", "match": { "prefix": "/closed" }, "route": { "cluster": "closed", "retry_policy": { "num_retries": 0 } } }
    ]);
    let yaml = bootstrap::static_resources(
        &[logged_listener(access_log, routes)],
        &[
            bootstrap::static_cluster("app", app.addr),
            bootstrap::static_cluster("closed", net::loopback(closed.port())),
        ],
    );
    let running = app::start(xds_proto::json::from_yaml_str(&yaml).expect("bootstrap"))
        .await
        .expect("proxy starts");
    let addr = running.listeners.listener_addr("http").expect("bound");

    let ok = net::get(addr, "app.test", "/app/1").await.expect("request");
    assert_eq!(ok.status, 200);
    let request = net::request(
        http::Method::GET,
        "app.test",
        "/nowhere",
        &[("x-request-id", "rid-404"), ("user-agent", "test-agent")],
    )
    .expect("request");
    let nr = net::send(addr, net::Protocol::Http1, request)
        .await
        .expect("request");
    assert_eq!(nr.status, 404);
    let uf = net::get(addr, "app.test", "/closed")
        .await
        .expect("request");
    assert_eq!(uf.status, 503);

    let text = poll_until("three text lines", WAIT, || async {
        let l = lines(&text_path);
        (l.len() >= 3).then_some(l)
    })
    .await;
    assert_eq!(text.len(), 3, "{text:#?}");
    let find = |needle: &str| {
        text.iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle}: {text:#?}"))
            .clone()
    };
    let ok_line = find("/app/1");
    assert!(ok_line.starts_with('['), "{ok_line}");
    assert!(
        ok_line.contains("\"GET /app/1 HTTP/1.1\" 200 - via_upstream - \"-\" 0 "),
        "{ok_line}"
    );
    assert!(
        ok_line.contains(&format!("\"{}\" app ", app.addr)),
        "{ok_line}"
    );
    assert!(ok_line.ends_with(" - to-app"), "{ok_line}");
    let nr_line = find("/nowhere");
    assert!(nr_line.contains(" 404 NR route_not_found "), "{nr_line}");
    assert!(
        nr_line.contains("\"test-agent\" \"rid-404\" \"app.test\" \"-\" - "),
        "{nr_line}"
    );
    let uf_line = find("/closed");
    assert!(uf_line.contains(" 503 UF "), "{uf_line}");
    assert!(uf_line.contains(" closed "), "{uf_line}");

    let json_lines = poll_until("three JSON lines", WAIT, || async {
        let l = lines(&json_path);
        (l.len() >= 3).then_some(l)
    })
    .await;
    let parsed: Vec<Value> = json_lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    let ok_json = parsed.iter().find(|v| v["code"] == 200).expect("200 line");
    assert_eq!(ok_json["flags"], "-");
    assert_eq!(ok_json["cluster"], "app");
    assert_eq!(ok_json["sent"].as_u64(), Some(ok.body.len() as u64));
    assert_eq!(ok_json["received"], 0);
    let nr_json = parsed.iter().find(|v| v["code"] == 404).expect("404 line");
    assert_eq!(nr_json["request_id"], "rid-404");
    assert_eq!(nr_json["cluster"], Value::Null);
}

/// What ferry-control generates for `accessLogFile` (Istio's text and JSON formats) and tracing
/// is accepted by ferry-proxy, listener by listener.
#[test]
fn ferry_proxy_accepts_ferry_controls_access_logs_and_tracing() {
    use ferry_control::mesh_config::MeshConfig;
    use ferry_control::model::proxy::ProxyNode;
    use ferry_control::translate::{Options, generate};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/local-mesh");
    let (model, errors) = ferry_control::source::dir::model_from_dir(&dir).expect("samples");
    assert!(errors.is_empty(), "{errors:#?}");
    let node = ProxyNode {
        id: "sidecar~127.0.0.10~client.default~default.svc.cluster.local".into(),
        kind: "sidecar".into(),
        ips: vec!["127.0.0.10".parse().expect("ip")],
        pod: "client".into(),
        namespace: "default".into(),
        labels: [("app".to_owned(), "client".to_owned())].into(),
        service_account: "client".into(),
    };
    for encoding in ["TEXT", "JSON"] {
        let mesh = MeshConfig::from_yaml(&format!(
            "accessLogFile: /dev/stdout\naccessLogEncoding: {encoding}\ndefaultConfig: {{tracing: {{sampling: 100}}}}\n"
        ))
        .expect("mesh config");
        let options = Options {
            mesh,
            ..Options::local_mesh()
        };
        let out = generate(&model, &node, &options);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let mut logged = 0;
        for l in &out.listeners {
            let listener = ferry_proxy::listener::Listener::try_from(l)
                .unwrap_or_else(|e| panic!("{encoding}: listener {} refused: {e}", l.name));
            if let Some(hcm) = listener.http_connection_manager() {
                logged += hcm.access_log.len();
                assert!(hcm.tracing.is_some(), "{}", l.name);
            }
        }
        assert!(logged > 0, "{encoding}: no HCM got the access log");
    }
}

/// The requests both proxies get: (request id and path, protocol, request body, expected status).
const COMPARED: &[(&str, net::Protocol, &str, u16)] = &[
    ("/ok", net::Protocol::Http1, "", 200),
    ("/ok-h2", net::Protocol::Http2, "", 200),
    ("/ok-post", net::Protocol::Http1, "eleven byte", 200),
    ("/nowhere", net::Protocol::Http1, "", 404),
    ("/refused", net::Protocol::Http1, "", 503),
    ("/refused-retried", net::Protocol::Http1, "", 503),
    ("/reset", net::Protocol::Http1, "", 503),
    ("/hang", net::Protocol::Http1, "", 504),
    ("/hang-per-try", net::Protocol::Http1, "", 504),
    ("/direct", net::Protocol::Http1, "", 200),
    ("/empty", net::Protocol::Http1, "", 503),
];

/// The upstreams both proxies send the [`COMPARED`] requests to.
struct Compared {
    ok: Chaos,
    reset: Chaos,
    hang: Chaos,
    closed: ClosedPort,
}

/// A bootstrap whose listener `http` logs Istio's JSON fields to `path`, with one route per
/// [`COMPARED`] request.
fn comparison_bootstrap(path: &std::path::Path, up: &Compared) -> String {
    let fields: serde_json::Map<String, Value> = ISTIO_JSON_FIELDS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).into()))
        .collect();
    let no_retry = json!({ "num_retries": 0 });
    let access_log = json!([{ "name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path.to_string_lossy(),
        "log_format": { "json_format": fields } } }]);
    let routes = json!([
        { "name": "ok", "match": { "prefix": "/ok" }, "route": { "cluster": "ok" } },
        { "name": "refused", "match": { "path": "/refused" },
          "route": { "cluster": "closed", "retry_policy": no_retry } },
        { "name": "refused-retried", "match": { "path": "/refused-retried" },
          "route": { "cluster": "closed", "retry_policy": { "retry_on": "connect-failure", "num_retries": 2 } } },
        { "name": "reset", "match": { "path": "/reset" },
          "route": { "cluster": "reset", "retry_policy": no_retry } },
        { "name": "hang", "match": { "path": "/hang" },
          "route": { "cluster": "hang", "timeout": "0.2s", "retry_policy": no_retry } },
        { "name": "hang-per-try", "match": { "path": "/hang-per-try" },
          "route": { "cluster": "hang", "timeout": "5s", "retry_policy": {
              "retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.1s" } } },
        { "name": "direct", "match": { "path": "/direct" },
          "direct_response": { "status": 200, "body": { "inline_string": "direct" } } },
        { "name": "empty", "match": { "path": "/empty" }, "route": { "cluster": "empty" } }
    ]);
    bootstrap::static_resources(
        &[logged_listener(access_log, routes)],
        &[
            bootstrap::static_cluster("ok", up.ok.addr),
            bootstrap::static_cluster("reset", up.reset.addr),
            bootstrap::static_cluster("hang", up.hang.addr),
            bootstrap::static_cluster("closed", net::loopback(up.closed.port())),
            bootstrap::static_cluster_over("empty", &[], &[]),
        ],
    )
}

/// Sends every [`COMPARED`] request to `addr` and returns the log's lines by request id.
async fn logged_lines(addr: std::net::SocketAddr, path: &std::path::Path) -> Vec<(String, Value)> {
    for (id, protocol, body, status) in COMPARED {
        let method = if body.is_empty() {
            http::Method::GET
        } else {
            http::Method::POST
        };
        let headers = [("x-request-id", *id), ("user-agent", "access-log-compare")];
        let mut request = net::request(method, "compare.test", id, &headers).expect("request");
        *request.body_mut() = bytes::Bytes::from_static(body.as_bytes());
        let reply = net::send(addr, *protocol, request).await.expect("reply");
        assert_eq!(reply.status, *status, "{id}: {}", reply.text());
    }
    let lines = poll_until("a line per request", WAIT, || async {
        let l = lines(path);
        (l.len() >= COMPARED.len()).then_some(l)
    })
    .await;
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON object per line");
            (v["request_id"].as_str().unwrap_or_default().to_owned(), v)
        })
        .collect()
}

/// Masks what differs between two runs of the same request: times, the listener's port and
/// ephemeral client ports.
fn comparable(mut v: Value) -> Value {
    let o = v.as_object_mut().expect("object");
    for key in ["start_time", "duration"] {
        o.insert(
            key.into(),
            Value::from(if o[key].is_null() { "-" } else { "T" }),
        );
    }
    if !o["upstream_service_time"].is_null() {
        o.insert("upstream_service_time".into(), "T".into());
    }
    for key in [
        "downstream_local_address",
        "downstream_remote_address",
        "upstream_local_address",
    ] {
        if let Some(addr) = o[key].as_str() {
            let ip = addr.rsplit_once(':').map_or(addr, |(ip, _)| ip).to_owned();
            o.insert(key.into(), format!("{ip}:PORT").into());
        }
    }
    v
}

/// The same requests through ferry-proxy and a real Envoy 1.40, both logging Istio's default JSON
/// fields, give the same lines but for times and ports: response code details (`via_upstream`,
/// `route_not_found`, `upstream_reset_before_response_started{...}`, `response_timeout`,
/// `upstream_per_try_timeout`, `direct_response`, `no_healthy_upstream`), flags in Envoy's order
/// (`URX,UF`), the transport failure reason, the upstream connection's local address, route and
/// cluster names, the protocol (HTTP/1.1 and HTTP/2) and both body sizes.
#[tokio::test]
async fn istio_json_lines_match_envoy_1_40_field_by_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Compared {
        ok: Chaos::start("ok", Behaviour::Ok).await.expect("upstream"),
        reset: Chaos::start("reset", Behaviour::Reset)
            .await
            .expect("upstream"),
        hang: Chaos::start("hang", Behaviour::Hang)
            .await
            .expect("upstream"),
        closed: ClosedPort::bind().expect("closed port"),
    };
    let envoy_path = dir.path().join("envoy.json");
    let Some(envoy) = Envoy::start(&comparison_bootstrap(&envoy_path, &up)).await else {
        return;
    };
    let envoy_addr = envoy.wait_listener("http").await;
    let ferry_path = dir.path().join("ferry.json");
    let yaml = comparison_bootstrap(&ferry_path, &up);
    let ferry = app::start(xds_proto::json::from_yaml_str(&yaml).expect("bootstrap"))
        .await
        .expect("proxy starts");
    let ferry_addr = ferry.listeners.listener_addr("http").expect("bound");

    let envoy_lines = logged_lines(envoy_addr, &envoy_path).await;
    let ferry_lines = logged_lines(ferry_addr, &ferry_path).await;
    for (id, ..) in COMPARED {
        let find = |lines: &[(String, Value)]| {
            lines
                .iter()
                .find(|(rid, _)| rid == id)
                .map(|(_, v)| comparable(v.clone()))
                .unwrap_or_else(|| panic!("no line for {id}"))
        };
        assert_eq!(
            find(&ferry_lines),
            find(&envoy_lines),
            "{id}: ferry-proxy (left) vs Envoy 1.40 (right)"
        );
    }
}
