//! The one immutable config snapshot the data path reads, and the store that swaps it atomically.
//!
//! The bootstrap's `static_resources` and the xDS client both produce [`Resources`] (validated
//! domain types, never protobuf); the [`ConfigStore`] turns them into a [`Snapshot`] and swaps it
//! in with one `ArcSwap`, so a request sees listeners, routes and clusters that agree.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::cluster::{ClusterConfig, ClusterSet, LoadAssignment};
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
#[derive(Debug, Default)]
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
}

impl ConfigStore {
    /// The snapshot in force; load it once per connection or request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swaps in a new snapshot.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }

    /// Builds a snapshot from a complete set of validated resources (static and dynamic merged,
    /// only warmed ones) and swaps it in. The xDS client calls this after every accepted update;
    /// listeners are bound, updated in place or drained to match.
    pub fn apply(&self, resources: Resources) {
        let generation = self.current.load().generation + 1;
        self.store(Snapshot {
            generation,
            resources,
            clusters: Arc::default(),
        });
    }
}
