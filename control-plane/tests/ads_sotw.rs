//! State-of-the-world ADS against the real server on loopback: initial push held until the
//! sources sync, ACK and NACK tracking, pushes limited to the affected proxy, subscription
//! changes, reconnects, and the debug endpoint's view of it all.

#![allow(clippy::unwrap_used)]

mod ads_support;

use ads_support::{AdsClient, Harness, PATIENCE, model, node, service};
use ferry_control::xds::cache::ResourceType;
use xds_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use xds_proto::google::rpc::Status as RpcStatus;
use xds_proto::type_url;

type Client = AdsClient<DiscoveryRequest, DiscoveryResponse>;

impl Client {
    /// Sends a request; the node goes on the first one only, as Istio's sidecars do.
    async fn send(&mut self, ty: &str, names: &[&str], ack: Option<&DiscoveryResponse>) {
        self.send_raw(DiscoveryRequest {
            type_url: ty.into(),
            resource_names: names.iter().map(|n| (*n).into()).collect(),
            version_info: ack.map(|r| r.version_info.clone()).unwrap_or_default(),
            response_nonce: ack.map(|r| r.nonce.clone()).unwrap_or_default(),
            ..Default::default()
        })
        .await;
    }
}

fn names(response: &DiscoveryResponse) -> Vec<String> {
    use prost::Message;
    response
        .resources
        .iter()
        .map(|any| match any.type_url.as_str() {
            type_url::CLUSTER => {
                xds_proto::envoy::config::cluster::v3::Cluster::decode(any.value.as_slice())
                    .unwrap()
                    .name
            }
            type_url::CLUSTER_LOAD_ASSIGNMENT => {
                xds_proto::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
                    any.value.as_slice(),
                )
                .unwrap()
                .cluster_name
            }
            other => other.to_owned(),
        })
        .collect()
}

const REVIEWS: &str = "outbound|80||reviews.default.svc.cluster.local";
const RATINGS: &str = "outbound|80||ratings.default.svc.cluster.local";

