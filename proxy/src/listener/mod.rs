//! Listeners: validated from `envoy.config.listener.v3.Listener`, bound (or not, `bind_to_port`),
//! accepting connections and handing each to the filter chain that matches it.
//!
//! The validated [`Listener`] is pure config; [`manager::ListenerManager`] owns the sockets and
//! reconciles them with each snapshot: a changed listener keeps its socket, the next connection
//! sees the new filter chains, and the connections it accepted before are drained as Envoy
//! drains an updated listener.

pub mod filter_chain;
pub mod inspector;
pub mod manager;

use std::net::SocketAddr;
use std::sync::Arc;

use xds_proto::envoy::config::core::v3 as core_pb;
use xds_proto::envoy::config::listener::v3 as listener_pb;

use crate::http_connection_manager::{HttpConnectionManagerConfig, RouteSource};
use crate::route::Invalid;
use crate::tcp_proxy::TcpProxyConfig;

pub use filter_chain::{ConnectionInfo, FilterChain, FilterChainMatch, NetworkFilter};

/// A listener Ferry cannot accept; becomes the NACK's `error_detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("listener {name}: {field}: {reason}")]
pub struct InvalidListener {
    /// The listener name.
    pub name: String,
    /// The field path, e.g. `filter_chains[0].filters[1].typed_config`.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
}

/// A validated listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// The listener's xDS name (`virtualOutbound`, `0.0.0.0_9080`...).
    pub name: String,
    /// The address it listens on (or, with `bind_to_port: false`, the address redirected
    /// connections and explicit-proxy requests are matched against).
    pub address: SocketAddr,
    /// Whether it owns a socket.
    pub bind_to_port: bool,
    /// Hand redirected connections to the listener of their original destination.
    pub use_original_dst: bool,
    /// Filter chains in config order.
    pub filter_chains: Vec<FilterChain>,
    /// Used when no chain matches.
    pub default_filter_chain: Option<FilterChain>,
    /// `tls_inspector` present: detect TLS for `transport_protocol`.
    pub tls_inspector: bool,
    /// `http_inspector` present: detect HTTP/1.x or h2c for `application_protocols`.
    pub http_inspector: bool,
    /// `per_connection_buffer_limit_bytes` (Envoy default 1 MiB): bounds how much of a request
    /// body the router keeps for retries when the route sets no limit of its own.
    pub per_connection_buffer_limit: Option<u32>,
    /// `traffic_direction == OUTBOUND`: its HTTP spans are CLIENT spans (egress), else SERVER
    /// spans (ingress), as Envoy decides.
    pub outbound: bool,
}

