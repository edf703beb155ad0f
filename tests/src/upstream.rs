//! Real upstream servers on 127.0.0.1 ephemeral ports for proxy tests:
//!
//! - [`Upstream::echo`]: HTTP/1.1 and h2c (auto-detected). Answers 200 with a JSON body naming the
//!   instance and echoing method, path, host, version and headers; `x-upstream-instance` names
//!   the instance too. `GET /hang` never answers (for timeouts). A `POST` with
//!   `content-type: application/grpc*` is echoed frame by frame and ends with `grpc-status: 0`
//!   trailers (gRPC unary and streaming without a gRPC stack). An HTTP/1.1 `Upgrade` request is
//!   switched (`101`) and the upgraded bytes echoed back (WebSocket-style pass-through).
//! - [`Upstream::tcp_echo`]: a TCP echo server.
//! - [`Upstream::gated`]: an HTTP server whose answers wait until its [`Gate`] opens, so a test
//!   can hold requests in flight without timing assumptions.
//!
//! - [`chaos::Chaos`]: an upstream that misbehaves on command (status, reset, hang, gRPC status,
//!   response headers, delay), scripted per request, recording every request it saw.
//!
//! Servers stop when the [`Upstream`] is dropped.

pub mod chaos;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use chaos::{Behaviour, Chaos, Seen};

type Body = BoxBody<Bytes, hyper::Error>;

/// A running upstream server.
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its instance name, as reported in answers.
    pub name: String,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts the HTTP echo server named `name`.
    pub async fn echo(name: &str) -> std::io::Result<Self> {
        Self::echo_at(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts the HTTP echo server named `name` on `addr` (e.g. a pod's own loopback address in
    /// a local mesh, where every pod of a service listens on the same port).
    pub async fn echo_at(name: &str, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let instance = name.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let instance = instance.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let instance = instance.clone();
                        async move { Ok::<_, Infallible>(answer(&instance, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            name: name.to_owned(),
            task,
        })
    }

    /// Starts a TCP echo server.
    pub async fn tcp_echo(name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            name: name.to_owned(),
            task,
        })
    }
}

/// Holds a gated upstream's answers until opened; counts requests that arrived.
#[derive(Debug, Clone)]
pub struct Gate {
    open: tokio::sync::watch::Sender<bool>,
    arrived: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Gate {
    /// Lets every held and future request through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Holds requests again (those already released stay released).
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    /// How many requests reached the upstream.
    pub fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Upstream {
    /// Starts an HTTP server that answers 200 `released` only once the returned gate opens.
    pub async fn gated(name: &str) -> std::io::Result<(Self, Gate)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let gate = Gate {
            open: tokio::sync::watch::Sender::new(false),
            arrived: Default::default(),
        };
        let server_gate = gate.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let gate = server_gate.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let gate = gate.clone();
                        async move {
                            gate.arrived
                                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let _ = gate.open.subscribe().wait_for(|open| *open).await;
                            Ok::<_, Infallible>(Response::new(full("released")))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok((
            Self {
                addr,
                name: name.to_owned(),
                task,
            },
            gate,
        ))
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn answer(instance: &str, mut req: Request<Incoming>) -> Response<Body> {
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc {
        return grpc_echo(instance, req);
    }
    if req.headers().contains_key(header::UPGRADE) {
        return upgrade_echo(instance, &mut req);
    }
    if req.uri().path() == "/hang" {
        std::future::pending::<()>().await;
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let body = serde_json::json!({
        "instance": instance,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "host": host,
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    let mut response = Response::new(full(body.to_string()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(instance) {
        headers.insert("x-upstream-instance", v);
    }
    response
}

/// Echoes each request data frame back as it arrives, then `grpc-status: 0` trailers.
fn grpc_echo(instance: &str, req: Request<Incoming>) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(16);
    let mut body = req.into_body();
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data()
                        && tx.send(Ok(Frame::data(data))).await.is_err()
                    {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("ok"));
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if let Ok(v) = HeaderValue::from_str(instance) {
        response.headers_mut().insert("x-upstream-instance", v);
    }
    response
}

/// Switches protocols and echoes the upgraded connection's bytes.
fn upgrade_echo(instance: &str, req: &mut Request<Incoming>) -> Response<Body> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("websocket"));
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(header::UPGRADE, upgrade);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(instance) {
        response.headers_mut().insert("x-upstream-instance", v);
    }
    response
}
