//! The downstream protocol options of an `HttpConnectionManager`: `common_http_protocol_options`,
//! `http_protocol_options` (HTTP/1) and `http2_protocol_options`, validated into what hyper's
//! server builder and the request path apply.
//!
//! istiod sets some of these on every sidecar (`common_http_protocol_options.idle_timeout` from
//! the node's `IDLE_TIMEOUT`, an empty `http2_protocol_options` on gRPC/HTTP2 inbound ports,
//! `http_protocol_options.accept_http_10` for `HTTP10` nodes), so each field is either applied
//! or refused by name: a config that asks for something Ferry does not do is NACKed, never
//! half-applied. Knobs that only select Envoy's own codec implementation (`use_balsa_parser`,
//! `use_oghttp2_codec`) have nothing to select in Ferry and are accepted.

use std::time::Duration;

use xds_proto::envoy::config::core::v3 as core_pb;
use xds_proto::google::protobuf::Duration as PbDuration;

use crate::route::Invalid;

/// Envoy's default downstream connection idle timeout (`common_http_protocol_options.idle_timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Envoy's default `max_headers_count` (and hyper's HTTP/1 default too).
pub const DEFAULT_MAX_HEADERS_COUNT: usize = 100;

/// What to do with a request header whose name contains `_` (`headers_with_underscores_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersWithUnderscores {
    /// Pass it on (Envoy's default).
    Allow,
    /// Answer 400 (Envoy resets an HTTP/2 stream instead).
    RejectRequest,
    /// Remove the header before routing.
    DropHeader,
}

/// The HTTP/2 server settings the HCM sends downstream; `None` keeps hyper's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Http2Server {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub max_concurrent_streams: Option<u32>,
    /// `SETTINGS_INITIAL_WINDOW_SIZE`.
    pub initial_stream_window_size: Option<u32>,
    /// The connection-level flow-control window.
    pub initial_connection_window_size: Option<u32>,
}

/// The validated downstream protocol options of one HCM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamProtocolOptions {
    /// Close the connection after this long with no active request (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Drain the connection (GOAWAY, or `Connection: close` on HTTP/1.1) after this long.
    pub max_connection_duration: Option<Duration>,
    /// Drain the connection after this many requests.
    pub max_requests_per_connection: Option<u32>,
    /// More request headers than this are answered 431.
    pub max_headers_count: usize,
    /// `headers_with_underscores_action`.
    pub headers_with_underscores: HeadersWithUnderscores,
    /// `accept_http_10`: without it an HTTP/1.0 request is answered 426, as Envoy does.
    pub accept_http_10: bool,
    /// `header_key_format.proper_case_words`: HTTP/1 response header names in Title-Case.
    pub title_case_headers: bool,
    /// `http2_protocol_options`.
    pub http2: Http2Server,
}

impl Default for DownstreamProtocolOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_connection_duration: None,
            max_requests_per_connection: None,
            max_headers_count: DEFAULT_MAX_HEADERS_COUNT,
            headers_with_underscores: HeadersWithUnderscores::Allow,
            accept_http_10: false,
            title_case_headers: false,
            http2: Http2Server::default(),
        }
    }
}

fn set(d: &Option<PbDuration>) -> bool {
    d.as_ref().is_some_and(|d| d.seconds != 0 || d.nanos != 0)
}

fn duration(d: &PbDuration, field: &str) -> Result<Duration, Invalid> {
    match (u64::try_from(d.seconds), u32::try_from(d.nanos)) {
        (Ok(secs), Ok(nanos)) if nanos < 1_000_000_000 => Ok(Duration::new(secs, nanos)),
        _ => Err(Invalid::new(field, "not a valid non-negative duration")),
    }
}

fn refuse(set: bool, field: String) -> Result<(), Invalid> {
    if set {
        Err(Invalid::new(field, "not implemented by ferry-proxy"))
    } else {
        Ok(())
    }
}

impl DownstreamProtocolOptions {
    /// Reads the three option messages of an HCM; `field` is the HCM's path, for errors.
    pub(crate) fn from_proto(
        common: Option<&core_pb::HttpProtocolOptions>,
        http1: Option<&core_pb::Http1ProtocolOptions>,
        http2: Option<&core_pb::Http2ProtocolOptions>,
        field: &str,
    ) -> Result<Self, Invalid> {
        let mut options = Self::default();
        if let Some(c) = common {
            options.common(c, &format!("{field}.common_http_protocol_options"))?;
        }
        if let Some(h1) = http1 {
            options.http1(h1, &format!("{field}.http_protocol_options"))?;
        }
        if let Some(h2) = http2 {
            options.http2 = http2_server(h2, &format!("{field}.http2_protocol_options"))?;
        }
        Ok(options)
    }

