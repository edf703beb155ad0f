//! The control plane of a scenario: ferry-control, in-process, serving a temporary directory of
//! manifests in local mode, plus the manifests most scenarios share: a client pod (whose sidecar
//! sends the requests) and `ServiceEntry`s whose endpoints are test upstreams on `127.0.0.1`
//! ephemeral ports ([`service_entry`]), so any number of scenarios run in parallel.

use std::net::SocketAddr;
use std::path::Path;

use ferry_control::app::{self, ServeOptions};
use ferry_control::xds::debounce::DebounceConfig;

use crate::net;

/// A running Pod of namespace `default` at `ip`, labelled `app` and `version`.
pub fn pod(name: &str, app: &str, version: &str, ip: &str, service_account: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels: {{app: {app}, version: {version}}}
spec:
  serviceAccountName: {service_account}
  containers: [{{name: {app}, image: local/{app}}}]
status:
  phase: Running
  podIP: {ip}
  podIPs: [{{ip: {ip}}}]
"#
    )
}

/// The client pod (`app: client`, service account `client`) at instance IP `ip`: the pod whose
/// sidecar ([`super::Sidecar::client`]) sends a scenario's requests.
pub fn client_pod(ip: &str) -> String {
    pod("client", "client", "v1", ip, "client")
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
