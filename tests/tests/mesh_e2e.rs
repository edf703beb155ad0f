//! ferry-proxy connected to ferry-control, end to end: a temporary directory of Istio and
//! Kubernetes manifests served in local mode, sidecars for productpage and every reviews pod on
//! their own `127.0.N.x` instance IPs, real upstream servers on the pods' addresses, over
//! state-of-the-world and delta ADS. The productpage sidecar runs the scenario table of
//! [`ferry_tests::scenarios`], the same table the real Envoy is held to in
//! `tests/tests/envoy_interop_manifests.rs`: header match, 80/20 split within statistical bounds,
//! a VirtualService timeout answered 504, a live edit of the YAML (0/100 and another header
//! match) followed without a restart, and a bad edit that leaves the served config as it was.

use ferry_tests::scenarios::{self, SidecarKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_proxy_follows_ferry_control_over_sotw_ads() {
    scenarios::run(SidecarKind::Ferry, "GRPC", 71, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_proxy_follows_ferry_control_over_delta_ads() {
    scenarios::run(SidecarKind::Ferry, "DELTA_GRPC", 72, true).await;
}
