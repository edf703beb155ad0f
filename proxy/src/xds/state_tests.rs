//! Warming and subscription rules of [`super::state::State`], on real Envoy protos.

use std::time::Duration;

use tokio::time::Instant;
use xds_proto::any::pack;
use xds_proto::envoy::config::cluster::v3::Cluster;
use xds_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_proto::envoy::config::listener::v3::Listener;
use xds_proto::envoy::config::route::v3::RouteConfiguration;

use super::resources::{Kind, Validated, validate};
use super::state::State;

pub(crate) fn listener(name: &str, rds: &str) -> Listener {
    xds_proto::json::from_value(serde_json::json!({
        "name": name,
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "rds": { "route_config_name": rds, "config_source": { "ads": {}, "resource_api_version": "V3" } },
                "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }]
            }
        }]}]
    }))
    .unwrap()
}

pub(crate) fn eds_cluster(name: &str) -> Cluster {
    xds_proto::json::from_value(serde_json::json!({
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": { "eds_config": { "ads": {}, "resource_api_version": "V3" } }
    }))
    .unwrap()
}

fn v<M: prost::Message + prost::Name>(kind: Kind, m: &M) -> Validated {
    validate(kind, 0, &pack(m)).unwrap()
}

fn route(name: &str) -> Validated {
    v(
        Kind::Route,
        &RouteConfiguration {
            name: name.into(),
            ..Default::default()
        },
    )
}

fn cla(name: &str) -> Validated {
    v(
        Kind::Endpoint,
        &ClusterLoadAssignment {
            cluster_name: name.into(),
            ..Default::default()
        },
    )
}

#[test]
fn listener_warms_until_its_route_arrives() {
    let now = Instant::now();
    let mut state = State::new(true, true, None);
    state.apply_sotw(Kind::Cluster, "c1", vec![], now);
    state.apply_sotw(
        Kind::Listener,
        "l1",
        vec![v(Kind::Listener, &listener("l", "9080"))],
        now,
    );
    assert!(state.resources().listeners.is_empty());
    assert!(!state.initialized(now));
    assert_eq!(state.wanted(Kind::Route), ["9080".to_owned()].into());
    state.apply_sotw(Kind::Route, "r1", vec![route("9080")], now);
    state.promote(now);
    assert!(state.resources().listeners.contains_key("l"));
    assert!(state.initialized(now));
}

#[test]
fn eds_cluster_warms_until_assignment_or_timeout() {
    let now = Instant::now();
    let mut state = State::new(false, true, None);
    state.apply_sotw(
        Kind::Cluster,
        "1",
        vec![
            v(Kind::Cluster, &eds_cluster("a")),
            v(Kind::Cluster, &eds_cluster("b")),
        ],
        now,
    );
    assert_eq!(
        state.wanted(Kind::Endpoint),
        ["a".to_owned(), "b".to_owned()].into()
    );
    state.apply_sotw(Kind::Endpoint, "1", vec![cla("a")], now);
    let active = state.resources();
    assert!(active.clusters.contains_key("a") && !active.clusters.contains_key("b"));
    let deadline = state.next_deadline().unwrap();
    assert_eq!(deadline, now + Duration::from_secs(15));
    state.promote(deadline);
    assert!(state.resources().clusters.contains_key("b"));
    assert!(state.initialized(deadline));
}

#[test]
fn sotw_cds_removes_missing_clusters_and_their_endpoints() {
    let now = Instant::now();
    let mut state = State::new(false, true, None);
    state.apply_sotw(
        Kind::Cluster,
        "1",
        vec![v(Kind::Cluster, &eds_cluster("a"))],
        now,
    );
    state.apply_sotw(Kind::Endpoint, "1", vec![cla("a")], now);
    state.promote(now);
    assert_eq!(state.resources().load_assignments.len(), 1);
    state.apply_sotw(Kind::Cluster, "2", vec![], now);
    state.forget_unreferenced();
    let active = state.resources();
    assert!(active.clusters.is_empty() && active.load_assignments.is_empty());
    assert_eq!(state.version(Kind::Cluster), "2");
}

