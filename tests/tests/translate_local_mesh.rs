//! ferry-control's local-mode output for `samples/local-mesh` (what `scripts/local-mesh` runs)
//! is accepted by ferry-proxy's own xDS conversions, resource by resource, for every sidecar of
//! the sample: what the local mesh serves must never be NACKed by the proxy it runs.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;

use ferry_control::model::proxy::ProxyNode;
use ferry_control::source::dir::model_from_dir;
use ferry_control::translate::{Options, generate};

fn proxy(pod: &str, ip: &str, labels: &[(&str, &str)], sa: &str) -> ProxyNode {
    ProxyNode {
        id: format!("sidecar~{ip}~{pod}.default~default.svc.cluster.local"),
        kind: "sidecar".into(),
        ips: vec![ip.parse().unwrap()],
        pod: pod.into(),
        namespace: "default".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        service_account: sa.into(),
    }
}

#[test]
fn ferry_proxy_accepts_the_local_mesh_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/local-mesh");
    let (model, errors) = model_from_dir(&dir).unwrap();
    assert!(errors.is_empty(), "{errors:#?}");
    let proxies = [
        proxy(
            "client",
            "127.0.0.10",
            &[("app", "client"), ("version", "v1")],
            "client",
        ),
        proxy(
            "reviews-v1",
            "127.0.0.2",
            &[("app", "reviews"), ("version", "v1")],
            "bookinfo-reviews",
        ),
        proxy(
            "reviews-v2",
            "127.0.0.3",
            &[("app", "reviews"), ("version", "v2")],
            "bookinfo-reviews",
        ),
    ];
    for node in &proxies {
        let out = generate(&model, node, &Options::local_mesh());
        assert!(out.errors.is_empty(), "{}: {:?}", node.pod, out.errors);
        assert!(
            !out.routes.is_empty() && !out.clusters.is_empty(),
            "{}",
            node.pod
        );
        for l in &out.listeners {
            if let Err(e) = ferry_proxy::listener::Listener::try_from(l) {
                panic!("{}: listener {} refused: {e}", node.pod, l.name);
            }
        }
        for r in &out.routes {
            if let Err(e) = ferry_proxy::route::RouteTable::try_from(r) {
                panic!("{}: route configuration {} refused: {e}", node.pod, r.name);
            }
        }
        for c in &out.clusters {
            if let Err(e) = ferry_proxy::cluster::ClusterConfig::try_from(c) {
                panic!("{}: cluster {} refused: {e}", node.pod, c.name);
            }
        }
        for a in &out.endpoints {
            if let Err(e) = ferry_proxy::cluster::LoadAssignment::try_from(a) {
                panic!("{}: assignment {} refused: {e}", node.pod, a.cluster_name);
            }
        }
    }
}
