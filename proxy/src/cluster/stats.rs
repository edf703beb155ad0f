//! Cluster and host statistics with Envoy's names.
//!
//! Cluster stats live in the proxy's [`Store`] under `cluster.<stat_name>.*` and are looked up
//! once when a cluster is built; a cluster rebuilt with the same name reports into the same
//! counters, as in Envoy. Host stats are plain atomics owned by the host (they survive EDS
//! updates with it) and are shown by `/clusters`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::stats::{Counter, Gauge, Store};

/// `cluster.NAME.*` counters and gauges.
#[derive(Debug)]
pub struct ClusterStats {
    /// `upstream_cx_total`.
    pub upstream_cx_total: Arc<Counter>,
    /// `upstream_cx_active` (gauge).
    pub upstream_cx_active: Arc<Gauge>,
    /// `upstream_cx_connect_fail`.
    pub upstream_cx_connect_fail: Arc<Counter>,
    /// `upstream_cx_connect_timeout`.
    pub upstream_cx_connect_timeout: Arc<Counter>,
    /// `upstream_rq_total`.
    pub upstream_rq_total: Arc<Counter>,
    /// `upstream_rq_1xx` .. `upstream_rq_5xx`, by status class.
    pub upstream_rq_class: [Arc<Counter>; 5],
    /// `membership_healthy` (gauge).
    pub membership_healthy: Arc<Gauge>,
    /// `membership_total` (gauge).
    pub membership_total: Arc<Gauge>,
    /// `update_success`: host set changes applied (EDS, DNS).
    pub update_success: Arc<Counter>,
    /// `upstream_cx_none_healthy`: a request found no host (503 UH).
    pub upstream_cx_none_healthy: Arc<Counter>,
    /// `upstream_cx_overflow`: a new connection was wanted at the `max_connections` limit.
    pub upstream_cx_overflow: Arc<Counter>,
    /// `upstream_rq_pending_overflow`: requests refused by `max_pending_requests` or
    /// `max_requests` (503 UO).
    pub upstream_rq_pending_overflow: Arc<Counter>,
    /// `upstream_rq_pending_total`: requests that had to wait for a connection.
    pub upstream_rq_pending_total: Arc<Counter>,
    /// `upstream_rq_pending_active` (gauge): requests waiting for a connection now.
    pub upstream_rq_pending_active: Arc<Gauge>,
    /// `upstream_rq_shadow_too_large` (Ferry's): mirrored requests not sent to this shadow
    /// cluster because their body passed the buffer limit.
    pub upstream_rq_shadow_too_large: Arc<Counter>,
    /// Retry counters (`upstream_rq_retry`, `_success`, `_overflow`, `_limit_exceeded`) and
    /// timeouts (`upstream_rq_per_try_timeout`, `upstream_rq_timeout`), see [`RetryStats`].
    pub retry: RetryStats,
}

/// Envoy's retry and timeout counters of a cluster.
#[derive(Debug)]
pub struct RetryStats {
    /// `upstream_rq_retry`: retries sent.
    pub retry: Arc<Counter>,
    /// `upstream_rq_retry_success`: retries that ended the request with a non-retriable answer.
    pub success: Arc<Counter>,
    /// `upstream_rq_retry_overflow`: retries refused by the budget / `max_retries` (UO).
    pub overflow: Arc<Counter>,
    /// `upstream_rq_retry_limit_exceeded`: retriable outcomes with no retries left (URX).
    pub limit_exceeded: Arc<Counter>,
    /// `upstream_rq_per_try_timeout`.
    pub per_try_timeout: Arc<Counter>,
    /// `upstream_rq_timeout`: route timeouts (504 UT).
    pub timeout: Arc<Counter>,
}

impl ClusterStats {
    /// The stats of the cluster reported as `stat_name`.
    pub fn new(store: &Store, stat_name: &str) -> Self {
        let name = |stat: &str| format!("cluster.{stat_name}.{stat}");
        Self {
            upstream_cx_total: store.counter(name("upstream_cx_total")),
            upstream_cx_active: store.gauge(name("upstream_cx_active")),
            upstream_cx_connect_fail: store.counter(name("upstream_cx_connect_fail")),
            upstream_cx_connect_timeout: store.counter(name("upstream_cx_connect_timeout")),
            upstream_rq_total: store.counter(name("upstream_rq_total")),
            upstream_rq_class: [1, 2, 3, 4, 5]
                .map(|class| store.counter(name(&format!("upstream_rq_{class}xx")))),
            membership_healthy: store.gauge(name("membership_healthy")),
            membership_total: store.gauge(name("membership_total")),
            update_success: store.counter(name("update_success")),
            upstream_cx_none_healthy: store.counter(name("upstream_cx_none_healthy")),
            upstream_cx_overflow: store.counter(name("upstream_cx_overflow")),
            upstream_rq_pending_overflow: store.counter(name("upstream_rq_pending_overflow")),
            upstream_rq_pending_total: store.counter(name("upstream_rq_pending_total")),
            upstream_rq_pending_active: store.gauge(name("upstream_rq_pending_active")),
            upstream_rq_shadow_too_large: store.counter(name("upstream_rq_shadow_too_large")),
            retry: RetryStats {
                retry: store.counter(name("upstream_rq_retry")),
                success: store.counter(name("upstream_rq_retry_success")),
                overflow: store.counter(name("upstream_rq_retry_overflow")),
                limit_exceeded: store.counter(name("upstream_rq_retry_limit_exceeded")),
                per_try_timeout: store.counter(name("upstream_rq_per_try_timeout")),
                timeout: store.counter(name("upstream_rq_timeout")),
            },
        }
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
