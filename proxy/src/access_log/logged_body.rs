//! What a request's access log lines need once its response body ends ([`Pending`], written
//! through [`crate::body::OnEnd`], as Envoy logs at stream completion: `DURATION` covers the
//! whole response and `BYTES_SENT` counts its body), and the request body's byte count
//! ([`CountedBody`]). Only requests of HCMs with an access log are wrapped.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::{AccessLog, Entry, Start, Writers};
use crate::tracers::SpanSlot;

/// Everything a line needs besides the body size.
#[derive(Debug)]
pub struct Pending {
    /// The HCM's access logs.
    pub logs: Arc<Vec<AccessLog>>,
    /// Where lines go.
    pub writers: Arc<Writers>,
    /// The request.
    pub start: Start,
    /// What routing learned (cluster, host, route name).
    pub slot: Arc<SpanSlot>,
    /// The response head.
    pub status: u16,
    /// Response headers.
    pub response_headers: http::HeaderMap,
    /// Response flags.
    pub flags: crate::error::ResponseFlags,
    /// Response code details and the transport failure reason.
    pub details: super::Details,
    /// The listener's address.
    pub local: SocketAddr,
    /// The client.
    pub remote: SocketAddr,
}

impl Pending {
    /// Writes the request's lines, `bytes_sent` being the response body's size.
    pub fn write(self, bytes_sent: u64) {
        let p = &self;
        let cluster = p.slot.upstream_cluster.get().map(String::as_str);
        let route = p.slot.route_name.get().map(String::as_str);
        let flags = p.flags.to_string();
        let entry = Entry {
            start: p.start.start,
            duration: p.start.started.elapsed(),
            method: &p.start.method,
            path: &p.start.path,
            authority: &p.start.authority,
            version: p.start.version,
            request_headers: &p.start.headers,
            response_headers: &p.response_headers,
            status: p.status,
            response_flags: &flags,
            details: &p.details.code,
            transport_failure_reason: p.details.transport_failure_reason.as_deref(),
            bytes_received: p.start.received.load(Ordering::Relaxed),
            bytes_sent,
            upstream_host: p.slot.upstream_host(),
            upstream_local: p.slot.upstream_local_address(),
            upstream_cluster: cluster,
            route_name: route,
            downstream_local: p.local,
            downstream_remote: p.remote,
        };
        for log in p.logs.iter() {
            p.writers.write(&log.path, log.render(&entry));
        }
    }
}

/// A request body that counts its bytes into `counter` as it streams.
#[derive(Debug)]
pub struct CountedBody<B> {
    inner: B,
    counter: Arc<std::sync::atomic::AtomicU64>,
}

impl<B> CountedBody<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, counter: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self { inner, counter }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for CountedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
