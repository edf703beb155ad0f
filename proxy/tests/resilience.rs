//! Resilience scenarios against real HTTP/1.1 upstreams on loopback that misbehave on command
//! (always 503, fail N times then succeed, reset the connection, refuse connections, hang):
//! the retry loop (`retry::driver::run`) over a real STATIC cluster and real hosts, with the
//! cluster's circuit breaker admitting retries and outlier detection fed by every attempt.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ferry_proxy::circuit_breaker::{CircuitBreakerSet, Resource};
use ferry_proxy::cluster::{Cluster, ClusterConfig, ClusterManager, LbContext};
use ferry_proxy::error::{ResponseFlag, ResponseFlags};
use ferry_proxy::outlier::Detector;
use ferry_proxy::retry::driver::{self, Timeouts};
use ferry_proxy::retry::{HeaderOverrides, RetryPolicy, RetryState};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use xds_proto::envoy::config::bootstrap::v3::Bootstrap;
use xds_proto::envoy::config::cluster::v3::Cluster as ClusterPb;
use xds_proto::envoy::config::route::v3::RetryPolicy as RetryPolicyPb;

/// How an upstream misbehaves.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Answers this status.
    Status(u16),
    /// Answers 503 for the first N requests, then 200.
    FailFirst(usize),
    /// Accepts and closes the connection without answering.
    Reset,
    /// Accepts and never answers.
    Hang,
}

