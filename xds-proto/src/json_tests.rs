//! The JSON mapping through the full pool and through minimal pools.

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

const ISTIO_BOOTSTRAP: &str = include_str!("../tests/data/istio-sidecar-bootstrap.yaml");
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

fn yaml(text: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(text).unwrap()
}

fn minimal_bootstrap_pool(value: &serde_json::Value) -> DescriptorPool {
    minimal_pool_for_value(&Bootstrap::full_name(), value).unwrap()
}

#[test]
fn an_istio_sidecar_bootstrap_maps_the_same_through_a_minimal_pool() {
    let value = yaml(ISTIO_BOOTSTRAP);
    let minimal = minimal_bootstrap_pool(&value);
    let full = pool();
    let through_minimal: Bootstrap = from_value_in(&minimal, value.clone()).unwrap();
    let through_full: Bootstrap = from_value_in(&full, value).unwrap();
    assert_eq!(through_minimal, through_full);
    // The router's `@type` sits two `Any`s deep (HCM inside a listener's filter, router inside
    // the HCM): its payload was mapped, not left empty.
    let json = to_value_in(
        &full,
        &Bootstrap::full_name(),
        &through_minimal.encode_to_vec(),
    );
    let filter = &json.unwrap()["static_resources"]["listeners"][1]["filter_chains"][0]["filters"]
        [0]["typed_config"];
    assert_eq!(filter["stat_prefix"], "agent");
    assert_eq!(filter["http_filters"][0]["typed_config"]["@type"], ROUTER);
    assert_eq!(
        filter["access_log"][0]["typed_config"]["@type"],
        "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
    );
}

#[test]
fn a_minimal_pool_holds_far_fewer_files_than_the_full_set() {
    let value = yaml(ISTIO_BOOTSTRAP);
    let minimal = minimal_bootstrap_pool(&value).files().len();
    let full = pool().files().len();
    assert!(minimal * 3 < full, "minimal {minimal} of {full} files");
}

#[test]
fn every_type_a_document_names_is_collected_however_deep() {
    let names = type_urls_in(&yaml(ISTIO_BOOTSTRAP));
    for name in [
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "envoy.extensions.filters.http.router.v3.Router",
        "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
        "envoy.config.trace.v3.ZipkinConfig",
    ] {
        assert!(names.contains(name), "{name} in {names:?}");
    }
}

#[test]
fn an_unknown_type_is_refused_the_same_way_through_either_pool() {
    let value = yaml(
        r#"
static_resources:
  listeners:
  - name: l
    filter_chains:
    - filters:
      - name: f
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          http_filters:
          - name: nope
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope }
"#,
    );
    let minimal = minimal_bootstrap_pool(&value);
    let through_minimal = from_value_in::<Bootstrap>(&minimal, value.clone()).unwrap_err();
    let through_full = from_value_in::<Bootstrap>(&pool(), value).unwrap_err();
    assert_eq!(through_minimal.to_string(), through_full.to_string());
    assert!(
        through_minimal
            .to_string()
            .contains("envoy.extensions.filters.http.nope.v3.Nope"),
        "{through_minimal}"
    );
}

/// A config dump nests three `Any`s deep: dump -> bootstrap dump -> HCM -> router.
fn config_dump() -> crate::envoy::admin::v3::ConfigDump {
    use crate::envoy::admin::v3::{BootstrapConfigDump, ConfigDump};
    let bootstrap: Bootstrap = from_value_in(&pool(), yaml(ISTIO_BOOTSTRAP)).unwrap();
    ConfigDump {
        configs: vec![crate::any::pack(&BootstrapConfigDump {
            bootstrap: Some(bootstrap),
            last_updated: None,
        })],
    }
}

#[test]
fn a_config_dump_serializes_the_same_through_minimal_pools() {
    let dump = config_dump();
    let name = crate::envoy::admin::v3::ConfigDump::full_name();
    let bytes = dump.encode_to_vec();
    let minimal = to_value_minimal(&name, &bytes).unwrap();
    assert_eq!(minimal, to_value_in(&pool(), &name, &bytes).unwrap());
    let filter = &minimal["configs"][0]["bootstrap"]["static_resources"]["listeners"][0]["filter_chains"]
        [0]["filters"][0]["typed_config"];
    assert_eq!(filter["http_filters"][0]["typed_config"]["@type"], ROUTER);
}

#[test]
fn serializing_an_any_of_an_unknown_type_names_it() {
    let mut dump = config_dump();
    dump.configs.push(crate::google::protobuf::Any {
        type_url: "type.googleapis.com/no.such.Dump".into(),
        value: vec![],
    });
    let name = crate::envoy::admin::v3::ConfigDump::full_name();
    let bytes = dump.encode_to_vec();
    let minimal = to_value_minimal(&name, &bytes).unwrap_err();
    let full = to_value_in(&pool(), &name, &bytes).unwrap_err();
    assert_eq!(minimal.to_string(), full.to_string());
    assert!(minimal.to_string().contains("no.such.Dump"), "{minimal}");
}

#[test]
fn an_unknown_root_message_is_named() {
    let err = from_value_in::<Bootstrap>(&DescriptorPool::new(), yaml("{}")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown message type envoy.config.bootstrap.v3.Bootstrap"
    );
}

#[test]
fn the_embedded_set_is_lean_and_complete() {
    use prost_types::FileDescriptorSet;
    let checked_in_bytes = include_bytes!("../descriptors/envoy-types-0.7.7.bin");
    let checked_in = FileDescriptorSet::decode(&checked_in_bytes[..]).unwrap();
    let lean = FileDescriptorSet::decode(descriptor_set()).unwrap();
    assert!(
        checked_in.file.iter().any(|f| f.source_code_info.is_some()),
        "the checked-in set carries source info"
    );
    assert!(lean.file.iter().all(|f| f.source_code_info.is_none()));
    let names = |set: &FileDescriptorSet| {
        set.file
            .iter()
            .map(|f| f.name().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&lean), names(&checked_in));
    assert!(descriptor_set().len() * 4 < checked_in_bytes.len());
}

#[test]
fn an_any_at_the_root_serializes_the_same_through_minimal_pools() {
    let bootstrap: Bootstrap = from_value_in(&pool(), yaml(ISTIO_BOOTSTRAP)).unwrap();
    let listener = &bootstrap.static_resources.as_ref().unwrap().listeners[0];
    let any = crate::any::pack(listener);
    let name = crate::google::protobuf::Any::full_name();
    let bytes = any.encode_to_vec();
    let minimal = to_value_minimal(&name, &bytes).unwrap();
    assert_eq!(minimal, to_value_in(&pool(), &name, &bytes).unwrap());
    assert_eq!(
        minimal["@type"],
        "type.googleapis.com/envoy.config.listener.v3.Listener"
    );
    assert_eq!(
        minimal["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]
            ["@type"],
        ROUTER
    );
}
