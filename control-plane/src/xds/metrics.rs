//! The control plane's Prometheus metrics, named like istiod's so existing dashboards and alerts
//! find them: pushes and rejects by type, push latency, connected proxies, validation errors.
//!
//! The exposition is what istiod serves on 15014: the Prometheus text format (0.0.4) with
//! counters under their plain names (`pilot_xds_pushes`, not `pilot_xds_pushes_total`), because
//! istiod's OpenTelemetry exporter runs with `WithoutCounterSuffixes` (istio/istio
//! pkg/monitoring). `prometheus-client` writes OpenMetrics, which requires the `_total` suffix, so
//! [`Metrics::encode`] rewrites its output into istiod's format.

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
    unenforced_objects: Gauge,
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
        let unenforced_objects = Gauge::default();
        registry.register(
            "ferry_config_unenforced_objects",
            "Number of configuration objects accepted but not enforced yet (PeerAuthentication, AuthorizationPolicy)",
            unenforced_objects.clone(),
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
            unenforced_objects,
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

    /// The number of objects accepted but not enforced.
    pub fn set_unenforced_objects(&self, count: usize) {
        self.unenforced_objects
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The generator failed for a proxy.
    pub fn generate_error(&self) {
        self.generate_errors.inc();
    }

    /// The Prometheus text exposition (format 0.0.4, [`CONTENT_TYPE`]), with istiod's names.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        istiod_exposition(&out)
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text into the Prometheus text format as istiod exposes it: a counter's samples
/// carry the family name without the `_total` suffix, and the `# EOF` trailer is dropped.
fn istiod_exposition(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counter: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            counter = rest.strip_suffix(" counter");
        }
        let renamed = counter.and_then(|family| {
            let sample = line.strip_prefix(family)?.strip_prefix("_total")?;
            (sample.starts_with(['{', ' '])).then(|| format!("{family}{sample}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
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
        m.generate_error();
        m.set_unenforced_objects(2);
        let text = m.encode();
        for want in [
            "# TYPE pilot_xds_pushes counter\n",
            "\npilot_xds_pushes{type=\"cds\"} 1\n",
            "# TYPE pilot_total_xds_rejects counter\n",
            "\npilot_total_xds_rejects{type=\"rds\"} 1\n",
            "\npilot_total_xds_internal_errors 1\n",
            "\npilot_xds 1\n",
            "\nferry_config_validation_errors 3\n",
            "\nferry_config_unenforced_objects 2\n",
            "\npilot_proxy_convergence_time_count 1\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(
            !text.contains("_total{") && !text.contains("_total "),
            "istiod's counters have no suffix:\n{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn only_counter_samples_lose_the_suffix() {
        let openmetrics = "# HELP a_total_things x\n# TYPE a_total_things gauge\na_total_things 1\n# TYPE b counter\nb_total 2\nb_totally 3\n# EOF\n";
        assert_eq!(
            istiod_exposition(openmetrics),
            "# HELP a_total_things x\n# TYPE a_total_things gauge\na_total_things 1\n# TYPE b counter\nb 2\nb_totally 3\n"
        );
    }
}