/// A misbehaving upstream; counts requests (or connections for Reset/Hang).
async fn upstream(mode: Mode) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        let mut hung = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            match mode {
                Mode::Reset => {
                    count.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                    continue;
                }
                Mode::Hang => {
                    count.fetch_add(1, Ordering::SeqCst);
                    hung.push(stream);
                    continue;
                }
                _ => {}
            }
            let count = count.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: http::Request<Incoming>| {
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let status = match mode {
                        Mode::Status(s) => s,
                        Mode::FailFirst(k) if n < k => 503,
                        _ => 200,
                    };
                    async move {
                        let mut r = http::Response::new(Full::new(Bytes::from_static(b"x")));
                        *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A closed port: bind, note the port, drop the listener.
async fn refusing() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

fn cluster(addrs: &[SocketAddr]) -> Arc<Cluster> {
    cluster_with(addrs, "")
}

fn cluster_with(addrs: &[SocketAddr], extra: &str) -> Arc<Cluster> {
    let endpoints: Vec<String> = addrs
        .iter()
        .map(|a| {
            format!(
                "{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}",
                a.port()
            )
        })
        .collect();
    let yaml = format!(
        "name: c\ntype: STATIC\nconnect_timeout: 1s\nlb_policy: ROUND_ROBIN\nload_assignment: {{ cluster_name: c, endpoints: [ {{ lb_endpoints: [ {} ] }} ] }}\n{extra}\n",
        endpoints.join(", ")
    );
    let pb: ClusterPb = xds_proto::json::from_yaml_str(&yaml).expect("cluster yaml");
    let config = Arc::new(ClusterConfig::try_from(&pb).expect("valid cluster"));
    let manager = ClusterManager::new(Default::default());
    let set = manager.update(
        &BTreeMap::from([("c".to_owned(), config)]),
        &BTreeMap::new(),
    );
    set.get("c").expect("cluster").clone()
}

fn policy(yaml: &str) -> RetryPolicy {
    let pb: RetryPolicyPb = xds_proto::json::from_yaml_str(yaml).expect("policy yaml");
    RetryPolicy::try_from(&pb).expect("valid policy")
}

/// One GET through the retry loop; returns (status, flag).
async fn request(
    cluster: &Arc<Cluster>,
    policy: &RetryPolicy,
    breakers: &CircuitBreakerSet,
    detector: Option<&Detector>,
) -> (u16, ResponseFlags) {
    let mut state = RetryState::new(Some(policy), &HeaderOverrides::default());
    let breaker = breakers.for_priority(false);
    let Ok(_request) = breaker.try_acquire(Resource::Requests) else {
        return (503, ResponseFlag::UpstreamOverflow.into());
    };
    let response = driver::run(
        &mut state,
        Timeouts {
            route: Some(std::time::Duration::from_secs(10)),
            request_end: None,
        },
        driver::Upstream {
            breaker: Some(breaker),
            outlier: detector,
            stats: None,
        },
        || true,
        |attempt, excluded| {
            let ctx = LbContext {
                excluded,
                ..LbContext::default()
            };
            let host = cluster.select_host(&ctx)?;
            let request = http::Request::get(format!("http://{}/", host.address()))
                .header("x-envoy-attempt-count", attempt)
                .body(ferry_proxy::body::empty())
                .expect("request");
            let addr = host.address();
            Some((addr, async move {
                // What `Cluster::send` does for the router: feed outlier detection.
                let result = host.send(request).await;
                if let Some(d) = detector
                    && let Some(outcome) = ferry_proxy::outlier::Outcome::from_result(
                        result.as_ref().map(|r| r.status()),
                    )
                {
                    d.record(addr, outcome);
                }
                result
            }))
        },
    )
    .await
    .unwrap_or_else(|local| local);
    (
        response.status().as_u16(),
        ResponseFlags::of(response.extensions()),
    )
}

const PREVIOUS_HOSTS: &str = r#"
retry_on: 5xx
num_retries: 2
retry_host_predicate: [ { name: envoy.retry_host_predicates.previous_hosts } ]
host_selection_retry_max_attempts: 5
retry_back_off: { base_interval: 0.001s }
"#;

#[tokio::test]
async fn retries_skip_a_failing_host_a_reset_and_a_refused_port() {
    let (bad, bad_seen) = upstream(Mode::Status(503)).await;
    let (reset, reset_seen) = upstream(Mode::Reset).await;
    let closed = refusing().await;
    let (good, good_seen) = upstream(Mode::Status(200)).await;
    // Without the good host, every request fails over all three bad ones and ends with URX.
    let c = cluster(&[bad, reset, closed]);
    let p = policy(PREVIOUS_HOSTS);
    let breakers = CircuitBreakerSet::default();
    let (status, flag) = request(&c, &p, &breakers, None).await;
    assert!(
        flag.contains(ResponseFlag::UpstreamRetryLimitExceeded),
        "{flag}"
    );
    assert!(status == 503, "{status}");
    assert_eq!(bad_seen.load(Ordering::SeqCst), 1, "each host tried once");
    assert_eq!(reset_seen.load(Ordering::SeqCst), 1);

    let c = cluster(&[bad, reset, good]);
    for _ in 0..6 {
        let (status, flag) = request(&c, &p, &breakers, None).await;
        assert_eq!((status, flag), (200, ResponseFlags::default()));
    }
    assert_eq!(
        good_seen.load(Ordering::SeqCst),
        6,
        "every request ends on the good host"
    );
}

#[tokio::test]
async fn fail_twice_then_succeed_on_the_same_host() {
    let (flaky, seen) = upstream(Mode::FailFirst(2)).await;
    let c = cluster(&[flaky]);
    let p = policy("{ retry_on: 5xx, num_retries: 2, retry_back_off: { base_interval: 0.001s } }");
    let (status, flag) = request(&c, &p, &CircuitBreakerSet::default(), None).await;
    assert_eq!((status, flag), (200, ResponseFlags::default()));
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_hanging_host_is_cut_by_the_per_try_timeout() {
    let (hang, hang_seen) = upstream(Mode::Hang).await;
    let (good, _) = upstream(Mode::Status(200)).await;
    let c = cluster(&[hang, good]);
    let p = policy(
        r#"{ retry_on: "reset", num_retries: 1, per_try_timeout: 0.2s,
             retry_host_predicate: [ { name: envoy.retry_host_predicates.previous_hosts } ],
             retry_back_off: { base_interval: 0.001s } }"#,
    );
    for _ in 0..4 {
        let (status, flag) = request(&c, &p, &CircuitBreakerSet::default(), None).await;
        assert_eq!((status, flag), (200, ResponseFlags::default()));
    }
    assert!(hang_seen.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn outlier_detection_ejects_the_failing_host() {
    let (bad, _) = upstream(Mode::Status(503)).await;
    let (g1, _) = upstream(Mode::Status(200)).await;
    let (g2, _) = upstream(Mode::Status(200)).await;
    let c = cluster_with(&[bad, g1, g2], "outlier_detection: { consecutive_5xx: 3 }");
    let config = c
        .config
        .outlier_detection
        .clone()
        .expect("outlier_detection");
    let detector = Detector::new(config, [bad, g1, g2]);
    let p = policy(PREVIOUS_HOSTS);
    for _ in 0..9 {
        let (status, _) = request(&c, &p, &CircuitBreakerSet::default(), Some(&detector)).await;
        assert_eq!(status, 200);
    }
    assert_eq!(detector.ejected_hosts(), vec![bad]);
}

/// An upstream that holds every request until `gate` opens; counts arrivals.
async fn gated(gate: Arc<tokio::sync::Semaphore>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (gate, count) = (gate.clone(), count.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req: http::Request<Incoming>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    let gate = gate.clone();
                    async move {
                        let _open = gate.acquire().await;
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn requests_beyond_max_requests_get_an_immediate_503_uo() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (addr, seen) = gated(gate.clone()).await;
    let c = cluster_with(
        &[addr],
        "circuit_breakers: { thresholds: [ { max_requests: 2 } ] }",
    );
    let breakers = CircuitBreakerSet::from(&c.config.circuit_breakers);
    let p = policy("{ retry_on: 5xx, num_retries: 1 }");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (c, p, breakers) = (c.clone(), p.clone(), breakers.clone());
            tokio::spawn(async move { request(&c, &p, &breakers, None).await })
        })
        .collect();
    // Wait until both held requests reached the upstream (poll, no sleeps for timing).
    while seen.load(Ordering::SeqCst) < 2 {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (status, flag) = request(&c, &p, &breakers, None).await;
    assert_eq!((status, flag), (503, ResponseFlag::UpstreamOverflow.into()));
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "the overflowing request never left"
    );
    gate.add_permits(10);
    for h in held {
        assert_eq!(h.await.expect("join"), (200, ResponseFlags::default()));
    }
    assert_eq!(
        request(&c, &p, &breakers, None).await,
        (200, ResponseFlags::default())
    );
}

// ---- The same mechanisms through the real proxy (static bootstrap, listener, router). ----

fn endpoint(addr: SocketAddr) -> String {
    format!(
        "{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}",
        addr.port()
    )
}

fn bootstrap(
    gated: SocketAddr,
    bad: SocketAddr,
    good: [SocketAddr; 2],
    shadow: SocketAddr,
) -> Bootstrap {
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
              routes:
              - match: {{ prefix: "/limited" }}
                route: {{ cluster: limited }}
              - match: {{ prefix: "/fault" }}
                route: {{ cluster: limited }}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: {{ http_status: 418, percentage: {{ numerator: 100 }} }}
              - match: {{ prefix: "/mirror" }}
                route:
                  cluster: limited
                  request_mirror_policies:
                  - cluster: shadow
                    runtime_fraction: {{ default_value: {{ numerator: 100 }} }}
              - match: {{ prefix: "/od" }}
                route:
                  cluster: od
                  retry_policy:
                    retry_on: 5xx
                    num_retries: 2
                    retry_host_predicate: [ {{ name: envoy.retry_host_predicates.previous_hosts }} ]
                    host_selection_retry_max_attempts: 5
                    retry_back_off: {{ base_interval: 0.001s }}
          http_filters:
          - name: envoy.filters.http.fault
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault }}
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: limited
    type: STATIC
    circuit_breakers: {{ thresholds: [ {{ max_requests: 1 }} ] }}
    load_assignment: {{ cluster_name: limited, endpoints: [ {{ lb_endpoints: [ {eg} ] }} ] }}
  - name: shadow
    type: STATIC
    load_assignment: {{ cluster_name: shadow, endpoints: [ {{ lb_endpoints: [ {es} ] }} ] }}
  - name: od
    type: STATIC
    lb_policy: ROUND_ROBIN
    outlier_detection: {{ consecutive_5xx: 3, max_ejection_percent: 50 }}
    load_assignment: {{ cluster_name: od, endpoints: [ {{ lb_endpoints: [ {eb}, {e1}, {e2} ] }} ] }}
"#,
        eg = endpoint(gated),
        es = endpoint(shadow),
        eb = endpoint(bad),
        e1 = endpoint(good[0]),
        e2 = endpoint(good[1]),
    );
    xds_proto::json::from_yaml_str(&yaml).expect("bootstrap yaml")
}

/// One GET on a fresh connection: (status, x-envoy-overloaded present).
async fn get(proxy: SocketAddr, path: &str) -> (u16, bool) {
    let stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "example")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let overloaded = resp.headers().contains_key("x-envoy-overloaded");
    let status = resp.status().as_u16();
    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
    (status, overloaded)
}

