//! Envoy's jittered exponential retry back-off: before retry N the router waits a random time in
//! `[0, (2^N - 1) * base]`, capped at `max_interval`. Full jitter spreads retries from many
//! clients over the whole window instead of synchronising them into waves.

use std::time::Duration;

use rand::Rng;

/// Envoy's default `retry_back_off.base_interval`.
pub const DEFAULT_BASE: Duration = Duration::from_millis(25);

/// `retry_back_off`: base and max interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Default for Backoff {
    /// Envoy's defaults: 25 ms base, 10x base max.
    fn default() -> Self {
        Self::new(DEFAULT_BASE, DEFAULT_BASE * 10)
    }
}

impl Backoff {
    /// A back-off with `base` and `max` intervals (`max` is raised to `base` if smaller).
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
        }
    }

    /// The base interval.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The maximum interval.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The upper bound of the wait before retry number `retry` (1-based): `(2^retry - 1) * base`,
    /// capped at the max interval.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u64
            .checked_shl(retry.min(63))
            .map_or(u64::MAX, |f| f.saturating_sub(1))
            .max(1);
        let base_nanos = self.base.as_nanos() as u64;
        let nanos = base_nanos.saturating_mul(factor);
        Duration::from_nanos(nanos).min(self.max)
    }

    /// A full-jitter wait before retry number `retry` (1-based).
    pub fn delay<R: Rng + ?Sized>(&self, retry: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(retry).as_nanos() as u64;
        if ceiling == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rng.random_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ceiling_grows_exponentially_then_caps() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(1), Duration::from_millis(25));
        assert_eq!(b.ceiling(2), Duration::from_millis(75));
        assert_eq!(b.ceiling(3), Duration::from_millis(175));
        assert_eq!(b.ceiling(4), Duration::from_millis(250));
        assert_eq!(b.ceiling(200), Duration::from_millis(250));
    }

    #[test]
    fn delay_is_within_the_window() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(40));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for retry in 1..10 {
            for _ in 0..100 {
                let d = b.delay(retry, &mut rng);
                assert!(d <= b.ceiling(retry), "retry {retry}: {d:?}");
            }
        }
    }

    #[test]
    fn max_below_base_is_raised() {
        let b = Backoff::new(Duration::from_millis(50), Duration::from_millis(10));
        assert_eq!(b.max(), Duration::from_millis(50));
    }
}
