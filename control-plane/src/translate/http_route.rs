//! VirtualService `http[]` rules to Envoy routes, in order (first match wins): one Envoy route
//! per `match[]` entry (entries are OR'ed), with the rule's action: weighted destinations,
//! redirect or direct response; timeout, retries, mirrors, rewrites, header operations, and the
//! per-route fault and CORS configs. A rule this cannot translate refuses the whole
//! VirtualService (the caller falls back to the default route and reports the error).

use std::collections::HashMap;

use xds_proto::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
    header_value_option::HeaderAppendAction,
};
use xds_proto::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteMatch, WeightedCluster,
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action, route,
    route_action::{self, RequestMirrorPolicy},
    route_match,
    weighted_cluster::ClusterWeight,
};
use xds_proto::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use xds_proto::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCors;
use xds_proto::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault, fault_abort};
use xds_proto::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use xds_proto::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use xds_proto::google::protobuf::{Any, BoolValue};

use crate::api::VirtualService;
use crate::api::common::{MatchKind, Percent, StringMatch};
use crate::api::virtual_service::{
    CorsPolicy, Destination, HeaderOperations, HttpFaultInjection, HttpMatchRequest, HttpRetry,
    HttpRoute, RedirectPortSelection,
};
use crate::model::{Config, Service};

use super::TranslateError;
use super::envoy::{any, duration, percent_per_million, u32_value};
use super::filter_chain::{CORS, FAULT};
use super::names;
use super::route::{
    DEFAULT_RETRY_ON, consistent_hash, decorator, default_retry_policy, hash_policies,
};
use super::scope::Scope;

struct Ctx<'s, 'a> {
    scope: &'s Scope<'a>,
    vs: &'a Config<VirtualService>,
    port: u16,
}

impl Ctx<'_, '_> {
    fn error(&self, field: String, reason: impl Into<String>) -> TranslateError {
        TranslateError::new(
            format!("VirtualService {}/{}", self.vs.namespace, self.vs.name),
            field,
            reason,
        )
    }

    /// `outbound|PORT|SUBSET|HOST` for a destination, with Istio's port inference.
    fn cluster(&self, d: &Destination, field: &str) -> Result<String, TranslateError> {
        let host = names::resolve_host(self.scope.model, &d.host, &self.vs.namespace);
        let target = self.scope.model.services.get(&host);
        let port = match (d.port.map(|p| p.number), target) {
            (Some(n), _) => u16::try_from(n)
                .map_err(|_| self.error(format!("{field}.port.number"), "port out of range"))?,
            (None, Some(svc)) if svc.ports.len() == 1 => svc.ports[0].port,
            (None, Some(svc)) if svc.ports.iter().any(|p| p.port == self.port) => self.port,
            (None, Some(_)) => {
                return Err(self.error(
                    format!("{field}.port"),
                    "the destination has several ports: name one",
                ));
            }
            (None, None) => self.port,
        };
        Ok(names::outbound_cluster(
            port,
            d.subset.as_deref().unwrap_or(""),
            &host,
        ))
    }
}

