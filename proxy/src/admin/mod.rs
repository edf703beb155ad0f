//! The admin server (Istio's 127.0.0.1:15000): `/ready`, `/config_dump`, `/clusters`, `/stats`,
//! `/stats/prometheus`, `/listeners`, `/quitquitquit`, `/drain_listeners`.
//!
//! It only reads what the xDS side tracks ([`crate::xds::Tracker`]) and the stats store, and
//! turns lifecycle requests into [`Lifecycle`] signals; it never touches the data path.

pub mod clusters;
pub mod config_dump;
mod lifecycle;
pub mod listeners;
pub mod prometheus;
mod server;

use std::net::SocketAddr;

use xds_proto::envoy::config::bootstrap::v3::Bootstrap;
use xds_proto::envoy::config::core::v3::{address, socket_address};

pub use lifecycle::{DrainScope, Lifecycle};
pub use listeners::ListenerAddrs;
pub use server::{AdminState, serve};

/// A bootstrap `admin.address` Ferry cannot bind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bootstrap admin.address: {0}")]
pub struct InvalidAdminAddress(String);

/// The admin address of a bootstrap (`None` without an `admin` block, like Envoy: no admin
/// server). Port 0 asks for any free port; [`serve`] reports the bound one.
pub fn address(bootstrap: &Bootstrap) -> Result<Option<SocketAddr>, InvalidAdminAddress> {
    let Some(address) = bootstrap.admin.as_ref().and_then(|a| a.address.as_ref()) else {
        return Ok(None);
    };
    let Some(address::Address::SocketAddress(socket)) = &address.address else {
        return Err(InvalidAdminAddress(
            "only socket_address is supported".into(),
        ));
    };
    let Some(socket_address::PortSpecifier::PortValue(port)) = socket.port_specifier else {
        return Err(InvalidAdminAddress("port_value is required".into()));
    };
    let ip = socket
        .address
        .parse()
        .map_err(|_| InvalidAdminAddress(format!("{} is not an IP address", socket.address)))?;
    let port = u16::try_from(port).map_err(|_| InvalidAdminAddress(format!("port {port}")))?;
    Ok(Some(SocketAddr::new(ip, port)))
}
