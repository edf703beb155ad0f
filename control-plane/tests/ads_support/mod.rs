//! Shared harness of the ADS integration tests: the real control plane started in-process on
//! loopback, fed models through a channel, with a generator that turns each service of the
//! proxy's namespace into Istio-shaped resources, and a test client for either ADS variant
//! ([`AdsClient`]).

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_control::app::{self, Running, ServeOptions, Sources, SourcesFeed};
use ferry_control::model::proxy::ProxyNode;
use ferry_control::model::{Endpoint, Model, Protocol, Resolution, Service, ServicePort};
use ferry_control::xds::connection::ConnectionStatus;
use ferry_control::xds::debounce::DebounceConfig;
use ferry_control::xds::{GenerateError, Resources};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;
use xds_proto::envoy::config::cluster::v3::{Cluster, cluster};
use xds_proto::envoy::config::core::v3::{Address, Node, SocketAddress, address, socket_address};
use xds_proto::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use xds_proto::envoy::config::listener::v3::Listener;
use xds_proto::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use xds_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use xds_proto::google::protobuf::{Struct, Value, value::Kind};

/// A generous bound on any single wait, so a broken server fails the test instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn node(ip: &str, pod: &str, ns: &str) -> Node {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    Node {
        id: format!("sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"),
        cluster: format!("{pod}.{ns}"),
        metadata: Some(Struct {
            fields: [
                ("NAMESPACE".to_owned(), s(ns)),
                ("INSTANCE_IPS".to_owned(), s(ip)),
                ("SERVICE_ACCOUNT".to_owned(), s("default")),
            ]
            .into(),
        }),
        ..Default::default()
    }
}

pub fn service(name: &str, ns: &str, endpoints: &[&str]) -> Service {
    Service {
        hostname: format!("{name}.{ns}.svc.cluster.local"),
        name: name.into(),
        namespace: ns.into(),
        addresses: vec![],
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            target_port: Some(8080),
            protocol: Protocol::Http,
        }],
        resolution: Resolution::Static,
        mesh_external: false,
        export_to: Vec::new(),
        endpoints: endpoints
            .iter()
            .map(|ip| Endpoint {
                address: (*ip).into(),
                ports: BTreeMap::from([("http".into(), 8080)]),
                labels: BTreeMap::new(),
                service_account: None,
                locality: String::new(),
                weight: 1,
                ready: true,
            })
            .collect(),
    }
}

