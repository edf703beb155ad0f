//! Route configurations: virtual hosts chosen by authority, routes matched in order, and the
//! action each takes. Built once from `envoy.config.route.v3.RouteConfiguration`.

/// A route configuration Ferry cannot accept; becomes the NACK's `error_detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route configuration {name}: {field}: {reason}")]
pub struct InvalidRoute {
    /// The route configuration name.
    pub name: String,
    /// The field path, e.g. `virtual_hosts[0].routes[2].match.safe_regex`.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
}

/// A validated route configuration, ready for matching.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTable {
    /// The route configuration's xDS name (Istio names outbound ones by port, `"9080"`).
    pub name: String,
}

impl TryFrom<&xds_proto::envoy::config::route::v3::RouteConfiguration> for RouteTable {
    type Error = InvalidRoute;
    fn try_from(
        config: &xds_proto::envoy::config::route::v3::RouteConfiguration,
    ) -> Result<Self, InvalidRoute> {
        Ok(Self {
            name: config.name.clone(),
        })
    }
}
