//! Upstream TLS as Istio emits it: Istio mTLS (`ISTIO_MUTUAL` and auto-mTLS) with the workload
//! certificate and trust bundle from SDS (`default`, `ROOTCA` via the bootstrap's `sds-grpc`
//! cluster), SAN checks on the destination's SPIFFE IDs and the `outbound_.PORT_.SUBSET_.HOST`
//! SNI; and DestinationRule `SIMPLE`/`MUTUAL` origination from files.

use std::collections::HashMap;

use xds_proto::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use xds_proto::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, DataSource, GrpcService, TransportSocket,
    api_config_source::ApiType,
    config_source::ConfigSourceSpecifier,
    data_source,
    grpc_service::{EnvoyGrpc, TargetSpecifier},
};
use xds_proto::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use xds_proto::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    TlsCertificate, TlsParameters, UpstreamTlsContext,
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    tls_parameters::TlsProtocol,
};
use xds_proto::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use xds_proto::google::protobuf::{BoolValue, Struct, Value, value::Kind};

use super::envoy::{seconds, transport_socket};
use super::names::{SDS_CLUSTER, SDS_DEFAULT, SDS_ROOT_CA};

/// Transport socket name of TLS.
pub const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
/// Transport socket name of plain text.
pub const RAW_BUFFER_SOCKET: &str = "envoy.transport_sockets.raw_buffer";
/// ALPN Istio offers on mTLS connections between sidecars.
pub const ISTIO_ALPN: [&str; 2] = ["istio-peer-exchange", "istio"];

/// How the sidecar fetches its certificates: SDS over gRPC to the bootstrap's `sds-grpc` cluster.
pub fn sds_config_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(ApiConfigSource {
            api_type: ApiType::Grpc as i32,
            transport_api_version: ApiVersion::V3 as i32,
            grpc_services: vec![GrpcService {
                target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                    cluster_name: SDS_CLUSTER.to_string(),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            set_node_on_first_message_only: true,
            ..Default::default()
        })),
        initial_fetch_timeout: Some(seconds(0)),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(sds_config_source()),
    }
}

fn exact(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Exact(value.to_string())),
        ..Default::default()
    }
}

fn tls_params() -> TlsParameters {
    TlsParameters {
        tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
        tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
        ..Default::default()
    }
}

/// Istio mTLS to a sidecar: SDS `default` + `ROOTCA`, SANs = the destination's SPIFFE IDs.
#[allow(deprecated)]
pub fn istio_mutual(sni: String, sans: &[String]) -> UpstreamTlsContext {
    let validation = CertificateValidationContext {
        match_subject_alt_names: sans.iter().map(|s| exact(s)).collect(),
        ..Default::default()
    };
    UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(tls_params()),
            alpn_protocols: ISTIO_ALPN.iter().map(|s| s.to_string()).collect(),
            tls_certificate_sds_secret_configs: vec![sds(SDS_DEFAULT)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(validation),
                    validation_context_sds_secret_config: Some(sds(SDS_ROOT_CA)),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        sni,
        ..Default::default()
    }
}

/// TLS origination with files (`SIMPLE`, or `MUTUAL` when a client certificate is given) or an
/// SDS secret (`credentialName`, fetched over ADS as `kubernetes://NAME`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origination {
    /// SNI to send.
    pub sni: String,
    /// SANs the server certificate must carry (any of).
    pub subject_alt_names: Vec<String>,
    /// CA bundle file.
    pub ca_certificates: Option<String>,
    /// Client certificate file (MUTUAL).
    pub client_certificate: Option<String>,
    /// Client key file (MUTUAL).
    pub private_key: Option<String>,
    /// Secret name (`credentialName`).
    pub credential_name: Option<String>,
    /// Skip server certificate verification.
    pub insecure_skip_verify: bool,
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// `SIMPLE`/`MUTUAL` as Istio emits them.
#[allow(deprecated)]
pub fn originate(o: &Origination) -> UpstreamTlsContext {
    let mut common = CommonTlsContext {
        tls_params: Some(tls_params()),
        ..Default::default()
    };
    if let (Some(cert), Some(key)) = (&o.client_certificate, &o.private_key) {
        common.tls_certificates.push(TlsCertificate {
            certificate_chain: Some(file(cert)),
            private_key: Some(file(key)),
            ..Default::default()
        });
    }
    if let Some(name) = &o.credential_name {
        common
            .tls_certificate_sds_secret_configs
            .push(SdsSecretConfig {
                name: format!("kubernetes://{name}"),
                sds_config: Some(super::envoy::ads_config_source()),
            });
    }
    if !o.insecure_skip_verify && (o.ca_certificates.is_some() || !o.subject_alt_names.is_empty()) {
        common.validation_context_type = Some(ValidationContextType::ValidationContext(
            CertificateValidationContext {
                trusted_ca: o.ca_certificates.as_deref().map(file),
                match_subject_alt_names: o.subject_alt_names.iter().map(|s| exact(s)).collect(),
                ..Default::default()
            },
        ));
    }
    UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: o.sni.clone(),
        ..Default::default()
    }
}

/// A TLS transport socket.
pub fn tls_socket(context: &UpstreamTlsContext) -> TransportSocket {
    transport_socket(TLS_SOCKET, context)
}

/// A plain-text transport socket.
pub fn raw_buffer_socket() -> TransportSocket {
    transport_socket(RAW_BUFFER_SOCKET, &RawBuffer {})
}

/// Auto-mTLS: Istio mTLS to endpoints whose metadata says `tlsMode: istio`, plain text otherwise.
pub fn auto_mtls_matches(context: &UpstreamTlsContext) -> Vec<TransportSocketMatch> {
    let mut fields = HashMap::new();
    fields.insert(
        "tlsMode".to_string(),
        Value {
            kind: Some(Kind::StringValue("istio".to_string())),
        },
    );
    vec![
        TransportSocketMatch {
            name: "tlsMode-istio".to_string(),
            r#match: Some(Struct { fields }),
            transport_socket: Some(tls_socket(context)),
        },
        TransportSocketMatch {
            name: "tlsMode-disabled".to_string(),
            r#match: Some(Struct::default()),
            transport_socket: Some(raw_buffer_socket()),
        },
    ]
}

/// Istio mTLS accepted on an inbound port (PERMISSIVE's TLS half): the workload certificate,
/// peers verified against the mesh trust bundle.
pub fn inbound_mtls(alpn: &[&str]) -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(tls_params()),
            alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            tls_certificate_sds_secret_configs: vec![sds(SDS_DEFAULT)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext::default()),
                    validation_context_sds_secret_config: Some(sds(SDS_ROOT_CA)),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}
