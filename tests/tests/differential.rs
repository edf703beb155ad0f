//! Differential test: the same Envoy v3 bootstrap files run by the real Envoy 1.40 and by
//! ferry-proxy, the same table of requests sent to both, the same answers expected.
//!
//! Each case of the table states what Envoy does (which upstream answers with which path and
//! host, which redirect `Location`, which direct-response body, which status), so the Envoy half
//! also checks the table itself; the ferry-proxy half holds ferry-proxy to the same table.
//!
//! ferry-proxy runs in-process (`ferry_proxy::app::start`) from the very text Envoy gets, and
//! reports its listener's bound port like Envoy's `/listeners` does.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use ferry_tests::envoy::Envoy;
use ferry_tests::net::{self, ClosedPort, Protocol, Reply};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The bootstrap files both proxies run, with their upstream placeholders.
const ROUTING: &str = include_str!("../testdata/differential/routing.yaml");

/// What a proxy did, or must do, with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Proxied to `upstream`, which saw `path` (after rewrites) and `host`.
    Upstream {
        upstream: String,
        path: String,
        host: String,
    },
    /// A redirect with this status and `Location`.
    Redirect { status: u16, location: String },
    /// A direct response with this status and body.
    Direct { status: u16, body: String },
    /// Only the status is specified (404 for no route, 503 for a dead upstream).
    Status(u16),
}

/// One row of the table.
struct Case {
    authority: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    expect: Expect,
}

fn up(upstream: &str, path: &str, host: &str) -> Expect {
    Expect::Upstream {
        upstream: upstream.into(),
        path: path.into(),
        host: host.into(),
    }
}

fn redirect(status: u16, location: &str) -> Expect {
    Expect::Redirect {
        status,
        location: location.into(),
    }
}

fn direct(status: u16, body: &str) -> Expect {
    Expect::Direct {
        status,
        body: body.into(),
    }
}

fn case(authority: &'static str, path: &'static str, expect: Expect) -> Case {
    Case {
        authority,
        path,
        headers: &[],
        expect,
    }
}

fn with_headers(
    authority: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    expect: Expect,
) -> Case {
    Case {
        authority,
        path,
        headers,
        expect,
    }
}

/// The table for `routing.yaml`.
fn routing_cases() -> Vec<Case> {
    let m = "main.test";
    vec![
        // Virtual host selection by authority: exact (with and without port), suffix, prefix.
        case("exact.test", "/x", up("a", "/x", "exact.test")),
        case("exact.test:8080", "/x", up("a", "/x", "exact.test:8080")),
        case("www.suffix.test", "/x", up("b", "/x", "www.suffix.test")),
        case("prefix.anything", "/x", up("c", "/x", "prefix.anything")),
        case("unknown.test", "/x", Expect::Status(404)),
        case("main.test:8080", "/exact", Expect::Status(404)),
        // Path matching: exact path, case-insensitive prefix, regex (full match), no route.
        case(m, "/exact", up("a", "/exact", m)),
        case(m, "/exact/more", Expect::Status(404)),
        case(m, "/exact?q=1", up("a", "/exact?q=1", m)),
        case(m, "/case/lower", up("b", "/case/lower", m)),
        case(m, "/regex/123", up("b", "/regex/123", m)),
        case(m, "/regex/123x", Expect::Status(404)),
        case(m, "/nothing", Expect::Status(404)),
        // Header matching: exact, present, inverted prefix, fall-through.
        with_headers(
            m,
            "/headers",
            &[("x-version", "v2")],
            up("b", "/headers", m),
        ),
        with_headers(m, "/headers", &[("x-canary", "")], up("c", "/headers", m)),
        with_headers(m, "/headers", &[("x-user", "bob")], up("a", "/headers", m)),
        with_headers(
            m,
            "/headers",
            &[("x-user", "admin-eve")],
            up("c", "/headers", m),
        ),
        // An absent header never matches, not even inverted (`treat_missing_header_as_empty`
        // defaults to false), so this falls through to the catch-all `c`.
        case(m, "/headers", up("c", "/headers", m)),
        // Query parameter matching.
        case(m, "/query?debug=1", up("b", "/query?debug=1", m)),
        case(m, "/query?debug=2", up("a", "/query?debug=2", m)),
        case(m, "/query?flag", up("c", "/query?flag", m)),
        case(m, "/query", up("a", "/query", m)),
        // Rewrites.
        case(m, "/old/page?x=1", up("a", "/new/page?x=1", m)),
        case(
            m,
            "/rewrite-host",
            up("a", "/rewrite-host", "rewritten.test"),
        ),
        case(m, "/regex-rewrite/one/two", up("a", "/two/one", m)),
        // Redirects.
        case(m, "/redirect", redirect(301, "http://example.test/moved")),
        case(
            m,
            "/redirect-https",
            redirect(308, "https://main.test/redirect-https"),
        ),
        case(
            m,
            "/redirect-prefix/a/b",
            redirect(302, "http://main.test/elsewhere/a/b"),
        ),
        // Direct responses.
        case(m, "/direct", direct(200, "hello from direct")),
        case(m, "/teapot", direct(418, "")),
        // Weighted clusters, the deterministic case (the 80/20 one is checked statistically).
        case(m, "/weighted-all-b", up("b", "/weighted-all-b", m)),
        // An upstream that refuses connections.
        case(m, "/closed", Expect::Status(503)),
        case(m, "/a/b", up("a", "/a/b", m)),
    ]
}

