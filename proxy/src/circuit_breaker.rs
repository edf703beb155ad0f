//! Circuit breakers: per-cluster, per-priority limits on connections, pending requests, active
//! requests and concurrent retries (`circuit_breakers.thresholds`), enforced with RAII guards so
//! a count can never leak on an early return or a cancelled future. The limits come validated
//! from [`crate::cluster::resilience`] (config only); this module holds the live counts. Where
//! each is taken: `max_requests` in `Cluster::send`, `max_pending_requests` and
//! `max_connections` in the host pools (`pool::limits`), retries by the router's retry driver.
//!
//! Envoy answers an overflow at once with 503, response flag UO and `x-envoy-overloaded: true`
//! instead of queueing: a saturated upstream sheds load immediately and callers see why
//! ([`overflow_reply`]). Retries are admitted by the threshold's `retry_budget` when configured,
//! else by `max_retries` plus Ferry's default [`RatioBudget`] (see [`crate::retry::budget`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body::{Frame, SizeHint};

use crate::body::{Body, BoxError};
use crate::cluster::{CircuitBreakers, Thresholds, UpstreamError};
use crate::error::ResponseFlag;
use crate::http_connection_manager::local_reply;
use crate::retry::{RatioBudget, RecentRequests, RetryBudget};
use crate::stats::{Gauge, StatGroup, StatValue, Store};

/// A resource a circuit breaker counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Upstream connections (`max_connections`).
    Connections = 0,
    /// Requests waiting for a connection (`max_pending_requests`).
    PendingRequests = 1,
    /// Requests in flight (`max_requests`).
    Requests = 2,
    /// Retries in flight (`max_retries` / `retry_budget`).
    Retries = 3,
}

/// One priority's limits and live counts.
#[derive(Debug)]
pub struct CircuitBreaker {
    limits: [u64; 4],
    budget: Option<RetryBudget>,
    /// Requests started within the budget's `budget_interval`, when it has one.
    recent: Option<RecentRequests>,
    ratio: Option<RatioBudget>,
    counts: [AtomicU64; 4],
    /// Woken when a connection unit is given back, so requests waiting for a connection at the
    /// `max_connections` limit (on any host of the cluster) try again.
    connection_released: tokio::sync::Notify,
    /// `per_host_thresholds[].max_connections`: connections per host (the pools enforce it).
    per_host_max_connections: Option<u64>,
    /// Envoy's `circuit_breakers.<priority>.{cx,rq_pending,rq,rq_retry}_open` gauges, by
    /// [`Resource`]: 1 while the resource is at its limit.
    open: Option<Arc<OpenGauges>>,
}

/// One priority's `*_open` gauges, a [`StatGroup`] under
/// `cluster.<stat_name>.circuit_breakers.<priority>`.
#[derive(Debug, Default)]
pub struct OpenGauges([Gauge; 4]);

impl StatGroup for OpenGauges {
    fn visit(&self, visit: &mut dyn FnMut(&'static str, StatValue)) {
        let names = ["cx_open", "rq_pending_open", "rq_open", "rq_retry_open"];
        for (name, gauge) in names.into_iter().zip(&self.0) {
            visit(name, StatValue::Gauge(gauge.get()));
        }
    }
}

impl CircuitBreaker {
    /// A breaker for one `thresholds` entry.
    pub fn new(t: &Thresholds) -> Self {
        let budget = t.retry_budget;
        let recent = budget
            .filter(|b| !b.interval.is_zero())
            .map(|b| RecentRequests::new(b.interval));
        Self {
            limits: [
                u64::from(t.max_connections),
                u64::from(t.max_pending_requests),
                u64::from(t.max_requests),
                u64::from(t.max_retries),
            ],
            ratio: if budget.is_none() {
                Some(RatioBudget::default())
            } else {
                None
            },
            budget,
            recent,
            counts: Default::default(),
            connection_released: tokio::sync::Notify::new(),
            per_host_max_connections: None,
            open: None,
        }
    }

    /// Reports the `*_open` gauges as `cluster.<stat_name>.circuit_breakers.<priority>.*`.
    pub fn with_open_gauges(mut self, store: &Store, stat_name: &str, priority: &str) -> Self {
        self.open = Some(store.group(format!("cluster.{stat_name}.circuit_breakers.{priority}")));
        self
    }

