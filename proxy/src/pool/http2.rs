//! The HTTP/2 pool: requests multiplexed as streams over as few connections as possible (h2c
//! with prior knowledge).
//!
//! A new connection is opened only when every open one already carries its limit of concurrent
//! streams (`max_concurrent_streams`, or the peer's advertised SETTINGS if lower) or has served
//! `max_requests_per_connection` streams. Connections are made one at a time per host so a burst
//! of first requests shares one connection instead of racing to open many. A connection with no
//! stream for the idle timeout is closed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use super::limits::{ConnectionSlot, Pending, Slots};
use super::{ConnectionGuard, PoolSettings, PoolStats, TrackedBody, connect};
use crate::body::Body;
use crate::circuit_breaker::CircuitBreaker;
use crate::cluster::UpstreamError;
use crate::cluster::host::ActiveRequest;

/// The HTTP/2 connections of one host.
#[derive(Debug)]
pub struct Http2Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    settings: Arc<PoolSettings>,
    stats: PoolStats,
    conns: Mutex<Vec<Conn>>,
    connecting: tokio::sync::Mutex<()>,
    connect_failures: AtomicU64,
    /// Whether the idle reaper task is running (at most one per pool).
    reaping: AtomicBool,
    next_id: AtomicU64,
    /// Open connections and the wake-up of requests waiting for a stream slot.
    slots: Slots,
}

#[derive(Debug)]
struct Conn {
    id: u64,
    sender: SendRequest<Body>,
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS, as the connection task last saw it.
    peer_max_streams: Arc<AtomicUsize>,
    active: u32,
    served: u32,
    idle_since: Instant,
    /// The connection's local address.
    local: Option<SocketAddr>,
    created: Instant,
}

/// Holds one stream's slot on its connection until the response body is done.
#[derive(Debug)]
struct StreamSlot {
    pool: Weak<Inner>,
    id: u64,
    /// Keeps the connection open for this stream even if the pool (its host, its cluster) is
    /// dropped meanwhile: a removed endpoint drains instead of cutting the response.
    _connection: SendRequest<Body>,
    /// The connection's local address.
    local: Option<SocketAddr>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.finish_stream(self.id);
        }
    }
}

impl Http2Pool {
    /// A pool for `addr`.
    pub fn new(addr: SocketAddr, settings: Arc<PoolSettings>, stats: PoolStats) -> Self {
        Self {
            inner: Arc::new(Inner {
                addr,
                settings,
                stats,
                conns: Mutex::new(Vec::new()),
                connecting: tokio::sync::Mutex::new(()),
                connect_failures: AtomicU64::new(0),
                reaping: AtomicBool::new(false),
                next_id: AtomicU64::new(0),
                slots: Slots::default(),
            }),
        }
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.inner.lock_conns().len()
    }

    /// Sends a request as a new stream on a connection with room for it; with a `breaker`, a
    /// request that finds none waits as pending (see the module `pool::limits`).
    pub async fn send(
        &self,
        mut request: http::Request<Body>,
        breaker: Option<&Arc<CircuitBreaker>>,
    ) -> Result<http::Response<Body>, UpstreamError> {
        let active = ActiveRequest::new(&self.inner.stats.host);
        super::to_http2(&mut request);
        let mut retried = false;
        loop {
            let (mut sender, slot, fresh) = self.inner.checkout(breaker).await?;
            super::record_local_address(&request, slot.local);
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(TrackedBody::boxed(response, (active, slot))),
                Err(mut error) => match error.take_message() {
                    // The pooled connection went away before the stream was opened: nothing
                    // was sent, so open the stream elsewhere (once).
                    Some(unsent) if !fresh && !retried => {
                        retried = true;
                        request = unsent;
                    }
                    _ => {
                        let error = error.into_error();
                        tracing::debug!(upstream.addr = %self.inner.addr, %error, "upstream stream failed");
                        return Err(if refused(&error) {
                            UpstreamError::RefusedStream(error.to_string())
                        } else {
                            UpstreamError::Reset(error.to_string())
                        });
                    }
                },
            }
        }
    }
}

