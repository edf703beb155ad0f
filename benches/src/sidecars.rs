//! Lightweight ADS clients that subscribe like an Istio sidecar, for ferry-control's benchmark.
//!
//! A hundred real proxies would measure the machine's memory more than the control plane, so
//! each client is a task in the harness: one ADS stream (state of the world) with an Istio node
//! (`sidecar~IP~POD.default~default.svc.cluster.local` and `NAMESPACE`, `LABELS`, `INSTANCE_IPS`,
//! `SERVICE_ACCOUNT`, `CLUSTER_ID` metadata, on the first request only), CDS and LDS as
//! wildcards, EDS for every EDS cluster and RDS for every route config the listeners name, exactly
//! the requests Envoy sends. It ACKs every response as soon as it has decoded it. After an edit
//! (announced on a watch channel before the file is written) it reports the instant it ACKed the
//! first route update, which is when the edit reached that proxy.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use xds_proto::envoy::config::cluster::v3::Cluster;
use xds_proto::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use xds_proto::envoy::config::core::v3::Node;
use xds_proto::envoy::config::listener::v3::Listener;
use xds_proto::envoy::config::listener::v3::filter::ConfigType;
use xds_proto::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use xds_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use xds_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use xds_proto::google::protobuf::{Struct, Value, value::Kind};
use xds_proto::type_url;

/// The node id prefix every client uses (for finding them in `/debug/syncz`).
pub const NODE_PREFIX: &str = "sidecar~10.250.";

/// A client reached an edit: (edit generation, when it ACKed the route update).
pub type Ack = (u32, Instant);

/// The Istio sidecar node of client `index` (instance IP `10.250.X.Y`).
pub fn node(index: usize) -> Node {
    let ip = format!("10.250.{}.{}", index / 250, index % 250 + 1);
    let pod = format!("bench-client-{index}");
    let text = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let labels = Struct {
        fields: [("app".to_owned(), text("bench-client"))].into(),
    };
    let fields = [
        ("NAMESPACE", text("default")),
        (
            "LABELS",
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        ),
        ("INSTANCE_IPS", text(&ip)),
        ("SERVICE_ACCOUNT", text("bench-client")),
        ("CLUSTER_ID", text("Kubernetes")),
    ];
    Node {
        id: format!("sidecar~{ip}~{pod}.default~default.svc.cluster.local"),
        cluster: "bench-client.default".into(),
        metadata: Some(Struct {
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }),
        ..Node::default()
    }
}

/// The EDS names the clusters of a CDS response ask for.
pub fn eds_names(response: &DiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> = response
        .resources
        .iter()
        .filter_map(|any| Cluster::decode(any.value.as_slice()).ok())
        .filter(|c| {
            c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        })
        .map(|c| match c.eds_cluster_config {
            Some(eds) if !eds.service_name.is_empty() => eds.service_name,
            _ => c.name,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The RDS names the HTTP connection managers of an LDS response ask for.
pub fn rds_names(response: &DiscoveryResponse) -> Vec<String> {
    let mut names = Vec::new();
    for listener in response
        .resources
        .iter()
        .filter_map(|any| Listener::decode(any.value.as_slice()).ok())
    {
        let chains = listener
            .filter_chains
            .iter()
            .chain(listener.default_filter_chain.iter());
        for filter in chains.flat_map(|c| c.filters.iter()) {
            let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
                continue;
            };
            if !any.type_url.ends_with(".HttpConnectionManager") {
                continue;
            }
            if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice())
                && let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier
            {
                names.push(rds.route_config_name);
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Runs client `index` against `xds` until the stream ends; reports edits on `acks`.
pub async fn run(
    index: usize,
    xds: SocketAddr,
    edits: watch::Receiver<u32>,
    acks: mpsc::UnboundedSender<Ack>,
) -> Result<(), String> {
    let mut grpc = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (tx, rx) = mpsc::channel(16);
    let send = |request: DiscoveryRequest| {
        let tx = tx.clone();
        async move {
            tx.send(request)
                .await
                .map_err(|_| "stream closed".to_owned())
        }
    };
    send(DiscoveryRequest {
        node: Some(node(index)),
        type_url: type_url::CLUSTER.into(),
        ..DiscoveryRequest::default()
    })
    .await?;
    send(DiscoveryRequest {
        type_url: type_url::LISTENER.into(),
        ..DiscoveryRequest::default()
    })
    .await?;
    let mut responses = grpc
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("stream: {e}"))?
        .into_inner();
    // Per type: the names subscribed and the last (version, nonce) ACKed.
    let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut acked: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut reported = 0;
    while let Some(response) = responses
        .message()
        .await
        .map_err(|e| format!("receive: {e}"))?
    {
        let ty = response.type_url.clone();
        let wanted = match ty.as_str() {
            type_url::CLUSTER => Some((type_url::CLUSTER_LOAD_ASSIGNMENT, eds_names(&response))),
            type_url::LISTENER => Some((type_url::ROUTE_CONFIGURATION, rds_names(&response))),
            _ => None,
        };
        send(DiscoveryRequest {
            type_url: ty.clone(),
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            resource_names: names.get(&ty).cloned().unwrap_or_default(),
            ..DiscoveryRequest::default()
        })
        .await?;
        acked.insert(ty.clone(), (response.version_info, response.nonce));
        if ty == type_url::ROUTE_CONFIGURATION {
            let generation = *edits.borrow();
            if generation > reported {
                reported = generation;
                let _ = acks.send((generation, Instant::now()));
            }
        }
        if let Some((child, wanted)) = wanted
            && names.get(child) != Some(&wanted)
        {
            let (version, nonce) = acked.get(child).cloned().unwrap_or_default();
            names.insert(child.to_owned(), wanted.clone());
            send(DiscoveryRequest {
                type_url: child.into(),
                version_info: version,
                response_nonce: nonce,
                resource_names: wanted,
                ..DiscoveryRequest::default()
            })
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_proto::envoy::config::cluster::v3::cluster::EdsClusterConfig;

    #[test]
    fn nodes_are_istio_sidecars_with_distinct_ips() {
        let a = node(0);
        let b = node(251);
        assert_eq!(
            a.id,
            "sidecar~10.250.0.1~bench-client-0.default~default.svc.cluster.local"
        );
        assert!(b.id.starts_with("sidecar~10.250.1.2~"), "{}", b.id);
        let metadata = a.metadata.unwrap();
        assert!(metadata.fields.contains_key("LABELS"));
        assert!(a.id.starts_with(NODE_PREFIX));
    }

    #[test]
    fn eds_clusters_are_subscribed_by_service_name() {
        let eds = |name: &str, service: &str| Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                service_name: service.into(),
                ..EdsClusterConfig::default()
            }),
            ..Cluster::default()
        };
        let static_cluster = Cluster {
            name: "static".into(),
            ..Cluster::default()
        };
        let response = DiscoveryResponse {
            resources: [eds("a", ""), eds("b", "b-eds"), static_cluster]
                .iter()
                .map(xds_proto::any::pack)
                .collect(),
            ..DiscoveryResponse::default()
        };
        assert_eq!(eds_names(&response), ["a", "b-eds"]);
    }
}
