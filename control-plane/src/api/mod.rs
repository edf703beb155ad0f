//! Istio's resource types (networking.istio.io, security.istio.io) as Rust types that read the
//! YAML users already have, in every served version, and refuse fields Istio does not define.
//!
//! Each kind's spec lives in a module named after it and mirrors Istio's protobuf message field
//! for field (`deny_unknown_fields`, so a stray `circuitBreaker:` is an error naming the field).
//! [`Object`] is the Kubernetes envelope around a spec; [`manifest`] reads multi-document YAML
//! into typed [`Manifest`]s, dispatching on `apiVersion` and `kind`.

pub mod authorization_policy;
pub mod common;
pub mod destination_rule;
pub mod manifest;
pub mod peer_authentication;
pub mod service_entry;
pub mod sidecar;
pub mod virtual_service;
pub mod workload_entry;

pub use authorization_policy::AuthorizationPolicy;
pub use common::{
    Duration, MatchKind, Percent, PolicyTargetReference, PortSelector, StringMatch,
    WorkloadLabelSelector, WorkloadSelector,
};
pub use destination_rule::DestinationRule;
pub use manifest::{
    Document, Ignored, Manifest, ManifestError, Object, from_value, parse_documents,
    spec_from_value,
};
pub use peer_authentication::PeerAuthentication;
pub use service_entry::ServiceEntry;
pub use sidecar::Sidecar;
pub use virtual_service::VirtualService;
pub use workload_entry::WorkloadEntry;
