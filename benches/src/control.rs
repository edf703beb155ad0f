//! The control-plane measures of issue #5, each from a generated mesh served by ferry-control:
//!
//! - [`scale`]: each proxy's RSS with a small and a large config (1,000 services, 5,000
//!   endpoints), one Envoy and one ferry-proxy fed over ADS, so the growth per 1,000 services
//!   can be compared;
//! - [`push`]: the time from a VirtualService edit (a file write in the config dir) until every
//!   one of N connected sidecars has ACKed the new routes, and ferry-control's memory per
//!   connected proxy.
//!
//! Proxies and ferry-control are started fresh for every config so the figures are those of a
//! process that started with it, not of one that also grew through a previous config.

use std::time::Duration;

use ferry_tests::envoy::{self, Envoy, EnvoyError};
use ferry_tests::net;
use ferry_tests::poll::PATIENCE;
use ferry_tests::process::{Process, ProcessError};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::measure;
use crate::mesh::{self, Control, MeshError};
use crate::sidecars;

/// A control-plane measure failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The mesh (manifests, ferry-control) failed.
    #[error(transparent)]
    Mesh(#[from] MeshError),
    /// Envoy failed to start.
    #[error(transparent)]
    Envoy(#[from] EnvoyError),
    /// ferry-proxy failed to start.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A temp dir could not be made.
    #[error("temp dir: {0}")]
    Io(#[from] std::io::Error),
    /// A process vanished before it was measured.
    #[error("{0} exited before its memory was read")]
    Gone(&'static str),
    /// Not every client ACKed an edit in time.
    #[error("edit {generation}: {acked} of {clients} clients ACKed within {within:?}")]
    Unacked {
        /// The edit.
        generation: u32,
        /// How many did.
        acked: usize,
        /// How many are connected.
        clients: usize,
        /// How long the harness waited.
        within: Duration,
    },
}

/// Resident memory (KiB) of each process with one config.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ConfigRss {
    /// Services in the config.
    pub services: usize,
    /// Endpoints in the config.
    pub endpoints: usize,
    /// Envoy's RSS.
    pub envoy_kib: u64,
    /// ferry-proxy's RSS.
    pub ferry_kib: u64,
    /// ferry-control's RSS.
    pub control_kib: u64,
}

/// RSS with the small and the large config.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ScaleResult {
    /// The small config.
    pub small: ConfigRss,
    /// The large config.
    pub large: ConfigRss,
}

impl ScaleResult {
    /// Growth in KiB per 1,000 services of `pick`'s RSS.
    pub fn growth_per_1000(&self, pick: impl Fn(&ConfigRss) -> u64) -> f64 {
        let services = self
            .large
            .services
            .saturating_sub(self.small.services)
            .max(1) as f64;
        (pick(&self.large) as f64 - pick(&self.small) as f64) * 1000.0 / services
    }
}

/// The loopback /24 prefix whose `.1` and `.2` are the instance IPs of the two measured sidecars
/// (local mode binds their listeners there); derived from the process id so that two harnesses
/// on one machine (a smoke run beside a full run) do not compete for the same addresses.
fn sidecar_prefix() -> String {
    let pid = std::process::id();
    format!("127.{}.{}.", 100 + pid % 100, (pid / 100) % 250)
}

/// Measures RSS with `small` and then `large` services of `endpoints_per_service` endpoints.
pub async fn scale(
    small: usize,
    large: usize,
    endpoints_per_service: usize,
) -> Result<ScaleResult, ControlError> {
    Ok(ScaleResult {
        small: config_rss(small, endpoints_per_service).await?,
        large: config_rss(large, endpoints_per_service).await?,
    })
}

async fn config_rss(
    services: usize,
    endpoints_per_service: usize,
) -> Result<ConfigRss, ControlError> {
    eprintln!("config RSS: {services} services");
    let dir = tempfile::tempdir()?;
    mesh::write_manifests(dir.path(), services, endpoints_per_service).map_err(MeshError::Io)?;
    let control = Control::start(dir.path(), true).await?;
    let node =
        |ip: &str, pod: &str| format!("sidecar~{ip}~{pod}.default~default.svc.cluster.local");
    let prefix = sidecar_prefix();
    let (envoy_ip, ferry_ip) = (format!("{prefix}1"), format!("{prefix}2"));
    let envoy = Envoy::try_start(&envoy::sidecar_bootstrap(
        "GRPC",
        &node(&envoy_ip, "bench-envoy"),
        &envoy_ip,
        control.xds(),
    ))
    .await?;
    let ferry_node = node(&ferry_ip, "bench-ferry");
    let admin = format!("127.0.0.1:{}", net::free_port());
    let xds = control.xds().to_string();
    let ferry = Process::spawn_binary(
        "ferry-proxy",
        &[
            "--xds-address",
            &xds,
            "--node-id",
            &ferry_node,
            "--instance-ip",
            &ferry_ip,
            "--namespace",
            "default",
            "--pod-name",
            "bench-ferry",
            "--labels",
            "app=bench-ferry",
            "--service-account",
            "bench-ferry",
            "--admin-address",
            &admin,
            "--concurrency",
            "1",
        ],
    )?;
    control
        .wait_synced(&format!("sidecar~{prefix}"), 2, PATIENCE)
        .await?;
    // ACKed is applied; give both a moment to finish warming before reading memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = |pid, name| {
        measure::sample(pid)
            .map(|s| s.rss_kib)
            .ok_or(ControlError::Gone(name))
    };
    Ok(ConfigRss {
        services,
        endpoints: services * endpoints_per_service,
        envoy_kib: rss(envoy.pid(), "envoy")?,
        ferry_kib: rss(ferry.pid(), "ferry-proxy")?,
        control_kib: rss(control.pid(), "ferry-control")?,
    })
}

