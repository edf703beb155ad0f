//! The one immutable config snapshot the data path reads, and the store that swaps it atomically.
//!
//! The bootstrap's `static_resources` and the xDS client both produce [`Resources`] (validated
//! domain types, never protobuf); the [`ConfigStore`] turns them into a [`Snapshot`] and swaps it
//! in with one `ArcSwap`, so a request sees listeners, routes and clusters that agree. A `watch`
//! channel carries only the generation number, waking the listener manager to reconcile sockets.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::cluster::{ClusterConfig, ClusterManager, ClusterSet, LoadAssignment};
use crate::listener::Listener;
use crate::route::RouteTable;

/// Validated resources by name.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// Listeners by name.
    pub listeners: BTreeMap<String, Arc<Listener>>,
    /// Route configurations by name.
    pub routes: BTreeMap<String, Arc<RouteTable>>,
    /// Cluster definitions by name.
    pub clusters: BTreeMap<String, Arc<ClusterConfig>>,
    /// Load assignments by cluster name.
    pub load_assignments: BTreeMap<String, Arc<LoadAssignment>>,
}

/// What the data path reads: one consistent view of the config.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// A counter that increases with every swap, for logs and `/config_dump`.
    pub generation: u64,
    /// The validated resources this snapshot was built from.
    pub resources: Resources,
    /// Active clusters with their runtime state.
    pub clusters: Arc<ClusterSet>,
}

/// Holds the current snapshot.
#[derive(Debug)]
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    cluster_manager: ClusterManager,
    generation: watch::Sender<u64>,
}

impl Default for ConfigStore {
    fn default() -> Self {
        Self::new(ClusterManager::default())
    }
}

impl ConfigStore {
    /// An empty store whose snapshots get their clusters from `cluster_manager`.
    pub fn new(cluster_manager: ClusterManager) -> Self {
        Self {
            current: ArcSwap::default(),
            cluster_manager,
            generation: watch::Sender::new(0),
        }
    }

    /// The snapshot in force; load it once per connection or request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swaps in a new snapshot.
    pub fn store(&self, snapshot: Snapshot) {
        let generation = snapshot.generation;
        self.current.store(Arc::new(snapshot));
        self.generation.send_replace(generation);
    }

    /// Wakes on every swap with the new generation (the listener manager reconciles then).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Builds a snapshot from a complete set of validated resources (static and dynamic merged,
    /// only warmed ones) and swaps it in. The xDS client calls this after every accepted update;
    /// listeners are bound, updated in place or drained to match.
    pub fn apply(&self, resources: Resources) {
        let generation = self.current.load().generation + 1;
        let clusters = self
            .cluster_manager
            .update(&resources.clusters, &resources.load_assignments);
        tracing::debug!(
            generation,
            listeners = resources.listeners.len(),
            routes = resources.routes.len(),
            clusters = resources.clusters.len(),
            "config applied"
        );
        self.store(Snapshot {
            generation,
            resources,
            clusters,
        });
    }
}
