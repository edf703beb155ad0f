//! Retry budgets: the limits that stop retries from multiplying an outage.
//!
//! Envoy's `circuit_breakers.thresholds[].retry_budget` ([`RetryBudget`]) bounds *concurrent*
//! retries to a percentage of the cluster's active and pending requests, with a floor
//! (`min_retry_concurrency`). With a `budget_interval`, requests that started within the interval
//! count towards that load even once they completed ([`RecentRequests`]), so a burst of short
//! requests still earns budget for the retries that follow it (Istio sends it from a
//! DestinationRule's `retryBudget.budgetInterval`). When a cluster configures no budget, Envoy only has
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
    /// `budget_interval` (default 0: only active and pending requests count).
    pub interval: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: 20.0,
            min_concurrency: 3,
            interval: Duration::ZERO,
        }
    }
}

impl RetryBudget {
    /// The number of concurrent retries allowed given the active and pending requests and the
    /// requests started within `interval` (0 without one). Envoy counts a request that is both
    /// active and recent once; the larger of the two counts is that union's lower bound, which
    /// keeps the budget on the conservative side.
    pub fn limit(&self, active_requests: u64, pending_requests: u64, recent_requests: u64) -> u64 {
        let load = active_requests
            .saturating_add(pending_requests)
            .max(recent_requests) as f64;
        let by_percent = (load * self.percent / 100.0) as u64;
        by_percent.max(u64::from(self.min_concurrency))
    }

    /// Whether one more retry fits next to `active_retries` already in flight.
    pub fn allows(&self, active_retries: u64, active_requests: u64, pending_requests: u64) -> bool {
        active_retries < self.limit(active_requests, pending_requests, 0)
    }
}

/// Requests started within a retry budget's `budget_interval`, counted over a sliding window.
#[derive(Debug)]
pub struct RecentRequests {
    window: SlidingWindow,
}

impl RecentRequests {
    /// A counter over the last `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            window: SlidingWindow::new(interval),
        }
    }

    /// Records a request that starts now.
    pub fn record(&self) {
        self.window.with(|w| w.current_slot().requests += 1);
    }

    /// Requests started within the interval.
    pub fn count(&self) -> u64 {
        self.window
            .with(|w| w.slots.iter().map(|s| s.requests).sum())
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

impl Window {
    fn current_slot(&mut self) -> &mut Slot {
        &mut self.slots[self.current]
    }
}

/// Counts over a sliding window of [`SLOTS`] slots: a slot expires as a whole, so the window's
/// precision is a tenth of its length, at the cost of one lock per count.
#[derive(Debug)]
struct SlidingWindow {
    slot_len: Duration,
    state: Mutex<Window>,
}

impl SlidingWindow {
    fn new(window: Duration) -> Self {
        Self {
            slot_len: (window / SLOTS as u32).max(Duration::from_millis(1)),
            state: Mutex::new(Window {
                slots: [Slot::default(); SLOTS],
                slot_start: Instant::now(),
                current: 0,
            }),
        }
    }

    /// Runs `f` on the window after expiring the slots that are older than the window.
    fn with<T>(&self, f: impl FnOnce(&mut Window) -> T) -> T {
        let mut w = match self.state.lock() {
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
}

/// Ferry's default retry budget when a cluster configures none: retries within a ratio of the
/// original requests over a sliding window, plus a floor. Shared by all requests of a cluster.
#[derive(Debug)]
pub struct RatioBudget {
    config: RatioBudgetConfig,
    window: SlidingWindow,
}

impl Default for RatioBudget {
    fn default() -> Self {
        Self::new(RatioBudgetConfig::default())
    }
}

impl RatioBudget {
    /// A budget with the given parameters.
    pub fn new(config: RatioBudgetConfig) -> Self {
        Self {
            window: SlidingWindow::new(config.window),
            config,
        }
    }

    /// Records an original (non-retry) request.
    pub fn deposit(&self) {
        self.window.with(|w| w.current_slot().requests += 1);
    }

    /// Takes one retry from the budget; false (and nothing taken) when it is exhausted.
    pub fn try_withdraw(&self) -> bool {
        let floor = f64::from(self.config.min_per_second) * self.config.window.as_secs_f64();
        let ratio = self.config.ratio;
        self.window.with(|w| {
            let requests: u64 = w.slots.iter().map(|s| s.requests).sum();
            let retries: u64 = w.slots.iter().map(|s| s.retries).sum();
            let allowed = floor + ratio * requests as f64;
            if (retries + 1) as f64 <= allowed {
                w.current_slot().retries += 1;
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
        assert_eq!(b.limit(0, 0, 0), 3);
        assert_eq!(b.limit(100, 0, 0), 20);
        assert_eq!(b.limit(50, 50, 0), 20);
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

    #[tokio::test(start_paused = true)]
    async fn budget_interval_counts_recent_requests_until_they_expire() {
        let b = RetryBudget {
            interval: Duration::from_millis(100),
            ..RetryBudget::default()
        };
        let recent = RecentRequests::new(b.interval);
        for _ in 0..100 {
            recent.record();
        }
        // The 100 requests completed, yet they count for the interval: 20% of 100.
        assert_eq!(b.limit(0, 0, recent.count()), 20);
        // Active requests still count when they outnumber the recent ones.
        assert_eq!(b.limit(200, 0, recent.count()), 40);
        tokio::time::advance(Duration::from_millis(101)).await;
        assert_eq!(recent.count(), 0);
        assert_eq!(b.limit(0, 0, recent.count()), 3);
    }
}
