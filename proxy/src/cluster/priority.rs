//! The cluster's host set: hosts grouped by priority, with Envoy's health-adjusted priority
//! load, panic mode and locality weighting computed once per host set change.
//!
//! Envoy's arithmetic, reproduced so the same EDS gives the same traffic split:
//! - a level's health is `min(100, overprovisioning_factor * healthy / total)` percent;
//! - levels take load in priority order, each up to its health, normalised by the total health
//!   (capped at 100), the rounding remainder going to the first level with any health;
//! - a level whose healthy share is below `healthy_panic_threshold` balances over all of its
//!   hosts (panic); when no level has any health, load is spread by host count over all hosts;
//! - with `locality_weighted_lb_config`, a locality is picked by
//!   `weight * min(1, overprovisioning_factor * healthy / total)` before the host.

use std::sync::Arc;

use rand::Rng;

use super::LbContext;
use super::config::LbPolicy;
use super::host::Host;
use super::load_assignment::{HealthStatus, Locality};
use crate::load_balancer::{LbEntry, LoadBalancer};

/// One host with the attributes an assignment gives it.
#[derive(Debug, Clone)]
pub struct HostEntry {
    /// The host (shared across updates while it stays).
    pub host: Arc<Host>,
    /// Endpoint weight.
    pub weight: u32,
    /// EDS health status.
    pub health: HealthStatus,
    /// Priority level.
    pub priority: u32,
    /// Locality.
    pub locality: Locality,
    /// The locality's weight, if given.
    pub locality_weight: Option<u32>,
}

/// How the hosts of a cluster are chosen from; immutable, rebuilt on every host change.
#[derive(Debug)]
pub struct HostSet {
    entries: Vec<HostEntry>,
    levels: Vec<Level>,
    load: Vec<u32>,
    total_panic: bool,
}

#[derive(Debug)]
struct Level {
    hosts: Vec<Arc<Host>>,
    healthy: Vec<Arc<Host>>,
    /// Over all hosts, for panic mode; `None` when every host is healthy (then it would equal
    /// `healthy_lb`, and a Maglev table is worth not building twice).
    all_lb: Option<LoadBalancer>,
    healthy_lb: LoadBalancer,
    panic: bool,
    localities: Vec<LocalityLb>,
}

#[derive(Debug)]
struct LocalityLb {
    effective_weight: f64,
    hosts: Vec<Arc<Host>>,
    lb: LoadBalancer,
}

impl HostSet {
    /// An empty set (EDS not arrived, DNS not resolved yet).
    pub fn empty() -> Self {
        Self {
            entries: Vec::new(),
            levels: Vec::new(),
            load: Vec::new(),
            total_panic: false,
        }
    }

    /// Builds the set; `panic_threshold` in percent, `overprovisioning` in percent (140).
    pub fn new(
        mut entries: Vec<HostEntry>,
        policy: &LbPolicy,
        panic_threshold: f64,
        overprovisioning: u32,
        locality_weighted: bool,
    ) -> Self {
        entries.sort_by_key(|e| e.priority);
        // Kept for the set's lifetime, one set per cluster: sized exactly, not by growth.
        entries.shrink_to_fit();
        let level_count = entries.chunk_by(|a, b| a.priority == b.priority).count();
        let mut levels = Vec::with_capacity(level_count);
        let mut health = Vec::with_capacity(level_count);
        let mut counts = Vec::with_capacity(level_count);
        for group in entries.chunk_by(|a, b| a.priority == b.priority) {
            let total = group.len() as u64;
            let healthy_count = group.iter().filter(|e| e.health.is_healthy()).count() as u64;
            health.push((u64::from(overprovisioning) * healthy_count / total).min(100) as u32);
            counts.push(total);
            let panic = (healthy_count as f64) * 100.0 / (total as f64) < panic_threshold;
            let localities = if locality_weighted {
                localities(group, policy, overprovisioning)
            } else {
                Vec::new()
            };
            let healthy: Vec<&HostEntry> = group.iter().filter(|e| e.health.is_healthy()).collect();
            levels.push(Level {
                hosts: group.iter().map(|e| e.host.clone()).collect(),
                healthy: healthy.iter().map(|e| e.host.clone()).collect(),
                all_lb: (healthy.len() < group.len())
                    .then(|| LoadBalancer::new(policy, &lb_entries(group.iter()))),
                healthy_lb: LoadBalancer::new(policy, &lb_entries(healthy.into_iter())),
                panic,
                localities,
            });
        }
        let total_health: u32 = health.iter().sum::<u32>().min(100);
        let total_panic = total_health == 0;
        let load = if total_panic {
            distribute(
                &counts.iter().map(|c| *c as u32).collect::<Vec<_>>(),
                counts.iter().sum::<u64>() as u32,
            )
        } else {
            distribute(&health, total_health)
        };
        Self {
            entries,
            levels,
            load,
            total_panic,
        }
    }

    /// Every host with its attributes, by priority.
    pub fn entries(&self) -> &[HostEntry] {
        &self.entries
    }

