//! `VirtualService` (networking.istio.io): how requests to a set of hosts are routed, as ordered
//! HTTP, TLS and TCP route rules. The types follow Istio's `networking.v1.VirtualService` field
//! for field, including deprecated spellings still found in the wild (`mirrorPercent`,
//! `mirror_percent`, fault `percent`, CORS `allowOrigin`), so every manifest Istio accepts reads.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, Percent, PortSelector, StringMatch};

/// The spec of a VirtualService.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct VirtualService {
    /// Destination hosts the rules apply to: short names (resolved in the rule's namespace), FQDNs, wildcards or IPs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Gateways and sidecars that apply the rules; absent means `mesh` (all sidecars).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Ordered HTTP route rules; the first match wins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    /// Ordered rules for unterminated TLS/HTTPS traffic, matched by SNI.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsRoute>,
    /// Ordered rules for opaque TCP traffic.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,
    /// Namespaces the rule is visible to (`.` for its own, `*` for all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

/// One HTTP rule: conditions, and what to do with matching requests (route, redirect, direct response or delegate).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpRoute {
    /// Name of the rule, for debugging and route names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions, OR'ed; absent matches everything.
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub match_: Vec<HttpMatchRequest>,
    /// Weighted destinations to forward to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HttpRouteDestination>,
    /// Answer with a redirect instead of forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HttpRedirect>,
    /// Answer directly with a fixed response instead of forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<HttpDirectResponse>,
    /// Hand the matching requests to another VirtualService (gateways only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Delegate>,
    /// Rewrite the path and/or authority before forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    /// Request timeout; none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retry policy; Istio's default policy applies when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    /// Fault injection (delays and aborts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<HttpFaultInjection>,
    /// Also send a copy of each request here (fire and forget).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,
    /// Several mirror destinations, each with its own percentage.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Deprecated integer percentage of mirrored traffic; use `mirrorPercentage`.
    #[serde(rename = "mirrorPercent", skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<u32>,
    /// Deprecated snake_case spelling of `mirrorPercent`.
    #[serde(rename = "mirror_percent", skip_serializing_if = "Option::is_none")]
    pub mirror_percent_snake: Option<u32>,
    /// Share of traffic mirrored by `mirror`; absent means 100%.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percent>,
    /// Cross-origin resource sharing policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    /// Header manipulation for all destinations of the rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// One match condition; all fields set must hold (AND).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpMatchRequest {
    /// Name of the match, appended to the route's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Match on the request path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// Match on the URI scheme.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    /// Match on the HTTP method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Match on the authority (Host) header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// Match on request headers; names must be lower-case. An empty match checks presence.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// The port being addressed on the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Restrict the rule to client workloads with these labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Restrict the match to these gateways.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Match on query parameters (exact or regex).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Match `uri` case-insensitively (exact and prefix).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore_uri_case: Option<bool>,
    /// Headers that must not match.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Restrict the rule to clients in this namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// Prefix for the route's statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
}

/// A service (and optionally subset and port) traffic is sent to.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Destination {
    /// Service name from the registry: short name, FQDN or ServiceEntry host.
    pub host: String,
    /// A subset defined by a DestinationRule for the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// The port on the host; needed when the service has several ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

/// A weighted HTTP destination.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpRouteDestination {
    /// Where to send the traffic.
    pub destination: Destination,
    /// Relative share of traffic; absent with a single destination means 100%.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// Header manipulation for this destination only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

/// A weighted TCP/TLS destination.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RouteDestination {
    /// Where to send the traffic.
    pub destination: Destination,
    /// Relative share of traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

/// Header operations on requests and responses.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Headers {
    /// Operations on the request before forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    /// Operations on the response before returning it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

/// Header operations, applied in the order set, add, remove.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HeaderOperations {
    /// Overwrite these headers.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append these headers.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A rule for unterminated TLS traffic.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TlsRoute {
    /// Conditions, OR'ed; required.
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub match_: Vec<TlsMatchAttributes>,
    /// Where to forward matching connections.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// TLS connection attributes to match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TlsMatchAttributes {
    /// SNI values to match (may be wildcards); required.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    /// Destination IPs or CIDRs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Restrict to clients with these labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Restrict to these gateways.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Restrict to clients in this namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

/// A rule for opaque TCP traffic.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TcpRoute {
    /// Conditions, OR'ed.
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub match_: Vec<L4MatchAttributes>,
    /// Where to forward matching connections.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
}

/// TCP connection attributes to match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct L4MatchAttributes {
    /// Destination IPs or CIDRs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Source IP or CIDR.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_subnet: Option<String>,
    /// Restrict to clients with these labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Restrict to these gateways.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Restrict to clients in this namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

/// An HTTP redirect answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpRedirect {
    /// Replace the path with this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replace the authority with this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Replace the port with this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Derive the port instead of setting it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub derive_port: Option<RedirectPortSelection>,
    /// Replace the scheme with this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Status code of the redirect (default 301).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<u32>,
    /// Replace the matched prefix of the path with this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
}

