//! The span reporter: spans are queued on a bounded channel (a full queue drops the span and
//! counts it, never blocking a request), batched, and sent to the provider's collector cluster
//! of the proxy's current snapshot, like any other upstream request: Zipkin v2 JSON
//! ([`super::zipkin`]) or an OTLP/gRPC export ([`super::opentelemetry`]). Envoy's defaults: a
//! batch goes out at 5 spans (`min_flush_spans`) or every 5 s (`flush_interval_ms`), whichever
//! comes first.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::LocalNode;
use super::config::Provider;
use super::span::Span;
use crate::cluster::LbContext;
use crate::snapshot::ConfigStore;
use crate::stats::{Counter, Store};

/// Envoy's `min_flush_spans` default.
pub const MIN_FLUSH_SPANS: usize = 5;
/// Envoy's `flush_interval_ms` default.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Envoy's collector request timeout.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many spans may wait for the reporter before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 4096;

/// Envoy's `tracing.zipkin.*` / `tracing.opentelemetry.*` counters (plus `spans_dropped` for
/// a full queue, which Envoy, buffering on its worker threads, does not have).
#[derive(Debug)]
pub struct ReporterStats {
    /// `spans_sent`: spans in reports sent (counted when the report goes out, as Envoy does).
    pub spans_sent: Arc<Counter>,
    /// `reports_sent`: reports the collector accepted.
    pub reports_sent: Arc<Counter>,
    /// `reports_dropped`: reports the collector refused (non-2xx, non-zero `grpc-status`).
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

impl ReporterStats {
    /// Looks the counters up under `prefix` (`tracing.zipkin`).
    pub fn new(store: &Store, prefix: &str) -> Self {
        let c = |name: &str| store.counter(format!("{prefix}.{name}"));
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

/// What a reporter needs besides its queue.
#[derive(Debug, Clone)]
pub struct Reporter {
    /// The tracer config.
    pub provider: Arc<Provider>,
    /// Where the collector cluster is looked up.
    pub store: Weak<ConfigStore>,
    /// Its counters.
    pub stats: Arc<ReporterStats>,
    /// The node (OpenTelemetry resource attributes).
    pub node: LocalNode,
}

impl Reporter {
    /// Starts the reporter; it runs until every sender is dropped, then flushes what it holds
    /// and ends.
    pub fn spawn(self) -> mpsc::Sender<Span> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(self.run(rx));
        tx
    }

    async fn run(self, mut rx: mpsc::Receiver<Span>) {
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
                            self.flush(std::mem::take(&mut batch)).await;
                        }
                    }
                    None => {
                        if !batch.is_empty() {
                            self.flush(batch).await;
                        }
                        return;
                    }
                },
                _ = timer.tick() => {
                    if !batch.is_empty() {
                        self.stats.timer_flushed.inc();
                        self.flush(std::mem::take(&mut batch)).await;
                    }
                }
            }
        }
    }

    async fn flush(&self, spans: Vec<Span>) {
        let stats = &self.stats;
        let Some(store) = self.store.upgrade() else {
            return;
        };
        let name = self.provider.collector_cluster();
        let Some(cluster) = store.load().clusters.get(name).cloned() else {
            tracing::debug!(cluster = name, "tracer: collector cluster not found");
            stats.reports_skipped_no_cluster.inc();
            return;
        };
        let Some(host) = cluster.select_host(&LbContext::default()) else {
            tracing::debug!(cluster = name, "tracer: no healthy collector");
            stats.reports_failed.inc();
            return;
        };
        let request = match &*self.provider {
            Provider::Zipkin(z) => super::zipkin::report_request(z, &spans),
            Provider::OpenTelemetry(o) => {
                super::opentelemetry::export_request(o, &self.node, &spans)
            }
        };
        stats.spans_sent.add(spans.len() as u64);
        let sent = async {
            let response = cluster.send(&host, request).await?;
            let status = response.status();
            let grpc_status = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let trailers = http_body_util::BodyExt::collect(response.into_body())
                .await
                .ok()
                .and_then(|c| c.trailers().cloned());
            let grpc_status = grpc_status.or_else(|| {
                trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            });
            Ok::<_, crate::cluster::UpstreamError>((status, grpc_status))
        };
        let accepted = |status: http::StatusCode, grpc: Option<&str>| match &*self.provider {
            Provider::Zipkin(_) => status.is_success(),
            Provider::OpenTelemetry(_) => status == http::StatusCode::OK && grpc == Some("0"),
        };
        match tokio::time::timeout(REPORT_TIMEOUT, sent).await {
            Ok(Ok((status, grpc))) if accepted(status, grpc.as_deref()) => {
                stats.reports_sent.inc();
            }
            Ok(Ok((status, grpc))) => {
                tracing::debug!(status = status.as_u16(), grpc_status = ?grpc, "tracer: report refused");
                stats.reports_dropped.inc();
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "tracer: report failed");
                stats.reports_failed.inc();
            }
            Err(_) => {
                tracing::debug!("tracer: report timed out");
                stats.reports_failed.inc();
            }
        }
    }
}
