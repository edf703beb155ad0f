//! Retries and timeouts end to end: the real ferry-proxy library started in-process from a static
//! bootstrap, chaos upstreams on loopback that misbehave on command (503, fail N times, reset,
//! refuse, hang, gRPC status, response headers), and a real HTTP client. Each scenario checks
//! the attempts every upstream saw (with their `x-envoy-attempt-count`), which endpoint served
//! each retry, the final status, the attempt count returned downstream, and the response flag
//! through Envoy's cluster counters (`upstream_rq_retry_limit_exceeded` = URX,
//! `upstream_rq_retry_overflow` = UO, `upstream_rq_timeout` = UT, `upstream_cx_connect_fail` =
//! UF). Timing (per-try timeout, backoff, route timeout) runs on tokio's paused clock.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ferry_proxy::app::Running;
use ferry_tests::bootstrap::{
    http_listener_with, start_proxy as start, static_cluster_over, static_resources,
};
use ferry_tests::net::{self, ClosedPort, Protocol, Reply};
use ferry_tests::upstream::{Behaviour, Chaos};
use futures::StreamExt;
use http::{Method, StatusCode};

const PREVIOUS_HOSTS: &str = "retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts, typed_config: { '@type': type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }], host_selection_retry_max_attempts: 5";

/// A route on `prefix` to cluster `svc` with `extra` route-action fields (e.g. a retry policy).
fn route(prefix: &str, extra: &str) -> String {
    format!(
        r#"{{ match: {{ prefix: "{prefix}" }}, route: {{ cluster: svc, timeout: 0s, {extra} }} }}"#
    )
}

/// One listener `http` whose virtual host counts attempts both ways, and a ROUND_ROBIN STATIC
/// cluster `svc` over `endpoints` (`cluster_extra`: more cluster fields, e.g. breakers).
fn bootstrap(routes: &[String], endpoints: &[SocketAddr], cluster_extra: &str) -> String {
    let listener = http_listener_with(
        "http",
        "include_request_attempt_count: true, include_attempt_count_in_response: true, ",
        &format!("[{}]", routes.join(", ")),
    );
    let cluster = static_cluster_over("svc", endpoints, &["lb_policy: ROUND_ROBIN", cluster_extra]);
    static_resources(&[listener], &[cluster])
}

async fn send(
    proxy: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let mut request = net::request(method, "svc", path, headers).expect("request");
    *request.body_mut() = body;
    net::send(proxy, Protocol::Http1, request)
        .await
        .expect("response")
}

async fn get(proxy: SocketAddr, path: &str) -> Reply {
    send(proxy, Method::GET, path, &[], Bytes::new()).await
}

/// A counter of cluster `svc`.
fn stat(proxy: &Running, name: &str) -> u64 {
    proxy.stats.counter_value(&format!("cluster.svc.{name}"))
}

fn attempt_counts(up: &Chaos) -> Vec<String> {
    up.seen()
        .iter()
        .map(|s| s.header("x-envoy-attempt-count").unwrap_or("-").to_owned())
        .collect()
}

#[tokio::test]
async fn fail_twice_then_succeed_on_the_only_endpoint() {
    let up = Chaos::start("a", Behaviour::Ok).await.unwrap();
    up.fail_times(2, 503);
    let (proxy, addr) = start(&bootstrap(
        &[route(
            "/",
            "retry_policy: { retry_on: 5xx, num_retries: 3 }",
        )],
        &[up.addr],
        "",
    ))
    .await;
    let reply = get(addr, "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "a");
    assert_eq!(reply.header("x-envoy-attempt-count"), Some("3"));
    assert_eq!(attempt_counts(&up), ["1", "2", "3"]);
    assert_eq!(stat(&proxy, "upstream_rq_retry"), 2);
    assert_eq!(stat(&proxy, "upstream_rq_retry_success"), 1);
    assert_eq!(stat(&proxy, "upstream_rq_retry_limit_exceeded"), 0);
}

#[tokio::test]
async fn always_503_moves_to_a_new_endpoint_per_retry_then_urx() {
    let ups = [
        Chaos::start("a", Behaviour::Status(503)).await.unwrap(),
        Chaos::start("b", Behaviour::Status(503)).await.unwrap(),
        Chaos::start("c", Behaviour::Status(503)).await.unwrap(),
    ];
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let policy = format!("retry_policy: {{ retry_on: 5xx, num_retries: 2, {PREVIOUS_HOSTS} }}");
    let (proxy, addr) = start(&bootstrap(&[route("/", &policy)], &addrs, "")).await;
    for round in 1..=2 {
        let reply = get(addr, "/").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.header("x-envoy-attempt-count"), Some("3"));
        assert_eq!(
            stat(&proxy, "upstream_rq_retry_limit_exceeded"),
            round,
            "URX"
        );
        // previous_hosts: the three attempts went to three different endpoints.
        assert!(ups.iter().all(|u| u.hits() == round as usize));
    }
    let mut numbers: BTreeSet<String> = BTreeSet::new();
    for up in &ups {
        numbers.insert(attempt_counts(up)[0].clone());
    }
    assert_eq!(
        numbers,
        BTreeSet::from(["1".into(), "2".into(), "3".into()])
    );
}

