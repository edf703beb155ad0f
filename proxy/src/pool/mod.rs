//! Upstream HTTP connection pools, one per host: HTTP/1.1 with keep-alive reuse ([`http1`]) and
//! HTTP/2 with multiplexing ([`http2`]), on hyper 1's low-level `client::conn` so Ferry controls
//! connect timeouts, idle timeouts, per-connection request limits and upgrades itself.
//!
//! A pool never outlives the [`Host`](crate::cluster::Host) that owns it; in-flight requests keep
//! their connection alive through the response body, so dropping a host (a removed endpoint or
//! cluster) drains instead of cutting requests.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::net::TcpStream;

use crate::body::{Body, BoxError};
use crate::circuit_breaker::CircuitBreaker;
use crate::cluster::{ClusterStats, HostStats, UpstreamError, UpstreamProtocol};

pub mod http1;
pub mod http2;
mod limits;

/// Everything that shapes a host's connections; part of the cluster config.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    /// HTTP version upstream.
    pub protocol: UpstreamProtocol,
    /// `connect_timeout` (Envoy default 5 s).
    pub connect_timeout: Duration,
    /// `common_http_protocol_options.idle_timeout` (Envoy default 1 h); `None` disables it.
    pub idle_timeout: Option<Duration>,
    /// `max_requests_per_connection`; `None` is unlimited.
    pub max_requests_per_connection: Option<u32>,
    /// `common_http_protocol_options.max_connection_duration`: an older connection takes no new
    /// request and closes once its requests are done; `None` (Envoy's default) never expires.
    pub max_connection_duration: Option<Duration>,
    /// HTTP/1.1 codec options.
    pub http1: Http1Settings,
    /// HTTP/2 codec options.
    pub http2: Http2Settings,
    /// `upstream_connection_options.tcp_keepalive`.
    pub tcp_keepalive: Option<TcpKeepalive>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            protocol: UpstreamProtocol::Http1,
            connect_timeout: crate::cluster::config::DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: Some(crate::cluster::protocol::DEFAULT_IDLE_TIMEOUT),
            max_requests_per_connection: None,
            max_connection_duration: None,
            http1: Http1Settings::default(),
            http2: Http2Settings::default(),
            tcp_keepalive: None,
        }
    }
}

impl PoolSettings {
    /// Whether a connection opened at `created` has reached `max_connection_duration` (the
    /// clock is only read when there is one).
    pub(crate) fn outlived(&self, created: tokio::time::Instant) -> bool {
        self.max_connection_duration
            .is_some_and(|max| created.elapsed() >= max)
    }
}

/// HTTP/1.1 codec options (`http_protocol_options`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Http1Settings {
    /// `header_key_format.proper_case_words`.
    pub title_case_headers: bool,
}

/// HTTP/2 codec options (`http2_protocol_options`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Settings {
    /// `max_concurrent_streams` (Envoy default 2147483647): a new connection is opened when every
    /// connection has this many (or the peer's advertised limit of) streams in flight.
    pub max_concurrent_streams: u32,
    /// `initial_stream_window_size`.
    pub initial_stream_window_size: Option<u32>,
    /// `initial_connection_window_size`.
    pub initial_connection_window_size: Option<u32>,
    /// `connection_keepalive`: (PING interval, timeout).
    pub keepalive: Option<(Duration, Duration)>,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 2_147_483_647,
            initial_stream_window_size: None,
            initial_connection_window_size: None,
            keepalive: None,
        }
    }
}

/// `upstream_connection_options.tcp_keepalive`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// `keepalive_probes`.
    pub probes: Option<u32>,
    /// `keepalive_time`.
    pub time: Option<Duration>,
    /// `keepalive_interval`.
    pub interval: Option<Duration>,
}

/// The stats a pool reports into: its cluster's and its host's.
#[derive(Debug, Clone)]
pub struct PoolStats {
    /// `cluster.NAME.*`.
    pub cluster: Arc<ClusterStats>,
    /// Per-host counters shown in `/clusters`.
    pub host: Arc<HostStats>,
}

/// One host's pools: HTTP/1.1, HTTP/2, or both for `use_downstream_protocol_config`.
#[derive(Debug)]
pub struct Pool {
    protocol: UpstreamProtocol,
    http1: http1::Http1Pool,
    http2: http2::Http2Pool,
}

impl Pool {
    /// A pool for `addr`; connections are made lazily.
    pub fn new(addr: SocketAddr, settings: Arc<PoolSettings>, stats: PoolStats) -> Self {
        Self {
            protocol: settings.protocol,
            http1: http1::Http1Pool::new(addr, settings.clone(), stats.clone()),
            http2: http2::Http2Pool::new(addr, settings, stats),
        }
    }

    /// Sends one request on a pooled (or new) connection of the right protocol; with a
    /// `breaker`, under its `max_connections` and `max_pending_requests` (see the module `limits`).
    pub async fn send(
        &self,
        request: http::Request<Body>,
        breaker: Option<&Arc<CircuitBreaker>>,
    ) -> Result<http::Response<Body>, UpstreamError> {
        let h2 = match self.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::UseDownstream => request.version() == http::Version::HTTP_2,
        };
        if h2 {
            self.http2.send(request, breaker).await
        } else {
            self.http1.send(request, breaker).await
        }
    }

    /// Idle (HTTP/1.1) plus open (HTTP/2) connections, for tests and `/clusters`.
    pub fn connections(&self) -> (usize, usize) {
        (self.http1.idle_count(), self.http2.connection_count())
    }
}

