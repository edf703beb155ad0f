//! The benchmark loop: every path under the same load, in alternating rounds, medians reported.
//!
//! Fixed-rate workloads send about half of what Envoy sustained on the matching closed-loop
//! workload earlier in the same run (two Envoys in series for the series paths); the rate is fixed
//! the first time it is needed and kept for every path and round, so latencies compare at equal
//! load.
//!
//! Paths are started once and kept up; each round runs every workload on every path, rotating
//! the order of paths from round to round so that machine noise (other processes, thermal
//! throttling, a neighbour's compile) hits all of them alike. The figures of one (workload, path)
//! pair are the medians over rounds.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::control::{PushResult, ScaleResult};
use crate::load::{self, Client, LoadError, LoadResult, LoadSpec};
use crate::measure::{self, ProcSample};
use crate::openloop::{self, Protocol, RateSpec};
use crate::subject::{PathKind, Subject, SubjectError};
use crate::upstream::Upstream;

/// A fixed-rate (open-loop) load whose rate is a fraction of a closed-loop figure of this run.
#[derive(Debug, Clone)]
pub struct RateLoad {
    /// Protocol and lanes.
    pub protocol: Protocol,
    /// Connections held open.
    pub connections: u32,
    /// Run time.
    pub duration: Duration,
    /// The request path.
    pub path: &'static str,
    /// The closed-loop workload whose Envoy throughput sets the rate.
    pub base: &'static str,
    /// The fraction of that throughput to send (the issue asks for about half).
    pub fraction: f64,
}

/// How a workload loads a path.
#[derive(Debug, Clone)]
pub enum Load {
    /// wrk / h2load at saturation.
    Closed(LoadSpec),
    /// The open-loop generator at a fixed rate.
    Rate(RateLoad),
}

/// A named load shape.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Short name used in the report, e.g. `h1-small`.
    pub name: &'static str,
    /// The load.
    pub load: Load,
    /// Whether the series paths (two sidecars) run it too.
    pub series: bool,
}

impl Workload {
    /// Whether `path` runs this workload.
    pub fn applies_to(&self, path: PathKind) -> bool {
        self.series || !path.is_series()
    }
}

/// The workloads of a full run. Each fixed-rate workload comes after the closed-loop one its
/// rate derives from, so the rate is known when it first runs.
pub fn full_workloads(duration: Duration) -> Vec<Workload> {
    let w = |name, client, connections, path, series| Workload {
        name,
        load: Load::Closed(LoadSpec {
            client,
            connections,
            duration,
            path,
        }),
        series,
    };
    let rate = |name, protocol, connections, base| Workload {
        name,
        load: Load::Rate(RateLoad {
            protocol,
            connections,
            duration,
            path: "/small",
            base,
            fraction: 0.5,
        }),
        series: true,
    };
    vec![
        w("h1-small", Client::Http1, 32, "/small", true),
        w("h2-small", Client::Http2 { streams: 16 }, 4, "/small", true),
        w("h1-16k", Client::Http1, 32, "/16k", false),
        w("h1-1m", Client::Http1, 4, "/1m", false),
        w(
            "h1-new-conn",
            Client::Http1NewConnection,
            8,
            "/small",
            false,
        ),
        rate("h1-rate", Protocol::Http1, 16, "h1-small"),
        rate("h2-rate", Protocol::Http2 { streams: 4 }, 4, "h2-small"),
    ]
}

/// The workloads of the smoke run: both protocols closed-loop and at a fixed rate, so every
/// moving part is exercised.
pub fn smoke_workloads(duration: Duration) -> Vec<Workload> {
    full_workloads(duration)
        .into_iter()
        .filter(|w| w.name.ends_with("-small") || w.name.ends_with("-rate"))
        .collect()
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Rounds over every workload and path.
    pub rounds: u32,
    /// The workloads.
    pub workloads: Vec<Workload>,
    /// The paths to compare.
    pub paths: Vec<PathKind>,
    /// Runtime threads of the upstream.
    pub upstream_workers: usize,
}

/// A run failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The upstream could not start.
    #[error("upstream: {0}")]
    Upstream(std::io::Error),
    /// A path could not start.
    #[error(transparent)]
    Subject(#[from] SubjectError),
    /// No closed-loop figure to derive a fixed rate from.
    #[error("{workload}: no {base} throughput measured on a proxy path to derive the rate from")]
    NoRate {
        /// The rate workload.
        workload: &'static str,
        /// The closed-loop workload it derives from.
        base: &'static str,
    },
    /// A load run failed.
    #[error("{workload} via {path}: {source}")]
    Load {
        /// The workload.
        workload: &'static str,
        /// The path.
        path: PathKind,
        /// Why.
        source: LoadError,
    },
}

/// One measurement of one (workload, path) in one round.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// What the load generator saw.
    pub load: LoadResult,
    /// CPU the proxy used during the run (none for the direct path).
    pub cpu: Option<Duration>,
}

