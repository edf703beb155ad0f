//! The interval sweeps: success-rate outliers (more than `stdev_factor` standard deviations
//! below the mean) and failure-percentage outliers (at least `threshold` percent failures).
//! Pure functions over the interval's counts so the statistics are tested on their own.

/// Hosts whose success rate is below `mean - factor * stdev`, given `(index, success_rate)`
/// pairs of the hosts with enough requests; none when fewer than `minimum_hosts` qualify.
pub(super) fn success_rate_outliers(
    rates: &[(usize, f64)],
    minimum_hosts: usize,
    stdev_factor: f64,
) -> Vec<usize> {
    if rates.is_empty() || rates.len() < minimum_hosts {
        return Vec::new();
    }
    let n = rates.len() as f64;
    let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
    let variance = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - stdev_factor * variance.sqrt();
    rates
        .iter()
        .filter(|(_, r)| *r < threshold)
        .map(|(i, _)| *i)
        .collect()
}

/// Hosts whose failure percentage is at least `threshold`, given `(index, success_rate)` pairs
/// of hosts with enough requests; none when fewer than `minimum_hosts` qualify.
pub(super) fn failure_percentage_outliers(
    rates: &[(usize, f64)],
    minimum_hosts: usize,
    threshold: f64,
) -> Vec<usize> {
    if rates.is_empty() || rates.len() < minimum_hosts {
        return Vec::new();
    }
    rates
        .iter()
        .filter(|(_, r)| 100.0 - r >= threshold)
        .map(|(i, _)| *i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bad_host_among_good_ones_is_an_outlier() {
        let rates = [(0, 100.0), (1, 99.0), (2, 100.0), (3, 98.0), (4, 40.0)];
        assert_eq!(success_rate_outliers(&rates, 5, 1.9), vec![4]);
        assert!(success_rate_outliers(&rates, 6, 1.9).is_empty());
        let same = [(0, 90.0), (1, 90.0), (2, 90.0), (3, 90.0), (4, 90.0)];
        assert!(success_rate_outliers(&same, 5, 1.9).is_empty());
    }

    #[test]
    fn failure_percentage_threshold() {
        let rates = [(0, 100.0), (1, 10.0), (2, 15.0), (3, 16.0), (4, 100.0)];
        assert_eq!(failure_percentage_outliers(&rates, 5, 85.0), vec![1, 2]);
        assert!(failure_percentage_outliers(&rates, 6, 85.0).is_empty());
    }
}
