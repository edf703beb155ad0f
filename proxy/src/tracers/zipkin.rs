//! The Zipkin reporter: spans are queued on a bounded channel (a full queue drops the span and
//! counts it, never blocking a request), batched, and POSTed as a Zipkin v2 JSON array to
//! `collector_endpoint` through the `collector_cluster` of the proxy's current snapshot, like
//! any other upstream request. Envoy's defaults: a batch goes out at 5 spans
//! (`min_flush_spans`) or every 5 s (`flush_interval_ms`), whichever comes first.

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{HeaderValue, Request, header};
use tokio::sync::mpsc;

use super::config::ZipkinConfig;
use super::span::Span;
use crate::cluster::LbContext;
use crate::snapshot::ConfigStore;
use crate::stats::{Counter, Store};

/// Envoy's `tracing.zipkin.min_flush_spans` default.
pub const MIN_FLUSH_SPANS: usize = 5;
/// Envoy's `tracing.zipkin.flush_interval_ms` default.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Envoy's Zipkin collector request timeout.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many spans may wait for the reporter before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 4096;

/// Envoy's `tracing.zipkin.*` counters (plus `spans_dropped` for a full queue, which Envoy,
/// buffering on its worker threads, does not have).
#[derive(Debug)]
pub struct ZipkinStats {
    /// `spans_sent`: spans in reports sent.
    pub spans_sent: Arc<Counter>,
    /// `reports_sent`: reports answered 2xx.
    pub reports_sent: Arc<Counter>,
    /// `reports_dropped`: reports answered with another status.
    pub reports_dropped: Arc<Counter>,
    /// `reports_failed`: reports that got no answer (connect failure, reset, timeout).
    pub reports_failed: Arc<Counter>,
    /// `reports_skipped_no_cluster`: the collector cluster is not in the config.
    pub reports_skipped_no_cluster: Arc<Counter>,
    /// `timer_flushed`: batches sent by the flush timer rather than by size.
    pub timer_flushed: Arc<Counter>,
    /// `spans_dropped`: spans dropped because the queue was full.
    pub spans_dropped: Arc<Counter>,
}

impl ZipkinStats {
    /// Looks the counters up.
    pub fn new(store: &Store) -> Self {
        let c = |name: &str| store.counter(format!("tracing.zipkin.{name}"));
        Self {
            spans_sent: c("spans_sent"),
            reports_sent: c("reports_sent"),
            reports_dropped: c("reports_dropped"),
            reports_failed: c("reports_failed"),
            reports_skipped_no_cluster: c("reports_skipped_no_cluster"),
            timer_flushed: c("timer_flushed"),
            spans_dropped: c("spans_dropped"),
        }
    }
}

/// Starts a reporter for `config`; it runs until every sender is dropped, then flushes what
/// it holds and ends.
pub fn spawn(
    config: Arc<ZipkinConfig>,
    store: Weak<ConfigStore>,
    stats: Arc<ZipkinStats>,
) -> mpsc::Sender<Span> {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    tokio::spawn(run(config, store, stats, rx));
    tx
}

async fn run(
    config: Arc<ZipkinConfig>,
    store: Weak<ConfigStore>,
    stats: Arc<ZipkinStats>,
    mut rx: mpsc::Receiver<Span>,
) {
    let mut batch: Vec<Span> = Vec::new();
    let mut timer = tokio::time::interval(FLUSH_INTERVAL);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await;
    loop {
        tokio::select! {
            span = rx.recv() => match span {
                Some(span) => {
                    batch.push(span);
                    if batch.len() >= MIN_FLUSH_SPANS {
                        flush(&config, &store, &stats, std::mem::take(&mut batch)).await;
                    }
                }
                None => {
                    if !batch.is_empty() {
                        flush(&config, &store, &stats, batch).await;
                    }
                    return;
                }
            },
            _ = timer.tick() => {
                if !batch.is_empty() {
                    stats.timer_flushed.inc();
                    flush(&config, &store, &stats, std::mem::take(&mut batch)).await;
                }
            }
        }
    }
}

/// The report request: a JSON array of v2 spans.
pub fn report_request(config: &ZipkinConfig, spans: &[Span]) -> Request<crate::body::Body> {
    let json = serde_json::Value::Array(spans.iter().map(Span::to_zipkin_json).collect());
    let body = serde_json::to_vec(&json).unwrap_or_default();
    let mut request = Request::new(crate::body::full(bytes::Bytes::from(body)));
    *request.method_mut() = http::Method::POST;
    let uri = format!(
        "http://{}{}",
        config.collector_hostname, config.collector_endpoint
    );
    if let Ok(uri) = http::Uri::try_from(uri) {
        *request.uri_mut() = uri;
    }
    let headers = request.headers_mut();
    if let Ok(host) = HeaderValue::from_str(&config.collector_hostname) {
        headers.insert(header::HOST, host);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    request
}

async fn flush(
    config: &ZipkinConfig,
    store: &Weak<ConfigStore>,
    stats: &ZipkinStats,
    spans: Vec<Span>,
) {
    let Some(store) = store.upgrade() else {
        return;
    };
    let snapshot = store.load();
    let Some(cluster) = snapshot.clusters.get(&config.collector_cluster).cloned() else {
        tracing::debug!(
            cluster = config.collector_cluster,
            "zipkin: collector cluster not found"
        );
        stats.reports_skipped_no_cluster.inc();
        return;
    };
    drop(snapshot);
    let Some(host) = cluster.select_host(&LbContext::default()) else {
        tracing::debug!(cluster = cluster.name(), "zipkin: no healthy collector");
        stats.reports_failed.inc();
        return;
    };
    let request = report_request(config, &spans);
    // Counted when the report goes out, as Envoy does.
    stats.spans_sent.add(spans.len() as u64);
    let sent = async {
        let response = cluster.send(&host, request).await?;
        let status = response.status();
        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
        Ok::<_, crate::cluster::UpstreamError>(status)
    };
    match tokio::time::timeout(REPORT_TIMEOUT, sent).await {
        Ok(Ok(status)) if status.is_success() => {
            stats.reports_sent.inc();
        }
        Ok(Ok(status)) => {
            tracing::debug!(status = status.as_u16(), "zipkin: report refused");
            stats.reports_dropped.inc();
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "zipkin: report failed");
            stats.reports_failed.inc();
        }
        Err(_) => {
            tracing::debug!("zipkin: report timed out");
            stats.reports_failed.inc();
        }
    }
}
