//! Retry budgets: the limits that stop retries from multiplying an outage.
//!
//! Envoy's `circuit_breakers.thresholds[].retry_budget` ([`RetryBudget`]) bounds *concurrent*
//! retries to a percentage of the cluster's active and pending requests, with a floor
//! (`min_retry_concurrency`). When a cluster configures no budget, Envoy only has
//! `max_retries` (3 concurrent retries), which does nothing against a slow steady retry storm.
//! Ferry then also applies [`RatioBudget`], modelled on Linkerd's: over a sliding 10 s window,
//! retries may be at most 20% of the original requests plus a floor of 10 retries per second, so
//! a fully failing cluster sees at most about 1.2x its offered load, never 1 + num_retries times.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// `retry_budget` from a circuit breaker threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// `budget_percent` (default 20): concurrent retries allowed per 100 active requests.
    pub percent: f64,
    /// `min_retry_concurrency` (default 3): retries always allowed regardless of load.
    pub min_concurrency: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: 20.0,
            min_concurrency: 3,
        }
    }
}

impl RetryBudget {
    /// The number of concurrent retries allowed given the active and pending requests.
    pub fn limit(&self, active_requests: u64, pending_requests: u64) -> u64 {
        let load = active_requests.saturating_add(pending_requests) as f64;
        let by_percent = (load * self.percent / 100.0) as u64;
        by_percent.max(u64::from(self.min_concurrency))
    }

    /// Whether one more retry fits next to `active_retries` already in flight.
    pub fn allows(&self, active_retries: u64, active_requests: u64, pending_requests: u64) -> bool {
        active_retries < self.limit(active_requests, pending_requests)
    }
}

/// Parameters of the default ratio budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioBudgetConfig {
    /// Retries allowed per original request (0.2 = 20%).
    pub ratio: f64,
    /// Retries always allowed per second, whatever the request rate.
    pub min_per_second: u32,
    /// The sliding window over which requests and retries are counted.
    pub window: Duration,
}

impl Default for RatioBudgetConfig {
    /// Linkerd's defaults: 20% over 10 s with a floor of 10 retries per second.
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

const SLOTS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    requests: u64,
    retries: u64,
}

#[derive(Debug)]
struct Window {
    slots: [Slot; SLOTS],
    /// The start of the slot `current` counts into.
    slot_start: Instant,
    current: usize,
}

/// Ferry's default retry budget when a cluster configures none: retries within a ratio of the
/// original requests over a sliding window, plus a floor. Shared by all requests of a cluster.
#[derive(Debug)]
pub struct RatioBudget {
    config: RatioBudgetConfig,
    slot_len: Duration,
    window: Mutex<Window>,
}

impl Default for RatioBudget {
    fn default() -> Self {
        Self::new(RatioBudgetConfig::default())
    }
}

impl RatioBudget {
    /// A budget with the given parameters.
    pub fn new(config: RatioBudgetConfig) -> Self {
        let slot_len = (config.window / SLOTS as u32).max(Duration::from_millis(1));
        Self {
            config,
            slot_len,
            window: Mutex::new(Window {
                slots: [Slot::default(); SLOTS],
                slot_start: Instant::now(),
                current: 0,
            }),
        }
    }

    fn with_window<T>(&self, f: impl FnOnce(&mut Window) -> T) -> T {
        let mut w = match self.window.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(w.slot_start);
        let steps = (elapsed.as_nanos() / self.slot_len.as_nanos()) as usize;
        if steps > 0 {
            for _ in 0..steps.min(SLOTS) {
                w.current = (w.current + 1) % SLOTS;
                let current = w.current;
                w.slots[current] = Slot::default();
            }
            w.slot_start += self.slot_len * steps.min(u32::MAX as usize) as u32;
        }
        f(&mut w)
    }

    /// Records an original (non-retry) request.
    pub fn deposit(&self) {
        self.with_window(|w| {
            let current = w.current;
            w.slots[current].requests += 1;
        });
    }

    /// Takes one retry from the budget; false (and nothing taken) when it is exhausted.
    pub fn try_withdraw(&self) -> bool {
        let floor = f64::from(self.config.min_per_second) * self.config.window.as_secs_f64();
        let ratio = self.config.ratio;
        self.with_window(|w| {
            let requests: u64 = w.slots.iter().map(|s| s.requests).sum();
            let retries: u64 = w.slots.iter().map(|s| s.retries).sum();
            let allowed = floor + ratio * requests as f64;
            if (retries + 1) as f64 <= allowed {
                let current = w.current;
                w.slots[current].retries += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_budget_has_a_floor_and_a_percentage() {
        let b = RetryBudget::default();
        assert_eq!(b.limit(0, 0), 3);
        assert_eq!(b.limit(100, 0), 20);
        assert_eq!(b.limit(50, 50), 20);
        assert!(b.allows(2, 0, 0));
        assert!(!b.allows(3, 0, 0));
        assert!(b.allows(19, 100, 0));
        assert!(!b.allows(20, 100, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_budget_allows_floor_plus_ratio() {
        let budget = RatioBudget::new(RatioBudgetConfig {
            ratio: 0.2,
            min_per_second: 1,
            window: Duration::from_secs(10),
        });
        for _ in 0..100 {
            budget.deposit();
        }
        // floor 10 + 20% of 100 = 30 retries.
        let granted = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 30);
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_budget_recovers_as_the_window_slides() {
        let budget = RatioBudget::new(RatioBudgetConfig {
            ratio: 0.0,
            min_per_second: 1,
            window: Duration::from_secs(10),
        });
        assert_eq!((0..50).filter(|_| budget.try_withdraw()).count(), 10);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!budget.try_withdraw());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!((0..50).filter(|_| budget.try_withdraw()).count(), 10);
    }
}
