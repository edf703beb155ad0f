use super::*;
use xds_proto::envoy::config::trace::v3::tracing::{Http, http::ConfigType};
use xds_proto::envoy::config::trace::v3::ZipkinConfig as ZipkinProto;
use xds_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use xds_proto::envoy::r#type::tracing::v3::{CustomTag as TagProto, custom_tag};
use xds_proto::envoy::r#type::v3::Percent;

pub(super) fn zipkin_proto() -> ZipkinProto {
    ZipkinProto {
        collector_cluster: "outbound|9411||zipkin.istio-system.svc.cluster.local".into(),
        collector_endpoint: "/api/v2/spans".into(),
        collector_endpoint_version: 1,
        trace_id_128bit: true,
        shared_span_context: Some(xds_proto::google::protobuf::BoolValue { value: false }),
        collector_hostname: "zipkin.istio-system.svc.cluster.local".into(),
        ..Default::default()
    }
}

pub(super) fn provider(z: &ZipkinProto) -> Http {
    Http {
        name: "envoy.tracers.zipkin".into(),
        config_type: Some(ConfigType::TypedConfig(xds_proto::any::pack(z))),
    }
}

pub(super) fn zipkin_provider() -> Http {
    provider(&zipkin_proto())
}

fn istio_tracing() -> Tracing {
    let literal = |tag: &str, value: &str| TagProto {
        tag: tag.into(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal {
            value: value.into(),
        })),
    };
    Tracing {
        client_sampling: Some(Percent { value: 100.0 }),
        random_sampling: Some(Percent { value: 100.0 }),
        overall_sampling: Some(Percent { value: 100.0 }),
        custom_tags: vec![
            literal("istio.canonical_service", "reviews"),
            TagProto {
                tag: "istio.authorization.dry_run.allow_policy.name".into(),
                r#type: Some(custom_tag::Type::Metadata(custom_tag::Metadata::default())),
            },
            TagProto {
                tag: "tenant".into(),
                r#type: Some(custom_tag::Type::RequestHeader(custom_tag::Header {
                    name: "x-tenant".into(),
                    default_value: "none".into(),
                })),
            },
        ],
        provider: Some(zipkin_provider()),
        ..Default::default()
    }
}

#[test]
fn istio_tracing_block_is_accepted() {
    let c = TracingConfig::from_proto(&istio_tracing()).unwrap();
    assert_eq!(c.random_sampling, 100.0);
    assert_eq!(c.max_path_tag_length, 256);
    let provider = c.provider.as_deref().unwrap();
    let Provider::Zipkin(z) = provider else {
        panic!("zipkin expected");
    };
    assert!(!provider.shared_span_context());
    assert!(provider.trace_id_128bit());
    assert_eq!(
        z.collector_hostname,
        "zipkin.istio-system.svc.cluster.local"
    );
    // The metadata tag has no value on a proxy without dynamic metadata: dropped.
    let tags: Vec<_> = c.custom_tags.iter().map(|t| t.tag.as_str()).collect();
    assert_eq!(tags, ["istio.canonical_service", "tenant"]);
}

#[test]
fn unsupported_tracing_is_refused_naming_the_field() {
    let refused = |t: Tracing| TracingConfig::from_proto(&t).unwrap_err().to_string();
    let mut z = zipkin_proto();
    z.collector_endpoint_version = 2;
    let e = refused(Tracing {
        provider: Some(provider(&z)),
        ..istio_tracing()
    });
    assert!(
        e.contains("collector_endpoint_version") && e.contains("HTTP_JSON"),
        "{e}"
    );
    let mut z = zipkin_proto();
    z.collector_cluster.clear();
    let e = refused(Tracing {
        provider: Some(provider(&z)),
        ..istio_tracing()
    });
    assert!(e.contains("collector_cluster"), "{e}");
    let other = Http {
        name: "envoy.tracers.datadog".into(),
        config_type: Some(ConfigType::TypedConfig(xds_proto::google::protobuf::Any {
            type_url: "type.googleapis.com/envoy.config.trace.v3.DatadogConfig".into(),
            value: vec![],
        })),
    };
    let e = refused(Tracing {
        provider: Some(other),
        ..istio_tracing()
    });
    assert!(
        e.contains("tracing.provider") && e.contains("envoy.tracers.datadog"),
        "{e}"
    );
    let e = refused(Tracing {
        random_sampling: Some(Percent { value: 101.0 }),
        ..istio_tracing()
    });
    assert!(e.contains("random_sampling"), "{e}");
    let e = refused(Tracing {
        verbose: true,
        ..istio_tracing()
    });
    assert!(e.contains("verbose"), "{e}");
}

