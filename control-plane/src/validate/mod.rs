//! Istio's validation rules: every object is checked before use; a bad one is reported (object,
//! field path, reason) and skipped while everything else keeps serving.
//!
//! The schema (unknown fields, types, enum values, duration syntax) is enforced while parsing
//! ([`crate::api::manifest`]); this module adds Istio's semantic rules per kind
//! ([`check_manifest`]) and across objects ([`cross_check`]). [`partition`] applies both and
//! splits a set of documents into the ones to serve and the errors to report.

mod cross;
mod destination_rule;
mod rules;
mod security;
mod service_entry;
mod sidecar;
mod virtual_service;

pub use cross::{cross_check, resolve_host};
pub(crate) use rules::is_dns1123_label;

use crate::model::visibility::Exporter;

use crate::api::{Document, Manifest, ManifestError};

/// A rule violation inside one object: the field path and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path of the field, e.g. `spec.http[0].route[1].weight`.
    pub field: String,
    /// Why it is wrong.
    pub reason: String,
}

/// Checks one object's spec with Istio's rules. Kubernetes kinds (read by k8s-openapi's
/// types) and ignored documents have no rules here.
pub fn check_manifest(manifest: &Manifest) -> Vec<FieldError> {
    let mut r = rules::Report::default();
    match manifest {
        Manifest::VirtualService(o) => {
            virtual_service::check(&mut r, &o.spec);
            r.export_to(o.namespace(), &o.spec.export_to, Exporter::Rule);
        }
        Manifest::DestinationRule(o) => {
            destination_rule::check(&mut r, &o.spec);
            let exporter = match o.spec.workload_selector {
                Some(_) => Exporter::RuleWithSelector,
                None => Exporter::Rule,
            };
            r.export_to(o.namespace(), &o.spec.export_to, exporter);
        }
        Manifest::ServiceEntry(o) => {
            service_entry::check_service_entry(&mut r, &o.spec);
            r.export_to(o.namespace(), &o.spec.export_to, Exporter::Service);
        }
        Manifest::WorkloadEntry(o) => service_entry::check_workload_entry(&mut r, &o.spec),
        Manifest::Sidecar(o) => sidecar::check(&mut r, &o.spec),
        Manifest::PeerAuthentication(o) => security::check_peer_authentication(&mut r, &o.spec),
        Manifest::AuthorizationPolicy(o) => security::check_authorization_policy(&mut r, &o.spec),
        Manifest::Namespace(_)
        | Manifest::Service(_)
        | Manifest::EndpointSlice(_)
        | Manifest::Pod(_)
        | Manifest::Ignored(_) => {}
    }
    if let Some(meta) = manifest.metadata()
        && !matches!(manifest, Manifest::Ignored(_))
        && meta.name.as_deref().unwrap_or_default().is_empty()
    {
        r.push("metadata.name", "name is required");
    }
    r.errors
}

/// Checks one document, naming the object in each error.
pub fn validate(doc: &Document) -> Vec<ManifestError> {
    check_manifest(&doc.manifest)
        .into_iter()
        .map(|e| ManifestError {
            origin: doc.origin.clone(),
            kind: doc.manifest.kind().to_owned(),
            name: doc.manifest.display_name(),
            field: e.field,
            reason: e.reason,
        })
        .collect()
}

