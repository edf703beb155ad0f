//! Virtual hosts, their routes and match conditions, and the domain index that picks a virtual
//! host for an authority with Envoy's precedence: exact, then the longest `*.suffix`, then the
//! longest `prefix.*`, then `*`.

use std::collections::HashMap;

use xds_proto::envoy::config::route::v3 as route_pb;

use super::Invalid;
use super::action::{self, Action};
use super::header_mutation::HeaderMutation;
use super::matcher::{HeaderMatch, PathMatch, QueryParameterMatch, RequestHead};
use crate::retry::RetryPolicy;

/// A validated virtual host.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    /// Name (Istio: `reviews.default.svc.cluster.local:9080`).
    pub name: String,
    /// Domains, lower case.
    pub domains: Vec<String>,
    /// Routes in order; the first match wins.
    pub routes: Vec<Route>,
    /// Virtual-host level request headers.
    pub request_headers: HeaderMutation,
    /// Virtual-host level response headers.
    pub response_headers: HeaderMutation,
    /// Send `x-envoy-attempt-count` upstream.
    pub include_request_attempt_count: bool,
    /// `include_attempt_count_in_response`: return `x-envoy-attempt-count` downstream.
    pub include_attempt_count_in_response: bool,
    /// `per_request_buffer_limit_bytes`: how much of a request body is kept for retries.
    pub per_request_buffer_limit: Option<u64>,
    /// The virtual host's retry policy, for routes without their own.
    pub retry_policy: Option<RetryPolicy>,
}

/// A validated route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Route name (may be empty); used in logs as the `route` field.
    pub name: String,
    /// When it applies.
    pub matcher: RouteMatch,
    /// What it does.
    pub action: Action,
    /// Route-level request headers.
    pub request_headers: HeaderMutation,
    /// Route-level response headers.
    pub response_headers: HeaderMutation,
    /// The fault filter's per-route config (`typed_per_filter_config`
    /// `envoy.filters.http.fault`), as Istio emits it for a VirtualService `fault`.
    pub fault: Option<crate::fault::Fault>,
    /// `per_request_buffer_limit_bytes` (overrides the virtual host's).
    pub per_request_buffer_limit: Option<u64>,
    /// `decorator.operation`: the name of the request's span (Istio:
    /// `reviews.default.svc.cluster.local:9080/*`).
    pub decorator: Option<String>,
}

/// Envoy's `RouteMatch`: every condition must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    /// The path condition.
    pub path: PathMatch,
    /// `case_sensitive` (default true) for prefix/path.
    pub case_sensitive: bool,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    pub query_parameters: Vec<QueryParameterMatch>,
    /// `grpc`: only requests with `content-type: application/grpc*`.
    pub grpc: bool,
}

impl RouteMatch {
    /// Whether the request satisfies every condition.
    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        self.path.matches(req, self.case_sensitive)
            && (!self.grpc || is_grpc(req.headers))
            && self.headers.iter().all(|h| h.matches(req))
            && self.query_parameters.iter().all(|q| q.matches(req.query()))
    }
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// `request_body_buffer_limit` wins over the older `per_request_buffer_limit_bytes`.
fn buffer_limit(
    body_limit: Option<&xds_proto::google::protobuf::UInt64Value>,
    per_request: Option<&xds_proto::google::protobuf::UInt32Value>,
) -> Option<u64> {
    body_limit
        .map(|v| v.value)
        .or(per_request.map(|v| u64::from(v.value)))
}

fn unsupported(field: String) -> Invalid {
    Invalid::new(field, "not implemented by ferry-proxy")
}

