//! The validated `HttpConnectionManager` network filter config: codec, where routes come from
//! (inline or RDS), the HTTP filter chain (only the router so far), and the header handling
//! knobs a sidecar uses (`x-forwarded-*`, `x-request-id`, XFCC).

use std::sync::Arc;

use xds_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;

use crate::route::{Invalid, RouteTable};

/// Which HTTP versions downstream may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// HTTP/1.1 or h2c prior knowledge, detected per connection.
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 (h2c prior knowledge) only.
    Http2,
}

/// Where the HCM gets its routes.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteSource {
    /// `route_config`, validated with the listener.
    Static(Arc<RouteTable>),
    /// `rds.route_config_name`, looked up in the snapshot per request.
    Rds(String),
}

/// A validated HTTP connection manager.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConnectionManagerConfig {
    /// `stat_prefix`.
    pub stat_prefix: String,
    /// Downstream codec.
    pub codec: Codec,
    /// Routes.
    pub route: RouteSource,
    /// `use_remote_address`: append the peer to `x-forwarded-for` and judge internal requests
    /// by the peer address.
    pub use_remote_address: bool,
    /// `skip_xff_append`.
    pub skip_xff_append: bool,
    /// Generate `x-request-id` when absent (`generate_request_id`, default true).
    pub generate_request_id: bool,
    /// Echo `x-request-id` in responses.
    pub always_set_request_id_in_response: bool,
    /// `request_id_extension` (`envoy.request_id.uuid`): how `x-request-id` carries the trace
    /// decision.
    pub request_id: crate::tracers::UuidRequestId,
    /// WebSocket upgrades allowed (`upgrade_configs` has `websocket`).
    pub websocket: bool,
    /// Remove `x-forwarded-client-cert`: every `forward_client_cert_details` mode but
    /// ALWAYS_FORWARD_ONLY does on a connection without a client certificate (all of ferry's).
    pub sanitize_xfcc: bool,
    /// `normalize_path`: RFC 3986 dot-segment removal (and `\\` to `/`) before routing.
    pub normalize_path: bool,
    /// `merge_slashes`: `//` runs in the path become one `/` (after `normalize_path`).
    pub merge_slashes: bool,
    /// `path_with_escaped_slashes_action`.
    pub escaped_slashes: super::path::EscapedSlashes,
    /// `server_name` (Envoy default `envoy`), written per `server_header_transformation`.
    pub server_name: http::HeaderValue,
    /// `server_header_transformation`.
    pub server_header: ServerHeader,
    /// `drain_timeout` (Envoy's default 5s): how long a retired HTTP/1.1 connection may stay
    /// idle before it is closed.
    pub drain_timeout: std::time::Duration,
    /// `max_request_headers_kb` (Envoy's default 60 KiB, at most 8192), in bytes: a larger
    /// request header block is answered 431. The HTTP/1.1 read buffer grows to hold it; the
    /// codec enforces it through that buffer, so a block that arrives in one read may pass up to
    /// the buffer's capacity (Envoy counts exactly). HTTP/2 sends it as `max_header_list_size`.
    pub max_request_headers: usize,
    /// `access_log` (file loggers): a line per request when its response ends.
    pub access_log: Arc<Vec<crate::access_log::AccessLog>>,
    /// `tracing`: spans are created, propagated and reported (by its provider, else the
    /// bootstrap's).
    pub tracing: Option<Arc<crate::tracers::TracingConfig>>,
    /// `common_http_protocol_options`, `http_protocol_options`, `http2_protocol_options`.
    pub protocol: super::protocol_options::DownstreamProtocolOptions,
}

/// Envoy's `server_header_transformation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    /// Replace the upstream's `server` header (Envoy's default).
    Overwrite,
    /// Add ours only when the upstream sent none.
    AppendIfAbsent,
    /// Leave it alone (Istio sidecars).
    PassThrough,
}

fn zero(d: &Option<xds_proto::google::protobuf::Duration>) -> bool {
    d.is_none_or(|d| d.seconds == 0 && d.nanos == 0)
}

