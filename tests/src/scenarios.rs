//! One table of mesh scenarios that every sidecar ferry-control serves is held to: the real
//! Envoy 1.40 (`tests/tests/envoy_interop_manifests.rs`) and ferry-proxy
//! (`tests/tests/mesh_e2e.rs`) run the very same steps against the same manifests, so a
//! difference between them is a failing test, not a matter of which test was written.
//!
//! The mesh: ferry-control in local mode serving a temporary directory of Istio and Kubernetes
//! manifests (Bookinfo's `reviews` with three versions as Pods on `127.0.N.2-4`, a
//! DestinationRule with a subset per version, a VirtualService), real upstream servers on those
//! pod addresses, and a sidecar for `productpage` on `127.0.N.10` connected over ADS
//! (state-of-the-world or delta). Requests go through the sidecar's `virtualOutbound` listener,
//! an explicit HTTP proxy in local mode. Each test uses its own `127.0.N.0/24`, so they run in
//! parallel.
//!
//! The steps ([`run`]): every type ACKed, nothing rejected; a header match; an 80/20 split
//! within statistical bounds; a route timeout answered 504 by an upstream that hangs; a live
//! edit of the YAML (weights to 0/100 and a different header match) followed without a restart;
//! a bad edit refused with a visible error while the served config stays as it was.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use ferry_control::app::{self, ServeOptions};
use ferry_control::xds::cache::ResourceType;
use ferry_control::xds::connection::ConnectionStatus;
use ferry_control::xds::debounce::DebounceConfig;
use http::Method;

use crate::envoy::{self, Envoy, Pod};
use crate::net::{self, Protocol};
use crate::poll::{PATIENCE, poll_until};
use crate::upstream::Upstream;

/// Requests sent for the split; at 80/20 the v1 share's standard deviation is 2%, and the
/// bounds below are five of them.
const SPLIT_REQUESTS: u32 = 400;
/// The accepted range of the v1 share of an 80/20 split.
const SPLIT_BOUNDS: (f64, f64) = (0.70, 0.90);
/// A safety net on one request, so a proxy that never answers fails the test instead of hanging
/// it.
const REQUEST_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);
/// Requests that must all behave once a change was observed.
const STEADY_REQUESTS: usize = 30;

/// Which sidecar the scenarios run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarKind {
    /// The real Envoy 1.40 (skipped when missing, except under `CI`).
    Envoy,
    /// ferry-proxy, in-process, from the same bootstrap text Envoy gets.
    Ferry,
}

/// A running sidecar of either kind.
pub enum Sidecar {
    /// A real Envoy process.
    Envoy(Envoy),
    /// ferry-proxy in this process.
    Ferry(ferry_proxy::app::Running),
}

impl Sidecar {
    /// Starts a sidecar of `kind` on `bootstrap`; `None` when Envoy is missing outside CI.
    pub async fn start(kind: SidecarKind, bootstrap: &str) -> Option<Sidecar> {
        match kind {
            SidecarKind::Envoy => Envoy::start(bootstrap).await.map(Sidecar::Envoy),
            SidecarKind::Ferry => {
                let bootstrap = xds_proto::json::from_yaml_str(bootstrap)
                    .expect("the sidecar bootstrap parses");
                let running = ferry_proxy::app::start(bootstrap)
                    .await
                    .expect("ferry-proxy starts");
                Some(Sidecar::Ferry(running))
            }
        }
    }

    /// The bound address of the listener `name`, once it is bound.
    pub async fn wait_listener(&self, name: &str) -> SocketAddr {
        match self {
            Sidecar::Envoy(envoy) => envoy.wait_listener(name).await,
            Sidecar::Ferry(running) => {
                poll_until(&format!("ferry-proxy listener {name}"), PATIENCE, || {
                    let addr = running.listener_addr(name);
                    async move { addr }
                })
                .await
            }
        }
    }

