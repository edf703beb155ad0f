//! The validated HCM `tracing` block: sampling percentages, custom tags and the provider
//! (`envoy.tracers.zipkin` or `envoy.tracers.opentelemetry` over gRPC). Converted once when the listener is accepted, so the request path
//! only reads plain fields; anything Ferry cannot honour is refused naming the field.

use std::sync::{Arc, OnceLock};

use http::HeaderName;
use tokio::sync::mpsc;
use xds_proto::envoy::config::trace::v3::ZipkinConfig as ZipkinProto;
use xds_proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm_pb;
use xds_proto::envoy::r#type::tracing::v3::{CustomTag as CustomTagProto, custom_tag};

use super::span::Span;

/// Envoy's default `max_path_tag_length`.
pub const DEFAULT_MAX_PATH_TAG_LENGTH: usize = 256;

const ZIPKIN_TYPE: &str = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig";
const OPENTELEMETRY_TYPE: &str = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig";

/// A `tracing` field Ferry cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tracing.{field}: {reason}")]
pub struct InvalidTracing {
    /// The field inside `tracing`, e.g. `provider.typed_config.collector_endpoint_version`.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidTracing {
    InvalidTracing {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A validated HCM `tracing` block.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// `client_sampling` in percent (default 100): requests with `x-client-trace-id`.
    pub client_sampling: f64,
    /// `random_sampling` in percent (default 100).
    pub random_sampling: f64,
    /// `overall_sampling` in percent (default 100), applied after the others.
    pub overall_sampling: f64,
    /// `max_path_tag_length` (default 256): `http.url` is cut to this many bytes.
    pub max_path_tag_length: usize,
    /// `custom_tags`, resolved where possible at config time.
    pub custom_tags: Vec<CustomTag>,
    /// The tracer; absent: the bootstrap's `tracing.http` (Envoy's fallback, which Istio's
    /// legacy bootstrap uses), else no tracing at all.
    pub provider: Option<Arc<Provider>>,
    /// The reporter's queue, found (or started) on the first sampled span and then kept, so
    /// later spans of this config skip the tracer's registry lock.
    pub(crate) reporter: ReporterSlot,
}

/// A custom tag with its value source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomTag {
    /// The tag name.
    pub tag: String,
    /// Where its value comes from.
    pub value: TagValue,
}

/// Where a custom tag's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagValue {
    /// A literal, or an environment variable read when the config was accepted (as Envoy does).
    Fixed(String),
    /// A request header, or `default_value` when absent (no tag when that is empty too).
    RequestHeader {
        /// The header.
        name: HeaderName,
        /// `default_value`.
        default: String,
    },
}

/// A validated tracer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Provider {
    /// `envoy.tracers.zipkin`: B3 propagation, Zipkin v2 JSON reports.
    Zipkin(ZipkinConfig),
    /// `envoy.tracers.opentelemetry`: W3C propagation, OTLP/gRPC export.
    OpenTelemetry(OpenTelemetryConfig),
}

impl Provider {
    /// The cluster reports go through.
    pub fn collector_cluster(&self) -> &str {
        match self {
            Self::Zipkin(z) => &z.collector_cluster,
            Self::OpenTelemetry(o) => &o.cluster,
        }
    }

    /// Whether a server span reuses the caller's span id (Zipkin's `shared_span_context`).
    pub fn shared_span_context(&self) -> bool {
        match self {
            Self::Zipkin(z) => z.shared_span_context,
            Self::OpenTelemetry(_) => false,
        }
    }

    /// Whether new traces get 128-bit ids (always for W3C).
    pub fn trace_id_128bit(&self) -> bool {
        match self {
            Self::Zipkin(z) => z.trace_id_128bit,
            Self::OpenTelemetry(_) => true,
        }
    }

    /// The stats prefix of its reporter (`tracing.zipkin`, `tracing.opentelemetry`).
    pub fn stats_prefix(&self) -> &'static str {
        match self {
            Self::Zipkin(_) => "tracing.zipkin",
            Self::OpenTelemetry(_) => "tracing.opentelemetry",
        }
    }
}

/// A validated `envoy.tracers.opentelemetry` provider with a `grpc_service`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OpenTelemetryConfig {
    /// `grpc_service.envoy_grpc.cluster_name`: the OTLP collector's cluster (HTTP/2).
    pub cluster: String,
    /// `grpc_service.envoy_grpc.authority` (default: the cluster name).
    pub authority: String,
    /// `service_name` (Envoy's default `unknown_service:envoy`): the resource's `service.name`.
    pub service_name: String,
}

