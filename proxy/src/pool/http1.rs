//! The HTTP/1.1 pool: one request at a time per connection, connections reused (keep-alive)
//! once the previous response has been read to the end.
//!
//! A connection goes back to the idle list when hyper says it is ready again (the response body
//! was consumed and the server kept the connection open). Idle connections are closed after the
//! idle timeout; a connection is closed after `max_requests_per_connection` requests. A request
//! that finds a pooled connection already closed by the server is re-sent on a fresh one, since
//! hyper guarantees nothing was written. Connections run with upgrades enabled so a
//! `101 Switching Protocols` response can be taken over with `hyper::upgrade::on`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::limits::{ConnectionSlot, Pending, Slots};
use super::{ConnectionGuard, PoolSettings, PoolStats, TrackedBody, connect};
use crate::body::Body;
use crate::circuit_breaker::CircuitBreaker;
use crate::cluster::UpstreamError;
use crate::cluster::host::ActiveRequest;

/// The HTTP/1.1 connections of one host.
#[derive(Debug)]
pub struct Http1Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    settings: Arc<PoolSettings>,
    stats: PoolStats,
    idle: Mutex<Vec<Idle>>,
    /// Whether the idle reaper task is running (at most one per pool).
    reaping: AtomicBool,
    next_id: AtomicU64,
    /// Open connections and the wake-up of requests waiting for one.
    slots: Slots,
}

#[derive(Debug)]
struct Idle {
    id: u64,
    sender: SendRequest<Body>,
    since: Instant,
    created: Instant,
    served: u32,
    local: Option<SocketAddr>,
}

/// A connection checked out for one request.
struct Checkout {
    id: u64,
    sender: SendRequest<Body>,
    created: Instant,
    served: u32,
    reused: bool,
    /// The connection's local address.
    local: Option<SocketAddr>,
}

impl Http1Pool {
    /// A pool for `addr`.
    pub fn new(addr: SocketAddr, settings: Arc<PoolSettings>, stats: PoolStats) -> Self {
        Self {
            inner: Arc::new(Inner {
                addr,
                settings,
                stats,
                idle: Mutex::new(Vec::new()),
                reaping: AtomicBool::new(false),
                next_id: AtomicU64::new(0),
                slots: Slots::default(),
            }),
        }
    }

    /// Idle connections ready for reuse.
    pub fn idle_count(&self) -> usize {
        self.inner.lock_idle().len()
    }

    /// Sends a request, reusing an idle connection when one is ready; with a `breaker`, a
    /// request without one waits as pending under its `max_pending_requests` and
    /// `max_connections` (see the module `pool::limits`).
    pub async fn send(
        &self,
        mut request: http::Request<Body>,
        breaker: Option<&Arc<CircuitBreaker>>,
    ) -> Result<http::Response<Body>, UpstreamError> {
        let active = ActiveRequest::new(&self.inner.stats.host);
        super::to_http1(&mut request);
        loop {
            let mut conn = match self.inner.checkout() {
                Some(conn) => conn,
                None => self.inner.obtain(breaker).await?,
            };
            super::record_local_address(&request, conn.local);
            match conn.sender.try_send_request(request).await {
                Ok(response) => {
                    conn.served += 1;
                    Inner::release(&self.inner, conn);
                    return Ok(TrackedBody::boxed(response, active));
                }
                Err(mut error) => match error.take_message() {
                    // Not sent on a pooled connection the server had closed: safe to re-send.
                    Some(unsent) if conn.reused => {
                        tracing::debug!(upstream.addr = %self.inner.addr, "pooled connection closed, retrying on a new one");
                        request = unsent;
                    }
                    _ => {
                        let error = error.into_error();
                        tracing::debug!(upstream.addr = %self.inner.addr, %error, "upstream request failed");
                        return Err(UpstreamError::Reset(error.to_string()));
                    }
                },
            }
        }
    }
}

impl Inner {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that is still open and not expired.
    fn checkout(&self) -> Option<Checkout> {
        let now = Instant::now();
        let mut idle = self.lock_idle();
        while let Some(conn) = idle.pop() {
            let expired = self
                .settings
                .idle_timeout
                .is_some_and(|t| now.duration_since(conn.since) >= t)
                || self.settings.outlived(conn.created);
            if conn.sender.is_closed() || expired || !conn.sender.is_ready() {
                continue;
            }
            return Some(Checkout {
                id: conn.id,
                sender: conn.sender,
                created: conn.created,
                served: conn.served,
                reused: true,
                local: conn.local,
            });
        }
        None
    }

