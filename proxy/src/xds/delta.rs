//! Incremental ADS (`DeltaAggregatedResources`, Istio's default): subscriptions change by
//! difference, responses carry only changed resources (each with its own version) and removed
//! names, and every response is ACKed or NACKed by its nonce alone. A reconnect announces what it
//! already holds in `initial_resource_versions`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use xds_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use super::client::{StreamError, count_update, invalid_argument, wait_deadline};
use super::config::AdsConfig;
use super::resources::{InvalidResource, Kind, Validated, validate};
use super::tracker::Tracker;

/// One delta stream's bookkeeping.
pub(crate) struct Session<'a> {
    config: &'a AdsConfig,
    tracker: &'a Arc<Tracker>,
    tx: UnboundedSender<DeltaDiscoveryRequest>,
    node_sent: bool,
    names: [BTreeSet<String>; 4],
}

impl<'a> Session<'a> {
    pub(crate) fn new(
        config: &'a AdsConfig,
        tracker: &'a Arc<Tracker>,
        tx: UnboundedSender<DeltaDiscoveryRequest>,
    ) -> Self {
        Self {
            config,
            tracker,
            tx,
            node_sent: false,
            names: Default::default(),
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

    fn send(&mut self, mut request: DeltaDiscoveryRequest) -> Result<(), StreamError> {
        if !self.node_sent || !self.config.node_on_first_message_only {
            request.node = Some(self.config.node.clone());
        }
        self.node_sent = true;
        self.tx.send(request).map_err(|_| StreamError::Closed)
    }

    /// Subscribes on a fresh stream: CDS and LDS by wildcard, RDS and EDS by the names already
    /// referenced, each with the versions already held.
    pub(crate) fn start(&mut self) -> Result<(), StreamError> {
        for kind in [Kind::Cluster, Kind::Listener, Kind::Endpoint, Kind::Route] {
            if !self.subscribed(kind) {
                continue;
            }
            let (wanted, versions) = self
                .tracker
                .with_state(|s| (s.wanted(kind), s.resource_versions(kind)));
            if !kind.is_wildcard() && wanted.is_empty() {
                continue;
            }
            self.names[kind.index()] = wanted.clone();
            self.send(DeltaDiscoveryRequest {
                type_url: kind.type_url().to_owned(),
                resource_names_subscribe: wanted.into_iter().collect(),
                initial_resource_versions: versions.into_iter().collect::<HashMap<_, _>>(),
                ..Default::default()
            })?;
        }
        Ok(())
    }

    /// Subscribes to newly referenced RDS/EDS names and unsubscribes from forgotten ones.
    pub(crate) fn sync_subscriptions(&mut self) -> Result<(), StreamError> {
        for kind in [Kind::Endpoint, Kind::Route] {
            if !self.subscribed(kind) {
                continue;
            }
            let wanted = self.tracker.with_state(|s| s.wanted(kind));
            let current = &self.names[kind.index()];
            let subscribe: Vec<String> = wanted.difference(current).cloned().collect();
            let unsubscribe: Vec<String> = current.difference(&wanted).cloned().collect();
            if subscribe.is_empty() && unsubscribe.is_empty() {
                continue;
            }
            tracing::debug!(
                kind = kind.short_name(),
                ?subscribe,
                ?unsubscribe,
                "subscription changed"
            );
            self.names[kind.index()] = wanted;
            self.send(DeltaDiscoveryRequest {
                type_url: kind.type_url().to_owned(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..Default::default()
            })?;
        }
        Ok(())
    }

    fn validate(
        kind: Kind,
        response: &DeltaDiscoveryResponse,
    ) -> Result<Vec<(Validated, String)>, InvalidResource> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(response.resources.len());
        for (index, resource) in response.resources.iter().enumerate() {
            // A resource without a body is a TTL heartbeat: nothing to apply.
            let Some(any) = &resource.resource else {
                continue;
            };
            let validated = validate(kind, index, any)?;
            if !resource.name.is_empty() && resource.name != validated.name {
                return Err(InvalidResource::NameMismatch {
                    kind: kind.short_name(),
                    name: resource.name.clone(),
                    inner: validated.name,
                });
            }
            if !seen.insert(validated.name.clone()) {
                return Err(InvalidResource::Duplicate {
                    kind: kind.short_name(),
                    name: validated.name,
                });
            }
            out.push((validated, resource.version.clone()));
        }
        Ok(out)
    }

    /// Validates a response whole, applies and ACKs it, or NACKs it and applies nothing.
    pub(crate) fn on_response(
        &mut self,
        response: DeltaDiscoveryResponse,
    ) -> Result<(), StreamError> {
        let Some(kind) = Kind::from_type_url(&response.type_url) else {
            let error = InvalidResource::UnsupportedType {
                type_url: response.type_url.clone(),
            };
            tracing::warn!(type_url = %response.type_url, "NACK: unsupported type");
            return self.send(DeltaDiscoveryRequest {
                type_url: response.type_url,
                response_nonce: response.nonce,
                error_detail: Some(invalid_argument(error.to_string())),
                ..Default::default()
            });
        };
        let names: Vec<String> = response.resources.iter().map(|r| r.name.clone()).collect();
        match Self::validate(kind, &response) {
            Ok(resources) => {
                let added = resources.len();
                self.tracker.update(|state, now| {
                    state.apply_delta(
                        kind,
                        &response.system_version_info,
                        resources,
                        &response.removed_resources,
                        now,
                    );
                });
                count_update(self.tracker.stats(), kind, &names, true);
                tracing::info!(
                    kind = kind.short_name(),
                    nonce = %response.nonce,
                    added,
                    removed = response.removed_resources.len(),
                    "ACK"
                );
                self.send(DeltaDiscoveryRequest {
                    type_url: response.type_url,
                    response_nonce: response.nonce,
                    ..Default::default()
                })?;
                self.sync_subscriptions()
            }
            Err(error) => {
                count_update(self.tracker.stats(), kind, &names, false);
                tracing::warn!(kind = kind.short_name(), nonce = %response.nonce, %error, "NACK");
                self.send(DeltaDiscoveryRequest {
                    type_url: response.type_url,
                    response_nonce: response.nonce,
                    error_detail: Some(invalid_argument(error.to_string())),
                    ..Default::default()
                })
            }
        }
    }

    /// Activates what timed out warming and follows the subscriptions that changed.
    pub(crate) fn on_deadline(&mut self) -> Result<(), StreamError> {
        self.tracker.update(|state, now| state.promote(now));
        self.sync_subscriptions()
    }
}

/// Runs one delta stream until it fails.
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
        .delta_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    tracker.set_connected(true);
    tracing::info!(target = %config.target, "ADS stream open (delta)");
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
