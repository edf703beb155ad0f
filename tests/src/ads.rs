//! A scriptable ADS server for tests: a real tonic server on 127.0.0.1 serving both
//! state-of-the-world and delta ADS. Tests set the resources of each type (every stream is
//! pushed what changed), send raw responses (malformed, unknown types), read back every request
//! the client sent (versions, nonces, `error_detail`), and stop and restart the server on the
//! same port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::Stream;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use xds_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use xds_proto::google::protobuf::Any;

/// One request the client sent.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// On a `StreamAggregatedResources` stream.
    Sotw(DiscoveryRequest),
    /// On a `DeltaAggregatedResources` stream.
    Delta(DeltaDiscoveryRequest),
}

/// The name inside a Listener, Cluster or RouteConfiguration (`name`) or ClusterLoadAssignment
/// (`cluster_name`): field 1 in all four.
#[derive(Clone, PartialEq, prost::Message)]
struct Named {
    #[prost(string, tag = "1")]
    name: String,
}

/// The resource name of an xDS resource (empty when it does not decode).
pub fn resource_name(any: &Any) -> String {
    <Named as prost::Message>::decode(any.value.as_slice())
        .map(|n| n.name)
        .unwrap_or_default()
}

#[derive(Default)]
struct TypeResources {
    version: String,
    /// name -> (version it last changed at, resource)
    items: BTreeMap<String, (String, Any)>,
}

struct SotwStream {
    tx: mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>,
    /// type_url -> subscribed names (empty: all)
    subs: BTreeMap<String, Vec<String>>,
}

#[derive(Default)]
struct DeltaSub {
    wildcard: bool,
    names: Vec<String>,
    /// What the client holds: name -> version.
    held: BTreeMap<String, String>,
}

struct DeltaStream {
    tx: mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>,
    /// type_url -> subscription
    subs: BTreeMap<String, DeltaSub>,
}

#[derive(Default)]
struct Inner {
    types: BTreeMap<String, TypeResources>,
    requests: Vec<Recorded>,
    sotw: BTreeMap<u64, SotwStream>,
    delta: BTreeMap<u64, DeltaStream>,
    next_id: u64,
    nonce: u64,
    streams_opened: usize,
}

impl Inner {
    fn nonce(&mut self) -> String {
        self.nonce += 1;
        format!("n{}", self.nonce)
    }

    fn sotw_response(&mut self, type_url: &str, names: &[String]) -> Option<DiscoveryResponse> {
        let resources = self.types.get(type_url)?;
        let version = resources.version.clone();
        let items = resources
            .items
            .iter()
            .filter(|(name, _)| names.is_empty() || names.contains(name))
            .map(|(_, (_, any))| any.clone())
            .collect();
        Some(DiscoveryResponse {
            version_info: version,
            resources: items,
            type_url: type_url.to_owned(),
            nonce: self.nonce(),
            ..Default::default()
        })
    }

    fn push_sotw(&mut self, type_url: &str) {
        let ids: Vec<u64> = self.sotw.keys().copied().collect();
        for id in ids {
            let Some(names) = self.sotw[&id].subs.get(type_url).cloned() else {
                continue;
            };
            if let Some(response) = self.sotw_response(type_url, &names) {
                let _ = self.sotw[&id].tx.send(Ok(response));
            }
        }
    }

