//! Load balancers: given the hosts of one priority level (or locality), pick one.
//!
//! Each balancer is built off the request path from a list of [`LbEntry`] (the host's hash key
//! and weight) and picks an index into that list; it knows nothing about hosts, pools or
//! health, which keeps it pure and testable with seeded randomness. The cluster's host set
//! ([`crate::cluster::priority`]) decides which list a request balances over (healthy hosts,
//! all hosts in panic mode, one locality). The set of balancers is a closed enum, so the hot
//! path is a `match`, not a virtual call.

use rand::Rng;

use crate::cluster::LbPolicy;

mod edf;
pub mod least_request;
pub mod maglev;
pub mod random;
pub mod ring_hash;
pub mod round_robin;
mod weights;

pub use least_request::LeastRequest;
pub use maglev::Maglev;
pub use random::Random;
pub use ring_hash::RingHash;
pub use round_robin::RoundRobin;
pub use weights::WeightedIndex;

/// One host as a balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbEntry {
    /// The key consistent hashing places the host by: its address as Envoy prints it
    /// (`10.0.0.1:8080`, `[::1]:80`).
    pub key: String,
    /// The endpoint's `load_balancing_weight` (at least 1).
    pub weight: u32,
}

/// A built load balancer over a fixed list of entries.
#[derive(Debug)]
pub enum LoadBalancer {
    /// ROUND_ROBIN.
    RoundRobin(RoundRobin),
    /// LEAST_REQUEST.
    LeastRequest(LeastRequest),
    /// RANDOM.
    Random(Random),
    /// RING_HASH.
    RingHash(RingHash),
    /// MAGLEV.
    Maglev(Maglev),
}

impl LoadBalancer {
    /// Builds the balancer `policy` asks for over `entries` (CLUSTER_PROVIDED, whose hosts are
    /// chosen elsewhere, falls back to round robin).
    pub fn new(policy: &LbPolicy, entries: &[LbEntry]) -> Self {
        match policy {
            LbPolicy::RoundRobin | LbPolicy::ClusterProvided => {
                Self::RoundRobin(RoundRobin::new(entries))
            }
            LbPolicy::LeastRequest { choice_count } => {
                Self::LeastRequest(LeastRequest::new(entries, *choice_count))
            }
            LbPolicy::Random => Self::Random(Random::new(entries)),
            LbPolicy::RingHash {
                minimum_ring_size,
                maximum_ring_size,
            } => Self::RingHash(RingHash::new(
                entries,
                *minimum_ring_size,
                *maximum_ring_size,
            )),
            LbPolicy::Maglev { table_size } => Self::Maglev(Maglev::new(entries, *table_size)),
        }
    }

    /// Picks an entry index; `None` only when the list is empty. `hash` is the request's
    /// hash-policy value (consistent hashing falls back to random without one); `active`
    /// returns an entry's in-flight request count.
    pub fn pick<R: Rng + ?Sized>(
        &self,
        hash: Option<u64>,
        active: &dyn Fn(usize) -> u64,
        rng: &mut R,
    ) -> Option<usize> {
        match self {
            Self::RoundRobin(lb) => lb.pick(),
            Self::LeastRequest(lb) => lb.pick(active, rng),
            Self::Random(lb) => lb.pick(rng),
            Self::RingHash(lb) => lb.pick(hash.unwrap_or_else(|| rng.random())),
            Self::Maglev(lb) => lb.pick(hash.unwrap_or_else(|| rng.random())),
        }
    }
}