#[test]
fn tracing_without_provider_uses_the_bootstrap_tracer_or_none() {
    let t = Tracing {
        provider: None,
        ..istio_tracing()
    };
    let config = TracingConfig::from_proto(&t).unwrap();
    assert_eq!(config.provider, None);
    let stats = TracingStats::new(&Store::default(), "p");
    let mut parts = request(&[]);
    assert!(
        tracer()
            .start(&config, &stats, info(Kind::Client), &mut parts)
            .is_none()
    );
    assert!(!parts.headers.contains_key("x-b3-traceid"));
    let bootstrap = xds_proto::envoy::config::trace::v3::Tracing {
        http: Some(zipkin_provider()),
    };
    let default = config::bootstrap_provider(&bootstrap).unwrap();
    let tracer = tracer().with_default_provider(default);
    let span = tracer
        .start(&config, &stats, info(Kind::Client), &mut parts)
        .unwrap();
    assert!(span.sampled());
    assert_eq!(
        parts.headers["x-b3-traceid"],
        span.trace_id().to_hex().as_str()
    );
}

/// A fresh UUID v4 request id (version nibble `4`), as the HCM generates before tracing.
const REQUEST_ID: &str = "0a1b2c3d-1111-4222-a333-444455556666";

/// A request with `headers`, and [`REQUEST_ID`] when they have no `x-request-id`.
fn request(headers: &[(&'static str, &'static str)]) -> http::request::Parts {
    let mut builder = http::Request::builder().uri("/reviews/1?x=1");
    if !headers.iter().any(|(k, _)| *k == "x-request-id") {
        builder = builder.header("x-request-id", REQUEST_ID);
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(()).unwrap().into_parts().0
}

fn info(kind: Kind) -> RequestInfo<'static> {
    RequestInfo {
        kind,
        peer: "10.0.0.2:40000".parse().unwrap(),
        local: "10.0.0.1:15001".parse().unwrap(),
        force: false,
        authority: "reviews:9080",
        request_id: Default::default(),
    }
}

fn tracer() -> Tracer {
    let node = LocalNode {
        id: "sidecar~10.0.0.1~productpage.default~default.svc.cluster.local".into(),
        cluster: "productpage.default".into(),
    };
    Tracer::new(node, Weak::new(), Arc::new(Store::default()))
}

#[test]
fn client_then_server_span_chain_over_b3() {
    let tracer = tracer();
    let config = TracingConfig::from_proto(&istio_tracing()).unwrap();
    let store = Store::default();
    let stats = TracingStats::new(&store, "outbound_0.0.0.0_9080");
    let mut outbound = request(&[("x-tenant", "t1")]);
    let client = tracer
        .start(&config, &stats, info(Kind::Client), &mut outbound)
        .unwrap();
    assert!(client.sampled());
    assert_eq!(client.trace_id().to_hex().len(), 32);
    assert_eq!(outbound.headers["x-b3-sampled"], "1");
    assert!(!outbound.headers.contains_key("x-b3-parentspanid"));
    // The next hop's inbound sidecar continues the trace with a child span.
    let mut inbound = request(&[]);
    inbound.headers = outbound.headers.clone();
    let server = tracer
        .start(&config, &stats, info(Kind::Server), &mut inbound)
        .unwrap();
    assert_eq!(server.trace_id(), client.trace_id());
    assert_eq!(server.parent_id, Some(client.id));
    assert_ne!(server.id, client.id);
    assert_eq!(
        inbound.headers["x-b3-parentspanid"],
        context::span_id_hex(client.id).as_str()
    );
    let client_id = client.id;
    let span = client.into_span(&tracer.node, StatusCode::SERVICE_UNAVAILABLE, "UH");
    let tags: std::collections::HashMap<_, _> = span.tags.iter().cloned().collect();
    assert_eq!(tags["http.method"], "GET");
    assert_eq!(tags["http.url"], "http://reviews:9080/reviews/1?x=1");
    assert_eq!(tags["http.status_code"], "503");
    assert_eq!(tags["response_flags"], "UH");
    assert_eq!(tags["component"], "proxy");
    assert_eq!(tags["error"], "true");
    // The id carries the decision (`9`: random sampling), as Envoy's UUID extension packs it.
    assert_eq!(
        tags["guid:x-request-id"],
        "0a1b2c3d-1111-9222-a333-444455556666"
    );
    assert_eq!(tags["istio.canonical_service"], "reviews");
    assert_eq!(tags["tenant"], "t1");
    assert_eq!(tags["node_id"], tracer.node.id.as_ref());
    assert_eq!(span.id, client_id);
    assert_eq!(span.kind, Kind::Client);
    assert_eq!(
        store
            .counter("http.outbound_0.0.0.0_9080.tracing.random_sampling")
            .get(),
        2
    );
}

#[test]
fn incoming_unsampled_decision_propagates_and_is_not_reported() {
    let tracer = tracer();
    let config = TracingConfig::from_proto(&istio_tracing()).unwrap();
    let stats = TracingStats::new(&Store::default(), "p");
    let mut parts = request(&[
        ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ("x-b3-sampled", "0"),
    ]);
    let span = tracer
        .start(&config, &stats, info(Kind::Server), &mut parts)
        .unwrap();
    assert!(!span.sampled());
    assert_eq!(parts.headers["x-b3-sampled"], "0");
    assert_eq!(
        parts.headers["x-b3-traceid"],
        "463ac35c9f6413ad48485a3953bb6124"
    );
    assert!(parts.extensions.get::<Arc<SpanSlot>>().is_none());
}

