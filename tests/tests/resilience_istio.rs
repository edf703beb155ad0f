//! Resilience written as Istio YAML: ferry-control serves a directory of manifests (local mode),
//! the real `ferry-proxy` binary runs as the client's sidecar configured only over ADS, and
//! chaos upstreams misbehave on command behind `ServiceEntry`s. Each scenario checks what the
//! user sees (status, `x-envoy-overloaded`), what each upstream saw (attempts, bodies, Host) and
//! the sidecar's Envoy counters (response flags: URX, UO, UT).
//!
//! VirtualService: `retries` (attempts, perTryTimeout, retryOn with a status code), `timeout`,
//! `fault` (abort, delay), `mirror` + `mirrorPercentage`. DestinationRule: `connectionPool`
//! (tcp.maxConnections, http.http1MaxPendingRequests, http2MaxRequests, maxRetries,
//! maxRequestsPerConnection) and `outlierDetection`
//! (consecutive5xxErrors, interval, baseEjectionTime, maxEjectionPercent). Every test has its
//! own `127.0.N.10` sidecar address, so they run in parallel.

#![allow(clippy::unwrap_used)] // test setup: a failed unwrap is a failed test

use std::net::SocketAddr;

use bytes::Bytes;
use ferry_tests::poll::{PATIENCE, poll_until};
use ferry_tests::scenarios::ratings::{self, AUTHORITY, CLUSTER};
use ferry_tests::scenarios::{ControlPlane, Sidecar, SidecarKind, service_entry};
use ferry_tests::upstream::{Behaviour, Chaos, Upstream};
use http::{Method, StatusCode};