#[tokio::test]
async fn refused_connections_are_retried_on_the_other_endpoint() {
    let closed = ClosedPort::bind().unwrap();
    let up = Chaos::start("ok", Behaviour::Ok).await.unwrap();
    let policy =
        format!("retry_policy: {{ retry_on: connect-failure, num_retries: 1, {PREVIOUS_HOSTS} }}");
    let (proxy, addr) = start(&bootstrap(
        &[route("/", &policy)],
        &[net::loopback(closed.port()), up.addr],
        "",
    ))
    .await;
    for _ in 0..4 {
        let reply = get(addr, "/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "ok");
    }
    assert_eq!(
        up.hits(),
        4,
        "every request ended on the live endpoint once"
    );
    let refused = stat(&proxy, "upstream_rq_retry");
    assert!(
        refused >= 1,
        "round robin sent some first attempts to the closed port"
    );
    let retried: Vec<String> = attempt_counts(&up);
    assert_eq!(retried.iter().filter(|c| *c == "2").count() as u64, refused);
}

#[tokio::test]
async fn resets_are_retried_only_when_the_policy_says_so() {
    let up = Chaos::start("a", Behaviour::Ok).await.unwrap();
    let (proxy, addr) = start(&bootstrap(
        &[
            route(
                "/cf",
                "retry_policy: { retry_on: connect-failure, num_retries: 2 }",
            ),
            route(
                "/reset",
                "retry_policy: { retry_on: reset, num_retries: 2 }",
            ),
            route("/5xx", "retry_policy: { retry_on: 5xx, num_retries: 2 }"),
        ],
        &[up.addr],
        "",
    ))
    .await;
    up.script([Behaviour::Reset]);
    let reply = get(addr, "/cf").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "UC, not retried"
    );
    assert_eq!(reply.header("x-envoy-attempt-count"), Some("1"));
    assert_eq!(up.hits(), 1);
    for path in ["/reset", "/5xx"] {
        up.reset_counts();
        up.script([Behaviour::Reset]);
        let reply = get(addr, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(attempt_counts(&up), ["1", "2"], "{path}");
    }
    assert_eq!(stat(&proxy, "upstream_rq_retry_limit_exceeded"), 0);
}

/// Each row: route policy, the first answer, whether it is retried.
#[tokio::test]
async fn retry_on_conditions_status_codes_headers_and_grpc() {
    let header = |name: &str, value: &str| Behaviour::Respond {
        status: 200,
        headers: vec![(name.into(), value.into())],
    };
    let rows: Vec<(&str, Behaviour, bool)> = vec![
        (
            "retry_on: retriable-status-codes, retriable_status_codes: [418]",
            Behaviour::Status(418),
            true,
        ),
        (
            "retry_on: retriable-status-codes, retriable_status_codes: [418]",
            Behaviour::Status(429),
            false,
        ),
        ("retry_on: retriable-4xx", Behaviour::Status(409), true),
        ("retry_on: retriable-4xx", Behaviour::Status(404), false),
        ("retry_on: gateway-error", Behaviour::Status(502), true),
        ("retry_on: gateway-error", Behaviour::Status(500), false),
        ("retry_on: 5xx", Behaviour::Status(500), true),
        (
            r#"retry_on: retriable-headers, retriable_headers: [{ name: x-retry-me, string_match: { exact: "yes" } }]"#,
            header("x-retry-me", "yes"),
            true,
        ),
        (
            r#"retry_on: retriable-headers, retriable_headers: [{ name: x-retry-me, string_match: { exact: "yes" } }]"#,
            header("x-retry-me", "no"),
            false,
        ),
        ("retry_on: cancelled", Behaviour::GrpcStatus(1), true),
        (
            "retry_on: deadline-exceeded",
            Behaviour::GrpcStatus(4),
            true,
        ),
        (
            "retry_on: resource-exhausted",
            Behaviour::GrpcStatus(8),
            true,
        ),
        ("retry_on: internal", Behaviour::GrpcStatus(13), true),
        ("retry_on: unavailable", Behaviour::GrpcStatus(14), true),
        ("retry_on: unavailable", Behaviour::GrpcStatus(5), false),
        ("retry_on: connect-failure", Behaviour::Status(503), false),
        (
            "retry_on: envoy-ratelimited",
            header("x-envoy-ratelimited", "true"),
            true,
        ),
        ("retry_on: envoy-ratelimited", Behaviour::Status(429), false),
        ("retry_on: reset-before-request", Behaviour::Reset, false),
        ("retry_on: reset", Behaviour::Reset, true),
    ];
    let up = Chaos::start("a", Behaviour::Ok).await.unwrap();
    let routes: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, (policy, _, _))| {
            route(&format!("/{i}/"), &format!("retry_policy: {{ {policy} }}"))
        })
        .collect();
    let (_proxy, addr) = start(&bootstrap(&routes, &[up.addr], "")).await;
    for (i, (policy, first, retried)) in rows.into_iter().enumerate() {
        up.reset_counts();
        up.script([first.clone()]);
        let reply = get(addr, &format!("/{i}/")).await;
        let expected_attempts = if retried { 2 } else { 1 };
        assert_eq!(up.hits(), expected_attempts, "{policy} / {first:?}");
        assert_eq!(
            reply.header("x-envoy-attempt-count"),
            Some(expected_attempts.to_string().as_str()),
            "{policy} / {first:?}"
        );
        if retried {
            assert_eq!(reply.status, StatusCode::OK, "{policy} / {first:?}");
            assert_eq!(reply.header("grpc-status"), None);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_is_retried_and_succeeds() {
    let up = Chaos::start("a", Behaviour::Ok).await.unwrap();
    up.script([Behaviour::Hang]);
    let (proxy, addr) = start(&bootstrap(
        &[(
            r#"{ match: { prefix: "/" }, route: { cluster: svc, timeout: 10s, retry_policy: { retry_on: reset, num_retries: 1, per_try_timeout: 1s } } }"#
        ).to_owned()],
        &[up.addr],
        "",
    ))
    .await;
    let reply = get(addr, "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-envoy-attempt-count"), Some("2"));
    let seen = up.seen();
    let gap = seen[1].at - seen[0].at;
    // One per-try timeout plus a jittered backoff of at most Envoy's 25 ms base.
    assert!(gap >= Duration::from_secs(1), "{gap:?}");
    assert!(gap <= Duration::from_millis(1025), "{gap:?}");
    assert_eq!(stat(&proxy, "upstream_rq_per_try_timeout"), 1);
    assert_eq!(stat(&proxy, "upstream_rq_timeout"), 0);
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_bounds_all_attempts_with_ut() {
    let up = Chaos::start("a", Behaviour::Hang).await.unwrap();
    let (proxy, addr) = start(&bootstrap(
        &[(
            r#"{ match: { prefix: "/" }, route: { cluster: svc, timeout: 2.5s, retry_policy: { retry_on: 5xx, num_retries: 10, per_try_timeout: 1s } } }"#
        ).to_owned()],
        &[up.addr],
        "",
    ))
    .await;
    let started = tokio::time::Instant::now();
    let reply = get(addr, "/").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.text(), "upstream request timeout");
    assert!(elapsed >= Duration::from_millis(2500), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(2600), "{elapsed:?}");
    assert_eq!(
        up.hits(),
        3,
        "tries at ~0 s, ~1 s and ~2 s; the third is cut at 2.5 s"
    );
    assert_eq!(stat(&proxy, "upstream_rq_timeout"), 1, "UT");
    assert_eq!(stat(&proxy, "upstream_rq_per_try_timeout"), 2);
}

#[tokio::test(start_paused = true)]
async fn backoff_is_full_jitter_within_envoy_bounds() {
    let up = Chaos::start("a", Behaviour::Status(503)).await.unwrap();
    let (_proxy, addr) = start(&bootstrap(
        &[route(
            "/",
            "retry_policy: { retry_on: 5xx, num_retries: 4, retry_back_off: { base_interval: 0.1s, max_interval: 0.3s } }",
        )],
        &[up.addr],
        "",
    ))
    .await;
    for _ in 0..5 {
        up.reset_counts();
        assert_eq!(get(addr, "/").await.status, StatusCode::SERVICE_UNAVAILABLE);
        let seen = up.seen();
        assert_eq!(seen.len(), 5);
        // Retry n waits a random time in [0, (2^n - 1) x base], capped at max_interval.
        let ceilings = [100, 300, 300, 300].map(Duration::from_millis);
        for (pair, ceiling) in seen.windows(2).zip(ceilings) {
            let gap = pair[1].at - pair[0].at;
            assert!(gap <= ceiling, "{gap:?} > {ceiling:?}");
        }
    }
}

#[tokio::test]
async fn request_bodies_are_replayed_up_to_the_buffer_limit() {
    let up = Chaos::start("a", Behaviour::Ok).await.unwrap();
    let (proxy, addr) = start(&bootstrap(
        &[
            r#"{ match: { prefix: "/small-buffer" }, per_request_buffer_limit_bytes: 1024, route: { cluster: svc, retry_policy: { retry_on: 5xx, num_retries: 2 } } }"#.to_owned(),
            route("/", "retry_policy: { retry_on: 5xx, num_retries: 2 }"),
        ],
        &[up.addr],
        "",
    ))
    .await;
    let body = Bytes::from(vec![b'x'; 4000]);
    up.fail_times(1, 503);
    let reply = send(addr, Method::POST, "/upload", &[], body.clone()).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|s| s.body == body),
        "the retry carried the same body"
    );

    up.reset_counts();
    up.fail_times(1, 503);
    let reply = send(addr, Method::POST, "/small-buffer", &[], body.clone()).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "too large to replay: sent once"
    );
    assert_eq!(reply.header("x-envoy-attempt-count"), Some("1"));
    assert_eq!(
        up.seen()[0].body,
        body,
        "the single attempt got the whole body"
    );
    assert_eq!(up.hits(), 1);
    assert_eq!(
        stat(&proxy, "upstream_rq_retry_limit_exceeded"),
        0,
        "not URX"
    );
}