/// A validated `envoy.tracers.zipkin` provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ZipkinConfig {
    /// `collector_cluster`: spans are sent through this cluster of the proxy's own config.
    pub collector_cluster: String,
    /// `collector_endpoint`, e.g. `/api/v2/spans`.
    pub collector_endpoint: String,
    /// `collector_hostname` (default: the cluster name), the report's `Host`.
    pub collector_hostname: String,
    /// `trace_id_128bit`.
    pub trace_id_128bit: bool,
    /// `shared_span_context` (default true): the server span reuses the client's span id.
    pub shared_span_context: bool,
}

/// A lazily filled sender to the reporter; equal whatever it holds, so an unchanged listener
/// re-sent by xDS still compares equal and drains nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReporterSlot(pub(crate) Arc<OnceLock<mpsc::Sender<Span>>>);

impl PartialEq for ReporterSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

fn percent(
    p: Option<&xds_proto::envoy::r#type::v3::Percent>,
    field: &str,
) -> Result<f64, InvalidTracing> {
    match p {
        None => Ok(100.0),
        Some(p) if (0.0..=100.0).contains(&p.value) => Ok(p.value),
        Some(p) => Err(invalid(field, format!("{} is not a percentage", p.value))),
    }
}

impl TracingConfig {
    /// Validates an HCM `tracing` block.
    pub fn from_proto(
        t: &hcm_pb::http_connection_manager::Tracing,
    ) -> Result<Self, InvalidTracing> {
        if t.verbose {
            return Err(invalid(
                "verbose",
                "span logs are not implemented by ferry-proxy",
            ));
        }
        let client_sampling = percent(t.client_sampling.as_ref(), "client_sampling")?;
        let random_sampling = percent(t.random_sampling.as_ref(), "random_sampling")?;
        let overall_sampling = percent(t.overall_sampling.as_ref(), "overall_sampling")?;
        let max_path_tag_length = t
            .max_path_tag_length
            .map_or(DEFAULT_MAX_PATH_TAG_LENGTH, |v| v.value as usize);
        let custom_tags = t
            .custom_tags
            .iter()
            .enumerate()
            .filter_map(|(i, tag)| custom_tag(tag, &format!("custom_tags[{i}]")).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let provider = match &t.provider {
            Some(p) => Some(Arc::new(provider_config(p)?)),
            None => None,
        };
        Ok(Self {
            client_sampling,
            random_sampling,
            overall_sampling,
            max_path_tag_length,
            custom_tags,
            provider,
            reporter: ReporterSlot::default(),
        })
    }
}

/// Validates the bootstrap's `tracing.http`, the provider of HCMs whose `tracing` names none.
pub fn bootstrap_provider(
    t: &xds_proto::envoy::config::trace::v3::Tracing,
) -> Result<Option<Arc<Provider>>, InvalidTracing> {
    match &t.http {
        Some(http) => provider_config(http).map(|p| Some(Arc::new(p))),
        None => Ok(None),
    }
}

/// `Ok(None)`: a tag with no value on this proxy (a metadata tag without `default_value`).
fn custom_tag(t: &CustomTagProto, field: &str) -> Result<Option<CustomTag>, InvalidTracing> {
    use custom_tag::Type;
    if t.tag.is_empty() {
        return Err(invalid(format!("{field}.tag"), "required"));
    }
    let value = match &t.r#type {
        Some(Type::Literal(l)) => TagValue::Fixed(l.value.clone()),
        Some(Type::Environment(e)) => {
            TagValue::Fixed(std::env::var(&e.name).unwrap_or_else(|_| e.default_value.clone()))
        }
        Some(Type::RequestHeader(h)) => TagValue::RequestHeader {
            name: HeaderName::try_from(h.name.as_str()).map_err(|_| {
                invalid(
                    format!("{field}.request_header.name"),
                    "not a valid header name",
                )
            })?,
            default: h.default_value.clone(),
        },
        // Istio tags RBAC dry-run results from dynamic metadata. ferry-proxy runs no filter
        // that writes dynamic metadata, so the key is always absent and Envoy's rule applies:
        // the default value, or no tag.
        Some(Type::Metadata(m)) if m.default_value.is_empty() => return Ok(None),
        Some(Type::Metadata(m)) => TagValue::Fixed(m.default_value.clone()),
        Some(_) => {
            return Err(invalid(
                field,
                "only literal, environment, request_header and metadata tags are implemented",
            ));
        }
        None => return Err(invalid(field, "a tag type is required")),
    };
    Ok(Some(CustomTag {
        tag: t.tag.clone(),
        value,
    }))
}

