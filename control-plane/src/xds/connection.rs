//! One ADS connection's life: the proxy it serves, the snapshot generated for it at the current
//! push epoch, nonces, and the ACK/NACK state the debug endpoint shows (like
//! `istioctl proxy-status`).
//!
//! The state-of-the-world and delta protocols differ in how they track subscriptions and what
//! they send; everything they share lives in [`Session`]. Each connection is driven by one task,
//! so its protocol state needs no lock; only the [`ConnectionStatus`] published for the debug
//! endpoint sits behind a mutex.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};
use tokio::time::Instant;
use tonic::Status;
use xds_proto::envoy::config::core::v3::Node;

use super::GenerateError;
use super::cache::{ResourceType, Snapshot};
use super::debounce::{Epoch, Epochs};
use super::server::Shared;
use super::sotw::Subscription;
use crate::model::proxy::ProxyNode;

/// Which flavour of ADS a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `StreamAggregatedResources`.
    StateOfTheWorld,
    /// `DeltaAggregatedResources`.
    Delta,
}

/// A NACK as the proxy sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// The nonce of the rejected response.
    pub nonce: String,
    /// The version the proxy still runs (SotW) or the rejected response's version (delta).
    pub version: String,
    /// Envoy's `error_detail.message`.
    pub error: String,
}

/// What one proxy has been sent, ACKed and NACKed for one type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// What the proxy subscribes to (listed as `["*", names...]`).
    pub subscribed: Subscription,
    /// The version of the last response sent.
    pub sent_version: String,
    /// The nonce of the last response sent, until the proxy answers it.
    pub pending_nonce: Option<String>,
    /// The last version the proxy ACKed.
    pub acked_version: Option<String>,
    /// The last NACK, kept until a later ACK.
    pub last_nack: Option<Nack>,
    /// Responses sent.
    pub pushes: u64,
}

/// One connected proxy, as the debug endpoint shows it.
#[derive(Debug, Clone)]
pub struct ConnectionStatus {
    /// `NODE_ID-N`, unique per connection.
    pub connection_id: String,
    /// The proxy.
    pub proxy: ProxyNode,
    /// SotW or delta.
    pub protocol: Protocol,
    /// The peer's address, when known.
    pub peer: Option<SocketAddr>,
    /// Per type.
    pub types: BTreeMap<ResourceType, TypeStatus>,
    /// The config generated for this proxy at the current epoch.
    pub snapshot: Option<Arc<Snapshot>>,
    /// The epoch that snapshot was generated from.
    pub epoch: u64,
    /// Why the last generation failed, if it did.
    pub generate_error: Option<String>,
}

impl ConnectionStatus {
    /// True when every type that was sent has been ACKed at its latest version.
    pub fn synced(&self) -> bool {
        self.types.values().all(|t| {
            t.pending_nonce.is_none() && t.acked_version.as_deref() == Some(&t.sent_version)
        })
    }

    /// The `/debug/syncz` view.
    pub fn to_json(&self) -> Value {
        let types: serde_json::Map<String, Value> = self
            .types
            .iter()
            .map(|(ty, t)| {
                let nack = t
                    .last_nack
                    .as_ref()
                    .map(|n| json!({"nonce": n.nonce, "version": n.version, "error": n.error}));
                let status = if t.last_nack.is_some() {
                    "NACKED"
                } else if t.pending_nonce.is_some() {
                    "STALE"
                } else {
                    "SYNCED"
                };
                let view = json!({
                    "status": status,
                    "subscribed": t.subscribed.describe(),
                    "sent_version": t.sent_version,
                    "pending_nonce": t.pending_nonce,
                    "acked_version": t.acked_version,
                    "last_nack": nack,
                    "pushes": t.pushes,
                });
                (ty.label().to_uppercase(), view)
            })
            .collect();
        json!({
            "connection_id": self.connection_id,
            "proxy": self.proxy.id,
            "namespace": self.proxy.namespace,
            "protocol": match self.protocol {
                Protocol::StateOfTheWorld => "sotw",
                Protocol::Delta => "delta",
            },
            "peer": self.peer.map(|p| p.to_string()),
            "epoch": self.epoch,
            "generate_error": self.generate_error,
            "types": types,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every live connection, shared with the debug endpoint.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    connections: Arc<Mutex<BTreeMap<u64, Arc<Mutex<ConnectionStatus>>>>>,
}

impl Registry {
    /// A copy of every connection's status, oldest first.
    pub fn list(&self) -> Vec<ConnectionStatus> {
        lock(&self.connections)
            .values()
            .map(|c| lock(c).clone())
            .collect()
    }

    /// The newest connection of the proxy with this node id (or connection id).
    pub fn find(&self, id: &str) -> Option<ConnectionStatus> {
        self.list()
            .into_iter()
            .rev()
            .find(|c| c.proxy.id == id || c.connection_id == id)
    }
}

/// Removes a connection from the registry when its stream ends, however it ends.
struct Registration {
    registry: Registry,
    key: u64,
    shared: Arc<Shared>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.registry.connections).remove(&self.key);
        self.shared.metrics.connected(-1);
        tracing::info!(connection = self.key, "proxy disconnected");
    }
}

/// The protocol-independent state of one connection.
pub(crate) struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) proxy: ProxyNode,
    status: Arc<Mutex<ConnectionStatus>>,
    _registration: Registration,
    epochs: Epochs,
    epochs_open: bool,
    epoch: Option<Arc<Epoch>>,
    /// The current snapshot; `None` until the sources' initial sync (streams are held).
    pub(crate) snapshot: Option<Arc<Snapshot>>,
    connection_id: String,
    nonces: u64,
    /// The epoch whose push latency is still to be observed.
    unconverged: Option<Instant>,
}