    /// The sidecar's own `update_rejected` counters that are not zero, as `name: value` lines.
    /// Envoy has one per type from the start; ferry-proxy creates them on the first rejection.
    pub async fn rejected_updates(&self) -> Vec<String> {
        let counters: Vec<(String, u64)> = match self {
            Sidecar::Envoy(envoy) => {
                let stats = envoy
                    .admin_get("/stats?filter=update_rejected")
                    .await
                    .expect("Envoy's stats")
                    .text();
                let counters: Vec<(String, u64)> = stats
                    .lines()
                    .filter_map(|line| {
                        let (name, value) = line.rsplit_once(": ")?;
                        Some((name.to_owned(), value.trim().parse().ok()?))
                    })
                    .collect();
                assert!(
                    counters.len() >= 3,
                    "too few update_rejected stats: {stats}"
                );
                counters
            }
            Sidecar::Ferry(running) => running
                .stats
                .counters()
                .into_iter()
                .filter(|(name, _)| name.contains("update_rejected"))
                .collect(),
        };
        counters
            .into_iter()
            .filter(|(_, value)| *value != 0)
            .map(|(name, value)| format!("{name}: {value}"))
            .collect()
    }

    /// The value of the counter `name` (e.g. `cluster.NAME.upstream_rq_timeout`), 0 when absent.
    pub async fn counter(&self, name: &str) -> u64 {
        match self {
            Sidecar::Envoy(envoy) => {
                let stat = name.rsplit('.').next().unwrap_or(name);
                envoy
                    .admin_get(&format!("/stats?filter={stat}"))
                    .await
                    .expect("Envoy's stats")
                    .text()
                    .lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
                    .and_then(|value| value.trim().parse().ok())
                    .unwrap_or(0)
            }
            Sidecar::Ferry(running) => running
                .stats
                .counters()
                .into_iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, value)| value),
        }
    }

    /// Stops the sidecar, closing its ADS stream (an in-process ferry-proxy's tasks would
    /// otherwise outlive the handle and keep the control plane's shutdown waiting).
    pub async fn stop(self) {
        match self {
            Sidecar::Envoy(envoy) => drop(envoy),
            Sidecar::Ferry(running) => running.shutdown(std::time::Duration::ZERO).await,
        }
    }

    /// Envoy's log (ferry-proxy logs through this process's tracing).
    pub fn log(&self) -> String {
        match self {
            Sidecar::Envoy(envoy) => envoy.log(),
            Sidecar::Ferry(_) => String::new(),
        }
    }
}

/// The parameters of the `reviews` VirtualService the steps edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    /// Requests with `end-user: USER` go to subset v2.
    pub user: &'static str,
    /// Weight of subset v1 for every other request.
    pub v1: i64,
    /// Weight of subset v3 for every other request.
    pub v3: i64,
}

/// The canary the mesh starts with.
pub const CANARY: Routing = Routing {
    user: "jason",
    v1: 80,
    v3: 20,
};
/// The live edit: the canary promoted, and another user pinned to v2.
pub const PROMOTED: Routing = Routing {
    user: "mike",
    v1: 0,
    v3: 100,
};
/// A bad edit: a negative weight, which Istio refuses.
pub const NEGATIVE_WEIGHT: Routing = Routing {
    user: "jason",
    v1: -20,
    v3: 120,
};

/// The `reviews` VirtualService: the header match, `/hang` with a 0.5 s timeout to v1, and the
/// weighted split of everything else between v1 and v3.
pub fn virtual_service(routing: Routing) -> String {
    let Routing { user, v1, v3 } = routing;
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: {user}}}}}}}]
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

fn pod(name: &str, version: &str, ip: &str, service_account: &str, app: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels: {{app: {app}, version: {version}}}
spec:
  serviceAccountName: {service_account}
  containers: [{{name: {app}, image: local/{app}}}]
status:
  phase: Running
  podIP: {ip}
  podIPs: [{{ip: {ip}}}]
"#
    )
}

const DESTINATION_RULE: &str = r#"apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"#;

/// The reviews service's host name.
const REVIEWS: &str = "reviews.default.svc.cluster.local";

/// The reviews versions, each a pod at `127.0.N.(index + 2)`.
pub const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];

/// ferry-control serving the Bookinfo manifests of one `127.0.N.0/24`, with the reviews pods.
pub struct Bookinfo {
    dir: tempfile::TempDir,
    net: u8,
    /// ferry-control, in-process.
    pub control: app::Running,
    _pods: Vec<Upstream>,
}

impl Bookinfo {
    /// Starts the reviews pods on `127.0.N.2-4`, writes the manifests (with [`CANARY`]) and
    /// starts ferry-control in local mode on them.
    pub async fn start(net: u8) -> Bookinfo {
        let (pods, port) = reviews_pods(net).await;
        let dir = tempfile::tempdir().expect("tempdir");
        write_manifests(dir.path(), net, port);
        let options = ServeOptions {
            config_dir: dir.path().to_owned(),
            kubernetes: false,
            xds_address: "127.0.0.1:0".parse().expect("address"),
            debug_address: "127.0.0.1:0".parse().expect("address"),
            local_mode: true,
            debounce: DebounceConfig::default(),
        };
        let control = app::serve(&options).await.expect("ferry-control starts");
        Bookinfo {
            dir,
            net,
            control,
            _pods: pods,
        }
    }

