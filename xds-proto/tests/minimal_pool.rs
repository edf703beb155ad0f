//! With retention off (a sidecar), documents map through pools of only the files they need: the
//! full pool of every Envoy message is never decoded. Its own test binary, since retention and
//! the decode count are process-wide.

use xds_proto::envoy::admin::v3::{BootstrapConfigDump, ConfigDump};
use xds_proto::envoy::config::bootstrap::v3::Bootstrap;
use xds_proto::json;

#[test]
fn retention_off_maps_a_sidecar_bootstrap_and_its_dump_without_the_full_pool() {
    json::retain_pool(false);
    let text = include_str!("data/istio-sidecar-bootstrap.yaml");
    let bootstrap: Bootstrap = json::from_yaml_str(text).unwrap();
    let dump = ConfigDump {
        configs: vec![xds_proto::any::pack(&BootstrapConfigDump {
            bootstrap: Some(bootstrap.clone()),
            last_updated: None,
        })],
    };
    let value = json::to_value(&dump).unwrap();
    assert_eq!(json::full_pool_decodes(), 0, "the full pool was decoded");
    assert!(!json::pool_is_alive());

    // The same documents through the full pool agree.
    json::retain_pool(true);
    assert_eq!(json::from_yaml_str::<Bootstrap>(text).unwrap(), bootstrap);
    assert_eq!(json::to_value(&dump).unwrap(), value);
    assert_eq!(json::full_pool_decodes(), 1);
}
