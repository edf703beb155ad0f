//! ORIGINAL_DST hosts: made on demand for each original destination a connection was
//! redirected from, and removed after `cleanup_interval` without use (Envoy's semantics).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::host::Host;
use super::stats::ClusterStats;
use super::transport::TransportSocket;
use crate::pool::PoolSettings;

/// The on-demand hosts of one ORIGINAL_DST cluster.
#[derive(Debug)]
pub(crate) struct OriginalDstHosts {
    hosts: Mutex<HashMap<SocketAddr, (Arc<Host>, bool)>>,
    settings: Arc<PoolSettings>,
    transport: TransportSocket,
    stats: Arc<ClusterStats>,
}

impl OriginalDstHosts {
    pub(crate) fn new(
        settings: Arc<PoolSettings>,
        transport: TransportSocket,
        stats: Arc<ClusterStats>,
    ) -> Self {
        Self {
            hosts: Mutex::new(HashMap::new()),
            settings,
            transport,
            stats,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, (Arc<Host>, bool)>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host for `addr`, created on first use and marked used.
    pub(crate) fn host(&self, addr: SocketAddr) -> Arc<Host> {
        let mut hosts = self.lock();
        let entry = hosts.entry(addr).or_insert_with(|| {
            let host = Host::new(
                addr,
                String::new(),
                self.transport,
                self.settings.clone(),
                self.stats.clone(),
            );
            (Arc::new(host), true)
        });
        entry.1 = true;
        let host = entry.0.clone();
        let total = hosts.len() as i64;
        self.stats.membership_total.set(total);
        self.stats.membership_healthy.set(total);
        host
    }

    /// Drops hosts not used since the previous sweep; in-flight requests keep theirs alive.
    pub(crate) fn sweep(&self) {
        let mut hosts = self.lock();
        hosts.retain(|_, (_, used)| std::mem::take(used));
        let total = hosts.len() as i64;
        self.stats.membership_total.set(total);
        self.stats.membership_healthy.set(total);
    }

    /// Every current host.
    pub(crate) fn hosts(&self) -> Vec<Arc<Host>> {
        self.lock().values().map(|(h, _)| h.clone()).collect()
    }
}
