use std::time::Duration;

use xds_proto::envoy::config::cluster::v3::Cluster as ProtoCluster;

use super::*;

fn settings(yaml: &str) -> Result<PoolSettings, InvalidCluster> {
    let proto: ProtoCluster = xds_proto::json::from_yaml_str(yaml).expect("valid Cluster YAML");
    pool_settings(&proto)
}

/// The typed `HttpProtocolOptions` of cluster `a` with `common` as its
/// `common_http_protocol_options` (flow YAML).
fn typed_common(common: &str) -> String {
    format!(
        r#"
name: a
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    common_http_protocol_options: {common}
"#
    )
}

#[test]
fn max_connection_duration_is_applied_as_istio_sends_it() {
    // DestinationRule `connectionPool.tcp.maxConnectionDuration`.
    let s = settings(&typed_common("{ max_connection_duration: 30s }")).unwrap();
    assert_eq!(s.max_connection_duration, Some(Duration::from_secs(30)));
    let s = settings(&typed_common("{ max_connection_duration: 0s }")).unwrap();
    assert_eq!(s.max_connection_duration, None, "zero means no limit");
    assert_eq!(settings("name: a").unwrap().max_connection_duration, None);
}

#[test]
fn header_limits_are_accepted_only_at_envoys_defaults() {
    settings(&typed_common(
        "{ max_headers_count: 100, max_response_headers_kb: 60, headers_with_underscores_action: ALLOW }",
    ))
    .expect("defaults are accepted");
    for (common, field) in [
        ("{ max_headers_count: 20 }", "max_headers_count"),
        ("{ max_response_headers_kb: 96 }", "max_response_headers_kb"),
        (
            "{ headers_with_underscores_action: DROP_HEADER }",
            "headers_with_underscores_action",
        ),
        (
            "{ max_connection_duration_jitter: { value: 10 } }",
            "max_connection_duration_jitter",
        ),
    ] {
        let e = settings(&typed_common(common)).expect_err(common);
        assert!(
            e.field
                .ends_with(&format!("common_http_protocol_options.{field}")),
            "{e:?}"
        );
    }
}

#[test]
fn codec_options_are_applied_or_refused_by_name() {
    // Istio's h2 upgrade: an HTTP/2 cluster with default options and HPACK at its default.
    let s = settings(
        "name: a\nhttp2_protocol_options: { hpack_table_size: 4096, use_oghttp2_codec: true }",
    )
    .unwrap();
    assert_eq!(s.protocol, UpstreamProtocol::Http2);
    for (yaml, field) in [
        (
            "name: a\nhttp2_protocol_options: { hpack_table_size: 0 }",
            "http2_protocol_options.hpack_table_size",
        ),
        (
            "name: a\nhttp2_protocol_options: { max_outbound_frames: 100 }",
            "http2_protocol_options.max_outbound_frames",
        ),
        (
            "name: a\nhttp_protocol_options: { enable_trailers: true }",
            "http_protocol_options.enable_trailers",
        ),
        (
            "name: a\nhttp_protocol_options: { allow_chunked_length: true }",
            "http_protocol_options.allow_chunked_length",
        ),
    ] {
        let e = settings(yaml).expect_err(yaml);
        assert_eq!(e.field, field, "{e:?}");
    }
    // Server-side HTTP/1 options mean nothing on a client connection.
    settings("name: a\nhttp_protocol_options: { accept_http_10: true, allow_absolute_url: true }")
        .expect("accepted");
}
