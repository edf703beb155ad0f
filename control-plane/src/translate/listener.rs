//! Listeners: `virtualOutbound` (15001, the capture point that hands connections to the
//! per-port listener of their original destination port, or passes them through),
//! `virtualInbound` (15006, filter chains per workload port, Istio mTLS and plain text as
//! PERMISSIVE accepts them) and the per-port outbound listeners (`0.0.0.0_9080`: HTTP through
//! RDS `"9080"`, TCP services through `tcp_proxy`, TLS services by SNI).

use std::collections::BTreeMap;

use xds_proto::envoy::config::core::v3::{CidrRange, TrafficDirection};
use xds_proto::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use xds_proto::envoy::config::route::v3::{
    Decorator, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route,
    route_action, route_match,
};
use xds_proto::google::protobuf::BoolValue;

use crate::model::{Protocol, Service};

use super::TranslateError;
use super::envoy::{seconds, socket_address, transport_socket, u32_value};
use super::filter_chain::{
    HcmProfile, Routes, TcpTarget, http_connection_manager, original_dst, tcp_chain, tcp_proxy,
    tls_inspector,
};
use super::names::{
    self, BLACK_HOLE_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER, VIRTUAL_INBOUND,
    VIRTUAL_INBOUND_PORT, VIRTUAL_OUTBOUND, VIRTUAL_OUTBOUND_PORT,
};
use super::scope::{OutboundPolicy, Scope};
use super::{tcp_route, tls};

/// True for protocols routed by the HTTP connection manager.
pub fn is_http(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
}

/// All listeners for the proxy.
pub fn build(
    scope: &Scope<'_>,
    routes: &[RouteConfiguration],
    errors: &mut Vec<TranslateError>,
) -> Vec<Listener> {
    if scope.options.local_mode {
        // Apps use the sidecar as an explicit HTTP proxy; per-port listeners would collide with
        // the applications listening on the same address and port.
        let profile = HcmProfile::minimal_for(&routes.iter().collect::<Vec<_>>());
        return vec![local_outbound(scope, profile), virtual_inbound(scope)];
    }
    let mut out = vec![virtual_outbound(scope), virtual_inbound(scope)];
    out.extend(outbound_port_listeners(scope, errors));
    out
}

fn bool_value(value: bool) -> Option<BoolValue> {
    Some(BoolValue { value })
}

fn virtual_outbound(scope: &Scope<'_>) -> Listener {
    Listener {
        name: VIRTUAL_OUTBOUND.to_string(),
        address: Some(socket_address(&scope.bind_address(), VIRTUAL_OUTBOUND_PORT)),
        filter_chains: vec![FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(u32_value(u32::from(VIRTUAL_OUTBOUND_PORT))),
                ..Default::default()
            }),
            ..tcp_chain("virtualOutbound-blackhole", BLACK_HOLE_CLUSTER)
        }],
        default_filter_chain: Some(match scope.outbound_policy {
            OutboundPolicy::AllowAny => tcp_chain("PassthroughFilterChain", PASSTHROUGH_CLUSTER),
            OutboundPolicy::RegistryOnly => tcp_chain("BlackHoleFilterChain", BLACK_HOLE_CLUSTER),
        }),
        use_original_dst: bool_value(true),
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// Local mode's `virtualOutbound`: an HTTP proxy on `INSTANCE_IP:15001` routing every service
/// by `Host` through the route configuration named `"15001"`.
fn local_outbound(scope: &Scope<'_>, profile: HcmProfile) -> Listener {
    Listener {
        name: VIRTUAL_OUTBOUND.to_string(),
        address: Some(socket_address(&scope.bind_address(), VIRTUAL_OUTBOUND_PORT)),
        filter_chains: vec![FilterChain {
            name: "virtualOutbound-http-proxy".to_string(),
            filters: vec![http_connection_manager(
                &format!("outbound_{}_{VIRTUAL_OUTBOUND_PORT}", scope.bind_address()),
                Routes::Rds(names::route_config(VIRTUAL_OUTBOUND_PORT)),
                profile,
            )],
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

fn inbound_route(cluster: &str, operation: String) -> RouteConfiguration {
    RouteConfiguration {
        name: cluster.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: cluster
                .replace("inbound|", "inbound|http|")
                .trim_end_matches('|')
                .to_string(),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: "default".to_string(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.to_string(),
                    )),
                    timeout: Some(seconds(0)),
                    ..Default::default()
                })),
                decorator: Some(Decorator {
                    operation,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        validate_clusters: bool_value(false),
        ..Default::default()
    }
}

fn virtual_inbound(scope: &Scope<'_>) -> Listener {
    let mut chains = vec![FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(u32_value(u32::from(VIRTUAL_INBOUND_PORT))),
            ..Default::default()
        }),
        ..tcp_chain("virtualInbound-blackhole", BLACK_HOLE_CLUSTER)
    }];
    // One set of chains per workload port, however many services select it.
    let mut ports = BTreeMap::new();
    for target in scope.inbound_targets() {
        ports.entry(target.target_port).or_insert(target);
    }
    for (port, target) in ports {
        let cluster = names::inbound_cluster(port);
        let http = is_http(target.port.protocol);
        let filter = if http {
            let operation = format!("{}:{}/*", target.service.hostname, target.port.port);
            http_connection_manager(
                &format!("inbound_0.0.0.0_{port}"),
                Routes::Inline(Box::new(inbound_route(&cluster, operation))),
                if scope.options.local_mode {
                    HcmProfile::minimal_for(&[])
                } else {
                    HcmProfile::Istio
                },
            )
        } else {
            tcp_proxy(&cluster, TcpTarget::Cluster(cluster.clone()))
        };
        let alpn: &[&str] = if http { &["h2", "http/1.1"] } else { &[] };
        // PERMISSIVE: Istio mTLS and plain text both accepted (plain text only in local mode,
        // where no sidecar originates mTLS).
        let mut transports = vec![("raw_buffer", None)];
        if scope.auto_mtls() {
            let socket = transport_socket(tls::TLS_SOCKET, &tls::inbound_mtls(alpn));
            transports.insert(0, ("tls", Some(socket)));
        }
        for (transport, socket) in transports {
            chains.push(FilterChain {
                name: format!("{cluster}-{transport}"),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(u32_value(u32::from(port))),
                    transport_protocol: transport.to_string(),
                    ..Default::default()
                }),
                filters: vec![filter.clone()],
                transport_socket: socket,
                ..Default::default()
            });
        }
    }
    Listener {
        name: VIRTUAL_INBOUND.to_string(),
        address: Some(socket_address(&scope.bind_address(), VIRTUAL_INBOUND_PORT)),
        filter_chains: chains,
        default_filter_chain: Some(tcp_chain(
            "PassthroughFilterChain",
            INBOUND_PASSTHROUGH_CLUSTER,
        )),
        listener_filters: vec![original_dst(), tls_inspector()],
        traffic_direction: TrafficDirection::Inbound as i32,
        continue_on_listener_filters_timeout: true,
        ..Default::default()
    }
}

