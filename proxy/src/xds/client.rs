//! The ADS connection loop: connect, run one stream (SotW or delta), and when it ends reconnect
//! after a jittered exponential backoff, resuming the subscriptions. Whatever was accepted keeps
//! serving while the control plane is away.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use xds_proto::google::rpc::Status;

use super::backoff::Backoff;
use super::config::{AdsConfig, ApiType};
use super::resources::Kind;
use super::tracker::Tracker;
use crate::stats::Store;

/// Why an ADS stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The endpoint URI is not usable.
    #[error("invalid control plane address {target}: {reason}")]
    Target {
        /// The configured target.
        target: String,
        /// The parser's reason.
        reason: String,
    },
    /// The connection could not be made.
    #[error("cannot connect to the control plane: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The server ended the stream with a status.
    #[error("control plane stream failed: {0}")]
    Status(#[from] tonic::Status),
    /// The stream ended without a status.
    #[error("control plane closed the stream")]
    Closed,
}

/// `google.rpc.Status` with code 3 (INVALID_ARGUMENT), the NACK's `error_detail`.
pub(crate) fn invalid_argument(message: String) -> Status {
    Status {
        code: 3,
        message,
        details: Vec::new(),
    }
}

/// Counts an accepted or rejected update the way Envoy names it.
pub(crate) fn count_update(stats: &Store, kind: Kind, names: &[String], success: bool) {
    let outcome = if success {
        "update_success"
    } else {
        "update_rejected"
    };
    match kind {
        Kind::Listener => stats
            .counter(format!("listener_manager.lds.{outcome}"))
            .inc(),
        Kind::Cluster => stats
            .counter(format!("cluster_manager.cds.{outcome}"))
            .inc(),
        Kind::Route => {
            for name in names {
                stats.counter(format!("rds.{name}.{outcome}")).inc();
            }
        }
        Kind::Endpoint => {
            // The cluster runtime counts `cluster.NAME.update_success` when the host set
            // changes; EDS adds the attempts and the rejections.
            for name in names {
                stats
                    .counter(format!("cluster.{name}.update_attempt"))
                    .inc();
                if !success {
                    stats
                        .counter(format!("cluster.{name}.update_rejected"))
                        .inc();
                }
            }
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn wait_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The ADS client.
#[derive(Debug)]
pub struct Client;

impl Client {
    /// Starts the client on the current tokio runtime. It runs until the handle is aborted.
    pub fn spawn(config: AdsConfig, tracker: Arc<Tracker>) -> JoinHandle<()> {
        Self::spawn_with_backoff(config, tracker, Backoff::default())
    }

    /// Like [`Client::spawn`] with a custom reconnect backoff.
    pub fn spawn_with_backoff(
        config: AdsConfig,
        tracker: Arc<Tracker>,
        backoff: Backoff,
    ) -> JoinHandle<()> {
        use tracing::Instrument;
        let span = tracing::info_span!("ads", target = %config.target, api = ?config.api_type);
        tokio::spawn(run(config, tracker, backoff).instrument(span))
    }
}

async fn connect(config: &AdsConfig) -> Result<tonic::transport::Channel, StreamError> {
    let endpoint = tonic::transport::Endpoint::from_shared(config.target.clone()).map_err(|e| {
        StreamError::Target {
            target: config.target.clone(),
            reason: e.to_string(),
        }
    })?;
    // Keepalive probes notice a control plane that vanished without closing the connection.
    let endpoint = endpoint
        .tcp_keepalive(Some(std::time::Duration::from_secs(300)))
        .tcp_nodelay(true);
    Ok(endpoint.connect().await?)
}

async fn stream_once(
    config: &AdsConfig,
    tracker: &Arc<Tracker>,
    received: &mut bool,
) -> Result<(), StreamError> {
    let channel = connect(config).await?;
    match config.api_type {
        ApiType::Sotw => {
            use super::sotw::{Session, open};
            super::session::run(channel, config, tracker, received, Session::new, open).await
        }
        ApiType::Delta => {
            use super::delta::{Session, open};
            super::session::run(channel, config, tracker, received, Session::new, open).await
        }
    }
}

async fn run(config: AdsConfig, tracker: Arc<Tracker>, mut backoff: Backoff) {
    loop {
        let mut received = false;
        let result = stream_once(&config, &tracker, &mut received).await;
        tracker.set_connected(false);
        if received {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        match result {
            Ok(()) => tracing::warn!(
                delay_ms = delay.as_millis(),
                "ADS stream ended, reconnecting"
            ),
            Err(error) => tracing::warn!(
                %error,
                target = %config.target,
                delay_ms = delay.as_millis(),
                "ADS stream failed, reconnecting"
            ),
        }
        // Warming timeouts still run while the control plane is away.
        let wake = Instant::now() + delay;
        loop {
            let deadline = tracker
                .with_state(|s| s.next_deadline())
                .filter(|d| *d < wake);
            match deadline {
                Some(deadline) => {
                    tokio::time::sleep_until(deadline).await;
                    tracker.update(|state, now| state.promote(now));
                }
                None => {
                    tokio::time::sleep_until(wake).await;
                    break;
                }
            }
        }
    }
}