impl HttpConnectionManagerConfig {
    #[allow(deprecated)]
    pub(crate) fn from_proto(
        h: &hcm_pb::HttpConnectionManager,
        field: &str,
    ) -> Result<Self, Invalid> {
        use hcm_pb::http_connection_manager::RouteSpecifier as R;
        let f = |s: &str| format!("{field}.{s}");
        let tracing = match &h.tracing {
            Some(t) => Some(Arc::new(
                crate::tracers::TracingConfig::from_proto(t)
                    .map_err(|e| Invalid::new(f(&format!("tracing.{}", e.field)), e.reason))?,
            )),
            None => None,
        };
        let access_log = h
            .access_log
            .iter()
            .enumerate()
            .map(|(i, a)| {
                crate::access_log::AccessLog::try_from(a)
                    .map_err(|e| Invalid::new(f(&format!("access_log[{i}].{}", e.field)), e.reason))
            })
            .collect::<Result<Vec<_>, _>>()?;
        super::unsupported::refuse(h, field)?;
        use super::path::EscapedSlashes;
        let escaped_slashes = match h.path_with_escaped_slashes_action {
            0 | 1 => EscapedSlashes::KeepUnchanged,
            2 => EscapedSlashes::RejectRequest,
            4 => EscapedSlashes::UnescapeAndForward,
            3 => {
                return Err(Invalid::new(
                    f("path_with_escaped_slashes_action"),
                    "UNESCAPE_AND_REDIRECT is not implemented by ferry-proxy",
                ));
            }
            _ => {
                return Err(Invalid::new(
                    f("path_with_escaped_slashes_action"),
                    "unknown value",
                ));
            }
        };

        let protocol = super::protocol_options::DownstreamProtocolOptions::from_proto(
            h.common_http_protocol_options.as_ref(),
            h.http_protocol_options.as_ref(),
            h.http2_protocol_options.as_ref(),
            field,
        )?;
        let request_id = crate::tracers::UuidRequestId::from_proto(h.request_id_extension.as_ref())
            .map_err(|reason| Invalid::new(f("request_id_extension"), reason))?;
        let codec = match h.codec_type {
            0 => Codec::Auto,
            1 => Codec::Http1,
            2 => Codec::Http2,
            _ => {
                return Err(Invalid::new(
                    f("codec_type"),
                    "only AUTO, HTTP1 and HTTP2 are supported",
                ));
            }
        };
        let route = match &h.route_specifier {
            Some(R::Rds(rds)) if !rds.route_config_name.is_empty() => {
                RouteSource::Rds(rds.route_config_name.clone())
            }
            Some(R::Rds(_)) => {
                return Err(Invalid::new(f("rds.route_config_name"), "name is required"));
            }
            Some(R::RouteConfig(rc)) => {
                let table = RouteTable::try_from(rc).map_err(|e| {
                    Invalid::new(format!("{field}.route_config.{}", e.field), e.reason)
                })?;
                RouteSource::Static(Arc::new(table))
            }
            Some(R::ScopedRoutes(_)) => {
                return Err(Invalid::new(
                    f("scoped_routes"),
                    "not implemented by ferry-proxy",
                ));
            }
            None => {
                return Err(Invalid::new(
                    f("route_specifier"),
                    "rds or route_config is required",
                ));
            }
        };
        http_filters(&h.http_filters, &f("http_filters"))?;
        let mut websocket = false;
        for (i, u) in h.upgrade_configs.iter().enumerate() {
            let uf = f(&format!("upgrade_configs[{i}]"));
            if !u.upgrade_type.eq_ignore_ascii_case("websocket") {
                return Err(Invalid::new(
                    format!("{uf}.upgrade_type"),
                    format!("{} upgrades are not implemented", u.upgrade_type),
                ));
            }
            if !u.filters.is_empty() {
                return Err(Invalid::new(
                    format!("{uf}.filters"),
                    "not implemented by ferry-proxy",
                ));
            }
            websocket = u.enabled.is_none_or(|b| b.value);
        }
        // Envoy removes XFCC from a request that did not come over mTLS with a client
        // certificate unless the mode is ALWAYS_FORWARD_ONLY; ferry-proxy has no downstream TLS,
        // so every other mode sanitizes.
        let sanitize_xfcc = match h.forward_client_cert_details {
            0..=3 => true,
            4 => false,
            _ => {
                return Err(Invalid::new(
                    f("forward_client_cert_details"),
                    "unknown value",
                ));
            }
        };
        let drain_timeout = match &h.drain_timeout {
            Some(d) if !zero(&h.drain_timeout) => {
                let (Ok(secs), Ok(nanos)) = (u64::try_from(d.seconds), u32::try_from(d.nanos))
                else {
                    return Err(Invalid::new(f("drain_timeout"), "negative duration"));
                };
                std::time::Duration::new(secs, nanos)
            }
            _ => super::drain::DRAIN_TIMEOUT,
        };
        let max_request_headers_kb = h.max_request_headers_kb.map_or(60, |v| v.value);
        if !(1..=8192).contains(&max_request_headers_kb) {
            return Err(Invalid::new(
                f("max_request_headers_kb"),
                "must be between 1 and 8192",
            ));
        }
        Ok(Self {
            protocol,
            drain_timeout,
            max_request_headers: max_request_headers_kb as usize * 1024,
            tracing,
            access_log: Arc::new(access_log),
            stat_prefix: h.stat_prefix.clone(),
            codec,
            route,
            use_remote_address: h.use_remote_address.is_some_and(|b| b.value),
            skip_xff_append: h.skip_xff_append,
            generate_request_id: h.generate_request_id.is_none_or(|b| b.value),
            always_set_request_id_in_response: h.always_set_request_id_in_response,
            request_id,
            websocket,
            sanitize_xfcc,
            normalize_path: h.normalize_path.is_some_and(|b| b.value),
            merge_slashes: h.merge_slashes,
            escaped_slashes,
            server_name: if h.server_name.is_empty() {
                http::HeaderValue::from_static("envoy")
            } else {
                http::HeaderValue::from_str(&h.server_name)
                    .map_err(|_| Invalid::new(f("server_name"), "not a valid header value"))?
            },
            server_header: match h.server_header_transformation {
                0 => ServerHeader::Overwrite,
                1 => ServerHeader::AppendIfAbsent,
                2 => ServerHeader::PassThrough,
                _ => {
                    return Err(Invalid::new(
                        f("server_header_transformation"),
                        "unknown value",
                    ));
                }
            },
        })
    }
}

