//! Where the ADS client connects and how it talks, read from the bootstrap's
//! `dynamic_resources`: the `ads_config` (`api_type` GRPC or DELTA_GRPC, the gRPC service, which
//! is an `envoy_grpc` static cluster such as Istio's `xds-grpc` or a `google_grpc` target URI) and
//! which of LDS/CDS come from ADS. Anything Ferry cannot honour is refused with the field named.

use std::net::IpAddr;
use std::time::Duration;

use xds_proto::envoy::config::bootstrap::v3::Bootstrap;
use xds_proto::envoy::config::core::v3::api_config_source::ApiType as ApiTypeProto;
use xds_proto::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use xds_proto::envoy::config::core::v3::grpc_service::TargetSpecifier;
use xds_proto::envoy::config::core::v3::{ConfigSource, Node, address, socket_address};
use xds_proto::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;

use super::resources::initial_fetch_timeout;

/// The ADS flavour (`api_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiType {
    /// State of the world: `StreamAggregatedResources` (`GRPC`, `AGGREGATED_GRPC`).
    Sotw,
    /// Incremental: `DeltaAggregatedResources` (`DELTA_GRPC`, `AGGREGATED_DELTA_GRPC`).
    Delta,
}

/// The bootstrap's ADS settings, validated.
#[derive(Debug, Clone)]
pub struct AdsConfig {
    /// The control plane's gRPC URI (`http://127.0.0.1:15010`).
    pub target: String,
    /// SotW or delta.
    pub api_type: ApiType,
    /// The node sent to the control plane.
    pub node: Node,
    /// Send the node on the first request of a stream only (Istio sets this).
    pub node_on_first_message_only: bool,
    /// Whether LDS comes from ADS.
    pub lds: bool,
    /// Whether CDS comes from ADS.
    pub cds: bool,
    /// How long initialization waits for the first LDS and CDS responses (`None`: forever).
    pub init_timeout: Option<Duration>,
}

/// A bootstrap field the xDS client cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bootstrap {field}: {reason}")]
pub struct InvalidAdsConfig {
    /// The field path, e.g. `dynamic_resources.ads_config.api_type`.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidAdsConfig {
    InvalidAdsConfig {
        field: field.into(),
        reason: reason.into(),
    }
}

fn uses_ads(source: Option<&ConfigSource>, field: &str) -> Result<bool, InvalidAdsConfig> {
    match source.map(|s| &s.config_source_specifier) {
        None => Ok(false),
        Some(Some(ConfigSourceSpecifier::Ads(_))) => Ok(true),
        Some(_) => Err(invalid(
            format!("dynamic_resources.{field}"),
            "only `ads` config sources are implemented",
        )),
    }
}

impl AdsConfig {
    /// The ADS settings of a bootstrap; `None` when it has no dynamic resources.
    pub fn from_bootstrap(bootstrap: &Bootstrap) -> Result<Option<Self>, InvalidAdsConfig> {
        let Some(dynamic) = &bootstrap.dynamic_resources else {
            return Ok(None);
        };
        let lds = uses_ads(dynamic.lds_config.as_ref(), "lds_config")?;
        let cds = uses_ads(dynamic.cds_config.as_ref(), "cds_config")?;
        if !lds && !cds {
            return Ok(None);
        }
        let ads = dynamic
            .ads_config
            .as_ref()
            .ok_or_else(|| invalid("dynamic_resources.ads_config", "missing"))?;
        let api_type = match ApiTypeProto::try_from(ads.api_type) {
            Ok(ApiTypeProto::Grpc | ApiTypeProto::AggregatedGrpc) => ApiType::Sotw,
            Ok(ApiTypeProto::DeltaGrpc | ApiTypeProto::AggregatedDeltaGrpc) => ApiType::Delta,
            _ => {
                return Err(invalid(
                    "dynamic_resources.ads_config.api_type",
                    format!("{} is not supported (GRPC or DELTA_GRPC)", ads.api_type),
                ));
            }
        };
        let service = ads
            .grpc_services
            .first()
            .ok_or_else(|| invalid("dynamic_resources.ads_config.grpc_services", "missing"))?;
        let target = match &service.target_specifier {
            Some(TargetSpecifier::EnvoyGrpc(envoy)) => {
                cluster_target(bootstrap, &envoy.cluster_name)?
            }
            Some(TargetSpecifier::GoogleGrpc(google)) => {
                if google.channel_credentials.is_some() {
                    return Err(invalid(
                        "dynamic_resources.ads_config.grpc_services[0].google_grpc.channel_credentials",
                        "TLS to the control plane is not implemented",
                    ));
                }
                if google.target_uri.contains("://") {
                    google.target_uri.clone()
                } else {
                    format!("http://{}", google.target_uri)
                }
            }
            None => {
                return Err(invalid(
                    "dynamic_resources.ads_config.grpc_services[0]",
                    "neither envoy_grpc nor google_grpc is set",
                ));
            }
        };
        let lds_timeout = initial_fetch_timeout(dynamic.lds_config.as_ref());
        let cds_timeout = initial_fetch_timeout(dynamic.cds_config.as_ref());
        let init_timeout = match (lds.then_some(lds_timeout), cds.then_some(cds_timeout)) {
            (Some(None), _) | (_, Some(None)) => None,
            (a, b) => a.flatten().max(b.flatten()),
        };
        Ok(Some(Self {
            target,
            api_type,
            node: bootstrap.node.clone().unwrap_or_default(),
            node_on_first_message_only: ads.set_node_on_first_message_only,
            lds,
            cds,
            init_timeout,
        }))
    }
}