impl Inner {
    fn lock_conns(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn limit(&self, conn: &Conn) -> bool {
        let max_streams = (self.settings.http2.max_concurrent_streams as usize)
            .min(conn.peer_max_streams.load(Ordering::Relaxed).max(1));
        let below_max_requests = self
            .settings
            .max_requests_per_connection
            .is_none_or(|max| conn.served < max);
        (conn.active as usize) < max_streams
            && below_max_requests
            && !self.settings.outlived(conn.created)
    }

    /// A stream slot on an open connection with room, or on a new connection (`true`).
    ///
    /// Connections are opened one at a time; requests that queued behind an attempt that
    /// failed fail with it (UF) instead of each waiting out their own connect timeout, as
    /// Envoy fails the pending requests of a failed connection. A request that finds no room
    /// is pending under the breaker's `max_pending_requests`, and waits for a stream to end
    /// when `max_connections` forbids a new connection.
    async fn checkout(
        self: &Arc<Self>,
        breaker: Option<&Arc<CircuitBreaker>>,
    ) -> Result<(SendRequest<Body>, StreamSlot, bool), UpstreamError> {
        if let Some((sender, slot)) = self.claim() {
            return Ok((sender, slot, false));
        }
        let _pending = breaker
            .map(|breaker| Pending::new(breaker, &self.stats))
            .transpose()?;
        let mut overflowed = false;
        loop {
            let pool_wake = self.slots.wake().notified();
            tokio::pin!(pool_wake);
            pool_wake.as_mut().enable();
            let failures = self.connect_failures.load(Ordering::Acquire);
            let connecting = self.connecting.lock().await;
            if let Some((sender, slot)) = self.claim() {
                return Ok((sender, slot, false));
            }
            if self.connect_failures.load(Ordering::Acquire) != failures {
                return Err(UpstreamError::ConnectFailure(std::io::Error::other(
                    "the connection attempt this request waited for failed",
                )));
            }
            let Some(conn_slot) = self.slots.try_open(breaker, &self.stats, &mut overflowed) else {
                drop(connecting);
                // Only reached with a breaker; a stream ending here or a connection closing
                // anywhere in the cluster may make room.
                let cluster_wake = breaker.map(|b| b.connection_released());
                match cluster_wake {
                    Some(cluster_wake) => tokio::select! {
                        () = pool_wake => {}
                        () = cluster_wake => {}
                    },
                    None => pool_wake.await,
                }
                continue;
            };
            return match self.connect(conn_slot).await {
                Ok((sender, slot)) => Ok((sender, slot, true)),
                Err(error) => {
                    self.connect_failures.fetch_add(1, Ordering::AcqRel);
                    Err(error)
                }
            };
        }
    }

    /// Takes a stream slot on an open connection with room.
    fn claim(self: &Arc<Self>) -> Option<(SendRequest<Body>, StreamSlot)> {
        let now = Instant::now();
        let mut conns = self.lock_conns();
        conns.retain(|c| {
            let expired = c.active == 0
                && (self
                    .settings
                    .idle_timeout
                    .is_some_and(|t| now.duration_since(c.idle_since) >= t)
                    || self.settings.outlived(c.created));
            !c.sender.is_closed() && !expired
        });
        let conn = conns.iter_mut().find(|c| self.limit(c))?;
        conn.active += 1;
        conn.served += 1;
        Some((
            conn.sender.clone(),
            StreamSlot {
                pool: Arc::downgrade(self),
                id: conn.id,
                _connection: conn.sender.clone(),
                local: conn.local,
            },
        ))
    }

    async fn connect(
        self: &Arc<Self>,
        conn_slot: ConnectionSlot,
    ) -> Result<(SendRequest<Body>, StreamSlot), UpstreamError> {
        let stream = connect(self.addr, &self.settings, &self.stats).await?;
        let local = stream.local_addr().ok();
        let h2 = &self.settings.http2;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(h2.initial_stream_window_size)
            .initial_connection_window_size(h2.initial_connection_window_size);
        if let Some((interval, timeout)) = h2.keepalive {
            builder
                .keep_alive_interval(interval)
                .keep_alive_timeout(timeout);
        }
        let (sender, connection) = builder
            .handshake::<_, Body>(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Handshake(e.to_string()))?;
        let guard = ConnectionGuard::new(&self.stats);
        let addr = self.addr;
        let peer_max_streams = Arc::new(AtomicUsize::new(usize::MAX));
        let seen = peer_max_streams.clone();
        let mut connection = connection;
        tokio::spawn(async move {
            let _guard = (guard, conn_slot);
            let driven = std::future::poll_fn(|cx| {
                let poll = std::pin::Pin::new(&mut connection).poll(cx);
                seen.store(connection.current_max_send_streams(), Ordering::Relaxed);
                poll
            });
            if let Err(error) = driven.await {
                tracing::debug!(upstream.addr = %addr, %error, "upstream h2 connection closed with error");
            }
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Conn {
            id,
            sender: sender.clone(),
            peer_max_streams,
            active: 1,
            served: 1,
            idle_since: Instant::now(),
            local,
            created: Instant::now(),
        };
        // Listed even when it may take no more streams, so `finish_stream` finds it.
        self.lock_conns().push(conn);
        let slot = StreamSlot {
            pool: Arc::downgrade(self),
            id,
            _connection: sender.clone(),
            local,
        };
        Ok((sender, slot))
    }

    /// A stream ended: free its slot, drop a connection that has served its maximum, and arm the
    /// idle timer when the connection has no stream left.
    fn finish_stream(self: &Arc<Self>, id: u64) {
        let mut conns = self.lock_conns();
        let Some(i) = conns.iter().position(|c| c.id == id) else {
            return;
        };
        let conn = &mut conns[i];
        conn.active = conn.active.saturating_sub(1);
        self.slots.wake().notify_waiters();
        if conn.active > 0 {
            return;
        }
        let exhausted = self
            .settings
            .max_requests_per_connection
            .is_some_and(|max| conn.served >= max)
            || self.settings.outlived(conn.created);
        if exhausted {
            conns.remove(i);
            return;
        }
        conn.idle_since = Instant::now();
        if let Some(timeout) = self.settings.idle_timeout
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
            && !self.reaping.swap(true, Ordering::AcqRel)
        {
            runtime.spawn(reap_idle(Arc::downgrade(self), timeout));
        }
    }
}

/// Whether the peer refused the stream before processing it (REFUSED_STREAM reset, or a
/// GOAWAY that did not cover it).
fn refused(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away()
                    && h2.is_remote()
                    && h2.reason() == Some(h2::Reason::NO_ERROR));
        }
        source = e.source();
    }
    false
}

/// Closes connections without streams once they have been idle for `timeout`: one task per
/// pool, which sleeps until the oldest idle connection expires and exits when none is idle.
async fn reap_idle(pool: Weak<Inner>, timeout: std::time::Duration) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let now = Instant::now();
            let mut conns = pool.lock_conns();
            conns.retain(|c| {
                let expired = c.active == 0 && now.duration_since(c.idle_since) >= timeout;
                !expired && !c.sender.is_closed()
            });
            let oldest = conns
                .iter()
                .filter(|c| c.active == 0)
                .map(|c| c.idle_since)
                .min();
            match oldest {
                Some(oldest) => oldest + timeout,
                None => {
                    pool.reaping.store(false, Ordering::Release);
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}
