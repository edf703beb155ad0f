//! Trace collectors on loopback for tracing tests: a Zipkin-compatible one ([`ZipkinCollector`]:
//! `POST /api/v2/spans` with a JSON array of v2 spans, answered 202 as Zipkin does; anything else
//! 404) and an OTLP/gRPC receiver ([`OtlpReceiver`]). Both keep what they receive for the test
//! to read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running collector; stops when dropped.
#[derive(Debug)]
pub struct ZipkinCollector {
    /// Where it listens.
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
    reports: Arc<Mutex<usize>>,
    task: JoinHandle<()>,
}

impl Drop for ZipkinCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ZipkinCollector {
    /// Starts a collector on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
        let reports: Arc<Mutex<usize>> = Arc::default();
        let (kept, counted) = (spans.clone(), reports.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (kept, counted) = (kept.clone(), counted.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (kept, counted) = (kept.clone(), counted.clone());
                            async move {
                                let ok = req.method() == http::Method::POST
                                    && req.uri().path() == "/api/v2/spans";
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let parsed = serde_json::from_slice::<Vec<Value>>(&body);
                                let status = match (ok, parsed) {
                                    (true, Ok(batch)) => {
                                        *counted.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                                        kept.lock()
                                            .unwrap_or_else(|p| p.into_inner())
                                            .extend(batch);
                                        StatusCode::ACCEPTED
                                    }
                                    (true, Err(_)) => StatusCode::BAD_REQUEST,
                                    (false, _) => StatusCode::NOT_FOUND,
                                };
                                let mut response = Response::new(Full::new(Bytes::new()));
                                *response.status_mut() = status;
                                Ok::<_, Infallible>(response)
                            }
                        },
                    );
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            spans,
            reports,
            task,
        })
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many reports (POSTs of a span array) were accepted.
    pub fn reports(&self) -> usize {
        *self.reports.lock().unwrap_or_else(|p| p.into_inner())
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
    task: JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    /// Starts a receiver on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<Self> {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let exports: Arc<Mutex<Vec<_>>> = Arc::default();
        let kept = exports.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let kept = kept.clone();
                            async move {
                                let export = req.uri().path()
                                    == "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let decoded = body
                                    .get(5..)
                                    .and_then(|m| ExportTraceServiceRequest::decode(m).ok());
                                let grpc_status = match (export, decoded) {
                                    (true, Some(request)) => {
                                        kept.lock()
                                            .unwrap_or_else(|p| p.into_inner())
                                            .extend(request.resource_spans);
                                        "0"
                                    }
                                    (true, None) => "3",
                                    (false, _) => "12",
                                };
                                let response = Response::builder()
                                    .header("content-type", "application/grpc")
                                    .header("grpc-status", grpc_status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap_or_default();
                                Ok::<_, Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            exports,
            task,
        })
    }

    /// Every `ResourceSpans` received so far.
    pub fn resource_spans(&self) -> Vec<opentelemetry_proto::tonic::trace::v1::ResourceSpans> {
        self.exports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