/// ferry-control on the manifests plus the client's ferry-proxy sidecar on `127.0.{net}.10`,
/// ready to route to every address of `upstreams`.
async fn mesh(
    net: u8,
    upstreams: &[SocketAddr],
    vs: &str,
    dr: &str,
    extra: &[(&'static str, String)],
) -> (ControlPlane, Sidecar) {
    ratings::mesh(SidecarKind::Ferry, net, upstreams, vs, dr, extra.to_vec())
        .await
        .expect("ferry-proxy is always available")
}

async fn stat(sidecar: &Sidecar, name: &str) -> i64 {
    sidecar
        .stat(&format!("cluster.{CLUSTER}.{name}"))
        .await
        .unwrap_or(0)
}

fn attempt_counts(up: &Chaos) -> Vec<String> {
    up.seen()
        .iter()
        .map(|s| s.header("x-envoy-attempt-count").unwrap_or("-").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_a_status_code_retry_on_until_the_upstream_recovers() {
    let up = Chaos::start("flaky", Behaviour::Ok).await.unwrap();
    let vs = "retries: {attempts: 3, perTryTimeout: 5s, retryOn: \"503\"}\n    route: [{destination: {host: ratings.mesh.test}}]";
    let (_control, sidecar) = mesh(121, &[up.addr], vs, "{}", &[]).await;
    up.fail_times(2, 503);
    let reply = sidecar.get(AUTHORITY, "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(up.hits(), 3, "two 503s retried, the third attempt answered");
    assert_eq!(attempt_counts(&up), ["1", "2", "3"]);
    assert_eq!(stat(&sidecar, "upstream_rq_retry").await, 2);

    // A 500 is not in retryOn "503": answered at once.
    up.reset_counts();
    up.fail_times(1, 500);
    let reply = sidecar.get(AUTHORITY, "/").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_go_to_other_endpoints_and_end_with_urx() {
    let a = Chaos::start("a", Behaviour::Status(503)).await.unwrap();
    let b = Chaos::start("b", Behaviour::Status(503)).await.unwrap();
    let vs = "retries: {attempts: 1, perTryTimeout: 5s, retryOn: \"5xx\"}\n    route: [{destination: {host: ratings.mesh.test}}]";
    let (_control, sidecar) = mesh(122, &[a.addr, b.addr], vs, "{}", &[]).await;
    let reply = sidecar.get(AUTHORITY, "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (a.hits(), b.hits()),
        (1, 1),
        "the retry went to the other endpoint (previous_hosts)"
    );
    assert_eq!(
        stat(&sidecar, "upstream_rq_retry_limit_exceeded").await,
        1,
        "URX"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_pool_max_retries_refuses_retries_with_uo() {
    let up = Chaos::start("down", Behaviour::Status(503)).await.unwrap();
    let vs = "retries: {attempts: 3, perTryTimeout: 5s, retryOn: \"503\"}\n    route: [{destination: {host: ratings.mesh.test}}]";
    let dr = "{connectionPool: {http: {maxRetries: 0}}}";
    let (_control, sidecar) = mesh(129, &[up.addr], vs, dr, &[]).await;
    let reply = sidecar.get(AUTHORITY, "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.hits(), 1, "no retry admitted");
    assert_eq!(stat(&sidecar, "upstream_rq_retry_overflow").await, 1, "UO");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_and_per_try_timeout() {
    let up = Chaos::start("slow", Behaviour::Hang).await.unwrap();
    let vs = "timeout: 0.3s\n    route: [{destination: {host: ratings.mesh.test}}]";
    let (_control, sidecar) = mesh(123, &[up.addr], vs, "{}", &[]).await;
    let reply = sidecar.get(AUTHORITY, "/").await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    assert_eq!(stat(&sidecar, "upstream_rq_timeout").await, 1, "UT");

    // A per-try timeout is retried: the first attempt hangs, the second answers.
    let up = Chaos::start("once-slow", Behaviour::Ok).await.unwrap();
    let vs = "retries: {attempts: 2, perTryTimeout: 0.2s, retryOn: \"5xx\"}\n    route: [{destination: {host: ratings.mesh.test}}]";
    let (_control, sidecar) = mesh(124, &[up.addr], vs, "{}", &[]).await;
    up.script([Behaviour::Hang]);
    let reply = sidecar.get(AUTHORITY, "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(up.hits(), 2);
    assert_eq!(stat(&sidecar, "upstream_rq_per_try_timeout").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort_and_delay() {
    let up = Chaos::start("ratings", Behaviour::Ok).await.unwrap();
    let vs = "match: [{uri: {prefix: /abort}}]\n    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n    route: [{destination: {host: ratings.mesh.test}}]\n  - match: [{uri: {prefix: /grpc-abort}}]\n    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}\n    route: [{destination: {host: ratings.mesh.test}}]\n  - match: [{uri: {prefix: /delay}}]\n    fault: {delay: {fixedDelay: 0.2s, percentage: {value: 100}}}\n    route: [{destination: {host: ratings.mesh.test}}]\n  - route: [{destination: {host: ratings.mesh.test}}]";
    let (_control, sidecar) = mesh(125, &[up.addr], vs, "{}", &[]).await;
    let reply = sidecar.get(AUTHORITY, "/abort").await;
    assert_eq!(reply.status.as_u16(), 418);
    assert_eq!(
        up.hits(),
        0,
        "an aborted request never reaches the upstream"
    );
    let started = tokio::time::Instant::now();
    let reply = sidecar.get(AUTHORITY, "/delay").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(200),
        "delayed by at least the fixed delay"
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_requests_with_bodies_to_a_hanging_shadow_without_slowing_them() {
    let primary = Chaos::start("primary", Behaviour::Ok).await.unwrap();
    let shadow = Chaos::start("shadow", Behaviour::Hang).await.unwrap();
    let vs = "mirror: {host: shadow.mesh.test}\n    mirrorPercentage: {value: 100}\n    route: [{destination: {host: ratings.mesh.test}}]";
    let shadow_se = (
        "shadow-se.yaml",
        service_entry("shadow", "shadow.mesh.test", &[shadow.addr]),
    );
    let (_control, sidecar) = mesh(126, &[primary.addr], vs, "{}", &[shadow_se]).await;
    sidecar
        .wait_endpoint("outbound|9080||shadow.mesh.test", shadow.addr)
        .await;
    for i in 0..3 {
        let reply = sidecar
            .send(
                Method::POST,
                AUTHORITY,
                "/rate",
                &[],
                Bytes::from(format!("stars={i}")),
            )
            .await
            .expect("answer");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    poll_until("three shadows", PATIENCE, || async {
        (shadow.hits() == 3).then_some(())
    })
    .await;
    let mut bodies: Vec<Bytes> = shadow.seen().iter().map(|s| s.body.clone()).collect();
    bodies.sort();
    assert_eq!(bodies, ["stars=0", "stars=1", "stars=2"].map(Bytes::from));
    for seen in shadow.seen() {
        assert_eq!(seen.header("host"), Some("ratings.mesh.test-shadow:9080"));
    }
    assert_eq!(primary.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_pool_overflow_is_an_immediate_503_uo() {
    let (up, gate) = Upstream::gated("slow").await.unwrap();
    let dr = "{connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1, http2MaxRequests: 10}}}";
    let vs = "route: [{destination: {host: ratings.mesh.test}}]";
    let (_control, sidecar) = mesh(127, &[up.addr], vs, dr, &[]).await;
    let sidecar = std::sync::Arc::new(sidecar);
    let spawn = |s: &std::sync::Arc<Sidecar>| {
        let s = s.clone();
        tokio::spawn(async move { s.get(AUTHORITY, "/").await })
    };
    let first = spawn(&sidecar);
    poll_until("one request on the one connection", PATIENCE, || async {
        (gate.arrived() == 1).then_some(())
    })
    .await;
    let second = spawn(&sidecar);
    poll_until("one request pending", PATIENCE, || async {
        (stat(&sidecar, "upstream_rq_pending_active").await == 1).then_some(())
    })
    .await;
    for _ in 0..3 {
        let reply = sidecar.get(AUTHORITY, "/").await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
        assert_eq!(reply.header("x-envoy-overloaded"), Some("true"));
    }
    assert_eq!(stat(&sidecar, "upstream_rq_pending_overflow").await, 3);
    gate.open();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(second.await.unwrap().status, StatusCode::OK);
    assert_eq!(gate.arrived(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_opens_a_connection_per_request() {
    let up = Chaos::start("ratings", Behaviour::Ok).await.unwrap();
    let dr = "{connectionPool: {http: {maxRequestsPerConnection: 1}}}";
    let vs = "route: [{destination: {host: ratings.mesh.test}}]";
    let (_control, sidecar) = mesh(130, &[up.addr], vs, dr, &[]).await;
    for _ in 0..5 {
        assert_eq!(sidecar.get(AUTHORITY, "/").await.status, StatusCode::OK);
    }
    assert_eq!(stat(&sidecar, "upstream_cx_total").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_the_failing_endpoint() {
    let a = Chaos::start("a", Behaviour::Ok).await.unwrap();
    let b = Chaos::start("b", Behaviour::Status(503)).await.unwrap();
    let c = Chaos::start("c", Behaviour::Ok).await.unwrap();
    let dr = "{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 300s, maxEjectionPercent: 50}}";
    let vs = "route: [{destination: {host: ratings.mesh.test}}]";
    let (_control, sidecar) = mesh(128, &[a.addr, b.addr, c.addr], vs, dr, &[]).await;
    let mut errors = 0;
    for _ in 0..60 {
        if b.hits() >= 3 {
            break;
        }
        if sidecar.get(AUTHORITY, "/").await.status != StatusCode::OK {
            errors += 1;
        }
    }
    assert_eq!((b.hits(), errors), (3, 3), "b failed three times");
    for _ in 0..30 {
        assert_eq!(sidecar.get(AUTHORITY, "/").await.status, StatusCode::OK);
    }
    assert_eq!(b.hits(), 3, "the ejected endpoint gets no traffic");
    assert!(a.hits() > 10 && c.hits() > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_endpoint_returns_after_its_ejection_time() {
    let a = Chaos::start("a", Behaviour::Ok).await.unwrap();
    let b = Chaos::start("b", Behaviour::Status(503)).await.unwrap();
    let dr = "{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 50}}";
    let vs = "route: [{destination: {host: ratings.mesh.test}}]";
    let (_control, sidecar) = mesh(120, &[a.addr, b.addr], vs, dr, &[]).await;
    for _ in 0..40 {
        if b.hits() >= 3 {
            break;
        }
        sidecar.get(AUTHORITY, "/").await;
    }
    assert_eq!(b.hits(), 3);
    b.set(Behaviour::Ok);
    // Ejected for 1 s, returned on an interval tick: polled, never timed.
    poll_until("b back in the rotation", PATIENCE, || async {
        let reply = sidecar.get(AUTHORITY, "/").await;
        (reply.status == StatusCode::OK && reply.text() == "b").then_some(())
    })
    .await;
}