#[test]
fn updated_listener_keeps_serving_the_old_version_while_warming() {
    let now = Instant::now();
    let mut state = State::new(true, false, None);
    state.apply_sotw(
        Kind::Listener,
        "1",
        vec![v(Kind::Listener, &listener("l", "a"))],
        now,
    );
    state.apply_sotw(Kind::Route, "1", vec![route("a")], now);
    state.promote(now);
    state.apply_sotw(
        Kind::Listener,
        "2",
        vec![v(Kind::Listener, &listener("l", "b"))],
        now,
    );
    let slot = &state.slots(Kind::Listener)["l"];
    assert_eq!(slot.active.as_ref().unwrap().version, "1");
    assert_eq!(slot.warming.as_ref().unwrap().0.version, "2");
    assert_eq!(
        state.wanted(Kind::Route),
        ["a".to_owned(), "b".to_owned()].into()
    );
    state.apply_sotw(Kind::Route, "2", vec![route("b")], now);
    let slot = &state.slots(Kind::Listener)["l"];
    assert_eq!(slot.active.as_ref().unwrap().version, "2");
    state.forget_unreferenced();
    assert_eq!(state.resources().routes.keys().collect::<Vec<_>>(), ["b"]);
}

#[test]
fn delta_upserts_removes_and_reports_versions() {
    let now = Instant::now();
    let mut state = State::new(false, true, None);
    let static_cluster = v(
        Kind::Cluster,
        &Cluster {
            name: "static".into(),
            ..Default::default()
        },
    );
    state.add_static(static_cluster, now);
    state.apply_delta(
        Kind::Cluster,
        "",
        vec![(
            v(
                Kind::Cluster,
                &Cluster {
                    name: "x".into(),
                    ..Default::default()
                },
            ),
            "7".into(),
        )],
        &[],
        now,
    );
    assert_eq!(
        state.resource_versions(Kind::Cluster),
        [("x".to_owned(), "7".to_owned())].into()
    );
    state.apply_delta(
        Kind::Cluster,
        "",
        vec![],
        &["x".to_owned(), "static".to_owned()],
        now,
    );
    let active = state.resources();
    assert_eq!(active.clusters.keys().collect::<Vec<_>>(), ["static"]);
}

#[test]
fn listener_warm_timeout_follows_its_rds_config_source() {
    let with_default = v(Kind::Listener, &listener("l", "r"));
    assert_eq!(with_default.warm_timeout, Some(Duration::from_secs(15)));
    let mut istio = listener("l", "r");
    let any = istio.filter_chains[0].filters[0].config_type.take();
    let Some(xds_proto::envoy::config::listener::v3::filter::ConfigType::TypedConfig(mut any)) =
        any
    else {
        panic!("typed config")
    };
    let mut hcm: xds_proto::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager =
        xds_proto::any::unpack(&any).unwrap();
    if let Some(
        xds_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier::Rds(rds),
    ) = hcm.route_specifier.as_mut()
    {
        rds.config_source.as_mut().unwrap().initial_fetch_timeout =
            Some(xds_proto::google::protobuf::Duration { seconds: 0, nanos: 0 });
    }
    any = pack(&hcm);
    istio.filter_chains[0].filters[0].config_type =
        Some(xds_proto::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any));
    assert_eq!(v(Kind::Listener, &istio).warm_timeout, None);
}

#[test]
fn initial_fetch_timeout_fires_once() {
    let now = Instant::now();
    let deadline = now + Duration::from_secs(15);
    let mut state = State::new(true, true, Some(deadline));
    assert_eq!(state.next_deadline(), Some(deadline));
    assert!(!state.initialized(now));
    state.promote(deadline);
    assert!(state.initialized(deadline));
    assert_eq!(
        state.next_deadline(),
        None,
        "an expired deadline must not spin the client"
    );
}
