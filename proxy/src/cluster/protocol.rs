//! The cluster's upstream HTTP protocol and pool limits, from
//! `typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]`
//! or, for older configs, the deprecated cluster fields (`http2_protocol_options`,
//! `common_http_protocol_options`, `protocol_selection`, `max_requests_per_connection`).
//!
//! Envoy refuses a cluster that mixes the two styles, and so does Ferry. Every field is applied,
//! accepted because it only concerns a server (`accept_http_10`, `allow_absolute_url`,
//! `default_host_for_http_10`) or picks Envoy's own codec (`use_balsa_parser`,
//! `use_oghttp2_codec`), accepted at the value hyper already has (HPACK table 4096, 100
//! response headers), or refused by name: tuning knobs of Envoy's codecs that hyper has no
//! equivalent for (frame flood limits) are refused when set rather than silently dropped.

use std::time::Duration;

use xds_proto::envoy::config::cluster::v3 as proto;
use xds_proto::envoy::config::core::v3 as core;
use xds_proto::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use xds_proto::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};

use super::InvalidCluster;
use super::config::duration;
use crate::pool::{Http1Settings, Http2Settings, PoolSettings, TcpKeepalive};

/// The typed extension key (and type) of the upstream HTTP protocol options.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Envoy's default upstream idle timeout (`common_http_protocol_options.idle_timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Which HTTP version the cluster speaks upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive (the default).
    Http1,
    /// HTTP/2 with prior knowledge (h2c), multiplexed.
    Http2,
    /// The downstream request's version (`use_downstream_protocol_config`): HTTP/2 for HTTP/2
    /// requests, HTTP/1.1 otherwise.
    UseDownstream,
}

/// Reads all protocol-related fields of the cluster into pool settings; `connect_timeout` is
/// filled in by the caller.
#[allow(deprecated)]
pub(crate) fn pool_settings(c: &proto::Cluster) -> Result<PoolSettings, InvalidCluster> {
    let name = c.name.as_str();
    let mut settings = PoolSettings {
        idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        ..PoolSettings::default()
    };

    let deprecated_used = c.http2_protocol_options.is_some()
        || c.http_protocol_options.is_some()
        || c.common_http_protocol_options.is_some()
        || c.upstream_http_protocol_options.is_some()
        || c.protocol_selection != 0;
    for key in c.typed_extension_protocol_options.keys() {
        if key != HTTP_PROTOCOL_OPTIONS {
            return Err(InvalidCluster::not_implemented(
                name,
                format!("typed_extension_protocol_options[{key}]"),
            ));
        }
    }
    if let Some(any) = c
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    {
        let field = format!("typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS}]");
        if deprecated_used {
            return Err(InvalidCluster::new(
                name,
                field,
                "cannot be combined with the deprecated cluster-level protocol options",
            ));
        }
        let options: HttpProtocolOptions = xds_proto::any::unpack(any)
            .map_err(|e| InvalidCluster::new(name, &field, e.to_string()))?;
        typed_options(name, &options, &mut settings).map_err(|e| e.within(&field))?;
    } else {
        if let Some(h2) = &c.http2_protocol_options {
            settings.protocol = UpstreamProtocol::Http2;
            settings.http2 = http2(name, h2).map_err(|e| e.within("http2_protocol_options"))?;
        }
        if let Some(h1) = &c.http_protocol_options {
            settings.http1 = http1(name, h1).map_err(|e| e.within("http_protocol_options"))?;
        }
        if c.protocol_selection == 1 {
            settings.protocol = UpstreamProtocol::UseDownstream;
        }
        if let Some(common) = &c.common_http_protocol_options {
            common_options(name, common, &mut settings)
                .map_err(|e| e.within("common_http_protocol_options"))?;
        }
        if let Some(u) = &c.upstream_http_protocol_options {
            upstream_options(name, u).map_err(|e| e.within("upstream_http_protocol_options"))?;
        }
    }
    if let Some(max) = c.max_requests_per_connection {
        settings.max_requests_per_connection = (max.value > 0).then_some(max.value);
    }
    if let Some(options) = &c.upstream_connection_options {
        if options.happy_eyeballs_config.is_some() {
            return Err(InvalidCluster::not_implemented(
                name,
                "upstream_connection_options.happy_eyeballs_config",
            ));
        }
        if let Some(ka) = &options.tcp_keepalive {
            let secs = |field: &str, v: Option<u32>| -> Result<Option<Duration>, InvalidCluster> {
                match v {
                    Some(0) => Err(InvalidCluster::new(
                        name,
                        format!("upstream_connection_options.tcp_keepalive.{field}"),
                        "must be greater than 0",
                    )),
                    v => Ok(v.map(|s| Duration::from_secs(u64::from(s)))),
                }
            };
            settings.tcp_keepalive = Some(TcpKeepalive {
                probes: ka.keepalive_probes.map(|v| v.value),
                time: secs("keepalive_time", ka.keepalive_time.map(|v| v.value))?,
                interval: secs("keepalive_interval", ka.keepalive_interval.map(|v| v.value))?,
            });
        }
    }
    Ok(settings)
}

