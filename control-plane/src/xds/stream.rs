//! What a state-of-the-world and a delta ADS stream have in common: the first request names the
//! node and opens the [`Session`] (or the stream is refused with the reason), then requests and
//! push epochs are served in turn until the proxy or the server goes away, each epoch answered
//! per subscribed type in Istio's push order (CDS, EDS, LDS, RDS). The protocol rules themselves
//! (nonces, ACK/NACK, subscriptions, what a response carries) live in each variant
//! ([`super::sotw`], [`super::delta`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use xds_proto::envoy::config::core::v3::Node;

use super::cache::ResourceType;
use super::connection::{Protocol, Session};
use super::framing::Outgoing;
use super::server::Shared;

/// The proxy went away; the connection task ends.
pub(crate) struct Closed;

/// One ADS variant: its messages, its per-type state and its protocol rules.
pub(crate) trait Variant: Sized + Send + 'static {
    /// What the proxy sends.
    type Request: Send + 'static;
    /// What the server answers.
    type Response: Send + 'static;
    /// What the connection tracks per resource type.
    type TypeState: Default + Send;
    /// Which variant, for the registry.
    const PROTOCOL: Protocol;

    /// The node a request carries (required on the first).
    fn node(request: &Self::Request) -> Option<&Node>;

    /// Handles one request.
    fn on_request(
        conn: &mut Connection<Self>,
        request: Self::Request,
    ) -> impl Future<Output = Result<(), Closed>> + Send;

    /// Sends what the current snapshot holds of `ty` for this proxy, if the proxy needs it.
    fn respond(
        conn: &mut Connection<Self>,
        ty: ResourceType,
    ) -> impl Future<Output = Result<(), Closed>> + Send;
}

/// One stream's state: the session (registry entry, snapshots, nonces), what the proxy asked
/// for per type, and where responses go.
pub(crate) struct Connection<V: Variant> {
    /// The proxy's session.
    pub(crate) session: Session,
    /// Per type the proxy asked for.
    pub(crate) types: BTreeMap<ResourceType, V::TypeState>,
    /// The response stream: framed messages.
    pub(crate) tx: mpsc::Sender<Outgoing>,
}

impl<V: Variant> Connection<V> {
    /// Queues a framed response on the response stream; a response that could not be framed
    /// ends the stream with its status.
    pub(crate) async fn send(&self, framed: Result<Bytes, Status>) -> Result<(), Closed> {
        match framed {
            Ok(message) => self.tx.send(Ok(message)).await.map_err(|_| Closed),
            Err(status) => {
                tracing::error!(connection = self.session.id(), error = %status, "response cannot be encoded; stream ended");
                let _ = self.tx.send(Err(status)).await;
                Err(Closed)
            }
        }
    }
}

/// Drives one stream until the proxy or the server goes away.
pub(crate) async fn run<V: Variant>(
    shared: Arc<Shared>,
    mut requests: Streaming<V::Request>,
    tx: mpsc::Sender<Outgoing>,
    peer: Option<SocketAddr>,
) {
    let first = match requests.message().await {
        Ok(Some(first)) => first,
        Ok(None) => return,
        Err(status) => {
            tracing::debug!(error = %status, "stream failed before its first request");
            return;
        }
    };
    let session = match Session::start(shared, V::node(&first), V::PROTOCOL, peer) {
        Ok(session) => session,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let mut conn = Connection::<V> {
        session,
        types: BTreeMap::new(),
        tx,
    };
    if V::on_request(&mut conn, first).await.is_err() {
        return;
    }
    loop {
        let outcome = tokio::select! {
            message = requests.message() => match message {
                Ok(Some(request)) => V::on_request(&mut conn, request).await,
                Ok(None) => Err(Closed),
                Err(status) => {
                    tracing::debug!(connection = conn.session.id(), error = %status, "stream ended");
                    Err(Closed)
                }
            },
            _ = conn.session.next_epoch() => push_all(&mut conn).await,
        };
        if outcome.is_err() {
            return;
        }
    }
}

/// Answers a push epoch: every type the proxy asked for, in push order.
async fn push_all<V: Variant>(conn: &mut Connection<V>) -> Result<(), Closed> {
    for ty in ResourceType::PUSH_ORDER {
        if conn.types.contains_key(&ty) {
            V::respond(conn, ty).await?;
        }
    }
    Ok(())
}
