use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use xds_proto::envoy::config::cluster::v3 as proto;

use super::*;
use crate::outlier::Outcome;

fn config(edit: impl FnOnce(&mut proto::OutlierDetection)) -> OutlierDetection {
    let mut pb = proto::OutlierDetection::default();
    edit(&mut pb);
    OutlierDetection::parse(&pb, "c").expect("valid outlier_detection")
}

fn u(value: u32) -> xds_proto::google::protobuf::UInt32Value {
    xds_proto::google::protobuf::UInt32Value { value }
}

fn hosts(n: u16) -> Vec<SocketAddr> {
    (1..=n)
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect()
}

fn fail(d: &Detector, host: SocketAddr, times: u32) -> Option<EjectionReason> {
    (0..times)
        .filter_map(|_| d.record(host, Outcome::Response(503)))
        .last()
}

async fn tick(d: &Detector, interval: Duration) {
    tokio::time::advance(interval).await;
    d.on_interval();
}

#[tokio::test(start_paused = true)]
async fn ejected_after_consecutive_5xx_returns_and_doubles() {
    let hs = hosts(3);
    let d = Detector::new(config(|_| {}), hs.clone());
    let ten = Duration::from_secs(10);
    assert_eq!(fail(&d, hs[0], 4), None);
    d.record(hs[0], Outcome::Response(200));
    assert_eq!(fail(&d, hs[0], 4), None, "a success resets the count");
    assert_eq!(fail(&d, hs[0], 1), Some(EjectionReason::Consecutive5xx));
    assert!(d.is_ejected(hs[0]));
    assert_eq!(d.ejected_hosts(), vec![hs[0]]);
    // Base ejection time 30 s, checked on the 10 s interval.
    tick(&d, ten).await;
    tick(&d, ten).await;
    assert!(d.is_ejected(hs[0]));
    tick(&d, ten).await;
    assert!(!d.is_ejected(hs[0]), "back after 30 s");
    // Fails again right away: ejected for 60 s.
    assert_eq!(fail(&d, hs[0], 5), Some(EjectionReason::Consecutive5xx));
    for _ in 0..5 {
        tick(&d, ten).await;
        assert!(d.is_ejected(hs[0]));
    }
    tick(&d, ten).await;
    assert!(!d.is_ejected(hs[0]), "back after 60 s");
    assert_eq!(d.ejection_count(hs[0]), 2);
}

