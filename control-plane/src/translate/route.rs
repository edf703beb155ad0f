//! Outbound route configurations, one per HTTP port and named by it (`"9080"`): a virtual host
//! `HOST:PORT` per service on that port with every name of the service as domains, routes from
//! the service's VirtualService (or Istio's default route to the service's cluster), and the
//! `allow_any` virtual host that passes unknown hosts through. Also Istio's default retry policy
//! and the consistent-hash policies a DestinationRule puts on routes.

use std::collections::BTreeMap;

use xds_proto::envoy::config::route::v3::{
    Decorator, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    retry_policy, route,
    route_action::{self, HashPolicy, hash_policy},
    route_match,
};
use xds_proto::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use xds_proto::google::protobuf::BoolValue;

use crate::api::destination_rule::ConsistentHashLb;
use crate::model::Service;

use super::envoy::{any, duration, seconds, u32_value};
use super::listener::is_http;
use super::names::{self, BLACK_HOLE_CLUSTER, PASSTHROUGH_CLUSTER};
use super::scope::{OutboundPolicy, Scope};
use super::traffic_policy::{self, Subset};
use super::{TranslateError, http_route};

/// Istio's default `retry_on` (503 was dropped as unsafe for non-idempotent requests).
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Istio's default number of retries.
pub const DEFAULT_RETRIES: u32 = 2;

/// All outbound route configurations for the proxy.
pub fn build(scope: &Scope<'_>, errors: &mut Vec<TranslateError>) -> Vec<RouteConfiguration> {
    let mut by_port: BTreeMap<u16, Vec<&Service>> = BTreeMap::new();
    for service in scope.services() {
        for port in service.ports.iter().filter(|p| is_http(p.protocol)) {
            by_port.entry(port.port).or_default().push(service);
        }
    }
    if scope.options.local_mode {
        return vec![local_proxy_routes(scope, &by_port, errors)];
    }
    by_port
        .into_iter()
        .map(|(port, services)| {
            let mut virtual_hosts: Vec<VirtualHost> = services
                .into_iter()
                .map(|service| virtual_host(scope, service, port, errors))
                .collect();
            virtual_hosts.push(fallback_virtual_host(scope.outbound_policy));
            RouteConfiguration {
                name: names::route_config(port),
                virtual_hosts,
                validate_clusters: Some(BoolValue { value: false }),
                ..Default::default()
            }
        })
        .collect()
}

/// Local mode: one route configuration (`"15001"`, the explicit proxy's port) holding every
/// service port's virtual host. Domains carry the port (`reviews:9080`), as an absolute-form
/// request's `Host` does; port 80 also without it.
fn local_proxy_routes(
    scope: &Scope<'_>,
    by_port: &BTreeMap<u16, Vec<&Service>>,
    errors: &mut Vec<TranslateError>,
) -> RouteConfiguration {
    let mut virtual_hosts = Vec::new();
    for (port, services) in by_port {
        for service in services {
            let mut vh = virtual_host(scope, service, *port, errors);
            if *port != 80 {
                let suffix = format!(":{port}");
                vh.domains.retain(|d| d.ends_with(&suffix));
            }
            virtual_hosts.push(vh);
        }
    }
    virtual_hosts.push(fallback_virtual_host(scope.outbound_policy));
    RouteConfiguration {
        name: names::route_config(names::VIRTUAL_OUTBOUND_PORT),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

fn virtual_host(
    scope: &Scope<'_>,
    service: &Service,
    port: u16,
    errors: &mut Vec<TranslateError>,
) -> VirtualHost {
    let mut routes = Vec::new();
    if let Some(vs) = scope.virtual_service(service) {
        match http_route::translate(scope, vs, service, port) {
            Ok(r) => routes = r,
            Err(e) => errors.push(e),
        }
    }
    if routes.is_empty() {
        routes.push(default_route(scope, service, port));
    }
    VirtualHost {
        name: names::virtual_host(&service.hostname, port),
        domains: names::domains(service, port, &scope.proxy.namespace),
        routes,
        include_request_attempt_count: true,
        ..Default::default()
    }
}

/// `allow_any` (pass through to the original destination) or `block_all` (REGISTRY_ONLY).
fn fallback_virtual_host(policy: OutboundPolicy) -> VirtualHost {
    let (name, cluster) = match policy {
        OutboundPolicy::AllowAny => ("allow_any", PASSTHROUGH_CLUSTER),
        OutboundPolicy::RegistryOnly => ("block_all", BLACK_HOLE_CLUSTER),
    };
    VirtualHost {
        name: name.to_string(),
        domains: vec!["*".to_string()],
        routes: vec![Route {
            name: name.to_string(),
            r#match: Some(prefix_match("/")),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                    cluster.to_string(),
                )),
                timeout: Some(seconds(0)),
                ..Default::default()
            })),
            ..Default::default()
        }],
        include_request_attempt_count: true,
        ..Default::default()
    }
}