    fn set_open(&self, resource: Resource, open: bool) {
        if let Some(gauges) = &self.open {
            gauges.0[resource as usize].set(i64::from(open));
        }
    }

    /// Adds the cluster's `per_host_thresholds` connection limit.
    pub fn with_per_host_max_connections(mut self, max: Option<u32>) -> Self {
        self.per_host_max_connections = max.map(u64::from);
        self
    }

    /// `per_host_thresholds[].max_connections`, if configured.
    pub fn per_host_max_connections(&self) -> Option<u64> {
        self.per_host_max_connections
    }

    /// Resolves when a connection unit is given back (see [`Resource::Connections`]).
    pub fn connection_released(&self) -> tokio::sync::futures::Notified<'_> {
        self.connection_released.notified()
    }

    /// Takes one unit of `resource` even beyond its limit. Envoy does this for a host with no
    /// connection at all when other hosts hold every `max_connections` unit, so its pending
    /// requests are not stranded.
    pub fn force_acquire(self: &Arc<Self>, resource: Resource) -> Guard {
        let n = self.counts[resource as usize].fetch_add(1, Ordering::AcqRel);
        if n + 1 >= self.limits[resource as usize] {
            self.set_open(resource, true);
        }
        Guard {
            breaker: Arc::clone(self),
            resource,
        }
    }

    /// How many of `resource` are in use.
    pub fn active(&self, resource: Resource) -> u64 {
        self.counts[resource as usize].load(Ordering::Acquire)
    }

    fn try_increment(&self, resource: Resource, limit: u64) -> bool {
        let taken =
            self.counts[resource as usize].fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            });
        match taken {
            Ok(n) => {
                if n + 1 >= limit {
                    self.set_open(resource, true);
                }
                true
            }
            Err(_) => {
                self.set_open(resource, true);
                false
            }
        }
    }

    /// Takes one unit of `resource` (not retries: use [`Self::try_acquire_retry`]); overflow is
    /// [`UpstreamError::Overflow`].
    pub fn try_acquire(self: &Arc<Self>, resource: Resource) -> Result<Guard, UpstreamError> {
        if self.try_increment(resource, self.limits[resource as usize]) {
            Ok(Guard {
                breaker: Arc::clone(self),
                resource,
            })
        } else {
            tracing::debug!(
                ?resource,
                limit = self.limits[resource as usize],
                "circuit breaker overflow"
            );
            Err(UpstreamError::Overflow)
        }
    }

    /// Counts one downstream request (not its retries) towards the default ratio budget; the
    /// router calls it once per request so retries never earn budget for more retries.
    pub fn record_request(&self) {
        if let Some(ratio) = &self.ratio {
            ratio.deposit();
        }
        if let Some(recent) = &self.recent {
            recent.record();
        }
    }

    /// Admits one retry: by `retry_budget` when configured, else by `max_retries` and the
    /// default ratio budget. `None` = refused (the request ends with flag UO).
    pub fn try_acquire_retry(self: &Arc<Self>) -> Option<Guard> {
        let limit = match &self.budget {
            Some(b) => b.limit(
                self.active(Resource::Requests),
                self.active(Resource::PendingRequests),
                self.recent.as_ref().map_or(0, RecentRequests::count),
            ),
            None => self.limits[Resource::Retries as usize],
        };
        if !self.try_increment(Resource::Retries, limit) {
            return None;
        }
        let guard = Guard {
            breaker: Arc::clone(self),
            resource: Resource::Retries,
        };
        match &self.ratio {
            Some(ratio) if !ratio.try_withdraw() => None,
            _ => Some(guard),
        }
    }
}

/// Holds one unit of a resource; dropping it gives the unit back.
#[derive(Debug)]
pub struct Guard {
    breaker: Arc<CircuitBreaker>,
    resource: Resource,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let breaker = &self.breaker;
        let before = breaker.counts[self.resource as usize].fetch_sub(1, Ordering::AcqRel);
        // A retry budget's limit moves with the load: any release reopens it.
        let dynamic = self.resource == Resource::Retries && breaker.budget.is_some();
        if dynamic || before.saturating_sub(1) < breaker.limits[self.resource as usize] {
            breaker.set_open(self.resource, false);
        }
        if self.resource == Resource::Connections {
            self.breaker.connection_released.notify_waiters();
        }
    }
}

