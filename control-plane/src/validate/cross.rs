//! Rules that need the whole set of objects: a subset referenced by a VirtualService (or a
//! Sidecar's egress proxy) must be defined by a DestinationRule for that host that is visible
//! in the referrer's namespace (its `exportTo` includes that namespace), and an object (kind,
//! namespace, name) may be defined only once.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::virtual_service::Destination;
use crate::api::{Document, Manifest, ManifestError};

/// Istio's short-name resolution: a host without dots is a Kubernetes service in the rule's
/// namespace (`reviews` -> `reviews.NS.svc.cluster.local`); anything else is taken as written.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host == "*" || host.contains('.') || host.parse::<std::net::IpAddr>().is_ok() {
        host.to_owned()
    } else {
        format!("{host}.{namespace}.svc.cluster.local")
    }
}

/// Whether a (possibly wildcard) rule host covers a destination host.
fn host_covers(rule: &str, host: &str) -> bool {
    match rule.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => rule == host,
    }
}

/// Cross-object checks over a set of documents.
pub fn cross_check(docs: &[Document]) -> Vec<ManifestError> {
    cross_check_indexed(docs)
        .into_iter()
        .map(|(_, e)| e)
        .collect()
}

/// [`cross_check`], each error with the index of the document it is about.
pub(crate) fn cross_check_indexed(docs: &[Document]) -> Vec<(usize, ManifestError)> {
    let mut errors = duplicates(docs);
    // Subsets per DestinationRule host (resolved in the rule's namespace), with where the rule
    // is visible.
    let mut subsets: Vec<(String, Visibility<'_>, BTreeSet<&str>)> = Vec::new();
    for doc in docs {
        if let Manifest::DestinationRule(dr) = &doc.manifest {
            let host = resolve_host(&dr.spec.host, dr.namespace());
            let visibility = Visibility {
                namespace: dr.namespace(),
                export_to: &dr.spec.export_to,
            };
            subsets.push((
                host,
                visibility,
                dr.spec.subsets.iter().map(|s| s.name.as_str()).collect(),
            ));
        }
    }
    let mut check = |index: usize, doc: &Document, ns: &str, field: String, d: &Destination| {
        let Some(subset) = d.subset.as_deref() else {
            return;
        };
        let host = resolve_host(&d.host, ns);
        let covering = || {
            subsets
                .iter()
                .filter(|(rule, _, _)| host_covers(rule, &host))
        };
        let defined: BTreeSet<&str> = covering()
            .filter(|(_, visibility, _)| visibility.exported_to(ns))
            .flat_map(|(_, _, s)| s.iter().copied())
            .collect();
        if !defined.contains(subset) {
            let hidden = covering()
                .filter(|(_, v, s)| !v.exported_to(ns) && s.contains(subset))
                .map(|(_, v, _)| v.namespace)
                .next();
            let known = if let Some(owner) = hidden {
                format!(
                    "the DestinationRule in namespace {owner} that defines it is not exported to namespace {ns}"
                )
            } else if defined.is_empty() {
                "no DestinationRule defines subsets for it".to_owned()
            } else {
                format!(
                    "defined subsets: {}",
                    defined.into_iter().collect::<Vec<_>>().join(", ")
                )
            };
            errors.push((index, ManifestError {
                origin: doc.origin.clone(),
                kind: doc.manifest.kind().to_owned(),
                name: doc.manifest.display_name(),
                field,
                reason: format!("subset {subset:?} of host {host} is not defined by any DestinationRule ({known})"),
            }));
        }
    };
    for (index, doc) in docs.iter().enumerate() {
        match &doc.manifest {
            Manifest::VirtualService(vs) => {
                let ns = vs.namespace();
                for (i, h) in vs.spec.http.iter().enumerate() {
                    for (j, r) in h.route.iter().enumerate() {
                        check(
                            index,
                            doc,
                            ns,
                            format!("spec.http[{i}].route[{j}].destination.subset"),
                            &r.destination,
                        );
                    }
                    if let Some(m) = &h.mirror {
                        check(index, doc, ns, format!("spec.http[{i}].mirror.subset"), m);
                    }
                    for (j, m) in h.mirrors.iter().enumerate() {
                        check(
                            index,
                            doc,
                            ns,
                            format!("spec.http[{i}].mirrors[{j}].destination.subset"),
                            &m.destination,
                        );
                    }
                }
                for (i, t) in vs.spec.tcp.iter().enumerate() {
                    for (j, r) in t.route.iter().enumerate() {
                        check(
                            index,
                            doc,
                            ns,
                            format!("spec.tcp[{i}].route[{j}].destination.subset"),
                            &r.destination,
                        );
                    }
                }
                for (i, t) in vs.spec.tls.iter().enumerate() {
                    for (j, r) in t.route.iter().enumerate() {
                        check(
                            index,
                            doc,
                            ns,
                            format!("spec.tls[{i}].route[{j}].destination.subset"),
                            &r.destination,
                        );
                    }
                }
            }
            Manifest::Sidecar(sc) => {
                if let Some(p) = sc
                    .spec
                    .outbound_traffic_policy
                    .as_ref()
                    .and_then(|o| o.egress_proxy.as_ref())
                {
                    check(
                        index,
                        doc,
                        sc.namespace(),
                        "spec.outboundTrafficPolicy.egressProxy.subset".into(),
                        p,
                    );
                }
            }
            _ => {}
        }
    }
    errors
}

/// Where a DestinationRule applies: its namespace and `exportTo` (empty: everywhere, Istio's
/// default `*`).
#[derive(Debug, Clone, Copy)]
struct Visibility<'a> {
    namespace: &'a str,
    export_to: &'a [String],
}

