//! Transport sockets: `transport_socket` and `transport_socket_matches`.
//!
//! Istio sends every outbound cluster two matches, `tlsMode-istio` (TLS) and `tlsMode-disabled`
//! (raw_buffer), and tags each endpoint with `filter_metadata["envoy.transport_socket_match"]`
//! (`tlsMode: istio` for sidecar-injected pods). Ferry accepts that shape and picks the match
//! per endpoint exactly as Envoy does (first match whose every key equals the endpoint's
//! metadata). Upstream TLS is not implemented yet: an endpoint that selects a TLS socket still
//! balances normally, but sending to it fails with
//! [`UpstreamError::TransportNotImplemented`](super::UpstreamError) before any byte is written.
//! A plain TLS `transport_socket` (every endpoint TLS) is refused at config time instead.

use std::collections::BTreeMap;

use xds_proto::envoy::config::cluster::v3 as proto;
use xds_proto::envoy::config::core::v3 as core;
use xds_proto::google::protobuf::{Struct, value::Kind};

use super::InvalidCluster;

/// The filter metadata namespace endpoints use to select a transport socket match.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

const RAW_BUFFER_NAME: &str = "envoy.transport_sockets.raw_buffer";
const RAW_BUFFER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
const TLS_NAME: &str = "envoy.transport_sockets.tls";
const TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// How bytes go to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportSocket {
    /// `raw_buffer`: plaintext TCP.
    Plaintext,
    /// `tls` (UpstreamTlsContext): not implemented yet; sends fail with a clear error.
    Tls,
}

/// One entry of `transport_socket_matches`.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportSocketMatch {
    /// The match's name (`tlsMode-istio`), used in stats by Envoy.
    pub name: String,
    /// Key/value pairs that must all equal the endpoint's `envoy.transport_socket_match`
    /// metadata; empty matches every endpoint.
    pub criteria: BTreeMap<String, String>,
    /// The socket used on a match.
    pub socket: TransportSocket,
}

/// The cluster's transport socket selection.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportSockets {
    /// `transport_socket` (plaintext when absent).
    pub default: TransportSocket,
    /// `transport_socket_matches`, in order.
    pub matches: Vec<TransportSocketMatch>,
}

impl Default for TransportSockets {
    fn default() -> Self {
        Self {
            default: TransportSocket::Plaintext,
            matches: Vec::new(),
        }
    }
}

impl TransportSockets {
    /// The socket for an endpoint with this `envoy.transport_socket_match` metadata.
    pub fn for_endpoint(&self, metadata: &BTreeMap<String, String>) -> TransportSocket {
        self.matches
            .iter()
            .find(|m| m.criteria.iter().all(|(k, v)| metadata.get(k) == Some(v)))
            .map_or(self.default, |m| m.socket)
    }
}

impl TryFrom<&proto::Cluster> for TransportSockets {
    type Error = InvalidCluster;

    fn try_from(c: &proto::Cluster) -> Result<Self, InvalidCluster> {
        let name = c.name.as_str();
        let default = match &c.transport_socket {
            None => TransportSocket::Plaintext,
            Some(ts) => match socket(name, "transport_socket", ts)? {
                TransportSocket::Plaintext => TransportSocket::Plaintext,
                TransportSocket::Tls => {
                    return Err(InvalidCluster::new(
                        name,
                        "transport_socket",
                        "upstream TLS is not implemented",
                    ));
                }
            },
        };
        let mut matches = Vec::with_capacity(c.transport_socket_matches.len());
        for (i, m) in c.transport_socket_matches.iter().enumerate() {
            let field = format!("transport_socket_matches[{i}]");
            let socket = match &m.transport_socket {
                Some(ts) => socket(name, &format!("{field}.transport_socket"), ts)?,
                None => {
                    return Err(InvalidCluster::new(
                        name,
                        format!("{field}.transport_socket"),
                        "is required",
                    ));
                }
            };
            let criteria = match &m.r#match {
                None => BTreeMap::new(),
                Some(s) => string_fields(s).map_err(|key| {
                    InvalidCluster::new(
                        name,
                        format!("{field}.match.{key}"),
                        "only string values are supported",
                    )
                })?,
            };
            matches.push(TransportSocketMatch {
                name: m.name.clone(),
                criteria,
                socket,
            });
        }
        Ok(Self { default, matches })
    }
}

fn socket(
    name: &str,
    field: &str,
    ts: &core::TransportSocket,
) -> Result<TransportSocket, InvalidCluster> {
    use core::transport_socket::ConfigType;
    let type_url = ts
        .config_type
        .as_ref()
        .map(|ConfigType::TypedConfig(any)| any.type_url.as_str());
    match (ts.name.as_str(), type_url) {
        (_, Some(RAW_BUFFER_TYPE)) | (RAW_BUFFER_NAME, None) => Ok(TransportSocket::Plaintext),
        (_, Some(TLS_TYPE)) | (TLS_NAME, None) => Ok(TransportSocket::Tls),
        (n, t) => Err(InvalidCluster::new(
            name,
            field,
            format!(
                "transport socket {n:?} ({}) is not implemented",
                t.unwrap_or("no typed_config")
            ),
        )),
    }
}

/// The string-valued fields of a Struct; `Err(key)` for the first non-string value.
pub(crate) fn string_fields(s: &Struct) -> Result<BTreeMap<String, String>, String> {
    s.fields
        .iter()
        .map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(s)) => Ok((k.clone(), s.clone())),
            _ => Err(k.clone()),
        })
        .collect()
}
