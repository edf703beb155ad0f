//! `ServiceEntry` (networking.istio.io): adds services Kubernetes does not know (external APIs,
//! VMs) to the mesh's registry, with their hosts, ports, resolution and endpoints. Mirrors Istio's
//! `networking.v1.ServiceEntry`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::WorkloadLabelSelector;
use super::workload_entry::WorkloadEntry;

/// The spec of a ServiceEntry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServiceEntry {
    /// Host names of the service (wildcards allowed, `*` alone is not); required.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs of the service.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Ports of the service.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Inside or outside the mesh (default MESH_EXTERNAL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// How endpoints are found (default NONE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// Endpoints, inline; exclusive with `workloadSelector`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,
    /// Select pods and WorkloadEntries as endpoints (MESH_INTERNAL only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadLabelSelector>,
    /// Namespaces the service is visible to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// SANs the server certificate must carry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// A port of a ServiceEntry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServicePort {
    /// Port number (1-65535); required.
    pub number: u32,
    /// Protocol: HTTP, HTTPS, HTTP2, GRPC, TLS, TCP, MONGO, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Port name; required.
    pub name: String,
    /// Port on the endpoints, when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// Where a ServiceEntry's service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh: no mTLS, no sidecar.
    MeshExternal,
    /// Part of the mesh.
    MeshInternal,
}

/// How a ServiceEntry's endpoints are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Use the address the client dialled (passthrough).
    None,
    /// The listed endpoint IPs.
    Static,
    /// Resolve the hosts or endpoint names, all addresses used.
    Dns,
    /// Resolve, one address at a time.
    DnsRoundRobin,
    /// Resolve per request via the dynamic forward proxy.
    DynamicDns,
}