fn vip_ranges(service: &Service) -> Vec<CidrRange> {
    service
        .addresses
        .iter()
        .map(|ip| CidrRange {
            address_prefix: ip.to_string(),
            prefix_len: Some(u32_value(if ip.is_ipv4() { 32 } else { 128 })),
        })
        .collect()
}

fn outbound_port_listeners(scope: &Scope<'_>, errors: &mut Vec<TranslateError>) -> Vec<Listener> {
    let mut by_port: BTreeMap<u16, Vec<(&Service, Protocol)>> = BTreeMap::new();
    for service in scope.services() {
        for port in &service.ports {
            if port.port == VIRTUAL_OUTBOUND_PORT || port.port == VIRTUAL_INBOUND_PORT {
                continue;
            }
            by_port
                .entry(port.port)
                .or_default()
                .push((service, port.protocol));
        }
    }
    let address = scope.bind_address();
    let mut out = Vec::new();
    for (port, services) in by_port {
        let name = names::port_listener(&address, port);
        let mut chains = Vec::new();
        let mut needs_tls_inspector = false;
        let has_http = services.iter().any(|(_, p)| is_http(*p));
        if has_http {
            chains.push(FilterChain {
                name: name.clone(),
                filters: vec![http_connection_manager(
                    &format!("outbound_{name}"),
                    Routes::Rds(names::route_config(port)),
                    HcmProfile::Istio,
                )],
                ..Default::default()
            });
        }
        let opaque: Vec<&Service> = services
            .iter()
            .filter(|(_, p)| !is_http(*p))
            .map(|(s, _)| *s)
            .collect();
        let alone = opaque.len() == 1 && !has_http;
        for service in opaque {
            let sni_chains = tcp_route::tls_chains(scope, service, port, errors);
            if !sni_chains.is_empty() {
                needs_tls_inspector = true;
                chains.extend(sni_chains);
                continue;
            }
            let ranges = vip_ranges(service);
            if ranges.is_empty() && !alone {
                errors.push(TranslateError::new(
                    format!("service {}", service.hostname),
                    format!("port {port}"),
                    "a TCP service without an address cannot share its port with another service",
                ));
                continue;
            }
            let target = tcp_route::target(scope, service, port, errors);
            let stat = names::outbound_cluster(port, "", &service.hostname);
            chains.push(FilterChain {
                name: stat.clone(),
                filter_chain_match: (!alone).then(|| FilterChainMatch {
                    prefix_ranges: ranges,
                    ..Default::default()
                }),
                filters: vec![tcp_proxy(&stat, target)],
                ..Default::default()
            });
        }
        if chains.is_empty() {
            continue;
        }
        out.push(Listener {
            name,
            address: Some(socket_address(&address, port)),
            filter_chains: chains,
            default_filter_chain: (!has_http)
                .then(|| tcp_chain("PassthroughFilterChain", PASSTHROUGH_CLUSTER)),
            // Captured traffic arrives through virtualOutbound's hand-off, never on this port.
            bind_to_port: bool_value(false),
            listener_filters: if needs_tls_inspector {
                vec![tls_inspector()]
            } else {
                Vec::new()
            },
            traffic_direction: TrafficDirection::Outbound as i32,
            continue_on_listener_filters_timeout: needs_tls_inspector,
            ..Default::default()
        });
    }
    out
}
