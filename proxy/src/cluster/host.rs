//! One upstream host: its address, transport, connection pool and counters.
//!
//! A `Host` is identity plus long-lived state; what an EDS update may change without
//! disturbing that state (weight, health, locality, priority) lives beside it in the cluster's
//! host set, so a host that stays across updates keeps its warm connections and counters.
//!
//! The connection pool is made on the host's first request: a sidecar learns every endpoint of
//! the mesh but talks to few of them, and an unused pool per endpoint would cost more memory
//! than the rest of the host.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use tokio::net::TcpStream;

use super::UpstreamError;
use super::stats::{ClusterStats, HostStats};
use super::transport::TransportSocket;
use crate::body::Body;
use crate::circuit_breaker::CircuitBreaker;
use crate::pool::{Pool, PoolSettings, PoolStats};

/// One upstream host with its connection pool.
#[derive(Debug)]
pub struct Host {
    address: SocketAddr,
    hostname: String,
    transport: TransportSocket,
    settings: Arc<PoolSettings>,
    stats: Arc<HostStats>,
    cluster_stats: Arc<ClusterStats>,
    /// Made on first use (see the module doc).
    pool: OnceLock<Pool>,
}

impl Host {
    /// A host at `address`; its pool and connections are made on first use.
    pub fn new(
        address: SocketAddr,
        hostname: String,
        transport: TransportSocket,
        settings: Arc<PoolSettings>,
        cluster_stats: Arc<ClusterStats>,
    ) -> Self {
        Self {
            address,
            hostname,
            transport,
            settings,
            stats: Arc::new(HostStats::default()),
            cluster_stats,
            pool: OnceLock::new(),
        }
    }

    fn pool(&self) -> &Pool {
        self.pool.get_or_init(|| {
            Pool::new(
                self.address,
                self.settings.clone(),
                PoolStats {
                    cluster: self.cluster_stats.clone(),
                    host: self.stats.clone(),
                },
            )
        })
    }

    /// The host's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The endpoint's hostname (`endpoint.hostname`, or the DNS name it was resolved from).
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The transport socket this host was matched to.
    pub fn transport(&self) -> TransportSocket {
        self.transport
    }

    /// The host's counters.
    pub fn stats(&self) -> &HostStats {
        &self.stats
    }

    /// Requests in flight to this host.
    pub fn active_requests(&self) -> u64 {
        self.stats.rq_active.get()
    }

    /// The pool settings this host was built with (reuse across config changes compares them).
    pub(crate) fn settings(&self) -> &Arc<PoolSettings> {
        &self.settings
    }

    /// Idle HTTP/1.1 and open HTTP/2 connections.
    pub fn connections(&self) -> (usize, usize) {
        self.pool.get().map_or((0, 0), Pool::connections)
    }

    /// Sends a request over this host's pool (HTTP/1.1 or HTTP/2 per the cluster's protocol
    /// options), streaming both bodies. Connections are made with upgrades enabled, so
    /// `hyper::upgrade::on(response)` works for a `101 Switching Protocols`.
    ///
    /// Counts `upstream_rq_total`; the caller records the response's status class with
    /// [`Cluster::record_response`](super::Cluster::record_response) (it also knows about
    /// locally generated upstream failures).
    pub async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, UpstreamError> {
        self.send_limited(request, None).await
    }

    /// [`Self::send`] under the cluster's circuit breaker for the request's priority: a request
    /// that must wait for a connection is pending under `max_pending_requests`, and new
    /// connections count against `max_connections` (overflow: [`UpstreamError::Overflow`]).
    pub async fn send_limited(
        &self,
        request: http::Request<Body>,
        breaker: Option<&Arc<CircuitBreaker>>,
    ) -> Result<http::Response<Body>, UpstreamError> {
        self.check_transport()?;
        self.stats.rq_total.inc();
        self.cluster_stats.upstream_rq_total.inc();
        let result = self.pool().send(request, breaker).await;
        if result.is_err() {
            self.stats.rq_error.inc();
        }
        result
    }

    /// Opens a raw TCP connection to the host (tcp_proxy), with the cluster's connect timeout.
    /// Counts `upstream_cx_total`; the caller owns the stream, so `upstream_cx_active` is not
    /// tracked for it.
    pub async fn connect(&self) -> Result<TcpStream, UpstreamError> {
        self.check_transport()?;
        let stats = PoolStats {
            cluster: self.cluster_stats.clone(),
            host: self.stats.clone(),
        };
        let stream = crate::pool::connect(self.address, &self.settings, &stats).await?;
        self.cluster_stats.upstream_cx_total.inc();
        self.stats.cx_total.inc();
        Ok(stream)
    }

    fn check_transport(&self) -> Result<(), UpstreamError> {
        match self.transport {
            TransportSocket::Plaintext => Ok(()),
            TransportSocket::Tls => Err(UpstreamError::TransportNotImplemented("upstream TLS")),
        }
    }
}

/// Counts one request in the host's `rq_active` until dropped (with the response body).
#[derive(Debug)]
pub(crate) struct ActiveRequest(Arc<HostStats>);

impl ActiveRequest {
    pub(crate) fn new(stats: &Arc<HostStats>) -> Self {
        stats.rq_active.inc();
        Self(stats.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.rq_active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Store;

    #[tokio::test]
    async fn the_pool_is_made_on_the_first_request() {
        // Nothing listens on port 9 of 127.0.0.1 (discard): the request fails fast, and only
        // whether the pool exists matters here.
        let host = Host::new(
            SocketAddr::from(([127, 0, 0, 1], 9)),
            String::new(),
            TransportSocket::Plaintext,
            Arc::new(PoolSettings::default()),
            ClusterStats::new(&Store::default(), "lazy"),
        );
        assert!(host.pool.get().is_none(), "no pool before any request");
        assert_eq!(host.connections(), (0, 0));
        let request = http::Request::builder()
            .uri("http://lazy/")
            .body(crate::body::empty())
            .unwrap();
        let _ = host.send(request).await;
        assert!(host.pool.get().is_some(), "the first request made the pool");
        assert_eq!(host.stats().rq_total.get(), 1);
    }
}
