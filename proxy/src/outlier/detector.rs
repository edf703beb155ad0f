//! The per-cluster outlier detector: per-host counters, inline consecutive-failure ejection,
//! and the interval timer (un-ejection, success-rate sweeps, multiplier decay).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rand::Rng;
use tokio::time::Instant;

use super::Outcome;
use super::success_rate::{failure_percentage_outliers, success_rate_outliers};
use crate::cluster::OutlierDetection;

/// Envoy's `failure_percentage_minimum_hosts` default (the field is not carried yet).
const FAILURE_PERCENTAGE_MINIMUM_HOSTS: usize = 5;
/// Envoy's `failure_percentage_request_volume` default.
const FAILURE_PERCENTAGE_REQUEST_VOLUME: u64 = 50;

/// Why a host was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionReason {
    /// `consecutive_5xx`.
    Consecutive5xx,
    /// `consecutive_gateway_failure`.
    ConsecutiveGatewayFailure,
    /// `consecutive_local_origin_failure` (split mode).
    ConsecutiveLocalOriginFailure,
    /// Success rate below the cluster's mean by `success_rate_stdev_factor` deviations.
    SuccessRate,
    /// Failure percentage at or above `failure_percentage_threshold`.
    FailurePercentage,
}

#[derive(Debug, Default)]
struct HostState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    interval_success: u64,
    interval_total: u64,
    ejected_at: Option<Instant>,
    /// Envoy's ejection-time multiplier: grows on ejection, decays while healthy.
    multiplier: u32,
    /// Ejections ever (for stats and tests).
    ejections: u32,
    unejected_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    hosts: HashMap<SocketAddr, HostState>,
    ejected: usize,
}

/// A cluster's outlier detector.
#[derive(Debug)]
pub struct Detector {
    config: OutlierDetection,
    state: Mutex<State>,
    /// The ejected hosts, sorted, republished on every change so host selection reads them
    /// without taking the lock.
    ejected: ArcSwap<Vec<SocketAddr>>,
}

fn roll(percent: u32) -> bool {
    match percent {
        0 => false,
        100.. => true,
        p => rand::rng().random_range(0..100) < p,
    }
}

