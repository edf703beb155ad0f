//! Listeners: validated from `envoy.config.listener.v3.Listener`, bound (or not, `bind_to_port`),
//! accepting connections and handing each to the filter chain that matches it.

/// A listener Ferry cannot accept; becomes the NACK's `error_detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("listener {name}: {field}: {reason}")]
pub struct InvalidListener {
    /// The listener name.
    pub name: String,
    /// The field path, e.g. `filter_chains[0].filters[1].typed_config`.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
}

/// A validated listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// The listener's xDS name (`virtualOutbound`, `0.0.0.0_9080`...).
    pub name: String,
    /// Route configuration names fetched over RDS (minimal stand-in until proxy-core's
    /// listener conversion merges).
    rds: Vec<String>,
}

impl Listener {
    /// The route configuration names its HTTP connection managers fetch over RDS.
    pub fn rds_names(&self) -> Vec<String> {
        self.rds.clone()
    }
}

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

impl TryFrom<&xds_proto::envoy::config::listener::v3::Listener> for Listener {
    type Error = InvalidListener;
    fn try_from(
        listener: &xds_proto::envoy::config::listener::v3::Listener,
    ) -> Result<Self, InvalidListener> {
        use xds_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, http_connection_manager::RouteSpecifier,
        };
        let invalid = |field: String, reason: String| InvalidListener {
            name: listener.name.clone(),
            field,
            reason,
        };
        let mut rds = Vec::new();
        for (i, chain) in listener.filter_chains.iter().enumerate() {
            for (j, filter) in chain.filters.iter().enumerate() {
                let field = format!("filter_chains[{i}].filters[{j}].typed_config");
                let Some(xds_proto::envoy::config::listener::v3::filter::ConfigType::TypedConfig(
                    any,
                )) = &filter.config_type
                else {
                    return Err(invalid(field, "missing".into()));
                };
                match any.type_url.as_str() {
                    HCM => {
                        let hcm: HttpConnectionManager = xds_proto::any::unpack(any)
                            .map_err(|e| invalid(field.clone(), e.to_string()))?;
                        if let Some(RouteSpecifier::Rds(r)) = hcm.route_specifier {
                            rds.push(r.route_config_name);
                        }
                    }
                    TCP_PROXY => {}
                    other => {
                        return Err(invalid(
                            field,
                            format!("unsupported network filter {other}"),
                        ));
                    }
                }
            }
        }
        Ok(Self {
            name: listener.name.clone(),
            rds,
        })
    }
}
