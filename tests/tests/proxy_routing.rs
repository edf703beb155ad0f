//! ferry-proxy's data path end to end: the real proxy library started in-process from a static
//! Envoy bootstrap, real upstream servers on loopback, real clients. Shows routing (domains,
//! path, header and query matching), rewrites, redirects, direct responses, a weighted split,
//! `x-request-id`, timeouts, and the explicit-proxy mode of the outbound listener.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ferry_proxy::app::{self, Running};
use ferry_tests::net::{self, Protocol, Reply};
use ferry_tests::upstream::Upstream;
use http::{Method, StatusCode};

const HCM: &str = "'@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "http_filters: [{ name: envoy.filters.http.router, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }]";

/// A STATIC cluster pointing at one upstream.
fn cluster(name: &str, addr: SocketAddr) -> String {
    format!(
        r#"
  - name: "{name}"
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: "{name}"
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}]"#,
        addr.port()
    )
}

/// A bootstrap with one HTTP listener `http` on 127.0.0.1:0 using `routes` as its virtual hosts.
fn bootstrap(virtual_hosts: &str, clusters: &[String]) -> String {
    format!(
        r#"
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          {HCM}
          stat_prefix: http
          {ROUTER}
          upgrade_configs: [{{ upgrade_type: websocket }}]
          route_config:
            name: local
            virtual_hosts: {virtual_hosts}
  clusters: {}
"#,
        if clusters.is_empty() {
            "[]".to_owned()
        } else {
            clusters.concat()
        }
    )
}

async fn start(yaml: &str) -> Running {
    let bootstrap = xds_proto::json::from_yaml_str(yaml).expect("bootstrap parses");
    app::start(bootstrap).await.expect("proxy starts")
}

async fn get(proxy: SocketAddr, authority: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let request = net::request(Method::GET, authority, path, headers).expect("request");
    net::send(proxy, Protocol::Http1, request)
        .await
        .expect("response")
}

fn echoed(reply: &Reply) -> serde_json::Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|_| panic!("json body: {}", reply.text()))
}