/// Routes for `service` on `port` from its VirtualService, in rule order.
pub fn translate(
    scope: &Scope<'_>,
    vs: &Config<VirtualService>,
    service: &Service,
    port: u16,
) -> Result<Vec<Route>, TranslateError> {
    let ctx = Ctx { scope, vs, port };
    let mut out = Vec::new();
    for (i, http) in vs.spec.http.iter().enumerate() {
        let field = format!("spec.http[{i}]");
        let matches = applicable_matches(&ctx, http);
        if !http.match_.is_empty() && matches.is_empty() {
            continue;
        }
        let action = action(&ctx, http, &field)?;
        let per_filter = per_filter_config(&ctx, http, &field)?;
        let (mut req_add, mut req_remove) =
            header_ops(http.headers.as_ref().and_then(|h| h.request.as_ref()));
        let (mut resp_add, mut resp_remove) =
            header_ops(http.headers.as_ref().and_then(|h| h.response.as_ref()));
        // A single destination's header operations apply to the whole route.
        if let [only] = http.route.as_slice() {
            let (a, r) = header_ops(only.headers.as_ref().and_then(|h| h.request.as_ref()));
            req_add.extend(a);
            req_remove.extend(r);
            let (a, r) = header_ops(only.headers.as_ref().and_then(|h| h.response.as_ref()));
            resp_add.extend(a);
            resp_remove.extend(r);
        }
        let route_for = |m: Option<&HttpMatchRequest>| -> Result<Route, TranslateError> {
            let name = match (http.name.as_deref(), m.and_then(|m| m.name.as_deref())) {
                (Some(r), Some(m)) => format!("{r}.{m}"),
                (Some(r), None) => r.to_string(),
                (None, Some(m)) => m.to_string(),
                (None, None) => String::new(),
            };
            Ok(Route {
                name,
                r#match: Some(route_match(&ctx, m, &field)?),
                action: Some(action.clone()),
                decorator: Some(decorator(service, port)),
                typed_per_filter_config: per_filter.clone(),
                request_headers_to_add: req_add.clone(),
                request_headers_to_remove: req_remove.clone(),
                response_headers_to_add: resp_add.clone(),
                response_headers_to_remove: resp_remove.clone(),
                ..Default::default()
            })
        };
        if http.match_.is_empty() {
            out.push(route_for(None)?);
        } else {
            for m in matches {
                out.push(route_for(Some(m))?);
            }
        }
    }
    Ok(out)
}

/// Match entries that apply to this proxy and port (`sourceLabels`, `sourceNamespace`,
/// `gateways`, `port` select; they are not runtime matches).
fn applicable_matches<'h>(ctx: &Ctx<'_, '_>, http: &'h HttpRoute) -> Vec<&'h HttpMatchRequest> {
    let proxy = ctx.scope.proxy;
    http.match_
        .iter()
        .filter(|m| m.port.is_none_or(|p| p == u32::from(ctx.port)))
        .filter(|m| {
            m.source_labels
                .iter()
                .all(|(k, v)| proxy.labels.get(k) == Some(v))
        })
        .filter(|m| {
            m.source_namespace
                .as_ref()
                .is_none_or(|ns| *ns == proxy.namespace)
        })
        .filter(|m| m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
        .collect()
}

fn string_matcher(m: &StringMatch, ignore_case: bool) -> Option<StringMatcher> {
    let pattern = match m.kind() {
        MatchKind::Exact(s) => MatchPattern::Exact(s.to_string()),
        MatchKind::Prefix(s) => MatchPattern::Prefix(s.to_string()),
        MatchKind::Regex(s) => MatchPattern::SafeRegex(regex(s)),
        MatchKind::Any => return None,
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    })
}

fn regex(s: &str) -> RegexMatcher {
    RegexMatcher {
        regex: s.to_string(),
        ..Default::default()
    }
}

fn header_matcher(name: &str, m: &StringMatch, invert: bool) -> HeaderMatcher {
    let specifier = match string_matcher(m, false) {
        Some(sm) => HeaderMatchSpecifier::StringMatch(sm),
        None => HeaderMatchSpecifier::PresentMatch(true),
    };
    HeaderMatcher {
        name: name.to_lowercase(),
        header_match_specifier: Some(specifier),
        invert_match: invert,
        ..Default::default()
    }
}

