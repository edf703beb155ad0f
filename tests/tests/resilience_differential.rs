//! Differential resilience test: the real Envoy 1.40 and the `ferry-proxy` binary, each the
//! client sidecar of the same Istio mesh (the same manifests, served by ferry-control over ADS,
//! so both get the same xDS), each in front of its own fresh chaos upstreams scripted the same
//! way. Per scenario they must agree on what the client sees and what every upstream saw:
//! final statuses, attempts per upstream (with `x-envoy-attempt-count`), and, for outlier
//! ejection, which endpoint stops getting traffic after its failures; for the connection pool's
//! circuit breakers, which requests overflow with 503 and `x-envoy-overloaded`; for fault
//! aborts and mirroring, what the client and the shadow see.
//!
//! Without Envoy installed the test is skipped outside CI and fails under `CI=true`.

#![allow(clippy::unwrap_used)] // test setup: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::net::SocketAddr;

use ferry_tests::poll::{PATIENCE, poll_until};
use ferry_tests::scenarios::ratings::{self, AUTHORITY, CLUSTER, HOST};
use ferry_tests::scenarios::{ControlPlane, Sidecar, SidecarKind, service_entry};
use ferry_tests::upstream::{Behaviour, Chaos, Upstream};
use futures::StreamExt;
use http::StatusCode;

/// ferry-control on the ratings manifests (and `extra`), the VirtualService rule with the fields
/// `vs` (may be empty) routing to ratings, and the client's sidecar of `kind` on `127.0.{net}.10`, ready to route to every
/// address of `endpoints`.
async fn mesh(
    kind: SidecarKind,
    net: u8,
    endpoints: &[SocketAddr],
    vs: &str,
    dr: &str,
    extra: Vec<(&'static str, String)>,
) -> Option<(ControlPlane, Sidecar)> {
    let route = format!("route: [{{destination: {{host: {HOST}}}}}]");
    let rule = match vs {
        "" => route,
        fields => format!("{fields}\n    {route}"),
    };
    ratings::mesh(kind, net, endpoints, &rule, dr, extra).await
}

/// One proxy's mesh: ferry-control, the sidecar, and `n` chaos upstreams named `u0`, `u1`...
struct Run {
    _control: ControlPlane,
    sidecar: Sidecar,
    upstreams: Vec<Chaos>,
}

async fn run(kind: SidecarKind, net: u8, n: usize, vs: &str, dr: &str) -> Option<Run> {
    let mut upstreams = Vec::new();
    for i in 0..n {
        upstreams.push(Chaos::start(&format!("u{i}"), Behaviour::Ok).await.unwrap());
    }
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    let (control, sidecar) = mesh(kind, net, &addrs, vs, dr, Vec::new()).await?;
    Some(Run {
        _control: control,
        sidecar,
        upstreams,
    })
}

/// Runs `scenario` on Envoy in `127.0.{net}.0/24`, then on ferry-proxy in the next one: Envoy
/// must do `expected` (the table checks itself against the reference) and ferry-proxy exactly
/// what Envoy did. Returns at once (skipped) when Envoy is missing outside CI.
async fn like_envoy<T, F, Fut>(what: &str, net: u8, scenario: F, expected: T)
where
    T: PartialEq + Debug,
    F: Fn(SidecarKind, u8) -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let Some(envoy) = scenario(SidecarKind::Envoy, net).await else {
        return;
    };
    let ferry = scenario(SidecarKind::Ferry, net + 1)
        .await
        .expect("ferry-proxy runs");
    assert_eq!(envoy, expected, "{what}: Envoy, the reference");
    assert_eq!(ferry, envoy, "{what}: ferry-proxy against Envoy");
}

/// What a proxy did in a retry scenario: final status and, per upstream (sorted, since which
/// endpoint a balancer starts with is not specified), the attempt counts it saw.
#[derive(Debug, PartialEq, Eq)]
struct Retried {
    status: u16,
    attempts: Vec<Vec<String>>,
}

fn attempts(run: &Run) -> Vec<Vec<String>> {
    let mut all: Vec<Vec<String>> = run
        .upstreams
        .iter()
        .map(|u| {
            u.seen()
                .iter()
                .map(|s| s.header("x-envoy-attempt-count").unwrap_or("-").to_owned())
                .collect()
        })
        .collect();
    all.sort();
    all
}

