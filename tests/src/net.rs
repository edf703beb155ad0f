//! Loopback networking for tests: free ports and a small HTTP client.
//!
//! The client opens one fresh connection per request on purpose: tests compare what a proxy does
//! with one request, and a pooled connection would hide connection-level behaviour (and make one
//! test's leftovers another test's input). It speaks HTTP/1.1 (origin-form with a `Host` header,
//! or absolute-form for explicit-proxy requests) and HTTP/2 prior knowledge (h2c), and returns the
//! whole response, trailers included.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// A client-side failure: the proxy under test refused, reset or mangled the exchange.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be made.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Where the client tried to connect.
        addr: SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The HTTP exchange failed (handshake, send, or reading the response).
    #[error("http exchange with {addr}: {source}")]
    Http {
        /// The peer.
        addr: SocketAddr,
        /// hyper's error.
        source: hyper::Error,
    },
    /// The request could not be built from the given parts.
    #[error("bad request: {0}")]
    Build(#[from] http::Error),
}

/// How the client speaks to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, origin-form request target and a `Host` header.
    Http1,
    /// HTTP/1.1 with an absolute-form request target, as a client talks to an explicit proxy.
    Http1Proxy,
    /// HTTP/2 with prior knowledge (h2c), `:authority` from the request.
    Http2,
}

/// A complete response as the client saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Trailers, when the peer sent any.
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// One header's value as text, if present and valid.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
///
/// Racy by nature (another process may take it before the caller binds it); prefer binding port 0
/// and asking the server which port it got. Use this only for processes that cannot report it.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 must work on any test machine")
}

/// A loopback port that refuses connections for as long as this value lives.
///
/// The socket is bound but never listens, so the port cannot be taken by anyone else and every
/// connection attempt is answered with a reset (`ECONNREFUSED`): a deterministic dead upstream.
#[derive(Debug)]
pub struct ClosedPort {
    _socket: socket2::Socket,
    port: u16,
}

impl ClosedPort {
    /// Binds a fresh port on 127.0.0.1 without listening on it.
    pub fn bind() -> std::io::Result<ClosedPort> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&loopback(0).into())?;
        let port = socket.local_addr()?.as_socket().map_or(0, |a| a.port());
        Ok(ClosedPort {
            _socket: socket,
            port,
        })
    }

    /// The refusing port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// `GET http://{authority}{path}` sent to `addr` over HTTP/1.1.
pub async fn get(addr: SocketAddr, authority: &str, path: &str) -> Result<Reply, ClientError> {
    let request = Request::get(format!("http://{authority}{path}")).body(Bytes::new())?;
    send(addr, Protocol::Http1, request).await
}

/// Builds a request for `send` from its parts: method, `authority`, `path` (with query) and
/// headers.
pub fn request(
    method: Method,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Request<Bytes>, ClientError> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{authority}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    Ok(builder.body(Bytes::new())?)
}

/// Sends `request` (whose URI is absolute: `http://authority/path`) to `addr` over a new
/// connection speaking `protocol`, and reads the whole response.
pub async fn send(
    addr: SocketAddr,
    protocol: Protocol,
    request: Request<Bytes>,
) -> Result<Reply, ClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    let http = |source| ClientError::Http { addr, source };
    let response = match protocol {
        Protocol::Http1 | Protocol::Http1Proxy => {
            let request = to_http1(request, protocol == Protocol::Http1Proxy)?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(http)?;
            tokio::spawn(conn);
            sender.send_request(request).await.map_err(http)?
        }
        Protocol::Http2 => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(http)?;
            tokio::spawn(conn);
            sender
                .send_request(request.map(Full::new))
                .await
                .map_err(http)?
        }
    };
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(http)?;
    let trailers = collected.trailers().cloned();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// HTTP/1.1 wants the authority in `Host`; an origin-form target unless talking to a proxy.
fn to_http1(
    request: Request<Bytes>,
    absolute_form: bool,
) -> Result<Request<Full<Bytes>>, ClientError> {
    let (mut parts, body) = request.into_parts();
    if let Some(authority) = parts.uri.authority()
        && !parts.headers.contains_key(HOST)
    {
        let host = HeaderValue::from_str(authority.as_str()).map_err(http::Error::from)?;
        parts.headers.insert(HOST, host);
    }
    if !absolute_form {
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        parts.uri = Uri::try_from(target).map_err(http::Error::from)?;
    }
    Ok(Request::from_parts(parts, Full::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_requests_carry_the_authority_in_host_and_an_origin_form_target() {
        let request = request(Method::GET, "reviews:9080", "/a?b=c", &[]).unwrap();
        let http1 = to_http1(request, false).unwrap();
        assert_eq!(http1.uri(), "/a?b=c");
        assert_eq!(http1.headers()[HOST], "reviews:9080");
    }

    #[test]
    fn explicit_proxy_requests_keep_the_absolute_form() {
        let request = request(Method::GET, "reviews:9080", "/", &[("host", "other")]).unwrap();
        let http1 = to_http1(request, true).unwrap();
        assert_eq!(http1.uri(), "http://reviews:9080/");
        assert_eq!(
            http1.headers()[HOST],
            "other",
            "an explicit Host header wins"
        );
    }

    #[tokio::test]
    async fn a_closed_port_refuses_connections() {
        let closed = ClosedPort::bind().unwrap();
        let err = TcpStream::connect(loopback(closed.port()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn free_ports_are_non_zero() {
        assert_ne!(free_port(), 0);
    }
}
