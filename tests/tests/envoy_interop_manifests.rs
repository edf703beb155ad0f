//! The whole control path against a real Envoy 1.40: a directory of Istio and Kubernetes
//! manifests (Bookinfo's reviews with three versions, a DestinationRule, a VirtualService) ->
//! directory source -> model -> translator (local mode) -> ADS, over state-of-the-world and
//! delta. Envoy must ACK every resource of every type and run the scenario table of
//! [`ferry_tests::scenarios`]: header match, 80/20 split, timeout, a live edit of the YAML and a
//! refused bad edit. `tests/tests/mesh_e2e.rs` holds ferry-proxy to the same table.

use ferry_tests::scenarios::{self, SidecarKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_serves_manifests_over_sotw_ads() {
    scenarios::run(SidecarKind::Envoy, "GRPC", 44, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_serves_manifests_over_delta_ads() {
    scenarios::run(SidecarKind::Envoy, "DELTA_GRPC", 45, false).await;
}
