//! The body type that flows through the proxy in both directions.
//!
//! Bodies are streamed frame by frame (data and trailers) and never collected whole unless a
//! feature needs it (retry replay, mirroring). One boxed type keeps the router free of generics:
//! downstream `Incoming`, upstream `Incoming` and locally generated responses all fit it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

/// The most an HTTP/1.1 connection's codec buffers from its socket, downstream and upstream
/// (hyper's `max_buf_size`; its default lets the adaptive read buffer grow to 400 KiB).
///
/// A body crosses the proxy as the chunks its codec read, so this bounds the chunk in flight
/// per connection (to twice this at most: a read fills the buffer's spare capacity, which
/// `BytesMut`'s growth can double): while one is written to the other side the next is being
/// read, and a 1 MiB
/// response held two 400 KiB slices per connection pair, the largest part of the peak under
/// load. Like Envoy, which reads in 16 KiB slices and applies `per_connection_buffer_limit_bytes`
/// as a watermark, the proxy streams with backpressure rather than holding a body. It also caps
/// a response's header block; downstream, the HCM raises it to hold `max_request_headers_kb`
/// when that is larger.
pub const MAX_READ_BUFFER: usize = 64 * 1024;

/// Errors a body can yield mid-stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The proxy's body type.
pub type Body = BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body with the given bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// A body that calls `on_end` once with the data bytes it carried: at end of stream, on an
/// error, or when dropped unfinished (the downstream went away). Envoy ends spans and writes
/// access logs at stream completion, so both hang off this; only requests that trace or log are
/// wrapped.
pub struct OnEnd<F: FnOnce(u64)> {
    inner: Body,
    on_end: Option<F>,
    bytes: u64,
}

impl<F: FnOnce(u64)> std::fmt::Debug for OnEnd<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnEnd")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl<F: FnOnce(u64)> OnEnd<F> {
    /// Wraps `inner`.
    pub fn new(inner: Body, on_end: F) -> Self {
        Self {
            inner,
            on_end: Some(on_end),
            bytes: 0,
        }
    }

    fn finish(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.bytes);
        }
    }
}

impl<F: FnOnce(u64)> Drop for OnEnd<F> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<F: FnOnce(u64) + Unpin> http_body::Body for OnEnd<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn recorder() -> (
        Arc<AtomicU64>,
        impl FnOnce(u64) + Unpin + Send + Sync + 'static,
    ) {
        let seen = Arc::new(AtomicU64::new(u64::MAX));
        let into = seen.clone();
        (seen, move |bytes| into.store(bytes, Ordering::SeqCst))
    }

    #[tokio::test]
    async fn on_end_reports_the_bytes_once_the_body_ends() {
        let (seen, on_end) = recorder();
        let body = OnEnd::new(full("hello"), on_end);
        let collected = body.collect().await.expect("body").to_bytes();
        assert_eq!(&collected[..], b"hello");
        assert_eq!(seen.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn on_end_reports_a_body_dropped_unfinished() {
        let (seen, on_end) = recorder();
        drop(OnEnd::new(full("hello"), on_end));
        assert_eq!(seen.load(Ordering::SeqCst), 0);
    }
}
