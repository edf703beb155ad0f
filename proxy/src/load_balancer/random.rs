//! RANDOM: uniform, or weighted by endpoint weight.

use rand::Rng;

use super::{LbEntry, WeightedIndex};

/// Picks a random entry, in proportion to weight when weights differ.
#[derive(Debug)]
pub struct Random {
    len: usize,
    weights: Option<WeightedIndex>,
}

impl Random {
    /// A balancer over `entries`.
    pub fn new(entries: &[LbEntry]) -> Self {
        Self {
            len: entries.len(),
            weights: WeightedIndex::new(entries.iter().map(|e| e.weight)),
        }
    }

    /// A random index.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        Some(match &self.weights {
            Some(w) => w.sample(rng),
            None => rng.random_range(0..self.len),
        })
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

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
    fn uniform_random_covers_all_hosts_evenly() {
        let lb = Random::new(&entries(&[1, 1, 1, 1]));
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[lb.pick(&mut rng).unwrap()] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn weighted_random_follows_weights() {
        let lb = Random::new(&entries(&[1, 3]));
        let mut rng = StdRng::seed_from_u64(11);
        let mut counts = [0u32; 2];
        for _ in 0..40_000 {
            counts[lb.pick(&mut rng).unwrap()] += 1;
        }
        assert!((9_000..11_000).contains(&counts[0]), "{counts:?}");
        assert!((29_000..31_000).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn empty_picks_nothing() {
        let lb = Random::new(&[]);
        assert_eq!(lb.pick(&mut StdRng::seed_from_u64(1)), None);
    }
}