#[tokio::test]
async fn initial_push_is_held_until_sync_then_acked_per_type() {
    let h = Harness::start(None).await;
    let n = node("10.0.0.1", "productpage-v1", "default");
    let id = n.id.clone();
    let mut c = Client::connect(&h, n).await;
    c.send(type_url::CLUSTER, &[], None).await;
    // Held: the subscription is recorded, nothing is sent before the initial sync.
    let held = h
        .wait_for(&id, |s| s.types.contains_key(&ResourceType::Cluster))
        .await;
    assert_eq!(held.types[&ResourceType::Cluster].pushes, 0);
    assert_eq!(held.types[&ResourceType::Cluster].subscribed, vec!["*"]);

    h.models
        .send_replace(model(vec![service("reviews", "default", &["10.1.0.1"])]));
    let cds = c.recv().await;
    assert_eq!(cds.type_url, type_url::CLUSTER);
    assert_eq!(names(&cds), vec![REVIEWS]);
    c.send(type_url::CLUSTER, &[], Some(&cds)).await;
    c.send(type_url::CLUSTER_LOAD_ASSIGNMENT, &[REVIEWS], None)
        .await;
    let eds = c.recv().await;
    assert_eq!(names(&eds), vec![REVIEWS]);
    c.send(type_url::CLUSTER_LOAD_ASSIGNMENT, &[REVIEWS], Some(&eds))
        .await;
    c.send(type_url::LISTENER, &[], None).await;
    let lds = c.recv().await;
    assert_eq!(lds.resources.len(), 1);
    c.send(type_url::LISTENER, &[], Some(&lds)).await;
    c.send(type_url::ROUTE_CONFIGURATION, &["80"], None).await;
    let rds = c.recv().await;
    assert_eq!(rds.resources.len(), 1);
    c.send(type_url::ROUTE_CONFIGURATION, &["80"], Some(&rds))
        .await;

    let status = h.wait_for(&id, |s| s.types.len() == 4 && s.synced()).await;
    assert_eq!(
        status.types[&ResourceType::Cluster]
            .acked_version
            .as_deref(),
        Some(cds.version_info.as_str())
    );
    assert_eq!(h.running.server.metrics().pushes(ResourceType::Cluster), 1);

    // The debug endpoint shows the same.
    let (code, syncz) = h.debug_get("/debug/syncz").await;
    assert_eq!(code, 200);
    let syncz: serde_json::Value = serde_json::from_str(&syncz).unwrap();
    assert_eq!(syncz[0]["proxy"], id.as_str());
    assert_eq!(syncz[0]["synced"], true);
    assert_eq!(
        syncz[0]["types"]["CDS"]["acked_version"],
        cds.version_info.as_str()
    );
    let (code, dump) = h
        .debug_get(&format!("/debug/config_dump?proxyID={id}"))
        .await;
    assert_eq!(code, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["configs"]["cds"][0]["resource"]["name"], REVIEWS);
    assert_eq!(
        dump["configs"]["cds"][0]["resource"]["@type"],
        type_url::CLUSTER
    );
    let (code, metrics) = h.debug_get("/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("\npilot_xds_pushes{type=\"cds\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("pilot_xds 1"), "{metrics}");
    assert_eq!(h.debug_get("/ready").await.0, 200);
    assert_eq!(
        h.debug_get("/debug/config_dump?proxyID=nobody").await.0,
        404
    );
}

#[tokio::test]
async fn nack_is_recorded_with_its_error_and_counted() {
    let h = Harness::start(model(vec![service("reviews", "default", &["10.1.0.1"])])).await;
    let n = node("10.0.0.2", "productpage-v1", "default");
    let id = n.id.clone();
    let mut c = Client::connect(&h, n).await;
    c.send(type_url::CLUSTER, &[], None).await;
    let cds = c.recv().await;
    c.send_raw(DiscoveryRequest {
        type_url: type_url::CLUSTER.into(),
        version_info: String::new(),
        response_nonce: cds.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "cluster outbound|80||reviews: bad lb_policy".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let status = h.wait_for_nack(&id, ResourceType::Cluster).await;
    let t = &status.types[&ResourceType::Cluster];
    assert!(
        t.last_nack
            .as_ref()
            .unwrap()
            .error
            .contains("bad lb_policy")
    );
    assert_eq!(t.acked_version, None);
    assert_eq!(t.pending_nonce, None);
    assert_eq!(h.running.server.metrics().rejects(ResourceType::Cluster), 1);
    let (_, syncz) = h.debug_get("/debug/syncz").await;
    assert!(
        syncz.contains("NACKED") && syncz.contains("bad lb_policy"),
        "{syncz}"
    );

    // A stale nonce is ignored; a fixed config is pushed and ACKed, clearing the NACK.
    c.send_raw(DiscoveryRequest {
        type_url: type_url::CLUSTER.into(),
        response_nonce: "stale".into(),
        ..Default::default()
    })
    .await;
    h.models.send_replace(model(vec![
        service("reviews", "default", &["10.1.0.1"]),
        service("ratings", "default", &["10.1.0.2"]),
    ]));
    let fixed = c.recv().await;
    assert_eq!(names(&fixed), vec![RATINGS, REVIEWS]);
    c.send(type_url::CLUSTER, &[], Some(&fixed)).await;
    let status = h.wait_for(&id, |s| s.synced()).await;
    assert_eq!(status.types[&ResourceType::Cluster].last_nack, None);
}

#[tokio::test]
async fn model_change_is_pushed_only_to_the_affected_proxy() {
    let h = Harness::start(model(vec![
        service("reviews", "default", &["10.1.0.1"]),
        service("db", "other", &["10.2.0.1"]),
    ]))
    .await;
    let (na, nb) = (
        node("10.0.0.3", "a", "default"),
        node("10.0.0.4", "b", "other"),
    );
    let (ida, idb) = (na.id.clone(), nb.id.clone());
    let mut a = Client::connect(&h, na).await;
    let mut b = Client::connect(&h, nb).await;
    for c in [&mut a, &mut b] {
        c.send(type_url::CLUSTER, &[], None).await;
        let cds = c.recv().await;
        c.send(type_url::CLUSTER, &[], Some(&cds)).await;
    }
    h.wait_for(&idb, |s| s.synced()).await;

    // A new service in `default` changes only proxy a's clusters: b processes the same epoch
    // and is sent nothing.
    h.models.send_replace(model(vec![
        service("reviews", "default", &["10.1.0.1"]),
        service("ratings", "default", &["10.1.0.9"]),
        service("db", "other", &["10.2.0.1"]),
    ]));
    let cds = a.recv().await;
    assert_eq!(names(&cds), vec![RATINGS, REVIEWS]);
    let epoch = h.wait_for(&ida, |s| s.epoch >= 2).await.epoch;
    let b_status = h.wait_for(&idb, |s| s.epoch >= epoch).await;
    assert_eq!(
        b_status.types[&ResourceType::Cluster].pushes,
        1,
        "b was not pushed"
    );
    assert!(b_status.synced());
}

#[tokio::test]
async fn eds_subscription_changes_and_reconnect_get_full_state() {
    let h = Harness::start(model(vec![
        service("reviews", "default", &["10.1.0.1"]),
        service("ratings", "default", &["10.1.0.2"]),
    ]))
    .await;
    let n = node("10.0.0.5", "p", "default");
    let id = n.id.clone();
    let mut c = Client::connect(&h, n.clone()).await;
    c.send(type_url::CLUSTER_LOAD_ASSIGNMENT, &[REVIEWS], None)
        .await;
    let first = c.recv().await;
    assert_eq!(names(&first), vec![REVIEWS]);
    // The ACK carries a new set of names: the answer has the new set.
    c.send(
        type_url::CLUSTER_LOAD_ASSIGNMENT,
        &[REVIEWS, RATINGS],
        Some(&first),
    )
    .await;
    let second = c.recv().await;
    assert_eq!(names(&second), vec![RATINGS, REVIEWS]);
    c.send(
        type_url::CLUSTER_LOAD_ASSIGNMENT,
        &[REVIEWS, RATINGS],
        Some(&second),
    )
    .await;
    h.wait_for(&id, |s| s.synced()).await;

    drop(c);
    h.wait_disconnected().await;
    let mut again = Client::connect(&h, n).await;
    again.send(type_url::CLUSTER, &[], None).await;
    let cds = again.recv().await;
    assert_eq!(names(&cds), vec![RATINGS, REVIEWS]);
    assert_eq!(h.running.server.registry().list().len(), 1);
}

#[tokio::test]
async fn malformed_node_is_refused_with_the_reason() {
    let h = Harness::start(model(vec![])).await;
    let mut bad = node("10.0.0.6", "p", "default");
    bad.id = "not-an-istio-id".into();
    let mut c = Client::connect(&h, bad).await;
    c.send(type_url::CLUSTER, &[], None).await;
    let status = tokio::time::timeout(PATIENCE, c.responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("not-an-istio-id"), "{status}");
    assert!(h.running.server.registry().list().is_empty());
}

#[tokio::test]
async fn validation_errors_are_visible_on_the_debug_endpoint() {
    let h = Harness::start(model(vec![])).await;
    let error = ferry_control::model::ModelError::document("bad.yaml#0", "must be >= 0")
        .object("VirtualService", "default/reviews")
        .field("spec.http[0].route[0].weight");
    h.errors.send_replace(std::sync::Arc::new(vec![error]));
    let (code, body) = h.debug_get("/debug/errors").await;
    assert_eq!(code, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body[0]["field"], "spec.http[0].route[0].weight");
    assert_eq!(body[0]["name"], "default/reviews");
    assert_eq!(body[0]["reason"], "must be >= 0");
    tokio::time::timeout(PATIENCE, async {
        while !h
            .debug_get("/metrics")
            .await
            .1
            .contains("ferry_config_validation_errors 1")
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn security_policies_are_reported_as_not_enforced() {
    use ferry_control::api::{AuthorizationPolicy, PeerAuthentication};
    use ferry_control::model::Config;
    let h = Harness::start(model(vec![])).await;
    let (_, body) = h.debug_get("/debug/warnings").await;
    assert_eq!(body.trim(), "[]");
    let mut with_policies = ferry_control::model::Model::default();
    with_policies.peer_authentications.push(Config {
        name: "strict".into(),
        namespace: "shop".into(),
        origin: "mesh/security.yaml#0".into(),
        spec: PeerAuthentication::default(),
    });
    with_policies.authorization_policies.push(Config {
        name: "deny-all".into(),
        namespace: "shop".into(),
        origin: "mesh/security.yaml#1".into(),
        spec: AuthorizationPolicy::default(),
    });
    h.models
        .send_replace(Some(std::sync::Arc::new(with_policies)));
    let body = tokio::time::timeout(PATIENCE, async {
        loop {
            let (code, body) = h.debug_get("/debug/warnings").await;
            assert_eq!(code, 200);
            if body.trim() != "[]" {
                return body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body[0]["kind"], "PeerAuthentication");
    assert_eq!(body[0]["name"], "shop/strict");
    assert_eq!(body[1]["kind"], "AuthorizationPolicy");
    assert_eq!(body[1]["origin"], "mesh/security.yaml#1");
    for warning in body.as_array().unwrap() {
        let reason = warning["reason"].as_str().unwrap();
        assert!(reason.starts_with("accepted but not enforced"), "{reason}");
    }
    let (_, metrics) = h.debug_get("/metrics").await;
    assert!(
        metrics.contains("ferry_config_unenforced_objects 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_panicking_generator_costs_an_update_not_the_connection() {
    let h = Harness::start(model(vec![service("reviews", "default", &["10.1.0.1"])])).await;
    let n = node("10.0.0.7", "p", "default");
    let id = n.id.clone();
    let mut c = Client::connect(&h, n).await;
    c.send(type_url::CLUSTER, &[], None).await;
    let cds = c.recv().await;
    c.send(type_url::CLUSTER, &[], Some(&cds)).await;
    h.models
        .send_replace(model(vec![service("boom", "default", &[])]));
    let status = h.wait_for(&id, |s| s.generate_error.is_some()).await;
    assert!(status.generate_error.unwrap().contains("panicked"));
    h.models.send_replace(model(vec![
        service("reviews", "default", &["10.1.0.1"]),
        service("ratings", "default", &["10.1.0.2"]),
    ]));
    let cds = c.recv().await;
    assert_eq!(names(&cds), vec![RATINGS, REVIEWS]);
    assert_eq!(
        h.wait_for(&id, |s| s.generate_error.is_none())
            .await
            .types
            .len(),
        1
    );
}