#[tokio::test]
async fn the_listener_buffer_limit_applies_when_the_route_sets_none() {
    let up = Chaos::start("a", Behaviour::Ok).await.unwrap();
    let yaml = bootstrap(
        &[route(
            "/",
            "retry_policy: { retry_on: 5xx, num_retries: 2 }",
        )],
        &[up.addr],
        "",
    )
    .replacen(
        "    filter_chains:",
        "    per_connection_buffer_limit_bytes: 1024\n    filter_chains:",
        1,
    );
    let (_proxy, addr) = start(&yaml).await;
    up.fail_times(1, 503);
    let small = Bytes::from(vec![b's'; 1000]);
    let reply = send(addr, Method::PUT, "/", &[], small.clone()).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "under the listener's limit: retried"
    );
    assert_eq!(up.hits(), 2);
    up.reset_counts();
    up.fail_times(1, 503);
    let large = Bytes::from(vec![b'l'; 2000]);
    let reply = send(addr, Method::PUT, "/", &[], large).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "over it: sent once"
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn internal_callers_override_retries_and_timeouts_with_headers() {
    let up = Chaos::start("a", Behaviour::Status(503)).await.unwrap();
    let (proxy, addr) = start(&bootstrap(&[route("/", "")], &[up.addr], "")).await;
    let overrides = [("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "2")];
    // External (no x-forwarded-for): the overrides are stripped and ignored.
    let reply = send(addr, Method::GET, "/", &overrides, Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.hits(), 1);
    assert_eq!(up.seen()[0].header("x-envoy-retry-on"), None);

    // Internal: a single private address in x-forwarded-for, as Envoy judges it.
    up.reset_counts();
    let internal = [overrides[0], overrides[1], ("x-forwarded-for", "10.1.2.3")];
    let reply = send(addr, Method::GET, "/", &internal, Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("x-envoy-attempt-count"), Some("3"));
    assert_eq!(up.hits(), 3);
    assert_eq!(stat(&proxy, "upstream_rq_retry_limit_exceeded"), 1, "URX");
    for seen in up.seen() {
        assert_eq!(
            seen.header("x-envoy-retry-on"),
            None,
            "stripped before upstream"
        );
        assert_eq!(seen.header("x-envoy-max-retries"), None);
    }

    up.set(Behaviour::Ok);
    up.script([Behaviour::Hang]);
    let per_try = [
        ("x-envoy-retry-on", "reset"),
        ("x-envoy-upstream-rq-per-try-timeout-ms", "100"),
        ("x-forwarded-for", "10.1.2.3"),
    ];
    let reply = send(addr, Method::GET, "/", &per_try, Bytes::new()).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the hanging try was cut and retried"
    );
    assert_eq!(reply.header("x-envoy-attempt-count"), Some("2"));
    assert_eq!(stat(&proxy, "upstream_rq_per_try_timeout"), 1);

    up.set(Behaviour::Hang);
    let timeout = [
        ("x-envoy-upstream-rq-timeout-ms", "200"),
        ("x-forwarded-for", "10.1.2.3"),
    ];
    let reply = send(addr, Method::GET, "/", &timeout, Bytes::new()).await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "UT from the header's timeout"
    );
    assert_eq!(stat(&proxy, "upstream_rq_timeout"), 1);
}