impl Listener {
    /// The route configuration names its HTTP connection managers fetch over RDS.
    pub fn rds_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .filter_chains
            .iter()
            .chain(self.default_filter_chain.iter())
            .filter_map(|chain| match &chain.filter {
                NetworkFilter::Http(hcm) => match &hcm.route {
                    RouteSource::Rds(name) => Some(name.clone()),
                    RouteSource::Static(_) => None,
                },
                NetworkFilter::Tcp(_) => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The filter chain for a connection, by Envoy's most-specific-match rules.
    pub fn select_chain(&self, conn: &ConnectionInfo) -> Option<&FilterChain> {
        filter_chain::select(&self.filter_chains, conn).or(self.default_filter_chain.as_ref())
    }

    /// The first HTTP connection manager of the listener, for explicit-proxy dispatch (Istio's
    /// `0.0.0.0_PORT` listeners carry one HCM chain).
    pub fn http_connection_manager(&self) -> Option<&Arc<HttpConnectionManagerConfig>> {
        self.filter_chains
            .iter()
            .chain(self.default_filter_chain.iter())
            .find_map(|chain| match &chain.filter {
                NetworkFilter::Http(hcm) => Some(hcm),
                NetworkFilter::Tcp(_) => None,
            })
    }
}

impl TryFrom<&listener_pb::Listener> for Listener {
    type Error = InvalidListener;
    fn try_from(listener: &listener_pb::Listener) -> Result<Self, InvalidListener> {
        build(listener).map_err(|e| InvalidListener {
            name: listener.name.clone(),
            field: e.field,
            reason: e.reason,
        })
    }
}

/// Converts an Envoy `Address` holding an IP socket address.
pub(crate) fn socket_address(
    address: Option<&core_pb::Address>,
    field: &str,
) -> Result<SocketAddr, Invalid> {
    use core_pb::address::Address as A;
    use core_pb::socket_address::PortSpecifier as P;
    let Some(A::SocketAddress(sa)) = address.and_then(|a| a.address.as_ref()) else {
        return Err(Invalid::new(field, "a socket_address is required"));
    };
    if sa.protocol != 0 {
        return Err(Invalid::new(
            format!("{field}.socket_address.protocol"),
            "only TCP is supported",
        ));
    }
    let ip = sa.address.parse::<std::net::IpAddr>().map_err(|_| {
        Invalid::new(
            format!("{field}.socket_address.address"),
            format!("{:?} is not an IP address", sa.address),
        )
    })?;
    let port = match sa.port_specifier {
        Some(P::PortValue(p)) => u16::try_from(p).map_err(|_| {
            Invalid::new(
                format!("{field}.socket_address.port_value"),
                "port out of range",
            )
        })?,
        Some(P::NamedPort(_)) => {
            return Err(Invalid::new(
                format!("{field}.socket_address.named_port"),
                "named ports are not supported",
            ));
        }
        None => 0,
    };
    Ok(SocketAddr::new(ip, port))
}

#[allow(deprecated)]
fn build(l: &listener_pb::Listener) -> Result<Listener, Invalid> {
    let refuse_if = |set: bool, field: &str| {
        if set {
            Err(Invalid::new(field, "not implemented by ferry-proxy"))
        } else {
            Ok(())
        }
    };
    refuse_if(!l.additional_addresses.is_empty(), "additional_addresses")?;
    refuse_if(l.fcds_config.is_some(), "fcds_config")?;
    refuse_if(l.filter_chain_matcher.is_some(), "filter_chain_matcher")?;
    refuse_if(l.transparent.is_some_and(|b| b.value), "transparent")?;
    refuse_if(l.freebind.is_some_and(|b| b.value), "freebind")?;
    refuse_if(!l.socket_options.is_empty(), "socket_options")?;
    refuse_if(l.udp_listener_config.is_some(), "udp_listener_config")?;
    refuse_if(l.api_listener.is_some(), "api_listener")?;
    refuse_if(
        l.connection_balance_config.is_some(),
        "connection_balance_config",
    )?;
    refuse_if(!l.access_log.is_empty(), "access_log")?;
    refuse_if(l.enable_mptcp, "enable_mptcp")?;
    refuse_if(l.listener_specifier.is_some(), "listener_specifier")?;
    let address = socket_address(l.address.as_ref(), "address")?;
    let mut tls_inspector = false;
    let mut http_inspector = false;
    for (i, f) in l.listener_filters.iter().enumerate() {
        let field = format!("listener_filters[{i}]");
        if f.filter_disabled.is_some() {
            return Err(Invalid::new(
                format!("{field}.filter_disabled"),
                "not implemented by ferry-proxy",
            ));
        }
        let type_url = match &f.config_type {
            Some(listener_pb::listener_filter::ConfigType::TypedConfig(any)) => {
                any.type_url.as_str()
            }
            Some(_) => {
                return Err(Invalid::new(
                    format!("{field}.config_discovery"),
                    "not implemented by ferry-proxy",
                ));
            }
            None => "",
        };
        let kind = type_url.rsplit('.').next().unwrap_or_default();
        match (f.name.as_str(), kind) {
            (_, "TlsInspector") | ("envoy.filters.listener.tls_inspector", "") => {
                tls_inspector = true
            }
            (_, "HttpInspector") | ("envoy.filters.listener.http_inspector", "") => {
                http_inspector = true
            }
            (_, "OriginalDst") | ("envoy.filters.listener.original_dst", "") => {}
            _ => {
                return Err(Invalid::new(
                    format!("{field}.typed_config"),
                    format!("listener filter {} ({type_url}) is not implemented", f.name),
                ));
            }
        }
    }
    let mut filter_chains = Vec::with_capacity(l.filter_chains.len());
    for (i, chain) in l.filter_chains.iter().enumerate() {
        filter_chains.push(FilterChain::from_proto(
            chain,
            &format!("filter_chains[{i}]"),
        )?);
    }
    filter_chain::check_unique(&filter_chains)?;
    let default_filter_chain = l
        .default_filter_chain
        .as_ref()
        .map(|c| FilterChain::from_proto(c, "default_filter_chain"))
        .transpose()?;
    if filter_chains.is_empty() && default_filter_chain.is_none() {
        return Err(Invalid::new(
            "filter_chains",
            "at least one filter chain is required",
        ));
    }
    Ok(Listener {
        name: l.name.clone(),
        address,
        bind_to_port: l.bind_to_port.is_none_or(|b| b.value),
        use_original_dst: l.use_original_dst.is_some_and(|b| b.value),
        filter_chains,
        default_filter_chain,
        tls_inspector,
        http_inspector,
        per_connection_buffer_limit: l.per_connection_buffer_limit_bytes.map(|v| v.value),
        outbound: l.traffic_direction == 2,
    })
}

/// The network filters a chain may end with.
pub(crate) fn network_filter(
    f: &listener_pb::Filter,
    field: &str,
) -> Result<NetworkFilter, Invalid> {
    use listener_pb::filter::ConfigType;
    let any = match &f.config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        Some(_) => {
            return Err(Invalid::new(
                format!("{field}.config_discovery"),
                "not implemented by ferry-proxy",
            ));
        }
        None => {
            return Err(Invalid::new(
                format!("{field}.typed_config"),
                "typed_config is required",
            ));
        }
    };
    let unpack_err = |e: xds_proto::any::UnpackError| {
        Invalid::new(format!("{field}.typed_config"), e.to_string())
    };
    match any.type_url.rsplit('/').next().unwrap_or_default() {
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => {
            let hcm = xds_proto::any::unpack(any).map_err(unpack_err)?;
            let config =
                HttpConnectionManagerConfig::from_proto(&hcm, &format!("{field}.typed_config"))?;
            Ok(NetworkFilter::Http(Arc::new(config)))
        }
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" => {
            let tcp = xds_proto::any::unpack(any).map_err(unpack_err)?;
            Ok(NetworkFilter::Tcp(TcpProxyConfig::from_proto(
                &tcp,
                &format!("{field}.typed_config"),
            )?))
        }
        other => Err(Invalid::new(
            format!("{field}.typed_config"),
            format!("network filter {} ({other}) is not implemented", f.name),
        )),
    }
}

#[cfg(test)]
mod tests;
