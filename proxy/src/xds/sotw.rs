//! State-of-the-world ADS (`StreamAggregatedResources`): one request per type carries the
//! subscribed names, the last ACKed `version_info` and the nonce it answers. An ACK echoes the
//! response's version and nonce; a NACK keeps the previous version and adds `error_detail`.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio_stream::wrappers::UnboundedReceiverStream;
use xds_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::client::{StreamError, invalid_argument};
use super::resources::{Kind, validate_all};
use super::session::{self, Stream};
use super::tracker::Tracker;

#[derive(Debug, Default)]
struct TypeState {
    names: BTreeSet<String>,
    nonce: String,
    requested: bool,
}

/// One SotW stream's bookkeeping.
pub(crate) struct Session<'a> {
    stream: Stream<'a, DiscoveryRequest>,
    types: [TypeState; 4],
}

impl<'a> Session<'a> {
    pub(crate) fn new(stream: Stream<'a, DiscoveryRequest>) -> Self {
        Self {
            stream,
            types: Default::default(),
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
        let request = DiscoveryRequest {
            version_info: version,
            node: self.stream.node(),
            resource_names: names,
            type_url: type_url.to_owned(),
            response_nonce: nonce,
            error_detail: error.map(invalid_argument),
            ..Default::default()
        };
        self.stream.send(request)
    }

    fn request(&mut self, kind: Kind, error: Option<String>) -> Result<(), StreamError> {
        let version = self
            .stream
            .tracker
            .with_state(|s| s.version(kind).to_owned());
        let state = &mut self.types[kind.index()];
        state.requested = true;
        let names = state.names.iter().cloned().collect();
        let nonce = state.nonce.clone();
        self.send(kind.type_url(), version, names, nonce, error)
    }
}

impl session::Session for Session<'_> {
    type Response = DiscoveryResponse;

    /// Subscribes on a fresh stream: CDS and LDS by wildcard, then the names already known
    /// (a reconnect resumes its subscriptions with the versions it holds).
    fn start(&mut self) -> Result<(), StreamError> {
        for kind in [Kind::Cluster, Kind::Listener] {
            if self.stream.subscribed(kind) {
                self.request(kind, None)?;
            }
        }
        self.sync_subscriptions()
    }

    /// Sends a request for RDS/EDS whenever the referenced names changed.
    fn sync_subscriptions(&mut self) -> Result<(), StreamError> {
        for kind in [Kind::Endpoint, Kind::Route] {
            if !self.stream.subscribed(kind) {
                continue;
            }
            let wanted = self.stream.tracker.with_state(|s| s.wanted(kind));
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
    fn on_response(&mut self, response: DiscoveryResponse) -> Result<(), StreamError> {
        let Some(kind) = Kind::from_type_url(&response.type_url) else {
            let error = session::unsupported_type(&response.type_url);
            return self.send(
                &response.type_url,
                String::new(),
                Vec::new(),
                response.nonce,
                Some(error),
            );
        };
        self.types[kind.index()].nonce = response.nonce.clone();
        match validate_all(kind, &response.resources) {
            Ok(resources) => {
                let names: Vec<String> = resources.iter().map(|r| r.name.clone()).collect();
                self.stream.accept(kind, &names, |state, now| {
                    state.apply_sotw(kind, &response.version_info, resources, now);
                });
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
                let names: Vec<String> = self.types[kind.index()].names.iter().cloned().collect();
                self.stream
                    .reject(kind, &names, &response.version_info, &error);
                self.request(kind, Some(error.to_string()))
            }
        }
    }

    fn tracker(&self) -> &Arc<Tracker> {
        self.stream.tracker
    }
}

/// Opens the state-of-the-world ADS call on `client` with the session's `requests`.
pub(crate) async fn open(
    mut client: session::AdsClient,
    requests: UnboundedReceiverStream<DiscoveryRequest>,
) -> Result<tonic::Response<tonic::Streaming<DiscoveryResponse>>, tonic::Status> {
    client.stream_aggregated_resources(requests).await
}
