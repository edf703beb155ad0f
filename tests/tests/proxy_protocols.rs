//! ferry-proxy carrying more than plain HTTP/1.1: h2c, gRPC unary and streaming with trailers,
//! WebSocket-style upgrades, and raw TCP through `tcp_proxy`. The real proxy library runs
//! in-process from a static bootstrap in front of real loopback servers.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use ferry_proxy::app::{self, Running};
use ferry_tests::net::{self, Protocol};
use ferry_tests::upstream::Upstream;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HCM: &str = "'@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "http_filters: [{ name: envoy.filters.http.router, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }]";

/// A STATIC cluster; `protocol` is extra cluster YAML (e.g. upstream HTTP protocol options).
/// Upstream HTTP/1.1 or HTTP/2 as downstream spoke (Envoy's default upstream is HTTP/1.1).
const USE_DOWNSTREAM: &str = r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config: { http_protocol_options: {}, http2_protocol_options: {} }"#;

fn cluster(name: &str, addr: SocketAddr, protocol: &str) -> String {
    format!(
        r#"
  - name: "{name}"
    type: STATIC
    connect_timeout: 1s{protocol}
    load_assignment:
      cluster_name: "{name}"
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}]"#,
        addr.port()
    )
}

/// An HTTP listener `http` routing everything to `echo`, and a TCP listener `tcp` to `tcp`.
async fn start(echo: SocketAddr, tcp: SocketAddr) -> Running {
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
          {HCM}
          stat_prefix: http
          {ROUTER}
          upgrade_configs: [{{ upgrade_type: websocket }}]
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/", grpc: {{}} }}
                route: {{ cluster: echo, timeout: 0s }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: echo }}
  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters: [{{ name: envoy.filters.network.tcp_proxy, typed_config: {{ '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tcp, cluster: tcp }} }}]
  clusters: {}
"#,
        cluster("echo", echo, USE_DOWNSTREAM) + &cluster("tcp", tcp, "")
    );
    let bootstrap = xds_proto::json::from_yaml_str(&yaml).expect("bootstrap parses");
    app::start(bootstrap).await.expect("proxy starts")
}

struct Fixture {
    proxy: Running,
    _echo: Upstream,
    _tcp: Upstream,
}

async fn fixture() -> Fixture {
    let echo = Upstream::echo("echo").await.expect("echo upstream");
    let tcp = Upstream::tcp_echo("tcp").await.expect("tcp upstream");
    let proxy = start(echo.addr, tcp.addr).await;
    Fixture {
        proxy,
        _echo: echo,
        _tcp: tcp,
    }
}

#[tokio::test]
async fn http2_prior_knowledge_end_to_end() {
    let f = fixture().await;
    let addr = f.proxy.listener_addr("http").expect("bound");
    let request = net::request(Method::GET, "h2.test", "/two", &[]).unwrap();
    let reply = net::send(addr, Protocol::Http2, request)
        .await
        .expect("h2 reply");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["path"], "/two");
    assert_eq!(body["version"], "HTTP/2.0");
}

#[tokio::test]
async fn grpc_unary_and_streaming_keep_trailers() {
    let f = fixture().await;
    let addr = f.proxy.listener_addr("http").expect("bound");
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);

    // Unary: one message, the whole response, then trailers.
    let unary = Request::post("http://grpc.test/echo.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(Bytes::from_static(
            b"\0\0\0\0\x05hello",
        )))
        .unwrap();
    let response = sender.send_request(unary).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(
        collected.to_bytes(),
        Bytes::from_static(b"\0\0\0\0\x05hello")
    );
    assert_eq!(trailers["grpc-status"], "0");

    // Streaming: each message comes back before the next is sent, proving both bodies stream.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let streaming = Request::post("http://grpc.test/echo.Echo/Stream")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
    let (mut sender2, conn2) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(TcpStream::connect(addr).await.unwrap()),
    )
    .await
    .unwrap();
    tokio::spawn(conn2);
    let response = tokio::spawn(async move { sender2.send_request(streaming).await });
    tx.send(Ok(Frame::data(Bytes::from_static(b"one"))))
        .await
        .unwrap();
    let response = response.await.unwrap().unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, Bytes::from_static(b"one"));
    tx.send(Ok(Frame::data(Bytes::from_static(b"two"))))
        .await
        .unwrap();
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(second, Bytes::from_static(b"two"));
    drop(tx);
    let last = body.frame().await.unwrap().unwrap();
    let trailers = last.into_trailers().expect("trailers after the messages");
    assert_eq!(trailers["grpc-status"], "0");
    drop(sender);
}

/// Sends `size` bytes as a streamed POST the echo upstream streams back, over `http2` or
/// HTTP/1.1, and returns what came back. Request and response are in flight at once, so the
/// proxy must stream both ways with backpressure.
async fn echo_through(addr: SocketAddr, http2: bool, size: usize) -> Vec<u8> {
    let pattern = |i: usize| (i % 251) as u8;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let request = Request::post("http://large.test/echo.Echo/Large")
        .header("content-type", "application/grpc")
        .body(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .expect("request");
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let response = if http2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        tokio::spawn(async move { sender.send_request(request).await })
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        tokio::spawn(async move { sender.send_request(request).await })
    };
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < size {
            let n = (size - sent).min(48 * 1024);
            let chunk: Vec<u8> = (sent..sent + n).map(pattern).collect();
            tx.send(Ok(Frame::data(Bytes::from(chunk))))
                .await
                .expect("body sent");
            sent += n;
        }
    });
    let response = response.await.expect("task").expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = Vec::with_capacity(size);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            received.extend_from_slice(&data);
        }
    }
    writer.await.expect("writer");
    assert!(received.iter().enumerate().all(|(i, b)| *b == pattern(i)));
    received
}