/// Validates a set of documents: each on its own, then the survivors across each other.
/// Returns the documents to use and the errors of the ones skipped, in input order.
pub fn partition(docs: Vec<Document>) -> (Vec<Document>, Vec<ManifestError>) {
    let mut errors = Vec::new();
    let mut ok = Vec::with_capacity(docs.len());
    for doc in docs {
        let errs = validate(&doc);
        if errs.is_empty() {
            ok.push(doc);
        } else {
            errors.extend(errs);
        }
    }
    let cross = cross::cross_check_indexed(&ok);
    let bad: std::collections::BTreeSet<usize> = cross.iter().map(|(i, _)| *i).collect();
    errors.extend(cross.into_iter().map(|(_, e)| e));
    let keep = ok
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !bad.contains(i))
        .map(|(_, d)| d)
        .collect();
    (keep, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse_documents;

    /// `(kind, apiVersion group, spec YAML, expected "field: reason" prefix)`.
    const CASES: &[(&str, &str, &str, &str)] = &[
        (
            "DestinationRule",
            "networking",
            "host: a\ntrafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x, useSourceIp: true}}}",
            "spec.trafficPolicy.loadBalancer.consistentHash: exactly one of httpHeaderName",
        ),
        (
            "DestinationRule",
            "networking",
            "host: a\ntrafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {}, maglev: {}}}}",
            "spec.trafficPolicy.loadBalancer.consistentHash: only one of ringHash or maglev",
        ),
        (
            "DestinationRule",
            "networking",
            "host: a\ntrafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: a/*, to: {b/*: 60}}]}}}",
            "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: weights add up to 60",
        ),
        (
            "DestinationRule",
            "networking",
            "host: a\ntrafficPolicy: {tunnel: {protocol: GET, targetHost: b, targetPort: 80}}",
            "spec.trafficPolicy.tunnel.protocol: tunnel protocol \"GET\"",
        ),
        (
            "DestinationRule",
            "networking",
            "host: a\ntrafficPolicy: {portLevelSettings: [{port: {number: 80}}, {port: {number: 80}}]}",
            "spec.trafficPolicy.portLevelSettings[1].port.number: duplicate port-level settings",
        ),
        (
            "DestinationRule",
            "networking",
            "host: a\ntrafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent: percentage 101",
        ),
        (
            "DestinationRule",
            "networking",
            "host: a\ntrafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}",
            "spec.trafficPolicy.connectionPool.tcp.maxConnections: -1 must not be negative",
        ),
        (
            "DestinationRule",
            "networking",
            "host: a\nsubsets: [{name: V1}]",
            "spec.subsets[0].name: subset name \"V1\" must be a DNS-1123 label",
        ),
        (
            "DestinationRule",
            "networking",
            "host: a\ntrafficPolicy: {tls: {mode: ISTIO_MUTUAL, privateKey: /k}}",
            "spec.trafficPolicy.tls: ISTIO_MUTUAL uses Istio's certificates",
        ),
        (
            "DestinationRule",
            "networking",
            "host: \"\"",
            "spec.host: host must not be empty",
        ),
        (
            "VirtualService",
            "networking",
            "hosts: [a]\nhttp: [{delegate: {}}]",
            "spec.http[0].delegate.name: delegate name is required",
        ),
        (
            "VirtualService",
            "networking",
            "hosts: [a]\nhttp: [{route: [{destination: {host: a}, weight: 0}, {destination: {host: b}, weight: 0}]}]",
            "spec.http[0].route: the destinations' weights add up to 0",
        ),
        (
            "VirtualService",
            "networking",
            "hosts: [a]\nhttp: [{redirect: {uri: /b, redirectCode: 200}}]",
            "spec.http[0].redirect.redirectCode: 200 is not a redirect code",
        ),
        (
            "VirtualService",
            "networking",
            "hosts: [a]\nhttp: [{directResponse: {status: 99}}]",
            "spec.http[0].directResponse.status: status 99 is out of range",
        ),
        (
            "VirtualService",
            "networking",
            "hosts: [a]\nhttp: [{route: [{destination: {host: a}}], corsPolicy: {maxAge: 1500ms}}]",
            "spec.http[0].corsPolicy.maxAge: maxAge must be whole seconds",
        ),
        (
            "VirtualService",
            "networking",
            "hosts: [a]\nhttp: [{route: [{destination: {host: a, port: {number: 0}}}]}]",
            "spec.http[0].route[0].destination.port.number: port 0 is out of range",
        ),
        (
            "VirtualService",
            "networking",
            "hosts: [a]\nhttp: [{route: [{destination: {host: a}}], headers: {request: {set: {\":path\": /x}}}}]",
            "spec.http[0].headers.request.set[:path]",
        ),
        (
            "VirtualService",
            "networking",
            "hosts: [a]\ntcp: [{route: []}]",
            "spec.tcp[0].route: at least one route destination is required",
        ),
        (
            "VirtualService",
            "networking",
            "hosts: [a]\ntls: [{match: [{sniHosts: []}], route: [{destination: {host: a}}]}]",
            "spec.tls[0].match[0].sniHosts: at least one SNI host is required",
        ),
        (
            "VirtualService",
            "networking",
            "hosts: [a]",
            "spec: at least one of http, tcp or tls routes is required",
        ),
        (
            "ServiceEntry",
            "networking",
            "hosts: [a.example.com]\naddresses: [10.0.0.0/8]\nports: [{number: 80, name: http}]\nresolution: DNS",
            "spec.addresses[0]: CIDR addresses are allowed only with NONE or STATIC",
        ),
        (
            "ServiceEntry",
            "networking",
            "hosts: [\"*.example.com\"]\nports: [{number: 80, name: http}]\nresolution: DNS",
            "spec.hosts[0]: wildcard hosts cannot be resolved with DNS",
        ),
        (
            "ServiceEntry",
            "networking",
            "hosts: [a.example.com]\nports: [{number: 80, name: http, protocol: HTTP3}]",
            "spec.ports[0].protocol: unknown protocol \"HTTP3\"",
        ),
        (
            "ServiceEntry",
            "networking",
            "hosts: [a.example.com]\nports: [{number: 80, name: http}]\nresolution: STATIC\nendpoints: [{address: db.example.com}]",
            "spec.endpoints[0].address: STATIC resolution needs IP endpoints",
        ),
        (
            "ServiceEntry",
            "networking",
            "hosts: [a.example.com]\nports: [{number: 80, name: http}]\nresolution: STATIC\nendpoints: [{address: 1.1.1.1, ports: {grpc: 90}}]",
            "spec.endpoints[0].ports[grpc]: endpoint port \"grpc\" is not a port name",
        ),
        (
            "ServiceEntry",
            "networking",
            "hosts: [a.example.com]\nports: [{number: 80, name: http}]\nresolution: STATIC\nworkloadSelector: {labels: {app: a}}",
            "spec.workloadSelector: workloadSelector requires location MESH_INTERNAL",
        ),
        (
            "Sidecar",
            "networking",
            "egress: [{hosts: [\"./*\"]}, {port: {number: 80}, hosts: [\"./*\"]}]",
            "spec.egress[0].port: the egress listener without a port must be the last one",
        ),
        (
            "Sidecar",
            "networking",
            "ingress: [{port: {number: 80}, defaultEndpoint: \"10.0.0.1:80\"}]",
            "spec.ingress[0].defaultEndpoint: \"10.0.0.1:80\" must be",
        ),
        (
            "Sidecar",
            "networking",
            "outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: egress}}",
            "spec.outboundTrafficPolicy.egressProxy: egressProxy can only be set with mode ALLOW_ANY",
        ),
        ("Sidecar", "networking", "{}", "spec: empty Sidecar"),
        (
            "Sidecar",
            "networking",
            "workloadSelector: {labels: {app: \"*\"}}\negress: [{hosts: [\"./*\"]}]",
            "spec.workloadSelector.labels[app]: wildcard is not allowed",
        ),
        (
            "PeerAuthentication",
            "security",
            "selector: {matchLabels: {app: a}}\nportLevelMtls: {\"0\": {mode: STRICT}}",
            "spec.portLevelMtls[0]: \"0\" is not a port number",
        ),
        (
            "AuthorizationPolicy",
            "security",
            "selector: {matchLabels: {app: a}}\ntargetRef: {kind: Service, name: a}",
            "spec: only one of selector, targetRef or targetRefs",
        ),
        (
            "AuthorizationPolicy",
            "security",
            "targetRef: {kind: Service, name: a, namespace: other}",
            "spec.targetRef.namespace: cross-namespace references are not supported",
        ),
        (
            "AuthorizationPolicy",
            "security",
            "rules: [{from: [{source: {serviceAccounts: [a/b], principals: [c]}}]}]",
            "spec.rules[0].from[0].source: serviceAccounts cannot be used with principals",
        ),
        (
            "AuthorizationPolicy",
            "security",
            "rules: [{from: [{source: {}}]}]",
            "spec.rules[0].from[0].source: source must not be empty",
        ),
        (
            "AuthorizationPolicy",
            "security",
            "rules: [{to: [{operation: {ports: [http]}}]}]",
            "spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port number",
        ),
        (
            "AuthorizationPolicy",
            "security",
            "rules: [{when: [{key: request.color, values: [red]}]}]",
            "spec.rules[0].when[0].key: unknown attribute \"request.color\"",
        ),
        (
            "AuthorizationPolicy",
            "security",
            "rules: [{when: [{key: source.ip}]}]",
            "spec.rules[0].when[0]: at least one of values or notValues is required",
        ),
        (
            "WorkloadEntry",
            "networking",
            "address: unix://relative/path",
            "spec.address: unix socket must be an absolute path",
        ),
    ];

    #[test]
    fn istio_rules_name_the_field_and_reason() {
        let mut failures = Vec::new();
        for (kind, group, spec, want) in CASES {
            let spec = spec.replace('\n', "\n  ");
            let text = format!(
                "apiVersion: {group}.istio.io/v1\nkind: {kind}\nmetadata: {{name: t}}\nspec:\n  {spec}\n"
            );
            let doc = match parse_documents(&text, "t.yaml").pop() {
                Some(Ok(doc)) => doc,
                other => {
                    failures.push(format!("{want}: did not parse: {other:?}"));
                    continue;
                }
            };
            let errors: Vec<String> = check_manifest(&doc.manifest)
                .iter()
                .map(ToString::to_string)
                .collect();
            if !errors.iter().any(|e| e.starts_with(want)) {
                failures.push(format!("want {want}\n  got {errors:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn partition_skips_only_the_bad_objects() {
        let text = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: reviews, subsets: [{name: v1}]}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ok}\nspec: {hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}}]}]}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad}\nspec: {hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v2}}]}]}\n";
        let docs: Vec<_> = parse_documents(text, "f.yaml")
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let (ok, errors) = partition(docs);
        assert_eq!(
            ok.iter().map(|d| d.origin.as_str()).collect::<Vec<_>>(),
            ["f.yaml#0", "f.yaml#1"]
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "spec.http[0].route[0].destination.subset");
        assert!(
            errors[0].reason.contains("defined subsets: v1"),
            "{}",
            errors[0]
        );
    }
}
