//! Ferry's protobuf contract.
//!
//! Both binaries speak Envoy's xDS v3 API; the types come from the `envoy-types` crate (prost 0.14,
//! tonic 0.14) so Ferry's wire format is, by construction, the one Envoy and Istio use. This crate
//! adds what every consumer needs on top: the type URLs of the xDS resource kinds, `Any` packing,
//! the proto3 JSON mapping (bootstrap files, `/config_dump`, golden files) and Istio's CA service.

pub mod any;
pub mod descriptor_index;
pub mod json;
pub mod type_url;

pub use envoy_types::pb::{envoy, google, xds};

/// Istio's own services (the CA that signs workload certificates).
pub mod istio {
    /// `istio.v1.auth`: `IstioCertificateService/CreateCertificate`.
    pub mod auth {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("istio.v1.auth");
    }
}