#[tokio::test]
async fn bodies_larger_than_every_buffer_stream_both_ways() {
    // 4 MiB: larger than the codecs' read buffers and than the 1 MiB buffer limit, sent while
    // the answer streams back, over both downstream protocols.
    let f = fixture().await;
    let addr = f.proxy.listener_addr("http").expect("bound");
    for http2 in [false, true] {
        let echoed = echo_through(addr, http2, 4 * 1024 * 1024).await;
        assert_eq!(echoed.len(), 4 * 1024 * 1024, "http2: {http2}");
    }
}

#[tokio::test]
async fn websocket_upgrade_is_passed_through() {
    let f = fixture().await;
    let addr = f.proxy.listener_addr("http").expect("bound");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "connection closed during the handshake: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for message in [&b"ping"[..], b"a longer message after the first"] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message);
    }
}

#[tokio::test]
async fn tcp_proxy_echoes_bytes() {
    let f = fixture().await;
    let addr = f.proxy.listener_addr("tcp").expect("bound");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    for message in [&b"hello"[..], b"world, again"] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message);
    }
}

/// A real ClientHello for `sni`, written by a rustls client (never completed: the test only
/// checks where the proxy sends it).
fn client_hello(sni: &str) -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("name");
    let mut client =
        rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).expect("write");
    }
    out
}

/// A TCP upstream that answers each connection's first `expect` bytes with them, prefixed by
/// its one-letter name.
async fn recording_upstream(name: u8, expect: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = vec![0u8; expect];
                if stream.read_exact(&mut got).await.is_ok() {
                    let _ = stream.write_all(&[name]).await;
                    let _ = stream.write_all(&got).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn tcp_proxy_filter_chains_match_tls_server_names() {
    let exact = client_hello("api.example.com");
    let wild = client_hello("www.example.com");
    let none = client_hello("elsewhere.io");
    // ClientHellos for names of one length have one length.
    assert_eq!(exact.len(), wild.len());
    let a = recording_upstream(b'a', exact.len()).await;
    let b = recording_upstream(b'b', exact.len()).await;
    let c = recording_upstream(b'c', none.len()).await;
    let tcp = |cluster: &str| {
        format!(
            "filters: [{{ name: envoy.filters.network.tcp_proxy, typed_config: {{ '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tcp, cluster: {cluster} }} }}]"
        )
    };
    let yaml = format!(
        r#"
static_resources:
  listeners:
  - name: sni
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    listener_filters:
    - {{ name: envoy.filters.listener.tls_inspector, typed_config: {{ '@type': type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }} }}
    filter_chains:
    - filter_chain_match: {{ server_names: ['*.example.com'] }}
      {}
    - filter_chain_match: {{ server_names: [api.example.com] }}
      {}
    - {}
  clusters:
{}
"#,
        tcp("b"),
        tcp("a"),
        tcp("c"),
        cluster("a", a, "") + &cluster("b", b, "") + &cluster("c", c, "")
    );
    let bootstrap = xds_proto::json::from_yaml_str(&yaml).expect("bootstrap parses");
    let proxy = app::start(bootstrap).await.expect("proxy starts");
    let addr = proxy.listener_addr("sni").expect("bound");
    for (hello, upstream) in [(&exact, b'a'), (&wild, b'b'), (&none, b'c')] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(hello).await.unwrap();
        let mut reply = vec![0u8; hello.len() + 1];
        stream.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[0], upstream, "chosen upstream");
        assert_eq!(&reply[1..], &hello[..], "the ClientHello arrives intact");
    }
}

/// Sends one HTTP/1.1 request with a header of `size` bytes and returns the status line.
async fn status_with_header_of(addr: SocketAddr, size: usize) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET / HTTP/1.1\r\nhost: example\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(size)
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut reply = Vec::new();
    // The proxy may close before reading the whole request: what it answered is what counts.
    let _ = stream.read_to_end(&mut reply).await;
    String::from_utf8_lossy(&reply)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn request_headers_are_limited_by_max_request_headers_kb_as_in_envoy() {
    use ferry_tests::bootstrap::{http_listener, static_resources};
    let routes = r#"[{ match: { prefix: "/" }, direct_response: { status: 200 } }]"#;
    let default = http_listener("http", routes);
    let larger = http_listener("large", routes).replace(
        "stat_prefix: large",
        "stat_prefix: large\n          max_request_headers_kb: 96",
    );
    let yaml = static_resources(&[default, larger], &[]);
    let (proxy, addr) = ferry_tests::bootstrap::start_proxy(&yaml).await;
    let large = proxy.listener_addr("large").expect("bound");
    // Envoy's default limit is 60 KiB: 70 KiB of headers are refused with 431, 40 KiB pass.
    assert!(
        status_with_header_of(addr, 70 * 1024)
            .await
            .contains(" 431 ")
    );
    assert!(
        status_with_header_of(addr, 40 * 1024)
            .await
            .contains(" 200 ")
    );
    // max_request_headers_kb: 96 takes 70 KiB (beyond the 64 KiB body read buffer) and still
    // refuses far more. The codec enforces the limit through its read buffer, so a block that
    // arrives whole in one read may pass up to the buffer's capacity: 200 KiB never does.
    assert!(
        status_with_header_of(large, 70 * 1024)
            .await
            .contains(" 200 ")
    );
    assert!(
        status_with_header_of(large, 200 * 1024)
            .await
            .contains(" 431 ")
    );
}
