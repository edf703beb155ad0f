//! Istio's VirtualService rules beyond the schema: hosts, conflicting actions (route with
//! redirect or direct response, rewrite with redirect), weights, match header names and regexes,
//! retries, faults, mirrors, CORS, redirects and direct responses.

use crate::api::virtual_service::{
    CorsPolicy, Destination, HeaderOperations, Headers, HttpMatchRequest, HttpRetry, HttpRoute,
    RouteDestination,
};
use crate::api::{Percent, VirtualService};

use super::rules::Report;

/// `retryOn` policies Envoy understands (HTTP and gRPC).
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

const REDIRECT_CODES: &[u32] = &[301, 302, 303, 307, 308];

/// Checks a VirtualService spec.
pub(crate) fn check(r: &mut Report, vs: &VirtualService) {
    if vs.hosts.is_empty() {
        r.push(
            "spec.hosts",
            "at least one host is required (delegate VirtualServices are not supported)",
        );
    }
    let mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
    for (i, h) in vs.hosts.iter().enumerate() {
        let f = format!("spec.hosts[{i}]");
        r.host(&f, h);
        r.check(
            h == "*" && mesh,
            &f,
            "wildcard host * is not allowed for VirtualServices bound to the mesh",
        );
    }
    for (i, g) in vs.gateways.iter().enumerate() {
        r.check(
            g.is_empty(),
            format!("spec.gateways[{i}]"),
            "gateway name must not be empty",
        );
    }
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        r.push(
            "spec",
            "at least one of http, tcp or tls routes is required",
        );
    }
    for (i, route) in vs.http.iter().enumerate() {
        http_route(r, &format!("spec.http[{i}]"), route);
    }
    for (i, tls) in vs.tls.iter().enumerate() {
        let f = format!("spec.tls[{i}]");
        r.check(
            tls.match_.is_empty(),
            format!("{f}.match"),
            "TLS route must have at least one match",
        );
        for (j, m) in tls.match_.iter().enumerate() {
            let mf = format!("{f}.match[{j}]");
            r.check(
                m.sni_hosts.is_empty(),
                format!("{mf}.sniHosts"),
                "at least one SNI host is required",
            );
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                r.host(format!("{mf}.sniHosts[{k}]"), sni);
            }
            for (k, s) in m.destination_subnets.iter().enumerate() {
                r.ip_or_cidr(format!("{mf}.destinationSubnets[{k}]"), s);
            }
            r.opt_port(format!("{mf}.port"), m.port);
        }
        route_destinations(r, &f, &tls.route);
    }
    for (i, tcp) in vs.tcp.iter().enumerate() {
        let f = format!("spec.tcp[{i}]");
        for (j, m) in tcp.match_.iter().enumerate() {
            let mf = format!("{f}.match[{j}]");
            for (k, s) in m.destination_subnets.iter().enumerate() {
                r.ip_or_cidr(format!("{mf}.destinationSubnets[{k}]"), s);
            }
            if let Some(s) = &m.source_subnet {
                r.ip_or_cidr(format!("{mf}.sourceSubnet"), s);
            }
            r.opt_port(format!("{mf}.port"), m.port);
        }
        route_destinations(r, &f, &tcp.route);
    }
}

