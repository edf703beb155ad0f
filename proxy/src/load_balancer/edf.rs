//! Earliest-deadline-first scheduling, Envoy's way of spreading picks in proportion to weights:
//! each entry's next deadline advances by 1/weight when it is picked, and the earliest
//! deadline goes next (ties in insertion order). Weighted ROUND_ROBIN uses fixed weights;
//! weighted LEAST_REQUEST re-weighs an entry by its load each time it is picked.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// An EDF schedule over entry indices.
#[derive(Debug)]
pub(crate) struct Edf {
    heap: BinaryHeap<Slot>,
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
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Slot {}
impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Slot {
    // Reversed: BinaryHeap is a max-heap and the earliest deadline must come first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .deadline
            .total_cmp(&self.deadline)
            .then_with(|| other.sequence.cmp(&self.sequence))
    }
}

impl Edf {
    /// A schedule whose entry `i` starts with weight `weights[i]` (must be positive).
    pub(crate) fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let heap: BinaryHeap<Slot> = weights
            .into_iter()
            .enumerate()
            .map(|(index, w)| Slot {
                deadline: 1.0 / w.max(f64::MIN_POSITIVE),
                sequence: index as u64,
                index,
            })
            .collect();
        let sequence = heap.len() as u64;
        Self { heap, sequence }
    }

    /// The next entry; it is rescheduled with the weight `weight(index)` returns now.
    pub(crate) fn pick(&mut self, weight: impl Fn(usize) -> f64) -> Option<usize> {
        let slot = self.heap.pop()?;
        let index = slot.index;
        self.heap.push(Slot {
            deadline: slot.deadline + 1.0 / weight(index).max(f64::MIN_POSITIVE),
            sequence: self.sequence,
            index,
        });
        self.sequence += 1;
        Some(index)
    }
}
