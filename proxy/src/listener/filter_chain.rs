//! Filter chains and Envoy's filter chain matching: criteria are applied in order (destination
//! port, destination IP, server name, transport protocol, application protocols), and at each
//! step the most specific chains that match win, falling back to chains that leave the criterion
//! unset.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use xds_proto::envoy::config::listener::v3 as listener_pb;

use crate::http_connection_manager::HttpConnectionManagerConfig;
use crate::route::Invalid;
use crate::tcp_proxy::TcpProxyConfig;

/// The terminal network filter of a chain.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkFilter {
    /// `envoy.filters.network.http_connection_manager`.
    Http(Arc<HttpConnectionManagerConfig>),
    /// `envoy.filters.network.tcp_proxy`.
    Tcp(TcpProxyConfig),
}

/// A CIDR range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub address: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl Cidr {
    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.address, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Envoy's `FilterChainMatch` (the criteria Ferry implements).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilterChainMatch {
    /// `destination_port`.
    pub destination_port: Option<u16>,
    /// `prefix_ranges` on the destination IP.
    pub prefix_ranges: Vec<Cidr>,
    /// `server_names` (SNI), lower case; `*.suffix` wildcards allowed.
    pub server_names: Vec<String>,
    /// `transport_protocol` (`raw_buffer`, `tls`); empty = any.
    pub transport_protocol: String,
    /// `application_protocols` (ALPN or `http/1.1`, `h2c` from the HTTP inspector).
    pub application_protocols: Vec<String>,
}

/// A validated filter chain.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterChain {
    /// Chain name (Istio names some, e.g. `virtualInbound-blackhole`).
    pub name: String,
    /// When it applies.
    pub matcher: FilterChainMatch,
    /// What it runs.
    pub filter: NetworkFilter,
}

/// What the listener knows about a new connection when it picks a chain.
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    /// The destination: the local address, or the original destination for a redirected one.
    pub destination: Option<SocketAddr>,
    /// `raw_buffer` or `tls`.
    pub transport_protocol: &'static str,
    /// Detected application protocols.
    pub application_protocols: Vec<String>,
    /// SNI, when TLS.
    pub server_name: Option<String>,
}

impl FilterChain {
    pub(crate) fn from_proto(c: &listener_pb::FilterChain, field: &str) -> Result<Self, Invalid> {
        let f = |s: &str| format!("{field}.{s}");
        if c.transport_socket.is_some() {
            return Err(Invalid::new(
                f("transport_socket"),
                "TLS transport sockets are not implemented yet",
            ));
        }
        #[allow(deprecated)]
        if c.use_proxy_proto.is_some_and(|b| b.value) {
            return Err(Invalid::new(
                f("use_proxy_proto"),
                "not implemented by ferry-proxy",
            ));
        }
        let matcher = match &c.filter_chain_match {
            Some(m) => chain_match(m, &f("filter_chain_match"))?,
            None => FilterChainMatch::default(),
        };
        let [.., last] = c.filters.as_slice() else {
            return Err(Invalid::new(
                f("filters"),
                "a terminal network filter is required",
            ));
        };
        if c.filters.len() > 1 {
            // Only terminal filters exist so far: anything before the terminal one would be
            // silently skipped, so name it.
            let first = &c.filters[0];
            return Err(Invalid::new(
                f("filters[0]"),
                format!("network filter {} is not implemented", first.name),
            ));
        }
        let filter = super::network_filter(last, &f(&format!("filters[{}]", c.filters.len() - 1)))?;
        Ok(Self {
            name: c.name.clone(),
            matcher,
            filter,
        })
    }
}

