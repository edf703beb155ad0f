//! LEAST_REQUEST as Envoy does it. Equal weights: power of `choice_count` choices (sample that
//! many entries at random, take the one with the fewest active requests). Unequal weights: an
//! EDF schedule in which an entry picked is rescheduled with weight `weight / (active + 1)`
//! (`active_request_bias` 1.0), so busy hosts come round less often.

use std::sync::Mutex;

use rand::Rng;

use super::LbEntry;
use super::edf::Edf;

/// Power-of-N-choices least request.
#[derive(Debug)]
pub struct LeastRequest {
    len: usize,
    choice_count: u32,
    /// For unequal weights: the schedule and the configured weights.
    edf: Option<(Mutex<Edf>, Vec<f64>)>,
}

impl LeastRequest {
    /// A balancer over `entries` sampling `choice_count` candidates per pick.
    pub fn new(entries: &[LbEntry], choice_count: u32) -> Self {
        Self {
            len: entries.len(),
            choice_count: choice_count.max(1),
            edf: (!entries.windows(2).all(|w| w[0].weight == w[1].weight)).then(|| {
                let weights: Vec<f64> = entries.iter().map(|e| f64::from(e.weight)).collect();
                (Mutex::new(Edf::new(weights.iter().copied())), weights)
            }),
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
        if let Some((edf, weights)) = &self.edf {
            let mut edf = edf.lock().unwrap_or_else(|p| p.into_inner());
            return edf.pick(|i| weights[i] / (active(i) as f64 + 1.0));
        }
        let mut best: Option<(usize, u64)> = None;
        for _ in 0..self.choice_count {
            let i = rng.random_range(0..self.len);
            let load = active(i);
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
    fn unequal_weights_follow_the_weights_when_idle() {
        let lb = LeastRequest::new(&entries(&[1, 4]), 2);
        let mut rng = StdRng::seed_from_u64(13);
        let mut counts = [0u32; 2];
        for _ in 0..1_000 {
            counts[lb.pick(&|_| 0, &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts, [200, 800]);
    }

    #[test]
    fn unequal_weights_are_divided_by_load() {
        // Host 1 has four times the weight but three requests in flight: 4 / (3 + 1) = 1.
        let lb = LeastRequest::new(&entries(&[1, 4]), 2);
        let mut rng = StdRng::seed_from_u64(17);
        let active = |i: usize| if i == 1 { 3 } else { 0 };
        let mut counts = [0i32; 2];
        for _ in 0..1_000 {
            counts[lb.pick(&active, &mut rng).unwrap()] += 1;
        }
        assert!((counts[0] - counts[1]).abs() <= 10, "{counts:?}");
    }
}
