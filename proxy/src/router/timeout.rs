//! The route timeout after the response headers: Envoy's route `timeout` (and a
//! `max_stream_duration` / `grpc-timeout` limit) spans until the upstream response is complete,
//! body and trailers included. Before the headers the tries answer 504 UT; once the headers are
//! on their way downstream a status can no longer change, so the body ends in an error instead:
//! hyper then resets the HTTP/2 stream (RST_STREAM) or closes the HTTP/1.1 connection, and the
//! client never mistakes a cut-off body for a complete one.
//!
//! As in Envoy, the timer starts once the downstream request is complete: a streaming request
//! body (gRPC client or bidi streaming) is watched for its end ([`notify_end`]). The wait for
//! the response headers (the retry driver, see [`crate::retry::driver`]) starts at the same
//! moment.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};
use crate::error::ResponseFlag;
use crate::stats::Counter;

/// The body's error when the route timeout fires mid-response.
#[derive(Debug, thiserror::Error)]
#[error("route timeout after {elapsed_ms} ms: upstream response body not complete (UT)")]
pub struct RouteTimeoutAfterHeaders {
    /// How long after routing it fired.
    pub elapsed_ms: u64,
}

/// When the route timeout starts. Envoy starts it once the downstream request is complete; a
/// request without a body is complete when it is routed.
pub(crate) enum TimerStart {
    /// Already started, at this instant.
    At(Instant),
    /// When the streaming request body ends (see [`notify_end`]).
    RequestEnd(oneshot::Receiver<Instant>),
}

enum Timer {
    Waiting(oneshot::Receiver<Instant>),
    Armed {
        started: Instant,
        sleep: Pin<Box<Sleep>>,
    },
}

/// A response body that fails once the route timeout passes before it ends.
pub(crate) struct DeadlineBody {
    inner: Body,
    timer: Timer,
    limit: Duration,
    /// The cluster's `upstream_rq_timeout`.
    timeouts: Option<Arc<Counter>>,
    done: bool,
}

impl DeadlineBody {
    /// Wraps `inner`: it must end within `limit` of `start`; a timeout counts on `timeouts`
    /// (the cluster's `upstream_rq_timeout`).
    pub(crate) fn new(
        inner: Body,
        start: TimerStart,
        limit: Duration,
        timeouts: Option<Arc<Counter>>,
    ) -> Self {
        let timer = match start {
            TimerStart::At(started) => armed(started, limit),
            TimerStart::RequestEnd(end) => Timer::Waiting(end),
        };
        Self {
            inner,
            timer,
            limit,
            timeouts,
            done: false,
        }
    }

    fn fire(&mut self, started: Instant) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(timeouts) = &self.timeouts {
            timeouts.inc();
        }
        tracing::info!(
            elapsed_ms,
            response_flags = ResponseFlag::UpstreamRequestTimeout.code(),
            "route timeout after response headers: resetting the stream"
        );
        Poll::Ready(Some(Err(Box::new(RouteTimeoutAfterHeaders { elapsed_ms }))))
    }
}

fn armed(started: Instant, limit: Duration) -> Timer {
    Timer::Armed {
        started,
        sleep: Box::pin(tokio::time::sleep_until(started + limit)),
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
        loop {
            match &mut this.timer {
                Timer::Waiting(end) => {
                    // A request body dropped before its end counts as ended now.
                    let started = match Pin::new(end).poll(cx) {
                        Poll::Ready(ended) => ended.unwrap_or_else(|_| Instant::now()),
                        Poll::Pending => return Poll::Pending,
                    };
                    this.timer = armed(started, this.limit);
                }
                Timer::Armed { started, sleep } => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let started = *started;
                    return this.fire(started);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps a streaming request body so the returned receiver learns when it ended.
pub(crate) fn notify_end(inner: Body) -> (Body, oneshot::Receiver<Instant>) {
    let (tx, rx) = oneshot::channel();
    let body = RequestEndBody {
        inner,
        end: Some(tx),
    };
    (http_body_util::BodyExt::boxed(body), rx)
}

struct RequestEndBody {
    inner: Body,
    end: Option<oneshot::Sender<Instant>>,
}

impl RequestEndBody {
    fn ended(&mut self) {
        if let Some(end) = self.end.take() {
            let _ = end.send(Instant::now());
        }
    }
}

impl HttpBody for RequestEndBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.ended(),
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() || this.inner.is_end_stream() => {
                this.ended()
            }
            _ => {}
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
        let timeouts = Arc::new(Counter::default());
        let started = Instant::now();
        let mut body = DeadlineBody::new(
            stalled_after("head"),
            TimerStart::At(started),
            Duration::from_secs(2),
            Some(timeouts.clone()),
        );
        let first = body.frame().await.expect("frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "head");
        let error = body.frame().await.expect("an error frame").unwrap_err();
        assert!(error.is::<RouteTimeoutAfterHeaders>(), "{error}");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(body.frame().await.is_none());
        assert_eq!(timeouts.get(), 1);
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
            TimerStart::At(started),
            Duration::from_secs(1),
            None,
        );
        let collected = body.collect().await.expect("complete");
        assert_eq!(collected.trailers().expect("trailers")["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), "a");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_starts_when_the_streaming_request_ends() {
        let (request_tx, request_rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let request = BodyExt::boxed(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(request_rx),
        ));
        let (mut request, end) = notify_end(request);
        let mut response = DeadlineBody::new(
            stalled_after("head"),
            TimerStart::RequestEnd(end),
            Duration::from_secs(2),
            None,
        );
        response.frame().await.expect("frame").expect("data");
        // The request is still streaming: no timer runs, however long it takes.
        let waited = tokio::time::timeout(Duration::from_secs(60), response.frame()).await;
        assert!(waited.is_err(), "no timeout while the request streams");

        request_tx
            .send(Ok(Frame::data(Bytes::from("last"))))
            .await
            .expect("send");
        drop(request_tx);
        request.frame().await.expect("frame").expect("data");
        assert!(request.frame().await.is_none());
        let ended = Instant::now();
        let error = response.frame().await.expect("an error frame").unwrap_err();
        assert!(error.is::<RouteTimeoutAfterHeaders>(), "{error}");
        assert_eq!(ended.elapsed(), Duration::from_secs(2));
    }
}
