//! `Cluster`: one cluster's runtime state (host set, stats, background refresh) and the
//! `ClusterSet` a snapshot holds.
//!
//! The host set is one `ArcSwap`: EDS updates, DNS refreshes and the manager replace it whole,
//! and a request loads it once per pick, so it never sees half an update.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rand::Rng;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::LbContext;
use super::config::{ClusterConfig, Discovery, DnsConfig};
use super::dns::DnsResolver;
use super::host::Host;
use super::load_assignment::{EndpointAddress, LoadAssignment};
use super::original_dst::OriginalDstHosts;
use super::priority::{HostEntry, HostSet};
use super::stats::ClusterStats;
use super::transport::TransportSocket;
use crate::body::Body;
use crate::circuit_breaker::{self, CircuitBreakerSet, Resource};
use crate::outlier::{self, Detector};
use crate::pool::PoolSettings;
use crate::stats::Store;

/// Addresses DNS returned, by (hostname, port).
type Resolved = HashMap<(String, u16), Vec<IpAddr>>;

/// A cluster with its runtime state: what the router picks hosts from.
#[derive(Debug)]
pub struct Cluster {
    /// The validated definition in force.
    pub config: Arc<ClusterConfig>,
    shared: Arc<Shared>,
    background: Option<AbortHandle>,
    outlier_timer: Option<AbortHandle>,
}

#[derive(Debug)]
struct Shared {
    config: Arc<ClusterConfig>,
    settings: Arc<PoolSettings>,
    stats: Arc<ClusterStats>,
    hosts: ArcSwap<HostSet>,
    original_dst: Option<OriginalDstHosts>,
    assignment: Mutex<Option<Arc<LoadAssignment>>>,
    warm: watch::Sender<bool>,
    /// `circuit_breakers`, enforced in [`Cluster::send`].
    breakers: CircuitBreakerSet,
    /// `outlier_detection`: fed by [`Cluster::send`], consulted by host selection.
    outlier: Option<Arc<Detector>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(task) = &self.background {
            task.abort();
        }
        if let Some(task) = &self.outlier_timer {
            task.abort();
        }
    }
}

impl Cluster {
    /// Builds a cluster; `assignment` is its EDS assignment if one arrived, `donors` hosts of a
    /// previous version of the cluster that may be adopted.
    pub(crate) fn new(
        config: Arc<ClusterConfig>,
        store: &Store,
        assignment: Option<Arc<LoadAssignment>>,
        donors: Vec<Arc<Host>>,
    ) -> Self {
        let settings = Arc::new(config.pool.clone());
        let stats = ClusterStats::new(store, &config.stat_name);
        let original_dst = matches!(config.discovery, Discovery::OriginalDst { .. }).then(|| {
            let transport = config.transport.for_endpoint(&BTreeMap::new());
            OriginalDstHosts::new(settings.clone(), transport, stats.clone())
        });
        let (warm, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config: config.clone(),
            settings,
            stats,
            hosts: ArcSwap::from_pointee(HostSet::empty()),
            original_dst,
            assignment: Mutex::new(None),
            warm,
            breakers: CircuitBreakerSet::with_stats(
                &config.circuit_breakers,
                store,
                &config.stat_name,
            ),
            outlier: config
                .outlier_detection
                .clone()
                .map(|od| Arc::new(Detector::new(od, std::iter::empty()))),
        });
        // Adopt the previous version's hosts where their connections are still valid.
        let donors: Vec<Arc<Host>> = donors
            .into_iter()
            .filter(|h| **h.settings() == *shared.settings)
            .collect();
        let runtime = tokio::runtime::Handle::try_current().ok();
        let outlier_timer = match (&shared.outlier, &runtime) {
            (Some(detector), Some(rt)) => {
                let _entered = rt.enter();
                Some(detector.spawn_timer().abort_handle())
            }
            _ => None,
        };
        let mut background = None;
        match &config.discovery {
            Discovery::Static => {
                if let Some(la) = &config.load_assignment {
                    shared.apply(la, &Resolved::new(), &donors);
                } else {
                    shared.apply_set(HostSet::empty());
                }
            }
            Discovery::Eds { .. } => {
                if let Some(la) = assignment {
                    shared.apply(&la, &Resolved::new(), &donors);
                    *shared.lock_assignment() = Some(la);
                }
            }
            Discovery::StrictDns(dns) | Discovery::LogicalDns(dns) => {
                let logical = matches!(config.discovery, Discovery::LogicalDns(_));
                let la = config
                    .load_assignment
                    .clone()
                    .unwrap_or_else(|| LoadAssignment {
                        cluster_name: config.name.clone(),
                        localities: Vec::new(),
                        overprovisioning_factor: 140,
                    });
                match &runtime {
                    Some(rt) => {
                        let task = dns_refresh(
                            Arc::downgrade(&shared),
                            la,
                            dns.clone(),
                            logical,
                            donors.clone(),
                        );
                        background = Some(rt.spawn(task).abort_handle());
                    }
                    None => {
                        tracing::warn!(cluster = %config.name, "no runtime; DNS cluster stays empty")
                    }
                }
            }
            Discovery::OriginalDst { cleanup_interval } => {
                shared.warm.send_replace(true);
                if let Some(rt) = &runtime {
                    let task = original_dst_cleanup(Arc::downgrade(&shared), *cleanup_interval);
                    background = Some(rt.spawn(task).abort_handle());
                }
            }
        }
        Self {
            config,
            shared,
            background,
            outlier_timer,
        }
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Picks a host for one request or connection; `None` means no healthy upstream (503, UH).
    pub fn select_host(&self, ctx: &LbContext<'_>) -> Option<Arc<Host>> {
        self.select_host_with(ctx, &mut rand::rng())
    }