fn typed_options(
    name: &str,
    o: &HttpProtocolOptions,
    settings: &mut PoolSettings,
) -> Result<(), InvalidCluster> {
    let refused: [(&str, bool); 6] = [
        ("http_filters", !o.http_filters.is_empty()),
        (
            "header_validation_config",
            o.header_validation_config.is_some(),
        ),
        ("outlier_detection", o.outlier_detection.is_some()),
        (
            "request_mirror_policies",
            !o.request_mirror_policies.is_empty(),
        ),
        ("hash_policy", !o.hash_policy.is_empty()),
        ("retry_policy", o.retry_policy.is_some()),
    ];
    if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
        return Err(InvalidCluster::not_implemented(name, *field));
    }
    if let Some(common) = &o.common_http_protocol_options {
        common_options(name, common, settings)
            .map_err(|e| e.within("common_http_protocol_options"))?;
    }
    if let Some(u) = &o.upstream_http_protocol_options {
        upstream_options(name, u).map_err(|e| e.within("upstream_http_protocol_options"))?;
    }
    match &o.upstream_protocol_options {
        None => {}
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) => {
            match &explicit.protocol_config {
                None | Some(ProtocolConfig::HttpProtocolOptions(_)) => {
                    if let Some(ProtocolConfig::HttpProtocolOptions(h1)) = &explicit.protocol_config
                    {
                        settings.http1 = http1(name, h1)
                            .map_err(|e| e.within("explicit_http_config.http_protocol_options"))?;
                    }
                    settings.protocol = UpstreamProtocol::Http1;
                }
                Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                    settings.protocol = UpstreamProtocol::Http2;
                    settings.http2 = http2(name, h2)
                        .map_err(|e| e.within("explicit_http_config.http2_protocol_options"))?;
                }
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err(InvalidCluster::not_implemented(
                        name,
                        "explicit_http_config.http3_protocol_options",
                    ));
                }
            }
        }
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(d)) => {
            settings.protocol = UpstreamProtocol::UseDownstream;
            if d.http3_protocol_options.is_some() {
                return Err(InvalidCluster::not_implemented(
                    name,
                    "use_downstream_protocol_config.http3_protocol_options",
                ));
            }
            if let Some(h1) = &d.http_protocol_options {
                settings.http1 = http1(name, h1).map_err(|e| {
                    e.within("use_downstream_protocol_config.http_protocol_options")
                })?;
            }
            if let Some(h2) = &d.http2_protocol_options {
                settings.http2 = http2(name, h2).map_err(|e| {
                    e.within("use_downstream_protocol_config.http2_protocol_options")
                })?;
            }
        }
        Some(UpstreamProtocolOptions::AutoConfig(_)) => {
            // ALPN selection needs upstream TLS, which is not implemented yet.
            return Err(InvalidCluster::not_implemented(name, "auto_config"));
        }
    }
    Ok(())
}

