//! State-of-the-world ADS (`StreamAggregatedResources`): every response carries the whole set of
//! a type the proxy subscribes to, versioned by a hash of that set.
//!
//! Protocol rules followed: a request with an empty nonce is a (re)subscription and is always
//! answered; a request whose nonce is not the last one sent for its type is stale and ignored; a
//! request with the current nonce is an ACK, or a NACK when `error_detail` is set (the proxy keeps
//! its last good version and nothing is resent until the config changes); a changed
//! `resource_names` set replaces the subscription and is answered. LDS and CDS subscriptions with
//! no names (or `*`) are wildcards.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use tonic::Status;
use xds_proto::envoy::config::core::v3::Node;
use xds_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::cache::{Entry, ResourceType, Snapshot, set_version};
use super::connection::{Nack, Protocol};
use super::framing;
use super::stream::{Closed, Connection, Variant};

/// What a proxy asked for of one type. The names are shared with the debug view
/// ([`super::connection::TypeStatus::subscribed`]) rather than copied into it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Everything of the type.
    pub wildcard: bool,
    /// The names asked for, when not a wildcard.
    pub names: Arc<BTreeSet<String>>,
}

impl Subscription {
    fn from_request(ty: ResourceType, names: Vec<String>) -> Self {
        let wildcard =
            names.iter().any(|n| n == "*") || (ty.is_wildcard_kind() && names.is_empty());
        Subscription {
            wildcard,
            names: Arc::new(names.into_iter().filter(|n| n != "*").collect()),
        }
    }

    /// The subscribed entries present in `snapshot`.
    pub(crate) fn select(&self, snapshot: &Snapshot, ty: ResourceType) -> Vec<Arc<Entry>> {
        let all = snapshot.resources(ty);
        if self.wildcard {
            all.values().cloned().collect()
        } else {
            self.names
                .iter()
                .filter_map(|n| all.get(n).cloned())
                .collect()
        }
    }

    /// The debug view: `*` first for a wildcard, then the names.
    pub fn describe(&self) -> Vec<String> {
        self.listed().map(str::to_owned).collect()
    }

    fn listed(&self) -> impl Iterator<Item = &str> {
        let star = self.wildcard.then_some("*");
        star.into_iter()
            .chain(self.names.iter().map(String::as_str))
    }
}

/// Compares with the debug view's list (`*` first for a wildcard, then the names).
impl<S: AsRef<str>> PartialEq<Vec<S>> for Subscription {
    fn eq(&self, other: &Vec<S>) -> bool {
        self.listed().eq(other.iter().map(AsRef::as_ref))
    }
}

/// Frames the `DiscoveryResponse` of `entries` straight from the shared packed resources:
/// building the message would copy every resource (a full CDS answer) once more per proxy.
/// Field numbers and order are `DiscoveryResponse`'s (`version_info` 1, `resources` 2,
/// `type_url` 4, `nonce` 5); the unit test compares the bytes with prost's own encoding.
fn encode_response(
    version: &str,
    entries: &[Arc<Entry>],
    type_url: &str,
    nonce: &str,
) -> Result<Bytes, Status> {
    use prost::encoding::{encoded_len_varint, key_len, message};
    let string_len = |tag: u32, s: &str| {
        if s.is_empty() {
            0
        } else {
            key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
        }
    };
    let len = entries
        .iter()
        .map(|e| message::encoded_len(2, &e.resource))
        .sum::<usize>()
        + string_len(1, version)
        + string_len(4, type_url)
        + string_len(5, nonce);
    framing::frame(len, |buf| {
        let put = |buf: &mut Vec<u8>, tag: u32, s: &str| {
            if !s.is_empty() {
                prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, buf);
                prost::encoding::encode_varint(s.len() as u64, buf);
                buf.extend_from_slice(s.as_bytes());
            }
        };
        put(buf, 1, version);
        for e in entries {
            message::encode(2, &e.resource, buf);
        }
        put(buf, 4, type_url);
        put(buf, 5, nonce);
    })
}

