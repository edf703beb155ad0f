//! The targets checked against one run's figures, and the control-plane tables.
//!
//! Every target is a ratio against Envoy from the same run (or an absolute bound for
//! ferry-control), marked met or not met; a figure the run did not produce (a path or phase left
//! out) is reported as not measured rather than guessed.

use std::fmt::Write as _;
use std::time::Duration;

use crate::harness::{Results, median};
use crate::report::{added, summary_of};
use crate::subject::PathKind;

/// One target of issue #5.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// What is compared.
    pub name: String,
    /// The goal, as the issue states it.
    pub goal: &'static str,
    /// The figure of this run, rendered.
    pub figure: Option<String>,
    /// Whether the goal holds; `None` when not measured.
    pub met: Option<bool>,
}

fn target(
    name: impl Into<String>,
    goal: &'static str,
    value: Option<(f64, String, bool)>,
) -> Target {
    Target {
        name: name.into(),
        goal,
        figure: value.as_ref().map(|(_, text, _)| text.clone()),
        met: value.map(|(_, _, met)| met),
    }
}

fn ratio_at_least(value: Option<f64>, goal: f64) -> Option<(f64, String, bool)> {
    value.map(|v| (v, format!("{v:.2}x"), v >= goal))
}

fn ratio_at_most(value: Option<f64>, goal: f64) -> Option<(f64, String, bool)> {
    value.map(|v| (v, format!("{v:.2}x"), v <= goal))
}

/// The targets, in the order.
pub fn targets(results: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    for (workload, label) in [("h1-small", "HTTP/1.1"), ("h2-small", "HTTP/2")] {
        let rps = |path| summary_of(results, workload, path).map(|s| s.rps);
        let ratio = rps(PathKind::Ferry)
            .zip(rps(PathKind::Envoy).filter(|e| *e > 0.0))
            .map(|(f, e)| f / e);
        out.push(target(
            format!("{label} throughput per worker ({workload}), ferry / Envoy"),
            ">= 1.5x",
            ratio_at_least(ratio, 1.5),
        ));
    }
    for (workload, label) in [("h1-rate", "HTTP/1.1"), ("h2-rate", "HTTP/2")] {
        for (name, pick) in [
            (
                "p50",
                (|s| s.p50) as fn(&crate::report::Summary) -> Option<Duration>,
            ),
            ("p99", |s| s.p99),
        ] {
            // A negative difference is noise: not measured rather than met.
            let ferry = added(results, workload, PathKind::Ferry, pick).filter(|f| *f >= 0.0);
            let envoy = added(results, workload, PathKind::Envoy, pick).filter(|e| *e > 0.0);
            out.push(target(
                format!("{label} added latency {name} at a fixed rate ({workload}), ferry / Envoy"),
                "<= 0.5x",
                ratio_at_most(ferry.zip(envoy).map(|(f, e)| f / e), 0.5),
            ));
        }
    }
    let memory = |path: PathKind, pick: fn(&crate::harness::Memory) -> u64| {
        results.memory.get(&path).map(pick).map(|k| k as f64)
    };
    for (name, pick) in [
        (
            "idle",
            (|m| m.idle.rss_kib) as fn(&crate::harness::Memory) -> u64,
        ),
        ("peak under load", |m| m.end.peak_rss_kib),
    ] {
        let ratio = memory(PathKind::Ferry, pick)
            .zip(memory(PathKind::Envoy, pick).filter(|e| *e > 0.0))
            .map(|(f, e)| f / e);
        out.push(target(
            format!("RSS {name}, ferry / Envoy"),
            "<= 0.25x",
            ratio_at_most(ratio, 0.25),
        ));
    }
    let growth = results.scale.as_ref().and_then(|s| {
        let envoy = s.growth_per_1000(|c| c.envoy_kib);
        (envoy > 0.0).then(|| s.growth_per_1000(|c| c.ferry_kib) / envoy)
    });
    out.push(target(
        "RSS growth per 1,000 services, ferry / Envoy",
        "<= 0.25x",
        ratio_at_most(growth, 0.25),
    ));
    let push = results.push.as_ref();
    let worst = push.and_then(|p| p.all_acked.iter().max().copied());
    out.push(target(
        format!(
            "VirtualService edit ACKed by all {} proxies (worst edit)",
            push.map_or(100, |p| p.clients)
        ),
        "<= 1 s",
        worst.map(|w| {
            let secs = w.as_secs_f64();
            (secs, format!("{:.0} ms", secs * 1e3), secs <= 1.0)
        }),
    ));
    out.push(target(
        "ferry-control memory per connected proxy",
        "< 100 KiB",
        push.map(|p| {
            let kib = p.per_proxy_kib();
            (kib, format!("{kib:.1} KiB"), kib < 100.0)
        }),
    ));
    out
}

