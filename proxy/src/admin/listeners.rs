//! `/listeners`: every active listener and the address it is bound to (`name::ADDRESS`, or
//! `?format=json` as `envoy.admin.v3.Listeners`). Listeners on port 0 report the port the OS
//! gave them, which is how tests and tools find them, as with Envoy.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use xds_proto::any::unpack;
use xds_proto::envoy::admin::v3::{ListenerStatus, Listeners};
use xds_proto::envoy::config::listener::v3::Listener;
use xds_proto::json::JsonError;

use super::clusters::{address_string, socket_address};
use crate::xds::Tracker;
use crate::xds::resources::Kind;

/// A lookup of a listener's bound address by name.
pub type AddrLookup = dyn Fn(&str) -> Option<SocketAddr> + Send + Sync;

/// Looks up the address a listener is bound to, by name (the listener manager knows).
#[derive(Clone)]
pub struct ListenerAddrs(pub Arc<AddrLookup>);

impl std::fmt::Debug for ListenerAddrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListenerAddrs")
    }
}

/// Active listeners with their bound (or, unbound, configured) addresses.
pub fn listener_statuses(tracker: &Tracker, bound: Option<&ListenerAddrs>) -> Listeners {
    let listener_statuses = tracker.with_state(|state| {
        state
            .slots(Kind::Listener)
            .iter()
            .filter_map(|(name, slot)| {
                let entry = slot.active.as_ref()?;
                let local_address = match bound.and_then(|lookup| (lookup.0)(name)) {
                    Some(addr) => Some(socket_address(addr)),
                    None => unpack::<Listener>(&entry.raw).ok()?.address,
                };
                Some(ListenerStatus {
                    name: name.clone(),
                    local_address,
                    ..Default::default()
                })
            })
            .collect()
    });
    Listeners { listener_statuses }
}

/// Envoy's text format: `name::address` per line.
pub fn render_text(listeners: &Listeners) -> String {
    let mut out = String::new();
    for listener in &listeners.listener_statuses {
        let address = address_string(listener.local_address.as_ref());
        let _ = writeln!(out, "{}::{address}", listener.name);
    }
    out
}

/// `?format=json`.
pub fn render_json(listeners: &Listeners) -> Result<serde_json::Value, JsonError> {
    xds_proto::json::to_value(listeners)
}
