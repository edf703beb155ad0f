//! One downstream connection: hyper's HTTP/1.1 and HTTP/2 codecs built from the HCM's protocol
//! options, the per-request service that calls [`super::handle`], and the loop that ends the
//! connection: graceful shutdown, listener drain, `max_connection_duration`,
//! `max_requests_per_connection` and `idle_timeout`. Kept apart from request handling because it
//! runs once per connection, not per request.

use std::convert::Infallible;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{
    Codec, ConnectionDrain, Downstream, DrainSignals, HcmSelector, HcmStats, drain, handle,
    idle_timeout, protocol_options, request_limit,
};
use crate::snapshot::ConfigStore;

/// Envoy's default `max_request_headers_kb`, for connections whose HCM is picked per request.
const DEFAULT_MAX_REQUEST_HEADERS: usize = 60 * 1024;

/// Serves one downstream connection until it closes. `drain` asks it to finish: on shutdown
/// at once (in-flight requests finish), when its listener is updated or removed the way Envoy
/// drains a listener (see [`drain`]).
pub async fn serve(
    stream: TcpStream,
    downstream: Downstream,
    selector: HcmSelector,
    store: Arc<ConfigStore>,
    drain: DrainSignals,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Bounded like Envoy's 16 KiB read slices under a watermark: bodies stream through in
    // chunks of at most this, never in hyper's adaptive 400 KiB slices (see the constant).
    // The buffer must also hold a whole request header block: Envoy's default limit (60 KiB)
    // fits, a larger `max_request_headers_kb` grows it.
    let max_headers = match &selector {
        HcmSelector::Fixed(hcm) => hcm.max_request_headers,
        HcmSelector::ByAuthorityPort => DEFAULT_MAX_REQUEST_HEADERS,
    };
    let protocol = match &selector {
        HcmSelector::Fixed(hcm) => hcm.protocol.clone(),
        HcmSelector::ByAuthorityPort => protocol_options::DownstreamProtocolOptions::default(),
    };
    builder
        .http1()
        .max_buf_size(crate::body::MAX_READ_BUFFER.max(max_headers + 1024))
        .max_headers(protocol.max_headers_count)
        .title_case_headers(protocol.title_case_headers);
    builder
        .http2()
        .max_header_list_size(max_headers as u32)
        .max_concurrent_streams(protocol.http2.max_concurrent_streams)
        .initial_stream_window_size(protocol.http2.initial_stream_window_size)
        .initial_connection_window_size(protocol.http2.initial_connection_window_size);
    if let HcmSelector::Fixed(hcm) = &selector {
        builder = match hcm.codec {
            Codec::Auto => builder,
            Codec::Http1 => builder.http1_only(),
            Codec::Http2 => builder.http2_only(),
        };
    }
    let drain_timeout = match &selector {
        HcmSelector::Fixed(hcm) => hcm.drain_timeout,
        HcmSelector::ByAuthorityPort => drain::DRAIN_TIMEOUT,
    };
    let stats = match &selector {
        HcmSelector::Fixed(hcm) => Some(Arc::new(HcmStats::new(&downstream.stats, hcm))),
        HcmSelector::ByAuthorityPort => None,
    };
    let downstream = Arc::new(downstream);
    let connection = Arc::new(ConnectionDrain::default());
    let service_connection = connection.clone();
    let streams = Arc::new(idle_timeout::ActiveStreams::default());
    let service_streams = protocol.idle_timeout.is_some().then(|| streams.clone());
    let limit = protocol
        .max_requests_per_connection
        .map(|max| Arc::new(request_limit::RequestLimit::new(max)));
    let service_limit = limit.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (downstream, selector, store) = (downstream.clone(), selector.clone(), store.clone());
        let (stats, connection) = (stats.clone(), service_connection.clone());
        let active = service_streams
            .as_ref()
            .map(idle_timeout::ActiveStreams::begin);
        let last = service_limit.as_ref().is_some_and(|limit| limit.count());
        // Boxed: the whole request's state machine (routing, router, pool) is several KiB, and
        // hyper moves the service future by value (into a spawned task per HTTP/2 stream, into
        // the dispatcher per HTTP/1.1 request); copying it showed up as the top memcpy in
        // profiles. A box makes every such move a pointer copy.
        Box::pin(async move {
            let version = req.version();
            connection.saw(version);
            if last {
                tracing::debug!("max_requests_per_connection reached: draining");
                connection.start_draining();
            }
            let mut response = handle(req, &downstream, &selector, &store, stats.as_deref()).await;
            connection.finish_response(version, &mut response);
            if let Some(active) = active {
                // The request stays active until its response body ends.
                response = response.map(|body| {
                    crate::body::boxed(crate::body::OnEnd::new(body, move |_| drop(active)))
                });
            }
            Ok::<_, Infallible>(response)
        })
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let DrainSignals {
        mut shutdown,
        mut retired,
    } = drain;
    // `closing`: graceful shutdown asked of hyper; `retiring`: the listener changed.
    let mut closing = false;
    let mut retiring = false;
    let idle_deadline = tokio::time::sleep(std::time::Duration::MAX / 4);
    tokio::pin!(idle_deadline);
    // `max_connection_duration` retires the connection the way a listener update does.
    let max_duration = tokio::time::sleep(
        protocol
            .max_connection_duration
            .unwrap_or(std::time::Duration::MAX / 4),
    );
    tokio::pin!(max_duration);
    let mut expired = false;
    loop {
        if !closing && *shutdown.borrow() {
            closing = true;
            conn.as_mut().graceful_shutdown();
        }
        if !retiring && !closing && (expired || *retired.borrow()) {
            retiring = true;
            connection.start_draining();
            if connection.is_http2() {
                tracing::debug!("listener changed: GOAWAY");
                closing = true;
                conn.as_mut().graceful_shutdown();
            } else {
                tracing::debug!("listener changed: closing after the next response");
                idle_deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + drain_timeout);
            }
        }
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "downstream connection error");
                }
                return;
            }
            changed = shutdown.changed(), if !closing => {
                if changed.is_err() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            changed = retired.changed(), if !retiring && !closing => {
                if changed.is_err() {
                    // The listener's generation is gone: treat it as retired.
                    retired = watch::channel(true).1;
                }
            }
            () = &mut idle_deadline, if retiring && !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = async { if let Some(limit) = &limit { limit.reached().await } }, if !expired && limit.is_some() => {
                expired = true;
            }
            () = &mut max_duration, if !expired && protocol.max_connection_duration.is_some() => {
                tracing::debug!("max_connection_duration reached: draining");
                expired = true;
            }
            () = streams.idle_for(protocol.idle_timeout.unwrap_or_default()), if protocol.idle_timeout.is_some() && !closing => {
                tracing::debug!("idle_timeout reached: closing");
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = connection.http2_seen_while_draining(), if retiring && !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
