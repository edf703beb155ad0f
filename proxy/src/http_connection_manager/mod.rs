//! The HTTP connection manager: serves one downstream connection with hyper (HTTP/1.1 or h2c
//! prior knowledge, upgrades enabled), and for each request loads the snapshot once, applies the
//! sidecar's header handling (`x-envoy-*` stripping, `x-forwarded-*`, `x-request-id`, XFCC),
//! picks a route and either answers locally (no route, redirect, direct response) or hands the
//! request to the [`crate::router`]. How a connection drains lives in [`drain`].

pub mod config;
pub mod drain;
pub mod idle_timeout;
mod local_reply;
pub mod path;
pub mod protocol_options;
pub mod request_limit;
mod unsupported;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

use crate::body::Body;
use crate::error::ResponseFlag;
use crate::route::{Action, RequestHead, RouteTable};
use crate::snapshot::{ConfigStore, Snapshot};
use crate::stats::{Counter, Store};

pub use config::{Codec, HttpConnectionManagerConfig, RouteSource, ServerHeader};
pub use drain::{ConnectionDrain, DrainSignals};
pub use local_reply::local_reply;

// Names, not strings: a lookup by `&str` parses the name again on every request.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// What the HCM knows about the downstream connection.
#[derive(Debug, Clone)]
pub struct Downstream {
    /// The client.
    pub peer: SocketAddr,
    /// The local socket address.
    pub local: SocketAddr,
    /// The original destination of a redirected connection.
    pub original_dst: Option<SocketAddr>,
    /// The listener that accepted it.
    pub listener: Arc<str>,
    /// The stats store (HCM counters are looked up once per connection).
    pub stats: Arc<Store>,
    /// The listener's `per_connection_buffer_limit_bytes` (default 1 MiB): the request body
    /// replay limit for routes that set none.
    pub buffer_limit: u64,
    /// The proxy's tracer (node identity, span reporters).
    pub tracer: Arc<crate::tracers::Tracer>,
    /// The access log file writers.
    pub access_logs: Arc<crate::access_log::Writers>,
    /// The listener's `traffic_direction` is OUTBOUND: spans are CLIENT spans.
    pub outbound: bool,
}

/// Envoy's HTTP connection manager counters (`http.<stat_prefix>.downstream_rq_*`).
#[derive(Debug)]
pub struct HcmStats {
    rq_total: Arc<Counter>,
    rq_class: [Arc<Counter>; 5],
    /// Only for HCMs that trace: the lookups cost a lock per connection.
    tracing: Option<crate::tracers::TracingStats>,
}

impl HcmStats {
    /// Looks the counters up (takes the store's lock; do it per connection, not per request);
    /// the `tracing.*` ones when the HCM traces.
    pub fn new(store: &Store, hcm: &HttpConnectionManagerConfig) -> Self {
        let stat_prefix = hcm.stat_prefix.as_str();
        let name = |suffix: &str| format!("http.{stat_prefix}.downstream_rq_{suffix}");
        Self {
            rq_total: store.counter(name("total")),
            rq_class: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| store.counter(name(c))),
            tracing: hcm
                .tracing
                .is_some()
                .then(|| crate::tracers::TracingStats::new(store, stat_prefix)),
        }
    }

    fn record(&self, status: StatusCode) {
        self.rq_total.inc();
        let class = usize::from(status.as_u16() / 100);
        if let Some(counter) = class.checked_sub(1).and_then(|i| self.rq_class.get(i)) {
            counter.inc();
        }
    }
}

/// Which HCM config serves a connection's requests.
#[derive(Debug, Clone)]
pub enum HcmSelector {
    /// The matched filter chain's HCM.
    Fixed(Arc<HttpConnectionManagerConfig>),
    /// Explicit proxy / Host-header mode of the outbound listener without capture: each request
    /// uses the HCM of the `bind_to_port: false` listener on its authority's port.
    ByAuthorityPort,
}

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

/// Handles one request end to end; never fails (errors become local replies). `stats` are the
/// connection's HCM counters (looked up here when the HCM is chosen per request).
pub async fn handle(
    req: Request<Incoming>,
    downstream: &Downstream,
    selector: &HcmSelector,
    store: &ConfigStore,
    stats: Option<&HcmStats>,
) -> Response<Body> {
    // Kept for the debug line only; not copied per request when it is off.
    let logged = tracing::enabled!(tracing::Level::DEBUG)
        .then(|| (req.method().clone(), req.uri().path().to_owned()));
    let (response, per_request) = handle_inner(req, downstream, selector, store, stats).await;
    match (stats, per_request) {
        (Some(stats), _) => stats.record(response.status()),
        (None, Some(stats)) => stats.record(response.status()),
        (None, None) => {}
    }
    if let Some((method, path)) = logged {
        let flags = crate::error::ResponseFlags::of(response.extensions());
        tracing::debug!(%method, path, status = response.status().as_u16(), response_flags = %flags, "request done");
    }
    response
}