fn http_route(r: &mut Report, f: &str, route: &HttpRoute) {
    let has_route = !route.route.is_empty();
    let actions = [
        has_route,
        route.redirect.is_some(),
        route.direct_response.is_some(),
        route.delegate.is_some(),
    ];
    match actions.iter().filter(|a| **a).count() {
        0 => r.push(
            f,
            "one of route, redirect, directResponse or delegate is required",
        ),
        1 => {}
        _ => r.push(
            f,
            "only one of route, redirect, directResponse or delegate may be set",
        ),
    }
    if route.redirect.is_some() || route.direct_response.is_some() {
        let what = if route.redirect.is_some() {
            "redirect"
        } else {
            "directResponse"
        };
        r.check(
            route.rewrite.is_some(),
            format!("{f}.rewrite"),
            format!("rewrite cannot be used together with {what}"),
        );
        r.check(
            route.fault.is_some(),
            format!("{f}.fault"),
            format!("fault cannot be used together with {what}"),
        );
    }
    for (i, m) in route.match_.iter().enumerate() {
        http_match(r, &format!("{f}.match[{i}]"), m);
    }
    let weights: Vec<_> = route.route.iter().map(|d| d.weight).collect();
    weights_ok(r, f, &weights);
    for (i, d) in route.route.iter().enumerate() {
        let df = format!("{f}.route[{i}]");
        destination(r, &format!("{df}.destination"), &d.destination);
        headers(r, &format!("{df}.headers"), &d.headers);
    }
    if let Some(rd) = &route.redirect {
        let rf = format!("{f}.redirect");
        r.check(
            rd.port.is_some() && rd.derive_port.is_some(),
            &rf,
            "only one of port or derivePort may be set",
        );
        r.opt_port(format!("{rf}.port"), rd.port);
        if let Some(code) = rd.redirect_code {
            r.check(
                !REDIRECT_CODES.contains(&code),
                format!("{rf}.redirectCode"),
                format!("{code} is not a redirect code (301, 302, 303, 307 or 308)"),
            );
        }
        r.check(
            rd.uri.is_some() && rd.prefix_rewrite.is_some(),
            &rf,
            "only one of uri or prefixRewrite may be set",
        );
    }
    if let Some(dr) = &route.direct_response {
        let df = format!("{f}.directResponse");
        r.check(
            !(200..=599).contains(&dr.status),
            format!("{df}.status"),
            format!("status {} is out of range 200-599", dr.status),
        );
        if let Some(b) = &dr.body {
            r.check(
                b.string.is_some() == b.bytes.is_some(),
                format!("{df}.body"),
                "exactly one of string or bytes is required",
            );
        }
    }
    if let Some(d) = &route.delegate {
        r.check(
            d.name.as_deref().unwrap_or_default().is_empty(),
            format!("{f}.delegate.name"),
            "delegate name is required",
        );
    }
    if let Some(rw) = &route.rewrite {
        let rf = format!("{f}.rewrite");
        if let Some(rr) = &rw.uri_regex_rewrite {
            r.check(
                rw.uri.is_some(),
                &rf,
                "only one of uri or uriRegexRewrite may be set",
            );
            match &rr.match_ {
                Some(re) => r.regex(format!("{rf}.uriRegexRewrite.match"), re),
                None => r.push(format!("{rf}.uriRegexRewrite.match"), "required"),
            }
        }
    }
    r.duration(format!("{f}.timeout"), &route.timeout);
    if let Some(retries) = &route.retries {
        retry(r, &format!("{f}.retries"), retries);
    }
    if let Some(fault) = &route.fault {
        let ff = format!("{f}.fault");
        r.check(
            fault.delay.is_none() && fault.abort.is_none(),
            &ff,
            "one of delay or abort is required",
        );
        if let Some(d) = &fault.delay {
            let df = format!("{ff}.delay");
            r.check(
                d.exponential_delay.is_some(),
                format!("{df}.exponentialDelay"),
                "exponentialDelay is not supported",
            );
            r.check(
                d.fixed_delay.is_none() && d.exponential_delay.is_none(),
                &df,
                "fixedDelay is required",
            );
            r.duration(format!("{df}.fixedDelay"), &d.fixed_delay);
            percent(r, &format!("{df}.percentage"), &d.percentage);
            if let Some(p) = d.percent {
                r.check(
                    !(0..=100).contains(&p),
                    format!("{df}.percent"),
                    format!("percent {p} is out of range 0-100"),
                );
            }
        }
        if let Some(a) = &fault.abort {
            let af = format!("{ff}.abort");
            let set = [
                a.http_status.is_some(),
                a.grpc_status.is_some(),
                a.http2_error.is_some(),
            ];
            r.check(
                set.iter().filter(|s| **s).count() != 1,
                &af,
                "exactly one of httpStatus, grpcStatus or http2Error is required",
            );
            r.check(
                a.http2_error.is_some(),
                format!("{af}.http2Error"),
                "http2Error is not supported",
            );
            if let Some(s) = a.http_status {
                r.check(
                    !(200..=599).contains(&s),
                    format!("{af}.httpStatus"),
                    format!("HTTP status {s} is out of range 200-599"),
                );
            }
            percent(r, &format!("{af}.percentage"), &a.percentage);
        }
    }
    if let Some(m) = &route.mirror {
        destination(r, &format!("{f}.mirror"), m);
    }
    percent(
        r,
        &format!("{f}.mirrorPercentage"),
        &route.mirror_percentage,
    );
    for (name, p) in [
        ("mirrorPercent", route.mirror_percent),
        ("mirror_percent", route.mirror_percent_snake),
    ] {
        if let Some(p) = p {
            r.check(
                p > 100,
                format!("{f}.{name}"),
                format!("percentage {p} is out of range 0-100"),
            );
        }
    }
    // Istio (pkg/config/validation, validateHTTPRouteConflict) refuses both at once.
    r.check(
        route.mirror.is_some() && !route.mirrors.is_empty(),
        format!("{f}.mirrors"),
        "HTTP route cannot contain both mirror and mirrors",
    );
    for (i, m) in route.mirrors.iter().enumerate() {
        let mf = format!("{f}.mirrors[{i}]");
        destination(r, &format!("{mf}.destination"), &m.destination);
        percent(r, &format!("{mf}.percentage"), &m.percentage);
    }
    if let Some(c) = &route.cors_policy {
        cors(r, &format!("{f}.corsPolicy"), c);
    }
    headers(r, &format!("{f}.headers"), &route.headers);
}