/// `http://HOST:PORT` of the first endpoint of the named static cluster.
fn cluster_target(bootstrap: &Bootstrap, name: &str) -> Result<String, InvalidAdsConfig> {
    let field = "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name";
    let cluster = bootstrap
        .static_resources
        .as_ref()
        .and_then(|s| s.clusters.iter().find(|c| c.name == name))
        .ok_or_else(|| invalid(field, format!("no static cluster named {name}")))?;
    if cluster.transport_socket.is_some() {
        return Err(invalid(
            format!("static_resources.clusters[{name}].transport_socket"),
            "TLS to the control plane is not implemented",
        ));
    }
    let socket = cluster
        .load_assignment
        .as_ref()
        .and_then(|la| la.endpoints.first())
        .and_then(|locality| locality.lb_endpoints.first())
        .and_then(|lb| match &lb.host_identifier {
            Some(HostIdentifier::Endpoint(endpoint)) => endpoint.address.as_ref(),
            _ => None,
        })
        .and_then(|address| match &address.address {
            Some(address::Address::SocketAddress(socket)) => Some(socket),
            _ => None,
        })
        .ok_or_else(|| {
            invalid(
                format!("static_resources.clusters[{name}].load_assignment"),
                "no endpoint with a socket_address",
            )
        })?;
    let Some(socket_address::PortSpecifier::PortValue(port)) = socket.port_specifier else {
        return Err(invalid(
            format!("static_resources.clusters[{name}].load_assignment"),
            "the endpoint has no port_value",
        ));
    };
    let host = match socket.address.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => socket.address.clone(),
    };
    Ok(format!("http://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap(yaml: &str) -> Bootstrap {
        xds_proto::json::from_yaml_str(yaml).unwrap()
    }

    const ISTIO_LIKE: &str = r#"
node: { id: "sidecar~10.0.0.1~app.default~default.svc.cluster.local" }
dynamic_resources:
  lds_config: { ads: {}, initial_fetch_timeout: 0s, resource_api_version: V3 }
  cds_config: { ads: {}, initial_fetch_timeout: 0s, resource_api_version: V3 }
  ads_config:
    api_type: DELTA_GRPC
    set_node_on_first_message_only: true
    transport_api_version: V3
    grpc_services: [ { envoy_grpc: { cluster_name: xds-grpc } } ]
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 15010 } } } } ] } ]
"#;

    #[test]
    fn istio_like_bootstrap() {
        let config = AdsConfig::from_bootstrap(&bootstrap(ISTIO_LIKE))
            .unwrap()
            .unwrap();
        assert_eq!(config.target, "http://127.0.0.1:15010");
        assert_eq!(config.api_type, ApiType::Delta);
        assert!(config.node_on_first_message_only && config.lds && config.cds);
        assert_eq!(config.init_timeout, None);
    }

    #[test]
    fn no_dynamic_resources_is_none_and_bad_fields_are_named() {
        assert!(
            AdsConfig::from_bootstrap(&Bootstrap::default())
                .unwrap()
                .is_none()
        );
        let rest = ISTIO_LIKE.replace("DELTA_GRPC", "REST");
        let err = AdsConfig::from_bootstrap(&bootstrap(&rest)).unwrap_err();
        assert_eq!(err.field, "dynamic_resources.ads_config.api_type");
        let missing = ISTIO_LIKE.replace("cluster_name: xds-grpc }", "cluster_name: nope }");
        let err = AdsConfig::from_bootstrap(&bootstrap(&missing)).unwrap_err();
        assert!(
            err.to_string().contains("no static cluster named nope"),
            "{err}"
        );
    }
}