    /// [`Self::select_host`] with a given random source (tests use a seeded one).
    pub fn select_host_with<R: Rng + ?Sized>(
        &self,
        ctx: &LbContext<'_>,
        rng: &mut R,
    ) -> Option<Arc<Host>> {
        let avoid = self
            .shared
            .outlier
            .as_ref()
            .and_then(|d| d.avoid(self.config.healthy_panic_threshold));
        let host = match (&self.shared.original_dst, avoid) {
            (Some(hosts), _) => ctx.original_dst.map(|addr| hosts.host(addr)),
            (None, None) => self.shared.hosts.load().select(ctx, rng),
            // Ejected hosts are avoided like previous hosts: the set falls back to one of them
            // only when nothing else is left.
            (None, Some(ejected)) => {
                let mut excluded = ejected.to_vec();
                excluded.extend_from_slice(ctx.excluded);
                let ctx = LbContext {
                    excluded: &excluded,
                    ..*ctx
                };
                self.shared.hosts.load().select(&ctx, rng)
            }
        };
        if host.is_none() {
            self.shared.stats.upstream_cx_none_healthy.inc();
        }
        host
    }

    /// Sends one upstream request to `host` under the cluster's circuit breaker of the DEFAULT
    /// priority; see [`Self::send_with_priority`].
    pub async fn send(
        &self,
        host: &Host,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, super::UpstreamError> {
        self.send_with_priority(host, request, false).await
    }

    /// Sends one upstream request to `host` under the cluster's circuit breaker of the route's
    /// priority (`high`: HIGH, else DEFAULT): `max_requests`, held until the response body ends;
    /// `max_pending_requests` and `max_connections` in the pool; overflow is
    /// [`super::UpstreamError::Overflow`], 503 UO. Feeds outlier detection with the result.
    pub async fn send_with_priority(
        &self,
        host: &Host,
        request: http::Request<Body>,
        high: bool,
    ) -> Result<http::Response<Body>, super::UpstreamError> {
        let breaker = self.shared.breakers.for_priority(high);
        let guard = breaker
            .try_acquire(Resource::Requests)
            .inspect_err(|_| self.shared.stats.upstream_rq_pending_overflow.inc())?;
        let result = host.send_limited(request, Some(breaker)).await;
        if let Some(detector) = &self.shared.outlier
            && let Some(outcome) =
                outlier::Outcome::from_result(result.as_ref().map(|r| r.status()))
        {
            detector.record(host.address(), outcome);
        }
        result.map(|response| circuit_breaker::hold_until_body_ends(response, guard))
    }

    /// The cluster's circuit breakers (retry admission: `try_acquire_retry`).
    pub fn circuit_breakers(&self) -> &CircuitBreakerSet {
        &self.shared.breakers
    }

    /// The cluster's outlier detector, when `outlier_detection` is configured.
    pub fn outlier_detector(&self) -> Option<&Arc<Detector>> {
        self.shared.outlier.as_ref()
    }

    /// Counts an upstream response (or a locally generated one for an upstream failure) by
    /// status class: `upstream_rq_2xx`, `upstream_rq_5xx`... The router calls this once per
    /// request; [`Host::send`] does not.
    pub fn record_response(&self, status: http::StatusCode) {
        self.shared.stats.record_response(status);
    }

    /// The cluster's stats.
    pub fn stats(&self) -> &ClusterStats {
        &self.shared.stats
    }

    /// The current host set (hosts with health, weight, priority, locality) for `/clusters`.
    pub fn host_set(&self) -> Arc<HostSet> {
        self.shared.hosts.load_full()
    }

    /// Every host the cluster currently has (including ORIGINAL_DST's on-demand hosts).
    pub fn hosts(&self) -> Vec<Arc<Host>> {
        match &self.shared.original_dst {
            Some(hosts) => hosts.hosts(),
            None => self
                .shared
                .hosts
                .load()
                .entries()
                .iter()
                .map(|e| e.host.clone())
                .collect(),
        }
    }

    /// Whether the cluster has its first host set (EDS arrived, DNS resolved once).
    pub fn is_warm(&self) -> bool {
        *self.shared.warm.borrow()
    }

    /// Waits until the cluster is warm.
    pub async fn warmed(&self) {
        let mut rx = self.shared.warm.subscribe();
        let _ = rx.wait_for(|warm| *warm).await;
    }

    /// Applies a (new) EDS assignment; a no-op when it equals the one in force.
    pub(crate) fn set_assignment(&self, assignment: Option<Arc<LoadAssignment>>) {
        let mut current = self.shared.lock_assignment();
        let unchanged = match (&*current, &assignment) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || **a == **b,
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return;
        }
        match &assignment {
            Some(la) => self.shared.apply(la, &Resolved::new(), &[]),
            // The assignment was withdrawn: Envoy keeps the last hosts until a new one arrives.
            None => return,
        }
        *current = assignment;
    }
}

