//! The Istio kinds into the model: each object is validated with Istio's rules (per object and
//! across objects, [`crate::validate::partition`]); the survivors are kept as [`Config`]s with
//! the short host names in them resolved in the rule's namespace, and ServiceEntries become
//! services with endpoints (inline, WorkloadEntries and Pods they select, or their DNS hosts).

use std::collections::BTreeSet;

use super::host::resolve_host;
use super::{Config, Model, ModelError, service_entry};
use crate::api::virtual_service::Destination;
use crate::api::{self, Manifest};
use crate::source::object::Kind;
use crate::source::store::Store;
use crate::validate;

/// Adds every Istio object of `store` to `model` as a config; refused objects become errors.
pub(super) fn add_istio(
    store: &Store,
    namespaces: &BTreeSet<String>,
    model: &mut Model,
    errors: &mut Vec<ModelError>,
) {
    let resolve = |host: &mut String, ns: &str| *host = resolve_host(host, ns, namespaces);
    // Hosts are resolved before validation, so the cross-object checks (a subset must be defined
    // by a DestinationRule for the host) compare the same names the model will hold.
    let documents: Vec<api::Document> = Kind::ISTIO
        .into_iter()
        .flat_map(|kind| store.of_kind(kind))
        .map(|object| {
            let mut document = object.to_document();
            match &mut document.manifest {
                Manifest::VirtualService(o) => {
                    let ns = o.namespace().to_owned();
                    resolve_virtual_service(&mut o.spec, &ns, &resolve);
                }
                Manifest::DestinationRule(o) => {
                    let ns = o.namespace().to_owned();
                    resolve(&mut o.spec.host, &ns);
                }
                _ => {}
            }
            document
        })
        .collect();
    let (valid, refused) = validate::partition(documents);
    errors.extend(refused.into_iter().map(ModelError::from));

    for document in valid {
        let origin = document.origin;
        match document.manifest {
            Manifest::VirtualService(o) => model.virtual_services.push(config(o, origin)),
            Manifest::DestinationRule(o) => model.destination_rules.push(config(o, origin)),
            Manifest::Sidecar(o) => model.sidecars.push(config(o, origin)),
            Manifest::PeerAuthentication(o) => model.peer_authentications.push(config(o, origin)),
            Manifest::AuthorizationPolicy(o) => {
                model.authorization_policies.push(config(o, origin))
            }
            Manifest::ServiceEntry(o) => model.service_entries.push(config(o, origin)),
            Manifest::WorkloadEntry(o) => model.workload_entries.push(config(o, origin)),
            // Only Istio kinds were passed in.
            _ => {}
        }
    }
}

/// Adds the services of every ServiceEntry; a host already defined (by a Kubernetes service or
/// an earlier entry) is refused.
pub(super) fn add_service_entries(store: &Store, model: &mut Model, errors: &mut Vec<ModelError>) {
    for entry in &model.service_entries {
        let services = match service_entry::services(store, entry, &model.workload_entries) {
            Ok(services) => services,
            Err(err) => {
                errors.push(err);
                continue;
            }
        };
        for service in services {
            if let Some(existing) = model.services.get(&service.hostname) {
                errors.push(
                    ModelError::document(
                        &entry.origin,
                        format!(
                            "host {} is already defined by a service in namespace {}; this entry's host is skipped",
                            service.hostname, existing.namespace
                        ),
                    )
                    .object("ServiceEntry", format!("{}/{}", entry.namespace, entry.name))
                    .field("spec.hosts"),
                );
                continue;
            }
            model.services.insert(service.hostname.clone(), service);
        }
    }
}

fn config<T>(object: api::Object<T>, origin: String) -> Config<T> {
    Config {
        name: object.name().to_owned(),
        namespace: object.namespace().to_owned(),
        origin,
        spec: object.spec,
    }
}

/// Resolves every host a VirtualService names: its `hosts` and every destination.
fn resolve_virtual_service(
    spec: &mut api::VirtualService,
    namespace: &str,
    resolve: &impl Fn(&mut String, &str),
) {
    let destination = |d: &mut Destination| resolve(&mut d.host, namespace);
    for host in &mut spec.hosts {
        resolve(host, namespace);
    }
    for http in &mut spec.http {
        http.route
            .iter_mut()
            .for_each(|r| destination(&mut r.destination));
        http.mirror.iter_mut().for_each(destination);
        http.mirrors
            .iter_mut()
            .for_each(|m| destination(&mut m.destination));
    }
    for tcp in &mut spec.tcp {
        tcp.route
            .iter_mut()
            .for_each(|r| destination(&mut r.destination));
    }
    for tls in &mut spec.tls {
        tls.route
            .iter_mut()
            .for_each(|r| destination(&mut r.destination));
    }
}
