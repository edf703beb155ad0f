//! The router filter: turns a matched `route` action into one upstream request. It picks the
//! cluster (weighted per request), a host through the cluster's load balancer, rewrites path and
//! authority, applies header mutations, enforces the route timeout, and streams both bodies;
//! WebSocket upgrades are joined byte for byte once both sides switch protocols. Tries and
//! retries live in [`attempts`]; the route timeout's part after the response headers in
//! [`timeout`].

mod attempts;
pub mod timeout;

use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rand::Rng;

use crate::body::{self, Body};
use crate::cluster::LbContext;
use crate::error::ResponseFlag;
use crate::http_connection_manager::{Downstream, local_reply};
use crate::route::{ClusterSpecifier, Forward, RouteTable, Selected, WeightedCluster};
use crate::snapshot::Snapshot;

/// The downstream request, prepared by the HCM.
#[derive(Debug)]
pub struct UpstreamRequest {
    /// Method, URI, version, headers, extensions (including hyper's pending upgrade).
    pub parts: http::request::Parts,
    /// The streaming request body.
    pub body: Incoming,
    /// Counts the request body's bytes as it streams (`BYTES_RECEIVED`), when the HCM logs.
    pub body_bytes: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// The authority the route matched on.
    pub authority: String,
    /// Path and query as received.
    pub path_and_query: String,
    /// The route's hash policy result.
    pub hash: Option<u64>,
    /// WebSocket upgrades allowed for this route.
    pub websocket_allowed: bool,
}

/// Connection-level headers never forwarded (RFC 9110 section 7.6.1, plus `proxy-connection`).
/// Names, not strings: removing by `&str` parses the name again on every request.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::UPGRADE,
];

/// The upstream's time to response headers, in milliseconds, as Envoy reports it.
const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

/// Chooses the destination for one request.
fn pick(forward: &Forward) -> (&str, Option<&WeightedCluster>) {
    match &forward.cluster {
        ClusterSpecifier::Cluster(name) => (name, None),
        ClusterSpecifier::Weighted { clusters, total } => {
            let mut point = rand::rng().random_range(0..*total);
            for c in clusters {
                if point < u64::from(c.weight) {
                    return (&c.name, Some(c));
                }
                point -= u64::from(c.weight);
            }
            // Unreachable when weights sum to total; keep a sane answer anyway.
            let last = clusters.last().map(|c| (c.name.as_str(), Some(c)));
            last.unwrap_or(("", None))
        }
    }
}