/// Renders the targets table.
pub fn render_targets(out: &mut String, results: &Results) {
    let _ = writeln!(out, "\n### Targets (issue #5)\n");
    let _ = writeln!(out, "| target | goal | this run | |");
    let _ = writeln!(out, "|---|---|---:|---|");
    for t in targets(results) {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {verdict} |",
            t.name,
            t.goal,
            t.figure.as_deref().unwrap_or("-")
        );
    }
}

/// Renders the config-size and push tables, when those phases ran.
pub fn render_control(out: &mut String, results: &Results) {
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    if let Some(scale) = &results.scale {
        let _ = writeln!(
            out,
            "\n### RSS by config size (ferry-control over ADS, proxies idle)\n"
        );
        let _ = writeln!(
            out,
            "| config | Envoy | ferry-proxy | ferry / Envoy | ferry-control |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        for c in [&scale.small, &scale.large] {
            let _ = writeln!(
                out,
                "| {} services, {} endpoints | {} | {} | {:.2}x | {} |",
                c.services,
                c.endpoints,
                mib(c.envoy_kib),
                mib(c.ferry_kib),
                c.ferry_kib as f64 / c.envoy_kib.max(1) as f64,
                mib(c.control_kib),
            );
        }
        let envoy = scale.growth_per_1000(|c| c.envoy_kib);
        let ferry = scale.growth_per_1000(|c| c.ferry_kib);
        let _ = writeln!(
            out,
            "| growth per 1,000 services | {:.1} MiB | {:.1} MiB | {} | {:.1} MiB |",
            envoy / 1024.0,
            ferry / 1024.0,
            if envoy > 0.0 {
                format!("{:.2}x", ferry / envoy)
            } else {
                "-".into()
            },
            scale.growth_per_1000(|c| c.control_kib) / 1024.0,
        );
    }
    if let Some(push) = &results.push {
        let ms = |values: &[Duration]| {
            let mut v: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1e3).collect();
            median(&mut v).map_or("-".into(), |m| format!("{m:.0} ms"))
        };
        let worst = push
            .all_acked
            .iter()
            .max()
            .map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3));
        let _ = writeln!(out, "\n### ferry-control: push and memory per proxy\n");
        let _ = writeln!(
            out,
            "| clients | services | edits | half ACKed (median) | all ACKed (median) | all ACKed (worst) | RSS 0 clients | RSS all clients | per proxy |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {worst} | {} | {} | {:.1} KiB |",
            push.clients,
            push.services,
            push.all_acked.len(),
            ms(&push.half_acked),
            ms(&push.all_acked),
            mib(push.rss_idle_kib),
            mib(push.rss_connected_kib),
            push.per_proxy_kib(),
        );
        let _ = writeln!(
            out,
            "\nClients are lightweight ADS streams in the harness that subscribe and ACK like an \
             Istio sidecar (not proxy processes); the time runs from the VirtualService file write \
             to each client's ACK of the new routes."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{ConfigRss, PushResult, ScaleResult};
    use crate::harness::Sample;
    use crate::load::LoadResult;

    fn sample(rps: f64, p50_us: u64, p99_us: u64) -> Sample {
        Sample {
            load: LoadResult {
                requests: 1000,
                rps,
                p50: Some(Duration::from_micros(p50_us)),
                p99: Some(Duration::from_micros(p99_us)),
                p999: Some(Duration::from_micros(p99_us * 2)),
                errors: 0,
            },
            cpu: None,
        }
    }

    fn results() -> Results {
        let mut results = Results {
            workloads: vec!["h1-small", "h1-rate"],
            ..Results::default()
        };
        let small = results.samples.entry("h1-small").or_default();
        small.insert(PathKind::Envoy, vec![sample(20_000.0, 0, 0)]);
        small.insert(PathKind::Ferry, vec![sample(40_000.0, 0, 0)]);
        let rate = results.samples.entry("h1-rate").or_default();
        rate.insert(PathKind::Direct, vec![sample(10_000.0, 100, 300)]);
        rate.insert(PathKind::Envoy, vec![sample(10_000.0, 500, 1300)]);
        rate.insert(PathKind::Ferry, vec![sample(10_000.0, 250, 900)]);
        results.rates.insert(("h1-rate", false), 10_000.0);
        let at = |services, envoy_kib, ferry_kib| ConfigRss {
            services,
            endpoints: services * 5,
            envoy_kib,
            ferry_kib,
            control_kib: 0,
        };
        results.scale = Some(ScaleResult {
            small: at(10, 50_000, 10_000),
            large: at(1010, 90_000, 12_000),
        });
        results.push = Some(PushResult {
            clients: 100,
            services: 100,
            all_acked: vec![Duration::from_millis(400), Duration::from_millis(1200)],
            half_acked: vec![Duration::from_millis(300)],
            rss_idle_kib: 10_000,
            rss_connected_kib: 15_000,
            ..PushResult::default()
        });
        results
    }

    fn find(results: &Results, name: &str) -> Target {
        targets(results)
            .into_iter()
            .find(|t| t.name.starts_with(name))
            .unwrap_or_else(|| panic!("no target {name}"))
    }

    #[test]
    fn targets_are_marked_met_not_met_or_not_measured() {
        let r = results();
        let t = find(&r, "HTTP/1.1 throughput");
        assert_eq!((t.figure.as_deref(), t.met), (Some("2.00x"), Some(true)));
        // Added p50: ferry 150 µs vs Envoy 400 µs = 0.375; p99: 600 vs 1000 = 0.6.
        let t = find(&r, "HTTP/1.1 added latency p50");
        assert_eq!((t.figure.as_deref(), t.met), (Some("0.38x"), Some(true)));
        let t = find(&r, "HTTP/1.1 added latency p99");
        assert_eq!((t.figure.as_deref(), t.met), (Some("0.60x"), Some(false)));
        assert_eq!(find(&r, "HTTP/2 throughput").met, None);
        // Growth: ferry 2,000 KiB vs Envoy 40,000 KiB per 1,000 services.
        let t = find(&r, "RSS growth");
        assert_eq!((t.figure.as_deref(), t.met), (Some("0.05x"), Some(true)));
        let t = find(&r, "VirtualService edit");
        assert_eq!((t.figure.as_deref(), t.met), (Some("1200 ms"), Some(false)));
        let t = find(&r, "ferry-control memory");
        assert_eq!((t.figure.as_deref(), t.met), (Some("50.0 KiB"), Some(true)));
    }

    #[test]
    fn the_report_has_every_table() {
        let text = crate::report::render(&results(), "benches/run", "test machine");
        for heading in [
            "### Throughput at saturation",
            "### Latency at a fixed rate",
            "### RSS by config size",
            "### ferry-control: push and memory per proxy",
            "### Targets (issue #5)",
        ] {
            assert!(text.contains(heading), "{heading} missing:\n{text}");
        }
        assert!(
            text.contains("| h1-rate | ferry | 10000/s | 250 µs | 900 µs | 1800 µs | 150 µs | 600 µs | 1200 µs | 0.38x / 0.60x | 0 |"),
            "{text}"
        );
        assert!(
            text.contains("| growth per 1,000 services | 39.1 MiB | 2.0 MiB | 0.05x |"),
            "{text}"
        );
    }
}
