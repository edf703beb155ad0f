//! Network and listener filters as Istio configures them: the HTTP connection manager (RDS over
//! ADS or an inline route, with Istio's HTTP filter chain fault -> cors -> router), `tcp_proxy`
//! to one cluster or weighted clusters, and the listener filters that recover the original
//! destination and sniff TLS.

use xds_proto::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, ListenerFilter, filter, listener_filter,
};
use xds_proto::envoy::config::route::v3::RouteConfiguration;
use xds_proto::envoy::extensions::filters::http::cors::v3::Cors;
use xds_proto::envoy::extensions::filters::http::fault::v3::HttpFault;
use xds_proto::envoy::extensions::filters::http::router::v3::Router;
use xds_proto::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use xds_proto::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use xds_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
    http_connection_manager::{PathWithEscapedSlashesAction, RouteSpecifier, UpgradeConfig},
    http_filter,
};
use xds_proto::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy,
    tcp_proxy::{ClusterSpecifier, WeightedCluster, weighted_cluster::ClusterWeight},
};
use xds_proto::google::protobuf::BoolValue;

use super::envoy::{ads_config_source, any, seconds};

/// Network filter name of the HTTP connection manager.
pub const HCM: &str = "envoy.filters.network.http_connection_manager";
/// Network filter name of the TCP proxy.
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
/// HTTP filter name of fault injection (configured per route).
pub const FAULT: &str = "envoy.filters.http.fault";
/// HTTP filter name of CORS (configured per route).
pub const CORS: &str = "envoy.filters.http.cors";
/// HTTP filter name of the router.
pub const ROUTER: &str = "envoy.filters.http.router";
/// Listener filter recovering `SO_ORIGINAL_DST`.
pub const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";
/// Listener filter detecting TLS and reading SNI/ALPN.
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

/// Where an HTTP connection manager takes its routes from.
pub enum Routes {
    /// RDS over ADS, by name.
    Rds(String),
    /// An inline route configuration (inbound).
    Inline(Box<RouteConfiguration>),
}

fn http_filter<M: prost::Message + prost::Name>(name: &str, config: &M) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(config))),
        ..Default::default()
    }
}

/// Which HTTP connection manager options to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HcmProfile {
    /// Exactly Istio's: fault and CORS filters always present (so adding a fault rule never
    /// changes, and drains, the listener), path normalisation on.
    Istio,
    /// Local mode (run by ferry-proxy, which implements a subset of Envoy): only the filters
    /// the routes use, Envoy's defaults otherwise.
    Minimal {
        /// Some route has a per-route fault config.
        fault: bool,
        /// Some route has a per-route CORS config.
        cors: bool,
    },
}

impl HcmProfile {
    /// The minimal profile for HCMs serving `routes`.
    pub fn minimal_for(routes: &[&RouteConfiguration]) -> Self {
        let uses = |filter: &str| {
            routes.iter().any(|rc| {
                rc.virtual_hosts.iter().any(|vh| {
                    vh.typed_per_filter_config.contains_key(filter)
                        || vh
                            .routes
                            .iter()
                            .any(|r| r.typed_per_filter_config.contains_key(filter))
                })
            })
        };
        HcmProfile::Minimal {
            fault: uses(FAULT),
            cors: uses(CORS),
        }
    }
}

/// The HTTP connection manager network filter.
pub fn http_connection_manager(stat_prefix: &str, routes: Routes, profile: HcmProfile) -> Filter {
    let (fault, cors, istio) = match profile {
        HcmProfile::Istio => (true, true, true),
        HcmProfile::Minimal { fault, cors } => (fault, cors, false),
    };
    let mut http_filters = Vec::new();
    if fault {
        http_filters.push(http_filter(FAULT, &HttpFault::default()));
    }
    if cors {
        http_filters.push(http_filter(CORS, &Cors::default()));
    }
    http_filters.push(http_filter(ROUTER, &Router::default()));
    let route_specifier = match routes {
        Routes::Rds(name) => RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: name,
        }),
        Routes::Inline(config) => RouteSpecifier::RouteConfig(*config),
    };
    let hcm = HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(route_specifier),
        http_filters,
        use_remote_address: Some(BoolValue { value: false }),
        upgrade_configs: vec![UpgradeConfig {
            upgrade_type: "websocket".to_string(),
            ..Default::default()
        }],
        stream_idle_timeout: Some(seconds(0)),
        normalize_path: istio.then_some(BoolValue { value: true }),
        path_with_escaped_slashes_action: if istio {
            PathWithEscapedSlashesAction::KeepUnchanged as i32
        } else {
            0
        },
        ..Default::default()
    };
    Filter {
        name: HCM.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
    }
}

/// Where a TCP proxy sends connections.
#[derive(Debug, Clone, PartialEq)]
pub enum TcpTarget {
    /// One cluster.
    Cluster(String),
    /// Several, by weight.
    Weighted(Vec<(String, u32)>),
}

/// The TCP proxy network filter.
pub fn tcp_proxy(stat_prefix: &str, target: TcpTarget) -> Filter {
    let cluster_specifier = match target {
        TcpTarget::Cluster(name) => ClusterSpecifier::Cluster(name),
        TcpTarget::Weighted(clusters) => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .into_iter()
                .map(|(name, weight)| ClusterWeight {
                    name,
                    weight,
                    ..Default::default()
                })
                .collect(),
        }),
    };
    let proxy = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(cluster_specifier),
        ..Default::default()
    };
    Filter {
        name: TCP_PROXY.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
    }
}

/// A filter chain with a single TCP proxy to `cluster`.
pub fn tcp_chain(name: &str, cluster: &str) -> FilterChain {
    FilterChain {
        name: name.to_string(),
        filters: vec![tcp_proxy(cluster, TcpTarget::Cluster(cluster.to_string()))],
        ..Default::default()
    }
}

/// The original destination listener filter.
pub fn original_dst() -> ListenerFilter {
    ListenerFilter {
        name: ORIGINAL_DST.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &OriginalDst::default(),
        ))),
        ..Default::default()
    }
}

/// The TLS inspector listener filter.
pub fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: TLS_INSPECTOR.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// Applies `edit` to every HTTP connection manager of `listeners` (every filter chain, the
/// default one included), re-packing each. Used by the passes that add mesh-wide settings (access
/// logs, tracing) after the listeners are built.
pub fn for_each_hcm(listeners: &mut [Listener], mut edit: impl FnMut(&mut HttpConnectionManager)) {
    let chains = listeners.iter_mut().flat_map(|l| {
        l.filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.as_mut())
    });
    for chain in chains {
        for f in &mut chain.filters {
            if f.name != HCM {
                continue;
            }
            let Some(filter::ConfigType::TypedConfig(typed)) = &mut f.config_type else {
                continue;
            };
            let Ok(mut hcm) = xds_proto::any::unpack::<HttpConnectionManager>(typed) else {
                continue;
            };
            edit(&mut hcm);
            *typed = any(&hcm);
        }
    }
}
