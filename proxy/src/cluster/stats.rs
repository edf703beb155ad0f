//! Cluster and host statistics with Envoy's names.
//!
//! Cluster stats are one [`StatGroup`] per cluster, registered in the proxy's [`Store`] under
//! `cluster.<stat_name>` when the cluster is built: atomics with static names in one struct, so
//! a thousand clusters cost a thousand small allocations, not thirty thousand named counters.
//! A cluster rebuilt with the same name reports into the same stats, as in Envoy. Host stats
//! are plain atomics owned by the host (they survive EDS updates with it) and are shown by
//! `/clusters`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::stats::{Counter, Gauge, StatGroup, StatValue, Store};

/// `cluster.NAME.*` counters and gauges.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// `upstream_cx_total`.
    pub upstream_cx_total: Counter,
    /// `upstream_cx_active` (gauge).
    pub upstream_cx_active: Gauge,
    /// `upstream_cx_connect_fail`.
    pub upstream_cx_connect_fail: Counter,
    /// `upstream_cx_connect_timeout`.
    pub upstream_cx_connect_timeout: Counter,
    /// `upstream_rq_total`.
    pub upstream_rq_total: Counter,
    /// `upstream_rq_1xx` .. `upstream_rq_5xx`, by status class.
    pub upstream_rq_class: [Counter; 5],
    /// `membership_healthy` (gauge).
    pub membership_healthy: Gauge,
    /// `membership_total` (gauge).
    pub membership_total: Gauge,
    /// `update_success`: host set changes applied (EDS, DNS).
    pub update_success: Counter,
    /// `upstream_cx_none_healthy`: a request found no host (503 UH).
    pub upstream_cx_none_healthy: Counter,
    /// `upstream_cx_overflow`: a new connection was wanted at the `max_connections` limit.
    pub upstream_cx_overflow: Counter,
    /// `upstream_rq_pending_overflow`: requests refused by `max_pending_requests` or
    /// `max_requests` (503 UO).
    pub upstream_rq_pending_overflow: Counter,
    /// `upstream_rq_pending_total`: requests that had to wait for a connection.
    pub upstream_rq_pending_total: Counter,
    /// `upstream_rq_pending_active` (gauge): requests waiting for a connection now.
    pub upstream_rq_pending_active: Gauge,
    /// `upstream_rq_shadow_too_large` (Ferry's): mirrored requests not sent to this shadow
    /// cluster because their body passed the buffer limit.
    pub upstream_rq_shadow_too_large: Counter,
    /// Retry counters (`upstream_rq_retry`, `_success`, `_overflow`, `_limit_exceeded`) and
    /// timeouts (`upstream_rq_per_try_timeout`, `upstream_rq_timeout`), see [`RetryStats`].
    pub retry: RetryStats,
}

/// Envoy's retry and timeout counters of a cluster.
#[derive(Debug, Default)]
pub struct RetryStats {
    /// `upstream_rq_retry`: retries sent.
    pub retry: Counter,
    /// `upstream_rq_retry_success`: retries that ended the request with a non-retriable answer.
    pub success: Counter,
    /// `upstream_rq_retry_overflow`: retries refused by the budget / `max_retries` (UO).
    pub overflow: Counter,
    /// `upstream_rq_retry_limit_exceeded`: retriable outcomes with no retries left (URX).
    pub limit_exceeded: Counter,
    /// `upstream_rq_per_try_timeout`.
    pub per_try_timeout: Counter,
    /// `upstream_rq_timeout`: route timeouts (504 UT). Shared: a response body that outlives the
    /// router's request handling counts a timeout that fires while it streams.
    pub timeout: Arc<Counter>,
}

impl ClusterStats {
    /// The stats of the cluster reported as `stat_name` (`cluster.<stat_name>.*`), the same ones
    /// every time for the same name.
    pub fn new(store: &Store, stat_name: &str) -> Arc<Self> {
        store.group(format!("cluster.{stat_name}"))
    }

    /// Counts a response by status class (`upstream_rq_2xx`...).
    pub fn record_response(&self, status: http::StatusCode) {
        let class = usize::from(status.as_u16() / 100);
        if let Some(counter) = class
            .checked_sub(1)
            .and_then(|i| self.upstream_rq_class.get(i))
        {
            counter.inc();
        }
    }
}

