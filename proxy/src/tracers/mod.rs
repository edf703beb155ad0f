//! Distributed tracing, as Envoy's HTTP connection manager does it with the
//! `envoy.tracers.zipkin` provider Istio configures on every sidecar (or
//! `envoy.tracers.opentelemetry`): per request a sampling decision ([`sampling`]), a span
//! (SERVER on inbound listeners, CLIENT on outbound) whose context is propagated upstream (B3 for
//! Zipkin, W3C `traceparent` for OpenTelemetry, [`context`]), Envoy's standard tags, and
//! reporting off the request path ([`reporter`], in [`zipkin`] or [`opentelemetry`] format). The
//! [`Tracer`] is the proxy-wide part: the node identity and the reporters, one per distinct
//! provider config, started on first use.

pub mod config;
pub mod context;
pub mod opentelemetry;
pub mod reporter;
pub mod request_id;
pub mod sampling;
pub mod span;
pub mod zipkin;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;

pub use config::{
    CustomTag, InvalidTracing, OpenTelemetryConfig, Provider, TagValue, TracingConfig, ZipkinConfig,
};
pub use context::TraceId;
pub use request_id::UuidRequestId;
pub use sampling::{Decision, Reason, Signals};
pub use span::{Endpoint, Kind, Span};

use crate::snapshot::ConfigStore;
use crate::stats::{Counter, Store};

/// The node identity spans carry (bootstrap `node.id` and `node.cluster`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalNode {
    /// `node.id`, the `node_id` tag.
    pub id: Arc<str>,
    /// `node.cluster`, the local endpoint's service name (Istio: `app.namespace`).
    pub cluster: Arc<str>,
}

/// The proxy-wide tracer: node identity and reporters.
#[derive(Debug)]
pub struct Tracer {
    node: LocalNode,
    default_provider: Option<Arc<Provider>>,
    store: Weak<ConfigStore>,
    stats: Arc<Store>,
    zipkin_stats: OnceLock<Arc<reporter::ReporterStats>>,
    opentelemetry_stats: OnceLock<Arc<reporter::ReporterStats>>,
    reporters: Mutex<Vec<(Arc<Provider>, mpsc::Sender<Span>)>>,
}

/// Envoy's `http.<stat_prefix>.tracing.*` counters.
#[derive(Debug)]
pub struct TracingStats {
    service_forced: Arc<Counter>,
    client_enabled: Arc<Counter>,
    random_sampling: Arc<Counter>,
    not_traceable: Arc<Counter>,
}

impl TracingStats {
    /// Looks the counters up for an HCM's `stat_prefix`.
    pub fn new(store: &Store, stat_prefix: &str) -> Self {
        let c = |name: &str| store.counter(format!("http.{stat_prefix}.tracing.{name}"));
        Self {
            service_forced: c("service_forced"),
            client_enabled: c("client_enabled"),
            random_sampling: c("random_sampling"),
            not_traceable: c("not_traceable"),
        }
    }

    fn record(&self, reason: Reason) {
        match reason {
            Reason::ServiceForced => &self.service_forced,
            Reason::ClientEnabled => &self.client_enabled,
            Reason::RandomSampling => &self.random_sampling,
            Reason::NotTraceable => &self.not_traceable,
        }
        .inc();
    }
}

/// What routing learns about a request for its span and access log: the route (decorator,
/// name), the cluster the router picked and the host of the last attempt. Only sampled or
/// logged requests carry one (in the request's extensions, as `Arc<SpanSlot>`), so other
/// requests pay nothing.
#[derive(Debug, Default)]
pub struct SpanSlot {
    /// The route's `decorator.operation`.
    pub operation: OnceLock<String>,
    /// The cluster the router picked.
    pub upstream_cluster: OnceLock<String>,
    /// The route's name (`ROUTE_NAME` in access logs).
    pub route_name: OnceLock<String>,
    /// The host of the last attempt and its connection's local address.
    upstream: Mutex<(Option<SocketAddr>, Option<SocketAddr>)>,
}

impl SpanSlot {
    /// Records the host an attempt goes to (the last one is tagged `upstream_address`); the
    /// attempt has no connection yet, so the local address is cleared.
    pub fn set_upstream_host(&self, host: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = (Some(host), None);
    }

    /// Records the local address of the connection the attempt is sent on
    /// (`%UPSTREAM_LOCAL_ADDRESS%`).
    pub fn set_upstream_local_address(&self, local: SocketAddr) {
        self.upstream.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(local);
    }