/// A body that holds a [`Guard`] until it is fully read or dropped, so an active request counts
/// against `max_requests` for as long as its response streams, as in Envoy.
struct GuardedBody {
    inner: Body,
    _guard: Guard,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Ties `guard` to `response`'s body: the unit is returned when the body ends or is dropped.
pub fn hold_until_body_ends(response: Response<Body>, guard: Guard) -> Response<Body> {
    response.map(|inner| {
        http_body_util::BodyExt::boxed(GuardedBody {
            inner,
            _guard: guard,
        })
    })
}

/// A cluster's breakers for the DEFAULT and HIGH routing priorities (a route's `priority`).
#[derive(Debug, Clone)]
pub struct CircuitBreakerSet {
    default: Arc<CircuitBreaker>,
    high: Arc<CircuitBreaker>,
}

impl Default for CircuitBreakerSet {
    /// Envoy's default thresholds for both priorities.
    fn default() -> Self {
        Self::from(&CircuitBreakers::default())
    }
}

impl CircuitBreakerSet {
    /// The breaker for a route's priority (`false` = DEFAULT).
    pub fn for_priority(&self, high: bool) -> &Arc<CircuitBreaker> {
        if high { &self.high } else { &self.default }
    }

    /// The breakers of `cb` reporting their `*_open` gauges for cluster `stat_name`.
    pub fn with_stats(cb: &CircuitBreakers, store: &Store, stat_name: &str) -> Self {
        Self::build(cb, Some((store, stat_name)))
    }

    fn build(cb: &CircuitBreakers, stats: Option<(&Store, &str)>) -> Self {
        let find = |high: bool| {
            cb.thresholds
                .iter()
                .find(|t| t.high_priority == high)
                .cloned()
                .unwrap_or_else(|| Thresholds::envoy_default(high))
        };
        let breaker = |high: bool| {
            let breaker = CircuitBreaker::new(&find(high))
                .with_per_host_max_connections(cb.per_host_max_connections);
            Arc::new(match stats {
                Some((store, stat_name)) => breaker.with_open_gauges(
                    store,
                    stat_name,
                    if high { "high" } else { "default" },
                ),
                None => breaker,
            })
        };
        Self {
            default: breaker(false),
            high: breaker(true),
        }
    }
}

impl From<&CircuitBreakers> for CircuitBreakerSet {
    fn from(cb: &CircuitBreakers) -> Self {
        Self::build(cb, None)
    }
}

/// Envoy's overflow answer: 503, flag UO, `x-envoy-overloaded: true`.
pub fn overflow_reply() -> Response<Body> {
    let mut reply = local_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        Some(ResponseFlag::UpstreamOverflow),
    );
    reply
        .headers_mut()
        .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn thresholds(max_requests: u32, max_retries: u32) -> Thresholds {
        Thresholds {
            max_requests,
            max_retries,
            ..Thresholds::envoy_default(false)
        }
    }

