//! The HTTP connection manager's protocol options, as istiod sets them, run by ferry-proxy and,
//! with the same bootstrap, by the real Envoy 1.40: `max_headers_count` answers 431,
//! `headers_with_underscores_action` rejects (400) or drops, HTTP/1.0 needs `accept_http_10`
//! (else 426), `idle_timeout` closes an idle connection, `max_connection_duration` sends GOAWAY,
//! and `http2_protocol_options` are what the server's SETTINGS frame advertises. Without the
//! options applied, each of these behaves as the defaults and the test fails.

use std::net::SocketAddr;

use bytes::Bytes;
use ferry_tests::bootstrap::{self, http_listener_hcm, static_cluster, static_resources};
use ferry_tests::envoy::Envoy;
use ferry_tests::net::{Protocol, request, send};
use ferry_tests::poll::PATIENCE;
use ferry_tests::upstream::Upstream;
use http::Method;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTES: &str = r#"[
    { match: { prefix: /local }, direct_response: { status: 200, body: { inline_string: "ok" } } },
    { match: { prefix: / }, route: { cluster: echo } }]"#;

/// The bootstrap of one `http` listener whose HCM has `hcm_fields`, routing to `upstream`.
fn bootstrap_with(hcm_fields: &[&str], upstream: SocketAddr) -> String {
    static_resources(
        &[http_listener_hcm("http", hcm_fields, ROUTES)],
        &[static_cluster("echo", upstream)],
    )
}

/// A running peer: ferry-proxy in-process, or Envoy (kept alive with it).
enum Peer {
    Ferry(#[allow(dead_code)] ferry_proxy::app::Running),
    Envoy(#[allow(dead_code)] Envoy),
}

/// Ferry, then Envoy when it is installed (required under CI), each with its listener address.
async fn peers(yaml: &str) -> Vec<(&'static str, SocketAddr, Peer)> {
    let (ferry, addr) = bootstrap::start_proxy(yaml).await;
    let mut peers = vec![("ferry", addr, Peer::Ferry(ferry))];
    if let Some(envoy) = Envoy::start(yaml).await {
        let addr = envoy.wait_listener("http").await;
        peers.push(("envoy", addr, Peer::Envoy(envoy)));
    }
    peers
}

/// Sends `raw` (a whole HTTP/1.x request that asks to close) and reads the whole answer; returns
/// the status code and the text.
async fn raw(addr: SocketAddr, raw: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    stream.write_all(raw.as_bytes()).await.expect("writes");
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the peer closes after answering")
        .expect("reads");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    (status, text)
}

/// An HTTP/1.1 GET of `path` with `extra` header lines, asking to close.
fn get(path: &str, extra: &[String]) -> String {
    let extra: String = extra.iter().map(|h| format!("{h}\r\n")).collect();
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra}Connection: close\r\n\r\n")
}

fn numbered_headers(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("x-header-{i}: {i}")).collect()
}

/// A client connection whose task ends when the peer closes the connection.
struct Client {
    sender: Sender,
    conn: tokio::task::JoinHandle<hyper::Result<()>>,
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Client {
    /// Connects to `addr` with HTTP/1.1, or HTTP/2 prior knowledge.
    async fn connect(addr: SocketAddr, http2: bool) -> Client {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connects"));
        if http2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("handshake");
            let conn = tokio::spawn(conn);
            Client {
                sender: Sender::Http2(sender),
                conn,
            }
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("handshake");
            let conn = tokio::spawn(conn);
            Client {
                sender: Sender::Http1(sender),
                conn,
            }
        }
    }

    /// GETs `/local` (the direct response), reads the body, and returns the response head.
    async fn get_local(&mut self) -> http::response::Parts {
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                let req = http::Request::get("/local").header(http::header::HOST, "test");
                sender
                    .send_request(req.body(Empty::new()).expect("request"))
                    .await
            }
            Sender::Http2(sender) => {
                let req = http::Request::get("http://test/local");
                sender
                    .send_request(req.body(Empty::new()).expect("request"))
                    .await
            }
        };
        let (head, body) = response.expect("answer").into_parts();
        body.collect().await.expect("body");
        head
    }

    /// Waits until the peer has closed the connection cleanly; the client keeps its side open
    /// until then, so only the peer can have ended it.
    async fn closed_by_peer(self, what: &str) {
        tokio::time::timeout(PATIENCE, self.conn)
            .await
            .unwrap_or_else(|_| panic!("{what}: connection never closed"))
            .expect("connection task")
            .expect("clean close");
        drop(self.sender);
    }
}

