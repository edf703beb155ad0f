//! `envoy.filters.network.tcp_proxy`: picks a cluster (single or weighted, per connection), a host
//! from it, and copies bytes both ways until either side closes.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::Rng;
use tokio::net::TcpStream;
use xds_proto::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_pb;

use crate::cluster::LbContext;
use crate::route::Invalid;
use crate::snapshot::Snapshot;

/// A validated `TcpProxy`.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpProxyConfig {
    /// `stat_prefix`.
    pub stat_prefix: String,
    /// Clusters with weights (one entry with weight 1 for `cluster`).
    pub clusters: Vec<(String, u32)>,
}

impl TcpProxyConfig {
    pub(crate) fn from_proto(t: &tcp_pb::TcpProxy, field: &str) -> Result<Self, Invalid> {
        use tcp_pb::tcp_proxy::ClusterSpecifier as C;
        let f = |s: &str| format!("{field}.{s}");
        let refuse_if = |set: bool, name: &str| {
            if set {
                Err(Invalid::new(f(name), "not implemented by ferry-proxy"))
            } else {
                Ok(())
            }
        };
        refuse_if(t.on_demand.is_some(), "on_demand")?;
        refuse_if(t.metadata_match.is_some(), "metadata_match")?;
        refuse_if(!t.access_log.is_empty(), "access_log")?;
        refuse_if(!t.hash_policy.is_empty(), "hash_policy")?;
        refuse_if(t.tunneling_config.is_some(), "tunneling_config")?;
        refuse_if(
            t.max_downstream_connection_duration.is_some(),
            "max_downstream_connection_duration",
        )?;
        refuse_if(
            t.max_connect_attempts.is_some_and(|n| n.value > 1),
            "max_connect_attempts",
        )?;
        refuse_if(!t.proxy_protocol_tlvs.is_empty(), "proxy_protocol_tlvs")?;
        // idle_timeout (Envoy default 1h) is accepted: connections without idle limits are a
        // superset of Envoy's behaviour for live traffic.
        let clusters = match &t.cluster_specifier {
            Some(C::Cluster(c)) if !c.is_empty() => vec![(c.clone(), 1)],
            Some(C::WeightedClusters(w)) => {
                let mut clusters = Vec::new();
                for (i, c) in w.clusters.iter().enumerate() {
                    if c.metadata_match.is_some() {
                        return Err(Invalid::new(
                            f(&format!("weighted_clusters.clusters[{i}].metadata_match")),
                            "not implemented by ferry-proxy",
                        ));
                    }
                    if c.weight > 0 {
                        clusters.push((c.name.clone(), c.weight));
                    }
                }
                if clusters.is_empty() {
                    return Err(Invalid::new(
                        f("weighted_clusters"),
                        "the sum of weights must be positive",
                    ));
                }
                clusters
            }
            _ => return Err(Invalid::new(f("cluster"), "a cluster is required")),
        };
        Ok(Self {
            stat_prefix: t.stat_prefix.clone(),
            clusters,
        })
    }

    /// The cluster for one connection.
    pub fn pick_cluster(&self) -> &str {
        let total: u64 = self.clusters.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut point = rand::rng().random_range(0..total.max(1));
        for (name, weight) in &self.clusters {
            if point < u64::from(*weight) {
                return name;
            }
            point -= u64::from(*weight);
        }
        &self.clusters[0].0
    }
}

/// Proxies one downstream connection; returns when both directions are done.
pub async fn proxy(
    config: &TcpProxyConfig,
    snapshot: Arc<Snapshot>,
    mut downstream: TcpStream,
    peer: SocketAddr,
    original_dst: Option<SocketAddr>,
) {
    let name = config.pick_cluster();
    let Some(cluster) = snapshot.clusters.get(name).cloned() else {
        tracing::debug!(cluster = name, "tcp proxy: cluster not found");
        return;
    };
    drop(snapshot);
    let ctx = LbContext {
        downstream: Some(peer),
        original_dst,
        ..LbContext::default()
    };
    let Some(host) = cluster.select_host(&ctx) else {
        tracing::debug!(cluster = name, "tcp proxy: no healthy upstream");
        return;
    };
    let mut upstream = match host.connect().await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::debug!(cluster = name, upstream.addr = %host.address(), %error, "tcp proxy: connect failed");
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        Ok((sent, received)) => {
            tracing::debug!(cluster = name, upstream.addr = %host.address(), sent, received, "tcp proxy: closed");
        }
        Err(error) => tracing::debug!(cluster = name, %error, "tcp proxy: connection error"),
    }
}
