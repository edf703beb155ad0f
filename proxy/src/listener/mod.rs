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
}

impl Listener {
    /// The route configuration names its HTTP connection managers fetch over RDS.
    pub fn rds_names(&self) -> Vec<String> {
        Vec::new()
    }
}

impl TryFrom<&xds_proto::envoy::config::listener::v3::Listener> for Listener {
    type Error = InvalidListener;
    fn try_from(
        listener: &xds_proto::envoy::config::listener::v3::Listener,
    ) -> Result<Self, InvalidListener> {
        Err(InvalidListener {
            name: listener.name.clone(),
            field: "filter_chains".into(),
            reason: "listeners are not implemented yet".into(),
        })
    }
}