impl Session {
    /// Registers a connection from its first request's node.
    pub(crate) fn start(
        shared: Arc<Shared>,
        node: Option<&Node>,
        protocol: Protocol,
        peer: Option<SocketAddr>,
    ) -> Result<Session, Status> {
        let node = node.ok_or_else(|| {
            Status::invalid_argument(crate::model::proxy::InvalidNode::Missing.to_string())
        })?;
        let proxy = ProxyNode::try_from(node).map_err(|e| {
            tracing::warn!(node = %node.id, error = %e, "proxy refused");
            Status::invalid_argument(e.to_string())
        })?;
        let key = shared.next_connection_id();
        let connection_id = format!("{}-{key}", proxy.id);
        let status = Arc::new(Mutex::new(ConnectionStatus {
            connection_id: connection_id.clone(),
            proxy: proxy.clone(),
            protocol,
            peer,
            types: BTreeMap::new(),
            snapshot: None,
            epoch: 0,
            generate_error: None,
        }));
        let registry = shared.registry.clone();
        lock(&registry.connections).insert(key, status.clone());
        shared.metrics.connected(1);
        tracing::info!(connection = %connection_id, ?protocol, "proxy connected");
        let mut epochs = shared.epochs.clone();
        epochs.mark_changed();
        Ok(Session {
            _registration: Registration {
                registry,
                key,
                shared: shared.clone(),
            },
            shared,
            proxy,
            status,
            epochs,
            epochs_open: true,
            epoch: None,
            snapshot: None,
            connection_id,
            nonces: 0,
            unconverged: None,
        })
    }

    /// Waits for the next push epoch and regenerates this proxy's snapshot from it. Returns
    /// whether the snapshot changed. Never returns once the epoch channel has closed.
    pub(crate) async fn next_epoch(&mut self) -> bool {
        if !self.epochs_open || self.epochs.changed().await.is_err() {
            self.epochs_open = false;
            return std::future::pending().await;
        }
        let Some(epoch) = self.epochs.borrow_and_update().clone() else {
            return false;
        };
        // A translator bug must cost this proxy an update, not the connection (or the server).
        let generator = &self.shared.generator;
        let generated = std::panic::catch_unwind(AssertUnwindSafe(|| {
            generator.generate(&epoch.model, &self.proxy)
        }))
        .unwrap_or_else(|_| {
            Err(GenerateError {
                proxy: self.proxy.id.clone(),
                reason: "the generator panicked".into(),
            })
        })
        .map(|r| Arc::new(Snapshot::build(r, self.snapshot.as_deref())));
        let mut status = lock(&self.status);
        status.epoch = epoch.id;
        match generated {
            Ok(snapshot) => {
                status.generate_error = None;
                let changed = self.snapshot.as_ref() != Some(&snapshot);
                status.snapshot = Some(snapshot.clone());
                self.snapshot = Some(snapshot);
                if changed {
                    self.unconverged = Some(epoch.changed_at);
                }
                self.epoch = Some(epoch);
                changed
            }
            Err(e) => {
                tracing::error!(connection = %self.connection_id, error = %e, "config generation failed; proxy keeps its config");
                self.shared.metrics.generate_error();
                status.generate_error = Some(e.to_string());
                false
            }
        }
    }

    /// A fresh nonce, unique on this connection.
    pub(crate) fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        format!(
            "{}-{}",
            self.epoch.as_ref().map_or(0, |e| e.id),
            self.nonces
        )
    }

    /// Records a response about to be sent.
    pub(crate) fn sent(&mut self, ty: ResourceType, version: &str, nonce: &str) {
        self.shared.metrics.push(ty);
        if let Some(changed_at) = self.unconverged.take() {
            self.shared
                .metrics
                .convergence((Instant::now() - changed_at).as_secs_f64());
        }
        let mut status = lock(&self.status);
        let t = status.types.entry(ty).or_default();
        t.sent_version = version.to_owned();
        t.pending_nonce = Some(nonce.to_owned());
        t.pushes += 1;
        tracing::debug!(connection = %self.connection_id, kind = ty.label(), version, nonce, "pushed");
    }

    /// Records the subscription, for the debug view.
    pub(crate) fn subscribed(&self, ty: ResourceType, subscription: Subscription) {
        lock(&self.status).types.entry(ty).or_default().subscribed = subscription;
    }

    /// Records an ACK of the response with `nonce`.
    pub(crate) fn ack(&self, ty: ResourceType, version: &str) {
        let mut status = lock(&self.status);
        let t = status.types.entry(ty).or_default();
        t.pending_nonce = None;
        t.acked_version = Some(version.to_owned());
        t.last_nack = None;
        tracing::debug!(connection = %self.connection_id, kind = ty.label(), version, "ACK");
    }

    /// Records a NACK: the proxy refused the response with `nonce`.
    pub(crate) fn nack(&self, ty: ResourceType, nack: Nack) {
        self.shared.metrics.reject(ty);
        tracing::warn!(connection = %self.connection_id, kind = ty.label(), nonce = %nack.nonce, error = %nack.error, "NACK");
        let mut status = lock(&self.status);
        let t = status.types.entry(ty).or_default();
        t.pending_nonce = None;
        t.last_nack = Some(nack);
    }

    /// The connection's id, for logs.
    pub(crate) fn id(&self) -> &str {
        &self.connection_id
    }
}
