//! RING_HASH: Envoy's ketama-style ring, built the same way so a request hash lands on the
//! same host as it would in Envoy: every host gets `scale * weight` points hashed with xxHash64
//! (seed 0) of `"<address>_<i>"`, the ring size being the smallest that gives the lightest host
//! `minimum_ring_size * its share` points, capped at `maximum_ring_size`. A request goes to the
//! first point at or after its hash, wrapping around.

use xxhash_rust::xxh64::xxh64;

use super::LbEntry;

/// A built hash ring.
#[derive(Debug)]
pub struct RingHash {
    /// (point hash, entry index), sorted by hash.
    ring: Vec<(u64, usize)>,
}

impl RingHash {
    /// Builds the ring over `entries`.
    pub fn new(entries: &[LbEntry], minimum_ring_size: u64, maximum_ring_size: u64) -> Self {
        if entries.is_empty() {
            return Self { ring: Vec::new() };
        }
        let total: f64 = entries.iter().map(|e| f64::from(e.weight)).sum();
        let normalized: Vec<f64> = entries
            .iter()
            .map(|e| f64::from(e.weight) / total)
            .collect();
        let min_weight = normalized.iter().copied().fold(1.0, f64::min);
        let scale = ((min_weight * minimum_ring_size as f64).ceil() / min_weight)
            .min(maximum_ring_size as f64);
        let mut ring = Vec::with_capacity(scale.ceil() as usize);
        let mut current = 0.0;
        let mut target = 0.0;
        let mut key = String::new();
        for (index, (entry, weight)) in entries.iter().zip(&normalized).enumerate() {
            target += scale * weight;
            let mut i = 0u64;
            while current < target {
                key.clear();
                key.push_str(&entry.key);
                key.push('_');
                key.push_str(&i.to_string());
                ring.push((xxh64(key.as_bytes(), 0), index));
                i += 1;
                current += 1.0;
            }
        }
        ring.sort_unstable_by_key(|(hash, _)| *hash);
        Self { ring }
    }

    /// The entry owning `hash`.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let at = self.ring.partition_point(|(h, _)| *h < hash);
        let (_, index) = self.ring.get(at).unwrap_or(&self.ring[0]);
        Some(*index)
    }

    /// The number of points on the ring.
    pub fn size(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize) -> Vec<LbEntry> {
        (0..n)
            .map(|i| LbEntry {
                key: format!("10.0.0.{i}:80"),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn ring_size_respects_minimum_and_maximum() {
        assert_eq!(RingHash::new(&entries(3), 1024, 8 << 20).size(), 1026);
        assert_eq!(RingHash::new(&entries(3), 1024, 600).size(), 600);
    }

    #[test]
    fn same_hash_same_host() {
        let lb = RingHash::new(&entries(5), 1024, 8 << 20);
        for h in [0u64, 42, u64::MAX, 1 << 40] {
            assert_eq!(lb.pick(h), lb.pick(h));
        }
    }

    #[test]
    fn hashes_spread_over_hosts() {
        let lb = RingHash::new(&entries(4), 1024, 8 << 20);
        let mut counts = [0u32; 4];
        for i in 0..40_000u64 {
            counts[lb.pick(xxh64(&i.to_le_bytes(), 0)).unwrap()] += 1;
        }
        for c in counts {
            assert!((7_000..13_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn removing_a_host_moves_only_its_keys() {
        // Same points per host before and after (200), so remaining hosts keep theirs exactly.
        let all = entries(5);
        let before = RingHash::new(&all, 1000, 8 << 20);
        let after = RingHash::new(&all[..4], 800, 8 << 20);
        for i in 0..5_000u64 {
            let h = xxh64(&i.to_le_bytes(), 0);
            let was = before.pick(h).unwrap();
            if was != 4 {
                assert_eq!(after.pick(h), Some(was));
            }
        }
    }

    #[test]
    fn weights_give_more_points() {
        let mut e = entries(2);
        e[1].weight = 3;
        let lb = RingHash::new(&e, 1024, 8 << 20);
        let heavy = lb.ring.iter().filter(|(_, i)| *i == 1).count();
        assert_eq!(heavy, (lb.size() - heavy) * 3);
    }

    #[test]
    fn empty_ring_picks_nothing() {
        assert_eq!(RingHash::new(&[], 1024, 2048).pick(1), None);
    }
}
