//! Trace collectors on loopback for tracing tests: a Zipkin-compatible one ([`ZipkinCollector`]:
//! `POST /api/v2/spans` with a JSON array of v2 spans, answered 202 as Zipkin does; anything else
//! 404) and an OTLP/gRPC receiver ([`OtlpReceiver`]). Both keep what they receive for the test
//! to read, and share one small server ([`serve`]) that hands each request's whole body to them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A loopback server task, stopped when dropped.
#[derive(Debug)]
struct Server(JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves HTTP/1.1 and h2c on an ephemeral loopback port: each request's body is read whole and
/// `answer(method, path, body)` makes the response.
async fn serve<F>(answer: F) -> std::io::Result<(SocketAddr, Server)>
where
    F: Fn(&Method, &str, Bytes) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let answer = Arc::new(answer);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let answer = answer.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, Infallible>(answer(&parts.method, parts.uri.path(), body))
                        }
                    });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, Server(task)))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running collector; stops when dropped.
#[derive(Debug)]
pub struct ZipkinCollector {
    /// Where it listens.
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
    reports: Arc<Mutex<usize>>,
    _server: Server,
}

impl ZipkinCollector {
    /// Starts a collector on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
        let reports: Arc<Mutex<usize>> = Arc::default();
        let (kept, counted) = (spans.clone(), reports.clone());
        let (addr, server) = serve(move |method, path, body| {
            let ok = method == Method::POST && path == "/api/v2/spans";
            let status = match (ok, serde_json::from_slice::<Vec<Value>>(&body)) {
                (true, Ok(batch)) => {
                    *lock(&counted) += 1;
                    lock(&kept).extend(batch);
                    StatusCode::ACCEPTED
                }
                (true, Err(_)) => StatusCode::BAD_REQUEST,
                (false, _) => StatusCode::NOT_FOUND,
            };
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = status;
            response
        })
        .await?;
        Ok(Self {
            addr,
            spans,
            reports,
            _server: server,
        })
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Value> {
        lock(&self.spans).clone()
    }

    /// How many reports (POSTs of a span array) were accepted.
    pub fn reports(&self) -> usize {
        *lock(&self.reports)
    }
}

/// An OTLP/gRPC trace receiver on loopback (HTTP/2 prior knowledge): accepts
/// `TraceService/Export` calls, keeps every `ResourceSpans`, and answers an empty
/// `ExportTraceServiceResponse` with `grpc-status: 0` in a trailers-only response.
#[derive(Debug)]
pub struct OtlpReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    exports: Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::ResourceSpans>>>,
    _server: Server,
}

impl OtlpReceiver {
    /// Starts a receiver on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<Self> {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let exports: Arc<Mutex<Vec<_>>> = Arc::default();
        let kept = exports.clone();
        let (addr, server) = serve(move |_, path, body| {
            let export = path == "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
            // The gRPC message after its 5-byte prefix (uncompressed).
            let decoded = body
                .get(5..)
                .and_then(|m| ExportTraceServiceRequest::decode(m).ok());
            let grpc_status = match (export, decoded) {
                (true, Some(request)) => {
                    lock(&kept).extend(request.resource_spans);
                    "0"
                }
                (true, None) => "3",
                (false, _) => "12",
            };
            Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", grpc_status)
                .body(Full::new(Bytes::new()))
                .unwrap_or_default()
        })
        .await?;
        Ok(Self {
            addr,
            exports,
            _server: server,
        })
    }

    /// Every `ResourceSpans` received so far.
    pub fn resource_spans(&self) -> Vec<opentelemetry_proto::tonic::trace::v1::ResourceSpans> {
        lock(&self.exports).clone()
    }
}
