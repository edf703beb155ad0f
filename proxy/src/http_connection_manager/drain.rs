//! How a downstream connection drains, as Envoy's HTTP connection manager does it.
//!
//! On shutdown (SIGTERM, `/drain_listeners`) the connection shuts down gracefully at once. When
//! the listener that serves it is updated or removed, the connection is *retired*: it keeps its
//! old config for what is already in flight, but clients are moved to a new connection (which
//! gets the new listener) without failing a request. HTTP/2 gets a GOAWAY right away (hyper's
//! two-step GOAWAY lets streams the client already sent finish); HTTP/1.1 answers the next
//! response with `Connection: close` and closes after it, because closing an idle HTTP/1.1
//! connection under a client would race the client's next request. An idle HTTP/1.1 connection
//! that sends nothing more is closed after the HCM's `drain_timeout` ([`DRAIN_TIMEOUT`] by
//! default, as in Envoy).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, Version, header};
use tokio::sync::{Notify, watch};

use crate::body::Body;

/// Envoy's default HCM `drain_timeout`: how long a retired HTTP/1.1 connection may stay idle
/// before it is closed.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What asks one connection to finish.
#[derive(Debug, Clone)]
pub struct DrainSignals {
    /// Turns true when the whole proxy drains (or the connection's listener socket closes).
    pub shutdown: watch::Receiver<bool>,
    /// Turns true (or its sender goes away) when the listener serving the connection was
    /// updated or removed.
    pub retired: watch::Receiver<bool>,
}

/// A connection's drain state, shared by its request service and its serve loop.
#[derive(Debug, Default)]
pub struct ConnectionDrain {
    draining: AtomicBool,
    http2: AtomicBool,
    /// Wakes the serve loop when an HTTP/2 request shows up on a draining connection.
    http2_while_draining: Notify,
}

impl ConnectionDrain {
    /// Notes the protocol of a request the connection received.
    pub fn saw(&self, version: Version) {
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Release);
            if self.is_draining() {
                self.http2_while_draining.notify_one();
            }
        }
    }

    /// Whether the connection has spoken HTTP/2.
    pub fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Acquire)
    }

    /// Whether the connection is retired.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Retires the connection.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Waits until an HTTP/2 request arrived on the retired connection.
    pub async fn http2_seen_while_draining(&self) {
        self.http2_while_draining.notified().await;
    }

    /// On a retired HTTP/1.x connection the response closes it (not a `101`, which hands the
    /// connection over to the upgraded protocol).
    pub fn finish_response(&self, version: Version, response: &mut Response<Body>) {
        if self.is_draining()
            && matches!(version, Version::HTTP_10 | Version::HTTP_11)
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_retired_http1_responses_close_the_connection() {
        let drain = ConnectionDrain::default();
        let mut response = Response::new(crate::body::empty());
        drain.finish_response(Version::HTTP_11, &mut response);
        assert!(response.headers().get(header::CONNECTION).is_none());
        drain.start_draining();
        drain.finish_response(Version::HTTP_2, &mut response);
        assert!(response.headers().get(header::CONNECTION).is_none());
        drain.finish_response(Version::HTTP_11, &mut response);
        assert_eq!(response.headers()[header::CONNECTION], "close");
        let mut upgraded = Response::new(crate::body::empty());
        *upgraded.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        drain.finish_response(Version::HTTP_11, &mut upgraded);
        assert!(upgraded.headers().get(header::CONNECTION).is_none());
    }

    #[tokio::test]
    async fn an_http2_request_on_a_retired_connection_wakes_the_serve_loop() {
        let drain = ConnectionDrain::default();
        drain.saw(Version::HTTP_11);
        assert!(!drain.is_http2());
        drain.start_draining();
        drain.saw(Version::HTTP_2);
        assert!(drain.is_http2());
        // The permit is kept until the loop waits.
        drain.http2_seen_while_draining().await;
    }
}
