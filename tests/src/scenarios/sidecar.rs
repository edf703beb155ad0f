//! The sidecar a scenario runs against, either kind behind one handle: the real Envoy 1.40 or the
//! `ferry-proxy` binary, each its own process started from the very same Istio-shaped bootstrap
//! text, each read through the same Envoy admin API (`/ready`, `/listeners`, `/clusters`,
//! `/stats`). Nothing in a scenario depends on which kind it holds, so a difference between
//! them is a failing assertion, not a difference between two harnesses.
//!
//! ferry-proxy runs as its binary rather than in the test's process so that, like Envoy, it has
//! its own runtime (`--concurrency 1` for both) and does not share the test's two workers with
//! the test's client and upstreams, which matters for timing-sensitive resilience scenarios.
//! Its admin server listens on `INSTANCE_IP:15000` (each sidecar of a scenario has its own
//! instance IP); Envoy's on an ephemeral port it reports itself.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Method;

use super::ControlPlane;
use crate::envoy::{self, Envoy, Pod};
use crate::net::{self, ClientError, Protocol, Reply};
use crate::poll::{PATIENCE, poll_until, try_poll};
use crate::process::Process;

/// Which sidecar a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarKind {
    /// The real Envoy 1.40 (skipped when missing, except under `CI`).
    Envoy,
    /// The `ferry-proxy` binary (build it first: `cargo build -p ferry-proxy --bins`).
    Ferry,
}

enum Child {
    Envoy(Envoy),
    /// The process, and the directory holding its bootstrap file while it runs.
    Ferry {
        process: Process,
        _bootstrap: tempfile::TempDir,
    },
}

/// A running sidecar of either kind, its `virtualOutbound` listener bound.
pub struct Sidecar {
    kind: SidecarKind,
    admin: SocketAddr,
    outbound: SocketAddr,
    child: Child,
}

impl Sidecar {
    /// Starts a sidecar of `kind` on `bootstrap` (an Istio sidecar bootstrap, see
    /// [`envoy::pod_bootstrap`]) and waits until it is ready and its `virtualOutbound` listener
    /// is bound; `None` when Envoy is wanted but missing outside CI (under CI that fails).
    pub async fn start(kind: SidecarKind, bootstrap: &str) -> Option<Sidecar> {
        let (admin, child) = match kind {
            SidecarKind::Envoy => {
                let envoy = Envoy::start(bootstrap).await?;
                (envoy.admin_addr(), Child::Envoy(envoy))
            }
            SidecarKind::Ferry => {
                let (admin, process, dir) = start_ferry(bootstrap);
                (
                    admin,
                    Child::Ferry {
                        process,
                        _bootstrap: dir,
                    },
                )
            }
        };
        let mut sidecar = Sidecar {
            kind,
            admin,
            outbound: admin,
            child,
        };
        if kind == SidecarKind::Ferry {
            sidecar.wait_ready().await;
        }
        sidecar.outbound = sidecar.wait_listener("virtualOutbound").await;
        Some(sidecar)
    }

    /// The sidecar of the client pod ([`super::client_pod`]) at instance IP `ip`, configured by
    /// `control` over state-of-the-world ADS.
    pub async fn client(kind: SidecarKind, control: &ControlPlane, ip: &str) -> Option<Sidecar> {
        let node_id = format!("sidecar~{ip}~client.default~default.svc.cluster.local");
        let pod = Pod {
            app: "client",
            version: "v1",
            service_account: "client",
        };
        let bootstrap = envoy::pod_bootstrap("GRPC", &node_id, ip, &pod, control.xds_address());
        Sidecar::start(kind, &bootstrap).await
    }

    /// Which kind it is.
    pub fn kind(&self) -> SidecarKind {
        self.kind
    }

    /// The `virtualOutbound` listener: an explicit HTTP proxy in local mode.
    pub fn outbound(&self) -> SocketAddr {
        self.outbound
    }

    /// `GET` on the admin server, e.g. `admin_get("/config_dump")`.
    pub async fn admin_get(&self, path: &str) -> Result<Reply, ClientError> {
        net::get(self.admin, &self.admin.to_string(), path).await
    }

    async fn wait_ready(&self) {
        let ready = try_poll("ferry-proxy ready", PATIENCE, || async {
            let reply = self.admin_get("/ready").await.map_err(|e| e.to_string())?;
            match reply.status {
                http::StatusCode::OK => Ok(()),
                status => Err(format!("{status}: {}", reply.text())),
            }
        })
        .await;
        if let Err(timeout) = ready {
            panic!("{timeout}\n{}", self.log());
        }
    }