fn is_websocket_upgrade(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The path after `prefix_rewrite` or `regex_rewrite` (regexes see the path without query).
pub fn rewrite_path(
    forward: &Forward,
    matched_prefix: Option<&str>,
    path_and_query: &str,
) -> String {
    if let (Some(new), Some(old)) = (&forward.prefix_rewrite, matched_prefix)
        && path_and_query.len() >= old.len()
        && path_and_query.is_char_boundary(old.len())
    {
        let mut rewritten = format!("{new}{}", &path_and_query[old.len()..]);
        if !rewritten.starts_with('/') {
            rewritten.insert(0, '/');
        }
        return rewritten;
    }
    if let Some((regex, substitution)) = &forward.regex_rewrite {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let mut rewritten = regex.replace_all(path, substitution);
        if let Some(q) = query {
            rewritten.push('?');
            rewritten.push_str(q);
        }
        return rewritten;
    }
    path_and_query.to_owned()
}

/// Forwards one request and returns the downstream response (upstream's, or a local reply with
/// the response flag on failure).
pub async fn forward(
    snapshot: &Snapshot,
    table: &RouteTable,
    selected: &Selected<'_>,
    forward: &Forward,
    request: UpstreamRequest,
    downstream: &Downstream,
) -> Response<Body> {
    // The fault filter runs before the router, as in Istio's filter chain (fault, cors, router).
    let mut delayed = false;
    if let Some(fault) = &selected.route.fault {
        let injection = fault.decide(&mut rand::rng());
        delayed = injection.delay.is_some();
        if let Some(reply) = fault.inject(injection).await {
            return reply;
        }
    }
    let (cluster_name, weighted) = pick(forward);
    if let Some(slot) = request
        .parts
        .extensions
        .get::<std::sync::Arc<crate::tracers::SpanSlot>>()
    {
        let _ = slot.upstream_cluster.set(cluster_name.to_owned());
    }
    let span = tracing::Span::current();
    span.record("cluster", cluster_name);
    let Some(cluster) = snapshot.clusters.get(cluster_name) else {
        tracing::debug!(cluster = cluster_name, "cluster not found");
        return local_reply(
            forward.cluster_not_found_status,
            "",
            Some(ResponseFlag::NoClusterFound),
        );
    };
    let UpstreamRequest {
        mut parts,
        body,
        authority,
        path_and_query,
        hash,
        websocket_allowed,
        body_bytes,
    } = request;
    let upgrade = parts.version == http::Version::HTTP_11 && is_websocket_upgrade(&parts.headers);
    if upgrade && !websocket_allowed {
        return local_reply(StatusCode::FORBIDDEN, "", None);
    }

    let path = rewrite_path(
        forward,
        selected.route.matcher.path.matched_prefix(),
        &path_and_query,
    );
    let authority = weighted
        .and_then(|w| w.host_rewrite.as_deref())
        .or(forward.host_rewrite.as_deref())
        .unwrap_or(&authority)
        .to_owned();
    // Absolute-form: the HTTP/2 pool needs scheme and authority; HTTP/1.1 servers must accept
    // absolute-form too (RFC 9112 section 3.2.2).
    match http::Uri::try_from(format!("http://{authority}{path}")) {
        Ok(uri) => parts.uri = uri,
        Err(_) => return local_reply(StatusCode::BAD_REQUEST, "", None),
    }
    let on_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let upgrade_header = parts.headers.get(header::UPGRADE).cloned();
    let te_trailers = parts
        .headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    strip_hop_by_hop(&mut parts.headers);
    if te_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let (true, Some(up)) = (on_upgrade.is_some(), upgrade_header) {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, up);
    }
    if let Ok(host_header) = HeaderValue::from_str(&authority) {
        parts.headers.insert(header::HOST, host_header);
    }
    // Chosen from the downstream's headers, before route mutations, as Envoy's HCM does.
    // `x-envoy-*` retry and timeout overrides (kept by the HCM only for internal callers) are
    // consumed here and never forwarded; the header timeout wins over the route's and gRPC's.
    // Every override header is an `x-envoy-*` one: a request without any (the common case,
    // and every external one, whose `x-envoy-*` headers the HCM removed) skips the eleven
    // lookups by name.
    let overrides = if has_envoy_header(&parts.headers) {
        let overrides = crate::retry::HeaderOverrides::parse(&parts.headers);
        crate::retry::HeaderOverrides::strip(&mut parts.headers);
        overrides
    } else {
        crate::retry::HeaderOverrides::default()
    };
    let route_timeout = overrides.route_timeout(forward.response_timeout(&parts.headers));
    table.mutate_request(selected, weighted, &mut parts.headers);
    let buffer_limit = selected
        .route
        .per_request_buffer_limit
        .or(selected.virtual_host.per_request_buffer_limit)
        .unwrap_or(downstream.buffer_limit);
    // Mirrors: fire-and-forget copies, the body teed as it streams to the primary.
    let body = match body_bytes {
        Some(counter) => body::boxed(crate::access_log::CountedBody::new(body, counter)),
        None => body::boxed(body),
    };
    let body = if on_upgrade.is_none() {
        crate::mirror::start(
            &snapshot.clusters,
            &forward.mirrors,
            &parts,
            body,
            buffer_limit,
            route_timeout,
        )
    } else {
        body
    };
    let tries = attempts::Tries {
        cluster,
        ctx: LbContext {
            hash,
            downstream: Some(downstream.peer),
            original_dst: downstream.original_dst,
            excluded: &[],
        },
        retry: forward
            .retry_policy
            .as_ref()
            .or(selected.virtual_host.retry_policy.as_ref()),
        route_timeout,
        overrides,
        include_attempt_count: selected.virtual_host.include_request_attempt_count,
        include_attempt_count_in_response: selected.virtual_host.include_attempt_count_in_response,
        auto_host_rewrite: forward.auto_host_rewrite,
        buffer_limit,
        high_priority: forward.high_priority,
    };
    let started = tokio::time::Instant::now();
    let retriable = on_upgrade.is_none();
    // The route timeout starts when the request is complete: now, or when its body ends.
    let (request_body, timer_start) =
        if route_timeout.is_some() && !http_body::Body::is_end_stream(&body) {
            let (body, end) = timeout::notify_end(body);
            (body, timeout::TimerStart::RequestEnd(end))
        } else {
            (body, timeout::TimerStart::At(started))
        };
    let mut response = match tries.send(parts, request_body, retriable).await {
        Ok(response) => response,
        // A route timeout before the headers is counted (`upstream_rq_timeout`) by the retry
        // driver; one after them by the deadline body below.
        Err(reply) => return reply,
    };
    tracing::debug!(status = response.status().as_u16(), "upstream response");
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(downstream_upgrade) = on_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(join_upgraded(downstream_upgrade, upstream_upgrade));
        }
    } else {
        strip_hop_by_hop(response.headers_mut());
        // The route timeout runs on until the body is complete (Envoy's semantics); a body
        // already complete needs no timer.
        if let Some(limit) = route_timeout
            && !http_body::Body::is_end_stream(response.body())
        {
            response = response.map(|inner| {
                let counter = Some(cluster.stats().retry.timeout.clone());
                let body = timeout::DeadlineBody::new(inner, timer_start, limit, counter);
                http_body_util::BodyExt::boxed(body)
            });
        }
    }
    let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    response
        .headers_mut()
        .insert(X_ENVOY_UPSTREAM_SERVICE_TIME, HeaderValue::from(elapsed));
    table.mutate_response(selected, weighted, response.headers_mut());
    if delayed {
        crate::error::ResponseFlags::add_to(response.extensions_mut(), ResponseFlag::DelayInjected);
    }
    response
}

/// Whether any header is an `x-envoy-*` one (a scan of the names, no hashing).
fn has_envoy_header(headers: &http::HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| name.as_str().starts_with("x-envoy-"))
}

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in listed {
        headers.remove(name.as_str());
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

async fn join_upgraded(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let mut downstream = TokioIo::new(downstream);
    let mut upstream = TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        tracing::debug!(%error, "upgraded connection closed with error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_with_x_envoy_headers_carry_overrides() {
        let mut headers = http::HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a"));
        headers.insert("x-envoy", HeaderValue::from_static("not a prefix match"));
        assert!(!has_envoy_header(&headers));
        headers.insert("x-envoy-max-retries", HeaderValue::from_static("2"));
        assert!(has_envoy_header(&headers));
        // Every header the overrides read or strip is caught by the scan.
        for name in crate::retry::HeaderOverrides::NAMES
            .into_iter()
            .chain(["x-envoy-attempt-count"])
        {
            let mut one = http::HeaderMap::new();
            one.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
            assert!(has_envoy_header(&one), "{name}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_lists_are_stripped() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-hop, keep-alive"),
        );
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }
}
