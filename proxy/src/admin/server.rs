//! The admin HTTP/1.1 server: binds, accepts, and answers each endpoint from the tracker and the
//! stats store. Every handler is cheap and never blocks the data path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::lifecycle::{DrainScope, Lifecycle};
use super::listeners::{self, ListenerAddrs};
use super::{clusters, config_dump, prometheus};
use crate::body::{Body, full};
use crate::xds::{ServerState, Tracker};

/// What the admin server reads and signals.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The xDS side's accepted config and server state.
    pub tracker: Arc<Tracker>,
    /// Where `/quitquitquit` and `/drain_listeners` are signalled.
    pub lifecycle: Lifecycle,
    /// When the proxy started (`BootstrapConfigDump.last_updated`).
    pub started: SystemTime,
    /// Bound listener addresses for `/listeners` (configured addresses without it).
    pub listener_addrs: Option<ListenerAddrs>,
}

impl AdminState {
    /// Admin state for a tracker, started now.
    pub fn new(tracker: Arc<Tracker>, lifecycle: Lifecycle) -> Self {
        Self {
            tracker,
            lifecycle,
            started: SystemTime::now(),
            listener_addrs: None,
        }
    }

    /// Reports bound listener addresses on `/listeners` (e.g. the listener manager's
    /// `listener_addr`), so listeners on port 0 can be found.
    #[must_use]
    pub fn with_listener_addrs(
        mut self,
        lookup: impl Fn(&str) -> Option<SocketAddr> + Send + Sync + 'static,
    ) -> Self {
        self.listener_addrs = Some(ListenerAddrs(Arc::new(lookup)));
        self
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(full(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    response
}

/// A JSON answer rendered through the descriptor pool: once sent, the transient pool's memory
/// goes back to the OS (see [`crate::memory`]).
fn reflected_json(value: serde_json::Value) -> Response<Body> {
    let response = json(&value);
    drop(value);
    crate::memory::release_transient_memory();
    response
}

fn json(value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_string_pretty(value).unwrap_or_default();
    let mut response = Response::new(full(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Decoded query parameters.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Self {
        Self(
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find_map(|(k, v)| (k == name).then_some(v.as_str()))
    }
}

/// `/stats`: text, `?format=json` or `?format=prometheus`, narrowed by `?filter=REGEX` (what
/// pilot-agent's readiness check sends). `usedonly` is accepted; every stat here is used.
fn stats(tracker: &Tracker, query: &Query) -> Response<Body> {
    let filter = match query.get("filter").map(regex::Regex::new).transpose() {
        Ok(filter) => filter,
        Err(error) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("invalid filter: {error}\n"),
            );
        }
    };
    let keep = |name: &str| filter.as_ref().is_none_or(|f| f.is_match(name));
    let store = tracker.stats();
    match query.get("format") {
        Some("json") => {
            let counters = store
                .counters()
                .into_iter()
                .map(|(n, v)| (n, serde_json::json!(v)));
            let gauges = store
                .gauges()
                .into_iter()
                .map(|(n, v)| (n, serde_json::json!(v)));
            let stats: Vec<serde_json::Value> = counters
                .chain(gauges)
                .filter(|(name, _)| keep(name))
                .map(|(name, value)| serde_json::json!({ "name": name, "value": value }))
                .collect();
            json(&serde_json::json!({ "stats": stats }))
        }
        Some("prometheus") => prometheus_response(tracker),
        _ => {
            let body: String = prometheus::render_text(store)
                .lines()
                .filter(|line| keep(line.split(':').next().unwrap_or_default()))
                .map(|line| format!("{line}\n"))
                .collect();
            text(StatusCode::OK, body)
        }
    }
}

fn prometheus_response(tracker: &Tracker) -> Response<Body> {
    let names: Vec<String> =
        tracker.with_state(|s| s.slots(crate::xds::Kind::Cluster).keys().cloned().collect());
    let mut response = text(
        StatusCode::OK,
        prometheus::render_prometheus(tracker.stats(), &names),
    );
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

const HELP: &str = "admin commands are:\n  /: this help\n  /clusters: upstream cluster status\n  /config_dump: current config\n  /drain_listeners (POST): drain listeners\n  /listeners: listener names and addresses\n  /quitquitquit (POST): exit the server\n  /ready: print server state, 200 when LIVE\n  /stats: print server stats\n  /stats/prometheus: print server stats in prometheus format\n";

/// Answers one admin request.
pub async fn handle(state: &AdminState, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path();
    let query = Query::parse(request.uri().query().unwrap_or_default());
    let post = request.method() == Method::POST;
    let tracker = &state.tracker;
    match path {
        "/" => text(StatusCode::OK, HELP),
        "/ready" => match tracker.server_state() {
            ServerState::Live => text(StatusCode::OK, "LIVE\n"),
            other => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}\n", other.as_str()),
            ),
        },
        "/config_dump" => match config_dump::render(tracker, state.started) {
            Ok(value) => reflected_json(value),
            Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        },
        "/clusters" => {
            let statuses = clusters::cluster_statuses(tracker);
            if query.get("format") == Some("json") {
                match clusters::render_json(&statuses) {
                    Ok(value) => reflected_json(value),
                    Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
                }
            } else {
                text(StatusCode::OK, clusters::render_text(&statuses))
            }
        }
        "/listeners" => {
            let statuses = listeners::listener_statuses(tracker, state.listener_addrs.as_ref());
            if query.get("format") == Some("json") {
                match listeners::render_json(&statuses) {
                    Ok(value) => reflected_json(value),
                    Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
                }
            } else {
                text(StatusCode::OK, listeners::render_text(&statuses))
            }
        }
        "/stats" => stats(tracker, &query),
        "/stats/prometheus" => prometheus_response(tracker),
        "/quitquitquit" | "/drain_listeners" if !post => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "This endpoint requires POST\n",
        ),
        "/quitquitquit" => {
            tracing::info!("shutdown requested via /quitquitquit");
            tracker.set_draining();
            state.lifecycle.request_shutdown();
            text(StatusCode::OK, "OK\n")
        }
        "/drain_listeners" => {
            let scope = if query.has("inboundonly") {
                DrainScope::InboundOnly
            } else {
                DrainScope::All
            };
            tracing::info!(?scope, "drain requested via /drain_listeners");
            state.lifecycle.request_drain(scope);
            text(StatusCode::OK, "OK\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!("invalid path: {path}\n{HELP}"),
        ),
    }
}

/// Binds the admin server at `addr` (port 0: any free port) and serves until the handle is
/// aborted. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "admin listening");
    let state = Arc::new(state);
    let handle = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
                }
            };
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(handle(&state, request).await) }
                });
                if let Err(error) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%error, %peer, "admin connection ended");
                }
            });
        }
    });
    Ok((local, handle))
}