/// What the push benchmark measured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PushResult {
    /// Connected clients.
    pub clients: usize,
    /// Services in the config.
    pub services: usize,
    /// Per edit: the time until every client had ACKed it.
    pub all_acked: Vec<Duration>,
    /// Per edit: the time until half the clients had ACKed it.
    pub half_acked: Vec<Duration>,
    /// ferry-control's RSS with no proxy connected (KiB).
    pub rss_idle_kib: u64,
    /// ferry-control's RSS with every client connected and synced (KiB).
    pub rss_connected_kib: u64,
    /// ferry-control's RSS with every client connected, after the edits were pushed (KiB).
    pub rss_after_edits_kib: u64,
}

impl PushResult {
    /// ferry-control's memory per connected proxy, in KiB.
    pub fn per_proxy_kib(&self) -> f64 {
        (self.rss_connected_kib as f64 - self.rss_idle_kib as f64) / self.clients.max(1) as f64
    }
}

/// Connects `clients` sidecars to ferry-control serving `services` services, then edits the
/// VirtualService `edits` times, timing each until every client has ACKed it.
pub async fn push(clients: usize, services: usize, edits: u32) -> Result<PushResult, ControlError> {
    eprintln!("push: {clients} clients, {services} services, {edits} edits");
    let dir = tempfile::tempdir()?;
    mesh::write_manifests(dir.path(), services, 5).map_err(MeshError::Io)?;
    let control = Control::start(dir.path(), false).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = |name| {
        measure::sample(control.pid())
            .map(|s| s.rss_kib)
            .ok_or(ControlError::Gone(name))
    };
    let rss_idle_kib = rss("ferry-control")?;
    let (edit_tx, edit_rx) = watch::channel(0u32);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for index in 0..clients {
        let (xds, edits, acks) = (control.xds(), edit_rx.clone(), ack_tx.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = sidecars::run(index, xds, edits, acks).await {
                eprintln!("bench sidecar {index}: {e}");
            }
        }));
    }
    control
        .wait_synced(sidecars::NODE_PREFIX, clients, PATIENCE)
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected_kib = rss("ferry-control")?;
    let mut result = PushResult {
        clients,
        services,
        rss_idle_kib,
        rss_connected_kib,
        ..PushResult::default()
    };
    let within = Duration::from_secs(30);
    for generation in 1..=edits {
        let edited = Instant::now();
        edit_tx.send_replace(generation);
        mesh::write_virtual_service(dir.path(), generation).map_err(MeshError::Io)?;
        let mut times = Vec::new();
        let deadline = edited + within;
        while times.len() < clients {
            match tokio::time::timeout_at(deadline, ack_rx.recv()).await {
                Ok(Some((g, at))) if g == generation => times.push(at - edited),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err(ControlError::Unacked {
                        generation,
                        acked: times.len(),
                        clients,
                        within,
                    });
                }
            }
        }
        times.sort();
        result.half_acked.push(times[times.len() / 2]);
        result.all_acked.push(times[times.len() - 1]);
        eprintln!(
            "edit {generation}: all {clients} ACKed after {:?}",
            times[times.len() - 1]
        );
        control
            .wait_synced(sidecars::NODE_PREFIX, clients, PATIENCE)
            .await?;
    }
    result.rss_after_edits_kib = rss("ferry-control")?;
    for task in tasks {
        task.abort();
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_addresses_are_loopback() {
        let ip: std::net::Ipv4Addr = format!("{}2", sidecar_prefix()).parse().unwrap();
        assert!(ip.is_loopback());
    }

    #[test]
    fn growth_is_per_thousand_services() {
        let at = |services, ferry_kib| ConfigRss {
            services,
            ferry_kib,
            ..ConfigRss::default()
        };
        let scale = ScaleResult {
            small: at(10, 10_000),
            large: at(1010, 14_000),
        };
        assert_eq!(scale.growth_per_1000(|c| c.ferry_kib), 4000.0);
    }

    #[test]
    fn memory_per_proxy_is_the_difference_over_the_clients() {
        let result = PushResult {
            clients: 100,
            rss_idle_kib: 20_000,
            rss_connected_kib: 25_000,
            ..PushResult::default()
        };
        assert_eq!(result.per_proxy_kib(), 50.0);
    }
}
