//! Istio's MeshConfig (the `mesh` key of the `istio` ConfigMap, `--mesh-config FILE` here):
//! the mesh-wide settings that change what the sidecars receive. Only the fields ferry-control
//! honours are accepted; any other field is refused naming it, rather than silently ignored.
//!
//! Tracing follows Istio's defaults: `enableTracing: true`, `defaultConfig.tracing.sampling:
//! 1.0` (percent) and a Zipkin collector at `zipkin.istio-system:9411`; an
//! `extensionProviders` entry named in `defaultProviders.tracing` replaces that collector.

use std::path::Path;

use serde::Deserialize;

/// A MeshConfig ferry-control cannot use.
#[derive(Debug, thiserror::Error)]
pub enum InvalidMeshConfig {
    /// The file could not be read.
    #[error("mesh config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A field is malformed or not supported.
    #[error("mesh config: {field}: {reason}")]
    Field {
        /// The field path, e.g. `extensionProviders[0].opentelemetry`.
        field: String,
        /// Why.
        reason: String,
    },
}

fn field(field: impl Into<String>, reason: impl Into<String>) -> InvalidMeshConfig {
    InvalidMeshConfig::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The resolved mesh-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// Tracing, when enabled (`enableTracing`).
    pub tracing: Option<TracingSettings>,
    /// Whether tracing was configured explicitly (a missing collector service is then an
    /// error; with Istio's defaults it only means no tracing, as in istiod).
    pub tracing_explicit: bool,
}

/// Where and how much to trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingSettings {
    /// `defaultConfig.tracing.sampling`, in hundredths of a percent (1.0% = 100), so the
    /// settings stay `Eq`.
    pub sampling_centi_percent: u32,
    /// `defaultConfig.tracing.maxPathTagLength`, when set.
    pub max_path_tag_length: Option<u32>,
    /// Which tracer the collector speaks.
    pub collector: Collector,
    /// The collector service's host name (FQDN).
    pub service: String,
    /// The collector's port.
    pub port: u16,
    /// `enable64bitTraceId` of a zipkin extension provider (default false: 128-bit ids).
    pub trace_id_64bit: bool,
}

/// The tracer of an extension provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collector {
    /// `zipkin` (and the legacy `defaultConfig.tracing.zipkin`).
    Zipkin,
    /// `opentelemetry` (OTLP over gRPC).
    OpenTelemetry,
}

impl TracingSettings {
    /// The sampling percentage.
    pub fn sampling_percent(&self) -> f64 {
        f64::from(self.sampling_centi_percent) / 100.0
    }