/// `{prefix: "/"}`-style match.
pub fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_string())),
        ..Default::default()
    }
}

/// The route Istio generates for a service without a VirtualService.
fn default_route(scope: &Scope<'_>, service: &Service, port: u16) -> Route {
    let hash = consistent_hash(scope, service, "", port);
    let cluster = names::outbound_cluster(port, "", &service.hostname);
    Route {
        name: "default".to_string(),
        r#match: Some(prefix_match("/")),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
            timeout: Some(seconds(0)),
            retry_policy: (!scope.options.disable_default_retries)
                .then(|| default_retry_policy(hash.is_some())),
            hash_policy: hash.map(|h| hash_policies(&h)).unwrap_or_default(),
            ..Default::default()
        })),
        decorator: Some(decorator(service, port)),
        ..Default::default()
    }
}

/// `HOST:PORT/*`, the operation name tracing uses.
pub fn decorator(service: &Service, port: u16) -> Decorator {
    Decorator {
        operation: format!("{}:{port}/*", service.hostname),
        ..Default::default()
    }
}

/// Istio's default retry policy: 2 retries on connect failures, refused streams and gRPC
/// `unavailable`/`cancelled`, each on another host (unless the destination uses consistent
/// hashing, where retrying elsewhere would defeat the affinity).
pub fn default_retry_policy(consistent_hash: bool) -> RetryPolicy {
    RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.to_string(),
        num_retries: Some(u32_value(DEFAULT_RETRIES)),
        retry_host_predicate: if consistent_hash {
            Vec::new()
        } else {
            vec![retry_policy::RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".to_string(),
                config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                    any(&PreviousHostsPredicate::default()),
                )),
            }]
        },
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

/// The consistent-hash settings of the DestinationRule (subset, port) for a destination.
pub fn consistent_hash(
    scope: &Scope<'_>,
    service: &Service,
    subset: &str,
    port: u16,
) -> Option<ConsistentHashLb> {
    let rule = scope.destination_rule(service)?;
    let subset = traffic_policy::subsets(rule)
        .into_iter()
        .find(|s| s.name == subset)
        .unwrap_or_else(Subset::default);
    traffic_policy::effective(Some(rule), &subset, port)
        .load_balancer?
        .consistent_hash
}

/// Envoy hash policies for a consistent-hash setting.
pub fn hash_policies(hash: &ConsistentHashLb) -> Vec<HashPolicy> {
    let specifier = if let Some(header) = &hash.http_header_name {
        hash_policy::PolicySpecifier::Header(hash_policy::Header {
            header_name: header.clone(),
            ..Default::default()
        })
    } else if let Some(cookie) = &hash.http_cookie {
        hash_policy::PolicySpecifier::Cookie(hash_policy::Cookie {
            name: cookie.name.clone(),
            path: cookie.path.clone().unwrap_or_default(),
            ttl: cookie.ttl.map(|d| duration(d.get())),
            ..Default::default()
        })
    } else if hash.use_source_ip == Some(true) {
        hash_policy::PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties {
            source_ip: true,
        })
    } else if let Some(name) = &hash.http_query_parameter_name {
        hash_policy::PolicySpecifier::QueryParameter(hash_policy::QueryParameter {
            name: name.clone(),
        })
    } else {
        return Vec::new();
    };
    vec![HashPolicy {
        policy_specifier: Some(specifier),
        ..Default::default()
    }]
}