    #[test]
    fn requests_beyond_the_limit_overflow_and_guards_release() {
        let cb = Arc::new(CircuitBreaker::new(&thresholds(2, 3)));
        let a = cb.try_acquire(Resource::Requests).expect("first");
        let _b = cb.try_acquire(Resource::Requests).expect("second");
        let err = cb
            .try_acquire(Resource::Requests)
            .expect_err("third overflows");
        assert_eq!(err.response_flag(), ResponseFlag::UpstreamOverflow);
        assert_eq!(cb.active(Resource::Requests), 2);
        drop(a);
        assert_eq!(cb.active(Resource::Requests), 1);
        assert!(cb.try_acquire(Resource::Requests).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn max_retries_bounds_concurrent_retries() {
        let cb = Arc::new(CircuitBreaker::new(&thresholds(1024, 2)));
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(cb.try_acquire(Resource::Requests).expect("request"));
        }
        let r1 = cb.try_acquire_retry().expect("retry 1");
        let _r2 = cb.try_acquire_retry().expect("retry 2");
        assert!(cb.try_acquire_retry().is_none());
        drop(r1);
        assert!(cb.try_acquire_retry().is_some());
    }

    #[test]
    fn retry_budget_scales_with_active_requests() {
        let mut t = thresholds(1024, 3);
        t.retry_budget = Some(RetryBudget::default());
        let cb = Arc::new(CircuitBreaker::new(&t));
        let mut retries: Vec<Guard> = std::iter::from_fn(|| cb.try_acquire_retry()).collect();
        assert_eq!(retries.len(), 3, "floor is min_retry_concurrency");
        let _requests: Vec<Guard> = (0..50)
            .map(|_| cb.try_acquire(Resource::Requests).expect("request"))
            .collect();
        retries.extend(std::iter::from_fn(|| cb.try_acquire_retry()));
        assert_eq!(retries.len(), 10, "20% of 50 active requests");
    }

    #[tokio::test(start_paused = true)]
    async fn budget_interval_counts_completed_requests_within_it() {
        let mut t = thresholds(1024, 3);
        t.retry_budget = Some(RetryBudget {
            interval: Duration::from_secs(1),
            ..RetryBudget::default()
        });
        let cb = Arc::new(CircuitBreaker::new(&t));
        for _ in 0..50 {
            cb.record_request();
            drop(cb.try_acquire(Resource::Requests).expect("request"));
        }
        let retries: Vec<Guard> = std::iter::from_fn(|| cb.try_acquire_retry()).collect();
        assert_eq!(
            retries.len(),
            10,
            "20% of the 50 requests of the last second"
        );
        drop(retries);
        tokio::time::advance(Duration::from_millis(1100)).await;
        let retries: Vec<Guard> = std::iter::from_fn(|| cb.try_acquire_retry()).collect();
        assert_eq!(
            retries.len(),
            3,
            "the interval passed: only the floor is left"
        );
    }

    #[test]
    fn priorities_have_separate_breakers_with_envoy_defaults() {
        let cb = CircuitBreakers {
            thresholds: vec![thresholds(1, 3)],
            per_host_max_connections: None,
        };
        let set = CircuitBreakerSet::from(&cb);
        let _held = set
            .for_priority(false)
            .try_acquire(Resource::Requests)
            .expect("one");
        assert!(
            set.for_priority(false)
                .try_acquire(Resource::Requests)
                .is_err()
        );
        assert!(
            set.for_priority(true)
                .try_acquire(Resource::Requests)
                .is_ok()
        );
        assert_eq!(set.for_priority(true).limits, [1024, 1024, 1024, 3]);
    }

    #[tokio::test]
    async fn a_guard_held_by_a_body_is_released_when_the_body_ends() {
        use http_body_util::BodyExt;
        let cb = Arc::new(CircuitBreaker::new(&thresholds(1, 3)));
        let guard = cb.try_acquire(Resource::Requests).expect("one");
        let response = hold_until_body_ends(Response::new(crate::body::full("abc")), guard);
        assert_eq!(cb.active(Resource::Requests), 1);
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&bytes[..], b"abc");
        assert_eq!(cb.active(Resource::Requests), 0);
    }

    #[test]
    fn open_gauges_follow_the_limits() {
        let store = Store::default();
        let cb = CircuitBreakers {
            thresholds: vec![thresholds(2, 3)],
            per_host_max_connections: None,
        };
        let set = CircuitBreakerSet::with_stats(&cb, &store, "svc");
        let rq_open = || store.gauge_value("cluster.svc.circuit_breakers.default.rq_open");
        let breaker = set.for_priority(false);
        let a = breaker.try_acquire(Resource::Requests).expect("first");
        assert_eq!(rq_open(), 0);
        let _b = breaker.try_acquire(Resource::Requests).expect("second");
        assert_eq!(rq_open(), 1, "at the limit");
        assert!(breaker.try_acquire(Resource::Requests).is_err());
        assert_eq!(rq_open(), 1);
        drop(a);
        assert_eq!(rq_open(), 0, "below the limit again");
        let high = store.gauge_value("cluster.svc.circuit_breakers.high.rq_open");
        assert_eq!(high, 0);
    }

    #[test]
    fn overflow_reply_is_503_uo_overloaded() {
        let r = overflow_reply();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["x-envoy-overloaded"], "true");
        assert_eq!(
            crate::error::ResponseFlags::of(r.extensions()).to_string(),
            "UO"
        );
    }
}
