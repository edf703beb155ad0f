//! Envoy-style counters (`cluster.NAME.upstream_rq_2xx`, `listener.ADDR.downstream_cx_total`,
//! `cluster_manager.cds.update_success`...), created at config time and incremented lock-free on
//! the data path; rendered by the admin server as `/stats` and `/stats/prometheus`.
//!
//! A stat is either standalone (a named [`Counter`] or [`Gauge`]) or part of a [`StatGroup`]: a
//! struct of atomics with static names registered once under a prefix, as each cluster's
//! `cluster.NAME.*` stats are. A sidecar of a large mesh has thousands of clusters with about 30
//! stats each; a group costs one prefix string and one allocation per cluster instead of a
//! named, separately allocated atomic per stat, and the full names are formatted only when
//! `/stats` is rendered.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// One stat's value as a [`StatGroup`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatValue {
    /// A counter's value.
    Counter(u64),
    /// A gauge's value.
    Gauge(i64),
}

/// Stats kept together in one struct and registered under one prefix with [`Store::group`]; the
/// store renders each as `PREFIX.NAME`.
pub trait StatGroup: Any + Send + Sync + Debug {
    /// Calls `visit` with every stat's name below the prefix and its current value.
    fn visit(&self, visit: &mut dyn FnMut(&'static str, StatValue));
}

/// All stats of one proxy, by Envoy stat name. Looking a stat up takes a lock, so the data path
/// keeps the `Arc` it got at config time.
#[derive(Debug, Default)]
pub struct Store {
    counters: Mutex<BTreeMap<String, Arc<Counter>>>,
    gauges: Mutex<BTreeMap<String, Arc<Gauge>>>,
    groups: Mutex<BTreeMap<String, Arc<dyn StatGroup>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store {
    /// The counter with this name, created at zero on first use.
    pub fn counter(&self, name: impl Into<String>) -> Arc<Counter> {
        lock(&self.counters).entry(name.into()).or_default().clone()
    }

    /// The gauge with this name, created at zero on first use.
    pub fn gauge(&self, name: impl Into<String>) -> Arc<Gauge> {
        lock(&self.gauges).entry(name.into()).or_default().clone()
    }

    /// The group of type `G` registered under `prefix`, created at zero on first use: a
    /// cluster rebuilt under the same stat name reports into the same stats, as in Envoy. A
    /// group of another type under the same prefix is replaced.
    pub fn group<G: StatGroup + Default>(&self, prefix: impl Into<String>) -> Arc<G> {
        let mut groups = lock(&self.groups);
        let prefix = prefix.into();
        if let Some(existing) = groups.get(&prefix) {
            let any: Arc<dyn Any + Send + Sync> = existing.clone();
            if let Ok(group) = any.downcast::<G>() {
                return group;
            }
            tracing::debug!(%prefix, "stat group replaced by one of another type");
        }
        let group = Arc::new(G::default());
        groups.insert(prefix, group.clone());
        group
    }

    /// The value of the counter with this full name, standalone or in a group (0 if there is
    /// none). For tests and tools: [`Self::counter`] with the name of a grouped stat would make
    /// a new standalone counter instead.
    pub fn counter_value(&self, name: &str) -> u64 {
        if let Some(counter) = lock(&self.counters).get(name) {
            return counter.get();
        }
        match self.grouped(name) {
            Some(StatValue::Counter(value)) => value,
            _ => 0,
        }
    }

    /// The value of the gauge with this full name, standalone or in a group (0 if there is none).
    pub fn gauge_value(&self, name: &str) -> i64 {
        if let Some(gauge) = lock(&self.gauges).get(name) {
            return gauge.get();
        }
        match self.grouped(name) {
            Some(StatValue::Gauge(value)) => value,
            _ => 0,
        }
    }

    /// A grouped stat by full name. Prefixes and stat names may both contain dots, so every
    /// split is tried, longest prefix first.
    fn grouped(&self, name: &str) -> Option<StatValue> {
        let groups = lock(&self.groups);
        for (dot, _) in name
            .match_indices('.')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            let Some(group) = groups.get(&name[..dot]) else {
                continue;
            };
            let stat = &name[dot + 1..];
            let mut found = None;
            group.visit(&mut |n, value| {
                if n == stat {
                    found = Some(value);
                }
            });
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Every counter and its value, sorted by name.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = lock(&self.counters)
            .iter()
            .map(|(name, counter)| (name.clone(), counter.get()))
            .collect();
        self.visit_groups(|name, value| {
            if let StatValue::Counter(value) = value {
                out.push((name, value));
            }
        });
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every gauge and its value, sorted by name.
    pub fn gauges(&self) -> Vec<(String, i64)> {
        let mut out: Vec<(String, i64)> = lock(&self.gauges)
            .iter()
            .map(|(name, gauge)| (name.clone(), gauge.get()))
            .collect();
        self.visit_groups(|name, value| {
            if let StatValue::Gauge(value) = value {
                out.push((name, value));
            }
        });
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Calls `f` with the full name and value of every grouped stat.
    fn visit_groups(&self, mut f: impl FnMut(String, StatValue)) {
        let groups: Vec<(String, Arc<dyn StatGroup>)> = lock(&self.groups)
            .iter()
            .map(|(prefix, group)| (prefix.clone(), group.clone()))
            .collect();
        for (prefix, group) in groups {
            group.visit(&mut |name, value| f(format!("{prefix}.{name}"), value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Pair {
        hits: Counter,
        open: Gauge,
    }

    impl StatGroup for Pair {
        fn visit(&self, visit: &mut dyn FnMut(&'static str, StatValue)) {
            visit("hits", StatValue::Counter(self.hits.get()));
            visit("open", StatValue::Gauge(self.open.get()));
        }
    }

    #[test]
    fn grouped_stats_render_like_standalone_ones() {
        let grouped = Store::default();
        let pair = grouped.group::<Pair>("cluster.a");
        pair.hits.add(3);
        pair.open.set(-2);
        grouped.counter("cluster.b.hits").inc();
        grouped.counter("cluster.a.extra").inc();

        let flat = Store::default();
        flat.counter("cluster.a.hits").add(3);
        flat.gauge("cluster.a.open").set(-2);
        flat.counter("cluster.b.hits").inc();
        flat.counter("cluster.a.extra").inc();

        assert_eq!(grouped.counters(), flat.counters());
        assert_eq!(grouped.gauges(), flat.gauges());
        assert_eq!(
            grouped.counters(),
            vec![
                ("cluster.a.extra".to_owned(), 1),
                ("cluster.a.hits".to_owned(), 3),
                ("cluster.b.hits".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn values_are_found_by_full_name_in_groups_too() {
        let store = Store::default();
        let pair = store.group::<Pair>("cluster.svc.default.svc.cluster.local");
        pair.hits.add(4);
        pair.open.set(2);
        store
            .counter("cluster.svc.default.svc.cluster.local.extra")
            .inc();
        assert_eq!(
            store.counter_value("cluster.svc.default.svc.cluster.local.hits"),
            4
        );
        assert_eq!(
            store.gauge_value("cluster.svc.default.svc.cluster.local.open"),
            2
        );
        assert_eq!(
            store.counter_value("cluster.svc.default.svc.cluster.local.extra"),
            1
        );
        // A gauge is not a counter, and unknown names are zero.
        assert_eq!(
            store.counter_value("cluster.svc.default.svc.cluster.local.open"),
            0
        );
        assert_eq!(store.counter_value("cluster.other.hits"), 0);
    }

    #[test]
    fn a_group_is_shared_by_prefix() {
        let store = Store::default();
        let first = store.group::<Pair>("cluster.a");
        first.hits.inc();
        let again = store.group::<Pair>("cluster.a");
        assert!(Arc::ptr_eq(&first, &again));
        let other = store.group::<Pair>("cluster.b");
        assert_eq!(other.hits.get(), 0);
    }

    #[derive(Debug, Default)]
    struct Other(Counter);

    impl StatGroup for Other {
        fn visit(&self, visit: &mut dyn FnMut(&'static str, StatValue)) {
            visit("other", StatValue::Counter(self.0.get()));
        }
    }

    #[test]
    fn a_group_of_another_type_replaces_the_old_one() {
        let store = Store::default();
        store.group::<Pair>("x").hits.inc();
        store.group::<Other>("x").0.add(2);
        assert_eq!(store.counters(), vec![("x.other".to_owned(), 2)]);
        assert!(store.gauges().is_empty());
    }
}
