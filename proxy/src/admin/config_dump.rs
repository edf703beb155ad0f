//! `/config_dump`: Envoy's `envoy.admin.v3.ConfigDump`, built from the raw resources the xDS
//! client accepted (with their versions and times) and rendered with the proto3 JSON mapping,
//! so `istioctl proxy-config` style tooling reads it like Envoy's.

use std::time::SystemTime;

use xds_proto::any::{pack, unpack};
use xds_proto::envoy::admin::v3::{
    BootstrapConfigDump, ClustersConfigDump, ConfigDump, EndpointsConfigDump, ListenersConfigDump,
    RoutesConfigDump, clusters_config_dump, endpoints_config_dump, listeners_config_dump,
    routes_config_dump,
};
use xds_proto::envoy::config::cluster::v3::Cluster;
use xds_proto::envoy::config::listener::v3::{Listener, filter::ConfigType};
use xds_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use xds_proto::google::protobuf::{Any, Timestamp};
use xds_proto::json::JsonError;

use crate::xds::Tracker;
use crate::xds::resources::Kind;
use crate::xds::state::{Entry, Origin, State};

/// A `google.protobuf.Timestamp` for a wall-clock time.
pub fn timestamp(time: SystemTime) -> Timestamp {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

fn listeners(state: &State) -> ListenersConfigDump {
    let mut dump = ListenersConfigDump {
        version_info: state.version(Kind::Listener).to_owned(),
        ..Default::default()
    };
    let dynamic_state = |entry: &Entry| listeners_config_dump::DynamicListenerState {
        version_info: entry.version.clone(),
        listener: Some(entry.raw.clone()),
        last_updated: Some(timestamp(entry.last_updated)),
    };
    for (name, slot) in state.slots(Kind::Listener) {
        match slot.origin {
            Origin::Static => {
                if let Some(entry) = slot.active.as_ref().or(slot.warming.as_ref().map(|w| &w.0)) {
                    dump.static_listeners
                        .push(listeners_config_dump::StaticListener {
                            listener: Some(entry.raw.clone()),
                            last_updated: Some(timestamp(entry.last_updated)),
                        });
                }
            }
            Origin::Dynamic => {
                dump.dynamic_listeners
                    .push(listeners_config_dump::DynamicListener {
                        name: name.clone(),
                        active_state: slot.active.as_ref().map(dynamic_state),
                        warming_state: slot
                            .warming
                            .as_ref()
                            .map(|warming| dynamic_state(&warming.0)),
                        ..Default::default()
                    })
            }
        }
    }
    dump
}

fn clusters(state: &State) -> ClustersConfigDump {
    let mut dump = ClustersConfigDump {
        version_info: state.version(Kind::Cluster).to_owned(),
        ..Default::default()
    };
    let dynamic = |entry: &Entry| clusters_config_dump::DynamicCluster {
        version_info: entry.version.clone(),
        cluster: Some(entry.raw.clone()),
        last_updated: Some(timestamp(entry.last_updated)),
        ..Default::default()
    };
    for slot in state.slots(Kind::Cluster).values() {
        match slot.origin {
            Origin::Static => {
                if let Some(entry) = slot.active.as_ref().or(slot.warming.as_ref().map(|w| &w.0)) {
                    dump.static_clusters
                        .push(clusters_config_dump::StaticCluster {
                            cluster: Some(entry.raw.clone()),
                            last_updated: Some(timestamp(entry.last_updated)),
                        });
                }
            }
            Origin::Dynamic => {
                dump.dynamic_active_clusters
                    .extend(slot.active.as_ref().map(dynamic));
                dump.dynamic_warming_clusters
                    .extend(slot.warming.as_ref().map(|warming| dynamic(&warming.0)));
            }
        }
    }
    dump
}

/// Route configurations inline in a listener's HTTP connection managers.
fn inline_routes(raw: &Any) -> Vec<Any> {
    let Ok(listener) = unpack::<Listener>(raw) else {
        return Vec::new();
    };
    let filters = listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.iter())
        .flat_map(|chain| chain.filters.iter());
    filters
        .filter_map(|filter| match &filter.config_type {
            Some(ConfigType::TypedConfig(any)) => unpack::<HttpConnectionManager>(any).ok(),
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier {
            Some(RouteSpecifier::RouteConfig(config)) => Some(pack(&config)),
            _ => None,
        })
        .collect()
}

fn routes(state: &State) -> RoutesConfigDump {
    let mut dump = RoutesConfigDump::default();
    for slot in state.slots(Kind::Listener).values() {
        if let Some(entry) = &slot.active {
            for route_config in inline_routes(&entry.raw) {
                dump.static_route_configs
                    .push(routes_config_dump::StaticRouteConfig {
                        route_config: Some(route_config),
                        last_updated: Some(timestamp(entry.last_updated)),
                    });
            }
        }
    }
    for slot in state.slots(Kind::Route).values() {
        if let Some(entry) = &slot.active {
            dump.dynamic_route_configs
                .push(routes_config_dump::DynamicRouteConfig {
                    version_info: entry.version.clone(),
                    route_config: Some(entry.raw.clone()),
                    last_updated: Some(timestamp(entry.last_updated)),
                    ..Default::default()
                });
        }
    }
    dump
}

fn endpoints(state: &State) -> EndpointsConfigDump {
    let mut dump = EndpointsConfigDump::default();
    for slot in state.slots(Kind::Cluster).values() {
        let Some(entry) = &slot.active else { continue };
        let Ok(cluster) = unpack::<Cluster>(&entry.raw) else {
            continue;
        };
        if let Some(assignment) = cluster.load_assignment {
            dump.static_endpoint_configs
                .push(endpoints_config_dump::StaticEndpointConfig {
                    endpoint_config: Some(pack(&assignment)),
                    last_updated: Some(timestamp(entry.last_updated)),
                });
        }
    }
    for slot in state.slots(Kind::Endpoint).values() {
        if let Some(entry) = &slot.active {
            dump.dynamic_endpoint_configs
                .push(endpoints_config_dump::DynamicEndpointConfig {
                    version_info: entry.version.clone(),
                    endpoint_config: Some(entry.raw.clone()),
                    last_updated: Some(timestamp(entry.last_updated)),
                    ..Default::default()
                });
        }
    }
    dump
}

/// The whole config dump as Envoy's proto.
pub fn config_dump(tracker: &Tracker, started: SystemTime) -> ConfigDump {
    let bootstrap = pack(&BootstrapConfigDump {
        bootstrap: Some(tracker.bootstrap().clone()),
        last_updated: Some(timestamp(started)),
    });
    tracker.with_state(|state| ConfigDump {
        configs: vec![
            bootstrap,
            pack(&clusters(state)),
            pack(&listeners(state)),
            pack(&routes(state)),
            pack(&endpoints(state)),
        ],
    })
}

/// The config dump as proto3 JSON (`@type` on every config, field names in `snake_case`).
pub fn render(tracker: &Tracker, started: SystemTime) -> Result<serde_json::Value, JsonError> {
    xds_proto::json::to_value(&config_dump(tracker, started))
}
