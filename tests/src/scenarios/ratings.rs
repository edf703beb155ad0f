//! The resilience scenarios' mesh: a client pod whose sidecar sends the requests, and
//! `ratings.mesh.test`, a `ServiceEntry` on port 9080 whose endpoints are test upstreams (chaos
//! upstreams that misbehave on command), with the VirtualService rule and the DestinationRule
//! traffic policy under test. `resilience_istio.rs` runs it with ferry-proxy,
//! `resilience_differential.rs` with Envoy and ferry-proxy alike.

use std::net::SocketAddr;

use super::{ControlPlane, Sidecar, SidecarKind, client_pod, service_entry};

/// The service under test.
pub const HOST: &str = "ratings.mesh.test";
/// Its authority, as the client sends it.
pub const AUTHORITY: &str = "ratings.mesh.test:9080";
/// Its cluster, as Istio names it.
pub const CLUSTER: &str = "outbound|9080||ratings.mesh.test";

/// The ratings VirtualService with one `http` rule (`http`, the text after `- `, routes
/// included).
pub fn virtual_service(http: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [{HOST}]
  http:
  - {http}
"#
    )
}

/// The ratings DestinationRule with `traffic_policy` (a YAML flow mapping).
pub fn destination_rule(traffic_policy: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings, namespace: default}}
spec:
  host: {HOST}
  trafficPolicy: {traffic_policy}
"#
    )
}

/// ferry-control on the ratings manifests (plus `extra`, file name and YAML) and the client's
/// sidecar of `kind` on `127.0.{net}.10`, ready to route to every address of `endpoints`. The
/// manifests must be valid: a scenario on a refused rule would test nothing. `None` when Envoy
/// is wanted but missing outside CI.
pub async fn mesh(
    kind: SidecarKind,
    net: u8,
    endpoints: &[SocketAddr],
    http: &str,
    traffic_policy: &str,
    extra: Vec<(&'static str, String)>,
) -> Option<(ControlPlane, Sidecar)> {
    let ip = format!("127.0.{net}.10");
    let mut manifests = vec![
        ("client.yaml", client_pod(&ip)),
        ("ratings-se.yaml", service_entry("ratings", HOST, endpoints)),
        ("ratings-vs.yaml", virtual_service(http)),
        ("ratings-dr.yaml", destination_rule(traffic_policy)),
    ];
    manifests.extend(extra);
    let control = ControlPlane::start(&manifests).await;
    let errors = control.errors().await;
    assert_eq!(errors.trim(), "[]", "the manifests are valid: {errors}");
    let sidecar = Sidecar::client(kind, &control, &ip).await?;
    for addr in endpoints {
        sidecar.wait_endpoint(CLUSTER, *addr).await;
    }
    Some((control, sidecar))
}
