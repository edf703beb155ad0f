//! The benchmark loop: every path under the same load, in alternating rounds, medians reported.
//!
//! Paths are started once and kept up; each round runs every workload on every path, rotating
//! the order of paths from round to round so that machine noise (other processes, thermal
//! throttling, a neighbour's compile) hits all of them alike. The figures of one (workload, path)
//! pair are the medians over rounds.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::load::{self, Client, LoadError, LoadResult, LoadSpec};
use crate::measure::{self, ProcSample};
use crate::subject::{PathKind, Subject, SubjectError};
use crate::upstream::Upstream;

/// A named load shape.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Short name used in the report, e.g. `h1-small`.
    pub name: &'static str,
    /// The load.
    pub spec: LoadSpec,
}

/// The workloads of a full run.
pub fn full_workloads(duration: Duration) -> Vec<Workload> {
    let w = |name, client, connections, path| Workload {
        name,
        spec: LoadSpec {
            client,
            connections,
            duration,
            path,
        },
    };
    vec![
        w("h1-small", Client::Http1, 32, "/small"),
        w("h2-small", Client::Http2 { streams: 16 }, 4, "/small"),
        w("h1-16k", Client::Http1, 32, "/16k"),
        w("h1-1m", Client::Http1, 4, "/1m"),
        w("h1-new-conn", Client::Http1NewConnection, 8, "/small"),
    ]
}

/// The workloads of the smoke run: one per protocol, so every moving part is exercised.
pub fn smoke_workloads(duration: Duration) -> Vec<Workload> {
    full_workloads(duration)
        .into_iter()
        .filter(|w| w.name.ends_with("-small"))
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
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// After start-up and one request.
    pub idle: ProcSample,
    /// After all rounds (its `peak_rss_kib` is the peak under load).
    pub end: ProcSample,
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
        if let Some(idle) = subject.pid().and_then(measure::sample) {
            results
                .memory
                .insert(subject.kind(), Memory { idle, end: idle });
        }
    }
    for round in 0..config.rounds {
        for workload in &config.workloads {
            for i in 0..subjects.len() {
                let subject = &subjects[(i + round as usize) % subjects.len()];
                let sample = measure_one(workload, subject)?;
                eprintln!(
                    "round {} {:12} {:7} {:>10.0} req/s  errors {}",
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
        }
    }
    Ok(results)
}

fn measure_one(workload: &Workload, subject: &Subject) -> Result<Sample, HarnessError> {
    let before = subject.pid().and_then(measure::sample);
    let load =
        load::run(&workload.spec, subject.target()).map_err(|source| HarnessError::Load {
            workload: workload.name,
            path: subject.kind(),
            source,
        })?;
    let after = subject.pid().and_then(measure::sample);
    let cpu = before.zip(after).map(|(b, a)| a.cpu.saturating_sub(b.cpu));
    Ok(Sample { load, cpu })
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

    #[test]
    fn the_smoke_run_covers_both_protocols() {
        let names: Vec<_> = smoke_workloads(Duration::from_secs(1))
            .iter()
            .map(|w| w.name)
            .collect();
        assert_eq!(names, ["h1-small", "h2-small"]);
    }
}