/// What one stream tracks of one resource type.
#[derive(Debug, Default)]
pub(crate) struct TypeState {
    subscription: Subscription,
    /// Version and nonce of the last response.
    sent: Option<(String, String)>,
    /// A request is waiting for an answer, even an unchanged one.
    must_answer: bool,
}

/// The state-of-the-world variant of ADS.
pub(crate) struct Sotw;

impl Variant for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    type TypeState = TypeState;
    const PROTOCOL: Protocol = Protocol::StateOfTheWorld;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    async fn on_request(
        conn: &mut Connection<Self>,
        request: DiscoveryRequest,
    ) -> Result<(), Closed> {
        let Some(ty) = ResourceType::from_type_url(&request.type_url) else {
            tracing::warn!(connection = conn.session.id(), type_url = %request.type_url, "request for a type this server does not serve; ignored");
            return Ok(());
        };
        let state = conn.types.entry(ty).or_default();
        let nonce = request.response_nonce;
        if !nonce.is_empty() {
            if state.sent.as_ref().map(|(_, n)| n) != Some(&nonce) {
                tracing::debug!(
                    connection = conn.session.id(),
                    kind = ty.label(),
                    nonce,
                    "stale nonce ignored"
                );
                return Ok(());
            }
            if let Some(error) = request.error_detail {
                let nack = Nack {
                    nonce,
                    version: request.version_info,
                    error: error.message,
                };
                conn.session.nack(ty, nack);
                return Ok(());
            }
            conn.session.ack(ty, &request.version_info);
        }
        let subscription = Subscription::from_request(ty, request.resource_names);
        if nonce.is_empty() || subscription != state.subscription {
            conn.session.subscribed(ty, subscription.clone());
            state.subscription = subscription;
            state.must_answer = true;
            Self::respond(conn, ty).await?;
        }
        Ok(())
    }

    /// Sends the subscribed set of `ty` if it changed since the last response or a request is
    /// waiting; does nothing while the stream is held before the initial sync.
    async fn respond(conn: &mut Connection<Self>, ty: ResourceType) -> Result<(), Closed> {
        let Some(snapshot) = conn.session.snapshot.clone() else {
            return Ok(());
        };
        let Some(state) = conn.types.get_mut(&ty) else {
            return Ok(());
        };
        let entries = state.subscription.select(&snapshot, ty);
        let version = set_version(&entries);
        let unchanged = state.sent.as_ref().map(|(v, _)| v) == Some(&version);
        if unchanged && !state.must_answer {
            return Ok(());
        }
        let nonce = conn.session.next_nonce();
        conn.session.sent(ty, &version, &nonce);
        state.sent = Some((version.clone(), nonce.clone()));
        state.must_answer = false;
        let framed = encode_response(&version, &entries, ty.type_url(), &nonce);
        conn.send(framed).await
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::xds::Resources;
    use crate::xds::cache::Snapshot;
    use xds_proto::envoy::config::cluster::v3::Cluster;

    #[test]
    fn responses_are_encoded_as_prost_encodes_them() {
        let clusters = (0..40)
            .map(|i| Cluster {
                name: format!("outbound|80||service-{i}.default.svc.cluster.local"),
                alt_stat_name: "x".repeat(i * 20),
                ..Default::default()
            })
            .collect();
        let snapshot = Snapshot::build(
            Resources {
                clusters,
                ..Default::default()
            },
            None,
        );
        let entries: Vec<_> = snapshot
            .resources(ResourceType::Cluster)
            .values()
            .cloned()
            .collect();
        for (version, nonce) in [("0123456789abcdef", "3-17"), ("", "")] {
            let expected = DiscoveryResponse {
                version_info: version.into(),
                resources: entries.iter().map(|e| e.resource.clone()).collect(),
                type_url: ResourceType::Cluster.type_url().into(),
                nonce: nonce.into(),
                ..Default::default()
            };
            let framed =
                encode_response(version, &entries, ResourceType::Cluster.type_url(), nonce)
                    .unwrap();
            assert_eq!(framed, framing::encode(&expected).unwrap());
            let decoded = DiscoveryResponse::decode(&framed[framing::PREFIX_LEN..]).unwrap();
            assert_eq!(decoded, expected);
        }
    }
}
