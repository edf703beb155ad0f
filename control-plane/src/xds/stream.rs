//! What a state-of-the-world and a delta ADS stream have in common: the first request names the
//! node and opens the [`Session`] (or the stream is refused with the reason), then requests and
//! push epochs are served in turn until the proxy or the server goes away, each epoch answered
//! per subscribed type in Istio's push order (CDS, EDS, LDS, RDS). The protocol rules themselves
//! (nonces, ACK/NACK, subscriptions, what a response carries) live in each variant
//! ([`super::sotw`], [`super::delta`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use xds_proto::envoy::config::core::v3::Node;

use super::cache::ResourceType;
use super::connection::{Protocol, Session};
use super::server::Shared;

/// The proxy went away; the connection task ends.
pub(crate) struct Closed;

/// One ADS variant's per-connection protocol state.
pub(crate) trait AdsStream: Sized + Send + 'static {
    /// What the proxy sends.
    type Request: Send + 'static;
    /// What the server answers.
    type Response: Send + 'static;
    /// Which variant, for the registry.
    const PROTOCOL: Protocol;

    /// The node a request carries (required on the first).
    fn node(request: &Self::Request) -> Option<&Node>;

    /// The state of a stream whose session just started, answering on `tx`.
    fn open(session: Session, tx: mpsc::Sender<Result<Self::Response, Status>>) -> Self;

    /// The connection's session.
    fn session(&mut self) -> &mut Session;

    /// Whether the proxy has asked for `ty` on this stream.
    fn serves(&self, ty: ResourceType) -> bool;

    /// Handles one request.
    fn on_request(
        &mut self,
        request: Self::Request,
    ) -> impl Future<Output = Result<(), Closed>> + Send;

    /// Sends what the current snapshot holds of `ty` for this proxy, if the proxy needs it.
    fn respond(&mut self, ty: ResourceType) -> impl Future<Output = Result<(), Closed>> + Send;
}

/// Drives one stream until the proxy or the server goes away.
pub(crate) async fn run<S: AdsStream>(
    shared: Arc<Shared>,
    mut requests: Streaming<S::Request>,
    tx: mpsc::Sender<Result<S::Response, Status>>,
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
    let session = match Session::start(shared, S::node(&first), S::PROTOCOL, peer) {
        Ok(session) => session,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let mut conn = S::open(session, tx);
    if conn.on_request(first).await.is_err() {
        return;
    }
    loop {
        let outcome = tokio::select! {
            message = requests.message() => match message {
                Ok(Some(request)) => conn.on_request(request).await,
                Ok(None) => Err(Closed),
                Err(status) => {
                    tracing::debug!(connection = conn.session().id(), error = %status, "stream ended");
                    Err(Closed)
                }
            },
            _ = conn.session().next_epoch() => push_all(&mut conn).await,
        };
        if outcome.is_err() {
            return;
        }
    }
}

/// Answers a push epoch: every type the proxy asked for, in push order.
async fn push_all<S: AdsStream>(conn: &mut S) -> Result<(), Closed> {
    for ty in ResourceType::PUSH_ORDER {
        if conn.serves(ty) {
            conn.respond(ty).await?;
        }
    }
    Ok(())
}
