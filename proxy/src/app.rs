//! The application: from flags or a bootstrap to a running proxy (stats store, cluster manager,
//! config store seeded with the static resources, listeners), and the lifecycle around it:
//! SIGTERM stops accepting, lets in-flight requests finish up to the drain time, then exits.
//!
//! [`start`] is what tests and `main` share: it returns once every static listener is bound, and
//! [`Running::listener_addr`] reports the real port of listeners configured on port 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use xds_proto::envoy::config::bootstrap::v3::Bootstrap;

use crate::admin::{AdminState, Lifecycle};
use crate::bootstrap::{self, BootstrapError, SidecarIdentity};
use crate::cluster::ClusterManager;
use crate::listener::manager::ListenerManager;
use crate::snapshot::ConfigStore;
use crate::stats::Store;
use crate::xds::Tracker;

/// Command-line flags (Envoy's names where Envoy has one).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ferry-proxy",
    about = "Ferry's sidecar: an L7 proxy configured over xDS v3"
)]
pub struct Options {
    /// Envoy v3 bootstrap file (YAML or JSON).
    #[arg(short = 'c', long = "config-path")]
    pub config_path: Option<PathBuf>,
    /// xDS server `host:port` when there is no bootstrap file.
    #[arg(long, env = "XDS_ADDRESS")]
    pub xds_address: Option<String>,
    /// Node id (default: Istio's `sidecar~IP~POD.NS~NS.svc.cluster.local`).
    #[arg(long)]
    pub node_id: Option<String>,
    /// Pod namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Pod name.
    #[arg(long, env = "POD_NAME", default_value = "ferry-proxy")]
    pub pod_name: String,
    /// Pod IP.
    #[arg(long, env = "INSTANCE_IP", default_value = "127.0.0.1")]
    pub instance_ip: String,
    /// Service account.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    pub service_account: String,
    /// Pod labels, `k=v,k2=v2`.
    #[arg(long, value_parser = parse_labels, default_value = "")]
    pub labels: BTreeMap<String, String>,
    /// Admin address when there is no bootstrap file.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_address: SocketAddr,
    /// Worker threads (default: the container's CPU limit).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// How long in-flight requests may take to finish after SIGTERM, and how long the
    /// `tcp_proxy` connections of an updated or removed listener live on (`5s`, `500ms`, or
    /// seconds).
    #[arg(long = "drain-time", alias = "drain-time-s", value_parser = parse_duration, default_value = "5s")]
    pub drain_time: Duration,
    /// Log filter (`info`, `debug`, `ferry_proxy=trace`...); `RUST_LOG` wins when set.
    #[arg(short = 'l', long, default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    pub log_format: String,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .filter(|kv| !kv.trim().is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("label {kv:?} is not k=v"))
        })
        .collect()
}

/// Parses `5s`, `500ms`, `2m` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unknown unit {unit:?}")),
    }
}