    /// Hosts counted healthy and in total (`membership_healthy`, `membership_total`).
    pub fn membership(&self) -> (usize, usize) {
        let healthy = self
            .entries
            .iter()
            .filter(|e| e.health.is_healthy())
            .count();
        (healthy, self.entries.len())
    }

    /// The percent of traffic each priority level gets (for tests and `/clusters`).
    pub fn priority_load(&self) -> &[u32] {
        &self.load
    }

    /// Picks a host, avoiding `ctx.excluded` when any other host can take the request.
    pub fn select<R: Rng + ?Sized>(&self, ctx: &LbContext<'_>, rng: &mut R) -> Option<Arc<Host>> {
        let first = self.pick(ctx.hash, rng)?;
        if ctx.excluded.is_empty() || !ctx.excluded.contains(&first.address()) {
            return Some(first);
        }
        // Like Envoy's host_selection_retry_max_attempts: re-pick a few times (moving the hash
        // so consistent hashing can land elsewhere), then take any other healthy host.
        for attempt in 1..=3u64 {
            let hash = ctx.hash.map(|h| h.wrapping_add(attempt));
            if let Some(host) = self.pick(hash, rng)
                && !ctx.excluded.contains(&host.address())
            {
                return Some(host);
            }
        }
        let mut level_hosts = self.levels.iter().flat_map(|l| {
            if l.panic || self.total_panic {
                l.hosts.iter()
            } else {
                l.healthy.iter()
            }
        });
        level_hosts
            .find(|h| !ctx.excluded.contains(&h.address()))
            .cloned()
            .or(Some(first))
    }

    fn pick<R: Rng + ?Sized>(&self, hash: Option<u64>, rng: &mut R) -> Option<Arc<Host>> {
        if self.levels.is_empty() {
            return None;
        }
        let point = match hash {
            Some(h) => (h % 100) as u32,
            None => rng.random_range(0..100),
        };
        let mut cumulative = 0;
        let mut index = self.levels.len() - 1;
        for (i, load) in self.load.iter().enumerate() {
            cumulative += load;
            if point < cumulative {
                index = i;
                break;
            }
        }
        let level = &self.levels[index];
        let (hosts, lb) = if level.panic || self.total_panic {
            match &level.all_lb {
                Some(lb) => (&level.hosts, lb),
                None => (&level.healthy, &level.healthy_lb),
            }
        } else if let Some(locality) = pick_locality(&level.localities, rng) {
            (&locality.hosts, &locality.lb)
        } else {
            (&level.healthy, &level.healthy_lb)
        };
        let active = |i: usize| hosts[i].active_requests();
        lb.pick(hash, &active, rng).map(|i| hosts[i].clone())
    }
}

fn lb_entries<'a>(entries: impl Iterator<Item = &'a HostEntry>) -> Vec<LbEntry> {
    entries
        .map(|e| LbEntry {
            key: e.host.address().to_string(),
            weight: e.weight,
        })
        .collect()
}

fn localities(group: &[HostEntry], policy: &LbPolicy, overprovisioning: u32) -> Vec<LocalityLb> {
    let mut sorted: Vec<&HostEntry> = group.iter().collect();
    sorted.sort_by(|a, b| a.locality.cmp(&b.locality));
    sorted
        .chunk_by(|a, b| a.locality == b.locality)
        .map(|members| {
            let total = members.len() as f64;
            let healthy: Vec<&HostEntry> = members
                .iter()
                .copied()
                .filter(|e| e.health.is_healthy())
                .collect();
            let availability =
                (f64::from(overprovisioning) / 100.0 * healthy.len() as f64 / total).min(1.0);
            let weight = members[0].locality_weight.unwrap_or(0);
            LocalityLb {
                effective_weight: f64::from(weight) * availability,
                hosts: healthy.iter().map(|e| e.host.clone()).collect(),
                lb: LoadBalancer::new(policy, &lb_entries(healthy.into_iter())),
            }
        })
        .collect()
}

fn pick_locality<'a, R: Rng + ?Sized>(
    localities: &'a [LocalityLb],
    rng: &mut R,
) -> Option<&'a LocalityLb> {
    let total: f64 = localities.iter().map(|l| l.effective_weight).sum();
    if total <= 0.0 {
        return None;
    }
    let mut point = rng.random_range(0.0..total);
    for locality in localities {
        if point < locality.effective_weight {
            return Some(locality);
        }
        point -= locality.effective_weight;
    }
    localities.iter().rev().find(|l| l.effective_weight > 0.0)
}

/// Envoy's `distributeLoad`: each level gets up to `share * 100 / total` percent, in order;
/// the rounding remainder goes to the first level with any share.
fn distribute(shares: &[u32], total: u32) -> Vec<u32> {
    let mut load = vec![0; shares.len()];
    if total == 0 {
        if let Some(first) = load.first_mut() {
            *first = 100;
        }
        return load;
    }
    let mut remaining = 100u32;
    for (i, share) in shares.iter().enumerate() {
        load[i] = remaining.min(share * 100 / total);
        remaining -= load[i];
    }
    if remaining > 0
        && let Some(i) = shares.iter().position(|s| *s > 0)
    {
        load[i] += remaining;
    }
    load
}

#[cfg(test)]
#[path = "priority_tests.rs"]
mod tests;
