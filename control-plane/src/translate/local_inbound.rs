//! Local mode, sidecar to sidecar: a pod labelled `sidecar.istio.io/inject: "true"` (Istio's
//! per-pod opt-in to injection) has a sidecar in front of it, so peers reach its HTTP ports
//! through that sidecar's `virtualInbound` (`INSTANCE_IP:15006`) instead of the application,
//! and requests cross both sidecars as they do in a cluster (and both report spans).
//!
//! Without iptables there is no original destination port, so the inbound side chooses the
//! workload port by the request's `Host` port: the `15006` filter chain of `virtualInbound`
//! (a black hole in Istio, where nothing connects to 15006 directly) becomes an HTTP connection
//! manager with one virtual host per served HTTP port. Pods without the label keep being
//! reached directly, as before. Applied as passes over the finished resources; only in local
//! mode.

use std::collections::BTreeSet;

use xds_proto::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use xds_proto::envoy::config::listener::v3::Listener;
use xds_proto::envoy::config::route::v3::{
    Decorator, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route,
    route_action, route_match,
};

use super::envoy::seconds;
use super::filter_chain::{HcmProfile, Routes, http_connection_manager};
use super::listener::is_http;
use super::names::{self, VIRTUAL_INBOUND, VIRTUAL_INBOUND_PORT};
use super::scope::Scope;

/// The label that marks a pod with a sidecar.
pub const INJECT_LABEL: &str = "sidecar.istio.io/inject";

/// Points the EDS endpoints of sidecar pods' HTTP ports at their sidecar's `virtualInbound`.
pub fn redirect_endpoints(scope: &Scope<'_>, assignments: &mut [ClusterLoadAssignment]) {
    let mut sidecar_pods: BTreeSet<&str> = BTreeSet::new();
    for service in scope.model.services.values() {
        for e in &service.endpoints {
            if e.labels.get(INJECT_LABEL).is_some_and(|v| v == "true") {
                sidecar_pods.insert(e.address.as_str());
            }
        }
    }
    if sidecar_pods.is_empty() {
        return;
    }
    for assignment in assignments {
        // `outbound|PORT|SUBSET|HOST`
        let mut parts = assignment.cluster_name.split('|');
        let (Some("outbound"), Some(port), Some(_), Some(host)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let http = scope.model.services.get(host).is_some_and(|s| {
            s.ports
                .iter()
                .any(|p| p.port.to_string() == port && is_http(p.protocol))
        });
        if !http {
            continue;
        }
        for locality in &mut assignment.endpoints {
            for lb in &mut locality.lb_endpoints {
                let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &mut lb.host_identifier
                else {
                    continue;
                };
                let Some(address) = endpoint.address.as_mut() else {
                    continue;
                };
                let Some(xds_proto::envoy::config::core::v3::address::Address::SocketAddress(sa)) =
                    address.address.as_mut()
                else {
                    continue;
                };
                if sidecar_pods.contains(sa.address.as_str()) {
                    sa.port_specifier = Some(
                        xds_proto::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                            u32::from(VIRTUAL_INBOUND_PORT),
                        ),
                    );
                }
            }
        }
    }
}