    /// The bound address of the listener `name`, from the admin `/listeners`, once it is bound.
    pub async fn wait_listener(&self, name: &str) -> SocketAddr {
        poll_until(
            &format!("listener {name} on {:?}", self.kind),
            PATIENCE,
            || envoy::admin_listener_addr(self.admin, name),
        )
        .await
    }

    /// Sends one request for `http://{authority}{path}` through the sidecar's `virtualOutbound`.
    pub async fn send(
        &self,
        method: Method,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        let mut request = net::request(method, authority, path, headers)?;
        *request.body_mut() = body;
        net::send(self.outbound, Protocol::Http1Proxy, request).await
    }

    /// `GET http://{authority}{path}` through the sidecar; panics when no answer comes.
    pub async fn get(&self, authority: &str, path: &str) -> Reply {
        self.send(Method::GET, authority, path, &[], Bytes::new())
            .await
            .expect("an answer through the sidecar")
    }

    /// Waits until the sidecar's `/clusters` lists `addr` as a host of `cluster` (Istio's
    /// `outbound|9080||HOST` name): the service's cluster and endpoints arrived; the listener
    /// and its routes come with them in ferry-control's first push.
    pub async fn wait_endpoint(&self, cluster: &str, addr: SocketAddr) {
        let needle = format!("{cluster}::{addr}::");
        poll_until(&format!("{needle} in /clusters"), PATIENCE, || async {
            let reply = self.admin_get("/clusters").await.ok()?;
            reply.text().contains(&needle).then_some(())
        })
        .await;
    }

    /// A stat from the admin `/stats` (Envoy's text format, `name: value`); `None` when the
    /// sidecar does not have it.
    pub async fn stat(&self, name: &str) -> Option<i64> {
        let reply = self.admin_get("/stats").await.ok()?;
        reply.text().lines().find_map(|line| {
            let (n, v) = line.rsplit_once(": ")?;
            (n == name).then(|| v.trim().parse().ok())?
        })
    }

    /// The value of the counter `name` (e.g. `cluster.NAME.upstream_rq_timeout`), 0 when absent.
    pub async fn counter(&self, name: &str) -> u64 {
        self.stat(name)
            .await
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0)
    }

    /// The sidecar's own `update_rejected` counters that are not zero, as `name: value` lines.
    /// Envoy has one per type from the start; ferry-proxy creates them on the first rejection.
    pub async fn rejected_updates(&self) -> Vec<String> {
        let stats = self
            .admin_get("/stats?filter=update_rejected")
            .await
            .expect("the sidecar's stats")
            .text();
        let counters: Vec<(&str, u64)> = stats
            .lines()
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(": ")?;
                Some((name, value.trim().parse().ok()?))
            })
            .collect();
        if self.kind == SidecarKind::Envoy {
            assert!(
                counters.len() >= 3,
                "too few update_rejected stats: {stats}"
            );
        }
        counters
            .into_iter()
            .filter(|(_, value)| *value != 0)
            .map(|(name, value)| format!("{name}: {value}"))
            .collect()
    }

    /// The proxy's log so far, for failure messages.
    pub fn log(&self) -> String {
        match &self.child {
            Child::Envoy(envoy) => envoy.log(),
            Child::Ferry { process, .. } => process.log(),
        }
    }
}

/// Spawns `ferry-proxy -c BOOTSTRAP` with the admin server moved to `INSTANCE_IP:15000`; returns
/// that address, the process and the directory holding the bootstrap file.
fn start_ferry(bootstrap: &str) -> (SocketAddr, Process, tempfile::TempDir) {
    let mut config: serde_json::Value =
        serde_yaml_ng::from_str(bootstrap).expect("the sidecar bootstrap parses");
    let ip = config["node"]["metadata"]["INSTANCE_IPS"]
        .as_str()
        .and_then(|ips| ips.split(',').next())
        .expect("the bootstrap names the instance IP (node.metadata.INSTANCE_IPS)")
        .to_owned();
    let admin: SocketAddr = format!("{ip}:15000").parse().expect("admin address");
    config["admin"] = serde_json::json!({
        "address": {"socket_address": {"address": ip, "port_value": 15000}}
    });
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, config.to_string()).expect("write the bootstrap");
    let process = Process::spawn_binary(
        "ferry-proxy",
        &[
            "-c",
            &path.to_string_lossy(),
            "--concurrency",
            "1",
            "--drain-time",
            "1s",
        ],
    )
    .expect("ferry-proxy starts (build it first: cargo build -p ferry-proxy --bins)");
    (admin, process, dir)
}