impl VirtualHost {
    #[allow(deprecated)]
    pub(crate) fn from_proto(vh: &route_pb::VirtualHost, field: &str) -> Result<Self, Invalid> {
        let f = |s: &str| format!("{field}.{s}");
        let refuse_if = |set: bool, name: &str| {
            if set {
                Err(unsupported(f(name)))
            } else {
                Ok(())
            }
        };
        refuse_if(vh.matcher.is_some(), "matcher")?;
        refuse_if(vh.require_tls != 0, "require_tls")?;
        refuse_if(!vh.rate_limits.is_empty(), "rate_limits")?;
        refuse_if(vh.cors.is_some(), "cors")?;
        refuse_if(
            !vh.typed_per_filter_config.is_empty(),
            "typed_per_filter_config",
        )?;
        refuse_if(
            vh.retry_policy_typed_config.is_some(),
            "retry_policy_typed_config",
        )?;
        refuse_if(vh.hedge_policy.is_some(), "hedge_policy")?;
        refuse_if(
            !vh.request_mirror_policies.is_empty(),
            "request_mirror_policies",
        )?;
        refuse_if(!vh.route_specifiers.is_empty(), "route_specifiers")?;
        if vh.domains.is_empty() {
            return Err(Invalid::new(
                f("domains"),
                "at least one domain is required",
            ));
        }
        let mut routes = Vec::with_capacity(vh.routes.len());
        for (i, r) in vh.routes.iter().enumerate() {
            routes.push(Route::from_proto(r, &f(&format!("routes[{i}]")))?);
        }
        Ok(Self {
            name: vh.name.clone(),
            domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            routes,
            request_headers: HeaderMutation::from_proto(
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
                &f("request"),
            )?,
            response_headers: HeaderMutation::from_proto(
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
                &f("response"),
            )?,
            include_request_attempt_count: vh.include_request_attempt_count,
            include_attempt_count_in_response: vh.include_attempt_count_in_response,
            per_request_buffer_limit: buffer_limit(
                vh.request_body_buffer_limit.as_ref(),
                vh.per_request_buffer_limit_bytes.as_ref(),
            ),
            retry_policy: vh
                .retry_policy
                .as_ref()
                .map(|p| RetryPolicy::from_proto(p, &f("retry_policy")))
                .transpose()?,
        })
    }
}

impl Route {
    #[allow(deprecated)]
    fn from_proto(r: &route_pb::Route, field: &str) -> Result<Self, Invalid> {
        use route_pb::route::Action as A;
        let f = |s: &str| format!("{field}.{s}");
        let mut fault = None;
        let mut names: Vec<_> = Vec::new();
        for (name, config) in &r.typed_per_filter_config {
            if name == crate::fault::FILTER_NAME {
                let parsed = crate::fault::Fault::from_any(config).map_err(|e| {
                    Invalid::new(
                        f(&format!("typed_per_filter_config.{name}.{}", e.field)),
                        e.reason,
                    )
                })?;
                fault = Some(parsed);
            } else {
                names.push(name.clone());
            }
        }
        if !names.is_empty() {
            names.sort();
            return Err(Invalid::new(
                f("typed_per_filter_config"),
                format!(
                    "per-filter config for {} is not implemented",
                    names.join(", ")
                ),
            ));
        }
        if r.tracing.is_some() {
            return Err(unsupported(f("tracing")));
        }
        if !r.route_specifiers.is_empty() {
            return Err(unsupported(f("route_specifiers")));
        }
        let m = r
            .r#match
            .as_ref()
            .ok_or_else(|| Invalid::new(f("match"), "match is required"))?;
        let matcher = route_match(m, &f("match"))?;
        let action = match &r.action {
            Some(A::Route(a)) => {
                let forward = action::forward(a, &f("route"))?;
                if forward.prefix_rewrite.is_some() && matches!(matcher.path, PathMatch::Regex(_)) {
                    return Err(Invalid::new(
                        f("route.prefix_rewrite"),
                        "prefix_rewrite cannot be used with a safe_regex match",
                    ));
                }
                Action::Forward(Box::new(forward))
            }
            Some(A::Redirect(rd)) => Action::Redirect(action::redirect(rd, &f("redirect"))?),
            Some(A::DirectResponse(d)) => {
                Action::DirectResponse(action::direct_response(d, &f("direct_response"))?)
            }
            Some(A::FilterAction(_)) => return Err(unsupported(f("filter_action"))),
            Some(A::NonForwardingAction(_)) => return Err(unsupported(f("non_forwarding_action"))),
            None => return Err(Invalid::new(field, "an action is required")),
        };
        Ok(Self {
            name: r.name.clone(),
            matcher,
            action,
            request_headers: HeaderMutation::from_proto(
                &r.request_headers_to_add,
                &r.request_headers_to_remove,
                &f("request"),
            )?,
            response_headers: HeaderMutation::from_proto(
                &r.response_headers_to_add,
                &r.response_headers_to_remove,
                &f("response"),
            )?,
            fault,
            per_request_buffer_limit: buffer_limit(
                r.request_body_buffer_limit.as_ref(),
                r.per_request_buffer_limit_bytes.as_ref(),
            ),
            decorator: r
                .decorator
                .as_ref()
                .map(|d| d.operation.clone())
                .filter(|o| !o.is_empty()),
        })
    }
}

