//! What a state-of-the-world and a delta ADS stream share, so that [`super::sotw`] and
//! [`super::delta`] keep only what their protocol defines: how a subscription is written and how
//! a response is validated, ACKed and NACKed.
//!
//! Shared here: which types are subscribed, when the node goes out, the outgoing request
//! channel, applying an accepted response to the [`Tracker`] with its stats and log line,
//! counting and logging a rejected one, promoting what timed out warming, and opening and
//! running the stream.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use xds_proto::envoy::config::core::v3::Node;

use super::client::{StreamError, count_update, wait_deadline};
use super::config::AdsConfig;
use super::resources::{InvalidResource, Kind};
use super::state::State;
use super::tracker::Tracker;

/// One stream's shared bookkeeping; `R` is the protocol's request type.
pub(crate) struct Stream<'a, R> {
    pub(crate) config: &'a AdsConfig,
    pub(crate) tracker: &'a Arc<Tracker>,
    tx: UnboundedSender<R>,
    node_sent: bool,
}

impl<'a, R> Stream<'a, R> {
    pub(crate) fn new(
        config: &'a AdsConfig,
        tracker: &'a Arc<Tracker>,
        tx: UnboundedSender<R>,
    ) -> Self {
        Self {
            config,
            tracker,
            tx,
            node_sent: false,
        }
    }

    /// Whether the proxy subscribes to `kind`: LDS and CDS as the bootstrap says; RDS and EDS
    /// follow whatever references them, static resources included.
    pub(crate) fn subscribed(&self, kind: Kind) -> bool {
        match kind {
            Kind::Listener => self.config.lds,
            Kind::Cluster => self.config.cds,
            Kind::Route | Kind::Endpoint => true,
        }
    }

    /// The node for the next request: on the first one, and on every one unless the bootstrap
    /// sets `node_on_first_message_only`.
    pub(crate) fn node(&mut self) -> Option<Node> {
        let node = (!self.node_sent || !self.config.node_on_first_message_only)
            .then(|| self.config.node.clone());
        self.node_sent = true;
        node
    }

    /// Queues a request on the stream.
    pub(crate) fn send(&self, request: R) -> Result<(), StreamError> {
        self.tx.send(request).map_err(|_| StreamError::Closed)
    }

    /// Applies an accepted response of `kind` (whose resources are `names`) and counts it.
    pub(crate) fn accept(
        &self,
        kind: Kind,
        names: &[String],
        apply: impl FnOnce(&mut State, Instant),
    ) {
        self.tracker.update(apply);
        count_update(self.tracker.stats(), kind, names, true);
    }

    /// Counts and logs a rejected response of `kind`; `about` names it (version or nonce).
    pub(crate) fn reject(
        &self,
        kind: Kind,
        names: &[String],
        about: &str,
        error: &InvalidResource,
    ) {
        count_update(self.tracker.stats(), kind, names, false);
        tracing::warn!(kind = kind.short_name(), about, %error, "NACK");
    }
}

/// The error detail for a response of a type Ferry does not know.
pub(crate) fn unsupported_type(type_url: &str) -> String {
    tracing::warn!(type_url, "NACK: unsupported type");
    InvalidResource::UnsupportedType {
        type_url: type_url.to_owned(),
    }
    .to_string()
}

/// A protocol's session: what the receive loop drives.
pub(crate) trait Session {
    /// The protocol's response type.
    type Response;
    /// Subscribes on a fresh stream.
    fn start(&mut self) -> Result<(), StreamError>;
    /// Follows the RDS/EDS names the accepted config references.
    fn sync_subscriptions(&mut self) -> Result<(), StreamError>;
    /// Handles one response (ACK or NACK it).
    fn on_response(&mut self, response: Self::Response) -> Result<(), StreamError>;
    /// The tracker the session applies to.
    fn tracker(&self) -> &Arc<Tracker>;
    /// Activates what timed out warming and follows the subscriptions that changed.
    fn on_deadline(&mut self) -> Result<(), StreamError> {
        self.tracker().update(|state, now| state.promote(now));
        self.sync_subscriptions()
    }
}

/// Responses at least this large (encoded) are followed by returning the freed heap to the OS:
/// decoding and validating one allocates several times its size, and glibc would keep those
/// pages resident for a config that may never grow that much again.
const TRIM_AFTER_BYTES: usize = 64 * 1024;

/// The generated ADS client.
pub(crate) type AdsClient = xds_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient<tonic::transport::Channel>;

/// Runs one stream until it fails: `make` builds the session on the request channel (its first
/// requests are queued before the call opens), `open` makes the protocol's ADS call.
pub(crate) async fn run<'a, R, S, Open, Opened>(
    channel: tonic::transport::Channel,
    config: &'a AdsConfig,
    tracker: &'a Arc<Tracker>,
    received: &mut bool,
    make: impl FnOnce(Stream<'a, R>) -> S,
    open: Open,
) -> Result<(), StreamError>
where
    S: Session,
    S::Response: prost::Message,
    Open: FnOnce(AdsClient, UnboundedReceiverStream<R>) -> Opened,
    Opened: Future<Output = Result<tonic::Response<tonic::Streaming<S::Response>>, tonic::Status>>,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut session = make(Stream::new(config, tracker, tx));
    session.start()?;
    let client = AdsClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut inbound = open(client, UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    tracker.set_connected(true);
    tracing::info!(target = %config.target, api = ?config.api_type, "ADS stream open");
    loop {
        let deadline = tracker.with_state(|s| s.next_deadline());
        tokio::select! {
            message = inbound.message() => {
                let response = message?.ok_or(StreamError::Closed)?;
                *received = true;
                let size = prost::Message::encoded_len(&response);
                session.on_response(response)?;
                if size >= TRIM_AFTER_BYTES {
                    // The decoded response and its transient copies are freed by now.
                    crate::memory::release_free_heap();
                }
            }
            () = wait_deadline(deadline) => session.on_deadline()?,
        }
    }
}