fn common_options(
    name: &str,
    o: &core::HttpProtocolOptions,
    settings: &mut PoolSettings,
) -> Result<(), InvalidCluster> {
    // Limits Envoy applies to upstream response headers: hyper's HTTP/1 codec has the same
    // defaults (100 headers, and a header block bounded by the 64 KiB read buffer), so only
    // those values are accepted.
    if o.max_headers_count.is_some_and(|v| v.value != 100) {
        return Err(InvalidCluster::not_implemented(name, "max_headers_count"));
    }
    if o.max_response_headers_kb.is_some_and(|v| v.value != 60) {
        return Err(InvalidCluster::not_implemented(
            name,
            "max_response_headers_kb",
        ));
    }
    if o.headers_with_underscores_action != 0 {
        return Err(InvalidCluster::not_implemented(
            name,
            "headers_with_underscores_action",
        ));
    }
    if o.max_connection_duration_jitter
        .as_ref()
        .is_some_and(|p| p.value > 0.0)
    {
        return Err(InvalidCluster::not_implemented(
            name,
            "max_connection_duration_jitter",
        ));
    }
    if let Some(max) = &o.max_connection_duration {
        let max = duration(name, "max_connection_duration", max)?;
        // Envoy: zero (like unset) means no limit.
        settings.max_connection_duration = (!max.is_zero()).then_some(max);
    }
    if o.max_stream_duration.is_some() {
        return Err(InvalidCluster::not_implemented(name, "max_stream_duration"));
    }
    if let Some(idle) = &o.idle_timeout {
        let idle = duration(name, "idle_timeout", idle)?;
        // Envoy: zero disables the idle timeout.
        settings.idle_timeout = (!idle.is_zero()).then_some(idle);
    }
    if let Some(max) = o.max_requests_per_connection {
        settings.max_requests_per_connection = (max.value > 0).then_some(max.value);
    }
    Ok(())
}

fn upstream_options(
    name: &str,
    o: &core::UpstreamHttpProtocolOptions,
) -> Result<(), InvalidCluster> {
    // SNI and SAN handling belong to upstream TLS, which is not implemented yet.
    if o.auto_sni || o.auto_san_validation || !o.override_auto_sni_header.is_empty() {
        return Err(InvalidCluster::not_implemented(
            name,
            "auto_sni/auto_san_validation",
        ));
    }
    Ok(())
}

fn http1(name: &str, o: &core::Http1ProtocolOptions) -> Result<Http1Settings, InvalidCluster> {
    use core::http1_protocol_options::header_key_format::HeaderFormat;
    let refused = [
        ("send_fully_qualified_url", o.send_fully_qualified_url),
        ("enable_trailers", o.enable_trailers),
        ("allow_chunked_length", o.allow_chunked_length),
        (
            "override_stream_error_on_invalid_http_message",
            o.override_stream_error_on_invalid_http_message.is_some(),
        ),
        ("allow_custom_methods", o.allow_custom_methods),
        (
            "ignore_http_11_upgrade",
            !o.ignore_http_11_upgrade.is_empty(),
        ),
    ];
    if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
        return Err(InvalidCluster::not_implemented(name, *field));
    }
    let title_case_headers = match o
        .header_key_format
        .as_ref()
        .and_then(|f| f.header_format.as_ref())
    {
        None => false,
        Some(HeaderFormat::ProperCaseWords(_)) => true,
        Some(HeaderFormat::StatefulFormatter(_)) => {
            return Err(InvalidCluster::not_implemented(
                name,
                "header_key_format.stateful_formatter",
            ));
        }
    };
    Ok(Http1Settings { title_case_headers })
}