/// Shapes a request for HTTP/1.1: origin-form target and a `Host` header (taken from the URI's
/// authority when a request that arrived over HTTP/2 has none).
pub(crate) fn to_http1(request: &mut http::Request<Body>) {
    *request.version_mut() = http::Version::HTTP_11;
    if request.method() == http::Method::CONNECT {
        return;
    }
    let uri = request.uri();
    if let Some(authority) = uri.authority()
        && !request.headers().contains_key(http::header::HOST)
        && let Ok(value) = http::HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(http::header::HOST, value);
    }
    if request.uri().scheme().is_some() || request.uri().authority().is_some() {
        let target = request
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        if let Ok(origin) = http::Uri::try_from(target) {
            *request.uri_mut() = origin;
        }
    }
}

/// Shapes a request for HTTP/2: `:scheme` and `:authority` in the URI (the authority from the
/// `Host` header when a request that arrived over HTTP/1.1 has an origin-form target).
pub(crate) fn to_http2(request: &mut http::Request<Body>) {
    *request.version_mut() = http::Version::HTTP_2;
    if request.method() == http::Method::CONNECT {
        return;
    }
    let host = request.headers_mut().remove(http::header::HOST);
    let uri = request.uri();
    if uri.scheme().is_some() && uri.authority().is_some() {
        return;
    }
    let authority = match (uri.authority(), &host) {
        (Some(authority), _) => authority.as_str().to_owned(),
        (None, Some(host)) => match host.to_str() {
            Ok(host) => host.to_owned(),
            Err(_) => return,
        },
        (None, None) => return,
    };
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let scheme = uri.scheme_str().unwrap_or("http");
    if let Ok(full) = http::Uri::try_from(format!("{scheme}://{authority}{path}")) {
        *request.uri_mut() = full;
    }
}

/// Tells a logged or traced request (one carrying a `SpanSlot`) the local address of the
/// connection it is sent on, for `%UPSTREAM_LOCAL_ADDRESS%`; other requests pay one lookup.
pub(crate) fn record_local_address(request: &http::Request<Body>, local: Option<SocketAddr>) {
    if let (Some(slot), Some(local)) = (
        request.extensions().get::<Arc<crate::tracers::SpanSlot>>(),
        local,
    ) {
        slot.set_upstream_local_address(local);
    }
}

/// Opens a TCP connection with the cluster's connect timeout, TCP_NODELAY and keepalive.
pub(crate) async fn connect(
    addr: SocketAddr,
    settings: &PoolSettings,
    stats: &PoolStats,
) -> Result<TcpStream, UpstreamError> {
    let stream =
        match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                stats.cluster.upstream_cx_connect_fail.inc();
                stats.host.cx_connect_fail.inc();
                tracing::debug!(upstream.addr = %addr, %error, "upstream connect failed");
                return Err(UpstreamError::ConnectFailure(error));
            }
            Err(_) => {
                stats.cluster.upstream_cx_connect_fail.inc();
                stats.host.cx_connect_fail.inc();
                stats.cluster.upstream_cx_connect_timeout.inc();
                tracing::debug!(upstream.addr = %addr, "upstream connect timed out");
                return Err(UpstreamError::ConnectTimeout);
            }
        };
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(upstream.addr = %addr, %error, "cannot set TCP_NODELAY");
    }
    if let Some(ka) = &settings.tcp_keepalive {
        let mut params = socket2::TcpKeepalive::new();
        if let Some(time) = ka.time {
            params = params.with_time(time);
        }
        if let Some(interval) = ka.interval {
            params = params.with_interval(interval);
        }
        if let Some(probes) = ka.probes {
            params = params.with_retries(probes);
        }
        if let Err(error) = socket2::SockRef::from(&stream).set_tcp_keepalive(&params) {
            tracing::debug!(upstream.addr = %addr, %error, "cannot set TCP keepalive");
        }
    }
    Ok(stream)
}

/// Counts one open connection in the cluster and host stats for as long as it lives.
#[derive(Debug)]
pub(crate) struct ConnectionGuard(PoolStats);

impl ConnectionGuard {
    pub(crate) fn new(stats: &PoolStats) -> Self {
        stats.cluster.upstream_cx_total.inc();
        stats.cluster.upstream_cx_active.inc();
        stats.host.cx_total.inc();
        stats.host.cx_active.inc();
        Self(stats.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.cluster.upstream_cx_active.dec();
        self.0.host.cx_active.dec();
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body that holds what must live until the response is done: the
    /// host's active-request count (LEAST_REQUEST reads it) and, for HTTP/2, the stream's slot
    /// on its connection.
    pub(crate) struct TrackedBody<G> {
        #[pin]
        inner: Incoming,
        guard: G,
    }
}

impl<G: Send + Sync + 'static> TrackedBody<G> {
    /// Boxes `inner` with `guard` attached.
    pub(crate) fn boxed(response: http::Response<Incoming>, guard: G) -> http::Response<Body> {
        response.map(|inner| crate::body::boxed(TrackedBody { inner, guard }))
    }
}

impl<G> HttpBody for TrackedBody<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod buffer_tests;
#[cfg(test)]
pub(crate) mod tests;