/// What one upstream echo server saw, as it reports it in its response body.
fn echo_body(name: &str, request: &Request<Incoming>) -> String {
    let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    serde_json::json!({"upstream": name, "path": path, "host": host}).to_string()
}

/// Starts an HTTP/1.1 + h2c server named `name` that echoes what it received.
async fn echo_upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind(net::loopback(0))
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(move |request: Request<Incoming>| async move {
                let body = echo_body(name, &request);
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("x-upstream", name)
                        .body(Full::new(Bytes::from(body)))
                        .expect("static response parts are valid"),
                )
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The upstreams of `routing.yaml` and the bootstrap text pointing at them.
struct Upstreams {
    bootstrap: String,
    _closed: ClosedPort,
}

async fn upstreams(template: &str) -> Upstreams {
    let closed = ClosedPort::bind().expect("bind a closed port");
    let mut ports = BTreeMap::new();
    for name in ["a", "b", "c"] {
        ports.insert(name, echo_upstream(name).await.port());
    }
    let bootstrap = template
        .replace("${UPSTREAM_A}", &ports["a"].to_string())
        .replace("${UPSTREAM_B}", &ports["b"].to_string())
        .replace("${UPSTREAM_C}", &ports["c"].to_string())
        .replace("${CLOSED_PORT}", &closed.port().to_string());
    Upstreams {
        bootstrap,
        _closed: closed,
    }
}

/// What a proxy did with one request, in the terms of [`Expect`].
fn observe(expect: &Expect, reply: &Reply) -> Expect {
    let status = reply.status.as_u16();
    match expect {
        Expect::Upstream { .. }
            if reply.status == StatusCode::OK && reply.header("x-upstream").is_some() =>
        {
            let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
            let field = |key: &str| json[key].as_str().unwrap_or("?");
            up(field("upstream"), field("path"), field("host"))
        }
        Expect::Redirect { .. } => redirect(status, reply.header("location").unwrap_or("")),
        Expect::Direct { .. } => direct(status, &reply.text()),
        _ => Expect::Status(status),
    }
}

/// Sends every case to `addr` over `protocol`; returns the mismatches, described.
async fn run_table(
    proxy: &str,
    addr: SocketAddr,
    protocol: Protocol,
    cases: &[Case],
) -> Vec<String> {
    let mut mismatches = Vec::new();
    for case in cases {
        let request = net::request(Method::GET, case.authority, case.path, case.headers)
            .expect("table requests are valid");
        let seen = match net::send(addr, protocol, request).await {
            Ok(reply) => observe(&case.expect, &reply),
            Err(e) => {
                mismatches.push(format!(
                    "{proxy} {protocol:?} {} {}: {e}",
                    case.authority, case.path
                ));
                continue;
            }
        };
        if seen != case.expect {
            mismatches.push(format!(
                "{proxy} {protocol:?} {}{} {:?}: expected {:?}, got {:?}",
                case.authority, case.path, case.headers, case.expect, seen
            ));
        }
    }
    mismatches
}

/// The share of `requests` requests to `/weighted` (80/20 between `a` and `b`) that `a` served.
async fn weighted_share(addr: SocketAddr, requests: u32) -> f64 {
    let mut a = 0;
    for _ in 0..requests {
        let reply = net::get(addr, "main.test", "/weighted")
            .await
            .expect("weighted request");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        if reply.header("x-upstream") == Some("a") {
            a += 1;
        }
    }
    f64::from(a) / f64::from(requests)
}

/// Starts ferry-proxy in-process on `bootstrap`; returns it and its `ingress` listener's address.
async fn start_ferry(bootstrap: &str) -> (ferry_proxy::app::Running, SocketAddr) {
    let bootstrap: xds_proto::envoy::config::bootstrap::v3::Bootstrap =
        xds_proto::json::from_yaml_str(bootstrap).expect("the bootstrap parses");
    let running = ferry_proxy::app::start(bootstrap)
        .await
        .expect("ferry-proxy starts");
    let addr = running
        .listener_addr("ingress")
        .expect("ferry-proxy binds listener ingress");
    (running, addr)
}

#[tokio::test]
async fn envoy_routes_the_table() {
    let upstreams = upstreams(ROUTING).await;
    let Some(envoy) = Envoy::start(&upstreams.bootstrap).await else {
        return;
    };
    let addr = envoy.wait_listener("ingress").await;
    let cases = routing_cases();
    let mut mismatches = run_table("envoy", addr, Protocol::Http1, &cases).await;
    mismatches.extend(run_table("envoy", addr, Protocol::Http2, &cases).await);
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[tokio::test]
async fn envoy_splits_weighted_clusters() {
    let upstreams = upstreams(ROUTING).await;
    let Some(envoy) = Envoy::start(&upstreams.bootstrap).await else {
        return;
    };
    let addr = envoy.wait_listener("ingress").await;
    // 400 draws at p = 0.8: the standard deviation is 0.02, so 0.70..0.90 is five of them.
    let share = weighted_share(addr, 400).await;
    assert!(
        (0.70..=0.90).contains(&share),
        "a served {share:.3} of /weighted, expected ~0.8"
    );
}

/// The cases a proxy answers without an upstream: no route, redirects, direct responses.
fn local_cases() -> Vec<Case> {
    routing_cases()
        .into_iter()
        .filter(|c| {
            matches!(
                c.expect,
                Expect::Redirect { .. } | Expect::Direct { .. } | Expect::Status(404)
            )
        })
        .collect()
}

#[tokio::test]
async fn ferry_answers_locally_like_envoy() {
    let upstreams = upstreams(ROUTING).await;
    let (_ferry, addr) = start_ferry(&upstreams.bootstrap).await;
    let cases = local_cases();
    assert!(
        cases.len() >= 10,
        "the table has {} local cases",
        cases.len()
    );
    let mut mismatches = run_table("ferry", addr, Protocol::Http1, &cases).await;
    mismatches.extend(run_table("ferry", addr, Protocol::Http2, &cases).await);
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[tokio::test]
async fn ferry_routes_the_table_like_envoy() {
    let upstreams = upstreams(ROUTING).await;
    let (_ferry, addr) = start_ferry(&upstreams.bootstrap).await;
    let cases = routing_cases();
    let mut mismatches = run_table("ferry", addr, Protocol::Http1, &cases).await;
    mismatches.extend(run_table("ferry", addr, Protocol::Http2, &cases).await);
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[tokio::test]
async fn ferry_splits_weighted_clusters_like_envoy() {
    let upstreams = upstreams(ROUTING).await;
    let (_ferry, addr) = start_ferry(&upstreams.bootstrap).await;
    let share = weighted_share(addr, 400).await;
    assert!(
        (0.70..=0.90).contains(&share),
        "a served {share:.3} of /weighted, expected ~0.8"
    );
}
