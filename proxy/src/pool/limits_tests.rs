//! Circuit breaker limits enforced by the pools (`max_connections`, `max_pending_requests`)
//! against a real loopback upstream that holds every response until the test releases it.

use tokio::sync::watch;

use super::*;
use crate::circuit_breaker::{CircuitBreaker, Resource};
use crate::cluster::Thresholds;

/// An upstream that counts requests as they arrive and answers none until `release` is set.
struct Gated {
    addr: SocketAddr,
    arrived: watch::Receiver<usize>,
    release: watch::Sender<bool>,
    opened: Arc<AtomicUsize>,
}

async fn gated(h2: bool) -> Gated {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived_tx, arrived) = watch::channel(0usize);
    let (release, release_rx) = watch::channel(false);
    let opened = Arc::new(AtomicUsize::new(0));
    let arrived_tx = Arc::new(arrived_tx);
    let o = opened.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            o.fetch_add(1, Ordering::SeqCst);
            let (arrived_tx, release_rx) = (arrived_tx.clone(), release_rx.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req: http::Request<Incoming>| {
                    let (arrived_tx, mut release_rx) = (arrived_tx.clone(), release_rx.clone());
                    async move {
                        arrived_tx.send_modify(|n| *n += 1);
                        let _ = release_rx.wait_for(|r| *r).await;
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
                    }
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
    Gated {
        addr,
        arrived,
        release,
        opened,
    }
}

fn breaker(max_connections: u32, max_pending_requests: u32) -> Arc<CircuitBreaker> {
    Arc::new(CircuitBreaker::new(&Thresholds {
        high_priority: false,
        max_connections,
        max_pending_requests,
        max_requests: 1024,
        max_retries: 3,
        retry_budget: None,
    }))
}

type Sent = tokio::task::JoinHandle<Result<String, String>>;

fn spawn_send(host: &Arc<Host>, breaker: &Arc<CircuitBreaker>) -> Sent {
    let (host, breaker) = (host.clone(), breaker.clone());
    tokio::spawn(async move {
        match host.send_limited(get("/"), Some(&breaker)).await {
            Ok(resp) => Ok(body(resp).await),
            Err(error) => Err(error.to_string()),
        }
    })
}

/// Two requests occupy both connections, three wait as pending, and every request beyond that
/// fails at once with overflow while the upstream still holds the first five; then all five
/// complete on the same two connections.
async fn connections_then_pending_then_overflow(h2: bool) {
    let mut up = gated(h2).await;
    let settings = if h2 {
        PoolSettings {
            http2: Http2Settings {
                max_concurrent_streams: 1,
                ..Http2Settings::default()
            },
            ..h2_settings()
        }
    } else {
        PoolSettings::default()
    };
    let (host, stats) = host(up.addr, settings);
    let host = Arc::new(host);
    let breaker = breaker(2, 3);
    let mut sent = Vec::new();
    for i in 1..=2 {
        sent.push(spawn_send(&host, &breaker));
        up.arrived.wait_for(|n| *n == i).await.unwrap();
    }
    for i in 1..=3 {
        sent.push(spawn_send(&host, &breaker));
        eventually(|| breaker.active(Resource::PendingRequests) == i).await;
    }
    for _ in 0..4 {
        let overflow = spawn_send(&host, &breaker).await.unwrap();
        assert_eq!(overflow, Err("upstream overflow".to_owned()));
    }
    assert_eq!(stats.upstream_rq_pending_overflow.get(), 4);
    assert_eq!(stats.upstream_rq_pending_active.get(), 3);
    assert_eq!(breaker.active(Resource::Connections), 2);
    up.release.send_replace(true);
    for s in sent {
        assert_eq!(s.await.unwrap(), Ok("ok".to_owned()));
    }
    assert_eq!(*up.arrived.borrow(), 5);
    assert_eq!(up.opened.load(Ordering::SeqCst), 2);
    assert_eq!(stats.upstream_rq_pending_active.get(), 0);
    assert_eq!(breaker.active(Resource::PendingRequests), 0);
}

#[tokio::test]
async fn http1_max_connections_and_max_pending_requests() {
    connections_then_pending_then_overflow(false).await;
}

#[tokio::test]
async fn http2_max_connections_and_max_pending_requests() {
    connections_then_pending_then_overflow(true).await;
}

#[tokio::test]
async fn a_host_without_connections_may_open_one_beyond_max_connections() {
    let mut a = gated(false).await;
    let mut b = gated(false).await;
    let (host_a, _) = host(a.addr, PoolSettings::default());
    let (host_b, stats_b) = host(b.addr, PoolSettings::default());
    let (host_a, host_b) = (Arc::new(host_a), Arc::new(host_b));
    let breaker = breaker(1, 10);
    let first = spawn_send(&host_a, &breaker);
    a.arrived.wait_for(|n| *n == 1).await.unwrap();
    // Host A holds the cluster's only connection unit; host B has no connection, so Envoy
    // (and Ferry) opens one anyway rather than strand B's request.
    let second = spawn_send(&host_b, &breaker);
    b.arrived.wait_for(|n| *n == 1).await.unwrap();
    assert_eq!(stats_b.upstream_cx_overflow.get(), 1);
    // A second request to host A must wait for A's connection.
    let third = spawn_send(&host_a, &breaker);
    eventually(|| breaker.active(Resource::PendingRequests) == 1).await;
    a.release.send_replace(true);
    b.release.send_replace(true);
    for s in [first, second, third] {
        assert_eq!(s.await.unwrap(), Ok("ok".to_owned()));
    }
    assert_eq!(a.opened.load(Ordering::SeqCst), 1);
    assert_eq!(b.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn per_host_max_connections_makes_requests_wait_for_the_hosts_connection() {
    let mut a = gated(false).await;
    let mut b = gated(false).await;
    let (host_a, stats) = host(a.addr, PoolSettings::default());
    let (host_b, _) = host(b.addr, PoolSettings::default());
    let (host_a, host_b) = (Arc::new(host_a), Arc::new(host_b));
    let breaker = Arc::new(
        Arc::try_unwrap(breaker(1024, 10))
            .unwrap()
            .with_per_host_max_connections(Some(1)),
    );
    let first = spawn_send(&host_a, &breaker);
    a.arrived.wait_for(|n| *n == 1).await.unwrap();
    let second = spawn_send(&host_a, &breaker);
    eventually(|| breaker.active(Resource::PendingRequests) == 1).await;
    // Another host has its own per-host allowance.
    let other = spawn_send(&host_b, &breaker);
    b.arrived.wait_for(|n| *n == 1).await.unwrap();
    assert_eq!(
        *a.arrived.borrow(),
        1,
        "the second request waits for a's connection"
    );
    assert_eq!(stats.upstream_cx_overflow.get(), 1);
    a.release.send_replace(true);
    b.release.send_replace(true);
    for s in [first, second, other] {
        assert_eq!(s.await.unwrap(), Ok("ok".to_owned()));
    }
    assert_eq!(
        a.opened.load(Ordering::SeqCst),
        1,
        "one connection per host"
    );
}

#[tokio::test]
async fn without_a_breaker_nothing_is_pending() {
    let mut up = gated(false).await;
    let (host, stats) = host(up.addr, PoolSettings::default());
    let host = Arc::new(host);
    let sent: Vec<_> = (0..3)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move { body(host.send(get("/")).await.unwrap()).await })
        })
        .collect();
    up.arrived.wait_for(|n| *n == 3).await.unwrap();
    up.release.send_replace(true);
    for s in sent {
        assert_eq!(s.await.unwrap(), "ok");
    }
    assert_eq!(stats.upstream_rq_pending_total.get(), 0);
}

#[tokio::test]
async fn upstream_connections_carry_the_configured_tcp_keepalive() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = PoolSettings {
        tcp_keepalive: Some(TcpKeepalive {
            probes: Some(4),
            time: Some(Duration::from_secs(70)),
            interval: Some(Duration::from_secs(9)),
        }),
        ..PoolSettings::default()
    };
    let stats = PoolStats {
        cluster: ClusterStats::new(&Store::default(), "ka"),
        host: Arc::default(),
    };
    let (stream, _accepted) = tokio::join!(connect(addr, &settings, &stats), listener.accept());
    let stream = stream.unwrap();
    let socket = socket2::SockRef::from(&stream);
    assert!(socket.keepalive().unwrap());
    assert_eq!(
        socket.tcp_keepalive_time().unwrap(),
        Duration::from_secs(70)
    );
    assert_eq!(
        socket.tcp_keepalive_interval().unwrap(),
        Duration::from_secs(9)
    );
    assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);
    assert!(stream.nodelay().unwrap());
}
