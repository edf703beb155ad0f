//! The `serve` command: sources -> model -> debounced push epochs -> ADS server, plus the debug
//! endpoint. [`start`] binds everything and returns the addresses, so tests run the real wiring
//! in-process on `127.0.0.1:0`; [`run`] is what `ferry-control serve` calls.
//!
//! Nothing is served before the sources' initial sync: the model channel carries `None` until
//! then, and ADS streams are held (accepted, subscriptions recorded, no responses).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::debug::{self, DebugState};
use crate::model::{Model, ModelError, ModelWarning};
use crate::source::SourceHandle;
use crate::source::dir::{DirError, watch_dir};
use crate::source::kubernetes::{KubeSourceError, kubernetes_source};
use crate::xds::debounce::{DebounceConfig, debounce};
use crate::xds::metrics::Metrics;
use crate::xds::{Generator, TranslateGenerator, XdsServer};

/// Flags of `ferry-control serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The directory of manifests to watch.
    pub config_dir: PathBuf,
    /// Watch the Kubernetes API (in-cluster config or kubeconfig) instead of `config_dir`.
    pub kubernetes: bool,
    /// Where ADS listens (istiod: 15010).
    pub xds_address: SocketAddr,
    /// Where the debug and metrics endpoint listens (istiod: 15014).
    pub debug_address: SocketAddr,
    /// Local mode: each sidecar's listeners bind to its own loopback instance IP.
    pub local_mode: bool,
    /// Push debouncing.
    pub debounce: DebounceConfig,
    /// Istio's MeshConfig (`--mesh-config`; Istio's defaults without it).
    pub mesh: crate::mesh_config::MeshConfig,
}

/// Why the control plane could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The ADS server failed.
    #[error("xDS server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The directory source could not start.
    #[error(transparent)]
    Source(#[from] DirError),
    /// The Kubernetes source could not start.
    #[error(transparent)]
    Kubernetes(#[from] KubeSourceError),
}

/// What the sources publish: the model (`None` until the initial sync) and the objects they
/// refuse (origin, kind, name, field path, reason).
#[derive(Debug, Clone)]
pub struct Sources {
    /// The validated model.
    pub models: watch::Receiver<Option<Arc<Model>>>,
    /// Current validation errors.
    pub errors: watch::Receiver<Arc<Vec<ModelError>>>,
}

/// The sending side of [`Sources`], for whatever feeds the server (a source handle, a test).
#[derive(Debug)]
pub struct SourcesFeed {
    /// Publishes a model; the first `Some` is the initial sync.
    pub models: watch::Sender<Option<Arc<Model>>>,
    /// Publishes the current validation errors.
    pub errors: watch::Sender<Arc<Vec<ModelError>>>,
}

impl Sources {
    /// Channels with nothing synced yet.
    pub fn channel() -> (SourcesFeed, Sources) {
        let (models_tx, models) = watch::channel(None);
        let (errors_tx, errors) = watch::channel(Arc::new(Vec::new()));
        let feed = SourcesFeed {
            models: models_tx,
            errors: errors_tx,
        };
        (feed, Sources { models, errors })
    }
}

impl SourcesFeed {
    /// Forwards a started source (already past its initial sync) until it or the server stops.
    /// Errors go first so a model is never shown with stale errors.
    pub async fn forward(self, mut handle: SourceHandle) {
        loop {
            self.errors
                .send_replace(handle.errors.borrow_and_update().clone());
            self.models
                .send_replace(Some(handle.models.borrow_and_update().clone()));
            tokio::select! {
                changed = handle.models.changed() => if changed.is_err() { return },
                changed = handle.errors.changed() => if changed.is_err() { return },
                () = self.models.closed() => return,
            }
        }
    }
}

/// A running control plane.
#[derive(Debug)]
pub struct Running {
    /// Where ADS listens.
    pub xds_address: SocketAddr,
    /// Where the debug endpoint listens.
    pub debug_address: SocketAddr,
    /// The server, for its registry and metrics.
    pub server: XdsServer,
    shutdown: Option<oneshot::Sender<()>>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    helpers: Vec<JoinHandle<()>>,
}

impl Running {
    /// Waits until the ADS server stops (it only stops on error or [`Running::shutdown`]).
    pub async fn wait(mut self) -> Result<(), AppError> {
        let result = (&mut self.serve).await;
        match result {
            Ok(served) => served.map_err(AppError::from),
            Err(_) => Ok(()),
        }
    }

    /// Stops serving and closes every stream.
    pub async fn shutdown(mut self) -> Result<(), AppError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.serve.abort();
        for task in &self.helpers {
            task.abort();
        }
    }
}

