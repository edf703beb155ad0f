//! What a source hands to the server: the current model and the current errors on `watch`
//! channels. Both sources publish through [`Publisher`], which builds the model from the store,
//! sends it only when it changed, and logs each error once when it first appears.
//!
//! A refused edit of an object that was accepted before does not take the object away: the last
//! accepted version keeps serving (what `kubectl apply` of an invalid object does, since Istio's
//! webhook refuses it and the cluster keeps the old one), and the error says why the edit was
//! refused. A refused object never accepted is skipped.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tracing::{info, warn};

use super::object::{Kind, ObjectKey};
use super::store::{Event, Store};
use crate::model::{self, Model, ModelError};

/// The receiving end of a started source. The first model is the complete initial state: a
/// source hands out its handle only after its initial read (or list) is done.
#[derive(Debug, Clone)]
pub struct SourceHandle {
    /// The current model; changes when the objects change.
    pub models: watch::Receiver<Arc<Model>>,
    /// The current errors (bad objects, skipped), sorted; updated before `models`, so a new model
    /// never goes with stale errors.
    pub errors: watch::Receiver<Arc<Vec<ModelError>>>,
}

/// The sending end, owned by the source's task. The task ends when every model receiver is gone.
#[derive(Debug)]
pub(crate) struct Publisher {
    models: watch::Sender<Arc<Model>>,
    errors: watch::Sender<Arc<Vec<ModelError>>>,
    /// The objects of the last published model that were accepted.
    accepted: Mutex<Store>,
}

impl Publisher {
    /// Builds the first model and the channels carrying it.
    pub(crate) fn start(
        store: &Store,
        source_errors: Vec<ModelError>,
        source: &'static str,
    ) -> (Publisher, SourceHandle) {
        let (model, errors, accepted) = assemble(store, source_errors, &Store::new());
        log_new_errors(&[], &errors);
        info!(
            source,
            services = model.services.len(),
            objects = store.len(),
            errors = errors.len(),
            "initial sync complete"
        );
        let (models_tx, models) = watch::channel(Arc::new(model));
        let (errors_tx, errors) = watch::channel(Arc::new(errors));
        let publisher = Publisher {
            models: models_tx,
            errors: errors_tx,
            accepted: Mutex::new(accepted),
        };
        (publisher, SourceHandle { models, errors })
    }

    /// Rebuilds the model from `store`; publishes it (and the errors) if either changed.
    pub(crate) fn publish(&self, store: &Store, source_errors: Vec<ModelError>) {
        let mut last = self.accepted.lock().unwrap_or_else(PoisonError::into_inner);
        let (model, errors, accepted) = assemble(store, source_errors, &last);
        *last = accepted;
        drop(last);
        self.errors.send_if_modified(|current| {
            if **current == errors {
                return false;
            }
            log_new_errors(current, &errors);
            *current = Arc::new(errors);
            true
        });
        let changed = self.models.send_if_modified(|current| {
            if **current == model {
                return false;
            }
            *current = Arc::new(model);
            true
        });
        if changed {
            let model = self.models.borrow();
            info!(
                services = model.services.len(),
                objects = store.len(),
                "model updated"
            );
        }
    }

    /// Resolves when nobody listens any more.
    pub(crate) async fn closed(&self) {
        self.models.closed().await;
    }
}

/// The model of `store` (with the last accepted version of every object whose edit is refused),
/// every error, and the objects accepted now.
fn assemble(
    store: &Store,
    source_errors: Vec<ModelError>,
    accepted: &Store,
) -> (Model, Vec<ModelError>, Store) {
    let (mut model, mut errors) = model::build(store);
    // A document refused before it reached the store (unparsable, unknown field) is refused when
    // its key is absent; one that reached it is refused by the model's validation.
    let refused = source_errors
        .iter()
        .filter_map(object_key)
        .filter(|key| store.get(key).is_none())
        .chain(errors.iter().filter_map(object_key));
    let mut patched = store.clone();
    let mut kept = false;
    for key in refused {
        let Some(last) = accepted.get(&key) else {
            continue;
        };
        if store.get(&key) != Some(last) {
            info!(object = %key, origin = %last.origin, "edit refused; the last accepted version keeps serving");
            patched.apply(Event::Apply(Box::new(last.clone())));
            kept = true;
        }
    }
    if kept {
        let (rebuilt, rebuild_errors) = model::build(&patched);
        model = rebuilt;
        errors.extend(rebuild_errors);
    }
    errors.extend(source_errors);
    errors.sort();
    errors.dedup();
    let still_refused: BTreeSet<ObjectKey> = errors.iter().filter_map(object_key).collect();
    let accepted = Store::from_objects(
        patched
            .iter()
            .filter(|o| !still_refused.contains(&o.key) || accepted.get(&o.key) == Some(o))
            .cloned(),
    );
    (model, errors, accepted)
}

