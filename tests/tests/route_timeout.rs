//! The route timeout covers the whole upstream response, as Envoy's does: an upstream that sends
//! its headers and then stalls the body has its stream reset when the timeout fires (HTTP/1.1:
//! the connection closes mid-body; HTTP/2: RST_STREAM), counted as `upstream_rq_timeout`. The
//! same holds for a limit from `grpc-timeout` (`max_stream_duration`) with `timeout: 0s`.
//!
//! The upstream never finishes its body, so the only passing outcome is the reset: nothing here
//! depends on how fast the machine is (the client's wait is bounded by the generous
//! [`PATIENCE`] only so that a regression fails instead of hanging).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use ferry_proxy::app::{self, Running};
use ferry_tests::bootstrap;
use ferry_tests::poll::PATIENCE;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// An HTTP/1.1 upstream answering `200` with one body chunk, then never another byte.
async fn stalling_upstream() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    let frames = futures::stream::iter([Ok::<_, Infallible>(Frame::data(
                        Bytes::from_static(b"partial"),
                    ))])
                    .chain(futures::stream::pending());
                    Ok::<_, Infallible>(Response::new(StreamBody::new(frames)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

async fn start(upstream: SocketAddr) -> Running {
    let routes = "[
        { match: { prefix: /grpc }, route: { cluster: stall, timeout: 0s, max_stream_duration: { grpc_timeout_header_max: 0s } } },
        { match: { prefix: / }, route: { cluster: stall, timeout: 0.5s } }]";
    let yaml = bootstrap::static_resources(
        &[bootstrap::http_listener("http", routes)],
        &[bootstrap::static_cluster("stall", upstream)],
    );
    let bootstrap = xds_proto::json::from_yaml_str(&yaml).expect("bootstrap parses");
    app::start(bootstrap).await.expect("proxy starts")
}

/// Sends `GET path` over HTTP/1.1 or h2c; returns the status, the first body chunk, and how the
/// rest of the body ended.
async fn exchange(
    addr: SocketAddr,
    http2: bool,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Bytes, Result<(), String>) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let io = TokioIo::new(stream);
    let mut request = Request::get(format!("http://app.test{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Empty::<Bytes>::new()).expect("request");
    let response = if http2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        sender.send_request(request).await.expect("response head")
    } else {
        let host = http::HeaderValue::from_static("app.test");
        request.headers_mut().insert(http::header::HOST, host);
        *request.uri_mut() = path.parse().expect("origin-form path");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        sender.send_request(request).await.expect("response head")
    };
    let status = response.status();
    let mut body = response.into_body();
    let rest = async {
        let first = match body.frame().await {
            Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
            other => return (Bytes::new(), Err(format!("first frame: {other:?}"))),
        };
        let end = match body.collect().await {
            Ok(_) => Ok(()),
            Err(error) => Err(error.to_string()),
        };
        (first, end)
    };
    let (first, end) = tokio::time::timeout(PATIENCE, rest)
        .await
        .expect("the route timeout ends the stalled body");
    (status, first, end)
}

#[tokio::test]
async fn a_body_stalled_after_the_headers_is_reset_at_the_route_timeout() {
    let (upstream, _task) = stalling_upstream().await;
    let proxy = start(upstream).await;
    let addr = proxy.listener_addr("http").expect("bound");
    let timeouts = || {
        proxy
            .stats
            .counter_value("cluster.stall.upstream_rq_timeout")
    };

    for http2 in [false, true] {
        let (status, first, end) = exchange(addr, http2, "/", &[]).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the headers went out before the timeout"
        );
        assert_eq!(first, "partial", "the body streams until the timeout");
        assert!(
            end.is_err(),
            "http2={http2}: the stalled body must not end cleanly"
        );
    }
    assert_eq!(timeouts(), 2, "each reset counts as upstream_rq_timeout");

    // `timeout: 0s` turns the route timeout off; `grpc-timeout` still bounds the whole stream.
    let grpc = [
        ("grpc-timeout", "500m"),
        ("content-type", "application/grpc"),
    ];
    let (status, first, end) = exchange(addr, true, "/grpc.Svc/Stream", &grpc).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first, "partial");
    assert!(end.is_err(), "grpc-timeout resets the stalled stream");
    assert_eq!(timeouts(), 3);
}