impl Detector {
    /// A detector for the cluster's `outlier_detection`, tracking `hosts`.
    pub fn new(config: OutlierDetection, hosts: impl IntoIterator<Item = SocketAddr>) -> Self {
        let detector = Self {
            config,
            state: Mutex::new(State::default()),
            ejected: ArcSwap::from_pointee(Vec::new()),
        };
        detector.update_hosts(hosts);
        detector
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn publish(&self, state: &State) {
        let mut v: Vec<SocketAddr> = state
            .hosts
            .iter()
            .filter(|(_, h)| h.ejected_at.is_some())
            .map(|(a, _)| *a)
            .collect();
        v.sort();
        self.ejected.store(Arc::new(v));
    }

    /// The ejected hosts (sorted), lock-free: what host selection avoids.
    pub fn ejected(&self) -> Arc<Vec<SocketAddr>> {
        self.ejected.load_full()
    }

    /// The hosts selection should avoid: the ejected ones, unless too few would remain. Like
    /// Envoy's healthy panic threshold, when fewer than `panic_threshold` percent of the hosts
    /// are not ejected, ejection is ignored and load is balanced over all hosts (None).
    /// (Approximation: EDS health is not counted here; the host set applies its own panic
    /// arithmetic to EDS-unhealthy hosts.)
    pub fn avoid(&self, panic_threshold: f64) -> Option<Arc<Vec<SocketAddr>>> {
        let ejected = self.ejected();
        if ejected.is_empty() {
            return None;
        }
        let total = self.host_count();
        if total == 0 {
            return None;
        }
        let healthy = total.saturating_sub(ejected.len()) as f64 * 100.0 / total as f64;
        if healthy < panic_threshold {
            tracing::debug!(
                ejected = ejected.len(),
                total,
                "outlier panic: balancing over all hosts"
            );
            return None;
        }
        Some(ejected)
    }

    /// How many hosts the detector tracks.
    pub fn host_count(&self) -> usize {
        self.lock().hosts.len()
    }

    /// Applies an EDS update: hosts that remain keep their state (ejection included), new hosts
    /// start clean, removed hosts are forgotten.
    pub fn update_hosts(&self, hosts: impl IntoIterator<Item = SocketAddr>) {
        let mut state = self.lock();
        let mut next = HashMap::new();
        for addr in hosts {
            let host = state.hosts.remove(&addr).unwrap_or_default();
            next.insert(addr, host);
        }
        state.ejected = next.values().filter(|h| h.ejected_at.is_some()).count();
        state.hosts = next;
        self.publish(&state);
    }

    /// Whether `host` is ejected (the load balancer treats it as unhealthy).
    pub fn is_ejected(&self, host: SocketAddr) -> bool {
        self.lock()
            .hosts
            .get(&host)
            .is_some_and(|h| h.ejected_at.is_some())
    }

    /// The ejected hosts.
    pub fn ejected_hosts(&self) -> Vec<SocketAddr> {
        self.ejected().to_vec()
    }

    /// How many times `host` has been ejected since it appeared.
    pub fn ejection_count(&self, host: SocketAddr) -> u32 {
        self.lock().hosts.get(&host).map_or(0, |h| h.ejections)
    }

    /// The ejection time for the next ejection of a host with `multiplier` ejections in a row:
    /// `base_ejection_time * multiplier`, capped at `max(base, max_ejection_time)`.
    pub fn ejection_time(&self, multiplier: u32) -> Duration {
        let cap = self
            .config
            .max_ejection_time
            .max(self.config.base_ejection_time);
        self.config
            .base_ejection_time
            .saturating_mul(multiplier.max(1))
            .min(cap)
    }

    /// Feeds one attempt's result; returns the reason if it ejected the host.
    pub fn record(&self, host: SocketAddr, outcome: Outcome) -> Option<EjectionReason> {
        let c = &self.config;
        let mut state = self.lock();
        let total = state.hosts.len();
        let ejected = state.ejected;
        let h = state.hosts.get_mut(&host)?;
        if h.ejected_at.is_some() {
            return None;
        }
        let mut reason = None;
        if c.split_external_local_origin_errors && outcome.is_local_origin() {
            if outcome == Outcome::ConnectSuccess {
                h.consecutive_local = 0;
            } else {
                h.consecutive_local += 1;
                if c.consecutive_local_origin_failure > 0
                    && h.consecutive_local >= c.consecutive_local_origin_failure
                {
                    h.consecutive_local = 0;
                    if roll(c.enforcing_consecutive_local_origin_failure) {
                        reason = Some(EjectionReason::ConsecutiveLocalOriginFailure);
                    }
                }
            }
        } else if let Some(status) = outcome.as_status() {
            if c.split_external_local_origin_errors {
                // An answer means the connection worked: Envoy's router reports a local-origin
                // success with every response, which ends a run of local-origin failures.
                h.consecutive_local = 0;
            }
            h.interval_total += 1;
            if status < 500 {
                h.interval_success += 1;
                h.consecutive_5xx = 0;
            } else {
                h.consecutive_5xx += 1;
            }
            if matches!(status, 502..=504) {
                h.consecutive_gateway += 1;
            } else {
                h.consecutive_gateway = 0;
            }
            if c.consecutive_5xx > 0 && h.consecutive_5xx >= c.consecutive_5xx {
                h.consecutive_5xx = 0;
                if roll(c.enforcing_consecutive_5xx) {
                    reason = Some(EjectionReason::Consecutive5xx);
                }
            }
            if reason.is_none()
                && c.consecutive_gateway_failure > 0
                && h.consecutive_gateway >= c.consecutive_gateway_failure
            {
                h.consecutive_gateway = 0;
                if roll(c.enforcing_consecutive_gateway_failure) {
                    reason = Some(EjectionReason::ConsecutiveGatewayFailure);
                }
            }
        }
        let reason = reason?;
        if !self.may_eject(ejected, total) {
            tracing::debug!(host = %host, ?reason, "outlier ejection skipped: max_ejection_percent");
            return None;
        }
        self.eject(&mut state, host, reason);
        Some(reason)
    }

    /// `max_ejection_percent`, except that one host may always be ejected (Envoy).
    fn may_eject(&self, ejected: usize, total: usize) -> bool {
        if total == 0 {
            return false;
        }
        ejected == 0
            || (100 * (ejected + 1)) as f64 / total as f64
                <= f64::from(self.config.max_ejection_percent)
    }

    fn eject(&self, state: &mut State, host: SocketAddr, reason: EjectionReason) {
        let Some(h) = state.hosts.get_mut(&host) else {
            return;
        };
        let now = Instant::now();
        h.ejected_at = Some(now);
        h.ejections += 1;
        let cap = self
            .config
            .max_ejection_time
            .max(self.config.base_ejection_time);
        if self.config.base_ejection_time.saturating_mul(h.multiplier) < cap {
            h.multiplier += 1;
        }
        let duration = self.ejection_time(h.multiplier);
        state.ejected += 1;
        self.publish(state);
        tracing::info!(host = %host, ?reason, ejection_ms = duration.as_millis() as u64, "outlier ejected");
    }

    /// The interval sweep: returns hosts whose ejection time has passed, decays the multiplier
    /// of hosts that stayed healthy, then runs the success-rate and failure-percentage checks
    /// over this interval's counts and resets them. Returns the hosts ejected by the sweep.
    pub fn on_interval(&self) -> Vec<SocketAddr> {
        let c = &self.config;
        let now = Instant::now();
        let mut state = self.lock();
        let mut returned = 0;
        for (addr, h) in state.hosts.iter_mut() {
            match h.ejected_at {
                Some(at)
                    if now.saturating_duration_since(at) >= self.ejection_time(h.multiplier) =>
                {
                    h.ejected_at = None;
                    h.unejected_at = Some(now);
                    h.consecutive_5xx = 0;
                    h.consecutive_gateway = 0;
                    h.consecutive_local = 0;
                    returned += 1;
                    tracing::info!(host = %addr, "outlier returned");
                }
                Some(_) => {}
                None => {
                    let healthy_for_an_interval = h
                        .unejected_at
                        .is_none_or(|at| now.saturating_duration_since(at) >= c.interval);
                    if healthy_for_an_interval && h.multiplier > 0 {
                        h.multiplier -= 1;
                    }
                }
            }
        }
        state.ejected -= returned;
        if returned > 0 {
            self.publish(&state);
        }

        let mut addrs: Vec<SocketAddr> = state.hosts.keys().copied().collect();
        addrs.sort();
        let rates = |volume: u64| -> Vec<(usize, f64)> {
            addrs
                .iter()
                .enumerate()
                .filter_map(|(i, a)| {
                    let h = state.hosts.get(a)?;
                    (h.ejected_at.is_none() && h.interval_total >= volume.max(1)).then(|| {
                        (
                            i,
                            100.0 * h.interval_success as f64 / h.interval_total as f64,
                        )
                    })
                })
                .collect()
        };
        let mut candidates: Vec<(usize, EjectionReason)> = Vec::new();
        if c.enforcing_success_rate > 0 {
            let r = rates(u64::from(c.success_rate_request_volume));
            let factor = f64::from(c.success_rate_stdev_factor) / 1000.0;
            for i in success_rate_outliers(&r, c.success_rate_minimum_hosts as usize, factor) {
                if roll(c.enforcing_success_rate) {
                    candidates.push((i, EjectionReason::SuccessRate));
                }
            }
        }
        if c.enforcing_failure_percentage > 0 {
            let r = rates(FAILURE_PERCENTAGE_REQUEST_VOLUME);
            let threshold = f64::from(c.failure_percentage_threshold);
            for i in failure_percentage_outliers(&r, FAILURE_PERCENTAGE_MINIMUM_HOSTS, threshold) {
                if roll(c.enforcing_failure_percentage) && !candidates.iter().any(|(j, _)| *j == i)
                {
                    candidates.push((i, EjectionReason::FailurePercentage));
                }
            }
        }
        let mut ejected = Vec::new();
        for (i, reason) in candidates {
            let addr = addrs[i];
            if self.may_eject(state.ejected, state.hosts.len()) {
                self.eject(&mut state, addr, reason);
                ejected.push(addr);
            }
        }
        for h in state.hosts.values_mut() {
            h.interval_success = 0;
            h.interval_total = 0;
        }
        ejected
    }

    /// Runs [`Self::on_interval`] every `interval` until the detector is dropped.
    pub fn spawn_timer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        let interval = self.config.interval.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(detector) = weak.upgrade() else {
                    return;
                };
                detector.on_interval();
            }
        })
    }
}

#[cfg(test)]
#[path = "detector_tests.rs"]
mod tests;
