//! The proto3 JSON mapping for Envoy's types: bootstrap files in YAML or JSON, `/config_dump`
//! and the control plane's golden files.
//!
//! `envoy-types` ships Envoy's descriptor set (checked in under `descriptors/`, refreshed by
//! `descriptors/update.sh`, embedded by `build.rs` without source info and custom options, 0.6
//! of 3.3 MB); a `prost-reflect` pool built from it maps JSON to and from protobuf, including
//! `@type` inside `Any`, without a hand-written parser. A pool of every Envoy message is still
//! several MiB of heap, so where it comes from is the caller's choice. While retention is on
//! (the default: the control plane and tests, which map many documents) the full pool is decoded
//! on first use and kept. With retention off (a sidecar, which maps its bootstrap and an
//! occasional `/config_dump`) each document gets a pool of only the files it needs, found
//! through a [`DescriptorIndex`]: the root message and every `@type` in the document, with their
//! imports. That keeps the sidecar's start-up peak near its idle size; the xDS path decodes
//! protobuf directly and never needs a pool.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use prost::{Message, Name};
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value,
};

use crate::descriptor_index::{DescriptorIndex, IndexError};

/// Envoy's descriptor set as `build.rs` leaves it: without source info and custom options.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy-descriptors.bin"));

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
    /// The embedded descriptor set could not be indexed or a pool built from it.
    #[error("descriptor set: {0}")]
    Descriptors(#[from] IndexError),
}

/// The embedded descriptor set (a serialized `FileDescriptorSet`), for callers
/// that manage its pages (ferry-proxy hands them back to the OS once its bootstrap is read).
pub fn descriptor_set() -> &'static [u8] {
    DESCRIPTORS
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

/// How many times the full pool has been decoded in this process.
static FULL_DECODES: AtomicUsize = AtomicUsize::new(0);

/// How many times this process has decoded the full pool (every Envoy message): a sidecar that
/// turned retention off before reading its bootstrap never does unless [`pool`] is called.
pub fn full_pool_decodes() -> usize {
    FULL_DECODES.load(Ordering::Relaxed)
}

/// Envoy's descriptor pool: decoded on first use, then shared while anyone holds it and, while
/// retention is on (the default), kept for the life of the process.
pub fn pool() -> Arc<DescriptorPool> {
    let mut cache = lock_pool();
    if let Some(pool) = cache.shared.upgrade() {
        return pool;
    }
    FULL_DECODES.fetch_add(1, Ordering::Relaxed);
    let pool = Arc::new(
        DescriptorPool::decode(DESCRIPTORS).expect("the checked-in descriptor set decodes"),
    );
    cache.shared = Arc::downgrade(&pool);
    if cache.retain {
        cache.retained = Some(pool.clone());
    }
    pool
}

/// Whether the full pool is decoded and kept for mapping documents (the default). Turning
/// retention off drops the kept pool now (it is freed once the last caller lets go) and makes
/// every later mapping build a pool of only the files its document needs, a few milliseconds
/// per document instead of the full pool resident. A sidecar turns it off before it reads its
/// bootstrap, so the full pool is never decoded at all.
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

/// The full pool, if one is to be used: while retention is on (decoded now if need be), or while
/// some caller holds one anyway. `None` means: build a minimal pool for the document.
fn full_pool_in_use() -> Option<Arc<DescriptorPool>> {
    let retain = {
        let cache = lock_pool();
        if let Some(pool) = cache.shared.upgrade() {
            return Some(pool);
        }
        cache.retain
    };
    retain.then(pool)
}

/// The index of the embedded set, built per use: it is cheap (a walk over 0.6 MB, message
/// names only) next to the pool it saves, and keeping it would cost the sidecar its size.
fn embedded_index() -> Result<DescriptorIndex, JsonError> {
    Ok(DescriptorIndex::new(Bytes::from_static(DESCRIPTORS))?)
}

/// The message names a JSON document refers to through `@type` (`Any` payloads, nested too).
fn type_urls_in(value: &serde_json::Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(name) = map
                    .get("@type")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|url| url.rsplit_once('/'))
                    .map(|(_, name)| name)
                {
                    names.insert(name.to_owned());
                }
                pending.extend(map.values());
            }
            serde_json::Value::Array(items) => pending.extend(items),
            _ => {}
        }
    }
    names
}

/// A pool of just the files a document needs: the root message's and those of every `@type`.
fn minimal_pool_for_value(
    root: &str,
    value: &serde_json::Value,
) -> Result<DescriptorPool, JsonError> {
    let mut names = type_urls_in(value);
    names.insert(root.to_owned());
    Ok(embedded_index()?.pool_for(names.iter().map(String::as_str))?)
}

