//! The HCM `tracing` block istiod puts on every sidecar HTTP connection manager when tracing is
//! enabled (an OpenTelemetry extension provider gives `envoy.tracers.opentelemetry` over gRPC
//! instead of Zipkin): sampling from MeshConfig (`client_sampling` and `overall_sampling` 100%,
//! `random_sampling` = `defaultConfig.tracing.sampling`), Istio's service tags as literal custom
//! tags, and the `envoy.tracers.zipkin` provider pointing at the collector's outbound cluster
//! (`outbound|9411||zipkin.istio-system.svc.cluster.local`, v2 JSON at `/api/v2/spans`, 128-bit
//! trace ids, no shared span context).
//!
//! As in istiod, the provider needs the collector's cluster: without it (no such service in
//! the proxy's view) tracing is left off; that is an error only when the mesh config asked for
//! tracing explicitly. Applied as a pass over the finished listeners so the listener builders
//! stay unaware of it.

use xds_proto::envoy::config::cluster::v3::Cluster;
use xds_proto::envoy::config::core::v3::{GrpcService, grpc_service};
use xds_proto::envoy::config::listener::v3::Listener;
use xds_proto::envoy::config::trace::v3::tracing::{Http as TracingHttp, http};
use xds_proto::envoy::config::trace::v3::{OpenTelemetryConfig, ZipkinConfig, zipkin_config};
use xds_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::Tracing,
};
use xds_proto::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use xds_proto::envoy::r#type::v3::Percent;
use xds_proto::google::protobuf::BoolValue;

use super::TranslateError;
use super::envoy::{any, u32_value};
use super::filter_chain::for_each_hcm;
use crate::mesh_config::{Collector, MeshConfig, TracingSettings};
use crate::model::proxy::ProxyNode;

/// Istio's default mesh id (the trust domain) and cluster id.
const DEFAULT_MESH_ID: &str = "cluster.local";
const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

fn label<'a>(proxy: &'a ProxyNode, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| proxy.labels.get(*k))
        .map(String::as_str)
}

/// Istio's `buildServiceTags`: canonical service and revision from the workload's labels, mesh,
/// namespace and cluster ids; sorted by tag.
fn service_tags(proxy: &ProxyNode) -> Vec<CustomTag> {
    let service = label(
        proxy,
        &[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ],
    )
    .unwrap_or(&proxy.pod);
    let revision = label(
        proxy,
        &[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ],
    )
    .unwrap_or("latest");
    let namespace = if proxy.namespace.is_empty() {
        "default"
    } else {
        &proxy.namespace
    };
    let literal = |tag: &str, value: &str| CustomTag {
        tag: tag.to_owned(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal {
            value: value.to_owned(),
        })),
    };
    vec![
        literal("istio.canonical_revision", revision),
        literal("istio.canonical_service", service),
        literal("istio.cluster_id", DEFAULT_CLUSTER_ID),
        literal("istio.mesh_id", DEFAULT_MESH_ID),
        literal("istio.namespace", namespace),
    ]
}

