use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Response, StatusCode};
use xds_proto::envoy::config::route::v3 as route_pb;
use xds_proto::google::protobuf::{Duration as PbDuration, UInt32Value};

use super::*;
use crate::cluster::Thresholds;
use crate::retry::{HeaderOverrides, RetryPolicy};
use tokio::time::Instant;

type Attempt = BoxFuture<'static, Result<Response<Body>, UpstreamError>>;

/// How a scripted upstream host behaves.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Status(u16),
    Hang,
    Refuse,
    Reset,
}

/// Hosts on 127.0.0.1:1.. with scripted behaviour; records every attempt.
struct Upstreams {
    hosts: Vec<(SocketAddr, Behaviour)>,
    attempts: Mutex<Vec<(u32, SocketAddr)>>,
}

impl Upstreams {
    fn new(behaviours: &[Behaviour]) -> Arc<Self> {
        Arc::new(Self {
            hosts: behaviours
                .iter()
                .enumerate()
                .map(|(i, b)| (SocketAddr::from(([127, 0, 0, 1], i as u16 + 1)), *b))
                .collect(),
            attempts: Mutex::new(Vec::new()),
        })
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.hosts[i].0
    }

    /// First host not excluded (or the first host when all are), like a predictable LB.
    fn send(
        self: &Arc<Self>,
        attempt: u32,
        excluded: &[SocketAddr],
    ) -> Option<(SocketAddr, Attempt)> {
        let (addr, behaviour) = *self
            .hosts
            .iter()
            .find(|(a, _)| !excluded.contains(a))
            .or(self.hosts.first())?;
        self.attempts.lock().expect("lock").push((attempt, addr));
        let fut: BoxFuture<'static, _> = Box::pin(async move {
            match behaviour {
                Behaviour::Status(code) => {
                    let mut r = Response::new(crate::body::empty());
                    *r.status_mut() = StatusCode::from_u16(code).expect("status");
                    Ok(r)
                }
                Behaviour::Hang => futures::future::pending().await,
                Behaviour::Refuse => Err(UpstreamError::ConnectFailure(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                ))),
                Behaviour::Reset => Err(UpstreamError::Reset("reset by peer".into())),
            }
        });
        Some((addr, fut))
    }

    fn attempts(&self) -> Vec<(u32, SocketAddr)> {
        self.attempts.lock().expect("lock").clone()
    }
}

fn policy(
    retry_on: &str,
    retries: u32,
    edit: impl FnOnce(&mut route_pb::RetryPolicy),
) -> RetryPolicy {
    let mut p = route_pb::RetryPolicy {
        retry_on: retry_on.into(),
        num_retries: Some(UInt32Value { value: retries }),
        ..Default::default()
    };
    edit(&mut p);
    RetryPolicy::try_from(&p).expect("valid policy")
}

fn previous_hosts(p: &mut route_pb::RetryPolicy) {
    p.retry_host_predicate = vec![route_pb::retry_policy::RetryHostPredicate {
        name: crate::retry::policy::PREVIOUS_HOSTS.into(),
        config_type: None,
    }];
    p.host_selection_retry_max_attempts = 5;
}

/// The response's flags as Envoy prints them (`-`, `UF`, `URX,UF`).
fn flag(r: &Response<Body>) -> String {
    ResponseFlags::of(r.extensions()).to_string()
}

async fn request(
    up: &Arc<Upstreams>,
    policy: Option<&RetryPolicy>,
    route: Option<Duration>,
    breaker: Option<&Arc<CircuitBreaker>>,
    detector: Option<&outlier::Detector>,
) -> Response<Body> {
    let mut state = RetryState::new(policy, &HeaderOverrides::default());
    run(
        &mut state,
        Timeouts {
            route,
            request_end: None,
        },
        Upstream {
            breaker,
            outlier: detector,
            stats: None,
        },
        || true,
        |attempt, excluded| up.send(attempt, excluded),
    )
    .await
    .unwrap_or_else(|local| local)
}

