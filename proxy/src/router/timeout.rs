//! The route timeout after the response headers: Envoy's route `timeout` (and a
//! `max_stream_duration` / `grpc-timeout` limit) spans until the upstream response is complete,
//! body and trailers included. Before the headers the tries answer 504 UT; once the headers are
//! on their way downstream a status can no longer change, so the body ends in an error instead:
//! hyper then resets the HTTP/2 stream (RST_STREAM) or closes the HTTP/1.1 connection, and the
//! client never mistakes a cut-off body for a complete one.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};
use crate::error::ResponseFlag;
use crate::stats::Store;

/// The body's error when the route timeout fires mid-response.
#[derive(Debug, thiserror::Error)]
#[error("route timeout after {elapsed_ms} ms: upstream response body not complete (UT)")]
pub struct RouteTimeoutAfterHeaders {
    /// How long after routing it fired.
    pub elapsed_ms: u64,
}

/// Where a timeout after the headers is counted.
#[derive(Debug, Clone)]
pub(crate) struct TimeoutStats {
    /// The proxy's stats store.
    pub(crate) store: Arc<Store>,
    /// The cluster's stat name (`cluster.<name>.upstream_rq_timeout`).
    pub(crate) cluster: Arc<str>,
}

impl TimeoutStats {
    /// Counts one route timeout on the cluster, as Envoy's `upstream_rq_timeout`.
    pub(crate) fn count(&self) {
        self.store
            .counter(format!("cluster.{}.upstream_rq_timeout", self.cluster))
            .inc();
    }
}

/// A response body that fails once `deadline` passes before it ends.
pub(crate) struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    started: Instant,
    stats: Option<TimeoutStats>,
    done: bool,
}

impl DeadlineBody {
    /// Wraps `inner`; `started` is when the route timeout began (for the log).
    pub(crate) fn new(
        inner: Body,
        started: Instant,
        deadline: Instant,
        stats: Option<TimeoutStats>,
    ) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            started,
            stats,
            done: false,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(frame)) => return Poll::Ready(Some(frame)),
            Poll::Pending => {}
        }
        if this.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.done = true;
        let elapsed_ms = u64::try_from(this.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(stats) = &this.stats {
            stats.count();
        }
        tracing::info!(
            elapsed_ms,
            response_flags = ResponseFlag::UpstreamRequestTimeout.code(),
            "route timeout after response headers: resetting the stream"
        );
        Poll::Ready(Some(Err(Box::new(RouteTimeoutAfterHeaders { elapsed_ms }))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn stalled_after(chunk: &'static str) -> Body {
        let frames = futures::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from(chunk)))])
            .chain(futures::stream::pending());
        BodyExt::boxed(StreamBody::new(frames))
    }

    use futures::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_at_the_deadline_and_is_counted() {
        let store = Arc::new(Store::default());
        let started = Instant::now();
        let stats = TimeoutStats {
            store: store.clone(),
            cluster: Arc::from("c"),
        };
        let mut body = DeadlineBody::new(
            stalled_after("head"),
            started,
            started + Duration::from_secs(2),
            Some(stats),
        );
        let first = body.frame().await.expect("frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "head");
        let error = body.frame().await.expect("an error frame").unwrap_err();
        assert!(error.is::<RouteTimeoutAfterHeaders>(), "{error}");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(body.frame().await.is_none());
        assert_eq!(store.counter("cluster.c.upstream_rq_timeout").get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_in_time_passes_through_with_its_trailers() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = futures::stream::iter([
            Ok::<_, BoxError>(Frame::data(Bytes::from("a"))),
            Ok(Frame::trailers(trailers)),
        ]);
        let started = Instant::now();
        let body = DeadlineBody::new(
            BodyExt::boxed(StreamBody::new(frames)),
            started,
            started + Duration::from_secs(1),
            None,
        );
        let collected = body.collect().await.expect("complete");
        assert_eq!(collected.trailers().expect("trailers")["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), "a");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
