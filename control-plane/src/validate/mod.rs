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
        Manifest::VirtualService(o) => virtual_service::check(&mut r, &o.spec),
        Manifest::DestinationRule(o) => destination_rule::check(&mut r, &o.spec),
        Manifest::ServiceEntry(o) => service_entry::check_service_entry(&mut r, &o.spec),
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
