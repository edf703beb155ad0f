//! The connection-pool side of the circuit breakers: `max_pending_requests` (requests waiting
//! for a connection) and `max_connections` (per cluster, across its hosts), as Envoy's
//! `ConnPoolImplBase` enforces them.
//!
//! A request that finds no ready connection becomes *pending*: it takes a pending unit (none
//! left: 503 UO at once) and holds it until it has a connection, either a new one (when a
//! connection unit is free) or one another request gives back. A host with no connection at
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

    /// Connections open or opening.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A slot for a new connection, or `None` when `max_connections` is reached and this host
    /// already has a connection to wait for. `overflowed` makes `upstream_cx_overflow` count
    /// once per request.
    pub(crate) fn try_open(
        &self,
        breaker: Option<&Arc<CircuitBreaker>>,
        stats: &PoolStats,
        overflowed: &mut bool,
    ) -> Option<ConnectionSlot> {
        let unit = match breaker {
            None => None,
            Some(breaker) => match breaker.try_acquire(Resource::Connections) {
                Ok(unit) => Some(unit),
                Err(_) => {
                    if !*overflowed {
                        *overflowed = true;
                        stats.cluster.upstream_cx_overflow.inc();
                    }
                    if self.open() > 0 {
                        return None;
                    }
                    Some(breaker.force_acquire(Resource::Connections))
                }
            },
        };
        self.open.fetch_add(1, Ordering::AcqRel);
        Some(ConnectionSlot {
            _unit: unit,
            open: self.open.clone(),
            wake: self.wake.clone(),
        })
    }
}