/// The provider istiod generates for an OpenTelemetry extension provider: OTLP over gRPC to
/// the collector's outbound cluster, the workload's `app.namespace` as `service_name`.
fn opentelemetry(settings: &TracingSettings, proxy: &ProxyNode) -> TracingHttp {
    let app = label(proxy, &["app.kubernetes.io/name", "app"]).unwrap_or(&proxy.pod);
    let config = OpenTelemetryConfig {
        grpc_service: Some(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: settings.collector_cluster(),
                    authority: settings.service.clone(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        service_name: format!("{app}.{}", proxy.namespace),
        ..Default::default()
    };
    TracingHttp {
        name: "envoy.tracers.opentelemetry".to_owned(),
        config_type: Some(http::ConfigType::TypedConfig(any(&config))),
    }
}

/// The `tracing` block for `proxy`'s HCMs.
pub fn hcm_tracing(settings: &TracingSettings, proxy: &ProxyNode) -> Tracing {
    let provider = match settings.collector {
        Collector::Zipkin => zipkin(settings),
        Collector::OpenTelemetry => opentelemetry(settings, proxy),
    };
    Tracing {
        client_sampling: Some(Percent { value: 100.0 }),
        random_sampling: Some(Percent {
            value: settings.sampling_percent(),
        }),
        overall_sampling: Some(Percent { value: 100.0 }),
        max_path_tag_length: settings.max_path_tag_length.map(u32_value),
        custom_tags: service_tags(proxy),
        provider: Some(provider),
        ..Default::default()
    }
}

fn zipkin(settings: &TracingSettings) -> TracingHttp {
    let zipkin = ZipkinConfig {
        collector_cluster: settings.collector_cluster(),
        collector_endpoint: "/api/v2/spans".to_owned(),
        collector_endpoint_version: zipkin_config::CollectorEndpointVersion::HttpJson as i32,
        trace_id_128bit: !settings.trace_id_64bit,
        shared_span_context: Some(BoolValue { value: false }),
        collector_hostname: settings.service.clone(),
        ..Default::default()
    };
    TracingHttp {
        name: "envoy.tracers.zipkin".to_owned(),
        config_type: Some(http::ConfigType::TypedConfig(any(&zipkin))),
    }
}

/// Puts the tracing block on every HCM of `listeners` when the mesh traces and the collector
/// cluster is among `clusters`.
pub fn apply(
    mesh: &MeshConfig,
    proxy: &ProxyNode,
    listeners: &mut [Listener],
    clusters: &[Cluster],
    errors: &mut Vec<TranslateError>,
) {
    let Some(settings) = &mesh.tracing else {
        return;
    };
    let cluster = settings.collector_cluster();
    if !clusters.iter().any(|c| c.name == cluster) {
        if mesh.tracing_explicit {
            errors.push(TranslateError::new(
                "MeshConfig",
                "defaultConfig.tracing",
                format!(
                    "the trace collector service {}:{} is not in this proxy's view: tracing not configured",
                    settings.service, settings.port
                ),
            ));
        }
        return;
    }
    let tracing = hcm_tracing(settings, proxy);
    for_each_hcm(listeners, |hcm| hcm.tracing = Some(tracing.clone()));
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::super::tests::{bookinfo, productpage};
    use super::super::{Options, generate};
    use crate::mesh_config::MeshConfig;
    use crate::model::{Model, Protocol, Resolution, Service, ServicePort};

    fn with_zipkin(mut model: Model) -> Model {
        let zipkin = Service {
            hostname: "zipkin.istio-system.svc.cluster.local".into(),
            name: "zipkin".into(),
            namespace: "istio-system".into(),
            addresses: vec!["10.96.0.99".parse().unwrap()],
            ports: vec![ServicePort {
                name: "http-query".into(),
                port: 9411,
                target_port: Some(9411),
                protocol: Protocol::Http,
            }],
            resolution: Resolution::Static,
            mesh_external: false,
            endpoints: vec![],
            export_to: vec![],
        };
        model.services.insert(zipkin.hostname.clone(), zipkin);
        model
    }

    /// Every HCM `tracing` block of the generated listeners.
    fn tracing_blocks(model: &Model, options: &Options) -> (Vec<Value>, usize) {
        let out = generate(model, &productpage(), options);
        let mut blocks = Vec::new();
        let mut hcms = 0;
        for l in &out.listeners {
            let l = xds_proto::json::to_value(l).unwrap();
            let chains = l["filter_chains"].as_array().cloned().unwrap_or_default();
            for chain in chains {
                for f in chain["filters"].as_array().cloned().unwrap_or_default() {
                    if f["name"] == super::super::filter_chain::HCM {
                        hcms += 1;
                        if !f["typed_config"]["tracing"].is_null() {
                            blocks.push(f["typed_config"]["tracing"].clone());
                        }
                    }
                }
            }
        }
        (blocks, hcms)
    }

    #[test]
    fn every_hcm_traces_to_the_zipkin_service_as_istiod_configures_it() {
        let (blocks, hcms) = tracing_blocks(&with_zipkin(bookinfo()), &Options::default());
        assert!(hcms >= 2, "inbound and outbound HCMs");
        assert_eq!(blocks.len(), hcms, "every HCM gets tracing");
        let t = &blocks[0];
        assert_eq!(t["random_sampling"]["value"], 1.0);
        assert_eq!(t["client_sampling"]["value"], 100.0);
        assert_eq!(t["overall_sampling"]["value"], 100.0);
        let p = &t["provider"];
        assert_eq!(p["name"], "envoy.tracers.zipkin");
        let z = &p["typed_config"];
        assert_eq!(
            z["collector_cluster"],
            "outbound|9411||zipkin.istio-system.svc.cluster.local"
        );
        assert_eq!(z["collector_endpoint"], "/api/v2/spans");
        assert_eq!(z["collector_endpoint_version"], "HTTP_JSON");
        assert_eq!(z["trace_id_128bit"], true);
        assert_eq!(z["shared_span_context"], false);
        let tags: Vec<(String, String)> = t["custom_tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["tag"].as_str().unwrap().to_owned(),
                    c["literal"]["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let want = [
            ("istio.canonical_revision", "v1"),
            ("istio.canonical_service", "productpage"),
            ("istio.cluster_id", "Kubernetes"),
            ("istio.mesh_id", "cluster.local"),
            ("istio.namespace", "default"),
        ];
        assert_eq!(
            tags,
            want.map(|(a, b)| (a.to_owned(), b.to_owned())).to_vec()
        );
    }

    #[test]
    fn no_collector_service_means_no_tracing_and_an_error_only_when_asked_for() {
        let (blocks, _) = tracing_blocks(&bookinfo(), &Options::default());
        assert!(blocks.is_empty());
        assert!(
            generate(&bookinfo(), &productpage(), &Options::default())
                .errors
                .is_empty()
        );
        let options = Options {
            mesh: MeshConfig::from_yaml("defaultConfig: {tracing: {sampling: 100}}").unwrap(),
            ..Options::default()
        };
        let out = generate(&bookinfo(), &productpage(), &options);
        assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
        assert!(
            out.errors[0].reason.contains("zipkin.istio-system"),
            "{}",
            out.errors[0]
        );
        let disabled = Options {
            mesh: MeshConfig::from_yaml("enableTracing: false").unwrap(),
            ..Options::default()
        };
        assert!(
            tracing_blocks(&with_zipkin(bookinfo()), &disabled)
                .0
                .is_empty()
        );
    }

    #[test]
    fn an_opentelemetry_provider_exports_over_grpc_to_its_cluster() {
        let mut model = bookinfo();
        let mut otel = with_zipkin(Model::default())
            .services
            .into_values()
            .next()
            .unwrap();
        otel.hostname = "otel.observability.svc.cluster.local".into();
        otel.namespace = "observability".into();
        otel.ports[0].port = 4317;
        otel.ports[0].protocol = Protocol::Grpc;
        model.services.insert(otel.hostname.clone(), otel);
        let options = Options {
            mesh: MeshConfig::from_yaml(
                "extensionProviders:\n- name: otel\n  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317}\ndefaultProviders: {tracing: [otel]}\n",
            )
            .unwrap(),
            ..Options::default()
        };
        let (blocks, hcms) = tracing_blocks(&model, &options);
        assert_eq!(blocks.len(), hcms);
        let p = &blocks[0]["provider"];
        assert_eq!(p["name"], "envoy.tracers.opentelemetry");
        let grpc = &p["typed_config"]["grpc_service"]["envoy_grpc"];
        assert_eq!(
            grpc["cluster_name"],
            "outbound|4317||otel.observability.svc.cluster.local"
        );
        assert_eq!(p["typed_config"]["service_name"], "productpage.default");
    }
}
