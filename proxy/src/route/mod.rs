//! Route configurations: virtual hosts chosen by authority, routes matched in order, and the
//! action each takes. Built once from `envoy.config.route.v3.RouteConfiguration`; matching is
//! pure and allocation-free for the common cases, so the HTTP connection manager can call it per
//! request on the snapshot it loaded.
//!
//! Anything in the proto that changes behaviour and is not implemented here is refused with an
//! [`InvalidRoute`] naming the field; pure metadata (names, stat prefixes, decorators) is accepted.

pub mod action;
pub mod header_mutation;
pub mod matcher;
pub mod max_stream_duration;
mod virtual_host;

use std::time::Duration;

use xds_proto::envoy::config::route::v3 as route_pb;

pub use crate::retry::RetryPolicy;
pub use action::{Action, ClusterSpecifier, DirectResponse, Forward, Redirect, WeightedCluster};
pub use header_mutation::HeaderMutation;
pub use matcher::RequestHead;
pub use max_stream_duration::MaxStreamDuration;
pub use virtual_host::{DomainIndex, Route, RouteMatch, VirtualHost};

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

/// A field-level error before the owning resource's name is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub(crate) field: String,
    pub(crate) reason: String,
}

impl Invalid {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn route(self, name: &str) -> InvalidRoute {
        InvalidRoute {
            name: name.to_owned(),
            field: self.field,
            reason: self.reason,
        }
    }
}

/// Converts a protobuf duration, refusing negative ones.
pub(crate) fn duration(
    d: &xds_proto::google::protobuf::Duration,
    field: &str,
) -> Result<Duration, Invalid> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(Invalid::new(field, "duration must not be negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A validated route configuration, ready for matching.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTable {
    /// The route configuration's xDS name (Istio names outbound ones by port, `"9080"`).
    pub name: String,
    /// Virtual hosts in config order.
    pub virtual_hosts: Vec<VirtualHost>,
    domains: DomainIndex,
    /// Strip the port from the authority before matching domains.
    pub ignore_port_in_host_matching: bool,
    /// Headers removed from requests that come from outside (`internal_only_headers`).
    pub internal_only_headers: Vec<http::HeaderName>,
    /// Route-configuration level request headers.
    pub request_headers: HeaderMutation,
    /// Route-configuration level response headers.
    pub response_headers: HeaderMutation,
    /// Apply the most specific level last (it wins on overwrite).
    pub most_specific_header_mutations_wins: bool,
}

/// A matched route and its virtual host.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    /// The virtual host.
    pub virtual_host: &'a VirtualHost,
    /// The route.
    pub route: &'a Route,
}

impl RouteTable {
    /// The virtual host for an authority, by Envoy's domain rules.
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let host = if self.ignore_port_in_host_matching {
            action::split_host_port(authority).0
        } else {
            authority
        };
        self.domains
            .find(&host.to_ascii_lowercase())
            .map(|i| &self.virtual_hosts[i])
    }

    /// The first route of the matching virtual host that matches the request.
    pub fn route(&self, req: &RequestHead<'_>) -> Option<Selected<'_>> {
        let virtual_host = self.virtual_host(req.authority)?;
        let route = virtual_host
            .routes
            .iter()
            .find(|r| r.matcher.matches(req))?;
        Some(Selected {
            virtual_host,
            route,
        })
    }

    /// Applies request header mutations of every level (weighted cluster, route, virtual host,
    /// route configuration) in Envoy's order.
    pub fn mutate_request(
        &self,
        selected: &Selected<'_>,
        weighted: Option<&WeightedCluster>,
        headers: &mut http::HeaderMap,
    ) {
        let levels = [
            weighted.map(|w| &w.request_headers),
            Some(&selected.route.request_headers),
            Some(&selected.virtual_host.request_headers),
            Some(&self.request_headers),
        ];
        self.apply(levels, headers);
    }

    /// Applies response header mutations of every level in Envoy's order.
    pub fn mutate_response(
        &self,
        selected: &Selected<'_>,
        weighted: Option<&WeightedCluster>,
        headers: &mut http::HeaderMap,
    ) {
        let levels = [
            weighted.map(|w| &w.response_headers),
            Some(&selected.route.response_headers),
            Some(&selected.virtual_host.response_headers),
            Some(&self.response_headers),
        ];
        self.apply(levels, headers);
    }

    fn apply(&self, levels: [Option<&HeaderMutation>; 4], headers: &mut http::HeaderMap) {
        let levels = levels.into_iter().flatten();
        if self.most_specific_header_mutations_wins {
            levels.rev().for_each(|m| m.apply(headers));
        } else {
            levels.for_each(|m| m.apply(headers));
        }
    }
}

impl TryFrom<&route_pb::RouteConfiguration> for RouteTable {
    type Error = InvalidRoute;
    fn try_from(config: &route_pb::RouteConfiguration) -> Result<Self, InvalidRoute> {
        build(config).map_err(|e| e.route(&config.name))
    }
}

fn build(c: &route_pb::RouteConfiguration) -> Result<RouteTable, Invalid> {
    let refuse_if = |set: bool, field: &str| {
        if set {
            Err(Invalid::new(field, "not implemented by ferry-proxy"))
        } else {
            Ok(())
        }
    };
    refuse_if(c.vhds.is_some(), "vhds")?;
    refuse_if(
        !c.cluster_specifier_plugins.is_empty(),
        "cluster_specifier_plugins",
    )?;
    refuse_if(
        !c.request_mirror_policies.is_empty(),
        "request_mirror_policies",
    )?;
    refuse_if(!c.vhost_header.is_empty(), "vhost_header")?;
    refuse_if(
        c.ignore_path_parameters_in_path_matching,
        "ignore_path_parameters_in_path_matching",
    )?;
    refuse_if(
        !c.typed_per_filter_config.is_empty(),
        "typed_per_filter_config",
    )?;
    refuse_if(!c.route_specifiers.is_empty(), "route_specifiers")?;
    let mut internal_only_headers = Vec::new();
    for (i, h) in c.internal_only_headers.iter().enumerate() {
        internal_only_headers.push(http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
            Invalid::new(
                format!("internal_only_headers[{i}]"),
                "not a valid header name",
            )
        })?);
    }
    let mut virtual_hosts = Vec::with_capacity(c.virtual_hosts.len());
    for (i, vh) in c.virtual_hosts.iter().enumerate() {
        virtual_hosts.push(VirtualHost::from_proto(vh, &format!("virtual_hosts[{i}]"))?);
    }
    let domains = DomainIndex::new(&virtual_hosts)?;
    Ok(RouteTable {
        name: c.name.clone(),
        domains,
        virtual_hosts,
        ignore_port_in_host_matching: c.ignore_port_in_host_matching,
        internal_only_headers,
        request_headers: HeaderMutation::from_proto(
            &c.request_headers_to_add,
            &c.request_headers_to_remove,
            "request",
        )?,
        response_headers: HeaderMutation::from_proto(
            &c.response_headers_to_add,
            &c.response_headers_to_remove,
            "response",
        )?,
        most_specific_header_mutations_wins: c.most_specific_header_mutations_wins,
    })
}

#[cfg(test)]
mod tests;
