//! A one-client Istio mesh for scenario tests: ferry-control serving a temporary directory of
//! manifests in local mode (in-process), and one client sidecar configured by it over ADS,
//! either the real `ferry-proxy` binary or the real Envoy 1.40 from Istio's sidecar bootstrap.
//!
//! The services under test are `ServiceEntry`s whose endpoints are test upstreams on
//! `127.0.0.1` ephemeral ports ([`service_entry`]), so any number of them run in parallel.
//! Local mode: the client sidecar binds its own loopback address (`127.0.N.10`, one `N` per
//! test) and is used as an explicit HTTP proxy on its `virtualOutbound` port 15001.

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use ferry_control::app::{self, ServeOptions};
use ferry_control::xds::debounce::DebounceConfig;
use http::Method;

use crate::envoy::Envoy;
use crate::net::{self, Protocol, Reply};
use crate::poll::{PATIENCE, poll_until, try_poll};
use crate::process::Process;

/// The client pod's manifest for instance IP `ip`.
pub fn client_pod(ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: default
  labels: {{app: client, version: v1}}
spec:
  serviceAccountName: client
  containers: [{{name: client, image: local/client}}]
status:
  phase: Running
  podIP: {ip}
  podIPs: [{{ip: {ip}}}]
"#
    )
}

/// A mesh-internal `ServiceEntry` for `host` on port 9080 (HTTP) whose endpoints are `upstreams`
/// (each at its own port).
pub fn service_entry(name: &str, host: &str, upstreams: &[SocketAddr]) -> String {
    let endpoints: Vec<String> = upstreams
        .iter()
        .map(|a| format!("{{address: \"{}\", ports: {{http: {}}}}}", a.ip(), a.port()))
        .collect();
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{endpoints}]
"#,
        endpoints = endpoints.join(", ")
    )
}

/// ferry-control serving a temporary directory in local mode.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    running: Option<app::Running>,
}

impl ControlPlane {
    /// Writes `manifests` (file name, YAML) to a new directory and serves it.
    pub async fn start(manifests: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for (name, yaml) in manifests {
            std::fs::write(dir.path().join(name), yaml).expect("write a manifest");
        }
        let options = ServeOptions {
            config_dir: dir.path().to_owned(),
            kubernetes: false,
            xds_address: "127.0.0.1:0".parse().expect("address"),
            debug_address: "127.0.0.1:0".parse().expect("address"),
            local_mode: true,
            debounce: DebounceConfig::default(),
            mesh: Default::default(),
        };
        let running = app::serve(&options).await.expect("ferry-control starts");
        Self {
            dir,
            running: Some(running),
        }
    }

    /// Where ADS listens.
    pub fn xds_address(&self) -> SocketAddr {
        self.running().xds_address
    }

    /// The served directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The validation errors ferry-control reports (`/debug/errors`), as JSON text.
    pub async fn errors(&self) -> String {
        net::get(self.running().debug_address, "ferry", "/debug/errors")
            .await
            .map(|r| r.text())
            .unwrap_or_default()
    }

    /// The running control plane (its registry of connected proxies, its addresses).
    pub fn running(&self) -> &app::Running {
        self.running.as_ref().expect("running until dropped")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(running) = self.running.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                let _ = running.shutdown().await;
            });
        }
    }
}

/// Which proxy runs as the client sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    /// The `ferry-proxy` binary.
    Ferry,
    /// The real Envoy.
    Envoy,
}

enum Child {
    Ferry(Process),
    Envoy(Envoy),
}

/// The client's sidecar, ready to carry requests.
pub struct Sidecar {
    /// Which proxy it is.
    pub kind: Proxy,
    /// The explicit-proxy listener (`virtualOutbound`, `INSTANCE_IP:15001`).
    pub outbound: SocketAddr,
    admin: SocketAddr,
    child: Child,
}

impl Sidecar {
    /// Starts the client sidecar of `kind` on instance IP `ip`, configured by `control`; `None`
    /// when Envoy is wanted but not installed outside CI (under CI that fails).
    pub async fn start(kind: Proxy, control: &ControlPlane, ip: &str) -> Option<Self> {
        let node_id = format!("sidecar~{ip}~client.default~default.svc.cluster.local");
        let xds = control.xds_address();
        let sidecar = match kind {
            Proxy::Ferry => {
                let admin: SocketAddr = format!("{ip}:15000").parse().expect("admin address");
                let process = Process::spawn_binary(
                    "ferry-proxy",
                    &[
                        "--xds-address",
                        &xds.to_string(),
                        "--node-id",
                        &node_id,
                        "--instance-ip",
                        ip,
                        "--namespace",
                        "default",
                        "--pod-name",
                        "client",
                        "--labels",
                        "app=client,version=v1",
                        "--service-account",
                        "client",
                        "--admin-address",
                        &admin.to_string(),
                        "--concurrency",
                        "1",
                    ],
                )
                .expect("ferry-proxy starts (build it first: cargo build -p ferry-proxy --bins)");
                let outbound = format!("{ip}:15001").parse().expect("outbound address");
                Self {
                    kind,
                    outbound,
                    admin,
                    child: Child::Ferry(process),
                }
            }
            Proxy::Envoy => {
                let bootstrap = crate::envoy::sidecar_bootstrap("GRPC", &node_id, ip, xds);
                let envoy = Envoy::start(&bootstrap).await?;
                let outbound = envoy.wait_listener("virtualOutbound").await;
                Self {
                    kind,
                    outbound,
                    admin: envoy.admin_addr(),
                    child: Child::Envoy(envoy),
                }
            }
        };
        if kind == Proxy::Ferry {
            let ready = try_poll("ferry-proxy ready", PATIENCE, || async {
                let reply = net::get(sidecar.admin, "admin", "/ready")
                    .await
                    .map_err(|e| e.to_string())?;
                match reply.status {
                    http::StatusCode::OK => Ok(()),
                    status => Err(format!("{status}: {}", reply.text())),
                }
            })
            .await;
            if let Err(timeout) = ready {
                panic!("{timeout}\n{}", sidecar.log());
            }
        }
        Some(sidecar)
    }

    /// Sends one request for `http://{authority}{path}` through the sidecar.
    pub async fn send(
        &self,
        method: Method,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, net::ClientError> {
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
            let reply = net::get(self.admin, "admin", "/clusters").await.ok()?;
            reply.text().contains(&needle).then_some(())
        })
        .await;
    }

    /// A stat from the admin `/stats` (Envoy's text format, `name: value`).
    pub async fn stat(&self, name: &str) -> Option<i64> {
        let reply = net::get(self.admin, "admin", "/stats").await.ok()?;
        reply.text().lines().find_map(|line| {
            let (n, v) = line.rsplit_once(": ")?;
            (n == name).then(|| v.trim().parse().ok())?
        })
    }

    /// The proxy's log (ferry-proxy's output or Envoy's), for failure messages.
    pub fn log(&self) -> String {
        match &self.child {
            Child::Ferry(process) => process.log(),
            Child::Envoy(envoy) => envoy.log(),
        }
    }
}