fn route_match(
    ctx: &Ctx<'_, '_>,
    m: Option<&HttpMatchRequest>,
    field: &str,
) -> Result<RouteMatch, TranslateError> {
    let mut out = RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
        ..Default::default()
    };
    let Some(m) = m else { return Ok(out) };
    if let Some(uri) = &m.uri {
        out.path_specifier = Some(match uri.kind() {
            MatchKind::Exact(p) => route_match::PathSpecifier::Path(p.to_string()),
            MatchKind::Prefix(p) => route_match::PathSpecifier::Prefix(p.to_string()),
            MatchKind::Regex(r) => route_match::PathSpecifier::SafeRegex(regex(r)),
            MatchKind::Any => route_match::PathSpecifier::Prefix("/".to_string()),
        });
    }
    if m.ignore_uri_case == Some(true) {
        out.case_sensitive = Some(BoolValue { value: false });
    }
    for (name, pseudo) in [
        (&m.method, ":method"),
        (&m.authority, ":authority"),
        (&m.scheme, ":scheme"),
    ] {
        if let Some(sm) = name {
            out.headers.push(header_matcher(pseudo, sm, false));
        }
    }
    for (name, sm) in &m.headers {
        out.headers.push(header_matcher(name, sm, false));
    }
    for (name, sm) in &m.without_headers {
        out.headers.push(header_matcher(name, sm, true));
    }
    for (name, sm) in &m.query_params {
        let specifier = match string_matcher(sm, false) {
            Some(s) => QueryParameterMatchSpecifier::StringMatch(s),
            None => QueryParameterMatchSpecifier::PresentMatch(true),
        };
        out.query_parameters.push(QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(specifier),
        });
    }
    if m.stat_prefix.is_some() {
        return Err(ctx.error(
            format!("{field}.match.statPrefix"),
            "not implemented by ferry-control yet",
        ));
    }
    Ok(out)
}