/// The store key an error names, when it names one (`Kind` and `namespace/name`).
fn object_key(err: &ModelError) -> Option<ObjectKey> {
    let kind = Kind::from_kind_str(&err.kind)?;
    let (namespace, name) = match (kind, err.name.split_once('/')) {
        (Kind::Namespace, None) => (String::new(), err.name.clone()),
        (Kind::Namespace, Some(_)) | (_, None) => return None,
        (_, Some((ns, name))) => (ns.to_owned(), name.to_owned()),
    };
    (!name.is_empty()).then_some(ObjectKey {
        kind,
        namespace,
        name,
    })
}

fn log_new_errors(old: &[ModelError], new: &[ModelError]) {
    let old: BTreeSet<&ModelError> = old.iter().collect();
    for err in new.iter().filter(|e| !old.contains(e)) {
        warn!(
            origin = %err.origin,
            kind = %err.kind,
            name = %err.name,
            field = %err.field,
            reason = %err.reason,
            "object skipped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifest::{Document, parse_documents};

    /// The objects of `text` and the errors of the documents that did not parse.
    fn read(text: &str) -> (Store, Vec<ModelError>) {
        let mut store = Store::new();
        let mut errors = Vec::new();
        for document in parse_documents(text, "mesh.yaml") {
            match document {
                Ok(Document::Object(object)) => {
                    store.apply(Event::Apply(object));
                }
                Ok(Document::Ignored(_)) => {}
                Err(err) => errors.push(err),
            }
        }
        (store, errors)
    }

    const RULE: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}\n---\n";

    fn virtual_service(route: &str) -> String {
        format!(
            "{RULE}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - {route}\n"
        )
    }

    fn timeouts(model: &Model) -> Vec<u64> {
        model
            .virtual_services
            .iter()
            .filter_map(|vs| vs.spec.http[0].timeout)
            .map(|t| t.0.as_secs())
            .collect()
    }

    #[test]
    fn a_refused_edit_keeps_the_last_accepted_version_serving() {
        let good = virtual_service("{timeout: 2s, route: [{destination: {host: reviews}}]}");
        let (store, errors) = read(&good);
        let (publisher, handle) = Publisher::start(&store, errors, "test");
        assert_eq!(timeouts(&handle.models.borrow()), [2]);

        // Refused by validation (a subset no DestinationRule defines): the old version serves.
        let bad =
            virtual_service("{timeout: 3s, route: [{destination: {host: reviews, subset: v9}}]}");
        let (store, errors) = read(&bad);
        publisher.publish(&store, errors);
        assert_eq!(timeouts(&handle.models.borrow()), [2]);
        let errors = handle.errors.borrow().clone();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].kind, "VirtualService");
        assert_eq!(errors[0].name, "default/reviews");
        assert!(errors[0].reason.contains("v9"), "{}", errors[0]);

        // Refused by the parser (`circuitBreaker:` is not an Istio field): still the old one.
        let unparsable = virtual_service(
            "{timeout: 4s, circuitBreaker: {}, route: [{destination: {host: reviews}}]}",
        );
        let (store, errors) = read(&unparsable);
        assert_eq!(errors.len(), 1, "{errors:?}");
        publisher.publish(&store, errors);
        assert_eq!(timeouts(&handle.models.borrow()), [2]);
        assert!(handle.errors.borrow()[0].field.contains("circuitBreaker"));

        // A valid edit applies and clears the error.
        let edited = virtual_service("{timeout: 5s, route: [{destination: {host: reviews}}]}");
        let (store, errors) = read(&edited);
        publisher.publish(&store, errors);
        assert_eq!(timeouts(&handle.models.borrow()), [5]);
        assert!(handle.errors.borrow().is_empty());

        // Deleting the object removes it: only a refused edit keeps the old version.
        let (store, errors) = read(RULE);
        publisher.publish(&store, errors);
        assert!(timeouts(&handle.models.borrow()).is_empty());
    }

    #[test]
    fn a_refused_object_never_accepted_is_skipped() {
        let bad = virtual_service("{route: [{destination: {host: reviews, subset: v9}}]}");
        let (store, errors) = read(&bad);
        let (_publisher, handle) = Publisher::start(&store, errors, "test");
        assert!(handle.models.borrow().virtual_services.is_empty());
        assert_eq!(handle.errors.borrow().len(), 1);
    }
}
