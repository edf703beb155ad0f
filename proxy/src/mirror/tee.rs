//! The request-body tee behind mirroring: the downstream body streams to the primary upstream
//! unchanged while its data is copied aside, up to a limit; when the body ends, the copy is
//! handed to a callback that sends the shadows. The primary never waits on the copy.
//!
//! A body larger than the limit is not mirrored (the callback hears [`Teed::TooLarge`]), nor is
//! one that fails or that the primary stops reading before its end (an upstream that answers
//! early): the callback then never runs, since there is no complete body to copy.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame, SizeHint};

use crate::body::{Body, BoxError};

/// What the tee saw once the body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Teed {
    /// The whole body.
    Complete(Bytes),
    /// The body passed the limit; nothing was kept.
    TooLarge,
}

type OnEnd = Box<dyn FnOnce(Teed) + Send + Sync>;

/// A body that copies its data frames aside (see the module doc).
pub struct Tee {
    inner: Body,
    copy: Option<(BytesMut, u64, OnEnd)>,
}

impl Tee {
    /// Wraps `inner`; `on_end` runs once, when the body has ended or passed `limit` bytes.
    pub fn new(inner: Body, limit: u64, on_end: impl FnOnce(Teed) + Send + Sync + 'static) -> Self {
        let mut tee = Self {
            inner,
            copy: Some((BytesMut::new(), limit, Box::new(on_end))),
        };
        if tee.inner.is_end_stream() {
            tee.finish();
        }
        tee
    }

    fn finish(&mut self) {
        if let Some((buf, _, on_end)) = self.copy.take() {
            on_end(Teed::Complete(buf.freeze()));
        }
    }

    fn keep(&mut self, data: &Bytes) {
        let Some((buf, limit, _)) = &mut self.copy else {
            return;
        };
        if (buf.len() + data.len()) as u64 > *limit {
            if let Some((_, _, on_end)) = self.copy.take() {
                on_end(Teed::TooLarge);
            }
        } else {
            buf.extend_from_slice(data);
        }
    }
}

impl http_body::Body for Tee {
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
                    this.keep(data);
                }
                // Readers stop at `is_end_stream`, so the last frame may be the end.
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                tracing::debug!("mirror: request body failed, not mirrored");
                this.copy = None;
            }
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
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn chunks(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        crate::body::boxed(StreamBody::new(futures::stream::iter(frames)))
    }

    fn recorder() -> (
        Arc<Mutex<Vec<Teed>>>,
        impl FnOnce(Teed) + Send + Sync + 'static,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (seen, move |t| s.lock().unwrap().push(t))
    }

    #[tokio::test]
    async fn the_primary_gets_the_body_and_the_copy_is_whole() {
        let (seen, on_end) = recorder();
        let tee = Tee::new(chunks(&["hello ", "mirror"]), 1024, on_end);
        let primary = tee.collect().await.unwrap().to_bytes();
        assert_eq!(&primary[..], b"hello mirror");
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Teed::Complete(Bytes::from_static(b"hello mirror"))]
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_copied_but_still_streams() {
        let (seen, on_end) = recorder();
        let tee = Tee::new(chunks(&["12345", "67890", "x"]), 8, on_end);
        let primary = tee.collect().await.unwrap().to_bytes();
        assert_eq!(&primary[..], b"1234567890x");
        assert_eq!(*seen.lock().unwrap(), vec![Teed::TooLarge]);
    }

    #[tokio::test]
    async fn a_full_body_ends_with_its_only_frame() {
        let (seen, on_end) = recorder();
        let mut tee = Tee::new(crate::body::full("abc"), 1024, on_end);
        let frame = tee.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Teed::Complete(Bytes::from_static(b"abc"))]
        );
    }

    #[test]
    fn an_empty_body_is_complete_at_once() {
        let (seen, on_end) = recorder();
        let _tee = Tee::new(crate::body::empty(), 1024, on_end);
        assert_eq!(*seen.lock().unwrap(), vec![Teed::Complete(Bytes::new())]);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_not_mirrored() {
        let (seen, on_end) = recorder();
        let mut tee = Tee::new(chunks(&["a", "b"]), 1024, on_end);
        let _ = tee.frame().await;
        drop(tee);
        assert!(seen.lock().unwrap().is_empty());
    }
}
