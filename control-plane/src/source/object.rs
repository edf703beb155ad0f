//! The objects a source hands to the store: typed manifests ([`crate::api::Manifest`]: the
//! Kubernetes kinds as k8s-openapi types, the Istio kinds as the API types), keyed by (kind,
//! namespace, name) and tagged with where they came from. Both sources (YAML files and
//! Kubernetes `DynamicObject`s) meet at JSON and go through the same parser.

use std::fmt;

use crate::api::{Document, Manifest};
use crate::model::Origin;

/// The kinds Ferry reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// core/v1 Namespace (labels, for injection).
    Namespace,
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// core/v1 Pod.
    Pod,
    /// networking.istio.io VirtualService.
    VirtualService,
    /// networking.istio.io DestinationRule.
    DestinationRule,
    /// networking.istio.io ServiceEntry.
    ServiceEntry,
    /// networking.istio.io WorkloadEntry.
    WorkloadEntry,
    /// networking.istio.io Sidecar.
    Sidecar,
    /// security.istio.io PeerAuthentication.
    PeerAuthentication,
    /// security.istio.io AuthorizationPolicy.
    AuthorizationPolicy,
}

impl Kind {
    /// Every kind, in the order the Kubernetes source starts its watchers.
    pub const ALL: [Kind; 11] = [
        Kind::Namespace,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::Sidecar,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
    ];

    /// The Istio kinds.
    pub const ISTIO: [Kind; 7] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::Sidecar,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
    ];

    /// The `kind` field as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Sidecar => "Sidecar",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
        }
    }

    /// The Istio API group of an Istio kind, `None` for Kubernetes kinds.
    pub fn istio_group(self) -> Option<&'static str> {
        match self {
            Kind::VirtualService
            | Kind::DestinationRule
            | Kind::ServiceEntry
            | Kind::WorkloadEntry
            | Kind::Sidecar => Some("networking.istio.io"),
            Kind::PeerAuthentication | Kind::AuthorizationPolicy => Some("security.istio.io"),
            _ => None,
        }
    }

    /// The versions Istio serves for an Istio kind (empty for Kubernetes kinds).
    pub fn istio_versions(self) -> &'static [&'static str] {
        match self.istio_group() {
            Some("networking.istio.io") => &["v1", "v1beta1", "v1alpha3"],
            Some(_) => &["v1", "v1beta1"],
            None => &[],
        }
    }

    /// The plural resource name, as the API server spells it in URLs.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Pod => "pods",
            Kind::VirtualService => "virtualservices",
            Kind::DestinationRule => "destinationrules",
            Kind::ServiceEntry => "serviceentries",
            Kind::WorkloadEntry => "workloadentries",
            Kind::Sidecar => "sidecars",
            Kind::PeerAuthentication => "peerauthentications",
            Kind::AuthorizationPolicy => "authorizationpolicies",
        }
    }

    /// Looks a kind up by its manifest spelling.
    pub fn from_kind_str(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of an object in the store. Namespaces (the kind) use an empty namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The kind.
    pub kind: Kind,
    /// `metadata.namespace` (`default` when absent; empty for cluster-scoped kinds).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One object as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Identity.
    pub key: ObjectKey,
    /// Where it came from (`dir/file.yaml#2` or `namespace/name`).
    pub origin: Origin,
    /// The object itself, typed (never [`Manifest::Ignored`]).
    pub manifest: Manifest,
}

impl Object {
    /// The object as the validator takes it.
    pub fn to_document(&self) -> Document {
        Document {
            origin: self.origin.clone(),
            manifest: self.manifest.clone(),
        }
    }
}
