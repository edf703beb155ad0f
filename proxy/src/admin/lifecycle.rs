//! Shutdown and drain requests (`/quitquitquit`, `/drain_listeners`, SIGTERM) as watch channels:
//! the admin server and the signal handler request, the app and the listener manager react.

use std::sync::Arc;

use tokio::sync::watch;

/// Which listeners a drain applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainScope {
    /// Every listener.
    All,
    /// Inbound listeners only (`/drain_listeners?inboundonly`).
    InboundOnly,
}

/// Shared lifecycle requests. Cloning shares the same channels.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    shutdown: Arc<watch::Sender<bool>>,
    drain: Arc<watch::Sender<Option<DrainScope>>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// No shutdown or drain requested yet.
    pub fn new() -> Self {
        Self {
            shutdown: Arc::new(watch::channel(false).0),
            drain: Arc::new(watch::channel(None).0),
        }
    }

    /// Asks the proxy to exit (after draining).
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Becomes `true` when shutdown is requested; `wait_for(|v| *v)` to await it.
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Whether shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Asks the listener manager to stop accepting and drain.
    pub fn request_drain(&self, scope: DrainScope) {
        self.drain.send_replace(Some(scope));
    }

    /// The requested drain, if any.
    pub fn drain(&self) -> watch::Receiver<Option<DrainScope>> {
        self.drain.subscribe()
    }
}
