//! The proto3 JSON mapping for Envoy's types: bootstrap files in YAML or JSON, `/config_dump`
//! and the control plane's golden files.
//!
//! `envoy-types` ships Envoy's descriptor set (checked in under `descriptors/`, refreshed by
//! `descriptors/update.sh`); a `prost-reflect` pool built from it maps JSON to and from protobuf,
//! including `@type` inside `Any`, without a hand-written parser. The pool is built on first use
//! and is big (about 33 MiB of heap for every Envoy message), so whether it stays is the
//! caller's choice: the control plane and tests keep it (the default), while a sidecar, which
//! needs it only to read its bootstrap and to answer an occasional `/config_dump`, calls
//! [`retain_pool`]`(false)` once started so the memory goes back to the allocator; the xDS path
//! decodes protobuf directly and never needs it.

use std::sync::{Arc, Mutex, Weak};

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

/// The shared pool: kept alive by `retained` while retention is on, otherwise only as long as
/// some caller holds the `Arc` (`shared` lets concurrent callers share one decode).
struct PoolCache {
    retain: bool,
    retained: Option<Arc<DescriptorPool>>,
    shared: Weak<DescriptorPool>,
}

static POOL: Mutex<PoolCache> = Mutex::new(PoolCache {
    retain: true,
    retained: None,
    shared: Weak::new(),
});

fn lock_pool() -> std::sync::MutexGuard<'static, PoolCache> {
    POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Envoy's descriptor pool: decoded on first use, then shared while anyone holds it and, while
/// retention is on (the default), kept for the life of the process.
pub fn pool() -> Arc<DescriptorPool> {
    let mut cache = lock_pool();
    if let Some(pool) = cache.shared.upgrade() {
        return pool;
    }
    let pool = Arc::new(
        DescriptorPool::decode(DESCRIPTORS).expect("the checked-in descriptor set decodes"),
    );
    cache.shared = Arc::downgrade(&pool);
    if cache.retain {
        cache.retained = Some(pool.clone());
    }
    pool
}

/// Whether the pool stays decoded between uses. Turning retention off drops the kept pool now
/// (it is freed once the last caller lets go) and makes every later use decode a fresh one,
/// trading a few tens of milliseconds per use for about 33 MiB of resident memory.
pub fn retain_pool(retain: bool) {
    let dropped = {
        let mut cache = lock_pool();
        cache.retain = retain;
        if retain {
            cache.retained = cache.shared.upgrade();
            None
        } else {
            cache.retained.take()
        }
    };
    // Freed outside the lock: dropping tens of thousands of descriptors takes a while.
    drop(dropped);
}

/// Whether a decoded pool is alive right now (kept, or held by a caller).
pub fn pool_is_alive() -> bool {
    lock_pool().shared.strong_count() > 0
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