#[tokio::test]
async fn a_retry_storm_stays_within_the_default_budget() {
    let a = Chaos::start("a", Behaviour::Status(503)).await.unwrap();
    let b = Chaos::start("b", Behaviour::Status(503)).await.unwrap();
    // max_retries is raised so only Ferry's default ratio budget limits retries.
    let (proxy, addr) = start(&bootstrap(
        &[route(
            "/",
            "retry_policy: { retry_on: 5xx, num_retries: 3, retry_back_off: { base_interval: 0.001s } }",
        )],
        &[a.addr, b.addr],
        "circuit_breakers: { thresholds: [{ max_retries: 100000 }] }",
    ))
    .await;
    let requests: u64 = 300;
    let statuses: Vec<StatusCode> = futures::stream::iter(0..requests)
        .map(|_| async move { get(addr, "/").await.status })
        .buffer_unordered(30)
        .collect()
        .await;
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE)
    );
    let sent = (a.hits() + b.hits()) as u64;
    // Without a budget: 300 x (1 + 3) = 1200. The default budget: 20% of the requests plus a
    // floor of 10 retries per second over its 10 s window.
    let bound = requests + requests / 5 + 100;
    assert!(sent <= bound, "{sent} requests upstream > {bound}");
    assert!(sent > requests, "the budget still allows some retries");
    let urx = stat(&proxy, "upstream_rq_retry_limit_exceeded");
    let uo = stat(&proxy, "upstream_rq_retry_overflow");
    assert!(uo > 0, "retries beyond the budget are refused (UO)");
    assert_eq!(urx + uo, requests, "every request ended with URX or UO");
}