impl Shared {
    fn lock_assignment(&self) -> std::sync::MutexGuard<'_, Option<Arc<LoadAssignment>>> {
        self.assignment.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Builds and swaps in the host set for `la`, reusing current (and donor) hosts by address
    /// and transport so their pools and counters carry over.
    fn apply(&self, la: &LoadAssignment, resolved: &Resolved, donors: &[Arc<Host>]) {
        let current = self.hosts.load();
        let mut reuse: HashMap<(SocketAddr, TransportSocket), Arc<Host>> = donors
            .iter()
            .chain(current.entries().iter().map(|e| &e.host))
            .map(|h| ((h.address(), h.transport()), h.clone()))
            .collect();
        let mut entries = Vec::new();
        for locality in &la.localities {
            for endpoint in &locality.endpoints {
                let (addresses, hostname) = match &endpoint.address {
                    EndpointAddress::Ip(addr) => (vec![*addr], endpoint.hostname.clone()),
                    EndpointAddress::Hostname { host, port } => {
                        let ips = resolved
                            .get(&(host.clone(), *port))
                            .cloned()
                            .unwrap_or_default();
                        let name = if endpoint.hostname.is_empty() {
                            host.clone()
                        } else {
                            endpoint.hostname.clone()
                        };
                        (
                            ips.into_iter()
                                .map(|ip| SocketAddr::new(ip, *port))
                                .collect(),
                            name,
                        )
                    }
                };
                let transport = self
                    .config
                    .transport
                    .for_endpoint(&endpoint.transport_socket_match);
                for address in addresses {
                    let host = reuse
                        .entry((address, transport))
                        .or_insert_with(|| {
                            Arc::new(Host::new(
                                address,
                                hostname.clone(),
                                transport,
                                self.settings.clone(),
                                self.stats.clone(),
                            ))
                        })
                        .clone();
                    entries.push(HostEntry {
                        host,
                        weight: endpoint.weight,
                        health: endpoint.health,
                        priority: locality.priority,
                        locality: locality.locality.clone(),
                        locality_weight: locality.weight,
                    });
                }
            }
        }
        let set = HostSet::new(
            entries,
            &self.config.lb_policy,
            self.config.healthy_panic_threshold,
            la.overprovisioning_factor,
            self.config.locality_weighted,
        );
        self.apply_set(set);
    }