#[test]
fn max_path_tag_length_cuts_the_url() {
    let tracer = tracer();
    let mut t = istio_tracing();
    t.max_path_tag_length = Some(xds_proto::google::protobuf::UInt32Value { value: 20 });
    let config = TracingConfig::from_proto(&t).unwrap();
    let stats = TracingStats::new(&Store::default(), "p");
    let mut parts = request(&[]);
    let span = tracer
        .start(&config, &stats, info(Kind::Client), &mut parts)
        .unwrap();
    let url = span.tags.iter().find(|(k, _)| k == "http.url").unwrap();
    assert_eq!(url.1, "http://reviews:9080/");
}

fn otel_provider(grpc: Option<xds_proto::envoy::config::core::v3::GrpcService>) -> Http {
    use xds_proto::envoy::config::trace::v3::OpenTelemetryConfig as Proto;
    let o = Proto {
        grpc_service: grpc,
        service_name: "reviews.default".into(),
        ..Default::default()
    };
    Http {
        name: "envoy.tracers.opentelemetry".into(),
        config_type: Some(ConfigType::TypedConfig(xds_proto::any::pack(&o))),
    }
}

#[test]
fn opentelemetry_over_an_envoy_grpc_cluster_is_accepted_and_uses_w3c() {
    use xds_proto::envoy::config::core::v3::{GrpcService, grpc_service};
    let grpc = GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
            grpc_service::EnvoyGrpc {
                cluster_name: "outbound|4317||otel.observability.svc.cluster.local".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let t = Tracing {
        provider: Some(otel_provider(Some(grpc))),
        ..istio_tracing()
    };
    let config = TracingConfig::from_proto(&t).unwrap();
    let Some(Provider::OpenTelemetry(o)) = config.provider.as_deref() else {
        panic!("opentelemetry expected");
    };
    assert_eq!(o.service_name, "reviews.default");
    assert_eq!(o.authority, o.cluster);
    let tracer = tracer();
    let stats = TracingStats::new(&Store::default(), "p");
    let mut parts = request(&[]);
    let span = tracer
        .start(&config, &stats, info(Kind::Client), &mut parts)
        .unwrap();
    let traceparent = parts.headers["traceparent"].to_str().unwrap();
    assert!(traceparent.starts_with(&format!("00-{}-", span.trace_id().to_hex())));
    assert!(traceparent.ends_with("-01"));
    assert!(!parts.headers.contains_key("x-b3-traceid"));

    let refused = TracingConfig::from_proto(&Tracing {
        provider: Some(otel_provider(None)),
        ..istio_tracing()
    })
    .unwrap_err()
    .to_string();
    assert!(refused.contains("grpc_service"), "{refused}");
    let google = GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::GoogleGrpc(Default::default())),
        ..Default::default()
    };
    let refused = TracingConfig::from_proto(&Tracing {
        provider: Some(otel_provider(Some(google))),
        ..istio_tracing()
    })
    .unwrap_err()
    .to_string();
    assert!(refused.contains("envoy_grpc"), "{refused}");
}

#[test]
fn the_decision_travels_in_x_request_id() {
    let tracer = tracer();
    let store = Store::default();
    let stats = TracingStats::new(&store, "p");
    let never = TracingConfig::from_proto(&Tracing {
        random_sampling: Some(Percent { value: 0.0 }),
        ..istio_tracing()
    })
    .unwrap();
    // A fresh id at 0%: not traced, and the id is left as it is.
    let mut fresh = request(&[]);
    let span = tracer
        .start(&never, &stats, info(Kind::Client), &mut fresh)
        .unwrap();
    assert!(!span.sampled());
    assert_eq!(fresh.headers["x-request-id"], REQUEST_ID);
    // An id an earlier hop packed (`9`) is traced here too, whatever this hop's percentage.
    let mut packed = request(&[("x-request-id", "0a1b2c3d-1111-9222-a333-444455556666")]);
    assert!(
        tracer
            .start(&never, &stats, info(Kind::Server), &mut packed)
            .unwrap()
            .sampled()
    );
    // A forced request is packed with `a`, and with `pack_trace_reason: false` nothing is.
    let mut forced = request(&[]);
    let force = RequestInfo {
        force: true,
        ..info(Kind::Client)
    };
    assert!(
        tracer
            .start(&never, &stats, force, &mut forced)
            .unwrap()
            .sampled()
    );
    assert_eq!(
        forced.headers["x-request-id"],
        "0a1b2c3d-1111-a222-a333-444455556666"
    );
    let mut unpacked = request(&[]);
    let no_pack = RequestInfo {
        force: true,
        request_id: UuidRequestId {
            pack_trace_reason: false,
            use_request_id_for_trace_sampling: true,
        },
        ..info(Kind::Client)
    };
    tracer
        .start(&never, &stats, no_pack, &mut unpacked)
        .unwrap();
    assert_eq!(unpacked.headers["x-request-id"], REQUEST_ID);
    assert_eq!(store.counter("http.p.tracing.random_sampling").get(), 1);
    assert_eq!(store.counter("http.p.tracing.service_forced").get(), 2);
    assert_eq!(store.counter("http.p.tracing.not_traceable").get(), 1);
}