    /// Istio's cluster name for the collector: `outbound|9411||zipkin.istio-system.svc.cluster.local`.
    pub fn collector_cluster(&self) -> String {
        format!("outbound|{}||{}", self.port, self.service)
    }
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            tracing: Some(TracingSettings {
                sampling_centi_percent: 100,
                max_path_tag_length: None,
                collector: Collector::Zipkin,
                service: "zipkin.istio-system.svc.cluster.local".to_owned(),
                port: 9411,
                trace_id_64bit: false,
            }),
            tracing_explicit: false,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Raw {
    enable_tracing: Option<bool>,
    #[serde(default)]
    default_config: RawProxyConfig,
    #[serde(default)]
    extension_providers: Vec<RawProvider>,
    default_providers: Option<RawDefaultProviders>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawProxyConfig {
    tracing: Option<RawTracing>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTracing {
    sampling: Option<f64>,
    max_path_tag_length: Option<u32>,
    zipkin: Option<RawZipkinAddress>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawZipkinAddress {
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawProvider {
    name: String,
    zipkin: Option<RawZipkinProvider>,
    opentelemetry: Option<RawOpenTelemetryProvider>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawOpenTelemetryProvider {
    service: String,
    port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawZipkinProvider {
    service: String,
    port: u16,
    #[serde(default)]
    enable64bit_trace_id: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDefaultProviders {
    #[serde(default)]
    tracing: Vec<String>,
}

/// `name.namespace` (Istio's short form) becomes `name.namespace.svc.cluster.local`.
fn fqdn(host: &str) -> String {
    if host.matches('.').count() == 1 {
        format!("{host}.svc.cluster.local")
    } else {
        host.to_owned()
    }
}

impl MeshConfig {
    /// Reads a MeshConfig YAML file.
    pub fn from_file(path: &Path) -> Result<Self, InvalidMeshConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| InvalidMeshConfig::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Parses MeshConfig YAML.
    pub fn from_yaml(text: &str) -> Result<Self, InvalidMeshConfig> {
        let raw: Raw = if text.trim().is_empty() {
            Raw::default()
        } else {
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de)
                .map_err(|e| field(e.path().to_string(), e.inner().to_string()))?
        };
        let defaults = Self::default();
        let Some(mut settings) = defaults.tracing else {
            return Ok(defaults);
        };
        let explicit = raw.enable_tracing.is_some()
            || raw.default_config.tracing.is_some()
            || raw.default_providers.is_some();
        if let Some(t) = &raw.default_config.tracing {
            if let Some(sampling) = t.sampling {
                if !(0.0..=100.0).contains(&sampling) {
                    return Err(field(
                        "defaultConfig.tracing.sampling",
                        format!("{sampling} is not a percentage"),
                    ));
                }
                settings.sampling_centi_percent = (sampling * 100.0).round() as u32;
            }
            settings.max_path_tag_length = t.max_path_tag_length;
            if let Some(z) = &t.zipkin {
                let (host, port) = z.address.rsplit_once(':').ok_or_else(|| {
                    field("defaultConfig.tracing.zipkin.address", "expected HOST:PORT")
                })?;
                settings.service = fqdn(host);
                settings.port = port.parse().map_err(|_| {
                    field(
                        "defaultConfig.tracing.zipkin.address",
                        "port is not a number",
                    )
                })?;
            }
        }
        if let Some(defaults) = &raw.default_providers {
            match defaults.tracing.as_slice() {
                [] => {}
                [name] => {
                    let Some(provider) = raw.extension_providers.iter().find(|p| &p.name == name)
                    else {
                        return Err(field(
                            "defaultProviders.tracing[0]",
                            format!("no extensionProviders entry is named {name:?}"),
                        ));
                    };
                    match (&provider.zipkin, &provider.opentelemetry) {
                        (Some(z), None) => {
                            settings.service = fqdn(z.service.rsplit('/').next().unwrap_or(""));
                            settings.port = z.port;
                            settings.trace_id_64bit = z.enable64bit_trace_id;
                        }
                        (None, Some(o)) => {
                            settings.collector = Collector::OpenTelemetry;
                            settings.service = fqdn(o.service.rsplit('/').next().unwrap_or(""));
                            settings.port = o.port;
                        }
                        _ => {
                            return Err(field(
                                "defaultProviders.tracing[0]",
                                format!(
                                    "provider {name:?} must be exactly one of zipkin or opentelemetry"
                                ),
                            ));
                        }
                    }
                }
                _ => {
                    return Err(field(
                        "defaultProviders.tracing",
                        "only one tracing provider is supported",
                    ));
                }
            }
        }
        Ok(Self {
            tracing: raw.enable_tracing.unwrap_or(true).then_some(settings),
            tracing_explicit: explicit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_mesh_config_is_istio_default() {
        let m = MeshConfig::from_yaml("").unwrap();
        assert_eq!(m, MeshConfig::default());
        let t = m.tracing.unwrap();
        assert_eq!(t.sampling_percent(), 1.0);
        assert_eq!(
            t.collector_cluster(),
            "outbound|9411||zipkin.istio-system.svc.cluster.local"
        );
    }

    #[test]
    fn sampling_and_address_are_read() {
        let m = MeshConfig::from_yaml(
            "enableTracing: true\ndefaultConfig:\n  tracing:\n    sampling: 100\n    zipkin: {address: collector.observability:9412}\n",
        )
        .unwrap();
        let t = m.tracing.unwrap();
        assert_eq!(t.sampling_percent(), 100.0);
        assert_eq!(
            t.collector_cluster(),
            "outbound|9412||collector.observability.svc.cluster.local"
        );
        assert!(m.tracing_explicit);
        assert!(
            MeshConfig::from_yaml("enableTracing: false")
                .unwrap()
                .tracing
                .is_none()
        );
    }

    #[test]
    fn extension_provider_selected_by_default_providers() {
        let m = MeshConfig::from_yaml(
            "extensionProviders:\n- name: zk\n  zipkin: {service: zipkin.tracing.svc.cluster.local, port: 9411, enable64bitTraceId: true}\ndefaultProviders: {tracing: [zk]}\n",
        )
        .unwrap();
        let t = m.tracing.unwrap();
        assert_eq!(t.service, "zipkin.tracing.svc.cluster.local");
        assert!(t.trace_id_64bit);
    }

    #[test]
    fn opentelemetry_provider_is_read() {
        let m = MeshConfig::from_yaml(
            "extensionProviders:\n- name: otel\n  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317}\ndefaultProviders: {tracing: [otel]}\n",
        )
        .unwrap();
        let t = m.tracing.unwrap();
        assert_eq!(t.collector, Collector::OpenTelemetry);
        assert_eq!(
            t.collector_cluster(),
            "outbound|4317||otel.observability.svc.cluster.local"
        );
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let e = MeshConfig::from_yaml("outboundTrafficPolicy: {mode: REGISTRY_ONLY}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("outboundTrafficPolicy"), "{e}");
        let e = MeshConfig::from_yaml(
            "extensionProviders:\n- name: otel\n  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317, http: {path: /v1/traces}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("extensionProviders[0].opentelemetry"), "{e}");
        let e = MeshConfig::from_yaml("defaultConfig: {tracing: {sampling: 150}}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("defaultConfig.tracing.sampling"), "{e}");
        let e = MeshConfig::from_yaml("defaultProviders: {tracing: [nope]}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
