//! The whole control path against a real Envoy 1.40: a directory of Istio and Kubernetes
//! manifests (Bookinfo's reviews with three versions, a DestinationRule, a VirtualService) ->
//! directory source -> model -> translator (local mode) -> ADS, over state-of-the-world and
//! delta. Envoy must ACK every resource of every type and route by the VirtualService (header
//! match, 50/50 split, timeout), then follow a live edit of the weights in the YAML.
//!
//! Local mode: every pod has its own loopback address; the productpage sidecar's
//! `virtualOutbound` is an explicit HTTP proxy on `INSTANCE_IP:15001`. Each test uses its own
//! `127.0.N.0/24` so they run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use ferry_control::app::{self, ServeOptions};
use ferry_control::xds::cache::ResourceType;
use ferry_control::xds::connection::ConnectionStatus;
use ferry_control::xds::debounce::DebounceConfig;
use ferry_tests::envoy::Envoy;
use ferry_tests::net::{self, Protocol as Http};
use ferry_tests::poll::{PATIENCE, poll_until};
use http::Method;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serves its name on every path except `/hang`, which never answers.
fn upstream(listener: TcpListener, name: &'static str) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        if req.uri().path().starts_with("/hang") {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(name))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// Binds the three reviews pods on `127.0.N.2-4`, all on one port (a Service has one
/// targetPort), and returns it.
async fn reviews_pods(net: u8) -> u16 {
    for _ in 0..20 {
        let first = TcpListener::bind(format!("127.0.{net}.2:0")).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let (Ok(second), Ok(third)) = (
            TcpListener::bind(format!("127.0.{net}.3:{port}")).await,
            TcpListener::bind(format!("127.0.{net}.4:{port}")).await,
        ) else {
            continue;
        };
        upstream(first, "reviews-v1");
        upstream(second, "reviews-v2");
        upstream(third, "reviews-v3");
        return port;
    }
    panic!("no port free on all of 127.0.{net}.2-4");
}

fn pod(name: &str, version: &str, ip: &str, sa: &str, app: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels: {{app: {app}, version: {version}}}
spec:
  serviceAccountName: {sa}
  containers: [{{name: {app}, image: local/{app}}}]
status:
  phase: Running
  podIP: {ip}
  podIPs: [{{ip: {ip}}}]
"#
    )
}

fn virtual_service(v1: u32, v3: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - match: [{{uri: {{prefix: /hang}}}}]
    timeout: 0.5s
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: reviews, subset: v3}}, weight: {v3}}}
"#
    )
}

fn write_manifests(dir: &Path, net: u8, port: u16) {
    let mut reviews = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: default, labels: {{app: reviews}}}}
spec:
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080, targetPort: {port}}}]
"#
    );
    for (i, v) in ["v1", "v2", "v3"].iter().enumerate() {
        let ip = format!("127.0.{net}.{}", i + 2);
        reviews.push_str(&pod(
            &format!("reviews-{v}"),
            v,
            &ip,
            "bookinfo-reviews",
            "reviews",
        ));
    }
    let productpage = pod(
        "productpage-v1",
        "v1",
        &format!("127.0.{net}.10"),
        "bookinfo-productpage",
        "productpage",
    );
    let rule = r#"apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"#;
    std::fs::write(dir.join("reviews.yaml"), reviews).unwrap();
    std::fs::write(dir.join("productpage.yaml"), productpage).unwrap();
    std::fs::write(dir.join("reviews-dr.yaml"), rule).unwrap();
    std::fs::write(dir.join("reviews-vs.yaml"), virtual_service(50, 50)).unwrap();
}

fn bootstrap(api_type: &str, node_id: &str, ip: &str, xds: SocketAddr) -> String {
    ferry_tests::envoy::sidecar_bootstrap(api_type, node_id, ip, xds)
}

/// A request for `reviews:9080` through the sidecar's explicit-proxy listener.
async fn get(proxy: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let request = net::request(Method::GET, "reviews:9080", path, headers).ok()?;
    let reply = net::send(proxy, Http::Http1Proxy, request).await.ok()?;
    Some((reply.status.as_u16(), reply.text()))
}

