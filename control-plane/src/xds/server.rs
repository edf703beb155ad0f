//! The gRPC face of the ADS server: accepts `StreamAggregatedResources` (state of the world) and
//! `DeltaAggregatedResources` streams and hands each to a task of its own.
//!
//! The two methods are served by [`AdsService`], a small `tower` service mounted in tonic's
//! router in place of the generated one: the generated server keeps a per-stream encode buffer
//! as large as the largest response it ever sent, which dominated the control plane's memory
//! per connected proxy. Here responses are framed by [`super::framing`], each in a buffer of its
//! own exact size that is freed once written.
//!
//! Everything the connection tasks share — the generator, the push epochs, the registry of
//! connections and the metrics — is one [`Shared`] behind an `Arc`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::header::{CONTENT_TYPE, HeaderValue};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;

use super::Generator;
use super::connection::Registry;
use super::debounce::Epochs;
use super::framing::{self, ResponseBody};
use super::metrics::Metrics;
use super::stream::{self, Variant};
use super::{delta, sotw};

/// The gRPC service name of ADS.
const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
/// The state-of-the-world method's path.
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
/// The delta method's path.
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

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

    /// The ADS service, to mount on a tonic server of the caller's own.
    pub fn service(&self) -> AdsService {
        AdsService {
            shared: self.shared.clone(),
        }
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

/// The `AggregatedDiscoveryService` as a `tower` service for tonic's router: both methods,
/// each stream driven by a connection task of its own.
#[derive(Clone)]
pub struct AdsService {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AdsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdsService")
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE;
}

impl AdsService {
    /// Starts the connection task of one stream of variant `V`; its framed responses flow back
    /// through a bounded channel into the response body.
    fn spawn<V: Variant>(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body>
    where
        V::Request: prost::Message + Default,
    {
        if let Some(encoding) = request.headers().get("grpc-encoding")
            && encoding != "identity"
        {
            let status = Status::unimplemented(format!(
                "grpc-encoding {encoding:?} is not supported; send uncompressed messages"
            ));
            let mut response = status.into_http::<tonic::body::Body>();
            response
                .headers_mut()
                .insert("grpc-accept-encoding", HeaderValue::from_static("identity"));
            return response;
        }
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        let requests = framing::requests::<V::Request>(request.into_body());
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(stream::run::<V>(self.shared.clone(), requests, tx, peer));
        let mut response = http::Response::new(tonic::body::Body::new(ResponseBody::new(rx)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        response
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let response = match request.uri().path() {
            SOTW_PATH => self.spawn::<sotw::Sotw>(request),
            DELTA_PATH => self.spawn::<delta::Delta>(request),
            path => Status::unimplemented(format!("no method {path} in {SERVICE}")).into_http(),
        };
        std::future::ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::sync::watch;
    use tokio::time::Instant;
    use tokio_stream::StreamExt;
    use tower::Service;
    use xds_proto::envoy::config::cluster::v3::Cluster;
    use xds_proto::envoy::config::core::v3::Node;
    use xds_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use xds_proto::envoy::service::discovery::v3::DiscoveryRequest;
    use xds_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use xds_proto::google::protobuf::{Struct, Value, value::Kind};
    use xds_proto::type_url;

    use super::*;
    use crate::model::Model;
    use crate::model::proxy::ProxyNode;
    use crate::xds::debounce::Epoch;
    use crate::xds::{GenerateError, Resources};

    const CLUSTERS: usize = 300;

    fn cluster_name(i: usize) -> String {
        format!("outbound|8080||a-service-with-a-long-name-{i:04}.a-namespace.svc.cluster.local")
    }

    /// Clusters and endpoints whose CDS answer spans many HTTP/2 frames.
    fn generate(_: &Model, _: &ProxyNode) -> Result<Resources, GenerateError> {
        Ok(Resources {
            clusters: (0..CLUSTERS)
                .map(|i| Cluster {
                    name: cluster_name(i),
                    alt_stat_name: "s".repeat(512),
                    ..Default::default()
                })
                .collect(),
            endpoints: (0..CLUSTERS)
                .map(|i| ClusterLoadAssignment {
                    cluster_name: cluster_name(i),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn server() -> (XdsServer, watch::Sender<Option<Arc<Epoch>>>) {
        let epoch = Epoch {
            id: 1,
            model: Arc::new(Model::default()),
            changed_at: Instant::now(),
        };
        let (tx, epochs) = watch::channel(Some(Arc::new(epoch)));
        (
            XdsServer::new(Arc::new(generate), epochs, Metrics::new()),
            tx,
        )
    }

    fn node() -> Node {
        let text = |s: &str| Value {
            kind: Some(Kind::StringValue(s.into())),
        };
        Node {
            id: "sidecar~10.1.0.1~client.default~default.svc.cluster.local".into(),
            metadata: Some(Struct {
                fields: [
                    ("NAMESPACE".to_owned(), text("default")),
                    ("INSTANCE_IPS".to_owned(), text("10.1.0.1")),
                ]
                .into(),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn large_responses_and_requests_cross_many_http2_frames_whole() {
        let (server, _epochs) = server();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (requests, rx) = mpsc::channel(4);
        let mut responses = client
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        requests
            .send(DiscoveryRequest {
                node: Some(node()),
                type_url: type_url::CLUSTER.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let within = Duration::from_secs(20);
        let cds = tokio::time::timeout(within, responses.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(prost::Message::encoded_len(&cds) > 8 * 16 * 1024);
        let expected = generate(&Model::default(), &ProxyNode::try_from(&node()).unwrap())
            .unwrap()
            .clusters;
        let got: Vec<Cluster> = cds
            .resources
            .iter()
            .map(|any| xds_proto::any::unpack(any).unwrap())
            .collect();
        assert_eq!(got, expected);
        // An EDS subscription to every cluster is itself larger than an HTTP/2 frame.
        let eds = DiscoveryRequest {
            type_url: type_url::CLUSTER_LOAD_ASSIGNMENT.into(),
            resource_names: (0..CLUSTERS).map(cluster_name).collect(),
            ..Default::default()
        };
        assert!(prost::Message::encoded_len(&eds) > 16 * 1024);
        requests.send(eds).await.unwrap();
        let endpoints = tokio::time::timeout(within, responses.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(endpoints.type_url, type_url::CLUSTER_LOAD_ASSIGNMENT);
        assert_eq!(endpoints.resources.len(), CLUSTERS);
        drop(requests);
        drop(responses);
        let _ = stop.send(());
        serving.await.unwrap().unwrap();
    }

    async fn call(path: &str, encoding: Option<&str>) -> http::Response<tonic::body::Body> {
        let (server, _epochs) = server();
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("http://ferry{path}"))
            .header(CONTENT_TYPE, "application/grpc");
        if let Some(encoding) = encoding {
            request = request.header("grpc-encoding", encoding);
        }
        let request = request.body(tonic::body::Body::empty()).unwrap();
        server.service().call(request).await.unwrap()
    }

    #[tokio::test]
    async fn unknown_methods_and_compressed_streams_are_refused_with_a_grpc_status() {
        let response = call(&format!("/{SERVICE}/FetchClusters"), None).await;
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(status.message().contains("FetchClusters"));
        let response = call(SOTW_PATH, Some("gzip")).await;
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert_eq!(response.headers()["grpc-accept-encoding"], "identity");
    }

    #[tokio::test]
    async fn a_stream_that_ends_before_its_first_request_ends_with_ok() {
        let response = call(DELTA_PATH, Some("identity")).await;
        assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
        let trailers = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .trailers()
            .cloned()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "0");
    }
}
