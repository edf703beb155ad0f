//! `WorkloadEntry` (networking.istio.io): a non-Kubernetes workload (a VM, a bare process) with
//! its address, labels and identity, so services select it like a pod. The same message is the
//! type of a ServiceEntry's inline `endpoints`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The spec of a WorkloadEntry, also a ServiceEntry endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WorkloadEntry {
    /// IP, DNS name or `unix://` socket of the workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Port per service port name, when it differs from the service's.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    /// Labels of the workload.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Network the workload is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `region/zone/subzone` of the workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// Load balancing weight (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Service account of the workload, for its SPIFFE identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}