impl Options {
    /// The bootstrap these options describe.
    pub fn bootstrap(&self) -> Result<Bootstrap, BootstrapError> {
        if let Some(path) = &self.config_path {
            return bootstrap::from_file(path);
        }
        let xds_address = self.xds_address.clone().ok_or(BootstrapError::NoConfig)?;
        bootstrap::sidecar(&SidecarIdentity {
            xds_address,
            node_id: self.node_id.clone(),
            namespace: self.namespace.clone(),
            pod_name: self.pod_name.clone(),
            instance_ip: self.instance_ip.clone(),
            service_account: self.service_account.clone(),
            labels: self.labels.clone(),
            admin_address: self.admin_address,
        })
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The bootstrap is unusable.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// A static resource or the ADS settings were refused.
    #[error(transparent)]
    Invalid(#[from] crate::xds::InvalidBootstrap),
    /// The admin address is unusable.
    #[error(transparent)]
    AdminAddress(#[from] crate::admin::InvalidAdminAddress),
    /// The admin server could not bind.
    #[error("cannot bind admin server: {0}")]
    AdminBind(std::io::Error),
    /// The bootstrap's `tracing` is refused.
    #[error("bootstrap {0}")]
    Tracing(#[from] crate::tracers::InvalidTracing),
    /// The worker runtime stopped before the listeners were bound.
    #[error("worker runtime stopped before the listeners were bound: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    /// The stats store.
    pub stats: Arc<Store>,
    /// The config store (the xDS client applies updates here).
    pub store: Arc<ConfigStore>,
    /// The listener manager.
    pub listeners: Arc<ListenerManager>,
    /// What the xDS side accepted (`/config_dump`, readiness).
    pub tracker: Arc<Tracker>,
    /// Shutdown and drain requests (SIGTERM, `/quitquitquit`, `/drain_listeners`).
    pub lifecycle: Lifecycle,
    /// The admin server's bound address, when the bootstrap has an `admin` block.
    pub admin_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// The bound address of a listener, by name.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.listener_addr(name)
    }

    /// Stops accepting, lets in-flight requests finish for up to `drain_time`, then returns;
    /// `tcp_proxy` connections are closed when `drain_time` ends.
    pub async fn shutdown(self, drain_time: Duration) {
        self.tracker.set_draining();
        self.listeners.set_drain_time(drain_time);
        self.listeners.drain_all();
        if tokio::time::timeout(drain_time, self.listeners.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                drain_ms = drain_time.as_millis() as u64,
                "drain time over, closing remaining connections"
            );
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the proxy from a bootstrap: static resources validated and published, the ADS client
/// started when there are dynamic resources, the admin server bound when there is an `admin`
/// block, and every listener of the first snapshot bound before returning. Everything runs on
/// the current runtime (see [`start_on`] for a separate worker runtime).
pub async fn start(bootstrap: Bootstrap) -> Result<Running, StartError> {
    start_on(bootstrap, tokio::runtime::Handle::current()).await
}

/// [`start`] with the data path on `workers`: the listeners are bound and accept there, so
/// every connection, request and upstream connection runs on that runtime, while the xDS
/// client, the admin server and the lifecycle stay on the current one. This is Envoy's split of
/// a main thread (xDS, admin) from its worker threads (`main.rs` gives the worker its own
/// single-threaded runtime for `--concurrency 1`).
pub async fn start_on(
    bootstrap: Bootstrap,
    workers: tokio::runtime::Handle,
) -> Result<Running, StartError> {
    let admin_address = crate::admin::address(&bootstrap)?;
    let stats = Arc::new(Store::default());
    let store = Arc::new(ConfigStore::new(ClusterManager::new(stats.clone())));
    let node = bootstrap
        .node
        .as_ref()
        .map(|n| crate::tracers::LocalNode {
            id: Arc::from(n.id.as_str()),
            cluster: Arc::from(n.cluster.as_str()),
        })
        .unwrap_or_default();
    // Deprecated in Envoy in favour of the HCM's provider, but still honoured by it.
    #[allow(deprecated)]
    let default_tracer = match &bootstrap.tracing {
        Some(t) => crate::tracers::config::bootstrap_provider(t)?,
        None => None,
    };
    let (tracker, client) = crate::xds::start(Arc::new(bootstrap), store.clone(), stats.clone())?;
    let lifecycle = Lifecycle::new();
    let listeners = ListenerManager::with_node(store.clone(), stats.clone(), node, default_tracer);
    // Bound from the worker runtime, so the sockets (and the accept loops spawned with them)
    // belong to its reactor.
    let first = listeners.clone();
    workers
        .spawn(async move { first.reconcile().await })
        .await?;
    let mut tasks = vec![workers.spawn(listeners.clone().run())];
    tasks.extend(client);
    let admin_addr = match admin_address {
        Some(address) => {
            let bound = listeners.clone();
            let state = AdminState::new(tracker.clone(), lifecycle.clone())
                .with_listener_addrs(move |name| bound.listener_addr(name));
            let (bound, task) = crate::admin::serve(address, state)
                .await
                .map_err(StartError::AdminBind)?;
            tasks.push(task);
            Some(bound)
        }
        None => None,
    };
    let mut drain = lifecycle.drain();
    let drained = listeners.clone();
    tasks.push(tokio::spawn(async move {
        while drain.changed().await.is_ok() {
            if drain.borrow().is_some() {
                // Only whole-proxy draining exists; inbound-only drains everything too, the
                // conservative reading of Envoy's `/drain_listeners?inboundonly`.
                drained.drain_all();
            }
        }
    }));
    Ok(Running {
        stats,
        store,
        listeners,
        tracker,
        lifecycle,
        admin_addr,
        tasks,
    })
}

/// Runs `bootstrap` (from [`Options::bootstrap`]) until SIGTERM or SIGINT, then drains and
/// returns; the data path runs on `workers` (see [`start_on`]).
pub async fn run(
    options: Options,
    bootstrap: Bootstrap,
    workers: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let node = bootstrap
        .node
        .as_ref()
        .map(|n| n.id.clone())
        .unwrap_or_default();
    let running = start_on(bootstrap, workers).await?;
    running.listeners.set_drain_time(options.drain_time);
    crate::memory::release_startup_code();
    tracing::info!(node, "ferry-proxy started");
    let mut quit = running.lifecycle.shutdown();
    tokio::select! {
        () = shutdown_signal() => {}
        _ = quit.wait_for(|q| *q) => {}
    }
    tracing::info!(
        drain_ms = options.drain_time.as_millis() as u64,
        "shutting down"
    );
    running.shutdown(options.drain_time).await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_parse() {
        let o = Options::try_parse_from([
            "ferry-proxy",
            "--xds-address",
            "127.0.0.1:15010",
            "--labels",
            "app=reviews,version=v1",
            "--drain-time",
            "500ms",
        ])
        .unwrap();
        assert_eq!(o.labels["version"], "v1");
        assert_eq!(o.drain_time, Duration::from_millis(500));
        let b = o.bootstrap().unwrap();
        assert!(b.node.unwrap().id.starts_with("sidecar~"));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
    }

    /// `start_on` binds the listeners on the worker runtime: requests are served while it
    /// runs, and the listening socket goes away with it, while the main runtime lives on.
    #[test]
    fn start_on_serves_listeners_from_the_worker_runtime() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let yaml = r#"
static_resources:
  listeners:
  - name: worker
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: worker
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /}
                direct_response: {status: 200, body: {inline_string: from-worker}}
"#;
        let bootstrap: Bootstrap = xds_proto::json::from_yaml_str(yaml).unwrap();
        let worker = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handle = worker.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            worker.block_on(async {
                let _ = stopped.await;
            });
        });
        let main = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        main.block_on(async {
            let running = start_on(bootstrap, handle).await.unwrap();
            let addr = running.listener_addr("worker").unwrap();
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            client
                .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut response = String::new();
            client.read_to_string(&mut response).await.unwrap();
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            assert!(response.ends_with("from-worker"), "{response}");
            drop(stop);
            thread.join().unwrap();
            // The socket belonged to the worker runtime's reactor and closed with it.
            assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        });
    }
}