    fn common(&mut self, c: &core_pb::HttpProtocolOptions, field: &str) -> Result<(), Invalid> {
        let f = |name: &str| format!("{field}.{name}");
        refuse(
            c.max_connection_duration_jitter
                .as_ref()
                .is_some_and(|p| p.value > 0.0),
            f("max_connection_duration_jitter"),
        )?;
        // Only read for upstream connections; on the HCM it would mean nothing.
        refuse(
            c.max_response_headers_kb.is_some(),
            f("max_response_headers_kb"),
        )?;
        refuse(set(&c.max_stream_duration), f("max_stream_duration"))?;
        // Envoy: zero (like unset) means no limit.
        self.max_requests_per_connection = c
            .max_requests_per_connection
            .map(|v| v.value)
            .filter(|max| *max > 0);
        if let Some(idle) = &c.idle_timeout {
            let idle = duration(idle, &f("idle_timeout"))?;
            // Envoy: zero disables the idle timeout.
            self.idle_timeout = (!idle.is_zero()).then_some(idle);
        }
        if let Some(max) = &c.max_connection_duration {
            let max = duration(max, &f("max_connection_duration"))?;
            self.max_connection_duration = (!max.is_zero()).then_some(max);
        }
        if let Some(count) = c.max_headers_count {
            if count.value == 0 {
                return Err(Invalid::new(f("max_headers_count"), "must be at least 1"));
            }
            self.max_headers_count = count.value as usize;
        }
        self.headers_with_underscores = match c.headers_with_underscores_action {
            0 => HeadersWithUnderscores::Allow,
            1 => HeadersWithUnderscores::RejectRequest,
            2 => HeadersWithUnderscores::DropHeader,
            _ => {
                return Err(Invalid::new(
                    f("headers_with_underscores_action"),
                    "unknown value",
                ));
            }
        };
        Ok(())
    }

    fn http1(&mut self, h: &core_pb::Http1ProtocolOptions, field: &str) -> Result<(), Invalid> {
        use core_pb::http1_protocol_options::header_key_format::HeaderFormat;
        let f = |name: &str| format!("{field}.{name}");
        // hyper takes absolute-form request targets: only Envoy's default (true) is possible.
        refuse(
            h.allow_absolute_url.is_some_and(|b| !b.value),
            f("allow_absolute_url"),
        )?;
        refuse(
            !h.default_host_for_http_10.is_empty(),
            f("default_host_for_http_10"),
        )?;
        refuse(h.enable_trailers, f("enable_trailers"))?;
        refuse(h.allow_chunked_length, f("allow_chunked_length"))?;
        refuse(
            h.override_stream_error_on_invalid_http_message.is_some(),
            f("override_stream_error_on_invalid_http_message"),
        )?;
        // Upstream only: a downstream codec never sends a request line.
        refuse(h.send_fully_qualified_url, f("send_fully_qualified_url"))?;
        refuse(h.allow_custom_methods, f("allow_custom_methods"))?;
        refuse(
            !h.ignore_http_11_upgrade.is_empty(),
            f("ignore_http_11_upgrade"),
        )?;
        self.accept_http_10 = h.accept_http_10;
        self.title_case_headers = match h
            .header_key_format
            .as_ref()
            .and_then(|k| k.header_format.as_ref())
        {
            None => false,
            Some(HeaderFormat::ProperCaseWords(_)) => true,
            Some(HeaderFormat::StatefulFormatter(_)) => {
                return Err(Invalid::new(
                    f("header_key_format.stateful_formatter"),
                    "not implemented by ferry-proxy",
                ));
            }
        };
        Ok(())
    }
}