/// The inline routes of the `15006` chain: one virtual host per served HTTP port.
fn routes(scope: &Scope<'_>) -> Option<RouteConfiguration> {
    let mut virtual_hosts = Vec::new();
    let mut seen = BTreeSet::new();
    let targets: Vec<_> = scope
        .inbound_targets()
        .into_iter()
        .filter(|t| is_http(t.port.protocol))
        .filter(|t| {
            t.endpoint
                .labels
                .get(INJECT_LABEL)
                .is_some_and(|v| v == "true")
        })
        .collect();
    let single = targets
        .iter()
        .map(|t| t.port.port)
        .collect::<BTreeSet<_>>()
        .len()
        == 1;
    for target in targets {
        if !seen.insert(target.port.port) {
            continue;
        }
        let cluster = names::inbound_cluster(target.target_port);
        let domains = if single {
            vec!["*".to_owned()]
        } else {
            vec![format!("*:{}", target.port.port)]
        };
        virtual_hosts.push(VirtualHost {
            name: format!("inbound|http|{}", target.port.port),
            domains,
            routes: vec![Route {
                name: "default".to_owned(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
                    timeout: Some(seconds(0)),
                    ..Default::default()
                })),
                decorator: Some(Decorator {
                    operation: format!("{}:{}/*", target.service.hostname, target.port.port),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    (!virtual_hosts.is_empty()).then(|| RouteConfiguration {
        name: format!("inbound|{VIRTUAL_INBOUND_PORT}||"),
        virtual_hosts,
        ..Default::default()
    })
}

/// Serves HTTP on `virtualInbound`'s own port for the labelled pod's HTTP ports (see the
/// module doc).
pub fn serve_on_virtual_inbound(scope: &Scope<'_>, listeners: &mut [Listener]) {
    let Some(routes) = routes(scope) else {
        return;
    };
    let Some(listener) = listeners.iter_mut().find(|l| l.name == VIRTUAL_INBOUND) else {
        return;
    };
    let port = u32::from(VIRTUAL_INBOUND_PORT);
    let Some(chain) = listener.filter_chains.iter_mut().find(|c| {
        c.filter_chain_match
            .as_ref()
            .and_then(|m| m.destination_port.as_ref())
            .is_some_and(|p| p.value == port)
    }) else {
        return;
    };
    chain.name = format!("virtualInbound-local-http-{port}");
    chain.filters = vec![http_connection_manager(
        &format!("inbound_0.0.0.0_{port}"),
        Routes::Inline(Box::new(routes)),
        HcmProfile::minimal_for(&[]),
    )];
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::super::tests::{bookinfo, productpage};
    use super::super::{Options, generate};
    use super::INJECT_LABEL;
    use crate::model::proxy::ProxyNode;

    fn labelled() -> crate::model::Model {
        let mut model = bookinfo();
        for s in model.services.values_mut() {
            if s.name == "reviews" {
                for e in &mut s.endpoints {
                    e.labels.insert(INJECT_LABEL.into(), "true".into());
                }
            }
        }
        model
    }

    fn ports(out: &super::super::Generated, cluster: &str) -> Vec<u64> {
        let a = out
            .endpoints
            .iter()
            .find(|a| a.cluster_name == cluster)
            .unwrap();
        let v = xds_proto::json::to_value(a).unwrap();
        v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|l| l["lb_endpoints"].as_array().unwrap().clone())
            .map(|e| {
                e["endpoint"]["address"]["socket_address"]["port_value"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn sidecar_pods_are_reached_through_their_virtual_inbound_in_local_mode() {
        let out = generate(&labelled(), &productpage(), &Options::local_mesh());
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let reviews = "outbound|9080||reviews.default.svc.cluster.local";
        assert_eq!(ports(&out, reviews), [15006, 15006, 15006]);
        assert_eq!(
            ports(&out, "outbound|9080||ratings.default.svc.cluster.local"),
            [9080]
        );
        // Outside local mode nothing changes.
        let istio = generate(&labelled(), &productpage(), &Options::default());
        assert_eq!(ports(&istio, reviews), [9080, 9080, 9080]);
    }

    #[test]
    fn the_sidecar_pod_serves_http_on_15006_routed_to_its_workload() {
        let reviews = ProxyNode {
            id: "sidecar~10.1.0.21~reviews-v1.default~default.svc.cluster.local".into(),
            kind: "sidecar".into(),
            ips: vec!["10.1.0.21".parse().unwrap()],
            pod: "reviews-v1".into(),
            namespace: "default".into(),
            labels: [("app", "reviews"), ("version", "v1")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
            service_account: "bookinfo-reviews".into(),
        };
        let out = generate(&labelled(), &reviews, &Options::local_mesh());
        let inbound = out
            .listeners
            .iter()
            .find(|l| l.name == "virtualInbound")
            .unwrap();
        let v = xds_proto::json::to_value(inbound).unwrap();
        let chain: &Value = v["filter_chains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["filter_chain_match"]["destination_port"] == 15006)
            .unwrap();
        let hcm = &chain["filters"][0]["typed_config"];
        assert_eq!(hcm["stat_prefix"], "inbound_0.0.0.0_15006");
        let route = &hcm["route_config"]["virtual_hosts"][0]["routes"][0];
        assert_eq!(route["route"]["cluster"], "inbound|9080||");
        // Unlabelled pods keep Istio's black hole there.
        let plain = generate(&bookinfo(), &reviews, &Options::local_mesh());
        let v = xds_proto::json::to_value(
            plain
                .listeners
                .iter()
                .find(|l| l.name == "virtualInbound")
                .unwrap(),
        )
        .unwrap();
        let chain = v["filter_chains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["filter_chain_match"]["destination_port"] == 15006)
            .unwrap()
            .clone();
        assert_eq!(
            chain["filters"][0]["name"],
            "envoy.filters.network.tcp_proxy"
        );
    }
}