#[tokio::test]
async fn direct_responses_redirects_and_no_route() {
    let proxy = start(&bootstrap(
        r#"
            - name: local
              domains: ["local.test"]
              routes:
              - match: { path: "/teapot" }
                direct_response: { status: 418, body: { inline_string: "short and stout" } }
                response_headers_to_add: [{ header: { key: x-route, value: teapot } }]
              - match: { prefix: "/old/" }
                redirect: { prefix_rewrite: "/new/", response_code: FOUND }
              - match: { prefix: "/secure" }
                redirect: { https_redirect: true }
        "#,
        &[],
    ))
    .await;
    let addr = proxy.listener_addr("http").expect("bound");
    let teapot = get(addr, "local.test", "/teapot", &[]).await;
    assert_eq!(teapot.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(teapot.text(), "short and stout");
    assert_eq!(teapot.header("x-route"), Some("teapot"));

    let moved = get(addr, "local.test", "/old/page?x=1", &[]).await;
    assert_eq!(moved.status, StatusCode::FOUND);
    assert_eq!(
        moved.header("location"),
        Some("http://local.test/new/page?x=1")
    );

    let secure = get(addr, "local.test", "/secure", &[]).await;
    assert_eq!(secure.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(secure.header("location"), Some("https://local.test/secure"));

    assert_eq!(
        get(addr, "other.test", "/", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(addr, "local.test", "/none", &[]).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn matching_rewrites_and_request_ids() {
    let a = Upstream::echo("a").await.unwrap();
    let b = Upstream::echo("b").await.unwrap();
    let proxy = start(&bootstrap(
        r#"
            - name: main
              domains: ["main.test", "*.wild.test"]
              routes:
              - match: { prefix: "/", headers: [{ name: x-canary, string_match: { exact: "1" } }] }
                route: { cluster: b }
              - match: { prefix: "/", query_parameters: [{ name: v, string_match: { exact: "2" } }] }
                route: { cluster: b }
              - match: { prefix: "/api/" }
                route: { cluster: a, prefix_rewrite: "/v1/", host_rewrite_literal: "api.internal" }
                request_headers_to_add: [{ header: { key: x-added, value: yes } }]
                request_headers_to_remove: [x-secret]
              - match: { safe_regex: { regex: "/users/[0-9]+" } }
                route: { cluster: a, regex_rewrite: { pattern: { regex: "^/users/([0-9]+)$" }, substitution: "/u?id=\\1" } }
              - match: { prefix: "/" }
                route: { cluster: a }
        "#,
        &[cluster("a", a.addr), cluster("b", b.addr)],
    ))
    .await;
    let addr = proxy.listener_addr("http").expect("bound");

    let plain = get(addr, "main.test", "/x", &[]).await;
    assert_eq!(plain.status, StatusCode::OK, "{}", plain.text());
    assert_eq!(echoed(&plain)["instance"], "a");
    assert_eq!(
        get(addr, "x.wild.test", "/x", &[])
            .await
            .header("x-upstream-instance"),
        Some("a")
    );
    assert_eq!(
        get(addr, "main.test", "/x", &[("x-canary", "1")])
            .await
            .header("x-upstream-instance"),
        Some("b")
    );
    assert_eq!(
        get(addr, "main.test", "/x?v=2", &[])
            .await
            .header("x-upstream-instance"),
        Some("b")
    );

    let api = echoed(&get(addr, "main.test", "/api/items?q=1", &[("x-secret", "s")]).await);
    assert_eq!(api["path"], "/v1/items?q=1");
    assert_eq!(api["host"], "api.internal");
    assert_eq!(api["headers"]["x-added"], "yes");
    assert!(api["headers"].get("x-secret").is_none());
    assert_eq!(api["headers"]["x-forwarded-proto"], "http");
    // No x-forwarded-for appended by a sidecar (use_remote_address false).
    assert!(api["headers"].get("x-forwarded-for").is_none());

    let users = echoed(&get(addr, "main.test", "/users/42", &[]).await);
    assert_eq!(users["path"], "/u?id=42");

    // x-request-id: generated when absent (a UUID), kept when present; x-envoy-* stripped.
    let generated = echoed(&get(addr, "main.test", "/x", &[("x-envoy-retry-on", "5xx")]).await);
    let id = generated["headers"]["x-request-id"]
        .as_str()
        .expect("generated id");
    assert_eq!(id.len(), 36);
    assert!(generated["headers"].get("x-envoy-retry-on").is_none());
    let kept = echoed(&get(addr, "main.test", "/x", &[("x-request-id", "abc")]).await);
    assert_eq!(kept["headers"]["x-request-id"], "abc");

    let counters: BTreeMap<String, u64> = proxy.stats.counters().into_iter().collect();
    let b_2xx = counters.get("cluster.b.upstream_rq_2xx").copied();
    assert_eq!(b_2xx, Some(2), "{counters:?}");
}

#[tokio::test]
async fn weighted_split_is_per_request_within_bounds() {
    let v1 = Upstream::echo("v1").await.unwrap();
    let v2 = Upstream::echo("v2").await.unwrap();
    let proxy = start(&bootstrap(
        r#"
            - name: split
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { weighted_clusters: { clusters: [{ name: v1, weight: 80 }, { name: v2, weight: 20 }] } }
        "#,
        &[cluster("v1", v1.addr), cluster("v2", v2.addr)],
    ))
    .await;
    let addr = proxy.listener_addr("http").expect("bound");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..2000 {
        let reply = get(addr, "reviews", "/", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        *counts
            .entry(
                reply
                    .header("x-upstream-instance")
                    .unwrap_or("?")
                    .to_owned(),
            )
            .or_default() += 1;
    }
    let v1_count = counts.get("v1").copied().unwrap_or(0);
    // 80% of 2000 = 1600, standard deviation ~18: 1500..=1700 is more than five deviations.
    assert!((1500..=1700).contains(&v1_count), "split {counts:?}");
    assert_eq!(
        v1_count + counts.get("v2").copied().unwrap_or(0),
        2000,
        "{counts:?}"
    );
}

#[tokio::test]
async fn timeouts_and_missing_upstreams() {
    let slow = Upstream::echo("slow").await.unwrap();
    let closed = net::ClosedPort::bind().expect("closed port");
    let dead: SocketAddr = net::loopback(closed.port());
    let proxy = start(&bootstrap(
        r#"
            - name: t
              domains: ["*"]
              routes:
              - match: { prefix: "/hang", headers: [{ name: x-stream, present_match: true }] }
                route: { cluster: slow, timeout: 0s, max_stream_duration: { max_stream_duration: 0.2s } }
              - match: { prefix: "/hang", headers: [{ name: grpc-timeout, present_match: true }] }
                route: { cluster: slow, timeout: 0s, max_stream_duration: { grpc_timeout_header_max: 0.2s } }
              - match: { prefix: "/hang" }
                route: { cluster: slow, timeout: 0.2s }
              - match: { prefix: "/dead" }
                route: { cluster: dead }
              - match: { prefix: "/nocluster" }
                route: { cluster: nosuch }
        "#,
        &[cluster("slow", slow.addr), cluster("dead", dead)],
    ))
    .await;
    let addr = proxy.listener_addr("http").expect("bound");
    let timeout = get(addr, "t", "/hang", &[]).await;
    assert_eq!(timeout.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(timeout.text(), "upstream request timeout");
    // With no route timeout, max_stream_duration bounds the wait, and grpc-timeout capped by
    // grpc_timeout_header_max (an hour would hang the test).
    for header in [("x-stream", "1"), ("grpc-timeout", "1H")] {
        let reply = get(addr, "t", "/hang", &[header]).await;
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{header:?}");
        assert_eq!(reply.text(), "upstream request timeout");
    }
    assert_eq!(
        get(addr, "t", "/dead", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(addr, "t", "/nocluster", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn outbound_listener_works_as_explicit_proxy_and_by_host() {
    let reviews = Upstream::echo("reviews").await.unwrap();
    let yaml = format!(
        r#"
static_resources:
  listeners:
  - name: virtualOutbound
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    use_original_dst: true
    filter_chains:
    - name: PassthroughFilterChain
      filters: [{{ name: envoy.filters.network.tcp_proxy, typed_config: {{ '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: PassthroughCluster, cluster: reviews }} }}]
  - name: 0.0.0.0_9080
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 9080 }} }}
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          {HCM}
          stat_prefix: outbound_0.0.0.0_9080
          {ROUTER}
          route_config:
            name: "9080"
            virtual_hosts:
            - name: reviews.default.svc.cluster.local:9080
              domains: ["reviews", "reviews:9080", "reviews.default.svc.cluster.local:9080"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: "outbound|9080||reviews.default.svc.cluster.local" }} }}]
  clusters: {}
"#,
        cluster(
            "outbound|9080||reviews.default.svc.cluster.local",
            reviews.addr
        ) + &cluster("reviews", reviews.addr)
    );
    let proxy = start(&yaml).await;
    let addr = proxy.listener_addr("virtualOutbound").expect("bound");
    assert!(
        proxy.listener_addr("0.0.0.0_9080").is_none(),
        "bind_to_port false"
    );

    // curl -x http://127.0.0.1:15001 http://reviews:9080/
    let request = net::request(Method::GET, "reviews:9080", "/p", &[]).unwrap();
    let proxied = net::send(addr, Protocol::Http1Proxy, request)
        .await
        .unwrap();
    assert_eq!(proxied.status, StatusCode::OK, "{}", proxied.text());
    assert_eq!(echoed(&proxied)["path"], "/p");
    // By Host header.
    let by_host = get(addr, "reviews:9080", "/h", &[]).await;
    assert_eq!(by_host.status, StatusCode::OK);
    // A port with no listener.
    assert_eq!(
        get(addr, "reviews:7777", "/", &[]).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn retries_connect_failures_on_another_host() {
    let live = Upstream::echo("live").await.unwrap();
    let closed = net::ClosedPort::bind().expect("closed port");
    let endpoint = |port: u16| {
        format!(
            "{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}"
        )
    };
    let mixed = format!(
        r#"
  - name: mixed
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: mixed
      endpoints: [{{ lb_endpoints: [{}, {}] }}]"#,
        endpoint(closed.port()),
        endpoint(live.addr.port())
    );
    let proxy = start(&bootstrap(
        r#"
            - name: r
              domains: ["*"]
              routes:
              - match: { prefix: "/retried" }
                route:
                  cluster: mixed
                  retry_policy:
                    retry_on: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes
                    num_retries: 2
                    retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts, typed_config: { '@type': type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }]
                    host_selection_retry_max_attempts: 5
              - match: { prefix: "/once" }
                route: { cluster: mixed }
        "#,
        &[mixed],
    ))
    .await;
    let addr = proxy.listener_addr("http").expect("bound");
    let mut once_failures = 0;
    for _ in 0..20 {
        let retried = get(addr, "r", "/retried", &[]).await;
        assert_eq!(retried.status, StatusCode::OK, "{}", retried.text());
        if get(addr, "r", "/once", &[]).await.status != StatusCode::OK {
            once_failures += 1;
        }
    }
    // Without retries, round robin hands some requests to the dead endpoint.
    assert!(once_failures > 0, "the dead endpoint was never picked");
}