/// How a redirect derives its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// 80 for http, 443 for https.
    FromProtocolDefault,
    /// The port of the request.
    FromRequestPort,
}

/// A fixed response.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpDirectResponse {
    /// Status code.
    pub status: u32,
    /// Body, as text or base64 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,
}

/// A direct response body: one of `string` or `bytes`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpBody {
    /// Body text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    /// Body as base64-encoded bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
}

/// A reference to a delegate VirtualService.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Delegate {
    /// Name of the delegate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace of the delegate (default: the rule's namespace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Rewrites applied before forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpRewrite {
    /// Replace the matched path or prefix with this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replace the authority with this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Rewrite the path with a regex substitution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// A regex substitution on the path.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RegexRewrite {
    /// RE2 regex to match.
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<String>,
    /// Replacement, with `\1`-style group references.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
}

/// Retry policy of a route.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpRetry {
    /// Number of retries (total tries = 1 + attempts); 0 disables retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// Timeout per try; defaults to the route's timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated Envoy retry-on names and/or status codes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    /// Allow retries to other localities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_remote_localities: Option<bool>,
    /// Avoid hosts already tried (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval between retries (default 25ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Duration>,
}

/// Faults injected before forwarding.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpFaultInjection {
    /// Delay some requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    /// Fail some requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

/// A delay fault: one of `fixedDelay` or `exponentialDelay`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Delay {
    /// Fixed delay before forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<Duration>,
    /// Exponential delay (not supported by Istio's proxies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<Duration>,
    /// Share of requests delayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    /// Deprecated integer share of requests delayed; use `percentage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
}

/// An abort fault: one of `httpStatus`, `grpcStatus`, `http2Error`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Abort {
    /// HTTP status to answer with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    /// gRPC status to answer with (e.g. `UNAVAILABLE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// HTTP/2 error to reset the stream with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_error: Option<String>,
    /// Share of requests aborted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// One mirror destination.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpMirrorPolicy {
    /// Where copies are sent.
    pub destination: Destination,
    /// Share of traffic mirrored; absent means 100%.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// Cross-origin resource sharing policy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CorsPolicy {
    /// Deprecated exact origins; use `allowOrigins`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    /// Origins allowed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    /// Methods allowed (`Access-Control-Allow-Methods`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Headers allowed (`Access-Control-Allow-Headers`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Headers exposed (`Access-Control-Expose-Headers`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// How long preflight results may be cached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Whether credentials are allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// What to do with preflights from origins that do not match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// Handling of preflight requests whose origin does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Default: forward.
    Unspecified,
    /// Forward to the upstream.
    Forward,
    /// Answer without CORS headers.
    Ignore,
}

impl HttpRoute {
    /// The share of traffic `mirror` copies, in percent: `mirrorPercentage`, else the deprecated
    /// integer spellings, else 100 (Istio's default when a mirror is set).
    pub fn mirror_share(&self) -> f64 {
        self.mirror_percentage
            .map(|p| p.value)
            .or(self.mirror_percent.map(f64::from))
            .or(self.mirror_percent_snake.map(f64::from))
            .unwrap_or(100.0)
    }
}

impl HttpRetry {
    /// `retryOn` split the way Istio translates it: Envoy policy names, and numeric status
    /// codes (which go to `retriable_status_codes`, adding the `retriable-status-codes`
    /// policy). Empty entries are dropped; validation refuses anything else.
    pub fn retry_on_parts(&self) -> (Vec<&str>, Vec<u32>) {
        let mut names = Vec::new();
        let mut codes = Vec::new();
        for part in self.retry_on.as_deref().unwrap_or_default().split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            match part.parse::<u32>() {
                Ok(code) => codes.push(code),
                Err(_) => names.push(part),
            }
        }
        if !codes.is_empty() && !names.contains(&"retriable-status-codes") {
            names.push("retriable-status-codes");
        }
        (names, codes)
    }
}

impl Delay {
    /// The share of requests delayed, in percent: `percentage`, else the deprecated `percent`;
    /// `None` when neither is set.
    pub fn share(&self) -> Option<f64> {
        self.percentage
            .map(|p| p.value)
            .or(self.percent.map(f64::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_numbers_become_status_codes() {
        let r = HttpRetry {
            retry_on: Some("connect-failure, 503,refused-stream,".into()),
            ..Default::default()
        };
        let (names, codes) = r.retry_on_parts();
        assert_eq!(
            names,
            [
                "connect-failure",
                "refused-stream",
                "retriable-status-codes"
            ]
        );
        assert_eq!(codes, [503]);
    }

    #[test]
    fn mirror_share_prefers_the_new_spelling() {
        let mut h = HttpRoute {
            mirror_percent: Some(30),
            ..Default::default()
        };
        assert_eq!(h.mirror_share(), 30.0);
        h.mirror_percentage = Some(Percent { value: 12.5 });
        assert_eq!(h.mirror_share(), 12.5);
        assert_eq!(HttpRoute::default().mirror_share(), 100.0);
    }
}
