//! The ADS server (port 15010): state-of-the-world and delta streams, per-connection
//! subscriptions, versions and nonces, ACK/NACK tracking, debounced pushes.
//!
//! Model changes are debounced once ([`debounce`]) into push epochs; every connection then
//! regenerates its own resources ([`cache`]) from the epoch's model through a [`Generator`] and
//! sends only what changed for that proxy, in the order CDS, EDS, LDS, RDS. What each proxy has
//! ACKed or NACKed is kept in a [`connection::Registry`] the debug endpoint reads.

pub mod cache;
pub mod connection;
pub mod debounce;
pub mod delta;
mod framing;
pub mod metrics;
pub mod server;
pub mod sotw;
mod stream;

use xds_proto::envoy::config::cluster::v3::Cluster;
use xds_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::envoy::config::listener::v3::Listener;
use xds_proto::envoy::config::route::v3::RouteConfiguration;

use crate::model::Model;
use crate::model::proxy::ProxyNode;

pub use server::{AdsService, XdsServer};

/// The resources generated for one proxy, typed; the server packs and versions them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// LDS.
    pub listeners: Vec<Listener>,
    /// RDS.
    pub routes: Vec<RouteConfiguration>,
    /// CDS.
    pub clusters: Vec<Cluster>,
    /// EDS.
    pub endpoints: Vec<ClusterLoadAssignment>,
}

/// The translator could not produce config for a proxy; the proxy keeps what it has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot generate config for {proxy}: {reason}")]
pub struct GenerateError {
    /// The proxy's node id.
    pub proxy: String,
    /// Why.
    pub reason: String,
}

/// Produces one proxy's resources from the model: the translator in production, fixed
/// resources in tests. Must be pure: the same inputs give the same resources.
pub trait Generator: Send + Sync + 'static {
    /// Generates the listeners, routes, clusters and endpoints for `proxy`.
    fn generate(&self, model: &Model, proxy: &ProxyNode) -> Result<Resources, GenerateError>;
}

impl<F> Generator for F
where
    F: Fn(&Model, &ProxyNode) -> Result<Resources, GenerateError> + Send + Sync + 'static,
{
    fn generate(&self, model: &Model, proxy: &ProxyNode) -> Result<Resources, GenerateError> {
        self(model, proxy)
    }
}

/// The translator as a [`Generator`]: [`crate::translate::generate`]. Rules it refuses are
/// logged by the translator and left out; the rest of the proxy's config is served.
#[derive(Debug, Clone, Default)]
pub struct TranslateGenerator {
    /// Local mode: listeners bind to the proxy's own loopback address.
    pub local_mode: bool,
    /// Istio's MeshConfig.
    pub mesh: crate::mesh_config::MeshConfig,
}

impl Generator for TranslateGenerator {
    fn generate(&self, model: &Model, proxy: &ProxyNode) -> Result<Resources, GenerateError> {
        let mut options = if self.local_mode {
            crate::translate::Options::local_mesh()
        } else {
            crate::translate::Options::default()
        };
        options.mesh = self.mesh.clone();
        let generated = crate::translate::generate(model, proxy, &options);
        Ok(Resources {
            listeners: generated.listeners,
            routes: generated.routes,
            clusters: generated.clusters,
            endpoints: generated.endpoints,
        })
    }
}
