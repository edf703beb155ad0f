//! Zipkin's wire format: a report is a POST of a JSON array of v2 spans to
//! `collector_endpoint`, with `collector_hostname` as its `Host` (sent by
//! [`super::reporter`]).

use http::{HeaderValue, Request, header};

use super::config::ZipkinConfig;
use super::span::Span;

/// The report request: a JSON array of v2 spans.
pub fn report_request(config: &ZipkinConfig, spans: &[Span]) -> Request<crate::body::Body> {
    let json = serde_json::Value::Array(spans.iter().map(Span::to_zipkin_json).collect());
    let body = serde_json::to_vec(&json).unwrap_or_default();
    let mut request = Request::new(crate::body::full(bytes::Bytes::from(body)));
    *request.method_mut() = http::Method::POST;
    let uri = format!(
        "http://{}{}",
        config.collector_hostname, config.collector_endpoint
    );
    if let Ok(uri) = http::Uri::try_from(uri) {
        *request.uri_mut() = uri;
    }
    let headers = request.headers_mut();
    if let Ok(host) = HeaderValue::from_str(&config.collector_hostname) {
        headers.insert(header::HOST, host);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    request
}