fn action(
    ctx: &Ctx<'_, '_>,
    http: &HttpRoute,
    field: &str,
) -> Result<route::Action, TranslateError> {
    if http.delegate.is_some() {
        return Err(ctx.error(
            format!("{field}.delegate"),
            "delegate VirtualServices apply to gateways only; not implemented",
        ));
    }
    if let Some(redirect) = &http.redirect {
        let mut out = RedirectAction {
            host_redirect: redirect.authority.clone().unwrap_or_default(),
            port_redirect: redirect.port.unwrap_or(0),
            response_code: match redirect.redirect_code.unwrap_or(301) {
                301 => redirect_action::RedirectResponseCode::MovedPermanently,
                302 => redirect_action::RedirectResponseCode::Found,
                303 => redirect_action::RedirectResponseCode::SeeOther,
                307 => redirect_action::RedirectResponseCode::TemporaryRedirect,
                308 => redirect_action::RedirectResponseCode::PermanentRedirect,
                other => {
                    return Err(ctx.error(format!("{field}.redirect.redirectCode"), format!("{other} is not a redirect code Envoy supports (301, 302, 303, 307, 308)")));
                }
            } as i32,
            ..Default::default()
        };
        if redirect.derive_port == Some(RedirectPortSelection::FromRequestPort) {
            out.port_redirect = u32::from(ctx.port);
        }
        if let Some(scheme) = &redirect.scheme {
            out.scheme_rewrite_specifier = Some(
                redirect_action::SchemeRewriteSpecifier::SchemeRedirect(scheme.clone()),
            );
        }
        if let Some(uri) = &redirect.uri {
            out.path_rewrite_specifier = Some(redirect_action::PathRewriteSpecifier::PathRedirect(
                uri.clone(),
            ));
        } else if let Some(prefix) = &redirect.prefix_rewrite {
            out.path_rewrite_specifier = Some(
                redirect_action::PathRewriteSpecifier::PrefixRewrite(prefix.clone()),
            );
        }
        return Ok(route::Action::Redirect(out));
    }
    if let Some(direct) = &http.direct_response {
        let body = match &direct.body {
            None => None,
            Some(b) if b.bytes.is_some() => {
                return Err(ctx.error(
                    format!("{field}.directResponse.body.bytes"),
                    "not implemented by ferry-control yet; use body.string",
                ));
            }
            Some(b) => b.string.as_ref().map(|s| DataSource {
                specifier: Some(data_source::Specifier::InlineString(s.clone())),
                ..Default::default()
            }),
        };
        return Ok(route::Action::DirectResponse(DirectResponseAction {
            status: direct.status,
            body,
            ..Default::default()
        }));
    }
    if http.route.is_empty() {
        return Err(ctx.error(
            format!("{field}.route"),
            "a rule needs route, redirect or directResponse",
        ));
    }
    let mut action = RouteAction::default();
    let destinations: Vec<(usize, &crate::api::virtual_service::HttpRouteDestination)> = http
        .route
        .iter()
        .enumerate()
        .filter(|(_, d)| http.route.len() == 1 || d.weight.unwrap_or(0) > 0)
        .collect();
    if destinations.is_empty() {
        return Err(ctx.error(format!("{field}.route"), "every destination has weight 0"));
    }
    if let [(i, only)] = destinations.as_slice() {
        let cluster = ctx.cluster(
            &only.destination,
            &format!("{field}.route[{i}].destination"),
        )?;
        action.cluster_specifier = Some(route_action::ClusterSpecifier::Cluster(cluster));
    } else {
        let mut clusters = Vec::new();
        for (i, d) in &destinations {
            let (add, remove) = header_ops(d.headers.as_ref().and_then(|h| h.request.as_ref()));
            let (resp_add, resp_remove) =
                header_ops(d.headers.as_ref().and_then(|h| h.response.as_ref()));
            clusters.push(ClusterWeight {
                name: ctx.cluster(&d.destination, &format!("{field}.route[{i}].destination"))?,
                weight: Some(u32_value(u32::try_from(d.weight.unwrap_or(0)).unwrap_or(0))),
                request_headers_to_add: add,
                request_headers_to_remove: remove,
                response_headers_to_add: resp_add,
                response_headers_to_remove: resp_remove,
                ..Default::default()
            });
        }
        action.cluster_specifier = Some(route_action::ClusterSpecifier::WeightedClusters(
            WeightedCluster {
                clusters,
                ..Default::default()
            },
        ));
    }
    let timeout = http.timeout.map(|d| d.get());
    // As Istio's `setTimeout` for sidecars: `timeout` (0s = none) and the deprecated
    // `max_grpc_timeout` set to the same value, so a gRPC client's `grpc-timeout` header is
    // honoured up to the route's timeout. Not `max_stream_duration`: its mere presence makes
    // Envoy's router ignore `timeout` ("downstream duration timeout" instead of UT).
    action.timeout = Some(duration(timeout.unwrap_or_default()));
    #[allow(deprecated)]
    {
        action.max_grpc_timeout = action.timeout;
    }
    // Consistent hashing applies when one destination carries it.
    let mut hashed = false;
    if let [(_, only)] = destinations.as_slice() {
        let host = names::resolve_host(ctx.scope.model, &only.destination.host, &ctx.vs.namespace);
        if let Some(svc) = ctx.scope.service(&host) {
            let cluster = ctx.cluster(&only.destination, field)?;
            let port = cluster
                .split('|')
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(ctx.port);
            if let Some(hash) = consistent_hash(
                ctx.scope,
                svc,
                only.destination.subset.as_deref().unwrap_or(""),
                port,
            ) {
                action.hash_policy = hash_policies(&hash);
                hashed = !action.hash_policy.is_empty();
            }
        }
    }
    action.retry_policy = retry_policy(ctx, http.retries.as_ref(), hashed, field)?;
    action.request_mirror_policies = mirrors(ctx, http, field)?;
    if let Some(rewrite) = &http.rewrite {
        if let Some(uri) = &rewrite.uri {
            action.prefix_rewrite = uri.clone();
        }
        if let Some(rr) = &rewrite.uri_regex_rewrite {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex(rr.match_.as_deref().unwrap_or_default())),
                substitution: rr.rewrite.clone().unwrap_or_default(),
            });
        }
        if let Some(authority) = &rewrite.authority {
            action.host_rewrite_specifier = Some(
                route_action::HostRewriteSpecifier::HostRewriteLiteral(authority.clone()),
            );
        }
    }
    Ok(route::Action::Route(action))
}

