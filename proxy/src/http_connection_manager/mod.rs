//! The HTTP connection manager: serves one downstream connection with hyper (HTTP/1.1 or h2c
//! prior knowledge, upgrades enabled), and for each request loads the snapshot once, applies the
//! sidecar's header handling (`x-envoy-*` stripping, `x-forwarded-*`, `x-request-id`, XFCC),
//! picks a route and either answers locally (no route, redirect, direct response) or hands the
//! request to the [`crate::router`]. How a connection is served lives
//! in [`connection`] (and how it drains in [`drain`]); the header rules in [`request_headers`].

pub mod config;
mod connection;
pub mod drain;
pub mod idle_timeout;
mod local_reply;
pub mod path;
pub mod protocol_options;
mod request_headers;
pub mod request_limit;
mod unsupported;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::body::Body;
use crate::error::ResponseFlag;
use crate::route::{Action, RequestHead, RouteTable};
use crate::snapshot::{ConfigStore, Snapshot};
use crate::stats::{Counter, Store};

pub use config::{Codec, HttpConnectionManagerConfig, RouteSource, ServerHeader};
pub use connection::serve;
pub use drain::{ConnectionDrain, DrainSignals};
pub use local_reply::local_reply;
pub use request_headers::uuid_v4;
use request_headers::{X_REQUEST_ID, finish_response, is_internal_request, prepare_request};

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
