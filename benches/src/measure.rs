//! Resource use of a proxy process, read from `/proc` (Linux): resident memory now and at its
//! peak, and CPU time consumed, so the report can give RSS idle/under load and CPU per request.

use std::sync::OnceLock;
use std::time::Duration;

/// One reading of a process's resource use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcSample {
    /// Resident set size now, in KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size so far, in KiB (`VmHWM`).
    pub peak_rss_kib: u64,
    /// Anonymous resident memory (heap, stacks), in KiB (`RssAnon`): what the process
    /// allocated, as opposed to its mapped binary.
    pub rss_anon_kib: u64,
    /// File-backed resident memory (code, read-only data), in KiB (`RssFile`).
    pub rss_file_kib: u64,
    /// User plus system CPU time consumed so far.
    pub cpu: Duration,
}

/// Reads `pid`'s resource use; `None` if the process is gone or `/proc` is unavailable.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcSample {
        rss_kib: status_kib(&status, "VmRSS:")?,
        peak_rss_kib: status_kib(&status, "VmHWM:")?,
        // Absent before Linux 4.5: then unknown (0), not a failed sample.
        rss_anon_kib: status_kib(&status, "RssAnon:").unwrap_or(0),
        rss_file_kib: status_kib(&status, "RssFile:").unwrap_or(0),
        cpu: stat_cpu(&stat)?,
    })
}

/// Resets `pid`'s `VmHWM` to its current RSS (`echo 5 > /proc/PID/clear_refs`), so the next
/// peak read is the peak since now: the peak under load, not start-up's transient peak
/// (ferry-proxy decodes Envoy's descriptors to read a YAML bootstrap, then frees them). Applied to
/// every proxy alike; `false` if the kernel refused (the peak then includes start-up).
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The summed resource use of `pids` (the proxies of one path); `None` if any is unreadable.
pub fn sample_all(pids: &[u32]) -> Option<ProcSample> {
    if pids.is_empty() {
        return None;
    }
    let mut total = ProcSample::default();
    for &pid in pids {
        let one = sample(pid)?;
        total.rss_kib += one.rss_kib;
        total.peak_rss_kib += one.peak_rss_kib;
        total.rss_anon_kib += one.rss_anon_kib;
        total.rss_file_kib += one.rss_file_kib;
        total.cpu += one.cpu;
    }
    Some(total)
}

fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// utime + stime (fields 14 and 15 of `/proc/PID/stat`, counted after the parenthesised command
/// name, which may itself contain spaces).
fn stat_cpu(stat: &str) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second(),
    ))
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_can_be_sampled() {
        let me = sample(std::process::id()).expect("/proc is readable on Linux");
        assert!(me.rss_kib > 0 && me.peak_rss_kib >= me.rss_kib);
        assert!(me.rss_anon_kib > 0 && me.rss_file_kib > 0);
        assert!(me.rss_anon_kib + me.rss_file_kib <= me.rss_kib);
    }

    #[test]
    fn cpu_fields_are_counted_after_the_command_name() {
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1 1 1";
        let cpu = stat_cpu(stat).unwrap();
        let expected = Duration::from_secs_f64(300.0 / clock_ticks_per_second());
        assert_eq!(cpu, expected);
    }
}