fn retry_policy(
    ctx: &Ctx<'_, '_>,
    retries: Option<&HttpRetry>,
    hashed: bool,
    field: &str,
) -> Result<Option<RetryPolicy>, TranslateError> {
    let Some(r) = retries else {
        return Ok(
            (!ctx.scope.options.disable_default_retries).then(|| default_retry_policy(hashed))
        );
    };
    let attempts = r.attempts.unwrap_or(0);
    if attempts <= 0 {
        // Explicitly disabled.
        return Ok(None);
    }
    let mut out = default_retry_policy(hashed);
    out.num_retries = Some(u32_value(u32::try_from(attempts).unwrap_or(0)));
    if let Some(retry_on) = r.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
        let mut conditions = Vec::new();
        for part in retry_on.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match part.parse::<u32>() {
                Ok(code) => out.retriable_status_codes.push(code),
                Err(_) => conditions.push(part.to_string()),
            }
        }
        if !out.retriable_status_codes.is_empty()
            && !conditions.iter().any(|c| c == "retriable-status-codes")
        {
            conditions.push("retriable-status-codes".to_string());
        }
        out.retry_on = conditions.join(",");
    } else {
        out.retry_on = DEFAULT_RETRY_ON.to_string();
    }
    out.per_try_timeout = r.per_try_timeout.map(|d| duration(d.get()));
    if let Some(base) = r.backoff {
        out.retry_back_off = Some(
            xds_proto::envoy::config::route::v3::retry_policy::RetryBackOff {
                base_interval: Some(duration(base.get())),
                ..Default::default()
            },
        );
    }
    if r.retry_ignore_previous_hosts == Some(false) {
        out.retry_host_predicate.clear();
    }
    if r.retry_remote_localities == Some(true) {
        return Err(ctx.error(
            format!("{field}.retries.retryRemoteLocalities"),
            "not implemented by ferry-control yet",
        ));
    }
    Ok(Some(out))
}

fn hundred_percent_int(p: u32) -> FractionalPercent {
    FractionalPercent {
        numerator: p.min(100),
        denominator: DenominatorType::Hundred as i32,
    }
}

fn fraction(percentage: Option<&Percent>, legacy: Option<u32>) -> FractionalPercent {
    match (percentage, legacy) {
        (Some(p), _) => percent_per_million(p.value),
        (None, Some(p)) => hundred_percent_int(p),
        (None, None) => percent_per_million(100.0),
    }
}

fn mirrors(
    ctx: &Ctx<'_, '_>,
    http: &HttpRoute,
    field: &str,
) -> Result<Vec<RequestMirrorPolicy>, TranslateError> {
    let mut out = Vec::new();
    let policy = |cluster: String, f: FractionalPercent| RequestMirrorPolicy {
        cluster,
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(f),
            ..Default::default()
        }),
        trace_sampled: Some(BoolValue { value: false }),
        ..Default::default()
    };
    if let Some(mirror) = &http.mirror {
        let legacy = http.mirror_percent.or(http.mirror_percent_snake);
        out.push(policy(
            ctx.cluster(mirror, &format!("{field}.mirror"))?,
            fraction(http.mirror_percentage.as_ref(), legacy),
        ));
    }
    for (i, m) in http.mirrors.iter().enumerate() {
        out.push(policy(
            ctx.cluster(&m.destination, &format!("{field}.mirrors[{i}].destination"))?,
            fraction(m.percentage.as_ref(), None),
        ));
    }
    Ok(out)
}

/// gRPC status names as Istio accepts them in `abort.grpcStatus`.
fn grpc_code(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    name.parse().ok().or_else(|| {
        CODES
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
            .and_then(|p| u32::try_from(p).ok())
    })
}

