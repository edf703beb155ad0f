//! Request mirroring (`route.request_mirror_policies`): a fire-and-forget copy of a sampled
//! fraction of requests to another cluster, with the authority suffixed `-shadow` so the
//! shadow service can tell copies from real traffic.
//!
//! The shadow never slows or fails the original: the request body is teed ([`Tee`]) as it
//! streams to the primary, and once it has ended the shadows are sent on their own tasks, bounded
//! by the route timeout; their responses and errors are only logged. A body larger than the
//! buffer limit (the route's `per_request_buffer_limit_bytes`, else 1 MiB) is not mirrored and
//! is counted in the shadow cluster's `upstream_rq_shadow_too_large`; Envoy streams shadows of
//! any size. Several policies (Istio's `mirrors`) each sample and send their own copy.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use rand::Rng;
use xds_proto::envoy::config::route::v3::route_action::RequestMirrorPolicy;

use crate::body::{self, Body};
use crate::cluster::{Cluster, ClusterSet, LbContext};
use crate::fault::Fraction;

mod tee;

pub use tee::{Tee, Teed};

/// A mirror policy Ferry cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request_mirror_policies.{field}: {reason}")]
pub struct InvalidMirror {
    /// The field inside the policy.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
}

/// One validated `request_mirror_policies` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorPolicy {
    /// The cluster the copy goes to.
    pub cluster: String,
    /// `runtime_fraction.default_value` (absent = every request).
    pub fraction: Fraction,
    /// `!disable_shadow_host_suffix_append`.
    pub append_shadow_suffix: bool,
}

impl TryFrom<&RequestMirrorPolicy> for MirrorPolicy {
    type Error = InvalidMirror;

    fn try_from(p: &RequestMirrorPolicy) -> Result<Self, Self::Error> {
        let refuse = |set: bool, field: &str| {
            if set {
                Err(InvalidMirror {
                    field: field.to_owned(),
                    reason: "not implemented".to_owned(),
                })
            } else {
                Ok(())
            }
        };
        refuse(!p.cluster_header.is_empty(), "cluster_header")?;
        refuse(
            !p.request_headers_mutations.is_empty(),
            "request_headers_mutations",
        )?;
        refuse(!p.host_rewrite_literal.is_empty(), "host_rewrite_literal")?;
        // `trace_sampled` (Istio sets it to false) only decides whether the shadow's span is
        // sampled; Ferry emits no spans, so either value means the same here.
        if p.cluster.is_empty() {
            return Err(InvalidMirror {
                field: "cluster".to_owned(),
                reason: "required".to_owned(),
            });
        }
        let fraction = match &p.runtime_fraction {
            None => Fraction::ALWAYS,
            Some(r) => match &r.default_value {
                Some(v) => Fraction::from_proto(Some(v)),
                None => {
                    return Err(InvalidMirror {
                        field: "runtime_fraction.default_value".to_owned(),
                        reason: "required".to_owned(),
                    });
                }
            },
        };
        Ok(Self {
            cluster: p.cluster.clone(),
            fraction,
            append_shadow_suffix: !p.disable_shadow_host_suffix_append,
        })
    }
}

/// Envoy's shadow host: `-shadow` appended to the host part, before any port
/// (`reviews:9080` -> `reviews-shadow:9080`).
pub fn shadow_authority(authority: &str) -> String {
    let port_start = authority.rfind(':').filter(|&i| {
        let port = &authority[i + 1..];
        let host = &authority[..i];
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && (!host.contains(':') || host.ends_with(']'))
    });
    match port_start {
        Some(i) => format!("{}-shadow{}", &authority[..i], &authority[i..]),
        None => format!("{authority}-shadow"),
    }
}

impl MirrorPolicy {
    /// Draws whether this request is mirrored.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> bool {
        self.fraction.sample(rng)
    }

    /// Builds the shadow copy of an upstream request head (already rewritten for the primary
    /// cluster) with a buffered `body`.
    pub fn shadow_request(&self, parts: &http::request::Parts, body: Bytes) -> Request<Body> {
        let mut request = Request::new(body::full(body));
        *request.method_mut() = parts.method.clone();
        *request.version_mut() = parts.version;
        *request.headers_mut() = parts.headers.clone();
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let authority = if self.append_shadow_suffix && !authority.is_empty() {
            shadow_authority(&authority)
        } else {
            authority
        };
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        match http::Uri::try_from(format!("http://{authority}{path}")) {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => *request.uri_mut() = parts.uri.clone(),
        }
        if let Ok(host) = HeaderValue::from_str(&authority) {
            request.headers_mut().insert(header::HOST, host);
        }
        request
    }
}

