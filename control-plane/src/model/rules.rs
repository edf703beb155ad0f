//! The Istio kinds into the model: ServiceEntries and WorkloadEntries become services and
//! endpoints, the rules are kept as [`super::Config`] with their short host names resolved in
//! the rule's namespace.

use std::collections::BTreeSet;

use super::{Model, ModelError};
use crate::source::object::Kind;
use crate::source::store::Store;

/// Adds every Istio object of `store` to `model`.
pub(super) fn add_istio(
    store: &Store,
    _namespaces: &BTreeSet<String>,
    _model: &mut Model,
    errors: &mut Vec<ModelError>,
) {
    for kind in Kind::ISTIO {
        for object in store.of_kind(kind) {
            errors.push(
                ModelError::document(&object.origin, "Istio kinds are not implemented yet").object(
                    kind.as_str(),
                    format!("{}/{}", object.key.namespace, object.key.name),
                ),
            );
        }
    }
}
