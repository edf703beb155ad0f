//! A generated mesh for the control-plane benchmarks: N Kubernetes Services with their
//! EndpointSlices, a VirtualService to edit, and `ferry-control serve` running on the directory.
//!
//! The manifests are what `kubectl get -o yaml` would give for a namespace of plain HTTP services
//! (port 80 to target port 8080, one EndpointSlice per service), so the config proxies receive is
//! shaped like Istio's for such a namespace: one outbound cluster and load assignment per service.
//! ferry-control runs as the real binary built next to the harness; its debug endpoint
//! (`/debug/syncz`) says which proxies have ACKed what.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ferry_tests::net;
use ferry_tests::poll::{self, PATIENCE};
use ferry_tests::process::{Process, ProcessError};
use serde_json::Value;

/// The file the VirtualService lives in (rewritten by each edit).
pub const VIRTUAL_SERVICE_FILE: &str = "bench-edit-virtual-service.yaml";

/// Starting ferry-control or reading its state failed.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// Writing manifests failed.
    #[error("writing manifests: {0}")]
    Io(#[from] std::io::Error),
    /// The process could not start.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// ferry-control did not get ready, or proxies did not sync, in time.
    #[error("{what}: {reason}; ferry-control log tail:\n{log}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The last observation.
        reason: String,
        /// The end of ferry-control's log.
        log: String,
    },
}

/// Writes `services` Services of `endpoints_per_service` endpoints each (plus the VirtualService
/// of generation 0) into `dir`.
pub fn write_manifests(
    dir: &Path,
    services: usize,
    endpoints_per_service: usize,
) -> std::io::Result<()> {
    let mut text = String::new();
    for i in 0..services {
        let _ = write!(
            text,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\n\
             spec:\n  clusterIP: 10.96.{}.{}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: svc-{i}-1, namespace: default, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n",
            i / 250,
            i % 250 + 1
        );
        for k in 0..endpoints_per_service {
            let e = i * endpoints_per_service + k;
            let _ = writeln!(
                text,
                "- {{addresses: [\"10.{}.{}.{}\"], conditions: {{ready: true}}}}",
                100 + e / 62_500,
                e / 250 % 250,
                e % 250 + 1
            );
        }
        text.push_str("---\n");
    }
    std::fs::write(dir.join("services.yaml"), text)?;
    write_virtual_service(dir, 0)
}

/// Writes the VirtualService on `svc-0` whose route timeout encodes `generation`, as an edit of
/// the file would.
pub fn write_virtual_service(dir: &Path, generation: u32) -> std::io::Result<()> {
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: bench-edit, namespace: default}}\n\
         spec:\n  hosts: [svc-0]\n  http:\n  - timeout: {}s\n    route:\n    - destination: {{host: svc-0}}\n",
        5 + generation
    );
    std::fs::write(dir.join(VIRTUAL_SERVICE_FILE), text)
}

/// A running `ferry-control serve --config-dir`.
#[derive(Debug)]
pub struct Control {
    process: Process,
    xds: SocketAddr,
    debug: SocketAddr,
}

