//! The Envoy v3 bootstrap: read from `-c FILE` (YAML or JSON, proto3 JSON mapping), or built
//! from flags and the environment the way an Istio sidecar's bootstrap looks (node id
//! `sidecar~IP~POD.NS~NS.svc.cluster.local`, node metadata, delta ADS through a static
//! `xds-grpc` cluster, admin on 127.0.0.1:15000). Also the worker count: the container's CPU
//! limit from cgroups, not the host's cores.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde_json::json;
use xds_proto::envoy::config::bootstrap::v3::Bootstrap;

/// Why a bootstrap cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The file could not be read.
    #[error("cannot read bootstrap {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a valid Envoy v3 bootstrap.
    #[error("invalid bootstrap: {0}")]
    Parse(#[from] xds_proto::json::JsonError),
    /// Neither a file nor an xDS address was given.
    #[error("either -c FILE or --xds-address is required")]
    NoConfig,
    /// Something in the bootstrap Ferry does not implement.
    #[error("bootstrap {field}: {reason}")]
    Unsupported {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
}

/// Reads a bootstrap file (YAML is a superset of JSON, so both parse).
pub fn from_file(path: &Path) -> Result<Bootstrap, BootstrapError> {
    let text = std::fs::read_to_string(path).map_err(|source| BootstrapError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(xds_proto::json::from_yaml_str(&text)?)
}

/// What an Istio sidecar's environment provides when there is no bootstrap file.
#[derive(Debug, Clone)]
pub struct SidecarIdentity {
    /// `host:port` of the xDS server (plaintext gRPC, Istio's 15010).
    pub xds_address: String,
    /// An explicit node id; default `sidecar~IP~POD.NS~NS.svc.cluster.local`.
    pub node_id: Option<String>,
    /// POD_NAMESPACE.
    pub namespace: String,
    /// POD_NAME.
    pub pod_name: String,
    /// INSTANCE_IP.
    pub instance_ip: String,
    /// SERVICE_ACCOUNT.
    pub service_account: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Admin address (default 127.0.0.1:15000).
    pub admin_address: SocketAddr,
}

/// Istio's sidecar node id.
pub fn sidecar_node_id(ip: &str, pod: &str, namespace: &str) -> String {
    format!("sidecar~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local")
}

/// The bootstrap an Istio sidecar would run with.
pub fn sidecar(identity: &SidecarIdentity) -> Result<Bootstrap, BootstrapError> {
    let (host, port) = identity
        .xds_address
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u32>().ok()?)))
        .ok_or_else(|| BootstrapError::Unsupported {
            field: "--xds-address".into(),
            reason: format!("{:?} is not host:port", identity.xds_address),
        })?;
    let cluster_type = if host.parse::<std::net::IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    let node_id = identity.node_id.clone().unwrap_or_else(|| {
        sidecar_node_id(
            &identity.instance_ip,
            &identity.pod_name,
            &identity.namespace,
        )
    });
    let app = identity
        .labels
        .get("app")
        .cloned()
        .unwrap_or_else(|| identity.pod_name.clone());
    let value = json!({
        "node": {
            "id": node_id,
            "cluster": format!("{app}.{}", identity.namespace),
            "metadata": {
                "NAMESPACE": identity.namespace,
                "NAME": identity.pod_name,
                "LABELS": identity.labels,
                "SERVICE_ACCOUNT": identity.service_account,
                "INSTANCE_IPS": identity.instance_ip,
            },
        },
        "admin": { "address": { "socket_address": {
            "address": identity.admin_address.ip().to_string(),
            "port_value": identity.admin_address.port(),
        } } },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds-grpc" } }],
            },
            "lds_config": { "ads": {}, "resource_api_version": "V3" },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
        },
        "static_resources": { "clusters": [{
            "name": "xds-grpc",
            "type": cluster_type,
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "xds-grpc",
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                    "address": host, "port_value": port,
                } } } }] }],
            },
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": { "http2_protocol_options": {} },
                },
            },
        }] },
    });
    Ok(xds_proto::json::from_value(value)?)
}

/// Worker threads: `requested`, else the container's CPU limit, else the host's parallelism.
pub fn concurrency(requested: Option<usize>) -> usize {
    if let Some(n) = requested.filter(|n| *n > 0) {
        return n;
    }
    let read = |p: &str| std::fs::read_to_string(p).ok();
    cpu_limit(
        read("/sys/fs/cgroup/cpu.max").as_deref(),
        read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").as_deref(),
        read("/sys/fs/cgroup/cpu/cpu.cfs_period_us").as_deref(),
    )
    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The CPU limit from cgroup v2 `cpu.max` ("QUOTA PERIOD" or "max PERIOD") or v1
/// `cfs_quota_us`/`cfs_period_us`, rounded up; `None` when unlimited or unknown.
pub fn cpu_limit(
    v2_max: Option<&str>,
    v1_quota: Option<&str>,
    v1_period: Option<&str>,
) -> Option<usize> {
    let ceil = |quota: i64, period: i64| {
        (quota > 0 && period > 0).then(|| {
            usize::try_from((quota + period - 1) / period)
                .unwrap_or(1)
                .max(1)
        })
    };
    if let Some(line) = v2_max {
        let mut parts = line.split_whitespace();
        let quota = parts.next()?;
        let period = parts.next().and_then(|p| p.parse().ok()).unwrap_or(100_000);
        return if quota == "max" {
            None
        } else {
            ceil(quota.parse().ok()?, period)
        };
    }
    ceil(
        v1_quota?.trim().parse().ok()?,
        v1_period?.trim().parse().ok()?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_limit_reads_cgroups() {
        assert_eq!(cpu_limit(Some("200000 100000\n"), None, None), Some(2));
        assert_eq!(cpu_limit(Some("150000 100000"), None, None), Some(2));
        assert_eq!(cpu_limit(Some("max 100000"), None, None), None);
        assert_eq!(cpu_limit(None, Some("50000"), Some("100000")), Some(1));
        assert_eq!(cpu_limit(None, Some("-1"), Some("100000")), None);
        assert_eq!(concurrency(Some(3)), 3);
    }

    #[test]
    fn sidecar_bootstrap_looks_like_istio() {
        let identity = SidecarIdentity {
            xds_address: "istiod.istio-system.svc:15010".into(),
            namespace: "default".into(),
            pod_name: "reviews-1".into(),
            instance_ip: "10.0.0.7".into(),
            service_account: "bookinfo-reviews".into(),
            labels: [("app".to_string(), "reviews".to_string())].into(),
            admin_address: "127.0.0.1:15000".parse().unwrap(),
            node_id: None,
        };
        let b = sidecar(&identity).unwrap();
        let node = b.node.unwrap();
        assert_eq!(
            node.id,
            "sidecar~10.0.0.7~reviews-1.default~default.svc.cluster.local"
        );
        assert_eq!(node.cluster, "reviews.default");
        let meta = node.metadata.unwrap();
        assert!(meta.fields.contains_key("INSTANCE_IPS") && meta.fields.contains_key("LABELS"));
        let ads = b.dynamic_resources.unwrap().ads_config.unwrap();
        assert_eq!(ads.api_type, 3, "DELTA_GRPC");
        let statics = b.static_resources.unwrap();
        assert_eq!(statics.clusters[0].name, "xds-grpc");
    }
}
