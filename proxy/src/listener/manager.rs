//! The listener manager: binds a socket for every `bind_to_port` listener in the snapshot, keeps
//! it across config changes (the accept loop reads the listener's current filter chains from the
//! snapshot per connection, so new connections get an update at once), and drains listeners that
//! were removed or moved: they stop accepting while their connections finish gracefully.
//!
//! Like Envoy, an updated or removed listener also drains the connections it already accepted,
//! so clients move to the new config (see [`crate::http_connection_manager::drain`]); a
//! `tcp_proxy` connection, which cannot be asked to move, is closed when the drain time ends
//! (see [`crate::tcp_proxy`]). Each listener config in force is a *generation*; a connection
//! holds the generation of the listener that serves it (after the original-destination hand-off)
//! and is retired when that generation ends. Generations are compared by value, so a listener re-sent unchanged by the
//! control plane drains nothing.
//!
//! Each connection is dispatched here: original destination recovery for capture listeners,
//! listener filters, filter chain selection, then the HTTP connection manager or the TCP proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use super::{ConnectionInfo, Listener, NetworkFilter};
use crate::http_connection_manager::{self as hcm, Downstream, DrainSignals, HcmSelector};
use crate::snapshot::{ConfigStore, Snapshot};
use crate::stats::Store;

/// One listener config in force; `retired` fires when it is replaced or removed.
struct Generation {
    config: Arc<Listener>,
    retired: watch::Sender<bool>,
}

struct Active {
    address: SocketAddr,
    local: SocketAddr,
    stop: watch::Sender<bool>,
}

/// Counts live connections so shutdown can wait for them.
#[derive(Debug, Default)]
struct Connections {
    count: AtomicUsize,
    idle: Notify,
}

struct ConnectionGuard(Arc<Connections>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Owns the listening sockets.
pub struct ListenerManager {
    store: Arc<ConfigStore>,
    stats: Arc<Store>,
    tracer: Arc<crate::tracers::Tracer>,
    active: Mutex<HashMap<String, Active>>,
    /// Every listener's generation, bound or not (by name).
    generations: Mutex<HashMap<String, Generation>>,
    connections: Arc<Connections>,
    /// Turns true to drain every connection (shutdown, `/drain_listeners`).
    drain: watch::Sender<bool>,
    /// How long a drained `tcp_proxy` connection lives on, in milliseconds (`--drain-time`).
    drain_time_ms: AtomicU64,
}

/// ferry-proxy's default `--drain-time`.
pub const DEFAULT_DRAIN_TIME: Duration = Duration::from_secs(5);

impl std::fmt::Debug for ListenerManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerManager").finish_non_exhaustive()
    }
}

impl ListenerManager {
    /// A manager serving the listeners of `store`'s snapshots.
    pub fn new(store: Arc<ConfigStore>, stats: Arc<Store>) -> Arc<Self> {
        Self::with_node(store, stats, crate::tracers::LocalNode::default(), None)
    }

    /// [`Self::new`] for a proxy whose spans carry `node`'s identity, with the bootstrap's
    /// tracer (`tracing.http`) for HCMs whose `tracing` names no provider.
    pub fn with_node(
        store: Arc<ConfigStore>,
        stats: Arc<Store>,
        node: crate::tracers::LocalNode,
        default_tracer: Option<Arc<crate::tracers::Provider>>,
    ) -> Arc<Self> {
        let tracer = crate::tracers::Tracer::new(node, Arc::downgrade(&store), stats.clone())
            .with_default_provider(default_tracer);
        Arc::new(Self {
            tracer: Arc::new(tracer),
            store,
            stats,
            active: Mutex::new(HashMap::new()),
            generations: Mutex::new(HashMap::new()),
            connections: Arc::default(),
            drain: watch::Sender::new(false),
            drain_time_ms: AtomicU64::new(DEFAULT_DRAIN_TIME.as_millis() as u64),
        })
    }

    /// Sets the drain time (Envoy's `--drain-time-s`): how long the `tcp_proxy` connections of
    /// an updated or removed listener, or of a draining proxy, live on before they are closed.
    /// Read when a connection's drain starts.
    pub fn set_drain_time(&self, drain_time: Duration) {
        let ms = u64::try_from(drain_time.as_millis()).unwrap_or(u64::MAX);
        self.drain_time_ms.store(ms, Ordering::Relaxed);
    }