/// Reads a message from a proto3-JSON value (field names in `snake_case` or `lowerCamelCase`).
pub fn from_value<M: Message + Name + Default>(value: serde_json::Value) -> Result<M, JsonError> {
    match full_pool_in_use() {
        Some(pool) => from_value_in(&pool, value),
        None => {
            let pool = minimal_pool_for_value(&M::full_name(), &value)?;
            from_value_in(&pool, value)
        }
    }
}

fn message_in(pool: &DescriptorPool, name: &str) -> Result<MessageDescriptor, JsonError> {
    pool.get_message_by_name(name)
        .ok_or_else(|| JsonError::UnknownMessage(name.to_owned()))
}

fn from_value_in<M: Message + Name + Default>(
    pool: &DescriptorPool,
    value: serde_json::Value,
) -> Result<M, JsonError> {
    let name = M::full_name();
    let descriptor = message_in(pool, &name)?;
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
    let bytes = message.encode_to_vec();
    match full_pool_in_use() {
        Some(pool) => to_value_in(&pool, &name, &bytes),
        None => to_value_minimal(&name, &bytes),
    }
}

/// Serializes through pools of only the files needed. The `Any`s inside a message are known only
/// once it is decoded, and their payloads may hold more, so the pool grows until it covers every
/// `Any` the set can describe: one round per level of nesting (a config dump has three).
fn to_value_minimal(name: &str, bytes: &[u8]) -> Result<serde_json::Value, JsonError> {
    let index = embedded_index()?;
    let mut needed = BTreeSet::from([name.to_owned()]);
    loop {
        let pool = index.pool_for(needed.iter().map(String::as_str))?;
        let dynamic = decode_in(&pool, name, bytes)?;
        let mut missing = BTreeSet::new();
        any_types_missing(&dynamic, &pool, &mut missing);
        let before = needed.len();
        needed.extend(missing.into_iter().filter(|name| index.contains(name)));
        if needed.len() == before {
            // What is still missing the set does not define: serializing names it.
            return serialize(name, &dynamic);
        }
    }
}

/// Adds to `missing` the type of every `Any` in `message` (payloads decoded and searched too)
/// that `pool` lacks.
fn any_types_missing(
    message: &DynamicMessage,
    pool: &DescriptorPool,
    missing: &mut BTreeSet<String>,
) {
    if message.descriptor().full_name() == "google.protobuf.Any" {
        let Ok(any) = message.transcode_to::<prost_types::Any>() else {
            return;
        };
        let name = any.type_url.rsplit_once('/').map_or("", |(_, name)| name);
        match pool.get_message_by_name(name) {
            Some(descriptor) => {
                if let Ok(payload) = DynamicMessage::decode(descriptor, any.value.as_slice()) {
                    any_types_missing(&payload, pool, missing);
                }
            }
            None => {
                missing.insert(name.to_owned());
            }
        }
        return;
    }
    for (_, value) in message.fields() {
        any_types_in_value(value, pool, missing);
    }
}

fn any_types_in_value(value: &Value, pool: &DescriptorPool, missing: &mut BTreeSet<String>) {
    match value {
        Value::Message(message) => any_types_missing(message, pool, missing),
        Value::List(items) => {
            for item in items {
                any_types_in_value(item, pool, missing);
            }
        }
        Value::Map(entries) => {
            for item in entries.values() {
                any_types_in_value(item, pool, missing);
            }
        }
        _ => {}
    }
}

fn decode_in(pool: &DescriptorPool, name: &str, bytes: &[u8]) -> Result<DynamicMessage, JsonError> {
    DynamicMessage::decode(message_in(pool, name)?, bytes).map_err(|e| JsonError::Schema {
        message: name.to_owned(),
        reason: e.to_string(),
    })
}

fn serialize(name: &str, dynamic: &DynamicMessage) -> Result<serde_json::Value, JsonError> {
    let options = SerializeOptions::new().use_proto_field_name(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| JsonError::Schema {
            message: name.to_owned(),
            reason: e.to_string(),
        })
}

fn to_value_in(
    pool: &DescriptorPool,
    name: &str,
    bytes: &[u8],
) -> Result<serde_json::Value, JsonError> {
    serialize(name, &decode_in(pool, name, bytes)?)
}

/// Writes an `Any` (an xDS resource) as proto3 JSON with its `@type`.
pub fn any_to_value(any: &crate::google::protobuf::Any) -> Result<serde_json::Value, JsonError> {
    to_value(any)
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
