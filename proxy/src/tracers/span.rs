//! A finished span as the reporter sends it: ids, kind, timing, the local endpoint and tags.
//! Built by [`super::ActiveSpan::finish`] off the response path's critical section and handed
//! to the reporter's queue.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use super::context::{TraceId, span_id_hex};

/// Zipkin's span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The inbound side (ingress): the proxy received the request for its workload.
    Server,
    /// The outbound side (egress): the proxy sends its workload's request on.
    Client,
}

/// Who reports the span: Envoy's `local_endpoint` (the node's cluster, Istio's
/// `app.namespace`, and the listener's address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `serviceName`.
    pub service_name: Arc<str>,
    /// The address.
    pub ip: IpAddr,
    /// The port.
    pub port: u16,
}

/// A finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub id: u64,
    /// The parent span, absent at the root.
    pub parent_id: Option<u64>,
    /// The operation name.
    pub name: String,
    /// Client or server.
    pub kind: Kind,
    /// Start, in microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// Duration in microseconds (at least 1, as Zipkin requires).
    pub duration_us: u64,
    /// Whether the span id is shared with the caller's client span.
    pub shared: bool,
    /// The reporter.
    pub local: Endpoint,
    /// Tags in insertion order.
    pub tags: Vec<(String, String)>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinSpan<'a> {
    trace_id: String,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<String>,
    name: &'a str,
    kind: &'static str,
    timestamp: u64,
    duration: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    shared: bool,
    local_endpoint: Value,
    tags: Map<String, Value>,
}

impl Span {
    /// The span in Zipkin's v2 JSON model.
    pub fn to_zipkin_json(&self) -> Value {
        let mut endpoint = Map::new();
        endpoint.insert(
            "serviceName".into(),
            self.local.service_name.as_ref().into(),
        );
        let ip_key = if self.local.ip.is_ipv4() {
            "ipv4"
        } else {
            "ipv6"
        };
        endpoint.insert(ip_key.into(), self.local.ip.to_string().into());
        endpoint.insert("port".into(), self.local.port.into());
        let span = ZipkinSpan {
            trace_id: self.trace_id.to_hex(),
            id: span_id_hex(self.id),
            parent_id: self.parent_id.map(span_id_hex),
            name: &self.name,
            kind: match self.kind {
                Kind::Server => "SERVER",
                Kind::Client => "CLIENT",
            },
            timestamp: self.timestamp_us,
            duration: self.duration_us.max(1),
            shared: self.shared,
            local_endpoint: Value::Object(endpoint),
            tags: self
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        };
        serde_json::to_value(span).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipkin_v2_json_has_the_collector_fields() {
        let span = Span {
            trace_id: TraceId {
                high: 0,
                low: 0x1234,
            },
            id: 0xabcd,
            parent_id: Some(0x1),
            name: "reviews.default.svc.cluster.local:9080/*".into(),
            kind: Kind::Client,
            timestamp_us: 1_700_000_000_000_000,
            duration_us: 0,
            shared: false,
            local: Endpoint {
                service_name: "productpage.default".into(),
                ip: "10.0.0.1".parse().unwrap(),
                port: 15001,
            },
            tags: vec![("component".into(), "proxy".into())],
        };
        let json = span.to_zipkin_json();
        assert_eq!(json["traceId"], "0000000000001234");
        assert_eq!(json["id"], "000000000000abcd");
        assert_eq!(json["parentId"], "0000000000000001");
        assert_eq!(json["kind"], "CLIENT");
        assert_eq!(json["duration"], 1);
        assert_eq!(json["localEndpoint"]["serviceName"], "productpage.default");
        assert_eq!(json["localEndpoint"]["ipv4"], "10.0.0.1");
        assert_eq!(json["tags"]["component"], "proxy");
        assert!(json.get("shared").is_none());
    }
}
