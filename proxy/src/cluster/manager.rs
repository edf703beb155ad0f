//! The cluster manager: reconciles cluster runtime state with each new config.
//!
//! A cluster whose definition did not change keeps its `Arc<Cluster>` (and so its balancer
//! state); a new EDS assignment swaps its host set in place. A changed definition builds a new
//! cluster that adopts the old one's hosts when their connection settings are unchanged, so
//! warm connections and host counters survive. A removed cluster is simply no longer handed
//! out: requests in flight hold their `Arc<Host>`, finish on their connection, and the pool
//! closes when the last one is done.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::config::ClusterConfig;
use super::load_assignment::LoadAssignment;
use super::runtime::{Cluster, ClusterSet};
use crate::stats::Store;

/// Owns cluster runtime state across snapshots: a cluster whose config did not change keeps its
/// hosts, pools and balancer state; hosts that remain across an EDS update keep theirs.
#[derive(Debug, Default)]
pub struct ClusterManager {
    stats: Arc<Store>,
    clusters: Mutex<BTreeMap<String, Arc<Cluster>>>,
}

impl ClusterManager {
    /// A manager reporting into `stats`.
    pub fn new(stats: Arc<Store>) -> Self {
        Self {
            stats,
            clusters: Mutex::default(),
        }
    }

    /// Reconciles runtime state with the given definitions and assignments and returns the set
    /// the next snapshot should hold. Never fails: inputs are already validated. DNS clusters
    /// and ORIGINAL_DST cleanup run background tasks, so call this inside a tokio runtime.
    pub fn update(
        &self,
        clusters: &BTreeMap<String, Arc<ClusterConfig>>,
        assignments: &BTreeMap<String, Arc<LoadAssignment>>,
    ) -> Arc<ClusterSet> {
        let mut current = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = BTreeMap::new();
        for (name, config) in clusters {
            let assignment = config
                .eds_service_name()
                .and_then(|service| assignments.get(service).cloned());
            let cluster = match current.get(name) {
                Some(old) if *old.config == **config => {
                    if config.eds_service_name().is_some() {
                        old.set_assignment(assignment);
                    }
                    old.clone()
                }
                old => {
                    tracing::debug!(cluster = %name, replaced = old.is_some(), "building cluster");
                    Arc::new(Cluster::new(
                        config.clone(),
                        &self.stats,
                        assignment,
                        old.map(|o| o.hosts()).unwrap_or_default(),
                    ))
                }
            };
            next.insert(name.clone(), cluster);
        }
        for removed in current.keys().filter(|name| !next.contains_key(*name)) {
            tracing::debug!(cluster = %removed, "cluster removed; in-flight requests drain");
        }
        *current = next.clone();
        Arc::new(ClusterSet::new(next))
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