async fn handle_inner(
    req: Request<Incoming>,
    downstream: &Downstream,
    selector: &HcmSelector,
    store: &ConfigStore,
    stats: Option<&HcmStats>,
) -> (Response<Body>, Option<HcmStats>) {
    let no_route = || local_reply(StatusCode::NOT_FOUND, "", Some(ResponseFlag::NoRouteFound));
    let snapshot = store.load();
    if req.method() == http::Method::CONNECT {
        return (local_reply(StatusCode::METHOD_NOT_ALLOWED, "", None), None);
    }
    let hcm = match selector {
        HcmSelector::Fixed(hcm) => hcm.clone(),
        HcmSelector::ByAuthorityPort => match hcm_for_port(&snapshot, &req) {
            Some(hcm) => hcm,
            None => return (no_route(), None),
        },
    };
    // The connection's counters, or (HCM chosen per request) this request's own.
    let per_request = match stats {
        Some(_) => None,
        None => Some(HcmStats::new(&downstream.stats, &hcm)),
    };
    let stats = stats.or(per_request.as_ref());
    let table = match &hcm.route {
        RouteSource::Static(table) => table.clone(),
        RouteSource::Rds(name) => match snapshot.resources.routes.get(name) {
            Some(table) => table.clone(),
            None => return (no_route(), per_request),
        },
    };
    let (mut parts, body) = req.into_parts();
    if let Err(status) = hcm.protocol.check_request(&mut parts) {
        return (local_reply(status, "", None), per_request);
    }
    // Read before `prepare_request` strips `x-envoy-*` headers.
    let force_trace = hcm.tracing.is_some()
        && parts.headers.contains_key("x-envoy-force-trace")
        && is_internal_request(&hcm, downstream, &parts.headers);
    prepare_request(&hcm, &table, downstream, &mut parts);
    let span = match (&hcm.tracing, stats.and_then(|s| s.tracing.as_ref())) {
        (Some(tracing), Some(tracing_stats)) => {
            let authority = authority(&parts).to_owned();
            let info = crate::tracers::RequestInfo {
                kind: if downstream.outbound {
                    crate::tracers::Kind::Client
                } else {
                    crate::tracers::Kind::Server
                },
                peer: downstream.peer,
                local: downstream.local,
                force: force_trace,
                authority: &authority,
                request_id: hcm.request_id,
            };
            downstream
                .tracer
                .start(tracing, tracing_stats, info, &mut parts)
        }
        _ => None,
    };
    let logging = (!hcm.access_log.is_empty()).then(|| {
        let slot = match parts.extensions.get::<Arc<crate::tracers::SpanSlot>>() {
            Some(slot) => slot.clone(),
            None => {
                let slot = Arc::<crate::tracers::SpanSlot>::default();
                parts.extensions.insert(slot.clone());
                slot
            }
        };
        let start = crate::access_log::Start {
            start: std::time::SystemTime::now(),
            started: tokio::time::Instant::now(),
            method: parts.method.as_str().to_owned(),
            path: parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            authority: authority(&parts).to_owned(),
            version: parts.version,
            headers: parts.headers.clone(),
            received: Arc::default(),
        };
        (start, slot)
    });
    let body_bytes = logging.as_ref().map(|(start, _)| start.received.clone());
    let request_id = parts.headers.get(&X_REQUEST_ID).cloned();
    let mut response =
        route_request(&snapshot, &hcm, &table, downstream, parts, body, body_bytes).await;
    finish_response(&hcm, request_id, &mut response);
    if let (Some(span), Some(tracing)) = (span, &hcm.tracing) {
        let flag = crate::error::ResponseFlags::of(response.extensions());
        let status = response.status();
        if span.sampled() {
            let tracer = downstream.tracer.clone();
            let tracing = tracing.clone();
            // The span ends with the body (its `response_size` tag counts the body's bytes),
            // as Envoy's ends at stream completion.
            response = response.map(|body| {
                crate::body::boxed(crate::body::OnEnd::new(body, move |bytes| {
                    tracer.finish(&tracing, span, status, &flag.to_string(), Some(bytes));
                }))
            });
        } else {
            downstream
                .tracer
                .finish(tracing, span, status, &flag.to_string(), None);
        }
    }
    if let Some((start, slot)) = logging {
        let flag = crate::error::ResponseFlags::of(response.extensions());
        let pending = crate::access_log::Pending {
            logs: hcm.access_log.clone(),
            writers: downstream.access_logs.clone(),
            details: response
                .extensions()
                .get::<crate::access_log::Details>()
                .cloned()
                .unwrap_or_else(|| {
                    crate::access_log::Details::fixed(crate::access_log::response_code_details(
                        flag,
                        slot.upstream_host().is_some(),
                    ))
                }),
            start,
            slot,
            status: response.status().as_u16(),
            response_headers: response.headers().clone(),
            flags: flag,
            // Envoy restores a redirected connection's local address to its original
            // destination, so `%DOWNSTREAM_LOCAL_ADDRESS%` is the address the app called.
            local: downstream.original_dst.unwrap_or(downstream.local),
            remote: downstream.peer,
        };
        // Lines are written when the body ends: `DURATION` covers the whole response and
        // `BYTES_SENT` counts its body, as Envoy logs at stream completion.
        response = response.map(|body| {
            crate::body::boxed(crate::body::OnEnd::new(body, move |bytes| {
                pending.write(bytes)
            }))
        });
    }
    (response, per_request)
}