fn fault(
    ctx: &Ctx<'_, '_>,
    f: &HttpFaultInjection,
    field: &str,
) -> Result<HttpFault, TranslateError> {
    let mut out = HttpFault::default();
    if let Some(delay) = &f.delay {
        let Some(fixed) = delay.fixed_delay else {
            return Err(ctx.error(
                format!("{field}.fault.delay"),
                "only fixedDelay is supported (exponentialDelay is not implemented by Envoy)",
            ));
        };
        out.delay = Some(FaultDelay {
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                fixed.get(),
            ))),
            percentage: Some(fraction(
                delay.percentage.as_ref(),
                delay.percent.map(|p| u32::try_from(p).unwrap_or(0)),
            )),
        });
    }
    if let Some(abort) = &f.abort {
        let error_type = if let Some(status) = abort.http_status {
            fault_abort::ErrorType::HttpStatus(u32::try_from(status).unwrap_or(0))
        } else if let Some(grpc) = &abort.grpc_status {
            let code = grpc_code(grpc).ok_or_else(|| {
                ctx.error(
                    format!("{field}.fault.abort.grpcStatus"),
                    format!("unknown gRPC status {grpc:?}"),
                )
            })?;
            fault_abort::ErrorType::GrpcStatus(code)
        } else {
            return Err(ctx.error(
                format!("{field}.fault.abort"),
                "http2Error is not implemented; use httpStatus or grpcStatus",
            ));
        };
        out.abort = Some(FaultAbort {
            error_type: Some(error_type),
            percentage: Some(fraction(abort.percentage.as_ref(), None)),
            ..Default::default()
        });
    }
    Ok(out)
}

fn cors(c: &CorsPolicy) -> EnvoyCors {
    let mut origins: Vec<StringMatcher> = c
        .allow_origin
        .iter()
        .map(|o| StringMatcher {
            match_pattern: Some(MatchPattern::Exact(o.clone())),
            ..Default::default()
        })
        .collect();
    origins.extend(
        c.allow_origins
            .iter()
            .filter_map(|m| string_matcher(m, false)),
    );
    EnvoyCors {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.get().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(|value| BoolValue { value }),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(hundred_percent_int(100)),
            ..Default::default()
        }),
        forward_not_matching_preflights: c.unmatched_preflights.and_then(|u| match u {
            crate::api::virtual_service::UnmatchedPreflights::Forward => {
                Some(BoolValue { value: true })
            }
            crate::api::virtual_service::UnmatchedPreflights::Ignore => {
                Some(BoolValue { value: false })
            }
            crate::api::virtual_service::UnmatchedPreflights::Unspecified => None,
        }),
        ..Default::default()
    }
}

fn per_filter_config(
    ctx: &Ctx<'_, '_>,
    http: &HttpRoute,
    field: &str,
) -> Result<HashMap<String, Any>, TranslateError> {
    let mut out = HashMap::new();
    if let Some(f) = &http.fault {
        out.insert(FAULT.to_string(), any(&fault(ctx, f, field)?));
    }
    if let Some(c) = &http.cors_policy {
        out.insert(CORS.to_string(), any(&cors(c)));
    }
    Ok(out)
}

/// Header operations: `set` overwrites, `add` appends, `remove` removes.
fn header_ops(ops: Option<&HeaderOperations>) -> (Vec<HeaderValueOption>, Vec<String>) {
    let Some(ops) = ops else {
        return (Vec::new(), Vec::new());
    };
    let option = |k: &String, v: &String, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    let mut add: Vec<HeaderValueOption> = ops
        .set
        .iter()
        .map(|(k, v)| option(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .collect();
    add.extend(
        ops.add
            .iter()
            .map(|(k, v)| option(k, v, HeaderAppendAction::AppendIfExistsOrAdd)),
    );
    (add, ops.remove.clone())
}
