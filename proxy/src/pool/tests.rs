//! Pool tests against real hyper servers on 127.0.0.1; connection counts are taken server-side.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Barrier;

use super::*;
use crate::cluster::{ClusterStats, Host, TransportSocket, UpstreamError, UpstreamProtocol};
use crate::error::ResponseFlag;
use crate::stats::Store;

/// A test upstream: counts connections opened and closed; `/wait` blocks until `barrier`
/// requests are in flight at once; an `upgrade` request is answered 101 and echoed.
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    pub opened: Arc<AtomicUsize>,
    pub closed: Arc<AtomicUsize>,
}

pub(crate) async fn upstream(h2: bool, barrier: usize) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opened = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(barrier.max(1)));
    let (o, c) = (opened.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            o.fetch_add(1, Ordering::SeqCst);
            let (c, barrier) = (c.clone(), barrier.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, barrier.clone()));
                let io = TokioIo::new(stream);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .with_upgrades()
                        .await;
                }
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Upstream {
        addr,
        opened,
        closed,
    }
}

async fn handle(
    mut req: http::Request<Incoming>,
    barrier: Arc<Barrier>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    if req.headers().contains_key(http::header::UPGRADE) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        let mut resp = http::Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert(http::header::UPGRADE, "echo".parse().unwrap());
        resp.headers_mut()
            .insert(http::header::CONNECTION, "upgrade".parse().unwrap());
        return Ok(resp);
    }
    if req.uri().path() == "/wait" {
        barrier.wait().await;
    }
    let body = format!("{:?} {}", req.version(), req.uri().path());
    // What the server saw as the authority: the Host header (HTTP/1.1) or :authority (HTTP/2),
    // and whether the target was absolute.
    let seen = req
        .uri()
        .authority()
        .map(|a| format!("uri:{a}"))
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .map(|h| format!("host:{}", h.to_str().unwrap()))
        })
        .unwrap_or_default();
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert("x-seen-authority", seen.parse().unwrap());
    Ok(resp)
}

fn host(addr: SocketAddr, settings: PoolSettings) -> (Host, Arc<ClusterStats>) {
    let stats = ClusterStats::new(&Store::default(), "test");
    let host = Host::new(
        addr,
        String::new(),
        TransportSocket::Plaintext,
        Arc::new(settings),
        stats.clone(),
    );
    (host, stats)
}

fn h2_settings() -> PoolSettings {
    PoolSettings {
        protocol: UpstreamProtocol::Http2,
        ..PoolSettings::default()
    }
}

fn get(path: &str) -> http::Request<crate::body::Body> {
    http::Request::get(format!("http://upstream{path}"))
        .body(crate::body::empty())
        .unwrap()
}