    /// Sends a delta stream what changed in `type_url` since what it holds.
    /// `force` answers even when nothing changed (the first response of a subscription).
    fn push_delta_one(&mut self, id: u64, type_url: &str, force: bool) {
        let Some(resources) = self.types.get(type_url) else {
            return;
        };
        let Some(stream) = self.delta.get_mut(&id) else {
            return;
        };
        let Some(DeltaSub {
            wildcard,
            names,
            held,
        }) = stream.subs.get_mut(type_url)
        else {
            return;
        };
        let wanted = |name: &String| *wildcard || names.contains(name);
        let mut added = Vec::new();
        for (name, (version, any)) in &resources.items {
            if wanted(name) && held.get(name) != Some(version) {
                held.insert(name.clone(), version.clone());
                added.push(Resource {
                    name: name.clone(),
                    version: version.clone(),
                    resource: Some(any.clone()),
                    ..Default::default()
                });
            }
        }
        let removed: Vec<String> = held
            .keys()
            .filter(|name| !resources.items.contains_key(*name) || !wanted(name))
            .cloned()
            .collect();
        for name in &removed {
            held.remove(name);
        }
        if added.is_empty() && removed.is_empty() && !force {
            return;
        }
        let version = resources.version.clone();
        let nonce = self.nonce();
        let response = DeltaDiscoveryResponse {
            system_version_info: version,
            resources: added,
            type_url: type_url.to_owned(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        };
        if let Some(stream) = self.delta.get(&id) {
            let _ = stream.tx.send(Ok(response));
        }
    }

    fn push(&mut self, type_url: &str) {
        self.push_sotw(type_url);
        let ids: Vec<u64> = self.delta.keys().copied().collect();
        for id in ids {
            self.push_delta_one(id, type_url, false);
        }
    }
}

#[derive(Default)]
struct Shared {
    inner: Mutex<Inner>,
    recorded: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Service(Arc<Shared>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut inner = self.0.lock();
            inner.next_id += 1;
            inner.streams_opened += 1;
            let id = inner.next_id;
            inner.sotw.insert(
                id,
                SotwStream {
                    tx,
                    subs: BTreeMap::new(),
                },
            );
            id
        };
        let shared = Arc::clone(&self.0);
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Some(Ok(request)) = inbound.next().await {
                let mut inner = shared.lock();
                inner.requests.push(Recorded::Sotw(request.clone()));
                let Some(stream) = inner.sotw.get_mut(&id) else {
                    break;
                };
                let previous = stream
                    .subs
                    .insert(request.type_url.clone(), request.resource_names.clone());
                let changed = previous.as_ref() != Some(&request.resource_names);
                if (request.response_nonce.is_empty() || changed)
                    && let Some(response) =
                        inner.sotw_response(&request.type_url, &request.resource_names)
                {
                    let _ = inner.sotw[&id].tx.send(Ok(response));
                }
                drop(inner);
                shared.recorded.notify_waiters();
            }
            shared.lock().sotw.remove(&id);
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut inner = self.0.lock();
            inner.next_id += 1;
            inner.streams_opened += 1;
            let id = inner.next_id;
            inner.delta.insert(
                id,
                DeltaStream {
                    tx,
                    subs: BTreeMap::new(),
                },
            );
            id
        };
        let shared = Arc::clone(&self.0);
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Some(Ok(request)) = inbound.next().await {
                let mut inner = shared.lock();
                inner.requests.push(Recorded::Delta(request.clone()));
                let Some(stream) = inner.delta.get_mut(&id) else {
                    break;
                };
                let type_url = request.type_url.clone();
                let first = !stream.subs.contains_key(&type_url);
                let sub = stream.subs.entry(type_url.clone()).or_default();
                if first {
                    sub.wildcard = request.resource_names_subscribe.is_empty()
                        || request.resource_names_subscribe.iter().any(|n| n == "*");
                    sub.held = request
                        .initial_resource_versions
                        .clone()
                        .into_iter()
                        .collect();
                }
                for name in &request.resource_names_subscribe {
                    if !sub.names.contains(name) && name != "*" {
                        sub.names.push(name.clone());
                    }
                }
                sub.names
                    .retain(|n| !request.resource_names_unsubscribe.contains(n));
                for name in &request.resource_names_unsubscribe {
                    sub.held.remove(name);
                }
                inner.push_delta_one(id, &type_url, first);
                drop(inner);
                shared.recorded.notify_waiters();
            }
            shared.lock().delta.remove(&id);
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

/// A running (or stopped) test ADS server.
pub struct AdsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl AdsServer {
    /// Starts on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let mut server = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shared: Arc::default(),
            shutdown: None,
            task: None,
        };
        server.restart().await?;
        Ok(server)
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// (Re)starts serving on the same address, with the resources set so far.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        self.addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel();
        let service =
            AggregatedDiscoveryServiceServer::from_arc(Arc::new(Service(Arc::clone(&self.shared))));
        self.shutdown = Some(tx);
        self.task = Some(tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await;
        }));
        Ok(())
    }

    /// Stops serving: ends every stream and closes the listening socket.
    pub async fn stop(&mut self) {
        {
            let mut inner = self.shared.lock();
            for stream in inner.sotw.values() {
                let _ = stream.tx.send(Err(Status::unavailable("server stopping")));
            }
            for stream in inner.delta.values() {
                let _ = stream.tx.send(Err(Status::unavailable("server stopping")));
            }
            inner.sotw.clear();
            inner.delta.clear();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Sets the whole set of resources of a type at `version` and pushes the change to every
    /// stream subscribed to it (SotW: the subscribed set; delta: what changed and what went).
    pub fn set(&self, type_url: &str, version: &str, resources: Vec<Any>) {
        let named = resources
            .into_iter()
            .map(|a| (resource_name(&a), a))
            .collect();
        self.set_named(type_url, version, named);
    }

    /// Like [`AdsServer::set`] with explicit names (for resources that do not decode).
    pub fn set_named(&self, type_url: &str, version: &str, resources: Vec<(String, Any)>) {
        let mut inner = self.shared.lock();
        let entry = inner.types.entry(type_url.to_owned()).or_default();
        let old = std::mem::take(&mut entry.items);
        entry.version = version.to_owned();
        for (name, any) in resources {
            let item_version = match old.get(&name) {
                Some((v, previous)) if *previous == any => v.clone(),
                _ => version.to_owned(),
            };
            entry.items.insert(name, (item_version, any));
        }
        inner.push(type_url);
    }

    /// Sends a raw SotW response to every SotW stream (a nonce is filled in when empty).
    pub fn send_sotw(&self, mut response: DiscoveryResponse) -> String {
        let mut inner = self.shared.lock();
        if response.nonce.is_empty() {
            response.nonce = inner.nonce();
        }
        for stream in inner.sotw.values() {
            let _ = stream.tx.send(Ok(response.clone()));
        }
        response.nonce
    }

    /// Sends a raw delta response to every delta stream (a nonce is filled in when empty).
    pub fn send_delta(&self, mut response: DeltaDiscoveryResponse) -> String {
        let mut inner = self.shared.lock();
        if response.nonce.is_empty() {
            response.nonce = inner.nonce();
        }
        for stream in inner.delta.values() {
            let _ = stream.tx.send(Ok(response.clone()));
        }
        response.nonce
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// How many streams clients have opened.
    pub fn streams_opened(&self) -> usize {
        self.shared.lock().streams_opened
    }

    /// Waits until a recorded request satisfies `pred` (checking the ones already recorded
    /// first) and returns it. Panics after 30 s of wall-clock time, which paused tokio time
    /// does not shorten.
    pub async fn wait_for(&self, pred: impl FnMut(&Recorded) -> bool) -> Recorded {
        self.wait_for_from(0, pred).await
    }

    /// Like [`AdsServer::wait_for`], ignoring the first `from` requests (take `from` from
    /// `requests().len()` before the step that should cause the request).
    pub async fn wait_for_from(
        &self,
        from: usize,
        mut pred: impl FnMut(&Recorded) -> bool,
    ) -> Recorded {
        let started = SystemTime::now();
        let mut seen = from;
        loop {
            let notified = self.shared.recorded.notified();
            let requests = self.requests();
            if let Some(found) = requests[seen..].iter().find(|r| pred(r)) {
                return found.clone();
            }
            seen = requests.len();
            assert!(
                started.elapsed().unwrap_or_default() < Duration::from_secs(30),
                "no matching ADS request within 30s; got {requests:#?}"
            );
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Waits for a SotW request matching `pred`.
    pub async fn wait_sotw(
        &self,
        mut pred: impl FnMut(&DiscoveryRequest) -> bool,
    ) -> DiscoveryRequest {
        match self
            .wait_for(|r| matches!(r, Recorded::Sotw(req) if pred(req)))
            .await
        {
            Recorded::Sotw(req) => req,
            Recorded::Delta(_) => unreachable!("filtered to SotW"),
        }
    }

    /// Waits for a delta request matching `pred`.
    pub async fn wait_delta(
        &self,
        mut pred: impl FnMut(&DeltaDiscoveryRequest) -> bool,
    ) -> DeltaDiscoveryRequest {
        match self
            .wait_for(|r| matches!(r, Recorded::Delta(req) if pred(req)))
            .await
        {
            Recorded::Delta(req) => req,
            Recorded::Sotw(_) => unreachable!("filtered to delta"),
        }
    }
}

impl Drop for AdsServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