async fn route_request(
    snapshot: &Arc<Snapshot>,
    hcm: &HttpConnectionManagerConfig,
    table: &Arc<RouteTable>,
    downstream: &Downstream,
    parts: http::request::Parts,
    body: Incoming,
    body_bytes: Option<Arc<std::sync::atomic::AtomicU64>>,
) -> Response<Body> {
    let authority = authority(&parts).to_owned();
    let mut path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if hcm.normalize_path
        || hcm.merge_slashes
        || hcm.escaped_slashes != path::EscapedSlashes::KeepUnchanged
    {
        match path::canonicalize(
            &path_and_query,
            hcm.normalize_path,
            hcm.merge_slashes,
            hcm.escaped_slashes,
        ) {
            Ok(Some(canonical)) => path_and_query = canonical,
            Ok(None) => {}
            Err(()) => return local_reply(StatusCode::BAD_REQUEST, "", None),
        }
    }
    let head = RequestHead {
        method: &parts.method,
        scheme: "http",
        authority: &authority,
        path_and_query: &path_and_query,
        headers: &parts.headers,
    };
    let Some(selected) = table.route(&head) else {
        tracing::debug!(authority, path = path_and_query, "no route");
        return local_reply(StatusCode::NOT_FOUND, "", Some(ResponseFlag::NoRouteFound));
    };
    let route = selected.route;
    if let Some(slot) = parts.extensions.get::<Arc<crate::tracers::SpanSlot>>() {
        if let Some(operation) = &route.decorator {
            let _ = slot.operation.set(operation.clone());
        }
        let _ = slot.route_name.set(route.name.clone());
    }
    let span = tracing::debug_span!(
        "req",
        route = route.name.as_str(),
        cluster = tracing::field::Empty,
        upstream.addr = tracing::field::Empty,
    );
    match &route.action {
        Action::DirectResponse(d) => {
            let mut response = Response::new(crate::body::full(d.body.clone()));
            *response.status_mut() = d.status;
            if !d.body.is_empty() {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            table.mutate_response(&selected, None, response.headers_mut());
            response
        }
        Action::Redirect(r) => {
            let location = r.location(&head, route.matcher.path.matched_prefix());
            let mut response = local_reply(r.status, "", None);
            if let Ok(location) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            table.mutate_response(&selected, None, response.headers_mut());
            response
        }
        Action::Forward(forward) => {
            let hash = forward.request_hash(&head, Some(downstream.peer.ip()));
            let request = crate::router::UpstreamRequest {
                parts,
                body,
                body_bytes,
                authority,
                path_and_query,
                hash,
                websocket_allowed: forward.websocket.unwrap_or(hcm.websocket),
            };
            crate::router::forward(snapshot, table, &selected, forward, request, downstream)
                .instrument(span)
                .await
        }
    }
}

/// The request's authority: the absolute-form URI's, else the Host header (HTTP/1.1), else
/// `:authority` (HTTP/2, which hyper puts in the URI).
pub fn authority(parts: &http::request::Parts) -> &str {
    if let Some(a) = parts.uri.authority() {
        return a.as_str();
    }
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
}

fn hcm_for_port(
    snapshot: &Snapshot,
    req: &Request<Incoming>,
) -> Option<Arc<HttpConnectionManagerConfig>> {
    let authority = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    let port = crate::route::action::split_host_port(authority)
        .1
        .unwrap_or(80);
    let listeners = &snapshot.resources.listeners;
    let by_name = listeners.get(&format!("0.0.0.0_{port}"));
    let listener = by_name.or_else(|| {
        listeners
            .values()
            .find(|l| !l.bind_to_port && l.address.port() == port)
    })?;
    listener.http_connection_manager().cloned()
}

/// Envoy's internal-request rule: with `use_remote_address` the peer's address decides; without
/// it, `x-forwarded-for` must hold exactly one address (no XFF: external). The address is
/// internal when it is loopback, RFC 1918 or unique-local IPv6 (Envoy's classic default for
/// `internal_address_config`).
fn is_internal_request(
    hcm: &HttpConnectionManagerConfig,
    downstream: &Downstream,
    headers: &http::HeaderMap,
) -> bool {
    let address = if hcm.use_remote_address {
        Some(downstream.peer.ip())
    } else {
        let mut xff = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|a| !a.is_empty());
        match (xff.next(), xff.next()) {
            (Some(single), None) => single.parse::<std::net::IpAddr>().ok(),
            _ => None,
        }
    };
    address.is_some_and(|ip| match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    })
}