impl DownstreamProtocolOptions {
    /// The per-request part, before routing: HTTP/1.0 without `accept_http_10` is answered 426,
    /// more than `max_headers_count` headers 431, a header name with `_` 400 under
    /// REJECT_REQUEST; DROP_HEADER removes such headers. `Err` is the local reply's status.
    pub fn check_request(&self, parts: &mut http::request::Parts) -> Result<(), http::StatusCode> {
        if parts.version == http::Version::HTTP_10 && !self.accept_http_10 {
            return Err(http::StatusCode::UPGRADE_REQUIRED);
        }
        if parts.headers.len() > self.max_headers_count {
            return Err(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        if self.headers_with_underscores == HeadersWithUnderscores::Allow {
            return Ok(());
        }
        let underscored: Vec<http::HeaderName> = parts
            .headers
            .keys()
            .filter(|name| name.as_str().contains('_'))
            .cloned()
            .collect();
        if underscored.is_empty() {
            return Ok(());
        }
        if self.headers_with_underscores == HeadersWithUnderscores::RejectRequest {
            tracing::debug!(header = %underscored[0], "request header with underscore rejected");
            return Err(http::StatusCode::BAD_REQUEST);
        }
        for name in &underscored {
            parts.headers.remove(name);
        }
        Ok(())
    }
}

#[allow(deprecated)]
fn http2_server(h: &core_pb::Http2ProtocolOptions, field: &str) -> Result<Http2Server, Invalid> {
    let f = |name: &str| format!("{field}.{name}");
    // CONNECT is answered 405 by the HCM, metadata frames are not proxied.
    refuse(h.allow_connect, f("allow_connect"))?;
    refuse(h.allow_metadata, f("allow_metadata"))?;
    refuse(h.max_metadata_size.is_some(), f("max_metadata_size"))?;
    refuse(
        !h.custom_settings_parameters.is_empty(),
        f("custom_settings_parameters"),
    )?;
    refuse(h.connection_keepalive.is_some(), f("connection_keepalive"))?;
    // hyper sends no SETTINGS_HEADER_TABLE_SIZE: only HPACK's (and Envoy's) 4096 is possible.
    refuse(
        h.hpack_table_size.is_some_and(|v| v.value != 4096),
        f("hpack_table_size"),
    )?;
    // Envoy's own flood and abuse limits; the h2 crate has fixed ones of its own.
    let codec_limits = [
        ("max_outbound_frames", h.max_outbound_frames.is_some()),
        (
            "max_outbound_control_frames",
            h.max_outbound_control_frames.is_some(),
        ),
        (
            "max_consecutive_inbound_frames_with_empty_payload",
            h.max_consecutive_inbound_frames_with_empty_payload
                .is_some(),
        ),
        (
            "max_inbound_priority_frames_per_stream",
            h.max_inbound_priority_frames_per_stream.is_some(),
        ),
        (
            "max_inbound_window_update_frames_per_data_frame_sent",
            h.max_inbound_window_update_frames_per_data_frame_sent
                .is_some(),
        ),
        (
            "stream_error_on_invalid_http_messaging",
            h.stream_error_on_invalid_http_messaging,
        ),
        (
            "override_stream_error_on_invalid_http_message",
            h.override_stream_error_on_invalid_http_message.is_some(),
        ),
        (
            "enable_huffman_encoding",
            h.enable_huffman_encoding.is_some_and(|b| !b.value),
        ),
        (
            "max_header_field_size_kb",
            h.max_header_field_size_kb.is_some(),
        ),
        ("disallow_obs_text", h.disallow_obs_text.is_some()),
        ("stream_reset_burst", h.stream_reset_burst.is_some()),
        ("stream_reset_rate", h.stream_reset_rate.is_some()),
    ];
    for (name, is_set) in codec_limits {
        refuse(is_set, f(name))?;
    }
    let max_concurrent_streams = match h.max_concurrent_streams {
        Some(v) if !(1..=2_147_483_647).contains(&v.value) => {
            return Err(Invalid::new(
                f("max_concurrent_streams"),
                "must be between 1 and 2147483647",
            ));
        }
        v => v.map(|v| v.value),
    };
    let window = |name: &str, v: Option<u32>| match v {
        Some(size) if !(65_535..=2_147_483_647).contains(&size) => Err(Invalid::new(
            f(name),
            "must be between 65535 and 2147483647",
        )),
        v => Ok(v),
    };
    Ok(Http2Server {
        max_concurrent_streams,
        initial_stream_window_size: window(
            "initial_stream_window_size",
            h.initial_stream_window_size.map(|v| v.value),
        )?,
        initial_connection_window_size: window(
            "initial_connection_window_size",
            h.initial_connection_window_size.map(|v| v.value),
        )?,
    })
}

#[cfg(test)]
#[path = "protocol_options_tests.rs"]
mod tests;