#[tokio::test]
async fn max_headers_count_answers_431() {
    let upstream = Upstream::echo("echo").await.expect("upstream");
    let yaml = bootstrap_with(
        &["common_http_protocol_options: { max_headers_count: 20 }"],
        upstream.addr,
    );
    for (name, addr, _peer) in peers(&yaml).await {
        let (status, _) = raw(addr, &get("/", &numbered_headers(10))).await;
        assert_eq!(status, 200, "{name}: 10 headers pass");
        let (status, _) = raw(addr, &get("/", &numbered_headers(30))).await;
        assert_eq!(status, 431, "{name}: 30 headers are too many");
        if name == "ferry" {
            // Envoy resets such an HTTP/2 stream; ferry answers 431 there too.
            let headers: Vec<(String, String)> = (0..30)
                .map(|i| (format!("x-h-{i}"), i.to_string()))
                .collect();
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let req = request(Method::GET, "test", "/", &headers).expect("request");
            let reply = send(addr, Protocol::Http2, req).await.expect("h2 answer");
            assert_eq!(reply.status.as_u16(), 431, "ferry over h2");
        }
    }
}

#[tokio::test]
async fn headers_with_underscores_are_rejected_with_400() {
    let upstream = Upstream::echo("echo").await.expect("upstream");
    let yaml = bootstrap_with(
        &["common_http_protocol_options: { headers_with_underscores_action: REJECT_REQUEST }"],
        upstream.addr,
    );
    for (name, addr, _peer) in peers(&yaml).await {
        let (status, _) = raw(addr, &get("/", &["x-dash: 1".into()])).await;
        assert_eq!(status, 200, "{name}: no underscore");
        let (status, _) = raw(addr, &get("/", &["x_under: 1".into()])).await;
        assert_eq!(status, 400, "{name}: underscore rejected");
    }
}

#[tokio::test]
async fn headers_with_underscores_are_dropped_before_the_upstream() {
    let upstream = Upstream::echo("echo").await.expect("upstream");
    let yaml = bootstrap_with(
        &["common_http_protocol_options: { headers_with_underscores_action: DROP_HEADER }"],
        upstream.addr,
    );
    for (name, addr, _peer) in peers(&yaml).await {
        let (status, text) = raw(addr, &get("/", &["x_under: 1".into(), "x-dash: 2".into()])).await;
        assert_eq!(status, 200, "{name}: {text}");
        assert!(
            text.contains("x-dash"),
            "{name}: the other header passes: {text}"
        );
        assert!(
            !text.contains("x_under"),
            "{name}: the underscored one is dropped: {text}"
        );
    }
}

#[tokio::test]
async fn http_1_0_needs_accept_http_10() {
    let upstream = Upstream::echo("echo").await.expect("upstream");
    let request = "GET /local HTTP/1.0\r\nHost: test\r\n\r\n";
    for (name, addr, _peer) in peers(&bootstrap_with(&[], upstream.addr)).await {
        let (status, _) = raw(addr, request).await;
        assert_eq!(status, 426, "{name}: HTTP/1.0 refused by default");
    }
    let yaml = bootstrap_with(
        &["http_protocol_options: { accept_http_10: true }"],
        upstream.addr,
    );
    for (name, addr, _peer) in peers(&yaml).await {
        let (status, text) = raw(addr, request).await;
        assert_eq!(status, 200, "{name}: accepted: {text}");
    }
}

#[tokio::test]
async fn idle_timeout_closes_an_idle_connection() {
    let upstream = Upstream::echo("echo").await.expect("upstream");
    let yaml = bootstrap_with(
        &["common_http_protocol_options: { idle_timeout: 1s }"],
        upstream.addr,
    );
    for (name, addr, _peer) in peers(&yaml).await {
        let mut client = Client::connect(addr, false).await;
        assert_eq!(client.get_local().await.status, 200, "{name}");
        // The client keeps the connection; only the peer's idle timeout ends it. (The timeout
        // is long enough that the request above is never late for it, even on a loaded machine.)
        client.closed_by_peer(name).await;
    }
}

#[tokio::test]
async fn max_connection_duration_sends_goaway() {
    let upstream = Upstream::echo("echo").await.expect("upstream");
    let yaml = bootstrap_with(
        &[
            "common_http_protocol_options: { max_connection_duration: 1s }",
            "drain_timeout: 0.1s",
        ],
        upstream.addr,
    );
    for (name, addr, _peer) in peers(&yaml).await {
        let mut client = Client::connect(addr, true).await;
        assert_eq!(client.get_local().await.status, 200, "{name}");
        client.closed_by_peer(name).await;
    }
}