fn all_acked(c: &ConnectionStatus) -> bool {
    c.types.len() == 4 && c.synced() && c.types.values().all(|t| t.last_nack.is_none())
}

async fn mesh(api_type: &str, net: u8) {
    let port = reviews_pods(net).await;
    let dir = tempfile::tempdir().unwrap();
    write_manifests(dir.path(), net, port);
    let options = ServeOptions {
        config_dir: dir.path().to_owned(),
        kubernetes: false,
        xds_address: "127.0.0.1:0".parse().unwrap(),
        debug_address: "127.0.0.1:0".parse().unwrap(),
        local_mode: true,
        debounce: DebounceConfig::default(),
    };
    let running = app::serve(&options).await.unwrap();
    let ip = format!("127.0.{net}.10");
    let node_id = format!("sidecar~{ip}~productpage-v1.default~default.svc.cluster.local");
    let Some(envoy) = Envoy::start(&bootstrap(api_type, &node_id, &ip, running.xds_address)).await
    else {
        return;
    };

    let registry = running.server.registry();
    let acked = poll_until("Envoy to ACK every type", PATIENCE, || {
        let found = registry.find(&node_id).filter(all_acked);
        async move { found }
    })
    .await;
    assert_eq!(acked.generate_error, None);
    let errors = net::get(running.debug_address, "ferry", "/debug/errors")
        .await
        .unwrap()
        .text();
    assert_eq!(errors.trim(), "[]", "the manifests are valid");
    let stats = envoy
        .admin_get("/stats?filter=update_rejected")
        .await
        .unwrap()
        .text();
    assert!(stats.lines().count() >= 3, "{stats}");
    for line in stats.lines() {
        assert!(
            line.ends_with(": 0"),
            "rejected update: {line}\n{}",
            envoy.log()
        );
    }

    let proxy = envoy.wait_listener("virtualOutbound").await;
    let (code, body) = poll_until("reviews through the sidecar", PATIENCE, || async {
        get(proxy, "/", &[("end-user", "jason")]).await
    })
    .await;
    assert_eq!((code, body.as_str()), (200, "reviews-v2"), "header match");

    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..40 {
        let (code, body) = get(proxy, "/reviews/0", &[]).await.unwrap();
        assert_eq!(code, 200, "{body}");
        *seen.entry(body).or_default() += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["reviews-v1", "reviews-v3"],
        "{seen:?}"
    );
    let (code, body) = get(proxy, "/hang", &[]).await.unwrap();
    assert_eq!(code, 504, "route timeout: {body}");

    // Live edit of the YAML: all traffic to v3, followed without restarting anything.
    // Written aside and renamed in, as editors and `kubectl`-style tools do, so the source never
    // reads a half-written file (hidden files are not read).
    let route_version = acked.types[&ResourceType::Route].sent_version.clone();
    let staged = dir.path().join(".reviews-vs.yaml.tmp");
    std::fs::write(&staged, virtual_service(0, 100)).unwrap();
    std::fs::rename(&staged, dir.path().join("reviews-vs.yaml")).unwrap();
    let after = poll_until("Envoy to ACK the edit", PATIENCE, || {
        let found = registry.find(&node_id).filter(|c| {
            all_acked(c) && c.types[&ResourceType::Route].sent_version != route_version
        });
        async move { found }
    })
    .await;
    assert!(after.epoch > acked.epoch);
    poll_until("the edited split on Envoy's worker", PATIENCE, || async {
        get(proxy, "/reviews/0", &[])
            .await
            .filter(|(_, body)| body == "reviews-v3")
    })
    .await;
    for _ in 0..20 {
        let (code, body) = get(proxy, "/reviews/0", &[]).await.unwrap();
        assert_eq!((code, body.as_str()), (200, "reviews-v3"));
    }
    drop(envoy);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_serves_manifests_over_sotw_ads() {
    mesh("GRPC", 44).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_serves_manifests_over_delta_ads() {
    mesh("DELTA_GRPC", 45).await;
}
