//! Ends a sampled request's span when its response body ends (or is dropped, when the
//! downstream goes away), as Envoy ends the span at stream completion: the span's duration
//! covers the whole response, and the `response_size` tag counts its body bytes. Only sampled
//! requests are wrapped, so the untraced path keeps its body as it is.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::{ActiveSpan, Tracer, TracingConfig};
use crate::body::{Body, BoxError};

struct Pending {
    tracer: Arc<Tracer>,
    config: Arc<TracingConfig>,
    span: ActiveSpan,
    status: StatusCode,
    response_flags: &'static str,
}

/// A response body that finishes its span at end of stream.
pub struct TracedBody {
    inner: Body,
    pending: Option<Pending>,
    bytes: u64,
}

impl std::fmt::Debug for TracedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedBody")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl TracedBody {
    /// Wraps `inner`; the span is reported once it ends.
    pub fn new(
        inner: Body,
        tracer: Arc<Tracer>,
        config: Arc<TracingConfig>,
        span: ActiveSpan,
        status: StatusCode,
        response_flags: &'static str,
    ) -> Self {
        Self {
            inner,
            pending: Some(Pending {
                tracer,
                config,
                span,
                status,
                response_flags,
            }),
            bytes: 0,
        }
    }

    fn finish(&mut self) {
        if let Some(p) = self.pending.take() {
            p.tracer.finish(
                &p.config,
                p.span,
                p.status,
                p.response_flags,
                Some(self.bytes),
            );
        }
    }
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl HttpBody for TracedBody {
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