async fn body(resp: http::Response<crate::body::Body>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Polls `check` until it holds; fails after ten seconds.
async fn eventually(mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition never held");
}

#[tokio::test]
async fn http1_keep_alive_reuses_one_connection() {
    let up = upstream(false, 1).await;
    let (host, stats) = host(up.addr, PoolSettings::default());
    for i in 0..5 {
        let resp = host.send(get(&format!("/{i}"))).await.unwrap();
        assert_eq!(body(resp).await, format!("HTTP/1.1 /{i}"));
        // The connection returns to the pool once hyper has seen the response end.
        eventually(|| host.connections().0 == 1).await;
    }
    assert_eq!(up.opened.load(Ordering::SeqCst), 1);
    assert_eq!(stats.upstream_cx_total.get(), 1);
    assert_eq!(stats.upstream_rq_total.get(), 5);
    assert_eq!(host.active_requests(), 0);
}

#[tokio::test]
async fn http1_connections_the_server_closed_are_not_reused() {
    // The server answers with an implicit keep-alive and then closes the socket: every request
    // must still succeed, each on a new connection (skipped or re-sent, never failed).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    });
    let (host, _) = host(addr, PoolSettings::default());
    for _ in 0..3 {
        let resp = host.send(get("/")).await.unwrap();
        assert_eq!(body(resp).await, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn http1_concurrent_requests_use_separate_connections() {
    let up = upstream(false, 2).await;
    let (host, _) = host(up.addr, PoolSettings::default());
    let (a, b) = tokio::join!(host.send(get("/wait")), host.send(get("/wait")));
    assert_eq!(a.unwrap().status(), 200);
    assert_eq!(b.unwrap().status(), 200);
    assert_eq!(up.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn http1_max_requests_per_connection_closes_connections() {
    let up = upstream(false, 1).await;
    let settings = PoolSettings {
        max_requests_per_connection: Some(2),
        ..PoolSettings::default()
    };
    let (host, _) = host(up.addr, settings);
    for _ in 0..4 {
        let resp = host.send(get("/")).await.unwrap();
        body(resp).await;
        // Wait until the connection is either pooled again or closed by the limit.
        eventually(|| {
            host.connections().0 == 1
                || up.closed.load(Ordering::SeqCst) == up.opened.load(Ordering::SeqCst)
        })
        .await;
    }
    assert_eq!(up.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn http1_idle_connections_close_after_idle_timeout() {
    let up = upstream(false, 1).await;
    let settings = PoolSettings {
        idle_timeout: Some(Duration::from_millis(50)),
        ..PoolSettings::default()
    };
    let (host, stats) = host(up.addr, settings);
    body(host.send(get("/")).await.unwrap()).await;
    eventually(|| up.closed.load(Ordering::SeqCst) == 1).await;
    assert_eq!(host.connections().0, 0);
    eventually(|| stats.upstream_cx_active.get() == 0).await;
    // The reaper exits when nothing is idle and starts again for the next idle connection.
    body(host.send(get("/")).await.unwrap()).await;
    eventually(|| up.closed.load(Ordering::SeqCst) == 2).await;
    assert_eq!(up.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn http2_multiplexes_streams_over_one_connection() {
    let up = upstream(true, 5).await;
    let (host, stats) = host(up.addr, h2_settings());
    let requests = (0..5).map(|_| host.send(get("/wait")));
    for resp in futures::future::join_all(requests).await {
        assert_eq!(body(resp.unwrap()).await, "HTTP/2.0 /wait");
    }
    assert_eq!(up.opened.load(Ordering::SeqCst), 1);
    assert_eq!(stats.upstream_cx_total.get(), 1);
    assert_eq!(host.connections().1, 1);
}

#[tokio::test]
async fn http2_opens_another_connection_at_max_concurrent_streams() {
    let up = upstream(true, 2).await;
    let mut settings = h2_settings();
    settings.http2.max_concurrent_streams = 1;
    let (host, _) = host(up.addr, settings);
    let (a, b) = tokio::join!(host.send(get("/wait")), host.send(get("/wait")));
    assert_eq!(a.unwrap().status(), 200);
    assert_eq!(b.unwrap().status(), 200);
    assert_eq!(up.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn http2_idle_connection_closes_after_idle_timeout() {
    let up = upstream(true, 1).await;
    let mut settings = h2_settings();
    settings.idle_timeout = Some(Duration::from_millis(50));
    let (host, _) = host(up.addr, settings);
    body(host.send(get("/")).await.unwrap()).await;
    eventually(|| host.connections().1 == 0).await;
    eventually(|| up.closed.load(Ordering::SeqCst) == 1).await;
    body(host.send(get("/")).await.unwrap()).await;
    eventually(|| up.closed.load(Ordering::SeqCst) == 2).await;
}

#[tokio::test]
async fn use_downstream_protocol_follows_the_request_version() {
    let h2 = upstream(true, 1).await;
    let settings = PoolSettings {
        protocol: UpstreamProtocol::UseDownstream,
        ..PoolSettings::default()
    };
    let (host, _) = host(h2.addr, settings);
    let mut req = get("/v");
    *req.version_mut() = http::Version::HTTP_2;
    assert_eq!(body(host.send(req).await.unwrap()).await, "HTTP/2.0 /v");
}

#[tokio::test]
async fn http1_gets_origin_form_and_a_host_header() {
    let up = upstream(false, 1).await;
    let (host, _) = host(up.addr, PoolSettings::default());
    let mut req = get("/p?q=1");
    *req.version_mut() = http::Version::HTTP_2;
    let resp = host.send(req).await.unwrap();
    assert_eq!(resp.headers()["x-seen-authority"], "host:upstream");
    assert_eq!(body(resp).await, "HTTP/1.1 /p");
}

#[tokio::test]
async fn http2_gets_its_authority_from_the_host_header() {
    let up = upstream(true, 1).await;
    let (host, _) = host(up.addr, h2_settings());
    let req = http::Request::get("/p")
        .header(http::header::HOST, "reviews:9080")
        .body(crate::body::empty())
        .unwrap();
    let resp = host.send(req).await.unwrap();
    assert_eq!(resp.headers()["x-seen-authority"], "uri:reviews:9080");
    assert_eq!(body(resp).await, "HTTP/2.0 /p");
}

#[tokio::test]
async fn connection_refused_is_an_upstream_connect_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (host, stats) = host(addr, PoolSettings::default());
    let err = host.send(get("/")).await.unwrap_err();
    assert!(matches!(err, UpstreamError::ConnectFailure(_)), "{err}");
    assert_eq!(err.response_flag(), ResponseFlag::UpstreamConnectionFailure);
    assert!(err.is_connect_failure());
    assert_eq!(stats.upstream_cx_connect_fail.get(), 1);
    assert_eq!(host.stats().rq_error.get(), 1);
    assert_eq!(host.stats().cx_connect_fail.get(), 1);
    assert_eq!(host.active_requests(), 0);
}

#[tokio::test]
async fn connect_timeout_is_an_upstream_connect_failure() {
    // A listener that never accepts, with its accept queue full: the kernel drops further
    // SYNs, so the next connect hangs until our timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            held.push(s);
        }
    }
    let settings = PoolSettings {
        connect_timeout: Duration::from_millis(100),
        ..PoolSettings::default()
    };
    let (host, stats) = host(addr, settings);
    let err = host.send(get("/")).await.unwrap_err();
    assert!(matches!(err, UpstreamError::ConnectTimeout), "{err}");
    assert_eq!(err.response_flag(), ResponseFlag::UpstreamConnectionFailure);
    assert_eq!(stats.upstream_cx_connect_timeout.get(), 1);
}

#[tokio::test]
async fn http2_requests_queued_behind_a_failed_connect_fail_together() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (host, stats) = host(addr, h2_settings());
    let results = futures::future::join_all((0..5).map(|_| host.send(get("/")))).await;
    for result in results {
        let err = result.unwrap_err();
        assert_eq!(
            err.response_flag(),
            ResponseFlag::UpstreamConnectionFailure,
            "{err}"
        );
    }
    // Only the first request tried to connect; the others failed with it.
    assert_eq!(stats.upstream_cx_connect_fail.get(), 1);
}

#[tokio::test]
async fn connection_closed_before_response_is_a_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    let (host, _) = host(addr, PoolSettings::default());
    let err = host.send(get("/")).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Reset(_)), "{err}");
    assert_eq!(
        err.response_flag(),
        ResponseFlag::UpstreamConnectionTermination
    );
}

#[tokio::test]
async fn upgrades_pass_through() {
    let up = upstream(false, 1).await;
    let (host, _) = host(up.addr, PoolSettings::default());
    let req = http::Request::get("http://upstream/ws")
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "echo")
        .body(crate::body::empty())
        .unwrap();
    let mut resp = host.send(req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    let upgraded = hyper::upgrade::on(&mut resp).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    io.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn tls_endpoints_fail_clearly_without_connecting() {
    let up = upstream(false, 1).await;
    let stats = ClusterStats::new(&Store::default(), "tls");
    let host = Host::new(
        up.addr,
        String::new(),
        TransportSocket::Tls,
        Arc::default(),
        stats,
    );
    let err = host.send(get("/")).await.unwrap_err();
    assert!(
        matches!(err, UpstreamError::TransportNotImplemented(_)),
        "{err}"
    );
    assert_eq!(up.opened.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn tcp_connect_reaches_the_host() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (host, stats) = host(addr, PoolSettings::default());
    let (client, server) = tokio::join!(host.connect(), listener.accept());
    client.unwrap();
    server.unwrap();
    assert_eq!(stats.upstream_cx_total.get(), 1);
}

#[tokio::test]
async fn http2_response_trailers_are_preserved() {
    use http_body_util::StreamBody;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let svc = service_fn(|_req: http::Request<Incoming>| async {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = vec![
                Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(b"msg"))),
                Ok(hyper::body::Frame::trailers(trailers)),
            ];
            let body = StreamBody::new(futures::stream::iter(frames));
            Ok::<_, Infallible>(http::Response::new(body))
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    });
    let (host, _) = host(addr, h2_settings());
    let resp = host.send(get("/grpc")).await.unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"msg");
}

#[tokio::test]
async fn http2_refused_stream_is_retriable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(stream).await.unwrap();
        while let Some(Ok((_req, mut respond))) = conn.accept().await {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
        }
    });
    let (host, _) = host(addr, h2_settings());
    let err = host.send(get("/")).await.unwrap_err();
    assert!(matches!(err, UpstreamError::RefusedStream(_)), "{err}");
    assert!(err.is_unprocessed());
    assert!(!err.is_connect_failure());
    assert_eq!(err.response_flag(), ResponseFlag::UpstreamRemoteReset);
}

#[tokio::test]
async fn http2_streams_finish_after_their_host_is_dropped() {
    let up = upstream(true, 2).await;
    let (host, _) = host(up.addr, h2_settings());
    let host = Arc::new(host);
    let first = tokio::spawn({
        let host = host.clone();
        async move {
            let resp = host.send(get("/wait")).await.unwrap();
            drop(host);
            body(resp).await
        }
    });
    eventually(|| host.active_requests() == 1).await;
    drop(host);
    // Release the first stream with a second request from an unrelated host.
    let (other, _) = self::host(up.addr, h2_settings());
    assert_eq!(
        body(other.send(get("/wait")).await.unwrap()).await,
        "HTTP/2.0 /wait"
    );
    assert_eq!(first.await.unwrap(), "HTTP/2.0 /wait");
}

#[path = "limits_tests.rs"]
mod limits;

#[tokio::test]
async fn http1_connections_past_max_connection_duration_are_not_reused() {
    let up = upstream(false, 1).await;
    let settings = PoolSettings {
        max_connection_duration: Some(Duration::from_millis(20)),
        ..PoolSettings::default()
    };
    let (host, _) = host(up.addr, settings);
    body(host.send(get("/")).await.unwrap()).await;
    // Not a timing assertion: the sleep only guarantees the connection is old enough.
    tokio::time::sleep(Duration::from_millis(30)).await;
    body(host.send(get("/")).await.unwrap()).await;
    assert_eq!(up.opened.load(Ordering::SeqCst), 2);
    eventually(|| up.closed.load(Ordering::SeqCst) >= 1).await;
}

#[tokio::test]
async fn http2_connections_past_max_connection_duration_take_no_new_stream() {
    let up = upstream(true, 1).await;
    let mut settings = h2_settings();
    settings.max_connection_duration = Some(Duration::from_millis(20));
    let (host, _) = host(up.addr, settings);
    body(host.send(get("/")).await.unwrap()).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    body(host.send(get("/")).await.unwrap()).await;
    assert_eq!(up.opened.load(Ordering::SeqCst), 2);
    eventually(|| up.closed.load(Ordering::SeqCst) >= 1).await;
}
