use super::*;
use crate::http_connection_manager::HttpConnectionManagerConfig;
use xds_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use xds_proto::google::protobuf::{BoolValue, UInt32Value};

fn secs(seconds: i64) -> Option<PbDuration> {
    Some(PbDuration { seconds, nanos: 0 })
}

fn hcm(
    edit: impl FnOnce(&mut hcm_pb::HttpConnectionManager),
) -> Result<HttpConnectionManagerConfig, Invalid> {
    let mut h = hcm_pb::HttpConnectionManager {
        route_specifier: Some(hcm_pb::http_connection_manager::RouteSpecifier::Rds(
            hcm_pb::Rds {
                route_config_name: "80".into(),
                ..Default::default()
            },
        )),
        http_filters: vec![hcm_pb::HttpFilter {
            name: "envoy.filters.http.router".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    edit(&mut h);
    HttpConnectionManagerConfig::from_proto(&h, "hcm")
}

fn options(edit: impl FnOnce(&mut hcm_pb::HttpConnectionManager)) -> DownstreamProtocolOptions {
    hcm(edit).expect("accepted").protocol
}

fn refused(edit: impl FnOnce(&mut hcm_pb::HttpConnectionManager)) -> String {
    let e = hcm(edit).expect_err("refused");
    format!("{}: {}", e.field, e.reason)
}

fn common(c: core_pb::HttpProtocolOptions) -> impl FnOnce(&mut hcm_pb::HttpConnectionManager) {
    move |h| h.common_http_protocol_options = Some(c)
}

#[test]
fn defaults_are_envoys() {
    let o = options(|_| {});
    assert_eq!(o, DownstreamProtocolOptions::default());
    assert_eq!(o.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(o.max_headers_count, 100);
    assert_eq!(o.headers_with_underscores, HeadersWithUnderscores::Allow);
    assert!(!o.accept_http_10);
}

#[test]
fn istiods_sidecar_options_are_applied() {
    // What istiod sends: idle_timeout from the node's IDLE_TIMEOUT, an empty
    // http2_protocol_options on HTTP/2 inbound ports, stream_idle_timeout 0, websocket,
    // proxy_100_continue, delayed_close_timeout left at its default.
    let o = options(|h| {
        h.common_http_protocol_options = Some(core_pb::HttpProtocolOptions {
            idle_timeout: secs(30),
            ..Default::default()
        });
        h.http2_protocol_options = Some(core_pb::Http2ProtocolOptions::default());
        h.stream_idle_timeout = secs(0);
        h.proxy_100_continue = true;
        h.delayed_close_timeout = secs(1);
        h.upgrade_configs = vec![hcm_pb::http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }];
    });
    assert_eq!(o.idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(o.http2, Http2Server::default());
}

#[test]
fn common_options_are_applied() {
    let o = options(common(core_pb::HttpProtocolOptions {
        idle_timeout: secs(0),
        max_connection_duration: secs(60),
        max_headers_count: Some(UInt32Value { value: 7 }),
        headers_with_underscores_action: 2,
        ..Default::default()
    }));
    assert_eq!(o.idle_timeout, None, "zero disables it");
    assert_eq!(o.max_connection_duration, Some(Duration::from_secs(60)));
    assert_eq!(o.max_headers_count, 7);
    assert_eq!(
        o.headers_with_underscores,
        HeadersWithUnderscores::DropHeader
    );
    let o = options(common(core_pb::HttpProtocolOptions {
        headers_with_underscores_action: 1,
        max_requests_per_connection: Some(UInt32Value { value: 0 }),
        ..Default::default()
    }));
    assert_eq!(
        o.headers_with_underscores,
        HeadersWithUnderscores::RejectRequest
    );
    assert_eq!(o.max_requests_per_connection, None, "zero means no limit");
    let o = options(common(core_pb::HttpProtocolOptions {
        max_requests_per_connection: Some(UInt32Value { value: 10 }),
        ..Default::default()
    }));
    assert_eq!(o.max_requests_per_connection, Some(10));
}

#[test]
fn unsupported_common_options_are_refused_by_name() {
    let field = |c| refused(common(c));
    assert_eq!(
        field(core_pb::HttpProtocolOptions {
            max_stream_duration: secs(5),
            ..Default::default()
        }),
        "hcm.common_http_protocol_options.max_stream_duration: not implemented by ferry-proxy"
    );
    assert!(
        field(core_pb::HttpProtocolOptions {
            max_headers_count: Some(UInt32Value { value: 0 }),
            ..Default::default()
        })
        .starts_with("hcm.common_http_protocol_options.max_headers_count: must be")
    );
    assert!(
        field(core_pb::HttpProtocolOptions {
            idle_timeout: Some(PbDuration {
                seconds: -1,
                nanos: 0
            }),
            ..Default::default()
        })
        .starts_with("hcm.common_http_protocol_options.idle_timeout:")
    );
}

#[test]
fn http2_options_are_applied_or_refused() {
    let o = options(|h| {
        h.http2_protocol_options = Some(core_pb::Http2ProtocolOptions {
            max_concurrent_streams: Some(UInt32Value { value: 7 }),
            initial_stream_window_size: Some(UInt32Value { value: 65_535 }),
            initial_connection_window_size: Some(UInt32Value { value: 1 << 20 }),
            hpack_table_size: Some(UInt32Value { value: 4096 }),
            ..Default::default()
        })
    });
    assert_eq!(
        o.http2,
        Http2Server {
            max_concurrent_streams: Some(7),
            initial_stream_window_size: Some(65_535),
            initial_connection_window_size: Some(1 << 20),
        }
    );
    let h2 =
        |o: core_pb::Http2ProtocolOptions| refused(move |h| h.http2_protocol_options = Some(o));
    assert_eq!(
        h2(core_pb::Http2ProtocolOptions {
            allow_connect: true,
            ..Default::default()
        }),
        "hcm.http2_protocol_options.allow_connect: not implemented by ferry-proxy"
    );
    assert!(
        h2(core_pb::Http2ProtocolOptions {
            initial_stream_window_size: Some(UInt32Value { value: 1000 }),
            ..Default::default()
        })
        .starts_with("hcm.http2_protocol_options.initial_stream_window_size: must be")
    );
    assert!(
        h2(core_pb::Http2ProtocolOptions {
            max_concurrent_streams: Some(UInt32Value { value: 0 }),
            ..Default::default()
        })
        .starts_with("hcm.http2_protocol_options.max_concurrent_streams: must be")
    );
    assert!(
        h2(core_pb::Http2ProtocolOptions {
            hpack_table_size: Some(UInt32Value { value: 0 }),
            ..Default::default()
        })
        .starts_with("hcm.http2_protocol_options.hpack_table_size:")
    );
    assert!(
        h2(core_pb::Http2ProtocolOptions {
            max_outbound_frames: Some(UInt32Value { value: 10 }),
            ..Default::default()
        })
        .starts_with("hcm.http2_protocol_options.max_outbound_frames:")
    );
}

#[test]
fn http1_options_are_applied_or_refused() {
    use core_pb::http1_protocol_options::{HeaderKeyFormat, header_key_format};
    let o = options(|h| {
        h.http_protocol_options = Some(core_pb::Http1ProtocolOptions {
            accept_http_10: true,
            allow_absolute_url: Some(BoolValue { value: true }),
            header_key_format: Some(HeaderKeyFormat {
                header_format: Some(header_key_format::HeaderFormat::ProperCaseWords(
                    Default::default(),
                )),
            }),
            ..Default::default()
        })
    });
    assert!(o.accept_http_10);
    assert!(o.title_case_headers);
    let h1 = |o: core_pb::Http1ProtocolOptions| refused(move |h| h.http_protocol_options = Some(o));
    assert_eq!(
        h1(core_pb::Http1ProtocolOptions {
            enable_trailers: true,
            ..Default::default()
        }),
        "hcm.http_protocol_options.enable_trailers: not implemented by ferry-proxy"
    );
    assert!(
        h1(core_pb::Http1ProtocolOptions {
            allow_absolute_url: Some(BoolValue { value: false }),
            ..Default::default()
        })
        .starts_with("hcm.http_protocol_options.allow_absolute_url:")
    );
}

#[test]
#[allow(deprecated)]
fn other_hcm_fields_are_refused_unless_at_their_default() {
    assert!(
        refused(|h| h.delayed_close_timeout = secs(0)).starts_with("hcm.delayed_close_timeout:")
    );
    assert!(refused(|h| h.stream_flush_timeout = secs(3)).starts_with("hcm.stream_flush_timeout:"));
    assert!(
        refused(|h| h.internal_address_config = Some(Default::default()))
            .starts_with("hcm.internal_address_config:")
    );
    assert!(refused(|h| h.append_local_overload = true).starts_with("hcm.append_local_overload:"));
    assert!(
        refused(|h| h.access_log_flush_interval = secs(1))
            .starts_with("hcm.access_log_flush_interval:")
    );
}

fn request(headers: &[(&str, &str)], version: http::Version) -> http::request::Parts {
    let mut builder = http::Request::builder().version(version).uri("/");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

#[test]
fn requests_are_checked_before_routing() {
    let mut o = DownstreamProtocolOptions {
        max_headers_count: 2,
        ..Default::default()
    };
    let ok = [("a", "1"), ("b", "2")];
    assert_eq!(
        o.check_request(&mut request(&ok, http::Version::HTTP_11)),
        Ok(())
    );
    let too_many = [("a", "1"), ("b", "2"), ("c", "3")];
    assert_eq!(
        o.check_request(&mut request(&too_many, http::Version::HTTP_11)),
        Err(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
    );
    assert_eq!(
        o.check_request(&mut request(&[], http::Version::HTTP_10)),
        Err(http::StatusCode::UPGRADE_REQUIRED)
    );
    o.accept_http_10 = true;
    assert_eq!(
        o.check_request(&mut request(&[], http::Version::HTTP_10)),
        Ok(())
    );

    let underscored = [("x_a", "1"), ("x-b", "2")];
    assert_eq!(
        o.check_request(&mut request(&underscored, http::Version::HTTP_2)),
        Ok(())
    );
    o.headers_with_underscores = HeadersWithUnderscores::RejectRequest;
    assert_eq!(
        o.check_request(&mut request(&underscored, http::Version::HTTP_2)),
        Err(http::StatusCode::BAD_REQUEST)
    );
    o.headers_with_underscores = HeadersWithUnderscores::DropHeader;
    let mut parts = request(&underscored, http::Version::HTTP_11);
    assert_eq!(o.check_request(&mut parts), Ok(()));
    assert!(parts.headers.get("x_a").is_none());
    assert_eq!(parts.headers["x-b"], "2");
}

#[test]
fn istios_inbound_client_cert_options_are_accepted_and_sanitize_on_plaintext() {
    let inbound = hcm(|h| {
        h.forward_client_cert_details = 2; // APPEND_FORWARD
        h.set_current_client_cert_details = Some(Default::default());
    })
    .expect("istiod's inbound HCM is accepted");
    assert!(
        inbound.sanitize_xfcc,
        "no client certificate: Envoy removes XFCC"
    );
    let always = hcm(|h| h.forward_client_cert_details = 4).unwrap();
    assert!(!always.sanitize_xfcc, "ALWAYS_FORWARD_ONLY passes it");
}

/// istiod's sidecar HCMs as its listener builder writes them (outbound on RDS; inbound with an
/// inline route, XFCC handling and HTTP/2 options for a gRPC port), trimmed of the filters
/// ferry-proxy refuses by name (istio.stats, metadata exchange).
const ISTIO_HCMS: [&str; 2] = [
    r#"
stat_prefix: outbound_0.0.0.0_9080
rds: { route_config_name: "9080", config_source: { ads: {}, initial_fetch_timeout: 0s, resource_api_version: V3 } }
http_filters:
- { name: envoy.filters.http.fault, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault } }
- { name: envoy.filters.http.cors, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors } }
- { name: envoy.filters.http.router, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }
use_remote_address: false
upgrade_configs: [{ upgrade_type: websocket }]
common_http_protocol_options: { idle_timeout: 3600s }
stream_idle_timeout: 0s
normalize_path: true
path_with_escaped_slashes_action: KEEP_UNCHANGED
request_id_extension: { typed_config: { '@type': type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig, use_request_id_for_trace_sampling: true } }
proxy_100_continue: true
"#,
    r#"
stat_prefix: inbound_0.0.0.0_8080
route_config: { name: "inbound|8080||", virtual_hosts: [{ name: "inbound|http|8080", domains: ["*"], routes: [{ match: { prefix: / }, route: { cluster: "inbound|8080||" } }] }] }
http_filters:
- { name: envoy.filters.http.router, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }
forward_client_cert_details: APPEND_FORWARD
set_current_client_cert_details: { subject: true, uri: true, dns: true }
server_name: istio-envoy
http2_protocol_options: {}
upgrade_configs: [{ upgrade_type: websocket }]
stream_idle_timeout: 0s
normalize_path: true
path_with_escaped_slashes_action: KEEP_UNCHANGED
proxy_100_continue: true
"#,
];

#[test]
fn istiods_sidecar_hcms_are_accepted_with_their_options_applied() {
    for yaml in ISTIO_HCMS {
        let proto: hcm_pb::HttpConnectionManager =
            xds_proto::json::from_yaml_str(yaml).expect("valid HCM YAML");
        let c = HttpConnectionManagerConfig::from_proto(&proto, "hcm")
            .unwrap_or_else(|e| panic!("{}: {}", e.field, e.reason));
        assert_eq!(c.protocol.idle_timeout, Some(Duration::from_secs(3600)));
        assert!(c.normalize_path && c.websocket && c.sanitize_xfcc);
        assert_eq!(
            c.escaped_slashes,
            crate::http_connection_manager::path::EscapedSlashes::KeepUnchanged
        );
    }
}
