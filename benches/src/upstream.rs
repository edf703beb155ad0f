//! The upstream every benchmark path ends at: fixed responses, as cheap as hyper makes them.
//!
//! It runs on its own OS thread and Tokio runtime so that the harness's orchestration never
//! competes with it, and it serves the bodies from memory allocated once (`Bytes` clones are
//! reference counts), so the upstream's cost is the same for every path and as small as possible.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The response bodies the upstream serves, by path.
#[derive(Clone)]
struct Bodies {
    small: Bytes,
    k16: Bytes,
    m1: Bytes,
}

impl Bodies {
    fn new() -> Bodies {
        Bodies {
            small: Bytes::from(vec![b'x'; 128]),
            k16: Bytes::from(vec![b'x'; 16 * 1024]),
            m1: Bytes::from(vec![b'x'; 1024 * 1024]),
        }
    }

    fn for_path(&self, path: &str) -> Option<Bytes> {
        match path {
            "/" | "/small" => Some(self.small.clone()),
            "/16k" => Some(self.k16.clone()),
            "/1m" => Some(self.m1.clone()),
            _ => None,
        }
    }
}

/// A running upstream; it lives as long as the process (benchmarks are short-lived processes).
#[derive(Debug, Clone, Copy)]
pub struct Upstream {
    addr: SocketAddr,
}

impl Upstream {
    /// Starts the upstream on `127.0.0.1:0` with `workers` runtime threads.
    pub fn start(workers: usize) -> std::io::Result<Upstream> {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("bench-upstream")
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("bench-upstream".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(std_listener) {
                        Ok(listener) => serve(listener, Bodies::new()).await,
                        Err(e) => eprintln!("bench upstream: {e}"),
                    }
                });
            })?;
        Ok(Upstream { addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn serve(listener: TcpListener, bodies: Bodies) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let bodies = bodies.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let body = bodies.for_path(request.uri().path());
            async move {
                let response = match body {
                    Some(body) => Response::new(Full::new(body)),
                    None => {
                        let mut response =
                            Response::new(Full::new(Bytes::from_static(b"no such body\n")));
                        *response.status_mut() = StatusCode::NOT_FOUND;
                        response
                    }
                };
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_fixed_bodies() {
        let upstream = Upstream::start(1).unwrap();
        let addr = upstream.addr();
        let reply = ferry_tests::net::get(addr, "bench", "/16k").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.len(), 16 * 1024);
        let reply = ferry_tests::net::get(addr, "bench", "/nope").await.unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
    }
}
