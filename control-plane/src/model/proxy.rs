//! A connected proxy's identity, parsed from the xDS `Node` the way Istio's sidecars send it:
//! id `sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local` and metadata `NAMESPACE`, `LABELS`,
//! `SERVICE_ACCOUNT`, `INSTANCE_IPS`.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Who is asking for config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyNode {
    /// The node id as sent.
    pub id: String,
    /// `sidecar` or `router`.
    pub kind: String,
    /// Instance IPs; the first is the one listeners bind to in local mode.
    pub ips: Vec<IpAddr>,
    /// Pod (or workload) name.
    pub pod: String,
    /// Namespace.
    pub namespace: String,
    /// Workload labels.
    pub labels: BTreeMap<String, String>,
    /// Service account.
    pub service_account: String,
}
