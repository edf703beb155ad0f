//! VirtualService `tcp[]` and `tls[]` rules: where a TCP proxy sends an opaque service's
//! connections (one cluster, or weighted clusters), and per-SNI filter chains for TLS services.
//! Without a rule, connections go to the service's own cluster.

use xds_proto::envoy::config::listener::v3::{FilterChain, FilterChainMatch};

use crate::api::VirtualService;
use crate::api::virtual_service::{RouteDestination, TlsMatchAttributes};
use crate::model::{Config, Service};

use super::TranslateError;
use super::filter_chain::{TcpTarget, tcp_proxy};
use super::names;
use super::scope::Scope;

fn object(vs: &Config<VirtualService>) -> String {
    format!("VirtualService {}/{}", vs.namespace, vs.name)
}

fn selects(
    scope: &Scope<'_>,
    port: u16,
    match_port: Option<u32>,
    labels: &std::collections::BTreeMap<String, String>,
    gateways: &[String],
    source_namespace: Option<&String>,
) -> bool {
    match_port.is_none_or(|p| p == u32::from(port))
        && labels
            .iter()
            .all(|(k, v)| scope.proxy.labels.get(k) == Some(v))
        && (gateways.is_empty() || gateways.iter().any(|g| g == "mesh"))
        && source_namespace.is_none_or(|ns| *ns == scope.proxy.namespace)
}

fn destinations(
    scope: &Scope<'_>,
    vs: &Config<VirtualService>,
    route: &[RouteDestination],
    port: u16,
    field: &str,
) -> Result<TcpTarget, TranslateError> {
    let mut out = Vec::new();
    for (i, d) in route.iter().enumerate() {
        let host = names::resolve_host(scope.model, &d.destination.host, &vs.namespace);
        let port = match d.destination.port.map(|p| p.number) {
            Some(n) => u16::try_from(n).map_err(|_| {
                TranslateError::new(
                    object(vs),
                    format!("{field}.route[{i}].destination.port"),
                    "port out of range",
                )
            })?,
            None => match scope.model.services.get(&host) {
                Some(s) if s.ports.len() == 1 => s.ports[0].port,
                _ => port,
            },
        };
        let weight = u32::try_from(d.weight.unwrap_or(0)).unwrap_or(0);
        if route.len() > 1 && weight == 0 {
            continue;
        }
        out.push((
            names::outbound_cluster(port, d.destination.subset.as_deref().unwrap_or(""), &host),
            weight,
        ));
    }
    match out.len() {
        0 => Err(TranslateError::new(
            object(vs),
            format!("{field}.route"),
            "no destination with a weight",
        )),
        1 => Ok(TcpTarget::Cluster(out.remove(0).0)),
        _ => Ok(TcpTarget::Weighted(out)),
    }
}

/// Where connections to `service` on `port` go (its VirtualService's first applicable `tcp`
/// rule, or its own cluster).
pub fn target(
    scope: &Scope<'_>,
    service: &Service,
    port: u16,
    errors: &mut Vec<TranslateError>,
) -> TcpTarget {
    let default = TcpTarget::Cluster(names::outbound_cluster(port, "", &service.hostname));
    let Some(vs) = scope.virtual_service(service) else {
        return default;
    };
    for (i, rule) in vs.spec.tcp.iter().enumerate() {
        let field = format!("spec.tcp[{i}]");
        if let Some(m) = rule
            .match_
            .iter()
            .find(|m| !m.destination_subnets.is_empty() || m.source_subnet.is_some())
        {
            let _ = m;
            errors.push(TranslateError::new(
                object(vs),
                format!("{field}.match"),
                "destinationSubnets/sourceSubnet are not implemented by ferry-control yet",
            ));
            return default;
        }
        let applies = rule.match_.is_empty()
            || rule.match_.iter().any(|m| {
                selects(
                    scope,
                    port,
                    m.port,
                    &m.source_labels,
                    &m.gateways,
                    m.source_namespace.as_ref(),
                )
            });
        if applies {
            return match destinations(scope, vs, &rule.route, port, &field) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(e);
                    default
                }
            };
        }
    }
    default
}

fn tls_match_applies(scope: &Scope<'_>, port: u16, m: &TlsMatchAttributes) -> bool {
    selects(
        scope,
        port,
        m.port,
        &m.source_labels,
        &m.gateways,
        m.source_namespace.as_ref(),
    )
}

/// Filter chains by SNI for `service`'s VirtualService `tls` rules on `port` (empty when none).
pub fn tls_chains(
    scope: &Scope<'_>,
    service: &Service,
    port: u16,
    errors: &mut Vec<TranslateError>,
) -> Vec<FilterChain> {
    let Some(vs) = scope.virtual_service(service) else {
        return Vec::new();
    };
    let mut chains = Vec::new();
    for (i, rule) in vs.spec.tls.iter().enumerate() {
        let field = format!("spec.tls[{i}]");
        for (j, m) in rule.match_.iter().enumerate() {
            if !m.destination_subnets.is_empty() {
                errors.push(TranslateError::new(
                    object(vs),
                    format!("{field}.match[{j}].destinationSubnets"),
                    "not implemented by ferry-control yet",
                ));
                return Vec::new();
            }
            if !tls_match_applies(scope, port, m) {
                continue;
            }
            let target = match destinations(scope, vs, &rule.route, port, &field) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(e);
                    return Vec::new();
                }
            };
            let mut server_names: Vec<String> = m.sni_hosts.clone();
            server_names.sort();
            chains.push(FilterChain {
                name: format!(
                    "{}-{field}.match[{j}]",
                    names::outbound_cluster(port, "", &service.hostname)
                ),
                filter_chain_match: Some(FilterChainMatch {
                    server_names,
                    transport_protocol: "tls".to_string(),
                    ..Default::default()
                }),
                filters: vec![tcp_proxy(&service.hostname, target)],
                ..Default::default()
            });
        }
    }
    chains
}