    /// The instance IP of the pod `host` (`2..=4` reviews, `10` productpage).
    pub fn ip(&self, host: u8) -> String {
        format!("127.0.{}.{host}", self.net)
    }

    /// The Istio node id of the productpage pod.
    pub fn node_id(&self) -> String {
        pod_node_id(&self.ip(10), "productpage-v1")
    }

    /// The productpage sidecar's bootstrap, ADS of `api_type` (`GRPC` or `DELTA_GRPC`).
    pub fn bootstrap(&self, api_type: &str) -> String {
        envoy::sidecar_bootstrap(
            api_type,
            &self.node_id(),
            &self.ip(10),
            self.control.xds_address,
        )
    }

    /// The bootstrap of the sidecar of reviews pod `version` (node id, bootstrap).
    pub fn reviews_bootstrap(&self, api_type: &str, version: &str) -> (String, String) {
        let index = VERSIONS.iter().position(|v| *v == version).unwrap_or(0);
        let ip = self.ip(index as u8 + 2);
        let node_id = pod_node_id(&ip, &format!("reviews-{version}"));
        let pod = Pod {
            app: "reviews",
            version,
            service_account: "bookinfo-reviews",
        };
        let bootstrap =
            envoy::pod_bootstrap(api_type, &node_id, &ip, &pod, self.control.xds_address);
        (node_id, bootstrap)
    }

    /// Replaces the VirtualService's file as editors and `kubectl`-style tools do: written aside
    /// and renamed in, so the source never reads a half-written file (hidden files are not read).
    pub fn edit_virtual_service(&self, routing: Routing) {
        let staged = self.dir.path().join(".reviews-vs.yaml.tmp");
        std::fs::write(&staged, virtual_service(routing)).expect("write the edit");
        std::fs::rename(&staged, self.dir.path().join("reviews-vs.yaml")).expect("rename");
    }

    /// Waits until the proxy `node_id` ACKed every type with no NACK, optionally with a route
    /// version other than `not_route_version`.
    pub async fn acked(&self, node_id: &str, not_route_version: Option<&str>) -> ConnectionStatus {
        let registry = self.control.server.registry();
        poll_until(&format!("{node_id} to ACK every type"), PATIENCE, || {
            let found = registry.find(node_id).filter(|c| {
                all_acked(c)
                    && not_route_version
                        .is_none_or(|v| c.types[&ResourceType::Route].sent_version != v)
            });
            async move { found }
        })
        .await
    }

    /// `/debug/errors` of ferry-control.
    pub async fn errors(&self) -> String {
        net::get(self.control.debug_address, "ferry", "/debug/errors")
            .await
            .expect("/debug/errors answers")
            .text()
    }

    /// Stops ferry-control.
    pub async fn shutdown(self) {
        self.control.shutdown().await.expect("ferry-control stops");
    }
}

fn pod_node_id(ip: &str, pod: &str) -> String {
    format!("sidecar~{ip}~{pod}.default~default.svc.cluster.local")
}

fn all_acked(c: &ConnectionStatus) -> bool {
    c.types.len() == 4 && c.synced() && c.types.values().all(|t| t.last_nack.is_none())
}

/// Echo servers for reviews v1-v3 on `127.0.N.2-4`, all on one port (a Service has one
/// targetPort), and that port.
async fn reviews_pods(net: u8) -> (Vec<Upstream>, u16) {
    for _ in 0..20 {
        let first = Upstream::echo_at("reviews-v1", SocketAddr::from(([127, 0, net, 2], 0)))
            .await
            .expect("bind 127.0.N.2");
        let port = first.addr.port();
        let (Ok(second), Ok(third)) = (
            Upstream::echo_at("reviews-v2", SocketAddr::from(([127, 0, net, 3], port))).await,
            Upstream::echo_at("reviews-v3", SocketAddr::from(([127, 0, net, 4], port))).await,
        ) else {
            continue;
        };
        return (vec![first, second, third], port);
    }
    panic!("no port free on all of 127.0.{net}.2-4");
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
    for (i, v) in VERSIONS.iter().enumerate() {
        let ip = format!("127.0.{net}.{}", i + 2);
        let name = format!("reviews-{v}");
        reviews.push_str(&pod(&name, v, &ip, "bookinfo-reviews", "reviews"));
    }
    let productpage = pod(
        "productpage-v1",
        "v1",
        &format!("127.0.{net}.10"),
        "bookinfo-productpage",
        "productpage",
    );
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write");
    write("reviews.yaml", &reviews);
    write("productpage.yaml", &productpage);
    write("reviews-dr.yaml", DESTINATION_RULE);
    write("reviews-vs.yaml", &virtual_service(CANARY));
}

