//! Request bodies kept for replay: a retry must resend the same body, so the router tees the
//! downstream body into a buffer *while* it streams to the first attempt (never buffering it
//! whole before sending). A retry replays the buffered frames and then keeps pulling whatever
//! the downstream has not sent yet. Once more than the limit has passed through, the buffer is
//! dropped and the request can no longer be retried: it finishes on the attempt in flight, as
//! Envoy does when a body overflows its buffer limit.
//!
//! The limit is Envoy's: the route's (or virtual host's) `request_body_buffer_limit` /
//! `per_request_buffer_limit_bytes`, else the listener's `per_connection_buffer_limit_bytes`
//! (default 1 MiB).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use tokio::sync::watch;

use crate::body::{Body, BoxError};

/// Envoy's default buffer limit (`per_connection_buffer_limit_bytes`, 1 MiB).
pub const DEFAULT_LIMIT: u64 = 1024 * 1024;

#[derive(Debug)]
struct Tee {
    /// The downstream body; `None` once it ended.
    source: Option<Body>,
    /// Data frames kept for replay (empty after an overflow).
    chunks: Vec<Bytes>,
    /// Frames pulled from the source before `chunks[0]` (non-zero after an overflow).
    base: usize,
    /// Data frames pulled from the source so far.
    pulled: usize,
    buffered: u64,
    trailers: Option<HeaderMap>,
    ended: bool,
    overflowed: bool,
    failed: bool,
    /// The attempt allowed to read; older attempts' bodies fail when polled.
    generation: u64,
    /// Turns true when the downstream body ended (the request is complete).
    end: watch::Sender<bool>,
}

impl Tee {
    fn finish(&mut self) {
        self.ended = true;
        self.source = None;
        self.end.send_replace(true);
    }
}

/// A request body that can be sent to several attempts in turn.
#[derive(Debug, Clone)]
pub struct Replay {
    tee: Arc<Mutex<Tee>>,
    limit: u64,
}

fn lock(tee: &Mutex<Tee>) -> MutexGuard<'_, Tee> {
    tee.lock().unwrap_or_else(|p| p.into_inner())
}

impl Replay {
    /// Wraps the downstream `body`, keeping up to `limit` bytes for retries.
    pub fn new(body: Body, limit: u64) -> Self {
        let ended = body.is_end_stream();
        Self {
            tee: Arc::new(Mutex::new(Tee {
                source: (!ended).then_some(body),
                chunks: Vec::new(),
                base: 0,
                pulled: 0,
                buffered: 0,
                trailers: None,
                ended,
                overflowed: false,
                failed: false,
                generation: 0,
                end: watch::Sender::new(ended),
            })),
            limit,
        }
    }

    /// Whether another attempt can still get the whole body (it did not overflow the limit and
    /// the downstream did not fail).
    pub fn is_replayable(&self) -> bool {
        let tee = lock(&self.tee);
        !tee.overflowed && !tee.failed
    }

    /// Turns true once the downstream request body has ended (the route timeout starts then).
    pub fn request_end(&self) -> watch::Receiver<bool> {
        lock(&self.tee).end.subscribe()
    }

    /// The body for the next attempt. Bodies of earlier attempts stop (with an error) when polled
    /// again, so two attempts never pull the downstream body at once.
    pub fn body_for_attempt(&self) -> Body {
        let generation = {
            let mut tee = lock(&self.tee);
            tee.generation += 1;
            tee.generation
        };
        http_body_util::BodyExt::boxed(AttemptBody {
            tee: self.tee.clone(),
            limit: self.limit,
            generation,
            next: 0,
            trailers_sent: false,
        })
    }
}

