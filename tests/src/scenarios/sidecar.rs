//! The sidecar a scenario runs against, either kind behind one handle: the real Envoy process or
//! ferry-proxy in-process, started from the same bootstrap text, with the few things the
//! scenarios read from it (a listener's address, counters, rejected updates).

use std::net::SocketAddr;

use crate::envoy::Envoy;
use crate::poll::{PATIENCE, poll_until};

/// Which sidecar the scenarios run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarKind {
    /// The real Envoy 1.40 (skipped when missing, except under `CI`).
    Envoy,
    /// ferry-proxy, in-process, from the same bootstrap text Envoy gets.
    Ferry,
}

/// A running sidecar of either kind.
pub enum Sidecar {
    /// A real Envoy process.
    Envoy(Envoy),
    /// ferry-proxy in this process.
    Ferry(ferry_proxy::app::Running),
}

impl Sidecar {
    /// Starts a sidecar of `kind` on `bootstrap`; `None` when Envoy is missing outside CI.
    pub async fn start(kind: SidecarKind, bootstrap: &str) -> Option<Sidecar> {
        match kind {
            SidecarKind::Envoy => Envoy::start(bootstrap).await.map(Sidecar::Envoy),
            SidecarKind::Ferry => {
                let bootstrap = xds_proto::json::from_yaml_str(bootstrap)
                    .expect("the sidecar bootstrap parses");
                let running = ferry_proxy::app::start(bootstrap)
                    .await
                    .expect("ferry-proxy starts");
                Some(Sidecar::Ferry(running))
            }
        }
    }

    /// The bound address of the listener `name`, once it is bound.
    pub async fn wait_listener(&self, name: &str) -> SocketAddr {
        match self {
            Sidecar::Envoy(envoy) => envoy.wait_listener(name).await,
            Sidecar::Ferry(running) => {
                poll_until(&format!("ferry-proxy listener {name}"), PATIENCE, || {
                    let addr = running.listener_addr(name);
                    async move { addr }
                })
                .await
            }
        }
    }

    /// The sidecar's own `update_rejected` counters that are not zero, as `name: value` lines.
    /// Envoy has one per type from the start; ferry-proxy creates them on the first rejection.
    pub async fn rejected_updates(&self) -> Vec<String> {
        let counters: Vec<(String, u64)> = match self {
            Sidecar::Envoy(envoy) => {
                let stats = envoy
                    .admin_get("/stats?filter=update_rejected")
                    .await
                    .expect("Envoy's stats")
                    .text();
                let counters: Vec<(String, u64)> = stats
                    .lines()
                    .filter_map(|line| {
                        let (name, value) = line.rsplit_once(": ")?;
                        Some((name.to_owned(), value.trim().parse().ok()?))
                    })
                    .collect();
                assert!(
                    counters.len() >= 3,
                    "too few update_rejected stats: {stats}"
                );
                counters
            }
            Sidecar::Ferry(running) => running
                .stats
                .counters()
                .into_iter()
                .filter(|(name, _)| name.contains("update_rejected"))
                .collect(),
        };
        counters
            .into_iter()
            .filter(|(_, value)| *value != 0)
            .map(|(name, value)| format!("{name}: {value}"))
            .collect()
    }

    /// The value of the counter `name` (e.g. `cluster.NAME.upstream_rq_timeout`), 0 when absent.
    pub async fn counter(&self, name: &str) -> u64 {
        match self {
            Sidecar::Envoy(envoy) => {
                let stat = name.rsplit('.').next().unwrap_or(name);
                envoy
                    .admin_get(&format!("/stats?filter={stat}"))
                    .await
                    .expect("Envoy's stats")
                    .text()
                    .lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
                    .and_then(|value| value.trim().parse().ok())
                    .unwrap_or(0)
            }
            Sidecar::Ferry(running) => running
                .stats
                .counters()
                .into_iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, value)| value),
        }
    }

    /// Stops the sidecar, closing its ADS stream (an in-process ferry-proxy's tasks would
    /// otherwise outlive the handle and keep the control plane's shutdown waiting).
    pub async fn stop(self) {
        match self {
            Sidecar::Envoy(envoy) => drop(envoy),
            Sidecar::Ferry(running) => running.shutdown(std::time::Duration::ZERO).await,
        }
    }

    /// Envoy's log (ferry-proxy logs through this process's tracing).
    pub fn log(&self) -> String {
        match self {
            Sidecar::Envoy(envoy) => envoy.log(),
            Sidecar::Ferry(_) => String::new(),
        }
    }
}