fn route_match(m: &route_pb::RouteMatch, field: &str) -> Result<RouteMatch, Invalid> {
    use route_pb::route_match::PathSpecifier as P;
    let f = |s: &str| format!("{field}.{s}");
    let refuse_if = |set: bool, name: &str| {
        if set {
            Err(unsupported(f(name)))
        } else {
            Ok(())
        }
    };
    refuse_if(m.runtime_fraction.is_some(), "runtime_fraction")?;
    refuse_if(!m.cookies.is_empty(), "cookies")?;
    refuse_if(m.tls_context.is_some(), "tls_context")?;
    refuse_if(!m.dynamic_metadata.is_empty(), "dynamic_metadata")?;
    refuse_if(!m.filter_state.is_empty(), "filter_state")?;
    let path = match &m.path_specifier {
        Some(P::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(P::Path(p)) => PathMatch::Exact(p.clone()),
        Some(P::SafeRegex(r)) => {
            PathMatch::Regex(super::matcher::regex_matcher(r, &f("safe_regex"))?)
        }
        Some(P::PathSeparatedPrefix(p)) => {
            if p.ends_with('/') || p.contains(['?', '#']) {
                return Err(Invalid::new(
                    f("path_separated_prefix"),
                    "must not end with '/' or contain '?' or '#'",
                ));
            }
            PathMatch::SeparatedPrefix(p.clone())
        }
        Some(P::ConnectMatcher(_)) => return Err(unsupported(f("connect_matcher"))),
        Some(P::PathMatchPolicy(_)) => return Err(unsupported(f("path_match_policy"))),
        None => return Err(Invalid::new(field, "a path specifier is required")),
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.iter().enumerate() {
        headers.push(HeaderMatch::from_proto(h, &f(&format!("headers[{i}]")))?);
    }
    let mut query_parameters = Vec::with_capacity(m.query_parameters.len());
    for (i, q) in m.query_parameters.iter().enumerate() {
        query_parameters.push(QueryParameterMatch::from_proto(
            q,
            &f(&format!("query_parameters[{i}]")),
        )?);
    }
    Ok(RouteMatch {
        path,
        case_sensitive: m.case_sensitive.is_none_or(|c| c.value),
        headers,
        query_parameters,
        grpc: m.grpc.is_some(),
    })
}

/// Domain lookup built once per route table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DomainIndex {
    exact: HashMap<String, usize>,
    /// `*.suffix` and `*suffix` entries (the suffix without `*`), longest first.
    suffixes: Vec<(String, usize)>,
    /// `prefix.*` and `prefix*` entries (the prefix without `*`), longest first.
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
}

impl DomainIndex {
    pub(crate) fn new(virtual_hosts: &[VirtualHost]) -> Result<Self, Invalid> {
        let mut index = Self::default();
        let mut seen = HashMap::new();
        for (vi, vh) in virtual_hosts.iter().enumerate() {
            for (di, domain) in vh.domains.iter().enumerate() {
                let field = format!("virtual_hosts[{vi}].domains[{di}]");
                if let Some(prev) = seen.insert(domain.clone(), vi) {
                    return Err(Invalid::new(
                        field,
                        format!("domain {domain:?} is already used by virtual_hosts[{prev}]"),
                    ));
                }
                if domain == "*" {
                    index.any = Some(vi);
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    if suffix.contains('*') {
                        return Err(Invalid::new(
                            field,
                            "only one leading or trailing '*' is allowed",
                        ));
                    }
                    index.suffixes.push((suffix.to_owned(), vi));
                } else if let Some(prefix) = domain.strip_suffix('*') {
                    if prefix.contains('*') {
                        return Err(Invalid::new(
                            field,
                            "only one leading or trailing '*' is allowed",
                        ));
                    }
                    index.prefixes.push((prefix.to_owned(), vi));
                } else if domain.contains('*') {
                    return Err(Invalid::new(
                        field,
                        "'*' is allowed only at the start or end",
                    ));
                } else {
                    index.exact.insert(domain.clone(), vi);
                }
            }
        }
        // Longest wins; ties keep config order (stable sort).
        index.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        index.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Ok(index)
    }

    /// The virtual host index for a lower-case host; wildcards never match the empty string.
    pub fn find(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        let suffix = self
            .suffixes
            .iter()
            .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()));
        if let Some((_, i)) = suffix {
            return Some(*i);
        }
        let prefix = self
            .prefixes
            .iter()
            .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()));
        if let Some((_, i)) = prefix {
            return Some(*i);
        }
        self.any
    }
}