#[tokio::test]
async fn grpc_over_h2_is_retried_with_its_body_unless_it_overflows_the_buffer() {
    let up = Chaos::start("a", Behaviour::Ok).await.unwrap();
    let h2 = "typed_extension_protocol_options: { envoy.extensions.upstreams.http.v3.HttpProtocolOptions: { '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: { http2_protocol_options: {} } } }";
    let (_proxy, addr) = start(&bootstrap(
        &[
            r#"{ match: { prefix: "/small.Buffer/" }, per_request_buffer_limit_bytes: 16, route: { cluster: svc, retry_policy: { retry_on: unavailable, num_retries: 1 } } }"#.to_owned(),
            route("/", "retry_policy: { retry_on: unavailable, num_retries: 1 }"),
        ],
        &[up.addr],
        h2,
    ))
    .await;
    // One length-prefixed gRPC message of 100 bytes.
    let mut message = vec![0u8, 0, 0, 0, 100];
    message.extend(std::iter::repeat_n(b'm', 100));
    let message = Bytes::from(message);
    let grpc = |path: &str| {
        let mut request = net::request(
            Method::POST,
            "svc",
            path,
            &[("content-type", "application/grpc"), ("te", "trailers")],
        )
        .expect("request");
        *request.body_mut() = message.clone();
        request
    };
    up.script([Behaviour::GrpcStatus(14)]);
    let reply = net::send(addr, Protocol::Http2, grpc("/echo.Echo/Say"))
        .await
        .expect("response");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("grpc-status"), None, "the retry's answer");
    assert_eq!(reply.header("x-envoy-attempt-count"), Some("2"));
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|s| s.body == message),
        "the retry replayed the message"
    );

    up.reset_counts();
    up.script([Behaviour::GrpcStatus(14)]);
    let reply = net::send(addr, Protocol::Http2, grpc("/small.Buffer/Say"))
        .await
        .expect("response");
    assert_eq!(
        reply.header("grpc-status"),
        Some("14"),
        "over the limit: not retried"
    );
    assert_eq!(up.hits(), 1);
    assert_eq!(up.seen()[0].body, message);
}