#[allow(deprecated)]
fn http2(name: &str, o: &core::Http2ProtocolOptions) -> Result<Http2Settings, InvalidCluster> {
    if o.allow_connect {
        return Err(InvalidCluster::not_implemented(name, "allow_connect"));
    }
    if o.allow_metadata {
        return Err(InvalidCluster::not_implemented(name, "allow_metadata"));
    }
    if !o.custom_settings_parameters.is_empty() {
        return Err(InvalidCluster::not_implemented(
            name,
            "custom_settings_parameters",
        ));
    }
    // hyper's client sends no SETTINGS_HEADER_TABLE_SIZE, so only HPACK's 4096 is possible; the
    // rest are Envoy codec limits the h2 crate has fixed equivalents of.
    let refused = [
        (
            "hpack_table_size",
            o.hpack_table_size.is_some_and(|v| v.value != 4096),
        ),
        ("max_outbound_frames", o.max_outbound_frames.is_some()),
        (
            "max_outbound_control_frames",
            o.max_outbound_control_frames.is_some(),
        ),
        (
            "max_consecutive_inbound_frames_with_empty_payload",
            o.max_consecutive_inbound_frames_with_empty_payload
                .is_some(),
        ),
        (
            "max_inbound_priority_frames_per_stream",
            o.max_inbound_priority_frames_per_stream.is_some(),
        ),
        (
            "max_inbound_window_update_frames_per_data_frame_sent",
            o.max_inbound_window_update_frames_per_data_frame_sent
                .is_some(),
        ),
        (
            "stream_error_on_invalid_http_messaging",
            o.stream_error_on_invalid_http_messaging,
        ),
        (
            "override_stream_error_on_invalid_http_message",
            o.override_stream_error_on_invalid_http_message.is_some(),
        ),
        ("max_metadata_size", o.max_metadata_size.is_some()),
        (
            "enable_huffman_encoding",
            o.enable_huffman_encoding.is_some_and(|b| !b.value),
        ),
        (
            "max_header_field_size_kb",
            o.max_header_field_size_kb.is_some(),
        ),
        ("disallow_obs_text", o.disallow_obs_text.is_some()),
        ("stream_reset_burst", o.stream_reset_burst.is_some()),
        ("stream_reset_rate", o.stream_reset_rate.is_some()),
    ];
    if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
        return Err(InvalidCluster::not_implemented(name, *field));
    }
    let mut s = Http2Settings::default();
    if let Some(max) = o.max_concurrent_streams {
        if max.value == 0 {
            return Err(InvalidCluster::new(
                name,
                "max_concurrent_streams",
                "must be at least 1",
            ));
        }
        s.max_concurrent_streams = max.value;
    }
    // Envoy's bounds; beyond 2^31-1 the peer (and h2 itself) treat the setting as an error.
    let window = |field: &str, v: Option<u32>| match v {
        Some(size) if !(65_535..=2_147_483_647).contains(&size) => Err(InvalidCluster::new(
            name,
            field,
            "must be between 65535 and 2147483647",
        )),
        v => Ok(v),
    };
    s.initial_stream_window_size = window(
        "initial_stream_window_size",
        o.initial_stream_window_size.map(|v| v.value),
    )?;
    s.initial_connection_window_size = window(
        "initial_connection_window_size",
        o.initial_connection_window_size.map(|v| v.value),
    )?;
    if let Some(ka) = &o.connection_keepalive {
        let interval = ka
            .interval
            .as_ref()
            .map(|d| duration(name, "connection_keepalive.interval", d))
            .transpose()?;
        let timeout = ka
            .timeout
            .as_ref()
            .map(|d| duration(name, "connection_keepalive.timeout", d))
            .transpose()?
            .ok_or_else(|| {
                InvalidCluster::new(name, "connection_keepalive.timeout", "is required")
            })?;
        let too_small = |d: Duration| d < Duration::from_millis(1);
        if interval.is_some_and(too_small) || too_small(timeout) {
            return Err(InvalidCluster::new(
                name,
                "connection_keepalive",
                "interval and timeout must be at least 1ms",
            ));
        }
        s.keepalive = interval.map(|i| (i, timeout));
    }
    Ok(s)
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
