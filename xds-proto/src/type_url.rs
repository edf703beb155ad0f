//! Type URLs of the xDS resource kinds: the keys of every subscription, response and NACK.

/// Prefix Envoy puts in front of every message name in an `Any`.
pub const PREFIX: &str = "type.googleapis.com/";
/// LDS: `envoy.config.listener.v3.Listener`.
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// RDS: `envoy.config.route.v3.RouteConfiguration`.
pub const ROUTE_CONFIGURATION: &str =
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// CDS: `envoy.config.cluster.v3.Cluster`.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
pub const CLUSTER_LOAD_ASSIGNMENT: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// SDS: `envoy.extensions.transport_sockets.tls.v3.Secret`.
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The order in which a control plane should push kinds so that references resolve
/// (clusters before the endpoints that fill them, listeners before the routes they name).
pub const PUSH_ORDER: [&str; 5] = [
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    SECRET,
];

/// The short name operators use for a kind (`LDS`, `CDS`...), for logs and metrics labels.
pub fn short_name(type_url: &str) -> &'static str {
    match type_url {
        LISTENER => "LDS",
        ROUTE_CONFIGURATION => "RDS",
        CLUSTER => "CDS",
        CLUSTER_LOAD_ASSIGNMENT => "EDS",
        SECRET => "SDS",
        _ => "unknown",
    }
}

/// The message name inside a type URL (`envoy.config.cluster.v3.Cluster`).
pub fn message_name(type_url: &str) -> &str {
    type_url.rsplit_once('/').map_or(type_url, |(_, name)| name)
}
