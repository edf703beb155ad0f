//! The scenarios' mesh: Bookinfo's `reviews` (three versions as Pods on `127.0.N.2-4`, each a
//! real echo server on its pod address), a DestinationRule with a subset per version, the
//! VirtualService the steps edit, and ferry-control serving them from a temporary directory.

use std::net::SocketAddr;

use ferry_control::xds::cache::ResourceType;
use ferry_control::xds::connection::ConnectionStatus;

use super::control_plane::{ControlPlane, pod};
use crate::envoy::{self, Pod};
use crate::poll::{PATIENCE, poll_until};
use crate::upstream::Upstream;

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
pub(super) const REVIEWS: &str = "reviews.default.svc.cluster.local";

/// The reviews versions, each a pod at `127.0.N.(index + 2)`.
pub const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];

/// ferry-control serving the Bookinfo manifests of one `127.0.N.0/24`, with the reviews pods.
pub struct Bookinfo {
    net: u8,
    /// ferry-control, in-process, on the manifests' directory.
    pub control: ControlPlane,
    _pods: Vec<Upstream>,
}

impl Bookinfo {
    /// Starts the reviews pods on `127.0.N.2-4`, writes the manifests (with [`CANARY`]) and
    /// starts ferry-control in local mode on them.
    pub async fn start(net: u8) -> Bookinfo {
        let (pods, port) = reviews_pods(net).await;
        let control = ControlPlane::start(&manifests(net, port)).await;
        Bookinfo {
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
            self.control.xds_address(),
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
            envoy::pod_bootstrap(api_type, &node_id, &ip, &pod, self.control.xds_address());
        (node_id, bootstrap)
    }

    /// Replaces the VirtualService's file as editors and `kubectl`-style tools do: written aside
    /// and renamed in, so the source never reads a half-written file (hidden files are not read).
    pub fn edit_virtual_service(&self, routing: Routing) {
        let staged = self.control.dir().join(".reviews-vs.yaml.tmp");
        std::fs::write(&staged, virtual_service(routing)).expect("write the edit");
        std::fs::rename(&staged, self.control.dir().join("reviews-vs.yaml")).expect("rename");
    }

    /// Waits until the proxy `node_id` ACKed every type with no NACK, optionally with a route
    /// version other than `not_route_version`.
    pub async fn acked(&self, node_id: &str, not_route_version: Option<&str>) -> ConnectionStatus {
        let registry = self.control.running().server.registry();
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
        self.control.errors().await
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

/// The manifests (file name, YAML) of the mesh in `127.0.N.0/24`, the reviews pods on `port`.
fn manifests(net: u8, port: u16) -> Vec<(&'static str, String)> {
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
        reviews.push_str("---\n");
        reviews.push_str(&pod(&name, "reviews", v, &ip, "bookinfo-reviews"));
    }
    let productpage = pod(
        "productpage-v1",
        "productpage",
        "v1",
        &format!("127.0.{net}.10"),
        "bookinfo-productpage",
    );
    vec![
        ("reviews.yaml", reviews),
        ("productpage.yaml", productpage),
        ("reviews-dr.yaml", DESTINATION_RULE.to_owned()),
        ("reviews-vs.yaml", virtual_service(CANARY)),
    ]
}
