use std::time::Duration;

use xds_proto::envoy::config::cluster::v3::Cluster as ProtoCluster;

use super::*;
use crate::cluster::{DnsLookupFamily, TransportSocket, UpstreamProtocol};

fn parse(yaml: &str) -> Result<ClusterConfig, InvalidCluster> {
    let proto: ProtoCluster = xds_proto::json::from_yaml_str(yaml).expect("valid Cluster YAML");
    ClusterConfig::try_from(&proto)
}

fn refused_field(yaml: &str) -> String {
    parse(yaml).expect_err("must be refused").field
}

/// An outbound cluster as istiod generates it (trimmed to the fields that matter).
const ISTIO_OUTBOUND: &str = r#"
name: outbound|9080||reviews.default.svc.cluster.local
type: EDS
eds_cluster_config:
  eds_config: { ads: {}, initial_fetch_timeout: 0s, resource_api_version: V3 }
  service_name: outbound|9080||reviews.default.svc.cluster.local
connect_timeout: 10s
lb_policy: LEAST_REQUEST
per_connection_buffer_limit_bytes: 32768
circuit_breakers:
  thresholds:
  - max_connections: 4294967295
    max_pending_requests: 4294967295
    max_requests: 4294967295
    max_retries: 4294967295
    track_remaining: true
common_lb_config:
  locality_weighted_lb_config: {}
metadata:
  filter_metadata:
    istio:
      services:
      - { host: reviews.default.svc.cluster.local, name: reviews, namespace: default }
filters:
- name: istio.metadata_exchange
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    use_downstream_protocol_config:
      http_protocol_options: {}
      http2_protocol_options: { max_concurrent_streams: 1073741824 }
transport_socket_matches:
- name: tlsMode-istio
  match: { tlsMode: istio }
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      sni: outbound_.9080_._.reviews.default.svc.cluster.local
- name: tlsMode-disabled
  match: {}
  transport_socket:
    name: envoy.transport_sockets.raw_buffer
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer
"#;

