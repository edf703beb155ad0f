//! The Kubernetes source (`--kubernetes`): one kube-rs watcher per kind feeding the same store
//! and the same manifest parsing as the directory source, so both reach the same model. Nothing
//! is published before every watcher has completed its initial list. A relist (after a watch
//! error or 410 Gone) is buffered and applied as one replace at `InitDone`, so the served model
//! never loses objects in between.

use std::collections::{BTreeMap, BTreeSet};

use futures::{FutureExt, StreamExt};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use tracing::{debug, info, warn};

use super::manifest::{Document, parse_value};
use super::object::{Kind, Object, ObjectKey};
use super::publish::{Publisher, SourceHandle};
use super::store::{Event, Store};
use crate::model::ModelError;

/// The version the Istio kinds are watched in: served by every Istio release Ferry targets
/// (v1 only since Istio 1.22). The schema is the same in every version.
pub const ISTIO_WATCH_VERSION: &str = "v1beta1";

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// No usable in-cluster config or kubeconfig.
    #[error("cannot create a Kubernetes client (in-cluster config or kubeconfig): {0}")]
    Client(#[from] kube::Error),
    /// The watch streams ended before every initial list completed.
    #[error("kubernetes watches ended before the initial list of {0} completed")]
    Ended(String),
}

/// The API resource a kind is listed and watched as.
pub fn api_resource(kind: Kind) -> ApiResource {
    let (group, version) = match kind {
        Kind::Namespace | Kind::Service | Kind::Pod => ("", "v1"),
        Kind::EndpointSlice => ("discovery.k8s.io", "v1"),
        _ => (kind.istio_group().unwrap_or_default(), ISTIO_WATCH_VERSION),
    };
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.as_str().to_owned(),
        plural: kind.plural().to_owned(),
    }
}

/// `ferry-control serve --kubernetes`: a client from the in-cluster config or the kubeconfig
/// (`kube::Client::try_default`), then [`watch_kubernetes`].
pub async fn kubernetes_source() -> Result<SourceHandle, KubeSourceError> {
    let client = Client::try_default().await?;
    watch_kubernetes(client).await
}

/// Starts a watcher for every kind Ferry reads, across all namespaces, and returns once each
/// has listed everything. The watchers retry failed requests with kube's default backoff; the
/// task ends when every receiver of the handle's `models` is dropped.
pub async fn watch_kubernetes(client: Client) -> Result<SourceHandle, KubeSourceError> {
    let mut streams = futures::stream::select_all(Kind::ALL.map(|kind| {
        let resource = api_resource(kind);
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |event| (kind, event))
            .boxed()
    }));
    let mut state = State::default();
    while state.synced.len() < Kind::ALL.len() {
        let Some((kind, event)) = streams.next().await else {
            return Err(KubeSourceError::Ended(state.unsynced()));
        };
        state.handle(kind, event);
    }
    let (publisher, handle) = Publisher::start(&state.store, state.errors(), "kubernetes");

    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = publisher.closed() => break,
                next = streams.next() => {
                    let Some((kind, event)) = next else { break };
                    let mut changed = state.handle(kind, event);
                    // Apply whatever else is already there before rebuilding the model.
                    while let Some(Some((kind, event))) = streams.next().now_or_never() {
                        changed |= state.handle(kind, event);
                    }
                    if changed {
                        publisher.publish(&state.store, state.errors());
                    }
                }
            }
        }
        debug!("kubernetes watches stopped");
    });
    Ok(handle)
}

/// The store plus what the watchers are in the middle of.
#[derive(Default)]
struct State {
    store: Store,
    /// Relists in progress: the objects (and bad objects) listed so far, per kind.
    relisting: BTreeMap<Kind, (Vec<Object>, BTreeMap<ObjectKey, ModelError>)>,
    /// Kinds whose initial list completed.
    synced: BTreeSet<Kind>,
    /// Objects that could not be read, by key.
    bad: BTreeMap<ObjectKey, ModelError>,
}

impl State {
    /// Applies one watcher event; returns whether the store or the errors changed.
    fn handle(
        &mut self,
        kind: Kind,
        event: Result<WatchEvent<DynamicObject>, watcher::Error>,
    ) -> bool {
        match event {
            Ok(WatchEvent::Init) => {
                debug!(%kind, "listing");
                self.relisting.insert(kind, Default::default());
                false
            }
            Ok(WatchEvent::InitApply(obj)) => {
                let (objects, bad) = self.relisting.entry(kind).or_default();
                let key = key_of(kind, &obj);
                match convert(&key, obj) {
                    Ok(object) => objects.push(object),
                    Err(err) => {
                        bad.insert(key, err);
                    }
                }
                false
            }
            Ok(WatchEvent::InitDone) => {
                let (objects, bad) = self.relisting.remove(&kind).unwrap_or_default();
                info!(%kind, objects = objects.len(), errors = bad.len(), "listed");
                self.synced.insert(kind);
                let mut changed = self.store.apply(Event::Replace { kind, objects });
                let before = self.bad.len();
                self.bad.retain(|key, _| key.kind != kind);
                changed |= before != self.bad.len() || !bad.is_empty();
                self.bad.extend(bad);
                changed
            }
            Ok(WatchEvent::Apply(obj)) => {
                let key = key_of(kind, &obj);
                match convert(&key, obj) {
                    Ok(object) => {
                        let cleared = self.bad.remove(&key).is_some();
                        self.store.apply(Event::Apply(Box::new(object))) | cleared
                    }
                    Err(err) => {
                        // Istio's semantics: an object that does not read is skipped, including
                        // its previous version.
                        self.store.apply(Event::Delete(key.clone()));
                        self.bad.insert(key, err);
                        true
                    }
                }
            }
            Ok(WatchEvent::Delete(obj)) => {
                let key = key_of(kind, &obj);
                let cleared = self.bad.remove(&key).is_some();
                self.store.apply(Event::Delete(key)) | cleared
            }
            Err(err) => {
                let not_served = matches!(
                    &err,
                    watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.is_not_found()
                );
                if not_served {
                    let resource = api_resource(kind);
                    warn!(%kind, api_version = %resource.api_version, error = %err, "resource not served by the API server (is its CRD installed?); retrying");
                } else {
                    warn!(%kind, error = %err, "kubernetes watch failed; retrying with backoff, serving the last model");
                }
                false
            }
        }
    }

