//! The connection-pool side of the circuit breakers: `max_pending_requests` (requests waiting
//! for a connection) and `max_connections` (per cluster, across its hosts), as Envoy's
//! `ConnPoolImplBase` enforces them.
//!
//! A request that finds no ready connection becomes *pending*: it takes a pending unit (none
//! left: 503 UO at once) and holds it until it has a connection, either a new one (when a
//! connection unit is free and the host is below `per_host_thresholds.max_connections`) or one
//! another request gives back. A host with no connection at
//! all may open one beyond `max_connections` (counted in `upstream_cx_overflow`), as Envoy does,
//! so a host's pending requests are never stranded by connections held on other hosts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::PoolStats;
use crate::circuit_breaker::{CircuitBreaker, Guard, Resource};
use crate::cluster::UpstreamError;

/// A request waiting for a connection: holds its pending unit and the
/// `upstream_rq_pending_active` gauge until dropped.
#[derive(Debug)]
pub(crate) struct Pending {
    _unit: Guard,
    stats: PoolStats,
}

impl Pending {
    /// Takes a pending unit from `breaker`; overflow is [`UpstreamError::Overflow`] (503 UO).
    pub(crate) fn new(
        breaker: &Arc<CircuitBreaker>,
        stats: &PoolStats,
    ) -> Result<Self, UpstreamError> {
        let unit = breaker
            .try_acquire(Resource::PendingRequests)
            .inspect_err(|_| stats.cluster.upstream_rq_pending_overflow.inc())?;
        stats.cluster.upstream_rq_pending_total.inc();
        stats.cluster.upstream_rq_pending_active.inc();
        Ok(Self {
            _unit: unit,
            stats: stats.clone(),
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.stats.cluster.upstream_rq_pending_active.dec();
    }
}

/// One open (or opening) connection of a host's pool: its `max_connections` unit, if any, and
/// its place in the pool's open count. Lives in the connection's task; dropping it wakes the
/// pool's waiters, who may now open a connection of their own.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    _unit: Option<Guard>,
    open: Arc<AtomicUsize>,
    wake: Arc<Notify>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.wake.notify_waiters();
    }
}

/// A pool's open-connection count and its waiters' wake-up, shared with its connections.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    open: Arc<AtomicUsize>,
    wake: Arc<Notify>,
}

impl Slots {
    /// The notifier waiters register with before they look for a connection; woken when a
    /// connection becomes available or closes.
    pub(crate) fn wake(&self) -> &Notify {
        &self.wake
    }

    /// A slot for a new connection, or `None` when this host must wait for one of its own:
    /// `per_host_thresholds.max_connections` or the cluster's `max_connections` is reached and
    /// the host already has a connection. `overflowed` makes `upstream_cx_overflow` count once
    /// per request.
    pub(crate) fn try_open(
        &self,
        breaker: Option<&Arc<CircuitBreaker>>,
        stats: &PoolStats,
        overflowed: &mut bool,
    ) -> Option<ConnectionSlot> {
        let mut overflow = || {
            if !*overflowed {
                *overflowed = true;
                stats.cluster.upstream_cx_overflow.inc();
            }
        };
        let per_host = breaker.and_then(|b| b.per_host_max_connections());
        // Reserve the place in this host's count first, so concurrent requests cannot both
        // pass the per-host limit; a host without connections may always open one.
        let reserved = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match per_host {
                Some(max) if n > 0 && n as u64 >= max => None,
                _ => Some(n + 1),
            });
        let previously_open = match reserved {
            Ok(n) => n,
            Err(_) => {
                overflow();
                return None;
            }
        };
        let unit = match breaker {
            None => None,
            Some(breaker) => match breaker.try_acquire(Resource::Connections) {
                Ok(unit) => Some(unit),
                Err(_) if previously_open == 0 => {
                    overflow();
                    Some(breaker.force_acquire(Resource::Connections))
                }
                Err(_) => {
                    overflow();
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    return None;
                }
            },
        };
        Some(ConnectionSlot {
            _unit: unit,
            open: self.open.clone(),
            wake: self.wake.clone(),
        })
    }
}
