//! The names Istio gives to what it generates. Dashboards, `istioctl` and operators' muscle
//! memory key on these strings (`outbound|9080|v1|reviews.default.svc.cluster.local`), so they
//! are built in one place and nowhere else.

use crate::model::Service;

/// The cluster that drops everything (unknown destinations under `REGISTRY_ONLY`).
pub const BLACK_HOLE_CLUSTER: &str = "BlackHoleCluster";
/// The cluster that forwards to the original destination (unknown destinations, `ALLOW_ANY`).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// The inbound twin of [`PASSTHROUGH_CLUSTER`]: traffic to a workload port no service declares.
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// The listener every outbound connection is captured to (port 15001).
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
/// The listener every inbound connection is captured to (port 15006).
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
/// Port of [`VIRTUAL_OUTBOUND`].
pub const VIRTUAL_OUTBOUND_PORT: u16 = 15001;
/// Port of [`VIRTUAL_INBOUND`].
pub const VIRTUAL_INBOUND_PORT: u16 = 15006;
/// The Envoy cluster (defined in the sidecar's bootstrap) serving workload certificates over SDS.
pub const SDS_CLUSTER: &str = "sds-grpc";
/// SDS name of the workload certificate and key.
pub const SDS_DEFAULT: &str = "default";
/// SDS name of the mesh's trust bundle.
pub const SDS_ROOT_CA: &str = "ROOTCA";
/// The trust domain Istio uses unless configured otherwise.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The pod label the injector sets on workloads that have a sidecar (auto-mTLS keys on it).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// `outbound|PORT|SUBSET|HOST`.
pub fn outbound_cluster(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|PORT||` (the workload's target port, as Istio names it since 1.10).
pub fn inbound_cluster(port: u16) -> String {
    format!("inbound|{port}||")
}

/// `outbound_.PORT_.SUBSET_.HOST`, the SNI of Istio mTLS (`outbound_.9080_._.HOST` for no subset).
pub fn istio_mtls_sni(port: u16, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

/// `spiffe://TRUST_DOMAIN/ns/NS/sa/SA`.
pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

/// Per-port listener name: `ADDRESS_PORT` (`0.0.0.0_9080`).
pub fn port_listener(address: &str, port: u16) -> String {
    format!("{address}_{port}")
}

/// The name of an outbound HTTP route configuration: the port.
pub fn route_config(port: u16) -> String {
    port.to_string()
}

/// The name of a virtual host: `HOST:PORT`.
pub fn virtual_host(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

/// Every name a client in `client_namespace` may use for `service` on `port`, as Istio lists them
/// as virtual host domains: the FQDN, `name.ns.svc`, `name.ns`, the short name (same namespace
/// only, as Istio does, so two namespaces' `reviews` never collide), the virtual IPs, each with and
/// without `:PORT`.
pub fn domains(service: &Service, port: u16, client_namespace: &str) -> Vec<String> {
    let mut names = vec![service.hostname.clone()];
    let kube_suffix = format!(".{}.svc.cluster.local", service.namespace);
    if let Some(short) = service.hostname.strip_suffix(&kube_suffix) {
        names.push(format!("{short}.{}.svc", service.namespace));
        names.push(format!("{short}.{}", service.namespace));
        if client_namespace == service.namespace {
            names.push(short.to_string());
        }
    }
    names.extend(service.addresses.iter().map(|ip| ip.to_string()));
    let mut out = Vec::with_capacity(names.len() * 2);
    for name in names {
        out.push(format!("{name}:{port}"));
        out.push(name);
    }
    out.sort();
    out.dedup();
    out
}

/// True when an Istio host pattern (`reviews.default.svc.cluster.local`, `*.example.com`, `*`)
/// covers `host`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Resolves a host as written in a rule of `namespace` to the name services are keyed by:
/// `reviews` -> `reviews.NS.svc.cluster.local`, `reviews.prod` -> `reviews.prod.svc.cluster.local`
/// when that service exists, `reviews.prod.svc` -> `reviews.prod.svc.cluster.local`; anything else
/// (FQDNs, ServiceEntry hosts, wildcards) as is.
pub fn resolve_host(model: &crate::model::Model, host: &str, namespace: &str) -> String {
    if host.starts_with('*') || model.services.contains_key(host) {
        return host.to_string();
    }
    if !host.contains('.') {
        return format!("{host}.{namespace}.svc.cluster.local");
    }
    if host.ends_with(".svc") {
        return format!("{host}.cluster.local");
    }
    let candidate = format!("{host}.svc.cluster.local");
    if host.matches('.').count() == 1 && model.services.contains_key(&candidate) {
        return candidate;
    }
    host.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Resolution;

    fn reviews() -> Service {
        Service {
            hostname: "reviews.default.svc.cluster.local".into(),
            name: "reviews".into(),
            namespace: "default".into(),
            addresses: vec!["10.96.0.5".parse().unwrap()],
            ports: vec![],
            resolution: Resolution::Static,
            mesh_external: false,
            export_to: vec![],
            endpoints: vec![],
        }
    }

    #[test]
    fn istio_names() {
        let host = "reviews.default.svc.cluster.local";
        assert_eq!(
            outbound_cluster(9080, "v1", host),
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        );
        assert_eq!(inbound_cluster(9080), "inbound|9080||");
        assert_eq!(
            istio_mtls_sni(9080, "", host),
            "outbound_.9080_._.reviews.default.svc.cluster.local"
        );
        assert_eq!(
            spiffe_id("default", "bookinfo-reviews"),
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
        assert_eq!(port_listener("0.0.0.0", 9080), "0.0.0.0_9080");
    }

    #[test]
    fn domains_short_name_only_in_same_namespace() {
        let same = domains(&reviews(), 9080, "default");
        for d in [
            "reviews",
            "reviews:9080",
            "reviews.default",
            "reviews.default.svc:9080",
            "reviews.default.svc.cluster.local",
            "10.96.0.5:9080",
        ] {
            assert!(same.contains(&d.to_string()), "{d} missing in {same:?}");
        }
        let other = domains(&reviews(), 9080, "prod");
        assert!(!other.contains(&"reviews".to_string()));
        assert!(other.contains(&"reviews.default".to_string()));
    }

    #[test]
    fn host_patterns() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches(
            "Reviews.default.svc.cluster.local",
            "reviews.default.svc.cluster.local"
        ));
    }
}
