//! ROUND_ROBIN: plain rotation when weights are equal, Envoy's earliest-deadline-first schedule
//! when they differ (each pick goes to the entry whose next deadline, advancing by 1/weight, is
//! earliest; ties in list order), which spreads a heavy host's turns evenly instead of in bursts.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::LbEntry;
use super::edf::Edf;

/// Weighted round robin.
#[derive(Debug)]
pub struct RoundRobin {
    len: usize,
    next: AtomicUsize,
    edf: Option<(Mutex<Edf>, Vec<f64>)>,
}

impl RoundRobin {
    /// A balancer over `entries`.
    pub fn new(entries: &[LbEntry]) -> Self {
        let equal = entries.windows(2).all(|w| w[0].weight == w[1].weight);
        let edf = (!equal).then(|| {
            let weights: Vec<f64> = entries.iter().map(|e| f64::from(e.weight.max(1))).collect();
            (Mutex::new(Edf::new(weights.iter().copied())), weights)
        });
        Self {
            len: entries.len(),
            next: AtomicUsize::new(0),
            edf,
        }
    }

    /// The next index in the schedule.
    pub fn pick(&self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let Some((edf, weights)) = &self.edf else {
            return Some(self.next.fetch_add(1, Ordering::Relaxed) % self.len);
        };
        let mut edf = edf.lock().unwrap_or_else(|p| p.into_inner());
        edf.pick(|i| weights[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(weights: &[u32]) -> Vec<LbEntry> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| LbEntry {
                key: format!("10.0.0.{i}:80"),
                weight: *w,
            })
            .collect()
    }

    #[test]
    fn equal_weights_rotate_in_order() {
        let lb = RoundRobin::new(&entries(&[1, 1, 1]));
        let picks: Vec<_> = (0..6).map(|_| lb.pick().unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_give_exact_shares_per_cycle() {
        let lb = RoundRobin::new(&entries(&[1, 2, 3]));
        let mut counts = [0; 3];
        for _ in 0..600 {
            counts[lb.pick().unwrap()] += 1;
        }
        assert_eq!(counts, [100, 200, 300]);
    }

    #[test]
    fn weighted_schedule_interleaves_instead_of_bursting() {
        let lb = RoundRobin::new(&entries(&[1, 4]));
        let picks: Vec<_> = (0..10).map(|_| lb.pick().unwrap()).collect();
        // The light host appears once in every five picks, never twice in a row.
        for window in picks.chunks(5) {
            assert_eq!(window.iter().filter(|i| **i == 0).count(), 1, "{picks:?}");
        }
    }

    #[test]
    fn empty_picks_nothing() {
        assert_eq!(RoundRobin::new(&[]).pick(), None);
    }
}