/// Envoy's request header handling for a sidecar.
fn prepare_request(
    hcm: &HttpConnectionManagerConfig,
    table: &RouteTable,
    downstream: &Downstream,
    parts: &mut http::request::Parts,
) {
    // Envoy's internal-only headers must not be spoofable from outside. Internal callers (see
    // `is_internal_request`) keep the router's retry and timeout overrides, as Envoy does.
    let keep_overrides = is_internal_request(hcm, downstream, &parts.headers);
    let internal: Vec<_> = parts
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-envoy-"))
        .filter(|k| !(keep_overrides && crate::retry::HeaderOverrides::NAMES.contains(&k.as_str())))
        .cloned()
        .collect();
    for name in internal {
        parts.headers.remove(name);
    }
    for name in &table.internal_only_headers {
        parts.headers.remove(name);
    }
    if hcm.sanitize_xfcc {
        parts.headers.remove(&X_FORWARDED_CLIENT_CERT);
    }
    if hcm.use_remote_address && !hcm.skip_xff_append {
        let peer = downstream.peer.ip().to_string();
        let value = match parts
            .headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
        {
            Some(existing) => format!("{existing}, {peer}"),
            None => peer,
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            parts.headers.insert(X_FORWARDED_FOR, value);
        }
    }
    if !parts.headers.contains_key(&X_FORWARDED_PROTO) {
        parts
            .headers
            .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if hcm.generate_request_id
        && !parts.headers.contains_key(&X_REQUEST_ID)
        && let Ok(id) = HeaderValue::from_bytes(&uuid_v4_bytes())
    {
        parts.headers.insert(X_REQUEST_ID, id);
    }
}

fn finish_response(
    hcm: &HttpConnectionManagerConfig,
    request_id: Option<HeaderValue>,
    response: &mut Response<Body>,
) {
    let headers = response.headers_mut();
    match hcm.server_header {
        ServerHeader::Overwrite => {
            headers.insert(header::SERVER, hcm.server_name.clone());
        }
        ServerHeader::AppendIfAbsent if !headers.contains_key(header::SERVER) => {
            headers.insert(header::SERVER, hcm.server_name.clone());
        }
        ServerHeader::AppendIfAbsent | ServerHeader::PassThrough => {}
    }
    if let (true, Some(id)) = (hcm.always_set_request_id_in_response, request_id) {
        headers.insert(X_REQUEST_ID, id);
    }
}

/// A random (version 4) UUID, the format Envoy uses for `x-request-id`.
pub fn uuid_v4() -> String {
    String::from_utf8_lossy(&uuid_v4_bytes()).into_owned()
}

/// [`uuid_v4`] formatted on the stack: it runs for every request without an `x-request-id`.
fn uuid_v4_bytes() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits: u128 = rand::random();
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut out = [b'-'; 36];
    let mut nibble = 0;
    for (i, byte) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        *byte = HEX[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
        nibble += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, uuid_v4());
        assert!(id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit() && !b.is_ascii_uppercase(),
        }));
    }
}