impl Visibility<'_> {
    /// Whether the rule is visible in `namespace` (Istio's `exportTo`).
    fn exported_to(&self, namespace: &str) -> bool {
        crate::model::visibility::is_visible(self.export_to, self.namespace, namespace)
    }
}

fn duplicates(docs: &[Document]) -> Vec<(usize, ManifestError)> {
    let mut seen: BTreeMap<(String, String), &str> = BTreeMap::new();
    let mut errors = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        if matches!(doc.manifest, Manifest::Ignored(_)) {
            continue;
        }
        let key = (doc.manifest.kind().to_owned(), doc.manifest.display_name());
        if let Some(first) = seen.get(&key) {
            errors.push((
                index,
                ManifestError {
                    origin: doc.origin.clone(),
                    kind: key.0.clone(),
                    name: key.1.clone(),
                    field: "metadata.name".into(),
                    reason: format!("duplicate object, already defined at {first}"),
                },
            ));
        } else {
            seen.insert(key, &doc.origin);
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_in_the_rule_namespace() {
        assert_eq!(
            resolve_host("reviews", "shop"),
            "reviews.shop.svc.cluster.local"
        );
        assert_eq!(resolve_host("api.example.com", "shop"), "api.example.com");
        assert_eq!(resolve_host("*", "shop"), "*");
    }

    #[test]
    fn export_to_limits_where_a_destination_rule_is_visible() {
        let rule = |export_to: &[&str]| {
            Visibility {
                namespace: "shop",
                export_to: &export_to.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            }
            .exported_to("web")
        };
        assert!(rule(&[]));
        assert!(rule(&["*"]));
        assert!(rule(&["web"]));
        assert!(rule(&[".", "web"]));
        assert!(!rule(&["."]));
        assert!(!rule(&["~"]));
        assert!(!rule(&["other"]));
    }

    #[test]
    fn wildcard_rule_hosts_cover_subdomains() {
        assert!(host_covers("*.example.com", "a.example.com"));
        assert!(!host_covers("*.example.com", "example.com"));
        assert!(host_covers("*", "anything"));
        assert!(host_covers("a.b", "a.b"));
    }
}