/// One answer through the sidecar: status, the upstream instance (`reviews-v2`) or empty for a
/// local reply, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// `x-upstream-instance`, empty when the sidecar answered itself.
    pub instance: String,
    /// The body.
    pub body: String,
}

/// `GET http://reviews:9080{path}` through the sidecar's explicit-proxy listener; `None` when
/// it fails or takes longer than [`REQUEST_PATIENCE`] (every expected answer, the 504 included,
/// comes far sooner).
pub async fn get(proxy: SocketAddr, path: &str, user: Option<&str>) -> Option<Answer> {
    let headers: Vec<(&str, &str)> = user.map(|u| ("end-user", u)).into_iter().collect();
    let request = net::request(Method::GET, "reviews:9080", path, &headers).ok()?;
    let sent = net::send(proxy, Protocol::Http1Proxy, request);
    let reply = tokio::time::timeout(REQUEST_PATIENCE, sent)
        .await
        .ok()?
        .ok()?;
    Some(Answer {
        status: reply.status.as_u16(),
        instance: reply
            .header("x-upstream-instance")
            .unwrap_or_default()
            .to_owned(),
        body: reply.text(),
    })
}

async fn must_get(proxy: SocketAddr, path: &str, user: Option<&str>) -> Answer {
    get(proxy, path, user)
        .await
        .unwrap_or_else(|| panic!("no answer through the sidecar for {path} (user {user:?})"))
}

/// Where `routing` sends a request from `user` (or nobody) to `/`: the only instance for a
/// header match or a 0/100 split, `None` for a real split.
fn pinned(routing: Routing, user: Option<&str>) -> Option<&'static str> {
    match (user, routing.v1, routing.v3) {
        (Some(u), _, _) if u == routing.user => Some("reviews-v2"),
        (_, 0, _) => Some("reviews-v3"),
        (_, _, 0) => Some("reviews-v1"),
        _ => None,
    }
}

/// Asserts `routing`'s behaviour through `sidecar`'s listener at `proxy`: the header match, the
/// pinned or split default route, and the timeout (504, counted as the cluster's
/// `upstream_rq_timeout`: response flag UT).
pub async fn assert_routing(sidecar: &Sidecar, proxy: SocketAddr, routing: Routing) {
    for user in [Some("jason"), Some("mike"), None] {
        if let Some(want) = pinned(routing, user) {
            for _ in 0..STEADY_REQUESTS {
                let answer = must_get(proxy, "/reviews/0", user).await;
                assert_eq!(
                    (answer.status, answer.instance.as_str()),
                    (200, want),
                    "user {user:?} under {routing:?}: {answer:?}"
                );
            }
        }
    }
    if pinned(routing, None).is_none() {
        assert_split(proxy, routing).await;
    }
    let timeouts = format!("cluster.outbound|9080|v1|{REVIEWS}.upstream_rq_timeout");
    let before = sidecar.counter(&timeouts).await;
    let answer = must_get(proxy, "/hang", None).await;
    assert_eq!(answer.status, 504, "route timeout: {answer:?}");
    // Envoy's local reply for response flag UT.
    assert_eq!(answer.body, "upstream request timeout", "{answer:?}");
    assert_eq!(sidecar.counter(&timeouts).await, before + 1, "{timeouts}");
}

async fn assert_split(proxy: SocketAddr, routing: Routing) {
    let mut seen = BTreeMap::<String, u32>::new();
    for _ in 0..SPLIT_REQUESTS {
        let answer = must_get(proxy, "/reviews/0", None).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        *seen.entry(answer.instance).or_default() += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["reviews-v1", "reviews-v3"],
        "the split reaches both subsets and nothing else: {seen:?}"
    );
    let share = f64::from(seen["reviews-v1"]) / f64::from(SPLIT_REQUESTS);
    let expected = routing.v1 as f64 / (routing.v1 + routing.v3) as f64;
    assert!(
        (SPLIT_BOUNDS.0..=SPLIT_BOUNDS.1).contains(&share) && (0.79..=0.81).contains(&expected),
        "v1 share {share} of {SPLIT_REQUESTS} requests, expected {expected}: {seen:?}"
    );
}

