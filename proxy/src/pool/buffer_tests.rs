//! The upstream HTTP/1.1 codec's read buffer is bounded: a large response body reaches the router
//! in chunks no larger than twice [`crate::body::MAX_READ_BUFFER`] (a read fills the buffer's
//! spare capacity, which `BytesMut` may have doubled), not in the 400 KiB and larger slices
//! hyper's adaptive buffer grows to by default, which a sidecar would hold per connection twice
//! over (one chunk being written downstream while the next is read).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::body::MAX_READ_BUFFER;
use crate::cluster::ClusterStats;
use crate::stats::Store;

const BODY: usize = 4 * 1024 * 1024;

/// An HTTP/1.1 upstream answering every request with `BODY` bytes at once (one write of the whole
/// body, so the proxy's socket has far more to read than any buffer holds).
async fn large_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Bytes::from((0..BODY).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn large_response_bodies_arrive_in_bounded_chunks() {
    let addr = large_upstream().await;
    let stats = PoolStats {
        cluster: ClusterStats::new(&Store::default(), "test"),
        host: Arc::default(),
    };
    let pool = http1::Http1Pool::new(addr, Arc::new(PoolSettings::default()), stats);
    let request = http::Request::get("http://upstream/large")
        .body(crate::body::empty())
        .unwrap();
    let response = pool.send(request, None).await.expect("response");
    let mut body = response.into_body();
    let (mut received, mut chunks, mut largest) = (Vec::with_capacity(BODY), 0, 0);
    while let Some(frame) = body.frame().await {
        let data = frame.expect("frame").into_data().expect("data frame");
        largest = largest.max(data.len());
        chunks += 1;
        received.extend_from_slice(&data);
    }
    assert_eq!(received.len(), BODY);
    assert!(
        received
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8)
    );
    assert!(
        largest <= 2 * MAX_READ_BUFFER,
        "a {largest}-byte chunk in {chunks} chunks: the read buffer is not bounded"
    );
}