    /// The host of the last attempt.
    pub fn upstream_host(&self) -> Option<SocketAddr> {
        self.upstream.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// The local address of the last attempt's connection (`None` when it never connected).
    pub fn upstream_local_address(&self) -> Option<SocketAddr> {
        self.upstream.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

/// What a request tells the tracer when it starts.
#[derive(Debug)]
pub struct RequestInfo<'a> {
    /// Client or server side.
    pub kind: Kind,
    /// The downstream peer.
    pub peer: SocketAddr,
    /// The listener's local address (the span's local endpoint).
    pub local: SocketAddr,
    /// `x-envoy-force-trace` from an internal caller (read before the headers are sanitized).
    pub force: bool,
    /// The request's authority.
    pub authority: &'a str,
    /// The HCM's `request_id_extension`: whether `x-request-id` carries the decision.
    pub request_id: UuidRequestId,
}

/// A request's span between its start and its response.
#[derive(Debug)]
pub struct ActiveSpan {
    provider: Arc<Provider>,
    sampled: bool,
    trace_id: TraceId,
    id: u64,
    parent_id: Option<u64>,
    shared: bool,
    kind: Kind,
    started: tokio::time::Instant,
    timestamp_us: u64,
    tags: Vec<(String, String)>,
    slot: Arc<SpanSlot>,
    local: SocketAddr,
}

fn random_nonzero() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

fn header_or_dash(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

impl Tracer {
    /// A tracer whose reporters find the collector cluster in `store`'s current snapshot.
    pub fn new(node: LocalNode, store: Weak<ConfigStore>, stats: Arc<Store>) -> Self {
        Self {
            node,
            default_provider: None,
            store,
            stats,
            zipkin_stats: OnceLock::new(),
            opentelemetry_stats: OnceLock::new(),
            reporters: Mutex::new(Vec::new()),
        }
    }

    /// Uses `provider` (the bootstrap's `tracing.http`) for HCMs whose `tracing` has none.
    pub fn with_default_provider(mut self, provider: Option<Arc<Provider>>) -> Self {
        self.default_provider = provider;
        self
    }

    /// Starts a request's span: decides sampling (counted in `stats`), creates or continues the
    /// trace and writes its context into `parts` for the upstream. `None`: no provider in the
    /// HCM nor the bootstrap, so no tracing (Envoy's null tracer).
    pub fn start(
        &self,
        config: &TracingConfig,
        stats: &TracingStats,
        info: RequestInfo<'_>,
        parts: &mut http::request::Parts,
    ) -> Option<ActiveSpan> {
        let provider = config
            .provider
            .as_ref()
            .or(self.default_provider.as_ref())?
            .clone();
        let w3c = matches!(*provider, Provider::OpenTelemetry(_));
        let incoming = if w3c {
            context::extract_w3c(&parts.headers)
        } else {
            context::extract_b3(&parts.headers)
        };
        let signals = Signals {
            force: info.force,
            client_trace_id: parts.headers.contains_key("x-client-trace-id"),
            incoming: incoming.sampled,
        };
        let x_request_id = parts.headers.get("x-request-id");
        let from_id = info
            .request_id
            .use_request_id_for_trace_sampling
            .then(|| request_id::FromRequestId::read(x_request_id));
        let decision = sampling::decide(config, signals, from_id, &mut rand::rng());
        // The decision travels in `x-request-id` to the next hop (and into access logs).
        let packed = from_id.map_or_else(
            || request_id::trace_reason(x_request_id.map_or(&[][..], |v| v.as_bytes())),
            |f| f.reason,
        );
        if info.request_id.pack_trace_reason
            && decision.reason != packed
            && let Some(id) = x_request_id
            && let Some(id) = request_id::with_trace_reason(id, decision.reason)
        {
            parts.headers.insert("x-request-id", id);
        }
        stats.record(decision.reason);
        let shared = provider.shared_span_context() && info.kind == Kind::Server;
        let (trace_id, id, parent_id) = match incoming.parent {
            Some((trace, caller)) if shared => {
                let grandparent = parts
                    .headers
                    .get("x-b3-parentspanid")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| u64::from_str_radix(v, 16).ok());
                (trace, caller, grandparent)
            }
            Some((trace, caller)) => (trace, random_nonzero(), Some(caller)),
            None => {
                let high = if provider.trace_id_128bit() {
                    random_nonzero()
                } else {
                    0
                };
                let low = random_nonzero();
                (TraceId { high, low }, random_nonzero(), None)
            }
        };
        let shared = shared && incoming.parent.is_some();
        if w3c {
            context::inject_w3c(&mut parts.headers, trace_id, id, decision.sampled);
        } else {
            context::inject_b3(
                &mut parts.headers,
                trace_id,
                id,
                parent_id,
                decision.sampled,
            );
        }
        let mut span = ActiveSpan {
            provider,
            sampled: decision.sampled,
            trace_id,
            id,
            parent_id,
            shared,
            kind: info.kind,
            started: tokio::time::Instant::now(),
            timestamp_us: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            tags: Vec::new(),
            slot: Arc::default(),
            local: info.local,
        };
        if decision.sampled {
            span.request_tags(config, &self.node, &info, parts);
            parts.extensions.insert(span.slot.clone());
        }
        Some(span)
    }

    /// Ends the span with the response (and its body size, when known) and queues it for its
    /// reporter (sampled spans only).
    pub fn finish(
        &self,
        config: &TracingConfig,
        span: ActiveSpan,
        status: StatusCode,
        response_flags: &str,
        response_size: Option<u64>,
    ) {
        if !span.sampled {
            return;
        }
        let provider = span.provider.clone();
        let reporter = config.reporter.0.get_or_init(|| self.reporter(&provider));
        let mut span = span.into_span(&self.node, status, response_flags);
        if let Some(size) = response_size {
            span.tags.push(("response_size".into(), size.to_string()));
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = reporter.try_send(span) {
            self.reporter_stats(&provider).spans_dropped.inc();
        }
    }

    fn reporter_stats(&self, provider: &Provider) -> &Arc<reporter::ReporterStats> {
        let slot = match provider {
            Provider::Zipkin(_) => &self.zipkin_stats,
            Provider::OpenTelemetry(_) => &self.opentelemetry_stats,
        };
        slot.get_or_init(|| {
            Arc::new(reporter::ReporterStats::new(
                &self.stats,
                provider.stats_prefix(),
            ))
        })
    }

    /// The reporter for `provider`, started on first use and shared by every HCM config (old
    /// and new versions alike) with the same provider.
    fn reporter(&self, provider: &Arc<Provider>) -> mpsc::Sender<Span> {
        let mut reporters = self.reporters.lock().unwrap_or_else(|p| p.into_inner());
        reporters.retain(|(_, tx)| !tx.is_closed());
        if let Some((_, tx)) = reporters.iter().find(|(c, _)| c == provider) {
            return tx.clone();
        }
        let tx = reporter::Reporter {
            provider: provider.clone(),
            store: self.store.clone(),
            stats: self.reporter_stats(provider).clone(),
            node: self.node.clone(),
        }
        .spawn();
        reporters.push((provider.clone(), tx.clone()));
        tx
    }
}

impl ActiveSpan {
    /// Whether the span will be reported.
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// The trace id.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    fn request_tags(
        &mut self,
        config: &TracingConfig,
        node: &LocalNode,
        info: &RequestInfo<'_>,
        parts: &http::request::Parts,
    ) {
        let headers = &parts.headers;
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut url = format!("http://{}{}", info.authority, path);
        if url.len() > config.max_path_tag_length {
            let mut cut = config.max_path_tag_length;
            while !url.is_char_boundary(cut) {
                cut -= 1;
            }
            url.truncate(cut);
        }
        let protocol = match parts.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let tags = &mut self.tags;
        tags.push(("component".into(), "proxy".into()));
        tags.push(("node_id".into(), node.id.to_string()));
        tags.push((
            "guid:x-request-id".into(),
            header_or_dash(headers, "x-request-id"),
        ));
        tags.push(("http.url".into(), url));
        tags.push(("http.method".into(), parts.method.as_str().to_owned()));
        tags.push((
            "downstream_cluster".into(),
            header_or_dash(headers, "x-envoy-downstream-service-cluster"),
        ));
        tags.push(("user_agent".into(), header_or_dash(headers, "user-agent")));
        tags.push(("http.protocol".into(), protocol.into()));
        tags.push(("peer.address".into(), info.peer.ip().to_string()));
        for tag in &config.custom_tags {
            let value = match &tag.value {
                TagValue::Fixed(v) => Some(v.clone()),
                TagValue::RequestHeader { name, default } => headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .or_else(|| (!default.is_empty()).then(|| default.clone())),
            };
            if let Some(value) = value {
                tags.push((tag.tag.clone(), value));
            }
        }
    }

    fn into_span(self, node: &LocalNode, status: StatusCode, response_flags: &str) -> Span {
        let mut tags = self.tags;
        tags.push(("http.status_code".into(), status.as_str().to_owned()));
        tags.push(("response_flags".into(), response_flags.to_owned()));
        let cluster = self.slot.upstream_cluster.get().cloned();
        if let Some(cluster) = cluster {
            tags.push(("upstream_cluster".into(), cluster.clone()));
            tags.push(("upstream_cluster.name".into(), cluster));
        }
        if let Some(host) = self.slot.upstream_host() {
            tags.push(("upstream_address".into(), host.to_string()));
        }
        if status.is_server_error() {
            tags.push(("error".into(), "true".into()));
        }
        Span {
            trace_id: self.trace_id,
            id: self.id,
            parent_id: self.parent_id,
            // Envoy's operation name: the route's decorator, else the traffic direction.
            name: match (self.slot.operation.get(), self.kind) {
                (Some(operation), _) => operation.clone(),
                (None, Kind::Server) => "ingress".into(),
                (None, Kind::Client) => "egress".into(),
            },
            kind: self.kind,
            timestamp_us: self.timestamp_us,
            duration_us: self.started.elapsed().as_micros() as u64,
            shared: self.shared,
            local: Endpoint {
                service_name: if node.cluster.is_empty() {
                    Arc::from("-")
                } else {
                    node.cluster.clone()
                },
                ip: self.local.ip(),
                port: self.local.port(),
            },
            tags,
        }
    }
}

#[cfg(test)]
mod tests;
