//! The Bookinfo table: one list of mesh steps every sidecar ferry-control serves is held to. The
//! real Envoy (`tests/tests/envoy_interop_manifests.rs`) and ferry-proxy
//! (`tests/tests/mesh_e2e.rs`) run the very same steps against the same manifests, so a
//! difference between them is a failing test, not a matter of which test was written.
//!
//! The Bookinfo mesh: ferry-control in local mode serving a temporary directory of Istio and
//! Kubernetes manifests (Bookinfo's `reviews` with three versions as Pods on `127.0.N.2-4`, a
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

use ferry_control::xds::cache::ResourceType;
use http::Method;

use super::bookinfo::REVIEWS;
use super::{Bookinfo, CANARY, NEGATIVE_WEIGHT, PROMOTED, Routing, Sidecar, SidecarKind, VERSIONS};
use crate::net::{self, Protocol};
use crate::poll::{PATIENCE, poll_until};

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

/// Asserts `routing`'s behaviour through `sidecar`: the header match, the pinned or split
/// default route, and the timeout (504, counted as the cluster's `upstream_rq_timeout`: response
/// flag UT).
pub async fn assert_routing(sidecar: &Sidecar, routing: Routing) {
    let proxy = sidecar.outbound();
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
    let proxy = sidecar.outbound();
    poll_until("reviews through the sidecar", PATIENCE, || async {
        get(proxy, "/", Some(CANARY.user))
            .await
            .filter(|a| a.status == 200)
    })
    .await;
    assert_routing(&sidecar, CANARY).await;

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
    assert_routing(&sidecar, PROMOTED).await;

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
    assert_routing(&sidecar, PROMOTED).await;
    assert_no_rejects(&sidecar).await;
    drop(others);
    drop(sidecar);
    drop(mesh);
}

async fn assert_no_rejects(sidecar: &Sidecar) {
    let rejected = sidecar.rejected_updates().await;
    assert!(
        rejected.is_empty(),
        "rejected: {rejected:?}\n{}",
        sidecar.log()
    );
}
