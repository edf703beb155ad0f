//! Host names as Istio users write them: a rule in namespace `default` that says `reviews` means
//! `reviews.default.svc.cluster.local`. Resolution happens once, when the model is built, so the
//! translator only ever compares fully qualified names.

use std::collections::BTreeSet;

/// The cluster's DNS suffix (Istio's default `cluster.local`).
pub const DOMAIN_SUFFIX: &str = "cluster.local";

/// The fully qualified name of a Kubernetes service: `name.namespace.svc.cluster.local`.
pub fn service_fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{DOMAIN_SUFFIX}")
}

/// Resolves a host written in a rule in `namespace`:
/// - `reviews` -> `reviews.NAMESPACE.svc.cluster.local`;
/// - `reviews.prod` -> `reviews.prod.svc.cluster.local` when `prod` is a namespace the mesh knows;
/// - `reviews.prod.svc` -> `reviews.prod.svc.cluster.local`;
/// - wildcards (`*`, `*.example.com`) and any other dotted name stay as written.
///
/// Istio itself only expands dot-less names; expanding `name.namespace` when the namespace
/// exists is a deliberate convenience that cannot change the meaning of an external host (no
/// external top-level domain is a namespace of the mesh in practice).
pub fn resolve_host(host: &str, namespace: &str, namespaces: &BTreeSet<String>) -> String {
    if host.starts_with('*') {
        return host.to_owned();
    }
    let parts: Vec<&str> = host.split('.').collect();
    match parts.as_slice() {
        [name] => service_fqdn(name, namespace),
        [name, ns] if namespaces.contains(*ns) => service_fqdn(name, ns),
        [name, ns, "svc"] => service_fqdn(name, ns),
        _ => host.to_owned(),
    }
}

/// Every name a client may use for a Kubernetes service host, shortest first, as seen from a
/// proxy in `client_namespace` (for route virtual-host domains): `reviews` (same namespace only),
/// `reviews.default`, `reviews.default.svc`, the FQDN. Other hosts have only themselves.
pub fn host_aliases(fqdn: &str, client_namespace: &str) -> Vec<String> {
    let suffix = format!(".svc.{DOMAIN_SUFFIX}");
    let Some(short) = fqdn.strip_suffix(&suffix) else {
        return vec![fqdn.to_owned()];
    };
    let Some((name, ns)) = short.split_once('.') else {
        return vec![fqdn.to_owned()];
    };
    let mut out = Vec::with_capacity(4);
    if ns == client_namespace {
        out.push(name.to_owned());
    }
    out.push(short.to_owned());
    out.push(format!("{short}.svc"));
    out.push(fqdn.to_owned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_in_the_rule_namespace() {
        let namespaces: BTreeSet<String> = ["default".to_owned(), "prod".to_owned()].into();
        let r = |h: &str| resolve_host(h, "default", &namespaces);
        assert_eq!(r("reviews"), "reviews.default.svc.cluster.local");
        assert_eq!(r("reviews.prod"), "reviews.prod.svc.cluster.local");
        assert_eq!(r("reviews.prod.svc"), "reviews.prod.svc.cluster.local");
        assert_eq!(
            r("reviews.prod.svc.cluster.local"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(r("example.com"), "example.com");
        assert_eq!(r("api.example.com"), "api.example.com");
        assert_eq!(r("*.example.com"), "*.example.com");
        assert_eq!(r("*"), "*");
    }

    #[test]
    fn aliases_of_a_service() {
        assert_eq!(
            host_aliases("reviews.default.svc.cluster.local", "default"),
            [
                "reviews",
                "reviews.default",
                "reviews.default.svc",
                "reviews.default.svc.cluster.local"
            ]
        );
        assert_eq!(
            host_aliases("reviews.default.svc.cluster.local", "prod").len(),
            3
        );
        assert_eq!(host_aliases("example.com", "default"), ["example.com"]);
    }
}
