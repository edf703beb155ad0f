use std::collections::HashMap;
use std::net::SocketAddr;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::cluster::stats::ClusterStats;
use crate::cluster::transport::TransportSocket;
use crate::stats::Store;

fn entry(ip: u8, priority: u32, health: HealthStatus) -> HostEntry {
    let stats = ClusterStats::new(&Store::default(), "t");
    HostEntry {
        host: Arc::new(Host::new(
            SocketAddr::from(([10, 0, 0, ip], 80)),
            String::new(),
            TransportSocket::Plaintext,
            Arc::default(),
            stats,
        )),
        weight: 1,
        health,
        priority,
        locality: Locality::default(),
        locality_weight: None,
    }
}

fn set(entries: Vec<HostEntry>, threshold: f64) -> HostSet {
    HostSet::new(entries, &LbPolicy::RoundRobin, threshold, 140, false)
}

fn counts(set: &HostSet, n: usize, excluded: &[SocketAddr]) -> HashMap<u8, usize> {
    let mut rng = StdRng::seed_from_u64(42);
    let ctx = LbContext {
        excluded,
        ..LbContext::default()
    };
    let mut counts = HashMap::new();
    for _ in 0..n {
        let host = set.select(&ctx, &mut rng).unwrap();
        let SocketAddr::V4(v4) = host.address() else {
            unreachable!()
        };
        *counts.entry(v4.ip().octets()[3]).or_default() += 1;
    }
    counts
}

use HealthStatus::{Healthy, Unhealthy};

#[test]
fn all_healthy_priority_zero_takes_everything() {
    let s = set(vec![entry(1, 0, Healthy), entry(2, 1, Healthy)], 50.0);
    assert_eq!(s.priority_load(), [100, 0]);
    let c = counts(&s, 100, &[]);
    assert_eq!(c.get(&1), Some(&100));
}

#[test]
fn degraded_priority_spills_over_by_overprovisioned_health() {
    // P0: 2 of 4 healthy -> 140% * 0.5 = 70% health.
    let s = set(
        vec![
            entry(1, 0, Healthy),
            entry(2, 0, Healthy),
            entry(3, 0, Unhealthy),
            entry(4, 0, HealthStatus::Draining),
            entry(5, 1, Healthy),
        ],
        50.0,
    );
    assert_eq!(s.priority_load(), [70, 30]);
    let c = counts(&s, 10_000, &[]);
    assert_eq!(c.get(&3), None, "unhealthy host picked");
    assert_eq!(c.get(&4), None, "draining host picked");
    let p1 = *c.get(&5).unwrap();
    assert!((2_700..3_300).contains(&p1), "{c:?}");
}

#[test]
fn a_priority_below_the_panic_threshold_uses_all_its_hosts() {
    // P0: 1 of 4 healthy = 25% < 50%: panic; health 35%, P1 gets 65%.
    let s = set(
        vec![
            entry(1, 0, Healthy),
            entry(2, 0, Unhealthy),
            entry(3, 0, Unhealthy),
            entry(4, 0, Unhealthy),
            entry(5, 1, Healthy),
        ],
        50.0,
    );
    assert_eq!(s.priority_load(), [35, 65]);
    let c = counts(&s, 10_000, &[]);
    for ip in 1..=4 {
        let n = *c.get(&ip).unwrap_or(&0);
        assert!((700..1_050).contains(&n), "{c:?}");
    }
}

#[test]
fn zero_threshold_disables_panic() {
    let s = set(
        vec![
            entry(1, 0, Healthy),
            entry(2, 0, Unhealthy),
            entry(3, 0, Unhealthy),
        ],
        0.0,
    );
    let c = counts(&s, 100, &[]);
    assert_eq!(c.get(&1), Some(&100));
}

#[test]
fn no_healthy_host_anywhere_balances_over_all() {
    let s = set(
        vec![
            entry(1, 0, Unhealthy),
            entry(2, 1, Unhealthy),
            entry(3, 1, Unhealthy),
        ],
        50.0,
    );
    // Total panic: load by host count.
    assert_eq!(s.priority_load().iter().sum::<u32>(), 100);
    assert_eq!(s.priority_load(), [34, 66]);
    let c = counts(&s, 3_000, &[]);
    assert_eq!(c.len(), 3);
}

#[test]
fn excluded_hosts_are_avoided_when_another_exists() {
    let s = set(vec![entry(1, 0, Healthy), entry(2, 0, Healthy)], 50.0);
    let excluded = [SocketAddr::from(([10, 0, 0, 1], 80))];
    let c = counts(&s, 100, &excluded);
    assert_eq!(c.get(&2), Some(&100));
    // The only host is returned even if excluded.
    let single = set(vec![entry(1, 0, Healthy)], 50.0);
    assert_eq!(counts(&single, 5, &excluded).get(&1), Some(&5));
}

#[test]
fn locality_weights_split_traffic() {
    let mut a = entry(1, 0, Healthy);
    a.locality.zone = "a".into();
    a.locality_weight = Some(1);
    let mut b = entry(2, 0, Healthy);
    b.locality.zone = "b".into();
    b.locality_weight = Some(3);
    let s = HostSet::new(vec![a, b], &LbPolicy::RoundRobin, 50.0, 140, true);
    let c = counts(&s, 10_000, &[]);
    let heavy = *c.get(&2).unwrap();
    assert!((7_200..7_800).contains(&heavy), "{c:?}");
}

#[test]
fn empty_set_selects_nothing() {
    let mut rng = StdRng::seed_from_u64(1);
    assert!(
        HostSet::empty()
            .select(&LbContext::default(), &mut rng)
            .is_none()
    );
}

#[test]
fn distribute_matches_envoy() {
    assert_eq!(distribute(&[100, 100], 100), [100, 0]);
    assert_eq!(distribute(&[70, 100], 100), [70, 30]);
    assert_eq!(distribute(&[20, 30], 50), [40, 60]);
    assert_eq!(distribute(&[33, 33, 33], 99), [34, 33, 33]);
    assert_eq!(distribute(&[0, 0], 0), [100, 0]);
}