    /// A connection for a request that found none idle: a new one when a connection unit is
    /// free, else the next one given back, waiting as a pending request.
    async fn obtain(
        &self,
        breaker: Option<&Arc<CircuitBreaker>>,
    ) -> Result<Checkout, UpstreamError> {
        let mut overflowed = false;
        let Some(breaker) = breaker else {
            let slot = self.slots.try_open(None, &self.stats, &mut overflowed);
            return self.connect(slot).await;
        };
        let _pending = Pending::new(breaker, &self.stats)?;
        loop {
            let pool_wake = self.slots.wake().notified();
            let cluster_wake = breaker.connection_released();
            tokio::pin!(pool_wake, cluster_wake);
            pool_wake.as_mut().enable();
            cluster_wake.as_mut().enable();
            if let Some(conn) = self.checkout() {
                return Ok(conn);
            }
            if let Some(slot) = self
                .slots
                .try_open(Some(breaker), &self.stats, &mut overflowed)
            {
                return self.connect(Some(slot)).await;
            }
            tracing::trace!(upstream.addr = %self.addr, "waiting for a connection (max_connections)");
            tokio::select! {
                () = pool_wake => {}
                () = cluster_wake => {}
            }
        }
    }

    async fn connect(&self, slot: Option<ConnectionSlot>) -> Result<Checkout, UpstreamError> {
        let stream = connect(self.addr, &self.settings, &self.stats).await?;
        let local = stream.local_addr().ok();
        let mut builder = http1::Builder::new();
        builder.title_case_headers(self.settings.http1.title_case_headers);
        // The response body reaches the router in chunks of at most this (see the constant).
        builder.max_buf_size(crate::body::MAX_READ_BUFFER);
        let (sender, connection) = builder
            .handshake::<_, Body>(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Handshake(e.to_string()))?;
        let guard = ConnectionGuard::new(&self.stats);
        let addr = self.addr;
        tokio::spawn(async move {
            let _guard = (guard, slot);
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(upstream.addr = %addr, %error, "upstream connection closed with error");
            }
        });
        Ok(Checkout {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            sender,
            created: Instant::now(),
            served: 0,
            reused: false,
            local,
        })
    }

    /// Returns the connection to the idle list once hyper can take the next request on it,
    /// unless it has served its maximum; dropping the sender then closes it after the response.
    fn release(this: &Arc<Self>, conn: Checkout) {
        if this
            .settings
            .max_requests_per_connection
            .is_some_and(|max| conn.served >= max)
            || this.settings.outlived(conn.created)
        {
            return;
        }
        let pool = Arc::downgrade(this);
        tokio::spawn(async move {
            let Checkout {
                id,
                mut sender,
                created,
                served,
                local,
                ..
            } = conn;
            if sender.ready().await.is_err() {
                return;
            }
            let Some(pool) = pool.upgrade() else { return };
            pool.lock_idle().push(Idle {
                id,
                sender,
                since: Instant::now(),
                created,
                served,
                local,
            });
            pool.slots.wake().notify_waiters();
            if let Some(timeout) = pool.settings.idle_timeout
                && !pool.reaping.swap(true, Ordering::AcqRel)
            {
                tokio::spawn(reap_idle(Arc::downgrade(&pool), timeout));
            }
        });
    }
}

/// Closes idle connections once they have been idle for `timeout`: one task per pool, which
/// sleeps until the oldest idle connection expires and exits when none is left.
async fn reap_idle(pool: Weak<Inner>, timeout: std::time::Duration) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let now = Instant::now();
            let mut idle = pool.lock_idle();
            let before = idle.len();
            idle.retain(|c| now.duration_since(c.since) < timeout && !c.sender.is_closed());
            if idle.len() < before {
                tracing::debug!(upstream.addr = %pool.addr, closed = before - idle.len(), "idle upstream connections closed");
            }
            match idle.iter().map(|c| c.since).min() {
                Some(oldest) => oldest + timeout,
                None => {
                    // Cleared under the lock: a concurrent release either sees the flag
                    // cleared and starts a new reaper, or pushed before we looked.
                    pool.reaping.store(false, Ordering::Release);
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}
