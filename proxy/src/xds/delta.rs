//! Incremental ADS (`DeltaAggregatedResources`, Istio's default): subscriptions change by
//! difference, responses carry only changed resources (each with its own version) and removed
//! names, and every response is ACKed or NACKed by its nonce alone. A reconnect announces what it
//! already holds in `initial_resource_versions`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tokio_stream::wrappers::UnboundedReceiverStream;
use xds_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use super::client::{StreamError, invalid_argument};
use super::resources::{InvalidResource, Kind, Validated, validate};
use super::session::{self, Stream};
use super::tracker::Tracker;

/// One delta stream's bookkeeping.
pub(crate) struct Session<'a> {
    stream: Stream<'a, DeltaDiscoveryRequest>,
    names: [BTreeSet<String>; 4],
}

impl<'a> Session<'a> {
    pub(crate) fn new(stream: Stream<'a, DeltaDiscoveryRequest>) -> Self {
        Self {
            stream,
            names: Default::default(),
        }
    }

    fn send(&mut self, mut request: DeltaDiscoveryRequest) -> Result<(), StreamError> {
        request.node = self.stream.node();
        self.stream.send(request)
    }

    /// ACK (no error) or NACK of the response with `nonce`.
    fn answer(
        &mut self,
        type_url: String,
        nonce: String,
        error: Option<String>,
    ) -> Result<(), StreamError> {
        self.send(DeltaDiscoveryRequest {
            type_url,
            response_nonce: nonce,
            error_detail: error.map(invalid_argument),
            ..Default::default()
        })
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
}

impl session::Session for Session<'_> {
    type Response = DeltaDiscoveryResponse;

    /// Subscribes on a fresh stream: CDS and LDS by wildcard, RDS and EDS by the names already
    /// referenced, each with the versions already held.
    fn start(&mut self) -> Result<(), StreamError> {
        for kind in [Kind::Cluster, Kind::Listener, Kind::Endpoint, Kind::Route] {
            if !self.stream.subscribed(kind) {
                continue;
            }
            let (wanted, versions) = self
                .stream
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
    fn sync_subscriptions(&mut self) -> Result<(), StreamError> {
        for kind in [Kind::Endpoint, Kind::Route] {
            if !self.stream.subscribed(kind) {
                continue;
            }
            let wanted = self.stream.tracker.with_state(|s| s.wanted(kind));
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

    /// Validates a response whole, applies and ACKs it, or NACKs it and applies nothing.
    fn on_response(&mut self, response: DeltaDiscoveryResponse) -> Result<(), StreamError> {
        let Some(kind) = Kind::from_type_url(&response.type_url) else {
            let error = session::unsupported_type(&response.type_url);
            return self.answer(response.type_url, response.nonce, Some(error));
        };
        let names: Vec<String> = response.resources.iter().map(|r| r.name.clone()).collect();
        match Self::validate(kind, &response) {
            Ok(resources) => {
                let added = resources.len();
                self.stream.accept(kind, &names, |state, now| {
                    state.apply_delta(
                        kind,
                        &response.system_version_info,
                        resources,
                        &response.removed_resources,
                        now,
                    );
                });
                tracing::info!(
                    kind = kind.short_name(),
                    nonce = %response.nonce,
                    added,
                    removed = response.removed_resources.len(),
                    "ACK"
                );
                self.answer(response.type_url, response.nonce, None)?;
                self.sync_subscriptions()
            }
            Err(error) => {
                self.stream.reject(kind, &names, &response.nonce, &error);
                self.answer(response.type_url, response.nonce, Some(error.to_string()))
            }
        }
    }

    fn tracker(&self) -> &Arc<Tracker> {
        self.stream.tracker
    }
}

/// Opens the delta ADS call on `client` with the session's `requests`.
pub(crate) async fn open(
    mut client: session::AdsClient,
    requests: UnboundedReceiverStream<DeltaDiscoveryRequest>,
) -> Result<tonic::Response<tonic::Streaming<DeltaDiscoveryResponse>>, tonic::Status> {
    client.delta_aggregated_resources(requests).await
}
