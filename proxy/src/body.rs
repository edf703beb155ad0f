//! The body type that flows through the proxy in both directions.
//!
//! Bodies are streamed frame by frame (data and trailers) and never collected whole unless a
//! feature needs it (retry replay, mirroring). One boxed type keeps the router free of generics:
//! downstream `Incoming`, upstream `Incoming` and locally generated responses all fit it.

use bytes::Bytes;
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
/// a request's or response's header block at this size (Envoy's default limit is 60 KiB).
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
