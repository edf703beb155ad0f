//! The proto3 JSON mapping for Envoy's types: bootstrap files in YAML or JSON, `/config_dump`
//! and the control plane's golden files.
//!
//! `envoy-types` ships Envoy's descriptor set (checked in under `descriptors/`, refreshed by
//! `descriptors/update.sh`); a `prost-reflect` pool built from it maps JSON to and from protobuf,
//! including `@type` inside `Any`, without a hand-written parser. The pool is built once, on first
//! use: the proxy's request path never touches it.

use std::sync::OnceLock;

use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};

static DESCRIPTORS: &[u8] = include_bytes!("../descriptors/envoy-types-0.7.7.bin");

/// A JSON or YAML document that is not a valid instance of the expected message.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The document is not syntactically YAML/JSON.
    #[error("cannot parse {format}: {reason}")]
    Syntax {
        /// `YAML` or `JSON`.
        format: &'static str,
        /// The parser's reason, with line and column where it has them.
        reason: String,
    },
    /// The document does not fit the message (unknown field, wrong type, unknown `@type`...).
    #[error("invalid {message}: {reason}")]
    Schema {
        /// The message being read.
        message: String,
        /// What did not fit.
        reason: String,
    },
    /// The descriptor pool has no such message.
    #[error("unknown message type {0}")]
    UnknownMessage(String),
}

/// Envoy's descriptor pool, decoded on first use.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTORS).expect("the checked-in descriptor set decodes")
    })
}

/// Reads a message from a proto3-JSON value (field names in `snake_case` or `lowerCamelCase`).
pub fn from_value<M: Message + Name + Default>(value: serde_json::Value) -> Result<M, JsonError> {
    let name = M::full_name();
    let descriptor = pool()
        .get_message_by_name(&name)
        .ok_or_else(|| JsonError::UnknownMessage(name.clone()))?;
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let dynamic =
        DynamicMessage::deserialize_with_options(descriptor, value, &options).map_err(|e| {
            JsonError::Schema {
                message: name.clone(),
                reason: e.to_string(),
            }
        })?;
    dynamic.transcode_to::<M>().map_err(|e| JsonError::Schema {
        message: name,
        reason: e.to_string(),
    })
}

/// Reads a message from JSON text.
pub fn from_json_str<M: Message + Name + Default>(text: &str) -> Result<M, JsonError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| JsonError::Syntax {
        format: "JSON",
        reason: e.to_string(),
    })?;
    from_value(value)
}

/// Reads a message from YAML text (a superset of JSON, so JSON files parse too).
pub fn from_yaml_str<M: Message + Name + Default>(text: &str) -> Result<M, JsonError> {
    let value: serde_json::Value =
        serde_yaml_ng::from_str(text).map_err(|e| JsonError::Syntax {
            format: "YAML",
            reason: e.to_string(),
        })?;
    from_value(value)
}

/// Writes a message as proto3 JSON the way Envoy's `/config_dump` does: `snake_case` field names,
/// default values omitted, `Any` expanded with `@type`.
pub fn to_value<M: Message + Name>(message: &M) -> Result<serde_json::Value, JsonError> {
    let name = M::full_name();
    let descriptor = pool()
        .get_message_by_name(&name)
        .ok_or_else(|| JsonError::UnknownMessage(name.clone()))?;
    let dynamic =
        DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).map_err(|e| {
            JsonError::Schema {
                message: name.clone(),
                reason: e.to_string(),
            }
        })?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| JsonError::Schema {
            message: name,
            reason: e.to_string(),
        })
}

/// Writes an `Any` (an xDS resource) as proto3 JSON with its `@type`.
pub fn any_to_value(any: &crate::google::protobuf::Any) -> Result<serde_json::Value, JsonError> {
    to_value(any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy::config::bootstrap::v3::Bootstrap;

    const BOOTSTRAP: &str = r#"
node: { id: "sidecar~10.0.0.1~app.default~default.svc.cluster.local", cluster: app }
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 15000 } }
static_resources:
  listeners:
  - name: ingress
    address: { socket_address: { address: 0.0.0.0, port_value: 8080 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config: { name: local, virtual_hosts: [ { name: all, domains: ["*"] } ] }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - name: backend
    connect_timeout: 0.25s
    type: STATIC
"#;

    #[test]
    fn yaml_bootstrap_with_any_round_trips() {
        let bootstrap: Bootstrap = from_yaml_str(BOOTSTRAP).unwrap();
        let static_resources = bootstrap.static_resources.as_ref().unwrap();
        assert_eq!(static_resources.listeners[0].name, "ingress");
        assert_eq!(
            static_resources.clusters[0].connect_timeout.unwrap().nanos,
            250_000_000
        );
        let json = to_value(&bootstrap).unwrap();
        let hcm = &json["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
        assert_eq!(hcm["typed_config"]["stat_prefix"], "ingress");
        assert_eq!(from_value::<Bootstrap>(json).unwrap(), bootstrap);
    }

    #[test]
    fn unknown_field_is_an_error_that_names_it() {
        let err = from_yaml_str::<Bootstrap>("node: { id: x, colour: blue }").unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
