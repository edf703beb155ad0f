//! The xDS side's shared state: the accepted config ([`State`]) behind one lock, published to the
//! [`ConfigStore`] whenever what is active changes, and the server's lifecycle state that
//! `/ready` reports. The ADS client writes it; the admin server reads it.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::time::Instant;
use xds_proto::any::pack;
use xds_proto::envoy::config::bootstrap::v3::Bootstrap;

use super::config::{AdsConfig, InvalidAdsConfig};
use super::resources::{InvalidResource, Kind, validate};
use super::state::State;
use crate::snapshot::ConfigStore;
use crate::stats::{Gauge, Store};

/// Envoy's server states, as `/ready` prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Before the static config has been applied.
    PreInitializing,
    /// Waiting for the first complete config from the control plane.
    Initializing,
    /// Serving; `/ready` answers 200.
    Live,
    /// Shutting down.
    Draining,
}

impl ServerState {
    /// Envoy's `server.state` gauge value (pilot-agent's readiness check reads it).
    pub fn gauge_value(self) -> i64 {
        match self {
            Self::Live => 0,
            Self::Draining => 1,
            Self::PreInitializing => 2,
            Self::Initializing => 3,
        }
    }

    /// The upper-case name Envoy prints (`LIVE`, `INITIALIZING`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreInitializing => "PRE_INITIALIZING",
            Self::Initializing => "INITIALIZING",
            Self::Live => "LIVE",
            Self::Draining => "DRAINING",
        }
    }
}

/// A bootstrap the xDS side cannot start from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBootstrap {
    /// The ADS settings.
    #[error(transparent)]
    Ads(#[from] InvalidAdsConfig),
    /// A static resource failed the same validation a dynamic one gets.
    #[error("static_resources: {0}")]
    Static(#[from] InvalidResource),
}

struct Inner {
    state: State,
    published: u64,
}

/// The accepted config and lifecycle, shared by the ADS client and the admin server.
pub struct Tracker {
    bootstrap: Arc<Bootstrap>,
    ads: Option<AdsConfig>,
    inner: Mutex<Inner>,
    store: Arc<ConfigStore>,
    stats: Arc<Store>,
    server_state: watch::Sender<ServerState>,
    connected: Arc<Gauge>,
    state_gauge: Arc<Gauge>,
    workers_started: Arc<Gauge>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("ads", &self.ads)
            .field("server_state", &*self.server_state.borrow())
            .finish_non_exhaustive()
    }
}

impl Tracker {
    /// Validates the bootstrap's static resources and ADS settings, publishes the static
    /// config, and starts `Initializing` (or `Live` when there is nothing to fetch).
    pub fn new(
        bootstrap: Arc<Bootstrap>,
        store: Arc<ConfigStore>,
        stats: Arc<Store>,
    ) -> Result<Arc<Self>, InvalidBootstrap> {
        let ads = AdsConfig::from_bootstrap(&bootstrap)?;
        let now = Instant::now();
        let mut state = match &ads {
            Some(ads) => State::new(ads.lds, ads.cds, ads.init_timeout.map(|t| now + t)),
            None => State::new(false, false, None),
        };
        if let Some(statics) = &bootstrap.static_resources {
            for (index, cluster) in statics.clusters.iter().enumerate() {
                state.add_static(validate(Kind::Cluster, index, &pack(cluster))?, now);
            }
            for (index, listener) in statics.listeners.iter().enumerate() {
                state.add_static(validate(Kind::Listener, index, &pack(listener))?, now);
            }
        }
        let connected = stats.gauge("control_plane.connected_state");
        let state_gauge = stats.gauge("server.state");
        let workers_started = stats.gauge("listener_manager.workers_started");
        let (server_state, _) = watch::channel(ServerState::PreInitializing);
        let tracker = Arc::new(Self {
            bootstrap,
            ads,
            inner: Mutex::new(Inner {
                state,
                published: u64::MAX,
            }),
            store,
            stats,
            server_state,
            connected,
            state_gauge,
            workers_started,
        });
        tracker.set_state(ServerState::Initializing);
        tracker.update(|_, _| ());
        Ok(tracker)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bootstrap the proxy started from.
    pub fn bootstrap(&self) -> &Bootstrap {
        &self.bootstrap
    }

    /// The ADS settings, `None` when the bootstrap has no dynamic resources.
    pub fn ads_config(&self) -> Option<&AdsConfig> {
        self.ads.as_ref()
    }

    /// The stats store xDS counters go to.
    pub fn stats(&self) -> &Arc<Store> {
        &self.stats
    }

    /// The config store this tracker publishes to.
    pub fn store(&self) -> &Arc<ConfigStore> {
        &self.store
    }

    /// Reads the accepted config.
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock().state)
    }

    /// Changes the accepted config, then activates what has warmed, publishes the active set if
    /// it changed, and turns `Live` after the first complete config.
    pub fn update<R>(&self, f: impl FnOnce(&mut State, Instant) -> R) -> R {
        let now = Instant::now();
        let mut inner = self.lock();
        let out = f(&mut inner.state, now);
        inner.state.promote(now);
        inner.state.forget_unreferenced();
        let revision = inner.state.revision();
        if revision != inner.published {
            inner.published = revision;
            let resources = inner.state.resources();
            tracing::debug!(
                listeners = resources.listeners.len(),
                routes = resources.routes.len(),
                clusters = resources.clusters.len(),
                load_assignments = resources.load_assignments.len(),
                "config published"
            );
            self.store.apply(resources);
        }
        if *self.server_state.borrow() == ServerState::Initializing && inner.state.initialized(now)
        {
            tracing::info!("initial config complete, live");
            self.set_state(ServerState::Live);
            self.workers_started.set(1);
        }
        out
    }

    /// The server state `/ready` reports.
    pub fn server_state(&self) -> ServerState {
        *self.server_state.borrow()
    }

    /// Watches the server state (e.g. to wait for `Live`).
    pub fn watch_state(&self) -> watch::Receiver<ServerState> {
        self.server_state.subscribe()
    }

    /// Marks the server as shutting down (`/ready` turns 503).
    pub fn set_draining(&self) {
        self.set_state(ServerState::Draining);
    }

    fn set_state(&self, state: ServerState) {
        self.state_gauge.set(state.gauge_value());
        self.server_state.send_replace(state);
    }

    /// Records whether the ADS stream is up (`control_plane.connected_state`).
    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }
}
