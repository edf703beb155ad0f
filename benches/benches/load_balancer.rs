//! Criterion micro-benchmark of the router's second step: picking a host. Every balancer Envoy
//! offers, over 100 hosts (a large deployment's endpoints in one locality), with the weights
//! and per-host active-request counts a busy cluster has.
//! `cargo bench -p ferry-benches --bench load_balancer`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_proxy::cluster::LbPolicy;
use ferry_proxy::load_balancer::{LbEntry, LoadBalancer};
use rand::SeedableRng;
use rand::rngs::SmallRng;

/// Hosts behind the cluster.
const HOSTS: usize = 100;

fn entries(weighted: bool) -> Vec<LbEntry> {
    (0..HOSTS)
        .map(|i| LbEntry {
            key: format!("10.1.{}.{}:8080", i / 250, i % 250),
            // Canary-style weights: a few heavy hosts among many light ones.
            weight: if weighted && i % 10 == 0 { 5 } else { 1 },
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let policies = [
        ("round robin", LbPolicy::RoundRobin, false),
        ("round robin weighted", LbPolicy::RoundRobin, true),
        (
            "least request",
            LbPolicy::LeastRequest { choice_count: 2 },
            false,
        ),
        ("random", LbPolicy::Random, false),
        (
            "ring hash",
            LbPolicy::RingHash {
                minimum_ring_size: 1024,
                maximum_ring_size: 8 * 1024 * 1024,
            },
            false,
        ),
        ("maglev", LbPolicy::Maglev { table_size: 65537 }, false),
    ];
    // In-flight requests per host, as LEAST_REQUEST reads them.
    let active: Vec<u64> = (0..HOSTS as u64).map(|i| (i * 7) % 13).collect();
    let active = |i: usize| active.get(i).copied().unwrap_or(0);
    let mut group = c.benchmark_group("load_balancer_pick");
    for (name, policy, weighted) in &policies {
        let lb = LoadBalancer::new(policy, &entries(*weighted));
        let mut rng = SmallRng::seed_from_u64(7);
        let mut hash = 0x9e37_79b9_7f4a_7c15_u64;
        assert!(lb.pick(Some(hash), &active, &mut rng).is_some(), "{name}");
        group.bench_function(*name, |b| {
            b.iter(|| {
                // A different request hash each time, as consistent hashing sees in practice.
                hash = hash.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                black_box(lb.pick(Some(black_box(hash)), &active, &mut rng))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