#[test]
fn istio_outbound_cluster_is_accepted() {
    let c = parse(ISTIO_OUTBOUND).unwrap();
    assert_eq!(
        c.eds_service_name(),
        Some("outbound|9080||reviews.default.svc.cluster.local")
    );
    assert_eq!(c.lb_policy, LbPolicy::LeastRequest { choice_count: 2 });
    assert!(c.locality_weighted);
    assert_eq!(c.healthy_panic_threshold, 50.0);
    assert_eq!(c.pool.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.pool.protocol, UpstreamProtocol::UseDownstream);
    assert_eq!(c.pool.http2.max_concurrent_streams, 1_073_741_824);
    assert_eq!(c.pool.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(c.circuit_breakers.thresholds[0].max_connections, u32::MAX);
    let istio = [("tlsMode".to_owned(), "istio".to_owned())].into();
    assert_eq!(c.transport.for_endpoint(&istio), TransportSocket::Tls);
    assert_eq!(
        c.transport.for_endpoint(&Default::default()),
        TransportSocket::Plaintext
    );
}

#[test]
fn defaults_match_envoy() {
    let c = parse("name: a\ntype: STATIC").unwrap();
    assert_eq!(c.discovery, Discovery::Static);
    assert_eq!(c.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(c.pool.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(c.pool.protocol, UpstreamProtocol::Http1);
    assert_eq!(c.pool.max_requests_per_connection, None);
    assert_eq!(c.stat_name, "a");
    assert!(c.outlier_detection.is_none());
    assert_eq!(c.eds_service_name(), None);
}

#[test]
fn eds_service_name_defaults_to_cluster_name() {
    let c = parse("name: svc\ntype: EDS\neds_cluster_config: { eds_config: { ads: {} } }").unwrap();
    assert_eq!(c.eds_service_name(), Some("svc"));
}

#[test]
fn explicit_http2_and_common_options() {
    let c = parse(
        r#"
name: h2
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    common_http_protocol_options: { idle_timeout: 30s, max_requests_per_connection: 7 }
    explicit_http_config: { http2_protocol_options: { max_concurrent_streams: 5 } }
"#,
    )
    .unwrap();
    assert_eq!(c.pool.protocol, UpstreamProtocol::Http2);
    assert_eq!(c.pool.http2.max_concurrent_streams, 5);
    assert_eq!(c.pool.idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(c.pool.max_requests_per_connection, Some(7));
}

#[test]
fn deprecated_http2_protocol_options_select_h2() {
    let c = parse("name: h2\nhttp2_protocol_options: {}\nmax_requests_per_connection: 3").unwrap();
    assert_eq!(c.pool.protocol, UpstreamProtocol::Http2);
    assert_eq!(c.pool.max_requests_per_connection, Some(3));
}

#[test]
fn zero_idle_timeout_disables_it() {
    let c = parse("name: a\ncommon_http_protocol_options: { idle_timeout: 0s }").unwrap();
    assert_eq!(c.pool.idle_timeout, None);
}

#[test]
fn lb_policies_with_parameters() {
    let c = parse("name: a\nlb_policy: RING_HASH\nring_hash_lb_config: { minimum_ring_size: 64, maximum_ring_size: 128 }").unwrap();
    assert_eq!(
        c.lb_policy,
        LbPolicy::RingHash {
            minimum_ring_size: 64,
            maximum_ring_size: 128
        }
    );
    let c = parse("name: a\nlb_policy: MAGLEV").unwrap();
    assert_eq!(c.lb_policy, LbPolicy::Maglev { table_size: 65537 });
    let c = parse("name: a\nlb_policy: MAGLEV\nmaglev_lb_config: { table_size: 251 }").unwrap();
    assert_eq!(c.lb_policy, LbPolicy::Maglev { table_size: 251 });
    let c = parse("name: a\nlb_policy: RANDOM").unwrap();
    assert_eq!(c.lb_policy, LbPolicy::Random);
    let c =
        parse("name: a\nlb_policy: LEAST_REQUEST\nleast_request_lb_config: { choice_count: 3 }")
            .unwrap();
    assert_eq!(c.lb_policy, LbPolicy::LeastRequest { choice_count: 3 });
}

#[test]
fn panic_threshold_is_read() {
    let c = parse("name: a\ncommon_lb_config: { healthy_panic_threshold: { value: 25 } }").unwrap();
    assert_eq!(c.healthy_panic_threshold, 25.0);
}

#[test]
fn dns_cluster_settings() {
    let c = parse(
        r#"
name: dns
type: STRICT_DNS
dns_refresh_rate: 2s
respect_dns_ttl: true
dns_lookup_family: V4_ONLY
load_assignment:
  cluster_name: dns
  endpoints:
  - lb_endpoints:
    - endpoint: { address: { socket_address: { address: localhost, port_value: 80 } } }
"#,
    )
    .unwrap();
    let Discovery::StrictDns(dns) = &c.discovery else {
        panic!("{:?}", c.discovery)
    };
    assert_eq!(dns.refresh_rate, Duration::from_secs(2));
    assert!(dns.respect_dns_ttl);
    assert_eq!(dns.lookup_family, DnsLookupFamily::V4Only);
}

#[test]
fn original_dst_needs_cluster_provided() {
    let c =
        parse("name: PassthroughCluster\ntype: ORIGINAL_DST\nlb_policy: CLUSTER_PROVIDED").unwrap();
    assert!(matches!(c.discovery, Discovery::OriginalDst { .. }));
    assert_eq!(refused_field("name: a\ntype: ORIGINAL_DST"), "lb_policy");
    assert_eq!(
        refused_field("name: a\nlb_policy: CLUSTER_PROVIDED"),
        "lb_policy"
    );
}

#[test]
fn outlier_detection_defaults() {
    let c = parse("name: a\noutlier_detection: { consecutive_5xx: 3 }").unwrap();
    let od = c.outlier_detection.unwrap();
    assert_eq!(od.consecutive_5xx, 3);
    assert_eq!(od.base_ejection_time, Duration::from_secs(30));
    assert_eq!(od.max_ejection_percent, 10);
    assert_eq!(od.interval, Duration::from_secs(10));
}

#[test]
fn tcp_keepalive_is_read() {
    let c =
        parse("name: a\nupstream_connection_options: { tcp_keepalive: { keepalive_time: 30 } }")
            .unwrap();
    assert_eq!(
        c.pool.tcp_keepalive.unwrap().time,
        Some(Duration::from_secs(30))
    );
}

#[test]
fn unsupported_fields_are_refused_by_name() {
    let cases = [
        (
            "name: a\nhealth_checks: [{ timeout: 1s, interval: 1s, tcp_health_check: {} }]",
            "health_checks",
        ),
        ("name: a\nlb_subset_config: {}", "lb_subset_config"),
        (
            "name: a\nlb_policy: LOAD_BALANCING_POLICY_CONFIG",
            "lb_policy LOAD_BALANCING_POLICY_CONFIG",
        ),
        (
            "name: a\nring_hash_lb_config: { hash_function: MURMUR_HASH_2 }\nlb_policy: RING_HASH",
            "ring_hash_lb_config.hash_function (only XX_HASH)",
        ),
        (
            "name: a\nlb_policy: MAGLEV\nmaglev_lb_config: { table_size: 100 }",
            "maglev_lb_config.table_size",
        ),
        (
            "name: a\ncommon_lb_config: { zone_aware_lb_config: {} }",
            "common_lb_config.zone_aware_lb_config",
        ),
        (
            "name: a\ncommon_lb_config: { healthy_panic_threshold: { value: 120 } }",
            "common_lb_config.healthy_panic_threshold",
        ),
        (
            "name: a\nfilters: [{ name: envoy.filters.network.upstream.foo }]",
            "filters[0]",
        ),
        (
            "name: a\ncluster_type: { name: envoy.clusters.aggregate }",
            "cluster_type",
        ),
        (
            "name: a\nleast_request_lb_config: { choice_count: 1 }\nlb_policy: LEAST_REQUEST",
            "least_request_lb_config.choice_count",
        ),
        ("name: a\nconnect_timeout: -1s", "connect_timeout"),
        (
            "name: a\nper_connection_buffer_high_watermark_timeout: 1s",
            "per_connection_buffer_high_watermark_timeout",
        ),
        (
            "name: a\nhttp2_protocol_options: { initial_connection_window_size: 4294967295 }",
            "http2_protocol_options.initial_connection_window_size",
        ),
        (
            "name: a\nhttp2_protocol_options: { initial_stream_window_size: 10 }",
            "http2_protocol_options.initial_stream_window_size",
        ),
        (
            "name: a\ntype: STATIC\neds_cluster_config: {}",
            "eds_cluster_config",
        ),
        (
            "name: a\ntransport_socket: { name: envoy.transport_sockets.tls, typed_config: { '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext } }",
            "transport_socket",
        ),
        (
            "name: a\ncommon_http_protocol_options: { max_stream_duration: 1s }",
            "common_http_protocol_options.max_stream_duration",
        ),
        (
            "name: a\ntype: LOGICAL_DNS\nload_assignment: { endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: a, port_value: 1 } } } }, { endpoint: { address: { socket_address: { address: b, port_value: 1 } } } } ] } ] }",
            "load_assignment",
        ),
        (
            "name: a\ntype: STATIC\nload_assignment: { endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: example.com, port_value: 1 } } } } ] } ] }",
            "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address",
        ),
        (
            "name: a\ntyped_extension_protocol_options: { envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions: { '@type': type.googleapis.com/envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions } }",
            "typed_extension_protocol_options[envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions]",
        ),
        (
            "name: a\nhttp2_protocol_options: {}\ntyped_extension_protocol_options: { envoy.extensions.upstreams.http.v3.HttpProtocolOptions: { '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions } }",
            "typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions]",
        ),
        (
            "name: a\ntyped_extension_protocol_options: { envoy.extensions.upstreams.http.v3.HttpProtocolOptions: { '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, auto_config: {} } }",
            "typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].auto_config",
        ),
        (
            "name: a\ndns_resolvers: [ { socket_address: { address: 1.1.1.1, port_value: 53 } } ]",
            "dns_resolvers",
        ),
        (
            "name: a\noutlier_detection: { max_ejection_percent: 101 }",
            "outlier_detection.max_ejection_percent",
        ),
        ("name: ''", "name"),
    ];
    for (yaml, field) in cases {
        let err = parse(yaml).expect_err(yaml);
        assert_eq!(err.field, field, "{yaml}: {err}");
    }
}

#[test]
fn error_names_cluster_and_field() {
    let err = parse("name: reviews\nlb_subset_config: {}").unwrap_err();
    assert_eq!(
        err.to_string(),
        "cluster reviews: lb_subset_config: not implemented"
    );
}

#[test]
fn out_of_range_durations_from_the_wire_are_refused() {
    // JSON parsing already bounds durations; binary xDS does not.
    let mut proto: ProtoCluster = xds_proto::json::from_yaml_str("name: a").unwrap();
    proto.connect_timeout = Some(xds_proto::google::protobuf::Duration {
        seconds: i64::MAX,
        nanos: 0,
    });
    let err = ClusterConfig::try_from(&proto).unwrap_err();
    assert_eq!(err.field, "connect_timeout");
}

#[test]
fn retry_budget_interval_is_accepted_as_istio_sends_it() {
    let c = parse(
        "name: a\ntype: STATIC\ncircuit_breakers: { thresholds: [{ retry_budget: { budget_percent: { value: 25 }, min_retry_concurrency: 5, budget_interval: 0.5s } }] }",
    )
    .unwrap();
    let budget = c.circuit_breakers.thresholds[0].retry_budget.unwrap();
    assert_eq!(budget.percent, 25.0);
    assert_eq!(budget.min_concurrency, 5);
    assert_eq!(budget.interval, Duration::from_millis(500));
    assert_eq!(
        refused_field(
            "name: a\ntype: STATIC\ncircuit_breakers: { thresholds: [{ retry_budget: { budget_interval: -1s } }] }"
        ),
        "circuit_breakers.thresholds[0].retry_budget.budget_interval"
    );
}
