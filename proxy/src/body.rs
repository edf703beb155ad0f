//! The body type that flows through the proxy in both directions.
//!
//! Bodies are streamed frame by frame (data and trailers) and never collected whole unless a
//! feature needs it (retry replay, mirroring). One boxed type keeps the router free of generics:
//! downstream `Incoming`, upstream `Incoming` and locally generated responses all fit it.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

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
