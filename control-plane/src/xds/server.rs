//! The gRPC face of the ADS server: accepts `StreamAggregatedResources` (state of the world) and
//! `DeltaAggregatedResources` streams and hands each to a task of its own.
//!
//! Everything the connection tasks share — the generator, the push epochs, the registry of
//! connections and the metrics — is one [`Shared`] behind an `Arc`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use xds_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};

use super::Generator;
use super::connection::Registry;
use super::debounce::Epochs;
use super::metrics::Metrics;
use super::stream::{self, Variant};
use super::{delta, sotw};

/// Responses buffered per connection before the task waits for the proxy to read.
const RESPONSE_BUFFER: usize = 16;

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) generator: Arc<dyn Generator>,
    pub(crate) epochs: Epochs,
    pub(crate) registry: Registry,
    pub(crate) metrics: Metrics,
    next_id: AtomicU64,
}

impl Shared {
    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The ADS server: cheap to clone, every clone serves the same proxies.
#[derive(Clone)]
pub struct XdsServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsServer")
            .field("connections", &self.shared.registry.list().len())
            .finish()
    }
}

impl XdsServer {
    /// A server that generates each proxy's config with `generator` from the models published
    /// on `epochs` (see [`super::debounce::debounce`]); streams are held until the first epoch.
    pub fn new(generator: Arc<dyn Generator>, epochs: Epochs, metrics: Metrics) -> Self {
        XdsServer {
            shared: Arc::new(Shared {
                generator,
                epochs,
                registry: Registry::default(),
                metrics,
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// The live connections and their ACK/NACK state.
    pub fn registry(&self) -> Registry {
        self.shared.registry.clone()
    }

    /// The metrics the server updates.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The tonic service, to mount on a server of the caller's own.
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<XdsService> {
        AggregatedDiscoveryServiceServer::new(XdsService {
            shared: self.shared.clone(),
        })
    }

    /// Serves ADS on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        tracing::info!(addr = ?listener.local_addr().ok(), "xDS server listening");
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
    }
}

/// The tonic `AggregatedDiscoveryService` implementation.
#[derive(Clone)]
pub struct XdsService {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XdsService")
    }
}

impl XdsService {
    /// Starts the connection task of one stream of variant `V`; its responses flow back
    /// through a bounded channel.
    fn spawn<V: Variant>(
        &self,
        request: Request<Streaming<V::Request>>,
    ) -> Response<ReceiverStream<Result<V::Response, Status>>> {
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(stream::run::<V>(
            self.shared.clone(),
            request.into_inner(),
            tx,
            peer,
        ));
        Response::new(ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsService {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(self.spawn::<sotw::Sotw>(request))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(self.spawn::<delta::Delta>(request))
    }
}