#[tokio::test(start_paused = true)]
async fn multiplier_decays_while_healthy_and_is_capped() {
    let hs = hosts(3);
    let d = Detector::new(
        config(|c| {
            c.max_ejection_time = Some(xds_proto::google::protobuf::Duration {
                seconds: 45,
                nanos: 0,
            })
        }),
        hs.clone(),
    );
    assert_eq!(d.ejection_time(1), Duration::from_secs(30));
    assert_eq!(
        d.ejection_time(2),
        Duration::from_secs(45),
        "capped by max_ejection_time"
    );
    let ten = Duration::from_secs(10);
    fail(&d, hs[0], 5);
    for _ in 0..3 {
        tick(&d, ten).await;
    }
    assert!(!d.is_ejected(hs[0]));
    // Healthy for several intervals: the multiplier decays back to zero.
    for _ in 0..3 {
        tick(&d, ten).await;
    }
    fail(&d, hs[0], 5);
    for _ in 0..2 {
        tick(&d, ten).await;
        assert!(d.is_ejected(hs[0]));
    }
    tick(&d, ten).await;
    assert!(!d.is_ejected(hs[0]), "30 s again after the decay");
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_bounds_ejections_but_one_is_always_allowed() {
    let hs = hosts(3);
    let d = Detector::new(config(|_| {}), hs.clone());
    assert!(
        fail(&d, hs[0], 5).is_some(),
        "10% of 3 hosts still ejects one"
    );
    assert!(fail(&d, hs[1], 5).is_none());
    assert_eq!(d.ejected_hosts(), vec![hs[0]]);

    let d = Detector::new(config(|c| c.max_ejection_percent = Some(u(70))), hs.clone());
    assert!(fail(&d, hs[0], 5).is_some());
    assert!(fail(&d, hs[1], 5).is_some(), "2 of 3 = 67% <= 70%");
    assert!(fail(&d, hs[2], 5).is_none());
}

#[tokio::test(start_paused = true)]
async fn state_survives_eds_updates_for_remaining_hosts() {
    let hs = hosts(4);
    let d = Detector::new(config(|_| {}), hs[..3].to_vec());
    fail(&d, hs[0], 5);
    fail(&d, hs[1], 3);
    d.update_hosts([hs[0], hs[1], hs[3]]);
    assert!(d.is_ejected(hs[0]));
    assert_eq!(
        fail(&d, hs[1], 2),
        None,
        "ejected count blocks a second ejection"
    );
    d.update_hosts([hs[1], hs[3]]);
    assert!(d.ejected_hosts().is_empty());
    assert_eq!(fail(&d, hs[1], 5), Some(EjectionReason::Consecutive5xx));
    assert_eq!(
        d.record(hs[2], Outcome::Response(503)),
        None,
        "unknown host ignored"
    );
}

#[tokio::test(start_paused = true)]
async fn gateway_failures_need_their_enforcing_percentage() {
    let hs = hosts(2);
    let d = Detector::new(
        config(|c| {
            c.consecutive_5xx = Some(u(100));
            c.consecutive_gateway_failure = Some(u(2));
        }),
        hs.clone(),
    );
    assert_eq!(
        fail(&d, hs[0], 4),
        None,
        "enforcing_consecutive_gateway_failure defaults to 0"
    );
    let d = Detector::new(
        config(|c| {
            c.consecutive_5xx = Some(u(100));
            c.consecutive_gateway_failure = Some(u(2));
            c.enforcing_consecutive_gateway_failure = Some(u(100));
        }),
        hs.clone(),
    );
    d.record(hs[0], Outcome::ConnectFailed);
    assert_eq!(
        d.record(hs[0], Outcome::Timeout),
        Some(EjectionReason::ConsecutiveGatewayFailure),
        "local-origin failures count as 503/504 when not split"
    );
}

#[tokio::test(start_paused = true)]
async fn split_local_origin_errors_have_their_own_counter() {
    let hs = hosts(2);
    let d = Detector::new(
        config(|c| {
            c.split_external_local_origin_errors = true;
            c.consecutive_local_origin_failure = Some(u(2));
        }),
        hs.clone(),
    );
    d.record(hs[0], Outcome::ConnectFailed);
    d.record(hs[0], Outcome::ConnectSuccess);
    assert_eq!(d.record(hs[0], Outcome::ConnectFailed), None);
    assert_eq!(
        fail(&d, hs[0], 4),
        None,
        "external 5xx do not add to the local count (consecutive_5xx is 5)"
    );
    assert_eq!(
        d.record(hs[0], Outcome::ConnectFailed),
        None,
        "an answer, even a 5xx, means the connection worked: the local run restarted"
    );
    assert_eq!(
        d.record(hs[0], Outcome::Reset),
        Some(EjectionReason::ConsecutiveLocalOriginFailure)
    );
}

#[tokio::test(start_paused = true)]
async fn success_rate_sweep_ejects_the_outlier() {
    let hs = hosts(5);
    let d = Detector::new(
        config(|c| {
            c.consecutive_5xx = Some(u(0));
            c.success_rate_request_volume = Some(u(10));
        }),
        hs.clone(),
    );
    for (i, h) in hs.iter().enumerate() {
        for n in 0..20 {
            let status = if i == 4 && n % 2 == 0 { 500 } else { 200 };
            d.record(*h, Outcome::Response(status));
        }
    }
    assert!(
        d.ejected_hosts().is_empty(),
        "consecutive_5xx 0 disables inline ejection"
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(d.on_interval(), vec![hs[4]]);
    // Counts were reset: the next interval has no data and ejects nothing.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(d.on_interval().is_empty());

    let istio = Detector::new(
        config(|c| {
            c.enforcing_success_rate = Some(u(0));
            c.success_rate_request_volume = Some(u(10));
        }),
        hs.clone(),
    );
    for h in &hs {
        for n in 0..20 {
            istio.record(
                *h,
                Outcome::Response(if *h == hs[4] && n % 2 == 0 { 500 } else { 200 }),
            );
        }
    }
    assert!(
        istio.on_interval().is_empty(),
        "Istio's enforcing_success_rate 0"
    );
}

#[tokio::test(start_paused = true)]
async fn timer_runs_the_sweep_and_stops_with_the_detector() {
    let hs = hosts(3);
    let d = Arc::new(Detector::new(config(|_| {}), hs.clone()));
    let timer = d.spawn_timer();
    fail(&d, hs[0], 5);
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(d.is_ejected(hs[0]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!d.is_ejected(hs[0]));
    drop(d);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(timer.is_finished());
}

#[tokio::test(start_paused = true)]
async fn panic_threshold_stops_avoiding_ejected_hosts() {
    let hs = hosts(3);
    let d = Detector::new(
        config(|c| c.max_ejection_percent = Some(u(100))),
        hs.clone(),
    );
    assert_eq!(d.avoid(50.0), None, "nothing ejected");
    fail(&d, hs[0], 5);
    assert_eq!(
        d.avoid(50.0).as_deref(),
        Some(&vec![hs[0]]),
        "2 of 3 healthy: 67% >= 50%"
    );
    fail(&d, hs[1], 5);
    assert_eq!(d.ejected_hosts(), vec![hs[0], hs[1]]);
    assert_eq!(
        d.avoid(50.0),
        None,
        "1 of 3 healthy: panic, balance over all"
    );
    assert!(d.avoid(0.0).is_some(), "a zero threshold never panics");
}
