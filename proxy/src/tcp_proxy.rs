//! `envoy.filters.network.tcp_proxy`: picks a cluster (single or weighted, per connection), a host
//! from it, and copies bytes both ways until either side closes.
//!
//! A TCP stream has no way to ask its client to reconnect, so, as in Envoy, draining does not
//! touch it at first: when its listener is updated or removed, or the whole proxy drains, the
//! connection lives on for the drain time (Envoy's `--drain-time-s`, ferry-proxy's
//! `--drain-time`) and is closed when that ends, so an old listener config does not live forever.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::net::TcpStream;
use xds_proto::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_pb;

use crate::cluster::LbContext;
use crate::http_connection_manager::DrainSignals;
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

/// Resolves when a drained connection's time is up: the drain starts when the connection's
/// listener is updated or removed (its generation retired) or the whole proxy drains, and ends
/// `drain_time()` later, read when the drain starts.
pub async fn drain_deadline(drain: DrainSignals, drain_time: impl FnOnce() -> Duration) {
    let DrainSignals {
        mut shutdown,
        mut retired,
    } = drain;
    let shutdown = async move {
        if shutdown.wait_for(|draining| *draining).await.is_err() {
            // No one can ask for a drain any more.
            std::future::pending::<()>().await;
        }
    };
    // A generation that went away is retired too.
    let retired = async move {
        let _ = retired.wait_for(|retired| *retired).await;
    };
    tokio::select! {
        () = shutdown => {}
        () = retired => {}
    }
    let drain_time = drain_time();
    tracing::debug!(
        drain_ms = u64::try_from(drain_time.as_millis()).unwrap_or(u64::MAX),
        "tcp proxy: draining"
    );
    tokio::time::sleep(drain_time).await;
}

/// Proxies one downstream connection; returns when both directions are done, or closes both
/// sides when `deadline` (see [`drain_deadline`]) resolves first.
pub async fn proxy(
    config: &TcpProxyConfig,
    snapshot: Arc<Snapshot>,
    downstream: TcpStream,
    peer: SocketAddr,
    original_dst: Option<SocketAddr>,
    deadline: impl Future<Output = ()>,
) {
    let name = config.pick_cluster();
    tokio::select! {
        () = copy(name, snapshot, downstream, peer, original_dst) => {}
        () = deadline => tracing::debug!(cluster = name, "tcp proxy: drain time over, closed"),
    }
}

async fn copy(
    name: &str,
    snapshot: Arc<Snapshot>,
    mut downstream: TcpStream,
    peer: SocketAddr,
    original_dst: Option<SocketAddr>,
) {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::sync::watch;
    use tokio::task::JoinHandle;
    use tokio::time::sleep;

    use super::*;

    const DRAIN: Duration = Duration::from_secs(600);

    /// A deadline task for drain signals whose senders the caller holds.
    fn deadline(
        drain_time: impl FnOnce() -> Duration + Send + 'static,
    ) -> (watch::Sender<bool>, watch::Sender<bool>, JoinHandle<()>) {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (retired, retired_rx) = watch::channel(false);
        let drain = DrainSignals {
            shutdown: shutdown_rx,
            retired: retired_rx,
        };
        let task = tokio::spawn(drain_deadline(drain, drain_time));
        (shutdown, retired, task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_retired_connection_is_closed_when_the_drain_time_ends() {
        let (_shutdown, retired, task) = deadline(|| DRAIN);
        sleep(DRAIN * 10).await;
        assert!(!task.is_finished(), "no drain, no deadline");
        retired.send_replace(true);
        sleep(DRAIN - Duration::from_secs(1)).await;
        assert!(!task.is_finished(), "still within the drain time");
        sleep(Duration::from_secs(2)).await;
        assert!(task.is_finished(), "closed when the drain time ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_generation_that_went_away_counts_as_retired() {
        let (_shutdown, retired, task) = deadline(|| DRAIN);
        drop(retired);
        sleep(DRAIN + Duration::from_secs(1)).await;
        assert!(task.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_proxy_closes_after_the_drain_time_and_a_gone_shutdown_never_does() {
        let (shutdown, _retired, task) = deadline(|| DRAIN);
        shutdown.send_replace(true);
        sleep(DRAIN + Duration::from_secs(1)).await;
        assert!(task.is_finished());

        let (shutdown, _retired, task) = deadline(|| DRAIN);
        drop(shutdown);
        sleep(DRAIN * 10).await;
        assert!(!task.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_time_is_read_when_the_drain_starts() {
        let setting = Arc::new(AtomicU64::new(600));
        let read = setting.clone();
        let (_shutdown, retired, task) =
            deadline(move || Duration::from_secs(read.load(Ordering::Relaxed)));
        setting.store(10, Ordering::Relaxed);
        retired.send_replace(true);
        sleep(Duration::from_secs(11)).await;
        assert!(task.is_finished());
    }
}
