//! What a matched route does: forward to a cluster (single or weighted, with rewrites, timeout and
//! hash policy), answer with a redirect, or answer directly.

use std::time::Duration;

use xds_proto::envoy::config::route::v3 as route_pb;

use super::header_mutation::HeaderMutation;
use super::matcher::{Regex, RequestHead};
use super::max_stream_duration::{MaxGrpcTimeout, MaxStreamDuration, is_grpc};
use super::{Invalid, duration};
use crate::retry::RetryPolicy;

/// Envoy's default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// A route's action.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Forward upstream.
    Forward(Box<Forward>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed status and body.
    DirectResponse(DirectResponse),
}

/// One weighted destination.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedCluster {
    /// Cluster name.
    pub name: String,
    /// Weight (share = weight / total).
    pub weight: u32,
    /// Request headers for this destination.
    pub request_headers: HeaderMutation,
    /// Response headers for this destination.
    pub response_headers: HeaderMutation,
    /// `host_rewrite_literal` for this destination.
    pub host_rewrite: Option<String>,
}

/// Where a forward goes.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterSpecifier {
    /// `cluster`.
    Cluster(String),
    /// `weighted_clusters`, chosen per request; `total` is the sum of weights.
    Weighted {
        /// Destinations with a non-zero weight.
        clusters: Vec<WeightedCluster>,
        /// Sum of weights.
        total: u64,
    },
}

/// One `hash_policy` entry.
#[derive(Debug, Clone, PartialEq)]
pub enum HashPolicy {
    /// Hash the header's value.
    Header(String, bool),
    /// Hash the cookie's value.
    Cookie(String, bool),
    /// Hash the downstream IP.
    SourceIp(bool),
    /// Hash the query parameter's value.
    QueryParameter(String, bool),
}

/// The `route` action.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// The destination(s).
    pub cluster: ClusterSpecifier,
    /// `prefix_rewrite`.
    pub prefix_rewrite: Option<String>,
    /// `regex_rewrite`: pattern and substitution.
    pub regex_rewrite: Option<(Regex, String)>,
    /// `host_rewrite_literal`.
    pub host_rewrite: Option<String>,
    /// `auto_host_rewrite`: the authority becomes the chosen endpoint's hostname (DNS clusters;
    /// endpoints without a hostname leave it unchanged, as Envoy).
    pub auto_host_rewrite: bool,
    /// Route timeout; `None` = no timeout (Envoy's `0s`).
    pub timeout: Option<Duration>,
    /// Hash policies, in order.
    pub hash_policy: Vec<HashPolicy>,
    /// Status when the cluster does not exist (Envoy default 503).
    pub cluster_not_found_status: http::StatusCode,
    /// Whether WebSocket upgrades are allowed by the route (`None` = follow the HCM).
    pub websocket: Option<bool>,
    /// `max_stream_duration`: the stream's limit, possibly from a `grpc-timeout` header.
    pub max_stream_duration: MaxStreamDuration,
    /// The deprecated `max_grpc_timeout` / `grpc_timeout_offset` pair, which Istio still puts
    /// on every sidecar route: for gRPC requests it replaces `timeout`.
    pub max_grpc_timeout: Option<MaxGrpcTimeout>,
    /// The route's retry policy (`None`: the virtual host's, if any).
    pub retry_policy: Option<RetryPolicy>,
    /// `request_mirror_policies`: shadow copies to other clusters.
    pub mirrors: Vec<crate::mirror::MirrorPolicy>,
    /// `priority: HIGH`: the request counts against the cluster's HIGH circuit breakers.
    pub high_priority: bool,
}

/// Envoy's `RedirectAction`.
#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    /// New scheme.
    pub scheme: Option<String>,
    /// New host.
    pub host: Option<String>,
    /// New port.
    pub port: Option<u16>,
    /// How the path changes.
    pub path: PathRedirect,
    /// Status (301, 302, 303, 307, 308).
    pub status: http::StatusCode,
    /// Drop the query string.
    pub strip_query: bool,
}

/// The path part of a redirect.
#[derive(Debug, Clone, PartialEq)]
pub enum PathRedirect {
    /// Keep the path.
    Keep,
    /// Replace the whole path (a query in it replaces the request's).
    Path(String),
    /// Replace the matched prefix.
    Prefix(String),
    /// Regex substitution on the path.
    Regex(Regex, String),
}

