//! A "chaos" upstream: an HTTP/1.1 + h2c server that misbehaves on command, for retry, timeout,
//! outlier and circuit-breaker scenarios.
//!
//! Each request is answered by the next scripted [`Behaviour`] (see [`Chaos::script`]), or by the
//! steady behaviour once the script is used up (see [`Chaos::set`]). Every request that reaches
//! the server is recorded (method, path, headers, whole body) *before* it is answered, so a test
//! can assert how many attempts each upstream saw and what they carried
//! (`x-envoy-attempt-count`, a replayed body). A refusing upstream needs no server: use
//! [`crate::net::ClosedPort`].
//!
//! Successful answers are `200` with body `instance` and header `x-upstream-instance: instance`,
//! so the client sees which endpoint served the request.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, hyper::Error>;

/// How the chaos upstream answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// `200`, body and `x-upstream-instance` = the instance name.
    Ok,
    /// This status (body = the instance name, `x-upstream-instance` set).
    Status(u16),
    /// This status plus these response headers (for `retriable-headers`).
    Respond {
        /// The status.
        status: u16,
        /// Extra response headers (name, value).
        headers: Vec<(String, String)>,
    },
    /// A gRPC trailers-only response: `200`, `content-type: application/grpc`, and
    /// `grpc-status` (plus `grpc-message`) in the headers, empty body.
    GrpcStatus(u32),
    /// Reads the request, then drops the connection without answering (HTTP/1.1: close; h2:
    /// `RST_STREAM`): the proxy sees a reset before the response.
    Reset,
    /// Reads the request and never answers (until the upstream is dropped).
    Hang,
    /// Answers `200` after this delay (tokio time, so it follows a paused clock in-process).
    Delay(Duration),
}

/// One request as the chaos upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// The request headers.
    pub headers: HeaderMap,
    /// The whole request body.
    pub body: Bytes,
    /// When the request head arrived (tokio time: follows a paused clock in-process).
    pub at: tokio::time::Instant,
}

impl Seen {
    /// One header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Debug)]
struct State {
    steady: Behaviour,
    script: VecDeque<Behaviour>,
    seen: Vec<Seen>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    state: Mutex<State>,
    hits: tokio::sync::watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running chaos upstream; stops when dropped.
#[derive(Debug)]
pub struct Chaos {
    /// Where it listens (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Chaos {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Chaos {
    /// Starts a chaos upstream named `name` answering every request with `steady`.
    pub async fn start(name: &str, steady: Behaviour) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            state: Mutex::new(State {
                steady,
                script: VecDeque::new(),
                seen: Vec::new(),
            }),
            hits: tokio::sync::watch::Sender::new(0),
        });
        let server = shared.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = server.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { answer(&shared, req).await }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// The instance name it answers with.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Changes the steady behaviour (used once the script is empty).
    pub fn set(&self, steady: Behaviour) {
        self.shared.lock().steady = steady;
    }

    /// Queues behaviours for the next requests, in order, before the steady one resumes.
    pub fn script(&self, next: impl IntoIterator<Item = Behaviour>) {
        self.shared.lock().script.extend(next);
    }

    /// The next `n` requests get `status`, then the steady behaviour resumes ("fail N times then
    /// succeed" when steady is [`Behaviour::Ok`]).
    pub fn fail_times(&self, n: usize, status: u16) {
        self.script(std::iter::repeat_n(Behaviour::Status(status), n));
    }

    /// How many requests reached it so far.
    pub fn hits(&self) -> usize {
        *self.shared.hits.borrow()
    }

    /// Every request it received, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().seen.clone()
    }

    /// Waits until at least `n` requests arrived (no deadline: wrap it in the test's own).
    pub async fn wait_hits(&self, n: usize) {
        let mut rx = self.shared.hits.subscribe();
        let _ = rx.wait_for(|hits| *hits >= n).await;
    }

    /// Forgets the recorded requests and the hit count (the behaviour is unchanged).
    pub fn reset_counts(&self) {
        self.shared.lock().seen.clear();
        self.shared.hits.send_replace(0);
    }
}

/// The error a `Reset` answer gives hyper, which then drops the connection or stream.
#[derive(Debug, thiserror::Error)]
#[error("chaos upstream reset")]
struct ResetByChaos;

async fn answer(shared: &Shared, req: Request<Incoming>) -> Result<Response<Body>, ResetByChaos> {
    let (parts, body) = req.into_parts();
    let at = tokio::time::Instant::now();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let behaviour = {
        let mut state = shared.lock();
        state.seen.push(Seen {
            method: parts.method.clone(),
            path: parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            headers: parts.headers.clone(),
            body,
            at,
        });
        let steady = state.steady.clone();
        state.script.pop_front().unwrap_or(steady)
    };
    shared.hits.send_modify(|n| *n += 1);
    let status = match behaviour {
        Behaviour::Ok => 200,
        Behaviour::Status(s) => s,
        Behaviour::Respond { status, headers } => {
            let mut response = reply(&shared.name, status);
            for (name, value) in headers {
                if let (Ok(n), Ok(v)) = (
                    header::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    response.headers_mut().append(n, v);
                }
            }
            return Ok(response);
        }
        Behaviour::GrpcStatus(code) => {
            let mut response = Response::new(full(Bytes::new()));
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(code));
            h.insert("grpc-message", HeaderValue::from_static("chaos"));
            if let Ok(v) = HeaderValue::from_str(&shared.name) {
                h.insert("x-upstream-instance", v);
            }
            return Ok(response);
        }
        Behaviour::Reset => return Err(ResetByChaos),
        Behaviour::Hang => std::future::pending().await,
        Behaviour::Delay(d) => {
            tokio::time::sleep(d).await;
            200
        }
    };
    Ok(reply(&shared.name, status))
}

fn reply(instance: &str, status: u16) -> Response<Body> {
    let mut response = Response::new(full(instance.to_owned()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if let Ok(v) = HeaderValue::from_str(instance) {
        response.headers_mut().insert("x-upstream-instance", v);
    }
    response
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net;

    #[tokio::test]
    async fn scripts_then_steady_and_records_requests() {
        let chaos = Chaos::start("c", Behaviour::Ok).await.unwrap();
        chaos.fail_times(2, 503);
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let reply = net::get(chaos.addr, "svc", "/x").await.unwrap();
            statuses.push(reply.status.as_u16());
        }
        assert_eq!(statuses, [503, 503, 200]);
        assert_eq!(chaos.hits(), 3);
        assert_eq!(chaos.seen()[2].path, "/x");
        chaos.set(Behaviour::GrpcStatus(14));
        let reply = net::get(chaos.addr, "svc", "/").await.unwrap();
        assert_eq!(reply.header("grpc-status"), Some("14"));
        chaos.set(Behaviour::Reset);
        assert!(net::get(chaos.addr, "svc", "/").await.is_err());
        assert_eq!(chaos.hits(), 5);
    }
}
