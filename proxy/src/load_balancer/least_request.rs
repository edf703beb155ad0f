//! LEAST_REQUEST: power of `choice_count` choices. Sample that many entries at random (by
//! weight when weights differ) and take the one with the fewest active requests (per unit of
//! weight when weights differ). With equal weights this is exactly Envoy's P2C; with unequal
//! weights Envoy uses an EDF schedule on `weight / (active + 1)`, which weighted sampling
//! approximates without a lock on the hot path.

use rand::Rng;

use super::{LbEntry, WeightedIndex};

/// Power-of-N-choices least request.
#[derive(Debug)]
pub struct LeastRequest {
    len: usize,
    choice_count: u32,
    weights: Option<WeightedIndex>,
}

impl LeastRequest {
    /// A balancer over `entries` sampling `choice_count` candidates per pick.
    pub fn new(entries: &[LbEntry], choice_count: u32) -> Self {
        Self {
            len: entries.len(),
            choice_count: choice_count.max(1),
            weights: WeightedIndex::new(entries.iter().map(|e| e.weight)),
        }
    }

    /// The least loaded of `choice_count` random candidates; the first sampled wins ties.
    pub fn pick<R: Rng + ?Sized>(
        &self,
        active: &dyn Fn(usize) -> u64,
        rng: &mut R,
    ) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mut best: Option<(usize, f64)> = None;
        for _ in 0..self.choice_count {
            let (i, load) = match &self.weights {
                Some(w) => {
                    let i = w.sample(rng);
                    (i, active(i) as f64 / w.weight(i) as f64)
                }
                None => {
                    let i = rng.random_range(0..self.len);
                    (i, active(i) as f64)
                }
            };
            if best.is_none_or(|(_, b)| load < b) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
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
    fn prefers_the_less_loaded_host() {
        let lb = LeastRequest::new(&entries(&[1, 1]), 2);
        let mut rng = StdRng::seed_from_u64(3);
        let active = |i: usize| if i == 0 { 10 } else { 0 };
        let mut counts = [0u32; 2];
        for _ in 0..10_000 {
            counts[lb.pick(&active, &mut rng).unwrap()] += 1;
        }
        // Host 0 only wins when both samples land on it: about a quarter of the time.
        assert!((2_200..2_800).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn idle_hosts_share_evenly() {
        let lb = LeastRequest::new(&entries(&[1, 1, 1]), 2);
        let mut rng = StdRng::seed_from_u64(5);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[lb.pick(&|_| 0, &mut rng).unwrap()] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn more_choices_avoid_the_loaded_host_more() {
        let lb = LeastRequest::new(&entries(&[1, 1, 1, 1]), 4);
        let mut rng = StdRng::seed_from_u64(9);
        let active = |i: usize| if i == 0 { 5 } else { 1 };
        let hits = (0..10_000)
            .filter(|_| lb.pick(&active, &mut rng) == Some(0))
            .count();
        // Only when all four samples are host 0: (1/4)^4 of the time.
        assert!(hits < 100, "{hits}");
    }

    #[test]
    fn weights_scale_the_load() {
        let lb = LeastRequest::new(&entries(&[1, 4]), 2);
        let mut rng = StdRng::seed_from_u64(13);
        let mut counts = [0u32; 2];
        for _ in 0..10_000 {
            counts[lb.pick(&|_| 0, &mut rng).unwrap()] += 1;
        }
        assert!(counts[1] > counts[0] * 3, "{counts:?}");
    }
}