/// Envoy's `DirectResponseAction`.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectResponse {
    /// Status.
    pub status: http::StatusCode,
    /// Body (may be empty).
    pub body: bytes::Bytes,
}

fn unsupported(field: impl Into<String>) -> Invalid {
    Invalid::new(field, "not implemented by ferry-proxy")
}

#[allow(deprecated)]
pub(crate) fn forward(a: &route_pb::RouteAction, field: &str) -> Result<Forward, Invalid> {
    use route_pb::route_action::{ClusterSpecifier as C, HostRewriteSpecifier as H};
    let f = |s: &str| format!("{field}.{s}");
    let cluster = match &a.cluster_specifier {
        Some(C::Cluster(name)) if !name.is_empty() => ClusterSpecifier::Cluster(name.clone()),
        Some(C::Cluster(_)) => return Err(Invalid::new(f("cluster"), "cluster name is empty")),
        Some(C::WeightedClusters(w)) => weighted(w, &f("weighted_clusters"))?,
        Some(C::ClusterHeader(_)) => return Err(unsupported(f("cluster_header"))),
        Some(C::ClusterSpecifierPlugin(_)) => {
            return Err(unsupported(f("cluster_specifier_plugin")));
        }
        Some(C::InlineClusterSpecifierPlugin(_)) => {
            return Err(unsupported(f("inline_cluster_specifier_plugin")));
        }
        None => return Err(Invalid::new(field, "a cluster specifier is required")),
    };
    let mut auto_host_rewrite = false;
    let host_rewrite = match &a.host_rewrite_specifier {
        None => None,
        Some(H::HostRewriteLiteral(h)) => Some(h.clone()),
        Some(H::AutoHostRewrite(b)) => {
            auto_host_rewrite = b.value;
            None
        }
        Some(H::HostRewriteHeader(_)) => return Err(unsupported(f("host_rewrite_header"))),
        Some(H::HostRewritePathRegex(_)) => return Err(unsupported(f("host_rewrite_path_regex"))),
        Some(H::HostRewrite(_)) => return Err(unsupported(f("host_rewrite"))),
    };
    let refuse_if = |set: bool, name: &str| {
        if set {
            Err(unsupported(f(name)))
        } else {
            Ok(())
        }
    };
    refuse_if(a.metadata_match.is_some(), "metadata_match")?;
    refuse_if(a.path_rewrite_policy.is_some(), "path_rewrite_policy")?;
    refuse_if(!a.path_rewrite.is_empty(), "path_rewrite")?;
    refuse_if(a.append_x_forwarded_host, "append_x_forwarded_host")?;
    refuse_if(
        a.idle_timeout
            .is_some_and(|d| d.seconds != 0 || d.nanos != 0),
        "idle_timeout",
    )?;
    refuse_if(a.flush_timeout.is_some(), "flush_timeout")?;
    refuse_if(a.early_data_policy.is_some(), "early_data_policy")?;
    refuse_if(
        a.retry_policy_typed_config.is_some(),
        "retry_policy_typed_config",
    )?;
    if a.priority > 1 {
        return Err(Invalid::new(f("priority"), "unknown routing priority"));
    }
    refuse_if(!a.rate_limits.is_empty(), "rate_limits")?;
    refuse_if(a.cors.is_some(), "cors")?;
    refuse_if(
        a.internal_redirect_policy.is_some(),
        "internal_redirect_policy",
    )?;
    refuse_if(a.internal_redirect_action != 0, "internal_redirect_action")?;
    refuse_if(a.max_internal_redirects.is_some(), "max_internal_redirects")?;
    refuse_if(a.hedge_policy.is_some(), "hedge_policy")?;
    #[allow(deprecated)]
    let max_grpc_timeout = match &a.max_grpc_timeout {
        Some(max) => Some(MaxGrpcTimeout {
            max: duration(max, &f("max_grpc_timeout"))?,
            offset: a
                .grpc_timeout_offset
                .as_ref()
                .map(|d| duration(d, &f("grpc_timeout_offset")))
                .transpose()?,
        }),
        None => None,
    };
    let max_stream_duration = a
        .max_stream_duration
        .as_ref()
        .map(|m| MaxStreamDuration::from_proto(m, &f("max_stream_duration")))
        .transpose()?
        .unwrap_or_default();
    let regex_rewrite = match &a.regex_rewrite {
        Some(r) => {
            let pattern = r
                .pattern
                .as_ref()
                .ok_or_else(|| Invalid::new(f("regex_rewrite.pattern"), "pattern is required"))?;
            let regex = Regex::search(&pattern.regex)
                .map_err(|reason| Invalid::new(f("regex_rewrite.pattern.regex"), reason))?;
            Some((regex, r.substitution.clone()))
        }
        None => None,
    };
    if regex_rewrite.is_some() && !a.prefix_rewrite.is_empty() {
        return Err(Invalid::new(
            f("regex_rewrite"),
            "prefix_rewrite and regex_rewrite are exclusive",
        ));
    }
    let timeout = match a.timeout {
        None => Some(DEFAULT_ROUTE_TIMEOUT),
        Some(d) => Some(duration(&d, &f("timeout"))?).filter(|d| !d.is_zero()),
    };
    let mut hash_policy = Vec::with_capacity(a.hash_policy.len());
    for (i, h) in a.hash_policy.iter().enumerate() {
        hash_policy.push(hash(h, &format!("{field}.hash_policy[{i}]"))?);
    }
    let cluster_not_found_status = match a.cluster_not_found_response_code {
        0 => http::StatusCode::SERVICE_UNAVAILABLE,
        1 => http::StatusCode::NOT_FOUND,
        2 => http::StatusCode::INTERNAL_SERVER_ERROR,
        _ => {
            return Err(Invalid::new(
                f("cluster_not_found_response_code"),
                "unknown code",
            ));
        }
    };
    let mut websocket = None;
    for (i, u) in a.upgrade_configs.iter().enumerate() {
        if !u.upgrade_type.eq_ignore_ascii_case("websocket") || u.connect_config.is_some() {
            return Err(unsupported(format!(
                "{field}.upgrade_configs[{i}].upgrade_type"
            )));
        }
        websocket = Some(u.enabled.is_none_or(|e| e.value));
    }
    Ok(Forward {
        cluster,
        prefix_rewrite: (!a.prefix_rewrite.is_empty()).then(|| a.prefix_rewrite.clone()),
        regex_rewrite,
        host_rewrite,
        auto_host_rewrite,
        timeout,
        hash_policy,
        cluster_not_found_status,
        websocket,
        max_stream_duration,
        max_grpc_timeout,
        high_priority: a.priority == 1,
        retry_policy: a
            .retry_policy
            .as_ref()
            .map(|p| RetryPolicy::from_proto(p, &f("retry_policy")))
            .transpose()?,
        mirrors: a
            .request_mirror_policies
            .iter()
            .enumerate()
            .map(|(i, m)| {
                crate::mirror::MirrorPolicy::try_from(m).map_err(|e| {
                    Invalid::new(
                        f(&format!("request_mirror_policies[{i}].{}", e.field)),
                        e.reason,
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    })
}

fn weighted(w: &route_pb::WeightedCluster, field: &str) -> Result<ClusterSpecifier, Invalid> {
    if w.random_value_specifier.is_some() {
        return Err(unsupported(format!("{field}.random_value_specifier")));
    }
    let mut clusters = Vec::new();
    let mut total: u64 = 0;
    for (i, c) in w.clusters.iter().enumerate() {
        let f = |s: &str| format!("{field}.clusters[{i}].{s}");
        if c.name.is_empty() {
            return Err(Invalid::new(f("name"), "cluster name is required"));
        }
        if !c.cluster_header.is_empty() {
            return Err(unsupported(f("cluster_header")));
        }
        if c.metadata_match.is_some() {
            return Err(unsupported(f("metadata_match")));
        }
        if !c.typed_per_filter_config.is_empty() {
            return Err(unsupported(f("typed_per_filter_config")));
        }
        let weight = c.weight.map_or(0, |w| w.value);
        total += u64::from(weight);
        if weight == 0 {
            continue;
        }
        let host_rewrite = c.host_rewrite_specifier.as_ref().map(|h| {
            match h {
            route_pb::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(
                h,
            ) => h.clone(),
        }
        });
        clusters.push(WeightedCluster {
            name: c.name.clone(),
            weight,
            request_headers: HeaderMutation::from_proto(
                &c.request_headers_to_add,
                &c.request_headers_to_remove,
                &f("request"),
            )?,
            response_headers: HeaderMutation::from_proto(
                &c.response_headers_to_add,
                &c.response_headers_to_remove,
                &f("response"),
            )?,
            host_rewrite,
        });
    }
    #[allow(deprecated)]
    if let Some(expected) = w.total_weight
        && u64::from(expected.value) != total
    {
        return Err(Invalid::new(
            format!("{field}.total_weight"),
            format!(
                "total_weight {} differs from the sum of weights {total}",
                expected.value
            ),
        ));
    }
    if total == 0 {
        return Err(Invalid::new(
            format!("{field}.clusters"),
            "the sum of weights must be positive",
        ));
    }
    Ok(ClusterSpecifier::Weighted { clusters, total })
}

fn hash(h: &route_pb::route_action::HashPolicy, field: &str) -> Result<HashPolicy, Invalid> {
    use route_pb::route_action::hash_policy::PolicySpecifier as P;
    let t = h.terminal;
    Ok(match &h.policy_specifier {
        Some(P::Header(hd)) if hd.regex_rewrite.is_some() => {
            return Err(unsupported(format!("{field}.header.regex_rewrite")));
        }
        Some(P::Header(hd)) => HashPolicy::Header(hd.header_name.to_ascii_lowercase(), t),
        Some(P::Cookie(c)) if c.ttl.is_some() => {
            return Err(Invalid::new(
                format!("{field}.cookie.ttl"),
                "generating hash cookies is not implemented",
            ));
        }
        Some(P::Cookie(c)) => HashPolicy::Cookie(c.name.clone(), t),
        Some(P::ConnectionProperties(p)) if p.source_ip => HashPolicy::SourceIp(t),
        Some(P::ConnectionProperties(_)) => {
            return Err(Invalid::new(
                format!("{field}.connection_properties"),
                "source_ip must be true",
            ));
        }
        Some(P::QueryParameter(q)) => HashPolicy::QueryParameter(q.name.clone(), t),
        Some(P::FilterState(_)) => return Err(unsupported(format!("{field}.filter_state"))),
        None => return Err(Invalid::new(field, "a policy specifier is required")),
    })
}

impl Forward {
    /// How long to wait for the upstream's response headers: the route `timeout` bounded by the
    /// `max_stream_duration` limit for these request headers; `None` = unbounded.
    pub fn response_timeout(&self, headers: &http::HeaderMap) -> Option<Duration> {
        let timeout = match &self.max_grpc_timeout {
            Some(grpc) if is_grpc(headers) => grpc.timeout(headers),
            _ => self.timeout,
        };
        match (timeout, self.max_stream_duration.limit(headers)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Envoy's request hash: each policy that yields a value is folded in (rotate-left by one,
    /// xor), stopping after a `terminal` one that matched. `None` when no policy applied.
    pub fn request_hash(
        &self,
        req: &RequestHead<'_>,
        source: Option<std::net::IpAddr>,
    ) -> Option<u64> {
        let mut hash: Option<u64> = None;
        for policy in &self.hash_policy {
            let (value, terminal) = match policy {
                HashPolicy::Header(name, t) => {
                    (req.header(name).map(|v| stable_hash(v.as_bytes())), *t)
                }
                HashPolicy::Cookie(name, t) => {
                    (cookie(req, name).map(|v| stable_hash(v.as_bytes())), *t)
                }
                HashPolicy::SourceIp(t) => {
                    (source.map(|ip| stable_hash(ip.to_string().as_bytes())), *t)
                }
                HashPolicy::QueryParameter(name, t) => (
                    req.query().and_then(|q| {
                        form_urlencoded::parse(q.as_bytes())
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| stable_hash(v.as_bytes()))
                    }),
                    *t,
                ),
            };
            if let Some(v) = value {
                hash = Some(hash.map_or(v, |h| h.rotate_left(1) ^ v));
                if terminal {
                    break;
                }
            }
        }
        hash
    }
}

fn cookie(req: &RequestHead<'_>, name: &str) -> Option<String> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .find_map(|v| {
            v.to_str().ok()?.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
        })
}

/// FNV-1a: stable across processes and builds, so the same key picks the same host everywhere.
fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(crate) fn redirect(r: &route_pb::RedirectAction, field: &str) -> Result<Redirect, Invalid> {
    use route_pb::redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
    let scheme = match &r.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_owned()),
        Some(S::HttpsRedirect(false)) | None => None,
        Some(S::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
    };
    let path = match &r.path_rewrite_specifier {
        None => PathRedirect::Keep,
        Some(P::PathRedirect(p)) => PathRedirect::Path(p.clone()),
        Some(P::PrefixRewrite(p)) => PathRedirect::Prefix(p.clone()),
        Some(P::RegexRewrite(rr)) => {
            let pattern = rr.pattern.as_ref().ok_or_else(|| {
                Invalid::new(
                    format!("{field}.regex_rewrite.pattern"),
                    "pattern is required",
                )
            })?;
            let regex = Regex::search(&pattern.regex)
                .map_err(|reason| Invalid::new(format!("{field}.regex_rewrite"), reason))?;
            PathRedirect::Regex(regex, rr.substitution.clone())
        }
        Some(P::PathRewrite(_)) => return Err(unsupported(format!("{field}.path_rewrite"))),
    };
    let status = match r.response_code {
        0 => http::StatusCode::MOVED_PERMANENTLY,
        1 => http::StatusCode::FOUND,
        2 => http::StatusCode::SEE_OTHER,
        3 => http::StatusCode::TEMPORARY_REDIRECT,
        4 => http::StatusCode::PERMANENT_REDIRECT,
        _ => {
            return Err(Invalid::new(
                format!("{field}.response_code"),
                "unknown response code",
            ));
        }
    };
    let port = match r.port_redirect {
        0 => None,
        p => Some(
            u16::try_from(p)
                .map_err(|_| Invalid::new(format!("{field}.port_redirect"), "port out of range"))?,
        ),
    };
    Ok(Redirect {
        scheme,
        host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        port,
        path,
        status,
        strip_query: r.strip_query,
    })
}

pub(crate) fn direct_response(
    d: &route_pb::DirectResponseAction,
    field: &str,
) -> Result<DirectResponse, Invalid> {
    use xds_proto::envoy::config::core::v3::data_source::Specifier;
    let status = u16::try_from(d.status)
        .ok()
        .filter(|s| (200..600).contains(s))
        .and_then(|s| http::StatusCode::from_u16(s).ok())
        .ok_or_else(|| Invalid::new(format!("{field}.status"), "status must be in [200, 600)"))?;
    if d.body_format.is_some() {
        return Err(unsupported(format!("{field}.body_format")));
    }
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => bytes::Bytes::new(),
        Some(Specifier::InlineString(s)) => bytes::Bytes::from(s.clone()),
        Some(Specifier::InlineBytes(b)) => bytes::Bytes::from(b.clone()),
        Some(Specifier::Filename(_)) => return Err(unsupported(format!("{field}.body.filename"))),
        Some(Specifier::EnvironmentVariable(_)) => {
            return Err(unsupported(format!("{field}.body.environment_variable")));
        }
    };
    Ok(DirectResponse { status, body })
}

impl Redirect {
    /// The `Location` for a request, given the route's matched prefix (for `prefix_rewrite`).
    pub fn location(&self, req: &RequestHead<'_>, matched_prefix: Option<&str>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(req.scheme);
        let (orig_host, orig_port) = split_host_port(req.authority);
        let host = self.host.as_deref().unwrap_or(orig_host);
        let port = match (self.port, self.host.is_some()) {
            (Some(p), _) => Some(p),
            // A redirected host drops the original port; so does a scheme change to the
            // scheme's default port, as Envoy.
            (None, true) => None,
            (None, false) if self.scheme.is_some() => None,
            (None, false) => orig_port,
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        let authority = match port {
            Some(p) if p != default_port => format!("{host}:{p}"),
            _ => host.to_owned(),
        };
        let (path, query) = match req.path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (req.path_and_query, None),
        };
        let mut path_and_query = match &self.path {
            PathRedirect::Keep => path.to_owned(),
            PathRedirect::Path(p) if p.contains('?') => {
                return format!("{scheme}://{authority}{p}");
            }
            PathRedirect::Path(p) => p.clone(),
            PathRedirect::Prefix(new) => match matched_prefix {
                Some(old) if path.len() >= old.len() && path.is_char_boundary(old.len()) => {
                    format!("{new}{}", &path[old.len()..])
                }
                _ => path.to_owned(),
            },
            PathRedirect::Regex(r, sub) => r.replace_all(path, sub),
        };
        if let (Some(q), false) = (query, self.strip_query) {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        format!("{scheme}://{authority}{path_and_query}")
    }
}

/// Splits `host[:port]`, understanding `[v6]:port`.
pub fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[')
        && let Some((h, tail)) = rest.split_once(']')
    {
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return (&authority[..h.len() + 2], port);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}
