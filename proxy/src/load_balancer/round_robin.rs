//! ROUND_ROBIN: plain rotation when weights are equal, Envoy's earliest-deadline-first schedule
//! when they differ (each pick goes to the entry whose next deadline, advancing by 1/weight, is
//! earliest; ties in list order), which spreads a heavy host's turns evenly instead of in bursts.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::LbEntry;

/// Weighted round robin.
#[derive(Debug)]
pub struct RoundRobin {
    len: usize,
    next: AtomicUsize,
    edf: Option<Mutex<Edf>>,
}

#[derive(Debug)]
struct Edf {
    heap: BinaryHeap<Slot>,
    weights: Vec<f64>,
    sequence: u64,
}

#[derive(Debug)]
struct Slot {
    deadline: f64,
    sequence: u64,
    index: usize,
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Slot {}
impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Slot {
    // Reversed: BinaryHeap is a max-heap and we want the earliest deadline first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other
            .deadline
            .total_cmp(&self.deadline)
            .then_with(|| other.sequence.cmp(&self.sequence))
    }
}

impl RoundRobin {
    /// A balancer over `entries`.
    pub fn new(entries: &[LbEntry]) -> Self {
        let equal = entries.windows(2).all(|w| w[0].weight == w[1].weight);
        let edf = (!equal).then(|| {
            let weights: Vec<f64> = entries.iter().map(|e| f64::from(e.weight.max(1))).collect();
            let heap = weights
                .iter()
                .enumerate()
                .map(|(index, w)| Slot {
                    deadline: 1.0 / w,
                    sequence: index as u64,
                    index,
                })
                .collect();
            Mutex::new(Edf {
                heap,
                sequence: weights.len() as u64,
                weights,
            })
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
        let Some(edf) = &self.edf else {
            return Some(self.next.fetch_add(1, Ordering::Relaxed) % self.len);
        };
        let mut edf = edf.lock().unwrap_or_else(|p| p.into_inner());
        let slot = edf.heap.pop()?;
        let index = slot.index;
        let deadline = slot.deadline + 1.0 / edf.weights[index];
        let sequence = edf.sequence;
        edf.sequence += 1;
        edf.heap.push(Slot {
            deadline,
            sequence,
            index,
        });
        Some(index)
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
