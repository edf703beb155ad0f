//! Weighted sampling shared by RANDOM and LEAST_REQUEST: prefix sums and a binary search.

use rand::Rng;

/// Samples indices in proportion to their weights.
#[derive(Debug, Clone)]
pub struct WeightedIndex {
    /// Cumulative weights; the last one is the total.
    cumulative: Vec<u64>,
}

impl WeightedIndex {
    /// `None` when the list is empty or every weight is equal (uniform sampling is cheaper).
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Option<Self> {
        let weights: Vec<u32> = weights.into_iter().collect();
        let first = *weights.first()?;
        if weights.iter().all(|w| *w == first) {
            return None;
        }
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                total += u64::from(*w);
                total
            })
            .collect();
        Some(Self { cumulative })
    }

    /// A random index, weighted.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == 0 {
            return 0;
        }
        let point = rng.random_range(0..total);
        self.cumulative.partition_point(|c| *c <= point)
    }

    /// The weight of entry `i`.
    pub fn weight(&self, i: usize) -> u64 {
        let before = if i == 0 { 0 } else { self.cumulative[i - 1] };
        self.cumulative[i] - before
    }
}