impl Control {
    /// Starts ferry-control on `dir` (in local mode when sidecars run on this host) and waits
    /// until it serves its initial sync.
    pub async fn start(dir: &Path, local_mode: bool) -> Result<Control, MeshError> {
        let xds = net::loopback(net::free_port());
        let debug = net::loopback(net::free_port());
        let mut args = vec![
            "serve".to_owned(),
            "--config-dir".to_owned(),
            dir.to_string_lossy().into_owned(),
            "--xds-address".to_owned(),
            xds.to_string(),
            "--debug-address".to_owned(),
            debug.to_string(),
        ];
        if local_mode {
            args.push("--local-mode".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = Process::spawn_binary("ferry-control", &args)?;
        let control = Control {
            process,
            xds,
            debug,
        };
        let ready = poll::try_poll("ferry-control /ready", PATIENCE, || async {
            let reply = net::get(control.debug, "bench", "/ready")
                .await
                .map_err(|e| e.to_string())?;
            if reply.status.is_success() {
                Ok(())
            } else {
                Err(format!("status {}", reply.status))
            }
        })
        .await;
        ready.map_err(|e| control.timeout("ferry-control to get ready", e.to_string()))?;
        Ok(control)
    }

    /// The ADS address.
    pub fn xds(&self) -> SocketAddr {
        self.xds
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `/debug/syncz`: one entry per connected proxy.
    pub async fn syncz(&self) -> Result<Vec<Value>, String> {
        let reply = net::get(self.debug, "bench", "/debug/syncz")
            .await
            .map_err(|e| e.to_string())?;
        match serde_json::from_slice(&reply.body) {
            Ok(Value::Array(list)) => Ok(list),
            Ok(other) => Err(format!("syncz is not a list: {other}")),
            Err(e) => Err(format!("syncz: {e}")),
        }
    }

    /// Waits until `count` proxies whose node id starts with `prefix` are connected and have
    /// ACKed everything they were sent of all four types (CDS, EDS, LDS, RDS).
    pub async fn wait_synced(
        &self,
        prefix: &str,
        count: usize,
        within: Duration,
    ) -> Result<(), MeshError> {
        let synced = poll::try_poll("proxies to sync", within, || async {
            let list = self.syncz().await?;
            let done = list
                .iter()
                .filter(|c| c["proxy"].as_str().is_some_and(|p| p.starts_with(prefix)))
                .filter(|c| is_fully_synced(c))
                .count();
            if done >= count {
                Ok(())
            } else {
                Err(format!("{done} of {count} proxies synced"))
            }
        })
        .await;
        synced.map_err(|e| {
            let reason = e.last_error.clone().unwrap_or_else(|| e.to_string());
            self.timeout(&format!("{count} proxies to sync"), reason)
        })
    }

    fn timeout(&self, what: &str, reason: String) -> MeshError {
        let log = self.process.log();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        MeshError::Timeout {
            what: what.to_owned(),
            reason,
            log: tail.join("\n"),
        }
    }
}

/// Whether a `/debug/syncz` entry has ACKed all four types.
pub fn is_fully_synced(connection: &Value) -> bool {
    let types = &connection["types"];
    connection["synced"] == Value::Bool(true)
        && ["CDS", "EDS", "LDS", "RDS"].iter().all(|t| {
            types[t]["acked_version"]
                .as_str()
                .is_some_and(|v| !v.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_have_one_service_and_slice_per_service() {
        let dir = tempfile::tempdir().unwrap();
        write_manifests(dir.path(), 300, 5).unwrap();
        let text = std::fs::read_to_string(dir.path().join("services.yaml")).unwrap();
        assert_eq!(text.matches("kind: Service\n").count(), 300);
        assert_eq!(text.matches("kind: EndpointSlice\n").count(), 300);
        assert_eq!(text.matches("- {addresses:").count(), 1500);
        // Addresses are unique.
        let addresses: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("- {addresses: [\""))
            .collect();
        assert_eq!(addresses.len(), 1500);
        assert!(text.contains("clusterIP: 10.96.1.50"), "svc-299");
    }

    #[test]
    fn an_edit_changes_the_route_timeout() {
        let dir = tempfile::tempdir().unwrap();
        write_virtual_service(dir.path(), 3).unwrap();
        let text = std::fs::read_to_string(dir.path().join(VIRTUAL_SERVICE_FILE)).unwrap();
        assert!(text.contains("timeout: 8s"), "{text}");
    }

    #[test]
    fn a_connection_is_synced_only_with_all_four_types_acked() {
        let acked = serde_json::json!({"acked_version": "v1"});
        let mut c = serde_json::json!({
            "synced": true,
            "types": {"CDS": acked, "EDS": acked, "LDS": acked, "RDS": acked},
        });
        assert!(is_fully_synced(&c));
        c["types"]["RDS"]["acked_version"] = Value::Null;
        assert!(!is_fully_synced(&c));
    }
}
