//! The control plane's Prometheus metrics, named like istiod's so existing dashboards and alerts
//! find them: pushes and rejects by type, push latency, connected proxies, validation errors.
//!
//! The `prometheus-client` crate appends `_total` to counters (OpenMetrics), so istiod's
//! `pilot_xds_pushes` reads `pilot_xds_pushes_total` here.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::cache::ResourceType;

/// The `type` label istiod uses (`cds`, `eds`, `lds`, `rds`).
type TypeLabel = [(&'static str, &'static str); 1];

fn type_label(ty: ResourceType) -> TypeLabel {
    [("type", ty.label())]
}

/// All metrics, cheap to clone (shared handles).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pushes: Family<TypeLabel, Counter>,
    rejects: Family<TypeLabel, Counter>,
    convergence: Histogram,
    connected: Gauge,
    validation_errors: Gauge,
    generate_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let pushes = Family::<TypeLabel, Counter>::default();
        registry.register(
            "pilot_xds_pushes",
            "Pilot pushes of lds, rds, cds and eds",
            pushes.clone(),
        );
        let rejects = Family::<TypeLabel, Counter>::default();
        registry.register(
            "pilot_total_xds_rejects",
            "Total number of xDS responses from pilot rejected by proxy",
            rejects.clone(),
        );
        let convergence = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "pilot_proxy_convergence_time",
            "Delay in seconds between config change and a proxy receiving all required configuration",
            convergence.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "pilot_xds",
            "Number of endpoints connected to this pilot using XDS",
            connected.clone(),
        );
        let validation_errors = Gauge::default();
        registry.register(
            "ferry_config_validation_errors",
            "Number of configuration objects currently refused by validation",
            validation_errors.clone(),
        );
        let generate_errors = Counter::default();
        registry.register(
            "pilot_total_xds_internal_errors",
            "Total number of internal XDS errors in pilot",
            generate_errors.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            pushes,
            rejects,
            convergence,
            connected,
            validation_errors,
            generate_errors,
        }
    }

    /// One response of `ty` sent.
    pub fn push(&self, ty: ResourceType) {
        self.pushes.get_or_create(&type_label(ty)).inc();
    }

    /// Pushes of `ty` so far.
    pub fn pushes(&self, ty: ResourceType) -> u64 {
        self.pushes.get_or_create(&type_label(ty)).get()
    }

    /// A NACK of `ty` received.
    pub fn reject(&self, ty: ResourceType) {
        self.rejects.get_or_create(&type_label(ty)).inc();
    }

    /// NACKs of `ty` so far.
    pub fn rejects(&self, ty: ResourceType) -> u64 {
        self.rejects.get_or_create(&type_label(ty)).get()
    }

    /// Seconds from a model change to a proxy being sent the config that reflects it.
    pub fn convergence(&self, seconds: f64) {
        self.convergence.observe(seconds);
    }

    /// A proxy connected (`+1`) or left (`-1`).
    pub fn connected(&self, delta: i64) {
        self.connected.inc_by(delta);
    }

    /// The number of objects validation currently refuses.
    pub fn set_validation_errors(&self, count: usize) {
        self.validation_errors
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The generator failed for a proxy.
    pub fn generate_error(&self) {
        self.generate_errors.inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_istio_names() {
        let m = Metrics::new();
        m.push(ResourceType::Cluster);
        m.reject(ResourceType::Route);
        m.connected(1);
        m.set_validation_errors(3);
        m.convergence(0.05);
        let text = m.encode();
        for want in [
            "pilot_xds_pushes_total{type=\"cds\"} 1",
            "pilot_total_xds_rejects_total{type=\"rds\"} 1",
            "pilot_xds 1",
            "ferry_config_validation_errors 3",
            "pilot_proxy_convergence_time_count 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }
}