/// Memory of one proxy.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// After start-up and one request.
    pub idle: ProcSample,
    /// After all rounds (its `peak_rss_kib` is the peak under load: the highest of the
    /// per-workload peaks and of the high-water mark at the end).
    pub end: ProcSample,
    /// Whether the peak was reset after start-up (`idle.peak_rss_kib` is then start-up's peak
    /// and `end.peak_rss_kib` the peak under load alone).
    pub peak_reset: bool,
    /// The peak RSS (KiB) each workload reached, the highest over rounds: the high-water mark
    /// is reset before each run of a workload and read after it. Empty when the kernel refuses
    /// the reset.
    pub peak_by_workload: BTreeMap<&'static str, u64>,
}

impl Memory {
    /// Records the peak of one run of `workload` (keeps the highest over rounds).
    pub fn record_peak(&mut self, workload: &'static str, peak_kib: u64) {
        let peak = self.peak_by_workload.entry(workload).or_default();
        *peak = (*peak).max(peak_kib);
    }

    /// The peak under load: the highest per-workload peak, or the end's high-water mark when
    /// that is higher (memory grown between workloads).
    pub fn peak_under_load(&self) -> u64 {
        let by_workload = self.peak_by_workload.values().copied().max().unwrap_or(0);
        by_workload.max(self.end.peak_rss_kib)
    }
}

