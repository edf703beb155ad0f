//! Delta (incremental) ADS (`DeltaAggregatedResources`), what modern Istio sidecars use: the
//! server sends only resources whose version changed and the names of those removed.
//!
//! Per type the connection tracks the subscription (wildcard and/or names) and the version of
//! every resource the proxy holds, seeded from `initial_resource_versions` on reconnect so an
//! unchanged resource is not sent again. Subscription changes are deltas and are applied even on
//! a stale nonce; ACK/NACK is recorded only for the last nonce sent. A first request for a type
//! is always answered (Envoy waits for it during initialisation), and a subscribed name that
//! does not exist is reported in `removed_resources` so the proxy does not wait for it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use xds_proto::envoy::config::core::v3::Node;
use xds_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::cache::{ResourceType, set_version};
use super::connection::{Nack, Protocol};
use super::framing;
use super::sotw::Subscription;
use super::stream::{Closed, Connection, Variant};

/// What one stream tracks of one resource type.
#[derive(Debug, Default)]
pub(crate) struct TypeState {
    subscription: Subscription,
    /// Name -> version of what the proxy holds, as far as the server knows.
    known: BTreeMap<String, String>,
    /// Names subscribed since the last response; reported removed if they do not exist.
    new_names: BTreeSet<String>,
    /// System version and nonce of the last response, until the proxy answers it.
    pending: Option<(String, String)>,
    /// A request is waiting for an answer, even an empty one.
    must_answer: bool,
}

/// The delta variant of ADS.
pub(crate) struct Delta;

impl Variant for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    type TypeState = TypeState;
    const PROTOCOL: Protocol = Protocol::Delta;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    async fn on_request(
        conn: &mut Connection<Self>,
        request: DeltaDiscoveryRequest,
    ) -> Result<(), Closed> {
        let Some(ty) = ResourceType::from_type_url(&request.type_url) else {
            tracing::warn!(connection = conn.session.id(), type_url = %request.type_url, "request for a type this server does not serve; ignored");
            return Ok(());
        };
        let first = !conn.types.contains_key(&ty);
        let state = conn.types.entry(ty).or_default();
        if first {
            state.known = request.initial_resource_versions.into_iter().collect();
            state.subscription.wildcard =
                ty.is_wildcard_kind() && request.resource_names_subscribe.is_empty();
            state.must_answer = true;
        }
        let nonce = request.response_nonce;
        if !nonce.is_empty() {
            match state.pending.take() {
                Some((version, sent)) if sent == nonce => match request.error_detail {
                    Some(error) => conn.session.nack(
                        ty,
                        Nack {
                            nonce,
                            version,
                            error: error.message,
                        },
                    ),
                    None => conn.session.ack(ty, &version),
                },
                other => {
                    state.pending = other;
                    tracing::debug!(
                        connection = conn.session.id(),
                        kind = ty.label(),
                        nonce,
                        "stale nonce"
                    );
                }
            }
        }
        for name in request.resource_names_subscribe {
            if name == "*" {
                state.subscription.wildcard = true;
            } else if Arc::make_mut(&mut state.subscription.names).insert(name.clone()) {
                state.new_names.insert(name);
                state.must_answer = true;
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                state.subscription.wildcard = false;
            } else {
                Arc::make_mut(&mut state.subscription.names).remove(&name);
                state.new_names.remove(&name);
                state.known.remove(&name);
            }
        }
        if !state.subscription.wildcard {
            // Without a wildcard the proxy holds only what it names.
            let names = &state.subscription.names;
            state.known.retain(|name, _| names.contains(name));
        }
        conn.session.subscribed(ty, state.subscription.clone());
        Self::respond(conn, ty).await
    }

    /// Sends what changed of `ty` for this proxy, if anything did or a request is waiting; does
    /// nothing while the stream is held before the initial sync.
    async fn respond(conn: &mut Connection<Self>, ty: ResourceType) -> Result<(), Closed> {
        let Some(snapshot) = conn.session.snapshot.clone() else {
            return Ok(());
        };
        let Some(state) = conn.types.get_mut(&ty) else {
            return Ok(());
        };
        let current = state.subscription.select(&snapshot, ty);
        let names: BTreeSet<&str> = current.iter().map(|e| e.name.as_str()).collect();
        let mut removed: Vec<String> = state
            .known
            .keys()
            .filter(|name| !names.contains(name.as_str()))
            .cloned()
            .collect();
        for name in std::mem::take(&mut state.new_names) {
            if !names.contains(name.as_str()) && !removed.contains(&name) {
                removed.push(name);
            }
        }
        let changed: Vec<Resource> = current
            .iter()
            .filter(|e| state.known.get(&e.name) != Some(&e.version))
            .map(|e| Resource {
                name: e.name.clone(),
                version: e.version.clone(),
                resource: Some(e.resource.clone()),
                ..Default::default()
            })
            .collect();
        if changed.is_empty() && removed.is_empty() && !state.must_answer {
            return Ok(());
        }
        state.known = current
            .iter()
            .map(|e| (e.name.clone(), e.version.clone()))
            .collect();
        let version = set_version(&current);
        let nonce = conn.session.next_nonce();
        conn.session.sent(ty, &version, &nonce);
        state.pending = Some((version.clone(), nonce.clone()));
        state.must_answer = false;
        let response = DeltaDiscoveryResponse {
            system_version_info: version,
            resources: changed,
            type_url: ty.type_url().to_owned(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        };
        conn.send(framing::encode(&response)).await
    }
}