    /// The drain time in force.
    pub fn drain_time(&self) -> Duration {
        Duration::from_millis(self.drain_time_ms.load(Ordering::Relaxed))
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn generations(&self) -> std::sync::MutexGuard<'_, HashMap<String, Generation>> {
        self.generations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation of `listener` (a snapshot's config), starting a new one and retiring the
    /// old when the config differs from the one in force.
    fn generation_of(
        generations: &mut HashMap<String, Generation>,
        listener: &Arc<Listener>,
    ) -> watch::Receiver<bool> {
        if let Some(current) = generations.get_mut(&listener.name) {
            if Arc::ptr_eq(&current.config, listener) {
                return current.retired.subscribe();
            }
            if *current.config == **listener {
                // Same config, new object: keep the generation, remember the object so the
                // next connection's check is a pointer comparison.
                current.config = listener.clone();
                return current.retired.subscribe();
            }
        }
        let generation = Generation {
            config: listener.clone(),
            retired: watch::Sender::new(false),
        };
        let retired = generation.retired.subscribe();
        if let Some(old) = generations.insert(listener.name.clone(), generation) {
            tracing::info!(
                listener = listener.name.as_str(),
                "listener updated: draining its connections"
            );
            old.retired.send_replace(true);
        }
        retired
    }

    /// Starts the generations of the current snapshot's listeners and retires those of
    /// updated and removed ones. The lock is held across the load, so generations only move
    /// forward even when a connection loads the snapshot at the same time.
    fn update_generations(&self) -> Arc<Snapshot> {
        let mut generations = self.generations();
        let snapshot = self.store.load();
        let listeners = &snapshot.resources.listeners;
        generations.retain(|name, generation| {
            let keep = listeners.contains_key(name);
            if !keep {
                tracing::info!(
                    listener = name.as_str(),
                    "listener removed: draining its connections"
                );
                generation.retired.send_replace(true);
            }
            keep
        });
        for listener in listeners.values() {
            Self::generation_of(&mut generations, listener);
        }
        snapshot
    }

    /// Reconciles sockets with the current snapshot: binds new listeners, drains removed or
    /// moved ones, retires the connections of updated ones. A listener that fails to bind is
    /// logged and left out.
    pub async fn reconcile(self: &Arc<Self>) {
        let snapshot = self.update_generations();
        let wanted: HashMap<&String, &Arc<Listener>> = snapshot
            .resources
            .listeners
            .iter()
            .filter(|(_, l)| l.bind_to_port)
            .collect();
        {
            let mut active = self.active();
            active.retain(|name, a| {
                let keep = wanted.get(name).is_some_and(|l| l.address == a.address);
                if !keep {
                    tracing::info!(listener = name.as_str(), "draining listener");
                    a.stop.send_replace(true);
                }
                keep
            });
        }
        for (name, listener) in wanted {
            if self.active().contains_key(name) {
                continue;
            }
            match TcpListener::bind(listener.address).await {
                Ok(socket) => {
                    let local = socket.local_addr().unwrap_or(listener.address);
                    tracing::info!(listener = name.as_str(), address = %local, "listener bound");
                    let (stop, stopped) = watch::channel(false);
                    self.active().insert(
                        name.clone(),
                        Active {
                            address: listener.address,
                            local,
                            stop,
                        },
                    );
                    tokio::spawn(self.clone().accept_loop(name.clone(), socket, stopped));
                }
                Err(error) => {
                    tracing::error!(listener = name.as_str(), address = %listener.address, %error, "cannot bind listener");
                }
            }
        }
    }

    /// Reconciles after every config swap, until the store goes away.
    pub async fn run(self: Arc<Self>) {
        let mut generations = self.store.subscribe();
        loop {
            self.reconcile().await;
            if generations.changed().await.is_err() {
                return;
            }
        }
    }

    /// The bound address of a listener (port 0 in config reports the real port).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.active().get(name).map(|a| a.local)
    }

    /// Stops accepting on every listener and asks every connection to finish gracefully.
    pub fn drain_all(&self) {
        for active in self.active().values() {
            active.stop.send_replace(true);
        }
        self.drain.send_replace(true);
    }

    /// Waits until no connection is left.
    pub async fn wait_idle(&self) {
        loop {
            let idle = self.connections.idle.notified();
            if self.connections.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    async fn accept_loop(
        self: Arc<Self>,
        name: String,
        socket: TcpListener,
        mut stop: watch::Receiver<bool>,
    ) {
        // Envoy names listener stats by address with `:` made `_`:
        // `listener.0.0.0.0_15001.downstream_cx_total`, `listener.[__]_15001...` for `[::]`.
        let address = socket
            .local_addr()
            .map_or_else(|_| name.clone(), |a| a.to_string().replace(':', "_"));
        let cx_total = self
            .stats
            .counter(format!("listener.{address}.downstream_cx_total"));
        loop {
            let accepted = tokio::select! {
                accepted = socket.accept() => accepted,
                _ = stop.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(listener = name.as_str(), %error, "accept failed");
                    continue;
                }
            };
            cx_total.inc();
            configure_accepted(&stream);
            self.connections.count.fetch_add(1, Ordering::AcqRel);
            let guard = ConnectionGuard(self.connections.clone());
            let manager = self.clone();
            let name = name.clone();
            let local = stream.local_addr().ok();
            let span = tracing::debug_span!(
                "conn",
                client.addr = %peer,
                server.addr = local.map(tracing::field::display),
            );
            // Each connection drains when its listener stops or the whole proxy drains.
            let mut drain = self.drain.subscribe();
            let mut listener_stop = stop.clone();
            let (conn_drain_tx, conn_drain) = watch::channel(false);
            tokio::spawn(async move {
                tokio::select! {
                    _ = drain.wait_for(|d| *d) => {}
                    _ = listener_stop.wait_for(|d| *d) => {}
                    // The connection ended first: nothing to drain.
                    () = conn_drain_tx.closed() => return,
                }
                conn_drain_tx.send_replace(true);
            });
            tokio::spawn(
                async move {
                    manager.dispatch(&name, stream, peer, conn_drain).await;
                    drop(guard);
                }
                .instrument(span),
            );
        }
    }

    async fn dispatch(
        &self,
        name: &str,
        stream: TcpStream,
        peer: SocketAddr,
        drain: watch::Receiver<bool>,
    ) {
        let Ok(local) = stream.local_addr() else {
            return;
        };
        // The snapshot and the serving listener's generation are taken under one lock, so a
        // concurrent update either is already in this snapshot or retires this connection.
        let (snapshot, listener, capture, retired) = {
            let mut generations = self.generations();
            let snapshot = self.store.load();
            let Some(mut listener) = snapshot.resources.listeners.get(name).cloned() else {
                return;
            };
            // Capture listener: `Some(original)` when iptables redirected the connection.
            let capture = listener
                .use_original_dst
                .then(|| original_destination(&stream).filter(|d| *d != local));
            if let Some(target) = capture.flatten().and_then(|o| listener_for(&snapshot, o)) {
                listener = target;
            }
            let retired = Self::generation_of(&mut generations, &listener);
            (snapshot, listener, capture, retired)
        };
        let original_dst = capture.flatten();
        let destination = original_dst.unwrap_or(local);
        // A capture listener's connection that was not redirected: serve HTTP as an explicit
        // proxy / by Host header.
        let explicit_proxy = capture.is_some_and(|o| o.is_none());
        let drain = DrainSignals {
            shutdown: drain,
            retired,
        };
        let inspection =
            super::inspector::inspect(&stream, listener.tls_inspector, listener.http_inspector)
                .await;
        let info = ConnectionInfo {
            destination: Some(destination),
            transport_protocol: inspection.transport_protocol,
            application_protocols: inspection
                .application_protocol
                .map(|p| vec![p.to_owned()])
                .unwrap_or(inspection.alpn),
            server_name: inspection.server_name,
        };
        let chain = listener.select_chain(&info);
        let downstream = Downstream {
            peer,
            local,
            original_dst,
            listener: Arc::from(listener.name.as_str()),
            stats: self.stats.clone(),
            tracer: self.tracer.clone(),
            outbound: listener.outbound,
            buffer_limit: listener
                .per_connection_buffer_limit
                .map_or(crate::retry::replay::DEFAULT_LIMIT, u64::from),
        };
        match chain.map(|c| &c.filter) {
            Some(NetworkFilter::Http(config)) => {
                let selector = HcmSelector::Fixed(config.clone());
                drop(snapshot);
                hcm::serve(stream, downstream, selector, self.store.clone(), drain).await;
            }
            _ if explicit_proxy => {
                drop(snapshot);
                hcm::serve(
                    stream,
                    downstream,
                    HcmSelector::ByAuthorityPort,
                    self.store.clone(),
                    drain,
                )
                .await;
            }
            Some(NetworkFilter::Tcp(config)) => {
                let config = config.clone();
                let deadline = crate::tcp_proxy::drain_deadline(drain, || self.drain_time());
                crate::tcp_proxy::proxy(&config, snapshot, stream, peer, original_dst, deadline)
                    .await;
            }
            None => {
                tracing::debug!(
                    listener = listener.name.as_str(),
                    "no matching filter chain"
                );
            }
        }
    }
}

/// The listener a redirected connection belongs to: exact address first, then the wildcard
/// address on the same port (Istio's `0.0.0.0_PORT`).
fn listener_for(snapshot: &Snapshot, original: SocketAddr) -> Option<Arc<Listener>> {
    let listeners = snapshot.resources.listeners.values();
    let exact = listeners.clone().find(|l| l.address == original);
    exact
        .or_else(|| {
            listeners.clone().find(|l| {
                l.address.port() == original.port()
                    && l.address.ip().is_unspecified()
                    && l.address.is_ipv4() == original.is_ipv4()
            })
        })
        .cloned()
}

/// `SO_ORIGINAL_DST` (Linux); `None` when the connection was not redirected or the platform
/// cannot tell.
#[cfg(target_os = "linux")]
fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let addr = match stream.local_addr().ok()? {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    addr.ok()?.as_socket()
}

#[cfg(not(target_os = "linux"))]
fn original_destination(_stream: &TcpStream) -> Option<SocketAddr> {
    None
}

/// Socket options for an accepted connection: TCP_NODELAY, as Envoy sets on every one. Without
/// it, Nagle holds a response's last partial segment until the client has ACKed the previous
/// ones, and the client's delayed ACK turns that into a ~40 ms stall.
fn configure_accepted(stream: &TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}

#[cfg(test)]
mod socket_tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_disable_nagle() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (stream, _) = accepted.unwrap();
        assert!(!stream.nodelay().unwrap(), "the kernel default is Nagle on");
        configure_accepted(&stream);
        assert!(stream.nodelay().unwrap());
    }
}