/// One attempt's view of the tee: buffered frames first, then the live source.
struct AttemptBody {
    tee: Arc<Mutex<Tee>>,
    limit: u64,
    generation: u64,
    /// Index of the next data frame this attempt sends (counted from the first ever pulled).
    next: usize,
    trailers_sent: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a retry")]
struct Superseded;

#[derive(Debug, thiserror::Error)]
#[error("request body is no longer available for replay")]
struct Unavailable;

impl http_body::Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut tee = lock(&this.tee);
        if tee.generation != this.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if this.next < tee.pulled {
            let Some(chunk) = this
                .next
                .checked_sub(tee.base)
                .and_then(|i| tee.chunks.get(i))
            else {
                return Poll::Ready(Some(Err(Box::new(Unavailable))));
            };
            let chunk = chunk.clone();
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if tee.ended {
            if !this.trailers_sent
                && let Some(trailers) = tee.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        }
        let Some(source) = tee.source.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                tee.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                tee.failed = true;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    tee.pulled += 1;
                    this.next = tee.pulled;
                    tee.buffered += data.len() as u64;
                    if tee.overflowed || tee.buffered > this.limit {
                        if !tee.overflowed {
                            tracing::debug!(
                                limit = this.limit,
                                "request body over the buffer limit; no retries"
                            );
                        }
                        tee.overflowed = true;
                        tee.chunks = Vec::new();
                        tee.base = tee.pulled;
                    } else {
                        tee.chunks.push(data.clone());
                    }
                    if tee.source.as_ref().is_some_and(|s| s.is_end_stream()) {
                        tee.finish();
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    tee.trailers = Some(trailers.clone());
                    tee.finish();
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let tee = lock(&self.tee);
        tee.generation == self.generation
            && tee.ended
            && self.next >= tee.pulled
            && (self.trailers_sent || tee.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let tee = lock(&self.tee);
        if tee.ended && !tee.overflowed && self.next <= tee.base {
            return SizeHint::with_exact(tee.buffered);
        }
        match &tee.source {
            Some(source) if self.next >= tee.pulled => source.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    async fn read(body: Body) -> Result<(Bytes, Option<HeaderMap>), BoxError> {
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        Ok((collected.to_bytes(), trailers))
    }

    fn streamed(parts: &[&'static str], trailers: bool) -> Body {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            frames.push(Ok(Frame::trailers(t)));
        }
        BodyExt::boxed(StreamBody::new(futures::stream::iter(frames)))
    }

    #[tokio::test]
    async fn streamed_bodies_are_replayed_with_trailers() {
        let replay = Replay::new(streamed(&["he", "llo"], true), 16);
        let (first, t1) = read(replay.body_for_attempt()).await.expect("first");
        assert_eq!(first, "hello");
        assert!(replay.is_replayable());
        let (second, t2) = read(replay.body_for_attempt()).await.expect("second");
        assert_eq!(second, "hello");
        assert_eq!(t1, t2);
        assert!(t2.is_some());
    }

    #[tokio::test]
    async fn a_retry_before_the_body_was_read_pulls_the_rest() {
        let replay = Replay::new(streamed(&["a", "b", "c"], false), 16);
        let mut first = replay.body_for_attempt();
        let frame = first.frame().await.expect("frame").expect("ok");
        assert_eq!(frame.into_data().expect("data"), "a");
        // The first attempt failed after one frame; the retry gets everything.
        let (second, _) = read(replay.body_for_attempt()).await.expect("second");
        assert_eq!(second, "abc");
        assert!(first.frame().await.expect("frame").is_err(), "superseded");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_stream_once_and_are_not_replayable() {
        let replay = Replay::new(streamed(&["hello", "world"], false), 6);
        let (first, _) = read(replay.body_for_attempt()).await.expect("first");
        assert_eq!(first, "helloworld", "the first attempt gets the whole body");
        assert!(!replay.is_replayable());
    }

    #[tokio::test]
    async fn the_request_end_is_signalled_when_the_body_ends() {
        let replay = Replay::new(streamed(&["a", "b"], false), 16);
        let end = replay.request_end();
        assert!(!*end.borrow());
        let mut body = replay.body_for_attempt();
        let _ = body.frame().await;
        assert!(!*end.borrow(), "one frame is not the end");
        let _ = read(body).await.expect("rest");
        assert!(*end.borrow());
        assert!(*Replay::new(crate::body::empty(), 16).request_end().borrow());
    }

    #[tokio::test]
    async fn bodiless_requests_are_replayable() {
        let replay = Replay::new(crate::body::empty(), 16);
        assert!(replay.is_replayable());
        assert!(replay.body_for_attempt().is_end_stream());
        assert!(replay.body_for_attempt().is_end_stream());
    }

    #[tokio::test]
    async fn buffered_size_is_exact_for_replays() {
        let replay = Replay::new(crate::body::full("hello"), 16);
        let _ = read(replay.body_for_attempt()).await.expect("first");
        let again = replay.body_for_attempt();
        assert_eq!(again.size_hint().exact(), Some(5));
    }
}
