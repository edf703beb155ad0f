//! Pure functions from the [`crate::model::Model`] and one proxy's identity to the listeners,
//! routes, clusters and endpoints Istio would generate for it, with Istio's names.
//!
//! Nothing here does I/O or keeps state: the same model and node always give the same resources,
//! which is what makes the golden tests (`tests/golden.rs`) and per-proxy push diffing possible.
//! A rule that cannot be translated is reported in [`Generated::errors`] (object, field, reason)
//! and left out whole; it is never half-applied.
//!
//! # Local mode
//! [`Options::local_mode`] lets a whole mesh run on one machine without containers, root or
//! iptables (`scripts/local-mesh`). Each pod has its own loopback address (`127.0.0.x`) as pod IP
//! and as its sidecar's instance IP; the application listens on `POD_IP:PORT` itself. Since
//! nothing captures traffic:
//! - outbound, the application uses its sidecar as an explicit HTTP proxy
//!   (`http_proxy=http://127.0.0.x:15001`): `virtualOutbound` binds `INSTANCE_IP:15001` and is an
//!   HTTP connection manager whose route configuration `"15001"` holds every service port's
//!   virtual host, with `HOST:PORT` domains (the `Host` of an absolute-form request), so the
//!   VirtualService routing, retries and subsets apply as usual. No per-port listeners are
//!   generated (they would collide with the applications' own `POD_IP:PORT`); opaque TCP services
//!   are not reachable through the sidecar in local mode.
//! - inbound traffic is not intercepted: peers' sidecars connect straight to the endpoints
//!   (the applications). `virtualInbound` still binds `INSTANCE_IP:15006`, and `inbound|PORT||`
//!   clusters point at the endpoint address, which is the application.
//! - auto-mTLS is off (the peer of an outbound connection is the application itself, which speaks
//!   plain text); an explicit DestinationRule `tls` still applies.

mod cluster;
mod endpoint;
mod envoy;
mod filter_chain;
pub mod hcm_access_log;
mod hcm_tracing;
mod http_route;
mod listener;
mod local_inbound;
pub mod names;
mod route;
mod scope;
mod tcp_route;
mod tls;
mod traffic_policy;

use xds_proto::envoy::config::cluster::v3::Cluster;
use xds_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::envoy::config::listener::v3::Listener;
use xds_proto::envoy::config::route::v3::RouteConfiguration;

use crate::model::Model;
use crate::model::proxy::ProxyNode;

pub use scope::Scope;

/// How to generate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Several sidecars on one host, each with its own 127.0.0.x instance IP (see the module
    /// documentation).
    pub local_mode: bool,
    /// Istio's `meshConfig.defaultHttpRetryPolicy: {attempts: 0}`: routes without `retries` get
    /// no retry policy instead of Istio's default (2 retries on connect failures and refused
    /// streams). Off by default, as in Istio.
    pub disable_default_retries: bool,
    /// Istio's MeshConfig (tracing).
    pub mesh: crate::mesh_config::MeshConfig,
}

impl Options {
    /// What `ferry-control serve --local-mode` generates: local mode, and no default retry
    /// policy, because the sidecars of a local mesh are ferry-proxies, which refuse `retry_policy`
    /// until they implement retries (explicit VirtualService `retries` are still sent, and
    /// refused visibly). Drop `disable_default_retries` here once ferry-proxy retries.
    pub fn local_mesh() -> Self {
        Self {
            local_mode: true,
            disable_default_retries: true,
            mesh: crate::mesh_config::MeshConfig::default(),
        }
    }
}

/// Everything one proxy receives, each list sorted by resource name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generated {
    /// LDS.
    pub listeners: Vec<Listener>,
    /// RDS.
    pub routes: Vec<RouteConfiguration>,
    /// CDS.
    pub clusters: Vec<Cluster>,
    /// EDS.
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// Rules (or parts of the model) that could not be translated and were left out whole.
    pub errors: Vec<TranslateError>,
}

/// A rule the translation refused, naming the object, the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {reason}")]
pub struct TranslateError {
    /// `Kind namespace/name` of the object (or the service host).
    pub object: String,
    /// Field path inside the object (`spec.http[0].route[1]`).
    pub field: String,
    /// Why.
    pub reason: String,
}

impl TranslateError {
    /// Builds an error.
    pub fn new(
        object: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            object: object.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Generates the xDS resources Istio would send `proxy`.
pub fn generate(model: &Model, proxy: &ProxyNode, options: &Options) -> Generated {
    let scope = Scope::new(model, proxy, options);
    let mut errors = Vec::new();
    let (mut clusters, mut endpoints) = cluster::build(&scope);
    let mut routes = route::build(&scope, &mut errors);
    let mut listeners = listener::build(&scope, &routes, &mut errors);
    if options.local_mode {
        local_inbound::redirect_endpoints(&scope, &mut endpoints);
        local_inbound::serve_on_virtual_inbound(&scope, &mut listeners);
    }
    hcm_access_log::apply(&options.mesh, &mut listeners, &mut errors);
    hcm_tracing::apply(&options.mesh, proxy, &mut listeners, &clusters, &mut errors);
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    clusters.dedup_by(|a, b| a.name == b.name);
    endpoints.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    errors.extend(scope.errors());
    errors.sort_by(|a, b| (&a.object, &a.field).cmp(&(&b.object, &b.field)));
    errors.dedup();
    for error in &errors {
        tracing::warn!(proxy = %proxy.id, object = %error.object, field = %error.field, reason = %error.reason, "rule not translated");
    }
    Generated {
        listeners,
        routes,
        clusters,
        endpoints,
        errors,
    }
}

#[cfg(test)]
mod tests;
