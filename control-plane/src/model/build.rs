//! `build`: the store's objects into one immutable [`Model`]. Pure and deterministic (the same
//! objects give the same model, whichever source they came from), so the directory and the
//! Kubernetes source can be checked against each other and translation can be golden-tested.

use std::collections::BTreeSet;

use super::{Model, ModelError, Namespace, kubernetes, rules};
use crate::api::Manifest;
use crate::source::object::Kind;
use crate::source::store::Store;

/// Builds the model from every object in `store`. Objects that cannot be used are left out and
/// reported, one [`ModelError`] each (sorted); everything else is in the model. Logging is the
/// caller's job, so a rebuild does not repeat old errors.
pub fn build(store: &Store) -> (Model, Vec<ModelError>) {
    let mut model = Model::default();
    let mut errors = Vec::new();

    for object in store.of_kind(Kind::Namespace) {
        if let Manifest::Namespace(ns) = &object.manifest {
            let name = object.key.name.clone();
            let labels = ns.metadata.labels.clone().unwrap_or_default();
            model
                .namespaces
                .insert(name.clone(), Namespace { name, labels });
        }
    }

    let namespaces = known_namespaces(store);
    rules::add_istio(store, &namespaces, &mut model, &mut errors);

    for object in store.of_kind(Kind::Service) {
        let Manifest::Service(svc) = &object.manifest else {
            continue;
        };
        match kubernetes::service(store, object, svc, &model.workload_entries) {
            Ok(service) => {
                model.services.insert(service.hostname.clone(), service);
            }
            Err(err) => errors.push(err),
        }
    }

    rules::add_service_entries(store, &mut model, &mut errors);

    errors.sort();
    (model, errors)
}

/// Every namespace the mesh knows: Namespace objects and the namespaces objects live in.
fn known_namespaces(store: &Store) -> BTreeSet<String> {
    store
        .iter()
        .map(|o| match o.key.kind {
            Kind::Namespace => o.key.name.clone(),
            _ => o.key.namespace.clone(),
        })
        .collect()
}