/// The server's first SETTINGS frame on an h2c prior-knowledge connection, as (id, value).
async fn server_settings(addr: SocketAddr) -> Vec<(u16, u32)> {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    // The preface and an empty SETTINGS frame.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&hello).await.expect("writes");
    let read = async {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await.expect("frame header");
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        assert_eq!(header[3], 4, "the server speaks first with SETTINGS");
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.expect("payload");
        payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("settings arrive")
}

#[tokio::test]
async fn http2_protocol_options_are_advertised() {
    const MAX_CONCURRENT_STREAMS: u16 = 3;
    const INITIAL_WINDOW_SIZE: u16 = 4;
    let upstream = Upstream::echo("echo").await.expect("upstream");
    let yaml = bootstrap_with(
        &[
            "http2_protocol_options: { max_concurrent_streams: 7, initial_stream_window_size: 70000 }",
        ],
        upstream.addr,
    );
    for (name, addr, _peer) in peers(&yaml).await {
        let settings = server_settings(addr).await;
        let get = |id| settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
        assert_eq!(get(MAX_CONCURRENT_STREAMS), Some(7), "{name}: {settings:?}");
        assert_eq!(
            get(INITIAL_WINDOW_SIZE),
            Some(70_000),
            "{name}: {settings:?}"
        );
    }
}

/// The path the echo upstream saw, from its JSON answer.
fn upstream_path(text: &str) -> String {
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    json["path"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn escaped_slashes_and_merge_slashes_rewrite_the_path() {
    let upstream = Upstream::echo("echo").await.expect("upstream");
    // Istio's DECODE_AND_MERGE_SLASHES path normalization.
    let yaml = bootstrap_with(
        &[
            "normalize_path: true",
            "merge_slashes: true",
            "path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD",
        ],
        upstream.addr,
    );
    for (name, addr, _peer) in peers(&yaml).await {
        let (status, text) = raw(addr, &get("/a//b%2Fc/..//d?q=x//y", &[])).await;
        assert_eq!(status, 200, "{name}: {text}");
        assert_eq!(upstream_path(&text), "/a/b/d?q=x//y", "{name}");
    }
    let yaml = bootstrap_with(
        &["path_with_escaped_slashes_action: REJECT_REQUEST"],
        upstream.addr,
    );
    for (name, addr, _peer) in peers(&yaml).await {
        let (status, _) = raw(addr, &get("/a%2fb", &[])).await;
        assert_eq!(status, 400, "{name}: escaped slash rejected");
        let (status, _) = raw(addr, &get("/a/b", &[])).await;
        assert_eq!(status, 200, "{name}: plain path passes");
    }
}

#[tokio::test]
async fn xfcc_is_removed_on_plaintext_unless_always_forward_only() {
    // istiod's inbound HCM: APPEND_FORWARD with set_current_client_cert_details. Without a
    // peer certificate (plaintext) Envoy removes the incoming header; only ALWAYS_FORWARD_ONLY
    // passes it.
    let upstream = Upstream::echo("echo").await.expect("upstream");
    let xfcc = "By=spiffe://cluster.local/ns/a/sa/b;URI=spiffe://cluster.local/ns/c/sa/d";
    let seen = async |addr| {
        let header = format!("x-forwarded-client-cert: {xfcc}");
        let (status, text) = raw(addr, &get("/", &[header])).await;
        assert_eq!(status, 200, "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(body).expect("echo JSON");
        json["headers"]["x-forwarded-client-cert"].clone()
    };
    let yaml = bootstrap_with(
        &[
            "forward_client_cert_details: APPEND_FORWARD",
            "set_current_client_cert_details: { subject: true, uri: true, dns: true }",
        ],
        upstream.addr,
    );
    for (name, addr, _peer) in peers(&yaml).await {
        assert_eq!(seen(addr).await, serde_json::Value::Null, "{name}: removed");
    }
    let yaml = bootstrap_with(
        &["forward_client_cert_details: ALWAYS_FORWARD_ONLY"],
        upstream.addr,
    );
    for (name, addr, _peer) in peers(&yaml).await {
        assert_eq!(seen(addr).await, xfcc, "{name}: forwarded");
    }
}

#[tokio::test]
async fn proper_case_words_title_cases_http1_response_headers() {
    let upstream = Upstream::echo("echo").await.expect("upstream");
    for (name, addr, _peer) in peers(&bootstrap_with(&[], upstream.addr)).await {
        let (_, text) = raw(addr, &get("/local", &[])).await;
        assert!(
            text.contains("\r\ncontent-length:"),
            "{name}: lower case by default: {text}"
        );
    }
    let yaml = bootstrap_with(
        &["http_protocol_options: { header_key_format: { proper_case_words: {} } }"],
        upstream.addr,
    );
    for (name, addr, _peer) in peers(&yaml).await {
        let (_, text) = raw(addr, &get("/local", &[])).await;
        assert!(
            text.contains("\r\nContent-Length:"),
            "{name}: title case: {text}"
        );
    }
}

#[tokio::test]
async fn max_requests_per_connection_closes_http1_and_drains_http2() {
    let upstream = Upstream::echo("echo").await.expect("upstream");
    let yaml = bootstrap_with(
        &[
            "common_http_protocol_options: { max_requests_per_connection: 2 }",
            "drain_timeout: 0.1s",
        ],
        upstream.addr,
    );
    for (name, addr, _peer) in peers(&yaml).await {
        // HTTP/1.1: the second response closes the connection.
        let mut client = Client::connect(addr, false).await;
        for i in 0..2 {
            let head = client.get_local().await;
            let close = head
                .headers
                .get(http::header::CONNECTION)
                .is_some_and(|v| v == "close");
            assert_eq!(close, i == 1, "{name}: request {i}");
        }
        client.closed_by_peer(&format!("{name}, HTTP/1.1")).await;
        // HTTP/2: GOAWAY after the second stream, then the connection ends.
        let mut client = Client::connect(addr, true).await;
        for _ in 0..2 {
            client.get_local().await;
        }
        client.closed_by_peer(&format!("{name}, HTTP/2")).await;
    }
}