/// Samples `mirrors` for one request (head `parts`, already rewritten for the primary) and
/// returns the body to send to the primary: the same body, teed when a shadow was drawn, so each
/// shadow is sent with a copy once the body has ended (see the module doc). `timeout` bounds
/// each shadow (the route timeout, as Envoy's shadows have).
pub fn start(
    clusters: &ClusterSet,
    mirrors: &[MirrorPolicy],
    parts: &http::request::Parts,
    body: Body,
    limit: u64,
    timeout: Option<Duration>,
) -> Body {
    let shadows: Vec<(Arc<Cluster>, Request<Body>)> = mirrors
        .iter()
        .filter(|m| m.sample(&mut rand::rng()))
        .filter_map(|m| match clusters.get(&m.cluster) {
            Some(cluster) => Some((cluster.clone(), m.shadow_request(parts, Bytes::new()))),
            None => {
                tracing::debug!(cluster = %m.cluster, "mirror: cluster not found");
                None
            }
        })
        .collect();
    if shadows.is_empty() {
        return body;
    }
    let tee = Tee::new(body, limit, move |teed| match teed {
        Teed::Complete(bytes) => {
            for (cluster, shadow) in shadows {
                let shadow = shadow.map(|_| body::full(bytes.clone()));
                spawn(cluster, shadow, timeout);
            }
        }
        Teed::TooLarge => {
            for (cluster, _) in shadows {
                tracing::debug!(
                    cluster = cluster.name(),
                    limit,
                    "mirror: body too large, not mirrored"
                );
                cluster.stats().upstream_rq_shadow_too_large.inc();
            }
        }
    });
    body::boxed(tee)
}

/// Sends a shadow request to `cluster` on its own task, within `timeout` when one is given; the
/// result is only logged.
pub fn spawn(
    cluster: Arc<Cluster>,
    request: Request<Body>,
    timeout: Option<Duration>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(host) = cluster.select_host(&LbContext::default()) else {
            tracing::debug!(cluster = cluster.name(), "mirror: no healthy upstream");
            return;
        };
        let sent = async {
            let response = cluster.send(&host, request).await?;
            let status = response.status();
            // Read the answer so the connection goes back to the pool.
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
            Ok::<_, crate::cluster::UpstreamError>(status)
        };
        let result = match timeout {
            Some(limit) => match tokio::time::timeout(limit, sent).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!(cluster = cluster.name(), "mirror: timed out");
                    return;
                }
            },
            None => sent.await,
        };
        match result {
            Ok(status) => {
                cluster.record_response(status);
                tracing::debug!(
                    cluster = cluster.name(),
                    status = status.as_u16(),
                    "mirror response"
                );
            }
            Err(error) => {
                tracing::debug!(cluster = cluster.name(), %error, "mirror failed");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_proto::envoy::config::core::v3::RuntimeFractionalPercent;
    use xds_proto::envoy::r#type::v3::FractionalPercent;

    #[test]
    fn shadow_suffix_goes_before_the_port() {
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(
            shadow_authority("a.b.svc.cluster.local"),
            "a.b.svc.cluster.local-shadow"
        );
    }

    #[test]
    fn istio_mirror_policy_parses() {
        let p = RequestMirrorPolicy {
            cluster: "outbound|9080|v2|reviews.default.svc.cluster.local".into(),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(FractionalPercent {
                    numerator: 0,
                    denominator: 0,
                }),
                runtime_key: String::new(),
            }),
            ..Default::default()
        };
        let m = MirrorPolicy::try_from(&p).expect("valid");
        assert!(!m.sample(&mut rand::rng()), "0% mirrors nothing");
        let p = RequestMirrorPolicy {
            cluster: "c".into(),
            ..Default::default()
        };
        let m = MirrorPolicy::try_from(&p).expect("valid");
        assert!(m.sample(&mut rand::rng()), "absent fraction = 100%");
        let p = RequestMirrorPolicy {
            cluster: "c".into(),
            trace_sampled: Some(xds_proto::google::protobuf::BoolValue { value: false }),
            ..Default::default()
        };
        assert!(
            MirrorPolicy::try_from(&p).is_ok(),
            "Istio's trace_sampled: false is accepted"
        );
        let p = RequestMirrorPolicy {
            cluster: "c".into(),
            cluster_header: "x-cluster".into(),
            ..Default::default()
        };
        assert_eq!(
            MirrorPolicy::try_from(&p).expect_err("refused").field,
            "cluster_header"
        );
    }

    #[test]
    fn shadow_request_copies_head_and_body_with_shadow_host() {
        let m = MirrorPolicy {
            cluster: "c".into(),
            fraction: Fraction::ALWAYS,
            append_shadow_suffix: true,
        };
        let (parts, ()) = Request::post("http://reviews:9080/a?b=1")
            .header("x-request-id", "42")
            .header(header::HOST, "reviews:9080")
            .body(())
            .expect("request")
            .into_parts();
        let shadow = m.shadow_request(&parts, Bytes::from_static(b"hi"));
        assert_eq!(shadow.method(), http::Method::POST);
        assert_eq!(shadow.uri().to_string(), "http://reviews-shadow:9080/a?b=1");
        assert_eq!(shadow.headers()[header::HOST], "reviews-shadow:9080");
        assert_eq!(shadow.headers()["x-request-id"], "42");
    }
}
