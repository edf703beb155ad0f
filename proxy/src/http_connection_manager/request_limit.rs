//! The downstream `common_http_protocol_options.max_requests_per_connection`: after that many
//! requests the connection drains as a retired one does (see [`super::drain`]): the last
//! HTTP/1.1 response carries `Connection: close`, HTTP/2 gets a GOAWAY, so the client moves to a
//! new connection without a failed request.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Notify;

/// Counts a connection's requests against its maximum.
#[derive(Debug)]
pub struct RequestLimit {
    max: u32,
    seen: AtomicU32,
    reached: Notify,
}

impl RequestLimit {
    /// A limit of `max` requests (at least 1).
    pub fn new(max: u32) -> Self {
        Self {
            max: max.max(1),
            seen: AtomicU32::new(0),
            reached: Notify::new(),
        }
    }

    /// Counts a request; true (once) when it is the last the connection may serve, and then
    /// wakes [`Self::reached`].
    pub fn count(&self) -> bool {
        let last = self.seen.fetch_add(1, Ordering::AcqRel).saturating_add(1) == self.max;
        if last {
            self.reached.notify_one();
        }
        last
    }

    /// Returns once the last request arrived.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_request_is_reported_once() {
        let limit = RequestLimit::new(2);
        assert!(!limit.count());
        assert!(limit.count());
        assert!(!limit.count());
        // The permit waits for the serve loop.
        limit.reached().await;
    }
}
