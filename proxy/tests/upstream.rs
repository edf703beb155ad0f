//! The upstream side end to end: the real proxy (static bootstrap, listener, router) in front of
//! real HTTP/1.1 and HTTP/2 servers on loopback, through STATIC and STRICT_DNS clusters.

// Test helpers fail the test by panicking.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use xds_proto::envoy::config::bootstrap::v3::Bootstrap;

/// An upstream that answers `NAME VERSION` and counts connections.
async fn upstream(name: &'static str, h2: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| async move {
                    let body = format!("{name} {:?}", req.version());
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                });
                let io = TokioIo::new(stream);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    (addr, connections)
}

fn endpoint(addr: &str, port: u16) -> String {
    format!(
        "{{ endpoint: {{ address: {{ socket_address: {{ address: {addr}, port_value: {port} }} }} }} }}"
    )
}

fn bootstrap(
    a: SocketAddr,
    b: SocketAddr,
    h2: SocketAddr,
    dns_port: u16,
    closed: u16,
) -> Bootstrap {
    let route = |prefix: &str, cluster: &str| {
        format!("{{ match: {{ prefix: \"{prefix}\" }}, route: {{ cluster: {cluster} }} }}")
    };
    let yaml = format!(
        r#"
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [ {r1}, {r2}, {r3}, {r4} ]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: pair
    type: STATIC
    load_assignment: {{ cluster_name: pair, endpoints: [ {{ lb_endpoints: [ {ea}, {eb} ] }} ] }}
  - name: h2
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment: {{ cluster_name: h2, endpoints: [ {{ lb_endpoints: [ {eh2} ] }} ] }}
  - name: dns
    type: STRICT_DNS
    dns_lookup_family: V4_ONLY
    load_assignment: {{ cluster_name: dns, endpoints: [ {{ lb_endpoints: [ {edns} ] }} ] }}
  - name: closed
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{ cluster_name: closed, endpoints: [ {{ lb_endpoints: [ {eclosed} ] }} ] }}
"#,
        r1 = route("/pair", "pair"),
        r2 = route("/h2", "h2"),
        r3 = route("/dns", "dns"),
        r4 = route("/closed", "closed"),
        ea = endpoint("127.0.0.1", a.port()),
        eb = endpoint("127.0.0.1", b.port()),
        eh2 = endpoint("127.0.0.1", h2.port()),
        edns = endpoint("localhost", dns_port),
        eclosed = endpoint("127.0.0.1", closed),
    );
    xds_proto::json::from_yaml_str(&yaml).unwrap()
}

/// One HTTP/1.1 request on a fresh connection to the proxy: (status, body).
async fn get(proxy: SocketAddr, path: &str) -> (u16, String) {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn proxy_balances_and_pools_across_real_upstreams() {
    let (a, a_conns) = upstream("a", false).await;
    let (b, b_conns) = upstream("b", false).await;
    let (h2, h2_conns) = upstream("h2", true).await;
    let (dns, _) = upstream("dns", false).await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);

    let running = ferry_proxy::app::start(bootstrap(a, b, h2, dns.port(), closed_port))
        .await
        .unwrap();
    let proxy = running.listener_addr("http").unwrap();

    // Round robin over two endpoints, one kept-alive connection each.
    let mut seen = Vec::new();
    for _ in 0..6 {
        let (status, body) = get(proxy, "/pair").await;
        assert_eq!(status, 200);
        seen.push(body);
    }
    assert_eq!(
        seen.iter().filter(|b| *b == "a HTTP/1.1").count(),
        3,
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|b| *b == "b HTTP/1.1").count(),
        3,
        "{seen:?}"
    );
    assert_eq!(a_conns.load(Ordering::SeqCst), 1);
    assert_eq!(b_conns.load(Ordering::SeqCst), 1);

    // An HTTP/1.1 request upstream as HTTP/2, multiplexed on one connection.
    for _ in 0..3 {
        assert_eq!(get(proxy, "/h2").await, (200, "h2 HTTP/2.0".into()));
    }
    assert_eq!(h2_conns.load(Ordering::SeqCst), 1);

    // STRICT_DNS on localhost: poll until the first resolution lands.
    let mut reply = get(proxy, "/dns").await;
    for _ in 0..200 {
        if reply.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        reply = get(proxy, "/dns").await;
    }
    assert_eq!(reply, (200, "dns HTTP/1.1".into()));

    // Nothing listening: 503 from the router, counted as a connect failure.
    assert_eq!(get(proxy, "/closed").await.0, 503);

    let counters: std::collections::BTreeMap<String, u64> =
        running.stats.counters().into_iter().collect();
    assert_eq!(counters["cluster.pair.upstream_cx_total"], 2);
    assert_eq!(counters["cluster.pair.upstream_rq_total"], 6);
    assert_eq!(counters["cluster.h2.upstream_cx_total"], 1);
    assert_eq!(counters["cluster.closed.upstream_cx_connect_fail"], 1);
    let gauges: std::collections::BTreeMap<String, i64> =
        running.stats.gauges().into_iter().collect();
    assert_eq!(gauges["cluster.pair.membership_total"], 2);
    assert_eq!(gauges["cluster.pair.membership_healthy"], 2);
    running.shutdown(Duration::from_secs(1)).await;
}
