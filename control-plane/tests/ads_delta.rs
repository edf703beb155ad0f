//! Delta ADS against the real server on loopback: initial wildcard and named subscriptions,
//! incremental pushes with removals, subscribe/unsubscribe, NACK tracking, and reconnects that
//! honour `initial_resource_versions`.

#![allow(clippy::unwrap_used)]

mod ads_support;

use std::collections::HashMap;

use ads_support::{AdsClient, Harness, model, node, service};
use ferry_control::xds::cache::ResourceType;
use xds_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use xds_proto::google::rpc::Status as RpcStatus;
use xds_proto::type_url;

type Client = AdsClient<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

impl Client {
    async fn subscribe(&mut self, ty: &str, names: &[&str]) {
        self.send_raw(DeltaDiscoveryRequest {
            type_url: ty.into(),
            resource_names_subscribe: names.iter().map(|n| (*n).into()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn ack(&mut self, response: &DeltaDiscoveryResponse) {
        self.send_raw(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
}

fn names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
    response.resources.iter().map(|r| r.name.as_str()).collect()
}

const REVIEWS: &str = "outbound|80||reviews.default.svc.cluster.local";
const RATINGS: &str = "outbound|80||ratings.default.svc.cluster.local";

#[tokio::test]
async fn wildcard_and_named_initial_push_then_incremental_changes() {
    let h = Harness::start(model(vec![
        service("reviews", "default", &["10.1.0.1"]),
        service("ratings", "default", &["10.1.0.2"]),
    ]))
    .await;
    let n = node("10.0.0.1", "productpage-v1", "default");
    let id = n.id.clone();
    let mut c = Client::connect(&h, n).await;
    c.subscribe(type_url::CLUSTER, &[]).await;
    let cds = c.recv().await;
    assert_eq!(names(&cds), vec![RATINGS, REVIEWS]);
    assert!(cds.resources.iter().all(|r| !r.version.is_empty()));
    c.ack(&cds).await;
    c.subscribe(type_url::CLUSTER_LOAD_ASSIGNMENT, &[REVIEWS, RATINGS])
        .await;
    let eds = c.recv().await;
    assert_eq!(names(&eds), vec![RATINGS, REVIEWS]);
    c.ack(&eds).await;
    let status = h.wait_for(&id, |s| s.types.len() == 2 && s.synced()).await;
    assert_eq!(
        status.types[&ResourceType::Cluster].subscribed,
        vec!["*".to_owned()]
    );

    // ratings' endpoints change and reviews goes away: EDS carries only ratings and names
    // reviews as removed; CDS only the removal.
    h.models
        .send_replace(model(vec![service("ratings", "default", &["10.1.0.3"])]));
    let cds = c.recv().await;
    assert_eq!(cds.type_url, type_url::CLUSTER);
    assert!(cds.resources.is_empty());
    assert_eq!(cds.removed_resources, vec![REVIEWS]);
    let eds = c.recv().await;
    assert_eq!(eds.type_url, type_url::CLUSTER_LOAD_ASSIGNMENT);
    assert_eq!(names(&eds), vec![RATINGS]);
    assert_eq!(eds.removed_resources, vec![REVIEWS]);
    c.ack(&cds).await;
    c.ack(&eds).await;
    h.wait_for(&id, |s| s.synced()).await;
}

#[tokio::test]
async fn subscribe_unknown_and_unsubscribe() {
    let h = Harness::start(model(vec![service("reviews", "default", &["10.1.0.1"])])).await;
    let n = node("10.0.0.2", "p", "default");
    let id = n.id.clone();
    let mut c = Client::connect(&h, n).await;
    c.subscribe(type_url::ROUTE_CONFIGURATION, &["80", "9999"])
        .await;
    let rds = c.recv().await;
    assert_eq!(names(&rds), vec!["80"]);
    assert_eq!(
        rds.removed_resources,
        vec!["9999"],
        "unknown names are reported"
    );
    c.ack(&rds).await;
    c.send_raw(DeltaDiscoveryRequest {
        type_url: type_url::ROUTE_CONFIGURATION.into(),
        resource_names_unsubscribe: vec!["80".into()],
        ..Default::default()
    })
    .await;
    let status = h
        .wait_for(&id, |s| {
            s.types[&ResourceType::Route].subscribed == vec!["9999".to_owned()]
        })
        .await;
    assert!(status.synced());
    // Unsubscribed: a change to route 80 is not sent; the next message is the subscription's.
    h.models.send_replace(model(vec![
        service("reviews", "default", &["10.1.0.1"]),
        service("ratings", "default", &["10.1.0.2"]),
    ]));
    let epoch = h.wait_for(&id, |s| s.epoch >= 2).await;
    assert_eq!(epoch.types[&ResourceType::Route].pushes, 1);
    c.subscribe(type_url::ROUTE_CONFIGURATION, &["80"]).await;
    let rds = c.recv().await;
    assert_eq!(names(&rds), vec!["80"]);
}

#[tokio::test]
async fn nack_is_recorded_and_reconnect_skips_what_the_proxy_has() {
    let h = Harness::start(model(vec![
        service("reviews", "default", &["10.1.0.1"]),
        service("ratings", "default", &["10.1.0.2"]),
    ]))
    .await;
    let n = node("10.0.0.3", "p", "default");
    let id = n.id.clone();
    let mut c = Client::connect(&h, n.clone()).await;
    c.subscribe(type_url::CLUSTER, &[]).await;
    let cds = c.recv().await;
    c.send_raw(DeltaDiscoveryRequest {
        type_url: type_url::CLUSTER.into(),
        response_nonce: cds.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "unknown field".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let status = h.wait_for_nack(&id, ResourceType::Cluster).await;
    assert_eq!(
        status.types[&ResourceType::Cluster]
            .last_nack
            .as_ref()
            .unwrap()
            .error,
        "unknown field"
    );
    assert_eq!(h.running.server.metrics().rejects(ResourceType::Cluster), 1);

    // Reconnect holding reviews at its current version and ratings at an old one: only ratings
    // is sent.
    drop(c);
    h.wait_disconnected().await;
    let versions: HashMap<String, String> = cds
        .resources
        .iter()
        .map(|r| {
            let v = if r.name == RATINGS { "old" } else { &r.version };
            (r.name.clone(), v.to_owned())
        })
        .collect();
    let mut again = Client::connect(&h, n).await;
    again
        .send_raw(DeltaDiscoveryRequest {
            type_url: type_url::CLUSTER.into(),
            initial_resource_versions: versions,
            ..Default::default()
        })
        .await;
    let cds = again.recv().await;
    assert_eq!(names(&cds), vec![RATINGS]);
    assert!(cds.removed_resources.is_empty());
    again.ack(&cds).await;
    h.wait_for(&id, |s| s.synced()).await;
}
