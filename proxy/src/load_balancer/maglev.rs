//! MAGLEV: Envoy's (weighted) Maglev lookup table. Each host gets an offset (xxHash64 of its
//! address, seed 0) and a skip (seed 1) that define its preference permutation of the table;
//! hosts take turns claiming their next free preferred slot, a host of weight w/max taking a
//! turn every max/w rounds. A request goes to `table[hash % table_size]`.

use xxhash_rust::xxh64::xxh64;

use super::LbEntry;

/// A built Maglev table.
#[derive(Debug)]
pub struct Maglev {
    table: Vec<u32>,
}

struct Build {
    offset: u64,
    skip: u64,
    weight: f64,
    target: f64,
    next: u64,
}

impl Maglev {
    /// Builds the table (size must be prime; validated with the cluster) over `entries`.
    pub fn new(entries: &[LbEntry], table_size: u64) -> Self {
        if entries.is_empty() || table_size < 2 {
            return Self { table: Vec::new() };
        }
        let total: f64 = entries.iter().map(|e| f64::from(e.weight)).sum();
        let mut builds: Vec<Build> = entries
            .iter()
            .map(|e| Build {
                offset: xxh64(e.key.as_bytes(), 0) % table_size,
                skip: xxh64(e.key.as_bytes(), 1) % (table_size - 1) + 1,
                weight: f64::from(e.weight) / total,
                target: 0.0,
                next: 0,
            })
            .collect();
        let max_weight = builds.iter().map(|b| b.weight).fold(0.0, f64::max);
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; table_size as usize];
        let mut filled = 0u64;
        let mut iteration = 1u64;
        while filled < table_size {
            for (index, b) in builds.iter_mut().enumerate() {
                if filled >= table_size {
                    break;
                }
                if (iteration as f64) * b.weight < b.target {
                    continue;
                }
                b.target += max_weight;
                let mut slot = (b.offset + b.skip * b.next) % table_size;
                while table[slot as usize] != EMPTY {
                    b.next += 1;
                    slot = (b.offset + b.skip * b.next) % table_size;
                }
                table[slot as usize] = index as u32;
                b.next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Self { table }
    }

    /// The entry owning `hash`.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[(hash % self.table.len() as u64) as usize] as usize)
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

    fn shares(lb: &Maglev, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for i in &lb.table {
            counts[*i as usize] += 1;
        }
        counts
    }

    #[test]
    fn table_is_full_and_balanced() {
        let lb = Maglev::new(&entries(&[1, 1, 1]), 65537);
        let counts = shares(&lb, 3);
        assert_eq!(counts.iter().sum::<usize>(), 65537);
        for c in counts {
            assert!((21_800..21_900).contains(&c), "{c}");
        }
    }

    #[test]
    fn weights_shape_the_table() {
        let lb = Maglev::new(&entries(&[1, 3]), 65537);
        let counts = shares(&lb, 2);
        let ratio = counts[1] as f64 / counts[0] as f64;
        assert!((2.9..3.1).contains(&ratio), "{counts:?}");
    }

    #[test]
    fn removing_a_host_keeps_most_keys() {
        let all = entries(&[1, 1, 1, 1, 1]);
        let before = Maglev::new(&all, 65537);
        let after = Maglev::new(&all[..4], 65537);
        let mut moved = 0;
        for i in 0..65537u64 {
            let was = before.pick(i).unwrap();
            if was != 4 && after.pick(i) != Some(was) {
                moved += 1;
            }
        }
        // Maglev trades a little disruption for balance: far fewer than the 1/5 a naive
        // modulo scheme would move.
        assert!(moved < 65537 / 20, "{moved}");
    }

    #[test]
    fn same_hash_same_host() {
        let lb = Maglev::new(&entries(&[1, 1, 1]), 65537);
        assert_eq!(lb.pick(12345), lb.pick(12345));
    }

    #[test]
    fn empty_table_picks_nothing() {
        assert_eq!(Maglev::new(&[], 65537).pick(1), None);
    }
}
