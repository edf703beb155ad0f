//! OpenTelemetry's wire format: a batch of spans becomes one OTLP `ExportTraceServiceRequest`
//! (the `opentelemetry-proto` crate's prost types), sent as a unary gRPC call to
//! `/opentelemetry.proto.collector.trace.v1.TraceService/Export` through the `envoy_grpc`
//! cluster (sent by [`super::reporter`]; the collector cluster must speak HTTP/2, as Envoy
//! requires of gRPC clusters). The resource carries `service.name` (the config's
//! `service_name`); span tags become string attributes, and a 5xx sets the span status to
//! error.

use bytes::{BufMut, BytesMut};
use http::{HeaderValue, Request, header};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{self as otlp, ResourceSpans, ScopeSpans};
use prost::Message;

use super::LocalNode;
use super::config::OpenTelemetryConfig;
use super::span::{Kind, Span};

/// The gRPC method of an OTLP trace export.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn trace_id_bytes(span: &Span) -> Vec<u8> {
    let mut id = span.trace_id.high.to_be_bytes().to_vec();
    id.extend_from_slice(&span.trace_id.low.to_be_bytes());
    id
}

/// One span in OTLP.
pub fn to_otlp(span: &Span) -> otlp::Span {
    let start = span.timestamp_us.saturating_mul(1000);
    let error = span.tags.iter().any(|(k, v)| k == "error" && v == "true");
    otlp::Span {
        trace_id: trace_id_bytes(span),
        span_id: span.id.to_be_bytes().to_vec(),
        parent_span_id: span
            .parent_id
            .map(|p| p.to_be_bytes().to_vec())
            .unwrap_or_default(),
        name: span.name.clone(),
        kind: match span.kind {
            Kind::Server => otlp::span::SpanKind::Server as i32,
            Kind::Client => otlp::span::SpanKind::Client as i32,
        },
        start_time_unix_nano: start,
        end_time_unix_nano: start.saturating_add(span.duration_us.saturating_mul(1000)),
        attributes: span.tags.iter().map(|(k, v)| string(k, v)).collect(),
        status: error.then(|| otlp::Status {
            code: otlp::status::StatusCode::Error as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The export request for `spans`: a gRPC-framed `ExportTraceServiceRequest` over HTTP/2.
pub fn export_request(
    config: &OpenTelemetryConfig,
    node: &LocalNode,
    spans: &[Span],
) -> Request<crate::body::Body> {
    let mut attributes = vec![string("service.name", &config.service_name)];
    if !node.id.is_empty() {
        attributes.push(string("node_id", &node.id));
    }
    let export = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: spans.iter().map(to_otlp).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let message = export.encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    framed.put_slice(&message);
    let mut request = Request::new(crate::body::full(framed.freeze()));
    *request.method_mut() = http::Method::POST;
    *request.version_mut() = http::Version::HTTP_2;
    if let Ok(uri) = http::Uri::try_from(format!("http://{}{EXPORT_PATH}", config.authority)) {
        *request.uri_mut() = uri;
    }
    let headers = request.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracers::context::TraceId;
    use crate::tracers::span::Endpoint;

    /// A server span with a parent and one tag.
    fn server_span() -> Span {
        Span {
            trace_id: TraceId { high: 1, low: 2 },
            id: 3,
            parent_id: Some(4),
            name: "op".into(),
            kind: Kind::Server,
            timestamp_us: 10,
            duration_us: 5,
            shared: false,
            local: Endpoint {
                service_name: "svc".into(),
                ip: "127.0.0.1".parse().unwrap(),
                port: 1,
            },
            tags: vec![("error".into(), "true".into())],
        }
    }

    #[test]
    fn spans_become_an_otlp_export() {
        let config = OpenTelemetryConfig {
            cluster: "otel".into(),
            authority: "otel-collector".into(),
            service_name: "reviews.default".into(),
        };
        let request = export_request(&config, &LocalNode::default(), &[server_span()]);
        assert_eq!(request.uri().path(), EXPORT_PATH);
        assert_eq!(
            request.uri().authority().unwrap().as_str(),
            "otel-collector"
        );
        let otlp = to_otlp(&server_span());
        assert_eq!(
            otlp.trace_id,
            [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]
        );
        assert_eq!(otlp.parent_span_id, 4u64.to_be_bytes());
        assert_eq!(otlp.end_time_unix_nano - otlp.start_time_unix_nano, 5000);
        assert_eq!(otlp.kind, otlp::span::SpanKind::Server as i32);
        assert_eq!(
            otlp.status.unwrap().code,
            otlp::status::StatusCode::Error as i32
        );
    }
}
