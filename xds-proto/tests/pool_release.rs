//! The descriptor pool can be let go: with retention off it lives only while a caller holds it.
//! Its own test binary, since retention is process-wide state.

use xds_proto::envoy::config::core::v3::Node;
use xds_proto::json;

#[test]
fn pool_is_freed_when_retention_is_off() {
    let node: Node = json::from_yaml_str("id: a").unwrap();
    assert!(json::pool_is_alive(), "kept by default");
    json::retain_pool(false);
    assert!(
        !json::pool_is_alive(),
        "dropped when retention is turned off"
    );
    let held = json::pool();
    assert!(json::pool_is_alive());
    let again: Node = json::from_yaml_str("id: a").unwrap();
    assert_eq!(again, node, "the held pool serves other callers");
    drop(held);
    assert!(!json::pool_is_alive(), "freed once the last holder lets go");
    assert_eq!(
        json::to_value(&node).unwrap()["id"],
        "a",
        "decoded afresh on use"
    );
    assert!(!json::pool_is_alive());
    json::retain_pool(true);
    let _ = json::to_value(&node).unwrap();
    assert!(json::pool_is_alive(), "kept again");
}