/// One retry scenario: the VirtualService's `retries`, the DestinationRule's `trafficPolicy`,
/// how many upstreams there are and how they misbehave, and what Envoy does with one request: the
/// final status and the `x-envoy-attempt-count` of every request each upstream saw.
struct RetryCase {
    what: &'static str,
    net: u8,
    retries: &'static str,
    traffic_policy: &'static str,
    upstreams: usize,
    script: fn(&[Chaos]),
    status: u16,
    attempts: &'static [&'static [&'static str]],
}

const ROUND_ROBIN: &str = "{loadBalancer: {simple: ROUND_ROBIN}}";

const RETRY_CASES: [RetryCase; 6] = [
    RetryCase {
        what: "fail twice, then succeed",
        net: 131,
        retries: "{attempts: 3, perTryTimeout: 5s, retryOn: \"503\"}",
        traffic_policy: ROUND_ROBIN,
        upstreams: 1,
        script: |u| u[0].fail_times(2, 503),
        status: 200,
        attempts: &[&["1", "2", "3"]],
    },
    RetryCase {
        what: "always 503: one attempt on each endpoint (previous_hosts)",
        net: 133,
        retries: "{attempts: 1, perTryTimeout: 5s, retryOn: \"5xx\"}",
        traffic_policy: ROUND_ROBIN,
        upstreams: 2,
        script: |u| u.iter().for_each(|up| up.set(Behaviour::Status(503))),
        status: 503,
        attempts: &[&["1"], &["2"]],
    },
    RetryCase {
        what: "a reset is retried",
        net: 135,
        retries: "{attempts: 2, perTryTimeout: 5s, retryOn: \"reset,connect-failure\"}",
        traffic_policy: ROUND_ROBIN,
        upstreams: 1,
        script: |u| u[0].script([Behaviour::Reset]),
        status: 200,
        attempts: &[&["1", "2"]],
    },
    RetryCase {
        what: "a status not in retryOn is returned at once",
        net: 137,
        retries: "{attempts: 3, perTryTimeout: 5s, retryOn: \"503\"}",
        traffic_policy: ROUND_ROBIN,
        upstreams: 1,
        script: |u| u[0].fail_times(1, 500),
        status: 500,
        attempts: &[&["1"]],
    },
    RetryCase {
        what: "connectionPool maxRetries 0: the circuit breaker admits no retry",
        net: 141,
        retries: "{attempts: 3, perTryTimeout: 5s, retryOn: \"503\"}",
        traffic_policy: "{connectionPool: {http: {maxRetries: 0}}}",
        upstreams: 1,
        script: |u| u[0].set(Behaviour::Status(503)),
        status: 503,
        attempts: &[&["1"]],
    },
    RetryCase {
        what: "a retry budget of 0%: minRetryConcurrency 0 is Istio's default 3, which admits the retries",
        net: 153,
        retries: "{attempts: 3, perTryTimeout: 5s, retryOn: \"503\"}",
        traffic_policy: "{retryBudget: {percent: 0, minRetryConcurrency: 0}}",
        upstreams: 1,
        script: |u| u[0].set(Behaviour::Status(503)),
        status: 503,
        attempts: &[&["1", "2", "3", "4"]],
    },
];

/// One request through a proxy of `kind` in `case`'s mesh.
async fn retried(kind: SidecarKind, net: u8, case: &RetryCase) -> Option<Retried> {
    let vs = format!("retries: {}", case.retries);
    let run = run(kind, net, case.upstreams, &vs, case.traffic_policy).await?;
    (case.script)(&run.upstreams);
    let reply = run.sidecar.get(AUTHORITY, "/").await;
    Some(Retried {
        status: reply.status.as_u16(),
        attempts: attempts(&run),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_like_envoy() {
    // The rows are independent (each its own meshes and upstreams): three at a time.
    futures::stream::iter(&RETRY_CASES)
        .for_each_concurrent(3, |case| async move {
            let expected = Retried {
                status: case.status,
                attempts: case
                    .attempts
                    .iter()
                    .map(|seen| seen.iter().map(|a| a.to_string()).collect())
                    .collect(),
            };
            let scenario = |kind, net| retried(kind, net, case);
            like_envoy(case.what, case.net, scenario, expected).await;
        })
        .await;
}

/// What a proxy did in the ejection scenario.
#[derive(Debug, PartialEq, Eq)]
struct Ejected {
    /// Failures the client saw before the failing endpoint stopped getting traffic.
    errors_seen: bool,
    /// The endpoints that got none of the 30 requests after that (by name).
    excluded: BTreeSet<String>,
    /// Statuses of those 30 requests.
    statuses: BTreeSet<u16>,
}

async fn ejection(kind: SidecarKind, net: u8) -> Option<Ejected> {
    let dr = "{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 300s, maxEjectionPercent: 50}}";
    let run = run(kind, net, 3, "", dr).await?;
    let failing = &run.upstreams[1];
    failing.set(Behaviour::Status(503));
    let mut errors = 0;
    for _ in 0..60 {
        if failing.hits() >= 3 {
            break;
        }
        if run.sidecar.get(AUTHORITY, "/").await.status != StatusCode::OK {
            errors += 1;
        }
    }
    assert_eq!(failing.hits(), 3, "{kind:?}: u1 failed three times");
    // Envoy applies an ejection on its main thread, a moment after the third failure reached a
    // worker: wait (bounded) until u1 is out of the rotation, then look at a window of 30.
    let mut window = Vec::new();
    for _ in 0..10 {
        let before: Vec<usize> = run.upstreams.iter().map(Chaos::hits).collect();
        window.clear();
        for _ in 0..30 {
            window.push(run.sidecar.get(AUTHORITY, "/").await.status.as_u16());
        }
        let excluded: BTreeSet<String> = run
            .upstreams
            .iter()
            .zip(&before)
            .filter(|(u, b)| u.hits() == **b)
            .map(|(u, _)| u.name().to_owned())
            .collect();
        if !excluded.is_empty() {
            return Some(Ejected {
                errors_seen: errors > 0,
                excluded,
                statuses: window.into_iter().collect(),
            });
        }
    }
    panic!(
        "{kind:?}: no endpoint was ever ejected\n{}",
        run.sidecar.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failing_endpoint_is_ejected_like_envoy() {
    like_envoy(
        "the failing endpoint is ejected",
        139,
        ejection,
        Ejected {
            errors_seen: true,
            excluded: BTreeSet::from(["u1".to_owned()]),
            statuses: BTreeSet::from([200]),
        },
    )
    .await;
}

/// What a proxy did with requests beyond `maxConnections: 1` and `http1MaxPendingRequests: 1`.
#[derive(Debug, PartialEq, Eq)]
struct Overflowed {
    /// Status and `x-envoy-overloaded` of the three requests sent while two were held.
    overflow: Vec<(u16, Option<String>)>,
    /// Statuses of the two held requests once the upstream answers.
    held: Vec<u16>,
    /// Requests that reached the upstream.
    arrived: usize,
    /// `circuit_breakers.default.{cx_open, rq_pending_open}` while both were held.
    open: (Option<i64>, Option<i64>),
}

async fn overflow(kind: SidecarKind, net: u8) -> Option<Overflowed> {
    let (up, gate) = Upstream::gated("slow").await.unwrap();
    let dr = "{connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}}";
    let (_control, sidecar) = mesh(kind, net, &[up.addr], "", dr, Vec::new()).await?;
    let sidecar = std::sync::Arc::new(sidecar);
    let spawn = || {
        let s = sidecar.clone();
        tokio::spawn(async move { s.get(AUTHORITY, "/").await.status.as_u16() })
    };
    let first = spawn();
    poll_until("one request on the connection", PATIENCE, || async {
        (gate.arrived() == 1).then_some(())
    })
    .await;
    let second = spawn();
    let pending = format!("cluster.{CLUSTER}.upstream_rq_pending_active");
    poll_until("one request pending", PATIENCE, || async {
        (sidecar.stat(&pending).await == Some(1)).then_some(())
    })
    .await;
    let breaker = |name: &str| format!("cluster.{CLUSTER}.circuit_breakers.default.{name}");
    let open = (
        sidecar.stat(&breaker("cx_open")).await,
        sidecar.stat(&breaker("rq_pending_open")).await,
    );
    let mut overflow = Vec::new();
    for _ in 0..3 {
        let reply = sidecar.get(AUTHORITY, "/").await;
        let overloaded = reply.header("x-envoy-overloaded").map(str::to_owned);
        overflow.push((reply.status.as_u16(), overloaded));
    }
    gate.open();
    let held = vec![first.await.unwrap(), second.await.unwrap()];
    Some(Overflowed {
        overflow,
        held,
        arrived: gate.arrived(),
        open,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_pool_overflow_like_envoy() {
    like_envoy(
        "connection pool overflow",
        143,
        overflow,
        Overflowed {
            overflow: vec![(503, Some("true".into())); 3],
            held: vec![200, 200],
            arrived: 2,
            open: (Some(1), Some(1)),
        },
    )
    .await;
}

/// What a proxy answered to aborted requests: status, `grpc-status`, and upstream hits.
#[derive(Debug, PartialEq, Eq)]
struct Aborted {
    http: u16,
    grpc: (u16, Option<String>),
    hits: usize,
}

async fn aborted(kind: SidecarKind, net: u8) -> Option<Aborted> {
    let vs = "match: [{uri: {prefix: /grpc}}]\n    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}\n    route: [{destination: {host: ratings.mesh.test}}]\n  - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}";
    let run = run(kind, net, 1, vs, "{}").await?;
    let http = run.sidecar.get(AUTHORITY, "/").await.status.as_u16();
    let grpc = run
        .sidecar
        .send(
            http::Method::POST,
            AUTHORITY,
            "/grpc",
            &[("content-type", "application/grpc")],
            bytes::Bytes::new(),
        )
        .await
        .expect("answer");
    Some(Aborted {
        http,
        grpc: (
            grpc.status.as_u16(),
            grpc.header("grpc-status").map(str::to_owned),
        ),
        hits: run.upstreams[0].hits(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_aborts_like_envoy() {
    like_envoy(
        "fault aborts",
        145,
        aborted,
        Aborted {
            http: 418,
            grpc: (200, Some("14".into())),
            hits: 0,
        },
    )
    .await;
}

/// Upstream connections a proxy opened for five sequential requests with
/// `maxRequestsPerConnection: 1`.
/// `None` when the proxy is not available (Envoy outside CI).
async fn connections_for_five(kind: SidecarKind, net: u8) -> Option<Option<i64>> {
    let run = run(
        kind,
        net,
        1,
        "",
        "{connectionPool: {http: {maxRequestsPerConnection: 1}}}",
    )
    .await?;
    for _ in 0..5 {
        assert_eq!(run.sidecar.get(AUTHORITY, "/").await.status, StatusCode::OK);
    }
    Some(
        run.sidecar
            .stat(&format!("cluster.{CLUSTER}.upstream_cx_total"))
            .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_like_envoy() {
    let what = "maxRequestsPerConnection 1: a connection per request";
    like_envoy(what, 147, connections_for_five, Some(5)).await;
}

/// What the shadow of a mirrored POST saw: method, Host, body; and the original's status.
#[derive(Debug, PartialEq, Eq)]
struct Mirrored {
    status: u16,
    shadow: Vec<(String, Option<String>, bytes::Bytes)>,
}

async fn mirrored(kind: SidecarKind, net: u8) -> Option<Mirrored> {
    let primary = Chaos::start("primary", Behaviour::Ok).await.unwrap();
    let shadow = Chaos::start("shadow", Behaviour::Hang).await.unwrap();
    let vs = "mirror: {host: shadow.mesh.test}\n    mirrorPercentage: {value: 100}";
    let shadow_se = service_entry("shadow", "shadow.mesh.test", &[shadow.addr]);
    let extra = vec![("shadow-se.yaml", shadow_se)];
    let (_control, sidecar) = mesh(kind, net, &[primary.addr], vs, "{}", extra).await?;
    sidecar
        .wait_endpoint("outbound|9080||shadow.mesh.test", shadow.addr)
        .await;
    let reply = sidecar
        .send(
            http::Method::POST,
            AUTHORITY,
            "/rate",
            &[],
            bytes::Bytes::from_static(b"stars=5"),
        )
        .await
        .expect("answer");
    poll_until("the shadow copy", PATIENCE, || async {
        (shadow.hits() == 1).then_some(())
    })
    .await;
    Some(Mirrored {
        status: reply.status.as_u16(),
        shadow: shadow
            .seen()
            .into_iter()
            .map(|s| {
                let host = s.header("host").map(str::to_owned);
                (s.method.to_string(), host, s.body)
            })
            .collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_to_a_hanging_shadow_like_envoy() {
    like_envoy(
        "mirroring to a hanging shadow",
        149,
        mirrored,
        Mirrored {
            status: 200,
            shadow: vec![(
                "POST".into(),
                Some("ratings.mesh.test-shadow:9080".into()),
                bytes::Bytes::from_static(b"stars=5"),
            )],
        },
    )
    .await;
}

/// A listener that never accepts, with its accept queue full: the kernel drops further SYNs, so
/// a connect to it hangs until the proxy's connect timeout.
async fn unresponsive() -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let connect = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(s)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), connect).await
        {
            held.push(s);
        }
    }
    (listener, held)
}

/// The status and `upstream_cx_connect_timeout` after one request to an endpoint that never
/// completes the TCP handshake, with `connectTimeout: 0.2s`.
async fn connect_timeout(kind: SidecarKind, net: u8) -> Option<(u16, Option<i64>)> {
    let (listener, _held) = unresponsive().await;
    let addr = listener.local_addr().unwrap();
    let dr = "{connectionPool: {tcp: {connectTimeout: 0.2s}}}";
    let (_control, sidecar) = mesh(kind, net, &[addr], "", dr, Vec::new()).await?;
    let status = sidecar.get(AUTHORITY, "/").await.status.as_u16();
    let timeouts = sidecar
        .stat(&format!("cluster.{CLUSTER}.upstream_cx_connect_timeout"))
        .await;
    Some((status, timeouts))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_like_envoy() {
    like_envoy(
        "503 UF, counted as a connect timeout",
        151,
        connect_timeout,
        (503, Some(1)),
    )
    .await;
}
