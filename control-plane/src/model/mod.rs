//! The mesh as the translator sees it: services with their ports, host names and endpoints, the
//! workloads (pods and WorkloadEntries) behind them, and the Istio rules, all validated.
//! The directory source and the Kubernetes source build the same model.

mod build;
mod error;
pub mod host;
mod kubernetes;
mod protocol;
pub mod proxy;
mod rules;
mod service_entry;
pub mod visibility;
mod warning;

pub use build::build;
pub use error::ModelError;
pub use warning::{ModelWarning, warnings};

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Where an object came from, for error messages: `file.yaml#2` or `namespace/name`.
pub type Origin = String;

/// An Istio rule with its identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Config<T> {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// Where it was read from.
    pub origin: Origin,
    /// The validated spec.
    pub spec: T,
}

/// The application protocol of a service port, from its name (`http-web`), `appProtocol`, or
/// ServiceEntry `protocol`, as Istio infers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// HTTP/1.1 (or upgraded to HTTP/2 by policy).
    Http,
    /// HTTP/2 with prior knowledge.
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// TLS, routed by SNI.
    Tls,
    /// HTTPS, treated like TLS by sidecars.
    Https,
    /// Opaque TCP.
    Tcp,
    /// Unknown: Istio sniffs; Ferry treats it as TCP with HTTP detection where supported.
    Unknown,
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name (`http-web`); may be empty for single-port services.
    pub name: String,
    /// The service port number clients dial.
    pub port: u16,
    /// The port on the endpoints (Kubernetes `targetPort` resolved, or ServiceEntry `targetPort`).
    pub target_port: Option<u16>,
    /// The protocol.
    pub protocol: Protocol,
}

/// How clients find a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Endpoints are known (EDS).
    Static,
    /// Endpoints are DNS names resolved by the proxy (STRICT_DNS).
    Dns,
    /// Like DNS, one connection per resolved address set (LOGICAL_DNS).
    DnsRoundRobin,
    /// Traffic goes to the address the client dialled (ORIGINAL_DST).
    Passthrough,
}

/// A service: a Kubernetes Service or a ServiceEntry host.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Fully qualified host name (`reviews.default.svc.cluster.local`, or a ServiceEntry host).
    pub hostname: String,
    /// The short name (`reviews`) for Kubernetes services; the host for ServiceEntries.
    pub name: String,
    /// The namespace the service lives in.
    pub namespace: String,
    /// Virtual IPs (ClusterIP, ServiceEntry addresses).
    pub addresses: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// True for ServiceEntries with `location: MESH_EXTERNAL`.
    pub mesh_external: bool,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Where the service is visible (ServiceEntry `exportTo`, or the Service annotation
    /// `networking.istio.io/exportTo`), validated; empty is everywhere. See [`visibility`].
    pub export_to: Vec<String>,
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address, or a DNS name for DNS-resolved ServiceEntries.
    pub address: String,
    /// Target port per service port name (empty name for unnamed ports).
    pub ports: BTreeMap<String, u16>,
    /// Labels of the workload (pod or WorkloadEntry), for subsets.
    pub labels: BTreeMap<String, String>,
    /// The workload's service account, for SPIFFE identities.
    pub service_account: Option<String>,
    /// `region/zone/subzone`, empty when unknown.
    pub locality: String,
    /// Load balancing weight (WorkloadEntry `weight`), 1 by default.
    pub weight: u32,
    /// False when Kubernetes reports the endpoint not ready.
    pub ready: bool,
}

/// A namespace and its labels (`istio-injection=enabled`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespace {
    /// The namespace's name.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

/// The whole mesh, validated. Immutable once built; the server shares it behind an `Arc`.
/// Every list is in a stable order (namespace, then name), so equal inputs give equal models.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    /// Services by fully qualified host name.
    pub services: BTreeMap<String, Service>,
    /// Namespace objects by name (only those the source holds).
    pub namespaces: BTreeMap<String, Namespace>,
    /// VirtualServices.
    pub virtual_services: Vec<Config<crate::api::VirtualService>>,
    /// DestinationRules.
    pub destination_rules: Vec<Config<crate::api::DestinationRule>>,
    /// Sidecars (egress scoping).
    pub sidecars: Vec<Config<crate::api::Sidecar>>,
    /// PeerAuthentications.
    pub peer_authentications: Vec<Config<crate::api::PeerAuthentication>>,
    /// AuthorizationPolicies.
    pub authorization_policies: Vec<Config<crate::api::AuthorizationPolicy>>,
    /// ServiceEntries as written (their hosts are also in `services`, with endpoints).
    pub service_entries: Vec<Config<crate::api::ServiceEntry>>,
    /// WorkloadEntries as written (they are also endpoints of the services selecting them).
    pub workload_entries: Vec<Config<crate::api::WorkloadEntry>>,
}
