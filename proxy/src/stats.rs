//! Envoy-style counters (`cluster.NAME.upstream_rq_2xx`, `listener.ADDR.downstream_cx_total`,
//! `cluster_manager.cds.update_success`...), created at config time and incremented lock-free on
//! the data path; rendered by the admin server as `/stats` and `/stats/prometheus`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (`upstream_cx_active`, `membership_healthy`).
#[derive(Debug, Default)]
pub struct Gauge(std::sync::atomic::AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// All counters of one proxy, by Envoy stat name. Looking a counter up takes a lock, so the data
/// path keeps the `Arc<Counter>` it got at config time.
#[derive(Debug, Default)]
pub struct Store {
    counters: Mutex<BTreeMap<String, Arc<Counter>>>,
    gauges: Mutex<BTreeMap<String, Arc<Gauge>>>,
}

impl Store {
    /// The counter with this name, created at zero on first use.
    pub fn counter(&self, name: impl Into<String>) -> Arc<Counter> {
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counters.entry(name.into()).or_default().clone()
    }

    /// Every counter and its value, sorted by name.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counters
            .iter()
            .map(|(name, counter)| (name.clone(), counter.get()))
            .collect()
    }

    /// The gauge with this name, created at zero on first use.
    pub fn gauge(&self, name: impl Into<String>) -> Arc<Gauge> {
        let mut gauges = self
            .gauges
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        gauges.entry(name.into()).or_default().clone()
    }

    /// Every gauge and its value, sorted by name.
    pub fn gauges(&self) -> Vec<(String, i64)> {
        let gauges = self
            .gauges
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        gauges
            .iter()
            .map(|(name, gauge)| (name.clone(), gauge.get()))
            .collect()
    }
}