fn http_match(r: &mut Report, f: &str, m: &HttpMatchRequest) {
    for (name, sm) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            r.string_match(&format!("{f}.{name}"), sm);
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, sm) in map {
            let hf = format!("{f}.{field}[{name}]");
            r.header_name(&hf, name);
            r.check(
                name.bytes().any(|b| b.is_ascii_uppercase()),
                &hf,
                format!("header name {name:?} must be lower-case"),
            );
            r.string_match(&hf, sm);
        }
    }
    for (name, sm) in &m.query_params {
        let qf = format!("{f}.queryParams[{name}]");
        r.check(
            name.is_empty(),
            &qf,
            "query parameter name must not be empty",
        );
        r.string_match(&qf, sm);
    }
    r.opt_port(format!("{f}.port"), m.port);
}

fn retry(r: &mut Report, f: &str, retry: &HttpRetry) {
    if let Some(a) = retry.attempts {
        r.check(
            a < 0,
            format!("{f}.attempts"),
            format!("attempts {a} must not be negative"),
        );
    }
    r.duration(format!("{f}.perTryTimeout"), &retry.per_try_timeout);
    r.duration(format!("{f}.backoff"), &retry.backoff);
    if let Some(on) = &retry.retry_on {
        for policy in on.split(',').map(str::trim) {
            let ok = RETRY_ON.contains(&policy)
                || policy
                    .parse::<u16>()
                    .is_ok_and(|c| (100..=599).contains(&c));
            r.check(
                !ok,
                format!("{f}.retryOn"),
                format!("{policy:?} is not a retry policy or an HTTP status code"),
            );
        }
    }
}

fn cors(r: &mut Report, f: &str, c: &CorsPolicy) {
    for (i, o) in c.allow_origins.iter().enumerate() {
        r.string_match(&format!("{f}.allowOrigins[{i}]"), o);
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        r.check(
            m.is_empty() || http::Method::from_bytes(m.as_bytes()).is_err(),
            format!("{f}.allowMethods[{i}]"),
            format!("{m:?} is not an HTTP method"),
        );
    }
    for (i, h) in c.allow_headers.iter().enumerate() {
        r.header_name(format!("{f}.allowHeaders[{i}]"), h);
    }
    for (i, h) in c.expose_headers.iter().enumerate() {
        r.header_name(format!("{f}.exposeHeaders[{i}]"), h);
    }
    r.duration(format!("{f}.maxAge"), &c.max_age);
    if let Some(age) = c.max_age {
        r.check(
            age.get().subsec_nanos() != 0,
            format!("{f}.maxAge"),
            "maxAge must be whole seconds",
        );
    }
}

fn headers(r: &mut Report, f: &str, h: &Option<Headers>) {
    let Some(h) = h else { return };
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        if let Some(ops) = ops {
            header_ops(r, &format!("{f}.{side}"), ops);
        }
    }
}

fn header_ops(r: &mut Report, f: &str, ops: &HeaderOperations) {
    for (op, names) in [("set", &ops.set), ("add", &ops.add)] {
        for name in names.keys() {
            let hf = format!("{f}.{op}[{name}]");
            r.header_name(&hf, name);
            r.check(
                name.starts_with(':') || name.eq_ignore_ascii_case("host"),
                &hf,
                "pseudo-headers and host cannot be changed here (use rewrite.authority)",
            );
        }
    }
    for (i, name) in ops.remove.iter().enumerate() {
        r.header_name(format!("{f}.remove[{i}]"), name);
    }
}

fn route_destinations(r: &mut Report, f: &str, route: &[RouteDestination]) {
    r.check(
        route.is_empty(),
        format!("{f}.route"),
        "at least one route destination is required",
    );
    let weights: Vec<_> = route.iter().map(|d| d.weight).collect();
    weights_ok(r, f, &weights);
    for (i, d) in route.iter().enumerate() {
        destination(r, &format!("{f}.route[{i}].destination"), &d.destination);
    }
}

fn weights_ok(r: &mut Report, f: &str, weights: &[Option<i32>]) {
    let mut total: i64 = 0;
    for (i, w) in weights.iter().enumerate() {
        if let Some(w) = *w {
            r.check(
                w < 0,
                format!("{f}.route[{i}].weight"),
                format!("weight {w} must not be negative"),
            );
            total += i64::from(w.max(0));
        }
    }
    r.check(
        weights.len() > 1 && total == 0,
        format!("{f}.route"),
        "the destinations' weights add up to 0: at least one must be positive",
    );
}

/// Checks a destination's host, subset name and port (also used for Sidecar's egressProxy).
pub(crate) fn destination(r: &mut Report, f: &str, d: &Destination) {
    r.host(format!("{f}.host"), &d.host);
    if let Some(s) = &d.subset {
        r.check(
            !super::rules::is_dns1123_label(s),
            format!("{f}.subset"),
            format!("subset name {s:?} must be a DNS-1123 label"),
        );
    }
    if let Some(p) = d.port {
        r.port(format!("{f}.port.number"), p.number);
    }
}

fn percent(r: &mut Report, f: &str, p: &Option<Percent>) {
    if let Some(p) = p {
        r.percent(format!("{f}.value"), p.value);
    }
}
