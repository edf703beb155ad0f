//! The `HttpConnectionManager` fields ferry-proxy does not implement, refused by name when they
//! are set to anything but Envoy's default (or a value whose effect ferry already has), so a
//! config is never half-applied. The fields it does implement are read in [`super::config`] and
//! [`super::protocol_options`]; accepted-as-is fields are explained there too.

use xds_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;

use crate::route::Invalid;

fn zero(d: &Option<xds_proto::google::protobuf::Duration>) -> bool {
    d.is_none_or(|d| d.seconds == 0 && d.nanos == 0)
}

/// Refuses the first unsupported field that is set; `field` is the HCM's path.
#[allow(deprecated)]
pub(crate) fn refuse(h: &hcm_pb::HttpConnectionManager, field: &str) -> Result<(), Invalid> {
    let refuse_if = |set: bool, name: &str| {
        if set {
            Err(Invalid::new(
                format!("{field}.{name}"),
                "not implemented by ferry-proxy",
            ))
        } else {
            Ok(())
        }
    };
    refuse_if(h.add_user_agent.is_some_and(|b| b.value), "add_user_agent")?;
    refuse_if(h.http3_protocol_options.is_some(), "http3_protocol_options")?;
    refuse_if(
        h.scheme_header_transformation.is_some(),
        "scheme_header_transformation",
    )?;
    refuse_if(!zero(&h.request_timeout), "request_timeout")?;
    // istiod sends `stream_idle_timeout: 0s` (disabled), which is what ferry does; Envoy's
    // default when it is absent (5 minutes) is not implemented.
    refuse_if(!zero(&h.stream_idle_timeout), "stream_idle_timeout")?;
    refuse_if(!zero(&h.request_headers_timeout), "request_headers_timeout")?;
    refuse_if(h.xff_num_trusted_hops != 0, "xff_num_trusted_hops")?;
    refuse_if(
        !h.original_ip_detection_extensions.is_empty(),
        "original_ip_detection_extensions",
    )?;
    refuse_if(
        !h.early_header_mutation_extensions.is_empty(),
        "early_header_mutation_extensions",
    )?;
    refuse_if(!h.via.is_empty(), "via")?;
    refuse_if(
        h.preserve_external_request_id,
        "preserve_external_request_id",
    )?;
    // `set_current_client_cert_details` (istiod sets it on every inbound HCM) says which
    // parts of the peer's certificate to append to XFCC. The filter chain refuses downstream
    // TLS, so a connection never has a peer certificate and, as in Envoy on a plaintext
    // connection, there is nothing to append: accepting it applies it exactly. Whoever adds
    // downstream TLS must read it here.
    refuse_if(h.local_reply_config.is_some(), "local_reply_config")?;
    refuse_if(h.strip_matching_host_port, "strip_matching_host_port")?;
    refuse_if(h.strip_port_mode.is_some(), "strip_port_mode")?;
    refuse_if(h.strip_trailing_host_dot, "strip_trailing_host_dot")?;
    refuse_if(h.proxy_status_config.is_some(), "proxy_status_config")?;
    refuse_if(h.append_x_forwarded_port, "append_x_forwarded_port")?;
    refuse_if(h.forward_proto_config.is_some(), "forward_proto_config")?;
    refuse_if(!zero(&h.stream_flush_timeout), "stream_flush_timeout")?;
    refuse_if(
        h.drain_timeout_jitter
            .as_ref()
            .is_some_and(|p| p.value > 0.0),
        "drain_timeout_jitter",
    )?;
    // Envoy's default (1s) only bounds how long a close waits for the write buffer to
    // flush; hyper flushes before it closes. Another value would be a promise not kept.
    refuse_if(
        h.delayed_close_timeout
            .as_ref()
            .is_some_and(|d| d.seconds != 1 || d.nanos != 0),
        "delayed_close_timeout",
    )?;
    // Access log lines are written when each stream ends; periodic flushes are not
    // implemented.
    refuse_if(
        h.access_log_flush_interval.is_some(),
        "access_log_flush_interval",
    )?;
    refuse_if(
        h.flush_access_log_on_new_request,
        "flush_access_log_on_new_request",
    )?;
    refuse_if(h.access_log_options.is_some(), "access_log_options")?;
    // Internal requests are judged by the RFC 1918 / loopback defaults only.
    refuse_if(
        h.internal_address_config.is_some(),
        "internal_address_config",
    )?;
    refuse_if(
        h.forward_client_cert_matcher.is_some(),
        "forward_client_cert_matcher",
    )?;
    refuse_if(
        h.represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
    )?;
    refuse_if(
        h.stream_error_on_invalid_http_message
            .is_some_and(|b| b.value),
        "stream_error_on_invalid_http_message",
    )?;
    refuse_if(
        h.path_normalization_options.is_some(),
        "path_normalization_options",
    )?;
    refuse_if(
        h.typed_header_validation_config.is_some(),
        "typed_header_validation_config",
    )?;
    refuse_if(h.append_local_overload, "append_local_overload")?;
    if let Some(ext) = &h.request_id_extension {
        let uuid = ext.typed_config.as_ref().is_none_or(|a| {
            a.type_url
                .ends_with("request_id.uuid.v3.UuidRequestIdConfig")
        });
        refuse_if(!uuid, "request_id_extension")?;
    }
    // Accepted as they stand:
    // - `proxy_100_continue` (istiod sets it on gateways): with it or without it the client
    //   gets its `100 Continue`; hyper sends it when the router starts reading the body, and
    //   the upstream's own 100 is not relayed.
    // - `http1_safe_max_connection_duration`: ferry's HTTP/1.1 drain is always the safe one
    //   (`Connection: close` on the next response, see `drain`).
    // - `add_proxy_protocol_connection_state`: there is no PROXY protocol state to add.
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::http_connection_manager::HttpConnectionManagerConfig;
    use xds_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;

    const BASE: &str = "stat_prefix: s\nrds: { route_config_name: r }\nhttp_filters: [{ name: envoy.filters.http.router }]\n";

    fn refused(extra: &str) -> (String, String) {
        let yaml = format!("{BASE}{extra}");
        let proto: hcm_pb::HttpConnectionManager =
            xds_proto::json::from_yaml_str(&yaml).unwrap_or_else(|e| panic!("{extra}: {e}"));
        let e = HttpConnectionManagerConfig::from_proto(&proto, "hcm").expect_err(extra);
        (e.field, e.reason)
    }

    #[test]
    fn every_unsupported_field_is_refused_by_name() {
        for (extra, field) in [
            ("add_user_agent: true", "add_user_agent"),
            ("http3_protocol_options: {}", "http3_protocol_options"),
            (
                "scheme_header_transformation: { scheme_to_overwrite: https }",
                "scheme_header_transformation",
            ),
            ("request_timeout: 1s", "request_timeout"),
            ("stream_idle_timeout: 300s", "stream_idle_timeout"),
            ("request_headers_timeout: 1s", "request_headers_timeout"),
            ("xff_num_trusted_hops: 1", "xff_num_trusted_hops"),
            ("via: ferry", "via"),
            (
                "preserve_external_request_id: true",
                "preserve_external_request_id",
            ),
            ("local_reply_config: {}", "local_reply_config"),
            ("strip_matching_host_port: true", "strip_matching_host_port"),
            ("strip_any_host_port: true", "strip_port_mode"),
            ("strip_trailing_host_dot: true", "strip_trailing_host_dot"),
            ("proxy_status_config: {}", "proxy_status_config"),
            ("append_x_forwarded_port: true", "append_x_forwarded_port"),
            ("forward_proto_config: {}", "forward_proto_config"),
            ("stream_flush_timeout: 1s", "stream_flush_timeout"),
            (
                "drain_timeout_jitter: { value: 10 }",
                "drain_timeout_jitter",
            ),
            ("delayed_close_timeout: 5s", "delayed_close_timeout"),
            (
                "flush_access_log_on_new_request: true",
                "flush_access_log_on_new_request",
            ),
            ("access_log_options: {}", "access_log_options"),
            ("internal_address_config: {}", "internal_address_config"),
            (
                "forward_client_cert_matcher: {}",
                "forward_client_cert_matcher",
            ),
            (
                "represent_ipv4_remote_address_as_ipv4_mapped_ipv6: true",
                "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
            ),
            (
                "stream_error_on_invalid_http_message: true",
                "stream_error_on_invalid_http_message",
            ),
            (
                "path_normalization_options: {}",
                "path_normalization_options",
            ),
            ("append_local_overload: true", "append_local_overload"),
            (
                "request_id_extension: { typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }",
                "request_id_extension",
            ),
        ] {
            let (got, reason) = refused(extra);
            assert_eq!(got, format!("hcm.{field}"), "{extra}");
            assert_eq!(reason, "not implemented by ferry-proxy", "{extra}");
        }
    }

    #[test]
    fn defaults_and_istios_values_are_accepted() {
        for extra in [
            "stream_idle_timeout: 0s",
            "delayed_close_timeout: 1s",
            "proxy_100_continue: true",
            "http1_safe_max_connection_duration: true",
            "add_proxy_protocol_connection_state: false",
            "set_current_client_cert_details: { subject: true, uri: true, dns: true }",
        ] {
            let yaml = format!("{BASE}{extra}");
            let proto: hcm_pb::HttpConnectionManager =
                xds_proto::json::from_yaml_str(&yaml).expect("valid HCM YAML");
            HttpConnectionManagerConfig::from_proto(&proto, "hcm")
                .unwrap_or_else(|e| panic!("{extra}: {}: {}", e.field, e.reason));
        }
    }
}
