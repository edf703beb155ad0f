//! The downstream connection idle timeout (`common_http_protocol_options.idle_timeout`, Envoy's
//! default one hour): a connection with no active request for that long is closed (HTTP/2 after
//! a GOAWAY). A request is active from when the HCM receives it until its response body ends or
//! is dropped, as an Envoy stream is, so a long download never counts as idle.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Counts a connection's active requests and remembers when the last one ended.
#[derive(Debug)]
pub struct ActiveStreams {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
    became_idle: Notify,
}

impl Default for ActiveStreams {
    fn default() -> Self {
        Self {
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            became_idle: Notify::new(),
        }
    }
}

/// One active request; dropping it ends the request.
#[derive(Debug)]
pub struct StreamGuard(std::sync::Arc<ActiveStreams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self
                .0
                .idle_since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
            self.0.became_idle.notify_one();
        }
    }
}

impl ActiveStreams {
    /// Marks a request active until the guard is dropped.
    pub fn begin(self: &std::sync::Arc<Self>) -> StreamGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    /// How many requests are active.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Returns once no request has been active for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            if self.active() > 0 {
                // `notify_one` keeps a permit, so an end that races this wait is not lost.
                self.became_idle.notified().await;
                continue;
            }
            let deadline = *self
                .idle_since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                + timeout;
            if Instant::now() >= deadline {
                if self.active() == 0 {
                    return;
                }
                continue;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_after_its_last_request_ends() {
        let streams = Arc::new(ActiveStreams::default());
        let start = Instant::now();
        let guard = streams.begin();
        let waiter = {
            let streams = streams.clone();
            tokio::spawn(async move {
                streams.idle_for(Duration::from_secs(10)).await;
                Instant::now()
            })
        };
        // The request stays active for a minute: no idle timeout meanwhile.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished());
        drop(guard);
        let fired = waiter.await.unwrap();
        assert_eq!(fired - start, Duration::from_secs(70));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_request_restarts_the_idle_clock() {
        let streams = Arc::new(ActiveStreams::default());
        let start = Instant::now();
        let waiter = {
            let streams = streams.clone();
            tokio::spawn(async move {
                streams.idle_for(Duration::from_secs(10)).await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(streams.begin());
        let fired = waiter.await.unwrap();
        assert_eq!(fired - start, Duration::from_secs(15));
    }
}