#[tokio::test]
async fn proxy_enforces_breakers_ejects_outliers_and_injects_faults() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (gated_addr, gated_seen) = gated(gate.clone()).await;
    let (bad, bad_seen) = upstream(Mode::Status(503)).await;
    let (g1, _) = upstream(Mode::Status(200)).await;
    let (g2, _) = upstream(Mode::Status(200)).await;
    let (shadow, hosts_seen) = recording().await;
    let running = ferry_proxy::app::start(bootstrap(gated_addr, bad, [g1, g2], shadow))
        .await
        .expect("proxy starts");
    let proxy = running.listener_addr("http").expect("listener");

    // Circuit breaker: one request held upstream, the next is refused at once.
    let held = tokio::spawn(get(proxy, "/limited"));
    while gated_seen.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(get(proxy, "/limited").await, (503, true));
    gate.add_permits(100);
    assert_eq!(held.await.expect("join"), (200, false));
    assert_eq!(get(proxy, "/limited").await, (200, false));

    // Fault injection: aborted locally, the upstream never sees it.
    let before = gated_seen.load(Ordering::SeqCst);
    assert_eq!(get(proxy, "/fault").await.0, 418);
    assert_eq!(gated_seen.load(Ordering::SeqCst), before);

    // Mirroring: the original succeeds; a copy reaches the shadow cluster with `-shadow`.
    assert_eq!(get(proxy, "/mirror").await, (200, false));
    while hosts_seen.lock().expect("lock").is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        *hosts_seen.lock().expect("lock"),
        vec!["example-shadow".to_owned()]
    );

    // Outlier detection: retries hide the bad host; after 3 consecutive 5xx it is ejected and
    // gets no more traffic.
    for _ in 0..9 {
        assert_eq!(get(proxy, "/od").await.0, 200);
    }
    let seen = bad_seen.load(Ordering::SeqCst);
    assert_eq!(seen, 3, "ejected after consecutive_5xx");
    for _ in 0..9 {
        assert_eq!(get(proxy, "/od").await.0, 200);
    }
    assert_eq!(
        bad_seen.load(Ordering::SeqCst),
        seen,
        "no traffic while ejected"
    );
}

/// An upstream that records the Host header of every request.
async fn recording() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hosts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = hosts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let host = req
                        .headers()
                        .get(http::header::HOST)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    seen.lock().expect("lock").push(host);
                    async { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new()))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hosts)
}