#[tokio::test]
async fn max_retries_bounds_concurrent_retries_with_uo() {
    two_retries_in_flight("circuit_breakers: { thresholds: [{ max_retries: 2 }] }").await;
}

#[tokio::test]
async fn a_configured_retry_budget_bounds_concurrent_retries_with_uo() {
    // 1% of at most 20 active requests rounds down to 0: the floor (min_retry_concurrency)
    // rules, and max_retries is ignored when a budget is set, as in Envoy.
    two_retries_in_flight(
        "circuit_breakers: { thresholds: [{ max_retries: 1000, retry_budget: { budget_percent: { value: 1 }, min_retry_concurrency: 2 } }] }",
    )
    .await;
}

/// Twenty concurrent requests: first tries on the 503 endpoint want a retry, retries go to a
/// gated endpoint and stay in flight; the breaker admits exactly two, the rest end with UO.
async fn two_retries_in_flight(breakers: &str) {
    let a = Chaos::start("a", Behaviour::Status(503))
        .await
        .expect("chaos upstream");
    let (b, gate) = ferry_tests::upstream::Upstream::gated("b")
        .await
        .expect("gated upstream");
    let policy = format!("retry_policy: {{ retry_on: 5xx, num_retries: 1, {PREVIOUS_HOSTS} }}");
    let (proxy, addr) = start(&bootstrap(
        &[route("/", &policy)],
        &[a.addr, b.addr],
        breakers,
    ))
    .await;
    let requests = 20;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..requests)
        .map(|_| {
            let done = done.clone();
            tokio::spawn(async move {
                let reply = get(addr, "/").await;
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                reply
            })
        })
        .collect();
    // Every request either ended (its retry was refused) or is held by the gated endpoint.
    ferry_tests::poll::poll_until("requests settled", ferry_tests::poll::PATIENCE, || {
        let settled = done.load(std::sync::atomic::Ordering::SeqCst) + gate.arrived();
        async move { (settled == requests).then_some(()) }
    })
    .await;
    let wanted_retries = a.hits();
    assert!(
        wanted_retries > 2,
        "round robin sent {wanted_retries} first tries to the 503 endpoint"
    );
    let overflowed = stat(&proxy, "upstream_rq_retry_overflow") as usize;
    assert_eq!(
        overflowed,
        wanted_retries - 2,
        "two retries in flight, the rest UO"
    );
    assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), overflowed);
    gate.open();
    let mut ok = 0;
    for task in tasks {
        let reply = task.await.expect("join");
        if reply.status == StatusCode::OK {
            ok += 1;
        } else {
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                reply.text(),
                "a",
                "the refused retry passes the first answer on"
            );
        }
    }
    assert_eq!(ok, requests - overflowed);
}