fn chain_match(
    m: &listener_pb::FilterChainMatch,
    field: &str,
) -> Result<FilterChainMatch, Invalid> {
    let f = |s: &str| format!("{field}.{s}");
    let refuse_if = |set: bool, name: &str| {
        if set {
            Err(Invalid::new(f(name), "not implemented by ferry-proxy"))
        } else {
            Ok(())
        }
    };
    refuse_if(!m.address_suffix.is_empty(), "address_suffix")?;
    refuse_if(m.suffix_len.is_some(), "suffix_len")?;
    refuse_if(
        !m.direct_source_prefix_ranges.is_empty(),
        "direct_source_prefix_ranges",
    )?;
    refuse_if(m.source_type != 0, "source_type")?;
    refuse_if(!m.source_prefix_ranges.is_empty(), "source_prefix_ranges")?;
    refuse_if(!m.source_ports.is_empty(), "source_ports")?;
    for (i, name) in m.server_names.iter().enumerate() {
        let exact = name.strip_prefix("*.").unwrap_or(name);
        if exact.is_empty() || exact.contains('*') {
            return Err(Invalid::new(
                f(&format!("server_names[{i}]")),
                "only exact names and `*.suffix` wildcards are supported",
            ));
        }
    }
    let destination_port = m
        .destination_port
        .map(|p| {
            u16::try_from(p.value)
                .map_err(|_| Invalid::new(f("destination_port"), "port out of range"))
        })
        .transpose()?;
    let mut prefix_ranges = Vec::new();
    for (i, r) in m.prefix_ranges.iter().enumerate() {
        let address: IpAddr = r.address_prefix.parse().map_err(|_| {
            Invalid::new(
                f(&format!("prefix_ranges[{i}].address_prefix")),
                "not an IP address",
            )
        })?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let len = r.prefix_len.map_or(0, |l| l.value);
        if len > max {
            return Err(Invalid::new(
                f(&format!("prefix_ranges[{i}].prefix_len")),
                "prefix too long",
            ));
        }
        prefix_ranges.push(Cidr {
            address,
            len: len as u8,
        });
    }
    Ok(FilterChainMatch {
        destination_port,
        prefix_ranges,
        server_names: m
            .server_names
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect(),
        transport_protocol: m.transport_protocol.clone(),
        application_protocols: m.application_protocols.clone(),
    })
}

/// Envoy refuses a listener whose chains share identical match criteria.
pub(crate) fn check_unique(chains: &[FilterChain]) -> Result<(), Invalid> {
    for (i, a) in chains.iter().enumerate() {
        if let Some(j) = chains[..i].iter().position(|b| b.matcher == a.matcher) {
            return Err(Invalid::new(
                format!("filter_chains[{i}].filter_chain_match"),
                format!("same matching rules as filter_chains[{j}]"),
            ));
        }
    }
    Ok(())
}

/// Narrows `candidates` to those whose criterion is set and scores best (higher is more
/// specific), or else to those leaving it unset.
fn narrow(
    candidates: Vec<&FilterChain>,
    score: impl Fn(&FilterChainMatch) -> Option<Option<u32>>,
) -> Vec<&FilterChain> {
    // score: None = criterion unset; Some(None) = set, no match; Some(Some(s)) = match.
    let best = candidates
        .iter()
        .filter_map(|c| score(&c.matcher).flatten())
        .max();
    match best {
        Some(best) => candidates
            .into_iter()
            .filter(|c| score(&c.matcher) == Some(Some(best)))
            .collect(),
        None => candidates
            .into_iter()
            .filter(|c| score(&c.matcher).is_none())
            .collect(),
    }
}

/// How well `pattern` matches `sni` (both lower case): an exact name beats every wildcard, a
/// longer `*.suffix` beats a shorter one, as Envoy's lookup order.
fn server_name_score(pattern: &str, sni: &str) -> Option<u32> {
    match pattern.strip_prefix('*') {
        None => (pattern == sni).then_some(u32::MAX),
        Some(suffix) => (sni.len() > suffix.len() && sni.ends_with(suffix))
            .then(|| u32::try_from(suffix.len()).unwrap_or(u32::MAX - 1)),
    }
}

/// The chain Envoy would pick, if any.
pub fn select<'a>(chains: &'a [FilterChain], conn: &ConnectionInfo) -> Option<&'a FilterChain> {
    let mut candidates: Vec<&FilterChain> = chains.iter().collect();
    let port = conn.destination.map(|d| d.port());
    let ip = conn.destination.map(|d| d.ip());
    candidates = narrow(candidates, |m| {
        m.destination_port.map(|p| (Some(p) == port).then_some(0))
    });
    candidates = narrow(candidates, |m| {
        (!m.prefix_ranges.is_empty()).then(|| {
            m.prefix_ranges
                .iter()
                .filter(|r| ip.is_some_and(|ip| r.contains(ip)))
                .map(|r| u32::from(r.len))
                .max()
        })
    });
    candidates = narrow(candidates, |m| {
        (!m.server_names.is_empty()).then(|| {
            let sni = conn.server_name.as_deref()?;
            m.server_names
                .iter()
                .filter_map(|n| server_name_score(n, sni))
                .max()
        })
    });
    candidates = narrow(candidates, |m| {
        (!m.transport_protocol.is_empty())
            .then(|| (m.transport_protocol == conn.transport_protocol).then_some(0))
    });
    candidates = narrow(candidates, |m| {
        (!m.application_protocols.is_empty()).then(|| {
            m.application_protocols
                .iter()
                .any(|p| conn.application_protocols.iter().any(|c| c == p))
                .then_some(0)
        })
    });
    candidates.first().copied()
}