/// Runs the whole table against a productpage sidecar of `kind` over `api_type` ADS, in
/// `127.0.N.0/24`. With `reviews_sidecars`, the reviews pods get sidecars of the same kind too,
/// and every proxy must ACK its own config.
pub async fn run(kind: SidecarKind, api_type: &str, net: u8, reviews_sidecars: bool) {
    let mesh = Bookinfo::start(net).await;
    let Some(sidecar) = Sidecar::start(kind, &mesh.bootstrap(api_type)).await else {
        return;
    };
    let mut others = Vec::new();
    if reviews_sidecars {
        for version in VERSIONS {
            let (node_id, bootstrap) = mesh.reviews_bootstrap(api_type, version);
            let other = Sidecar::start(kind, &bootstrap).await.expect("sidecar");
            others.push((node_id, other));
        }
    }

    // Every type ACKed by every proxy, nothing rejected on either side, the manifests valid.
    let node_id = mesh.node_id();
    let acked = mesh.acked(&node_id, None).await;
    assert_eq!(acked.generate_error, None);
    assert_eq!(mesh.errors().await.trim(), "[]", "the manifests are valid");
    for (other_id, other) in &others {
        let status = mesh.acked(other_id, None).await;
        assert_eq!(status.proxy.labels["app"], "reviews");
        assert_no_rejects(other).await;
    }
    assert_no_rejects(&sidecar).await;

    eprintln!("scenarios: every proxy ACKed; routing through the sidecar");
    let proxy = sidecar.wait_listener("virtualOutbound").await;
    poll_until("reviews through the sidecar", PATIENCE, || async {
        get(proxy, "/", Some(CANARY.user))
            .await
            .filter(|a| a.status == 200)
    })
    .await;
    assert_routing(&sidecar, proxy, CANARY).await;

    // A live edit of the YAML, followed without restarting anything.
    eprintln!("scenarios: canary routing holds; editing the VirtualService");
    let route_version = acked.types[&ResourceType::Route].sent_version.clone();
    mesh.edit_virtual_service(PROMOTED);
    let after = mesh.acked(&node_id, Some(&route_version)).await;
    assert!(after.epoch > acked.epoch);
    assert_eq!(
        after.types[&ResourceType::Cluster].pushes,
        acked.types[&ResourceType::Cluster].pushes,
        "only the routes changed, the clusters were not pushed again"
    );
    // The ACK precedes the route table reaching a worker by a moment.
    poll_until("the edit on the sidecar's worker", PATIENCE, || async {
        let mike = get(proxy, "/", Some(PROMOTED.user)).await?;
        let other = get(proxy, "/", None).await?;
        (mike.instance == "reviews-v2" && other.instance == "reviews-v3").then_some(())
    })
    .await;
    assert_routing(&sidecar, proxy, PROMOTED).await;

    eprintln!("scenarios: the edit is followed; writing a bad edit");
    // A bad edit: refused with an error naming the file, the object and the field; the last
    // accepted VirtualService keeps serving.
    let route_version = after.types[&ResourceType::Route].sent_version.clone();
    mesh.edit_virtual_service(NEGATIVE_WEIGHT);
    let errors = poll_until("the bad edit on /debug/errors", PATIENCE, || async {
        Some(mesh.errors().await).filter(|e| e.contains("reviews-vs.yaml"))
    })
    .await;
    for part in ["VirtualService", "default/reviews", "weight"] {
        assert!(errors.contains(part), "{part} not in {errors}");
    }
    let status = mesh.acked(&node_id, None).await;
    assert_eq!(
        status.types[&ResourceType::Route].sent_version,
        route_version,
        "the served routes did not change"
    );
    assert_routing(&sidecar, proxy, PROMOTED).await;
    assert_no_rejects(&sidecar).await;
    for (_, other) in others {
        other.stop().await;
    }
    sidecar.stop().await;
    mesh.shutdown().await;
}

async fn assert_no_rejects(sidecar: &Sidecar) {
    let rejected = sidecar.rejected_updates().await;
    assert!(
        rejected.is_empty(),
        "rejected: {rejected:?}\n{}",
        sidecar.log()
    );
}