    fn errors(&self) -> Vec<ModelError> {
        self.bad.values().cloned().collect()
    }

    fn unsynced(&self) -> String {
        let missing: Vec<&str> = Kind::ALL
            .iter()
            .filter(|k| !self.synced.contains(k))
            .map(|k| k.as_str())
            .collect();
        missing.join(", ")
    }
}

fn key_of(kind: Kind, obj: &DynamicObject) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: match kind {
            Kind::Namespace => String::new(),
            _ => obj
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
        },
        name: obj.metadata.name.clone().unwrap_or_default(),
    }
}

/// An API object into a store object, through the same parsing as a manifest document. List
/// items come without `apiVersion` and `kind`; the watched resource supplies them.
fn convert(key: &ObjectKey, obj: DynamicObject) -> Result<Object, ModelError> {
    let kind = key.kind;
    let origin = if key.namespace.is_empty() {
        key.name.clone()
    } else {
        format!("{}/{}", key.namespace, key.name)
    };
    let resource = api_resource(kind);
    let mut value =
        serde_json::to_value(&obj).map_err(|err| ModelError::document(&origin, err.to_string()))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), resource.api_version.into());
        map.insert("kind".into(), resource.kind.into());
    }
    match parse_value(value, &origin) {
        Ok(Document::Object(object)) => Ok(*object),
        Ok(Document::Ignored(message)) => Err(ModelError::document(&origin, message)),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, ip: &str) -> DynamicObject {
        DynamicObject::new(name, &api_resource(Kind::Service))
            .within("default")
            .data(serde_json::json!({"spec": {"clusterIP": ip, "ports": [{"port": 80}]}}))
    }

    fn names(state: &State) -> Vec<String> {
        state
            .store
            .of_kind(Kind::Service)
            .map(|o| o.key.name.clone())
            .collect()
    }

    #[test]
    fn a_relist_replaces_the_kind_only_when_complete() {
        let mut state = State::default();
        state.handle(Kind::Service, Ok(WatchEvent::Init));
        state.handle(
            Kind::Service,
            Ok(WatchEvent::InitApply(service("a", "10.0.0.1"))),
        );
        state.handle(
            Kind::Service,
            Ok(WatchEvent::InitApply(service("b", "10.0.0.2"))),
        );
        assert!(names(&state).is_empty(), "nothing before InitDone");
        assert!(state.handle(Kind::Service, Ok(WatchEvent::InitDone)));
        assert_eq!(names(&state), ["a", "b"]);
        assert!(state.synced.contains(&Kind::Service));

        // A relist in progress keeps serving the old objects; its end applies deletions.
        state.handle(Kind::Service, Ok(WatchEvent::Init));
        state.handle(
            Kind::Service,
            Ok(WatchEvent::InitApply(service("b", "10.0.0.2"))),
        );
        assert_eq!(names(&state), ["a", "b"]);
        assert!(state.handle(Kind::Service, Ok(WatchEvent::InitDone)));
        assert_eq!(names(&state), ["b"]);
    }

    #[test]
    fn a_bad_update_drops_the_object_and_reports_it() {
        let mut state = State::default();
        state.handle(
            Kind::Service,
            Ok(WatchEvent::Apply(service("a", "10.0.0.1"))),
        );
        let bad = DynamicObject::new("a", &api_resource(Kind::Service))
            .within("default")
            .data(serde_json::json!({"spec": {"ports": "not a list"}}));
        assert!(state.handle(Kind::Service, Ok(WatchEvent::Apply(bad))));
        assert!(names(&state).is_empty());
        let errors = state.errors();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].origin, "default/a");
        assert!(state.handle(
            Kind::Service,
            Ok(WatchEvent::Delete(service("a", "10.0.0.1")))
        ));
        assert!(state.errors().is_empty());
    }

    #[test]
    fn istio_kinds_are_watched_in_one_served_version() {
        let vs = api_resource(Kind::VirtualService);
        assert_eq!(vs.api_version, "networking.istio.io/v1beta1");
        assert_eq!(vs.plural, "virtualservices");
        assert_eq!(
            api_resource(Kind::AuthorizationPolicy).group,
            "security.istio.io"
        );
        assert_eq!(api_resource(Kind::Pod).api_version, "v1");
        assert_eq!(
            api_resource(Kind::EndpointSlice).api_version,
            "discovery.k8s.io/v1"
        );
    }
}