    fn apply_set(&self, set: HostSet) {
        let (healthy, total) = set.membership();
        self.stats.membership_healthy.set(healthy as i64);
        self.stats.membership_total.set(total as i64);
        self.stats.update_success.inc();
        tracing::debug!(cluster = %self.config.name, healthy, total, "host set updated");
        if let Some(detector) = &self.outlier {
            // Outlier state is keyed by address: hosts that remain keep it.
            detector.update_hosts(set.entries().iter().map(|e| e.host.address()));
        }
        self.hosts.store(Arc::new(set));
        self.warm.send_replace(true);
    }
}

/// Re-resolves a DNS cluster's hostnames on its refresh schedule and swaps the host set.
async fn dns_refresh(
    shared: Weak<Shared>,
    la: LoadAssignment,
    dns: DnsConfig,
    logical: bool,
    mut donors: Vec<Arc<Host>>,
) {
    let resolver = match DnsResolver::new(dns.lookup_family) {
        Ok(resolver) => Some(resolver),
        Err(error) => {
            tracing::warn!(%error, cluster = %la.cluster_name, "cannot create DNS resolver");
            None
        }
    };
    let mut names: Vec<(String, u16)> = la
        .localities
        .iter()
        .flat_map(|l| &l.endpoints)
        .filter_map(|e| match &e.address {
            EndpointAddress::Hostname { host, port } => Some((host.clone(), *port)),
            EndpointAddress::Ip(_) => None,
        })
        .collect();
    names.sort();
    names.dedup();
    let mut resolved = Resolved::new();
    let mut failures = 0u32;
    loop {
        let mut ttl: Option<Duration> = None;
        let mut failed = resolver.is_none();
        if let Some(resolver) = &resolver {
            for (host, port) in &names {
                match resolver.resolve(host).await {
                    Ok((mut ips, record_ttl)) => {
                        if logical {
                            ips.truncate(1);
                        }
                        resolved.insert((host.clone(), *port), ips);
                        ttl = match (ttl, record_ttl) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                    Err(error) => {
                        // Envoy keeps the last good addresses when a refresh fails.
                        tracing::warn!(%error, host = %host, "DNS resolution failed");
                        failed = true;
                    }
                }
            }
        }
        let Some(cluster) = shared.upgrade() else {
            return;
        };
        // The previous version's hosts are offered once, to the first resolution.
        cluster.apply(&la, &resolved, &std::mem::take(&mut donors));
        drop(cluster);
        failures = if failed {
            failures.saturating_add(1)
        } else {
            0
        };
        let mut wait = dns.next_refresh(failures, ttl);
        if let Some(jitter) = dns.jitter.filter(|j| !j.is_zero()) {
            wait += jitter.mul_f64(rand::rng().random::<f64>());
        }
        tokio::time::sleep(wait).await;
    }
}

/// Sweeps unused ORIGINAL_DST hosts every `interval`.
async fn original_dst_cleanup(shared: Weak<Shared>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(cluster) = shared.upgrade() else {
            return;
        };
        if let Some(hosts) = &cluster.original_dst {
            hosts.sweep();
        }
    }
}

/// Every active cluster, by name, as one snapshot sees them.
#[derive(Debug, Default)]
pub struct ClusterSet {
    clusters: BTreeMap<String, Arc<Cluster>>,
}

impl ClusterSet {
    pub(crate) fn new(clusters: BTreeMap<String, Arc<Cluster>>) -> Self {
        Self { clusters }
    }

    /// The cluster with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// All clusters, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<Cluster>)> {
        self.clusters.iter()
    }
}
