//! The ADS client: subscribes to LDS and CDS, then to the RDS and EDS names they reference, over
//! one gRPC stream (state-of-the-world or delta, as the bootstrap's `api_type` says); validates
//! every resource before ACKing it and hands the accepted set to the [`crate::snapshot::ConfigStore`].
//!
//! [`Tracker`] holds what was accepted (raw for `/config_dump`, validated for the data path) and
//! applies Envoy's warming rules; [`Client`] runs the stream and reconnects with [`Backoff`].

mod backoff;
mod client;
mod config;
mod delta;
pub mod resources;
mod session;
mod sotw;
pub mod state;
mod tracker;

use std::sync::Arc;

use tokio::task::JoinHandle;
use xds_proto::envoy::config::bootstrap::v3::Bootstrap;

pub use backoff::Backoff;
pub use client::{Client, StreamError};
pub use config::{AdsConfig, ApiType, InvalidAdsConfig};
pub use resources::{InvalidResource, Kind};
pub use tracker::{InvalidBootstrap, ServerState, Tracker};

use crate::snapshot::ConfigStore;
use crate::stats::Store;

/// Validates the bootstrap, publishes its static resources to `store`, and starts the ADS
/// client when the bootstrap has dynamic resources. Must run inside a tokio runtime.
pub fn start(
    bootstrap: Arc<Bootstrap>,
    store: Arc<ConfigStore>,
    stats: Arc<Store>,
) -> Result<(Arc<Tracker>, Option<JoinHandle<()>>), InvalidBootstrap> {
    let tracker = Tracker::new(bootstrap, store, stats)?;
    let client = tracker
        .ads_config()
        .cloned()
        .map(|config| Client::spawn(config, Arc::clone(&tracker)));
    Ok((tracker, client))
}

#[cfg(test)]
mod state_tests;
