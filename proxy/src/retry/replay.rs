//! Request bodies kept for replay: a retry must resend the same body, so the router buffers a
//! request whose body is small enough before the first attempt. A larger (or unknown-length)
//! body is streamed once and the request is not retried, as Envoy does when a body overflows
//! its buffer limit.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http_body::Body as _;
use http_body_util::BodyExt;

use crate::body::{self, Body, BoxError};

/// Ferry's replay buffer limit per request (64 KiB): enough for typical RPC and JSON bodies,
/// small enough that a sidecar under load does not hold much memory per request.
pub const DEFAULT_LIMIT: usize = 64 * 1024;

/// A request body ready for one or many attempts.
#[derive(Debug)]
pub enum Replay {
    /// The whole body, cloneable for every attempt (empty for bodiless requests).
    Buffered(Bytes),
    /// Too large or of unknown length: sent once, never retried.
    Once(Body),
}

impl Replay {
    /// Buffers `body` when `headers` announce a length of at most `limit` (or no body at all);
    /// otherwise keeps it streaming. Chunked bodies stream: their length is unknown up front.
    pub async fn prepare(headers: &HeaderMap, body: Body, limit: usize) -> Result<Self, BoxError> {
        let chunked = headers.contains_key(TRANSFER_ENCODING);
        let length = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match (chunked, length) {
            (false, None) if body.is_end_stream() => Ok(Self::Buffered(Bytes::new())),
            (false, Some(n)) if n <= limit as u64 => {
                let bytes = body.collect().await?.to_bytes();
                Ok(Self::Buffered(bytes))
            }
            _ => Ok(Self::Once(body)),
        }
    }

    /// Whether the body can be sent more than once (retries allowed).
    pub fn is_replayable(&self) -> bool {
        matches!(self, Self::Buffered(_))
    }

    /// The body for the next attempt: a copy when buffered, the stream itself (once) otherwise.
    pub fn body_for_attempt(&mut self) -> Body {
        match self {
            Self::Buffered(bytes) => body::full(bytes.clone()),
            Self::Once(stream) => std::mem::replace(stream, body::empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    async fn read(body: Body) -> Bytes {
        body.collect().await.expect("body").to_bytes()
    }

    #[tokio::test]
    async fn small_bodies_are_buffered_and_replayed() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        let mut r = Replay::prepare(&h, body::full("hello"), 16)
            .await
            .expect("ok");
        assert!(r.is_replayable());
        assert_eq!(read(r.body_for_attempt()).await, "hello");
        assert_eq!(read(r.body_for_attempt()).await, "hello");
    }

    #[tokio::test]
    async fn bodiless_requests_are_replayable() {
        let r = Replay::prepare(&HeaderMap::new(), body::empty(), 16)
            .await
            .expect("ok");
        assert!(r.is_replayable());
    }

    #[tokio::test]
    async fn large_or_chunked_bodies_stream_once() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        let mut r = Replay::prepare(&h, body::full("hello"), 4)
            .await
            .expect("ok");
        assert!(!r.is_replayable());
        assert_eq!(read(r.body_for_attempt()).await, "hello");
        assert_eq!(read(r.body_for_attempt()).await, "");
        let mut h = HeaderMap::new();
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let r = Replay::prepare(&h, body::full("hello"), 1024)
            .await
            .expect("ok");
        assert!(!r.is_replayable());
    }
}