/// Whether the filter is a fault or CORS filter with its default (empty) config.
fn is_inert_filter(type_url: &str, config: &Option<hcm_pb::http_filter::ConfigType>) -> bool {
    use hcm_pb::http_filter::ConfigType;
    use xds_proto::envoy::extensions::filters::http::{cors::v3::Cors, fault::v3::HttpFault};
    let Some(ConfigType::TypedConfig(any)) = config else {
        return false;
    };
    match type_url {
        "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault" => {
            xds_proto::any::unpack::<HttpFault>(any).is_ok_and(|f| f == HttpFault::default())
        }
        "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors" => {
            xds_proto::any::unpack::<Cors>(any).is_ok_and(|c| c == Cors::default())
        }
        _ => false,
    }
}

/// Only the router exists so far: it must be present and last, and every other filter is
/// refused by name (disabled ones too: a route could enable them).
fn http_filters(filters: &[hcm_pb::HttpFilter], field: &str) -> Result<(), Invalid> {
    use hcm_pb::http_filter::ConfigType;
    const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
    for (i, filter) in filters.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let type_url = match &filter.config_type {
            Some(ConfigType::TypedConfig(any)) => any.type_url.as_str(),
            Some(_) => {
                return Err(Invalid::new(
                    format!("{f}.config_discovery"),
                    "not implemented by ferry-proxy",
                ));
            }
            None if filter.name == "envoy.filters.http.router" => ROUTER,
            None => "",
        };
        if is_inert_filter(type_url, &filter.config_type) {
            // Istio's (and ferry-control's) HCM lists fault and CORS filters with empty configs:
            // they only act through per-route config, which the route table refuses. Accepting
            // them as they stand changes nothing.
            continue;
        }
        if type_url != ROUTER {
            return Err(Invalid::new(
                format!("{f}.typed_config"),
                format!(
                    "HTTP filter {} ({type_url}) is not implemented",
                    filter.name
                ),
            ));
        }
        if i + 1 != filters.len() {
            return Err(Invalid::new(f, "the router must be the last HTTP filter"));
        }
        if let Some(ConfigType::TypedConfig(any)) = &filter.config_type {
            let router: xds_proto::envoy::extensions::filters::http::router::v3::Router =
                xds_proto::any::unpack(any)
                    .map_err(|e| Invalid::new(format!("{f}.typed_config"), e.to_string()))?;
            // Stats and span knobs do not change routing; the rest would.
            if !router.upstream_log.is_empty()
                || !router.upstream_http_filters.is_empty()
                || router.respect_expected_rq_timeout
                || !router.strict_check_headers.is_empty()
            {
                return Err(Invalid::new(
                    format!("{f}.typed_config"),
                    "router options beyond the defaults are not implemented",
                ));
            }
        }
    }
    if filters.is_empty() {
        return Err(Invalid::new(field, "envoy.filters.http.router is required"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hcm_pb::http_connection_manager::RouteSpecifier;
    use xds_proto::google::protobuf::UInt32Value;

    fn with_max_request_headers_kb(
        kb: Option<u32>,
    ) -> Result<HttpConnectionManagerConfig, Invalid> {
        let h = hcm_pb::HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(hcm_pb::Rds {
                route_config_name: "80".into(),
                ..Default::default()
            })),
            http_filters: vec![hcm_pb::HttpFilter {
                name: "envoy.filters.http.router".into(),
                ..Default::default()
            }],
            max_request_headers_kb: kb.map(|value| UInt32Value { value }),
            ..Default::default()
        };
        HttpConnectionManagerConfig::from_proto(&h, "hcm")
    }

    #[test]
    fn max_request_headers_kb_defaults_to_envoys_60_and_is_bounded() {
        let bytes = |kb| with_max_request_headers_kb(kb).map(|c| c.max_request_headers);
        assert_eq!(bytes(None).unwrap(), 60 * 1024);
        assert_eq!(bytes(Some(96)).unwrap(), 96 * 1024);
        for refused in [0, 8193] {
            let e = bytes(Some(refused)).unwrap_err();
            assert_eq!(e.field, "hcm.max_request_headers_kb");
        }
    }
}