impl StatGroup for ClusterStats {
    fn visit(&self, visit: &mut dyn FnMut(&'static str, StatValue)) {
        let counters: [(&'static str, &Counter); 15] = [
            ("upstream_cx_total", &self.upstream_cx_total),
            ("upstream_cx_connect_fail", &self.upstream_cx_connect_fail),
            (
                "upstream_cx_connect_timeout",
                &self.upstream_cx_connect_timeout,
            ),
            ("upstream_rq_total", &self.upstream_rq_total),
            ("update_success", &self.update_success),
            ("upstream_cx_none_healthy", &self.upstream_cx_none_healthy),
            ("upstream_cx_overflow", &self.upstream_cx_overflow),
            (
                "upstream_rq_pending_overflow",
                &self.upstream_rq_pending_overflow,
            ),
            ("upstream_rq_pending_total", &self.upstream_rq_pending_total),
            (
                "upstream_rq_shadow_too_large",
                &self.upstream_rq_shadow_too_large,
            ),
            ("upstream_rq_retry", &self.retry.retry),
            ("upstream_rq_retry_success", &self.retry.success),
            ("upstream_rq_retry_overflow", &self.retry.overflow),
            (
                "upstream_rq_retry_limit_exceeded",
                &self.retry.limit_exceeded,
            ),
            ("upstream_rq_per_try_timeout", &self.retry.per_try_timeout),
        ];
        const CLASSES: [&str; 5] = [
            "upstream_rq_1xx",
            "upstream_rq_2xx",
            "upstream_rq_3xx",
            "upstream_rq_4xx",
            "upstream_rq_5xx",
        ];
        let counters = counters
            .into_iter()
            .chain(CLASSES.into_iter().zip(&self.upstream_rq_class))
            .chain([("upstream_rq_timeout", &*self.retry.timeout)]);
        for (name, counter) in counters {
            visit(name, StatValue::Counter(counter.get()));
        }
        let gauges: [(&'static str, &Gauge); 4] = [
            ("upstream_cx_active", &self.upstream_cx_active),
            ("membership_healthy", &self.membership_healthy),
            ("membership_total", &self.membership_total),
            (
                "upstream_rq_pending_active",
                &self.upstream_rq_pending_active,
            ),
        ];
        for (name, gauge) in gauges {
            visit(name, StatValue::Gauge(gauge.get()));
        }
    }
}

/// Per-host counters (`/clusters` shows them as `cx_total`, `rq_active`...).
#[derive(Debug, Default)]
pub struct HostStats {
    /// Connections opened.
    pub cx_total: HostCounter,
    /// Connections open now.
    pub cx_active: HostCounter,
    /// Connect attempts that failed or timed out.
    pub cx_connect_fail: HostCounter,
    /// Requests sent.
    pub rq_total: HostCounter,
    /// Requests in flight (until the response body ends); LEAST_REQUEST balances on it.
    pub rq_active: HostCounter,
    /// Requests that failed before a response (connect failure, reset).
    pub rq_error: HostCounter,
}

impl HostStats {
    /// The values `/clusters` prints per host, by Envoy's names, in Envoy's order.
    pub fn values(&self) -> [(&'static str, u64); 6] {
        [
            ("cx_active", self.cx_active.get()),
            ("cx_connect_fail", self.cx_connect_fail.get()),
            ("cx_total", self.cx_total.get()),
            ("rq_active", self.rq_active.get()),
            ("rq_error", self.rq_error.get()),
            ("rq_total", self.rq_total.get()),
        ]
    }
}

/// A lock-free counter that can also go down.
#[derive(Debug, Default)]
pub struct HostCounter(AtomicU64);

impl HostCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one (saturating at zero).
    pub fn dec(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit_breaker::CircuitBreakerSet;
    use crate::cluster::CircuitBreakers;

    /// Every name the per-stat counters had before the stats were grouped, in `/stats` order.
    const COUNTERS: [&str; 21] = [
        "update_success",
        "upstream_cx_connect_fail",
        "upstream_cx_connect_timeout",
        "upstream_cx_none_healthy",
        "upstream_cx_overflow",
        "upstream_cx_total",
        "upstream_rq_1xx",
        "upstream_rq_2xx",
        "upstream_rq_3xx",
        "upstream_rq_4xx",
        "upstream_rq_5xx",
        "upstream_rq_pending_overflow",
        "upstream_rq_pending_total",
        "upstream_rq_per_try_timeout",
        "upstream_rq_retry",
        "upstream_rq_retry_limit_exceeded",
        "upstream_rq_retry_overflow",
        "upstream_rq_retry_success",
        "upstream_rq_shadow_too_large",
        "upstream_rq_timeout",
        "upstream_rq_total",
    ];

    #[test]
    fn cluster_stats_render_with_envoy_names_and_values() {
        let store = Store::default();
        let stats = ClusterStats::new(&store, "outbound|80||a.default.svc.cluster.local");
        stats.record_response(http::StatusCode::OK);
        stats.retry.timeout.add(2);
        stats.upstream_cx_active.set(3);
        stats.membership_total.set(5);
        let prefix = "cluster.outbound|80||a.default.svc.cluster.local.";
        let counters = store.counters();
        let names: Vec<String> = counters.iter().map(|(n, _)| n.clone()).collect();
        let expected: Vec<String> = COUNTERS.iter().map(|n| format!("{prefix}{n}")).collect();
        assert_eq!(names, expected);
        let value = |name: &str| {
            counters
                .iter()
                .find(|(n, _)| *n == format!("{prefix}{name}"))
                .map(|(_, v)| *v)
        };
        assert_eq!(value("upstream_rq_2xx"), Some(1));
        assert_eq!(value("upstream_rq_timeout"), Some(2));
        assert_eq!(value("upstream_rq_total"), Some(0));
        let gauges: Vec<(String, i64)> = ["membership_healthy", "membership_total"]
            .iter()
            .zip([0, 5])
            .chain(
                ["upstream_cx_active", "upstream_rq_pending_active"]
                    .iter()
                    .zip([3, 0]),
            )
            .map(|(n, v)| (format!("{prefix}{n}"), v))
            .collect();
        assert_eq!(store.gauges(), gauges);
    }

    #[test]
    fn a_rebuilt_cluster_reports_into_the_same_stats() {
        let store = Store::default();
        let first = ClusterStats::new(&store, "c");
        first.upstream_rq_total.inc();
        let rebuilt = ClusterStats::new(&store, "c");
        assert!(Arc::ptr_eq(&first, &rebuilt));
        assert_eq!(store.counters().len(), COUNTERS.len());
    }

    #[test]
    fn circuit_breaker_gauges_render_per_priority() {
        let store = Store::default();
        let _set = CircuitBreakerSet::with_stats(&CircuitBreakers::default(), &store, "c");
        let names: Vec<String> = store.gauges().into_iter().map(|(n, _)| n).collect();
        let mut expected = Vec::new();
        for priority in ["default", "high"] {
            for gauge in ["cx_open", "rq_open", "rq_pending_open", "rq_retry_open"] {
                expected.push(format!("cluster.c.circuit_breakers.{priority}.{gauge}"));
            }
        }
        assert_eq!(names, expected);
    }
}