/// Everything a run measured.
#[derive(Debug, Default)]
pub struct Results {
    /// Samples by workload name, then path, in round order.
    pub samples: BTreeMap<&'static str, BTreeMap<PathKind, Vec<Sample>>>,
    /// Memory by proxy path.
    pub memory: BTreeMap<PathKind, Memory>,
    /// Workload names in run order.
    pub workloads: Vec<&'static str>,
    /// The fixed rate (req/s) of each rate workload, for single paths (`false`) and series
    /// paths (`true`); set when the workload first runs and kept for the whole run.
    pub rates: BTreeMap<(&'static str, bool), f64>,
    /// RSS with a small and a large config (filled by the control-plane phase).
    pub scale: Option<ScaleResult>,
    /// ferry-control's push time and memory per proxy (filled by the control-plane phase).
    pub push: Option<PushResult>,
}

/// Runs `config`, printing progress to stderr.
pub async fn run(config: &Config) -> Result<Results, HarnessError> {
    let upstream = Upstream::start(config.upstream_workers).map_err(HarnessError::Upstream)?;
    let mut subjects = Vec::new();
    for &kind in &config.paths {
        eprintln!("starting {kind}");
        subjects.push(Subject::start(kind, upstream.addr()).await?);
    }
    let mut results = Results {
        workloads: config.workloads.iter().map(|w| w.name).collect(),
        ..Results::default()
    };
    for subject in &subjects {
        // Memory is per proxy: series paths run the same proxies twice.
        let single = subject.pid().filter(|_| !subject.kind().is_series());
        if let Some(idle) = single.and_then(measure::sample) {
            // From here on `VmHWM` is the peak under load; start-up's is `idle.peak_rss_kib`.
            let reset = single.is_some_and(measure::reset_peak);
            results.memory.insert(
                subject.kind(),
                Memory {
                    idle,
                    end: idle,
                    peak_reset: reset,
                    peak_by_workload: BTreeMap::new(),
                },
            );
        }
    }
    for round in 0..config.rounds {
        for workload in &config.workloads {
            for i in 0..subjects.len() {
                let subject = &subjects[(i + round as usize) % subjects.len()];
                if !workload.applies_to(subject.kind()) {
                    continue;
                }
                // Each workload's own peak: reset before, read after (single paths only, as
                // for the overall figures; series paths run other processes).
                let tracked = subject
                    .pid()
                    .filter(|_| {
                        results
                            .memory
                            .get(&subject.kind())
                            .is_some_and(|m| m.peak_reset)
                    })
                    .filter(|&pid| measure::reset_peak(pid));
                let sample = measure_one(workload, subject, &mut results)?;
                let after = tracked.and_then(measure::sample);
                if let (Some(after), Some(memory)) =
                    (after, results.memory.get_mut(&subject.kind()))
                {
                    memory.record_peak(workload.name, after.peak_rss_kib);
                }
                // The peak, and what is resident after the run: heap and stacks (anon) apart
                // from the binary's pages (file).
                let peak = after.map_or(String::new(), |a| {
                    format!(
                        "  peak {:.1} MiB (now anon {:.1} file {:.1})",
                        a.peak_rss_kib as f64 / 1024.0,
                        a.rss_anon_kib as f64 / 1024.0,
                        a.rss_file_kib as f64 / 1024.0
                    )
                });
                eprintln!(
                    "round {} {:12} {:11} {:>10.0} req/s  errors {}{peak}",
                    round + 1,
                    workload.name,
                    subject.kind().to_string(),
                    sample.load.rps,
                    sample.load.errors
                );
                results
                    .samples
                    .entry(workload.name)
                    .or_default()
                    .entry(subject.kind())
                    .or_default()
                    .push(sample);
            }
        }
    }
    for subject in &subjects {
        if let (Some(end), Some(memory)) = (
            subject.pid().and_then(measure::sample),
            results.memory.get_mut(&subject.kind()),
        ) {
            memory.end = end;
            memory.end.peak_rss_kib = memory.peak_under_load();
        }
    }
    Ok(results)
}

fn measure_one(
    workload: &Workload,
    subject: &Subject,
    results: &mut Results,
) -> Result<Sample, HarnessError> {
    let pids = subject.pids();
    let before = measure::sample_all(&pids);
    let failed = |source| HarnessError::Load {
        workload: workload.name,
        path: subject.kind(),
        source,
    };
    let load = match &workload.load {
        Load::Closed(spec) => load::run(spec, subject.target()).map_err(failed)?,
        Load::Rate(rate) => {
            let key = (workload.name, subject.kind().is_series());
            let per_second = match results.rates.get(&key) {
                Some(&r) => r,
                None => {
                    let r = base_rate(results, rate.base, subject.kind()).ok_or(
                        HarnessError::NoRate {
                            workload: workload.name,
                            base: rate.base,
                        },
                    )? * rate.fraction;
                    results.rates.insert(key, r);
                    r
                }
            };
            let spec = RateSpec {
                protocol: rate.protocol,
                connections: rate.connections,
                rate: per_second,
                duration: rate.duration,
                path: rate.path,
            };
            openloop::run(&spec, subject.target()).map_err(failed)?
        }
    };
    let after = measure::sample_all(&pids);
    let cpu = before.zip(after).map(|(b, a)| a.cpu.saturating_sub(b.cpu));
    Ok(Sample { load, cpu })
}

/// The throughput a fixed rate derives from: the median of `base` on `path`'s Envoy baseline,
/// or, when Envoy is not among the paths, on the slowest proxy path of the same shape.
fn base_rate(results: &Results, base: &str, path: PathKind) -> Option<f64> {
    let by_path = results.samples.get(base)?;
    let rps = |samples: &Vec<Sample>| {
        let mut values: Vec<f64> = samples.iter().map(|s| s.load.rps).collect();
        median(&mut values)
    };
    if let Some(r) = by_path.get(&path.baseline()).and_then(rps) {
        return Some(r);
    }
    by_path
        .iter()
        .filter(|(p, _)| **p != PathKind::Direct && p.is_series() == path.is_series())
        .filter_map(|(_, s)| rps(s))
        .min_by(f64::total_cmp)
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    fn rps_sample(rps: f64) -> Sample {
        Sample {
            load: LoadResult {
                rps,
                ..LoadResult::default()
            },
            cpu: None,
        }
    }

    #[test]
    fn rates_derive_from_the_matching_envoy_baseline() {
        let mut results = Results::default();
        let by_path = results.samples.entry("h1-small").or_default();
        by_path.insert(PathKind::Direct, vec![rps_sample(90_000.0)]);
        by_path.insert(
            PathKind::Envoy,
            vec![rps_sample(20_000.0), rps_sample(22_000.0)],
        );
        by_path.insert(PathKind::Ferry, vec![rps_sample(40_000.0)]);
        by_path.insert(PathKind::FerryPair, vec![rps_sample(15_000.0)]);
        assert_eq!(
            base_rate(&results, "h1-small", PathKind::Ferry),
            Some(21_000.0)
        );
        assert_eq!(
            base_rate(&results, "h1-small", PathKind::Direct),
            Some(21_000.0)
        );
        // No Envoy pair measured: the slowest series path.
        assert_eq!(
            base_rate(&results, "h1-small", PathKind::FerryPair),
            Some(15_000.0)
        );
        assert_eq!(base_rate(&results, "h2-small", PathKind::Ferry), None);
    }

    #[test]
    fn the_peak_under_load_is_the_highest_workload_peak() {
        let mut memory = Memory::default();
        memory.end.peak_rss_kib = 9_000;
        memory.record_peak("h1-small", 12_000);
        memory.record_peak("h1-1m", 20_000);
        memory.record_peak("h1-1m", 15_000);
        assert_eq!(memory.peak_by_workload["h1-1m"], 20_000);
        assert_eq!(memory.peak_under_load(), 20_000);
        memory.end.peak_rss_kib = 21_000;
        assert_eq!(memory.peak_under_load(), 21_000);
    }

    #[test]
    fn series_paths_run_only_the_series_workloads() {
        let workloads = full_workloads(Duration::from_secs(1));
        let series: Vec<_> = workloads
            .iter()
            .filter(|w| w.applies_to(PathKind::FerryPair))
            .map(|w| w.name)
            .collect();
        assert_eq!(series, ["h1-small", "h2-small", "h1-rate", "h2-rate"]);
        assert!(workloads.iter().all(|w| w.applies_to(PathKind::Envoy)));
    }

    #[test]
    fn the_smoke_run_covers_both_protocols() {
        let names: Vec<_> = smoke_workloads(Duration::from_secs(1))
            .iter()
            .map(|w| w.name)
            .collect();
        assert_eq!(names, ["h1-small", "h2-small", "h1-rate", "h2-rate"]);
    }
}