fn provider_config(
    provider: &xds_proto::envoy::config::trace::v3::tracing::Http,
) -> Result<Provider, InvalidTracing> {
    use xds_proto::envoy::config::trace::v3::tracing::http::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &provider.config_type else {
        return Err(invalid("provider.typed_config", "required"));
    };
    match any.type_url.as_str() {
        ZIPKIN_TYPE => zipkin(any).map(Provider::Zipkin),
        OPENTELEMETRY_TYPE => opentelemetry(any).map(Provider::OpenTelemetry),
        other => Err(invalid(
            "provider",
            format!(
                "tracer {} ({other}) is not implemented by ferry-proxy; envoy.tracers.zipkin and \
                 envoy.tracers.opentelemetry are",
                provider.name
            ),
        )),
    }
}

fn opentelemetry(
    any: &xds_proto::google::protobuf::Any,
) -> Result<OpenTelemetryConfig, InvalidTracing> {
    use xds_proto::envoy::config::core::v3::grpc_service::TargetSpecifier;
    use xds_proto::envoy::config::trace::v3::OpenTelemetryConfig as Proto;
    let f = |s: &str| format!("provider.typed_config.{s}");
    let o: Proto =
        xds_proto::any::unpack(any).map_err(|e| invalid("provider.typed_config", e.to_string()))?;
    let refuse = |set: bool, name: &str, reason: &str| {
        if set {
            Err(invalid(f(name), reason))
        } else {
            Ok(())
        }
    };
    let not_implemented = "not implemented by ferry-proxy";
    refuse(
        o.http_service.is_some(),
        "http_service",
        "OTLP/HTTP export is not implemented by ferry-proxy; use grpc_service",
    )?;
    refuse(o.exporter.is_some(), "exporter", not_implemented)?;
    refuse(
        !o.resource_detectors.is_empty(),
        "resource_detectors",
        not_implemented,
    )?;
    refuse(o.sampler.is_some(), "sampler", not_implemented)?;
    let Some(grpc) = &o.grpc_service else {
        return Err(invalid(f("grpc_service"), "required"));
    };
    refuse(
        !grpc.initial_metadata.is_empty(),
        "grpc_service.initial_metadata",
        not_implemented,
    )?;
    let Some(TargetSpecifier::EnvoyGrpc(envoy)) = &grpc.target_specifier else {
        return Err(invalid(
            f("grpc_service"),
            "only envoy_grpc (a cluster) is implemented by ferry-proxy",
        ));
    };
    if envoy.cluster_name.is_empty() {
        return Err(invalid(
            f("grpc_service.envoy_grpc.cluster_name"),
            "required",
        ));
    }
    Ok(OpenTelemetryConfig {
        cluster: envoy.cluster_name.clone(),
        authority: if envoy.authority.is_empty() {
            envoy.cluster_name.clone()
        } else {
            envoy.authority.clone()
        },
        service_name: if o.service_name.is_empty() {
            "unknown_service:envoy".to_owned()
        } else {
            o.service_name
        },
    })
}

fn zipkin(any: &xds_proto::google::protobuf::Any) -> Result<ZipkinConfig, InvalidTracing> {
    let f = |s: &str| format!("provider.typed_config.{s}");
    let z: ZipkinProto =
        xds_proto::any::unpack(any).map_err(|e| invalid("provider.typed_config", e.to_string()))?;
    if z.collector_cluster.is_empty() {
        return Err(invalid(f("collector_cluster"), "required"));
    }
    if z.collector_endpoint.is_empty() {
        return Err(invalid(f("collector_endpoint"), "required"));
    }
    // 0 is the deprecated HTTP_JSON_V1 placeholder Envoy also refuses, 1 HTTP_JSON.
    if z.collector_endpoint_version != 1 {
        return Err(invalid(
            f("collector_endpoint_version"),
            "only HTTP_JSON (Zipkin v2 JSON) is implemented by ferry-proxy",
        ));
    }
    if z.trace_context_option != 0 {
        return Err(invalid(
            f("trace_context_option"),
            "only USE_B3 is implemented by ferry-proxy",
        ));
    }
    #[allow(deprecated)]
    if z.split_spans_for_request {
        return Err(invalid(
            f("split_spans_for_request"),
            "not implemented by ferry-proxy",
        ));
    }
    Ok(ZipkinConfig {
        collector_hostname: if z.collector_hostname.is_empty() {
            z.collector_cluster.clone()
        } else {
            z.collector_hostname
        },
        collector_cluster: z.collector_cluster,
        collector_endpoint: z.collector_endpoint,
        trace_id_128bit: z.trace_id_128bit,
        shared_span_context: z.shared_span_context.is_none_or(|b| b.value),
    })
}
