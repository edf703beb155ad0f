//! State-of-the-world ADS (`StreamAggregatedResources`): one request per type carries the
//! subscribed names, the last ACKed `version_info` and the nonce it answers. An ACK echoes the
//! response's version and nonce; a NACK keeps the previous version and adds `error_detail`.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use xds_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::client::{StreamError, count_update, invalid_argument, wait_deadline};
use super::config::AdsConfig;
use super::resources::{InvalidResource, Kind, validate_all};
use super::tracker::Tracker;

#[derive(Debug, Default)]
struct TypeState {
    names: BTreeSet<String>,
    nonce: String,
    requested: bool,
}

/// One SotW stream's bookkeeping.
pub(crate) struct Session<'a> {
    config: &'a AdsConfig,
    tracker: &'a Arc<Tracker>,
    tx: UnboundedSender<DiscoveryRequest>,
    node_sent: bool,
    types: [TypeState; 4],
}

impl<'a> Session<'a> {
    pub(crate) fn new(
        config: &'a AdsConfig,
        tracker: &'a Arc<Tracker>,
        tx: UnboundedSender<DiscoveryRequest>,
    ) -> Self {
        Self {
            config,
            tracker,
            tx,
            node_sent: false,
            types: Default::default(),
        }
    }

    fn subscribed(&self, kind: Kind) -> bool {
        // RDS and EDS follow whatever references them, static resources included.
        match kind {
            Kind::Listener => self.config.lds,
            Kind::Cluster => self.config.cds,
            Kind::Route | Kind::Endpoint => true,
        }
    }

    fn send(
        &mut self,
        type_url: &str,
        version: String,
        names: Vec<String>,
        nonce: String,
        error: Option<String>,
    ) -> Result<(), StreamError> {
        let node = (!self.node_sent || !self.config.node_on_first_message_only)
            .then(|| self.config.node.clone());
        self.node_sent = true;
        let request = DiscoveryRequest {
            version_info: version,
            node,
            resource_names: names,
            type_url: type_url.to_owned(),
            response_nonce: nonce,
            error_detail: error.map(invalid_argument),
            ..Default::default()
        };
        self.tx.send(request).map_err(|_| StreamError::Closed)
    }

    fn request(&mut self, kind: Kind, error: Option<String>) -> Result<(), StreamError> {
        let version = self.tracker.with_state(|s| s.version(kind).to_owned());
        let state = &mut self.types[kind.index()];
        state.requested = true;
        let names = state.names.iter().cloned().collect();
        let nonce = state.nonce.clone();
        self.send(kind.type_url(), version, names, nonce, error)
    }

    /// Subscribes on a fresh stream: CDS and LDS by wildcard, then the names already known
    /// (a reconnect resumes its subscriptions with the versions it holds).
    pub(crate) fn start(&mut self) -> Result<(), StreamError> {
        for kind in [Kind::Cluster, Kind::Listener] {
            if self.subscribed(kind) {
                self.request(kind, None)?;
            }
        }
        self.sync_subscriptions()
    }

    /// Sends a request for RDS/EDS whenever the referenced names changed.
    pub(crate) fn sync_subscriptions(&mut self) -> Result<(), StreamError> {
        for kind in [Kind::Endpoint, Kind::Route] {
            if !self.subscribed(kind) {
                continue;
            }
            let wanted = self.tracker.with_state(|s| s.wanted(kind));
            let state = &mut self.types[kind.index()];
            let changed = wanted != state.names;
            // An empty first request would be a wildcard subscription; wait for a name.
            if changed && (state.requested || !wanted.is_empty()) {
                tracing::debug!(kind = kind.short_name(), names = ?wanted, "subscription changed");
                state.names = wanted;
                self.request(kind, None)?;
            }
        }
        Ok(())
    }

    /// Validates a response whole, applies and ACKs it, or NACKs it and applies nothing.
    pub(crate) fn on_response(&mut self, response: DiscoveryResponse) -> Result<(), StreamError> {
        let Some(kind) = Kind::from_type_url(&response.type_url) else {
            let error = InvalidResource::UnsupportedType {
                type_url: response.type_url.clone(),
            };
            tracing::warn!(type_url = %response.type_url, "NACK: unsupported type");
            return self.send(
                &response.type_url,
                String::new(),
                Vec::new(),
                response.nonce,
                Some(error.to_string()),
            );
        };
        self.types[kind.index()].nonce = response.nonce.clone();
        match validate_all(kind, &response.resources) {
            Ok(resources) => {
                let names: Vec<String> = resources.iter().map(|r| r.name.clone()).collect();
                self.tracker.update(|state, now| {
                    state.apply_sotw(kind, &response.version_info, resources, now);
                });
                count_update(self.tracker.stats(), kind, &names, true);
                tracing::info!(
                    kind = kind.short_name(),
                    version = %response.version_info,
                    resources = names.len(),
                    "ACK"
                );
                self.request(kind, None)?;
                self.sync_subscriptions()
            }
            Err(error) => {
                let names = self.types[kind.index()]
                    .names
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>();
                count_update(self.tracker.stats(), kind, &names, false);
                tracing::warn!(
                    kind = kind.short_name(),
                    version = %response.version_info,
                    %error,
                    "NACK"
                );
                self.request(kind, Some(error.to_string()))
            }
        }
    }

    /// Activates what timed out warming and follows the subscriptions that changed.
    pub(crate) fn on_deadline(&mut self) -> Result<(), StreamError> {
        self.tracker.update(|state, now| state.promote(now));
        self.sync_subscriptions()
    }
}

/// Runs one SotW stream until it fails.
pub(crate) async fn run(
    channel: tonic::transport::Channel,
    config: &AdsConfig,
    tracker: &Arc<Tracker>,
    received: &mut bool,
) -> Result<(), StreamError> {
    use xds_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut session = Session::new(config, tracker, tx);
    session.start()?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut inbound = client
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    tracker.set_connected(true);
    tracing::info!(target = %config.target, "ADS stream open (state of the world)");
    loop {
        let deadline = tracker.with_state(|s| s.next_deadline());
        tokio::select! {
            message = inbound.message() => {
                let response = message?.ok_or(StreamError::Closed)?;
                *received = true;
                session.on_response(response)?;
            }
            () = wait_deadline(deadline) => session.on_deadline()?,
        }
    }
}