/// Binds the ADS and debug listeners and starts serving what `sources` publish.
pub async fn start(
    options: &ServeOptions,
    sources: Sources,
    generator: Arc<dyn Generator>,
) -> Result<Running, AppError> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source })
    };
    let xds_listener = bind(options.xds_address).await?;
    let debug_listener = bind(options.debug_address).await?;
    let local = |l: &TcpListener, addr| {
        l.local_addr()
            .map_err(|source| AppError::Bind { addr, source })
    };
    let xds_address = local(&xds_listener, options.xds_address)?;
    let debug_address = local(&debug_listener, options.debug_address)?;

    let metrics = Metrics::new();
    let (warnings_tx, warnings) = watch::channel(Arc::new(Vec::new()));
    let warnings_task = tokio::spawn(watch_warnings(
        sources.models.clone(),
        metrics.clone(),
        warnings_tx,
    ));
    let (epochs, debouncer) = debounce(sources.models, options.debounce);
    let server = XdsServer::new(generator, epochs.clone(), metrics.clone());
    let errors_task = tokio::spawn(watch_errors(sources.errors.clone(), metrics.clone()));
    let debug_task = tokio::spawn(debug::serve(
        debug_listener,
        DebugState {
            registry: server.registry(),
            metrics,
            errors: sources.errors,
            warnings,
            epochs,
        },
    ));
    let (shutdown, stop) = oneshot::channel::<()>();
    let serve = tokio::spawn(server.clone().serve(xds_listener, async {
        let _ = stop.await;
    }));
    Ok(Running {
        xds_address,
        debug_address,
        server,
        shutdown: Some(shutdown),
        serve,
        helpers: vec![debouncer, errors_task, warnings_task, debug_task],
    })
}

/// Keeps the validation-errors gauge in step with the sources (which log each error).
async fn watch_errors(mut errors: watch::Receiver<Arc<Vec<ModelError>>>, metrics: Metrics) {
    loop {
        let count = errors.borrow_and_update().len();
        metrics.set_validation_errors(count);
        if errors.changed().await.is_err() {
            return;
        }
    }
}

/// Derives the warnings of every model (objects accepted but not enforced), logs each new one
/// once, and keeps the gauge and the debug endpoint's list in step.
async fn watch_warnings(
    mut models: watch::Receiver<Option<Arc<Model>>>,
    metrics: Metrics,
    warnings: watch::Sender<Arc<Vec<ModelWarning>>>,
) {
    loop {
        let model = models.borrow_and_update().clone();
        if let Some(model) = model {
            let current = crate::model::warnings(&model);
            let previous = warnings.borrow().clone();
            for warning in current.iter().filter(|w| !previous.contains(w)) {
                tracing::warn!(
                    origin = %warning.origin,
                    kind = warning.kind,
                    name = %warning.name,
                    reason = %warning.reason,
                    "object not enforced"
                );
            }
            metrics.set_unenforced_objects(current.len());
            warnings.send_replace(Arc::new(current));
        }
        if models.changed().await.is_err() {
            return;
        }
    }
}

/// `ferry-control serve`: the directory source, the translator, the server, until stopped.
pub async fn run(options: ServeOptions) -> Result<(), AppError> {
    serve(&options).await?.wait().await
}

/// Starts the source (the directory, or Kubernetes with `kubernetes`), the translator and the
/// server, and returns once the source's initial sync is served. The listeners open first;
/// proxies that connect before the initial sync completes are held until it does.
pub async fn serve(options: &ServeOptions) -> Result<Running, AppError> {
    let (feed, sources) = Sources::channel();
    let generator = Arc::new(TranslateGenerator {
        local_mode: options.local_mode,
        mesh: options.mesh.clone(),
    });
    let mut running = start(options, sources, generator).await?;
    tracing::info!(xds = %running.xds_address, debug = %running.debug_address, "ferry-control listening");
    let handle = if options.kubernetes {
        kubernetes_source().await?
    } else {
        watch_dir(&options.config_dir).await?
    };
    tracing::info!(kubernetes = options.kubernetes, dir = %options.config_dir.display(), "initial sync complete; serving");
    running.helpers.push(tokio::spawn(feed.forward(handle)));
    Ok(running)
}
