//! What a source hands to the server: the current model and the current errors on `watch`
//! channels. Both sources publish through [`Publisher`], which builds the model from the store,
//! sends it only when it changed, and logs each error once when it first appears.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use super::store::Store;
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
}

impl Publisher {
    /// Builds the first model and the channels carrying it.
    pub(crate) fn start(
        store: &Store,
        source_errors: Vec<ModelError>,
        source: &'static str,
    ) -> (Publisher, SourceHandle) {
        let (model, errors) = assemble(store, source_errors);
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
        };
        (publisher, SourceHandle { models, errors })
    }

    /// Rebuilds the model from `store`; publishes it (and the errors) if either changed.
    pub(crate) fn publish(&self, store: &Store, source_errors: Vec<ModelError>) {
        let (model, errors) = assemble(store, source_errors);
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

fn assemble(store: &Store, source_errors: Vec<ModelError>) -> (Model, Vec<ModelError>) {
    let (model, mut errors) = model::build(store);
    errors.extend(source_errors);
    errors.sort();
    errors.dedup();
    (model, errors)
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