#[tokio::test(start_paused = true)]
async fn retries_move_to_other_hosts_until_one_succeeds() {
    let up = Upstreams::new(&[
        Behaviour::Status(503),
        Behaviour::Refuse,
        Behaviour::Status(200),
    ]);
    let p = policy("5xx", 2, previous_hosts);
    let r = request(&up, Some(&p), None, None, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(flag(&r), "-");
    assert_eq!(
        up.attempts(),
        vec![(1, up.addr(0)), (2, up.addr(1)), (3, up.addr(2))]
    );
}

#[tokio::test(start_paused = true)]
async fn always_503_exhausts_retries_with_urx() {
    let up = Upstreams::new(&[Behaviour::Status(503)]);
    let p = policy("gateway-error", 2, |_| {});
    let r = request(&up, Some(&p), None, None, None).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(flag(&r), "URX");
    assert_eq!(up.attempts().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn no_policy_passes_the_first_answer_through() {
    let up = Upstreams::new(&[Behaviour::Status(503), Behaviour::Status(200)]);
    let r = request(&up, None, None, None, None).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(flag(&r), "-");
    assert_eq!(up.attempts().len(), 1);

    let up = Upstreams::new(&[Behaviour::Refuse]);
    let r = request(&up, None, None, None, None).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(flag(&r), "UF");
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_retries_a_hanging_host() {
    let up = Upstreams::new(&[Behaviour::Hang, Behaviour::Status(200)]);
    let p = policy("5xx", 1, |p| {
        previous_hosts(p);
        p.per_try_timeout = Some(PbDuration {
            seconds: 1,
            nanos: 0,
        });
    });
    let start = Instant::now();
    let r = request(&up, Some(&p), Some(Duration::from_secs(10)), None, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed <= Duration::from_millis(1025), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn route_timeout_ends_a_hanging_request_with_ut() {
    let up = Upstreams::new(&[Behaviour::Hang]);
    let p = policy("5xx", 5, |_| {});
    let start = Instant::now();
    let r = request(&up, Some(&p), Some(Duration::from_secs(3)), None, None).await;
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(flag(&r), "UT");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(up.attempts().len(), 1, "the route timeout is not retried");
}

#[tokio::test(start_paused = true)]
async fn resets_follow_the_conditions() {
    let up = Upstreams::new(&[Behaviour::Reset, Behaviour::Status(200)]);
    let p = policy("connect-failure", 3, previous_hosts);
    let r = request(&up, Some(&p), None, None, None).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(flag(&r), "UC");
    let up = Upstreams::new(&[Behaviour::Reset, Behaviour::Status(200)]);
    let p = policy("reset", 3, previous_hosts);
    let r = request(&up, Some(&p), None, None, None).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn no_host_is_503_uh() {
    let up = Upstreams::new(&[]);
    let r = request(&up, None, None, None, None).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(flag(&r), "UH");
}

#[tokio::test(start_paused = true)]
async fn retry_storm_stays_within_the_default_budget() {
    let up = Upstreams::new(&[Behaviour::Status(503), Behaviour::Status(503)]);
    let p = policy("5xx", 2, |p| {
        p.retry_back_off = Some(route_pb::retry_policy::RetryBackOff {
            base_interval: Some(PbDuration {
                seconds: 0,
                nanos: 1_000_000,
            }),
            max_interval: None,
        });
    });
    let breaker = Arc::new(CircuitBreaker::new(&Thresholds {
        high_priority: false,
        max_connections: 1024,
        max_pending_requests: 1024,
        max_requests: 1024,
        max_retries: 3,
        retry_budget: None,
    }));
    let requests = 1000;
    let mut overflowed = 0;
    for _ in 0..requests {
        let _request = breaker
            .try_acquire(crate::circuit_breaker::Resource::Requests)
            .expect("request admitted");
        breaker.record_request();
        let r = request(&up, Some(&p), None, Some(&breaker), None).await;
        if ResponseFlags::of(r.extensions()).contains(ResponseFlag::UpstreamOverflow) {
            overflowed += 1;
        }
    }
    let sent = up.attempts().len();
    // Without a budget: 3000 attempts. With it: 1000 + floor (10/s x 10 s) + 20% of 1000.
    assert!(sent <= requests + 100 + 200, "{sent} attempts");
    assert!(sent > requests, "some retries are allowed");
    assert!(overflowed > 0);
}

#[tokio::test(start_paused = true)]
async fn per_try_timeouts_feed_outlier_detection() {
    let up = Upstreams::new(&[Behaviour::Hang, Behaviour::Status(200)]);
    let pb = xds_proto::envoy::config::cluster::v3::OutlierDetection {
        consecutive_5xx: Some(UInt32Value { value: 2 }),
        ..Default::default()
    };
    let config = crate::cluster::OutlierDetection::parse(&pb, "c").expect("valid");
    let detector = outlier::Detector::new(config, up.hosts.iter().map(|(a, _)| *a));
    let p = policy("5xx", 1, |p| {
        previous_hosts(p);
        p.per_try_timeout = Some(PbDuration {
            seconds: 1,
            nanos: 0,
        });
    });
    for _ in 0..2 {
        let r = request(&up, Some(&p), None, None, Some(&detector)).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(detector.ejected_hosts(), vec![up.addr(0)]);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_cannot_be_replayed_is_not_retried() {
    let up = Upstreams::new(&[Behaviour::Status(503), Behaviour::Status(200)]);
    let p = policy("5xx", 2, previous_hosts);
    let mut state = RetryState::new(Some(&p), &HeaderOverrides::default());
    let r = run(
        &mut state,
        Timeouts::default(),
        Upstream::default(),
        || false,
        |attempt, excluded| up.send(attempt, excluded),
    )
    .await
    .expect("the upstream's own answer");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        flag(&r),
        "-",
        "no URX: retries were disabled, not exhausted"
    );
    assert_eq!(up.attempts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_starts_when_the_request_is_complete() {
    let up = Upstreams::new(&[Behaviour::Hang]);
    let (end, request_end) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        // The client takes 5 s to send its body.
        tokio::time::sleep(Duration::from_secs(5)).await;
        end.send_replace(true);
    });
    let p = policy("5xx", 1, |_| {});
    let mut state = RetryState::new(Some(&p), &HeaderOverrides::default());
    let start = Instant::now();
    let r = run(
        &mut state,
        Timeouts {
            route: Some(Duration::from_secs(1)),
            request_end: Some(request_end),
        },
        Upstream::default(),
        || true,
        |attempt, excluded| up.send(attempt, excluded),
    )
    .await
    .expect_err("a local reply");
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(flag(&r), "UT");
    assert_eq!(start.elapsed(), Duration::from_secs(6));
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_keep_the_last_attempts_flag_as_envoy_does() {
    let up = Upstreams::new(&[Behaviour::Refuse, Behaviour::Refuse, Behaviour::Refuse]);
    let p = policy("connect-failure", 2, previous_hosts);
    let r = request(&up, Some(&p), None, None, None).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(flag(&r), "URX,UF");
    assert_eq!(up.attempts().len(), 3);

    let up = Upstreams::new(&[Behaviour::Hang, Behaviour::Hang]);
    let p = policy("5xx", 1, |p| {
        previous_hosts(p);
        p.per_try_timeout = Some(PbDuration {
            seconds: 1,
            nanos: 0,
        });
    });
    let r = request(&up, Some(&p), Some(Duration::from_secs(10)), None, None).await;
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(flag(&r), "URX,UT");
}