pub fn model(services: Vec<Service>) -> Option<Arc<Model>> {
    Some(Arc::new(Model {
        services: services
            .into_iter()
            .map(|s| (s.hostname.clone(), s))
            .collect(),
        ..Default::default()
    }))
}

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// Services of the proxy's own namespace become `outbound|80||HOST` EDS clusters, their
/// assignments, a virtual host each in route `80`, behind listener `0.0.0.0_80`.
/// A service named `boom` makes it panic, standing in for a translator bug.
pub fn generate(model: &Model, proxy: &ProxyNode) -> Result<Resources, GenerateError> {
    assert!(
        !model.services.values().any(|s| s.name == "boom"),
        "translator bug"
    );
    let mut out = Resources::default();
    let mut vhosts = Vec::new();
    for svc in model
        .services
        .values()
        .filter(|s| s.namespace == proxy.namespace)
    {
        let name = format!("outbound|80||{}", svc.hostname);
        out.clusters.push(Cluster {
            name: name.clone(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            ..Default::default()
        });
        out.endpoints.push(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: svc
                    .endpoints
                    .iter()
                    .map(|e| LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                            xds_proto::envoy::config::endpoint::v3::Endpoint {
                                address: Some(socket(&e.address, 8080)),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        });
        vhosts.push(VirtualHost {
            name: format!("{}:80", svc.hostname),
            domains: vec![svc.hostname.clone(), svc.name.clone()],
            ..Default::default()
        });
    }
    out.routes.push(RouteConfiguration {
        name: "80".into(),
        virtual_hosts: vhosts,
        ..Default::default()
    });
    out.listeners.push(Listener {
        name: "0.0.0.0_80".into(),
        address: Some(socket("0.0.0.0", 80)),
        ..Default::default()
    });
    Ok(out)
}

pub struct Harness {
    pub running: Running,
    pub models: watch::Sender<Option<Arc<Model>>>,
    pub errors: watch::Sender<Arc<Vec<ferry_control::model::ModelError>>>,
}

impl Harness {
    pub async fn start(initial: Option<Arc<Model>>) -> Harness {
        let (SourcesFeed { models, errors }, sources) = Sources::channel();
        models.send_replace(initial);
        let options = ServeOptions {
            config_dir: ".".into(),
            kubernetes: false,
            xds_address: "127.0.0.1:0".parse().unwrap(),
            debug_address: "127.0.0.1:0".parse().unwrap(),
            local_mode: true,
            debounce: DebounceConfig {
                quiet: Duration::from_millis(20),
                max_delay: Duration::from_millis(200),
            },
            mesh: Default::default(),
        };
        let running = app::start(&options, sources, Arc::new(generate))
            .await
            .unwrap();
        Harness {
            running,
            models,
            errors,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.running.xds_address)
    }

    /// Polls the registry until `check` holds for the connection of `node_id`.
    pub async fn wait_for(
        &self,
        node_id: &str,
        check: impl Fn(&ConnectionStatus) -> bool,
    ) -> ConnectionStatus {
        let registry = self.running.server.registry();
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(c) = registry.find(node_id).filter(|c| check(c)) {
                    return c;
                }
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{node_id}: condition not reached; {:?}",
                registry.find(node_id)
            )
        })
    }

    /// Polls until the proxy `node_id` has NACKed `ty`.
    pub async fn wait_for_nack(
        &self,
        node_id: &str,
        ty: ferry_control::xds::cache::ResourceType,
    ) -> ConnectionStatus {
        self.wait_for(node_id, |s| {
            s.types.get(&ty).is_some_and(|t| t.last_nack.is_some())
        })
        .await
    }

    /// Polls until no connection is registered.
    pub async fn wait_disconnected(&self) {
        let registry = self.running.server.registry();
        tokio::time::timeout(PATIENCE, async {
            while !registry.list().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("connections closed");
    }

    /// A plain HTTP/1.1 GET against the debug endpoint: (status, body).
    pub async fn debug_get(&self, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(self.running.debug_address)
            .await
            .unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        tokio::time::timeout(PATIENCE, stream.read_to_string(&mut raw))
            .await
            .unwrap()
            .unwrap();
        let status = raw[9..12].parse().unwrap();
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

/// A request that can carry the node (sent on the first request of a stream only, as Istio's
/// sidecars do).
pub trait WithNode {
    /// Sets the request's node.
    fn set_node(&mut self, node: Option<Node>);
}

impl WithNode for DiscoveryRequest {
    fn set_node(&mut self, node: Option<Node>) {
        self.node = node;
    }
}

impl WithNode for DeltaDiscoveryRequest {
    fn set_node(&mut self, node: Option<Node>) {
        self.node = node;
    }
}

/// One ADS stream of a test client: requests `Req` out, responses `Resp` in. Each test file adds
/// its protocol's request helpers (`impl AdsClient<...>`).
pub struct AdsClient<Req, Resp> {
    pub requests: mpsc::Sender<Req>,
    pub responses: Streaming<Resp>,
    pub node: Option<Node>,
}

impl<Req: WithNode, Resp> AdsClient<Req, Resp> {
    /// Sends a request; the node goes on the first one only.
    pub async fn send_raw(&mut self, mut request: Req) {
        request.set_node(self.node.take());
        self.requests.send(request).await.unwrap();
    }

    /// The next response, within [`PATIENCE`].
    pub async fn recv(&mut self) -> Resp {
        tokio::time::timeout(PATIENCE, self.responses.message())
            .await
            .expect("a response in time")
            .unwrap()
            .expect("stream open")
    }
}

/// The gRPC client and the request channel of a new stream.
async fn open<Req>(
    h: &Harness,
) -> (
    AggregatedDiscoveryServiceClient<Channel>,
    mpsc::Sender<Req>,
    ReceiverStream<Req>,
) {
    let grpc = AggregatedDiscoveryServiceClient::connect(h.url())
        .await
        .unwrap();
    let (requests, rx) = mpsc::channel(16);
    (grpc, requests, ReceiverStream::new(rx))
}

impl AdsClient<DiscoveryRequest, DiscoveryResponse> {
    /// Opens a state-of-the-world stream as `node`.
    pub async fn connect(h: &Harness, node: Node) -> Self {
        let (mut grpc, requests, rx) = open(h).await;
        let responses = grpc.stream_aggregated_resources(rx).await.unwrap();
        AdsClient {
            requests,
            responses: responses.into_inner(),
            node: Some(node),
        }
    }
}

impl AdsClient<DeltaDiscoveryRequest, DeltaDiscoveryResponse> {
    /// Opens a delta stream as `node`.
    pub async fn connect(h: &Harness, node: Node) -> Self {
        let (mut grpc, requests, rx) = open(h).await;
        let responses = grpc.delta_aggregated_resources(rx).await.unwrap();
        AdsClient {
            requests,
            responses: responses.into_inner(),
            node: Some(node),
        }
    }
}
